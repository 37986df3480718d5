# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenant network namespaces (the Magic Transit layout).

Per tenant, in the host's namespace:

* a veth pair: ``ae-NAME`` here, ``ae-NAME-t`` in the tenant's namespace;
* MARK rules in a mangle chain of the tenant's own (``AE-TENANT-NAME``, jumped
  to from PREROUTING): packets for the tenant's prefixes get its mark;
* ``ip rule fwmark MARK lookup TABLE`` and, in TABLE, the tenant's prefixes via
  the veth. The main table is never touched: the host end's addresses are added
  without a prefix route and IPv6 link-local generation is off on it.

In the tenant's namespace: the veth's other end, a default route back to the
host with a high metric (any route of the tenant's own, e.g. a GRE tunnel's,
wins over it), forwarding on, and the firewall as one nftables table
``inet anycast_edge`` replaced in one transaction.

Ownership. The loopback of every namespace this module creates carries an
interface alias ``anycast.edge tenant NAME host INODE mark M/MASK table T``
where INODE identifies the host namespace it belongs to. Only namespaces with
that marker, for this host namespace, are ever deleted. Routes and ip rules
carry the collection's route protocol; veth ends carry ``anycast.edge tenant
NAME`` as alias.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import re
import socket
import struct

from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    FAMILY, NetlinkError, ROUTE_PROTO, TABLE_MAIN, RawRtnl, failure, open_iproute, parse_attrs)
from ansible_collections.anycast.edge.plugins.module_utils._netns import (
    NETNS_RUN_DIR, NetnsError, _setns, check_netns_name, in_netns, list_netns, netns_path)
from ansible_collections.anycast.edge.plugins.module_utils._nftables import Nft
from ansible_collections.anycast.edge.plugins.module_utils._validate import (
    ParamError, check_ifname, check_mark, parse_interface, parse_prefix)
from ansible_collections.anycast.edge.plugins.module_utils._xtables import (
    ChainSpec, Jump, Rule, XtablesError, sync_chains)

OWNER = 'anycast.edge tenant'
NFT_TABLE = 'anycast_edge'
NFT_CHAIN = 'ingress'
XT_TABLE = 'mangle'
XT_CHAIN_PREFIX = 'AE-TENANT-'
DEFAULT_ROUTE_METRIC = 4096      # above any metric a tenant's own route gets by default
NAME_MAX = 15
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_-]*$')
RESERVED_TABLES = {0: 'unspec', 253: 'default', 254: 'main', 255: 'local'}
DEFAULT_POOL_V4 = '169.254.0.0/17'   # below 169.254.169.254, the cloud metadata address
DEFAULT_POOL_V6 = 'fdac:ed6e:7e4a::/64'

# The host end's IPv6 link-local address, added by hand without a prefix route:
# the kernel sends neighbour solicitations for forwarded packets from a
# link-local source only, and the generated one would add fe80::/64 to main.
HOST_LL6 = 'fe80::1/64'
ND_RULE = 'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept'
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
RTNH_F_ONLINK = 4
IFF_UP = 1
LO_INDEX = 1

# rtnetlink numbers (linux/rtnetlink.h, if_link.h, if_addr.h, fib_rules.h)
RTM_GETLINK = 18
RTM_GETADDR = 22
RTM_GETROUTE = 26
RTM_GETRULE = 34
IFLA_IFNAME = 3
IFLA_LINK = 5
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_INFO_KIND = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_TABLE = 15
FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_TABLE = 15
FRA_FWMASK = 16
FRA_PROTOCOL = 21

MARKER_RE = re.compile(r'^anycast\.edge tenant (\S+) host (\d+) mark (0x[0-9a-f]+)/(0x[0-9a-f]+) table (\d+)$')
NFT_COMMENT_RE = re.compile(r'^\s*comment "anycast\.edge tenant (\S+) input=([0-9a-f]+) kernel=([0-9a-z]+)"\s*$')
SET_XMARK_RE = re.compile(r'--set-xmark (0x[0-9a-f]+)/(0x[0-9a-f]+)')


class TenantError(Exception):
    """A failure already phrased for the user."""


# --------------------------------------------------------------------------
# Input

class Tenant(object):
    """One tenant as asked for, validated and with every default filled in."""

    def __init__(self, index, name, state):
        self.index = index
        self.param = 'tenants[%d]' % index
        self.name = name
        self.state = state
        self.netns = None
        self.prefixes = []
        self.mark = None
        self.mask = 0xFFFFFFFF
        self.table = None
        self.host_if = None
        self.tenant_if = None
        self.link4 = None        # (host interface, tenant interface)
        self.link6 = None
        self.firewall = None     # (policy, [rule text]) or None
        self.stale_ns_only = False   # purge: an old namespace of a listed tenant, nothing else

    @property
    def present(self):
        return self.state == 'present'

    def families(self):
        return sorted(set(net.version for net in self.prefixes))

    def links(self):
        return [(4, self.link4), (6, self.link6)] if self.link6 else [(4, self.link4)]

    def marker(self, host_inode):
        return '%s %s host %d mark 0x%x/0x%x table %d' % (OWNER, self.name, host_inode, self.mark,
                                                          self.mask, self.table)

    @property
    def alias(self):
        return '%s %s' % (OWNER, self.name)

    @property
    def xt_chain(self):
        return XT_CHAIN_PREFIX + self.name


def _nft_rule_problem(text):
    """Why a firewall rule could escape its chain (another command, a block), or None."""
    if '\n' in text or '\r' in text:
        return 'must be one line'
    depth = 0
    quote = False
    for char in text:
        if char == '"':
            quote = not quote
        elif quote:
            continue
        elif char in ';#':
            return "contains '%s' outside quotes; give each rule as its own list item" % char
        elif char == '{':
            depth += 1
        elif char == '}':
            depth -= 1
            if depth < 0:
                return "has a '}' without its '{'"
    if quote:
        return 'has an unterminated string'
    if depth:
        return "has a '{' without its '}'"
    return None


def _table_number(value, param):
    if isinstance(value, bool):
        raise ParamError(param, 'expected a routing table number, got %r' % (value,))
    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise ParamError(param, "'%s' is not a routing table number" % (value,))
    if not 1 <= number <= 0xFFFFFFFF:
        raise ParamError(param, 'table %d is out of range 1-4294967295' % number)
    if number in RESERVED_TABLES:
        raise ParamError(param, "table %d is the kernel's '%s' table; give the tenant a table of its own"
                         % (number, RESERVED_TABLES[number]))
    return number


def _pool(value, param, family):
    net = parse_prefix(value, param, family=family)
    if net.num_addresses < 2 or net.prefixlen > net.max_prefixlen - 1:
        raise ParamError(param, '%s is too small for a /%d per tenant' % (net, net.max_prefixlen - 1))
    return net


def _link_pair(link, host_key, tenant_key, param, family):
    host = link.get(host_key)
    tenant = link.get(tenant_key)
    if host in (None, '') and tenant in (None, ''):
        return None
    if host in (None, '') or tenant in (None, ''):
        missing = host_key if host in (None, '') else tenant_key
        raise ParamError('%s.link.%s' % (param, missing), 'give both %s and %s, or neither' % (host_key, tenant_key))
    host_if = parse_interface(host, '%s.link.%s' % (param, host_key), family=family)
    tenant_if = parse_interface(tenant, '%s.link.%s' % (param, tenant_key), family=family)
    if host_if.network != tenant_if.network:
        raise ParamError('%s.link.%s' % (param, tenant_key), '%s is not in the same subnet as %s'
                         % (tenant_if, host_if))
    if host_if.ip == tenant_if.ip:
        raise ParamError('%s.link.%s' % (param, tenant_key), 'both ends have the address %s' % host_if.ip)
    return host_if, tenant_if


