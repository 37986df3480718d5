"""TCP: accept on transparent listeners, pick a route, dial the origin, relay.

Each session has two pumps (client->origin, origin->client). A read goes
into a scratch buffer shared by all sessions and is written out at once;
only what the receiver does not take is kept (at most one read's worth per
pump), and while it is kept the pump stops reading, so the sender is
throttled by TCP itself. Idle connections hold no buffer. A pump whose read
fills the whole buffer is moving bulk data and switches to bulk mode: reads
of bulk_buffer_size from a second shared buffer or, with `splice: true`,
splice() through a pipe so that the bytes never enter user space (less CPU
per byte; in our measurements less throughput per connection, see
docs/benchmarks.md).

Both sockets of a session are registered once, edge-triggered, and never
modified (except to add EPOLLOUT the first time the client stops taking
data): no epoll_ctl per state change. Edge-triggered means an event is a
hint that something arrived; a pump reads until a short read says the
socket is drained, and a pump that was blocked reads again when it is
unblocked. A short read after EPOLLRDHUP is the end of the stream, so the
FIN costs no extra read.

A FIN is relayed as shutdown(SHUT_WR) once everything before it is out,
leaving the other direction open; a reset on one side becomes a reset on
the other. Connect timeouts and idle timeouts are enforced by a periodic
sweep.
"""
import _socket
import errno
import fcntl
import os
import socket
import time

from .netutil import default_per_source_limit, fmt_addr, reset_and_close
from .poller import EPOLLERR, EPOLLET, EPOLLEXCLUSIVE, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Poller

_READ_EVENTS = EPOLLIN | EPOLLERR | EPOLLHUP
_CLIENT_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLET
# The origin waits for EPOLLOUT from the start: its first one says the connect finished.
_ORIGIN_EVENTS = _CLIENT_EVENTS | EPOLLOUT
_DONTWAIT = socket.MSG_DONTWAIT   # accepted sockets stay blocking: no fcntl/ioctl per connection
_DONTWAIT_MORE = _DONTWAIT | socket.MSG_MORE
READ_BUDGET = 8   # full reads per wakeup before a bulk pump lets the other connections run

