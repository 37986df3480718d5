"""The process: listeners, origin pools, reload, drain, readiness; and the supervisor of workers.

With `workers: 1` one process does everything. With more, a supervisor
starts that many worker processes (each with its own SO_REUSEPORT listeners,
so the kernel spreads connections), forwards SIGHUP/SIGTERM to them, answers
systemd and serves the metrics summed over workers.
"""
import asyncio
import json
import os
import signal
import socket
import sys

from . import proxy_protocol
from .config import ConfigError, load_config
from .health import HealthChecker
from .metrics import Metrics, MetricsServer, merge
from .netutil import make_listener, udp_bind_problem
from .pool import build_pools
from .resolve import Resolver
from .routing import RouteTable
from .tcp_relay import TcpRelay
from .udp_relay import UdpRelay

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
RESOLVE_AT_START = 5.0     # seconds the first resolution of names may hold up readiness (and a reload)


_tasks = set()


def spawn(coro):
    """Run CORO as a task that stays referenced until done (asyncio keeps only weak references)."""
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


class Log:
    """One line per event on stderr; journald adds time and unit."""

    _PRIO = {"debug": 7, "info": 6, "warning": 4, "error": 3}
    _ORDER = ("debug", "info", "warning", "error")

    def __init__(self, level="info", tag=""):
        self.level = self._ORDER.index(level)
        self.tag = tag
        self.journal = bool(os.environ.get("JOURNAL_STREAM"))
        self.stream = sys.stderr

    def _write(self, level, text):
        if self._ORDER.index(level) < self.level:
            return
        if self.journal:
            line = f"<{self._PRIO[level]}>{self.tag}{text}\n"
        else:
            line = f"{level}: {self.tag}{text}\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def event(self, text):
        self._write("info", text)

    def info(self, text):
        self._write("info", text)

    def warning(self, text):
        self._write("warning", text)

    def error(self, text):
        self._write("error", text)

    def set_level(self, level):
        self.level = self._ORDER.index(level)


def _plain_listener(endpoint):
    return make_listener(endpoint, socket.SOCK_STREAM, transparent=False, backlog=64)


