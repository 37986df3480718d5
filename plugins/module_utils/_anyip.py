# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""AnyIP routes: whole prefixes made local (``ip route add local P dev lo``).

A route here is the kernel's key (family, table local, destination) plus the
attributes we manage (device, preferred source). Ours carry ROUTE_PROTO. The
kernel's own local routes (``proto kernel``: 127.0.0.0/8, every address of an
interface) are never adopted, replaced or removed, whatever the input says.
This domain is the model for the others: a small value type, a pure plan(),
an apply() that undoes itself.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

from ansible_collections.anycast.edge.plugins.module_utils._engine import Domain, Plan, Record
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError, ParamError
from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    LO_INDEX, ROUTE_PROTO, RT_SCOPE_HOST, RTN_LOCAL, TABLE_LOCAL, TABLE_MAIN, RawRtnl, failure)
from ansible_collections.anycast.edge.plugins.module_utils._validate import (
    check_ifname, check_unicast_prefix, parse_address, parse_prefix, require_unique, ssh_client_address)

RTPROT_KERNEL = 2   # routes the kernel made for addresses of its interfaces


class AnyipRoute(object):
    """One local route of table local: prefix, device name, preferred source, protocol."""

    __slots__ = ('network', 'dev', 'prefsrc', 'proto', 'key', 'order')

    def __init__(self, network, dev, prefsrc, proto=ROUTE_PROTO, text=None):
        self.network = network
        self.dev = dev
        self.prefsrc = prefsrc
        self.proto = proto
        self.key = (network.version, text or str(network))
        # sorting by this is ten times cheaper than by ip_network objects (10,000 routes per run)
        self.order = (network.version, int(network.network_address), network.prefixlen)

    def same(self, other):
        return (self.dev, self.prefsrc, self.proto) == (other.dev, other.prefsrc, other.proto)

    def text(self):
        line = 'local %s dev %s' % (self.network, self.dev)
        if self.prefsrc:
            line += ' src %s' % self.prefsrc
        return line + ' proto %s' % self.proto

    def command(self, verb):
        """The ``ip route`` line that makes (or removes) this route."""
        line = 'ip route %s local %s dev %s table local proto %d scope host' % (verb, self.network, self.dev, self.proto)
        if self.prefsrc and verb != 'del':
            line += ' src %s' % self.prefsrc
        return line


NETWORK = {4: ipaddress.IPv4Network, 6: ipaddress.IPv6Network}


class Connected(object):
    """A subnet on a link of the host: an interface's address with its prefix length (or its point-to-point
    peer). Its other addresses are neighbours and gateways; made local, they are no longer reachable."""

    __slots__ = ('network', 'interface', 'ifname')

    def __init__(self, network, interface, ifname):
        self.network = network
        self.interface = interface      # the host's own address/prefix length there, as ip shows it
        self.ifname = ifname


class AnyipState(object):
    """Table local's type-local routes (owned or not) by key, the interfaces by name, the gateways of table
    main, the connected subnets and the host's own addresses (all but routes None: unknown, as for rendered)."""

    def __init__(self, routes, links, gateways=None, connected=None, local=None):
        self.routes = routes
        self.links = links
        self.gateways = gateways
        self.connected = connected
        self.local = local

    def owned(self):
        return dict((key, route) for key, route in self.routes.items() if route.proto == ROUTE_PROTO)


def read_state(raw):
    links = raw.links()
    names = dict((link.index, name) for name, link in links.items())
    found = {}
    for family in (4, 6):
        for route in raw.routes(family, TABLE_LOCAL):
            if route['type'] != RTN_LOCAL:
                continue
            # from the address's integer: parsing 10,000 prefixes from text is a tenth of a second
            net = NETWORK[family]((int(ipaddress.ip_address(route['dst'])) if family == 6 else
                                   int.from_bytes(socket.inet_aton(route['dst']), 'big'), route['dst_len']))
            text = '%s/%d' % (route['dst'], route['dst_len']) if family == 4 else None  # IPv4 text is canonical
            found_route = AnyipRoute(net, names.get(route['oif'], route['oif']), route['prefsrc'], route['proto'], text)
            found[found_route.key] = found_route
    connected, local = connected_subnets(raw.addresses(), names)
    return AnyipState(found, links, gateways(raw), connected, local)


def gateways(raw):
    """[(gateway address, route destination or None for a default route)] of table main (both families,
    every nexthop)."""
    found = []
    for family in (4, 6):
        for route in raw.routes(family, TABLE_MAIN):
            via = ([route['gateway']] if route['gateway'] else []) + route['multipath']
            dst = None if route['dst_len'] == 0 else '%s/%d' % (route['dst'], route['dst_len'])
            found += [(ipaddress.ip_address(address), dst) for address in via]
    return found


