# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a tenant looks like: in the kernel (read) or as asked for (desired), in one comparable form.

Per tenant, in the host's namespace: a veth pair ``ae-NAME`` / ``ae-NAME-t``,
``ip rule fwmark MARK lookup TABLE`` and the tenant's prefixes in TABLE via the
veth. In the tenant's namespace: the other veth end, a default route back
with a high metric, forwarding on, and the nftables firewall.

Ownership: the loopback of every tenant namespace carries the alias
``anycast.edge tenant NAME host INODE mark M/MASK table T`` (INODE: the host
namespace it belongs to); veth ends carry ``anycast.edge tenant NAME``; routes
and rules carry the collection's route protocol.
"""

from __future__ import annotations

import ipaddress
from collections import namedtuple

from ansible_collections.anycast.edge.plugins.module_utils import _tenant_firewall as firewall
from ansible_collections.anycast.edge.plugins.module_utils._netlink import LO_INDEX, ROUTE_PROTO, TABLE_MAIN
from ansible_collections.anycast.edge.plugins.module_utils._netns import read_sysctl
from ansible_collections.anycast.edge.plugins.module_utils._tenant_spec import OWNER, marker_text, parse_marker

DEFAULT_ROUTE_METRIC = 4096      # above any metric a tenant's own route gets by default
# The host end's IPv6 link-local address, added by hand without a prefix route:
# the kernel sends neighbour solicitations for forwarded packets from a
# link-local source only, and the generated one would add fe80::/64 to main.
HOST_LL6 = 'fe80::1/64'
SYSCTL_V4_FORWARD = '/proc/sys/net/ipv4/ip_forward'
SYSCTL_V6_FORWARD = '/proc/sys/net/ipv6/conf/all/forwarding'
SYSCTL_V6_DEFAULT_OFF = '/proc/sys/net/ipv6/conf/default/disable_ipv6'
SYSCTL_V6_OFF = '/proc/sys/net/ipv6/conf/%s/disable_ipv6'
FORWARDING = {'net.ipv4.ip_forward': SYSCTL_V4_FORWARD, 'net.ipv6.conf.all.forwarding': SYSCTL_V6_FORWARD}

LinkEnd = namedtuple('LinkEnd', 'name alias up')
PolicyRule = namedtuple('PolicyRule', 'family mark mask table priority')
TenantRoute = namedtuple('TenantRoute', 'family prefix gateway table')
DefaultRoute = namedtuple('DefaultRoute', 'family gateway metric')


def _sorted(items):
    return tuple(sorted(items, key=lambda item: tuple(str(x) for x in item)))


class View(object):
    """One tenant, comparable (key) and printable (render)."""

    def __init__(self):
        self.netns = None
        self.host_link = None       # LinkEnd
        self.tenant_link = None
        self.paired = False
        self.host_addrs = ()
        self.host_ipv6_off = None   # the host end's disable_ipv6: '1' for tenants without IPv6
        self.tenant_addrs = ()
        self.rules = ()             # PolicyRule
        self.routes = ()            # TenantRoute
        self.defaults = ()          # DefaultRoute
        self.sysctls = ()           # (name, value)
        self.firewall = None        # the chain's lines, or None
        self.firewall_id = None     # input digest, 'modified', or None without a table
        self.marker = None

    def key(self):
        return (self.netns, self.host_link, self.tenant_link, self.paired, self.host_addrs, self.host_ipv6_off,
                self.tenant_addrs, self.rules, self.routes, self.defaults, self.sysctls, self.firewall_id, self.marker)

    @property
    def empty(self):
        return self.netns is None and not self.host_link and not self.rules and not self.routes

    def render(self, name):
        if self.empty:
            return []
        out = ['tenant %s' % name]
        out.append('  netns %s' % (self.netns or '-'))
        for label, link, addrs in (('host', self.host_link, self.host_addrs),
                                   ('tenant', self.tenant_link, self.tenant_addrs)):
            if link:
                unpaired = label == 'host' and self.tenant_link and not self.paired
                out.append('  %s end %s%s alias "%s" %s' % (
                    label, link.name, ' (not paired)' if unpaired else '', link.alias, 'up' if link.up else 'down'))
                out += ['    address %s' % a for a in addrs]
                if label == 'host' and self.host_ipv6_off == '1':
                    out.append('    IPv6 off')
        for rule in self.rules:
            out.append('  ip -%d rule priority %d fwmark 0x%x/0x%x lookup %d'
                       % (rule.family, rule.priority, rule.mark, rule.mask, rule.table))
        for route in self.routes:
            out.append('  table %d: %s via %s onlink' % (route.table, route.prefix, route.gateway))
        for route in self.defaults:
            out.append('  inside: default via %s metric %d' % (route.gateway, route.metric))
        for name_, value in self.sysctls:
            out.append('  inside: %s = %s' % (name_, value))
        if self.firewall is not None:
            out.append('  firewall: table inet %s, chain %s' % (firewall.NFT_TABLE, firewall.NFT_CHAIN))
            out += ['    %s' % line for line in self.firewall]
        return out


def desired_view(tenant, settings, host_ino):
    view = View()
    view.netns = tenant.netns
    view.marker = tenant.marker(host_ino)
    view.host_link = LinkEnd(tenant.host_if, tenant.alias, True)
    view.tenant_link = LinkEnd(tenant.tenant_if, tenant.alias, True)
    view.paired = True
    host_addrs = [str(pair[0]) for _f, pair in tenant.links()]
    if tenant.link6:
        host_addrs.append(HOST_LL6)
    view.host_addrs = tuple(sorted(host_addrs))
    view.host_ipv6_off = '0' if tenant.link6 else '1'
    view.tenant_addrs = tuple(sorted(str(pair[1]) for _f, pair in tenant.links()))
    view.rules = _sorted(PolicyRule(f, tenant.mark, tenant.mask, tenant.table, settings['rule_priority'])
                         for f in tenant.families())
    gateways = dict((f, str(pair[1].ip)) for f, pair in tenant.links())
    view.routes = _sorted(TenantRoute(n.version, str(n), gateways[n.version], tenant.table) for n in tenant.prefixes)
    view.defaults = _sorted(DefaultRoute(f, str(pair[0].ip), DEFAULT_ROUTE_METRIC) for f, pair in tenant.links())
    sysctls = [('net.ipv4.ip_forward', '1')]
    if tenant.link6:
        sysctls.append(('net.ipv6.conf.all.forwarding', '1'))
    view.sysctls = tuple(sysctls)
    if tenant.firewall is not None:
        view.firewall = firewall.desired_lines(tenant)
        view.firewall_id = firewall.input_digest(tenant)
    return view


class NamespaceRead(object):
    """One namespace's links and addresses, dumped once."""

    def __init__(self, rt):
        self.links = rt.links()
        self.addrs = {}
        for address in rt.addresses():
            self.addrs.setdefault(address.index, set()).add(address.interface)

    @property
    def marker(self):
        for link in self.links.values():
            if link.index == LO_INDEX:
                return parse_marker(link.alias)
        return None


