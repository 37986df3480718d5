# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hashlimit with ``driver: nft``: per-source limits with a dynamic set of ``inet anycast_edge_dp``.

For ``chain: RATE-LIMIT`` and ``name: conn_rate_limit`` the module owns::

    chain RATE-LIMIT            (hook input, priority filter)  SCOPE ct state new | tcp syn  jump RATE-LIMIT-v4 / -v6
    chain RATE-LIMIT-v4         ip saddr @conn_rate_limit_exempt_v4 counter accept          (exempt)
                                update @conn_rate_limit_v4 { KEY limit rate RATE burst N packets } counter accept  (accepted)
                                goto RATE-LIMIT-v4-refuse
    chain RATE-LIMIT-v4-refuse  limit rate 1/second counter log prefix "..."                (logged, sampled)
                                meta l4proto tcp counter reject with tcp reset              (refused)
                                counter reject                                              (refused)
    set conn_rate_limit_v4      KEY's type, size htable_max, timeout htable_expire (dynamic: one element per key)
    set conn_rate_limit_exempt_v4   the exempt prefixes (interval)

KEY is ``mode`` as a concatenation (``ip saddr & MASK . th dport``; ``srcmask``
and ``dstmask`` mask the addresses). An element's timeout is refreshed by
every packet of its key (``update``), as a hashlimit entry lives while it is
used. A set that is full cannot take a new key: that key's packets go on to
the refusing chain (logged and refused, where xt_hashlimit drops them
silently). The limit is the accepting test (``limit rate``, not ``over``):
the kernel evaluates an element's limit on every update of it, so a second
rule that only looked the key up would spend the bucket twice.

