#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: anyip_route
short_description: Make whole IPv4/IPv6 prefixes local with AnyIP routes
version_added: "0.1.0"
description:
  - Manages the routes that C(ip route add local PREFIX dev lo src 127.0.0.1) creates (table C(local),
    type C(local), scope C(host)), so that every address of a prefix is local to the host and a socket
    can accept connections for it (with TPROXY or C(IP_TRANSPARENT)).
  - One call manages the whole list. The routing table is read once, only the difference is applied
    over one netlink socket, and the result is read back.
  - Routes created by this module carry route protocol C(172) (shown by C(ip route) as C(proto 172));
    O(purge) and O(state=absent) only ever remove routes with that tag.
  - A listed prefix that already has a C(local) route added by someone else is taken over (replaced with
    the same route plus the tag) and reported in RV(adopted). The kernel's own local routes (C(proto kernel), that is
    C(127.0.0.0/8) and the addresses of interfaces) are never taken over, replaced or removed; a listed prefix
    that has one is already local, is left to the kernel and reported in RV(kernel_routes).
author:
  - anycast.edge developers (@anycast-edge)
options:
  prefixes:
    description:
      - IPv4 and IPv6 prefixes in CIDR notation, for example C(192.0.2.0/24) or C(2001:db8::/64).
      - Host bits must be zero (C(192.0.2.1/24) is refused, not silently changed into C(192.0.2.0/24)); a zone index
        (C(fe80::%lo/64)) is refused.
      - Refused, in every O(state) and whatever O(lockout_guard) says, because making them local breaks the host
        or means nothing - a default route (C(0.0.0.0/0), C(::/0)); any prefix that touches the unspecified
        (C(0.0.0.0/8), C(::)), loopback (C(127.0.0.0/8), C(::1)), link-local (C(169.254.0.0/16), C(fe80::/10)),
        multicast (C(224.0.0.0/4), C(ff00::/8)) or IPv4-mapped IPv6 (C(::ffff:0:0/96)) ranges, or the broadcast
        address C(255.255.255.255).
    type: list
    elements: str
    default: []
  state:
    description:
      - V(present) makes the listed prefixes local; V(absent) removes the listed prefixes' routes.
      - V(gathered) changes nothing and returns under RV(gathered) the AnyIP routes the collection owns on the
        host, as this module's input (given back as input, it changes nothing).
      - V(rendered) returns under RV(rendered) the commands this input would send to a host without any AnyIP
        route, without reading or touching any host or namespace (works without root).
    type: str
    choices: [present, absent, gathered, rendered]
    default: present
  purge:
    description:
      - With O(state=present), also remove every AnyIP route this collection owns that is not listed.
      - Routes without the collection's route protocol are never removed.
    type: bool
    default: false
  src:
    description:
      - Preferred source address of the IPv4 routes. C(127.0.0.1) keeps replies to local clients from
        coming back through the TPROXY rules (the reason the Spectrum write-up adds it).
      - IPv6 routes get no preferred source.
      - Must be a unicast address local to the host when the routes are written (a local route of table C(local)
        covers it); the kernel refuses any other, and writes C(0.0.0.0) as no source at all. Both are refused
        naming O(src), before anything changes.
    type: str
    default: 127.0.0.1
  device:
    description:
      - Interface the routes point at.
    type: str
    default: lo
  lockout_guard:
    description:
      - With O(state=present), refuse a listed prefix that contains the address of the SSH client the module runs
        for (C(SSH_CONNECTION), else C(SSH_CLIENT), of the module's environment), the gateway of any route of table
        C(main) of the managed namespace (both families, every nexthop), or an address of a subnet connected to one
        of its interfaces other than the host's own (an interface's address with its prefix length, or a
        point-to-point peer; loopback's are not, nor a host prefix that is only the host's own address). Made local,
        replies to the controller are delivered to the host itself and the controller is cut off; the gateway and
        the link's neighbours stop being reachable. The interface's own address as a host prefix (C(10.77.0.1/32))
        passes (it is the kernel's, left to it and reported in RV(kernel_routes)).
      - V(false) applies such a prefix anyway. At boot and on rollback the recorded prefixes are re-applied without
        the check (they passed it, or were overridden, when they were applied).
      - Like the SSH check of M(anycast.edge.hashlimit) (O(anycast.edge.hashlimit#module:ssh_guard)), it also
        applies with O(netns), since the module cannot tell which namespace the SSH session arrived in.
    type: bool
    default: true
  netns:
    description:
      - Name of a network namespace (as in C(ip netns list)) to work in instead of the host's.
      - The namespace must exist; it is never created.
    type: str
extends_documentation_fragment:
  - anycast.edge.persist
attributes:
  check_mode:
    support: full
    description: Predicts exactly what would change; changes nothing.
  diff_mode:
    support: full
    description: Shows the owned AnyIP routes before and after.
notes:
  - Needs C(CAP_NET_ADMIN) on the managed host (C(become)), and C(CAP_SYS_ADMIN) to enter O(netns); O(state=rendered)
    needs neither.
  - Routes are read and written over one raw rtnetlink socket, in batches (no pyroute2 needed).
seealso:
  - module: anycast.edge.tproxy_rule
'''

EXAMPLES = r'''
- name: Make two prefixes local on every edge host
  anycast.edge.anyip_route:
    prefixes:
      - 192.0.2.0/24
      - 2001:db8:100::/64

- name: Exactly these AnyIP prefixes, nothing else the collection added
  anycast.edge.anyip_route:
    prefixes: "{{ edge_anyip_prefixes }}"
    purge: true

- name: A prefix that contains the default gateway, on purpose (the gateway is reached another way)
  anycast.edge.anyip_route:
    prefixes: [203.0.113.0/24]
    lockout_guard: false

- name: Remove one prefix
  anycast.edge.anyip_route:
    prefixes: [198.51.100.0/24]
    state: absent

- name: What does this host have? (feed it back to another host to copy it)
  anycast.edge.anyip_route:
    state: gathered
  register: anyip_now
'''

RETURN = r'''
before:
  description: The owned AnyIP routes before the run, in this module's input shape.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: dict
  sample: {prefixes: [192.0.2.0/24], device: lo, src: 127.0.0.1}
after:
  description: The owned AnyIP routes after the run (predicted in check mode), in this module's input shape.
  returned: when something changed (in check mode, would change); unchanged, it is RV(before)
  type: dict
  sample: {prefixes: [192.0.2.0/24, "2001:db8:100::/64"], device: lo, src: 127.0.0.1}
commands:
  description: The route changes sent to the kernel (in check mode, that would be sent), as C(ip route) lines.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: ["ip route add local 2001:db8:100::/64 dev lo table local proto 172 scope host"]
gathered:
  description: With O(state=gathered), the owned AnyIP routes as this module's input.
  returned: when O(state=gathered)
  type: dict
  sample: {prefixes: [192.0.2.0/24], device: lo, src: 127.0.0.1}
rendered:
  description: With O(state=rendered), the commands the input would send to a host without AnyIP routes.
  returned: when O(state=rendered)
  type: list
  elements: str
  sample: ["ip route add local 192.0.2.0/24 dev lo table local proto 172 scope host src 127.0.0.1"]
persisted:
  description: The record re-applied at boot (null when the run removed it).
  returned: when O(persist=true) and not in check mode
  type: str
  sample: /etc/anycast-edge/state/anyip_route@host.json
confirm_token:
  description: With O(confirm_timeout), the token M(anycast.edge.confirm) takes; the change is rolled back unless confirmed.
  returned: when a change was applied with confirm_timeout
  type: str
added:
  description: Prefixes whose route was added (or would be, in check mode).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: [192.0.2.0/24]
removed:
  description: Prefixes whose owned route was removed.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: [198.51.100.0/24]
updated:
  description: Prefixes whose owned route was replaced because its device or source differed.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
adopted:
  description: Listed prefixes whose existing, untagged local route was taken over.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
kernel_routes:
  description: Listed prefixes that have the kernel's own local route (an address of an interface); left as they are.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: [198.51.100.10/32]
prefixes:
  description: All AnyIP prefixes the collection owns after the run (predicted in check mode).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: [192.0.2.0/24, 2001:db8:100::/64]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._anyip import AnyipRoutes
from ansible_collections.anycast.edge.plugins.module_utils._engine import persisted, run_module, states


ARGUMENT_SPEC = persisted(dict(
    prefixes=dict(type='list', elements='str', default=[]),
    state=dict(type='str', choices=states('present', 'absent'), default='present'),
    purge=dict(type='bool', default=False),
    src=dict(type='str', default='127.0.0.1'),
    device=dict(type='str', default='lo'),
    lockout_guard=dict(type='bool', default=True),
    netns=dict(type='str'),
))


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, AnyipRoutes)


if __name__ == '__main__':
    main()
