# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bgp_plan: what an edge host announces over BGP, from its inventory variables (controller side).

Input: a dictionary of the variables the ``anycast.edge.bgp`` role reads - its own
``bgp_*`` variables and the other features' (``transparent_proxy_*``,
``edge_anyip_prefixes``, ``edge_tenants``, ``edge_gre_tunnels``). Output::

    {'errors': [sentences naming the variable],
     'speaker': arguments of anycast.edge.bgp_speaker,
     'health': the health daemon's configuration (groups of prefixes with their checks)}

What the host serves, by group (each prefix belongs to the first group that has it):

    proxy          the proxy's AnyIP prefixes: transparent_proxy_prefixes, or the routes'
                   destinations; healthy while its service is active and each of its
                   listeners is listening with room in its accept queue
    tenant-NAME    a tenant's prefixes; healthy while its namespace exists and its veth is up
    gre-NAME       an anycast GRE endpoint (a tunnel's local address); healthy while the
                   tunnel's namespace exists
    anyip          edge_anyip_prefixes; no check of its own (bgp_health_checks can add some)

By default every served prefix is announced. ``bgp_prefixes`` replaces that list; each of
its prefixes must lie inside a served one (it joins that one's group) unless
``bgp_allow_unserved`` (then it joins the group ``unserved``, with no checks).
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError

from ansible_collections.anycast.edge.plugins.module_utils._bgp import Speaker
from ansible_collections.anycast.edge.plugins.module_utils._validate import ParamError

# Module parameter -> role variable, so that a refusal names what the operator wrote.
ROLE_NAMES = dict((key, 'bgp_' + key) for key in (
    'local_as', 'router_id', 'neighbors', 'prefixes', 'communities', 'allow_unserved', 'health_table',
    'import_routes', 'error_wait_time', 'bfd_interval', 'bfd_multiplier', 'extra_config'))


def _network(text):
    try:
        return ipaddress.ip_network(str(text))
    except ValueError:
        return None


def _host(text):
    try:
        address = ipaddress.ip_address(str(text))
    except ValueError:
        return None
    return ipaddress.ip_network(address)


def _present(items):
    return [item for item in items or [] if isinstance(item, dict) and item.get('state', 'present') != 'absent']


def served_groups(v):
    """[(group name, [networks], [checks])] of what the host serves, in priority order."""
    groups = []
    routes = v.get('transparent_proxy_routes') or []
    if routes:
        prefixes = v.get('transparent_proxy_prefixes') or []
        if prefixes:
            nets = [_network(p) for p in prefixes]
        else:
            destinations = [_network(r.get('destination')) for r in routes if isinstance(r, dict)]
            nets = [n for version in (4, 6) for n in ipaddress.collapse_addresses(
                [d for d in destinations if d is not None and d.version == version])]
        port = v.get('transparent_proxy_listen_port', 1234)
        checks = [{'type': 'service', 'unit': '%s.service' % v.get('transparent_proxy_service_name', 'anycast-proxy')}]
        checks += [{'type': 'listen', 'address': str(address), 'port': int(port)}
                   for address in v.get('transparent_proxy_listen_addresses', ['127.0.0.1', '::1'])]
        groups.append(('proxy', [n for n in nets if n is not None], checks))
    for tenant in _present(v.get('edge_tenants')):
        name = tenant.get('name')
        netns = tenant.get('netns') or '%s%s' % (v.get('edge_tenants_netns_prefix', 'tenant-'), name)
        host_if = (tenant.get('link') or {}).get('host_if') or 'ae-%s' % name
        nets = [_network(p) for p in tenant.get('prefixes') or []]
        groups.append(('tenant-%s' % name, [n for n in nets if n is not None],
                       [{'type': 'netns', 'name': netns}, {'type': 'link', 'name': host_if}]))
    for tunnel in _present(v.get('edge_gre_tunnels')):
        endpoint = _host(tunnel.get('local'))
        if endpoint is not None:
            groups.append(('gre-%s' % tunnel.get('name'), [endpoint],
                           [{'type': 'netns', 'name': tunnel.get('netns')}] if tunnel.get('netns') else []))
    nets = [_network(p) for p in v.get('edge_anyip_prefixes') or []]
    groups.append(('anyip', [n for n in nets if n is not None], []))
    return groups


def bgp_plan(v):
    if not isinstance(v, dict):
        raise AnsibleFilterError('bgp_plan expects a dictionary of variables, got %r' % type(v).__name__)
    errors = []
    served = []          # (network, group)
    checks = {}
    for group, nets, group_checks in served_groups(v):
        checks[group] = group_checks
        for net in nets:
            if all(net != have for have, _g in served):
                served.append((net, group))

    wanted = v.get('bgp_prefixes') or []
    announce = []        # (network, communities, group)
    if wanted:
        for index, item in enumerate(wanted):
            text = item.get('prefix') if isinstance(item, dict) else item
            net = _network(text)
            if net is None:
                continue     # the speaker's validation below names it
            group = next((g for have, g in served if have.version == net.version and net.subnet_of(have)), None)
            if group is None:
                if not v.get('bgp_allow_unserved'):
                    errors.append('bgp_prefixes[%d]: %s is not served by this host (not inside %s); set '
                                  'bgp_allow_unserved to announce it anyway'
                                  % (index, net, ', '.join(str(n) for n, _g in served) or 'any served prefix'))
                    continue
                group = 'unserved'
            announce.append((item, net, group))
    else:
        announce = [(str(net), net, group) for net, group in served]

    speaker = {
        'local_as': v.get('bgp_local_as'),
        'router_id': v.get('bgp_router_id'),
        'neighbors': [dict(v.get('bgp_neighbor_defaults') or {}, **n) if isinstance(n, dict) else n
                      for n in v.get('bgp_neighbors') or []],
        'prefixes': [item for item, _net, _group in announce],
        'communities': v.get('bgp_communities') or [],
        'served_prefixes': [str(net) for net, _g in served],
        'allow_unserved': bool(v.get('bgp_allow_unserved')),
        'health_table': v.get('bgp_health_table', 4179),
        'import_routes': bool(v.get('bgp_import_routes')),
        'error_wait_time': v.get('bgp_error_wait_time', [5, 300]),
        'bfd_interval': v.get('bgp_bfd_interval', 200),
        'bfd_multiplier': v.get('bgp_bfd_multiplier', 5),
        'extra_config': v.get('bgp_extra_config') or '',
    }
    try:
        Speaker(speaker, ROLE_NAMES)
    except ParamError as exc:
        errors.append(str(exc))

    extra = v.get('bgp_health_checks') or {}
    if not isinstance(extra, dict):
        errors.append('bgp_health_checks: expected a dictionary of group name -> list of checks')
        extra = {}
    groups = []
    for group in [g for g, _n, _c in served_groups(v)] + ['unserved']:
        prefixes = [str(net) for _item, net, g in announce if g == group]
        if prefixes:
            groups.append({'name': group, 'prefixes': prefixes,
                           'checks': checks.get(group, []) + list(extra.get(group) or [])})
    unknown = sorted(set(extra) - set(g['name'] for g in groups))
    if unknown:
        errors.append('bgp_health_checks: no announced group is called %s (groups: %s)'
                      % (', '.join(unknown), ', '.join(g['name'] for g in groups) or 'none'))
    health = {
        'table': v.get('bgp_health_table', 4179),
        'interval': v.get('bgp_health_interval', 0.5),
        'fall': v.get('bgp_health_fall', 2),
        'hold_down': v.get('bgp_health_hold_down', 5),
        'check_timeout': v.get('bgp_health_check_timeout', 0.5),
        'graceful_shutdown': v.get('bgp_graceful_shutdown_time', 5),
        'drain_file': v.get('bgp_drain_file', '/var/lib/anycast-edge/bgp-drained'),
        'status_file': v.get('bgp_health_status_file', '/run/anycast-edge-health/status.json'),
        'restore_unit': v.get('bgp_health_after_unit', 'anycast-edge-restore.service') or None,
        'groups': groups,
    }
    return {'errors': errors, 'speaker': speaker, 'health': health}


class FilterModule(object):
    def filters(self):
        return {'bgp_plan': bgp_plan}
