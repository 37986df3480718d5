#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: confirm
short_description: Confirm changes applied with confirm_timeout, so they are not rolled back
version_added: "0.1.0"
description:
  - Modules of this collection that change filtering or routing take C(confirm_timeout). Such a change is
    rolled back on the host when the timeout passes, unless this module runs on the host first.
  - Run it as the task right after the change. If the change cut the controller off the host, this task
    cannot reach it, nothing is confirmed, and the host restores its previous state by itself.
  - A confirmed change becomes the persisted state that is re-applied at boot.
author:
  - anycast.edge developers (@anycast-edge)
options:
  tokens:
    description:
      - Confirm only the changes with these tokens (the C(confirm_token) a module returned). Default is every
        pending change on the host.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Reports what would be confirmed; confirms nothing.
  diff_mode:
    support: none
    description: Nothing to show.
seealso:
  - module: anycast.edge.hashlimit
  - module: anycast.edge.tproxy_rule
'''

EXAMPLES = r'''
- name: Tighten the rate limit, but heal by itself if it locks us out
  anycast.edge.hashlimit:
    rate: 10/sec
    confirm_timeout: 60

- name: Still reachable, keep it
  anycast.edge.confirm:
'''

RETURN = r'''
before:
  description: The changes pending before the run (their keys).
  returned: always
  type: dict
  sample: {pending: ["hashlimit@host@RATE-LIMIT"]}
after:
  description: The changes still pending after the run (predicted in check mode).
  returned: when something changed (in check mode, would change); unchanged, it is RV(before)
  type: dict
  sample: {pending: []}
commands:
  description: One line per change confirmed (in check mode, that would be confirmed).
  returned: always
  type: list
  elements: str
  sample: ["confirm hashlimit@host@RATE-LIMIT: keep the change, cancel its rollback"]
confirmed:
  description: Keys (module@namespace[@instance]) of the changes confirmed.
  returned: always
  type: list
  elements: str
  sample: ["hashlimit@host@RATE-LIMIT"]
pending:
  description: Keys of the changes that were pending before this run.
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._confirm import Confirm
from ansible_collections.anycast.edge.plugins.module_utils._engine import run_module


def main():
    module = AnsibleModule(
        argument_spec=dict(tokens=dict(type='list', elements='str', default=[], no_log=False)),
        supports_check_mode=True,
    )
    run_module(module, Confirm)


if __name__ == '__main__':
    main()
