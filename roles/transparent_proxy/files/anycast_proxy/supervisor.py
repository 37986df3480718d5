"""The supervisor of `workers: N` (N > 1): owns the listeners, runs the workers, answers systemd.

The supervisor takes the listeners from systemd (or opens them) and gives
every worker the same sockets: one accept queue per address, each worker
waiting on it with EPOLLEXCLUSIVE (the kernel wakes one idle worker per
connection). A worker that dies is started again; the connections queued
meanwhile wait for the others, not for it. The workers of a start are forks of
the supervisor: they have every module imported already and accept in
milliseconds, where a new interpreter would add a Python start to the restart's
downtime (the connections queued meanwhile wait for it). A worker started again
after it died is a new interpreter (the program installed then), as nothing
waits for it. On SIGHUP the supervisor reads the
configuration, opens what is new and sends each worker a reload with the
listeners; on SIGTERM each worker stops as a single process does (hand-over
or drain). Metrics are the workers' snapshots, summed.
"""
import asyncio
import os
import signal
import socket
import sys
import traceback

from .channel import Channel, ChannelError
from .config import ConfigError, load_config
from .listeners import Listeners
from .metrics import MetricsServer, merge
from .server import PACKAGE_ENTRY, plain_listener, spawn

WORKER_START_TIMEOUT = 60.0
RESPAWN_DELAY = 1.0


class _Worker:
    def __init__(self, index):
        self.index = index
        self.proc = None
        self.channel = None
        self.lock = asyncio.Lock()


class _ForkedWorker:
    """A worker forked from the supervisor, seen the way asyncio's Process is: pid, returncode,
    wait(), send_signal(). Its exit is read from a pidfd (Linux >= 5.3)."""

    def __init__(self, pid):
        loop = asyncio.get_running_loop()
        self.pid = pid
        self.returncode = None
        self._exited = loop.create_future()
        self._pidfd = os.pidfd_open(pid)
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self):
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        _pid, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        self._exited.set_result(self.returncode)

    async def wait(self):
        return await asyncio.shield(self._exited)

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)


class Supervisor:
    def __init__(self, config_path, config, log, notifier, listeners=None):
        self.config_path = config_path
        self.config = config
        self.log = log
        self.notifier = notifier
        self.listener_source = listeners or Listeners()
        self.listeners = {}             # (Endpoint, kind) -> socket, given to every worker
        self.workers = []
        self.stopping = False
        self.reloads = 0
        self.reload_failures = 0
        self.metrics_server = None

    def _open_listeners(self, config):
        """The listeners CONFIG wants: kept, given, or opened; nothing changes on an error."""
        wanted = [(ep, kind) for ep in config.listen for kind in (("tcp", "udp") if config.has_udp else ("tcp",))]
        opened = {}
        try:
            for key in wanted:
                if key not in self.listeners:
                    opened[key] = self.listener_source.obtain(key)
        except OSError:
            for sock in opened.values():
                sock.close()
            raise
        for key in [k for k in self.listeners if k not in wanted]:
            self.listeners.pop(key).close()
        self.listeners.update(opened)
        self.listener_source.close_spare()

    def _listener_fds(self):
        return [sock.fileno() for sock in self.listeners.values()]

    async def _spawn(self, worker, fork=False):
        parent, child = socket.socketpair()
        if fork:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                self._become_worker(worker, parent, child)      # never returns
            worker.proc = _ForkedWorker(pid)
        else:
            env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
            fds = self._listener_fds()
            worker.proc = await asyncio.create_subprocess_exec(
                sys.executable, PACKAGE_ENTRY, "--config", self.config_path,
                "--worker", f"{worker.index}:{child.fileno()}",
                "--listener-fds", ",".join(map(str, fds)) or "-",
                pass_fds=[child.fileno()] + fds, env=env)
        child.close()
        worker.channel = Channel(parent)
        try:
            message = await asyncio.wait_for(worker.channel.recv(), WORKER_START_TIMEOUT)
        except (ChannelError, OSError):
            message = None
        if message is None or "ready" not in message[0]:
            raise RuntimeError(f"worker {worker.index} failed to start (exit status {worker.proc.returncode})")
        spawn(self._watch(worker))

    def _become_worker(self, worker, parent, child):
        """In the fork: run worker WORKER with what the exec'd worker would be given, then exit."""
        # The supervisor's loop lives on in this process's memory: its signal wake-up socket and
        # epoll are shared with the supervisor, so this process never touches them.
        signal.set_wakeup_fd(-1)
        asyncio.events._set_running_loop(None)
        code = 70
        try:
            parent.close()
            for other in self.workers:
                if other.channel is not None:
                    other.channel.sock.close()     # a sibling's link is the supervisor's
            given = [sock.dup() for sock in self.listeners.values()]
            for sock in self.listeners.values():
                sock.close()
            from .cli import run_worker
            code = run_worker(self.config_path, self.config, worker.index, child, given)
        except BaseException:        # noqa: B902 -- whatever it is, this process must not return
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    async def _watch(self, worker):
        status = await worker.proc.wait()
        if self.stopping:
            return
        self.log.error(f"worker {worker.index} exited with status {status}; starting it again")
        worker.channel.close()
        await asyncio.sleep(RESPAWN_DELAY)
        try:
            await self._spawn(worker)
        except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
            self.log.error(f"cannot restart worker {worker.index}: {exc}")

    async def _ask(self, worker, request, fds=()):
        async with worker.lock:
            await worker.channel.send(request, fds)
            if request.get("command") != "metrics":
                return None
            message = await asyncio.wait_for(worker.channel.recv(), 5)
            return message[0]["metrics"] if message else None

    async def _collect(self):
        snaps = []
        for w in self.workers:
            try:
                snap = await self._ask(w, {"command": "metrics"})
            except (OSError, ValueError, KeyError, ChannelError, asyncio.TimeoutError):
                snap = None
            if snap is None:
                self.log.warning(f"worker {w.index} did not answer the metrics request")
            else:
                snaps.append(snap)
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
            # In a thread: the supervisor keeps answering systemd and the metrics meanwhile.
            config = await asyncio.get_running_loop().run_in_executor(None, load_config, self.config_path)
            self._open_listeners(config)
        except (ConfigError, OSError) as exc:
            self.reload_failures += 1
            self.log.error(f"reload refused, keeping the running configuration: {exc}")
        else:
            if config.workers != self.config.workers:
                self.log.warning("workers changed: takes effect at the next restart")
            old = self.config.metrics
            self.config = config
            self.reloads += 1
            fds = self._listener_fds()
            for w in self.workers:
                try:
                    await self._ask(w, {"command": "reload", "fds": len(fds)}, fds)
                except (OSError, ChannelError) as exc:
                    self.log.error(f"worker {w.index} did not take the reload: {exc}")
            if config.metrics != old:
                await self._start_metrics()
        self.notifier.ready(status=f"{len(self.workers)} workers")

    async def _start_metrics(self):
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if self.config.metrics is not None:
            try:
                server = MetricsServer(self.config.metrics, self._collect, plain_listener)
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
        self._open_listeners(self.config)
        self.workers = [_Worker(i) for i in range(self.config.workers)]
        try:
            # All at once: the first to be ready accepts what queued while the service restarted.
            await asyncio.gather(*(self._spawn(w, fork=True) for w in self.workers))
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
        for sock in self.listeners.values():
            sock.close()
        self._signal_workers(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(w.proc.wait() for w in self.workers)),
                                   self.config.drain_timeout + 10)
        except asyncio.TimeoutError:
            self._signal_workers(signal.SIGKILL)
        return 0
