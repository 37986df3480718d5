# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd-networkd and the routes and rules this collection owns.

networkd removes routes and policy rules it did not configure ("foreign" ones) when it
configures a link it manages: at its start, on ``networkctl reconfigure LINK``, and on
``networkctl reload`` after the link's .network file changed (an unchanged one is left
alone). What it removes, read from the source of 247, 252 and 257 (Debian 11, 12, 13) and
observed in containers of each (docs/networkd.md):

* routes: only foreign routes of the link being configured (routes on unmanaged links stay);
  never protocol ``kernel``; none with ``KeepConfiguration=yes`` in the link's .network.
  Up to 252 the loopback device is exempt; 257 drops foreign routes of ``lo`` too.
* policy rules: 247 removes only rules it saved itself. 252 removes every foreign rule
  (protocol not ``kernel``) when it configures a managed link other than ``lo``; 257 also
  for ``lo``, and keeps them with ``KeepConfiguration=static`` or ``yes``.
* ``ManageForeignRoutes=no`` (246+) and ``ManageForeignRoutingPolicyRules=no`` (249+) in
  networkd.conf make it ignore foreign routes and rules altogether. networkd reads
  networkd.conf only when it starts.

Everything here reads; nothing changes. Commands run through the ``run`` callable given
(AnsibleModule.run_command).
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import shutil
import socket
import struct
import time

from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    ROUTE_PROTO, RTA_DST, RTA_OIF, RTA_TABLE, RTM_GETROUTE, RawRtnl, parse_attrs)

# Written by the roles (edge_restore); its name is what edge_info looks for.
GUARD_FILE = '/etc/systemd/networkd.conf.d/99-anycast-edge.conf'
UNIT = 'systemd-networkd.service'
# Where systemd looks for networkd.conf and its drop-ins, in order of precedence.
CONF_ROOTS = ('/etc/systemd', '/run/systemd', '/usr/local/lib/systemd', '/usr/lib/systemd', '/lib/systemd')
NETWORK_DIRS = ('/etc/systemd/network', '/run/systemd/network', '/usr/local/lib/systemd/network',
                '/usr/lib/systemd/network', '/lib/systemd/network')
OPTIONS = {'ManageForeignRoutes': 'manage_foreign_routes',
           'ManageForeignRoutingPolicyRules': 'manage_foreign_rules'}
# First releases with each option (systemd NEWS); before it the behaviour is fixed.
OPTION_SINCE = {'manage_foreign_routes': 246, 'manage_foreign_rules': 249}
MANAGED = ('configuring', 'configured')
STATUS_HEADER_RE = re.compile(r'^\W*(?:\d+): (\S+)\s*$')

RTM_GETRULE = 34
FRA_FWMARK = 10
FRA_TABLE = 15
FRA_FWMASK = 16
FRA_PROTOCOL = 21
TRUE = ('1', 'yes', 'true', 'on')
FALSE = ('0', 'no', 'false', 'off')


def parse_bool(text):
    value = text.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    return None


def read_ini_keys(path, section, keys):
    """{key: last value} for keys of one section of a systemd unit-style file."""
    found = {}
    current = None
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return found
    for line in lines:
        line = line.strip()
        if not line or line[0] in '#;':
            continue
        if line.startswith('[') and line.endswith(']'):
            current = line[1:-1]
        elif current == section and '=' in line:
            key, value = line.split('=', 1)
            if key.strip() in keys:
                found[key.strip()] = value.strip()
    return found


def config_files(roots=CONF_ROOTS, name='networkd.conf'):
    """networkd.conf and its drop-ins in the order systemd applies them (later wins).

    The main file is the first one found; drop-ins from every directory are sorted by file
    name, and a name in an earlier (higher-priority) directory hides the same name later.
    """
    files = []
    for root in roots:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            files.append(path)
            break
    dropins = {}
    for root in roots:
        for path in glob.glob(os.path.join(root, name + '.d', '*.conf')):
            dropins.setdefault(os.path.basename(path), path)
    return files + [dropins[n] for n in sorted(dropins)]


def settings(files):
    """Effective ManageForeign* values (default: true) from files in application order."""
    out = {'manage_foreign_routes': True, 'manage_foreign_rules': True}
    for path in files:
        for key, value in read_ini_keys(path, 'Network', OPTIONS).items():
            parsed = parse_bool(value)
            if parsed is not None:
                out[OPTIONS[key]] = parsed
    return out


