"""The drain service (`--drain`): finishes the connections that stopping proxies hand over.

It listens on a unix socket -- given by systemd (a socket unit, so it is
started on demand and the socket outlives it) or bound here (`--drain-listen`)
-- and needs no capability: it only relays connections that are already
established. Each proxy that stops sends its connections (handoff.py) with its
relay settings and drain_timeout; they are relayed by the same code as in the
proxy until they finish, and whatever is still open when that proxy's
drain_timeout has passed is reset (`outcome=drain_deadline`).

It waits on standby until the first hand-over, so a stopping proxy finds it
ready (its unit is wanted by the proxy's: started with it, a restart hands over
in milliseconds instead of waiting for a Python start, 0.56 s of a 1.23 s
restart on a loaded machine). Once it has drained and had nothing to do for
LINGER seconds it exits, and systemd starts a fresh one (Restart=always), with
the program installed then. SIGTERM stops it from taking more, and it exits
when what it has is done or reset.
"""
import asyncio
import os
import signal
import socket
import time

from . import proxy_protocol
from .channel import Channel, ChannelError
from .handoff import VERSION, adopt
from .metrics import Metrics
from .tcp_relay import TcpRelay

LINGER = 10.0          # idle seconds before exiting
CHECK_INTERVAL = 0.25

_monotonic = time.monotonic


class _Settings:
    """The relay settings of the proxy that handed the connections over."""

    def __init__(self, values):
        self.max_connections_per_source = 0
        self.buffer_size = int(values.get("buffer_size", 65536))
        self.bulk_buffer_size = int(values.get("bulk_buffer_size", 524288))
        self.splice = bool(values.get("splice", False))
        self.log_connections = bool(values.get("log_connections", True))


class DrainServer:
    def __init__(self, listener, log, notifier, linger=LINGER):
        self.listener = listener
        self.log = log
        self.notifier = notifier
        self.linger = linger
        self.relay = None
        self.deadlines = {}         # session -> when it is reset
        self.receiving = 0          # hand-overs in progress
        self.taken_any = False      # on standby until the first hand-over: no lingering before it
        self.idle_since = 0.0
        self.tasks = set()
        self.stopping = False

    async def run(self):
        loop = asyncio.get_running_loop()
        self.relay = TcpRelay(loop, Metrics(), self.log, proxy_protocol.header)
        self.relay.configure(_Settings({}), None)
        self.listener.setblocking(False)
        loop.add_reader(self.listener.fileno(), self._accept)
        loop.add_signal_handler(signal.SIGTERM, self._stop)
        loop.add_signal_handler(signal.SIGINT, self._stop)
        self.log.info(f"anycast-proxy drain service (pid {os.getpid()}) ready")
        self.notifier.ready(status="waiting for connections to drain")
        self.idle_since = _monotonic()
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            now = _monotonic()
            for session in [s for s, t in self.deadlines.items() if t <= now]:
                session.close("drain_deadline", reset_client=True, reset_origin=True)
            self.deadlines = {s: t for s, t in self.deadlines.items() if not s.closed}
            if self.stopping and not (self.relay.sessions or self.receiving):
                break
            if self.relay.sessions or self.receiving or not self.taken_any:
                self.idle_since = now
                if self.taken_any:
                    self.notifier.status(f"draining {len(self.relay.sessions)} connections")
            elif now - self.idle_since >= self.linger:
                break
        loop.remove_reader(self.listener.fileno())
        self.notifier.stopping()
        self.relay.shutdown()
        self.log.info("drain service stopped: nothing left to drain")
        return 0

    def _stop(self):
        if not self.stopping:
            self.stopping = True
            asyncio.get_running_loop().remove_reader(self.listener.fileno())
            if self.relay.sessions:
                self.log.info(f"stopping once {len(self.relay.sessions)} connections finish or reach their deadline")

    def _accept(self):
        try:
            conn, _unused1 = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.log.error(f"accept on the drain socket failed: {exc.strerror}")
            return
        task = asyncio.get_running_loop().create_task(self._take(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _take(self, conn):
        self.receiving += 1
        self.taken_any = True
        channel = Channel(conn)
        sender, taken = "?", 0
        try:
            message = await channel.recv()
            if message is None:
                return
            hello = message[0]
            if hello.get("hello") != VERSION:
                self.log.error(f"a hand-over of version {hello.get('hello')!r} was refused (this is version "
                               f"{VERSION}): the sender drains its connections itself")
                return
            sender = hello.get("pid", "?")
            settings = hello.get("settings", {})
            self.relay.configure(_Settings(settings), None)
            deadline = _monotonic() + float(settings.get("drain_timeout", 30))
            while True:
                message = await channel.recv()
                if message is None:
                    break
                frame, fds, blob = message
                count = self._adopt_all(frame.get("sessions", ()), fds, blob, deadline)
                taken += count
                # The sender closes its descriptors only now: they are relayed here.
                await channel.send({"ack": count})
        except (OSError, ChannelError, ValueError, KeyError) as exc:
            self.log.error(f"hand-over from pid {sender} broke off after {taken} connections: {exc}")
        finally:
            channel.close()
            self.receiving -= 1
            self.idle_since = _monotonic()
        if taken:
            self.log.info(f"took over {taken} connections from pid {sender}; draining them")

    def _adopt_all(self, states, fds, blob, deadline):
        fds = list(fds)
        offset = 0
        for state in states:
            client_fd = fds.pop(0)
            origin_fd = fds.pop(0) if state.get("origin") else None
            session, offset = adopt(self.relay, state, client_fd, origin_fd, blob, offset)
            if not session.closed:
                self.deadlines[session] = deadline
        for fd in fds:      # announced but not described: not ours to keep
            os.close(fd)
        return len(states)


def bind_drain_socket(path):
    """The drain socket, bound here (without systemd): only the owner may connect."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(64)
    return sock
