"""One proxy process: listeners, origin pools, reload, and the stop that loses nothing.

With `workers: 1` this is the whole proxy; with more, each worker is one of
these under the supervisor (supervisor.py), which owns the listeners and
forwards reloads.

Stop (SIGTERM): the listeners close here at once (under systemd the socket
unit keeps them, and the kernel queues new connections for the next process);
with `drain_socket` the established connections go to the drain service
(handoff.py) and the process exits in milliseconds; what could not be handed
over drains here for up to drain_timeout, as without it.
"""
import asyncio
import gc
import os
import signal
import socket
import sys

from . import proxy_protocol
from .channel import Channel, ChannelError
from .config import ConfigError, load_config
from .handoff import hand_over
from .health import HealthChecker
from .listeners import Listeners
from .metrics import Metrics, MetricsServer
from .netutil import make_listener, udp_bind_problem
from .pool import build_pools, build_pools_stepwise
from .resolve import Resolver
from .routing import RouteTable
from .selfdial import SelfDialGuard
from .tcp_relay import TcpRelay
from .udp_relay import UdpRelay

RELOAD_SWITCH_INTERVAL = 0.0002   # seconds: how soon the event loop gets the GIL back from a reload's thread
RESOLVE_AT_START = 5.0     # seconds the first resolution of names may hold up readiness (and a reload)


def _program():
    """What `python3 PROGRAM` runs: the zipapp this was imported from, or the package directory."""
    archive = getattr(globals().get("__loader__"), "archive", None)
    return archive or os.path.dirname(os.path.abspath(__file__))


PACKAGE_ENTRY = _program()

_tasks = set()


def spawn(coro):
    """Run CORO as a task that stays referenced until done (asyncio keeps only weak references)."""
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def plain_listener(endpoint):
    return make_listener(endpoint, socket.SOCK_STREAM, transparent=False, backlog=64)


def relay_settings(config):
    """What a drain service needs to relay this process's connections as it would."""
    return {"drain_timeout": config.drain_timeout, "buffer_size": config.buffer_size,
            "bulk_buffer_size": config.bulk_buffer_size, "splice": config.splice,
            "log_connections": config.log_connections}


def prepare(path):
    """The validated configuration in PATH and its route table (run in a worker thread)."""
    config = load_config(path)
    return config, RouteTable(config.routes)