def keep_configuration(network_file):
    """KeepConfiguration= of a .network file and its drop-ins ('no' when unset)."""
    if not network_file:
        return 'no'
    paths = [network_file]
    base = os.path.basename(network_file)
    for directory in NETWORK_DIRS:
        paths += sorted(glob.glob(os.path.join(directory, base + '.d', '*.conf')))
    value = 'no'
    for path in paths:
        value = read_ini_keys(path, 'Network', ('KeepConfiguration',)).get('KeepConfiguration', value)
    parsed = parse_bool(value)
    if parsed is not None:
        return 'yes' if parsed else 'no'
    return value.lower()


def drops_on(version, link):
    """Whether configuring this managed link drops foreign (routes, rules), by networkd version."""
    keep = link['keep_configuration']
    if version <= 252:
        routes = keep != 'yes' and not link['loopback']
        rules = routes and version >= OPTION_SINCE['manage_foreign_rules']
    else:
        routes = keep != 'yes'
        rules = keep not in ('static', 'yes')
    return routes, rules


def at_risk(version, conf, links, routes, rules):
    """Which of our routes and rules networkd would delete at its next start or reconfiguration.

    links: {name: {'state', 'loopback', 'keep_configuration'}}; routes: dicts with 'dev';
    rules: any. An unknown version is judged like the newest one read (257).
    """
    version = version or 257
    managed = dict((name, link) for name, link in links.items() if link['state'] in MANAGED)
    route_links = set()
    rule_trigger = []
    for name, link in managed.items():
        drop_routes, drop_rules = drops_on(version, link)
        if drop_routes:
            route_links.add(name)
        if drop_rules:
            rule_trigger.append(name)
    out = {'routes': [], 'rules': [], 'triggers': sorted(set(route_links) | set(rule_trigger))}
    if conf['manage_foreign_routes']:
        out['routes'] = [r for r in routes if r['dev'] in route_links]
    if conf['manage_foreign_rules'] and rule_trigger:
        out['rules'] = list(rules)
    return out


def owned_routes_and_rules():
    """Every route and policy rule carrying the collection's protocol, in this namespace."""
    routes, rules = [], []
    with RawRtnl() as raw:
        for family, af in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            for msg in raw.dump(RTM_GETROUTE, struct.pack('=BBBBBBBBI', af, 0, 0, 0, 0, 0, 0, 0, 0)):
                r_family, dst_len, _src, _tos, table, proto, _scope, rtype, _flags = struct.unpack_from('=BBBBBBBBI', msg)
                if proto != ROUTE_PROTO or r_family != af:
                    continue
                attrs = parse_attrs(msg, 12)
                table = _u32(attrs.get(RTA_TABLE), table)
                dst = socket.inet_ntop(af, attrs[RTA_DST]) if RTA_DST in attrs else ('0.0.0.0' if family == 4 else '::')
                oif = _u32(attrs.get(RTA_OIF))
                routes.append({'family': 'ipv%d' % family, 'table': table, 'type': rtype,
                               'prefix': str(ipaddress.ip_network('%s/%d' % (dst, dst_len))),
                               'dev': _ifname(oif)})
            for msg in raw.dump(RTM_GETRULE, struct.pack('=BBBBBBBBI', af, 0, 0, 0, 0, 0, 0, 0, 0)):
                table = struct.unpack_from('=BBBBB', msg)[4]
                attrs = parse_attrs(msg, 12)
                proto = attrs.get(FRA_PROTOCOL)
                if proto is None or proto[0] != ROUTE_PROTO:
                    continue
                rules.append({'family': 'ipv%d' % family, 'fwmark': _hex(attrs.get(FRA_FWMARK)),
                              'fwmask': _hex(attrs.get(FRA_FWMASK)), 'table': _u32(attrs.get(FRA_TABLE), table)})
    return routes, rules


def _u32(raw, default=None):
    return struct.unpack('=I', raw[:4])[0] if raw else default


def _hex(raw):
    return None if raw is None else '0x%x' % _u32(raw)


def _ifname(index):
    if not index:
        return None
    try:
        return socket.if_indextoname(index)
    except OSError:
        return str(index)


def _run(run, argv):
    """(rc, stdout, stderr); rc 127 where the command does not exist (no systemd on the host)."""
    if shutil.which(argv[0]) is None:
        return 127, '', '%s: not found' % argv[0]
    return run(argv)