``match: syn`` also owns ``RATE-LIMIT-notrack`` (prerouting) and
``RATE-LIMIT-notrack-out`` (output) at the raw priority, which put the scope
and its replies on ``notrack``: a refused SYN leaves no conntrack entry.
``synproxy`` (``_nft_synproxy``) puts its rules first in those chains and in
``RATE-LIMIT``.
"""

from __future__ import annotations

import ipaddress

from ansible_collections.anycast.edge.plugins.module_utils import _nft_rules as nr
from ansible_collections.anycast.edge.plugins.module_utils import _nft_synproxy as sp
from ansible_collections.anycast.edge.plugins.module_utils._errors import ParamError
from ansible_collections.anycast.edge.plugins.module_utils._hashlimit import (
    DEFAULT_GCINTERVAL, FULL_WARNING, Hashlimit, _percent, _tidy, conntrack_status, configured_families)

UNIT_NAMES = {'sec': 'second', 'min': 'minute', 'hour': 'hour', 'day': 'day'}
SET_NAME_MAX = 255 - len('_exempt_v4')      # NFT_SET_MAXNAMELEN less its NUL, less our suffix
LOG_BURST = 5                               # the burst of iptables' -m limit, which the LOG rule had
SYN = nr.match({'&': [nr.payload('tcp', 'flags'), ['fin', 'syn', 'rst', 'ack']]}, 'syn')
CT_NEW = nr.match({'ct': {'key': 'state'}}, 'new', 'in')


def check_nft_params(params, cfg):
    """Refuse what only the iptables drivers have, naming it; nothing is read yet."""
    if params.get('htable_size') is not None:
        raise ParamError('htable_size', 'is an option of the iptables drivers only (xt_hashlimit\'s hash buckets); '
                         'an nftables set sizes its own hash: leave it out with driver: nft')
    if params.get('htable_gcinterval') not in (None, DEFAULT_GCINTERVAL):
        raise ParamError('htable_gcinterval', 'is an option of the iptables drivers only (xt_hashlimit\'s garbage '
                         'collection); nftables expires set elements itself: leave it out with driver: nft')
    if cfg['htable_expire'] % 1000:
        raise ParamError('htable_expire', '%d ms: driver: nft sets element timeouts in whole seconds; give a '
                         'multiple of 1000' % cfg['htable_expire'])
    if len(cfg['name']) > SET_NAME_MAX:
        raise ParamError('name', 'driver: nft names its sets after it: at most %d characters' % SET_NAME_MAX)


def _family_word(family):
    return 'ip' if family == 4 else 'ip6'


def _masked(family, field, bits):
    """``ip saddr & 255.255.255.0`` (the address itself without a mask or with a full one)."""
    address = nr.payload(_family_word(family), field)
    width = 32 if family == 4 else 128
    if bits is None or bits == width:
        return address, '%s %s' % (_family_word(family), field)
    mask = str(ipaddress.ip_network('%s/%d' % ('0.0.0.0' if family == 4 else '::', bits)).netmask)
    return {'&': [address, mask]}, '%s %s & %s' % (_family_word(family), field, mask)


def set_key(cfg, family):
    """(JSON key expression, key type, text) of the meter set: mode as a concatenation."""
    parts = []
    for mode in cfg['mode']:
        if mode == 'srcip':
            expr, text = _masked(family, 'saddr', cfg['srcmask'].get(family))
            parts.append((expr, 'ipv4_addr' if family == 4 else 'ipv6_addr', text))
        elif mode == 'dstip':
            expr, text = _masked(family, 'daddr', cfg['dstmask'].get(family))
            parts.append((expr, 'ipv4_addr' if family == 4 else 'ipv6_addr', text))
        else:
            field = 'sport' if mode == 'srcport' else 'dport'
            parts.append((nr.payload('th', field), 'inet_service', 'th %s' % field))
    if len(parts) == 1:
        return parts[0]
    return {'concat': [p[0] for p in parts]}, [p[1] for p in parts], ' . '.join(p[2] for p in parts)


def _ports_text(ranges):
    items = ['%d' % f if f == l else '%d-%d' % (f, l) for f, l in ranges]
    return items[0] if len(items) == 1 else '{ %s }' % ', '.join(items)


def _scope(cfg, family, field='daddr', port_field='dport', protocol=None, ports='scope'):
    """[(JSON matches, text)] of the scope, one per destination prefix (PORTS: other ports than the scope's)."""
    protocol = protocol or (None if cfg['protocol'] == 'all' else cfg['protocol'])
    ports = cfg['ports'] if ports == 'scope' else ports
    out = []
    for dest in cfg['destinations'].get(family, []) or [None]:
        if dest is None:
            expr, text = [nr.nfproto(family)], ['meta nfproto ipv%d' % family]
        else:
            expr, text = [nr.address_match(family, field, dest)], ['%s %s %s' % (_family_word(family), field, dest)]
        if protocol:
            expr.append(nr.match(nr.meta('l4proto'), protocol))
            text.append('meta l4proto %s' % protocol)
        if ports is not None:
            expr.append(nr.match(nr.payload('th', port_field), nr.ports_value(ports)))
            text.append('th %s %s' % (port_field, _ports_text(ports)))
        out.append((expr, ' '.join(text)))
    return out


def meter_name(cfg, family):
    return '%s_v%d' % (cfg['name'], family)


def exempt_name(cfg, family):
    return '%s_exempt_v%d' % (cfg['name'], family)


def chain_names(chain):
    return {'base': chain, 4: chain + '-v4', 6: chain + '-v6', 'refuse4': chain + '-v4-refuse',
            'refuse6': chain + '-v6-refuse', 'notrack': chain + '-notrack', 'notrack_out': chain + '-notrack-out'}


def family_chains(cfg, family, exempt, names):
    """The limiting chain of one family and its refusing chain."""
    key, _type, key_text = set_key(cfg, family)
    meter = meter_name(cfg, family)
    refuse = names['refuse%d' % family]
    rules = []
    if [net for net in exempt if net.version == family]:
        rules.append(nr.NftRule([nr.match(nr.payload(_family_word(family), 'saddr'), '@' + exempt_name(cfg, family)),
                                 nr.counter(), {'accept': None}],
                                '%s saddr @%s counter accept' % (_family_word(family), exempt_name(cfg, family)),
                                'exempt'))
    count, unit = cfg['rate']
    rules.append(nr.NftRule([{'set': {'op': 'update', 'elem': key, 'set': '@' + meter, 'stmt': [
        {'limit': {'rate': count, 'burst': cfg['burst'], 'per': UNIT_NAMES[unit]}}]}}, nr.counter(), {'accept': None}],
        'update @%s { %s limit rate %d/%s burst %d packets } counter accept'
        % (meter, key_text, count, UNIT_NAMES[unit], cfg['burst']), 'accepted'))
    # over the limit, or no element to be had (the set is full): refused
    rules.append(nr.NftRule([{'goto': {'target': refuse}}], 'goto %s' % refuse))
    refusing = []
    if cfg['log']:
        log_count, log_unit = cfg['log']['rate']
        refusing.append(nr.NftRule([{'limit': {'rate': log_count, 'burst': LOG_BURST, 'per': UNIT_NAMES[log_unit]}},
                                    nr.counter(), {'log': {'prefix': cfg['log']['prefix']}}],
                                   'limit rate %d/%s counter log prefix "%s"'
                                   % (log_count, UNIT_NAMES[log_unit], cfg['log']['prefix']), 'logged'))
    if cfg['action'] == 'drop':
        refusing.append(nr.NftRule([nr.counter(), {'drop': None}], 'counter drop', 'refused'))
    elif cfg['action'] == 'reject-icmp':
        refusing.append(nr.NftRule([nr.counter(), {'reject': {'type': 'icmpx', 'expr': 'port-unreachable'}}],
                                   'counter reject', 'refused'))
    else:
        if cfg['protocol'] in ('tcp', 'all'):
            refusing.append(nr.NftRule([nr.match(nr.meta('l4proto'), 'tcp'), nr.counter(),
                                        {'reject': {'type': 'tcp reset'}}],
                                       'meta l4proto tcp counter reject with tcp reset', 'refused'))
        if cfg['protocol'] != 'tcp':
            refusing.append(nr.NftRule([nr.counter(), {'reject': {'type': 'icmpx', 'expr': 'port-unreachable'}}],
                                       'counter reject', 'refused'))
    return nr.NftChain(names[family], rules), nr.NftChain(refuse, refusing)


def desired(cfg, exempt):
    """(nr.Desired, {tag: role}) for a validated configuration."""
    names = chain_names(cfg['chain'])
    families = configured_families(cfg)
    base, chains, sets, notrack, notrack_out = [], [], [], [], []
    for family in families:
        if cfg.get('synproxy'):
            first = sp.rules(lambda f, field, port_field, ports: _scope(cfg, f, field, port_field, 'tcp', ports),
                             family, cfg['synproxy'])
            base += first['base']
            notrack += first['notrack']
            notrack_out += first['notrack_out']
        condition = SYN if cfg['match'] == 'syn' else CT_NEW
        for expr, text in _scope(cfg, family, protocol='tcp' if cfg['match'] == 'syn' else None):
            base.append(nr.NftRule(expr + [condition, {'jump': {'target': names[family]}}],
                                   '%s %s jump %s' % (text, 'tcp flags syn / fin,syn,rst,ack' if cfg['match'] == 'syn'
                                                      else 'ct state new', names[family])))
        chains += list(family_chains(cfg, family, exempt, names))
        _expr, key_type, key_text = set_key(cfg, family)
        # 'dynamic' is not written: nft 1.0.6's JSON parser does not know the word, and nft marks a set
        # dynamic itself when a rule updates it from the packet path
        sets.append(nr.NftSet(meter_name(cfg, family), key_type, ['timeout'], cfg['htable_max'],
                              cfg['htable_expire'] // 1000,
                              text=' { type %s; size %d; flags dynamic,timeout; timeout %ds; }'
                              % (key_type if isinstance(key_type, str) else ' . '.join(key_type),
                                 cfg['htable_max'], cfg['htable_expire'] // 1000)))
        mine = [net for net in exempt if net.version == family]
        if mine:
            sets.append(nr.NftSet(exempt_name(cfg, family), 'ipv4_addr' if family == 4 else 'ipv6_addr',
                                  ['interval'], elements=mine,
                                  text=' { flags interval; elements = { %s } }' % ', '.join(str(n) for n in mine)))
        if cfg['match'] == 'syn':
            for expr, text in _scope(cfg, family, protocol='tcp'):
                notrack.append(nr.NftRule(expr + [{'notrack': None}], text + ' notrack'))
            for expr, text in _scope(cfg, family, 'saddr', 'sport', protocol='tcp'):
                notrack_out.append(nr.NftRule(expr + [{'notrack': None}], text + ' notrack'))
    wanted = []
    if families:
        # the targets first: a jump never refers to a chain the batch has not made yet
        wanted = [c for c in chains if c.name.endswith('-refuse')] + [c for c in chains if not c.name.endswith('-refuse')]
        wanted.append(nr.NftChain(names['base'], base, 'input', 'filter'))
        if notrack:
            wanted.append(nr.NftChain(names['notrack'], notrack, 'prerouting', 'raw'))
            wanted.append(nr.NftChain(names['notrack_out'], notrack_out, 'output', 'raw'))
    roles = {}
    for chain in wanted:
        for rule in chain.rules:
            if rule.role:
                roles[rule.tag] = rule.role
    owned_chains = [names[k] for k in ('base', 4, 'refuse4', 6, 'refuse6', 'notrack', 'notrack_out')]
    owned_sets = [f(cfg, family) for family in (4, 6) for f in (meter_name, exempt_name)]
    return nr.Desired(wanted, sets, owned_chains, owned_sets), roles


def _family_of(rule):
    """4 or 6: the family a rule of the base chain matches (its first match is nfproto or an address)."""
    first = rule.expr[0]['match']
    if first['left'] == nr.meta('nfproto'):
        return 4 if first['right'] == 'ipv4' else 6
    return 4 if first['left']['payload']['protocol'] == 'ip' else 6


class NftHashlimit(Hashlimit):
    """The hashlimit module's domain on the nft data plane (validation and SSH guard are Hashlimit's)."""

    nft = True

    def validate(self):
        super().validate()
        check_nft_params(self.params, self.cfg)
        self.cfg['synproxy'] = sp.parse_synproxy(self.params, self.cfg)
        self.desired, self.nft_roles = desired(self.cfg, self.exempt)
        self.names = chain_names(self.cfg['chain'])

    def open(self):
        self.driver = nr.NftDriver()

    def close(self):
        if self.driver is not None:
            self.driver.close()

    def _synproxied(self):
        return bool(self.cfg.get('synproxy')) and self.cfg['state'] == 'present'

    def read(self):
        state = self.driver.read()
        state.sysctls = sp.read_sysctls() if self._synproxied() else {}
        return state

    def empty(self):
        return nr.TableState()

    def plan(self, state):
        nft_plan = nr.plan(state, self.desired, self.cfg['state'] == 'present')
        # synproxy's namespace settings: written before the batch, in the same plan
        nft_plan.sysctl_writes = sp.wanted_writes(self.cfg['synproxy'], getattr(state, 'sysctls', {})) \
            if self._synproxied() else []
        if nft_plan.sysctl_writes:
            nft_plan.commands = [sp.command(key, new) for key, _now, new in nft_plan.sysctl_writes] + nft_plan.commands
            nft_plan.actions = ['sysctl %s: %s -> %d (synproxy needs it)' % (key, 'unreadable' if now is None else now,
                                                                             new)
                                for key, now, new in nft_plan.sysctl_writes] + nft_plan.actions
        return nft_plan

    def apply(self, plan):
        writes = getattr(plan, 'sysctl_writes', [])
        sp.write_sysctls(writes)
        try:
            nr.apply(self.driver, plan)
        except Exception:
            sp.undo_sysctls(writes)
            raise

    def _gathered(self, tables):
        """The parameters, when the kernel holds exactly what they make; else what is there, with a warning."""
        if self.names['base'] not in tables.chains:
            return {'chain': self.cfg['chain'], 'state': 'absent'}
        if self.cfg['state'] == 'present' and not nr.plan(tables, self.desired).changed:
            defaults = dict((key, spec.get('default')) for key, spec in self.module.argument_spec.items())
            defaults['state'] = 'present'
            recorded = dict(self.recordable(), state='present')
            recorded.pop('netns', None)
            return _tidy(recorded, defaults)
        if self.cfg['state'] == 'present':
            self.warn('chain %s (%s) does not hold what these parameters make; driver: nft gives back the '
                      'parameters only for a chain that matches them' % (self.cfg['chain'], nr.WHERE))
        return {'chain': self.cfg['chain'], 'state': 'present'}

    def gather(self, state):
        return self._gathered(state)

    def expected(self, state, plan):
        return self._gathered(plan.predicted)

    def diff(self, state, plan):
        before, after = plan.before_lines(), plan.after_lines()
        if self._synproxied():
            now = getattr(state, 'sysctls', {})
            new = dict((key, value) for key, _now, value in plan.sysctl_writes)
            for key in sorted(now):
                before.append('sysctl %s = %s' % (key, now[key]))
                after.append('sysctl %s = %s' % (key, new.get(key, now[key])))
        return ('\n'.join(before) + ('\n' if before else ''), '\n'.join(after) + ('\n' if after else ''))

    def result(self, state, plan, after):
        cfg = self.cfg
        current = after if after is not None else plan.predicted
        result = {'actions': plan.actions, 'driver': 'nft', 'ssh_exempt': self.ssh_exempt, 'table': nr.WHERE,
                  'rules': dict(('ipv%d' % f, len(current.chains.get(self.names[f], {}).get('rules', [])))
                                for f in (4, 6))}
        if cfg['state'] == 'present':
            result['counters'] = self.counters(after or state)
            result['hashlimit_table'] = self.fill(after or state)
        result['conntrack'] = conntrack_status(self.warn)
        return result

    def counters(self, state):
        out = {}
        for family in configured_families(self.cfg):
            sums = nr.counters(state, [self.names[family], self.names['refuse%d' % family]], self.nft_roles)
            for role in ('exempt', 'accepted', 'logged', 'refused'):
                sums.setdefault(role, {'packets': 0, 'bytes': 0})
            if self.cfg.get('synproxy'):
                sums.update(self._synproxy_counters(state, family))
            out['ipv%d' % family] = sums
        return out

    def _synproxy_counters(self, state, family):
        """{synproxy, invalid}: this family's synproxy rules of the base chain (it holds both families)."""
        tags = set(rule.tag for chain in self.desired.chains if chain.name == self.names['base']
                   for rule in chain.rules if rule.role and _family_of(rule) == family)
        roles = dict((tag, self.nft_roles[tag]) for tag in tags)
        sums = nr.counters(state, [self.names['base']], roles)
        for role in ('synproxy', 'invalid'):
            sums.setdefault(role, {'packets': 0, 'bytes': 0})
        return sums

    def fill(self, state):
        out = {}
        for family in configured_families(self.cfg):
            name = meter_name(self.cfg, family)
            entries = state.elements(name)
            percent = _percent(entries, self.cfg['htable_max'])
            out['ipv%d' % family] = {'name': name, 'set': '%s %s' % (nr.WHERE, name), 'entries': entries,
                                     'htable_max': self.cfg['htable_max'], 'percent': percent}
            if entries > FULL_WARNING * self.cfg['htable_max']:
                self.warn('nftables set %s (%s) holds %d elements of its size %d (%.1f%%): once full, packets from '
                          'new sources are dropped; raise htable_max' % (name, nr.WHERE, entries,
                                                                         self.cfg['htable_max'], percent))
        return out
