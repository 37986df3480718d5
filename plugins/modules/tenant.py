#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: tenant
short_description: Tenant network namespaces with veth, policy routing by firewall mark and an nftables firewall
version_added: "0.1.0"
description:
  - Manages the whole set of tenants of a host in one call, the way the Magic Transit write-up describes
    it. Each tenant gets a network namespace of its own, joined to the host's namespace by a veth pair.
  - In the host's namespace, packets whose destination is in a tenant's O(tenants[].prefixes) get the tenant's
    O(tenants[].mark) (iptables C(mangle) table, a chain C(AE-TENANT-NAME) per tenant jumped to from
    C(PREROUTING); with O(driver=nft) a base chain C(AE-TENANT-NAME) of the nftables table
    C(inet anycast_edge_dp)); C(ip rule fwmark MARK lookup TABLE) sends them to the tenant's own routing table, which
    routes the prefixes over the veth. The main routing table is never touched; the host end's addresses
    are added without a prefix route, it generates no IPv6 link-local address (a tenant with IPv6 gets a
    fixed C(fe80::1/64) there, also without a prefix route, for neighbour discovery), and it has IPv6
    switched off when the tenant has no IPv6 prefix.
  - Inside the tenant's namespace, a default route back to the host with metric 4096 lets replies reach the
    internet; any route of the tenant's own (for example through a GRE tunnel of M(anycast.edge.gre_tunnel))
    has a lower metric and wins. Forwarding is enabled in the tenant's namespace and in the host's.
  - The tenant's firewall is one nftables table C(inet anycast_edge) with one chain C(ingress) (hook
    C(prerouting)) that filters what enters the tenant from the host (IPv6 neighbour discovery is always
    let through, as ARP is, so that the link works). It is replaced in one nftables
    transaction after the whole ruleset passed C(nft --check); a rule nft rejects changes nothing, and
    nft's message is returned.
  - Namespaces are created in-process (no command per tenant), never in check mode. The loopback of every
    namespace this module creates carries the alias C(anycast.edge tenant NAME host INODE mark M table T);
    only such namespaces, of this host's namespace, are ever deleted by O(tenants[].state=absent) or
    O(purge).
author:
  - anycast.edge developers (@anycast-edge)
requirements:
  - pyroute2 (0.7 or later) on the managed host
  - the nftables Python binding on the managed host (Debian package python3-nftables)
  - iptables on the managed host, except with O(driver=nft)
