"""Socket options and listener sockets shared by the TCP and UDP relays."""
import resource
import socket
import struct

# Linux values; older Python builds lack some of these names.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)
IP_RECVORIGDSTADDR = getattr(socket, "IP_RECVORIGDSTADDR", 20)
IPV6_RECVORIGDSTADDR = getattr(socket, "IPV6_RECVORIGDSTADDR", 74)
SOL_IP = getattr(socket, "SOL_IP", 0)
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)
LINGER_RESET = struct.pack("ii", 1, 0)
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12


def set_transparent(sock, family):
    """IP_TRANSPARENT (or its IPv6 twin); needs CAP_NET_ADMIN."""
    if family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)


def reset_and_close(sock):
    """Close with an RST instead of a FIN (SO_LINGER with a zero timeout)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    except OSError:
        pass
    sock.close()


def effective_caps():
    """The process's effective capabilities as a bit mask, or None when /proc does not say."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return None


def unprivileged_port_start():
    """net.ipv4.ip_unprivileged_port_start of this namespace (it covers IPv6 as well)."""
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 1024


def udp_bind_problem(routes):
    """A sentence when some UDP routes cannot be answered on all their ports, else None.

    A UDP reply leaves from the port the client dialled; binding a port below
    net.ipv4.ip_unprivileged_port_start needs CAP_NET_BIND_SERVICE.
    """
    start = unprivileged_port_start()
    low = [r.name for r in routes if r.protocol == "udp" and r.port_lo < start]
    caps = effective_caps()
    if not low or caps is None or caps & (1 << CAP_NET_BIND_SERVICE):
        return None
    return (f"udp route(s) {', '.join(low)} answer from the port the client dialled, and ports below {start} "
            f"(net.ipv4.ip_unprivileged_port_start) need CAP_NET_BIND_SERVICE, which this process lacks: "
            f"datagrams to those ports get no answer")


MIN_PER_SOURCE = 16


def default_per_source_limit():
    """Connections (and UDP flows) one source may hold when the configuration does not say:
    a quarter of the descriptor limit. Each takes two descriptors, so one client -- or a chain of
    the proxy dialling itself, which all comes from one address -- can take at most half of them;
    the rest keep serving everyone else. Under the role's LimitNOFILE=16384: 4096."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(MIN_PER_SOURCE, soft // 4)


def describe_os_error(exc):
    return exc.strerror or str(exc)


def make_listener(endpoint, sock_type, transparent=True, reuseport=False, backlog=4096):
    sock = socket.socket(endpoint.family, sock_type | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if endpoint.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if transparent:
            try:
                set_transparent(sock, endpoint.family)
            except PermissionError:
                raise PermissionError(
                    f"cannot set IP_TRANSPARENT on the listener {endpoint}: "
                    "the process lacks CAP_NET_ADMIN") from None
        if sock_type == socket.SOCK_DGRAM and transparent:
            if endpoint.family == socket.AF_INET6:
                sock.setsockopt(SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)
            else:
                sock.setsockopt(SOL_IP, IP_RECVORIGDSTADDR, 1)
        try:
            sock.bind(endpoint.sockaddr)
        except OSError as exc:
            kind = "tcp" if sock_type == socket.SOCK_STREAM else "udp"
            raise OSError(exc.errno, f"cannot listen on {kind} {endpoint}: {describe_os_error(exc)}") from None
        if sock_type == socket.SOCK_STREAM:
            # Accepted sockets inherit TCP_NODELAY (Linux): one call per listener, not per connection.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.listen(backlog)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def parse_origdstaddr(ancdata):
    """The original destination from IP_ORIGDSTADDR / IPV6_ORIGDSTADDR ancillary data."""
    for level, kind, data in ancdata:
        if level == SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            port = struct.unpack_from("!H", data, 2)[0]
            return socket.AF_INET, socket.inet_ntop(socket.AF_INET, data[4:8]), port
        if level == SOL_IPV6 and kind == IPV6_RECVORIGDSTADDR and len(data) >= 24:
            port = struct.unpack_from("!H", data, 2)[0]
            return socket.AF_INET6, socket.inet_ntop(socket.AF_INET6, data[8:24]), port
    return None


def fmt_addr(addr):
    host, port = addr[0], addr[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
