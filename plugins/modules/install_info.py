#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: install_info
short_description: What a role has installed on a host - files, units, users, groups, packages - in one read
version_added: "0.1.0"
description:
  - Reads, and never changes, the files, systemd units, users, groups and packages a role installs, so that the
    role runs each of its copy, template, file, systemd, user, group and package tasks only where the host differs
    from what the task would make. A run with nothing to do then costs this one module run instead of one or two
    per object.
  - Each file that exists is reported as M(ansible.builtin.find) reports it (not following a symbolic link), with
    the SHA-1 of a regular file's content; P(anycast.edge.file_differs#filter) compares such an entry with what a
    task would write.
  - The units' properties come from one C(systemctl show); a unit systemd does not know is reported with
    C(LoadState=not-found).
  - The packages come from one C(dpkg-query) (Debian and Ubuntu), for the names asked only; unlike
    M(ansible.builtin.package_facts) it does not load the package lists, whose size makes that module take
    seconds on a host with a full mirror. A package counts as installed where it has an installed version, as
    M(ansible.builtin.package_facts) counts it (any state but not-installed and config-files).
author:
  - anycast.edge developers (@anycast-edge)
options:
  paths:
    description: Absolute paths of the files and directories to read; those that do not exist are left out of RV(files).
    type: list
    elements: path
    default: []
  units:
    description: Systemd units whose properties to read (full names, such as V(app.service)).
    type: list
    elements: str
    default: []
  properties:
    description: The unit properties to read (C(Id) is always read).
    type: list
    elements: str
    default: [Id, LoadState, UnitFileState, ActiveState]
  users:
    description: Users to look up; those that do not exist are left out of RV(users).
    type: list
    elements: str
    default: []
  groups:
    description: Groups to look up; those that do not exist are left out of RV(groups).
    type: list
    elements: str
    default: []
  packages:
    description: Debian packages to look up (names, no patterns); those not installed are left out of RV(packages).
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Never changes anything, in either mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
seealso:
  - module: ansible.builtin.find
  - module: ansible.builtin.getent
  - module: ansible.builtin.package_facts
'''

EXAMPLES = r'''
- name: Read what the role installs
  anycast.edge.install_info:
    paths: [/etc/app, /etc/app/app.conf, /etc/systemd/system/app.service]
    units: [app.service]
    users: [app]
    groups: [app]
    packages: [python3, app]
  register: installed

- name: Install the packages that are missing
  ansible.builtin.apt:
    name: "{{ ['python3', 'app'] | difference(installed.packages.keys()) }}"
  when: "['python3', 'app'] | difference(installed.packages.keys()) | length > 0"

- name: Create the service group where it is missing
  ansible.builtin.group:
    name: app
    system: true
  when: "'app' not in installed.groups"

- name: Write the configuration where it differs
  ansible.builtin.template:
    src: app.conf.j2
    dest: /etc/app/app.conf
    owner: root
    group: app
    mode: "0640"
  when: >-
    installed.files | anycast.edge.file_differs('/etc/app/app.conf',
      lookup('ansible.builtin.template', 'app.conf.j2') | hash('sha1'), '0640', 'root', 'app')

- name: Start the service unless it runs and is enabled
  ansible.builtin.systemd_service:
    name: app.service
    enabled: true
    state: started
  when: (installed.units['app.service'] | default({})).values() | list is not superset(['enabled', 'active'])
'''

RETURN = r'''
files:
  description: The paths of O(paths) that exist, in the order given, each with the keys M(ansible.builtin.find) reports.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The path as given.
      type: str
    mode:
      description: Permission bits, four octal digits.
      type: str
      sample: "0644"
    isdir:
      description: A directory.
      type: bool
    isreg:
      description: A regular file.
      type: bool
    islnk:
      description: A symbolic link (not followed).
      type: bool
    uid:
      description: Owner's user id.
      type: int
    gid:
      description: Group id.
      type: int
    pw_name:
      description: Owner's name (empty when the user id has none).
      type: str
    gr_name:
      description: Group's name (empty when the group id has none).
      type: str
    size:
      description: Size in bytes.
      type: int
    checksum:
      description: SHA-1 of the content, for a regular file only.
      type: str
  sample: [{path: /etc/app/app.conf, mode: "0640", isdir: false, isreg: true, islnk: false, uid: 0, gid: 998,
            pw_name: root, gr_name: app, size: 120, checksum: 0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33}]
units:
  description: Each unit of O(units) by its C(Id), with the properties of O(properties) as systemd prints them.
  returned: always
  type: dict
  sample: {app.service: {Id: app.service, LoadState: loaded, UnitFileState: enabled, ActiveState: active}}
users:
  description: Each user of O(users) that exists, with its primary group's name.
  returned: always
  type: dict
  sample: {app: {uid: 998, gid: 998, group: app, comment: app service, home: /nonexistent, shell: /usr/sbin/nologin}}
groups:
  description: Each group of O(groups) that exists.
  returned: always
  type: dict
  sample: {app: {gid: 998}}
packages:
  description: Each package of O(packages) that is installed, with its version and architecture.
  returned: always
  type: dict
  sample: {python3: {version: 3.11.2-1+b1, arch: amd64}}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._engine import run_reader
from ansible_collections.anycast.edge.plugins.module_utils._install_info import DEFAULT_PROPERTIES, read


def main():
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type='list', elements='path', default=[]),
            units=dict(type='list', elements='str', default=[]),
            properties=dict(type='list', elements='str', default=list(DEFAULT_PROPERTIES)),
            users=dict(type='list', elements='str', default=[]),
            groups=dict(type='list', elements='str', default=[]),
            packages=dict(type='list', elements='str', default=[]),
        ),
        supports_check_mode=True,
    )
    run_reader(module, read)


if __name__ == '__main__':
    main()