options:
  tenants:
    description:
      - The tenants of this host.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - Short name of the tenant (letters, digits, C(-), C(_); at most 15 characters). The veth ends are
            C(ae-NAME) (host) and C(ae-NAME-t) (tenant) unless O(tenants[].link.host_if) and
            O(tenants[].link.tenant_if) are set, so with the defaults a name has at most 10 characters.
        type: str
        required: true
      netns:
        description:
          - Name of the tenant's network namespace. Defaults to O(netns_prefix) followed by the name.
        type: str
      state:
        description:
          - V(absent) removes the tenant's namespace, veth, ip rules, routes and mark rules.
        type: str
        choices: [present, absent]
        default: present
      prefixes:
        description:
          - The tenant's IPv4 and IPv6 prefixes (CIDR, host bits zero). Prefixes of different tenants must
            not overlap.
          - A default route (C(0.0.0.0/0), C(::/0)) and prefixes touching loopback, link-local, multicast,
            unspecified or IPv4-mapped ranges are refused.
        type: list
        elements: str
        default: []
      mark:
        description:
          - Firewall mark (C(VALUE) or C(VALUE/MASK), decimal or C(0x) hex) of packets for the tenant's
            prefixes. Required when O(tenants[].state=present); unique per tenant; not 0.
          - No packet mark may match two tenants' C(VALUE/MASK) (C(0x100/0x100) and C(0x300/0x300) both match
            C(0x300)); that is refused, since the ip rules would then only work by falling through.
        type: str
      table:
        description:
          - Number of the tenant's routing table in the host's namespace (not 253, 254 or 255). Required when
            O(tenants[].state=present); unique per tenant.
          - Also picks the default link addresses (slot C(table) of O(link_pool_ipv4) and O(link_pool_ipv6)).
        type: int
      link:
        description:
          - The veth pair. Every field has a default.
        type: dict
        suboptions:
          host_if:
            description: Name of the host end (default C(ae-NAME)).
            type: str
          tenant_if:
            description: Name of the tenant end, inside the tenant's namespace (default C(ae-NAME-t)).
            type: str
          host_ipv4:
            description:
              - IPv4 address with prefix length of the host end. Default the even address of the /31 number
                C(table modulo size) of O(link_pool_ipv4). Give both ends or neither.
            type: str
          tenant_ipv4:
            description: IPv4 address with prefix length of the tenant end (default the odd address of that /31).
            type: str
          host_ipv6:
            description:
              - IPv6 address with prefix length of the host end. Default the even address of the /127 number
                C(table) of O(link_pool_ipv6), only when the tenant has IPv6 prefixes.
            type: str
          tenant_ipv6:
            description: IPv6 address with prefix length of the tenant end.
            type: str
      firewall:
        description:
          - The tenant's nftables firewall. Omitted means no table (and a table this module wrote is removed).
        type: dict
        suboptions:
          policy:
            description: Verdict for what enters from the host and no rule accepted or dropped.
            type: str
            choices: [accept, drop]
            default: accept
          rules:
            description:
              - Rules of the chain in nft syntax, one per item, in order, for example
                C(ip daddr 203.0.113.100 tcp dport 20-21 accept).
              - Traffic that does not enter through the tenant's veth end (its loopback, its tunnels) is
                accepted before these rules.
              - Each item is one rule and cannot leave its chain. Refused before anything changes - a control
                character (newline included); C(;), C(#) or C($) outside quotes; unbalanced braces; and
                statements that are not rules - C(include), C(define), C(redefine), C(undefine) and the chain's
                own settings (C(type), C(hook), C(priority), C(policy), C(flags), C(comment), C(devices)).
            type: list
            elements: str
            default: []
  purge:
    description:
      - Also remove every tenant of this host's namespace that this module created and that is not listed.
    type: bool
    default: false
  state:
    description:
      - V(merged) applies each listed tenant as its O(tenants[].state) says (with O(purge), also removes the
        unlisted ones).
      - V(gathered) changes nothing and returns under RV(gathered) every tenant of this host's namespace that
        this module created, as this module's input (given back as input, it changes nothing).
      - V(rendered) returns under RV(rendered) the commands the listed tenants would take on a host without any,
        without reading or touching any host or namespace (works without root). The ownership marker names the
        host's namespace with a shell substitution there.
    type: str
    choices: [merged, gathered, rendered]
    default: merged
  netns_prefix:
    description: Prefix of the default namespace names.
    type: str
    default: tenant-
  link_pool_ipv4:
    description:
      - Pool of the default IPv4 link addresses, one /31 per tenant.
      - Refused, before anything changes, when a tenant takes its link from it and it overlaps a connected
        subnet of the host namespace, a prefix this collection routes (another tenant's, an AnyIP prefix), a
        tenant's prefix, or loopback, C(0.0.0.0/8), multicast or C(240.0.0.0/4).
    type: str
    default: 169.254.0.0/17
  link_pool_ipv6:
    description:
      - Pool of the default IPv6 link addresses, one /127 per tenant.
      - Refused like O(link_pool_ipv4) when it overlaps the host's networks, and in C(::/127), IPv4-mapped,
        C(fe80::/10) or C(ff00::/8).
    type: str
    default: fdac:ed6e:7e4a::/64
  rule_priority:
    description: Priority of the tenants' C(ip rule) entries (before the main table's 32766).
    type: int
    default: 1000
  driver:
    description:
      - How the mark rules are written. V(python-iptables) and V(iptables) write the mangle chain C(AE-TENANT-NAME)
        per family, jumped to from C(PREROUTING); V(auto) chooses between them as M(anycast.edge.tproxy_rule) does,
        and is V(nft) on a host without any iptables command.
      - V(nft) writes the chain C(AE-TENANT-NAME) of the collection's nftables table C(inet anycast_edge_dp) instead,
        a base chain of its own at the C(prerouting) hook and the C(mangle) priority, one
        C(ip daddr PREFIX meta mark set meta mark & ~MASK ^ MARK) rule per prefix (C(ip6 daddr) for IPv6), which is
        what C(--set-xmark MARK/MASK) does. All tenants' chains of a call are one transaction, read back through the
        JSON API; other tables, and other modules' chains in the table, are never touched; the table goes when
        nothing is left in it.
      - C(AE-TENANT-) chains are this module's in both kinds of tables, so switching the driver moves them - V(nft)
        writes its chains, then removes the xtables chains of the tenants the call lists, purges or removes; an
        iptables driver does the opposite. Check mode shows both halves in RV(actions).
    type: str
    choices: [auto, python-iptables, iptables, nft]
    default: auto
  netns:
    description:
      - Network namespace that plays the host's part, instead of the host's own; it must exist and is
        never created.
    type: str
extends_documentation_fragment:
  - anycast.edge.persist
attributes:
  check_mode:
    support: full
    description: Predicts what would change; creates nothing, not even a namespace.
  diff_mode:
    support: full
    description: Shows each tenant's namespace, links, addresses, rules, routes and firewall before and after.
notes:
  - Needs C(CAP_NET_ADMIN) and C(CAP_SYS_ADMIN) on the managed host (C(become)); O(state=rendered) needs neither.
  - Forwarding sysctls are switched on, never off. Enabling IPv6 forwarding on a host that configures itself
    from router advertisements needs C(accept_ra=2) on its uplink.
  - A host whose C(net.ipv4.conf.all.rp_filter) is 1 (strict) drops the tenants' replies; use 2 (loose).
seealso:
  - module: anycast.edge.gre_tunnel
  - module: anycast.edge.tproxy_rule
'''

EXAMPLES = r'''
- name: Acme's namespace with an FTP-only firewall
  anycast.edge.tenant:
    tenants:
      - name: acme
        prefixes: [203.0.113.0/24, "2001:db8:ac3e::/48"]
        mark: "0x100"
        table: 100
        firewall:
          policy: drop
          rules:
            - ip daddr 203.0.113.100 tcp dport 20-21 accept
            - ct state established,related accept

- name: Exactly these tenants; remove every other one this module created
  anycast.edge.tenant:
    tenants: "{{ edge_tenants }}"
    purge: true

- name: Remove a tenant
  anycast.edge.tenant:
    tenants:
      - name: oldco
        state: absent

- name: Every tenant of this host, as this module's input
  anycast.edge.tenant:
    state: gathered
  register: tenants_now
'''

RETURN = r'''
before:
  description:
    - The tenants this run is about (the listed ones; with O(purge), every tenant of this host) before the run,
      as this module's input.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: dict
  sample: {tenants: [{name: acme, netns: tenant-acme, prefixes: [203.0.113.0/24], mark: "0x100", table: 100}]}
after:
  description: The same tenants after the run (predicted in check mode), as this module's input.
  returned: when something changed (in check mode, would change); unchanged, it is RV(before)
  type: dict
  sample: {tenants: [{name: acme, netns: tenant-acme, prefixes: [203.0.113.0/24], mark: "0x100", table: 100}]}
commands:
  description:
    - What was sent (in check mode, would be sent), as C(ip) / C(sysctl) lines, C(nft -f) transactions and
      C(iptables-restore) transactions (with O(driver=nft), one C(nft -j -f -) transaction of the mark chains), in
      order. A firewall is written twice; the second transaction carries the
      digest of nft's listing of the first (shown as a placeholder in check mode).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
gathered:
  description: With O(state=gathered), every tenant of this host's namespace as this module's input.
  returned: when O(state=gathered)
  type: dict
  sample: {tenants: [{name: acme, netns: tenant-acme, prefixes: [203.0.113.0/24], mark: "0x100", table: 100,
           firewall: {policy: drop, rules: ["ip daddr 203.0.113.100 tcp dport 20-21 accept"]}}]}
rendered:
  description: With O(state=rendered), the commands the listed tenants would take on a host without any.
  returned: when O(state=rendered)
  type: list
  elements: str
persisted:
  description: Per tenant, the record re-applied at boot (null when the run removed it).
  returned: when O(persist=true) and not in check mode
  type: dict
  sample: {acme: /etc/anycast-edge/state/tenant@host@acme.json}
confirm_token:
  description: With O(confirm_timeout), the token M(anycast.edge.confirm) takes; the change is rolled back unless confirmed.
  returned: when a change was applied with confirm_timeout
  type: str
tenants:
  description: Each listed tenant as configured (predicted in check mode).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: dict
  contains:
    name:
      description: The tenant's name.
      type: str
    state:
      description: present or absent.
      type: str
    netns:
      description: The tenant's network namespace.
      type: str
    interfaces:
      description: The veth ends, C(host) and C(tenant).
      type: dict
      returned: when present
    addresses:
      description: Link addresses of the C(host) and C(tenant) ends.
      type: dict
      returned: when present
    prefixes:
      description: The tenant's prefixes.
      type: list
      elements: str
      returned: when present
    mark:
      description: The tenant's firewall mark.
      type: str
      returned: when present
    table:
      description: The tenant's routing table.
      type: int
      returned: when present
    firewall_policy:
      description: Policy of the tenant's firewall chain, null without a firewall.
      type: str
      returned: when present
  sample:
    - name: acme
      state: present
      netns: tenant-acme
      interfaces: {host: ae-acme, tenant: ae-acme-t}
      addresses: {host: [169.254.0.200/31], tenant: [169.254.0.201/31]}
      prefixes: [203.0.113.0/24]
      mark: "0x100"
      table: 100
      firewall_policy: drop
purged:
  description: Names of tenants removed because O(purge) was set and they were not listed.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
actions:
  description: What was (or in check mode would be) done, one line per change.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: ["tenant acme: create network namespace 'tenant-acme'", "tenant acme: route 203.0.113.0/24 via 169.254.0.201 in table 100"]
driver:
  description: The driver that wrote the mark rules (C(python-iptables), C(iptables) or C(nft)).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._engine import persisted, run_module, states
from ansible_collections.anycast.edge.plugins.module_utils._tenant import Tenants
from ansible_collections.anycast.edge.plugins.module_utils._tenant_spec import DEFAULT_POOL_V4, DEFAULT_POOL_V6
from ansible_collections.anycast.edge.plugins.module_utils._xtables import DRIVERS


def main():
    module = AnsibleModule(
        argument_spec=persisted(dict(
            tenants=dict(type='list', elements='dict', default=[], options=dict(
                name=dict(type='str', required=True),
                netns=dict(type='str'),
                state=dict(type='str', choices=['present', 'absent'], default='present'),
                prefixes=dict(type='list', elements='str', default=[]),
                mark=dict(type='str'),
                table=dict(type='int'),
                link=dict(type='dict', options=dict(
                    host_if=dict(type='str'),
                    tenant_if=dict(type='str'),
                    host_ipv4=dict(type='str'),
                    tenant_ipv4=dict(type='str'),
                    host_ipv6=dict(type='str'),
                    tenant_ipv6=dict(type='str'),
                )),
                firewall=dict(type='dict', options=dict(
                    policy=dict(type='str', choices=['accept', 'drop'], default='accept'),
                    rules=dict(type='list', elements='str', default=[]),
                )),
            )),
            purge=dict(type='bool', default=False),
            state=dict(type='str', choices=states('merged'), default='merged'),
            netns_prefix=dict(type='str', default='tenant-'),
            link_pool_ipv4=dict(type='str', default=DEFAULT_POOL_V4),
            link_pool_ipv6=dict(type='str', default=DEFAULT_POOL_V6),
            rule_priority=dict(type='int', default=1000),
            driver=dict(type='str', choices=list(DRIVERS) + ['nft'], default='auto'),
            netns=dict(type='str'),
        )),
        supports_check_mode=True,
    )
    run_module(module, Tenants)


if __name__ == '__main__':
    main()
