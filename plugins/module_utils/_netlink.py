# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Raw rtnetlink: the socket, batched route changes, and the decoders every reader uses.

Every read of links, addresses, routes, rules and namespace ids in the
collection goes through :class:`RawRtnl` (one dump per kind, parsed with
``struct``): pyroute2 spends 0.3-1 ms of Python per message, which is seconds
for tens of thousands of AnyIP routes or hundreds of tenant namespaces. Bulk
route changes go here too, hundreds of requests per ``sendmsg()``, acks matched
by sequence number. Other writes (veth pairs, GRE devices, rules, addresses)
go through pyroute2 (``_iproute.py``).

A socket belongs to the network namespace of the thread that creates it
(``_netns.in_netns``).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError

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
IFF_UP = 0x1
LO_INDEX = 1

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}

# linux/netlink.h, rtnetlink.h, if_link.h, if_addr.h, fib_rules.h, net_namespace.h, if_tunnel.h
NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SOL_NETLINK = 270
RTM_GETLINK = 18
RTM_GETADDR = 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_GETRULE = 34
RTM_NEWNSID, RTM_GETNSID = 88, 90
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 7, 9, 15
IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_LINK_NETNSID = 3, 4, 5, 18, 20, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_GRE_IFLAGS, IFLA_GRE_OFLAGS, IFLA_GRE_IKEY, IFLA_GRE_OKEY = 2, 3, 4, 5
IFLA_GRE_LOCAL, IFLA_GRE_REMOTE, IFLA_GRE_TTL = 6, 7, 8
IFA_ADDRESS, IFA_LOCAL = 1, 2
FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK, FRA_PROTOCOL = 6, 10, 15, 16, 21
NETNSA_NSID, NETNSA_FD = 1, 3
GRE_KEY = 0x2000            # the K bit of the GRE flags
GRE_KINDS = ('gre', 'ip6gre')

_NLMSGHDR = struct.Struct('=IHHII')
_RTMSG = struct.Struct('=BBBBBBBBI')
_RTNEXTHOP = struct.Struct('=HBBi')
_IFINFOMSG = struct.Struct('=BxHiII')
_IFADDRMSG = struct.Struct('=BBBBI')
_FIBRULEHDR = struct.Struct('=BBBBBBBBI')
_RTATTR = struct.Struct('=HH')
_BATCH = 256


# --------------------------------------------------------------------------
# Errors as sentences

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
    """An EdgeError naming the object and what the kernel said."""
    msg = '%s: the kernel refused: %s' % (what, kernel_says(exc))
    code = getattr(exc, 'code', None) or getattr(exc, 'errno', None)
    if hint is None and code == errno.EOPNOTSUPP:
        hint = 'the running kernel lacks the feature this object needs'
    if hint:
        msg += '; %s' % hint
    return EdgeError(msg)


# --------------------------------------------------------------------------
# Decoding

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


def multipath_gateways(payload, af):
    """Gateways of the nexthops in an RTA_MULTIPATH payload (struct rtnexthop, each with its attributes)."""
    gateways = []
    offset = 0
    while offset + _RTNEXTHOP.size <= len(payload):
        length = _RTNEXTHOP.unpack_from(payload, offset)[0]
        if length < _RTNEXTHOP.size:
            break
        attrs = parse_attrs(payload, offset + _RTNEXTHOP.size, offset + length)
        if RTA_GATEWAY in attrs:
            gateways.append(socket.inet_ntop(af, attrs[RTA_GATEWAY]))
        offset += (length + 3) & ~3
    return gateways


def _text(raw):
    return raw.split(b'\0', 1)[0].decode('utf-8', 'replace') if raw is not None else None


def _u32(raw, default=None):
    return struct.unpack('=I', raw[:4])[0] if raw is not None else default


def _s32(raw, default=None):
    return struct.unpack('=i', raw[:4])[0] if raw is not None else default


def _ip(raw, af):
    return socket.inet_ntop(af, raw) if raw is not None else None


class Link(object):
    """One network interface as the kernel reports it."""

    __slots__ = ('index', 'name', 'alias', 'up', 'kind', 'peer', 'mtu', 'link_nsid', 'tunnel')

    def __init__(self, index, name, alias, up, kind, peer, mtu, link_nsid, tunnel):
        self.index = index
        self.name = name
        self.alias = alias          # IFLA_IFALIAS, or None
        self.up = up
        self.kind = kind            # 'veth', 'gre', 'ip6gre', ... or None
        self.peer = peer            # IFLA_LINK: a veth's peer index
        self.mtu = mtu
        self.link_nsid = link_nsid  # where the underlay / peer lives, or None (this namespace)
        self.tunnel = tunnel        # GreParams for gre/ip6gre, else None


