#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: bgp_speaker
short_description: The host's BGP announcements, as BIRD 2 configuration validated and applied without a session reset
version_added: "0.2.0"
description:
  - Writes the whole BIRD 2 configuration file of an edge host - router id, eBGP neighbours with BFD, the
    prefixes to announce with their communities - from its parameters. The file is rendered the same way for the
    same input, so a run with unchanged parameters neither writes the file nor talks to BIRD.
  - A changed configuration is validated with C(bird -p -c) on a temporary copy first; only a valid one replaces the
    live file (atomically), and a running BIRD is then told to C(configure). BIRD reconfigures in place - a changed
    prefix list or community re-exports routes without resetting any session; only a change of a neighbour's own
    options (address, AS, password, timers) restarts that one session. RV(restarted) lists the sessions that
    were established before and whose start time changed.
  - B(What is exported) is strictly limited to the listed O(prefixes), exactly (no longer or shorter prefix), and
    only while the host's health daemon (the C(anycast.edge.bgp) role) has a route for the prefix in kernel table
    O(health_table) - BIRD learns that one table and nothing else. Such a route of type C(unreachable) (a draining
    host) is announced with the GRACEFUL_SHUTDOWN community 65535:0 (RFC 8326).
  - Nothing learned from the neighbours is installed into the kernel unless O(import_routes=true).
  - Refuses, before anything changes, a prefix the host does not serve (see O(served_prefixes)) unless
    O(allow_unserved=true), and any password that could break out of its string in the configuration.
author:
  - anycast.edge developers (@anycast-edge)
requirements:
  - BIRD 2 (Debian package C(bird2)) on the managed host
