# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Anycast GRE tunnels whose device lives in a tenant's namespace: the domain the engine runs.

A tunnel is created in the host's namespace and then moved into the tenant's:
the kernel keeps a tunnel's underlay (where its encapsulated packets are sent
and received) in the namespace where it was created. Every server of a fleet
can therefore hold the same tunnel, with the same anycast local address, and
encapsulate or decapsulate any packet of it.

Ownership: our devices carry the interface alias ``anycast.edge gre``; their
routes carry the collection's route protocol. A device is ours *on this host*
only if its underlay is the module's host namespace (``owned_devices``, which
edge_info reads with too), so a purge run for one host namespace never touches
tunnels another one created.

MSS clamping: one owned chain per tunnel in the mangle table of its namespace,
entered from FORWARD for packets leaving through the tunnel. A chain per tunnel
keeps tunnels independent: a run never rewrites a tunnel it was not told about.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import zlib

from ansible_collections.anycast.edge.plugins.module_utils import _gre_mss
from ansible_collections.anycast.edge.plugins.module_utils._engine import Domain, Op, OpPlan, Record
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError
from ansible_collections.anycast.edge.plugins.module_utils._gre_spec import KIND, Tunnel, validate
from ansible_collections.anycast.edge.plugins.module_utils._iproute import call, refused
from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    FAMILY, GRE_KEY, GRE_KINDS, ROUTE_PROTO, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, TABLE_MAIN, failure, kernel_says)
from ansible_collections.anycast.edge.plugins.module_utils._netns import Namespaces, in_netns, list_netns
from ansible_collections.anycast.edge.plugins.module_utils._gre_mss import MSS_CHAIN_PREFIX  # noqa: F401  pylint: disable=unused-import

OWNER_ALIAS = 'anycast.edge gre'
KWARG_PREFIX = {4: 'gre_', 6: 'ip6gre_'}
KERNEL_MODULE = {4: 'ip_gre', 6: 'ip6_gre'}
KERNEL_CONFIG = {4: 'CONFIG_NET_IPGRE', 6: 'CONFIG_IPV6_GRE'}
TEMP_NAME = 'aegre%08x'     # 13 characters; the name a tunnel has in the host namespace for a moment

__all__ = ['GreTunnels', 'owned_devices', 'validate']


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
# Reading: the one interface reader (_netlink) plus ownership

class Device(object):
    """A GRE device as read from one namespace, with its addresses and our routes."""

    def __init__(self, netns, link, addresses, routes):
        tunnel = link.tunnel
        self.netns = netns
        self.index = link.index
        self.name = link.name
        self.up = link.up
        self.mtu = link.mtu
        self.alias = link.alias
        self.link_nsid = link.link_nsid
        self.kind = link.kind
        self.family = tunnel.family if tunnel else (6 if link.kind == 'ip6gre' else 4)
        self.local = tunnel.local if tunnel else None
        self.remote = tunnel.remote if tunnel else None
        self.ttl = tunnel.ttl if tunnel else None
        self.ikey = tunnel.ikey if tunnel else None
        self.okey = tunnel.okey if tunnel else None
        self.addresses = addresses  # [ip_interface]
        self.routes = routes        # [ip_network]

    @property
    def owned(self):
        return self.alias == OWNER_ALIAS and self.kind in GRE_KINDS

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

    def as_tunnel(self, mss_clamp):
        """The Tunnel (module input) that makes this device."""
        return Tunnel(-1, self.name, self.netns, ipaddress.ip_address(self.local), ipaddress.ip_address(self.remote),
                      self.ttl, self.ikey, self.mtu, self.addresses[0] if self.addresses else None,
                      list(self.routes), mss_clamp, 'present')


def _addr_text(value):
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return str(value)


