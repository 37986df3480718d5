# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tproxy_rule with ``driver: nft``: one base chain of ``inet anycast_edge_dp`` at the mangle priority.

Each input rule becomes two rules of the chain (named by ``chain``, hooked to
prerouting)::

    ip daddr 192.0.2.0/24 meta l4proto tcp [th dport PORTS] socket transparent 1 [meta mark set MARK] accept
    ip daddr 192.0.2.0/24 meta l4proto tcp [th dport PORTS] tproxy ip to 127.0.0.1:1234 [meta mark set MARK] accept

The first hands a packet of an established flow to the socket the proxy
already has (no tproxy lookup per packet); the second diverts a new one to
the listener. IPv4 and IPv6 rules share the one inet chain. No multiport
limit: the ports are one anonymous set.
"""

from __future__ import annotations

import ipaddress
import json

from ansible_collections.anycast.edge.plugins.module_utils import _nft_rules as nr
from ansible_collections.anycast.edge.plugins.module_utils._engine import Domain, Record
from ansible_collections.anycast.edge.plugins.module_utils._errors import ParamError
from ansible_collections.anycast.edge.plugins.module_utils._tproxy import as_input, validate_rule, validate_rules
from ansible_collections.anycast.edge.plugins.module_utils._validate import check_chain_name

MARK_ALL = 0xffffffff


def _mark_expr(mark):
    value, mask = mark
    if mask == MARK_ALL:
        new = value
    else:
        # as TPROXY's --tproxy-mark VALUE/MASK: the bits of MASK cleared, VALUE xor-ed in
        new = {'^': [{'&': [nr.meta('mark'), MARK_ALL & ~mask]}, value]}
    return {'mangle': {'key': nr.meta('mark'), 'value': new}}


def _mark_text(mark):
    value, mask = mark
    if mask == MARK_ALL:
        return ' meta mark set 0x%x' % value
    return ' meta mark set meta mark & 0x%x ^ 0x%x' % (MARK_ALL & ~mask, value)


def _ports_text(ranges):
    items = ['%d' % f if f == l else '%d-%d' % (f, l) for f, l in ranges]
    return items[0] if len(items) == 1 else '{ %s }' % ', '.join(items)


def _piece(cache, key, build):
    """(expression, its canonical text) for KEY, built and encoded once per CACHE: rules share the pieces."""
    found = cache.get(key)
    if found is None:
        value = build()
        found = cache[key] = (value, nr.canonical(value))
    return found


def kernel_rules(rule, cache=None):
    """The socket rule and the tproxy rule one normalised input rule becomes.

    CACHE (a dict kept across the rules of a call) holds the pieces many rules share (protocol, ports,
    listener, mark, verdict), each encoded once for the rules' digests.
    """
    cache = {} if cache is None else cache
    net = rule['destination']
    family = net.version
    daddr = nr.address_match(family, 'daddr', net)
    head = [(daddr, nr.canonical(daddr)),
            _piece(cache, ('l4proto', rule['protocol']), lambda: nr.match(nr.meta('l4proto'), rule['protocol']))]
    text = '%s daddr %s meta l4proto %s' % ('ip' if family == 4 else 'ip6', net, rule['protocol'])
    if rule['ranges'] is not None:
        head.append(_piece(cache, ('dport', tuple(rule['ranges'])),
                           lambda: nr.match(nr.payload('th', 'dport'), nr.ports_value(rule['ranges']))))
        text += ' th dport %s' % _ports_text(rule['ranges'])
    tail = [_piece(cache, ('mark', rule['mark']), lambda: _mark_expr(rule['mark']))] if rule['mark'] is not None else []
    tail.append(_piece(cache, ('accept',), lambda: {'accept': None}))
    mark_text = _mark_text(rule['mark']) if rule['mark'] is not None else ''
    socket = head + [_piece(cache, ('socket',), lambda: nr.match({'socket': {'key': 'transparent'}}, 1))] + tail
    on_ip = rule['on_ip'] if family == 4 else '[%s]' % rule['on_ip']
    tproxy = head + [_piece(cache, ('tproxy', family, rule['on_ip'], rule['on_port']), lambda: {'tproxy': {
        'family': 'ip' if family == 4 else 'ip6', 'addr': rule['on_ip'], 'port': rule['on_port']}})] + tail
    return [nr.NftRule([p[0] for p in socket], text + ' socket transparent 1%s accept' % mark_text, 'established',
                       [p[1] for p in socket]),
            nr.NftRule([p[0] for p in tproxy], text + ' tproxy %s to %s:%d%s accept' % (
                'ip' if family == 4 else 'ip6', on_ip, rule['on_port'], mark_text), 'diverted', [p[1] for p in tproxy])]


def _right_ports(value):
    items = value['set'] if isinstance(value, dict) and 'set' in value else [value]
    out = []
    for item in items:
        out.append('%d-%d' % tuple(item['range']) if isinstance(item, dict) else int(item))
    return out


def _parse_mark(item):
    value = item['mangle']['value']
    if isinstance(value, int):
        return '0x%x' % value
    if '^' in value:
        kept, new = value['^'][0]['&'][1], value['^'][1]
        return '0x%x/0x%x' % (new, MARK_ALL & ~kept)
    # nft stores (mark & ~MASK) ^ VALUE as (mark & (~MASK | VALUE)) | VALUE; VALUE lies within MASK
    kept, new = value['|'][0]['&'][1], value['|'][1]
    return '0x%x/0x%x' % (new, (MARK_ALL & ~kept) | new)


def parse_tproxy(expr):
    """The input rule a tproxy rule of the kernel came from, or None."""
    item = {}
    for part in expr:
        if 'match' in part:
            left, right = part['match']['left'], part['match']['right']
            if 'payload' in left and left['payload']['field'] == 'daddr':
                if isinstance(right, dict):
                    item['destination'] = '%s/%d' % (right['prefix']['addr'], right['prefix']['len'])
                else:
                    item['destination'] = str(ipaddress.ip_network(right))
            elif left.get('meta', {}).get('key') == 'l4proto':
                item['protocol'] = right
            elif 'payload' in left and left['payload']['field'] == 'dport':
                item['ports'] = _right_ports(right)
                if left['payload']['protocol'] in ('tcp', 'udp'):   # nft merges meta l4proto into it
                    item['protocol'] = left['payload']['protocol']
        elif 'tproxy' in part:
            item['on_ip'] = part['tproxy'].get('addr')
            item['on_port'] = part['tproxy'].get('port')
        elif 'mangle' in part:
            try:
                item['mark'] = _parse_mark(part)
            except (KeyError, IndexError, TypeError):
                return None
    if 'on_port' not in item:
        return None
    try:
        return validate_rule(item, 'rule')
    except ParamError:
        return None


def gather_chain(saved, known):
    """(normalised rules, texts of rules that are not ours) of the chain's rules as read."""
    by_tags = dict((tuple(r.tag for r in built), rule) for rule, built in known)
    rules, strangers, index = [], [], 0
    while index < len(saved):
        pair = tuple(r.tag for r in saved[index:index + 2])
        rule = by_tags.get(pair)
        if rule is None and len(pair) == 2:
            parsed = parse_tproxy(saved[index + 1].expr)
            if parsed is not None and tuple(r.tag for r in kernel_rules(parsed)) == pair:
                rule = parsed
        if rule is None:
            strangers.append(saved[index].expr)
            index += 1
            continue
        rules.append(rule)
        index += 2
    return rules, strangers