class ProxyServer:
    def __init__(self, config_path, config, log, notifier, worker=None):
        self.config_path = config_path
        self.config = config
        self.log = log
        self.notifier = notifier
        self.worker = worker            # (index, control socket) in a worker process
        self.control_task = None        # a worker's reader of the supervisor's requests
        self.metrics = Metrics()
        self.listeners = {}             # (Endpoint, "tcp"|"udp") -> socket
        self.pools = {}                 # route name -> pool.Pool
        self.metrics_server = None
        self.stop_event = None
        self.loop = None
        self.tcp = self.udp = None
        self.checker = self.resolver = None

    # -- configuration -------------------------------------------------------
    def _wanted_listeners(self, config):
        wanted = []
        for ep in config.listen:
            wanted.append((ep, "tcp"))
            if config.has_udp:
                wanted.append((ep, "udp"))
        return wanted

    def _apply(self, config, resolved=None):
        """Open what the new config needs, then switch; on error nothing changes."""
        reuseport = config.workers > 1
        opened = {}
        try:
            for key in self._wanted_listeners(config):
                if key not in self.listeners:
                    ep, kind = key
                    stype = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
                    opened[key] = make_listener(ep, stype, reuseport=reuseport)
        except OSError:
            for sock in opened.values():
                sock.close()
            raise
        self.pools = build_pools(config.routes, self.pools, self._origin_changed, resolved)
        self.resolver.record(self.pools, resolved or {})
        self.metrics.pools = self.pools
        table = RouteTable(config.routes)
        for r in config.routes:
            self.metrics.route(r.name, r.protocol)
        self.tcp.configure(config, table)
        self.udp.configure(config, table)
        self.log.set_level(config.log_level)
        wanted = set(self._wanted_listeners(config))
        for key in list(self.listeners):
            if key not in wanted:
                sock = self.listeners.pop(key)
                (self.tcp if key[1] == "tcp" else self.udp).remove_listener(sock)
                sock.close()
        for key, sock in opened.items():
            self.listeners[key] = sock
            (self.tcp if key[1] == "tcp" else self.udp).add_listener(sock)
        self.config = config
        self.resolver.sync(self.pools)
        self.checker.sync(self.pools)
        problem = udp_bind_problem(config.routes)
        if problem:
            self.log.warning(problem)

    def _origin_changed(self, pool, origin):
        live = len(pool.live_primaries) + len(pool.live_backups)
        if origin.up:
            self.log.info(f"route {pool.name}: origin {origin.label} is up again; {live} of {len(pool)} up")
        else:
            self.log.warning(f"route {pool.name}: origin {origin.label} is down ({origin.last_error}); "
                             f"{live} of {len(pool)} up" + ("" if live else ": trying every origin anyway"))

    def _addresses_changed(self, pool):
        self.checker.sync(self.pools)

    async def _apply_metrics_server(self, old_endpoint):
        if self.worker is not None:
            return
        new = self.config.metrics
        if new == old_endpoint and (self.metrics_server is not None or new is None):
            return
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if new is not None:
            server = MetricsServer(new, self._collect, _plain_listener)
            await server.start()
            self.metrics_server = server

    async def _collect(self):
        return self.metrics.snapshot()

    def describe(self):
        c = self.config
        return (f"{len(c.routes)} routes, listening on "
                + ", ".join(f"{kind} {ep}" for ep, kind in self.listeners))

    async def reload(self):
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
            if config.workers != self.config.workers and self.worker is None:
                self.log.warning("workers changed: takes effect at the next restart")
            old_metrics = self.config.metrics
            resolved = await self.resolver.prefetch(config.routes, self.pools, RESOLVE_AT_START)
            self._apply(config, resolved)
            await self._apply_metrics_server(old_metrics)
        except (ConfigError, OSError) as exc:
            self.metrics.reload_failures += 1
            self.log.error(f"reload refused, keeping the running configuration: {exc}")
        else:
            self.metrics.reloads += 1
            self.log.info(f"reloaded {self.config_path}: {self.describe()}; "
                          f"{len(self.tcp.sessions)} connections kept")
        self.notifier.ready(status=self.describe())

    # -- lifecycle -------------------------------------------------------------
    async def run(self):
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        header = proxy_protocol.header
        self.tcp = TcpRelay(self.loop, self.metrics, self.log, header)
        self.udp = UdpRelay(self.loop, self.metrics, self.log, header)
        self.checker = HealthChecker(self.loop)
        self.resolver = Resolver(self.loop, self.log, self._addresses_changed)
        resolved = await self.resolver.prefetch(self.config.routes, {}, RESOLVE_AT_START)
        self._apply(self.config, resolved)
        await self._apply_metrics_server(None)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop_event.set)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: spawn(self.reload()))
        if self.worker is not None:
            await self._serve_control()
        self.log.info(f"anycast-proxy started (pid {os.getpid()}): {self.describe()}")
        self.notifier.ready(status=self.describe())
        if self.notifier.watchdog_interval:
            self._watchdog()
        await self.stop_event.wait()
        await self.drain()
        if self.control_task is not None:
            # Ended here, not left pending for the closing loop to complain about.
            self.control_task.cancel()
            await asyncio.gather(self.control_task, return_exceptions=True)
        return 0

    def _watchdog(self):
        # Pinged from the event loop: a stuck loop misses the deadline.
        self.notifier.watchdog()
        self.loop.call_later(self.notifier.watchdog_interval, self._watchdog)

    async def drain(self):
        for key, sock in list(self.listeners.items()):
            (self.tcp if key[1] == "tcp" else self.udp).remove_listener(sock)
            sock.close()
        self.listeners.clear()
        self.notifier.stopping()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.checker.close()
        self.resolver.close()
        self.tcp.draining = self.udp.draining = True
        deadline = self.loop.time() + self.config.drain_timeout
        if self.tcp.sessions:
            self.log.info(f"draining {len(self.tcp.sessions)} connections for up to {self.config.drain_timeout:g}s")
        while self.tcp.sessions and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = len(self.tcp.sessions)
        self.tcp.reset_all("drain_deadline")
        self.udp.close_all("shutdown")
        self.tcp.shutdown()
        self.log.info(f"stopped; {left} connections reset at the drain deadline" if left else "stopped")

    async def _serve_control(self):
        index, ctl = self.worker
        reader, writer = await asyncio.open_connection(sock=ctl)

        async def serve():
            while True:
                line = await reader.readline()
                if not line:
                    # The supervisor is gone: stop like on SIGTERM.
                    self.stop_event.set()
                    return
                if line.strip() == b"metrics":
                    writer.write(json.dumps(self.metrics.snapshot()).encode() + b"\n")
                    await writer.drain()

        self.control_task = spawn(serve())
        writer.write(b"ready\n")
        await writer.drain()


