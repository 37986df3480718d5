# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tenant module's input: the Tenant value type and the checks that make it.

Everything here is pure: no kernel is read. ``validate`` fills every default
(namespace name, interface names, link addresses derived from the table) and
refuses what two tenants cannot share (names, namespaces, marks, tables,
interfaces, link addresses, overlapping prefixes), naming the parameter.
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.anycast.edge.plugins.module_utils._errors import ParamError
from ansible_collections.anycast.edge.plugins.module_utils._netns import check_netns_name
from ansible_collections.anycast.edge.plugins.module_utils._validate import (
    check_ifname, check_mark, parse_interface, parse_prefix)

OWNER = 'anycast.edge tenant'
XT_CHAIN_PREFIX = 'AE-TENANT-'
NAME_MAX = 15
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_-]*$')
RESERVED_TABLES = {0: 'unspec', 253: 'default', 254: 'main', 255: 'local'}
DEFAULT_POOL_V4 = '169.254.0.0/17'   # below 169.254.169.254, the cloud metadata address
DEFAULT_POOL_V6 = 'fdac:ed6e:7e4a::/64'
MARKER_RE = re.compile(r'^anycast\.edge tenant (\S+) host (\d+) mark (0x[0-9a-f]+)/(0x[0-9a-f]+) table (\d+)$')


def default_interfaces(name):
    """(host end, tenant end) of a tenant's veth unless link.host_if/tenant_if say otherwise."""
    return 'ae-%s' % name, 'ae-%s-t' % name


def marker_text(name, host_inode, mark, mask, table):
    """The alias of a tenant namespace's loopback: whose it is, for which host namespace."""
    return '%s %s host %s mark 0x%x/0x%x table %d' % (OWNER, name, host_inode, mark, mask, table)


def parse_marker(alias):
    match = MARKER_RE.match(alias or '')
    if not match:
        return None
    return {'name': match.group(1), 'host': int(match.group(2)), 'mark': int(match.group(3), 16),
            'mask': int(match.group(4), 16), 'table': int(match.group(5))}


def mark_text(mark, mask):
    return '0x%x' % mark if mask == 0xFFFFFFFF else '0x%x/0x%x' % (mark, mask)


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
        return marker_text(self.name, host_inode, self.mark, self.mask, self.table)

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
        tenant = Tenant(index, name, raw.get('state') or 'present')  # a bare dict in unit tests
        unique('name', name, param + '.name', 'tenant name')

        tenant.netns = raw.get('netns') or settings['netns_prefix'] + name
        problem = check_netns_name(tenant.netns)
        if problem:
            raise ParamError(param + ('.netns' if raw.get('netns') else '.name'), 'namespace name %s' % problem)
        unique('netns', tenant.netns, param + '.netns', 'namespace')

        link = raw.get('link') or {}
        for key, default in zip(('host_if', 'tenant_if'), default_interfaces(name)):
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
