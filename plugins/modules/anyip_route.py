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
requirements:
  - pyroute2 (0.7 or later) on the managed host
options:
  prefixes:
    description:
      - IPv4 and IPv6 prefixes in CIDR notation, for example C(192.0.2.0/24) or C(2001:db8::/64).
      - Host bits must be zero (C(192.0.2.1/24) is refused, not silently changed into C(192.0.2.0/24)).
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
    type: str
    choices: [present, absent]
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
        for (C(SSH_CONNECTION), else C(SSH_CLIENT), of the module's environment) or the gateway of a default route
        of the managed namespace (table C(main), both families, every nexthop). Made local, replies to the
        controller are delivered to the host itself and the controller is cut off; the gateway's address stops
        being reachable.
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
  - Needs C(CAP_NET_ADMIN) on the managed host (C(become)), and C(CAP_SYS_ADMIN) to enter O(netns).
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
'''

RETURN = r'''
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
  returned: always
  type: list
  elements: str
  sample: [192.0.2.0/24]
removed:
  description: Prefixes whose owned route was removed.
  returned: always
  type: list
  elements: str
  sample: [198.51.100.0/24]
updated:
  description: Prefixes whose owned route was replaced because its device or source differed.
  returned: always
  type: list
  elements: str
adopted:
  description: Listed prefixes whose existing, untagged local route was taken over.
  returned: always
  type: list
  elements: str
kernel_routes:
  description: Listed prefixes that have the kernel's own local route (an address of an interface); left as they are.
  returned: always
  type: list
  elements: str
  sample: [198.51.100.10/32]
prefixes:
  description: All AnyIP prefixes the collection owns after the run (predicted in check mode).
  returned: always
  type: list
  elements: str
  sample: [192.0.2.0/24, 2001:db8:100::/64]
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._netns import enter_module_netns
from ansible_collections.anycast.edge.plugins.module_utils._persist import (
    PERSIST_ARGUMENT_SPEC, HostLock, Persistence)
from ansible_collections.anycast.edge.plugins.module_utils._netlink import (
    NetlinkFailure, ROUTE_PROTO, RawRtnl, open_iproute, require_pyroute2)
from ansible_collections.anycast.edge.plugins.module_utils._validate import (
    ParamError, check_ifname, check_unicast_prefix, parse_address, parse_prefix, require_unique, ssh_client_address)
from ansible_collections.anycast.edge.plugins.module_utils import _anyip


def validate(params):
    networks = [check_unicast_prefix(parse_prefix(p, 'prefixes[%d]' % i), 'prefixes[%d]' % i)
                for i, p in enumerate(params['prefixes'])]
    require_unique([str(n) for n in networks], 'prefixes', 'prefix')
    src = parse_address(params['src'], 'src', family=4)
    check_ifname(params['device'], 'device')
    return networks, str(src)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            prefixes=dict(type='list', elements='str', default=[]),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            purge=dict(type='bool', default=False),
            src=dict(type='str', default='127.0.0.1'),
            device=dict(type='str', default='lo'),
            lockout_guard=dict(type='bool', default=True),
            netns=dict(type='str'),
            **PERSIST_ARGUMENT_SPEC
        ),
        supports_check_mode=True,
    )
    try:
        networks, src = validate(module.params)
    except ParamError as exc:
        module.fail_json(msg=str(exc))
    persistence = Persistence(module, 'anyip_route')
    persistence.validate()
    require_pyroute2(module)
    enter_module_netns(module)
    # The record is written under the same lock as the change: a concurrent
    # run cannot record an older set after a newer one.
    with HostLock(module):
        result, owned_before, owned_after = sync(module, networks, src)
        # What is recorded (and rolled back to) is the whole owned set, not this
        # call's list: several calls without purge each add to it.
        # The recorded prefixes passed the lockout guard (or were let through) when applied; at
        # boot there is no SSH client to check, and a rollback restores what was there.
        recorded = dict(persistence.params(), prefixes=owned_after, purge=True, state='present',
                        lockout_guard=False)
        previous = dict(recorded, prefixes=owned_before)
        result.update(persistence.save(bool(owned_after), result['changed'], params=recorded,
                                       rollback_params=previous))
    module.exit_json(**result)


def sync(module, networks, src):
    """Read, diff, apply unless check mode, read back. Returns (result, owned before, owned after)."""
    present = module.params['state'] == 'present'
    with open_iproute() as ipr, RawRtnl() as raw:
        oif = _anyip.link_index(ipr, module.params['device'])
        if oif is None:
            module.fail_json(msg="device: interface '%s' does not exist%s" % (
                module.params['device'],
                " in network namespace '%s'" % module.params['netns'] if module.params['netns'] else ''))
        desired = [_anyip.AnyipRoute(net, oif, src if net.version == 4 else None) for net in networks]
        names = _anyip.link_names(ipr)
        current = _anyip.read_local_routes(raw)
        if present and module.params['lockout_guard']:
            netns = module.params['netns']
            try:
                _anyip.check_lockout(networks, ssh_client_address(os.environ), _anyip.default_gateways(raw),
                                     " of network namespace '%s'" % netns if netns else ' of this host')
            except ParamError as exc:
                module.fail_json(msg=str(exc))
        add, replace, remove, adopt = _anyip.plan(current, desired, present, module.params['purge'])
        kernel = _anyip.kernel_held(current, desired) if present else []

        owned_before = {k: r for k, r in current.items() if r.proto == ROUTE_PROTO}
        owned_after = dict(owned_before)
        for route in remove:
            owned_after.pop(route.key, None)
        for route in add + [new for new, _old in replace]:
            owned_after[route.key] = route

        changed = bool(add or replace or remove)
        if changed and not module.check_mode:
            try:
                _anyip.apply(raw, add, replace, remove)
            except NetlinkFailure as exc:
                module.fail_json(msg='%s (changes made by this run were undone)' % exc)
            readback = _anyip.read_local_routes(raw)
            wrong = [str(r.network) for r in add + [n for n, _o in replace]
                     if r.key not in readback or not r.same(readback[r.key])]
            wrong += [str(r.network) for r in remove if r.key in readback and readback[r.key].proto == ROUTE_PROTO]
            if wrong:
                module.fail_json(msg='read-back after writing does not match for: %s' % ', '.join(wrong))

        result = dict(
            changed=changed,
            added=[str(r.network) for r in add],
            removed=[str(r.network) for r in remove],
            updated=[str(n.network) for n, old in replace if old.proto == ROUTE_PROTO],
            adopted=[str(r.network) for r in adopt],
            kernel_routes=[str(r.network) for r in kernel],
            prefixes=[key[1] for key in sorted(owned_after, key=_anyip._sort_key)],
        )
        if adopt:
            module.warn('took over existing local routes not created by this collection: %s'
                        % ', '.join(result['adopted']))
        if kernel:
            module.warn("left to the kernel: %s already local through the kernel's own route (an address of an "
                        'interface); it is neither taken over nor recorded' % ', '.join(result['kernel_routes']))
        if module._diff:
            before = _anyip.render(owned_before, names)
            after = _anyip.render(owned_after, names)
            result['diff'] = dict(before='\n'.join(before) + ('\n' if before else ''),
                                  after='\n'.join(after) + ('\n' if after else ''))
    ordered = sorted(owned_before, key=_anyip._sort_key)
    return result, [k[1] for k in ordered], result['prefixes']


if __name__ == '__main__':
    main()
