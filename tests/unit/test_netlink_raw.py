"""_netlink.RawRtnl reads dumps message by message; a malformed answer is an error, never a hang.

The kernel's side is played by the other end of a datagram socket pair, so that answers the
kernel never sends (a truncated message) can be fed to the real reader.
"""

import errno
import socket
import struct

import pytest

from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    NLMSG_DONE, RTM_GETROUTE, RTM_NEWROUTE, RawRtnl, decode_link)

HEADER = struct.Struct('=IHHII')


def message(kind, seq, payload=b'', length=None):
    return HEADER.pack(HEADER.size + len(payload) if length is None else length, kind, 2, seq, 0) + payload


@pytest.fixture
def rtnl():
    raw = RawRtnl()
    raw.sock.close()
    raw.sock, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    raw.sock.settimeout(2)   # a reader that waits for more would fail the test instead of hanging
    yield raw, kernel
    raw.sock.close()
    kernel.close()


def test_a_dump_returns_the_payloads_of_its_own_sequence_number(rtnl):
    raw, kernel = rtnl
    kernel.send(message(RTM_NEWROUTE, 7, b'stale answer') + message(RTM_NEWROUTE, 1, b'route-a!'))
    kernel.send(message(RTM_NEWROUTE, 1, b'route-b!') + message(NLMSG_DONE, 1, b'\0\0\0\0'))
    assert raw.dump(RTM_GETROUTE, b'') == [b'route-a!', b'route-b!']
    assert HEADER.unpack(kernel.recv(100))[1] == RTM_GETROUTE   # the request the "kernel" got


@pytest.mark.parametrize('length', [8, 64])   # shorter than a header; longer than what arrived
def test_a_malformed_message_is_an_error(rtnl, length):
    raw, kernel = rtnl
    kernel.send(message(RTM_NEWROUTE, 1, b'route-a!', length=length))
    with pytest.raises(OSError) as caught:
        raw.dump(RTM_GETROUTE, b'')
    assert caught.value.errno == errno.EPROTO and 'malformed netlink message' in str(caught.value)


def _attr(kind, payload):
    length = 4 + len(payload)
    return struct.pack('=HH', length, kind) + payload + b'\0' * ((4 - length % 4) % 4)


def gre_link(kind, local, remote, key):
    """An RTM_NEWLINK payload as the kernel sends it for a gre / ip6gre device (same IFLA_GRE_* numbers)."""
    family = socket.AF_INET6 if kind == 'ip6gre' else socket.AF_INET
    data = (_attr(2, struct.pack('>H', 0x2000)) + _attr(3, struct.pack('>H', 0x2000)) +   # i/oflags: key
            _attr(4, struct.pack('>I', key)) + _attr(5, struct.pack('>I', key)) +
            _attr(6, socket.inet_pton(family, local)) + _attr(7, socket.inet_pton(family, remote)) +
            _attr(8, struct.pack('=B', 64)))
    info = _attr(1, kind.encode() + b'\0') + _attr(2, data)
    return (struct.pack('=BxHiII', 0, 778, 7, 1, 0) + _attr(3, b'gre-acme\0') + _attr(4, struct.pack('=I', 1448))
            + _attr(18, info) + _attr(20, b'anycast.edge gre\0') + _attr(37, struct.pack('=i', 0)))


@pytest.mark.parametrize('kind, local, remote', [('gre', '192.0.2.1', '198.51.100.2'),
                                                 ('ip6gre', '2001:db8:a::1', '2001:db8:b::2')])
def test_the_link_reader_decodes_gre_and_ip6gre_endpoints_alike(kind, local, remote):
    link = decode_link(gre_link(kind, local, remote, 42))
    assert (link.name, link.kind, link.mtu, link.alias, link.up, link.link_nsid) == \
        ('gre-acme', kind, 1448, 'anycast.edge gre', True, 0)
    tunnel = link.tunnel
    assert (tunnel.family, tunnel.local, tunnel.remote, tunnel.ttl, tunnel.ikey, tunnel.okey) == \
        (6 if kind == 'ip6gre' else 4, local, remote, 64, 42, 42)
