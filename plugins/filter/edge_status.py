# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""edge_status_table: the table playbooks/status.yml prints, one line per edge host (controller side).

Input: the variables of each host (``ansible_play_hosts_all | sort | map('extract', hostvars)``), in
which status.yml registered ``edge_status_info`` (anycast.edge.edge_info's result) and
``edge_status_shell`` (the helper script's KEY=VALUE lines: proxy service, connections, kernel, GRE);
and the operator's ``edge_status_columns``. Output: the lines to print - two header lines, one row
per host, then the notes (edge_info's failures and warnings, drains, pending confirmations, GRE
skipped for want of a kernel module).

Most columns are JMESPath expressions over the host's edge_info result (DEFAULT_COLUMNS). A few
need more than JMESPath can say - the script's facts, the host's own variables (its rate-limit chain,
its GRE tunnels), sums over rules chosen by a pattern - and are built in (BUILTIN). An entry of
``edge_status_columns`` with a column's title replaces that column's expression (or, with
``remove: true``, the column); any other title adds a column at the end::

    edge_status_columns:
      - {title: DOWN ORIGINS, unit: route origin, query: "proxy_origins.origins[?!up].[route, origin] | [*].join(' ', @)"}
      - {title: TENANTS, unit: name:ns, query: "tenants[].join(':', [name, netns])"}
"""

from __future__ import annotations

import json
import re

from ansible.errors import AnsibleFilterError

try:
    import jmespath
    from jmespath.exceptions import JMESPathError
except ImportError:     # reported when the table is asked for
    jmespath = None
    JMESPathError = Exception

VARIABLE = 'edge_status_columns'
COLUMN_KEYS = ('title', 'unit', 'query', 'remove')

# (title, unit, JMESPath over the edge_info result, or the name of a built-in; cell of a host whose edge_info failed)
DEFAULT_COLUMNS = [
    ('HOST', '', 'builtin:host', None),
    ('PROXY', 'service', 'builtin:proxy', None),
    ('CONNS', 'total', 'builtin:connections', None),
    ('ORIGINS', 'up/all', "proxy_origins.available && join('/', [to_string(length(proxy_origins.origins[?up])), "
                          "to_string(length(proxy_origins.origins))]) || '-'", '-'),
    ('ANYIP', 'v4+v6', "join('+', [to_string(length(anyip.ipv4 || `[]`)), to_string(length(anyip.ipv6 || `[]`))])",
     'error'),
    ('TPROXY', 'rules', "length((xtables || `[]`)[].rules[] | [?contains(rule, '-j TPROXY')])", ''),
    ('RATE LIMIT', 'accepted/refused', 'builtin:rate_limit', ''),
    ('HASHLIMIT', 'entries', "join('+', (hashlimit_tables || `[]`)[].to_string(entries))", ''),
    ('CONNTRACK', 'count/max', "join('/', [to_string(conntrack.count || '?'), to_string(conntrack.max || '?')])", ''),
    ('TENANTS', '', '(tenants || `[]`)[].name', ''),
    ('GRE', 'tunnels', 'builtin:gre', ''),
    ('BGP', 'sessions', "bgp && join('', [to_string(length(bgp.sessions[?state=='Established'])), '/', "
                        "to_string(length(bgp.sessions)), ' up'])", ''),
    ('PREFIXES', 'ann/withheld', "bgp && join('', [to_string(length(bgp.announced)), '/', "
                                 "to_string(length(bgp.withheld)), bgp.drained && ' drained' || ''])", ''),
    ('DRIFT', 'vs last apply', 'builtin:drift', 'see below'),
]


class Host(object):
    """One host's inputs: its name, edge_info's result, the script's facts, its own variables."""

    def __init__(self, hostvars):
        self.name = hostvars.get('inventory_hostname', '?')
        self.info = plain(hostvars.get('edge_status_info') or {})
        lines = (hostvars.get('edge_status_shell') or {}).get('stdout_lines') or []
        self.facts = dict(line.split('=', 1) for line in lines if '=' in line)
        self.rate_limit_chain = (hostvars.get('edge_rate_limit') or {}).get('chain') or 'RATE-LIMIT'
        self.gre_tunnels = hostvars.get('edge_gre_tunnels') or []
        self.failed = bool(self.info.get('failed')) or 'anyip' not in self.info

    @property
    def gre_missing(self):
        return bool(self.gre_tunnels) and self.facts.get('ip_gre') == 'no'


def plain(value):
    """VALUE with Ansible's own container and string types turned into Python's: JMESPath's functions
    check types by their name (a tagged string is no 'str' to them)."""
    if isinstance(value, dict):
        return dict((str(key), plain(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return str(value)


def _host(host):
    return host.name


def _proxy(host):
    return host.facts.get('proxy', '?')


def _connections(host):
    return host.facts.get('connections', '-')


def _rate_limit(host):
    rules = [rule for chain in host.info.get('xtables') or [] if chain.get('chain') == host.rate_limit_chain
             for rule in chain.get('rules') or []]
    if not rules:
        return '-'
    accepted = sum(r.get('packets', 0) for r in rules if re.search(r'-m hashlimit', r.get('rule', '')))
    refused = sum(r.get('packets', 0) for r in rules if re.search(r'-j (REJECT|DROP)', r.get('rule', '')))
    return '%d/%d' % (accepted, refused)


def _gre(host):
    names = ','.join(t.get('name', '?') for t in host.info.get('tunnels') or [])
    if not names and host.gre_missing:
        return 'skipped, no GRE'
    return names or '-'


def _drift(host):
    drift = host.info.get('drift') or {}
    drifted = [key for key, value in drift.items() if (value or {}).get('drifted')]
    unchecked = [key for key, value in drift.items() if (value or {}).get('failed')]
    text = '%d of %d records' % (len(drifted), len(host.info.get('records') or [])) if drifted else 'none'
    return text + (', %d unchecked' % len(unchecked) if unchecked else '')


BUILTIN = {'host': _host, 'proxy': _proxy, 'connections': _connections, 'rate_limit': _rate_limit, 'gre': _gre,
           'drift': _drift}


class Column(object):
    def __init__(self, title, unit, query, error_cell, param):
        self.title = title
        self.unit = unit
        self.error_cell = error_cell
        self.builtin = BUILTIN[query[len('builtin:'):]] if query.startswith('builtin:') else None
        self.expression = None
        if self.builtin is None:
            try:
                self.expression = jmespath.compile(query)
            except JMESPathError as exc:
                raise AnsibleFilterError('%s: %r is not a JMESPath expression: %s' % (param, query, exc))

    def cell(self, host):
        if host.failed and self.error_cell is not None:
            return self.error_cell
        if self.builtin is not None:
            return self.builtin(host)
        return render(self.expression.search(host.info))


def render(value):
    """A JMESPath result as one cell: nothing is '-', lists are joined with commas."""
    if value is None or value == '' or value == [] or value == {}:
        return '-'
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ','.join(render(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(',', ':'))
    return str(value)


def columns(custom):
    """The default columns with the operator's EDGE_STATUS_COLUMNS applied (replaced, removed, added)."""
    if jmespath is None:
        raise AnsibleFilterError('edge_status_table needs the jmespath Python library on the controller')
    found = [Column(title, unit, query, error, 'default column %s' % title)
             for title, unit, query, error in DEFAULT_COLUMNS]
    if custom is None:
        custom = []
    if not isinstance(custom, list):
        raise AnsibleFilterError('%s: expected a list of {title, query, unit}, got %r' % (VARIABLE, custom))
    for index, item in enumerate(custom):
        param = '%s[%d]' % (VARIABLE, index)
        if not isinstance(item, dict):
            raise AnsibleFilterError('%s: expected {title, query, unit}, got %r' % (param, item))
        unknown = sorted(set(item) - set(COLUMN_KEYS))
        if unknown:
            raise AnsibleFilterError('%s: unknown key(s) %s (known: %s)'
                                     % (param, ', '.join(unknown), ', '.join(COLUMN_KEYS)))
        title = item.get('title')
        if not isinstance(title, str) or not title.strip():
            raise AnsibleFilterError('%s.title: expected the column heading, got %r' % (param, title))
        index_of = dict((column.title, i) for i, column in enumerate(found))
        if item.get('remove'):
            if title not in index_of:
                raise AnsibleFilterError('%s.title: no column %r to remove (columns: %s)'
                                         % (param, title, ', '.join(c.title for c in found)))
            del found[index_of[title]]
            continue
        query = item.get('query')
        if not isinstance(query, str) or not query.strip() or query.startswith('builtin:'):
            raise AnsibleFilterError('%s.query: expected a JMESPath expression over the host\'s edge_info result, '
                                     'got %r' % (param, query))
        unit = item.get('unit', '')
        if not isinstance(unit, str):
            raise AnsibleFilterError('%s.unit: expected a string (the second header line), got %r' % (param, unit))
        if title in index_of:
            old = found[index_of[title]]
            found[index_of[title]] = Column(title, item.get('unit', old.unit), query, old.error_cell,
                                            param + '.query')
        else:
            found.append(Column(title, unit, query, '', param + '.query'))
    return found


def notes(host):
    lines = []
    info = host.info
    if info.get('failed'):
        lines.append('%s: edge_info failed: %s' % (host.name, info.get('msg') or 'unknown error'))
    lines += ['%s: warning: %s' % (host.name, warning) for warning in info.get('warnings') or []]
    drained = (info.get('bgp') or {}).get('drained')
    if drained:
        lines.append('%s: drained (%s); playbooks/undrain.yml announces it again'
                     % (host.name, drained.get('reason', '?') if isinstance(drained, dict) else drained))
    lines += ['%s: waiting for confirmation: %s' % (host.name, json.dumps(item, sort_keys=True))
              for item in info.get('pending') or []]
    if host.gre_missing:
        lines.append('%s: GRE skipped: kernel %s has no ip_gre (CONFIG_NET_IPGRE); tunnels %s not applied.'
                     % (host.name, host.facts.get('kernel', '?'), ', '.join(t.get('name', '?') for t in host.gre_tunnels)))
    return lines


def edge_status_table(hosts, custom_columns=None):
    """Lines of the status table for HOSTS (each host's variables), with EDGE_STATUS_COLUMNS applied."""
    table = columns(custom_columns)
    hosts = [Host(hostvars) for hostvars in hosts or []]
    rows, problems = [], []
    for host in hosts:
        row = []
        for column in table:
            try:
                row.append(column.cell(host))
            except JMESPathError as exc:     # an expression that does not fit this host's data
                row.append('?')
                problems.append('%s: column %s: %s' % (host.name, column.title, exc))
        rows.append(row)
    widths = [max([len(c.title), len(c.unit)] + [len(row[i]) for row in rows]) for i, c in enumerate(table)]

    def line(cells):
        return ' '.join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    lines = [line([c.title for c in table]), line([c.unit for c in table])] + [line(row) for row in rows]
    for host in hosts:
        lines += notes(host)
    return lines + problems


class FilterModule(object):
    def filters(self):
        return {'edge_status_table': edge_status_table}
