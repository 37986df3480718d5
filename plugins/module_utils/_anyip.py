# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""AnyIP routes: whole prefixes made local (``ip route add local P dev lo``).

A route here is the kernel's key (family, table local, destination) plus the
attributes we manage (device, preferred source). Ours carry ROUTE_PROTO.
"""

from __future__ import annotations

import errno

from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    FAMILY, NetlinkError, ROUTE_PROTO, RT_SCOPE_HOST, RTN_LOCAL, TABLE_LOCAL,
    dump_routes, failure, link_index, link_names)


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


def read_local_routes(ipr):
    """All type-local routes of table local, owned or not, keyed like AnyipRoute.key."""
    import ipaddress
    found = {}
    for family in (4, 6):
        for route in dump_routes(ipr, family, TABLE_LOCAL):
            if route['type'] != RTN_LOCAL:
                continue
            net = ipaddress.ip_network('%s/%d' % (route['dst'], route['dst_len']))
            found[(family, str(net))] = AnyipRoute(net, route['oif'], route['prefsrc'], route['proto'])
    return found


def plan(current, desired, present, purge):
    """Return (add, replace, remove, adopt); replace holds (new, old) pairs."""
    add, replace, remove, adopt = [], [], [], []
    wanted = {route.key: route for route in desired}
    if present:
        for key, route in wanted.items():
            have = current.get(key)
            if have is None:
                add.append(route)
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


def _route_args(route):
    args = {
        'family': FAMILY[route.network.version],
        'dst': str(route.network.network_address),
        'dst_len': route.network.prefixlen,
        'table': TABLE_LOCAL,
        'type': RTN_LOCAL,
        'scope': RT_SCOPE_HOST,
        'proto': ROUTE_PROTO,
        'oif': route.oif,
    }
    if route.prefsrc:
        args['prefsrc'] = route.prefsrc
    return args


def apply(ipr, add, replace, remove):
    """Apply the plan on one netlink socket; undo what was done if a step fails."""
    done = []
    try:
        for route in remove:
            try:
                ipr.route('del', **_route_args(route))
            except NetlinkError as exc:
                if exc.code != errno.ESRCH:  # already gone: fine
                    raise failure('removing AnyIP route %s' % route.network, exc)
            done.append(('del', route))
        for route, old in replace:
            try:
                ipr.route('replace', **_route_args(route))
            except NetlinkError as exc:
                raise failure('replacing AnyIP route %s' % route.network, exc)
            done.append(('replace', old))
        for route in add:
            try:
                ipr.route('add', **_route_args(route))
            except NetlinkError as exc:
                raise failure('adding AnyIP route %s' % route.network, exc)
            done.append(('add', route))
    except Exception:
        _undo(ipr, done)
        raise


def _undo(ipr, done):
    undo = {'add': 'del', 'del': 'add', 'replace': 'replace'}
    for kind, route in reversed(done):
        args = _route_args(route)
        args['proto'] = route.proto
        try:
            ipr.route(undo[kind], **args)
        except NetlinkError:
            pass  # best effort: the error that triggered the undo is reported


def render(routes, names):
    return [routes[key].text(names) for key in sorted(routes, key=_sort_key)]


def _sort_key(key):
    import ipaddress
    return (key[0], ipaddress.ip_network(key[1]))


__all__ = ['AnyipRoute', 'read_local_routes', 'plan', 'apply', 'render', 'link_index', 'link_names']
