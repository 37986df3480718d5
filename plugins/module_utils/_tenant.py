# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenant network namespaces (the Magic Transit layout): the domain the engine runs.

Per tenant, in the host's namespace: a veth pair, MARK rules in a chain of the
tenant's own (``AE-TENANT-NAME``: xtables or nftables, ``_tenant_marks``), ``ip rule
fwmark MARK lookup TABLE`` and, in TABLE, the tenant's prefixes via the veth.
The main table is never touched. In the tenant's namespace: the veth's other
end, a default route back, forwarding, and the firewall (``_tenant_firewall``).

Where the rest lives: the input and its checks in ``_tenant_spec``, the
comparable picture of a tenant (read or desired) in ``_tenant_view``,
namespaces in ``_netns``, netlink reads in ``_netlink``, writes in ``_iproute``.
Here: reading every tenant once, the plan as a list of steps (each with the
command it amounts to), applying it, and what the module reports.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from ansible_collections.anycast.edge.plugins.module_utils import _tenant_firewall as firewall
from ansible_collections.anycast.edge.plugins.module_utils import _tenant_marks
from ansible_collections.anycast.edge.plugins.module_utils._engine import Domain, Op, OpPlan, Record
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError
from ansible_collections.anycast.edge.plugins.module_utils._iproute import call, open_iproute
from ansible_collections.anycast.edge.plugins.module_utils._netlink import FAMILY, LO_INDEX, ROUTE_PROTO, TABLE_LOCAL, TABLE_MAIN
from ansible_collections.anycast.edge.plugins.module_utils._netns import (
    Namespaces, create_netns, delete_netns, exists, host_inode, in_netns, list_netns, sysctl_name,
    write_sysctl)
from ansible_collections.anycast.edge.plugins.module_utils._tenant_spec import (
    OWNER, Tenant, _derived_link, default_interfaces, mark_text, parse_marker, validate)
from ansible_collections.anycast.edge.plugins.module_utils._tenant_view import (
    FORWARDING, HOST_LL6, SYSCTL_V6_OFF, HostState, NamespaceRead, View, absent_view, current_view, desired_view)

IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
RTNH_F_ONLINK = 4
# In state=rendered no host is read: the marker names the host namespace the way a shell would.
RENDERED_HOST_INODE = '$(stat -L -c %i /proc/self/ns/net)'

__all__ = ['Tenants', 'validate']


# --------------------------------------------------------------------------
# Reading

def bare(name, netns, host_if=None, param='purge'):
    """A tenant known only by name and namespace: one to remove, or to read back."""
    tenant = Tenant(-1, name, 'absent')
    tenant.param = param
    tenant.netns = netns
    tenant.host_if, tenant.tenant_if = default_interfaces(name)
    if host_if:
        tenant.host_if = host_if
    return tenant


class TenantState(object):
    """The host, every tenant namespace this run is about, and the mark chains."""

    def __init__(self, host, markers, views, tables, purged, owned_links):
        self.host = host            # HostState (None in state=rendered)
        self.markers = markers      # {netns: marker dict, or None when the namespace is not ours}
        self.views = views          # {netns: (tenant, View)} of every namespace of ours that was read
        self.tables = tables        # the mark chains as the mark layer read them (_tenant_marks)
        self.purged = purged        # bare Tenants to remove (purge)
        self.owned_links = owned_links
        self.reads = {}             # {netns: NamespaceRead}


def needs_relink(current, wanted):
    """True unless both veth ends exist under the wanted names, with our alias, as one pair."""
    return not (current.host_link and current.tenant_link and current.paired
                and current.host_link[:2] == wanted.host_link[:2] and current.tenant_link[:2] == wanted.tenant_link[:2])