options:
  local_as:
    description: The host's AS number (asplain, 1-4294967295). Required unless O(state=gathered).
    type: int
  router_id:
    description: The BGP router id, an IPv4 address unique among the host's peers. Required unless O(state=gathered).
    type: str
  neighbors:
    description:
      - The host's BGP neighbours (its routers). An IPv4 neighbour carries the IPv4 prefixes, an IPv6 neighbour the
        IPv6 ones.
      - Required unless O(state=gathered).
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - Name of the session (BIRD protocol C(bgp_NAME)); a letter, then letters, digits or underscores.
          - Derived from the address when omitted (stable when the list is reordered).
        type: str
      address:
        description: The neighbour's address.
        type: str
        required: true
      remote_as:
        description: The neighbour's AS number.
        type: int
        required: true
      password:
        description:
          - TCP MD5 password (RFC 2385), at most 80 printable ASCII characters without quotes, braces, semicolons or
            backslashes.
        type: str
      hold_time:
        description: Hold time in seconds (at least 3).
        type: int
        default: 9
      keepalive_time:
        description: Keepalive interval in seconds, at most a third of O(neighbors[].hold_time); default a third of it.
        type: int
      bfd:
        description: Detect a dead or frozen neighbour with BFD (timers O(bfd_interval) and O(bfd_multiplier)).
        type: bool
        default: true
      multihop:
        description: TTL of a session to a neighbour that is not directly connected; 0 means directly connected.
        type: int
        default: 0
      source_address:
        description: Local address of the session (needed for a multihop session with BFD).
        type: str
  prefixes:
    description:
      - Prefixes to announce, as strings or as C({prefix, communities}).
      - Each is announced exactly as written, and only while the health daemon has it in O(health_table).
    type: list
    elements: raw
    default: []
  communities:
    description:
      - Communities added to every prefix, C(ASN:VALUE) (RFC 1997) or C(ASN:VALUE:VALUE) (large, RFC 8092).
      - 65535:0 (GRACEFUL_SHUTDOWN) is refused; the drain sets it.
    type: list
    elements: str
    default: []
  served_prefixes:
    description:
      - What this host serves; every prefix of O(prefixes) must lie inside one of them unless O(allow_unserved=true).
      - When omitted, the host's kernel decides - its local routes (AnyIP prefixes, addresses) and the routes this
        collection made (tenants' tables), in O(netns).
    type: list
    elements: str
  allow_unserved:
    description: Announce prefixes the host does not serve.
    type: bool
    default: false
  health_table:
    description: Kernel routing table the health daemon fills with the prefixes that may be announced now.
    type: int
    default: 4179
  import_routes:
    description:
      - Install the routes the neighbours send into the kernel's main table (ECMP over several routers).
      - By default nothing is imported at all; an edge's own routing stays as it is.
    type: bool
    default: false
  error_wait_time:
    description:
      - Seconds BIRD waits after a session failed (a BFD timeout, an error from the neighbour) before it tries again,
        as C([minimum, maximum]); the wait doubles with each failure in a row up to the maximum (flap dampening).
      - BIRD's own default, [60, 300], keeps a host that comes back from a freeze out for at least a minute.
    type: list
    elements: int
    default: [5, 300]
  bfd_interval:
    description: BFD transmit and receive interval in milliseconds (10-10000).
    type: int
    default: 200
  bfd_multiplier:
    description: BFD packets missed before the neighbour is declared down (2-255); detection takes interval times this.
    type: int
    default: 5
  extra_config:
    description:
      - BIRD configuration appended verbatim (other protocols, for example). It is validated with the rest, but what
        it exports is its own business.
    type: str
    default: ''
  state:
    description:
      - V(present) writes the configuration and has BIRD take it.
      - V(gathered) changes nothing and returns under RV(gathered) the input that writes the live O(config_file) as
        it is (given back as input, it changes nothing); nothing when the file was not written by this module.
      - V(rendered) returns under RV(rendered) the commands this input would run on a host whose BIRD has none of
        this configuration yet - the whole file as a here-document - without reading or touching any host or
        namespace, and without root. O(served_prefixes), when given, is checked; the host's own routes are not
        read.
    type: str
    choices: [present, gathered, rendered]
    default: present
  config_file:
    description: The live configuration file, the one BIRD was started with.
    type: path
    default: /etc/bird/bird.conf
  config_group:
    description: Group that owns the file (mode 0640); BIRD runs as it. Root when the group does not exist.
    type: str
    default: bird
  control_socket:
    description: BIRD's control socket (C(birdc -s)).
    type: path
    default: /run/bird/bird.ctl
  bird_binary:
    description: The C(bird) program, used to validate (C(bird -p -c FILE)).
    type: path
    default: /usr/sbin/bird
  netns:
    description:
      - Network namespace whose routes decide what is served when O(served_prefixes) is omitted; never created.
    type: str
attributes:
  check_mode:
    support: full
    description: Renders and validates the new configuration with C(bird -p) and reports the change; writes nothing, tells BIRD nothing.
  diff_mode:
    support: full
    description: The configuration file before and after, with passwords masked.
notes:
  - Needs root on the managed host (the configuration is owned by root and readable by BIRD's group only; it holds the
    passwords).
  - When BIRD is not running the file is written and RV(applied) is false; BIRD reads it when it starts.
  - RV(gathered) holds the neighbours' passwords as the file does (it is the input that rewrites the file exactly);
    register it with C(no_log) when there are any. RV(before), RV(after) and the commands show them masked.
seealso:
  - module: anycast.edge.edge_info
'''

EXAMPLES = r'''
- name: Announce the proxy's prefixes to two routers, with BFD
  anycast.edge.bgp_speaker:
    local_as: 64512
    router_id: 198.51.100.11
    neighbors:
      - {name: fra_r1, address: 198.51.100.1, remote_as: 64500, password: "{{ vault_bgp_password }}"}
      - {name: fra_r1_v6, address: "2001:db8:ffff::1", remote_as: 64500}
    prefixes:
      - 192.0.2.0/24
      - {prefix: "2001:db8:100::/48", communities: ["64500:100"]}
    communities: ["64512:1"]

- name: The BIRD configuration this input writes, for review (no host is touched; no root needed)
  anycast.edge.bgp_speaker:
    state: rendered
    local_as: 64512
    router_id: 198.51.100.11
    neighbors: [{address: 198.51.100.1, remote_as: 64500}]
    prefixes: [192.0.2.0/24]
    served_prefixes: [192.0.2.0/24]
  delegate_to: localhost

- name: What the host announces, as this module's input
  anycast.edge.bgp_speaker:
    state: gathered
  register: bgp_now
  no_log: true      # the neighbours' passwords are in it
'''

RETURN = r'''
before:
  description: What the live file holds, as this module's input (passwords masked); empty when there is no file or
    it was not written by this module.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: dict
  sample: {local_as: 64512, router_id: 198.51.100.11, neighbors: [{name: r1, address: 198.51.100.1, remote_as: 64500,
           hold_time: 9, bfd: true, multihop: 0}], prefixes: [192.0.2.0/24], communities: [], health_table: 4179,
           import_routes: false, error_wait_time: [5, 300], bfd_interval: 200, bfd_multiplier: 5, extra_config: ''}
after:
  description: The same after the run (predicted in check mode).
  returned: when something changed (in check mode, would change); unchanged, it is RV(before)
  type: dict
commands:
  description:
    - What was done (in check mode, would be), as shell commands - the new file as a here-document (passwords masked),
      its check with C(bird -p -c), the rename over the live file, C(birdc configure) (left out when BIRD is not
      running). Empty when the live file already is what the input writes.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: ["candidate=$(mktemp /etc/bird/.bird.conf.XXXXXXXX)", "cat > \"$candidate\" <<'EOF' ... EOF",
           "chgrp bird \"$candidate\" && chmod 0640 \"$candidate\"", "/usr/sbin/bird -p -c \"$candidate\"",
           "mv \"$candidate\" /etc/bird/bird.conf", "birdc -s /run/bird/bird.ctl configure"]
gathered:
  description: With O(state=gathered), the input that writes the live file exactly as it is (passwords included).
  returned: when O(state=gathered)
  type: dict
rendered:
  description: With O(state=rendered), the commands the input would run on a host without this configuration.
  returned: when O(state=rendered)
  type: list
  elements: str
config_file:
  description: The live configuration file.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: str
  sample: /etc/bird/bird.conf
applied:
  description: Whether a running BIRD took the new configuration (false when nothing changed, in check mode, or BIRD is not running).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: bool
restarted:
  description: BGP sessions that were established before the reconfiguration and whose start time changed (their own options changed).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: [bgp_fra_r1]
sessions:
  description: BIRD's BGP sessions after the run, with their state and since when (empty when BIRD is not running).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: dict
  sample: [{name: bgp_fra_r1, state: Established, since: "2026-12-05 08:41:51.473", neighbor: 198.51.100.1}]
prefixes:
  description: The prefixes the configuration exports (while healthy), in order.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: [192.0.2.0/24, "2001:db8:100::/48"]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._bgp_speaker import BgpSpeaker
from ansible_collections.anycast.edge.plugins.module_utils._engine import run_module, states

REQUIRED = ['local_as', 'router_id', 'neighbors']


def main():
    module = AnsibleModule(
        argument_spec=dict(
            local_as=dict(type='int'),
            router_id=dict(type='str'),
            neighbors=dict(type='list', elements='dict', options=dict(
                name=dict(type='str'),
                address=dict(type='str', required=True),
                remote_as=dict(type='int', required=True),
                password=dict(type='str', no_log=True),
                hold_time=dict(type='int', default=9),
                keepalive_time=dict(type='int'),
                bfd=dict(type='bool', default=True),
                multihop=dict(type='int', default=0),
                source_address=dict(type='str'),
            )),
            prefixes=dict(type='list', elements='raw', default=[]),
            communities=dict(type='list', elements='str', default=[]),
            served_prefixes=dict(type='list', elements='str'),
            allow_unserved=dict(type='bool', default=False),
            health_table=dict(type='int', default=4179),
            import_routes=dict(type='bool', default=False),
            error_wait_time=dict(type='list', elements='int', default=[5, 300]),
            bfd_interval=dict(type='int', default=200),
            bfd_multiplier=dict(type='int', default=5),
            extra_config=dict(type='str', default=''),
            state=dict(type='str', choices=states('present'), default='present'),
            config_file=dict(type='path', default='/etc/bird/bird.conf'),
            config_group=dict(type='str', default='bird'),
            control_socket=dict(type='path', default='/run/bird/bird.ctl'),
            bird_binary=dict(type='path', default='/usr/sbin/bird'),
            netns=dict(type='str'),
        ),
        required_if=[('state', 'present', REQUIRED), ('state', 'rendered', REQUIRED)],
        supports_check_mode=True,
    )
    run_module(module, BgpSpeaker)


if __name__ == '__main__':
    main()
