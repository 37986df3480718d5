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
    SPECIAL_RANGES, check_ifname, check_mark, parse_interface, parse_prefix, shown)

OWNER = 'anycast.edge tenant'
XT_CHAIN_PREFIX = 'AE-TENANT-'
NAME_MAX = 15
NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_-]*')      # fullmatch: '$' would admit a trailing newline
RESERVED_TABLES = {0: 'unspec', 253: 'default', 254: 'main', 255: 'local'}
DEFAULT_POOL_V4 = '169.254.0.0/17'   # below 169.254.169.254, the cloud metadata address
DEFAULT_POOL_V6 = 'fdac:ed6e:7e4a::/64'
MARKER_RE = re.compile(r'anycast\.edge tenant (\S+) host (\d+) mark (0x[0-9a-f]+)/(0x[0-9a-f]+) table (\d+)')


def default_interfaces(name):
    """(host end, tenant end) of a tenant's veth unless link.host_if/tenant_if say otherwise."""
    return 'ae-%s' % name, 'ae-%s-t' % name


def marker_text(name, host_inode, mark, mask, table):
    """The alias of a tenant namespace's loopback: whose it is, for which host namespace."""
    return '%s %s host %s mark 0x%x/0x%x table %d' % (OWNER, name, host_inode, mark, mask, table)


def parse_marker(alias):
    match = MARKER_RE.fullmatch(alias or '')
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
        self.derived_links = set()   # families whose link addresses come from the pool
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


# What a line of an nft chain block may be besides a rule (nft's grammar: include, define,
# redefine and undefine anywhere; type/hook, policy, flags, comment, devices of the chain itself).
# None of them is a rule: include reads a file (and can close the chain from inside it), define
# and friends change what later text means, the others change the chain.
NFT_NOT_RULES = frozenset(('include', 'define', 'redefine', 'undefine', 'type', 'hook', 'policy', 'priority',
                           'flags', 'comment', 'devices'))


def _nft_rule_problem(text):
    """Why a firewall rule is not one rule of its chain (another command, a block, a chain setting), or None.

    With no ';', no newline and no '#' outside quotes, braces balanced, and a first word that is
    not one of NFT_NOT_RULES, the text is one rule of the chain or a syntax error nft reports:
    it cannot close the chain, open a table of its own or read a file.
    """
    if not text.isprintable():
        return 'must be one line of printable text (it holds %r)' % next(c for c in text if not c.isprintable())
    first = text.split(None, 1)[0].lower()
    if first in NFT_NOT_RULES:
        return ("'%s' is not a rule: only rules (matches and a verdict, like \"tcp dport 22 accept\") may be "
                "given; include, define and the chain's own settings are refused" % first)
    depth = 0
    quote = False
    for char in text:
        if char == '"':
            quote = not quote
        elif quote:
            continue
        elif char in ';#':
            return "contains '%s' outside quotes; give each rule as its own list item" % char
        elif char == '$':
            return "contains '$' outside quotes: variables need define, which is refused; write the value itself"
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


def _check_marks_disjoint(tenant, others):
    """Refuse two tenants whose MARK/MASK can both match one packet mark.

    0x100/0x100 and 0x300/0x300 both match a packet marked 0x300: which table it uses then
    depends only on the order of the ip rules, and removing one tenant silently reroutes the
    other's traffic. Two (mark, mask) pairs share a packet mark when they agree on every bit
    both masks test.
    """
    for other in others:
        if (tenant.mark ^ other.mark) & tenant.mask & other.mask == 0:
            raise ParamError(tenant.param + '.mark', '%s and %s of tenant %s (%s.mark) both match packets marked '
                             '0x%x: the ip rules would only work by falling through; give marks that differ in a '
                             'bit both masks test' % (mark_text(tenant.mark, tenant.mask),
                                                      mark_text(other.mark, other.mask), other.name, other.param,
                                                      tenant.mark | other.mark))


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


# Ranges no link address may come from: addresses that are never a neighbour on a veth. (The IPv4
# link-local range is allowed: the default pool is in it, and it is only ever used on the links.)
LINK_FORBIDDEN = tuple(ipaddress.ip_network(net) for net in (
    '0.0.0.0/8', '127.0.0.0/8', '224.0.0.0/4', '240.0.0.0/4',
    '::/127', '::ffff:0:0/96', 'fe80::/10', 'ff00::/8'))


def _forbidden_link_range(net):
    """The range of LINK_FORBIDDEN NET overlaps, or None."""
    return next((bad for bad in LINK_FORBIDDEN if bad.version == net.version and net.overlaps(bad)), None)