class NamespaceDevices(object):
    """The GRE devices of one namespace, and whether their underlay is the host namespace."""

    def __init__(self, netns, handles, host_nsid):
        self.netns = netns
        self.host_nsid = host_nsid      # 'self' (the host itself), the host's nsid here, or None
        rt = handles.rt
        links = rt.links()
        gre = dict((name, link) for name, link in links.items() if link.kind in GRE_KINDS)
        self.names = set(links)
        self.devices = {}
        if not gre:
            return
        indexes = set(link.index for link in gre.values())
        addresses, routes = {}, {}
        for address in rt.addresses():
            if address.index in indexes and not (address.family == 6 and address.scope == RT_SCOPE_LINK):
                addresses.setdefault(address.index, []).append(ipaddress.ip_interface(address.interface))
        for family in (4, 6):
            for route in rt.routes(family, TABLE_MAIN):
                if route['proto'] == ROUTE_PROTO and route['oif'] in indexes:
                    routes.setdefault(route['oif'], []).append(
                        ipaddress.ip_network('%s/%d' % (route['dst'], route['dst_len'])))
        for name, link in gre.items():
            self.devices[name] = Device(netns, link, addresses.get(link.index, []), routes.get(link.index, []))

    def underlay_is_host(self, device):
        if self.host_nsid == 'self':
            return device.link_nsid is None
        return self.host_nsid is not None and device.link_nsid == self.host_nsid

    def owned(self):
        return dict((name, d) for name, d in self.devices.items() if d.owned and self.underlay_is_host(d))


def host_nsid_in(namespaces, netns):
    """The id under which NETNS knows the host namespace: 'self' for the host itself, None for none."""
    if namespaces.is_host(netns):
        return 'self'
    return namespaces.get(netns).rt.nsid_of(namespaces.host.fd)


def read_namespace(namespaces, netns):
    """NamespaceDevices of NETNS, or None when it vanished or cannot be entered."""
    try:
        found = NamespaceDevices(netns, namespaces.get(netns), host_nsid_in(namespaces, netns))
    except (EdgeError, OSError):
        found = None
    namespaces.release(netns)
    return found


def owned_devices(namespaces):
    """{(netns, name): Device} of every tunnel of ours whose underlay is the host namespace."""
    found = {}
    for netns in list_netns():
        read = read_namespace(namespaces, netns)
        if read is None or read.host_nsid is None:
            continue
        for name, device in read.owned().items():
            found[(netns, name)] = device
    return found


# --------------------------------------------------------------------------
# The plan

def mismatches(tunnel, device):
    """Names of tunnel parameters whose kernel value differs from the wanted one."""
    want = dict(kind=KIND[tunnel.family], local=str(tunnel.local), remote=str(tunnel.remote),
                ttl=tunnel.ttl, ikey=tunnel.key, okey=tunnel.key, mtu=tunnel.mtu)
    have = device.params()
    return [field for field in ('kind', 'local', 'remote', 'ttl', 'ikey', 'okey', 'mtu') if want[field] != have[field]]


class GreState(object):
    def __init__(self, spaces, owned, mss, support, host_links):
        self.spaces = spaces        # {netns: NamespaceDevices} of the listed tunnels' namespaces that exist
        self.owned = owned          # {(netns, name): Device}, every namespace
        self.mss = mss              # {netns: the MSS chains as the layer read them (_gre_mss)}
        self.support = support      # {family: sentence when the kernel evidently has no GRE of it}
        self.host_links = host_links    # names of the host namespace's links (None: unknown, rendered)


class GrePlan(OpPlan):
    def __init__(self, ops, actions, deleted, removed, mss_plans, after):
        self.actions = actions
        self.deleted = deleted      # [Device] deleted (removed, or recreated)
        self.removed = removed      # ['netns/name'] of the tunnels that go (absent, purge)
        self.mss_plans = mss_plans  # {netns: XtPlan or NftPlan}
        self.after = after          # {(netns, name): Tunnel} present when the plan is done
        super().__init__(ops)


