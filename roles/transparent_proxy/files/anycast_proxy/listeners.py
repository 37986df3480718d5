"""Listening sockets: given by systemd (socket activation) or the supervisor, else opened here.

A socket unit that owns the listeners (`Transparent=yes`, `FreeBind=yes`) keeps
them open while the proxy restarts or crashes: the kernel completes new
handshakes and queues them, and the next process accepts them. The process
then needs no CAP_NET_ADMIN for its TCP listeners at all. Workers share the
supervisor's sockets -- one accept queue per address, so a worker that dies
takes no queued connection with it.

Sockets are matched to the configuration by address, port and type; a given
socket the configuration does not want is closed here (its owner keeps its
own copy), and a listener the configuration wants but nobody gave is opened
here (which needs CAP_NET_ADMIN for IP_TRANSPARENT).
"""
import ipaddress
import socket

from .config import Endpoint
from .netutil import IP_RECVORIGDSTADDR, IP_TRANSPARENT, IPV6_RECVORIGDSTADDR, IPV6_TRANSPARENT, SOL_IP, \
    SOL_IPV6, make_listener


def listener_key(sock):
    """(Endpoint, "tcp"|"udp") of a bound socket."""
    address = sock.getsockname()
    host = str(ipaddress.ip_address(address[0].split("%", 1)[0]))
    kind = "tcp" if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM else "udp"
    return Endpoint(sock.family, host, address[1]), kind


def _prepare(sock, key):
    """Make a given socket what make_listener() would have made."""
    endpoint, kind = key
    v6 = endpoint.family == socket.AF_INET6
    if not sock.getsockopt(SOL_IPV6 if v6 else SOL_IP, IPV6_TRANSPARENT if v6 else IP_TRANSPARENT):
        raise OSError(0, f"the {kind} listener {endpoint} that was handed to us is not transparent "
                         "(IP_TRANSPARENT; in a socket unit: Transparent=yes): TPROXY cannot deliver to it")
    if kind == "udp":
        sock.setsockopt(SOL_IPV6 if v6 else SOL_IP, IPV6_RECVORIGDSTADDR if v6 else IP_RECVORIGDSTADDR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)


class Listeners:
    """Where a process gets its listening sockets from."""

    def __init__(self, given=()):
        self.spare = {}          # key -> a given socket not in use (yet)
        self.given = set()       # keys of sockets someone else owns too: shared, never reuseport
        self.give(given)

    def give(self, socks):
        for sock in socks:
            key = listener_key(sock)
            old = self.spare.pop(key, None)
            if old is not None:
                old.close()
            self.spare[key] = sock
            self.given.add(key)

    def obtain(self, key):
        """A listener for KEY (an (Endpoint, kind) pair): a given one, else a new one."""
        sock = self.spare.pop(key, None)
        if sock is not None:
            _prepare(sock, key)
            return sock
        endpoint, kind = key
        return make_listener(endpoint, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)

    def shared(self, key):
        return key in self.given

    def close_spare(self):
        """Given sockets the configuration does not use: our copies go."""
        for sock in self.spare.values():
            sock.close()
        self.spare.clear()
