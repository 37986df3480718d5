# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Confirming changes applied with confirm_timeout: the engine's smallest domain.

Its "kernel" is the pending directory of commit-confirm (``_persist``): read
the pending changes, plan which to confirm, confirm them (the record each
carries becomes the persisted one; its watchdog finds the file gone and stops).
"""

from __future__ import annotations

from ansible_collections.anycast.edge.plugins.module_utils._engine import Domain, Op, OpPlan
from ansible_collections.anycast.edge.plugins.module_utils._persist import confirm_pending, list_pending


class Confirm(Domain):
    name = 'confirm'
    persist = False

    def validate(self):
        self.tokens = set(self.params['tokens'])

    def read(self):
        return list_pending()

    def plan(self, state):
        wanted = [p for p in state if not self.tokens or p.get('token') in self.tokens]
        plan = OpPlan([Op(['confirm %s: keep the change, cancel its rollback' % p['key']], confirm_pending,
                          set([p['token']])) for p in wanted])
        plan.keys = [p['key'] for p in wanted]
        return plan

    def apply(self, plan):
        plan.run()

    def gather(self, state):
        return {'pending': [p['key'] for p in state]}

    def expected(self, state, plan):
        return {'pending': [p['key'] for p in state if p['key'] not in plan.keys]}

    def diff(self, state, plan):
        return {}

    def result(self, state, plan, after):
        return {'confirmed': plan.keys, 'pending': [p['key'] for p in state]}
