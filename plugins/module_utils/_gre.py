# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Anycast GRE tunnels whose device lives in a tenant's namespace.

A tunnel is created in the host's namespace and then moved into the tenant's:
the kernel keeps a tunnel's underlay (where its encapsulated packets are sent
and received) in the namespace where it was created. Every server of a fleet
can therefore hold the same tunnel, with the same anycast local address, and
encapsulate or decapsulate any packet of it.

Ownership: our devices carry the interface alias ``anycast.edge gre``; their
routes carry the collection's route protocol. A device is ours *on this host*
only if its underlay is the module's host namespace, so a purge run for one
host namespace never touches tunnels another one created.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    FAMILY, NetlinkError, ROUTE_PROTO, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, TABLE_MAIN,
    dump_routes, failure, kernel_says, open_iproute)
from ansible_collections.anycast.edge.plugins.module_utils._netns import (
    _setns, check_netns_name, list_netns, netns_path)
from ansible_collections.anycast.edge.plugins.module_utils._validate import (
    ParamError, check_ifname, parse_address, parse_interface, parse_prefix)
from ansible_collections.anycast.edge.plugins.module_utils._xtables import (
    ChainSpec, Jump, Rule, XtablesError, select_driver, sync_chains)

OWNER_ALIAS = 'anycast.edge gre'
KIND = {4: 'gre', 6: 'ip6gre'}
ATTR_PREFIX = {4: 'IFLA_GRE_', 6: 'IFLA_IP6GRE_'}
KWARG_PREFIX = {4: 'gre_', 6: 'ip6gre_'}
KERNEL_MODULE = {4: 'ip_gre', 6: 'ip6_gre'}
KERNEL_CONFIG = {4: 'CONFIG_NET_IPGRE', 6: 'CONFIG_IPV6_GRE'}
GRE_KEY = 0x2000            # the K bit of the GRE header flags (host order)
IFF_UP = 0x1
MSS_CHAIN_PREFIX = 'ANYCAST-MSS-'   # + interface name: at most 27 of the 28 characters
MTU_MIN = {4: 68, 6: 1280}
MTU_MAX = 65535
KEY_MAX = 0xFFFFFFFF
TEMP_NAME = 'aegre%08x'     # 13 characters; the name a tunnel has in the host namespace for a moment


class GreError(Exception):
    """A failure already phrased for the user."""


# --------------------------------------------------------------------------
# Input

class Tunnel(object):
    """One validated entry of ``tunnels``."""

    def __init__(self, index, name, netns, local, remote, ttl, key, mtu, address, routes,
                 mss_clamp, state):
        self.index = index
        self.name = name
        self.netns = netns
        self.local = local
        self.remote = remote
        self.ttl = ttl
        self.key = key
        self.mtu = mtu
        self.address = address
        self.routes = routes
        self.mss_clamp = mss_clamp
        self.state = state

    @property
    def family(self):
        return self.local.version if self.local is not None else None

    @property
    def param(self):
        return 'tunnels[%d]' % self.index

    @property
    def ident(self):
        return (self.netns, self.name)

    def label(self):
        return "tunnel '%s' in namespace '%s'" % (self.name, self.netns)

    def route_families(self):
        """Inner address families the tunnel carries (IPv4 when nothing says)."""
        families = set(net.version for net in self.routes)
        if self.address is not None:
            families.add(self.address.version)
        return families or set([4])

    def mss_families(self):
        return self.route_families() if self.state == 'present' and self.mss_clamp else set()

    def text(self):
        """Same layout as Device.text(), for diffs."""
        line = '%s %s local %s remote %s ttl %s' % (self.name, KIND[self.family], self.local, self.remote, self.ttl)
        if self.key is not None:
            line += ' key %s' % self.key
        line += ' mtu %s' % self.mtu
        if self.address is not None:
            line += ' address %s' % self.address
        for net in self.routes:
            line += ' route %s' % net
        return line

    def as_dict(self):
        if self.local is None:
            return dict(name=self.name, netns=self.netns, state=self.state)
        return dict(name=self.name, netns=self.netns, kind=KIND[self.family], local=str(self.local),
                    remote=str(self.remote), ttl=self.ttl, key=self.key, mtu=self.mtu,
                    address=str(self.address) if self.address is not None else None,
                    routes=[str(net) for net in self.routes], mss_clamp=self.mss_clamp,
                    state=self.state)