def describe(tenant, cur, want):
    """What bringing CUR to WANT does, one sentence per change."""
    who = 'tenant %s' % tenant.name
    acts = []
    if cur.netns is None:
        acts.append("%s: create network namespace '%s'" % (who, tenant.netns))
    if needs_relink(cur, want):
        acts.append('%s: create veth %s <-> %s (in %s)' % (who, tenant.host_if, tenant.tenant_if, tenant.netns))
    elif cur.host_link != want.host_link or cur.tenant_link != want.tenant_link:
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
    for route in sorted(set(cur.defaults) - set(want.defaults)):
        acts.append('%s: remove default route via %s inside' % (who, route.gateway))
    for route in sorted(set(want.defaults) - set(cur.defaults)):
        acts.append('%s: default route via %s metric %d inside' % (who, route.gateway, route.metric))
    for route in sorted(set(cur.routes) - set(want.routes)):
        acts.append('%s: remove route %s from table %d' % (who, route.prefix, route.table))
    for route in sorted(set(want.routes) - set(cur.routes)):
        acts.append('%s: route %s via %s in table %d' % (who, route.prefix, route.gateway, route.table))
    for rule in sorted(set(cur.rules) - set(want.rules)):
        acts.append('%s: remove ip -%d rule fwmark 0x%x lookup %d' % (who, rule.family, rule.mark, rule.table))
    for rule in sorted(set(want.rules) - set(cur.rules)):
        acts.append('%s: ip -%d rule priority %d fwmark 0x%x lookup %d'
                    % (who, rule.family, rule.priority, rule.mark, rule.table))
    if cur.firewall_id != want.firewall_id:
        if want.firewall is None:
            acts.append('%s: remove nftables table inet %s' % (who, firewall.NFT_TABLE))
        else:
            acts.append('%s: replace nftables table inet %s (%d rules, policy %s)'
                        % (who, firewall.NFT_TABLE, len(tenant.firewall[1]), tenant.firewall[0]))
    if cur.marker != want.marker and cur.netns is not None:
        acts.append('%s: update the ownership marker of %s' % (who, tenant.netns))
    return acts


def _mark_new_namespace(marker, what):
    """Bring up lo and give it the ownership marker, in the namespace the calling thread is in."""
    ipr = open_iproute()
    try:
        call('%s: marking its new namespace' % what, ipr.link, 'set', index=LO_INDEX, state='up', ifalias=marker)
    finally:
        ipr.close()


# --------------------------------------------------------------------------
# The commands the steps amount to

def _n(netns):
    return 'ip -n %s ' % netns


def _rule_command(verb, rule):
    return 'ip -%d rule %s priority %d fwmark 0x%x/0x%x lookup %d proto %d' % (
        rule.family, verb, rule.priority, rule.mark, rule.mask, rule.table, ROUTE_PROTO)


def _default_of(family):
    return '0.0.0.0/0' if family == 4 else '::/0'


class TenantPlan(OpPlan):
    def __init__(self, ops, present, absent, xt, actions):
        self.present = present      # [(Tenant, current View, desired View)]
        self.absent = absent        # [(Tenant, View of what is ours to remove)]
        self.xt = xt                # the plan of the mark chains (an XtPlan, or an NftPlan)
        self.actions = actions
        super().__init__(ops)


# --------------------------------------------------------------------------
# The domain

