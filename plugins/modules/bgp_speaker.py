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
    options (address, AS, password, timers) restarts that one session. RV(restarted) lists the sessions whose
    start time changed.
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
    description: The host's AS number (asplain, 1-4294967295).
    type: int
    required: true
  router_id:
    description: The BGP router id, an IPv4 address unique among the host's peers.
    type: str
    required: true
  neighbors:
    description:
      - The host's BGP neighbours (its routers). An IPv4 neighbour carries the IPv4 prefixes, an IPv6 neighbour the
        IPv6 ones.
    type: list
    elements: dict
    required: true
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
'''

RETURN = r'''
config_file:
  description: The live configuration file.
  returned: always
  type: str
  sample: /etc/bird/bird.conf
applied:
  description: Whether a running BIRD took the new configuration (false when nothing changed, in check mode, or BIRD is not running).
  returned: always
  type: bool
restarted:
  description: BGP sessions whose start time changed across the reconfiguration (their own options changed).
  returned: always
  type: list
  elements: str
  sample: [bgp_fra_r1]
sessions:
  description: BIRD's BGP sessions after the run, with their state and since when (empty when BIRD is not running).
  returned: always
  type: list
  elements: dict
  sample: [{name: bgp_fra_r1, state: Established, since: "2026-12-05 08:41:51.473", neighbor: 198.51.100.1}]
prefixes:
  description: The prefixes the configuration exports (while healthy), in order.
  returned: always
  type: list
  elements: str
  sample: [192.0.2.0/24, "2001:db8:100::/48"]
