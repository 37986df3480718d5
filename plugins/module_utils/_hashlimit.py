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

import ctypes
import ipaddress
import re
import time

from ansible_collections.anycast.edge.plugins.module_utils._validate import (
    ParamError, check_chain_name, parse_ports, parse_prefix)
from ansible_collections.anycast.edge.plugins.module_utils import _xtables
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
    cfg['families'] = FAMILIES[params.get('family') or 'both']
    cfg['rate'] = parse_rate(params['rate'], 'rate')
    cfg['burst'] = _int_param(params['burst'], 'burst', 1, BURST_MAX, 'a burst (number of packets)')
    modes = params.get('mode')
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
    cfg['srcmask'] = parse_masks(params.get('srcmask'), 'srcmask', cfg['families'])
    cfg['dstmask'] = parse_masks(params.get('dstmask'), 'dstmask', cfg['families'])

    cfg['match'] = params.get('match') or 'new'
    protocol = params.get('protocol')
    if cfg['match'] == 'syn':
        if protocol not in (None, 'tcp'):
            raise ParamError('protocol', "match: syn limits TCP SYNs, so protocol must be tcp (or omitted), not '%s'"
                             % protocol)
        protocol = 'tcp'
    cfg['protocol'] = protocol or 'all'
    cfg['ports'] = parse_ports(params.get('ports'), 'ports')
    if cfg['ports'] is not None:
        if cfg['protocol'] not in ('tcp', 'udp'):
            raise ParamError('ports', 'ports need protocol tcp or udp (protocol is %s)' % cfg['protocol'])
        if _slots(cfg['ports']) > MULTIPORT_SLOTS:
            raise ParamError('ports', 'too many ports for one rule: %d multiport slots, at most %d '
                             '(a range takes two); use ranges' % (_slots(cfg['ports']), MULTIPORT_SLOTS))

    destinations = {}
    for index, value in enumerate(params.get('destinations') or []):
        net = parse_prefix(value, 'destinations[%d]' % index)
        if net in destinations.get(net.version, []):
            raise ParamError('destinations[%d]' % index, '%s is listed twice' % net)
        destinations.setdefault(net.version, []).append(net)
    cfg['destinations'] = destinations  # family -> [prefix]: one jump rule per prefix
    exempt = []
    for index, value in enumerate(params.get('exempt') or []):
        net = parse_prefix(value, 'exempt[%d]' % index)
        if net in exempt:
            raise ParamError('exempt[%d]' % index, '%s is listed twice' % net)
        exempt.append(net)
    cfg['exempt'] = exempt

    cfg['log'] = parse_log(params.get('log', True))
    cfg['action'] = params.get('action') or 'reject'

    unit_seconds = UNIT_SECONDS[cfg['rate'][1]]
    cfg['htable_max'] = _int_param(params['htable_max'] if params.get('htable_max') is not None
                                   else DEFAULT_HTABLE_MAX, 'htable_max', 1, HTABLE_LIMIT, 'a number of entries')
    if params.get('htable_size') is not None:
        cfg['htable_size'] = _int_param(params['htable_size'], 'htable_size', 1, HTABLE_LIMIT, 'a number of buckets')
        if cfg['htable_size'] > cfg['htable_max']:
            raise ParamError('htable_size', '%d buckets for at most %d entries: the kernel would silently raise '
                             'htable_max to %d; make htable_size at most htable_max (htable_max/4 is the rule of thumb)'
                             % (cfg['htable_size'], cfg['htable_max'], cfg['htable_size']))
    else:
        cfg['htable_size'] = max(1, cfg['htable_max'] // 4)
    cfg['htable_expire'] = _int_param(params['htable_expire'] if params.get('htable_expire') is not None
                                      else 1000 * unit_seconds, 'htable_expire', 1, 2 ** 31 - 1, 'milliseconds')
    cfg['htable_gcinterval'] = _int_param(params['htable_gcinterval'] if params.get('htable_gcinterval') is not None
                                          else DEFAULT_GCINTERVAL, 'htable_gcinterval', 1, 2 ** 31 - 1, 'milliseconds')
    cfg['state'] = params.get('state') or 'present'
    cfg['ssh_guard'] = params.get('ssh_guard') or 'fail'
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
# Applying, with the hashlimit table rebuilt when its settings change.

def proc_table_path(family, name):
    return '/proc/net/%s_hashlimit/%s' % ('ipt' if family == 4 else 'ip6t', name)


def table_entries(family, name):
    """Number of entries of a live hashlimit table, or None when it does not exist."""
    try:
        with open(proc_table_path(family, name)) as handle:
            return sum(1 for line in handle if line.strip())
    except (IOError, OSError):
        return None


def families_needing_rebuild(driver, cfg, specs):
    """Families whose hashlimit rule changes while a table of that name is alive.

    The kernel would keep the live table and its old sizing; emptying the chain
    first drops the last reference, so the new rule creates a fresh table.
    """
    rebuild, shared = [], []
    for spec in specs:
        if spec.table != 'filter' or not spec.present:
            continue
        if table_entries(spec.family, cfg['name']) is None:
            continue
        wanted = [r.tag for r in spec.rules if r.matches and r.matches[0][0] == 'hashlimit']
        current = [r.tag for r in driver.read(spec.family, 'filter').chains.get(spec.name, []) or []]
        if not current:
            shared.append(spec.family)      # the table belongs to a rule outside this chain
        elif not set(wanted) <= set(current):
            rebuild.append(spec.family)
    return rebuild, shared


def wait_table_gone(family, name, timeout=3.0):
    """nf_tables frees replaced expressions asynchronously; wait for the proc entry to go."""
    deadline = time.monotonic() + timeout
    while table_entries(family, name) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def apply(driver, cfg, specs, check_mode):
    """sync_chains, in two steps for families whose hashlimit table must be rebuilt."""
    rebuild, shared = families_needing_rebuild(driver, cfg, specs) if cfg['state'] == 'present' else ([], [])
    notes = []
    warnings = ['hashlimit table %s (IPv%d) already exists for a rule outside chain %s: the new rule shares it '
                'and its settings, whatever this task asks; give this chain a table name of its own'
                % (cfg['name'], family, cfg['chain']) for family in shared]
    first = None
    if rebuild:
        notes = ['IPv%d filter: hashlimit table %s is rebuilt (its rule changed): chain %s emptied first, '
                 'then written' % (family, cfg['name'], cfg['chain']) for family in rebuild]
        if not check_mode:
            emptied = [ChainSpec(s.family, s.table, s.name, [], s.jumps, present=True)
                       for s in specs if s.table == 'filter' and s.family in rebuild]
            first = _xtables.sync_chains(driver, emptied, False)
            for family in rebuild:
                if not wait_table_gone(family, cfg['name']):
                    warnings.append('hashlimit table %s (IPv%d) is still used by another rule, so it keeps its '
                                    'old settings; give this chain a table name of its own' % (cfg['name'], family))
    result = _xtables.sync_chains(driver, specs, check_mode)
    if first is not None:
        result['changed'] = True
        result['diff']['before'] = first['diff']['before']
    result['actions'] = notes + result['actions']
    return result, warnings


# --------------------------------------------------------------------------
# What the kernel says after the run.

def _read_int(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (IOError, OSError, ValueError):
        return None


def _percent(part, whole):
    return round(100.0 * part / whole, 1) if part is not None and whole else None


def collect_counters(driver, cfg, roles):
    counters = {}
    for family in configured_families(cfg):
        by_tag = dict((tag, (packets, bytes_)) for tag, packets, bytes_, _text in
                      _xtables.read_chain_counters(driver, family, 'filter', cfg['chain']) if tag)
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
# python-iptables: the hashlimit commit bug.
#
# libxt_hashlimit keeps the rate's unit in a per-extension scratch buffer
# (udata) between parsing and the final check, which derives the default
# htable-expire from it. python-iptables allocates that buffer as a local in
# Match.reset() and lets it be freed on return, and its final_check() resets
# and re-parses the saved match; the check then reads freed memory and the
# kernel refuses the rule (EINVAL). Each hashlimit Match below owns a buffer
# for its whole life, and the rule always carries an explicit expire, so the
# committed rule is byte for byte the one the iptables CLI writes.

_PATCHED = []


def _keep_udata_alive():
    if _PATCHED:
        return
    iptc = _xtables.iptc
    if iptc is None:   # the driver imports python-iptables lazily in some versions
        import iptc  # pylint: disable=import-outside-toplevel
    match_cls = iptc.Match
    original_reset = match_cls.reset

    def reset(self):
        original_reset(self)
        size = getattr(self._module, 'udata_size', 0)
        if size and self._name == 'hashlimit':
            keep = self.__dict__.get('_ae_udata')
            if keep is None or len(keep) < size:
                keep = (ctypes.c_ubyte * size)()
                object.__setattr__(self, '_ae_udata', keep)
            ctypes.memset(ctypes.byref(keep), 0, size)
            self._module.udata = ctypes.cast(ctypes.byref(keep), ctypes.c_void_p)

    match_cls.reset = reset
    _PATCHED.append(original_reset)


def iptc_hashlimit_fixup(match, options):
    """IPTC_FIXUPS entry: parse the options again with the buffer in place."""
    _keep_udata_alive()
    match.reset()
    for opt, value in options.items():
        match.set_parameter(opt, '' if value is None else str(value))


def register_iptc_fixup(driver):
    """Install the fix when the python-iptables driver is used, before its workers fork."""
    if getattr(driver, 'name', None) != 'python-iptables':
        return
    _keep_udata_alive()
    _xtables.IPTC_FIXUPS['hashlimit'] = iptc_hashlimit_fixup