class Tenants(Domain):
    name = 'tenant'

    def validate(self):
        self.tenants, self.settings = validate(self.params)
        self.purge = self.params['purge']
        self.gathering = self.params['state'] == 'gathered'
        self.namespaces = None
        self.marks = None

    def open(self):
        self.marks = _tenant_marks.select(self.module, self.params['driver'])
        self.marks.open()
        self.namespaces = Namespaces()

    def close(self):
        if self.marks is not None:
            self.marks.close()
        if self.namespaces is not None:
            self.namespaces.close()

    # -- reading ------------------------------------------------------------
    def read(self):
        host = HostState(self.namespaces.host.rt, host_inode())
        markers, reads = {}, {}
        listed = set(t.netns for t in self.tenants)
        for tenant in self.tenants:
            if exists(tenant.netns):
                try:
                    reads[tenant.netns] = NamespaceRead(self.namespaces.get(tenant.netns).rt)
                except (EdgeError, OSError) as exc:
                    raise EdgeError("%s.netns: cannot read network namespace '%s': %s" % (tenant.param, tenant.netns, exc))
                markers[tenant.netns] = reads[tenant.netns].marker
                self.namespaces.release(tenant.netns)
        found = {}      # name -> [netns] of ours not listed
        if self.purge or self.gathering:
            for netns in list_netns():
                if netns in listed:
                    continue
                try:
                    read = NamespaceRead(self.namespaces.get(netns).rt)
                except (EdgeError, OSError):
                    continue    # vanished meanwhile, or not ours to enter
                finally:
                    self.namespaces.release(netns)
                if read.marker is None or read.marker['host'] != host.inode:
                    continue
                markers[netns], reads[netns] = read.marker, read
                found.setdefault(read.marker['name'], []).append(netns)
        tables = self.marks.read()
        owned_links = host.owned_links()
        purged = self._purged(found, owned_links, tables) if self.purge else []
        views = {}
        for tenant in self.tenants + [bare(name, netns) for name, spaces in sorted(found.items()) for netns in spaces]:
            marker = markers.get(tenant.netns)
            if marker is None or marker['host'] != host.inode or marker['name'] != tenant.name:
                continue
            handles = self.namespaces.get(tenant.netns)
            views[tenant.netns] = (tenant, current_view(host, tenant, handles, reads[tenant.netns], marker))
            self.namespaces.release(tenant.netns)
        state = TenantState(host, markers, views, tables, purged, owned_links)
        state.reads = reads
        return state

    def _purged(self, found, owned_links, tables):
        """Bare tenants of ours that are not listed (their namespaces, host veths, mark chains)."""
        listed = dict((t.name, t) for t in self.tenants)
        names = dict((name, list(spaces)) for name, spaces in found.items())
        for name in list(owned_links) + list(self.marks.owned(tables)):
            names.setdefault(name, [])
        purged = []
        for name in sorted(names):
            for netns in names[name] or [None]:
                if name in listed and netns is None:
                    continue
                gone = bare(name, netns, owned_links[name].name if name in owned_links else None)
                # a stale namespace of a listed tenant (its netns was changed): only the namespace goes
                gone.stale_ns_only = name in listed
                purged.append(gone)
        return purged

    def empty(self):
        return TenantState(None, {}, {}, self._marks().empty(), [], {})

    def _marks(self):
        """The mark layer: the one open() chose, or (state=rendered, no host) the one the parameters name."""
        if self.marks is None:
            self.marks = _tenant_marks.select(self.module, self.params['driver'])
        return self.marks

    # -- deciding -------------------------------------------------------------
    def _ownership_problem(self, state, tenant):
        if tenant.netns not in state.markers:
            return None
        marker = state.markers[tenant.netns]
        if marker is None:
            return ("%s.netns: network namespace '%s' exists and was not created by this module (its loopback has "
                    "no ownership marker); choose another netns or remove it" % (tenant.param, tenant.netns))
        if marker['host'] != state.host.inode:
            return ("%s.netns: network namespace '%s' belongs to tenant %s of another host namespace"
                    % (tenant.param, tenant.netns, marker['name']))
        if marker['name'] != tenant.name:
            return "%s.netns: network namespace '%s' belongs to tenant %s" % (tenant.param, tenant.netns, marker['name'])
        return None

    def _check_link_addresses(self, state):
        """Refuse link addresses that clash with the host's own networks, before anything changes.

        A pool overlapping a connected subnet puts a neighbour's address on a tenant veth (the
        host then answers for it); one overlapping another tenant's or an AnyIP prefix routes the
        link into that tenant. Addresses on the veths of our own tenants are the pool in use.
        """
        ours = set(link.index for link in state.host.links.values()
                   if link.alias and link.alias.startswith(OWNER + ' '))
        connected = []
        for link in state.host.links.values():
            if link.index in ours:
                continue
            for text in state.host.addrs.get(link.index, ()):
                connected.append((ipaddress.ip_interface(text).network, 'the connected subnet of %s' % link.name))
        for route in state.host.routes:
            net = ipaddress.ip_network(route['prefix'])
            if net.prefixlen and route['oif'] not in ours:
                connected.append((net, 'the AnyIP prefix' if route['table'] == TABLE_LOCAL else
                                  'a prefix routed in table %d' % route['table']))
            elif net.prefixlen:
                connected.append((net, "another tenant's prefix (table %d)" % route['table']))
        for key, pool in (('link_pool_ipv4', self.settings['pool4']), ('link_pool_ipv6', self.settings['pool6'])):
            if not any(pool.version in t.derived_links for t in self.tenants if t.present):
                continue    # no tenant of this call takes its link addresses from the pool
            for net, what in connected:
                if net.version == pool.version and net.overlaps(pool):
                    raise EdgeError('%s: %s overlaps %s %s in the host namespace; nothing was changed: choose a '
                                    'pool no address of the host is in' % (key, pool, what, net))
        for tenant in self.tenants:
            if not tenant.present:
                continue
            for family, pair in tenant.links():
                for net, what in connected:
                    if net.version == family and net.overlaps(pair[0].network):
                        raise EdgeError('%s.link: the link %s overlaps %s %s in the host namespace; nothing was '
                                        'changed' % (tenant.param, pair[0].network, what, net))

    def plan(self, state):
        rendered = state.host is None
        if not rendered:
            self._check_link_addresses(state)
        inode = RENDERED_HOST_INODE if rendered else state.host.inode
        present, absent = [], []
        marks = self._marks()
        xt_marks = marks.owned(state.tables) if not rendered else {}
        for tenant in self.tenants:
            problem = None if rendered else self._ownership_problem(state, tenant)
            if tenant.present:
                if problem:
                    raise EdgeError(problem)
                link = state.host.links.get(tenant.host_if) if not rendered else None
                if link is not None and link.alias != tenant.alias:
                    raise EdgeError("%s: interface %s already exists in the host namespace and is not this tenant's "
                                    "(alias %r); set link.host_if" % (tenant.param, tenant.host_if, link.alias))
                cur = state.views[tenant.netns][1] if tenant.netns in state.views else \
                    self._outside(state, tenant)
                want = desired_view(tenant, self.settings, inode)
                present.append((tenant, self._same_firewall(cur, want), want))
            elif not rendered:
                owned = tenant.netns in state.markers and not problem
                absent.append((tenant, absent_view(state.host, tenant, owned,
                                                   state.markers.get(tenant.netns) if owned else None,
                                                   xt_marks.get(tenant.name))))
        for gone in state.purged:
            absent.append((gone, absent_view(state.host, gone, gone.netns is not None, state.markers.get(gone.netns),
                                             xt_marks.get(gone.name))))
        listed = set(t.name for t in self.tenants)
        xt = marks.plan(state.tables, self.tenants, sorted(set(b.name for b in state.purged) - listed), rendered)

        ops, actions, host_actions = [], [], []
        forwarding = state.host.forwarding if not rendered else {}
        wanted_forwarding = []
        if present:
            wanted_forwarding.append('net.ipv4.ip_forward')
        if any(t.link6 for t, _c, _w in present):
            wanted_forwarding.append('net.ipv6.conf.all.forwarding')
        for name in wanted_forwarding:
            if forwarding.get(name) != '1':
                ops.append(Op(['sysctl -w %s=1' % name], self._host_sysctl, FORWARDING[name], '1'))
                host_actions.append('host: set %s = 1' % name)
        for tenant, cur, want in present:
            if cur.key() != want.key():
                ops += self._present_ops(state, tenant, cur, want)
                actions += describe(tenant, cur, want)
        ops.append(Op(xt.commands, marks.apply, xt))
        for tenant, cur in absent:
            ops += self._absent_ops(state, tenant, cur)
            who = 'tenant %s' % tenant.name
            actions += ['%s: remove ip -%d rule fwmark 0x%x lookup %d' % (who, r.family, r.mark, r.table)
                        for r in cur.rules]
            if cur.host_link:
                actions.append('%s: delete veth %s (and its routes)' % (who, cur.host_link.name))
            if cur.netns:
                actions.append("%s: delete network namespace '%s'" % (who, cur.netns))
        return TenantPlan(ops, present, absent, xt, actions + host_actions + xt.actions)

    @staticmethod
    def _outside(state, tenant):
        """The current view of a tenant whose namespace is not (or not yet) ours: its host side only."""
        if state.host is None:
            return View()
        return current_view(state.host, tenant, None, None, None)

    @staticmethod
    def _same_firewall(cur, want):
        """The ruleset in place is the one asked for when nft lists it exactly as the input spells it."""
        if cur.firewall_id not in (want.firewall_id, 'modified') and cur.firewall == want.firewall:
            cur.firewall_id = want.firewall_id
        return cur

    # -- the steps of a present tenant ---------------------------------------------
    def _present_ops(self, state, tenant, cur, want):
        ns, host_if, tenant_if = tenant.netns, tenant.host_if, tenant.tenant_if
        what = 'tenant %s' % tenant.name
        ops = []
        if cur.netns is None:
            # Marked ours before it has a name: a run killed at any point leaves no namespace,
            # or one this module recognises as its own (and completes on the next run).
            ops.append(Op(['ip netns add %s' % ns, _n(ns) + 'link set dev lo up alias "%s"' % want.marker],
                          create_netns, ns, lambda marker=want.marker: _mark_new_namespace(marker, what)))
        host_addrs, tenant_addrs, defaults, routes = cur.host_addrs, cur.tenant_addrs, cur.defaults, cur.routes
        ipv6_off = cur.host_ipv6_off
        relink = needs_relink(cur, want)
        if relink:
            # the old pair, under this name or an older one: its routes go with it
            for link in state.host.links.values() if state.host else ():
                if link.name == host_if or link.alias == tenant.alias:
                    ops.append(Op(['ip link del %s' % link.name], self._del_link, None, link.index,
                                  '%s: deleting stale interface %s' % (what, link.name)))
            read = state.reads.get(ns)
            for link in read.links.values() if read is not None and cur.netns is not None else ():
                if link.name == tenant_if or link.alias == tenant.alias:
                    ops.append(Op([_n(ns) + 'link del %s' % link.name], self._del_link, ns, link.index,
                                  '%s: deleting stale interface %s in %s' % (what, link.name, ns)))
            ops.append(Op([_n(ns) + 'link add %s type veth peer name %s' % (host_if, tenant_if),
                           _n(ns) + 'link set dev %s alias "%s"' % (tenant_if, tenant.alias),
                           _n(ns) + 'link set dev %s alias "%s" netns %s' % (host_if, tenant.alias, self.params['netns']
                                                                             or '1')],
                          self._add_veth, tenant))
            # No IPv6 link-local on the host end: it would put fe80::/64 into the main table.
            path = '/proc/sys/net/ipv6/conf/%s/addr_gen_mode' % host_if
            ops.append(Op(['sysctl -w %s=1' % sysctl_name(path)], self._host_sysctl, path, '1', what))
            host_addrs, tenant_addrs, defaults, routes = (), (), (), ()
            ipv6_off = state.host.new_link_ipv6_off if state.host else '0'
        if ipv6_off != want.host_ipv6_off:
            # no IPv6 at all on the host end of an IPv4-only tenant: not even MLD reports reach it
            path = SYSCTL_V6_OFF % host_if
            ops.append(Op(['sysctl -w %s=%s' % (sysctl_name(path), want.host_ipv6_off)], self._host_sysctl, path,
                          want.host_ipv6_off, what))
        if relink or cur.host_link != want.host_link:
            ops.append(Op(['ip link set dev %s alias "%s" up' % (host_if, tenant.alias)], self._host_link_set, host_if,
                          '%s: configuring %s' % (what, host_if), ifalias=tenant.alias, state='up'))
        if relink or cur.tenant_link != want.tenant_link:
            ops.append(Op([_n(ns) + 'link set dev %s alias "%s" up' % (tenant_if, tenant.alias)], self._ns_link_set, ns,
                          tenant_if, '%s: configuring %s' % (what, tenant_if), ifalias=tenant.alias, state='up'))
        sides = ((None, host_if, host_addrs, want.host_addrs, True),
                 (ns, tenant_if, tenant_addrs, want.tenant_addrs, False))
        for netns, ifname, current, wanted, host_side in sides:
            prefix = _n(netns) if netns else 'ip '
            where = '%s %s' % (what, ifname)
            for text in sorted(set(current) - set(wanted)):
                ops.append(Op([prefix + 'addr del %s dev %s' % (text, ifname)], self._addr, netns, ifname, 'del', text,
                              where, host_side))
            for text in sorted(set(wanted) - set(current)):
                flags = ' noprefixroute nodad' if host_side else ' nodad'
                ops.append(Op([prefix + 'addr add %s dev %s%s' % (text, ifname, flags)], self._addr, netns, ifname,
                              'add', text, where, host_side))
        for name, value in want.sysctls:
            if dict(cur.sysctls).get(name) != value:
                ops.append(Op(['ip netns exec %s sysctl -w %s=%s' % (ns, name, value)], self._ns_sysctl, ns,
                              FORWARDING[name], value, '%s (namespace %s)' % (what, ns)))
        for route in sorted(set(defaults) - set(want.defaults)):
            ops.append(Op([_n(ns) + 'route del default via %s dev %s metric %d proto %d' % (
                route.gateway, tenant_if, route.metric, ROUTE_PROTO)], self._route, ns, tenant_if, 'del',
                _default_of(route.family), route.gateway, TABLE_MAIN, route.metric,
                '%s: removing default route via %s' % (what, route.gateway)))
        for route in sorted(set(want.defaults) - set(defaults)):
            ops.append(Op([_n(ns) + 'route add default via %s dev %s metric %d proto %d onlink' % (
                route.gateway, tenant_if, route.metric, ROUTE_PROTO)], self._route, ns, tenant_if, 'add',
                _default_of(route.family), route.gateway, TABLE_MAIN, route.metric,
                '%s: default route via %s in %s' % (what, route.gateway, ns)))
        for route in sorted(set(routes) - set(want.routes)):
            ops.append(Op(['ip route del %s via %s dev %s table %d proto %d' % (
                route.prefix, route.gateway, host_if, route.table, ROUTE_PROTO)], self._route, None, host_if, 'del',
                route.prefix, route.gateway, route.table, None,
                '%s: removing route %s from table %d' % (what, route.prefix, route.table)))
        for route in sorted(set(want.routes) - set(routes)):
            ops.append(Op(['ip route add %s via %s dev %s table %d proto %d onlink' % (
                route.prefix, route.gateway, host_if, route.table, ROUTE_PROTO)], self._route, None, host_if, 'add',
                route.prefix, route.gateway, route.table, None,
                '%s: route %s via %s in table %d' % (what, route.prefix, route.gateway, route.table)))
        for rule in sorted(set(cur.rules) - set(want.rules)):
            ops.append(Op([_rule_command('del', rule)], self._rule, 'del', rule, what))
        for rule in sorted(set(want.rules) - set(cur.rules)):
            ops.append(Op([_rule_command('add', rule)], self._rule, 'add', rule, what))
        if want.firewall_id != cur.firewall_id:
            if tenant.firewall is None:
                ops.append(Op(['ip netns exec %s nft %s' % (ns, firewall.DELETE_TABLE)], self._remove_firewall, tenant))
            else:
                rewrite = Op(["ip netns exec %s nft -f - <<'EOF'\n%sEOF" % (
                    ns, firewall.nft_script(tenant, '<digest of the listing of the transaction above>'))],
                    lambda: None)
                ops.append(Op(["ip netns exec %s nft -f - <<'EOF'\n%sEOF" % (ns, firewall.nft_script(tenant))],
                              self._write_firewall, tenant, rewrite))
                ops.append(rewrite)
        if cur.marker != want.marker and cur.netns is not None:
            ops.append(Op([_n(ns) + 'link set dev lo alias "%s"' % want.marker], self._ns_link_set, ns, LO_INDEX,
                          '%s: marking namespace' % what, ifalias=want.marker))
        ops.append(Op([], self._release, ns))
        return ops

    def _absent_ops(self, state, tenant, cur):
        """Remove everything of one tenant: rules, routes (with the veth), the namespace if ours."""
        what = 'tenant %s' % tenant.name
        ops = [Op([_rule_command('del', rule)], self._rule, 'del', rule, what) for rule in cur.rules]
        link = state.host.links.get(cur.host_link.name) if cur.host_link else None
        if link is not None and link.alias == tenant.alias:
            # Deleting our end takes the pair and the routes through it away now,
            # not whenever the namespace's last reference goes.
            ops.append(Op(['ip link del %s' % link.name], self._del_link, None, link.index,
                          '%s: deleting interface %s' % (what, link.name)))
        if cur.netns is not None:
            ops.append(Op(['ip netns del %s' % cur.netns], self._delete_netns, cur.netns))
        return ops

    # -- carrying the steps out ----------------------------------------------------
    def apply(self, plan):
        # nft --check every ruleset about to be written, before anything changes
        for tenant, cur, want in plan.present:
            if tenant.firewall is None or cur.firewall_id == want.firewall_id:
                continue
            handles = self.namespaces.get(tenant.netns) if cur.netns is not None else self.namespaces.host
            with handles.inside():
                firewall.check(tenant, handles.nft)
            if cur.netns is not None:
                self.namespaces.release(tenant.netns)
        try:
            plan.run()
        except EdgeError as exc:
            created = [tenant for tenant, cur, _want in plan.present if cur.netns is None]
            if not created:
                raise       # existing tenants: the next run repairs what is half-changed
            raise EdgeError('%s; %s' % (exc, self._undo_created(created)))

    def _undo_created(self, created):
        """Remove every tenant this run was creating (namespace, veth with its routes, ip rules, mark
        chains), read afresh, so that a failed apply leaves nothing it created. Returns a sentence."""
        names = ', '.join(tenant.name for tenant in created)
        try:
            state = self.read()
            marks = self.marks.owned(state.tables)
            ops = []
            for tenant in created:
                marker = state.markers.get(tenant.netns)
                owned = marker is not None and marker['name'] == tenant.name and marker['host'] == state.host.inode
                view = absent_view(state.host, tenant, owned, marker if owned else None, marks.get(tenant.name))
                ops += self._absent_ops(state, tenant, view)
            self.marks.apply(self.marks.plan(state.tables, [], [tenant.name for tenant in created]))
            for op in ops:
                op.run()
        except EdgeError as exc:
            return 'undoing what this run created for tenant(s) %s failed too: %s' % (names, exc)
        return 'what this run created for tenant(s) %s was removed again' % names

    def _ipr(self, netns):
        return self.namespaces.get(netns).ipr if netns else self.namespaces.host.ipr

    @staticmethod
    def _index(netns, ifname):
        # by name through the kernel directly: a dump of every link per tenant would be slow
        with in_netns(netns):
            return socket.if_nametoindex(ifname)

    def _host_sysctl(self, path, value, what='host'):
        try:
            write_sysctl(path, value)
        except EdgeError as exc:
            raise EdgeError('%s: %s' % (what, exc))

    def _ns_sysctl(self, netns, path, value, what):
        try:
            self.namespaces.get(netns).sysctl(path, value)
        except EdgeError as exc:
            raise EdgeError('%s: %s' % (what, exc))

    def _ns_link_set(self, netns, index_or_name, what, **kwargs):
        index = index_or_name if isinstance(index_or_name, int) else self._index(netns, index_or_name)
        call(what, self._ipr(netns).link, 'set', index=index, **kwargs)

    def _host_link_set(self, ifname, what, **kwargs):
        call(what, self._ipr(None).link, 'set', index=self._index(None, ifname), **kwargs)

    def _del_link(self, netns, index, what):
        call(what, self._ipr(netns).link, 'del', index=index, ignore=(errno.ENODEV,))   # gone with its peer

    def _add_veth(self, tenant):
        """The veth pair, made inside the tenant's (marked) namespace, both ends named ours, then the host
        end moved out: a run killed at any point leaves no interface in the host's namespace that is not
        recognisably this tenant's (the kernel ignores an alias given with the creation itself)."""
        what = 'tenant %s' % tenant.name
        ipr = self._ipr(tenant.netns)
        call('%s: creating veth %s <-> %s' % (what, tenant.host_if, tenant.tenant_if), ipr.link, 'add',
             ifname=tenant.host_if, kind='veth', peer={'ifname': tenant.tenant_if})
        for ifname in (tenant.tenant_if, tenant.host_if):
            self._ns_link_set(tenant.netns, ifname, '%s: naming %s ours' % (what, ifname), ifalias=tenant.alias)
        call('%s: moving %s to the host namespace' % (what, tenant.host_if), ipr.link, 'set',
             index=self._index(tenant.netns, tenant.host_if), net_ns_fd=self.namespaces.host.fd)

    def _addr(self, netns, ifname, verb, text, where, host_side):
        iface = ipaddress.ip_interface(text)
        args = dict(index=self._index(netns, ifname), address=str(iface.ip), prefixlen=iface.network.prefixlen,
                    family=FAMILY[iface.version])
        if verb == 'del':
            call('%s: removing address %s' % (where, text), self._ipr(netns).addr, 'del', ignore=(errno.EADDRNOTAVAIL,),
                 **args)
            return
        args['flags'] = IFA_F_NODAD | (IFA_F_NOPREFIXROUTE if host_side else 0)   # no connected route in main
        call('%s: adding address %s' % (where, text), self._ipr(netns).addr, 'add', **args)

    def _route(self, netns, ifname, verb, prefix, gateway, table, metric, what):
        net = ipaddress.ip_network(prefix)
        args = dict(family=FAMILY[net.version], dst=str(net.network_address), dst_len=net.prefixlen, gateway=gateway,
                    oif=self._index(netns, ifname), table=table, proto=ROUTE_PROTO, flags=RTNH_F_ONLINK)
        if metric is not None:
            args['priority'] = metric
        call(what, self._ipr(netns).route, verb, ignore=(errno.ESRCH,) if verb == 'del' else (), **args)

    def _rule(self, verb, rule, what):
        args = dict(family=FAMILY[rule.family], fwmark=rule.mark, fwmask=rule.mask, table=rule.table,
                    priority=rule.priority, protocol=ROUTE_PROTO)
        if verb == 'del':
            call('%s: removing ip rule fwmark 0x%x lookup %d' % (what, rule.mark, rule.table), self._ipr(None).rule,
                 'del', ignore=(errno.ENOENT, errno.ESRCH), **args)
        else:
            call('%s: ip rule fwmark 0x%x lookup %d' % (what, rule.mark, rule.table), self._ipr(None).rule, 'add', **args)

    def _write_firewall(self, tenant, rewrite):
        handles = self.namespaces.get(tenant.netns)
        script = firewall.write(tenant, handles.nft, tenant.netns)
        rewrite.commands = ["ip netns exec %s nft -f - <<'EOF'\n%sEOF" % (tenant.netns, script)]

    def _remove_firewall(self, tenant):
        firewall.remove(tenant, self.namespaces.get(tenant.netns).nft)

    def _release(self, netns):
        """Done with a namespace: its sockets go (descriptors are few with hundreds of tenants)."""
        if self.namespaces is not None:
            self.namespaces.release(netns)

    def _delete_netns(self, netns):
        self.namespaces.release(netns)
        delete_netns(netns)

    # -- reporting ------------------------------------------------------------------
    def problems(self, state, plan):
        out = []
        for tenant, cur, want in plan.present:
            if cur.key() != want.key():
                have, wanted = cur.render(tenant.name), want.render(tenant.name)
                diff = ['unexpected: %s' % line for line in have if line not in wanted] + \
                    ['missing: %s' % line for line in wanted if line not in have]
                out.append('tenant %s: %s' % (tenant.name, '; '.join(diff) or 'state differs'))
        for tenant, cur in plan.absent:
            if cur.netns:
                out.append("tenant %s: namespace '%s' still exists" % (tenant.name, cur.netns))
            if cur.host_link:
                out.append('tenant %s: interface %s still exists' % (tenant.name, cur.host_link.name))
            if cur.rules:
                out.append('tenant %s: ip rules still present: %s' % (tenant.name, list(cur.rules)))
        return out + plan.xt.actions

    def _input(self, tenant_name, view):
        """A tenant of the module's input for VIEW (defaults left out)."""
        item = {'name': tenant_name, 'netns': view.netns}
        item['prefixes'] = [r.prefix for r in sorted(view.routes, key=lambda r: (r.family, ipaddress.ip_network(r.prefix)))]
        host_if, tenant_if = default_interfaces(tenant_name)
        link = {}
        if view.host_link and view.host_link.name != host_if:
            link['host_if'] = view.host_link.name
        if view.tenant_link and view.tenant_link.name != tenant_if:
            link['tenant_if'] = view.tenant_link.name
        marker = parse_marker(view.marker)
        if marker:
            item['mark'] = mark_text(marker['mark'], marker['mask'])
            item['table'] = marker['table']
            families = set(ipaddress.ip_network(p).version for p in item['prefixes'])
            for family, pool in ((4, self.settings['pool4']), (6, self.settings['pool6'])):
                hosts = [a for a in view.host_addrs if ipaddress.ip_interface(a).version == family and a != HOST_LL6]
                tenants = [a for a in view.tenant_addrs if ipaddress.ip_interface(a).version == family]
                if not hosts or not tenants:
                    continue
                derived = [str(i) for i in _derived_link(pool, marker['table'])]
                if [hosts[0], tenants[0]] != derived or (family == 6 and 6 not in families):
                    link['host_ipv%d' % family], link['tenant_ipv%d' % family] = hosts[0], tenants[0]
        if link:
            item['link'] = link
        if view.firewall is not None:
            parsed = firewall.as_input(view.firewall)
            if parsed is None:
                self.warn('tenant %s: the firewall in %s is not one this module wrote' % (tenant_name, view.netns))
            else:
                item['firewall'] = {'policy': parsed[0], 'rules': parsed[1]}
        return item

    def _gathered(self, items):
        """The module input holding ITEMS ({netns: (name, View)})."""
        tenants = [self._input(name, view) for name, view in sorted(items.values(), key=lambda i: i[0])]
        result = {'tenants': tenants}
        priorities = set(rule.priority for _n, view in items.values() for rule in view.rules)
        default = self.module.argument_spec['rule_priority']['default']
        if len(priorities) == 1 and priorities != set([default]):
            result['rule_priority'] = priorities.pop()
        return result

    def gather(self, state):
        return self._gathered(dict((netns, (tenant.name, view)) for netns, (tenant, view) in state.views.items()))

    def expected(self, state, plan):
        items = dict((netns, (tenant.name, view)) for netns, (tenant, view) in state.views.items())
        for tenant, _cur in plan.absent:
            items.pop(tenant.netns, None)
        for tenant, _cur, want in plan.present:
            items[tenant.netns] = (tenant.name, want)
        return self._gathered(items)

    def diff(self, state, plan):
        before, after = [], []
        for tenant, cur, want in plan.present:
            if cur.firewall_id == want.firewall_id:
                cur.firewall = want.firewall   # the same ruleset: show it as written, not in nft's spelling
            before += cur.render(tenant.name)
            after += want.render(tenant.name)
        for tenant, cur in plan.absent:
            before += cur.render(tenant.name)
        before += plan.xt.before_lines()
        after += plan.xt.after_lines()
        return ('\n'.join(before) + ('\n' if before else ''), '\n'.join(after) + ('\n' if after else ''))

    def _purged_names(self, plan):
        listed = set(t.name for t in self.tenants)
        return sorted(set(t.name for t, _c in plan.absent if t.param == 'purge') - listed)

    def result(self, state, plan, after):
        out = []
        for tenant in self.tenants:
            item = {'name': tenant.name, 'state': tenant.state, 'netns': tenant.netns}
            if tenant.present:
                item.update({
                    'interfaces': {'host': tenant.host_if, 'tenant': tenant.tenant_if},
                    'addresses': {'host': [str(p[0]) for _f, p in tenant.links()],
                                  'tenant': [str(p[1]) for _f, p in tenant.links()]},
                    'prefixes': [str(n) for n in tenant.prefixes],
                    'mark': mark_text(tenant.mark, tenant.mask),
                    'table': tenant.table,
                    'firewall_policy': tenant.firewall[0] if tenant.firewall else None,
                })
            out.append(item)
        return {'actions': plan.actions, 'tenants': out, 'driver': self.marks.name, 'purged': self._purged_names(plan)}

    def records(self, state, plan):
        """One record per tenant, so that several calls add up."""
        shared = dict((k, v) for k, v in self.recordable().items() if k not in ('tenants', 'purge'))
        records = {}
        for item in self.params['tenants']:
            present = item.get('state') != 'absent'
            records[item['name']] = Record(item['name'], dict(shared, purge=False, tenants=[item]) if present else None)
        for name in self._purged_names(plan):
            records.setdefault(name, Record(name, None))
        return records
