# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""AnyIP routes: whole prefixes made local (``ip route add local P dev lo``).

A route here is the kernel's key (family, table local, destination) plus the
attributes we manage (device, preferred source). Ours carry ROUTE_PROTO. The
kernel's own local routes (``proto kernel``: 127.0.0.0/8, every address of an
interface) are never adopted, replaced or removed, whatever the input says.
"""

from __future__ import annotations

import errno
import ipaddress
import os

from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    ROUTE_PROTO, RT_SCOPE_HOST, RTN_LOCAL, TABLE_LOCAL, TABLE_MAIN, failure, link_index, link_names)
from ansible_collections.anycast.edge.plugins.module_utils._validate import ParamError

RTPROT_KERNEL = 2   # routes the kernel made for addresses of its interfaces


class AnyipRoute(object):
    __slots__ = ('network', 'oif', 'prefsrc', 'proto')

    def __init__(self, network, oif, prefsrc, proto=ROUTE_PROTO):
        self.network = network
        self.oif = oif
        self.prefsrc = prefsrc
        self.proto = proto

    @property
    def key(self):
        return (self.network.version, str(self.network))

    def same(self, other):
        return (self.oif, self.prefsrc, self.proto) == (other.oif, other.prefsrc, other.proto)

    def text(self, names):
        line = 'local %s dev %s' % (self.network, names.get(self.oif, self.oif))
        if self.prefsrc:
            line += ' src %s' % self.prefsrc
        return line + ' proto %s' % self.proto


def read_local_routes(raw):
    """All type-local routes of table local, owned or not, keyed like AnyipRoute.key."""
    found = {}
    for family in (4, 6):
        for route in raw.routes(family, TABLE_LOCAL):
            if route['type'] != RTN_LOCAL:
                continue
            net = ipaddress.ip_network('%s/%d' % (route['dst'], route['dst_len']))
            found[(family, str(net))] = AnyipRoute(net, route['oif'], route['prefsrc'], route['proto'])
    return found


def kernel_held(current, desired):
    """The desired routes whose prefix has the kernel's own local route: left to the kernel."""
    return [route for route in desired
            if route.key in current and current[route.key].proto == RTPROT_KERNEL]


def plan(current, desired, present, purge):
    """Return (add, replace, remove, adopt); replace holds (new, old) pairs.

    A route the kernel owns is in none of them: taking it over would make a later purge delete,
    say, the kernel's 127.0.0.0/8 (only 127.0.0.1 would stay local) or an interface's address.
    """
    add, replace, remove, adopt = [], [], [], []
    wanted = {route.key: route for route in desired}
    kernel = set(route.key for route in kernel_held(current, desired))
    if present:
        for key, route in wanted.items():
            have = current.get(key)
            if have is None:
                add.append(route)
            elif key in kernel:
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
    return add, replace, remove, adopt


def default_gateways(raw):
    """The gateway addresses of the default routes in table main (both families, every nexthop)."""
    gateways = []
    for family in (4, 6):
        for route in raw.routes(family, TABLE_MAIN):
            if route['dst_len'] == 0:
                found = ([route['gateway']] if route['gateway'] else []) + route['multipath']
                gateways += [ipaddress.ip_address(address) for address in found]
    return gateways


def check_lockout(networks, ssh_client, gateways, where=''):
    """Refuse a listed prefix that contains the SSH client's address or a default gateway's: made
    local, replies to the controller (or everything sent via the gateway's address) never leave.

    NETWORKS are the listed prefixes in order (the parameter is prefixes[N]); WHERE says which
    namespace the gateways were read in.
    """
    for index, net in enumerate(networks):
        if ssh_client is not None and ssh_client.version == net.version and ssh_client in net:
            raise ParamError('prefixes[%d]' % index, '%s contains %s, the address of the SSH client this module runs '
                             'for: replies to it would be delivered locally and the controller cut off; set '
                             'lockout_guard: false if that is meant' % (net, ssh_client))
        for gateway in gateways:
            if gateway.version == net.version and gateway in net:
                raise ParamError('prefixes[%d]' % index, '%s contains %s, the IPv%d default gateway%s: its address '
                                 'would become local, cutting the host off from its gateway; set lockout_guard: '
                                 'false if that is meant' % (net, gateway, net.version, where))


def _route(route):
    return {
        'family': route.network.version,
        'dst': str(route.network.network_address),
        'dst_len': route.network.prefixlen,
        'table': TABLE_LOCAL,
        'type': RTN_LOCAL,
        'scope': RT_SCOPE_HOST,
        'proto': route.proto,
        'oif': route.oif,
        'prefsrc': route.prefsrc,
    }


_VERB = {'add': 'adding', 'del': 'removing', 'replace': 'replacing'}
_UNDO = {'add': 'del', 'del': 'add', 'replace': 'replace'}


def apply(raw, add, replace, remove):
    """Apply the plan in netlink batches; if the kernel refuses anything, undo the rest.

    Raises NetlinkFailure naming the first refused prefix and the kernel's reason.
    """
    requests = [('del', r) for r in remove] + [('replace', new) for new, _old in replace] + \
        [('add', r) for r in add]
    undo_of = [('add', r) for r in remove] + [('replace', old) for _new, old in replace] + \
        [('del', r) for r in add]
    errors = [(i, code) for i, code in raw.change([(op, _route(r)) for op, r in requests])
              if not (requests[i][0] == 'del' and code == errno.ESRCH)]  # already gone: fine
    if not errors:
        return
    refused = set(i for i, _code in errors)
    raw.change([(undo_of[i][0], _route(undo_of[i][1])) for i in reversed(range(len(requests)))
                if i not in refused])
    index, code = errors[0]
    op, route = requests[index]
    raise failure('%s AnyIP route %s' % (_VERB[op], route.network), OSError(code, os.strerror(code)))


def render(routes, names):
    return [routes[key].text(names) for key in sorted(routes, key=_sort_key)]


def _sort_key(key):
    return (key[0], ipaddress.ip_network(key[1]))


__all__ = ['AnyipRoute', 'read_local_routes', 'kernel_held', 'plan', 'default_gateways', 'check_lockout', 'apply',
           'render', 'link_index', 'link_names']