class GreParams(object):
    """The tunnel attributes of a gre or ip6gre device (IFLA_GRE_*, the same numbers for both)."""

    __slots__ = ('family', 'local', 'remote', 'ttl', 'ikey', 'okey')

    def __init__(self, family, local, remote, ttl, ikey, okey):
        self.family = family
        self.local = local
        self.remote = remote
        self.ttl = ttl
        self.ikey = ikey            # None without the key flag
        self.okey = okey


def _gre_params(kind, data):
    family = 6 if kind == 'ip6gre' else 4
    attrs = parse_attrs(data, 0)
    af = FAMILY[family]

    def flags(attr):
        raw = attrs.get(attr)
        return struct.unpack('>H', raw[:2])[0] if raw is not None else 0

    def key(attr, flag_attr):
        raw = attrs.get(attr)
        if raw is None or not flags(flag_attr) & GRE_KEY:
            return None
        return struct.unpack('>I', raw[:4])[0]

    ttl = attrs.get(IFLA_GRE_TTL)
    return GreParams(family, _ip(attrs.get(IFLA_GRE_LOCAL), af), _ip(attrs.get(IFLA_GRE_REMOTE), af),
                     ttl[0] if ttl else None, key(IFLA_GRE_IKEY, IFLA_GRE_IFLAGS), key(IFLA_GRE_OKEY, IFLA_GRE_OFLAGS))


def decode_link(msg):
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(msg)
    attrs = parse_attrs(msg, _IFINFOMSG.size)
    kind = data = None
    if IFLA_LINKINFO in attrs:
        info = parse_attrs(attrs[IFLA_LINKINFO], 0)
        kind = _text(info.get(IFLA_INFO_KIND))
        data = info.get(IFLA_INFO_DATA)
    tunnel = _gre_params(kind, data) if kind in GRE_KINDS and data is not None else None
    return Link(index, _text(attrs.get(IFLA_IFNAME)), _text(attrs.get(IFLA_IFALIAS)) or None, bool(flags & IFF_UP),
                kind, _u32(attrs.get(IFLA_LINK)), _u32(attrs.get(IFLA_MTU)), _s32(attrs.get(IFLA_LINK_NETNSID)),
                tunnel)


class Address(object):
    __slots__ = ('index', 'family', 'prefixlen', 'scope', 'address', 'peer')

    def __init__(self, index, family, prefixlen, scope, address, peer=None):
        self.index = index
        self.family = family        # 4 or 6
        self.prefixlen = prefixlen
        self.scope = scope
        self.address = address
        self.peer = peer            # the other end of a point-to-point address (``peer``), else None

    @property
    def interface(self):
        """'192.0.2.1/24' (normalised as ipaddress prints it)."""
        return str(ipaddress.ip_interface('%s/%d' % (self.address, self.prefixlen)))


# --------------------------------------------------------------------------
# The socket