def connected_subnets(addresses, names):
    """([Connected], set of the host's own addresses) from the interfaces' addresses.

    Loopback's addresses are left out (the kernel already makes their whole subnet local), and so is a host
    prefix that is only the host's own address: neither has a neighbour.
    """
    connected, local = [], set()
    for found in addresses:
        own = ipaddress.ip_address(found.address)
        local.add(own)
        if found.index == LO_INDEX:
            continue
        interface = '%s/%d' % (found.address, found.prefixlen)
        network = ipaddress.ip_network('%s/%d' % (found.peer or found.address, found.prefixlen), strict=False)
        if network.num_addresses == 1 and network.network_address == own:
            continue
        connected.append(Connected(network, interface, names.get(found.index, found.index)))
    return connected, local


def kernel_held(current, desired):
    """The desired routes whose prefix has the kernel's own local route: left to the kernel."""
    return [route for route in desired
            if route.key in current and current[route.key].proto == RTPROT_KERNEL]


def check_lockout(networks, ssh_client, gateways, where='', connected=(), local=()):
    """Refuse a listed prefix that contains the SSH client's address, a gateway's (of table main) or an
    address of a connected subnet other than the host's own: made local, replies to the controller (or
    everything sent via the gateway, or to the link's neighbours) never leave the host.

    NETWORKS are the listed prefixes in order (the parameter is prefixes[N]); GATEWAYS (address, the
    route's destination or None for a default route) and CONNECTED ([Connected]) were read in the
    namespace WHERE says; LOCAL are the host's own addresses.
    """
    override = '; set lockout_guard: false if that is meant'
    for index, net in enumerate(networks):
        param = 'prefixes[%d]' % index
        if ssh_client is not None and ssh_client.version == net.version and ssh_client in net:
            raise ParamError(param, '%s contains %s, the address of the SSH client this module runs for: replies to '
                             'it would be delivered locally and the controller cut off%s' % (net, ssh_client, override))
        for gateway, dst in gateways:
            if gateway.version == net.version and gateway in net:
                which = 'IPv%d default gateway' % net.version if dst is None else 'gateway of the route to %s' % dst
                raise ParamError(param, '%s contains %s, the %s%s: its address would become local, cutting the '
                                 'host off from its gateway%s' % (net, gateway, which, where, override))
        for subnet in connected:
            if subnet.network.version != net.version or not net.overlaps(subnet.network):
                continue
            if net.num_addresses == 1 and net.network_address in local:
                continue    # the host's own address: the kernel's local route already holds it
            raise ParamError(param, '%s overlaps %s, the subnet connected to %s (%s)%s: its neighbours and gateways '
                             'would become local and unreachable%s'
                             % (net, subnet.network, subnet.ifname, subnet.interface, where, override))


def check_source(src, state, plan):
    """Refuse a preferred source the kernel would refuse (or drop) for the IPv4 routes PLAN writes: it must be
    local, that is lie in a local route of table local that stays."""
    writes = [route for route in plan.add + [new for new, _old in plan.replace] if route.network.version == 4]
    if not writes:
        return
    address = ipaddress.ip_address(src)
    removed = set(route.key for route in plan.remove)
    if not any(route.network.version == 4 and address in route.network and key not in removed
               for key, route in state.routes.items()):
        raise ParamError('src', "%s is not an address of this host (no local route covers it): the kernel only takes "
                         "a local preferred source; 127.0.0.1, the default, keeps replies to local clients off the "
                         "TPROXY rules" % src)


class AnyipPlan(Plan):
    """add / replace ((new, old) pairs) / remove, in the order apply() sends them."""

    def __init__(self, add, replace, remove, adopt, owned_before, owned_after, index_of, kernel=()):
        self.add = add
        self.replace = replace
        self.remove = remove
        self.adopt = adopt
        self.kernel = list(kernel)      # listed prefixes the kernel's own routes make local: left alone
        self.owned_before = owned_before
        self.owned_after = owned_after
        self.index_of = index_of        # device name -> ifindex, from the state read
        self.changed_routes = bool(add or replace or remove)
        self.requests = [('del', r) for r in remove] + [('replace', new) for new, _old in replace] + \
            [('add', r) for r in add]
        self.undo = [('add', r) for r in remove] + [('replace', old) for _new, old in replace] + \
            [('del', r) for r in add]
        super().__init__([route.command(op) for op, route in self.requests])
        self._prefixes = {}

    def prefixes(self, which):
        """Sorted prefixes owned 'before' or 'after' the plan, worked out once."""
        if which not in self._prefixes:
            if which == 'after' and not self.changed_routes:
                self._prefixes['after'] = self.prefixes('before')
            else:
                self._prefixes[which] = prefixes(self.owned_before if which == 'before' else self.owned_after)
        return self._prefixes[which]