def _derived_link(pool, table):
    """The /31 (/127) of slot ``table`` in the pool: host end even, tenant end odd."""
    slots = pool.num_addresses // 2
    base = int(pool.network_address) + 2 * (table % slots)
    plen = pool.max_prefixlen - 1
    make = ipaddress.IPv4Interface if pool.version == 4 else ipaddress.IPv6Interface
    return (make('%s/%d' % (ipaddress.ip_address(base), plen)),
            make('%s/%d' % (ipaddress.ip_address(base + 1), plen)))


def validate(params):
    """Check all input; return (tenants, settings). Raises ParamError."""
    settings = {
        'netns_prefix': params.get('netns_prefix') or '',
        'pool4': _pool(params.get('link_pool_ipv4') or DEFAULT_POOL_V4, 'link_pool_ipv4', 4),
        'pool6': _pool(params.get('link_pool_ipv6') or DEFAULT_POOL_V6, 'link_pool_ipv6', 6),
        'rule_priority': params.get('rule_priority'),
    }
    prio = settings['rule_priority']
    if prio is None or isinstance(prio, bool) or not 1 <= int(prio) <= 32765:
        raise ParamError('rule_priority', 'must be between 1 and 32765 (before the main table at 32766), got %r' % (prio,))
    tenants = []
    seen = {'name': {}, 'netns': {}, 'mark': {}, 'table': {}, 'host_if': {}, 'link': {}}

    def unique(kind, value, param, what):
        if value in seen[kind]:
            raise ParamError(param, '%s %s is also used by %s' % (what, value, seen[kind][value]))
        seen[kind][value] = param

    for index, raw in enumerate(params.get('tenants') or []):
        param = 'tenants[%d]' % index
        if not isinstance(raw, dict):
            raise ParamError(param, 'expected a dictionary with at least a name')
        name = raw.get('name')
        if not isinstance(name, str) or not name:
            raise ParamError(param + '.name', 'is required')
        if len(name) > NAME_MAX:
            raise ParamError(param + '.name', "'%s' is %d characters; a tenant name has at most %d (it also names "
                             "its mark chain and ownership marker)" % (name, len(name), NAME_MAX))
        if not NAME_RE.match(name):
            raise ParamError(param + '.name', "'%s' is not a tenant name: 1-%d letters, digits, '-' or '_', "
                             "starting with a letter or digit" % (name, NAME_MAX))
        tenant = Tenant(index, name, raw.get('state') or 'present')
        unique('name', name, param + '.name', 'tenant name')

        tenant.netns = raw.get('netns') or settings['netns_prefix'] + name
        problem = check_netns_name(tenant.netns)
        if problem:
            raise ParamError(param + ('.netns' if raw.get('netns') else '.name'), 'namespace name %s' % problem)
        unique('netns', tenant.netns, param + '.netns', 'namespace')

        link = raw.get('link') or {}
        for key, default in (('host_if', 'ae-%s' % name), ('tenant_if', 'ae-%s-t' % name)):
            value = link.get(key) or default
            where = '%s.link.%s' % (param, key) if link.get(key) else param + '.name'
            try:
                check_ifname(value, where)
            except ParamError:
                if link.get(key):
                    raise
                raise ParamError(where, "'%s' gives the interface name '%s' (%d characters) but the kernel allows "
                                 "at most 15: use a name of at most 10 characters, or set link.host_if and "
                                 "link.tenant_if" % (name, value, len(value)))
            setattr(tenant, key, value)
        unique('host_if', tenant.host_if, param + '.link.host_if', 'interface')

        if not tenant.present:
            tenants.append(tenant)
            continue

        for r_index, text in enumerate(raw.get('prefixes') or []):
            net = parse_prefix(text, '%s.prefixes[%d]' % (param, r_index))
            if net in tenant.prefixes:
                raise ParamError('%s.prefixes[%d]' % (param, r_index), '%s is listed twice' % net)
            tenant.prefixes.append(net)
        if raw.get('mark') in (None, ''):
            raise ParamError(param + '.mark', 'is required for a present tenant (the firewall mark of its traffic)')
        tenant.mark, tenant.mask = check_mark(raw['mark'], param + '.mark')
        if tenant.mark == 0:
            raise ParamError(param + '.mark', 'must not be 0 (unmarked packets have mark 0)')
        unique('mark', '0x%x' % tenant.mark, param + '.mark', 'mark')
        if raw.get('table') in (None, ''):
            raise ParamError(param + '.table', "is required for a present tenant (its own routing table's number)")
        tenant.table = _table_number(raw['table'], param + '.table')
        unique('table', tenant.table, param + '.table', 'table')

        tenant.link4 = _link_pair(link, 'host_ipv4', 'tenant_ipv4', param, 4) or \
            _derived_link(settings['pool4'], tenant.table)
        tenant.link6 = _link_pair(link, 'host_ipv6', 'tenant_ipv6', param, 6)
        if tenant.link6 is None and 6 in tenant.families():
            tenant.link6 = _derived_link(settings['pool6'], tenant.table)
        for family, pair in tenant.links():
            where = '%s.link' % param
            explicit = link.get('host_ipv%d' % family)
            for iface in pair:
                if iface.ip in seen['link']:
                    raise ParamError(where, 'link address %s %s also used by %s%s' % (
                        iface.ip, 'is' if explicit else '(derived from table %d) is' % tenant.table,
                        seen['link'][iface.ip],
                        '' if explicit else '; set link.host_ipv%d and link.tenant_ipv%d' % (family, family)))
                seen['link'][iface.ip] = where

        firewall = raw.get('firewall')
        if firewall is not None:
            policy = firewall.get('policy') or 'accept'
            if policy not in ('accept', 'drop'):
                raise ParamError(param + '.firewall.policy', "'%s' is not one of accept, drop" % policy)
            rules = []
            for r_index, text in enumerate(firewall.get('rules') or []):
                where = '%s.firewall.rules[%d]' % (param, r_index)
                if not isinstance(text, str) or not text.strip():
                    raise ParamError(where, 'expected a rule in nft syntax, like "tcp dport 22 accept"')
                problem = _nft_rule_problem(text)
                if problem:
                    raise ParamError(where, problem)
                rules.append(text.strip())
            tenant.firewall = (policy, rules)
        tenants.append(tenant)

    # Prefixes: one tenant per address, the mark rules must not compete.
    present = [t for t in tenants if t.present]
    owners = []
    for tenant in present:
        for r_index, net in enumerate(tenant.prefixes):
            for other, o_index, other_net in owners:
                if net.version == other_net.version and net.overlaps(other_net):
                    raise ParamError('%s.prefixes[%d]' % (tenant.param, r_index),
                                     '%s overlaps %s of tenant %s (%s.prefixes[%d])'
                                     % (net, other_net, other.name, other.param, o_index))
            owners.append((tenant, r_index, net))
    return tenants, settings


# --------------------------------------------------------------------------
# Namespaces without a process per tenant: unshare + bind mount, as ip netns does.

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = None


def _c():
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util
        _libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
    return _libc


def _check(rc, what):
    if rc != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, '%s: %s' % (what, os.strerror(err)))


def _shared_run_dir():
    """/run/netns as a shared mount point, so the bind mounts show in every mount namespace."""
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    libc = _c()
    if libc.mount(b'', NETNS_RUN_DIR.encode(), b'none', MS_SHARED | MS_REC, None) == 0:
        return
    import ctypes
    if ctypes.get_errno() != errno.EINVAL:
        _check(-1, 'making %s a shared mount' % NETNS_RUN_DIR)
    _check(libc.mount(NETNS_RUN_DIR.encode(), NETNS_RUN_DIR.encode(), b'none', MS_BIND | MS_REC, None),
           'bind-mounting %s onto itself' % NETNS_RUN_DIR)
    _check(libc.mount(b'', NETNS_RUN_DIR.encode(), b'none', MS_SHARED | MS_REC, None),
           'making %s a shared mount' % NETNS_RUN_DIR)


