# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The BGP announcements of an edge host, as BIRD 2 configuration.

A :class:`Speaker` is the validated input of ``anycast.edge.bgp_speaker`` (and of
the ``bgp`` role's preflight, through the ``bgp_plan`` filter, which names the
role's variables instead): local AS, router id, neighbours, the prefixes to
export with their communities, BFD timers. :meth:`Speaker.render` turns it into
BIRD's configuration; the same input always renders the same bytes, so an
unchanged input never touches the live file, nor BIRD.

What BIRD exports is decided in two places, and both must agree:

* the health daemon (``roles/bgp/files/anycast_edge_health.py``) adds one route
  per announceable prefix to the kernel table ``health_table`` with route
  protocol :data:`HEALTH_PROTO`; BIRD learns that table (``protocol kernel`` with
  ``learn``) and nothing else from the kernel;
* the export filter passes only routes learned from that table whose prefix is
  exactly one of the configured prefixes (so a stray route in the table, or any
  other route of the host, is never exported). A learned route of type
  ``unreachable`` means "draining": the filter adds GRACEFUL_SHUTDOWN (RFC 8326).

Nothing is imported into the kernel unless ``import_routes`` asks for it.
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.anycast.edge.plugins.module_utils._validate import (
    ParamError, parse_address, parse_prefix)

# Route protocol of the health daemon's routes in the health table (ip route ... proto 173);
# 172 marks the collection's AnyIP and tenant routes.
HEALTH_PROTO = 173
DEFAULT_HEALTH_TABLE = 4179
# RFC 8326 GRACEFUL_SHUTDOWN: set by the drain, never by configuration.
GRACEFUL_SHUTDOWN = (65535, 0)

ASN_MAX = 4294967295
HOLD_TIME_MIN, HOLD_TIME_MAX = 3, 65535
BFD_INTERVAL_MIN, BFD_INTERVAL_MAX = 10, 10000   # milliseconds
BFD_MULTIPLIER_MIN, BFD_MULTIPLIER_MAX = 2, 255
TCP_MD5_KEY_MAX = 80                             # TCP_MD5SIG_MAXKEYLEN
RESERVED_TABLES = {0: 'unspec', 253: 'default', 254: 'main', 255: 'local'}
# Names become BIRD symbols (protocol bgp_NAME): letters, digits, underscores.
NAME_RE = re.compile(r'[A-Za-z][A-Za-z0-9_]{0,31}')     # fullmatch: '$' would admit a trailing newline
# Anything that could end a BIRD string or start a new statement is refused
# rather than escaped: BIRD's strings have no escapes at all.
PASSWORD_FORBIDDEN = {'"': 'a double quote', "'": 'a quote', '{': 'a brace', '}': 'a brace',
                      ';': 'a semicolon', '\\': 'a backslash'}

HEADER = '''\
# BGP announcements of this host, written by anycast.edge (module bgp_speaker).
# Every change here is overwritten by the next run; put your own statements in the
# role's bgp_extra_config. Validated with `bird -p -c` before it replaced the live
# file, applied with `birdc configure`.
'''


def parse_asn(value, param):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ParamError(param, 'expected an AS number 1-%d, got %r' % (ASN_MAX, value))
    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise ParamError(param, "'%s' is not an AS number (1-%d, asplain)" % (value, ASN_MAX))
    if not 1 <= number <= ASN_MAX:
        raise ParamError(param, 'AS %d is outside 1..%d' % (number, ASN_MAX))
    return number


def parse_int(value, param, low, high, unit=''):
    if isinstance(value, bool):
        raise ParamError(param, 'expected a number %d-%d%s, got %r' % (low, high, unit, value))
    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise ParamError(param, "'%s' is not a whole number (%d-%d%s)" % (value, low, high, unit))
    if not low <= number <= high:
        raise ParamError(param, '%d is out of range %d-%d%s' % (number, low, high, unit))
    return number


def parse_router_id(value, param):
    if not isinstance(value, str) or not value.strip():
        raise ParamError(param, 'expected an IPv4 address (the router id), got %r' % (value,))
    try:
        address = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise ParamError(param, "'%s' is not an IPv4 address; a BGP router id is written as one" % value)
    if int(address) == 0:
        raise ParamError(param, '0.0.0.0 is not a valid router id')
    return address


def check_password(value, param):
    """The TCP MD5 key of a session; refused, never escaped, if it could break out of its string.

    The password is never quoted in a message (Ansible hides it too: no_log).
    """
    if not isinstance(value, str) or not value:
        raise ParamError(param, 'expected a non-empty string')
    for position, char in enumerate(value):
        what = PASSWORD_FORBIDDEN.get(char)
        if what is None and (ord(char) < 0x20 or ord(char) > 0x7e):
            what = 'a newline' if char in '\r\n' else 'a control or non-ASCII character'
        if what:
            raise ParamError(param, 'contains %s at position %d: quotes, braces, semicolons, backslashes, '
                                    'newlines and other control characters are refused, because the password '
                                    'is written into the BIRD configuration' % (what, position + 1))
    if len(value) > TCP_MD5_KEY_MAX:
        raise ParamError(param, 'is %d characters; a TCP MD5 key has at most %d' % (len(value), TCP_MD5_KEY_MAX))
    return value


def parse_community(value, param):
    """``"64500:100"`` (RFC 1997) -> (64500, 100); ``"64500:1:2"`` (RFC 8092, large) -> (64500, 1, 2)."""
    parts = str(value).strip().split(':') if isinstance(value, (str, int)) and not isinstance(value, bool) else []
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise ParamError(param, "'%s' is not a community (ASN:VALUE, or ASN:VALUE:VALUE for a large one)" % (value,))
    numbers = tuple(int(p) for p in parts)
    high = 65535 if len(numbers) == 2 else ASN_MAX
    if any(n > high for n in numbers):
        raise ParamError(param, "'%s': each part of a %s community is at most %d"
                         % (value, 'standard' if len(numbers) == 2 else 'large', high))
    if numbers == GRACEFUL_SHUTDOWN:
        raise ParamError(param, '65535:0 is GRACEFUL_SHUTDOWN (RFC 8326); the drain sets it by itself, '
                                'announcing it always would make every router avoid this host')
    return numbers


class Neighbor(object):
    __slots__ = ('name', 'address', 'remote_as', 'password', 'hold_time', 'keepalive_time', 'bfd', 'multihop',
                 'source_address')

    @property
    def protocol(self):
        return 'bgp_' + self.name

    @property
    def family(self):
        return self.address.version


class Prefix(object):
    __slots__ = ('network', 'communities')

    def __init__(self, network, communities):
        self.network = network
        self.communities = communities


def default_name(address):
    """A stable protocol name from the address: reordering the list restarts no session."""
    return 'n' + re.sub(r'[^0-9A-Za-z]', '_', address.exploded if address.version == 4 else address.compressed)


class Speaker(object):
    """Validated configuration; every check raises ParamError naming NAMES[param] (default: the param)."""

    def __init__(self, params, names=None):
        self._names = names or {}
        name = self._name
        self.local_as = parse_asn(params.get('local_as'), name('local_as'))
        self.router_id = parse_router_id(params.get('router_id'), name('router_id'))
        self.health_table = parse_int(params.get('health_table', DEFAULT_HEALTH_TABLE), name('health_table'),
                                      1, 4294967295)
        if self.health_table in RESERVED_TABLES:
            raise ParamError(name('health_table'), "table %d is the kernel's '%s' table; the health routes need "
                             'a table of their own' % (self.health_table, RESERVED_TABLES[self.health_table]))
        self.bfd_interval = parse_int(params.get('bfd_interval', 200), name('bfd_interval'),
                                      BFD_INTERVAL_MIN, BFD_INTERVAL_MAX, ' ms')
        self.bfd_multiplier = parse_int(params.get('bfd_multiplier', 5), name('bfd_multiplier'),
                                        BFD_MULTIPLIER_MIN, BFD_MULTIPLIER_MAX)
        self.import_routes = bool(params.get('import_routes', False))
        self.error_wait_time = self._error_wait_time(params.get('error_wait_time', [5, 300]))
        self.extra_config = params.get('extra_config') or ''
        if not isinstance(self.extra_config, str):
            raise ParamError(name('extra_config'), 'expected BIRD configuration text')
        self.neighbors = self._neighbors(params.get('neighbors'))
        common = [parse_community(c, '%s[%d]' % (name('communities'), i))
                  for i, c in enumerate(params.get('communities') or [])]
        self.prefixes = self._prefixes(params.get('prefixes') or [], common)

    def _name(self, param):
        """The user's name of a parameter: the module's, or the role variable it came from."""
        head = param.split('[', 1)[0].split('.', 1)[0]
        return self._names.get(head, head) + param[len(head):]

    def _error_wait_time(self, value):
        param = self._name('error_wait_time')
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ParamError(param, 'expected [minimum, maximum] seconds, got %r' % (value,))
        low = parse_int(value[0], param + '[0]', 1, 3600, ' s')
        high = parse_int(value[1], param + '[1]', 1, 3600, ' s')
        if low > high:
            raise ParamError(param, 'the minimum %d s is above the maximum %d s' % (low, high))
        return low, high

    def _neighbors(self, items):
        name = self._name
        if not isinstance(items, list) or not items:
            raise ParamError(name('neighbors'), 'at least one neighbour is needed (address and remote_as)')
        neighbors, seen_names, seen_addresses = [], {}, {}
        for index, raw in enumerate(items):
            param = '%s[%d]' % (name('neighbors'), index)
            if not isinstance(raw, dict):
                raise ParamError(param, 'expected a dictionary with address and remote_as, got %r' % (raw,))
            unknown = sorted(set(raw) - {'name', 'address', 'remote_as', 'password', 'hold_time', 'keepalive_time',
                                         'bfd', 'multihop', 'source_address'})
            if unknown:
                raise ParamError(param, 'unknown key(s) %s' % ', '.join(unknown))
            nb = Neighbor()
            nb.address = parse_address(raw.get('address'), param + '.address')
            if nb.address.is_link_local or nb.address.is_unspecified or nb.address.is_multicast:
                raise ParamError(param + '.address', "'%s' is not a neighbour address (link-local, multicast and "
                                 'unspecified addresses are refused)' % raw.get('address'))
            nb.remote_as = parse_asn(raw.get('remote_as'), param + '.remote_as')
            nb.name = raw.get('name') or default_name(nb.address)
            if not isinstance(nb.name, str) or not NAME_RE.fullmatch(nb.name):
                raise ParamError(param + '.name', "'%s' is not a valid name (a letter, then up to 31 letters, digits "
                                 'or underscores)' % (nb.name,))
            password = raw.get('password')
            nb.password = check_password(password, param + '.password') if password not in (None, '') else None
            nb.hold_time = self._hold_time(raw.get('hold_time'), param + '.hold_time')
            keepalive = raw.get('keepalive_time')
            nb.keepalive_time = None
            if keepalive is not None:
                nb.keepalive_time = parse_int(keepalive, param + '.keepalive_time', 1, HOLD_TIME_MAX, ' s')
                if nb.keepalive_time * 3 > nb.hold_time:
                    raise ParamError(param + '.keepalive_time', '%d s is more than a third of hold_time (%d s): '
                                     'two lost keepalives would end the session' % (nb.keepalive_time, nb.hold_time))
            nb.bfd = True if raw.get('bfd') is None else bool(raw.get('bfd'))
            nb.multihop = parse_int(raw.get('multihop') or 0, param + '.multihop', 0, 255)
            source = raw.get('source_address')
            nb.source_address = parse_address(source, param + '.source_address', nb.address.version) \
                if source not in (None, '') else None
            if nb.multihop and nb.bfd and nb.source_address is None:
                raise ParamError(param + '.source_address', 'a multihop session with BFD needs the local address '
                                 '(BFD multihop sessions are bound to it)')
            for key, value, seen in (('address', str(nb.address), seen_addresses), ('name', nb.name, seen_names)):
                if value in seen:
                    raise ParamError('%s.%s' % (param, key), '%s is also given at %s[%d]'
                                     % (value, name('neighbors'), seen[value]))
                seen[value] = index
            neighbors.append(nb)
        return neighbors

    @staticmethod
    def _hold_time(value, param):
        if value is None:
            return 9
        number = parse_int(value, param, 0, HOLD_TIME_MAX, ' s')
        if number < HOLD_TIME_MIN:
            raise ParamError(param, '%d s is below %d s, the shortest hold time BGP allows (RFC 4271; 0, no '
                                    'keepalives at all, is refused too)' % (number, HOLD_TIME_MIN))
        return number

    def _prefixes(self, items, common):
        name = self._name
        prefixes, seen = [], {}
        for index, raw in enumerate(items):
            param = '%s[%d]' % (name('prefixes'), index)
            if isinstance(raw, dict):
                unknown = sorted(set(raw) - {'prefix', 'communities'})
                if unknown:
                    raise ParamError(param, 'unknown key(s) %s' % ', '.join(unknown))
                text, communities = raw.get('prefix'), raw.get('communities') or []
                param_prefix = param + '.prefix'
            else:
                text, communities, param_prefix = raw, [], param
            network = parse_prefix(text, param_prefix)
            if network.prefixlen == 0:
                raise ParamError(param_prefix, '%s is a default route; an edge announces what it serves' % network)
            if str(network) in seen:
                raise ParamError(param_prefix, 'prefix %s is also given at %s[%d]'
                                 % (network, name('prefixes'), seen[str(network)]))
            seen[str(network)] = index
            own = [parse_community(c, '%s.communities[%d]' % (param, i)) for i, c in enumerate(communities)]
            merged = tuple(sorted(set(common + own)))
            prefixes.append(Prefix(network, merged))
        return prefixes

    def check_served(self, served, allow_unserved):
        """Refuse a prefix no served prefix covers (a typo would attract someone else's traffic)."""
        if allow_unserved:
            return
        for index, prefix in enumerate(self.prefixes):
            if not any(prefix.network.version == s.version and prefix.network.subnet_of(s) for s in served):
                raise ParamError('%s[%d]' % (self._name('prefixes'), index),
                                 '%s is not served by this host (not inside %s); set %s to announce it anyway'
                                 % (prefix.network, ', '.join(str(s) for s in served) or 'any served prefix',
                                    self._name('allow_unserved')))

    def unreachable_families(self):
        """Families with prefixes but no neighbour to announce them to."""
        have = set(nb.family for nb in self.neighbors)
        return sorted(set(p.network.version for p in self.prefixes) - have)

    # -- rendering ---------------------------------------------------------

    def render(self):
        out = [HEADER,
               'router id %s;' % self.router_id,
               'log syslog all;',
               '# "show protocols" gives the date with the time (edge_info reads it).',
               'timeformat protocol "%F %T.%3f";',
               'timeformat route "%F %T";',
               '',
               'protocol device { scan time 10; }',
               '']
        for family in (4, 6):
            out += self._render_family(family)
        out += ['protocol bfd anycast_bfd {',
                '  interface "*" { interval %d ms; multiplier %d; };' % (self.bfd_interval, self.bfd_multiplier),
                '  multihop { interval %d ms; multiplier %d; };' % (self.bfd_interval, self.bfd_multiplier),
                '}', '']
        for nb in self.neighbors:
            out += self._render_neighbor(nb)
        if self.extra_config.strip():
            out += ['# bgp_extra_config', self.extra_config.rstrip('\n'), '']
        return '\n'.join(out).rstrip('\n') + '\n'

    def _render_family(self, family):
        ipv = 'ipv%d' % family
        prefixes = [p for p in self.prefixes if p.network.version == family]
        # One kernel protocol per BIRD table: the health table is learned into a table of its
        # own and piped into master, where the BGP channels (and, with import_routes, the main
        # table's kernel protocol) are.
        out = ['# The health daemon\'s routes (kernel table %d, proto %d): what may be announced now.'
               % (self.health_table, HEALTH_PROTO),
               '%s table anycast_health%d_table;' % (ipv, family),
               'protocol kernel anycast_health%d {' % family,
               '  kernel table %d;' % self.health_table,
               '  learn;',
               '  scan time 10;',
               '  %s { table anycast_health%d_table; import all; export none; };' % (ipv, family),
               '}',
               'protocol pipe anycast_health%d_pipe {' % family,
               '  table anycast_health%d_table;' % family,
               '  peer table master%d;' % family,
               '  import none;',
               '  export all;',
               '}', '']
        if self.import_routes:
            out += ['# import_routes: the neighbours\' routes go into the main table.',
                    'protocol kernel anycast_kernel%d {' % family,
                    '  merge paths on;',
                    '  %s { import none; export where source = RTS_BGP; };' % ipv,
                    '}', '']
        if not prefixes:
            return out
        out.append('define ANYCAST_PREFIXES%d = [' % family)
        out += ['  %s%s' % (p.network, ',' if i < len(prefixes) - 1 else '') for i, p in enumerate(prefixes)]
        out += ['];']
        groups = {}
        for p in prefixes:
            if p.communities:
                groups.setdefault(p.communities, []).append(p.network)
        for number, communities in enumerate(sorted(groups)):
            nets = groups[communities]
            out.append('define ANYCAST_COMMUNITY%d_%d = [ %s ];' % (family, number + 1, ', '.join(str(n) for n in nets)))
        out += ['',
                'filter anycast_export%d {' % family,
                '  # Only the health daemon\'s routes, and only the configured prefixes, exactly.',
                '  if proto != "anycast_health%d" then reject;' % family,
                '  if !(net ~ ANYCAST_PREFIXES%d) then reject;' % family]
        for number, communities in enumerate(sorted(groups)):
            adds = ' '.join('%s.add((%s));' % ('bgp_large_community' if len(c) == 3 else 'bgp_community',
                                               ', '.join(str(x) for x in c)) for c in communities)
            out.append('  if net ~ ANYCAST_COMMUNITY%d_%d then { %s }' % (family, number + 1, adds))
        out += ['  # Draining: the health daemon turned the route into "unreachable".',
                '  if dest = RTD_UNREACHABLE then bgp_community.add((%d, %d));' % GRACEFUL_SHUTDOWN,
                '  accept;',
                '}', '']
        return out

    def _render_neighbor(self, nb):
        ipv = 'ipv%d' % nb.family
        has_prefixes = any(p.network.version == nb.family for p in self.prefixes)
        export = 'export filter anycast_export%d' % nb.family if has_prefixes else 'export none'
        imports = 'import all' if self.import_routes else 'import none'
        local = 'local %s as %d;' % (nb.source_address, self.local_as) if nb.source_address \
            else 'local as %d;' % self.local_as
        out = ['protocol bgp %s {' % nb.protocol,
               '  %s' % local,
               '  neighbor %s as %d;' % (nb.address, nb.remote_as)]
        if nb.password:
            out.append('  password "%s";' % nb.password)
        out.append('  hold time %d;' % nb.hold_time)
        if nb.keepalive_time:
            out.append('  keepalive time %d;' % nb.keepalive_time)
        out.append('  multihop %d;' % nb.multihop if nb.multihop else '  direct;')
        out.append('  bfd %s;' % ('on' if nb.bfd else 'off'))
        # After a failure BIRD waits this long before trying again, doubling up to the maximum.
        out.append('  error wait time %d, %d;' % self.error_wait_time)
        out += ['  %s { %s; %s; };' % (ipv, imports, export), '}', '']
        return out


def community_text(community):
    return ':'.join(str(part) for part in community)


def speaker_input(speaker):
    """The module input that renders exactly SPEAKER's configuration, in one canonical shape.

    Shared by a run whose live file already is its own rendering (no parsing needed) and by
    :func:`parse_config` (a file read back): both give the same dictionary for the same file.
    Communities every prefix carries are given once, under ``communities``; the IPv4 prefixes
    come before the IPv6 ones (the order in which the file lists them).
    """
    prefixes = sorted(speaker.prefixes, key=lambda prefix: prefix.network.version)
    common = set(prefixes[0].communities) if prefixes else set()
    for prefix in prefixes[1:]:
        common &= set(prefix.communities)
    listed = []
    for prefix in prefixes:
        own = [community_text(c) for c in prefix.communities if c not in common]
        listed.append({'prefix': str(prefix.network), 'communities': own} if own else str(prefix.network))
    neighbors = []
    for nb in speaker.neighbors:
        item = {'name': nb.name, 'address': str(nb.address), 'remote_as': nb.remote_as, 'hold_time': nb.hold_time,
                'bfd': nb.bfd, 'multihop': nb.multihop}
        for key in ('password', 'keepalive_time', 'source_address'):
            value = getattr(nb, key)
            if value is not None:
                item[key] = str(value) if key == 'source_address' else value
        neighbors.append(item)
    return {
        'local_as': speaker.local_as, 'router_id': str(speaker.router_id), 'neighbors': neighbors,
        'prefixes': listed, 'communities': [community_text(c) for c in sorted(common)],
        'health_table': speaker.health_table, 'import_routes': speaker.import_routes,
        'error_wait_time': list(speaker.error_wait_time), 'bfd_interval': speaker.bfd_interval,
        'bfd_multiplier': speaker.bfd_multiplier,
        'extra_config': speaker.extra_config.rstrip('\n') if speaker.extra_config.strip() else '',
    }


# The statements of a rendered file that carry input, as render() writes them.
EXTRA_MARKER = '\n# bgp_extra_config\n'
_ROUTER_ID = re.compile(r'^router id (\S+);$', re.M)
_HEALTH_TABLE = re.compile(r'^  kernel table (\d+);$', re.M)
_BFD_TIMERS = re.compile(r'^  interface "\*" \{ interval (\d+) ms; multiplier (\d+); \};$', re.M)
_PREFIX_SET = re.compile(r'^define ANYCAST_PREFIXES[46] = \[\n(.*?)\n\];$', re.M | re.S)
_COMMUNITY_SET = re.compile(r'^define ANYCAST_COMMUNITY([46]_\d+) = \[ (.*) \];$', re.M)
_COMMUNITY_ADDS = re.compile(r'^  if net ~ ANYCAST_COMMUNITY([46]_\d+) then \{ (.*) \}$', re.M)
_COMMUNITY_ADD = re.compile(r'bgp_(?:large_)?community\.add\(\(([\d, ]+)\)\);')
_NEIGHBOR = re.compile(r'^protocol bgp bgp_(\w+) \{\n(.*?)\n\}$', re.M | re.S)
_NEIGHBOR_LINES = (
    (re.compile(r'^  local (?:(\S+) )?as (\d+);$'), ('source_address', 'local_as')),
    (re.compile(r'^  neighbor (\S+) as (\d+);$'), ('address', 'remote_as')),
    (re.compile(r'^  password "([^"]*)";$'), ('password',)),
    (re.compile(r'^  hold time (\d+);$'), ('hold_time',)),
    (re.compile(r'^  keepalive time (\d+);$'), ('keepalive_time',)),
    (re.compile(r'^  multihop (\d+);$'), ('multihop',)),
    (re.compile(r'^  bfd (on|off);$'), ('bfd',)),
    (re.compile(r'^  error wait time (\d+), (\d+);$'), ('wait_min', 'wait_max')),
)


class NotRendered(ValueError):
    """The text is not a configuration bgp_speaker wrote (or it was edited since)."""


def _one(pattern, text, what):
    match = pattern.search(text)
    if match is None:
        raise NotRendered('no %s statement' % what)
    return match.groups()


def parse_config(text):
    """The module input that renders TEXT, a configuration bgp_speaker wrote (what state=gathered gives).

    Reads the statements render() writes, builds the Speaker they describe and renders it again:
    raises NotRendered unless that gives TEXT back byte for byte (a file edited by hand, or
    another program's), so a gathered input always rewrites the file exactly as it is.
    """
    if not text.startswith(HEADER):
        raise NotRendered('it does not start with the header bgp_speaker writes')
    generated, marker, extra = text.partition(EXTRA_MARKER)
    params = {'router_id': _one(_ROUTER_ID, generated, 'router id')[0],
              'health_table': int(_one(_HEALTH_TABLE, generated, 'kernel table')[0]),
              'import_routes': 'protocol kernel anycast_kernel' in generated,
              'extra_config': extra[:-1] if marker else ''}
    params['bfd_interval'], params['bfd_multiplier'] = (int(v) for v in _one(_BFD_TIMERS, generated, 'BFD'))
    communities = {}
    adds = dict(_COMMUNITY_ADDS.findall(generated))
    for group, nets in _COMMUNITY_SET.findall(generated):
        found = [community_text(int(n) for n in add.split(','))
                 for add in _COMMUNITY_ADD.findall(adds.get(group, ''))]
        for net in nets.split(', '):
            communities[net] = found
    params['prefixes'] = [{'prefix': line.strip().rstrip(','), 'communities': communities.get(line.strip().rstrip(','), [])}
                          for block in _PREFIX_SET.findall(generated) for line in block.split('\n')]
    params['neighbors'] = []
    for name, body in _NEIGHBOR.findall(generated):
        found = {}
        for line in body.split('\n'):
            for pattern, keys in _NEIGHBOR_LINES:
                match = pattern.match(line)
                if match:
                    found.update((key, value) for key, value in zip(keys, match.groups()) if value is not None)
                    break
        if 'local_as' not in found or 'address' not in found:
            raise NotRendered('session bgp_%s has no local or neighbor statement' % name)
        params['local_as'] = int(found.pop('local_as'))
        params['error_wait_time'] = [int(found.pop('wait_min', 5)), int(found.pop('wait_max', 300))]
        neighbor = dict(found, name=name, bfd=found.get('bfd', 'on') == 'on')
        for key in ('remote_as', 'hold_time', 'keepalive_time', 'multihop'):
            if key in neighbor:
                neighbor[key] = int(neighbor[key])
        params['neighbors'].append(neighbor)
    try:
        speaker = Speaker(params)
    except ParamError as exc:
        raise NotRendered(str(exc))
    if speaker.render() != text:
        raise NotRendered('it differs from what bgp_speaker writes for the same settings (edited by hand?)')
    return speaker_input(speaker)


PASSWORD_LINE = re.compile(r'^(\s*password\s+")[^"\n]*(";)', re.M)


def mask_passwords(text):
    """The configuration as it may be shown (diff mode, messages): passwords replaced."""
    return PASSWORD_LINE.sub(r'\1********\2', text)
