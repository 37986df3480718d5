"""_netlink.RawRtnl reads dumps message by message; a malformed answer is an error, never a hang.

The kernel's side is played by the other end of a datagram socket pair, so that answers the
kernel never sends (a truncated message) can be fed to the real reader.
"""

import errno
import socket
import struct

import pytest

from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    NLMSG_DONE, RTM_GETROUTE, RTM_NEWROUTE, RawRtnl)

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