def owned_routes(rt, table=None):
    """Our routes (collection protocol), both families, every table (or one), as dicts."""
    found = []
    for family in (4, 6):
        for route in rt.routes(family, table) if table is not None else rt.all_routes(family):
            if route['proto'] != ROUTE_PROTO:
                continue
            found.append({'family': family, 'table': route['table'], 'oif': route['oif'],
                          'gateway': route['gateway'], 'metric': route['priority'] or 0,
                          'prefix': str(ipaddress.ip_network('%s/%d' % (route['dst'], route['dst_len'])))})
    return found


class HostState(object):
    """The host namespace (the module's), read once."""

    def __init__(self, rt, inode):
        self.inode = inode
        read = NamespaceRead(rt)
        self.links, self.addrs = read.links, read.addrs
        self.routes = owned_routes(rt)
        self.rules = set()
        for family in (4, 6):
            for rule in rt.rules(family):
                if rule['proto'] == ROUTE_PROTO and rule['fwmark'] is not None:
                    self.rules.add(PolicyRule(family, rule['fwmark'], rule['fwmask'], rule['table'], rule['priority']))
        self.forwarding = dict((name, read_sysctl(path)) for name, path in FORWARDING.items())
        self.new_link_ipv6_off = read_sysctl(SYSCTL_V6_DEFAULT_OFF)

    def owned_links(self):
        """{tenant name: Link} of host veth ends we created."""
        found = {}
        for link in self.links.values():
            if link.alias and link.alias.startswith(OWNER + ' ') and link.kind == 'veth':
                found[link.alias[len(OWNER) + 1:]] = link
        return found

    def link_of(self, tenant):
        """The host end of TENANT: by name, or by our alias when it was renamed."""
        return self.links.get(tenant.host_if) or self.owned_links().get(tenant.name)


def marker_view(marker):
    return marker_text(marker['name'], marker['host'], marker['mark'], marker['mask'], marker['table']) \
        if marker else None