def plan_routes(state, desired, present, purge):
    """The AnyipPlan from STATE to DESIRED ([AnyipRoute]); pure.

    A route the kernel owns is in none of add/replace/remove: taking it over would make a later purge
    delete, say, the kernel's 127.0.0.0/8 (only 127.0.0.1 would stay local) or an interface's address.
    """
    add, replace, remove, adopt = [], [], [], []
    current = state.routes
    wanted = dict((route.key, route) for route in desired)
    kernel = kernel_held(current, desired) if present else []
    kernel_keys = set(route.key for route in kernel)
    if present:
        for key, route in wanted.items():
            have = current.get(key)
            if have is None:
                add.append(route)
            elif key in kernel_keys:
                continue
            elif not route.same(have):
                # Also covers a route someone added by hand for a prefix we are
                # told to manage: we take it over (NLM_F_REPLACE) and tag it.
                replace.append((route, have))
                if have.proto != ROUTE_PROTO:
                    adopt.append(route)
        if purge:
            remove += [have for key, have in current.items()
                       if have.proto == ROUTE_PROTO and key not in wanted]
    else:
        remove += [current[key] for key in wanted
                   if key in current and current[key].proto == ROUTE_PROTO]
    owned_before = state.owned()
    owned_after = dict(owned_before)
    for route in remove:
        owned_after.pop(route.key, None)
    for route in add + [new for new, _old in replace]:
        owned_after[route.key] = route
    index_of = dict((name, link.index) for name, link in state.links.items()) if state.links is not None else {}
    return AnyipPlan(add, replace, remove, adopt, owned_before, owned_after, index_of, kernel)


def _request(route, index_of):
    return {
        'family': route.network.version,
        'dst': str(route.network.network_address),
        'dst_len': route.network.prefixlen,
        'table': TABLE_LOCAL,
        'type': RTN_LOCAL,
        'scope': RT_SCOPE_HOST,
        'proto': route.proto,
        'oif': index_of.get(route.dev, route.dev if isinstance(route.dev, int) else None),
        'prefsrc': route.prefsrc,
    }


_VERB = {'add': 'adding', 'del': 'removing', 'replace': 'replacing'}


def apply_routes(raw, plan):
    """Send the plan's requests in netlink batches; if the kernel refuses any, undo the rest.

    Raises EdgeError naming the first refused prefix and the kernel's reason.
    """
    requests, undo, index_of = plan.requests, plan.undo, plan.index_of
    errors = [(i, code) for i, code in raw.change([(op, _request(r, index_of)) for op, r in requests])
              if not (requests[i][0] == 'del' and code == errno.ESRCH)]  # already gone: fine
    if not errors:
        return
    refused = set(i for i, _code in errors)
    raw.change([(undo[i][0], _request(undo[i][1], index_of)) for i in reversed(range(len(requests)))
                if i not in refused])
    index, code = errors[0]
    op, route = requests[index]
    refusal = failure('%s AnyIP route %s' % (_VERB[op], route.network), OSError(code, os.strerror(code)))
    raise EdgeError('%s (changes made by this run were undone)' % refusal)


def undo_routes(raw, plan, now):
    """Put every route PLAN touched back as it was before it (NOW: the state read after writing).

    Routes the plan added go if they are still there; routes it removed or replaced come back as they were.
    """
    requests = [('del', now.routes[route.key]) for route in plan.add
                if route.key in now.routes and now.routes[route.key].proto == ROUTE_PROTO]
    requests += [('replace', old) for old in plan.remove + [old for _new, old in plan.replace]]
    refused = [(i, code) for i, code in raw.change([(op, _request(r, plan.index_of)) for op, r in requests])
               if not (requests[i][0] == 'del' and code == errno.ESRCH)]
    if refused:
        index, code = refused[0]
        raise EdgeError(failure('putting back AnyIP route %s' % requests[index][1].network,
                                OSError(code, os.strerror(code))))


def _sorted_keys(routes):
    return sorted(routes, key=lambda key: routes[key].order)


def render(routes):
    return [routes[key].text() for key in _sorted_keys(routes)]


def prefixes(routes):
    return [key[1] for key in _sorted_keys(routes)]