def _pool(value, param, family):
    net = parse_prefix(value, param, family=family)
    if net.num_addresses < 2 or net.prefixlen > net.max_prefixlen - 1:
        raise ParamError(param, '%s is too small for a /%d per tenant' % (net, net.max_prefixlen - 1))
    bad = _forbidden_link_range(net)
    if bad is not None:
        raise ParamError(param, '%s overlaps %s (loopback, unspecified, multicast, reserved or, for IPv6, '
                         'link-local addresses): the veth links need ordinary unicast addresses' % (net, bad))
    return net


# A tenant's prefix is routed to the tenant over its veth by firewall mark: these would take the
# host's own traffic (a default route: everything, SSH included) or mean nothing on the wire.
def _check_tenant_prefix(net, param):
    if net.prefixlen == 0:
        raise ParamError(param, '%s is a default route: every packet entering the host, its SSH included, would '
                         'be marked and sent to the tenant' % net)
    for special, what in SPECIAL_RANGES:
        if special.version == net.version and net.overlaps(special):
            raise ParamError(param, '%s overlaps %s %s; a tenant prefix is a unicast prefix routed to this host'
                             % (net, what, special))


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
    bad = _forbidden_link_range(host_if.network)
    if bad is not None:
        raise ParamError('%s.link.%s' % (param, host_key), '%s overlaps %s: the veth link needs ordinary unicast '
                         'addresses' % (host_if.network, bad))
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
        # the characters first: a length is only meaningful for a name that shows as what it is
        if not NAME_RE.fullmatch(name):
            raise ParamError(param + '.name', "%s is not a tenant name: 1-%d letters, digits, '-' or '_', "
                             "starting with a letter or digit" % (shown(name), NAME_MAX))
        if len(name) > NAME_MAX:
            raise ParamError(param + '.name', "'%s' is %d characters; a tenant name has at most %d (it also names "
                             "its mark chain and ownership marker)" % (name, len(name), NAME_MAX))
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
            _check_tenant_prefix(net, '%s.prefixes[%d]' % (param, r_index))
            if net in tenant.prefixes:
                raise ParamError('%s.prefixes[%d]' % (param, r_index), '%s is listed twice' % net)
            tenant.prefixes.append(net)
        if raw.get('mark') in (None, ''):
            raise ParamError(param + '.mark', 'is required for a present tenant (the firewall mark of its traffic)')
        tenant.mark, tenant.mask = check_mark(raw['mark'], param + '.mark')
        if tenant.mark == 0:
            raise ParamError(param + '.mark', 'must not be 0 (unmarked packets have mark 0)')
        unique('mark', '0x%x' % tenant.mark, param + '.mark', 'mark')
        _check_marks_disjoint(tenant, [t for t in tenants if t.present])
        if raw.get('table') in (None, ''):
            raise ParamError(param + '.table', "is required for a present tenant (its own routing table's number)")
        tenant.table = _table_number(raw['table'], param + '.table')
        unique('table', tenant.table, param + '.table', 'table')

        tenant.link4 = _link_pair(link, 'host_ipv4', 'tenant_ipv4', param, 4)
        if tenant.link4 is None:
            tenant.link4 = _derived_link(settings['pool4'], tenant.table)
            tenant.derived_links.add(4)
        tenant.link6 = _link_pair(link, 'host_ipv6', 'tenant_ipv6', param, 6)
        if tenant.link6 is None and 6 in tenant.families():
            tenant.link6 = _derived_link(settings['pool6'], tenant.table)
            tenant.derived_links.add(6)
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

    # Prefixes: one tenant per address, the mark rules must not compete, no link address inside.
    present = [t for t in tenants if t.present]
    owners = []
    for tenant in present:
        for r_index, net in enumerate(tenant.prefixes):
            for key, pool in (('link_pool_ipv4', settings['pool4']), ('link_pool_ipv6', settings['pool6'])):
                if pool.version == net.version and pool.overlaps(net):
                    raise ParamError(key, '%s overlaps %s of tenant %s (%s.prefixes[%d]): the link addresses '
                                     'would be routed into the tenant' % (pool, net, tenant.name, tenant.param,
                                                                          r_index))
            for other, o_index, other_net in owners:
                if net.version == other_net.version and net.overlaps(other_net):
                    raise ParamError('%s.prefixes[%d]' % (tenant.param, r_index),
                                     '%s overlaps %s of tenant %s (%s.prefixes[%d])'
                                     % (net, other_net, other.name, other.param, o_index))
            owners.append((tenant, r_index, net))
    return tenants, settings
