# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TPROXY rules: every port of a prefix sent to one transparent listener."""

from __future__ import annotations

import ipaddress

from ansible_collections.anycast.edge.plugins.module_utils import _xtables
from ansible_collections.anycast.edge.plugins.module_utils._engine import Domain, Record
from ansible_collections.anycast.edge.plugins.module_utils._errors import ParamError
from ansible_collections.anycast.edge.plugins.module_utils._validate import (
    check_chain_name, check_mark, parse_address, parse_port, parse_ports, parse_prefix)
from ansible_collections.anycast.edge.plugins.module_utils._xtables import ChainSpec, Jump, Rule

TABLE = 'mangle'
MULTIPORT_SLOTS = 15  # xt_multiport: 15 entries, a range takes two
RULE_KEYS = ('destination', 'protocol', 'ports', 'on_ip', 'on_port', 'mark')


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


def validate_rule(rule, where):
    """One rule (a dict as the module takes it) checked and normalised. Raises ParamError."""
    if not isinstance(rule, dict):
        raise ParamError(where, 'expected a dictionary with destination and on_port')
    unknown = set(rule) - set(RULE_KEYS)
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
    if getattr(net.network_address, 'ipv4_mapped', None) is not None:
        raise ParamError(where + '.destination', "'%s' is IPv4-mapped IPv6, which never arrives as an IPv6 "
                         "destination; give IPv4 prefixes as IPv4" % net)
    on_ip = parse_address(rule.get('on_ip') or default_on_ip(net.version), where + '.on_ip')
    if getattr(on_ip, 'ipv4_mapped', None) is not None:
        raise ParamError(where + '.on_ip', "'%s' is an IPv4 address written as IPv6: an IPv6 rule hands packets to "
                         "an IPv6 listener address" % on_ip)
    if on_ip.version != net.version:
        raise ParamError(where + '.on_ip', "'%s' is IPv%d but destination %s is IPv%d; TPROXY can only "
                         "hand a packet to a listener of its own family" % (on_ip, on_ip.version, net, net.version))
    mark = None
    if rule.get('mark') not in (None, ''):
        mark = check_mark(rule['mark'], where + '.mark')
    ranges = parse_ports(rule.get('ports'), where + '.ports')
    return dict(destination=net, protocol=protocol, ranges=ranges, on_ip=str(on_ip), on_port=on_port, mark=mark)


def validate_rules(rules):
    """Check every rule; return normalised dicts. Raises ParamError.

    A rule that an earlier one already matches entirely is refused: TPROXY ends a packet's way through the
    chain, so it would never be reached. Only an earlier rule whose destination contains this one's can cover
    it, so the earlier rules are indexed by (protocol, family, prefix): each rule looks up its own prefix and
    its supernets (at most 33 or 129 lookups) instead of comparing itself with every earlier rule.
    """
    checked = [validate_rule(rule, 'rules[%d]' % index) for index, rule in enumerate(rules)]
    earlier_by_net = {}     # (protocol, version, prefixlen, network as int) -> indexes of earlier rules
    for index, rule in enumerate(checked):
        net = rule['destination']
        bits, host = int(net.network_address), net.max_prefixlen
        candidates = []
        for length in range(net.prefixlen + 1):
            key = (rule['protocol'], net.version, length, bits >> (host - length))
            candidates += earlier_by_net.get(key, [])
        for earlier in sorted(candidates):
            other = checked[earlier]
            if _covers(other, rule):
                same = dict(other, destination=str(other['destination'])) == dict(rule, destination=str(
                    rule['destination']))
                raise ParamError('rules[%d]' % index, 'is the same rule as rules[%d]' % earlier if same else
                                 'is never reached: rules[%d] already sends every packet it matches to %s port %d'
                                 % (earlier, other['on_ip'], other['on_port']))
        key = (rule['protocol'], net.version, net.prefixlen, bits >> (host - net.prefixlen))
        earlier_by_net.setdefault(key, []).append(index)
    return checked


def _covers(first, second):
    """Whether every packet SECOND matches is matched by FIRST (an earlier rule)."""
    if first['protocol'] != second['protocol'] or first['destination'].version != second['destination'].version:
        return False
    if not second['destination'].subnet_of(first['destination']):
        return False
    if first['ranges'] is None:
        return True
    if second['ranges'] is None:
        return False
    return all(any(a <= lo and hi <= b for a, b in first['ranges']) for lo, hi in second['ranges'])


def default_on_ip(family):
    return '127.0.0.1' if family == 4 else '::1'


def kernel_rules(rule):
    """The chain rules one normalised rule becomes (several when its ports need more multiport slots)."""
    options = [('on-port', str(rule['on_port'])), ('on-ip', rule['on_ip'])]
    if rule['mark'] is not None:
        options.append(('tproxy-mark', '0x%x/0x%x' % rule['mark']))
    return [Rule(rule['destination'].version, 'TPROXY', options, dst=str(rule['destination']),
                 protocol=rule['protocol'], matches=matches)
            for matches in port_matches(rule['protocol'], rule['ranges'])]


def build_specs(rules, chain, present=True, built=None):
    """ChainSpecs for IPv4 and IPv6, each with its jump from PREROUTING.

    A family without rules gets no chain at all (and loses one it had), so a
    host without IPv6 rules never has ip6tables touched beyond a read.
    BUILT: each rule's kernel_rules(), if already made.
    """
    per_family = {4: [], 6: []}
    for index, rule in enumerate(rules):
        per_family[rule['destination'].version] += built[index] if built else kernel_rules(rule)
    specs = []
    for family in (4, 6):
        jump = Jump('PREROUTING', Rule(family, chain))
        specs.append(ChainSpec(family, TABLE, chain, per_family[family], [jump],
                               present=present and bool(per_family[family])))
    return specs