class NftTproxyRules(Domain):
    name = 'tproxy_rule'

    def validate(self):
        self.chain = check_chain_name(self.params['chain'], 'chain')
        self.rules = validate_rules(self.params['rules'])
        pieces = {}
        self.built = [kernel_rules(rule, pieces) for rule in self.rules]
        self.present = self.params['state'] != 'absent'
        chains = [nr.NftChain(self.chain, sum(self.built, []), 'prerouting', 'mangle')] if self.rules else []
        self.desired = nr.Desired(chains, [], [self.chain], [])
        self.driver = None
        self.applied = False

    def open(self):
        self.driver = nr.NftDriver()

    def close(self):
        if self.driver is not None:
            self.driver.close()

    def read(self):
        # A no-op is settled by the rules' tags (a cheap dump); a change, and the read-back after one, by the
        # JSON listing.
        state = None if self.applied else self.driver.unchanged(self.desired, self.present)
        return state if state is not None else self.driver.read()

    def empty(self):
        return nr.TableState()

    def plan(self, state):
        return nr.plan(state, self.desired, self.present)

    def apply(self, plan):
        self.applied = True
        nr.apply(self.driver, plan)

    def _gathered(self, state):
        saved = state.chains.get(self.chain, {}).get('rules', [])
        rules, strangers = gather_chain(saved, list(zip(self.rules, self.built)))
        for expr in strangers:
            self.warn('chain %s (%s) holds a rule this module did not write: %s'
                      % (self.chain, nr.WHERE, json.dumps(expr, sort_keys=True)))
        return {'chain': self.chain, 'rules': [as_input(rule) for rule in rules]}

    def gather(self, state):
        return self._gathered(state)

    def expected(self, state, plan):
        return self._gathered(plan.predicted)

    def diff(self, state, plan):
        before, after = plan.before_lines(), plan.after_lines()
        return ('\n'.join(before) + ('\n' if before else ''), '\n'.join(after) + ('\n' if after else ''))

    def result(self, state, plan, after):
        counts = {'ipv4': 0, 'ipv6': 0}
        if self.present:
            for rule in self.rules:
                counts['ipv%d' % rule['destination'].version] += 2
        return {'driver': 'nft', 'actions': plan.actions, 'rules': counts, 'table': nr.WHERE}

    def records(self, state, plan):
        return Record(self.chain, self.recordable() if self.present else None)