def _temp_name(tunnel, taken):
    """The name a new tunnel has in the host namespace until it moves: fixed per tunnel, so commands are exact."""
    for attempt in range(100):
        name = TEMP_NAME % zlib.crc32(('%s/%s/%d' % (tunnel.netns, tunnel.name, attempt)).encode())
        if name not in taken:
            return name
    raise EdgeError('%s: no free temporary interface name in the host namespace' % tunnel.param)


def _add_command(tunnel, temp):
    line = 'ip link add %s type %s local %s remote %s ttl %d' % (
        temp, KIND[tunnel.family], tunnel.local, tunnel.remote, tunnel.ttl)
    if tunnel.key is not None:
        line += ' key %d' % tunnel.key
    return line + ' mtu %d' % tunnel.mtu


def _n(netns):
    return 'ip -n %s ' % netns


class GreTunnels(Domain):
    name = 'gre_tunnel'

    def validate(self):
        self.tunnels = validate(self.params)
        self.purge = self.params['purge']
        self.namespaces = None
        self.driver = None
        self.driver_problem = None
        self.wrong = []

    def open(self):
        self.namespaces = Namespaces()
        try:
            layer = _gre_mss.select(self.module, self.params['driver'])
            layer.open()
            self.driver = layer
        except EdgeError as exc:
            self.driver_problem = exc   # only an error if a tunnel wants its MSS clamped

    def close(self):
        if self.namespaces is not None:
            self.namespaces.close()

    # -- reading ------------------------------------------------------------
    def read(self):
        namespaces = self.namespaces
        owned, spaces = {}, {}
        listed = set(t.netns for t in self.tunnels)
        for netns in list_netns():
            read = read_namespace(namespaces, netns)
            if read is None:
                continue
            if netns in listed:
                spaces[netns] = read
            if read.host_nsid is not None:
                for name, device in read.owned().items():
                    owned[(netns, name)] = device
        mss = {}
        if self.driver is not None:
            for netns in sorted(listed & set(spaces) | set(netns for netns, _n in owned)):
                with in_netns(netns):
                    mss[netns] = self.driver.read(netns)
        support = {}
        if self.check_mode:
            # in check mode the kernel's support is known from its module files alone
            support = dict((family, gre_support_problem(family)) for family in (4, 6))
        return GreState(spaces, owned, mss, support, set(namespaces.host.rt.links()))

    def empty(self):
        return GreState({}, {}, {}, {}, None)

    # -- deciding ------------------------------------------------------------
    def plan(self, state):
        rendered = state.host_links is None
        ops, actions, deleted, removed = [], [], [], []
        creates = []
        taken = set(state.host_links or ())
        after = {}          # (netns, name) -> what the tunnel looks like when the plan is done
        for tunnel in self.tunnels:
            present = tunnel.state == 'present'
            space = state.spaces.get(tunnel.netns)
            if space is None and not rendered:
                if present:
                    raise EdgeError("%s.netns: network namespace '%s' does not exist; create the tenant first "
                                    "(anycast.edge.tenant), this module never creates namespaces"
                                    % (tunnel.param, tunnel.netns))
                continue
            device = space.devices.get(tunnel.name) if space else None
            if device is not None and tunnel.ident not in state.owned:
                if device.owned:
                    reason = 'its underlay is another namespace than this host namespace'
                else:
                    reason = 'it was not created by anycast.edge (kind %s, alias %r)' % (device.kind, device.alias)
                if present:
                    raise EdgeError("%s.name: interface '%s' already exists in namespace '%s' and %s; remove it or "
                                    "choose another name" % (tunnel.param, tunnel.name, tunnel.netns, reason))
                continue    # absent: never touch what is not ours
            if not present:
                if device is not None:
                    deleted.append(device)
                    removed.append('%s/%s' % tunnel.ident)
                    actions.append('delete %s' % tunnel.label())
                continue
            after[tunnel.ident] = tunnel
            current_addrs, current_routes = [], []
            if device is None:
                creates.append(tunnel)
                actions.append('create %s (%s local %s remote %s)' % (
                    tunnel.label(), KIND[tunnel.family], tunnel.local, tunnel.remote))
            else:
                fields = [f for f in mismatches(tunnel, device) if f != 'mtu']
                if fields:
                    deleted.append(device)
                    creates.append(tunnel)
                    actions.append('recreate %s: %s differ' % (tunnel.label(), ', '.join(fields)))
                else:
                    current_addrs, current_routes = device.addresses, device.routes
                    if device.mtu != tunnel.mtu:
                        ops.append(Op([_n(tunnel.netns) + 'link set dev %s mtu %d' % (tunnel.name, tunnel.mtu)],
                                      self._link_set, tunnel, 'setting the MTU', mtu=tunnel.mtu))
                        actions.append('set mtu %d on %s (was %s)' % (tunnel.mtu, tunnel.label(), device.mtu))
                    if not device.up:
                        ops.append(Op([_n(tunnel.netns) + 'link set dev %s up' % tunnel.name], self._link_set, tunnel,
                                      'bringing up', state='up'))
                        actions.append('bring %s up' % tunnel.label())
            ops += self._address_ops(tunnel, current_addrs, actions)
            ops += self._route_ops(tunnel, current_routes, actions)
        if self.purge:
            wanted = set(t.ident for t in self.tunnels)
            for ident, device in sorted(state.owned.items()):
                if ident not in wanted:
                    deleted.append(device)
                    removed.append('%s/%s' % ident)
                    actions.append("delete tunnel '%s' in namespace '%s' (purge)" % (device.name, device.netns))
        # Deletions go first, so a tunnel renamed (old name purged) can take over its endpoints and key.
        # On a kernel without GRE there is nothing of ours to delete or recreate, so there the first kernel
        # call is the first creation: it fails and nothing has changed.
        first = [Op([_n(d.netns) + 'link del %s' % d.name], self._delete, d) for d in deleted]
        for tunnel in creates:
            temp = _temp_name(tunnel, taken)
            taken.add(temp)
            if not rendered and self.namespaces.is_host(tunnel.netns):
                move = 'ip link set dev %s name %s' % (temp, tunnel.name)
            else:
                move = 'ip link set dev %s netns %s name %s' % (temp, tunnel.netns, tunnel.name)
            commands = [_add_command(tunnel, temp), 'ip link set dev %s alias "%s"' % (temp, OWNER_ALIAS), move,
                        _n(tunnel.netns) + 'link set dev %s up' % tunnel.name]
            first.append(Op(commands, self._create, tunnel, temp))
        for family in sorted(set(t.family for t in creates)):
            if state.support.get(family):
                raise EdgeError(state.support[family])
        ops = first + ops
        mss_plans = self._mss_plans(state, deleted, rendered)
        for netns, xt in sorted(mss_plans.items()):
            actions += ["namespace '%s': %s" % (netns, action) for action in xt.actions]
            ops.append(Op(xt.commands, self._apply_mss, netns, xt))
        return GrePlan(ops, actions, deleted, removed, mss_plans, after)

    def _address_ops(self, tunnel, current, actions):
        ops = []
        wanted = [tunnel.address] if tunnel.address is not None else []
        for iface in [a for a in current if a not in wanted]:
            ops.append(Op([_n(tunnel.netns) + 'addr del %s dev %s' % (iface, tunnel.name)], self._address, tunnel, 'del',
                          iface))
            actions.append('remove address %s from %s' % (iface, tunnel.label()))
        for iface in [a for a in wanted if a not in current]:
            ops.append(Op([_n(tunnel.netns) + 'addr add %s dev %s' % (iface, tunnel.name)], self._address, tunnel, 'add',
                          iface))
            actions.append('add address %s to %s' % (iface, tunnel.label()))
        return ops

    def _route_ops(self, tunnel, current, actions):
        ops = []
        for net in [n for n in current if n not in tunnel.routes]:
            ops.append(Op([_n(tunnel.netns) + 'route del %s dev %s proto %d' % (net, tunnel.name, ROUTE_PROTO)],
                          self._route, tunnel, 'del', net))
            actions.append('remove route %s through %s' % (net, tunnel.label()))
        for net in [n for n in tunnel.routes if n not in current]:
            scope = ' scope link' if net.version == 4 else ''
            ops.append(Op([_n(tunnel.netns) + 'route add %s dev %s proto %d%s' % (net, tunnel.name, ROUTE_PROTO, scope)],
                          self._route, tunnel, 'add', net))
            actions.append('route %s through %s' % (net, tunnel.label()))
        return ops

    def _mss_plans(self, state, deleted, rendered):
        """Per namespace, the XtPlan of the MSS chains of the tunnels this run decides about."""
        wanted = {}
        for tunnel in self.tunnels:
            if rendered or tunnel.netns in state.spaces:
                wanted.setdefault(tunnel.netns, {})[tunnel.name] = tunnel.mss_families()
        for device in deleted:
            wanted.setdefault(device.netns, {}).setdefault(device.name, set())
        clamping = any(families for names in wanted.values() for families in names.values())
        if not rendered and self.driver is None:
            if clamping:
                raise EdgeError('mss_clamp: %s' % self.driver_problem)
            return {}
        plans = {}
        layer = self.driver or _gre_mss.select(self.module, self.params['driver'])   # rendered: not opened
        for netns, names in wanted.items():
            plans[netns] = layer.plan(state.mss.get(netns), names, netns, rendered)
        return plans

    # -- carrying it out --------------------------------------------------------
    def apply(self, plan):
        plan.run()

    def _ipr(self, netns):
        return self.namespaces.get(netns).ipr

    def _index(self, tunnel):
        found = self._ipr(tunnel.netns).link_lookup(ifname=tunnel.name)
        if not found:
            raise EdgeError("%s: '%s' is not in namespace '%s'" % (tunnel.param, tunnel.name, tunnel.netns))
        return found[0]

    def _delete(self, device):
        call("deleting tunnel '%s' in namespace '%s'" % (device.name, device.netns), self._ipr(device.netns).link, 'del',
             index=device.index, ignore=(errno.ENODEV,))

    def _create(self, tunnel, temp):
        """Create in the host namespace, tag, move into the tenant's under its real name, bring up."""
        host = self.namespaces.host.ipr
        try:
            host.link('add', ifname=temp, kind=KIND[tunnel.family], mtu=tunnel.mtu, **_gre_kwargs(tunnel))
        except Exception as exc:  # pylint: disable=broad-except
            if not refused(exc):
                raise
            if exc.code in (errno.EOPNOTSUPP, errno.EAFNOSUPPORT) or 'Unknown device type' in kernel_says(exc):
                raise EdgeError('%s: %s (the kernel said: %s)'
                                % (tunnel.param, no_gre_message(tunnel.family), kernel_says(exc)))
            if exc.code == errno.EEXIST:
                raise EdgeError('%s: the kernel refused to create %s: another tunnel in this host namespace already '
                                'has local %s, remote %s and key %s (%s)' % (
                                    tunnel.param, tunnel.label(), tunnel.local, tunnel.remote, tunnel.key,
                                    kernel_says(exc)))
            raise failure('%s: creating %s' % (tunnel.param, tunnel.label()), exc)
        index = host.link_lookup(ifname=temp)[0]
        try:
            host.link('set', index=index, ifalias=OWNER_ALIAS)
            if not self.namespaces.is_host(tunnel.netns):
                host.link('set', index=index, net_ns_fd=self.namespaces.get(tunnel.netns).fd, ifname=tunnel.name)
            else:
                host.link('set', index=index, ifname=tunnel.name)
        except Exception as exc:  # pylint: disable=broad-except
            if not refused(exc):
                raise
            call('removing the half-made tunnel', host.link, 'del', index=index, ignore=(errno.ENODEV,))
            raise failure("%s: moving the new tunnel into namespace '%s' as '%s'"
                          % (tunnel.param, tunnel.netns, tunnel.name), exc)
        self._link_set(tunnel, 'bringing up', state='up')

    def _link_set(self, tunnel, what, **kwargs):
        call('%s: %s of %s' % (tunnel.param, what, tunnel.label()), self._ipr(tunnel.netns).link, 'set',
             index=self._index(tunnel), **kwargs)

    def _address(self, tunnel, verb, iface):
        what = '%s.address: %s %s %s %s' % (tunnel.param, 'removing' if verb == 'del' else 'adding', iface,
                                            'from' if verb == 'del' else 'to', tunnel.label())
        call(what, self._ipr(tunnel.netns).addr, verb, index=self._index(tunnel), address=str(iface.ip),
             prefixlen=iface.network.prefixlen, family=FAMILY[iface.version],
             ignore=(errno.EADDRNOTAVAIL,) if verb == 'del' else ())

    def _route(self, tunnel, verb, net):
        args = dict(family=FAMILY[net.version], dst=str(net.network_address), dst_len=net.prefixlen,
                    oif=self._index(tunnel), table=TABLE_MAIN, proto=ROUTE_PROTO,
                    scope=RT_SCOPE_LINK if net.version == 4 else RT_SCOPE_UNIVERSE)
        if verb == 'del':
            call('%s.routes: removing route %s' % (tunnel.param, net), self._ipr(tunnel.netns).route, 'del',
                 ignore=(errno.ESRCH,), **args)
            return
        try:
            self._ipr(tunnel.netns).route('add', **args)
        except Exception as exc:  # pylint: disable=broad-except
            if not refused(exc):
                raise
            hint = None
            if exc.code == errno.EEXIST:
                hint = "namespace '%s' already has a route for %s that does not go through this tunnel" % (
                    tunnel.netns, net)
            raise failure('%s.routes: routing %s through %s' % (tunnel.param, net, tunnel.label()), exc, hint)

    def _apply_mss(self, netns, xt):
        try:
            with in_netns(netns):
                self.driver.apply(netns, xt)
        except EdgeError as exc:
            raise EdgeError("MSS clamping rules in namespace '%s': %s" % (netns, exc))

    # -- reporting ------------------------------------------------------------
    def problems(self, state, plan):
        """How the tunnels read back differ from the request, one sentence per tunnel."""
        wrong = []
        for tunnel in self.tunnels:
            space = state.spaces.get(tunnel.netns)
            device = space.devices.get(tunnel.name) if space else None
            if tunnel.state != 'present':
                if device is not None and tunnel.ident in state.owned:
                    wrong.append((tunnel, ['still exists']))
                continue
            if device is None:
                wrong.append((tunnel, ['missing']))
                continue
            found = []
            want = dict(kind=KIND[tunnel.family], local=str(tunnel.local), remote=str(tunnel.remote),
                        ttl=tunnel.ttl, ikey=tunnel.key, okey=tunnel.key, mtu=tunnel.mtu)
            have = device.params()
            for field in mismatches(tunnel, device):
                found.append('%s is %s, expected %s' % (field, have[field], want[field]))
            if not device.owned:
                found.append('ownership alias is %r' % device.alias)
            if tunnel.ident not in state.owned and device.owned:
                found.append('its underlay is not the host namespace')
            if not device.up:
                found.append('it is down')
            wanted_addrs = [tunnel.address] if tunnel.address is not None else []
            if sorted(map(str, device.addresses)) != sorted(map(str, wanted_addrs)):
                found.append('addresses are %s, expected %s'
                             % ([str(a) for a in device.addresses], [str(a) for a in wanted_addrs]))
            if sorted(map(str, device.routes)) != sorted(map(str, tunnel.routes)):
                found.append('routes are %s, expected %s'
                             % ([str(n) for n in device.routes], [str(n) for n in tunnel.routes]))
            if found:
                wrong.append((tunnel, found))
        self.wrong = [tunnel.label() for tunnel, _f in wrong]
        return ['%s: %s' % (tunnel.label(), ', '.join(found)) for tunnel, found in wrong] + \
            [action for xt in plan.mss_plans.values() for action in xt.actions]

    def _clamped(self, state, netns, name):
        return self.driver is not None and self.driver.clamped(state.mss.get(netns), name)

    def gather(self, state):
        tunnels = []
        for (netns, name), device in sorted(state.owned.items()):
            if len(device.addresses) > 1:
                self.warn("tunnel '%s' in namespace '%s' has %d addresses; the module manages one"
                          % (name, netns, len(device.addresses)))
            tunnels.append(device.as_tunnel(self._clamped(state, netns, name)).as_input())
        return {'tunnels': tunnels}

    def expected(self, state, plan):
        deleted = set((d.netns, d.name) for d in plan.deleted)
        items = {}
        for ident, device in state.owned.items():
            if ident not in deleted:
                items[ident] = device.as_tunnel(self._clamped(state, ident[0], ident[1])).as_input()
        for ident, tunnel in plan.after.items():
            items[ident] = tunnel.as_input()
        return {'tunnels': [items[ident] for ident in sorted(items)]}

    def diff(self, state, plan):
        before = dict(state.owned)
        for tunnel in self.tunnels:
            space = state.spaces.get(tunnel.netns)
            device = space.devices.get(tunnel.name) if space else None
            if tunnel.ident not in before and device is not None and device.owned and \
                    space.underlay_is_host(device):
                before[tunnel.ident] = device
        after = dict((ident, '%s: %s' % (ident[0], d.text())) for ident, d in before.items())
        for device in plan.deleted:
            after.pop((device.netns, device.name), None)
        for tunnel in self.tunnels:
            if tunnel.state == 'present':
                after[tunnel.ident] = '%s: %s' % (tunnel.netns, tunnel.text())
            else:
                after.pop(tunnel.ident, None)
        before_lines = sorted('%s: %s' % (d.netns, d.text()) for d in before.values())
        after_lines = sorted(after.values())
        for netns, xt in sorted(plan.mss_plans.items()):
            before_lines += ['%s: %s' % (netns, line) for line in xt.before_lines()]
            after_lines += ['%s: %s' % (netns, line) for line in xt.after_lines()]
        return ('\n'.join(before_lines) + ('\n' if before_lines else ''),
                '\n'.join(after_lines) + ('\n' if after_lines else ''))

    def result(self, state, plan, after):
        return {
            'actions': plan.actions,
            'tunnels': [t.as_dict() for t in self.tunnels],
            'corrected': self.wrong if self.correction is not None else [],
            'removed': sorted(plan.removed),
            'driver': self.driver.name if self.driver is not None and plan.mss_plans else None,
        }

    def records(self, state, plan):
        """One record per tunnel (netns/name), so that several calls add up."""
        shared = dict((k, v) for k, v in self.recordable().items() if k not in ('tunnels', 'purge'))
        records = {}
        for item in self.params['tunnels']:
            key = '%s/%s' % (item['netns'], item['name'])
            present = item.get('state') != 'absent'
            records[key] = Record(key, dict(shared, purge=False, tunnels=[item]) if present else None)
        for key in plan.removed:
            records.setdefault(key, Record(key, None))
        return records


def _gre_kwargs(tunnel):
    prefix = KWARG_PREFIX[tunnel.family]
    kwargs = {prefix + 'local': str(tunnel.local), prefix + 'remote': str(tunnel.remote), prefix + 'ttl': tunnel.ttl}
    if tunnel.key is not None:
        # pyroute2 encodes IFLA_GRE_*FLAGS big-endian but IFLA_IP6GRE_*FLAGS in host order
        flags = GRE_KEY if tunnel.family == 4 else socket.htons(GRE_KEY)
        kwargs.update({prefix + 'ikey': tunnel.key, prefix + 'okey': tunnel.key,
                       prefix + 'iflags': flags, prefix + 'oflags': flags})
    return kwargs
