#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: gre_tunnel
short_description: Anycast GRE tunnels from tenant network namespaces to the tenants' routers
version_added: "0.1.0"
description:
  - Manages GRE tunnels whose device lives in a tenant's network namespace while their encapsulated
    packets are sent and received in the host's namespace. Each tunnel is created in the host
    namespace and then moved into the tenant's, because the kernel keeps a tunnel's underlay in the namespace
    where it was created.
  - The local endpoint is an anycast address (local to every server of the fleet, for example through
    AnyIP, see M(anycast.edge.anyip_route)). Every server holds the same tunnel with the same
    configuration, so whichever server receives a GRE packet from the tenant's router decapsulates it
    into the tenant's namespace, and every server can encapsulate towards the router.
  - One call manages the list of tunnels of a host. The kernel is read once, only the difference is
    applied, and every tunnel is read back; local, remote, TTL, key and MTU must equal what was asked.
    A difference found after writing is corrected once and reported if it persists.
  - Tunnels created by this module carry the interface alias C(anycast.edge gre) and their routes the
    collection's route protocol C(172). O(purge) and O(tunnels[].state=absent) only ever remove such
    tunnels, and only those whose underlay is this host namespace.
  - With O(tunnels[].mss_clamp), TCP SYN and SYN-ACK packets forwarded into the tunnel get their MSS
    clamped to the path MTU (iptables C(TCPMSS --clamp-mss-to-pmtu) in the tenant namespace's C(mangle)
    table, in a chain C(ANYCAST-MSS-<name>) owned by the collection and entered from C(FORWARD); with O(driver=nft)
    a base chain C(ANYCAST-MSS-<name>) of the nftables table C(inet anycast_edge_dp) of that namespace).
  - On a kernel without GRE support (no C(ip_gre) module) the module fails with a message saying so and
    changes nothing.
author:
  - anycast.edge developers (@anycast-edge)
requirements:
  - pyroute2 (0.7 or later) on the managed host
  - a kernel with GRE (C(ip_gre); C(ip6_gre) for IPv6 endpoints)
  - iptables on the managed host for O(tunnels[].mss_clamp), or nftables with O(driver=nft)
options:
  tunnels:
    description:
      - The tunnels of this host.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - Interface name of the tunnel inside the tenant namespace (at most 15 characters).
        type: str
        required: true
      netns:
        description:
          - The tenant's network namespace, where the tunnel device lives. It must exist (see
            M(anycast.edge.tenant)); it is never created.
        type: str
        required: true
      local:
        description:
          - The anycast tunnel endpoint, an address local to the host. Required unless O(tunnels[].state=absent).
        type: str
      remote:
        description:
          - The tenant router's public address; same address family as O(tunnels[].local), different from it.
            Required unless O(tunnels[].state=absent).
        type: str
      ttl:
        description:
          - TTL (hop limit) of the encapsulated packets, C(0) to copy the inner packet's.
        type: int
        default: 64
      key:
        description:
          - GRE key (0 to 4294967295) sent and expected on this tunnel. Without it the tunnel is unkeyed.
        type: int
      mtu:
        description:
          - MTU of the tunnel device. C(1476) is a 1500-byte underlay less the IPv4 and GRE headers.
        type: int
        default: 1476
      address:
        description:
          - The tunnel's inner address with prefix length, for example C(10.255.0.1/30).
        type: str
      routes:
        description:
          - Prefixes routed through the tunnel in the tenant namespace's main table, for example the
            tenant's own prefixes that live behind its router.
        type: list
        elements: str
        default: []
      mss_clamp:
        description:
          - Clamp the TCP MSS of connections through the tunnel to its path MTU.
        type: bool
        default: true
      state:
        description:
          - V(absent) removes the tunnel (if this collection created it from this host namespace).
        type: str
        choices: [present, absent]
        default: present
  purge:
    description:
      - Also remove every tunnel of this collection whose underlay is this host namespace and that is not
        listed, in any named network namespace.
    type: bool
    default: false
  state:
    description:
      - V(merged) applies each listed tunnel as its O(tunnels[].state) says (with O(purge), also removes the
        unlisted ones).
      - V(gathered) changes nothing and returns under RV(gathered) every tunnel of this collection whose underlay
        is this host namespace, as this module's input (given back as input, it changes nothing).
      - V(rendered) returns under RV(rendered) the commands the listed tunnels would take on a host without any,
        without reading or touching any host or namespace (works without root, and without a GRE kernel).
    type: str
    choices: [merged, gathered, rendered]
    default: merged
  netns:
    description:
      - Name of a network namespace (as in C(ip netns list)) that stands for the host's, where the tunnels
        are created and their packets travel. The namespace must exist; it is never created.
    type: str
  driver:
    description:
      - How the MSS clamping rules are written, as in M(anycast.edge.tproxy_rule).
      - V(nft) writes, in the tunnel's namespace, a base chain C(ANYCAST-MSS-<name>) of the table
        C(inet anycast_edge_dp) at the C(forward) hook and the C(mangle) priority holding
        C(oifname NAME tcp flags syn / syn,rst tcp option maxseg size set rt mtu) (with C(meta nfproto) when only one
        family is clamped), one transaction per namespace, read back through the JSON API; other tables and other
        modules' chains are never touched.
    type: str
    choices: [auto, python-iptables, iptables, nft]
    default: auto
extends_documentation_fragment:
  - anycast.edge.persist
