#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: edge_info
short_description: Everything anycast.edge owns on a host, with counters, table fill and drift
version_added: "0.1.0"
description:
  - Reads, and never changes, the state this collection manages on a host - AnyIP prefixes, the xtables chains
    it owns (TPROXY, rate limits, tenant marks, MSS clamping) with per-rule packet and byte counters,
    hashlimit table fill against C(htable_max), conntrack count against its maximum, tenants with their
    namespaces, links, marks, routing tables and nftables rulesets, GRE tunnels with their state, the
    persisted records, changes waiting for confirmation, and whether the kernel drifted from the records.
  - Reads the transparent proxy's origins from its metrics endpoint - which are up, which are down, and whether
    their host names resolve.
  - Returns O(ignore:warnings) for tables more than 80% full, for records the kernel drifted from, for the
    proxy's origins that are down and for origin names that do not resolve.
author:
  - anycast.edge developers (@anycast-edge)
options:
  netns:
    description: Network namespace standing in for the host's (as in the other modules); never created.
    type: str
  state_dir:
    description: Where the modules keep their records (their O(anycast.edge.anyip_route#module:state_dir)).
    type: path
    default: /etc/anycast-edge/state
  drift:
    description:
      - Run every persisted record in check mode to report drift. Costs one module run per record.
    type: bool
    default: true
  driver:
    description: How xtables chains are read; as in M(anycast.edge.tproxy_rule).
    type: str
    choices: [auto, python-iptables, iptables]
    default: auto
  proxy_metrics:
    description:
      - V(ADDRESS:PORT) of the transparent proxy's metrics endpoint (the role's C(transparent_proxy_metrics)), read
        for RV(proxy_origins). An empty string skips it.
    type: str
    default: 127.0.0.1:9464
attributes:
  check_mode:
    support: full
    description: Never changes anything, in either mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
seealso:
  - module: anycast.edge.anyip_route
  - module: anycast.edge.hashlimit
  - module: anycast.edge.tenant
  - module: anycast.edge.gre_tunnel
'''

EXAMPLES = r'''
- name: What does this edge run?
  anycast.edge.edge_info:
  register: edge

- name: Refused connections per host
  ansible.builtin.debug:
    msg: "{{ edge.xtables | selectattr('chain', 'equalto', 'RATE-LIMIT') | map(attribute='rules') | list }}"
'''

RETURN = r'''
anyip:
  description: AnyIP prefixes the collection owns, per family.
  returned: always
  type: dict
  sample: {ipv4: [192.0.2.0/24], ipv6: ["2001:db8:100::/64"]}
xtables:
  description: Owned chains with the built-in chains that jump to them and each rule's counters.
  returned: always
  type: list
  elements: dict
  sample: [{family: ipv4, table: filter, chain: RATE-LIMIT, jumps_from: [INPUT],
            rules: [{rule: "-m hashlimit ... -j ACCEPT", packets: 1200, bytes: 72000}]}]
hashlimit_tables:
  description: Live hashlimit tables used by owned chains, with entries against htable_max.
  returned: always
  type: list
  elements: dict
  sample: [{family: ipv4, name: conn_rate_limit, entries: 12, htable_max: 65536, percent: 0.0}]
conntrack:
  description: Connection tracking count, maximum and buckets (null where conntrack is not loaded).
  returned: always
  type: dict
  sample: {count: 120, max: 262144, buckets: 65536, percent: 0.0}
tenants:
  description: Tenant namespaces with their mark, routing table, links and the collection's nftables table.
  returned: always
  type: list
  elements: dict
tunnels:
  description: GRE tunnels the collection owns, where they live and their endpoints.
  returned: always
  type: list
  elements: dict
records:
  description: Keys of the persisted records re-applied at boot.
  returned: always
  type: list
  elements: str
drift:
  description: Per record, whether the kernel differs from it (with the diff), when O(drift=true).
  returned: always
  type: dict
pending:
  description: Changes applied with confirm_timeout that are not confirmed yet, with their deadlines.
  returned: always
  type: list
  elements: dict
proxy_origins:
  description:
    - The transparent proxy's origins as it sees them, from O(proxy_metrics); C(available) is false (with C(error))
      when nothing answers there, for example on a host without the proxy.
  returned: always
  type: dict
  contains:
    endpoint:
      description: The metrics endpoint that was read.
      type: str
    available:
      description: Whether the proxy answered.
      type: bool
    error:
      description: Why it did not, or null.
      type: str
    origins:
      description: Every origin of every route, with C(up), C(active), C(connections), C(connect_failures), C(check_failures).
      type: list
      elements: dict
    down:
      description: The origins that are down, as C({route, origin}).
      type: list
      elements: dict
    resolve:
      description: Origins given by name, with C(ok) (the last resolution worked) and C(failures).
      type: list
      elements: dict
  sample:
    endpoint: 127.0.0.1:9464
    available: true
    error: null
    origins:
      - {route: web, origin: "10.0.2.2:8080", up: true, active: 12, connections: 3021, connect_failures: 0, check_failures: 0}
      - {route: web, origin: "10.0.2.3:8080", up: false, active: 0, connections: 2950, connect_failures: 3, check_failures: 41}
    down: [{route: web, origin: "10.0.2.3:8080"}]
    resolve: []
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils import _edge_info as info
from ansible_collections.anycast.edge.plugins.module_utils._netlink import require_pyroute2
from ansible_collections.anycast.edge.plugins.module_utils._netns import enter_module_netns
from ansible_collections.anycast.edge.plugins.module_utils._persist import list_pending
from ansible_collections.anycast.edge.plugins.module_utils._proxy_origins import parse_endpoint, proxy_origins
from ansible_collections.anycast.edge.plugins.module_utils._xtables import DRIVERS, XtablesError, select_driver


def main():
    module = AnsibleModule(
        argument_spec=dict(
            netns=dict(type='str'),
            state_dir=dict(type='path', default='/etc/anycast-edge/state'),
            drift=dict(type='bool', default=True),
            driver=dict(type='str', choices=list(DRIVERS), default='auto'),
            proxy_metrics=dict(type='str', default='127.0.0.1:9464'),
        ),
        supports_check_mode=True,
    )
    if module.params['proxy_metrics']:
        try:
            parse_endpoint(module.params['proxy_metrics'])
        except ValueError as exc:
            module.fail_json(msg='proxy_metrics: %s (expected ADDRESS:PORT, IPv6 in brackets)' % exc)
    require_pyroute2(module)
    host_netns = enter_module_netns(module)
    warnings = []
    try:
        chains = info.owned_chains(select_driver(module, module.params['driver']))
    except XtablesError as exc:
        module.fail_json(msg=str(exc))
    tenants, tunnels = info.tenants_and_tunnels(host_netns)
    drift = info.drift(module.params['state_dir']) if module.params['drift'] else {}
    for key, report in sorted(drift.items()):
        if report.get('drifted'):
            warnings.append('%s: the kernel drifted from the persisted state (see drift.%s.diff)' % (key, key))
        elif report.get('failed'):
            warnings.append('%s: could not be checked against the kernel: %s' % (key, report.get('msg')))
    result = dict(
        changed=False,
        anyip=info.anyip_prefixes(),
        xtables=chains,
        hashlimit_tables=info.hashlimit_tables(chains, warnings),
        conntrack=info.conntrack(warnings),
        tenants=tenants,
        tunnels=tunnels,
        records=info.records(module.params['state_dir']),
        drift=drift,
        pending=[{'key': p['key'], 'deadline': p['deadline']} for p in list_pending()],
        proxy_origins=(proxy_origins(module.params['proxy_metrics'], warnings) if module.params['proxy_metrics']
                       else {'endpoint': '', 'available': False, 'error': 'not asked', 'origins': [], 'down': [],
                             'resolve': []}),
    )
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
