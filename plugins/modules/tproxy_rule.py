#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: tproxy_rule
short_description: Send every TCP/UDP port of whole prefixes to one transparent listener (iptables TPROXY)
version_added: "0.1.0"
description:
  - Owns one chain in the C(mangle) table (default C(ANYCAST-TPROXY)), jumped to from C(PREROUTING).
    After a run the chain holds exactly the listed rules, in order; IPv4 rules go to iptables and IPv6
    rules to ip6tables, from the same list.
  - Each rule is C(-d DESTINATION -p PROTOCOL [ports] -j TPROXY --on-port ON_PORT --on-ip ON_IP), the
    Spectrum way of binding every port of every address. The listener needs C(IP_TRANSPARENT), and the
    destination must be local to the host (see M(anycast.edge.anyip_route)).
  - Every rule carries a comment C(anycast.edge <digest>) of its full specification; the chain is compared
    by those digests, rewritten in one transaction per table when it differs, and read back.
author:
  - anycast.edge developers (@anycast-edge)
requirements:
  - iptables on the managed host, or nftables (python3-nftables or the nft command) for O(driver=nft)
  - python-iptables on legacy-iptables hosts for O(driver=python-iptables)
options:
  rules:
    description:
      - The rules of the chain, in order.
      - A rule that an earlier rule already matches entirely (same protocol, a destination and ports inside the
        earlier one's) is refused naming it; TPROXY ends the packet's way through the chain, so it is never reached.
        IPv4-mapped IPv6 destinations and O(rules[].on_ip) are refused (they never arrive as IPv6).
    type: list
    elements: dict
    default: []
    suboptions:
      destination:
        description: Destination prefix (IPv4 or IPv6 CIDR, host bits zero).
        type: str
        required: true
      protocol:
        description: Transport protocol.
        type: str
        choices: [tcp, udp]
        default: tcp
      ports:
        description:
          - Destination ports. Omitted means every port. A port (C(443)), a range (C("8000-8100")), or a list
            of them; lists are merged and written with C(multiport), 15 slots per rule.
        type: raw
      on_ip:
        description: Address of the transparent listener; C(127.0.0.1) or C(::1) by the destination's family.
        type: str
      on_port:
        description: Port of the transparent listener.
        type: int
        required: true
      mark:
        description: Optional C(VALUE) or C(VALUE/MASK) set on redirected packets (C(--tproxy-mark)).
        type: str
  chain:
    description:
      - Name of the chain the module owns (at most 28 characters; letters, digits, C(_), C(.), C(-)).
      - Refused, in every O(state) - a built-in chain or verdict; the name of an xtables target or match in any case
        (C(MARK), C(NFLOG), C(TPROXY), C(limit), ...; iptables reads C(-j MARK) as the target, so such a chain
        could be written but never removed again); a name starting with another module's prefix, C(AE-TENANT-)
        (M(anycast.edge.tenant)) or C(ANYCAST-MSS-) (M(anycast.edge.gre_tunnel)), whose chains this module
        never writes or removes.
    type: str
    default: ANYCAST-TPROXY
  state:
    description:
      - V(present) makes the chain hold exactly O(rules); V(absent) removes the chain and the jump into it, for
        both families.
      - V(gathered) changes nothing and returns under RV(gathered) the rules the chain holds, as this module's
        input (given back as input, it changes nothing).
      - V(rendered) returns under RV(rendered) the iptables-restore transactions this input would send to a host
        without the chain, without reading or touching any host or namespace (works without root).
    type: str
    choices: [present, absent, gathered, rendered]
    default: present
  driver:
    description:
      - How rules are written. V(iptables) uses the host's C(iptables-save)/C(iptables-restore --noflush --wait)
        and follows the host's variant (nf_tables or legacy). V(python-iptables) uses libiptc and works only on
        hosts whose iptables is the legacy variant. V(auto) picks V(python-iptables) on legacy hosts that have
        the library and V(iptables) otherwise; it never writes into the variant the host does not use. On a host
        without any iptables command (nftables only) V(auto) is V(nft).
      - V(nft) writes native nftables instead, through the JSON API of the distribution's binding
        (python3-nftables, else C(nft -j)). The chain (named by O(chain)) is a base chain of the collection's own
        table C(inet anycast_edge_dp), hooked to C(prerouting) at the C(mangle) priority, holding both families.
        Each rule becomes a C(socket transparent 1 accept) rule (a packet of an established flow goes to the
        proxy's socket at once) and a C(tproxy ip|ip6 to ON_IP:ON_PORT accept) rule, with the mark when O(rules[].mark)
        is given; ports are one set, with no 15-port limit. A call is one transaction; other tables, and other
        modules' chains in the same table, are never touched; O(state=absent) deletes the chain, and the table when
        nothing else is left in it. Rules are read back through the JSON API.
      - 'Moving from an iptables driver: run the task with O(state=absent) and the old driver (check mode first to
        see what goes), then with V(nft); see docs/nftables.md.'
    type: str
    choices: [auto, python-iptables, iptables, nft]
    default: auto
  netns:
    description: Network namespace to work in instead of the host's; it must exist and is never created.
    type: str
extends_documentation_fragment:
  - anycast.edge.persist
attributes:
  check_mode:
    support: full
    description: Predicts exactly what would change; changes nothing.
  diff_mode:
    support: full
    description: Shows the chain and its jump before and after, in iptables-save syntax.
notes:
  - Needs C(CAP_NET_ADMIN) on the managed host (C(become)); O(state=rendered) does not.
  - O(rules[].on_ip) need not be local and is not checked against the host's addresses; TPROXY looks the listener up
    by it, and a listener bound to the wildcard address (as the proxy role's is) takes any C(on_ip); one bound to
    a single address must be bound to exactly C(on_ip). C(0.0.0.0) or C(::) means the packet's own destination.
  - O(rules[].mark) shares the packet mark with M(anycast.edge.tenant)'s marks, which this module does not read;
    give TPROXY marks bits (a mask) no tenant uses, or redirected packets follow that tenant's routing table.
  - O(state=absent) removes the nftables table that C(iptables-nft) made only when C(nft) shows it truly empty
    (no set, map, object, rule or chain of anyone else in it).
seealso:
  - module: anycast.edge.anyip_route
'''

EXAMPLES = r'''
- name: Every TCP and UDP port of the AnyIP prefixes to the proxy on port 1234
  anycast.edge.tproxy_rule:
    rules:
      - {destination: 192.0.2.0/24, on_port: 1234}
      - {destination: 192.0.2.0/24, protocol: udp, on_port: 1234}
      - {destination: "2001:db8:100::/64", on_port: 1234}

- name: Only a few ports
  anycast.edge.tproxy_rule:
    chain: EDGE-WEB
    rules:
      - destination: 198.51.100.0/24
        ports: [80, 443, "8000-8100"]
        on_port: 8443

- name: Remove the chain and its jump
  anycast.edge.tproxy_rule:
    state: absent

- name: The transactions these rules would take, without touching any host
  anycast.edge.tproxy_rule:
    rules: [{destination: 192.0.2.0/24, on_port: 1234}]
    state: rendered
  delegate_to: localhost
'''

RETURN = r'''
before:
  description: The chain's rules before the run, in this module's input shape.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: dict
  sample: {chain: ANYCAST-TPROXY, rules: [{destination: 192.0.2.0/24, protocol: tcp, on_port: 1234}]}
after:
  description: The chain's rules after the run (predicted in check mode), in this module's input shape.
  returned: when something changed (in check mode, would change); unchanged, it is RV(before)
  type: dict
  sample: {chain: ANYCAST-TPROXY, rules: [{destination: 192.0.2.0/24, protocol: tcp, on_port: 1234}]}
commands:
  description:
    - The transactions sent (in check mode, that would be sent), per family and table one C(iptables-restore
      --noflush) input, written as a shell here-document. With the python-iptables driver the same changes are
      one libiptc commit, shown as the equivalent C(iptables-legacy-restore) input.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
gathered:
  description: With O(state=gathered), the chain and its rules as this module's input.
  returned: when O(state=gathered)
  type: dict
  sample: {chain: ANYCAST-TPROXY, rules: [{destination: 192.0.2.0/24, protocol: tcp, on_port: 1234}]}
rendered:
  description: With O(state=rendered), the transactions the input would send to a host without the chain.
  returned: when O(state=rendered)
  type: list
  elements: str
persisted:
  description: The record re-applied at boot (null when the run removed it).
  returned: when O(persist=true) and not in check mode
  type: str
  sample: /etc/anycast-edge/state/tproxy_rule@host.json
confirm_token:
  description: With O(confirm_timeout), the token M(anycast.edge.confirm) takes; the change is rolled back unless confirmed.
  returned: when a change was applied with confirm_timeout
  type: str
driver:
  description: The driver that was used.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: str
  sample: iptables
actions:
  description: What was (or in check mode would be) done, one line per change.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: ["iptables -t mangle: write chain ANYCAST-TPROXY (2 rules)", "iptables -t mangle: insert jump PREROUTING -> ANYCAST-TPROXY"]
rules:
  description: Number of rules per family after the run.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: dict
  sample: {ipv4: 2, ipv6: 1}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._engine import persisted, run_module, states
from ansible_collections.anycast.edge.plugins.module_utils._nft_rules import wants_nft
from ansible_collections.anycast.edge.plugins.module_utils._nft_tproxy import NftTproxyRules
from ansible_collections.anycast.edge.plugins.module_utils._tproxy import TproxyRules
from ansible_collections.anycast.edge.plugins.module_utils._xtables import DRIVERS


def main():
    module = AnsibleModule(
        argument_spec=persisted(dict(
            rules=dict(type='list', elements='dict', default=[], options=dict(
                destination=dict(type='str', required=True),
                protocol=dict(type='str', choices=['tcp', 'udp'], default='tcp'),
                ports=dict(type='raw'),
                on_ip=dict(type='str'),
                on_port=dict(type='int', required=True),
                mark=dict(type='str'),
            )),
            chain=dict(type='str', default='ANYCAST-TPROXY'),
            state=dict(type='str', choices=states('present', 'absent'), default='present'),
            driver=dict(type='str', choices=list(DRIVERS) + ['nft'], default='auto'),
            netns=dict(type='str'),
        )),
        supports_check_mode=True,
    )
    run_module(module, NftTproxyRules if wants_nft(module, module.params['driver']) else TproxyRules)


if __name__ == '__main__':
    main()