def _int_param(value, param, low, high, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(param, 'expected an integer %d-%d (%s), got %r' % (low, high, what, value))
    if not low <= value <= high:
        raise ParamError(param, '%d is out of range %d-%d (%s)' % (value, low, high, what))
    return value


def validate(params):
    """Return [Tunnel]; raise ParamError naming the parameter at the first problem."""
    tunnels = []
    seen = {}
    endpoints = {}
    for index, raw in enumerate(params.get('tunnels') or []):
        param = 'tunnels[%d]' % index
        name = check_ifname(raw.get('name'), param + '.name')
        netns = raw.get('netns')
        problem = check_netns_name(netns)
        if problem:
            raise ParamError(param + '.netns', problem)
        state = raw.get('state') or 'present'
        if state == 'absent' and raw.get('local') is None and raw.get('remote') is None:
            # Removing a tunnel needs only its name and namespace.
            tunnels.append(Tunnel(index, name, netns, None, None, None, None, None, None, [], False, state))
            if (netns, name) in seen:
                raise ParamError(param + '.name', "'%s' in namespace '%s' is also given at tunnels[%d]"
                                 % (name, netns, seen[(netns, name)]))
            seen[(netns, name)] = index
            continue
        for which in ('local', 'remote'):
            if raw.get(which) is None:
                raise ParamError('%s.%s' % (param, which), 'is required for a tunnel with state=present')
        local = parse_address(raw.get('local'), param + '.local')
        remote = parse_address(raw.get('remote'), param + '.remote')
        if local.version != remote.version:
            raise ParamError(param + '.remote', "'%s' is IPv%d but local '%s' is IPv%d: both tunnel "
                             "endpoints must be of the same address family"
                             % (remote, remote.version, local, local.version))
        if local == remote:
            raise ParamError(param + '.remote', "'%s' is the same as local: a tunnel needs two "
                             "different endpoints" % remote)
        for addr, which in ((local, 'local'), (remote, 'remote')):
            if addr.is_multicast or addr.is_unspecified:
                raise ParamError('%s.%s' % (param, which), "'%s' is not a unicast address" % addr)
        ttl = _int_param(raw.get('ttl', 64), param + '.ttl', 0, 255, '0 inherits the inner TTL')
        key = raw.get('key')
        if key is not None:
            key = _int_param(key, param + '.key', 0, KEY_MAX, 'a 32-bit GRE key')
        mtu_max = MTU_MAX
        if local.version == 4:
            # ip_gre silently lowers a larger MTU to this (64 KiB less IPv4 and GRE headers)
            mtu_max = MTU_MAX - 20 - 4 - (4 if key is not None else 0)
        mtu = _int_param(raw.get('mtu', 1476), param + '.mtu', MTU_MIN[local.version], mtu_max,
                         'bytes, for an IPv%d underlay%s' % (local.version, ' with a key' if key is not None else ''))
        address = raw.get('address')
        if address:
            address = parse_interface(address, param + '.address')
        else:
            address = None
        routes = []
        for r_index, text in enumerate(raw.get('routes') or []):
            net = parse_prefix(text, '%s.routes[%d]' % (param, r_index))
            if net in routes:
                raise ParamError('%s.routes[%d]' % (param, r_index), '%s is listed twice' % net)
            routes.append(net)
        tunnel = Tunnel(index, name, netns, local, remote, ttl, key, mtu, address, routes,
                        bool(raw.get('mss_clamp', True)), state)
        if tunnel.ident in seen:
            raise ParamError(param + '.name', "'%s' in namespace '%s' is also given at tunnels[%d]"
                             % (name, netns, seen[tunnel.ident]))
        seen[tunnel.ident] = index
        if state == 'present':
            # The kernel tells a tunnel's packets apart by endpoints and key only.
            endpoint = (str(local), str(remote), key)
            if endpoint in endpoints:
                first = endpoints[endpoint]
                raise ParamError(param, 'local %s, remote %s and key %s are the same as tunnels[%d]: the '
                                 'kernel could not tell the two tunnels apart' % (local, remote, key, first))
            endpoints[endpoint] = index
        tunnels.append(tunnel)
    return tunnels


# --------------------------------------------------------------------------
# Kernel support

def gre_support_problem(family):
    """A sentence if this kernel evidently has no GRE of ``family``, else None.

    Looks for the module loaded or built in (/sys/module) and for it among the
    installable modules of the running kernel. Changes nothing.
    """
    module = KERNEL_MODULE[family]
    if os.path.isdir('/sys/module/%s' % module):
        return None
    release = os.uname().release
    moddir = '/lib/modules/%s' % release
    for index in ('modules.builtin', 'modules.dep'):
        try:
            with open(os.path.join(moddir, index)) as handle:
                for line in handle:
                    if ('/%s.ko' % module) in line.split(':', 1)[0]:
                        return None
        except (IOError, OSError):
            continue
    return no_gre_message(family, release)


def no_gre_message(family, release=None):
    return ("the running kernel (%s) has no %s support: the %s module is neither loaded, built in nor "
            "installed (kernel option %s). GRE tunnels need a kernel with it; nothing was changed."
            % (release or os.uname().release, 'GRE' if family == 4 else 'IPv6 GRE (ip6gre)',
               KERNEL_MODULE[family], KERNEL_CONFIG[family]))


# --------------------------------------------------------------------------
# Namespaces: one netlink socket per namespace, opened from inside it.

class Namespaces(object):
    """The host namespace (the current one) and sockets into tenant namespaces."""

    def __init__(self):
        self.host_fd = os.open('/proc/self/ns/net', os.O_RDONLY | os.O_CLOEXEC)
        self.host_stat = os.fstat(self.host_fd)
        self.host = open_iproute()
        self._fds = {}
        self._sockets = {}

    def exists(self, name):
        return os.path.exists(netns_path(name))

    def fd(self, name):
        if name not in self._fds:
            self._fds[name] = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        return self._fds[name]

    def is_host(self, name):
        st = os.fstat(self.fd(name))
        return (st.st_dev, st.st_ino) == (self.host_stat.st_dev, self.host_stat.st_ino)

    def inside(self, name, func):
        """Run func() with the process inside namespace ``name``, then come back."""
        _setns(self.fd(name))
        try:
            return func()
        finally:
            _setns(self.host_fd)

    def socket(self, name):
        if name not in self._sockets:
            self._sockets[name] = self.host if self.is_host(name) else self.inside(name, open_iproute)
        return self._sockets[name]

    def host_nsid_in(self, name):
        """The id under which namespace ``name`` knows the host namespace.

        'self' when ``name`` is the host namespace; None when it has none (then
        no device there can have its underlay here).
        """
        if self.is_host(name):
            return 'self'
        try:
            reply = self.socket(name).get_netnsid(fd=self.host_fd)
        except NetlinkError:
            return None
        nsid = reply.get('nsid') if reply else None
        if nsid is None or nsid < 0 or nsid >= 0x7FFFFFFF:
            return None
        return nsid

    def close(self):
        for ipr in set(self._sockets.values()) | set([self.host]):
            try:
                ipr.close()
            except Exception:
                pass
        for fd in list(self._fds.values()) + [self.host_fd]:
            try:
                os.close(fd)
            except OSError:
                pass


# --------------------------------------------------------------------------
# Reading

def _data_attr(data, family, name):
    return data.get_attr(ATTR_PREFIX[family] + name) if data is not None else None


def _flags_host_order(value, family):
    # pyroute2 decodes IFLA_GRE_*FLAGS big-endian but IFLA_IP6GRE_*FLAGS in host order.
    if value is None:
        return 0
    return value if family == 4 else socket.ntohs(value)


def _flags_for_pyroute2(family):
    return GRE_KEY if family == 4 else socket.htons(GRE_KEY)


class Device(object):
    """A GRE device as read from one namespace."""

    def __init__(self, netns, msg):
        self.netns = netns
        self.index = msg['index']
        self.name = msg.get_attr('IFLA_IFNAME')
        self.flags = msg['flags']
        self.mtu = msg.get_attr('IFLA_MTU')
        self.alias = msg.get_attr('IFLA_IFALIAS')
        self.link_nsid = msg.get_attr('IFLA_LINK_NETNSID')
        linkinfo = msg.get_attr('IFLA_LINKINFO')
        self.kind = linkinfo.get_attr('IFLA_INFO_KIND') if linkinfo is not None else None
        family = 6 if self.kind == 'ip6gre' else 4
        self.family = family
        data = linkinfo.get_attr('IFLA_INFO_DATA') if linkinfo is not None else None
        self.local = _data_attr(data, family, 'LOCAL')
        self.remote = _data_attr(data, family, 'REMOTE')
        self.ttl = _data_attr(data, family, 'TTL')
        iflags = _flags_host_order(_data_attr(data, family, 'IFLAGS'), family)
        oflags = _flags_host_order(_data_attr(data, family, 'OFLAGS'), family)
        ikey = _data_attr(data, family, 'IKEY')
        okey = _data_attr(data, family, 'OKEY')
        self.ikey = ikey if iflags & GRE_KEY else None
        self.okey = okey if oflags & GRE_KEY else None
        self.addresses = []
        self.routes = []

    @property
    def owned(self):
        return self.alias == OWNER_ALIAS and self.kind in ('gre', 'ip6gre')

    @property
    def up(self):
        return bool(self.flags & IFF_UP)

    def params(self):
        """The tunnel parameters the module verifies, as comparable text."""
        return dict(kind=self.kind, local=_addr_text(self.local), remote=_addr_text(self.remote),
                    ttl=self.ttl, ikey=self.ikey, okey=self.okey, mtu=self.mtu)

    def text(self):
        line = '%s %s local %s remote %s ttl %s' % (self.name, self.kind, self.local, self.remote, self.ttl)
        if self.ikey is not None or self.okey is not None:
            line += ' key %s' % (self.ikey if self.ikey == self.okey else '%s/%s' % (self.ikey, self.okey))
        line += ' mtu %s' % self.mtu
        for addr in self.addresses:
            line += ' address %s' % addr
        for net in self.routes:
            line += ' route %s' % net
        return line


def _addr_text(value):
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return str(value)


def _read_addresses(ipr, index):
    found = []
    for msg in ipr.addr('dump'):
        if msg['index'] != index:
            continue
        if msg['family'] == socket.AF_INET6 and msg['scope'] == RT_SCOPE_LINK:
            continue    # fe80:: addresses the kernel adds by itself
        address = msg.get_attr('IFA_LOCAL') or msg.get_attr('IFA_ADDRESS')
        found.append(ipaddress.ip_interface('%s/%d' % (address, msg['prefixlen'])))
    return found


def _read_routes(ipr, index):
    found = []
    for family in (4, 6):
        try:
            routes = dump_routes(ipr, family, TABLE_MAIN, proto=ROUTE_PROTO)
        except NetlinkError as exc:
            if exc.code != errno.ENOENT:
                raise
            routes = []     # a namespace without any route has no main table yet
        for route in routes:
            if route['oif'] == index:
                found.append(ipaddress.ip_network('%s/%d' % (route['dst'], route['dst_len'])))
    return found


def read_device(namespaces, netns, name):
    """The GRE device ``name`` in ``netns`` with its addresses and our routes, or None."""
    ipr = namespaces.socket(netns)
    found = ipr.link_lookup(ifname=name)
    if not found:
        return None
    msgs = list(ipr.get_links(found[0]))
    if not msgs:
        return None
    device = Device(netns, msgs[0])
    device.addresses = _read_addresses(ipr, device.index)
    device.routes = _read_routes(ipr, device.index)
    return device


def underlay_is_host(namespaces, device):
    expected = namespaces.host_nsid_in(device.netns)
    if expected == 'self':
        return device.link_nsid is None
    return expected is not None and device.link_nsid == expected


def owned_devices(namespaces):
    """{(netns, name): Device} of every tunnel of ours whose underlay is the host namespace."""
    found = {}
    for netns in list_netns():
        try:
            if namespaces.host_nsid_in(netns) is None:
                continue
            ipr = namespaces.socket(netns)
        except (OSError, NetlinkError):
            continue    # a namespace that vanished meanwhile
        for msg in ipr.get_links():
            linkinfo = msg.get_attr('IFLA_LINKINFO')
            kind = linkinfo.get_attr('IFLA_INFO_KIND') if linkinfo is not None else None
            if kind not in ('gre', 'ip6gre') or msg.get_attr('IFLA_IFALIAS') != OWNER_ALIAS:
                continue
            device = Device(netns, msg)
            if underlay_is_host(namespaces, device):
                device.addresses = _read_addresses(ipr, device.index)
                device.routes = _read_routes(ipr, device.index)
                found[(netns, device.name)] = device
    return found


# --------------------------------------------------------------------------
# Planning

def mismatches(tunnel, device):
    """Names of tunnel parameters whose kernel value differs from the wanted one."""
    want = dict(kind=KIND[tunnel.family], local=str(tunnel.local), remote=str(tunnel.remote),
                ttl=tunnel.ttl, ikey=tunnel.key, okey=tunnel.key, mtu=tunnel.mtu)
    have = device.params()
    return [field for field in ('kind', 'local', 'remote', 'ttl', 'ikey', 'okey', 'mtu')
            if want[field] != have[field]]


class Plan(object):
    def __init__(self):
        self.create = []        # [Tunnel]
        self.recreate = []      # [(Tunnel, Device, [fields])]
        self.set_mtu = []       # [(Tunnel, Device)]
        self.set_up = []        # [(Tunnel, Device)]
        self.addresses = []     # [(Tunnel, Device or None, add [iface], remove [iface])]
        self.routes = []        # [(Tunnel, Device or None, add [net], remove [net])]
        self.delete = []        # [Device]
        self.actions = []

    @property
    def changed(self):
        return bool(self.create or self.recreate or self.set_mtu or self.set_up or self.delete
                    or any(a or r for _t, _d, a, r in self.addresses)
                    or any(a or r for _t, _d, a, r in self.routes))


def make_plan(namespaces, tunnels, purge):
    """Read the kernel and decide; raise GreError for conflicts found while reading."""
    plan = Plan()
    owned = owned_devices(namespaces)
    wanted = set()
    for tunnel in tunnels:
        wanted.add(tunnel.ident)
        present = tunnel.state == 'present'
        if not namespaces.exists(tunnel.netns):
            if present:
                raise GreError("%s.netns: network namespace '%s' does not exist; create the tenant first "
                               "(anycast.edge.tenant), this module never creates namespaces"
                               % (tunnel.param, tunnel.netns))
            continue
        device = read_device(namespaces, tunnel.netns, tunnel.name)
        if device is not None and (tunnel.netns, tunnel.name) not in owned:
            if device.owned:
                reason = 'its underlay is another namespace than this host namespace'
            else:
                reason = 'it was not created by anycast.edge (kind %s, alias %r)' % (device.kind, device.alias)
            if present:
                raise GreError("%s.name: interface '%s' already exists in namespace '%s' and %s; "
                               "remove it or choose another name" % (tunnel.param, tunnel.name, tunnel.netns, reason))
            continue    # absent: never touch what is not ours
        if not present:
            if device is not None:
                plan.delete.append(device)
                plan.actions.append('delete %s' % tunnel.label())
            continue
        if device is None:
            plan.create.append(tunnel)
            plan.actions.append('create %s (%s local %s remote %s)' % (
                tunnel.label(), KIND[tunnel.family], tunnel.local, tunnel.remote))
            current_addrs, current_routes = [], []
        else:
            fields = [f for f in mismatches(tunnel, device) if f != 'mtu']
            if fields:
                plan.recreate.append((tunnel, device, fields))
                plan.actions.append('recreate %s: %s differ' % (tunnel.label(), ', '.join(fields)))
                current_addrs, current_routes = [], []
            else:
                if device.mtu != tunnel.mtu:
                    plan.set_mtu.append((tunnel, device))
                    plan.actions.append('set mtu %d on %s (was %s)' % (tunnel.mtu, tunnel.label(), device.mtu))
                current_addrs, current_routes = device.addresses, device.routes
            if not fields and not device.up:
                plan.set_up.append((tunnel, device))
                plan.actions.append('bring %s up' % tunnel.label())
        wanted_addrs = [tunnel.address] if tunnel.address is not None else []
        add_a = [a for a in wanted_addrs if a not in current_addrs]
        del_a = [a for a in current_addrs if a not in wanted_addrs]
        plan.addresses.append((tunnel, device, add_a, del_a))
        plan.actions += ['add address %s to %s' % (a, tunnel.label()) for a in add_a]
        plan.actions += ['remove address %s from %s' % (a, tunnel.label()) for a in del_a]
        add_r = [n for n in tunnel.routes if n not in current_routes]
        del_r = [n for n in current_routes if n not in tunnel.routes]
        plan.routes.append((tunnel, device, add_r, del_r))
        plan.actions += ['route %s through %s' % (n, tunnel.label()) for n in add_r]
        plan.actions += ['remove route %s through %s' % (n, tunnel.label()) for n in del_r]
    if purge:
        for ident, device in sorted(owned.items()):
            if ident not in wanted:
                plan.delete.append(device)
                plan.actions.append("delete tunnel '%s' in namespace '%s' (purge)" % (device.name, device.netns))
    return plan, owned


# --------------------------------------------------------------------------
# Applying

def _gre_kwargs(tunnel):
    prefix = KWARG_PREFIX[tunnel.family]
    kwargs = {
        prefix + 'local': str(tunnel.local),
        prefix + 'remote': str(tunnel.remote),
        prefix + 'ttl': tunnel.ttl,
    }
    if tunnel.key is not None:
        flags = _flags_for_pyroute2(tunnel.family)
        kwargs.update({prefix + 'ikey': tunnel.key, prefix + 'okey': tunnel.key,
                       prefix + 'iflags': flags, prefix + 'oflags': flags})
    return kwargs


def create_device(namespaces, tunnel):
    """Create in the host namespace, tag, then move into the tenant's under its real name."""
    host = namespaces.host
    temp = None
    for _attempt in range(5):
        candidate = TEMP_NAME % int.from_bytes(os.urandom(4), 'big')
        if not host.link_lookup(ifname=candidate):
            temp = candidate
            break
    try:
        host.link('add', ifname=temp, kind=KIND[tunnel.family], mtu=tunnel.mtu, **_gre_kwargs(tunnel))
    except NetlinkError as exc:
        if exc.code in (errno.EOPNOTSUPP, errno.EAFNOSUPPORT) or 'Unknown device type' in kernel_says(exc):
            raise GreError('%s: %s (the kernel said: %s)'
                           % (tunnel.param, no_gre_message(tunnel.family), kernel_says(exc)))
        if exc.code == errno.EEXIST:
            raise GreError('%s: the kernel refused to create %s: another tunnel in this host namespace already '
                           'has local %s, remote %s and key %s (%s)' % (
                               tunnel.param, tunnel.label(), tunnel.local, tunnel.remote, tunnel.key,
                               kernel_says(exc)))
        raise GreError(str(failure('%s: creating %s' % (tunnel.param, tunnel.label()), exc)))
    index = host.link_lookup(ifname=temp)[0]
    try:
        host.link('set', index=index, ifalias=OWNER_ALIAS)
        if not namespaces.is_host(tunnel.netns):
            host.link('set', index=index, net_ns_fd=namespaces.fd(tunnel.netns), ifname=tunnel.name)
        else:
            host.link('set', index=index, ifname=tunnel.name)
    except NetlinkError as exc:
        try:
            host.link('del', index=index)
        except NetlinkError:
            pass
        raise GreError(str(failure("%s: moving the new tunnel into namespace '%s' as '%s'"
                                   % (tunnel.param, tunnel.netns, tunnel.name), exc)))
    ipr = namespaces.socket(tunnel.netns)
    found = ipr.link_lookup(ifname=tunnel.name)
    if not found:
        raise GreError("%s: after moving it, '%s' is not in namespace '%s'" % (tunnel.param, tunnel.name, tunnel.netns))
    return found[0]


def _link_set(namespaces, tunnel, index, what, **kwargs):
    try:
        namespaces.socket(tunnel.netns).link('set', index=index, **kwargs)
    except NetlinkError as exc:
        raise GreError(str(failure('%s: %s of %s' % (tunnel.param, what, tunnel.label()), exc)))


def _delete(namespaces, device):
    try:
        namespaces.socket(device.netns).link('del', index=device.index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise GreError(str(failure("deleting tunnel '%s' in namespace '%s'" % (device.name, device.netns), exc)))


def _address(ipr, command, index, iface):
    ipr.addr(command, index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
             family=FAMILY[iface.version])


def _route(ipr, command, index, net):
    ipr.route(command, family=FAMILY[net.version], dst=str(net.network_address), dst_len=net.prefixlen,
              oif=index, table=TABLE_MAIN, proto=ROUTE_PROTO,
              scope=RT_SCOPE_LINK if net.version == 4 else RT_SCOPE_UNIVERSE)


def apply_plan(namespaces, plan):
    """Carry the plan out.

    Deletions go first, so a tunnel renamed (old name purged) can take over its
    endpoints and key. On a kernel without GRE there is nothing of ours to
    delete or recreate, so there the first kernel call is the first creation:
    it fails and nothing has changed.
    """
    index_of = {}
    for device in plan.delete:
        _delete(namespaces, device)
    for tunnel, device, _fields in plan.recreate:
        _delete(namespaces, device)
        index_of[tunnel.ident] = create_device(namespaces, tunnel)
    for tunnel in plan.create:
        index_of[tunnel.ident] = create_device(namespaces, tunnel)
    for tunnel, device in plan.set_mtu:
        _link_set(namespaces, tunnel, device.index, 'setting the MTU', mtu=tunnel.mtu)
    for tunnel, device in plan.set_up:
        index_of.setdefault(tunnel.ident, device.index)
    for tunnel in plan.create + [t for t, _d, _f in plan.recreate] + [t for t, _d in plan.set_up]:
        _link_set(namespaces, tunnel, index_of[tunnel.ident], 'bringing up', state='up')
    for tunnel, device, add, remove in plan.addresses:
        index = index_of.get(tunnel.ident, device.index if device is not None else None)
        ipr = namespaces.socket(tunnel.netns)
        for iface in remove:
            try:
                _address(ipr, 'del', index, iface)
            except NetlinkError as exc:
                if exc.code != errno.EADDRNOTAVAIL:
                    raise GreError(str(failure('%s.address: removing %s from %s' % (tunnel.param, iface, tunnel.label()), exc)))
        for iface in add:
            try:
                _address(ipr, 'add', index, iface)
            except NetlinkError as exc:
                raise GreError(str(failure('%s.address: adding %s to %s' % (tunnel.param, iface, tunnel.label()), exc)))
    for tunnel, device, add, remove in plan.routes:
        index = index_of.get(tunnel.ident, device.index if device is not None else None)
        ipr = namespaces.socket(tunnel.netns)
        for net in remove:
            try:
                _route(ipr, 'del', index, net)
            except NetlinkError as exc:
                if exc.code != errno.ESRCH:
                    raise GreError(str(failure('%s.routes: removing route %s' % (tunnel.param, net), exc)))
        for net in add:
            try:
                _route(ipr, 'add', index, net)
            except NetlinkError as exc:
                hint = None
                if exc.code == errno.EEXIST:
                    hint = ("namespace '%s' already has a route for %s that does not go through this tunnel"
                            % (tunnel.netns, net))
                raise GreError(str(failure('%s.routes: routing %s through %s' % (tunnel.param, net, tunnel.label()),
                                           exc, hint)))


def verify(namespaces, tunnels):
    """Read every present tunnel back; return [(Tunnel, [problems])] for the ones that differ."""
    wrong = []
    for tunnel in tunnels:
        if tunnel.state != 'present':
            device = read_device(namespaces, tunnel.netns, tunnel.name) if namespaces.exists(tunnel.netns) else None
            if device is not None and device.owned and underlay_is_host(namespaces, device):
                wrong.append((tunnel, ['still exists']))
            continue
        device = read_device(namespaces, tunnel.netns, tunnel.name)
        if device is None:
            wrong.append((tunnel, ['missing']))
            continue
        problems = []
        want = dict(kind=KIND[tunnel.family], local=str(tunnel.local), remote=str(tunnel.remote),
                    ttl=tunnel.ttl, ikey=tunnel.key, okey=tunnel.key, mtu=tunnel.mtu)
        have = device.params()
        for field in mismatches(tunnel, device):
            problems.append('%s is %s, expected %s' % (field, have[field], want[field]))
        if not device.owned:
            problems.append('ownership alias is %r' % device.alias)
        if not underlay_is_host(namespaces, device):
            problems.append('its underlay is not the host namespace')
        if not device.up:
            problems.append('it is down')
        wanted_addrs = [tunnel.address] if tunnel.address is not None else []
        if sorted(map(str, device.addresses)) != sorted(map(str, wanted_addrs)):
            problems.append('addresses are %s, expected %s'
                            % ([str(a) for a in device.addresses], [str(a) for a in wanted_addrs]))
        if sorted(map(str, device.routes)) != sorted(map(str, tunnel.routes)):
            problems.append('routes are %s, expected %s'
                            % ([str(n) for n in device.routes], [str(n) for n in tunnel.routes]))
        if problems:
            wrong.append((tunnel, problems))
    return wrong


# --------------------------------------------------------------------------
# MSS clamping: one owned chain per tunnel in the mangle table of its namespace,
# entered from FORWARD for packets leaving through the tunnel. A chain per
# tunnel keeps tunnels independent: a run never rewrites a tunnel it was not
# told about.

def mss_chain(name):
    return MSS_CHAIN_PREFIX + name


def mss_specs(name, families):
    """ChainSpecs (IPv4, IPv6) of one tunnel: clamped in ``families``, absent in the others."""
    specs = []
    for family in (4, 6):
        chain = mss_chain(name)
        rule = Rule(family, 'TCPMSS', target_options=(('clamp-mss-to-pmtu', None),), protocol='tcp',
                    matches=(('tcp', (('tcp-flags', ('SYN,RST', 'SYN')),)),))
        jump = Jump('FORWARD', Rule(family, chain, out_iface=name))
        specs.append(ChainSpec(family, 'mangle', chain, [rule], [jump], present=family in families))
    return specs


def sync_mss(namespaces, driver, netns, wanted, check_mode):
    """Bring the MSS chains of the tunnels in one namespace in line.

    ``wanted`` is [(interface name, families to clamp)]; an empty set removes
    the tunnel's chains. One read and at most one transaction per family.
    """
    specs = []
    for name, families in wanted:
        specs += mss_specs(name, families)
    part = namespaces.inside(netns, lambda: sync_chains(driver, specs, check_mode))
    return {
        'changed': part['changed'],
        'actions': ["namespace '%s': %s" % (netns, a) for a in part['actions']],
        'before': ['%s: %s' % (netns, line) for line in part['diff']['before'].splitlines()],
        'after': ['%s: %s' % (netns, line) for line in part['diff']['after'].splitlines()],
    }


# --------------------------------------------------------------------------
# The whole run: read -> plan -> apply unless check mode -> read back.

def _render(devices):
    return sorted('%s: %s' % (device.netns, device.text()) for device in devices.values())


def run(module, namespaces, tunnels, purge, driver_name):
    plan, owned = make_plan(namespaces, tunnels, purge)

    # Kernel support is known before anything changes: in check mode from the
    # module files alone; otherwise the first creation is the first change, so
    # a kernel that refuses it has not been touched.
    creating = list(plan.create) + [t for t, _d, _f in plan.recreate]
    if module.check_mode:
        for family in sorted(set(t.family for t in creating)):
            problem = gre_support_problem(family)
            if problem:
                raise GreError(problem)

    before = dict(owned)
    for tunnel in tunnels:
        if tunnel.ident not in before and namespaces.exists(tunnel.netns):
            device = read_device(namespaces, tunnel.netns, tunnel.name)
            if device is not None and device.owned and underlay_is_host(namespaces, device):
                before[tunnel.ident] = device
    after_lines = dict((ident, '%s: %s' % (ident[0], d.text())) for ident, d in before.items())
    for device in plan.delete:
        after_lines.pop((device.netns, device.name), None)
    for tunnel in tunnels:
        if tunnel.state == 'present':
            after_lines[tunnel.ident] = '%s: %s' % (tunnel.netns, tunnel.text())
        else:
            after_lines.pop(tunnel.ident, None)

    # MSS chains: per namespace, the tunnels this run decides about.
    mss_wanted = {}
    for tunnel in tunnels:
        if namespaces.exists(tunnel.netns):
            mss_wanted.setdefault(tunnel.netns, {})[tunnel.name] = tunnel.mss_families()
    for device in plan.delete:
        mss_wanted.setdefault(device.netns, {}).setdefault(device.name, set())
    clamping = any(families for names in mss_wanted.values() for families in names.values())
    driver = None
    if mss_wanted:
        try:
            driver = select_driver(module, driver_name)
        except XtablesError as exc:
            if clamping:
                raise GreError('mss_clamp: %s' % exc)

    def sync_all_mss(check_mode):
        out = {'changed': False, 'actions': [], 'before': [], 'after': []}
        if driver is None:
            return out
        for netns in sorted(mss_wanted):
            try:
                part = sync_mss(namespaces, driver, netns, sorted(mss_wanted[netns].items()), check_mode)
            except XtablesError as exc:
                raise GreError("MSS clamping rules in namespace '%s': %s" % (netns, exc))
            for key in ('actions', 'before', 'after'):
                out[key] += part[key]
            out['changed'] = out['changed'] or part['changed']
        return out

    corrected = []
    if module.check_mode:
        mss = sync_all_mss(True)
    else:
        if plan.changed:
            apply_plan(namespaces, plan)
        mss = sync_all_mss(False)
        if plan.changed:
            wrong = verify(namespaces, tunnels)
            if wrong:
                # One more pass corrects what the kernel changed behind our back
                # (or what a concurrent writer did); a second difference is reported.
                found = '; '.join('%s: %s' % (t.label(), ', '.join(problems)) for t, problems in wrong)
                retry, _owned = make_plan(namespaces, [t for t, _p in wrong], False)
                try:
                    apply_plan(namespaces, retry)
                except GreError as exc:
                    raise GreError('read-back after writing does not match the request: %s; correcting it '
                                   'failed: %s' % (found, exc))
                corrected = [t.label() for t, _p in wrong]
                still = verify(namespaces, [t for t, _p in wrong])
                if still:
                    raise GreError('read-back after writing does not match the request: %s (and again after '
                                   'correcting it)' % '; '.join('%s: %s' % (t.label(), ', '.join(problems))
                                                                for t, problems in still))

    result = {
        'changed': plan.changed or mss['changed'] or bool(corrected),
        'actions': plan.actions + mss['actions'],
        'tunnels': [t.as_dict() for t in tunnels],
        'corrected': corrected,
        'removed': sorted('%s/%s' % (d.netns, d.name) for d in plan.delete),
        'driver': driver.name if driver is not None else None,
    }
    if module._diff:
        before_lines = _render(before) + mss['before']
        after_lines = sorted(after_lines.values()) + mss['after']
        result['diff'] = {'before': '\n'.join(before_lines) + ('\n' if before_lines else ''),
                          'after': '\n'.join(after_lines) + ('\n' if after_lines else '')}
    return result
