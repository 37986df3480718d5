# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TPROXY rules: every port of a prefix sent to one transparent listener."""

from __future__ import annotations

from ansible_collections.anycast.edge.plugins.module_utils._validate import (
    ParamError, check_mark, parse_address, parse_port, parse_ports, parse_prefix)
from ansible_collections.anycast.edge.plugins.module_utils._xtables import ChainSpec, Jump, Rule

TABLE = 'mangle'
MULTIPORT_SLOTS = 15  # xt_multiport: 15 entries, a range takes two


def port_matches(protocol, ranges):
    """Match clauses for a merged list of (first, last) port ranges.

    One range uses the protocol's own --dport; several use multiport,
    split into as many rules as the 15-slot limit requires.
    """
    if ranges is None:
        return [()]
    if len(ranges) == 1:
        first, last = ranges[0]
        return [((protocol, (('dport', str(first) if first == last else '%d:%d' % (first, last)),)),)]
    groups, current, used = [], [], 0
    for first, last in ranges:
        slots = 1 if first == last else 2
        if used + slots > MULTIPORT_SLOTS:
            groups.append(current)
            current, used = [], 0
        current.append(str(first) if first == last else '%d:%d' % (first, last))
        used += slots
    groups.append(current)
    return [(('multiport', (('dports', ','.join(group)),)),) for group in groups]


def validate_rules(rules):
    """Check every rule; return normalised dicts. Raises ParamError."""
    normalised = []
    for index, rule in enumerate(rules):
        where = 'rules[%d]' % index
        if not isinstance(rule, dict):
            raise ParamError(where, 'expected a dictionary with destination and on_port')
        unknown = set(rule) - {'destination', 'protocol', 'ports', 'on_ip', 'on_port', 'mark'}
        if unknown:
            raise ParamError(where, 'unknown key(s): %s' % ', '.join(sorted(unknown)))
        if rule.get('destination') in (None, ''):
            raise ParamError(where + '.destination', 'is required')
        net = parse_prefix(rule['destination'], where + '.destination')
        protocol = rule.get('protocol') or 'tcp'
        if protocol not in ('tcp', 'udp'):
            raise ParamError(where + '.protocol', "'%s' is not one of tcp, udp" % protocol)
        if rule.get('on_port') in (None, ''):
            raise ParamError(where + '.on_port', 'is required (the port the transparent listener binds)')
        on_port = parse_port(rule['on_port'], where + '.on_port')
        default_ip = '127.0.0.1' if net.version == 4 else '::1'
        on_ip = parse_address(rule.get('on_ip') or default_ip, where + '.on_ip')
        if on_ip.version != net.version:
            raise ParamError(where + '.on_ip', "'%s' is IPv%d but destination %s is IPv%d; TPROXY can only "
                             "hand a packet to a listener of its own family" % (on_ip, on_ip.version, net, net.version))
        mark = None
        if rule.get('mark') not in (None, ''):
            mark = check_mark(rule['mark'], where + '.mark')
        ranges = parse_ports(rule.get('ports'), where + '.ports')
        normalised.append(dict(destination=net, protocol=protocol, ranges=ranges,
                               on_ip=str(on_ip), on_port=on_port, mark=mark))
    return normalised


def build_specs(rules, chain, present=True):
    """ChainSpecs for IPv4 and IPv6, each with its jump from PREROUTING.

    A family without rules gets no chain at all (and loses one it had), so a
    host without IPv6 rules never has ip6tables touched beyond a read.
    """
    per_family = {4: [], 6: []}
    for rule in rules:
        family = rule['destination'].version
        options = [('on-port', str(rule['on_port'])), ('on-ip', rule['on_ip'])]
        if rule['mark'] is not None:
            options.append(('tproxy-mark', '0x%x/0x%x' % rule['mark']))
        for matches in port_matches(rule['protocol'], rule['ranges']):
            per_family[family].append(Rule(
                family, 'TPROXY', options, dst=str(rule['destination']),
                protocol=rule['protocol'], matches=matches))
    specs = []
    for family in (4, 6):
        jump = Jump('PREROUTING', Rule(family, chain))
        specs.append(ChainSpec(family, TABLE, chain, per_family[family], [jump],
                               present=present and bool(per_family[family])))
    return specs