class ProxyServer:
    def __init__(self, config_path, config, log, notifier, listeners=None, worker=None):
        self.config_path = config_path
        self.config = config
        self.log = log
        self.notifier = notifier
        self.listener_source = listeners or Listeners()
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
        self.reload_lock = asyncio.Lock()

    # -- configuration -------------------------------------------------------
    def _wanted_listeners(self, config):
        wanted = []
        for ep in config.listen:
            wanted.append((ep, "tcp"))
            if config.has_udp:
                wanted.append((ep, "udp"))
        return wanted

    def _open_listeners(self, config):
        """The listeners CONFIG needs that are not open yet; on error none stays open."""
        opened = {}
        try:
            for key in self._wanted_listeners(config):
                if key not in self.listeners:
                    opened[key] = self.listener_source.obtain(key)
        except OSError:
            for sock in opened.values():
                sock.close()
            raise
        return opened

    def _apply(self, config, resolved=None, table=None):
        """Open what the new config needs, then switch; on error nothing changes."""
        opened = self._open_listeners(config)
        self._switch(config, opened, build_pools(config.routes, self.pools, self._origin_changed, resolved),
                     resolved, table)

    async def _apply_stepwise(self, config, resolved, table):
        """_apply() for a reload: the pools are built a step at a time, letting connections run
        in between (10,000 routes take about 0.1 s); then the switch, in one go."""
        opened = self._open_listeners(config)
        pools = {}
        try:
            for _unused1 in build_pools_stepwise(pools, config.routes, self.pools, self._origin_changed, resolved):
                await asyncio.sleep(0)
        except BaseException:
            for sock in opened.values():
                sock.close()
            raise
        self._switch(config, opened, pools, resolved, table)

    def _switch(self, config, opened, pools, resolved, table):
        self.pools = pools
        self.resolver.record(self.pools, resolved or {})
        self.metrics.pools = self.pools
        if table is None:
            table = RouteTable(config.routes)
        for r in config.routes:
            self.metrics.route(r.name, r.protocol)
        self.tcp.configure(config, table)
        self.udp.configure(config, table)
        self.tcp.guard = self.udp.guard = self.checker.guard = SelfDialGuard(config.self_dial_index, self.log)
        self.log.set_level(config.log_level)
        wanted = set(self._wanted_listeners(config))
        for key in list(self.listeners):
            if key not in wanted:
                sock = self.listeners.pop(key)
                (self.tcp if key[1] == "tcp" else self.udp).remove_listener(sock)
                sock.close()
        for key, sock in opened.items():
            self.listeners[key] = sock
            if key[1] == "tcp":
                self.tcp.add_listener(sock, shared=self.listener_source.shared(key))
            else:
                self.udp.add_listener(sock)
        self.listener_source.close_spare()
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
            server = MetricsServer(new, self._collect, plain_listener)
            await server.start()
            self.metrics_server = server

    async def _collect(self):
        return self.metrics.snapshot()

    def describe(self):
        c = self.config
        return (f"{len(c.routes)} routes, listening on "
                + ", ".join(f"{kind} {ep}" for ep, kind in self.listeners))

    async def reload(self):
        # One reload at a time: a second SIGHUP waits for the first, then reads the file again.
        async with self.reload_lock:
            await self._reload()

    async def _reload(self):
        self.notifier.reloading()
        try:
            # Reading, validating and indexing the file is pure work on new objects: in a thread,
            # so that the event loop keeps relaying meanwhile (10,000 routes: about 0.3 s).
            config, table = await self._in_thread(prepare, self.config_path)
            if config.workers != self.config.workers and self.worker is None:
                self.log.warning("workers changed: takes effect at the next restart")
            old_metrics = self.config.metrics
            resolved = await self.resolver.prefetch(config.routes, self.pools, RESOLVE_AT_START)
            await self._apply_stepwise(config, resolved, table)
            await self._apply_metrics_server(old_metrics)
        except (ConfigError, OSError) as exc:
            self.metrics.reload_failures += 1
            self.log.error(f"reload refused, keeping the running configuration: {exc}")
        else:
            self.metrics.reloads += 1
            self.log.info(f"reloaded {self.config_path}: {self.describe()}; "
                          f"{len(self.tcp.sessions)} connections kept")
        self.notifier.ready(status=self.describe())

    async def _in_thread(self, func, *args):
        """FUNC(*ARGS) in a worker thread, the event loop going on meanwhile. The thread holds the
        GIL between its switch intervals, and the loop needs it back after every system call: at
        the default 5 ms, each event would wait that long, several times over. The cyclic
        collector is off meanwhile: a full collection, which the parser's many new objects
        would start, runs in one go holding the GIL (about 50 ms with 10,000 routes)."""
        interval = sys.getswitchinterval()
        collecting = gc.isenabled()
        sys.setswitchinterval(RELOAD_SWITCH_INTERVAL)
        gc.disable()
        try:
            return await self.loop.run_in_executor(None, func, *args)
        finally:
            sys.setswitchinterval(interval)
            if collecting:
                gc.enable()

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
        if self.config.drain_socket and self.tcp.sessions:
            count = len(self.tcp.sessions)
            handed = await hand_over(self.config.drain_socket, self.tcp, relay_settings(self.config), self.log)
            if handed:
                self.log.info(f"handed {handed} of {count} connections to the drain service at "
                              f"{self.config.drain_socket}")
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
        """A worker's link to the supervisor: metrics requests, and reloads that bring the listeners."""
        index, ctl = self.worker
        channel = Channel(ctl, self.loop)

        async def serve():
            try:
                while True:
                    message = await channel.recv()
                    if message is None:
                        break
                    request, fds, _unused1 = message
                    command = request.get("command")
                    if command == "metrics":
                        await channel.send({"metrics": self.metrics.snapshot()})
                    elif command == "reload":
                        self.listener_source.give([socket.socket(fileno=fd) for fd in fds])
                        await self.reload()
            except (OSError, ChannelError) as exc:
                self.log.error(f"the link to the supervisor failed: {exc}")
            # The supervisor is gone: stop like on SIGTERM.
            self.stop_event.set()

        self.control_task = spawn(serve())
        await channel.send({"ready": index})