def create_netns(name):
    """Create the named namespace in this thread, then come back. Raises TenantError."""
    path = netns_path(name)
    try:
        _shared_run_dir()
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        os.close(fd)
    except OSError as exc:
        raise TenantError("cannot create network namespace '%s': %s" % (name, exc))
    home = os.open('/proc/thread-self/ns/net', os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_c().unshare(CLONE_NEWNET), 'unshare')
        _check(_c().mount(b'/proc/thread-self/ns/net', path.encode(), b'none', MS_BIND, None),
               'bind mount onto %s' % path)
    except OSError as exc:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise TenantError("cannot create network namespace '%s': %s" % (name, exc.strerror))
    finally:
        try:
            _setns(home)
        finally:
            os.close(home)


def delete_netns(name):
    path = netns_path(name)
    if _c().umount2(path.encode(), MNT_DETACH) != 0:
        import ctypes
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise TenantError("cannot delete network namespace '%s': %s" % (name, os.strerror(err)))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TenantError("cannot delete network namespace '%s': %s" % (name, exc.strerror))


def host_inode():
    return os.stat('/proc/thread-self/ns/net').st_ino


# --------------------------------------------------------------------------
# Reading the kernel

def _text(raw):
    return raw.split(b'\0', 1)[0].decode('utf-8', 'replace') if raw is not None else None


def _u32(raw, default=None):
    return struct.unpack('=I', raw[:4])[0] if raw is not None else default


def _ip(raw, family):
    return socket.inet_ntop(socket.AF_INET if family == socket.AF_INET else socket.AF_INET6, raw)


class Link(object):
    __slots__ = ('index', 'name', 'alias', 'up', 'kind', 'peer')

    def __init__(self, index, name, alias, up, kind, peer):
        self.index = index
        self.name = name
        self.alias = alias
        self.up = up
        self.kind = kind
        self.peer = peer


def _read_links(rt):
    """({name: Link}, {ifindex: {'addr/len'}}) of the socket's namespace."""
    links = {}
    for msg in rt.dump(RTM_GETLINK, struct.pack('=BxHiII', socket.AF_UNSPEC, 0, 0, 0, 0)):
        _family, _type, index, flags, _change = struct.unpack_from('=BxHiII', msg)
        attrs = parse_attrs(msg, 16)
        kind = None
        if IFLA_LINKINFO in attrs:
            kind = _text(parse_attrs(attrs[IFLA_LINKINFO], 0).get(IFLA_INFO_KIND))
        alias = _text(attrs.get(IFLA_IFALIAS)) or None
        link = Link(index, _text(attrs.get(IFLA_IFNAME)), alias, bool(flags & IFF_UP), kind, _u32(attrs.get(IFLA_LINK)))
        links[link.name] = link
    addrs = {}
    for msg in rt.dump(RTM_GETADDR, struct.pack('=BBBBI', socket.AF_UNSPEC, 0, 0, 0, 0)):
        family, plen, _flags, _scope, index = struct.unpack_from('=BBBBI', msg)
        attrs = parse_attrs(msg, 8)
        raw = attrs.get(IFA_LOCAL) if family == socket.AF_INET and IFA_LOCAL in attrs else attrs.get(IFA_ADDRESS)
        if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
            continue
        addrs.setdefault(index, set()).add(_iface_text(_ip(raw, family), plen))
    return links, addrs


def _iface_text(addr, plen):
    return str(ipaddress.ip_interface('%s/%d' % (addr, plen)))


def _read_routes(rt, table=None):
    """Our routes (collection protocol), both families, every table (or one)."""
    found = []
    for family in (4, 6):
        af = FAMILY[family]
        for msg in rt.dump(RTM_GETROUTE, struct.pack('=BBBBBBBBI', af, 0, 0, 0, 0, 0, 0, 0, 0)):
            r_family, dst_len, _src, _tos, r_table, proto, _scope, _type, _flags = struct.unpack_from('=BBBBBBBBI', msg)
            if proto != ROUTE_PROTO or r_family != af:
                continue
            attrs = parse_attrs(msg, 12)
            r_table = _u32(attrs.get(RTA_TABLE), r_table)
            if table is not None and r_table != table:
                continue
            dst = _ip(attrs[RTA_DST], af) if RTA_DST in attrs else ('0.0.0.0' if family == 4 else '::')
            found.append({
                'family': family,
                'prefix': str(ipaddress.ip_network('%s/%d' % (dst, dst_len))),
                'table': r_table,
                'oif': _u32(attrs.get(RTA_OIF)),
                'gateway': _ip(attrs[RTA_GATEWAY], af) if RTA_GATEWAY in attrs else None,
                'metric': _u32(attrs.get(RTA_PRIORITY), 0),
            })
    return found


def _read_rules(rt):
    """Our policy rules (collection protocol): (family, mark, mask, table, priority)."""
    found = set()
    for family in (4, 6):
        for msg in rt.dump(RTM_GETRULE, struct.pack('=BBBBBBBBI', FAMILY[family], 0, 0, 0, 0, 0, 0, 0, 0)):
            table = struct.unpack_from('=BBBBB', msg)[4]
            attrs = parse_attrs(msg, 12)
            proto = attrs.get(FRA_PROTOCOL)
            if proto is None or proto[0] != ROUTE_PROTO or FRA_FWMARK not in attrs:
                continue
            found.add((family, _u32(attrs[FRA_FWMARK]), _u32(attrs.get(FRA_FWMASK), 0xFFFFFFFF),
                       _u32(attrs.get(FRA_TABLE), table), _u32(attrs.get(FRA_PRIORITY), 0)))
    return found


