"""UDP: per-flow relay of datagrams that TPROXY delivered to the listener.

The listener learns each datagram's original destination from
IP_ORIGDSTADDR. A flow (client address, original destination) gets two
sockets:
- towards the origin, a connected socket from the proxy's own address;
- towards the client, a transparent socket bound to the original
  destination and connected to the client. Replies leave from the address
  the client dialled; TPROXY's established-socket lookup also delivers the
  client's later datagrams straight to this socket. Binding a port below
  net.ipv4.ip_unprivileged_port_start needs CAP_NET_BIND_SERVICE.
A flow expires after its route's idle_timeout without traffic.
"""
import errno
import socket
import time

from .netutil import default_per_source_limit, fmt_addr, parse_origdstaddr, set_transparent, unprivileged_port_start

_monotonic = time.monotonic
MAX_DATAGRAM = 65535
_CMSG_SPACE = socket.CMSG_SPACE(64)


class UdpFlow:
    __slots__ = ("relay", "loop", "key", "client_addr", "dst", "route", "stats", "origin_sock",
                 "reply_sock", "origin_addr", "header", "last_activity", "timer", "t_start",
                 "source_key", "closed", "pool", "target")

    def __init__(self, relay, key, client_addr, dst, route, stats, source_key, target):
        self.relay = relay
        self.loop = relay.loop
        self.key = key
        self.client_addr = client_addr
        self.dst = dst
        self.route = route
        self.pool = route.pool
        self.stats = stats
        self.source_key = source_key
        self.target = target        # the pool.Origin this flow's datagrams go to
        self.origin_addr = target.sockaddr(dst[1])
        self.header = b""
        self.origin_sock = self.reply_sock = None
        self.t_start = self.last_activity = _monotonic()
        self.timer = None
        self.closed = False

    def _origin_socket(self, target):
        origin = socket.socket(target.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            origin.connect(target.sockaddr(self.dst[1]))
        except OSError:
            origin.close()
            raise
        return origin

    def open(self, family):
        route = self.route
        origin = self._origin_socket(self.target)
        try:
            reply = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError:
            origin.close()
            raise
        try:
            reply.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            set_transparent(reply, family)
            if family == socket.AF_INET6:
                reply.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            reply.bind(self.dst[:2])
            reply.connect(self.client_addr[:2])
        except OSError:
            origin.close()
            reply.close()
            raise
        self.origin_sock, self.reply_sock = origin, reply
        if route.proxy_protocol == "v2":
            self.header = self.relay.proxy_header("v2", self.client_addr, self.dst, socket.SOCK_DGRAM)
        self.loop.add_reader(origin.fileno(), self._on_origin_readable)
        self.loop.add_reader(reply.fileno(), self._on_client_readable)
        self.timer = self.loop.call_later(route.idle_timeout, self._on_idle_check)
        self.target.active += 1
        self.target.total += 1

    def _move(self):
        """The flow's origin is down: send the next datagrams to the one the pool gives now."""
        target = self.pool.pick(self.source_key)
        if target is None or target is self.target:
            return
        guard = self.relay.guard
        if guard is not None and guard.check(target, "udp", self.dst[1]):
            return
        try:
            origin = self._origin_socket(target)
        except OSError:
            return
        self.loop.remove_reader(self.origin_sock.fileno())
        self.origin_sock.close()
        self.origin_sock = origin
        self.loop.add_reader(origin.fileno(), self._on_origin_readable)
        self.target.active -= 1
        self.target = target
        self.origin_addr = target.sockaddr(self.dst[1])
        target.active += 1
        target.total += 1

    def to_origin(self, data):
        if not self.target.up:
            self._move()
        self.last_activity = _monotonic()
        self.stats.bytes_in += len(data)
        try:
            self.origin_sock.send(self.header + data if self.header else data)
        except (BlockingIOError, InterruptedError):
            pass  # UDP: a full socket buffer drops, as the network would
        except OSError as exc:
            self._origin_error(exc)

    def _on_client_readable(self):
        for _unused1 in range(32):
            try:
                data = self.reply_sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error about an earlier reply; the flow lives on
            self.to_origin(data)
            if self.closed:
                return

    def _on_origin_readable(self):
        for _unused1 in range(32):
            try:
                data = self.origin_sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._origin_error(exc)
                return
            self.last_activity = _monotonic()
            self.stats.bytes_out += len(data)
            try:
                self.reply_sock.send(data)
            except OSError:
                pass

    def _origin_error(self, exc):
        kind = "refused" if isinstance(exc, ConnectionRefusedError) else (
            exc.strerror or "error").lower().replace(" ", "_")
        self.stats.connect_error(kind)
        # An ICMP error from the origin (port unreachable, ...) counts against it, as a refused
        # TCP connection does; once it is down, the flow moves at its next datagram.
        self.target.connect_failures += 1
        self.target.last_error = f"udp: {exc.strerror or kind}"
        self.pool.observe(self.target, False)

    def _on_idle_check(self):
        remaining = self.route.idle_timeout - (_monotonic() - self.last_activity)
        if remaining <= 0:
            self.timer = None
            self.close("idle_timeout")
        else:
            self.timer = self.loop.call_later(remaining, self._on_idle_check)

    def close(self, outcome):
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for sock in (self.origin_sock, self.reply_sock):
            if sock is not None:
                self.loop.remove_reader(sock.fileno())
                sock.close()
        if self.reply_sock is not None:
            self.target.active -= 1
        self.relay.flow_closed(self, outcome)


class UdpRelay:
    def __init__(self, loop, metrics, logger, proxy_header):
        self.loop = loop
        self.metrics = metrics
        self.log = logger
        self.proxy_header = proxy_header
        self.table = None
        self.flows = {}
        self.per_source = {}
        self.max_per_source = 0
        self.guard = None          # selfdial.SelfDialGuard of the running configuration
        self.log_connections = True
        self.first_unprivileged_port = 1024   # read at configure(); only words error messages
        self.draining = False

    @property
    def sessions(self):
        return self.flows

    def configure(self, config, table):
        self.table = table
        per_source = config.max_connections_per_source
        self.max_per_source = default_per_source_limit() if per_source is None else per_source
        self.log_connections = config.log_connections
        self.first_unprivileged_port = unprivileged_port_start()

    def add_listener(self, sock):
        self.loop.add_reader(sock.fileno(), self._on_readable, sock)

    def remove_listener(self, sock):
        self.loop.remove_reader(sock.fileno())

    def _on_readable(self, lsock):
        for _unused1 in range(64):
            try:
                data, ancdata, _flags, client_addr = lsock.recvmsg(MAX_DATAGRAM, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            orig = parse_origdstaddr(ancdata)
            if orig is None:
                continue  # not delivered by TPROXY: nothing to relay it to
            family, host, port = orig
            dst = (host, port)
            key = (client_addr[0], client_addr[1], host, port)
            flow = self.flows.get(key)
            if flow is None:
                flow = self._new_flow(key, family, client_addr, dst)
                if flow is None:
                    continue
            flow.to_origin(data)

    def _new_flow(self, key, family, client_addr, dst):
        route = self.table.lookup_text("udp", dst[0], dst[1])
        if route is None:
            return self._refuse(client_addr, dst, None, "no_route")
        stats = self.metrics.route(route.name, "udp")
        stats.total += 1
        if self.draining:
            return self._refuse(client_addr, dst, route, "draining")
        if route.max_connections and stats.active >= route.max_connections:
            return self._refuse(client_addr, dst, route, "max_connections")
        source_key = client_addr[0]
        held = self.per_source.get(source_key, 0)
        if self.max_per_source and held >= self.max_per_source:
            return self._refuse(client_addr, dst, route, "source_limit")
        target = route.pool.pick(source_key)
        outcome = "no_origin"    # only names that never resolved: counted like a failed connection
        if target is not None and self.guard is not None and self.guard.check(target, "udp", dst[1]):
            target, outcome = None, "self_dial"
        if target is None:
            stats.connect_error(outcome)
            if self.log_connections:
                self.log.event(f"udp closed client={fmt_addr(client_addr)} dst={fmt_addr(dst)} "
                               f"route={route.name} origin=- outcome={outcome} duration=0.000s")
            return None
        flow = UdpFlow(self, key, client_addr, dst, route, stats, source_key, target)
        try:
            flow.open(family)
        except OSError as exc:
            stats.connect_error((exc.strerror or "error").lower().replace(" ", "_"))
            why = exc.strerror
            if exc.errno == errno.EACCES and dst[1] < self.first_unprivileged_port:
                why += f" (answering from port {dst[1]} needs CAP_NET_BIND_SERVICE)"
            self.log.error(f"udp flow {fmt_addr(client_addr)} -> {fmt_addr(dst)} route={route.name}: "
                           f"cannot open sockets: {why}")
            return None
        self.per_source[source_key] = held + 1
        stats.active += 1
        self.flows[key] = flow
        return flow

    def _refuse(self, client_addr, dst, route, reason):
        self.metrics.refuse(reason)
        if self.log_connections:
            self.log.event(f"udp refused client={fmt_addr(client_addr)} dst={fmt_addr(dst)} "
                           f"route={route.name if route else '-'} outcome={reason}")
        return None

    def flow_closed(self, flow, outcome):
        self.flows.pop(flow.key, None)
        flow.stats.active -= 1
        left = self.per_source.get(flow.source_key, 1) - 1
        if left > 0:
            self.per_source[flow.source_key] = left
        else:
            self.per_source.pop(flow.source_key, None)
        if self.log_connections:
            self.log.event(
                f"udp closed client={fmt_addr(flow.client_addr)} dst={fmt_addr(flow.dst)} "
                f"route={flow.route.name} origin={fmt_addr(flow.origin_addr)} outcome={outcome} "
                f"duration={_monotonic() - flow.t_start:.3f}s")

    def close_all(self, outcome="shutdown"):
        for flow in list(self.flows.values()):
            flow.close(outcome)