def as_input(rule):
    """A normalised rule in the module's input spelling (defaults left out)."""
    item = {'destination': str(rule['destination']), 'on_port': rule['on_port']}
    if rule['protocol'] != 'tcp':
        item['protocol'] = rule['protocol']
    if rule['ranges'] is not None:
        item['ports'] = [first if first == last else '%d-%d' % (first, last) for first, last in rule['ranges']]
    if rule['on_ip'] != default_on_ip(rule['destination'].version):
        item['on_ip'] = rule['on_ip']
    if rule['mark'] is not None:
        item['mark'] = '0x%x/0x%x' % rule['mark']
    return item


def _read_back(saved):
    """The module input one TPROXY rule of the kernel came from, or None if it is not such a rule."""
    parsed = _xtables.parse_rule(saved.text)
    if parsed.target != 'TPROXY' or not parsed.dst or parsed.protocol not in ('tcp', 'udp'):
        return None
    options = parsed.target_options
    item = {'destination': str(ipaddress.ip_network(parsed.dst, strict=False)), 'protocol': parsed.protocol,
            'on_port': (options.get('on-port') or [None])[0], 'on_ip': (options.get('on-ip') or [None])[0]}
    mark = (options.get('tproxy-mark') or [None])[0]
    if mark and mark not in ('0x0/0x0', '0/0'):
        item['mark'] = mark
    ports = _xtables.port_items(_xtables.parse_ports(parsed))
    if ports:
        item['ports'] = ports
    try:
        return validate_rule(item, 'rule')
    except ParamError:
        return None


def gather_chain(saved_rules, known=()):
    """(normalised rules, rules that are not ours) of one owned chain.

    Consecutive kernel rules that one input rule became (multiport split at 15
    slots) are joined back; every rule given back builds exactly the kernel's
    rules (compared by their tags). KNOWN: [(normalised rule, its kernel
    rules)] found by their tags need no parsing (a no-op run reads 1,000 rules back).
    """
    by_first_tag = {}
    for rule, built in known:
        tags = [r.tag for r in built]
        by_first_tag.setdefault(tags[0], (rule, tags))
    rules, strangers, index = [], [], 0
    while index < len(saved_rules):
        hit = by_first_tag.get(saved_rules[index].tag)
        if hit and [s.tag for s in saved_rules[index:index + len(hit[1])]] == hit[1]:
            rules.append(hit[0])
            index += len(hit[1])
            continue
        first = _read_back(saved_rules[index])
        if first is None or [r.tag for r in kernel_rules(first)] != [saved_rules[index].tag]:
            strangers.append(saved_rules[index].text)
            index += 1
            continue
        best, covered = first, 1
        for end in range(index + 2, len(saved_rules) + 1 if first['ranges'] is not None else 0):
            part = _read_back(saved_rules[end - 1])
            if part is None or part['ranges'] is None or \
                    dict(part, ranges=None) != dict(first, ranges=None):
                break
            merged = dict(first, ranges=sorted(sum([(_read_back(s)['ranges']) for s in saved_rules[index:end]], [])))
            merged = validate_rule(as_input(merged), 'rule')
            if [r.tag for r in kernel_rules(merged)] == [s.tag for s in saved_rules[index:end]]:
                best, covered = merged, end - index
        rules.append(best)
        index += covered
    return rules, strangers


class TproxyRules(Domain):
    name = 'tproxy_rule'

    def validate(self):
        self.chain = check_chain_name(self.params['chain'], 'chain')
        self.rules = validate_rules(self.params['rules'])
        self.built = [kernel_rules(rule) for rule in self.rules]
        self.present = self.params['state'] != 'absent'   # rendered: as present would
        self.specs = build_specs(self.rules, self.chain, self.present, self.built)
        self.driver = None

    def open(self):
        self.driver = _xtables.select_driver(self.module, self.params['driver'])

    def read(self):
        return _xtables.read_tables(self.driver, _xtables.spec_keys(self.specs))

    def empty(self):
        return _xtables.empty_states(self.specs)

    def plan(self, state):
        driver = self.driver.name if self.driver else self.params['driver']
        return _xtables.plan_chains(state, self.specs, driver)

    def apply(self, plan):
        _xtables.apply_chains(self.driver, plan)

    def undo(self, plan, before):
        _xtables.undo_chains(self.driver, plan)

    def _gathered(self, state):
        rules = []
        for family in (4, 6):
            table = state.get((family, TABLE))
            found, strangers = gather_chain(table.chains.get(self.chain, []) if table else [],
                                            [(r, b) for r, b in zip(self.rules, self.built)
                                             if r['destination'].version == family])
            for text in strangers:
                self.warn('chain %s (IPv%d %s) holds a rule this module did not write: %s'
                          % (self.chain, family, TABLE, text))
            rules += found
        return {'chain': self.chain, 'rules': [as_input(rule) for rule in rules]}

    def gather(self, state):
        return self._gathered(state)

    def expected(self, state, plan):
        return self._gathered(plan.predicted())

    def diff(self, state, plan):
        before, after = plan.before_lines(), plan.after_lines()
        return ('\n'.join(before) + ('\n' if before else ''), '\n'.join(after) + ('\n' if after else ''))

    def result(self, state, plan, after):
        return {'driver': self.driver.name, 'actions': plan.actions,
                'rules': dict(('ipv%d' % s.family, len(s.rules) if s.present else 0) for s in self.specs)}

    def records(self, state, plan):
        return Record(self.chain, self.recordable() if self.present else None)