class RawRtnl(object):
    """A plain rtnetlink socket in the namespace of the creating thread (PROTOCOL: another netlink family's).

    ``interrupted`` becomes True when a dump answered with NLM_F_DUMP_INTR (the kernel's objects changed
    while it was being dumped: its messages are not one consistent picture).
    """

    def __init__(self, protocol=NETLINK_ROUTE):
        self.interrupted = False
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
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

    def _exchange(self, msg_type, flags, body):
        """Send one request; return [payload] of its answers (a dump's messages, or one reply)."""
        seq = self._next_seq()
        self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body)
        found = []
        while True:
            for kind, mflags, mseq, data, start, end in self._messages():
                if mseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from('=i', data, start + _NLMSGHDR.size)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return found
                if mflags & NLM_F_DUMP_INTR:
                    self.interrupted = True
                found.append(data[start + _NLMSGHDR.size:end])
                if not mflags & NLM_F_MULTI and not flags & NLM_F_DUMP:
                    return found

    def dump(self, msg_type, body):
        """[payload] of every message a dump request of MSG_TYPE returns (what follows the netlink header)."""
        return self._exchange(msg_type, NLM_F_REQUEST | NLM_F_DUMP, body)

    # -- readers ---------------------------------------------------------
    def links(self):
        """{name: Link} of the namespace."""
        return dict((link.name, link) for link in
                    (decode_link(msg) for msg in self.dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))))

    def addresses(self):
        """[Address] of every interface of the namespace, both families."""
        found = []
        for msg in self.dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            af, plen, _flags, scope, index = _IFADDRMSG.unpack_from(msg)
            if af not in VERSION:
                continue
            attrs = parse_attrs(msg, _IFADDRMSG.size)
            raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
            peer = attrs.get(IFA_ADDRESS) if IFA_LOCAL in attrs else None
            if raw is not None:
                found.append(Address(index, VERSION[af], plen, scope, _ip(raw, af),
                                     _ip(peer, af) if peer is not None and peer != raw else None))
        return found

    def routes(self, family, table):
        """[dict] of every route of one family in one table, or in every table when TABLE is None
        (filtered by the kernel when it can).

        A namespace that never had a route in TABLE has no such table: no routes.
        """
        af = FAMILY[family]
        if table is None:
            body = _RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, 0)
        else:
            body = _RTMSG.pack(af, 0, 0, 0, table if table < 256 else 0, 0, 0, 0, 0) + _attr(RTA_TABLE, struct.pack('=I', table))
        try:
            messages = self.dump(RTM_GETROUTE, body)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return []
        routes = []
        for msg in messages:
            (rfamily, dst_len, _src_len, _tos, rtable, proto, scope, rtype, _rflags) = _RTMSG.unpack_from(msg)
            attrs = parse_attrs(msg, _RTMSG.size)
            if RTA_TABLE in attrs:
                rtable = _u32(attrs[RTA_TABLE])
            if (table is not None and rtable != table) or rfamily != af:
                continue
            dst = attrs.get(RTA_DST)
            routes.append({
                'family': family,
                'dst': _ip(dst, af) if dst else ('0.0.0.0' if family == 4 else '::'),
                'dst_len': dst_len, 'type': rtype, 'scope': scope, 'proto': proto, 'table': rtable,
                'oif': _u32(attrs.get(RTA_OIF)),
                'prefsrc': _ip(attrs.get(RTA_PREFSRC), af),
                'gateway': _ip(attrs.get(RTA_GATEWAY), af),
                'priority': _u32(attrs.get(RTA_PRIORITY)),
                'multipath': multipath_gateways(attrs[RTA_MULTIPATH], af) if RTA_MULTIPATH in attrs else [],
            })
        return routes

    def all_routes(self, family):
        """Routes of every table of one family (no table filter)."""
        af = FAMILY[family]
        found = []
        for msg in self.dump(RTM_GETROUTE, _RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, 0)):
            (rfamily, dst_len, _src, _tos, rtable, proto, scope, rtype, _flags) = _RTMSG.unpack_from(msg)
            if rfamily != af:
                continue
            attrs = parse_attrs(msg, _RTMSG.size)
            dst = attrs.get(RTA_DST)
            found.append({
                'family': family,
                'dst': _ip(dst, af) if dst else ('0.0.0.0' if family == 4 else '::'),
                'dst_len': dst_len, 'type': rtype, 'scope': scope, 'proto': proto,
                'table': _u32(attrs.get(RTA_TABLE), rtable),
                'oif': _u32(attrs.get(RTA_OIF)),
                'gateway': _ip(attrs.get(RTA_GATEWAY), af),
                'priority': _u32(attrs.get(RTA_PRIORITY), 0),
            })
        return found

    def rules(self, family):
        """[dict] of the policy rules of one family."""
        found = []
        for msg in self.dump(RTM_GETRULE, _FIBRULEHDR.pack(FAMILY[family], 0, 0, 0, 0, 0, 0, 0, 0)):
            table = _FIBRULEHDR.unpack_from(msg)[4]
            attrs = parse_attrs(msg, _FIBRULEHDR.size)
            proto = attrs.get(FRA_PROTOCOL)
            found.append({
                'family': family,
                'priority': _u32(attrs.get(FRA_PRIORITY), 0),
                'fwmark': _u32(attrs.get(FRA_FWMARK)),
                'fwmask': _u32(attrs.get(FRA_FWMASK), 0xFFFFFFFF),
                'table': _u32(attrs.get(FRA_TABLE), table),
                'proto': proto[0] if proto else 0,
            })
        return found

    def nsid_of(self, fd):
        """The id under which this socket's namespace knows the namespace of FD, or None."""
        body = struct.pack('=Bxxx', socket.AF_UNSPEC) + _attr(NETNSA_FD, struct.pack('=I', fd))
        try:
            replies = self._exchange(RTM_GETNSID, NLM_F_REQUEST, body)
        except OSError:
            return None
        for msg in replies:
            nsid = _s32(parse_attrs(msg, 4).get(NETNSA_NSID))
            if nsid is not None and 0 <= nsid < 0x7FFFFFFF:
                return nsid
        return None

    # -- bulk route changes -------------------------------------------------
    @staticmethod
    def encode(op, route, seq):
        """One RTM_NEWROUTE/RTM_DELROUTE request for a route dict (as routes() returns)."""
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
