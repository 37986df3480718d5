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
    persisted records, changes waiting for confirmation, whether the kernel drifted from the records, and whether
    systemd-networkd would delete the collection's routes and rules.
  - Reads the transparent proxy's origins from its metrics endpoint - which are up, which are down, and whether
    their host names resolve.
  - Returns O(ignore:warnings) for tables more than 80% full, for records the kernel drifted from, for the
    proxy's origins that are down and for origin names that do not resolve.
  - GRE tunnels are read as M(anycast.edge.gre_tunnel) reads them (IPv6 endpoints of C(ip6gre) included), and
    only those whose underlay is this host namespace are reported.
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
  bgp:
    description: Where the BGP state is read (the C(anycast.edge.bgp) role's BIRD and health daemon).
    type: dict
    default: {}
    suboptions:
      control_socket:
        description: BIRD's control socket.
        type: path
        default: /run/bird/bird.ctl
      health_status:
        description: The health daemon's status file.
        type: path
        default: /run/anycast-edge-health/status.json
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
nftables:
  description:
    - The collection's own nftables table C(inet anycast_edge_dp) (O(anycast.edge.tproxy_rule#module:driver=nft),
      O(anycast.edge.hashlimit#module:driver=nft)) - its chains with each rule's tag, packets and bytes, and its
      sets with their elements against their size (a warning is added above 80%). Null where nftables is missing.
  returned: always
  type: dict
  sample: {table: inet anycast_edge_dp, chains: [{chain: RATE-LIMIT-v4, hook: null, priority: null,
           rules: [{rule: anycast.edge 3b96cb3c89a6, packets: 30, bytes: 1800}]}],
           sets: [{set: conn_rate_limit_v4, entries: 2, size: 65536, percent: 0.0}]}
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
  description:
    - GRE tunnels the collection owns whose underlay is this host namespace, where they live, their endpoints,
      key and addresses.
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
networkd:
  description:
    - Whether systemd-networkd runs, the guard the role M(anycast.edge.edge_restore) installs, and which of the
      collection's routes and policy rules networkd would delete the next time it starts or configures a link
      it manages (docs/networkd.md). A non-empty O(ignore:networkd.at_risk) also gives a warning.
  returned: always
  type: dict
  contains:
    active:
      description: C(systemd-networkd.service) is running.
      type: bool
    enabled:
      description: It is enabled (starts at boot).
      type: bool
    version:
      description: systemd version of networkd (null when it neither runs nor is enabled).
      type: int
    manage_foreign_routes:
      description: ManageForeignRoutes= as the networkd.conf files on disk set it (null where it does not exist).
      type: bool
    manage_foreign_rules:
      description: ManageForeignRoutingPolicyRules= as on disk (null before systemd 249, which never deletes foreign rules).
      type: bool
    config_files:
      description: networkd.conf and its drop-ins, in the order networkd applies them.
      type: list
      elements: str
    guard:
      description: The drop-in C(/etc/systemd/networkd.conf.d/99-anycast-edge.conf) exists.
      type: bool
    guard_loaded:
      description: The running networkd started after the drop-in was written, so it obeys it.
      type: bool
    restart_pending:
      description: A networkd.conf file changed after networkd started; the running daemon uses older settings.
      type: bool
    managed_links:
      description: Links networkd configures (setup state configuring or configured).
      type: list
      elements: str
    at_risk:
      description:
        - C(routes) and C(rules) of the collection (protocol 172) that networkd would delete, and C(triggers), the
          managed links whose configuration would delete them. Empty when the guard is loaded.
      type: dict
  sample: {active: true, enabled: true, version: 257, manage_foreign_routes: false, manage_foreign_rules: false,
           guard: true, guard_loaded: true, restart_pending: false, managed_links: [eth0, lo],
           at_risk: {routes: [], rules: [], triggers: [eth0, lo]}}
bgp:
  description:
    - BGP on the host (null where neither BIRD's control socket nor the health daemon's status exists) - BIRD's
      sessions with their state, since when, BFD state and number of exported prefixes; the prefixes exported to at
      least one established session; the prefixes the health daemon withholds, with the reason (unhealthy, hold-down,
      drained, restore not done); the drain record.
    - A session that is not established and a prefix withheld for its health are also warnings.
  returned: always
  type: dict
  contains:
    running:
      description: Whether BIRD answered on its control socket.
      type: bool
    sessions:
      description: One per BGP protocol.
      type: list
      elements: dict
      sample: [{name: bgp_r1, neighbor: 198.51.100.1, remote_as: 64500, state: Established,
                since: "2026-12-05 08:41:51.473", bfd: Up, exported: 3, info: Established, last_error: null}]
    announced:
      description: Prefixes exported to at least one established session.
      type: list
      elements: str
      sample: [192.0.2.0/24, "2001:db8:100::/64"]
    withheld:
      description: Prefixes the health daemon does not announce now, and why.
      type: list
      elements: dict
      sample: [{prefix: 203.0.113.0/25, group: tenant-acme, state: withdrawn, reason: link ae-acme is down}]
    drained:
      description: The drain record (C(since), C(reason)) while the host is drained, else null.
      type: dict
    health:
      description: When the health daemon last wrote its status (C(updated), epoch seconds) and whether the restore unit has succeeded (C(restore)).
      type: dict
    error:
      description: Why BIRD or the health daemon could not be read, else null.
      type: str
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

from ansible_collections.anycast.edge.plugins.module_utils._edge_info import read_all
from ansible_collections.anycast.edge.plugins.module_utils._engine import run_reader
from ansible_collections.anycast.edge.plugins.module_utils._proxy_origins import parse_endpoint
from ansible_collections.anycast.edge.plugins.module_utils._restore import DEFAULT_STATE_DIR
from ansible_collections.anycast.edge.plugins.module_utils._xtables import DRIVERS


def main():
    module = AnsibleModule(
        argument_spec=dict(
            netns=dict(type='str'),
            state_dir=dict(type='path', default=DEFAULT_STATE_DIR),
            drift=dict(type='bool', default=True),
            driver=dict(type='str', choices=list(DRIVERS), default='auto'),
            bgp=dict(type='dict', default={}, options=dict(
                control_socket=dict(type='path', default='/run/bird/bird.ctl'),
                health_status=dict(type='path', default='/run/anycast-edge-health/status.json'),
            )),
            proxy_metrics=dict(type='str', default='127.0.0.1:9464'),
        ),
        supports_check_mode=True,
    )
    if module.params['proxy_metrics']:
        try:
            parse_endpoint(module.params['proxy_metrics'])
        except ValueError as exc:
            module.fail_json(msg='proxy_metrics: %s (expected ADDRESS:PORT, IPv6 in brackets)' % exc)
    run_reader(module, read_all)


if __name__ == '__main__':
    main()