class _Worker:
    def __init__(self, index):
        self.index = index
        self.proc = None
        self.reader = self.writer = None
        self.lock = asyncio.Lock()


class Supervisor:
    def __init__(self, config_path, config, log, notifier):
        self.config_path = config_path
        self.config = config
        self.log = log
        self.notifier = notifier
        self.workers = []
        self.stopping = False
        self.reloads = 0
        self.reload_failures = 0
        self.metrics_server = None

    async def _spawn(self, worker):
        parent, child = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, PACKAGE_DIR, "--config", self.config_path,
            "--worker", f"{worker.index}:{child.fileno()}", pass_fds=[child.fileno()], env=env)
        child.close()
        worker.reader, worker.writer = await asyncio.open_connection(sock=parent)
        line = await asyncio.wait_for(worker.reader.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"worker {worker.index} failed to start (exit status {worker.proc.returncode})")
        spawn(self._watch(worker))

    async def _watch(self, worker):
        status = await worker.proc.wait()
        if self.stopping:
            return
        self.log.error(f"worker {worker.index} exited with status {status}; starting it again")
        await asyncio.sleep(1)
        try:
            await self._spawn(worker)
        except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
            self.log.error(f"cannot restart worker {worker.index}: {exc}")

    async def _collect(self):
        snaps = []
        for w in self.workers:
            async with w.lock:
                try:
                    w.writer.write(b"metrics\n")
                    await w.writer.drain()
                    line = await asyncio.wait_for(w.reader.readline(), 5)
                    snaps.append(json.loads(line))
                except (OSError, ValueError, asyncio.TimeoutError):
                    self.log.warning(f"worker {w.index} did not answer the metrics request")
        merged = merge(snaps)
        merged["reloads"] = self.reloads
        merged["reload_failures"] = self.reload_failures
        return merged

    def _signal_workers(self, sig):
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                try:
                    w.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def _reload(self):
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            self.reload_failures += 1
            self.log.error(f"reload refused, keeping the running configuration: {exc}")
        else:
            if config.workers != self.config.workers:
                self.log.warning("workers changed: takes effect at the next restart")
            old = self.config.metrics
            self.config = config
            self.reloads += 1
            self._signal_workers(signal.SIGHUP)
            if config.metrics != old:
                await self._start_metrics()
        self.notifier.ready(status=f"{len(self.workers)} workers")

    async def _start_metrics(self):
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if self.config.metrics is not None:
            try:
                server = MetricsServer(self.config.metrics, self._collect, _plain_listener)
                await server.start()
                self.metrics_server = server
            except OSError as exc:
                self.log.error(f"metrics endpoint {self.config.metrics}: {exc}")

    def _watchdog(self):
        self.notifier.watchdog()
        asyncio.get_running_loop().call_later(self.notifier.watchdog_interval, self._watchdog)

    async def run(self):
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: spawn(self._reload()))
        self.workers = [_Worker(i) for i in range(self.config.workers)]
        try:
            for w in self.workers:
                await self._spawn(w)
        except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
            self.log.error(str(exc))
            self.stopping = True
            self._signal_workers(signal.SIGKILL)
            return 1
        await self._start_metrics()
        self.log.info(f"anycast-proxy supervisor (pid {os.getpid()}) running {len(self.workers)} workers")
        self.notifier.ready(status=f"{len(self.workers)} workers")
        if self.notifier.watchdog_interval:
            self._watchdog()
        await stop.wait()
        self.stopping = True
        self.notifier.stopping()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self._signal_workers(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(w.proc.wait() for w in self.workers)),
                                   self.config.drain_timeout + 10)
        except asyncio.TimeoutError:
            self._signal_workers(signal.SIGKILL)
        return 0