'''

import grp
import ipaddress
import os
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._bgp import Speaker, mask_passwords
from ansible_collections.anycast.edge.plugins.module_utils._bird import BirdControl, BirdError, BirdUnavailable
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError
from ansible_collections.anycast.edge.plugins.module_utils._lock import host_lock
from ansible_collections.anycast.edge.plugins.module_utils._netns import enter_netns
from ansible_collections.anycast.edge.plugins.module_utils._validate import ParamError, parse_prefix

ARGUMENT_SPEC = dict(
    local_as=dict(type='int', required=True),
    router_id=dict(type='str', required=True),
    neighbors=dict(type='list', elements='dict', required=True, options=dict(
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
    config_file=dict(type='path', default='/etc/bird/bird.conf'),
    config_group=dict(type='str', default='bird'),
    control_socket=dict(type='path', default='/run/bird/bird.ctl'),
    bird_binary=dict(type='path', default='/usr/sbin/bird'),
    netns=dict(type='str'),
)


def served_by_kernel():
    """What the kernel of this namespace serves: local routes (AnyIP prefixes, addresses) and the
    collection's own routes (tenants' tables)."""
    # Imported here: _netlink imports pyroute2 (75 ms), which the role's runs (served_prefixes given) never need.
    from ansible_collections.anycast.edge.plugins.module_utils._netlink import (  # pylint: disable=import-outside-toplevel
        ROUTE_PROTO, RTN_LOCAL, TABLE_LOCAL, RawRtnl)
    served = []
    with RawRtnl() as raw:
        for family in (4, 6):
            for route in raw.routes(family, None):
                if (route['table'] == TABLE_LOCAL and route['type'] == RTN_LOCAL) or route['proto'] == ROUTE_PROTO:
                    served.append(ipaddress.ip_network('%s/%d' % (route['dst'], route['dst_len'])))
    return served


class BirdConfig(object):
    """The live file, its candidate, and the BIRD that reads it."""

    def __init__(self, module):
        self.module = module
        self.path = module.params['config_file']
        self.socket = module.params['control_socket']

    def current(self):
        try:
            with open(self.path) as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.module.fail_json(msg='config_file: cannot read %s: %s' % (self.path, exc.strerror))

    def write_candidate(self, text):
        """The new text in a temporary file beside the live one (same file system: the rename is atomic)."""
        directory = os.path.dirname(self.path) or '.'
        if not os.path.isdir(directory):
            self.module.fail_json(msg='config_file: directory %s does not exist (is bird2 installed?)' % directory)
        handle, path = tempfile.mkstemp(dir=directory, prefix='.%s.' % os.path.basename(self.path))
        with os.fdopen(handle, 'w') as out:
            out.write(text)
        try:
            gid = grp.getgrnam(self.module.params['config_group']).gr_gid
        except KeyError:
            gid = 0
        os.chown(path, 0, gid)
        os.chmod(path, 0o640)
        return path

    def validate(self, path):
        """Fail naming BIRD's complaint when `bird -p` refuses PATH (which is then removed)."""
        binary = self.module.params['bird_binary']
        if not os.access(binary, os.X_OK):
            os.unlink(path)
            self.module.fail_json(msg='bird_binary: %s is not an executable (install the bird2 package)' % binary)
        proc = subprocess.run([binary, '-p', '-c', path], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            os.unlink(path)
            said = mask_passwords((proc.stderr + proc.stdout).strip()).replace(path, self.path + ' (candidate)')
            self.module.fail_json(msg='BIRD refused the new configuration, the live %s and the running BIRD are '
                                      'unchanged: %s' % (self.path, said))

    def sessions(self):
        """{name: session} of BIRD's BGP protocols, or None when BIRD is not running."""
        try:
            with BirdControl(self.socket) as bird:
                return dict((p['name'], p) for p in bird.protocols() if p['proto'] == 'BGP')
        except BirdUnavailable:
            return None
        except BirdError as exc:
            self.module.fail_json(msg='control_socket: %s' % exc)

    def apply(self, candidate, previous):
        """Replace the live file with CANDIDATE and reconfigure BIRD; on refusal, put PREVIOUS back."""
        os.replace(candidate, self.path)
        try:
            with BirdControl(self.socket) as bird:
                bird.configure()
            return True
        except BirdUnavailable:
            return False
        except BirdError as exc:
            if previous is None:
                os.unlink(self.path)
            else:
                os.replace(self.write_candidate(previous), self.path)
            self.module.fail_json(msg='BIRD did not take the new configuration; the previous %s is back in place: %s'
                                      % (self.path, exc))


def session_list(sessions):
    return [{'name': name, 'state': s.get('bgp_state') or s['state'], 'since': s['since'],
             'neighbor': s.get('neighbor_address'), 'info': s['info']} for name, s in sorted((sessions or {}).items())]


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    try:
        speaker = Speaker(params)
        served = None
        if params['served_prefixes'] is not None:
            served = [parse_prefix(p, 'served_prefixes[%d]' % i) for i, p in enumerate(params['served_prefixes'])]
    except ParamError as exc:
        module.fail_json(msg=str(exc))
    if served is None:
        try:
            if params['netns']:
                enter_netns(params['netns'])
        except EdgeError as exc:
            module.fail_json(msg=str(exc))
        served = served_by_kernel()
    try:
        speaker.check_served(served, params['allow_unserved'])
    except ParamError as exc:
        module.fail_json(msg=str(exc))
    for family in speaker.unreachable_families():
        module.warn('IPv%d prefixes are configured but no neighbour is IPv%d: they are not announced' % (family, family))

    config = BirdConfig(module)
    text = speaker.render()
    result = dict(changed=False, config_file=config.path, applied=False, restarted=[],
                  prefixes=[str(p.network) for p in speaker.prefixes])
    try:
        with host_lock():
            current = config.current()
            if module._diff:
                result['diff'] = dict(before=mask_passwords(current or ''), after=mask_passwords(text),
                                      before_header=config.path, after_header=config.path)
            if current == text:
                result['sessions'] = session_list(config.sessions())
                module.exit_json(**result)
            result['changed'] = True
            candidate = config.write_candidate(text)
            config.validate(candidate)
            if module.check_mode:
                os.unlink(candidate)
                result['sessions'] = session_list(config.sessions())
                module.exit_json(**result)
            before = config.sessions()
            result['applied'] = config.apply(candidate, current)
            after = config.sessions()
    except EdgeError as exc:   # the host lock stayed taken
        module.fail_json(msg=str(exc))
    result['sessions'] = session_list(after)
    result['restarted'] = sorted(name for name, s in (after or {}).items()
                                 if name in (before or {}) and before[name]['since'] != s['since'])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
