# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The GRE module's input: the Tunnel value type and the checks that make it (pure)."""

from __future__ import annotations

from ansible_collections.anycast.edge.plugins.module_utils._errors import ParamError
from ansible_collections.anycast.edge.plugins.module_utils._netns import check_netns_name
from ansible_collections.anycast.edge.plugins.module_utils._validate import (
    check_ifname, parse_address, parse_interface, parse_prefix)

KIND = {4: 'gre', 6: 'ip6gre'}
MTU_MIN = {4: 68, 6: 1280}
MTU_MAX = 65535
KEY_MAX = 0xFFFFFFFF
DEFAULT_TTL = 64
DEFAULT_MTU = 1476


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

    def as_input(self):
        """This tunnel as the module takes it, defaults left out."""
        item = dict(name=self.name, netns=self.netns, local=str(self.local), remote=str(self.remote))
        for key, value, default in (('ttl', self.ttl, DEFAULT_TTL), ('key', self.key, None),
                                    ('mtu', self.mtu, DEFAULT_MTU), ('mss_clamp', self.mss_clamp, True)):
            if value != default:
                item[key] = value
        if self.address is not None:
            item['address'] = str(self.address)
        if self.routes:
            item['routes'] = [str(net) for net in self.routes]
        return item


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
        ttl = _int_param(raw.get('ttl', DEFAULT_TTL), param + '.ttl', 0, 255, '0 inherits the inner TTL')
        key = raw.get('key')
        if key is not None:
            key = _int_param(key, param + '.key', 0, KEY_MAX, 'a 32-bit GRE key')
        mtu_max = MTU_MAX
        if local.version == 4:
            # ip_gre silently lowers a larger MTU to this (64 KiB less IPv4 and GRE headers)
            mtu_max = MTU_MAX - 20 - 4 - (4 if key is not None else 0)
        mtu = _int_param(raw.get('mtu', DEFAULT_MTU), param + '.mtu', MTU_MIN[local.version], mtu_max,
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
