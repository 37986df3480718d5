# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-source rate limiting of new connections with xt_hashlimit.

The chain this builds is the Pusher write-up's final one::

    INPUT  -m conntrack --ctstate NEW            -j RATE-LIMIT
    RATE-LIMIT -s EXEMPT                          -j ACCEPT       (one per exempt prefix)
    RATE-LIMIT -m hashlimit --hashlimit-upto ...  -j ACCEPT
    RATE-LIMIT -m limit --limit 1/sec             -j LOG --log-prefix ...
    RATE-LIMIT -p tcp                             -j REJECT --reject-with tcp-reset
    RATE-LIMIT                                    -j REJECT --reject-with icmp-port-unreachable

The scope (protocol, ports, destination) sits on the jump so unrelated traffic
never enters the chain. ``match: syn`` replaces the conntrack test by
``-p tcp --syn`` and keeps the scope out of conntrack with a raw-table chain of
the same name (``-j CT --notrack``), jumped to from PREROUTING and OUTPUT.

Kernel facts this module is built around (measured on this project's kernel):

* hashlimit tables are shared by name (per namespace and family). A rule that
  is replaced by one with the same name re-uses the live table *with its old
  sizing*: the new htable-max/size/expire/gcinterval only apply once no rule
  references the name. So when the hashlimit rule changes while its table
  exists, the chain is first written empty (the table is freed), then written.
* A full table does not refuse, it drops: packets of sources that get no
  entry are dropped before any later rule sees them (no REJECT, no LOG).
* Revision 3 of the match carries a name of up to 254 bytes; the iptables CLI
  silently truncates longer names, so they are refused here.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time

from ansible_collections.anycast.edge.plugins.module_utils import _xtables
from ansible_collections.anycast.edge.plugins.module_utils._engine import Domain, Plan, Record
from ansible_collections.anycast.edge.plugins.module_utils._errors import ParamError
from ansible_collections.anycast.edge.plugins.module_utils._validate import (
    check_chain_name, parse_ports, parse_prefix, parse_ssh_connection)
from ansible_collections.anycast.edge.plugins.module_utils._xtables import ChainSpec, Jump, Rule

FAMILIES = {'ipv4': (4,), 'ipv6': (6,), 'both': (4, 6)}
MODES = ('srcip', 'srcport', 'dstip', 'dstport')
UNITS = {'s': 'sec', 'sec': 'sec', 'second': 'sec',
         'm': 'min', 'min': 'min', 'minute': 'min',
         'h': 'hour', 'hour': 'hour', 'd': 'day', 'day': 'day'}
UNIT_SECONDS = {'sec': 1, 'min': 60, 'hour': 3600, 'day': 86400}
NAME_MAX = 254              # xt_hashlimit_mtinfo3.name is char[NAME_MAX] with its NUL
BURST_MAX = 10000           # libxt_hashlimit refuses larger bursts
RATE_MAX_PER_SEC = 1000000  # XT_HASHLIMIT_SCALE_v2: a faster rate rounds to zero
HTABLE_LIMIT = 1048576      # the kernel clamps htable-max/size to this
DEFAULT_HTABLE_MAX = 65536
DEFAULT_GCINTERVAL = 1000   # ms, the kernel's default
LOG_PREFIX_MAX = 29         # xt_LOG prefix is char[30]
MULTIPORT_SLOTS = 15
DEFAULT_LOG = {'rate': '1/sec', 'prefix': 'IPTables-Rejected: '}
FULL_WARNING = 0.8


# --------------------------------------------------------------------------
# Validation.

def parse_rate(value, param):
    """'50/sec', '3000/min', 50 -> (count, unit) with a canonical unit."""
    if isinstance(value, bool) or value is None:
        raise ParamError(param, 'expected a rate like 50/sec or 3000/min, got %r' % (value,))
    text = str(value).strip().lower()
    match = re.match(r'^(\d+)\s*(?:/\s*([a-z]+))?$', text)
    if not match:
        raise ParamError(param, "'%s' is not a rate; write COUNT/UNIT like 50/sec, 3000/min, 10/hour or 100/day" % value)
    count = int(match.group(1))
    unit = UNITS.get(match.group(2) or 'sec')
    if unit is None:
        raise ParamError(param, "'%s': unknown unit '%s' (sec, min, hour or day)" % (value, match.group(2)))
    if count < 1:
        raise ParamError(param, "'%s': the rate must be at least 1 per %s" % (value, unit))
    if float(count) / UNIT_SECONDS[unit] > RATE_MAX_PER_SEC:
        raise ParamError(param, "'%s' is faster than hashlimit can count (at most %d/sec)" % (value, RATE_MAX_PER_SEC))
    return count, unit


def _int_param(value, param, low, high, what):
    if isinstance(value, bool):
        raise ParamError(param, 'expected %s, got %r' % (what, value))
    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise ParamError(param, "'%s' is not %s" % (value, what))
    if not low <= number <= high:
        raise ParamError(param, '%d is out of range: %s must be %d-%d' % (number, what, low, high))
    return number


def parse_masks(value, param, families):
    """An int for every configured family, or {ipv4: N, ipv6: M}."""
    if value is None:
        return {}
    if isinstance(value, dict):
        unknown = set(value) - {'ipv4', 'ipv6'}
        if unknown:
            raise ParamError(param, 'unknown key(s) %s: use ipv4 and ipv6' % ', '.join(sorted(unknown)))
        wanted = dict((4 if key == 'ipv4' else 6, val) for key, val in value.items() if val is not None)
    else:
        wanted = dict((family, value) for family in families)
    masks = {}
    for family, mask in wanted.items():
        width = 32 if family == 4 else 128
        where = param if not isinstance(value, dict) else '%s.ipv%d' % (param, family)
        if isinstance(mask, bool):
            raise ParamError(where, 'expected a prefix length, got %r' % (mask,))
        try:
            number = int(str(mask).strip().lstrip('/'), 10)
        except ValueError:
            raise ParamError(where, "'%s' is not a prefix length" % (mask,))
        if not 0 <= number <= width:
            raise ParamError(where, '%d is longer than an IPv%d address: at most %d%s'
                             % (number, family, width, " (with family both, give {ipv4: N, ipv6: M})"
                                if not isinstance(value, dict) and len(families) > 1 else ''))
        masks[family] = number
    return masks


def check_table_name(name, param='name'):
    if not isinstance(name, str) or not name:
        raise ParamError(param, 'expected a hashlimit table name')
    if len(name.encode()) > NAME_MAX:
        raise ParamError(param, "the hashlimit table name is %d characters; the kernel allows at most %d "
                         "(the iptables CLI would silently cut it)" % (len(name.encode()), NAME_MAX))
    if not re.match(r'^[A-Za-z0-9_][A-Za-z0-9_.-]*$', name):
        raise ParamError(param, "'%s' is not a valid hashlimit table name (letters, digits, '_', '.', '-'; "
                         "it becomes a file name under /proc/net/ipt_hashlimit)" % name)
    return name


def parse_log(value):
    """False/None -> None; True -> defaults; dict -> {rate, prefix}."""
    if value is None or value is False or (isinstance(value, str) and value.lower() in ('false', 'no', 'off')):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ('true', 'yes', 'on')):
        value = {}
    if not isinstance(value, dict):
        raise ParamError('log', 'expected false, true or a dictionary with rate and prefix, got %r' % (value,))
    unknown = set(value) - {'rate', 'prefix'}
    if unknown:
        raise ParamError('log', 'unknown key(s) %s: use rate and prefix' % ', '.join(sorted(unknown)))
    rate = parse_rate(value.get('rate') or DEFAULT_LOG['rate'], 'log.rate')
    prefix = value.get('prefix')
    prefix = DEFAULT_LOG['prefix'] if prefix is None else str(prefix)
    if len(prefix.encode()) > LOG_PREFIX_MAX:
        raise ParamError('log.prefix', "'%s' is %d characters; the LOG target allows at most %d"
                         % (prefix, len(prefix.encode()), LOG_PREFIX_MAX))
    if '\n' in prefix or '"' in prefix:
        raise ParamError('log.prefix', 'must not contain newlines or double quotes')
    return {'rate': rate, 'prefix': prefix}


