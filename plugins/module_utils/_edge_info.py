# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Everything the collection owns on a host, read without changing anything.

edge_info's result is a list of sections, each read by one function of the
shape ``reader(context) -> value``. A new kind of state (a daemon's sessions,
an origin's health) is one more entry in SECTIONS, in a module_utils file of
its own. Readers find the sections read before them in ``context.result``
and add warnings to ``context.warnings``; the readers of each kernel
interface are the modules' own (one interface reader for all).
"""

from __future__ import annotations

import os
import re

from ansible_collections.anycast.edge.plugins.module_utils import _bird
from ansible_collections.anycast.edge.plugins.module_utils import _gre
from ansible_collections.anycast.edge.plugins.module_utils import _proxy_origins
from ansible_collections.anycast.edge.plugins.module_utils import _networkd
from ansible_collections.anycast.edge.plugins.module_utils import _nft_rules
from ansible_collections.anycast.edge.plugins.module_utils import _restore
from ansible_collections.anycast.edge.plugins.module_utils import _xtables
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError
from ansible_collections.anycast.edge.plugins.module_utils._hashlimit import (
    FULL_WARNING, conntrack_status, proc_table_path, table_entries)
from ansible_collections.anycast.edge.plugins.module_utils._netlink import ROUTE_PROTO, RTN_LOCAL, TABLE_LOCAL
from ansible_collections.anycast.edge.plugins.module_utils._netns import Namespaces, host_inode, list_netns
from ansible_collections.anycast.edge.plugins.module_utils._persist import list_pending
from ansible_collections.anycast.edge.plugins.module_utils._tenant_firewall import LIST_TABLE
from ansible_collections.anycast.edge.plugins.module_utils._tenant_spec import OWNER as TENANT_OWNER
from ansible_collections.anycast.edge.plugins.module_utils._tenant_view import NamespaceRead

XT_TABLES = ('raw', 'mangle', 'filter')
HTABLE_RE = re.compile(r'--hashlimit-name (\S+)')
HTABLE_MAX_RE = re.compile(r'--hashlimit-htable-max (\d+)')


class Context(object):
    """What the section readers share: the module, the namespaces' handles, the result so far, the warnings."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.namespaces = Namespaces()
        self.result = {}
        self.warnings = []
        self._driver = None

    @property
    def driver(self):
        if self._driver is None:
            self._driver = _xtables.select_driver(self.module, self.params['driver'])
        return self._driver

    def close(self):
        self.namespaces.close()


def anyip(context):
    """AnyIP prefixes the collection owns, per family."""
    out = {'ipv4': [], 'ipv6': []}
    for family in (4, 6):
        for route in context.namespaces.host.rt.routes(family, TABLE_LOCAL):
            if route['type'] == RTN_LOCAL and route['proto'] == ROUTE_PROTO:
                out['ipv%d' % family].append('%s/%d' % (route['dst'], route['dst_len']))
    return out


def xtables(context):
    """Every chain holding a rule tagged by the collection, with its rules, counters and jumps."""
    chains = []
    tables = _xtables.read_tables(context.driver, [(f, t) for f in (4, 6) for t in XT_TABLES])
    for family in (4, 6):
        for table in XT_TABLES:
            state = tables[(family, table)]
            owned = set(name for name, rules in state.chains.items() if any(r.tag for r in rules))
            owned |= set(r.target for rules in state.chains.values() for r in rules if r.tag and r.target in state.chains)
            owned -= set(state.policies)  # built-in chains are never ours
            for name in sorted(owned):
                chains.append({
                    'family': 'ipv%d' % family, 'table': table, 'chain': name,
                    'jumps_from': sorted(set(r.chain for r in state.rules_jumping_to(name))),
                    'rules': [{'rule': r.text, 'packets': r.packets, 'bytes': r.bytes} for r in state.chains[name]],
                })
    return chains


def hashlimit_tables(context):
    """Live hashlimit tables used by owned chains, with their fill."""
    tables = []
    seen = set()
    for chain in context.result['xtables']:
        family = int(chain['family'][-1])
        for rule in chain['rules']:
            name = HTABLE_RE.search(rule['rule'])
            if not name or (family, name.group(1)) in seen:
                continue
            seen.add((family, name.group(1)))
            maximum = HTABLE_MAX_RE.search(rule['rule'])
            maximum = int(maximum.group(1)) if maximum else None
            entries = table_entries(family, name.group(1)) or 0
            tables.append({'family': chain['family'], 'name': name.group(1), 'entries': entries,
                           'htable_max': maximum,
                           'percent': round(100.0 * entries / maximum, 1) if maximum else None,
                           'path': proc_table_path(family, name.group(1))})
            if maximum and entries > FULL_WARNING * maximum:
                context.warnings.append('hashlimit table %s (%s) is %.1f%% full (%d of %d): raise htable_max'
                                        % (name.group(1), chain['family'], 100.0 * entries / maximum, entries, maximum))
    return tables


def conntrack(context):
    return conntrack_status(context.warnings.append)


def tenants(context):
    """Tenant namespaces of this host namespace: mark, table, links, and the collection's nftables table."""
    inode = host_inode()
    found = []
    for netns in list_netns():
        handles = context.namespaces.get(netns)
        try:
            read = NamespaceRead(handles.rt)
            marker = read.marker
            if marker is None or marker['host'] != inode:
                continue  # not a tenant of this host
            links = [{'name': link.name, 'up': link.up, 'addresses': sorted(read.addrs.get(link.index, ()))}
                     for link in read.links.values() if (link.alias or '').startswith(TENANT_OWNER + ' ')]
            with handles.inside():
                ok, listing, _err = handles.nft.run(LIST_TABLE)
        except (EdgeError, OSError):
            continue  # a namespace we may not enter, or one that vanished: not ours to report
        finally:
            context.namespaces.release(netns)
        found.append({'name': marker['name'], 'netns': netns, 'mark': '0x%x/0x%x' % (marker['mark'], marker['mask']),
                      'table': marker['table'], 'links': links, 'firewall': listing if ok else None})
    return found


def tunnels(context):
    """GRE tunnels of the collection whose underlay is this host namespace (what gre_tunnel manages)."""
    found = []
    for (netns, name), device in sorted(_gre.owned_devices(context.namespaces).items()):
        found.append({'name': name, 'netns': netns, 'kind': device.kind, 'up': device.up, 'local': device.local,
                      'remote': device.remote, 'ttl': device.ttl, 'key': device.ikey, 'mtu': device.mtu,
                      'addresses': [str(a) for a in device.addresses]})
    return found


def records(context):
    try:
        return sorted(n[:-5] for n in os.listdir(context.params['state_dir'])
                      if n.endswith('.json') and not n.startswith('.'))
    except FileNotFoundError:
        return []


def drift(context):
    """Per record, whether the kernel differs from it: each record's module run in check mode."""
    if not context.params['drift']:
        return {}
    report = _restore.check_report(context.params['state_dir'])
    for key, entry in sorted(report.items()):
        if entry.get('drifted'):
            context.warnings.append('%s: the kernel drifted from the persisted state (see drift.%s.diff)' % (key, key))
        elif entry.get('failed'):
            context.warnings.append('%s: could not be checked against the kernel: %s' % (key, entry.get('msg')))
    return report


def pending(context):
    return [{'key': p['key'], 'deadline': p['deadline']} for p in list_pending()]


def bgp(context):
    """BIRD's sessions, what is announced and what the health daemon withholds (docs/bgp.md)."""
    return _bird.bgp_state(context.params['bgp']['control_socket'], context.params['bgp']['health_status'],
                           context.warnings)


def proxy_origins(context):
    """The transparent proxy's origins as it sees them, from its metrics endpoint ('' skips it)."""
    endpoint = context.params['proxy_metrics']
    if not endpoint:
        return {'endpoint': '', 'available': False, 'error': 'not asked', 'origins': [], 'down': [], 'resolve': []}
    return _proxy_origins.proxy_origins(endpoint, context.warnings)


def networkd(context):
    """Would systemd-networkd delete our routes and rules (docs/networkd.md)."""
    report, warnings = _networkd.report(context.module.run_command)
    context.warnings += warnings
    return report


# The sections of edge_info's result, in the order they are read.
SECTIONS = [
    ('anyip', anyip),
    ('xtables', xtables),
    ('hashlimit_tables', hashlimit_tables),
    ('nftables', _nft_rules.info),
    ('conntrack', conntrack),
    ('tenants', tenants),
    ('tunnels', tunnels),
    ('records', records),
    ('drift', drift),
    ('pending', pending),
    ('proxy_origins', proxy_origins),
    ('networkd', networkd),
    ('bgp', bgp),
]


def read_all(module, sections=None):
    """edge_info's result: every section, read in order; warnings go to the module."""
    context = Context(module)
    try:
        for name, reader in sections or SECTIONS:
            context.result[name] = reader(context)
    finally:
        context.close()
    for warning in context.warnings:
        module.warn(warning)
    return dict(context.result, changed=False)