attributes:
  check_mode:
    support: full
    description: Predicts exactly what would change; changes nothing.
  diff_mode:
    support: full
    description: Shows the tunnels (parameters, addresses, routes) and MSS rules before and after.
notes:
  - Needs C(CAP_NET_ADMIN) and C(CAP_SYS_ADMIN) (entering namespaces) on the managed host (C(become));
    O(state=rendered) needs neither.
  - Forwarding inside the tenant namespace and the route back to the internet belong to
    M(anycast.edge.tenant).
seealso:
  - module: anycast.edge.tenant
  - module: anycast.edge.anyip_route
'''

EXAMPLES = r'''
- name: Every edge server carries Acme's tunnel to its router, from the same anycast address
  anycast.edge.gre_tunnel:
    tunnels:
      - name: gre-acme
        netns: acme
        local: 192.0.2.1
        remote: 198.51.100.2
        key: 42
        address: 10.255.0.1/30
        routes:
          - 203.0.113.0/24

- name: Exactly these tunnels on this host, nothing else the collection made
  anycast.edge.gre_tunnel:
    tunnels: "{{ edge_gre_tunnels }}"
    purge: true

- name: Remove one tunnel
  anycast.edge.gre_tunnel:
    tunnels:
      - name: gre-acme
        netns: acme
        state: absent
'''

RETURN = r'''
before:
  description: Every tunnel of this collection on this host namespace before the run, as this module's input.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: dict
  sample: {tunnels: [{name: gre-acme, netns: acme, local: 192.0.2.1, remote: 198.51.100.2, key: 42}]}
after:
  description: The same after the run (predicted in check mode), as this module's input.
  returned: when something changed (in check mode, would change); unchanged, it is RV(before)
  type: dict
  sample: {tunnels: [{name: gre-acme, netns: acme, local: 192.0.2.1, remote: 198.51.100.2, key: 42}]}
commands:
  description:
    - What was sent (in check mode, would be sent), as C(ip) lines and, per namespace and family, the
      C(iptables-restore) transaction of the MSS chains. A new tunnel is created under a temporary name in the
      host namespace and moved into its namespace under its own name.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
gathered:
  description: With O(state=gathered), every tunnel of this collection on this host namespace, as this module's input.
  returned: when O(state=gathered)
  type: dict
  sample: {tunnels: [{name: gre-acme, netns: acme, local: 192.0.2.1, remote: 198.51.100.2, key: 42,
           address: 10.255.0.1/30, routes: [203.0.113.0/24]}]}
rendered:
  description: With O(state=rendered), the commands the listed tunnels would take on a host without any.
  returned: when O(state=rendered)
  type: list
  elements: str
persisted:
  description: Per tunnel (C(netns/name)), the record re-applied at boot (null when the run removed it).
  returned: when O(persist=true) and not in check mode
  type: dict
  sample: {tenant-acme/gre-acme: /etc/anycast-edge/state/gre_tunnel@host@tenant-acme_gre-acme.json}
confirm_token:
  description: With O(confirm_timeout), the token M(anycast.edge.confirm) takes; the change is rolled back unless confirmed.
  returned: when a change was applied with confirm_timeout
  type: str
removed:
  description: Tunnels (C(netns/name)) this run removed (state absent or purge).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
tunnels:
  description: The listed tunnels as requested (after the run, or predicted in check mode).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: dict
  sample:
    - name: gre-acme
      netns: acme
      kind: gre
      local: 192.0.2.1
      remote: 198.51.100.2
      ttl: 64
      key: 42
      mtu: 1476
      address: 10.255.0.1/30
      routes: [203.0.113.0/24]
      mss_clamp: true
      state: present
actions:
  description: What was done (or would be, in check mode), one sentence each.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: ["create tunnel 'gre-acme' in namespace 'acme' (gre local 192.0.2.1 remote 198.51.100.2)"]
corrected:
  description: Tunnels whose read-back differed from the request after writing and were written again.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
driver:
  description: The driver used for the MSS clamping rules (C(python-iptables), C(iptables) or C(nft)), or null when none was needed.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._engine import persisted, run_module, states
from ansible_collections.anycast.edge.plugins.module_utils._gre import GreTunnels
from ansible_collections.anycast.edge.plugins.module_utils._gre_spec import DEFAULT_MTU, DEFAULT_TTL
from ansible_collections.anycast.edge.plugins.module_utils._xtables import DRIVERS


def main():
    module = AnsibleModule(
        argument_spec=persisted(dict(
            tunnels=dict(type='list', elements='dict', default=[], options=dict(
                name=dict(type='str', required=True),
                netns=dict(type='str', required=True),
                local=dict(type='str'),
                remote=dict(type='str'),
                ttl=dict(type='int', default=DEFAULT_TTL),
                key=dict(type='int', no_log=False),
                mtu=dict(type='int', default=DEFAULT_MTU),
                address=dict(type='str'),
                routes=dict(type='list', elements='str', default=[]),
                mss_clamp=dict(type='bool', default=True),
                state=dict(type='str', choices=['present', 'absent'], default='present'),
            )),
            purge=dict(type='bool', default=False),
            state=dict(type='str', choices=states('merged'), default='merged'),
            netns=dict(type='str'),
            driver=dict(type='str', choices=list(DRIVERS) + ['nft'], default='auto'),
        )),
        supports_check_mode=True,
    )
    run_module(module, GreTunnels)


if __name__ == '__main__':
    main()
