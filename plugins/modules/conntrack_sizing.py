#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: conntrack_sizing
short_description: Size the conntrack table for an expected number of connections, persistently
version_added: "0.1.0"
description:
  - Computes C(net.netfilter.nf_conntrack_buckets) and C(net.netfilter.nf_conntrack_max) from the number of
    concurrent connections the host is expected to track, with headroom, keeping the ratio the conntrack
    documentation recommends (four entries per bucket), and writes both to a file in C(/etc/sysctl.d/) so they
    survive a reboot.
  - C(buckets) is O(expected_connections) x O(headroom) / 4 rounded up to a multiple of 512 (the kernel allocates
    the hash in pages of 512 buckets and rounds a written value up the same way); C(max) is 4 x C(buckets).
  - When conntrack reaches C(nf_conntrack_max) new connections are dropped ("nf_conntrack - table full"); with too
    few buckets lookups slow down because the table never resizes itself. This module sets both together.
  - If conntrack is a loadable module that is not loaded yet, it is loaded (C(modprobe nf_conntrack)) so that
    its running values can be set.
  - The running values are also set when this network namespace can change them. In this kernel (6.x) both are
    global, writable only in the initial network namespace and read-only in every other one; elsewhere the module
    still writes the file, reports RV(runtime) as not applied and warns when the running maximum is below the
    computed one. C(nf_conntrack_count) is per namespace.
author:
  - anycast.edge developers (@anycast-edge)
options:
  expected_connections:
    description:
      - Concurrent connections the host is expected to track at peak (required with O(state=present) and
        O(state=rendered)). A number; C(true) is refused rather than taken as 1.
    type: int
  headroom:
    description:
      - Factor applied to O(expected_connections), a finite number from 1 to 1000 (more is a typo, not a sizing;
        C(inf) and C(nan) are refused).
    type: float
    default: 2.0
  sysctl_file:
    description:
      - The file that persists the settings (read by C(systemd-sysctl) at boot).
      - An absolute path to a file; a relative path (it would land in whatever directory the module runs in)
        and a directory are refused.
    type: path
    default: /etc/sysctl.d/90-anycast-edge-conntrack.conf
  runtime:
    description: Also set the running values where the namespace allows it.
    type: bool
    default: true
  state:
    description:
      - V(present) writes O(sysctl_file) and sets the running values; V(absent) removes O(sysctl_file) (running values
        are left as they are).
      - V(gathered) changes nothing and returns under RV(gathered) the sizing O(sysctl_file) holds, as this module's
        parameters (given back as input, they change nothing).
      - V(rendered) returns under RV(rendered) the commands these parameters would run on a host without the file,
        without reading or touching any host or namespace (works without root).
    type: str
    choices: [present, absent, gathered, rendered]
    default: present
  netns:
    description: Network namespace whose values are read and set; it must exist and is never created.
    type: str
attributes:
  check_mode:
    support: full
    description: Reports what would change; changes nothing.
  diff_mode:
    support: full
    description: Shows the sysctl file before and after.
notes:
  - On kernels where conntrack is a loadable module, C(nf_conntrack_buckets) from C(/etc/sysctl.d/) only applies
    if the module is loaded before C(systemd-sysctl) runs; the C(hashsize) module parameter is the alternative.
seealso:
  - module: anycast.edge.hashlimit
'''

EXAMPLES = r'''
- name: Room for 500000 concurrent connections, twice over
  anycast.edge.conntrack_sizing:
    expected_connections: 500000
    headroom: 2
'''

RETURN = r'''
before:
  description: The sizing O(sysctl_file) held before the run, as this module's parameters.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: dict
  sample: {expected_connections: 100000, headroom: 2.0, sysctl_file: /etc/sysctl.d/90-anycast-edge-conntrack.conf}
after:
  description: The sizing after the run (predicted in check mode), as this module's parameters.
  returned: when something changed (in check mode, would change); unchanged, it is RV(before)
  type: dict
  sample: {expected_connections: 500000, headroom: 2.0, sysctl_file: /etc/sysctl.d/90-anycast-edge-conntrack.conf}
commands:
  description: What was done (in check mode, would be done), as shell commands.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: ["sysctl -w net.netfilter.nf_conntrack_buckets=250880"]
gathered:
  description: With O(state=gathered), the sizing O(sysctl_file) holds, as this module's parameters.
  returned: when O(state=gathered)
  type: dict
  sample: {expected_connections: 500000, headroom: 2.0, sysctl_file: /etc/sysctl.d/90-anycast-edge-conntrack.conf}
rendered:
  description: With O(state=rendered), the commands these parameters would run on a host without the file.
  returned: when O(state=rendered)
  type: list
  elements: str
nf_conntrack_max:
  description: The computed maximum.
  returned: when state is present
  type: int
  sample: 1003520
nf_conntrack_buckets:
  description: The computed number of buckets (max / 4).
  returned: when state is present
  type: int
  sample: 250880
sysctl_file:
  description: Path of the persisted settings.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: str
  sample: /etc/sysctl.d/90-anycast-edge-conntrack.conf
runtime:
  description:
    - Per setting, the running value before the run (C(before)), after it (C(after)), whether this namespace can
      write it (C(writable)) and whether it now has the computed value (C(applied)).
  returned: when state is present
  type: dict
  sample: {nf_conntrack_max: {before: 262144, after: 262144, writable: false, applied: false}}
loaded_nf_conntrack:
  description: True when the module loaded the nf_conntrack kernel module.
  returned: when it did
  type: bool
  sample: true
conntrack:
  description: Entries tracked in this namespace against the running maximum.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: dict
  sample: {count: 12, max: 262144, buckets: 262144, percent: 0.0}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._conntrack import ConntrackSizing
from ansible_collections.anycast.edge.plugins.module_utils._engine import run_module, states


def main():
    module = AnsibleModule(
        argument_spec=dict(
            expected_connections=dict(type='int'),
            headroom=dict(type='float', default=2.0),
            sysctl_file=dict(type='path', default='/etc/sysctl.d/90-anycast-edge-conntrack.conf'),
            runtime=dict(type='bool', default=True),
            state=dict(type='str', choices=states('present', 'absent'), default='present'),
            netns=dict(type='str'),
        ),
        required_if=[('state', 'present', ('expected_connections',)),
                     ('state', 'rendered', ('expected_connections',))],
        supports_check_mode=True,
    )
    run_module(module, ConntrackSizing)


if __name__ == '__main__':
    main()