_monotonic = time.monotonic
# Relayed sockets are the C-level socket type: the same methods without socket.socket's Python
# wrappers (enum conversions, io bookkeeping), which cost measurable time per connection.
_RawSocket = _socket.socket
_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20   # measured: 1 MiB pipes need about a third less CPU per GiB than 256 KiB
_HAVE_SPLICE = hasattr(os, "splice")
ACCEPT_PAUSE = 0.1      # seconds without accepting after EMFILE and the like
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
SWEEP_INTERVAL = 0.1    # connect deadlines are checked this often
IDLE_SWEEP_EVERY = 10   # ...and idle timeouts every this many sweeps
MAX_SHARES = 3          # an attempt gets at least a third of what is left of connect_timeout

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

    __slots__ = ("session", "relay", "src", "dst", "sfd", "dfd", "pending", "blocked", "eof", "done",
                 "ended", "hint", "to_origin", "splice_mode", "pipe_r", "pipe_w", "in_pipe", "may_splice",
                 "stats", "bulk", "scheduled")

    def __init__(self, session, src, dst, to_origin):
        relay = session.relay
        self.session = session
        self.relay = relay
        self.src, self.dst = src, dst
        self.sfd, self.dfd = src.fileno(), dst.fileno()
        self.pending = None        # bytes the receiver has not taken yet (memoryview)
        self.blocked = False       # waiting for dst to be writable; src is not read meanwhile
        self.eof = False           # src's end of stream was read
        self.done = False          # ...and relayed
        self.ended = False         # epoll saw src's FIN (EPOLLRDHUP): a short read is the end
        self.hint = False          # src was readable before the session could relay
        self.to_origin = to_origin
        self.splice_mode = False
        self.bulk = False
        self.may_splice = relay.splice
        self.pipe_r = self.pipe_w = -1
        self.in_pipe = 0
        self.stats = session.stats
        self.scheduled = False

    def retarget(self, origin, to_origin):
        """A new origin socket after a failed attempt (nothing was relayed yet)."""
        if to_origin:
            self.dst, self.dfd = origin, origin.fileno()
        else:
            self.src, self.sfd = origin, origin.fileno()
            self.ended = False

    def read(self):
        """Relay what src has until it is drained, dst is full or the budget is spent."""
        if self.splice_mode:
            self._read_splice()
            return
        relay = self.relay
        src, dst = self.src, self.dst
        for _unused1 in range(READ_BUDGET):
            if self.bulk:
                buf, view = relay.bulk_scratch, relay.bulk_view
            else:
                buf, view = relay.scratch, relay.scratch_view
            size = len(buf)
            try:
                n = src.recv_into(buf, size, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.session.abort(self, exc, reading=True)
                return
            if not self._received(n):
                return
            # A short read after EPOLLRDHUP is the last data: MSG_MORE holds it back until the
            # shutdown() that follows, so that data and FIN leave in one segment.
            last = n < size and self.ended
            try:
                sent = dst.send(view[:n], _DONTWAIT_MORE if last else _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.session.abort(self, exc, reading=False)
                return
            if sent < n:
                self.pending = memoryview(bytes(view[sent:n]))
                self._block()
                if last:
                    self.eof = True
                return
            if n < size:
                if last:
                    self._on_eof()
                return
            if not self.bulk:
                # A full buffer means bulk data: read in bigger chunks, or let the kernel move it.
                self.bulk = True
                if self.may_splice and self._enter_splice():
                    self._read_splice()
                    return
        self._yield()

    def _received(self, n):
        """N bytes read from src, copied or spliced alike; False (and the end of the stream
        handled) when N is 0."""
        if n == 0:
            self._on_eof()
            return False
        self.session.last_activity = _monotonic()
        if self.to_origin:
            self.stats.bytes_in += n
        else:
            self.stats.bytes_out += n
        return True

    def write(self):
        """dst is writable again: flush what it did not take, then read on."""
        if self.splice_mode:
            if not self._drain_pipe() or self.in_pipe:
                return
        else:
            try:
                sent = self.dst.send(self.pending, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.session.abort(self, exc, reading=False)
                return
            if sent < len(self.pending):
                self.pending = self.pending[sent:]
                return
            self.pending = None
        self.blocked = False
        if self.eof:
            self._finish()
        else:
            self.read()   # src's events were ignored while blocked

    def queue(self, data):
        """Write DATA to dst before anything read from src (the PROXY header)."""
        try:
            sent = self.dst.send(data, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            self.pending = memoryview(data)[sent:]
            self._block()

    def _block(self):
        self.blocked = True
        if not self.to_origin:
            self.session.watch_client_writable()

    def _yield(self):
        # More data is waiting, but other connections get their turn first; no new edge will
        # come for what is already queued, so come back by ourselves.
        if not self.scheduled:
            self.scheduled = True
            self.relay.loop.call_soon(self._resume)

    def _resume(self):
        self.scheduled = False
        if not (self.session.closed or self.blocked or self.eof):
            self.read()

    # -- splice mode ---------------------------------------------------------
    def _enter_splice(self):
        try:
            self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.may_splice = False
            return False
        try:
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default pipe size still works
        # splice() honours only the sockets' own O_NONBLOCK (accepted sockets are blocking).
        self.src.setblocking(False)
        self.dst.setblocking(False)
        self.splice_mode = True
        return True

    def _read_splice(self):
        for _unused1 in range(READ_BUDGET):
            try:
                n = os.splice(self.sfd, self.pipe_w, PIPE_SIZE, flags=_SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                return   # the pipe is empty whenever we read, so src is drained
            except OSError as exc:
                self.session.abort(self, exc, reading=True)
                return
            if not self._received(n):
                return
            self.in_pipe += n
            if not self._drain_pipe():
                return
            if self.in_pipe:
                self._block()
                return
        self._yield()

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

    # -- end of stream -------------------------------------------------------
    def _on_eof(self):
        self.eof = True
        if not self.blocked:
            self._finish()

    def _finish(self):
        # Relay the FIN: the peer's other direction stays open (half-close).
        self.done = True
        session = self.session
        if not (session.c2o.done and session.o2c.done):
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        # Both directions are over; close() sends the FIN.
        session.close("ok")

    def mode(self):
        return "s" if self.splice_mode else ("b" if self.bulk else "-")

    def close_pipe(self):
        if self.pipe_r >= 0:
            os.close(self.pipe_r)
            os.close(self.pipe_w)
            self.pipe_r = self.pipe_w = -1


class TcpSession:
    __slots__ = ("relay", "client", "client_addr", "dst", "route", "stats", "origin", "cfd", "ofd",
                 "origin_addr", "c2o", "o2c", "t_start", "last_activity", "connect_deadline",
                 "connected", "client_writable_watched", "closed", "source_key", "pool", "target",
                 "tried", "deadline")

    def __init__(self, relay, client, client_addr, dst, route, stats, source_key):
        self.relay = relay
        self.client = client
        self.cfd = client.fileno()
        self.client_addr = client_addr
        self.dst = dst
        self.route = route
        self.pool = route.pool
        self.stats = stats
        self.source_key = source_key
        self.origin = None         # the socket towards the origin
        self.ofd = -1
        self.target = None         # the pool.Origin being dialled or relayed to
        self.tried = None          # origins that failed this connection (a list, once one did)
        self.origin_addr = None
        self.c2o = self.o2c = None
        self.t_start = self.last_activity = _monotonic()
        self.deadline = self.t_start + route.connect_timeout   # for all attempts together
        self.connect_deadline = None                            # for the current attempt
        self.connected = False
        self.client_writable_watched = False
        self.closed = False

    # -- connecting ----------------------------------------------------------
    def connect(self):
        target = self.pool.pick(self.source_key)
        if target is None:
            # A route whose only origins are names that never resolved.
            self.stats.connect_error("no_origin")
            self.close("no_origin", reset_client=True)
            return
        self._attempt(target)

    def _attempt(self, target):
        """Dial TARGET with a share of what is left of the connect timeout."""
        if self.closed or self.target is not None:
            return   # closed meanwhile, or handed back after a failed hand-over and dialling already
        self.target = target
        target.active += 1
        self.origin_addr = addr = target.sockaddr(self.dst[1])
        guard = self.relay.guard
        if guard is not None:
            why = guard.check(target, "tcp", self.dst[1])
            if why:
                self._attempt_failed(0, "self_dial", f"not dialled: {why}")
                return
        try:
            origin = _RawSocket(target.family, _STREAM_NONBLOCK)
        except OSError as exc:
            # Out of descriptors or memory: not the origin's fault, and no other would do better.
            target.active -= 1
            self.target = None
            self.stats.connect_error(errno.errorcode.get(exc.errno, "error").lower())
            self.close("connect_" + errno.errorcode.get(exc.errno, "error").lower(), reset_client=True)
            return
        self.origin = origin
        self.ofd = origin.fileno()
        err = origin.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            self._attempt_failed(err)
            return
        poller = self.relay.poller
        if self.c2o is None:
            self.c2o = _Pump(self, self.client, origin, True)
            self.o2c = _Pump(self, origin, self.client, False)
            poller.register(self.cfd, _CLIENT_EVENTS, self.on_client)
        else:
            self.c2o.retarget(origin, True)
            self.o2c.retarget(origin, False)
        poller.register(self.ofd, _ORIGIN_EVENTS, self.on_origin)
        if err == 0:
            self._connected()
            return
        now = _monotonic()
        if self.tried is None:
            left = len(self.pool.live_primaries) + len(self.pool.live_backups)
        else:
            left = self.pool.untried_live(self.tried)
        self.connect_deadline = now + (self.deadline - now) / min(max(left, 1), MAX_SHARES)
        self.relay.connecting.add(self)

    def _attempt_failed(self, err, kind=None, error=None):
        """The current attempt failed: count it against the origin, then try the next one.
        KIND and ERROR: what failed when it was not a system call (err 0)."""
        target = self.target
        kind = kind or CONNECT_ERRORS.get(err, errno.errorcode.get(err, str(err)).lower())
        self.stats.connect_error(kind)
        target.active -= 1
        target.connect_failures += 1
        target.last_error = error or f"connect: {os.strerror(err) if err else kind}"
        self.target = None
        self.relay.connecting.discard(self)
        if self.origin is not None:
            self.relay.poller.handlers.pop(self.ofd, None)
            self.origin.close()   # the only reference: also leaves the epoll set
            self.origin, self.ofd = None, -1
        self.pool.observe(target, False)
        if self.tried is None:
            self.tried = [target]
        else:
            self.tried.append(target)
        following = self.pool.next_after(self.source_key, self.tried) if _monotonic() < self.deadline else None
        if following is None:
            # The client learns at once that there is nobody behind this address.
            self.close("connect_" + kind, reset_client=True)
            return
        # After this event batch: the new socket may get the number of one closed in it.
        self.relay.loop.call_soon(self._attempt, following)

    def _connected(self):
        self.connected = True
        now = _monotonic()
        self.stats.observe_connect(now - self.t_start)
        self.last_activity = now
        target = self.target
        target.total += 1
        if target.failures or not target.up:
            self.pool.observe(target, True)
        # The client's socket inherited TCP_NODELAY from the listener.
        self.origin.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c2o = self.c2o
        if self.route.proxy_protocol != "none":
            c2o.queue(self.relay.proxy_header(self.route.proxy_protocol, self.client_addr, self.dst))
        # Clients usually speak first: what they sent while we connected is relayed now.
        if c2o.hint and not c2o.blocked:
            c2o.read()

    # -- events ----------------------------------------------------------------
    def on_client(self, events):
        c2o = self.c2o
        if events & EPOLLRDHUP and not events & EPOLLERR:
            c2o.ended = True
        if not self.connected:
            if events & EPOLLERR:
                self._socket_error(self.client, True)
            else:
                c2o.hint = True
            return
        o2c = self.o2c
        handled = False
        if events & EPOLLOUT and o2c.blocked:
            handled = True
            o2c.write()
            if self.closed:
                return
        if events & _READ_EVENTS and not (c2o.blocked or c2o.eof):
            handled = True
            c2o.read()
        # An error on a client that already sent its FIN surfaces when something is written to it
        # (a client that closes after the answer it wanted is not an abort).
        if not handled and events & EPOLLERR and not (self.closed or c2o.eof):
            self._socket_error(self.client, True)

    def on_origin(self, events):
        o2c = self.o2c
        if events & EPOLLRDHUP and not events & EPOLLERR:
            o2c.ended = True
        if not self.connected:
            self.relay.connecting.discard(self)
            # Writable without an error is success; ask for the error only on failure.
            if events & (EPOLLERR | EPOLLHUP):
                self._attempt_failed(self.origin.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.ECONNREFUSED)
                return
            self._connected()
            if self.closed:
                return
            events &= ~EPOLLOUT   # that one was the connect
        c2o = self.c2o
        handled = False
        if events & EPOLLOUT and c2o.blocked:
            handled = True
            c2o.write()
            if self.closed:
                return
        if events & _READ_EVENTS and not (o2c.blocked or o2c.eof):
            handled = True
            o2c.read()
        if not handled and events & EPOLLERR and not (self.closed or o2c.eof):
            self._socket_error(self.origin, False)

    def watch_client_writable(self):
        """The client stopped taking data: from now on its EPOLLOUT edges matter too."""
        if not self.client_writable_watched:
            self.client_writable_watched = True
            self.relay.poller.modify(self.cfd, _ORIGIN_EVENTS)

    def _socket_error(self, sock, is_client):
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.ECONNRESET
        code = errno.errorcode.get(err, "error").lower()
        outcome = ("client_" if is_client else "origin_") + code
        self.close(outcome, reset_client=not is_client, reset_origin=is_client)

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
        handlers = relay.poller.handlers
        # Closing a descriptor takes it out of the epoll set.
        handlers.pop(self.cfd, None)
        if reset_client:
            reset_and_close(self.client)
        else:
            self.client.close()
        if self.origin is not None:
            handlers.pop(self.ofd, None)
            if reset_origin:
                reset_and_close(self.origin)
            else:
                self.origin.close()
        if self.c2o is not None:
            self.c2o.close_pipe()
            self.o2c.close_pipe()
        if not self.connected:
            relay.connecting.discard(self)
        if self.target is not None:
            self.target.active -= 1
        relay.session_closed(self, outcome)


class TcpRelay:
    """Owns the TCP listeners' accept path and the live sessions."""

    def __init__(self, loop, metrics, logger, proxy_header):
        self.loop = loop
        self.poller = Poller(loop)
        self.metrics = metrics
        self.log = logger
        self.proxy_header = proxy_header
        self.table = None
        self.sessions = set()
        self.connecting = set()
        self.per_source = {}
        self.max_per_source = 0
        self.guard = None          # selfdial.SelfDialGuard of the running configuration
        self.buffer_size = self.bulk_buffer_size = 0
        self.scratch = self.scratch_view = self.bulk_scratch = self.bulk_view = None
        self.splice = _HAVE_SPLICE
        self.log_connections = True
        self.draining = False
        self.listeners = {}
        self._exclusive = set()
        self._paused = set()
        self._last_pause_log = -10.0
        self._sweeps = 0
        self._sweep_handle = loop.call_later(SWEEP_INTERVAL, self._sweep)

    def configure(self, config, table):
        self.table = table
        per_source = config.max_connections_per_source
        self.max_per_source = default_per_source_limit() if per_source is None else per_source
        if config.buffer_size != self.buffer_size:
            # Pending data is copied out of the scratch buffer, so it can be replaced at any time.
            self.buffer_size = config.buffer_size
            self.scratch = bytearray(self.buffer_size)
            self.scratch_view = memoryview(self.scratch)
        if config.bulk_buffer_size != self.bulk_buffer_size:
            self.bulk_buffer_size = config.bulk_buffer_size
            self.bulk_scratch = bytearray(self.bulk_buffer_size)
            self.bulk_view = memoryview(self.bulk_scratch)
        self.splice = _HAVE_SPLICE and config.splice
        self.log_connections = config.log_connections

    def add_listener(self, sock, shared=False):
        """SHARED: other processes (workers) accept on the same socket: wake only one of them."""
        self.listeners[sock.fileno()] = sock
        if shared:
            self._exclusive.add(sock.fileno())
        self._watch_listener(sock)

    def _watch_listener(self, sock):
        fd = sock.fileno()
        self.poller.register(fd, EPOLLIN | (EPOLLEXCLUSIVE if fd in self._exclusive else 0),
                             lambda events, lsock=sock, family=int(sock.family): self._on_accept(lsock, family),
                             deferred=True)

    def remove_listener(self, sock):
        # Unregistered explicitly: a shared socket stays open elsewhere, and an epoll set keeps
        # an open file until it is removed.
        if self.listeners.pop(sock.fileno(), None) is not None and sock.fileno() not in self._paused:
            self.poller.unregister(sock.fileno())
        self._paused.discard(sock.fileno())
        self._exclusive.discard(sock.fileno())

    def _pause_accepting(self, lsock, exc):
        """Out of descriptors or memory: the listener would be readable at once again, so stop
        watching it for a moment instead of spinning; waiting clients stay in the backlog."""
        fd = lsock.fileno()
        self.poller.unregister(fd)
        self._paused.add(fd)
        now = _monotonic()
        if now - self._last_pause_log >= 5.0:
            self._last_pause_log = now
            self.log.error(f"accept on {fmt_addr(lsock.getsockname())} failed: {exc.strerror}; "
                           f"pausing accepts ({len(self.sessions)} connections open)")
        self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting, fd)

    def _resume_accepting(self, fd):
        if fd in self._paused:
            self._paused.discard(fd)
            sock = self.listeners.get(fd)
            if sock is not None:
                self._watch_listener(sock)

    def _sweep(self):
        now = _monotonic()
        for session in [s for s in self.connecting if now >= s.connect_deadline]:
            session._attempt_failed(errno.ETIMEDOUT)
        self._sweeps += 1
        if self._sweeps % IDLE_SWEEP_EVERY == 0:
            idle = [s for s in self.sessions
                    if s.connected and now - s.last_activity >= s.route.idle_timeout]
            for session in idle:
                session.close("idle_timeout")
        self._sweep_handle = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _on_accept(self, lsock, family):
        for _unused1 in range(64):
            try:
                fd, client_addr = lsock._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self._pause_accepting(lsock, exc)
                    return
                continue  # ECONNABORTED and the like: that one connection is gone
            # A blocking descriptor (accept4 without SOCK_NONBLOCK): every call on it passes
            # MSG_DONTWAIT instead of paying a syscall to change that.
            client = _RawSocket(family, socket.SOCK_STREAM, 0, fd)
            self._new_connection(client, client_addr)

    def _new_connection(self, client, client_addr):
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
            origin = fmt_addr(session.origin_addr) if session.origin_addr else "-"
            self.log.event(
                f"tcp closed client={fmt_addr(session.client_addr)} dst={fmt_addr(session.dst)} "
                f"route={session.route.name} origin={origin} outcome={outcome} "
                f"duration={_monotonic() - session.t_start:.3f}s"
                + (f" bulk={c2o.mode()}{o2c.mode()}" if session.connected else "")
                + (f" failed_over_from={','.join(o.label for o in session.tried)}" if session.tried else ""))

    def reset_all(self, outcome="shutdown"):
        for session in list(self.sessions):
            session.close(outcome, reset_client=True, reset_origin=True)

    def shutdown(self):
        self._sweep_handle.cancel()
        self.poller.close()
