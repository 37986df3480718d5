# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Everything the collection owns on a host, read without changing anything."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    ROUTE_PROTO, RawRtnl, TABLE_LOCAL, RTN_LOCAL, get_attr, open_iproute)
from ansible_collections.anycast.edge.plugins.module_utils._netns import in_netns, list_netns
from ansible_collections.anycast.edge.plugins.module_utils._hashlimit import (
    FULL_WARNING, conntrack_status, proc_table_path, table_entries)
from ansible_collections.anycast.edge.plugins.module_utils._nftables import Nft
from ansible_collections.anycast.edge.plugins.module_utils._tenant_firewall import NFT_TABLE

XT_TABLES = ('raw', 'mangle', 'filter')
HTABLE_RE = re.compile(r'--hashlimit-name (\S+)')
HTABLE_MAX_RE = re.compile(r'--hashlimit-htable-max (\d+)')
TENANT_MARKER_RE = re.compile(r'^anycast\.edge tenant (\S+) host (\d+) mark (0x[0-9a-f]+)/(0x[0-9a-f]+) table (\d+)$')
GRE_ALIAS = 'anycast.edge gre'
TENANT_LINK_ALIAS = 'anycast.edge tenant '


def anyip_prefixes():
    out = {'ipv4': [], 'ipv6': []}
    with RawRtnl() as raw:
        for family in (4, 6):
            for route in raw.routes(family, TABLE_LOCAL):
                if route['type'] == RTN_LOCAL and route['proto'] == ROUTE_PROTO:
                    out['ipv%d' % family].append('%s/%d' % (route['dst'], route['dst_len']))
    return out


def owned_chains(driver):
    """Every chain holding a rule tagged by the collection, with its rules, counters and jumps."""
    chains = []
    for family in (4, 6):
        for table in XT_TABLES:
            state = driver.read(family, [table])[table]
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


def hashlimit_tables(chains, warnings):
    tables = []
    seen = set()
    for chain in chains:
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
                warnings.append('hashlimit table %s (%s) is %.1f%% full (%d of %d): raise htable_max'
                                % (name.group(1), chain['family'], 100.0 * entries / maximum, entries, maximum))
    return tables


def _links(ipr):
    links = []
    for msg in ipr.get_links():
        info = get_attr(msg, 'IFLA_LINKINFO')
        kind = info.get_attr('IFLA_INFO_KIND') if info is not None else None
        links.append({'index': msg['index'], 'name': get_attr(msg, 'IFLA_IFNAME'), 'kind': kind,
                      'alias': get_attr(msg, 'IFLA_IFALIAS'), 'up': bool(msg['flags'] & 1),
                      'operstate': get_attr(msg, 'IFLA_OPERSTATE'), 'msg': msg})
    return links


def _addresses(ipr, index):
    return ['%s/%d' % (get_attr(a, 'IFA_ADDRESS'), a['prefixlen']) for a in ipr.get_addr(index=index)]


def _gre_tunnels(ipr, links, netns):
    tunnels = []
    for link in links:
        if link['alias'] != GRE_ALIAS:
            continue
        data = link['msg'].get_attr('IFLA_LINKINFO').get_attr('IFLA_INFO_DATA')
        tunnels.append({
            'name': link['name'], 'netns': netns, 'kind': link['kind'], 'up': link['up'],
            'local': data.get_attr('IFLA_GRE_LOCAL') if data is not None else None,
            'remote': data.get_attr('IFLA_GRE_REMOTE') if data is not None else None,
            'ttl': data.get_attr('IFLA_GRE_TTL') if data is not None else None,
            'mtu': get_attr(link['msg'], 'IFLA_MTU'),
            'addresses': _addresses(ipr, link['index']),
        })
    return tunnels


def tenants_and_tunnels(host_netns):
    """Tenants of this host (namespaces whose marker names this host namespace) and their GRE tunnels."""
    host_inode = os.stat('/proc/thread-self/ns/net').st_ino
    tenants, tunnels = [], []
    with open_iproute() as ipr:
        tunnels += _gre_tunnels(ipr, _links(ipr), host_netns)
    for name in list_netns():
        if name == host_netns:
            continue
        try:
            with in_netns(name):
                ipr = open_iproute()
        except Exception:  # a namespace we may not enter: not ours to report
            continue
        with ipr:
            links = _links(ipr)
            marker = None
            for link in links:
                if link['name'] == 'lo' and link['alias']:
                    marker = TENANT_MARKER_RE.match(link['alias'])
            if marker is None or int(marker.group(2)) != host_inode:
                continue  # not a tenant of this host
            tunnels += _gre_tunnels(ipr, links, name)
            tenant_links = [{'name': l['name'], 'up': l['up'], 'addresses': _addresses(ipr, l['index'])}
                            for l in links if (l['alias'] or '').startswith(TENANT_LINK_ALIAS)]
        tenants.append({
            'name': marker.group(1), 'netns': name, 'mark': '%s/%s' % (marker.group(3), marker.group(4)),
            'table': int(marker.group(5)), 'links': tenant_links, 'firewall': nft_ruleset(name),
        })
    return tenants, tunnels


def nft_ruleset(netns):
    """The tenant's nftables table as text (the collection's table only), or None."""
    with in_netns(netns):
        with Nft() as nft:  # its netlink socket opens here, in the tenant's namespace
            ok, out, _err = nft.run('list table inet %s' % NFT_TABLE)
    return out if ok else None


def drift(state_dir):
    runner = os.path.join(state_dir, 'anycast-edge-restore')
    if not os.path.exists(runner):
        return {}
    proc = subprocess.run([sys.executable, runner, 'check', state_dir], capture_output=True, text=True,
                          timeout=600, check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {'_error': {'drifted': None, 'failed': True, 'msg': (proc.stderr or proc.stdout)[-2000:]}}


def records(state_dir):
    try:
        return sorted(n[:-5] for n in os.listdir(state_dir) if n.endswith('.json') and not n.startswith('.'))
    except FileNotFoundError:
        return []


def conntrack(warnings):
    status = conntrack_status(warnings.append)
    return status
