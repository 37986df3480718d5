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
    description: Concurrent connections the host is expected to track at peak (required with O(state=present)).
    type: int
  headroom:
    description: Factor applied to O(expected_connections), at least 1.
    type: float
    default: 2.0
  sysctl_file:
    description: The file that persists the settings (read by C(systemd-sysctl) at boot).
    type: path
    default: /etc/sysctl.d/90-anycast-edge-conntrack.conf
  runtime:
    description: Also set the running values where the namespace allows it.
    type: bool
    default: true
  state:
    description: V(absent) removes O(sysctl_file); running values are left as they are.
    type: str
    choices: [present, absent]
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
  returned: always
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
  returned: always
  type: dict
  sample: {count: 12, max: 262144, buckets: 262144, percent: 0.0}
'''

import math
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._hashlimit import conntrack_status
from ansible_collections.anycast.edge.plugins.module_utils._netns import enter_module_netns

PROC = '/proc/sys/net/netfilter/'
BUCKETS_PER_PAGE = 512      # PAGE_SIZE / sizeof(struct hlist_nulls_head)
ENTRIES_PER_BUCKET = 4


def compute(expected, headroom):
    buckets = int(math.ceil(expected * headroom / ENTRIES_PER_BUCKET))
    buckets = int(math.ceil(buckets / float(BUCKETS_PER_PAGE))) * BUCKETS_PER_PAGE
    return buckets * ENTRIES_PER_BUCKET, buckets


def file_text(expected, headroom, maximum, buckets):
    return ('# Managed by anycast.edge.conntrack_sizing: %d expected connections x headroom %s.\n'
            '# Buckets first: the maximum is four entries per bucket.\n'
            'net.netfilter.nf_conntrack_buckets = %d\n'
            'net.netfilter.nf_conntrack_max = %d\n' % (expected, headroom, buckets, maximum))


def read_file(path):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_file(module, path, text):
    directory = os.path.dirname(path) or '.'
    if not os.path.isdir(directory):
        module.fail_json(msg='sysctl_file: directory %s does not exist' % directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.conntrack-sizing.')
    try:
        with os.fdopen(fd, 'w') as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        module.fail_json(msg='sysctl_file: cannot write %s: %s' % (path, exc.strerror))


def read_value(key):
    try:
        with open(PROC + key) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def writable(key):
    try:
        return bool(os.stat(PROC + key).st_mode & 0o200)
    except OSError:
        return False


def set_runtime(module, wanted):
    """Set what the namespace lets us set; return the per-key report and whether anything changed."""
    report, changed = {}, False
    for key in ('nf_conntrack_buckets', 'nf_conntrack_max'):   # buckets first: max is sized on them
        before = read_value(key)
        entry = {'before': before, 'after': before, 'wanted': wanted[key], 'writable': writable(key)}
        if before is None:
            entry['writable'] = False
        elif before != wanted[key] and entry['writable'] and module.params['runtime']:
            changed = True
            if not module.check_mode:
                try:
                    with open(PROC + key, 'w') as handle:
                        handle.write('%d\n' % wanted[key])
                except OSError as exc:
                    module.fail_json(msg='the kernel refused net.netfilter.%s = %d: %s'
                                     % (key, wanted[key], exc.strerror))
                entry['after'] = read_value(key)
            else:
                entry['after'] = wanted[key]
        entry['applied'] = entry['after'] == wanted[key]
        report[key] = entry
    return report, changed


def main():
    module = AnsibleModule(
        argument_spec=dict(
            expected_connections=dict(type='int'),
            headroom=dict(type='float', default=2.0),
            sysctl_file=dict(type='path', default='/etc/sysctl.d/90-anycast-edge-conntrack.conf'),
            runtime=dict(type='bool', default=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            netns=dict(type='str'),
        ),
        required_if=[('state', 'present', ('expected_connections',))],
        supports_check_mode=True,
    )
    params = module.params
    path = params['sysctl_file']
    result = {'changed': False, 'sysctl_file': path}
    if params['state'] == 'present':
        if params['expected_connections'] < 1:
            module.fail_json(msg='expected_connections: must be at least 1, got %d' % params['expected_connections'])
        if not params['headroom'] >= 1.0:
            module.fail_json(msg='headroom: must be at least 1 (a factor above the expected peak), got %s'
                             % params['headroom'])
        maximum, buckets = compute(params['expected_connections'], params['headroom'])
        if maximum > 2 ** 31 - 1:
            module.fail_json(msg='expected_connections: %d x headroom %s needs nf_conntrack_max %d, more than the '
                                 'kernel accepts' % (params['expected_connections'], params['headroom'], maximum))
    enter_module_netns(module)

    before = read_file(path)
    after = None
    if params['state'] == 'present':
        after = file_text(params['expected_connections'], params['headroom'], maximum, buckets)
        result.update(nf_conntrack_max=maximum, nf_conntrack_buckets=buckets)
    if before != after:
        result['changed'] = True
        if not module.check_mode:
            if after is None:
                os.unlink(path)
            else:
                write_file(module, path, after)
    if params['state'] == 'present' and params['runtime'] and read_value('nf_conntrack_max') is None:
        # conntrack built as a module and not loaded yet: nothing to size until it is
        modprobe = module.get_bin_path('modprobe')
        if modprobe and not module.check_mode:
            rc, _out, err = module.run_command([modprobe, 'nf_conntrack'])
            if rc != 0:
                module.warn('conntrack is not loaded and modprobe nf_conntrack failed: %s' % err.strip())
            else:
                result['changed'] = True
                result['loaded_nf_conntrack'] = True
    if params['state'] == 'present':
        report, runtime_changed = set_runtime(module, {'nf_conntrack_max': maximum, 'nf_conntrack_buckets': buckets})
        result['changed'] = result['changed'] or runtime_changed
        result['runtime'] = report
        current_max = report['nf_conntrack_max']['after']
        if current_max is not None and current_max < maximum and not report['nf_conntrack_max']['writable']:
            module.warn('nf_conntrack_max is %d here, below the %d computed for %d connections, and this network '
                        'namespace cannot change it (the kernel keeps one global value, set in the initial '
                        'namespace): apply %s on the host' % (current_max, maximum, params['expected_connections'], path))
    result['conntrack'] = conntrack_status(module.warn)
    if module._diff:
        result['diff'] = {'before': before or '', 'after': after or '',
                          'before_header': path, 'after_header': path}
    module.exit_json(**result)


if __name__ == '__main__':
    main()