def _slots(ranges):
    return sum(1 if first == last else 2 for first, last in ranges)


def validate(params):
    """Check every parameter before anything is read or written; return a config dict."""
    cfg = {}
    cfg['name'] = check_table_name(params['name'])
    cfg['chain'] = check_chain_name(params['chain'], 'chain')
    cfg['families'] = FAMILIES[params['family']]
    cfg['rate'] = parse_rate(params['rate'], 'rate')
    cfg['burst'] = _int_param(params['burst'], 'burst', 1, BURST_MAX, 'a burst (number of packets)')
    modes = params['mode']
    if modes is None or modes == []:
        raise ParamError('mode', 'give at least one of %s' % ', '.join(MODES))
    if isinstance(modes, str):
        modes = [m.strip() for m in modes.split(',')]
    for index, mode in enumerate(modes):
        if mode not in MODES:
            raise ParamError('mode[%d]' % index, "'%s' is not one of %s" % (mode, ', '.join(MODES)))
    if len(set(modes)) != len(modes):
        raise ParamError('mode', 'lists a mode twice: %s' % ', '.join(modes))
    cfg['mode'] = [m for m in MODES if m in modes]   # the order iptables prints
    cfg['srcmask'] = parse_masks(params['srcmask'], 'srcmask', cfg['families'])
    cfg['dstmask'] = parse_masks(params['dstmask'], 'dstmask', cfg['families'])

    cfg['match'] = params['match']
    protocol = params['protocol']
    if cfg['match'] == 'syn':
        if protocol not in (None, 'tcp'):
            raise ParamError('protocol', "match: syn limits TCP SYNs, so protocol must be tcp (or omitted), not '%s'"
                             % protocol)
        protocol = 'tcp'
    cfg['protocol'] = protocol or 'all'
    cfg['ports'] = parse_ports(params['ports'], 'ports')
    if cfg['ports'] is not None:
        if cfg['protocol'] not in ('tcp', 'udp'):
            raise ParamError('ports', 'ports need protocol tcp or udp (protocol is %s)' % cfg['protocol'])
        if _slots(cfg['ports']) > MULTIPORT_SLOTS:
            raise ParamError('ports', 'too many ports for one rule: %d multiport slots, at most %d '
                             '(a range takes two); use ranges' % (_slots(cfg['ports']), MULTIPORT_SLOTS))

    destinations = {}
    for index, value in enumerate(params['destinations'] or []):
        net = parse_prefix(value, 'destinations[%d]' % index)
        if net in destinations.get(net.version, []):
            raise ParamError('destinations[%d]' % index, '%s is listed twice' % net)
        destinations.setdefault(net.version, []).append(net)
    cfg['destinations'] = destinations  # family -> [prefix]: one jump rule per prefix
    exempt = []
    for index, value in enumerate(params['exempt']):
        net = parse_prefix(value, 'exempt[%d]' % index)
        if net in exempt:
            raise ParamError('exempt[%d]' % index, '%s is listed twice' % net)
        if net.version not in cfg['families']:
            raise ParamError('exempt[%d]' % index, '%s is IPv%d, but family is %s: it would exempt nothing'
                             % (net, net.version, params['family']))
        exempt.append(net)
    cfg['exempt'] = exempt

    cfg['log'] = parse_log(params['log'])
    cfg['action'] = params['action']

    unit_seconds = UNIT_SECONDS[cfg['rate'][1]]
    cfg['htable_max'] = _int_param(params['htable_max'], 'htable_max', 1, HTABLE_LIMIT, 'a number of entries')
    if params['htable_size'] is not None:
        cfg['htable_size'] = _int_param(params['htable_size'], 'htable_size', 1, HTABLE_LIMIT, 'a number of buckets')
        if cfg['htable_size'] > cfg['htable_max']:
            raise ParamError('htable_size', '%d buckets for at most %d entries: the kernel would silently raise '
                             'htable_max to %d; make htable_size at most htable_max (htable_max/4 is the rule of thumb)'
                             % (cfg['htable_size'], cfg['htable_max'], cfg['htable_size']))
    else:
        cfg['htable_size'] = max(1, cfg['htable_max'] // 4)
    cfg['htable_expire'] = _int_param(params['htable_expire'] if params['htable_expire'] is not None
                                      else 1000 * unit_seconds, 'htable_expire', 1, 2 ** 31 - 1, 'milliseconds')
    cfg['htable_gcinterval'] = _int_param(params['htable_gcinterval'], 'htable_gcinterval', 1, 2 ** 31 - 1,
                                          'milliseconds')
    cfg['state'] = 'absent' if params['state'] == 'absent' else 'present'   # rendered: as present would
    cfg['ssh_guard'] = params['ssh_guard']
    check_exempt_leaves_someone_limited(cfg)
    return cfg


def check_exempt_leaves_someone_limited(cfg):
    """Refuse exempt prefixes that together cover every source of a family the chain is configured
    for: that chain would limit nobody. The exempt rules match sources whatever the destinations, so
    the scope's sources are the whole address space of the family."""
    for family in configured_families(cfg):
        everyone = ipaddress.ip_network('0.0.0.0/0' if family == 4 else '::/0')
        covered = []
        for index, net in enumerate(cfg['exempt']):
            if net.version != family:
                continue
            covered = list(ipaddress.collapse_addresses(covered + [net]))
            if covered == [everyone]:
                other = 10 - family
                instead = ('set family: ipv%d' % other if other in cfg['families']
                           else 'remove the chain (state: absent)')
                raise ParamError('exempt[%d]' % index, '%s %s every IPv%d source: the chain would limit nobody; '
                                 'to leave IPv%d unlimited, %s'
                                 % (net, 'exempts' if net == everyone else 'with the exempt prefixes before it exempts',
                                    family, family, instead))


# --------------------------------------------------------------------------
# Lockout safety.

def ssh_exposure(cfg, ssh):
    """The SSH client's host prefix if the configured scope would limit it, else None."""
    if ssh is None or cfg['state'] != 'present':
        return None
    client, _cport, server, sport = ssh
    family = server.version
    if client.version != family or family not in cfg['families']:
        return None
    if cfg['destinations'] and not any(server in net for net in cfg['destinations'].get(family, [])):
        return None
    if cfg['protocol'] not in ('tcp', 'all'):
        return None
    if cfg['ports'] is not None and not any(first <= sport <= last for first, last in cfg['ports']):
        return None
    if any(client in net for net in cfg['exempt']):
        return None
    return ipaddress.ip_network('%s/%d' % (client, 32 if family == 4 else 128))


# --------------------------------------------------------------------------
# Rules.

def _port_text(first, last):
    return str(first) if first == last else '%d:%d' % (first, last)


def port_match(protocol, ranges, direction, extra=()):
    """The match clauses for a port scope; ``direction`` is 'd' (inbound) or 's'."""
    if ranges is None:
        return ((protocol, tuple(extra)),) if extra else ()
    if len(ranges) == 1:
        return ((protocol, (('%sport' % direction, _port_text(*ranges[0])),) + tuple(extra)),)
    clauses = (('multiport', (('%sports' % direction, ','.join(_port_text(*r) for r in ranges)),)),)
    if extra:
        clauses += ((protocol, tuple(extra)),)
    return clauses


def hashlimit_options(cfg, family):
    count, unit = cfg['rate']
    opts = [('hashlimit-upto', '%d/%s' % (count, unit)),
            ('hashlimit-burst', str(cfg['burst'])),
            ('hashlimit-mode', ','.join(cfg['mode'])),
            ('hashlimit-name', cfg['name'])]
    if family in cfg['srcmask']:
        opts.append(('hashlimit-srcmask', str(cfg['srcmask'][family])))
    if family in cfg['dstmask']:
        opts.append(('hashlimit-dstmask', str(cfg['dstmask'][family])))
    # Always explicit: the table's sizing is then what was asked for, and
    # python-iptables' re-parse cannot fall back to a wrong expire.
    opts += [('hashlimit-htable-size', str(cfg['htable_size'])),
             ('hashlimit-htable-max', str(cfg['htable_max'])),
             ('hashlimit-htable-expire', str(cfg['htable_expire'])),
             ('hashlimit-htable-gcinterval', str(cfg['htable_gcinterval']))]
    return tuple(opts)


def chain_rules(cfg, family, exempt):
    """[(role, Rule)] of the limiting chain for one family."""
    rules = [('exempt', Rule(family, 'ACCEPT', src=str(net))) for net in exempt if net.version == family]
    rules.append(('accepted', Rule(family, 'ACCEPT', matches=(('hashlimit', hashlimit_options(cfg, family)),))))
    if cfg['log']:
        count, unit = cfg['log']['rate']
        rules.append(('logged', Rule(family, 'LOG', (('log-prefix', cfg['log']['prefix']),),
                                     matches=(('limit', (('limit', '%d/%s' % (count, unit)),)),))))
    unreachable = 'icmp-port-unreachable' if family == 4 else 'icmp6-port-unreachable'
    if cfg['action'] == 'drop':
        rules.append(('refused', Rule(family, 'DROP')))
    elif cfg['action'] == 'reject-icmp':
        rules.append(('refused', Rule(family, 'REJECT', (('reject-with', unreachable),))))
    else:
        if cfg['protocol'] in ('tcp', 'all'):
            rules.append(('refused', Rule(family, 'REJECT', (('reject-with', 'tcp-reset'),), protocol='tcp')))
        if cfg['protocol'] != 'tcp':
            # a TCP reset only exists for TCP: everything else gets port-unreachable
            rules.append(('refused', Rule(family, 'REJECT', (('reject-with', unreachable),))))
    return rules


def _scope(cfg, family):
    """The destination prefixes of the scope, or [None] for every destination."""
    return [str(net) for net in cfg['destinations'].get(family, [])] or [None]


def jump_rules(cfg, family):
    """INPUT jumps into the chain: one per destination prefix of the scope."""
    protocol = None if cfg['protocol'] == 'all' else cfg['protocol']
    if cfg['match'] == 'syn':
        matches = port_match('tcp', cfg['ports'], 'd', extra=(('syn', None),))
    else:
        matches = port_match(protocol, cfg['ports'], 'd') + (('conntrack', (('ctstate', 'NEW'),)),)
    return [Jump('INPUT', Rule(family, cfg['chain'], dst=dest, protocol=protocol, matches=matches))
            for dest in _scope(cfg, family)]


def notrack_jumps(cfg, family):
    """Raw-table jumps: the scope inbound (PREROUTING) and its replies (OUTPUT)."""
    jumps = []
    for dest in _scope(cfg, family):
        jumps.append(Jump('PREROUTING', Rule(family, cfg['chain'], dst=dest, protocol='tcp',
                                             matches=port_match('tcp', cfg['ports'], 'd'))))
        jumps.append(Jump('OUTPUT', Rule(family, cfg['chain'], src=dest, protocol='tcp',
                                         matches=port_match('tcp', cfg['ports'], 's'))))
    return jumps


def configured_families(cfg):
    """Families that get a chain: with destinations, only those that have one."""
    if cfg['state'] != 'present':
        return ()
    if cfg['destinations']:
        return tuple(f for f in cfg['families'] if f in cfg['destinations'])
    return cfg['families']


def build_plan(cfg, exempt):
    """(specs, roles) where roles maps family -> [(role, tag)] of the filter chain."""
    specs, roles = [], {}
    active = configured_families(cfg)
    for family in (4, 6):
        present = family in active
        rules = chain_rules(cfg, family, exempt) if present else []
        roles[family] = [(role, rule.tag) for role, rule in rules]
        specs.append(ChainSpec(family, 'filter', cfg['chain'], [rule for _role, rule in rules],
                               jump_rules(cfg, family) if present else [], present=present))
        raw_present = present and cfg['match'] == 'syn'
        specs.append(ChainSpec(family, 'raw', cfg['chain'],
                               [Rule(family, 'CT', (('notrack', None),))] if raw_present else [],
                               notrack_jumps(cfg, family) if raw_present else [], present=raw_present))
    return specs, roles


# --------------------------------------------------------------------------
# The live hashlimit tables (/proc), and conntrack's fill.

def proc_table_path(family, name):
    return '/proc/net/%s_hashlimit/%s' % ('ipt' if family == 4 else 'ip6t', name)


def table_entries(family, name):
    """Number of entries of a live hashlimit table, or None when it does not exist."""
    try:
        with open(proc_table_path(family, name)) as handle:
            return sum(1 for line in handle if line.strip())
    except (IOError, OSError):
        return None


def wait_table_gone(family, name, timeout=3.0):
    """nf_tables frees replaced expressions asynchronously; wait for the proc entry to go."""
    deadline = time.monotonic() + timeout
    while table_entries(family, name) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _read_int(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (IOError, OSError, ValueError):
        return None


def _percent(part, whole):
    return round(100.0 * part / whole, 1) if part is not None and whole else None


def conntrack_status(warn=None):
    base = '/proc/sys/net/netfilter/'
    count = _read_int(base + 'nf_conntrack_count')
    maximum = _read_int(base + 'nf_conntrack_max')
    if count is None or maximum is None:
        return None
    status = {'count': count, 'max': maximum, 'buckets': _read_int(base + 'nf_conntrack_buckets'),
              'percent': _percent(count, maximum)}
    if warn and maximum and count > FULL_WARNING * maximum:
        warn('conntrack holds %d of nf_conntrack_max %d entries (%.1f%%): once full, new connections are dropped '
             '("nf_conntrack: table full"); size it with anycast.edge.conntrack_sizing' % (count, maximum, status['percent']))
    return status


# --------------------------------------------------------------------------
# Planning, with the hashlimit table rebuilt when its settings change.

class HashlimitState(object):
    """The filter and raw tables of both families, and which live hashlimit tables of our name exist."""

    def __init__(self, tables, live):
        self.tables = tables        # {(family, table): TableState}
        self.live = live            # {family: True when /proc/net/*_hashlimit/NAME exists}


class HashlimitPlan(Plan):
    """One XtPlan, or two when a family's hashlimit table must be rebuilt: first its chain emptied, then written."""

    def __init__(self, phases, rebuild, shared):
        self.phases = phases
        self.rebuild = rebuild      # families whose live table is rebuilt
        self.shared = shared        # families whose table belongs to a rule outside our chain
        super().__init__(sum((phase.commands for phase in phases), []))

    @property
    def final(self):
        return self.phases[-1]


def needing_rebuild(cfg, specs, state):
    """(families to rebuild, families sharing their table with someone else).

    The kernel would keep a live table and its old sizing when the rule that
    uses it is replaced; emptying the chain first drops the last reference, so
    the new rule creates a fresh table.
    """
    rebuild, shared = [], []
    if cfg['state'] != 'present':
        return rebuild, shared
    for spec in specs:
        if spec.table != 'filter' or not spec.present or not state.live.get(spec.family):
            continue
        wanted = [r.tag for r in spec.rules if r.matches and r.matches[0][0] == 'hashlimit']
        table = state.tables.get((spec.family, 'filter'))
        current = [r.tag for r in (table.chains.get(spec.name, []) if table else [])]
        if not current:
            shared.append(spec.family)
        elif not set(wanted) <= set(current):
            rebuild.append(spec.family)
    return rebuild, shared


def make_plan(cfg, specs, state, driver_name):
    rebuild, shared = needing_rebuild(cfg, specs, state)
    if not rebuild:
        return HashlimitPlan([_xtables.plan_chains(state.tables, specs, driver_name)], rebuild, shared)
    emptied = [ChainSpec(s.family, s.table, s.name, [], s.jumps, present=True)
               for s in specs if s.table == 'filter' and s.family in rebuild]
    first = _xtables.plan_chains(state.tables, emptied, driver_name)
    tables = dict(state.tables)
    tables.update(first.predicted())
    return HashlimitPlan([first, _xtables.plan_chains(tables, specs, driver_name)], rebuild, shared)


def collect_counters(cfg, roles, tables):
    counters = {}
    for family in configured_families(cfg):
        table = tables.get((family, 'filter'))
        by_tag = dict((r.tag, (r.packets, r.bytes)) for r in (table.chains.get(cfg['chain'], []) if table else [])
                      if r.tag)
        sums = dict((role, {'packets': 0, 'bytes': 0}) for role in ('exempt', 'accepted', 'logged', 'refused'))
        for role, tag in roles[family]:
            packets, bytes_ = by_tag.get(tag, (0, 0))
            sums[role]['packets'] += packets
            sums[role]['bytes'] += bytes_
        counters['ipv%d' % family] = sums
    return counters


def collect_tables(cfg, warn):
    tables = {}
    for family in configured_families(cfg):
        entries = table_entries(family, cfg['name'])
        percent = _percent(entries or 0, cfg['htable_max'])
        tables['ipv%d' % family] = {'name': cfg['name'], 'path': proc_table_path(family, cfg['name']),
                                    'entries': entries or 0, 'htable_max': cfg['htable_max'],
                                    'htable_size': cfg['htable_size'], 'percent': percent}
        if entries and entries > FULL_WARNING * cfg['htable_max']:
            warn('hashlimit table %s (IPv%d) holds %d entries of htable_max %d (%.1f%%): once full, packets from new '
                 'sources are dropped before any rule sees them; raise htable_max (and htable_size = max/4)'
                 % (cfg['name'], family, entries, cfg['htable_max'], percent))
    return tables


# --------------------------------------------------------------------------
# Reading a chain back into the module's parameters (state=gathered).

def rate_candidates(text):
    """Every COUNT/UNIT equal to the rate iptables prints as TEXT ('50/sec' may have been written 3000/min)."""
    count, unit = parse_rate(text, 'rate')
    seconds = UNIT_SECONDS[unit]
    found = []
    for other in ('sec', 'min', 'hour', 'day'):
        if UNIT_SECONDS[other] >= seconds:
            found.append('%d/%s' % (count * UNIT_SECONDS[other] // seconds, other))
    return found


def _first(options, key, default=None):
    values = options.get(key) if options else None
    return values[0] if values else default


def _is_syn(parsed):
    tcp = parsed.match('tcp') or {}
    return 'syn' in tcp or tcp.get('tcp-flags') == ['FIN,SYN,RST,ACK', 'SYN']


def _chain_parts(saved_rules):
    """The parts of one family's limiting chain: exempt prefixes, the hashlimit, LOG and refusing rules."""
    parts = {'exempt': [], 'hashlimit': None, 'log': None, 'refused': [], 'stranger': []}
    for saved in saved_rules:
        parsed = _xtables.parse_rule(saved.text)
        names = [name for name, _o in parsed.matches if name != 'comment']
        if parsed.target == 'ACCEPT' and parsed.src and not names:
            parts['exempt'].append(str(ipaddress.ip_network(parsed.src, strict=False)))
        elif parsed.target == 'ACCEPT' and names == ['hashlimit']:
            parts['hashlimit'] = parsed.match('hashlimit')
        elif parsed.target == 'LOG' and names == ['limit']:
            parts['log'] = {'rate': _first(parsed.match('limit'), 'limit'),
                            'prefix': _first(parsed.target_options, 'log-prefix', '')}
        elif parsed.target in ('REJECT', 'DROP'):
            parts['refused'].append((parsed.target, parsed.protocol, _first(parsed.target_options, 'reject-with')))
        else:
            parts['stranger'].append(saved.text)
    return parts


def _jump_scope(jumps):
    """(match, protocol, ports, destinations) from the INPUT jumps of one family."""
    match, protocol, ports, destinations = 'new', None, None, []
    for saved in jumps:
        parsed = _xtables.parse_rule(saved.text)
        match = 'syn' if _is_syn(parsed) else 'new'
        protocol = parsed.protocol
        ports = _xtables.port_items(_xtables.parse_ports(parsed))
        if parsed.dst:
            destinations.append(str(ipaddress.ip_network(parsed.dst, strict=False)))
    return match, protocol, ports, destinations


def _first_if_there(items, preferred):
    return sorted(items, key=lambda item: item != preferred)


def gather_params(chain, tables, defaults, preferred=None):
    """(parameters as the module takes them, problems) of the chain CHAIN in TABLES.

    DEFAULTS: the module's parameter defaults (what is left out of the answer). PREFERRED: a validated
    configuration whose spellings are tried first (this run's input: on a no-op run they fit at once).

    iptables prints rates in its own unit (3000/min reads back as 50/sec) and
    leaves default masks out: among the spellings that mean the same, the one
    whose rules carry exactly the kernel's tags is given back.
    """
    families = [f for f in (4, 6) if tables.get((f, 'filter')) and chain in tables[(f, 'filter')].chains]
    if not families:
        return {'chain': chain, 'state': 'absent'}, []
    problems = []
    params = {'chain': chain}
    per_family = {}
    for family in families:
        table = tables[(family, 'filter')]
        parts = _chain_parts(table.chains[chain])
        parts['jumps'] = [r for r in table.chains.get('INPUT', []) if r.target == chain]
        per_family[family] = parts
        problems += parts['stranger']
    first = per_family[families[0]]
    limit = first['hashlimit']
    if limit is None:
        return {'chain': chain, 'state': 'present'}, problems + ['no hashlimit rule in chain %s' % chain]
    params.update({
        'name': _first(limit, 'hashlimit-name'),
        'burst': int(_first(limit, 'hashlimit-burst', '5')),
        'mode': _first(limit, 'hashlimit-mode', 'srcip').split(','),
        'htable_max': int(_first(limit, 'hashlimit-htable-max', str(DEFAULT_HTABLE_MAX))),
        'htable_gcinterval': int(_first(limit, 'hashlimit-htable-gcinterval', str(DEFAULT_GCINTERVAL))),
    })
    size = _first(limit, 'hashlimit-htable-size')
    expire = _first(limit, 'hashlimit-htable-expire')
    match, protocol, ports, _d = _jump_scope(first['jumps'])
    params.update({'match': match, 'protocol': protocol or 'all', 'ports': ports})
    destinations = []
    for family in families:
        destinations += _jump_scope(per_family[family]['jumps'])[3]
    params['destinations'] = destinations or None
    params['exempt'] = sum((per_family[f]['exempt'] for f in families), [])
    params['family'] = 'both' if len(families) == 2 else 'ipv%d' % families[0]
    if first['log'] is None:
        params['log'] = False
    else:
        params['log'] = {'rate': first['log']['rate'], 'prefix': first['log']['prefix']}
    refused = first['refused']
    if refused and refused[0][0] == 'DROP':
        params['action'] = 'drop'
    elif any(r[2] == 'tcp-reset' for r in refused) or params['protocol'] == 'udp':
        params['action'] = 'reject'
    else:
        params['action'] = 'reject-icmp'

    # The spellings iptables loses: the rate's unit, the LOG limit's unit, default masks.
    masks = {}
    for key in ('srcmask', 'dstmask'):
        given = dict((f, _first(per_family[f]['hashlimit'], 'hashlimit-' + key)) for f in families
                     if per_family[f]['hashlimit'] is not None)
        masks[key] = [dict((f, int(v)) for f, v in given.items() if v is not None)]
        for f in families:
            if given.get(f) is None:
                masks[key] += [_with(m, f, 32 if f == 4 else 128) for m in masks[key]]
    log_rates = rate_candidates(first['log']['rate']) if first['log'] else [None]
    rates = rate_candidates(_first(limit, 'hashlimit-upto'))
    if preferred:
        rates = _first_if_there(rates, '%d/%s' % preferred['rate'])
        if preferred['log']:
            log_rates = _first_if_there(log_rates, '%d/%s' % preferred['log']['rate'])
    for rate in rates:
        for log_rate in log_rates:
            for srcmask in masks['srcmask']:
                for dstmask in masks['dstmask']:
                    candidate = dict(params, rate=rate, srcmask=_mask_param(srcmask, families),
                                     dstmask=_mask_param(dstmask, families))
                    if log_rate:
                        candidate['log'] = dict(candidate['log'], rate=log_rate)
                    unit = UNIT_SECONDS[parse_rate(rate, 'rate')[1]]
                    if expire is not None and int(expire) != 1000 * unit:
                        candidate['htable_expire'] = int(expire)
                    if size is not None and int(size) != max(1, candidate['htable_max'] // 4):
                        candidate['htable_size'] = int(size)
                    if _tags_match(candidate, defaults, chain, tables):
                        return _tidy(candidate, defaults), problems
    return _tidy(dict(params, rate=_first(limit, 'hashlimit-upto')), defaults), problems + [
        'chain %s holds rules this module would not write from any parameters' % chain]


def _with(mapping, key, value):
    out = dict(mapping)
    out[key] = value
    return out


def _mask_param(masks, families):
    if not masks:
        return None
    if len(families) == 1:
        return masks.get(families[0])
    return dict(('ipv%d' % f, v) for f, v in sorted(masks.items()))


def _tags_match(candidate, defaults, chain, tables):
    try:
        cfg = validate(dict(defaults, **candidate))
    except ParamError:
        return False
    specs, _roles = build_plan(cfg, cfg['exempt'])
    for spec in specs:
        table = tables.get((spec.family, spec.table))
        chains = table.chains if table else {}
        if not spec.present:
            if spec.table == 'filter' and chain in chains:
                return False
            continue
        if [r.tag for r in chains.get(spec.name, [])] != [r.tag for r in spec.rules]:
            return False
        for jump in spec.jumps:
            if jump.rule.tag not in [r.tag for r in chains.get(jump.from_chain, [])]:
                return False
    return True


def _tidy(params, defaults):
    """Leave out what equals the module's default."""
    out = dict((k, v) for k, v in params.items() if v is not None and defaults.get(k, object()) != v)
    if params.get('protocol') == 'all' and defaults.get('protocol') is None:
        out.pop('protocol', None)
    if defaults.get('log') is True and params.get('log') == DEFAULT_LOG:
        out.pop('log', None)
    out['chain'] = params['chain']
    return out


# --------------------------------------------------------------------------
# The domain.

class Hashlimit(Domain):
    name = 'hashlimit'
    nft = False             # the nftables data plane (_nft_hashlimit.NftHashlimit)

    def validate(self):
        if self.params.get('synproxy') is not None and not self.nft:
            raise ParamError('synproxy', 'is an option of driver: nft only (the nftables synproxy statement); this '
                             'run uses driver: %s%s: set driver: nft, or leave synproxy out'
                             % (self.params['driver'], ', which picks an iptables driver on this host'
                                if self.params['driver'] == 'auto' else ''))
        cfg = validate(self.params)
        self.cfg = cfg
        self.exempt = list(cfg['exempt'])
        self.ssh_exempt = None
        if cfg['ssh_guard'] != 'ignore' and self.params['state'] not in ('gathered', 'rendered'):
            exposed = ssh_exposure(cfg, parse_ssh_connection(os.environ.get('SSH_CONNECTION')))
            if exposed is not None and cfg['ssh_guard'] == 'fail':
                raise ParamError('exempt', 'this scope would rate-limit the SSH connection Ansible is using (from %s); '
                                 'add %s to exempt, narrow ports/destinations, or set ssh_guard: exempt (exempt it '
                                 'automatically) or ssh_guard: ignore' % (exposed.network_address, exposed))
            if exposed is not None:
                self.exempt.append(exposed)
                self.ssh_exempt = str(exposed)
        self.specs, self.roles = build_plan(cfg, self.exempt)
        self.driver = None
        self.apply_warnings = []

    def open(self):
        self.driver = _xtables.select_driver(self.module, self.params['driver'])

    def read(self):
        keys = [(family, table) for family in (4, 6) for table in ('filter', 'raw')]
        live = dict((family, table_entries(family, self.cfg['name']) is not None) for family in (4, 6))
        return HashlimitState(_xtables.read_tables(self.driver, keys), live)

    def empty(self):
        return HashlimitState(_xtables.empty_states(self.specs), {})

    def plan(self, state):
        return make_plan(self.cfg, self.specs, state, self.driver.name if self.driver else self.params['driver'])

    def apply(self, plan):
        if len(plan.phases) > 1:
            _xtables.apply_chains(self.driver, plan.phases[0])
            for family in plan.rebuild:
                if not wait_table_gone(family, self.cfg['name']):
                    self.apply_warnings.append(
                        'hashlimit table %s (IPv%d) is still used by another rule, so it keeps its old settings; '
                        'give this chain a table name of its own' % (self.cfg['name'], family))
        _xtables.apply_chains(self.driver, plan.final)

    def undo(self, plan, before):
        # the first phase starts from the state before the run, whichever phase wrote a table
        touched = set((t.family, t.table) for phase in plan.phases for t in phase.tables if t.ops)
        _xtables.undo_chains(self.driver, plan.phases[0], touched)

    def _gathered(self, tables):
        defaults = dict((key, spec.get('default')) for key, spec in self.module.argument_spec.items())
        defaults['state'] = 'present'
        params, problems = gather_params(self.cfg['chain'], tables, defaults, self.cfg)
        for problem in problems:
            self.warn('chain %s: %s' % (self.cfg['chain'], problem))
        return params

    def gather(self, state):
        return self._gathered(state.tables)

    def expected(self, state, plan):
        tables = dict(state.tables)
        tables.update(plan.final.predicted())
        return self._gathered(tables)

    def diff(self, state, plan):
        before, after = plan.phases[0].before_lines(), plan.final.after_lines()
        return ('\n'.join(before) + ('\n' if before else ''), '\n'.join(after) + ('\n' if after else ''))

    def result(self, state, plan, after):
        cfg = self.cfg
        for family in plan.shared:
            self.warn('hashlimit table %s (IPv%d) already exists for a rule outside chain %s: the new rule shares it '
                      'and its settings, whatever this task asks; give this chain a table name of its own'
                      % (cfg['name'], family, cfg['chain']))
        for warning in self.apply_warnings:
            self.warn(warning)
        notes = ['IPv%d filter: hashlimit table %s is rebuilt (its rule changed): chain %s emptied first, '
                 'then written' % (family, cfg['name'], cfg['chain']) for family in plan.rebuild]
        result = {'actions': notes + plan.final.actions, 'driver': self.driver.name, 'ssh_exempt': self.ssh_exempt,
                  'rules': dict(('ipv%d' % s.family, len(s.rules) if s.present else 0)
                                for s in self.specs if s.table == 'filter')}
        if cfg['state'] == 'present':
            result['counters'] = collect_counters(cfg, self.roles, (after or state).tables)
            result['hashlimit_table'] = collect_tables(cfg, self.warn)
        result['conntrack'] = conntrack_status(self.warn)
        return result

    def records(self, state, plan):
        if self.cfg['state'] != 'present':
            return Record(self.cfg['chain'], None)
        recorded = self.recordable()
        if self.ssh_exempt:
            # At boot there is no SSH connection to detect: record the exemption it got.
            recorded['exempt'] = list(recorded['exempt']) + [self.ssh_exempt]
        return Record(self.cfg['chain'], recorded)