def _read_sysctl(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _write_sysctl(path, value, what):
    try:
        with open(path, 'w') as handle:
            handle.write(value)
    except OSError as exc:
        raise TenantError('%s: cannot set %s to %s: %s' % (what, path.replace('/proc/sys/', '').replace('/', '.'),
                                                           value, exc.strerror))


SYSCTL_V4_FORWARD = '/proc/sys/net/ipv4/ip_forward'
SYSCTL_V6_FORWARD = '/proc/sys/net/ipv6/conf/all/forwarding'
SYSCTL_V6_OFF = '/proc/sys/net/ipv6/conf/%s/disable_ipv6'


def parse_marker(alias):
    match = MARKER_RE.match(alias or '')
    if not match:
        return None
    return {'name': match.group(1), 'host': int(match.group(2)), 'mark': int(match.group(3), 16),
            'mask': int(match.group(4), 16), 'table': int(match.group(5))}


class TenantNs(object):
    """Sockets into one tenant namespace, opened once and kept for the run.

    Reading uses a plain rtnetlink socket; the pyroute2 socket for writing is
    only opened when something has to change.
    """

    def __init__(self, name):
        self.name = name
        self._ipr = None
        self._nft = None
        with in_netns(name):
            self.rt = RawRtnl()
        self._links = None

    @property
    def ipr(self):
        if self._ipr is None:
            with in_netns(self.name):
                self._ipr = open_iproute()
        return self._ipr

    def nft(self):
        if self._nft is None:
            with in_netns(self.name):
                self._nft = Nft()
        return self._nft

    def nft_run(self, commands, dry_run=False):
        nft = self.nft()
        with in_netns(self.name):   # the nft binary fallback runs a child: it must start in here
            return nft.run(commands, dry_run)

    def sysctl(self, path, value=None, what=''):
        with in_netns(self.name):   # /proc/sys/net follows the calling thread's namespace
            if value is None:
                return _read_sysctl(path)
            _write_sysctl(path, value, what)
            return value

    def links(self, fresh=False):
        """(links, addrs) of the namespace, read once unless ``fresh``."""
        if self._links is None or fresh:
            self._links = _read_links(self.rt)
        return self._links

    def marker(self, fresh=False):
        for link in self.links(fresh)[0].values():
            if link.index == LO_INDEX:
                return parse_marker(link.alias)
        return None

    def close(self, keep_nft=False):
        """Close the sockets; with ``keep_nft`` hand the nftables context back instead of freeing it."""
        nft, self._nft = self._nft, None
        try:
            self.rt.close()
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None
        finally:
            if nft is not None and not keep_nft:
                nft.close()
        return nft


class Namespaces(object):
    """Tenant namespace sockets by name.

    Sockets are released as soon as a namespace has been read or written
    (what was read is kept): with hundreds of tenants the process would
    otherwise hold thousands of descriptors, and libnftables aborts the
    process on a socket numbered above FD_SETSIZE (it uses select()).
    """

    # Freeing an nftables context right after a transaction that deleted something
    # waits for the kernel to release the old objects (an RCU grace period, ~10 ms);
    # a few dozen tenants later the wait is over.
    NFT_CLOSE_LAG = 32

    def __init__(self):
        self._open = {}
        self._links = {}
        self._nft_closing = []

    def get(self, name):
        if name not in self._open:
            tns = TenantNs(name)
            tns._links = self._links.get(name)
            self._open[name] = tns
        return self._open[name]

    def release(self, name):
        """Close the namespace's sockets, keep its links as read."""
        tns = self._open.pop(name, None)
        if tns is not None:
            if tns._links is not None:
                self._links[name] = tns._links
            nft = tns.close(keep_nft=True)
            if nft is not None:
                self._nft_closing.append(nft)
                if len(self._nft_closing) > self.NFT_CLOSE_LAG:
                    self._nft_closing.pop(0).close()

    def drop(self, name):
        """Close and forget: the next read is fresh."""
        self.release(name)
        self._links.pop(name, None)

    def close(self):
        for name in list(self._open):
            self.drop(name)
        while self._nft_closing:
            self._nft_closing.pop(0).close()


def nft_listing(tns, inside=False):
    """Text listing of our table in the tenant's namespace, or None.

    ``inside``: the calling thread is in the tenant's namespace already.
    """
    if inside:
        if tns._nft is None:
            tns._nft = Nft()
        ok, out, err = tns._nft.run('list table inet %s' % NFT_TABLE)
    else:
        ok, out, err = tns.nft_run('list table inet %s' % NFT_TABLE)
    if ok:
        return out
    if 'No such file or directory' in err:
        return None
    raise TenantError("reading nftables table inet %s in namespace '%s': nft said: %s"
                      % (NFT_TABLE, tns.name, err.strip()))


def _listing_digest(listing):
    """Digest of a listing without our comment line: the ruleset as the kernel holds it."""
    lines = [line.strip() for line in listing.splitlines() if line.strip() and not NFT_COMMENT_RE.match(line)]
    return hashlib.sha256('\n'.join(lines).encode()).hexdigest()[:16]


def parse_listing(listing):
    """(name, input digest, kernel digest, listing digest, rule lines) of our table listing."""
    comment = None
    for line in listing.splitlines():
        match = NFT_COMMENT_RE.match(line)
        if match:
            comment = match.groups()
            break
    lines = [line.strip() for line in listing.splitlines()]
    body = []
    inside = False
    for line in lines:
        if line.startswith('chain '):
            inside = True
            continue
        if inside and line == '}':
            inside = False
            continue
        if inside and line:
            body.append(line)
    return comment, _listing_digest(listing), body


# --------------------------------------------------------------------------
# Desired state and its rendering

def input_digest(tenant):
    policy, rules = tenant.firewall
    text = '\n'.join([tenant.name, tenant.tenant_if, policy] + rules)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def nft_script(tenant, kernel='pending'):
    policy, rules = tenant.firewall
    lines = [
        'add table inet %s' % NFT_TABLE,
        'delete table inet %s' % NFT_TABLE,
        'table inet %s {' % NFT_TABLE,
        '\tcomment "%s %s input=%s kernel=%s"' % (OWNER, tenant.name, input_digest(tenant), kernel),
        '\tchain %s {' % NFT_CHAIN,
        '\t\ttype filter hook prerouting priority filter; policy %s;' % policy,
        # Only what enters from the host is the tenant's inbound traffic; its own
        # (loopback, tunnels) is not filtered here.
        '\t\tiifname != "%s" accept' % tenant.tenant_if,
        # neighbour discovery keeps the link itself working (ARP is not filtered here either)
        '\t\t%s' % ND_RULE,
    ]
    lines += ['\t\t%s' % rule for rule in rules]
    lines += ['\t}', '}']
    return '\n'.join(lines) + '\n'


def desired_firewall_lines(tenant):
    policy, rules = tenant.firewall
    return ['type filter hook prerouting priority filter; policy %s;' % policy,
            'iifname != "%s" accept' % tenant.tenant_if, ND_RULE] + rules


def xt_specs(tenant):
    """MARK chains for both families (a family without prefixes: chain absent)."""
    specs = []
    for family in (4, 6):
        nets = [n for n in tenant.prefixes if n.version == family] if tenant.present else []
        rules = [Rule(family, 'MARK', (('set-xmark', '0x%x/0x%x' % (tenant.mark, tenant.mask)),), dst=str(net))
                 for net in nets]
        jump = Jump('PREROUTING', Rule(family, tenant.xt_chain))
        specs.append(ChainSpec(family, XT_TABLE, tenant.xt_chain, rules, [jump], present=bool(nets)))
    return specs


def absent_xt_specs(name):
    specs = []
    for family in (4, 6):
        chain = XT_CHAIN_PREFIX + name
        specs.append(ChainSpec(family, XT_TABLE, chain, [], [Jump('PREROUTING', Rule(family, chain))],
                               present=False))
    return specs


class View(object):
    """What one tenant looks like (in the kernel, or as asked for), comparable and printable."""

    def __init__(self):
        self.netns = None
        self.host_link = None       # (name, alias, up)
        self.tenant_link = None
        self.paired = False
        self.host_addrs = ()
        self.host_ipv6_off = None   # the host end's disable_ipv6: '1' for tenants without IPv6
        self.tenant_addrs = ()
        self.rules = ()             # (family, mark, mask, table, priority)
        self.routes = ()            # (family, prefix, gateway, table)
        self.defaults = ()          # (family, gateway, metric)
        self.sysctls = ()           # (name, value)
        self.firewall = None        # list of lines, or None
        self.firewall_id = None     # input digest, or None when it must be rewritten
        self.marker = None

    def key(self):
        return (self.netns, self.host_link, self.tenant_link, self.paired, self.host_addrs, self.host_ipv6_off,
                self.tenant_addrs,
                self.rules, self.routes, self.defaults, self.sysctls, self.firewall_id, self.marker)

    def render(self, name):
        if self.netns is None and not self.host_link and not self.rules and not self.routes:
            return []
        out = ['tenant %s' % name]
        out.append('  netns %s' % (self.netns or '-'))
        for label, link, addrs in (('host', self.host_link, self.host_addrs),
                                   ('tenant', self.tenant_link, self.tenant_addrs)):
            if link:
                unpaired = label == 'host' and self.tenant_link and not self.paired
                out.append('  %s end %s%s alias "%s" %s' % (
                    label, link[0], ' (not paired)' if unpaired else '', link[1], 'up' if link[2] else 'down'))
                out += ['    address %s' % a for a in addrs]
                if label == 'host' and self.host_ipv6_off == '1':
                    out.append('    IPv6 off')
        for family, mark, mask, table, prio in self.rules:
            out.append('  ip -%d rule priority %d fwmark 0x%x/0x%x lookup %d' % (family, prio, mark, mask, table))
        for family, prefix, gateway, table in self.routes:
            out.append('  table %d: %s via %s onlink' % (table, prefix, gateway))
        for family, gateway, metric in self.defaults:
            out.append('  inside: default via %s metric %d' % (gateway, metric))
        for name_, value in self.sysctls:
            out.append('  inside: %s = %s' % (name_, value))
        if self.firewall is not None:
            out.append('  firewall: table inet %s, chain %s' % (NFT_TABLE, NFT_CHAIN))
            out += ['    %s' % line for line in self.firewall]
        return out


def _sorted(items):
    return tuple(sorted(items, key=lambda item: tuple(str(x) for x in item)))


def desired_view(tenant, settings, host_ino):
    view = View()
    view.netns = tenant.netns
    view.marker = tenant.marker(host_ino)
    view.host_link = (tenant.host_if, tenant.alias, True)
    view.tenant_link = (tenant.tenant_if, tenant.alias, True)
    view.paired = True
    host_addrs = [str(pair[0]) for _f, pair in tenant.links()]
    if tenant.link6:
        host_addrs.append(HOST_LL6)
    view.host_addrs = tuple(sorted(host_addrs))
    view.host_ipv6_off = '0' if tenant.link6 else '1'
    view.tenant_addrs = tuple(sorted(str(pair[1]) for _f, pair in tenant.links()))
    view.rules = _sorted((f, tenant.mark, tenant.mask, tenant.table, settings['rule_priority'])
                         for f in tenant.families())
    gateways = dict((f, str(pair[1].ip)) for f, pair in tenant.links())
    view.routes = _sorted((n.version, str(n), gateways[n.version], tenant.table) for n in tenant.prefixes)
    view.defaults = _sorted((f, str(pair[0].ip), DEFAULT_ROUTE_METRIC) for f, pair in tenant.links())
    sysctls = [('net.ipv4.ip_forward', '1')]
    if tenant.link6:
        sysctls.append(('net.ipv6.conf.all.forwarding', '1'))
    view.sysctls = tuple(sysctls)
    if tenant.firewall is not None:
        view.firewall = desired_firewall_lines(tenant)
        view.firewall_id = input_digest(tenant)
    return view


class HostState(object):
    """The host namespace, read once."""

    def __init__(self):
        self._ipr = None
        self.rt = RawRtnl()
        self.inode = host_inode()
        self.refresh()

    @property
    def ipr(self):
        if self._ipr is None:
            self._ipr = open_iproute()
        return self._ipr

    def refresh(self):
        self.links, self.addrs = _read_links(self.rt)
        self.routes = _read_routes(self.rt)
        self.rules = _read_rules(self.rt)

    def close(self):
        self.rt.close()
        if self._ipr is not None:
            self._ipr.close()

    def owned_links(self):
        """{tenant name: Link} of host veth ends we created."""
        found = {}
        for link in self.links.values():
            if link.alias and link.alias.startswith(OWNER + ' ') and link.kind == 'veth':
                found[link.alias[len(OWNER) + 1:]] = link
        return found


def current_view(host, tenant, tns, marker, settings):
    """Read one tenant (listed, or owned and going away) from the kernel.

    ``tenant`` may be a bare Tenant (name, netns, interfaces) for absent ones.
    ``tns`` is the TenantNs or None when the namespace does not exist.
    """
    view = View()
    old_mark = (marker['mark'], marker['mask']) if marker else None
    old_table = marker['table'] if marker else None
    if tns is not None:
        view.netns = tenant.netns
        view.marker = '%s %s host %d mark 0x%x/0x%x table %d' % (
            OWNER, marker['name'], marker['host'], marker['mark'], marker['mask'], marker['table']) if marker else None
    # by name, or by our alias when the tenant's interfaces were renamed
    host_link = host.links.get(tenant.host_if) or host.owned_links().get(tenant.name)
    if host_link is not None:
        view.host_link = (host_link.name, host_link.alias or '', host_link.up)
        view.host_addrs = tuple(sorted(host.addrs.get(host_link.index, ())))
        view.host_ipv6_off = _read_sysctl(SYSCTL_V6_OFF % tenant.host_if)
    tenant_link = None
    if tns is not None:
        links, addrs = tns.links()
        tenant_link = links.get(tenant.tenant_if)
        if tenant_link is None:
            tenant_link = next((l for l in links.values() if l.alias == tenant.alias), None)
        if tenant_link is not None:
            view.tenant_link = (tenant_link.name, tenant_link.alias or '', tenant_link.up)
            # link-local addresses are the kernel's own, not managed
            view.tenant_addrs = tuple(sorted(a for a in addrs.get(tenant_link.index, ())
                                             if not a.startswith('fe80:')))
            view.paired = (host_link is not None and host_link.kind == 'veth' and tenant_link.kind == 'veth'
                           and host_link.peer == tenant_link.index and tenant_link.peer == host_link.index)
            view.defaults = _sorted((r['family'], r['gateway'], r['metric']) for r in _read_routes(tns.rt, TABLE_MAIN)
                                    if r['oif'] == tenant_link.index
                                    and r['prefix'] in ('0.0.0.0/0', '::/0'))
        v6 = tenant.present and tenant.link6
        # one visit to the namespace for the sysctls and the nftables listing
        with in_netns(tns.name):
            sysctls = [('net.ipv4.ip_forward', _read_sysctl(SYSCTL_V4_FORWARD))]
            if v6:
                sysctls.append(('net.ipv6.conf.all.forwarding', _read_sysctl(SYSCTL_V6_FORWARD)))
            listing = nft_listing(tns, inside=True)
        view.sysctls = tuple(sysctls)
        if listing is not None:
            comment, digest, body = parse_listing(listing)
            view.firewall = body
            if comment and comment[0] == tenant.name and comment[2] == digest:
                view.firewall_id = comment[1]
            else:
                view.firewall_id = 'modified'
    # Host side: rules of this tenant's (mark, table), old or new; routes via its veth.
    pairs = set()
    if tenant.present:
        pairs.add(((tenant.mark, tenant.mask), tenant.table))
    if old_mark:
        pairs.add((old_mark, old_table))
    view.rules = _sorted(r for r in host.rules if ((r[1], r[2]), r[3]) in pairs)
    if host_link is not None:
        view.routes = _sorted((r['family'], r['prefix'], r['gateway'], r['table']) for r in host.routes
                              if r['oif'] == host_link.index and r['table'] != TABLE_MAIN)
    return view


# --------------------------------------------------------------------------
# Applying

def _addr_args(iface, index, host_side):
    flags = IFA_F_NODAD
    if host_side:
        flags |= IFA_F_NOPREFIXROUTE   # no connected route in the host's main table
    return dict(index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                family=FAMILY[iface.version], flags=flags)


def _route_args(family, prefix, gateway, oif, table, metric=None):
    net = ipaddress.ip_network(prefix)
    args = dict(family=FAMILY[family], dst=str(net.network_address), dst_len=net.prefixlen, gateway=gateway,
                oif=oif, table=table, proto=ROUTE_PROTO, flags=RTNH_F_ONLINK)
    if metric is not None:
        args['priority'] = metric
    return args


def _rule_args(rule):
    family, mark, mask, table, prio = rule
    return dict(family=FAMILY[family], fwmark=mark, fwmask=mask, table=table, priority=prio, protocol=ROUTE_PROTO)


def _nl(what, func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except NetlinkError as exc:
        raise TenantError(str(failure(what, exc)))


def _sync_addrs(ipr, index, current, wanted, host_side, where):
    for text in sorted(set(current) - set(wanted)):
        iface = ipaddress.ip_interface(text)
        try:
            ipr.addr('del', index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                     family=FAMILY[iface.version])
        except NetlinkError as exc:
            if exc.code != errno.EADDRNOTAVAIL:
                raise TenantError(str(failure('%s: removing address %s' % (where, text), exc)))
    for text in sorted(set(wanted) - set(current)):
        _nl('%s: adding address %s' % (where, text), ipr.addr, 'add',
            **_addr_args(ipaddress.ip_interface(text), index, host_side))


def needs_relink(tenant, current, wanted):
    """True unless both veth ends exist under the wanted names, with our alias, as one pair."""
    return not (current.host_link and current.tenant_link and current.paired
                and current.host_link[:2] == wanted.host_link[:2] and current.tenant_link[:2] == wanted.tenant_link[:2])


def _del_link(ipr, index):
    try:
        ipr.link('del', index=index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:   # gone already, e.g. with its peer
            raise


def apply_present(host, namespaces, tenant, current, wanted, settings):
    """Bring one tenant from ``current`` to ``wanted`` (Views). Host-side xtables are done elsewhere."""
    ipr = host.ipr
    what = 'tenant %s' % tenant.name
    if current.netns is None:
        create_netns(tenant.netns)
        tns = namespaces.get(tenant.netns)
        _nl('%s: bringing up lo' % what, tns.ipr.link, 'set', index=LO_INDEX, state='up')
        # Mark it ours at once, so a failure later still leaves it recognisable.
        _nl('%s: marking namespace' % what, tns.ipr.link, 'set', index=LO_INDEX, ifalias=wanted.marker)
    tns = namespaces.get(tenant.netns)

    relink = needs_relink(tenant, current, wanted)
    if relink:
        # the old pair, under this name or an older one: its routes go with it
        for link in list(host.links.values()):
            if link.name == tenant.host_if or link.alias == tenant.alias:
                _nl('%s: deleting stale interface %s' % (what, link.name), _del_link, ipr, link.index)
        links, _addrs = tns.links(fresh=True)
        for link in links.values():
            if link.name == tenant.tenant_if or link.alias == tenant.alias:
                _nl('%s: deleting stale interface %s in %s' % (what, link.name, tenant.netns), _del_link,
                    tns.ipr, link.index)
        fd = os.open(netns_path(tenant.netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _nl('%s: creating veth %s <-> %s' % (what, tenant.host_if, tenant.tenant_if), ipr.link, 'add',
                ifname=tenant.host_if, kind='veth', peer={'ifname': tenant.tenant_if, 'net_ns_fd': fd})
        finally:
            os.close(fd)
        # No IPv6 link-local on the host end: it would put fe80::/64 into the main table.
        _write_sysctl('/proc/sys/net/ipv6/conf/%s/addr_gen_mode' % tenant.host_if, '1', what)
        current.host_addrs = ()
        current.host_ipv6_off = _read_sysctl(SYSCTL_V6_OFF % tenant.host_if)   # the host's default for new links
        current.tenant_addrs = ()
        current.defaults = ()
        current.routes = ()
    # by name through the kernel directly: pyroute2's link_lookup dumps every link, per tenant
    host_index = socket.if_nametoindex(tenant.host_if)
    with in_netns(tenant.netns):
        tenant_index = socket.if_nametoindex(tenant.tenant_if)
    if current.host_ipv6_off != wanted.host_ipv6_off:
        # no IPv6 at all on the host end of an IPv4-only tenant: not even MLD reports reach it
        _write_sysctl(SYSCTL_V6_OFF % tenant.host_if, wanted.host_ipv6_off, what)
    if relink or current.host_link != wanted.host_link:
        _nl('%s: configuring %s' % (what, tenant.host_if), ipr.link, 'set', index=host_index,
            ifalias=tenant.alias, state='up')
    if relink or current.tenant_link != wanted.tenant_link:
        _nl('%s: configuring %s' % (what, tenant.tenant_if), tns.ipr.link, 'set', index=tenant_index,
            ifalias=tenant.alias, state='up')
    _sync_addrs(ipr, host_index, current.host_addrs, wanted.host_addrs, True, '%s %s' % (what, tenant.host_if))
    _sync_addrs(tns.ipr, tenant_index, current.tenant_addrs, wanted.tenant_addrs, False,
                '%s %s' % (what, tenant.tenant_if))

    for name, value in wanted.sysctls:
        if dict(current.sysctls).get(name) != value:
            path = SYSCTL_V4_FORWARD if name == 'net.ipv4.ip_forward' else SYSCTL_V6_FORWARD
            tns.sysctl(path, value, '%s (namespace %s)' % (what, tenant.netns))

    for family, gateway, metric in sorted(set(current.defaults) - set(wanted.defaults)):
        try:
            tns.ipr.route('del', **_route_args(family, '0.0.0.0/0' if family == 4 else '::/0', gateway,
                                               tenant_index, TABLE_MAIN, metric))
        except NetlinkError as exc:
            if exc.code != errno.ESRCH:
                raise TenantError(str(failure('%s: removing default route via %s' % (what, gateway), exc)))
    for family, gateway, metric in sorted(set(wanted.defaults) - set(current.defaults)):
        _nl('%s: default route via %s in %s' % (what, gateway, tenant.netns), tns.ipr.route, 'add',
            **_route_args(family, '0.0.0.0/0' if family == 4 else '::/0', gateway, tenant_index, TABLE_MAIN, metric))

    for family, prefix, gateway, table in sorted(set(current.routes) - set(wanted.routes)):
        try:
            ipr.route('del', **_route_args(family, prefix, gateway, host_index, table))
        except NetlinkError as exc:
            if exc.code != errno.ESRCH:
                raise TenantError(str(failure('%s: removing route %s from table %d' % (what, prefix, table), exc)))
    for family, prefix, gateway, table in sorted(set(wanted.routes) - set(current.routes)):
        _nl('%s: route %s via %s in table %d' % (what, prefix, gateway, table), ipr.route, 'add',
            **_route_args(family, prefix, gateway, host_index, table))

    for rule in sorted(set(current.rules) - set(wanted.rules)):
        _delete_rule(ipr, rule, what)
    for rule in sorted(set(wanted.rules) - set(current.rules)):
        _nl('%s: ip rule fwmark 0x%x lookup %d' % (what, rule[1], rule[3]), ipr.rule, 'add', **_rule_args(rule))

    if wanted.firewall_id != current.firewall_id:
        if tenant.firewall is None:
            ok, _out, err = tns.nft_run('delete table inet %s' % NFT_TABLE)
            if not ok:
                raise TenantError('%s: removing nftables table inet %s: nft said: %s' % (what, NFT_TABLE, err.strip()))
        else:
            write_firewall(tns, tenant)

    if current.marker != wanted.marker:
        _nl('%s: marking namespace' % what, tns.ipr.link, 'set', index=LO_INDEX, ifalias=wanted.marker)
    namespaces.drop(tenant.netns)


def write_firewall(tns, tenant):
    """Replace the table in one transaction, then once more with the kernel digest in its comment."""
    ok, _out, err = tns.nft_run(nft_script(tenant))
    if not ok:
        raise TenantError('%s.firewall: nft rejected the ruleset of tenant %s, nothing was changed (one '
                          'transaction): %s' % (tenant.param, tenant.name, err.strip()))
    listing = nft_listing(tns)
    digest = _listing_digest(listing)
    ok, _out, err = tns.nft_run(nft_script(tenant, digest))
    if not ok:
        raise TenantError('%s.firewall: nft refused to rewrite the ruleset of tenant %s: %s'
                          % (tenant.param, tenant.name, err.strip()))


def _delete_rule(ipr, rule, what):
    try:
        ipr.rule('del', **_rule_args(rule))
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH):
            raise TenantError(str(failure('%s: removing ip rule fwmark 0x%x lookup %d' % (what, rule[1], rule[3]), exc)))


def apply_absent(host, namespaces, tenant, current):
    """Remove everything of one tenant: rules, routes (with the veth), the namespace if ours."""
    what = 'tenant %s' % tenant.name
    for rule in current.rules:
        _delete_rule(host.ipr, rule, what)
    link = host.links.get(current.host_link[0]) if current.host_link else None
    if link is not None and link.alias == tenant.alias:
        # Deleting our end takes the pair and the routes through it away now,
        # not whenever the namespace's last reference goes.
        _nl('%s: deleting interface %s' % (what, link.name), _del_link, host.ipr, link.index)
    if current.netns is not None:
        namespaces.drop(tenant.netns)
        delete_netns(tenant.netns)


# --------------------------------------------------------------------------
# One run: read, plan, apply unless check mode, read back.

def _xt_owned_chains(driver):
    """{tenant name: (mark, mask) or None} from our mangle chains, both families."""
    found = {}
    for family in (4, 6):
        state = driver.read(family, [XT_TABLE])[XT_TABLE]
        for chain, rules in state.chains.items():
            if not chain.startswith(XT_CHAIN_PREFIX):
                continue
            mark = None
            for saved in rules:
                match = SET_XMARK_RE.search(saved.text)
                if match:
                    mark = (int(match.group(1), 16), int(match.group(2), 16))
                    break
            if found.get(chain[len(XT_CHAIN_PREFIX):]) is None:
                found[chain[len(XT_CHAIN_PREFIX):]] = mark
    return found


def describe(tenant, cur, want):
    """What bringing ``cur`` to ``want`` does, one line per change."""
    who = 'tenant %s' % tenant.name
    acts = []
    if cur.netns is None:
        acts.append("%s: create network namespace '%s'" % (who, tenant.netns))
    if needs_relink(tenant, cur, want):
        acts.append('%s: create veth %s <-> %s (in %s)' % (who, tenant.host_if, tenant.tenant_if, tenant.netns))
    else:
        if cur.host_link != want.host_link or cur.tenant_link != want.tenant_link:
            acts.append('%s: bring the veth up' % who)
    if cur.host_ipv6_off != want.host_ipv6_off:
        acts.append('%s: %s IPv6 on the host end' % (who, 'disable' if want.host_ipv6_off == '1' else 'enable'))
    for label, c, w in (('host end', cur.host_addrs, want.host_addrs), ('tenant end', cur.tenant_addrs, want.tenant_addrs)):
        for addr in sorted(set(c) - set(w)):
            acts.append('%s: remove address %s from the %s' % (who, addr, label))
        for addr in sorted(set(w) - set(c)):
            acts.append('%s: add address %s to the %s' % (who, addr, label))
    for name, value in want.sysctls:
        if dict(cur.sysctls).get(name) != value:
            acts.append('%s: set %s = %s inside' % (who, name, value))
    for item in sorted(set(cur.defaults) - set(want.defaults)):
        acts.append('%s: remove default route via %s inside' % (who, item[1]))
    for item in sorted(set(want.defaults) - set(cur.defaults)):
        acts.append('%s: default route via %s metric %d inside' % (who, item[1], item[2]))
    for item in sorted(set(cur.routes) - set(want.routes)):
        acts.append('%s: remove route %s from table %d' % (who, item[1], item[3]))
    for item in sorted(set(want.routes) - set(cur.routes)):
        acts.append('%s: route %s via %s in table %d' % (who, item[1], item[2], item[3]))
    for item in sorted(set(cur.rules) - set(want.rules)):
        acts.append('%s: remove ip -%d rule fwmark 0x%x lookup %d' % (who, item[0], item[1], item[3]))
    for item in sorted(set(want.rules) - set(cur.rules)):
        acts.append('%s: ip -%d rule priority %d fwmark 0x%x lookup %d' % (who, item[0], item[4], item[1], item[3]))
    if cur.firewall_id != want.firewall_id:
        if want.firewall is None:
            acts.append('%s: remove nftables table inet %s' % (who, NFT_TABLE))
        else:
            acts.append('%s: replace nftables table inet %s (%d rules, policy %s)'
                        % (who, NFT_TABLE, len(tenant.firewall[1]), tenant.firewall[0]))
    if cur.marker != want.marker and cur.netns is not None:
        acts.append('%s: update the ownership marker of %s' % (who, tenant.netns))
    return acts


def _one_rule_script(tenant, rule):
    """A one-line script with one rule: nft's error then points into the right line
    (libnftables 1.0 shows the buffer's first line whatever line failed)."""
    return ('table inet %s { chain %s { type filter hook prerouting priority filter; policy accept; %s; }; }\n'
            % (NFT_TABLE, NFT_CHAIN, rule))


def _check_firewalls(host_nft_factory, namespaces, tenants, plans):
    """nft --check every ruleset about to be written, before anything changes.

    The check runs in the tenant's namespace, or in the host's for a tenant that
    does not exist yet: a dry run changes nothing anywhere. When the whole ruleset
    fails, each rule is checked alone to name the one nft rejects.
    """
    for tenant, cur, want in plans:
        if tenant.firewall is None or cur.firewall_id == want.firewall_id:
            continue
        if cur.netns is not None:
            tns = namespaces.get(tenant.netns)

            def check(script, tns=tns):
                return tns.nft_run(script, dry_run=True)
        else:
            def check(script):
                return host_nft_factory().run(script, dry_run=True)
        ok, _out, err = check(nft_script(tenant))
        if ok:
            namespaces.release(tenant.netns)
            continue
        for index, rule in enumerate(tenant.firewall[1]):
            rule_ok, _out, rule_err = check(_one_rule_script(tenant, rule))
            if not rule_ok:
                raise TenantError("%s.firewall.rules[%d]: nft rejects '%s', nothing was changed: %s"
                                  % (tenant.param, index, rule, rule_err.strip()))
        raise TenantError('%s.firewall: nft rejects the ruleset of tenant %s, nothing was changed: %s'
                          % (tenant.param, tenant.name, err.strip()))


class Run(object):
    """Everything one module call does; the module only passes parameters in."""

    def __init__(self, tenants, settings, purge, driver, check_mode):
        self.tenants = tenants
        self.settings = settings
        self.purge = purge
        self.driver = driver
        self.check_mode = check_mode
        self.host = HostState()
        self.namespaces = Namespaces()
        self._host_nft = None

    def close(self):
        self.namespaces.close()
        if self._host_nft is not None:
            self._host_nft.close()
        self.host.close()

    def host_nft(self):
        if self._host_nft is None:
            self._host_nft = Nft()
        return self._host_nft

    def _marker_of(self, netns):
        try:
            return self.namespaces.get(netns).marker()
        except (NetnsError, OSError, NetlinkError):
            return None
        finally:
            self.namespaces.release(netns)

    def discover(self):
        """Markers of listed namespaces; with purge, every tenant of ours not listed."""
        self.markers = {}
        for tenant in self.tenants:
            if os.path.exists(netns_path(tenant.netns)):
                try:
                    self.markers[tenant.netns] = self.namespaces.get(tenant.netns).marker()
                except (NetnsError, OSError) as exc:
                    raise TenantError("%s.netns: cannot read network namespace '%s': %s" % (tenant.param, tenant.netns, exc))
                finally:
                    self.namespaces.release(tenant.netns)
        self.purged = []     # bare Tenants (name, netns, interfaces) to remove
        self.xt_marks = {}
        if any(not t.present and self.markers.get(t.netns) is None for t in self.tenants):
            # an absent tenant whose namespace is gone: its mark is still in its mark chain
            self.xt_marks = _xt_owned_chains(self.driver)
        if not self.purge:
            return
        listed = dict((t.name, t) for t in self.tenants)
        listed_ns = set(t.netns for t in self.tenants)
        found = {}           # name -> [netns]
        for netns in list_netns():
            if netns in listed_ns:
                continue
            marker = self._marker_of(netns)
            if marker is None or marker['host'] != self.host.inode:
                self.namespaces.drop(netns)
                continue
            self.markers[netns] = marker
            found.setdefault(marker['name'], []).append(netns)
        for name in self.host.owned_links():
            found.setdefault(name, [])
        self.xt_marks = _xt_owned_chains(self.driver)
        for name in self.xt_marks:
            found.setdefault(name, [])
        for name in sorted(found):
            spaces = found[name] or [None]
            for netns in spaces:
                if name in listed and netns is None:
                    continue
                bare = Tenant(-1, name, 'absent')
                bare.param = 'purge'
                bare.netns = netns
                bare.host_if = 'ae-%s' % name
                bare.tenant_if = 'ae-%s-t' % name
                if name in listed:
                    # a stale namespace of a listed tenant (its netns was changed): only the namespace goes
                    bare.stale_ns_only = True
                self.purged.append(bare)
        # host veths of purged tenants may have other names: find them by alias
        owned_links = self.host.owned_links()
        for bare in self.purged:
            if bare.host_if is not None and bare.name in owned_links:
                bare.host_if = owned_links[bare.name].name

    def _ownership_problem(self, tenant):
        if tenant.netns not in self.markers:
            return None
        marker = self.markers[tenant.netns]
        if marker is None:
            return ("%s.netns: network namespace '%s' exists and was not created by this module (its loopback has "
                    "no ownership marker); choose another netns or remove it" % (tenant.param, tenant.netns))
        if marker['host'] != self.host.inode:
            return ("%s.netns: network namespace '%s' belongs to tenant %s of another host namespace"
                    % (tenant.param, tenant.netns, marker['name']))
        if marker['name'] != tenant.name:
            return ("%s.netns: network namespace '%s' belongs to tenant %s" % (tenant.param, tenant.netns, marker['name']))
        return None

    def plan(self):
        self.discover()
        self.present_plans = []
        self.absent_plans = []
        for tenant in self.tenants:
            problem = self._ownership_problem(tenant)
            if problem and tenant.present:
                raise TenantError(problem)
            link = self.host.links.get(tenant.host_if)
            if tenant.present and link is not None and link.alias != tenant.alias:
                raise TenantError("%s: interface %s already exists in the host namespace and is not this tenant's "
                                  "(alias %r); set link.host_if" % (tenant.param, tenant.host_if, link.alias))
            owned = tenant.netns in self.markers and not problem
            tns = self.namespaces.get(tenant.netns) if owned else None
            marker = self.markers.get(tenant.netns) if owned else None
            if tenant.present:
                cur = current_view(self.host, tenant, tns, marker, self.settings)
                want = desired_view(tenant, self.settings, self.host.inode)
                self.present_plans.append((tenant, cur, want))
            else:
                self.absent_plans.append((tenant, self._absent_view(tenant, tns is not None, marker)))
            self.namespaces.release(tenant.netns)
        for bare in self.purged:
            self.absent_plans.append((bare, self._absent_view(bare, bare.netns is not None,
                                                              self.markers.get(bare.netns))))

        self.specs = []
        for tenant in self.tenants:
            self.specs += xt_specs(tenant) if tenant.present else absent_xt_specs(tenant.name)
        listed = set(t.name for t in self.tenants)
        for name in sorted(set(b.name for b in self.purged) - listed):
            self.specs += absent_xt_specs(name)

        self.host_sysctls = []
        present = [t for t in self.tenants if t.present]
        if present:
            self.host_sysctls.append(('net.ipv4.ip_forward', SYSCTL_V4_FORWARD))
        if any(t.link6 for t in present):
            self.host_sysctls.append(('net.ipv6.conf.all.forwarding', SYSCTL_V6_FORWARD))
        self.host_sysctls = [(n, p) for n, p in self.host_sysctls if _read_sysctl(p) != '1']

    def _absent_view(self, tenant, owned_ns, marker):
        """The part of an absent tenant that is ours to remove (``owned_ns``: its namespace is ours)."""
        view = View()
        if owned_ns:
            view.netns = tenant.netns
        if tenant.stale_ns_only:
            return view
        link = self.host.links.get(tenant.host_if)
        if link is None or link.alias != tenant.alias:
            link = self.host.owned_links().get(tenant.name)   # renamed, or the name is someone else's
        if link is not None:
            view.host_link = (link.name, link.alias, link.up)
            view.host_addrs = tuple(sorted(self.host.addrs.get(link.index, ())))
            view.routes = _sorted((r['family'], r['prefix'], r['gateway'], r['table']) for r in self.host.routes
                                  if r['oif'] == link.index and r['table'] != TABLE_MAIN)
        pairs = set()
        if marker:
            pairs.add(((marker['mark'], marker['mask']), marker['table']))
        marks = set(p[0] for p in pairs)
        xt_mark = self.xt_marks.get(tenant.name)
        if xt_mark:
            marks.add(xt_mark)
        view.rules = _sorted(r for r in self.host.rules
                             if ((r[1], r[2]), r[3]) in pairs or (not marker and (r[1], r[2]) in marks))
        return view

    def actions(self):
        acts = []
        for tenant, cur, want in self.present_plans:
            if cur.key() != want.key():
                acts += describe(tenant, cur, want)
        for tenant, cur in self.absent_plans:
            who = 'tenant %s' % tenant.name
            for rule in cur.rules:
                acts.append('%s: remove ip -%d rule fwmark 0x%x lookup %d' % (who, rule[0], rule[1], rule[3]))
            if cur.host_link:
                acts.append('%s: delete veth %s (and its routes)' % (who, cur.host_link[0]))
            if cur.netns:
                acts.append("%s: delete network namespace '%s'" % (who, cur.netns))
        for name, _path in self.host_sysctls:
            acts.append('host: set %s = 1' % name)
        return acts

    def execute(self):
        """Plan, apply unless check mode, read back; return (changed, actions, xtables result)."""
        self.plan()
        acts = self.actions()
        if self.check_mode:
            xt = sync_chains(self.driver, self.specs, True)
            return bool(acts) or xt['changed'], acts + xt['actions'], xt
        _check_firewalls(self.host_nft, self.namespaces, self.tenants, self.present_plans)
        for _name, path in self.host_sysctls:
            _write_sysctl(path, '1', 'host')
        for tenant, cur, want in self.present_plans:
            if cur.key() != want.key():
                apply_present(self.host, self.namespaces, tenant, cur, want, self.settings)
        try:
            xt = sync_chains(self.driver, self.specs, False)
        except XtablesError as exc:
            raise TenantError(str(exc))
        for tenant, cur in self.absent_plans:
            apply_absent(self.host, self.namespaces, tenant, cur)
        if acts:
            problems = self.verify()
            if problems:
                raise TenantError('read-back after writing does not match: %s' % ' | '.join(problems))
        return bool(acts) or xt['changed'], acts + xt['actions'], xt

    def verify(self):
        """Read everything back; return a list of problems."""
        self.host.refresh()
        problems = []
        for tenant, _cur, want in self.present_plans:
            marker = None
            tns = None
            if os.path.exists(netns_path(tenant.netns)):
                tns = self.namespaces.get(tenant.netns)
                marker = tns.marker(fresh=True)
            now = current_view(self.host, tenant, tns, marker, self.settings)
            self.namespaces.release(tenant.netns)
            if now.key() != want.key():
                diff = [line for line in now.render(tenant.name) if line not in want.render(tenant.name)]
                problems.append('tenant %s: %s' % (tenant.name, '; '.join(diff) or 'state differs'))
        for tenant, cur in self.absent_plans:
            if cur.netns and os.path.exists(netns_path(cur.netns)):
                problems.append("tenant %s: namespace '%s' still exists" % (tenant.name, cur.netns))
            if cur.host_link and cur.host_link[0] in self.host.links:
                problems.append('tenant %s: interface %s still exists' % (tenant.name, cur.host_link[0]))
            left = set(cur.rules) & self.host.rules
            if left:
                problems.append('tenant %s: ip rules still present: %s' % (tenant.name, sorted(left)))
        return problems

    def diff(self):
        before, after = [], []
        for tenant, cur, want in self.present_plans:
            if cur.firewall_id == want.firewall_id:
                cur.firewall = want.firewall   # the same ruleset: show it as written, not in nft's spelling
            before += cur.render(tenant.name)
            after += want.render(tenant.name)
        for tenant, cur in self.absent_plans:
            before += cur.render(tenant.name)
        return before, after

    def result(self):
        out = []
        for tenant in self.tenants:
            item = {'name': tenant.name, 'state': tenant.state, 'netns': tenant.netns}
            if tenant.present:
                item.update({
                    'interfaces': {'host': tenant.host_if, 'tenant': tenant.tenant_if},
                    'addresses': {'host': [str(p[0]) for _f, p in tenant.links()],
                                  'tenant': [str(p[1]) for _f, p in tenant.links()]},
                    'prefixes': [str(n) for n in tenant.prefixes],
                    'mark': '0x%x' % tenant.mark if tenant.mask == 0xFFFFFFFF else '0x%x/0x%x' % (tenant.mark, tenant.mask),
                    'table': tenant.table,
                    'firewall_policy': tenant.firewall[0] if tenant.firewall else None,
                })
            out.append(item)
        return out