def unit_state(run):
    """(active, enabled, start time as epoch seconds or None) of systemd-networkd."""
    rc, out, _err = _run(run, ['systemctl', 'show', UNIT,
                               '--property=ActiveState,UnitFileState,ExecMainStartTimestampMonotonic'])
    props = dict(line.split('=', 1) for line in out.splitlines() if '=' in line) if rc == 0 else {}
    start = None
    monotonic = props.get('ExecMainStartTimestampMonotonic', '0')
    if monotonic.isdigit() and int(monotonic) > 0:
        start = time.time() - time.monotonic() + int(monotonic) / 1e6
    return props.get('ActiveState') == 'active', props.get('UnitFileState') in ('enabled', 'enabled-runtime'), start


def version(run):
    rc, out, _err = _run(run, ['networkctl', '--version'])
    match = re.match(r'systemd (\d+)', out) if rc == 0 else None
    return int(match.group(1)) if match else None


def parse_list(text):
    """`networkctl list --no-legend`: {name: {'state', 'loopback'}}."""
    found = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0].isdigit():
            found[fields[1]] = {'state': fields[4], 'loopback': fields[2] == 'loopback', 'network_file': None}
    return found


def parse_network_files(text):
    """`networkctl status LINK...`: {name: .network file or None}."""
    files, current = {}, None
    for line in text.splitlines():
        header = STATUS_HEADER_RE.match(line)
        if header:
            current = header.group(1)
            files[current] = None
        elif current and line.strip().startswith('Network File:'):
            value = line.split(':', 1)[1].strip()
            files[current] = value if value.startswith('/') else None
    return files


def links(run):
    """{name: {'state', 'loopback', 'network_file', 'keep_configuration'}} as networkd reports them."""
    rc, out, _err = _run(run, ['networkctl', 'list', '--no-legend', '--no-pager'])
    found = parse_list(out) if rc == 0 else {}
    managed = sorted(name for name, link in found.items() if link['state'] in MANAGED)
    if managed:
        rc, out, _err = _run(run, ['networkctl', 'status', '--no-pager', '--lines=0'] + managed)
        for name, path in parse_network_files(out if rc == 0 else '').items():
            if name in found:
                found[name]['network_file'] = path
    for link in found.values():
        link['keep_configuration'] = keep_configuration(link['network_file'])
    return found


def report(run):
    """The edge_info ``networkd`` section, and warnings."""
    active, enabled, started = unit_state(run)
    out = {'active': active, 'enabled': enabled, 'version': None, 'config_files': [],
           'manage_foreign_routes': None, 'manage_foreign_rules': None,
           'guard': os.path.isfile(GUARD_FILE), 'guard_loaded': False, 'restart_pending': False,
           'managed_links': [], 'at_risk': {'routes': [], 'rules': [], 'triggers': []}}
    if not (active or enabled):
        return out, []
    out['version'] = version(run)
    files = config_files()
    conf = settings(files)
    out['config_files'] = files
    out.update(conf)
    for key, since in OPTION_SINCE.items():
        if out['version'] is not None and out['version'] < since:
            out[key] = None  # no such option there: the fixed behaviour is in drops_on()
    if not active:
        # Read at the next start; nothing is configured until then.
        out['guard_loaded'] = out['guard']
        return out, []
    newest = max([os.stat(path).st_mtime for path in files] or [0])
    out['restart_pending'] = started is None or newest > started
    out['guard_loaded'] = out['guard'] and started is not None and os.stat(GUARD_FILE).st_mtime <= started
    # The running daemon has the files as they were when it started; else assume its defaults.
    running = dict(conf) if not out['restart_pending'] else {key: True for key in OPTIONS.values()}
    link_table = links(run)
    out['managed_links'] = sorted(name for name, link in link_table.items() if link['state'] in MANAGED)
    routes, rules = owned_routes_and_rules()
    out['at_risk'] = at_risk(out['version'], running, link_table, routes, rules)
    warnings = []
    if out['at_risk']['routes'] or out['at_risk']['rules']:
        warnings.append(
            'systemd-networkd would delete %d route(s) and %d policy rule(s) of this collection the next time it '
            'starts or configures %s: %s' % (
                len(out['at_risk']['routes']), len(out['at_risk']['rules']), ', '.join(out['at_risk']['triggers']),
                'restart it to load %s' % GUARD_FILE if out['guard'] else
                'apply the role anycast.edge.edge_restore, which installs %s' % GUARD_FILE))
    overridden = [key for key in OPTIONS if out['guard'] and out[OPTIONS[key]]]
    if overridden:
        warnings.append('%s sets %s=no, but a later file sets it back: %s' % (
            GUARD_FILE, ' and '.join(overridden), ', '.join(files)))
    return out, warnings
