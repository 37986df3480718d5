"""TCP: accept on transparent listeners, pick a route, dial the origin, relay.

Each session has two pumps (client->origin, origin->client). A pump holds at
most one buffer of data (or one pipe's worth when splicing): while the
receiver is slow it stops reading, so the sender is throttled by TCP itself.
A FIN is relayed as shutdown(SHUT_WR) once the buffer is flushed, leaving the
other direction open; a reset on one side becomes a reset on the other.

The loop callbacks are registered directly on file descriptors
(add_reader/add_writer): no asyncio transports, no per-chunk allocations
beyond the bytes themselves.
"""
import errno
import fcntl
import os
import socket
import time

from .netutil import LINGER_RESET, fmt_addr, reset_and_close

_monotonic = time.monotonic
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 18
_HAVE_SPLICE = hasattr(os, "splice")

CONNECT_ERRORS = {
    errno.ECONNREFUSED: "refused",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.ECONNRESET: "reset",
    errno.EADDRNOTAVAIL: "no_source_port",
}


class _Pump:
    """One direction: src -> dst."""

    __slots__ = ("session", "loop", "src", "dst", "sfd", "dfd", "buf", "view", "start", "end",
                 "eof", "done", "to_origin", "splice_mode", "pipe_r", "pipe_w", "in_pipe",
                 "may_splice", "bufsize", "stats")

    def __init__(self, session, src, dst, to_origin, bufsize, may_splice):
        self.session = session
        self.loop = session.loop
        self.src, self.dst = src, dst
        self.sfd, self.dfd = src.fileno(), dst.fileno()
        self.bufsize = bufsize
        self.buf = None
        self.view = None
        self.start = self.end = 0
        self.eof = False
        self.done = False
        self.to_origin = to_origin
        self.splice_mode = False
        self.may_splice = may_splice
        self.pipe_r = self.pipe_w = -1
        self.in_pipe = 0
        self.stats = session.stats

    # -- buffered mode -------------------------------------------------------
    def on_readable(self):
        if self.buf is None:
            # Allocated on first data: idle connections cost no buffer.
            self.buf = bytearray(self.bufsize)
            self.view = memoryview(self.buf)
        try:
            n = self.src.recv_into(self.buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.session.abort(self, exc, reading=True)
            return
        if n == 0:
            self._on_eof()
            return
        self.session.last_activity = _monotonic()
        if self.to_origin:
            self.stats.bytes_in += n
        else:
            self.stats.bytes_out += n
        try:
            sent = self.dst.send(self.view[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.session.abort(self, exc, reading=False)
            return
        if sent < n:
            self.start, self.end = sent, n
            self.loop.remove_reader(self.sfd)
            self.loop.add_writer(self.dfd, self.on_writable)
        elif n == self.bufsize and self.may_splice:
            # A full buffer means bulk: hand this direction to the kernel.
            self._enter_splice()

    def on_writable(self):
        try:
            sent = self.dst.send(self.view[self.start:self.end])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.session.abort(self, exc, reading=False)
            return
        self.start += sent
        if self.start < self.end:
            return
        self.loop.remove_writer(self.dfd)
        if self.eof:
            self._finish()
        else:
            self.loop.add_reader(self.sfd, self.on_readable)

    def queue(self, data):
        """Send `data` before anything read from src (the PROXY header)."""
        if self.buf is None or len(data) > len(self.buf):
            self.buf = bytearray(max(self.bufsize, len(data)))
            self.view = memoryview(self.buf)
        self.buf[:len(data)] = data
        self.start, self.end = 0, len(data)
        self.loop.add_writer(self.dfd, self.on_writable)

    def begin(self):
        if self.end > self.start:
            return  # on_writable resumes reading once the queued bytes are out
        self.loop.add_reader(self.sfd, self.on_readable)

    # -- splice mode ---------------------------------------------------------
    def _enter_splice(self):
        try:
            self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.may_splice = False
            return
        try:
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default pipe size still works
        self.splice_mode = True
        self.buf = self.view = None
        self.loop.add_reader(self.sfd, self.on_readable_splice)

    def on_readable_splice(self):
        try:
            n = os.splice(self.sfd, self.pipe_w, PIPE_SIZE, flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.session.abort(self, exc, reading=True)
            return
        if n == 0:
            self._on_eof()
            return
        self.session.last_activity = _monotonic()
        if self.to_origin:
            self.stats.bytes_in += n
        else:
            self.stats.bytes_out += n
        self.in_pipe += n
        if not self._drain_pipe():
            return
        if self.in_pipe:
            self.loop.remove_reader(self.sfd)
            self.loop.add_writer(self.dfd, self.on_writable_splice)

    def _drain_pipe(self):
        while self.in_pipe:
            try:
                m = os.splice(self.pipe_r, self.dfd, self.in_pipe, flags=_SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                self.session.abort(self, exc, reading=False)
                return False
            self.in_pipe -= m
        return True

    def on_writable_splice(self):
        if not self._drain_pipe() or self.in_pipe:
            return
        self.loop.remove_writer(self.dfd)
        if self.eof:
            self._finish()
        else:
            self.loop.add_reader(self.sfd, self.on_readable_splice)

    # -- end of stream -------------------------------------------------------
    def _on_eof(self):
        self.eof = True
        self.loop.remove_reader(self.sfd)
        if self.in_pipe == 0 and self.end <= self.start:
            self._finish()

    def _finish(self):
        # Relay the FIN: the peer's other direction stays open (half-close).
        self.done = True
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.session.pump_done()

    def unregister(self):
        self.loop.remove_reader(self.sfd)
        self.loop.remove_writer(self.dfd)
        if self.pipe_r >= 0:
            os.close(self.pipe_r)
            os.close(self.pipe_w)
            self.pipe_r = self.pipe_w = -1


class TcpSession:
    __slots__ = ("relay", "loop", "client", "client_addr", "dst", "route", "stats", "origin",
                 "origin_addr", "c2o", "o2c", "t_start", "last_activity", "connect_timer",
                 "idle_timer", "closed", "source_key")

    def __init__(self, relay, client, client_addr, dst, route, stats, source_key):
        self.relay = relay
        self.loop = relay.loop
        self.client = client
        self.client_addr = client_addr
        self.dst = dst
        self.route = route
        self.stats = stats
        self.source_key = source_key
        self.origin = None
        self.origin_addr = route.origin_for(dst[1])
        self.c2o = self.o2c = None
        self.t_start = self.last_activity = _monotonic()
        self.connect_timer = self.idle_timer = None
        self.closed = False

    def connect(self):
        route = self.route
        try:
            origin = socket.socket(route.origin_family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            self._connect_failed(exc.errno)
            return
        self.origin = origin
        err = origin.connect_ex(self.origin_addr)
        if err == 0:
            self._connected()
        elif err == errno.EINPROGRESS:
            self.loop.add_writer(origin.fileno(), self._on_connect_ready)
            self.connect_timer = self.loop.call_later(route.connect_timeout, self._on_connect_timeout)
        else:
            self._connect_failed(err)

    def _on_connect_ready(self):
        self.loop.remove_writer(self.origin.fileno())
        self.connect_timer.cancel()
        self.connect_timer = None
        err = self.origin.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(err)
        else:
            self._connected()

    def _on_connect_timeout(self):
        self.connect_timer = None
        self.loop.remove_writer(self.origin.fileno())
        self._connect_failed(errno.ETIMEDOUT)

    def _connect_failed(self, err):
        kind = CONNECT_ERRORS.get(err, errno.errorcode.get(err, str(err)).lower())
        self.stats.connect_error(kind)
        # The client learns at once that there is nobody behind this address.
        self.close("connect_" + kind, reset_client=True)

    def _connected(self):
        now = _monotonic()
        self.stats.observe_connect(now - self.t_start)
        self.last_activity = now
        relay = self.relay
        client, origin = self.client, self.origin
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        origin.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c2o = _Pump(self, client, origin, True, relay.buffer_size, relay.splice)
        self.o2c = _Pump(self, origin, client, False, relay.buffer_size, relay.splice)
        if self.route.proxy_protocol != "none":
            self.c2o.queue(relay.proxy_header(self.route.proxy_protocol, self.client_addr, self.dst))
        self.c2o.begin()
        self.o2c.begin()
        self.idle_timer = self.loop.call_later(self.route.idle_timeout, self._on_idle_check)

    def _on_idle_check(self):
        idle = _monotonic() - self.last_activity
        remaining = self.route.idle_timeout - idle
        if remaining <= 0:
            self.idle_timer = None
            self.close("idle_timeout")
        else:
            self.idle_timer = self.loop.call_later(remaining, self._on_idle_check)

    def pump_done(self):
        if self.c2o.done and self.o2c.done:
            self.close("ok")

    def abort(self, pump, exc, reading):
        """A socket error: reset the side that is still alive."""
        broken_is_client = (pump.src is self.client) if reading else (pump.dst is self.client)
        code = errno.errorcode.get(exc.errno, "error").lower() if exc.errno else "error"
        outcome = ("client_" if broken_is_client else "origin_") + code
        self.close(outcome, reset_client=not broken_is_client, reset_origin=broken_is_client)

    def close(self, outcome, reset_client=False, reset_origin=False):
        if self.closed:
            return
        self.closed = True
        relay = self.relay
        if self.connect_timer is not None:
            self.connect_timer.cancel()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.c2o is not None:
            self.c2o.unregister()
            self.o2c.unregister()
        if reset_client:
            reset_and_close(self.client)
        else:
            self.client.close()
        if self.origin is not None:
            if self.c2o is None:
                self.loop.remove_writer(self.origin.fileno())
            if reset_origin:
                reset_and_close(self.origin)
            else:
                self.origin.close()
        relay.session_closed(self, outcome)

    def describe(self):
        return fmt_addr(self.client_addr), fmt_addr(self.dst), fmt_addr(self.origin_addr)


class TcpRelay:
    """Owns the TCP listeners' accept path and the live sessions."""

    def __init__(self, loop, metrics, logger, proxy_header):
        self.loop = loop
        self.metrics = metrics
        self.log = logger
        self.proxy_header = proxy_header
        self.table = None
        self.sessions = set()
        self.per_source = {}
        self.max_per_source = 0
        self.buffer_size = 65536
        self.splice = _HAVE_SPLICE
        self.log_connections = True
        self.draining = False

    def configure(self, config, table):
        self.table = table
        self.max_per_source = config.max_connections_per_source
        self.buffer_size = config.buffer_size
        self.splice = _HAVE_SPLICE and config.splice in (True, "auto")
        self.log_connections = config.log_connections

    def add_listener(self, sock):
        self.loop.add_reader(sock.fileno(), self._on_accept, sock)

    def remove_listener(self, sock):
        self.loop.remove_reader(sock.fileno())

    def _on_accept(self, lsock):
        for _ in range(64):
            try:
                client, client_addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: leave the rest in the backlog for later.
                self.log.error(f"accept on {fmt_addr(lsock.getsockname())} failed: {exc.strerror}")
                return
            self._new_connection(client, client_addr)

    def _new_connection(self, client, client_addr):
        client.setblocking(False)
        dst = client.getsockname()
        table = self.table
        route = table.lookup_text("tcp", dst[0], dst[1])
        if route is None:
            self._refuse(client, client_addr, dst, None, "no_route")
            return
        stats = self.metrics.route(route.name, "tcp")
        stats.total += 1
        if self.draining:
            self._refuse(client, client_addr, dst, route, "draining")
            return
        if route.max_connections and stats.active >= route.max_connections:
            self._refuse(client, client_addr, dst, route, "max_connections")
            return
        source_key = client_addr[0]
        if self.max_per_source:
            held = self.per_source.get(source_key, 0)
            if held >= self.max_per_source:
                self._refuse(client, client_addr, dst, route, "source_limit")
                return
            self.per_source[source_key] = held + 1
        stats.active += 1
        session = TcpSession(self, client, client_addr, dst, route, stats, source_key)
        self.sessions.add(session)
        session.connect()

    def _refuse(self, client, client_addr, dst, route, reason):
        self.metrics.refuse(reason)
        reset_and_close(client)
        if self.log_connections:
            self.log.event(f"tcp refused client={fmt_addr(client_addr)} dst={fmt_addr(dst)} "
                           f"route={route.name if route else '-'} outcome={reason}")

    def session_closed(self, session, outcome):
        self.sessions.discard(session)
        session.stats.active -= 1
        if self.max_per_source:
            left = self.per_source.get(session.source_key, 1) - 1
            if left > 0:
                self.per_source[session.source_key] = left
            else:
                self.per_source.pop(session.source_key, None)
        if self.log_connections:
            c2o = session.c2o
            o2c = session.o2c
            self.log.event(
                f"tcp closed client={fmt_addr(session.client_addr)} dst={fmt_addr(session.dst)} "
                f"route={session.route.name} origin={fmt_addr(session.origin_addr)} outcome={outcome} "
                f"duration={_monotonic() - session.t_start:.3f}s"
                + ("" if c2o is None else f" splice={int(c2o.splice_mode)}{int(o2c.splice_mode)}"))

    def reset_all(self, outcome="shutdown"):
        for session in list(self.sessions):
            session.close(outcome, reset_client=True, reset_origin=True)