def as_input(routes, sorted_prefixes=None):
    """The module input that makes exactly ROUTES: {prefixes, device, src} (SORTED_PREFIXES: if known).

    Owned routes made by one call share device and source; if several calls
    used different ones, the most used device and source are given (a warning
    names the rest).
    """
    devices, sources = {}, {}
    for route in routes.values():
        devices[route.dev] = devices.get(route.dev, 0) + 1
        if route.network.version == 4 and route.prefsrc:
            sources[route.prefsrc] = sources.get(route.prefsrc, 0) + 1
    gathered = {'prefixes': sorted_prefixes if sorted_prefixes is not None else prefixes(routes)}
    if devices:
        gathered['device'] = sorted(devices.items(), key=lambda item: (-item[1], str(item[0])))[0][0]
    if sources:
        gathered['src'] = sorted(sources.items(), key=lambda item: (-item[1], item[0]))[0][0]
    return gathered


class AnyipRoutes(Domain):
    name = 'anyip_route'

    def validate(self):
        params = self.params
        networks = [check_unicast_prefix(parse_prefix(p, 'prefixes[%d]' % i), 'prefixes[%d]' % i)
                    for i, p in enumerate(params['prefixes'])]
        require_unique([str(n) for n in networks], 'prefixes', 'prefix')
        src = parse_address(params['src'], 'src', family=4)
        if src.is_unspecified or src.is_multicast or src == ipaddress.ip_address('255.255.255.255'):
            raise ParamError('src', '%s is not a unicast address: the kernel would write the routes without a '
                             'preferred source (or refuse them); give an address of this host, such as 127.0.0.1'
                             % src)
        self.src = str(src)
        self.device = check_ifname(params['device'], 'device')
        self.networks = networks
        self.raw = None

    def desired(self):
        return [AnyipRoute(net, self.device, self.src if net.version == 4 else None) for net in self.networks]

    def open(self):
        self.raw = RawRtnl()

    def close(self):
        if self.raw is not None:
            self.raw.close()

    def read(self):
        return read_state(self.raw)

    def empty(self):
        return AnyipState({}, None)

    def plan(self, state):
        if state.links is not None and self.device not in state.links:
            netns = self.params['netns']
            raise ParamError('device', "interface '%s' does not exist%s" % (
                self.device, " in network namespace '%s'" % netns if netns else ''))
        present = self.params['state'] == 'present'
        if present and self.params['lockout_guard'] and state.gateways is not None:
            netns = self.params['netns']
            check_lockout(self.networks, ssh_client_address(os.environ), state.gateways,
                          " of network namespace '%s'" % netns if netns else ' of this host',
                          state.connected, state.local)
        planned = plan_routes(state, self.desired(), self.params['state'] != 'absent', self.params['purge'])
        if state.local is not None:
            check_source(self.src, state, planned)
        return planned

    def apply(self, plan):
        apply_routes(self.raw, plan)

    def problems(self, state, plan):
        return ['%s is not as written' % route.network for _op, route in plan.requests]

    def undo(self, plan, before):
        undo_routes(self.raw, plan, read_state(self.raw))

    def gather(self, state):
        return as_input(state.owned())

    def expected(self, state, plan):
        return as_input(plan.owned_after, plan.prefixes('after'))

    def diff(self, state, plan):
        before, after = render(plan.owned_before), render(plan.owned_after)
        return ('\n'.join(before) + ('\n' if before else ''), '\n'.join(after) + ('\n' if after else ''))

    def result(self, state, plan, after):
        adopted = [str(r.network) for r in plan.adopt]
        if adopted:
            self.warn('took over existing local routes not created by this collection: %s' % ', '.join(adopted))
        kernel = [str(r.network) for r in plan.kernel]
        if kernel:
            self.warn("left to the kernel: %s already local through the kernel's own route (an address of an "
                      'interface); it is neither taken over nor recorded' % ', '.join(kernel))
        return {
            'added': [str(r.network) for r in plan.add],
            'removed': [str(r.network) for r in plan.remove],
            'updated': [str(new.network) for new, old in plan.replace if old.proto == ROUTE_PROTO],
            'adopted': adopted,
            'kernel_routes': kernel,
            'prefixes': plan.prefixes('after'),
        }

    def records(self, state, plan):
        # What is recorded (and rolled back to) is the whole owned set, not this
        # call's list: several calls without purge each add to it.
        # The recorded prefixes passed the lockout guard (or were let through) when applied; at
        # boot there is no SSH client to check, and a rollback restores what was there.
        recorded = dict(self.recordable(), prefixes=plan.prefixes('after'), purge=True, state='present',
                        lockout_guard=False)
        previous = dict(recorded, prefixes=plan.prefixes('before'))
        return Record(None, recorded if plan.owned_after else None, previous)