def current_view(host, tenant, handles, read, marker):
    """Read one tenant from the kernel.

    TENANT may be a bare one (name, netns, interfaces) for tenants going away.
    HANDLES/READ: the tenant namespace's handles and links (None when the namespace does not exist).
    """
    view = View()
    old_pair = ((marker['mark'], marker['mask']), marker['table']) if marker else None
    if handles is not None:
        view.netns = tenant.netns
        view.marker = marker_view(marker)
    host_link = host.link_of(tenant)
    if host_link is not None:
        view.host_link = LinkEnd(host_link.name, host_link.alias or '', host_link.up)
        view.host_addrs = tuple(sorted(host.addrs.get(host_link.index, ())))
        view.host_ipv6_off = read_sysctl(SYSCTL_V6_OFF % tenant.host_if)
    if handles is not None:
        tenant_link = read.links.get(tenant.tenant_if)
        if tenant_link is None:
            tenant_link = next((l for l in read.links.values() if l.alias == tenant.alias), None)
        if tenant_link is not None:
            view.tenant_link = LinkEnd(tenant_link.name, tenant_link.alias or '', tenant_link.up)
            # link-local addresses are the kernel's own, not managed
            view.tenant_addrs = tuple(sorted(a for a in read.addrs.get(tenant_link.index, ())
                                             if not a.startswith('fe80:')))
            view.paired = (host_link is not None and host_link.kind == 'veth' and tenant_link.kind == 'veth'
                           and host_link.peer == tenant_link.index and tenant_link.peer == host_link.index)
            view.defaults = _sorted(DefaultRoute(r['family'], r['gateway'], r['metric'])
                                    for r in owned_routes(handles.rt, TABLE_MAIN)
                                    if r['oif'] == tenant_link.index and r['prefix'] in ('0.0.0.0/0', '::/0'))
        v6 = tenant.present and tenant.link6
        # one visit to the namespace for the sysctls and the nftables listing
        with handles.inside():
            sysctls = [('net.ipv4.ip_forward', read_sysctl(SYSCTL_V4_FORWARD))]
            if v6:
                sysctls.append(('net.ipv6.conf.all.forwarding', read_sysctl(SYSCTL_V6_FORWARD)))
            listing = firewall.read_listing(handles.nft, tenant.netns)
        view.sysctls = tuple(sysctls)
        if listing is not None:
            comment, digest, body = firewall.parse_listing(listing)
            view.firewall = body
            if comment and comment[0] == tenant.name and comment[2] == digest:
                view.firewall_id = comment[1]
            else:
                view.firewall_id = 'modified'
    # Host side: rules of this tenant's (mark, table), old or new; routes via its veth.
    pairs = set()
    if tenant.present:
        pairs.add(((tenant.mark, tenant.mask), tenant.table))
    if old_pair:
        pairs.add(old_pair)
    view.rules = _sorted(r for r in host.rules if ((r.mark, r.mask), r.table) in pairs)
    if host_link is not None:
        view.routes = _sorted(TenantRoute(r['family'], r['prefix'], r['gateway'], r['table']) for r in host.routes
                              if r['oif'] == host_link.index and r['table'] != TABLE_MAIN)
    return view


def absent_view(host, tenant, owned_ns, marker, xt_mark):
    """The part of a tenant going away that is ours to remove (OWNED_NS: its namespace is ours).

    XT_MARK: the (mark, mask) its mark chain still holds, for rules left by a
    namespace that was deleted by hand.
    """
    view = View()
    if owned_ns:
        view.netns = tenant.netns
    if tenant.stale_ns_only:
        return view
    link = host.links.get(tenant.host_if)
    if link is None or link.alias != tenant.alias:
        link = host.owned_links().get(tenant.name)   # renamed, or the name is someone else's
    if link is not None:
        view.host_link = LinkEnd(link.name, link.alias, link.up)
        view.host_addrs = tuple(sorted(host.addrs.get(link.index, ())))
        view.routes = _sorted(TenantRoute(r['family'], r['prefix'], r['gateway'], r['table']) for r in host.routes
                              if r['oif'] == link.index and r['table'] != TABLE_MAIN)
    pairs = set()
    if marker:
        pairs.add(((marker['mark'], marker['mask']), marker['table']))
    marks = set(pair[0] for pair in pairs)
    if xt_mark:
        marks.add(xt_mark)
    view.rules = _sorted(r for r in host.rules
                         if ((r.mark, r.mask), r.table) in pairs or (not marker and (r.mark, r.mask) in marks))
    return view
