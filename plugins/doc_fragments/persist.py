# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  persist:
    description:
      - Record the applied state under O(state_dir) so that C(anycast-edge-restore.service) re-applies it
        at boot, without Ansible, before the proxy starts. V(false) changes only the running kernel.
      - Removing the objects (C(state=absent), or a purge) removes their records.
    type: bool
    default: true
  state_dir:
    description:
      - Where records, the restore script and the module payloads they run from are kept.
    type: path
    default: /etc/anycast-edge/state
  confirm_timeout:
    description:
      - Commit-confirm. When greater than 0 and the run changes something, the change is applied and then
        rolled back automatically after this many seconds unless M(anycast.edge.confirm) runs on the host
        before that (run it as the next task; if the change cut the controller off, it cannot, and the host
        heals itself). Only a confirmed change replaces the persisted record. 0 disables it.
      - A later applying run that writes the same record (same module, namespace and instance), with or without
        O(confirm_timeout), supersedes a change still waiting for confirmation - it confirms it and cancels its
        rollback (it reached the host, which is what M(anycast.edge.confirm) proves), warns and returns the keys
        as C(superseded); with O(confirm_timeout) it then arms its own rollback to the state it superseded.
        While a rollback whose deadline passed is being applied, such a run is refused and changes nothing.
    type: int
    default: 0
'''
