# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Netlink through pyroute2, for both 0.7.x (Debian 12) and 0.9.x (PyPI).

Only the small API surface that behaves the same in both series is used:
``IPRoute()`` without ``netns=`` (the process has already entered its
namespace, see _netns), ``route``/``link``/``addr``/``rule`` with explicit
numeric fields, and ``get_attr`` on the returned messages.
"""

from __future__ import annotations

import errno
import os
import socket

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: F401  pylint: disable=unused-import
    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None
except ImportError as _exc:  # reported by require_pyroute2()
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = _exc
    IPRoute = None

    class NetlinkError(Exception):  # type: ignore[no-redef]
        code = 0

# Ownership tag: every route (and policy rule) the collection creates carries
# this routing protocol number, so a purge never removes anybody else's.
# 172 is unassigned in iproute2's rt_protos and reads as "AC" in hex.
ROUTE_PROTO = 172

TABLE_MAIN = 254
TABLE_LOCAL = 255
RTN_UNICAST = 1
RTN_LOCAL = 2
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


class NetlinkFailure(Exception):
    """A kernel refusal, already phrased as a sentence for the user."""


def require_pyroute2(module):
    if not HAS_PYROUTE2:
        module.fail_json(msg='this module needs the Python library pyroute2 on the managed host '
                             '(Debian/Ubuntu: apt install python3-pyroute2; or pip install pyroute2): %s'
                             % PYROUTE2_IMPORT_ERROR)


def open_iproute():
    """An IPRoute socket in the current namespace, with readable kernel errors."""
    for kwargs in ({'ext_ack': True, 'strict_check': True}, {'ext_ack': True}, {}):
        try:
            return IPRoute(**kwargs)
        except TypeError:
            continue
    return IPRoute()


def kernel_says(exc):
    """'File exists (errno 17)' from a NetlinkError or OSError."""
    code = getattr(exc, 'code', None) or getattr(exc, 'errno', None) or 0
    text = ''
    args = getattr(exc, 'args', ())
    if len(args) > 1 and isinstance(args[1], str):
        text = args[1]
    if not text and code:
        text = os.strerror(code)
    if not text:
        text = str(exc)
    return '%s (errno %s)' % (text, code) if code else text


def failure(what, exc, hint=None):
    """Build a NetlinkFailure naming the object and what the kernel said."""
    msg = '%s: the kernel refused: %s' % (what, kernel_says(exc))
    code = getattr(exc, 'code', None)
    if hint is None and code == errno.EOPNOTSUPP:
        hint = 'the running kernel lacks the feature this object needs'
    if hint:
        msg += '; %s' % hint
    return NetlinkFailure(msg)


def get_attr(msg, name, default=None):
    value = msg.get_attr(name)
    return default if value is None else value


def link_index(ipr, name):
    """Interface index by name in the current namespace, or None."""
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_names(ipr):
    return {msg['index']: get_attr(msg, 'IFLA_IFNAME') for msg in ipr.get_links()}


def dump_routes(ipr, family, table, proto=None):
    """All routes of one family and table (optionally one protocol), as dicts.

    pyroute2 0.9 returns generators; both series accept these filters.
    """
    found = []
    for msg in ipr.route('dump', family=FAMILY[family], table=table):
        if get_attr(msg, 'RTA_TABLE', msg['table']) != table:
            continue
        if proto is not None and msg['proto'] != proto:
            continue
        found.append({
            'family': family,
            'dst': get_attr(msg, 'RTA_DST', '0.0.0.0' if family == 4 else '::'),
            'dst_len': msg['dst_len'],
            'type': msg['type'],
            'scope': msg['scope'],
            'proto': msg['proto'],
            'oif': get_attr(msg, 'RTA_OIF'),
            'prefsrc': get_attr(msg, 'RTA_PREFSRC'),
            'gateway': get_attr(msg, 'RTA_GATEWAY'),
            'priority': get_attr(msg, 'RTA_PRIORITY'),
            'table': table,
        })
    return found


# --------------------------------------------------------------------------
# Bulk route dumps and changes over a raw rtnetlink socket.
#
# pyroute2 spends 0.3-1 ms of Python per route message (0.9 runs an asyncio
# loop iteration per message). For tens of thousands of AnyIP routes we
# build and parse the fixed-layout route messages ourselves, send hundreds
# per sendmsg() and match the kernel's acks to requests by sequence number.

import struct  # noqa: E402

NETLINK_ROUTE = 0
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SOL_NETLINK = 270
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
_NLMSGHDR = struct.Struct('=IHHII')
_RTMSG = struct.Struct('=BBBBBBBBI')
_RTATTR = struct.Struct('=HH')
_BATCH = 256


def _attr(kind, payload):
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b'\0' * ((4 - length % 4) % 4)


def parse_attrs(data, offset, end=None):
    """{type: raw payload} of the rtattrs in DATA[OFFSET:END] (nested flag masked)."""
    end = len(data) if end is None else end
    attrs = {}
    while offset + 4 <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return attrs


class RawRtnl(object):
    """A plain rtnetlink socket in the namespace of the creating thread: dumps of any kind, and
    batched route changes. Reads of every kind and bulk route work go through here; other writes
    go through pyroute2."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        for option in (NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
            try:
                self.sock.setsockopt(SOL_NETLINK, option, 1)
            except OSError:
                pass  # older kernels: no extended acks / strict dumps
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _next_seq(self):
        self.seq += 1
        return self.seq

    def _messages(self):
        data = self.sock.recv(1 << 20)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size or offset + length > len(data):
                # Waiting for the rest of a dump after this would never end.
                raise OSError(errno.EPROTO, 'malformed netlink message (length %d at offset %d of %d bytes)'
                              % (length, offset, len(data)))
            yield kind, flags, seq, data, offset, offset + length
            offset += (length + 3) & ~3

    def dump(self, msg_type, body):
        """[payload] of every message a dump request of MSG_TYPE returns (what follows the netlink header)."""
        seq = self._next_seq()
        self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                       + body)
        found = []
        while True:
            for kind, _flags, mseq, data, start, end in self._messages():
                if mseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from('=i', data, start + _NLMSGHDR.size)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return found
                found.append(data[start + _NLMSGHDR.size:end])

    def routes(self, family, table):
        """[dict] of every route of one family in one table, or in every table when TABLE is None
        (filtered by the kernel when it can)."""
        af = FAMILY[family]
        if table is None:
            body = _RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, 0)
        else:
            body = _RTMSG.pack(af, 0, 0, 0, table if table < 256 else 0, 0, 0, 0, 0) + _attr(RTA_TABLE, struct.pack('=I', table))
        routes = []
        for msg in self.dump(RTM_GETROUTE, body):
            (rfamily, dst_len, _src_len, _tos, rtable, proto, scope, rtype, _rflags) = _RTMSG.unpack_from(msg)
            attrs = parse_attrs(msg, _RTMSG.size)
            if RTA_TABLE in attrs:
                rtable = struct.unpack('=I', attrs[RTA_TABLE][:4])[0]
            if (table is not None and rtable != table) or rfamily != af:
                continue
            dst = attrs.get(RTA_DST)
            routes.append({
                'family': family,
                'dst': socket.inet_ntop(af, dst) if dst else ('0.0.0.0' if family == 4 else '::'),
                'dst_len': dst_len, 'type': rtype, 'scope': scope, 'proto': proto, 'table': rtable,
                'oif': struct.unpack('=I', attrs[RTA_OIF][:4])[0] if RTA_OIF in attrs else None,
                'prefsrc': socket.inet_ntop(af, attrs[RTA_PREFSRC]) if RTA_PREFSRC in attrs else None,
                'gateway': socket.inet_ntop(af, attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None,
                'priority': struct.unpack('=I', attrs[RTA_PRIORITY][:4])[0] if RTA_PRIORITY in attrs else None,
            })
        return routes

    @staticmethod
    def encode(op, route, seq):
        """One RTM_NEWROUTE/RTM_DELROUTE request for a route dict (as dump() returns)."""
        family = route['family']
        af = FAMILY[family]
        kind = RTM_DELROUTE if op == 'del' else RTM_NEWROUTE
        flags = NLM_F_REQUEST | NLM_F_ACK
        if op == 'add':
            flags |= NLM_F_CREATE | NLM_F_EXCL
        elif op == 'replace':
            flags |= NLM_F_CREATE | NLM_F_REPLACE
        table = route['table']
        body = _RTMSG.pack(af, route['dst_len'], 0, 0, table if table < 256 else 0, route['proto'],
                           route['scope'], route['type'], 0)
        body += _attr(RTA_TABLE, struct.pack('=I', table))
        body += _attr(RTA_DST, socket.inet_pton(af, route['dst']))
        if route.get('oif'):
            body += _attr(RTA_OIF, struct.pack('=I', route['oif']))
        if route.get('prefsrc'):
            body += _attr(RTA_PREFSRC, socket.inet_pton(af, route['prefsrc']))
        if route.get('gateway'):
            body += _attr(RTA_GATEWAY, socket.inet_pton(af, route['gateway']))
        if route.get('priority') is not None:
            body += _attr(RTA_PRIORITY, struct.pack('=I', route['priority']))
        return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body

    def change(self, requests):
        """Send [(op, route)] in batches; return [(index, errno)] for the ones the kernel refused.

        Every request is acked; all of them are processed (a refusal does not
        stop the batch), so the caller decides what to undo.
        """
        errors = []
        for first in range(0, len(requests), _BATCH):
            chunk = requests[first:first + _BATCH]
            seqs = {}
            payload = []
            for offset, (op, route) in enumerate(chunk):
                seq = self._next_seq()
                seqs[seq] = first + offset
                payload.append(self.encode(op, route, seq))
            self.sock.sendall(b''.join(payload))
            pending = set(seqs)
            while pending:
                for kind, _flags, seq, data, start, _end in self._messages():
                    if kind != NLMSG_ERROR or seq not in pending:
                        continue
                    pending.discard(seq)
                    code = -struct.unpack_from('=i', data, start + _NLMSGHDR.size)[0]
                    if code:
                        errors.append((seqs[seq], code))
        return errors
