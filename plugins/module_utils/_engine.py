# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one run of every state-changing module of the collection.

A module file holds its documentation, its argument spec and a :class:`Domain`
subclass; :func:`run_module` does the rest, always in this order::

    validate (nothing read yet)
      state=rendered: plan against the empty host, return the commands (no host access, no root)
    enter the module's namespace
    host lock
      read the kernel once
        state=gathered: return what the host has, in the module's input shape
      plan (pure)
      verify a changing plan with the host's own checker (bird -p), in check mode too
      supersede: confirm pending commit-confirm changes of the records this run writes
      apply the plan unless check mode (a domain's apply undoes itself if the kernel refuses)
      read back: the re-plan must be empty; if not, apply it once more, read back
        again, and fail naming what still differs
      persist (records for boot, commit-confirm)
    one result: changed, before, after (when changed), commands, diff (+ the module's own keys)

Every failure is an EdgeError, turned into fail_json here and nowhere else.

A domain describes one kind of kernel object. ``_anyip.py`` is the model:
a value type, a pure ``plan()``, an ``apply()`` that undoes itself.
"""

from __future__ import annotations

from collections import namedtuple

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError
from ansible_collections.anycast.edge.plugins.module_utils._lock import host_lock
from ansible_collections.anycast.edge.plugins.module_utils._netns import enter_netns
from ansible_collections.anycast.edge.plugins.module_utils._persist import (
    CONTROL_KEYS, PERSIST_ARGUMENT_SPEC, Persistence, supersede_pending)

GATHERED = 'gathered'
RENDERED = 'rendered'
RESOURCE_STATES = [GATHERED, RENDERED]

# One persisted record: INSTANCE (None, or the per-object key), PARAMS to re-apply at
# boot (None: the record goes), ROLLBACK what commit-confirm re-applies (None: the
# previous record).
Record = namedtuple('Record', 'instance params rollback')
Record.__new__.__defaults__ = (None,)


def states(*applying):
    """Choices of a module's ``state``: how it applies, then gathered and rendered."""
    return list(applying) + RESOURCE_STATES


def persisted(spec):
    """An argument spec with persist, state_dir and confirm_timeout added."""
    spec = dict(spec)
    spec.update(PERSIST_ARGUMENT_SPEC)
    return spec


class Plan(object):
    """What a domain's plan() returns; domains add their own fields.

    ``commands``: exactly what apply() sends, in order (ip-style lines, whole
    iptables-restore and nft transactions). ``changed`` follows from it.
    """

    def __init__(self, commands=None):
        self.commands = list(commands or [])

    @property
    def changed(self):
        return bool(self.commands)


class Op(object):
    """One step of an apply: the commands it sends, as the user reads them, and the call that sends them.

    A step without commands is housekeeping (releasing a namespace's sockets).
    The call may replace ``commands`` with what it really sent, when part of it
    is only known then (a digest of what the kernel answered).
    """

    __slots__ = ('commands', 'func', 'args', 'kwargs')

    def __init__(self, commands, func, *args, **kwargs):
        self.commands = list(commands)
        self.func = func
        self.args = args
        self.kwargs = kwargs

    def run(self):
        return self.func(*self.args, **self.kwargs)


class OpPlan(Plan):
    """A plan that is a list of Ops, carried out in order."""

    def __init__(self, ops):
        self.ops = ops
        super().__init__()

    @property
    def commands(self):
        return [command for op in self.ops for command in op.commands]

    @commands.setter
    def commands(self, value):
        pass    # always derived from the ops

    @property
    def changed(self):
        return any(op.commands for op in self.ops)

    def run(self):
        for op in self.ops:
            op.run()


class Domain(object):
    """One kind of kernel object, as the engine drives it.

    ``self.module`` is the AnsibleModule (for run_command, get_bin_path, check
    mode); ``self.params`` its parameters. Everything a method cannot do is an
    EdgeError with a sentence for the user.
    """

    name = None             # the module's name: records, messages
    persist = True          # takes persist / state_dir / confirm_timeout
    correction = None       # set by the engine: the plan a read-back had to apply once more

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.check_mode = module.check_mode

    # -- input ------------------------------------------------------------
    def validate(self):
        """Check every parameter (raise ParamError); nothing on the host is read yet."""

    # -- host access (never for state=rendered) ----------------------------
    def open(self):
        """Choose drivers, open sockets: called inside the module's namespace, before the lock."""

    def close(self):
        """Release what open() and read() opened; called whatever happened."""

    def read(self):
        """Everything plan() needs, read from the kernel once. Also the read-back."""
        raise NotImplementedError

    def empty(self):
        """The state of a host that has none of this module's objects (for state=rendered)."""
        raise NotImplementedError

    # -- deciding ----------------------------------------------------------
    def plan(self, state):
        """The Plan that brings STATE to what the parameters ask for. Pure: no kernel access."""
        raise NotImplementedError

    def verify(self, plan):
        """Have the host's own checker refuse PLAN before anything changes (``bird -p``); check mode too.

        Called for a plan that changes something, after plan() and before apply(); nothing by default.
        """

    def apply(self, plan):
        """Carry PLAN out; if the kernel refuses part of it, undo the rest and raise EdgeError."""
        raise NotImplementedError

    def problems(self, state, plan):
        """Sentences saying how STATE (read back) differs from the request; PLAN is its re-plan."""
        return plan.commands

    def undo(self, plan, before):
        """Put back what applying PLAN (and its corrections) wrote: the kernel as BEFORE, the state plan()
        started from, had it. Called when the read-back still differs after a correction; raise EdgeError
        if it cannot. Return False where the domain cannot undo (nothing is tried then)."""
        return False

    # -- reporting ---------------------------------------------------------
    def gather(self, state):
        """What STATE holds of this module's objects, in the module's own input shape."""
        raise NotImplementedError

    def expected(self, state, plan):
        """gather() of the state PLAN leads to (check mode's prediction)."""
        raise NotImplementedError

    def diff(self, state, plan):
        """(before, after) text for diff mode (or Ansible's whole diff dict)."""
        raise NotImplementedError

    def result(self, state, plan, after):
        """The module's own result keys (besides the common ones); AFTER is the read-back state or None."""
        return {}

    def records(self, state, plan):
        """What to persist: a Record, a {key: Record} of per-object records, or None."""
        return None

    def warn(self, text):
        self.module.warn(text)

    def recordable(self):
        """The parameters as a record keeps them (without persist, state_dir, confirm_timeout)."""
        return dict((key, value) for key, value in self.params.items() if key not in CONTROL_KEYS)


class Engine(object):
    """Runs one Domain; see the module docstring for the order."""

    def __init__(self, module, domain):
        self.module = module
        self.domain = domain
        self.state_param = module.params.get('state')

    def run(self):
        try:
            result = self._run()
        except EdgeError as exc:
            self.module.fail_json(msg=str(exc))
        self.module.exit_json(**result)

    def _run(self):
        domain = self.domain
        domain.validate()
        if self.state_param == RENDERED:
            plan = domain.plan(domain.empty())
            return {'changed': False, RENDERED: plan.commands}
        persistence = None
        if domain.persist:
            persistence = Persistence(self.module, domain.name)
            persistence.validate()
        netns = self.module.params.get('netns')
        if netns:
            enter_netns(netns)
        try:
            domain.open()
            with host_lock():
                return self._locked()
        finally:
            domain.close()

    def _locked(self):
        domain = self.domain
        current = domain.read()
        before = domain.gather(current)
        if self.state_param == GATHERED:
            return {'changed': False, GATHERED: before}
        plan = domain.plan(current)
        readback = None
        if plan.changed:
            domain.verify(plan)
        superseded = self._supersede(current, plan)
        if plan.changed and not self.module.check_mode:
            domain.apply(plan)
            readback, domain.correction = self._read_back(plan, current)
        commands = list(plan.commands)   # after apply: what was really sent
        if domain.correction is not None:
            commands += domain.correction.commands
        result = {'changed': plan.changed, 'before': before, 'commands': commands}
        # As the netcommon resource modules do, 'after' comes with a change only: unchanged it is 'before'
        # again, and a second copy of 10,000 routes costs a no-op run a tenth of its time.
        if readback is not None:
            result['after'] = domain.gather(readback)
        elif plan.changed:
            result['after'] = domain.expected(current, plan)
        if superseded:
            result['superseded'] = superseded
        result.update(domain.result(current, plan, readback))
        if domain.persist:
            result.update(self._persist(current, plan))
        diff = domain.diff(current, plan) if self.module._diff else None
        if diff:
            result['diff'] = diff if isinstance(diff, dict) else {'before': diff[0], 'after': diff[1]}
        return result

    def _supersede(self, current, plan):
        """Confirm the pending changes of the records this run writes: a later run supersedes them.

        Before anything changes, under the host lock (see _persist.supersede_pending); in check mode
        only predicted. Returns the keys superseded.
        """
        if not self.domain.persist:
            return []
        records = self.domain.records(current, plan)
        if records is None:
            return []
        items = [records] if isinstance(records, Record) else [records[key] for key in sorted(records)]
        keys = [Persistence(self.module, self.domain.name, record.instance).key for record in items]
        superseded = supersede_pending(keys, check=self.module.check_mode)
        for key in superseded:
            self.module.warn('%s: %s the change still waiting for confirmation (applied with confirm_timeout); '
                             'its rollback %s: this run reached the host, which is what anycast.edge.confirm '
                             'proves' % (key, 'would confirm' if self.module.check_mode else 'confirmed',
                                         'would be cancelled' if self.module.check_mode else 'is cancelled'))
        return superseded

    def _read_back(self, plan, before):
        """Read back and re-plan; correct once. Returns (state, the correcting plan or None).

        If the kernel still differs, what this run wrote is undone (PLAN applied to BEFORE) and the
        run fails: a half-applied change that every rerun fails the same way is the worst outcome.
        """
        domain = self.domain
        state = domain.read()
        leftover = domain.plan(state)
        if not leftover.changed:
            return state, None
        # The kernel (or a concurrent writer) changed something behind our back:
        # one more pass corrects it; a second difference is reported.
        found = '; '.join(domain.problems(state, leftover))
        try:
            domain.verify(leftover)
            domain.apply(leftover)
        except EdgeError as exc:
            raise EdgeError('read-back after writing does not match the request: %s; correcting it failed: %s%s'
                            % (found, exc, self._undo(plan, before)))
        state = domain.read()
        still = domain.plan(state)
        if still.changed:
            raise EdgeError('read-back after writing does not match the request: %s (and again after correcting '
                            'it: %s)%s' % (found, '; '.join(domain.problems(state, still)), self._undo(plan, before)))
        return state, leftover

    def _undo(self, plan, before):
        """Undo what the run wrote; a sentence saying how that went, for the error."""
        try:
            if self.domain.undo(plan, before) is False:
                return ''
        except EdgeError as exc:
            return '; undoing what this run wrote FAILED too: %s' % exc
        return '; what this run wrote was undone'

    def _persist(self, current, plan):
        records = self.domain.records(current, plan)
        if records is None:
            return {}
        if isinstance(records, Record):
            return self._save(records, plan.changed)
        persisted = {}
        for key, record in sorted(records.items()):
            persisted[key] = self._save(record, plan.changed).get('persisted')
        if not self.module.params.get('persist') or self.module.check_mode:
            return {}
        return {'persisted': persisted}

    def _save(self, record, changed):
        persistence = Persistence(self.module, self.domain.name, record.instance)
        return persistence.save(record.params is not None, changed, params=record.params,
                                rollback_params=record.rollback)


def run_module(module, domain_class):
    """The whole run of a module: ``run_module(AnsibleModule(...), TheDomain)``."""
    Engine(module, domain_class(module)).run()


def run_reader(module, read):
    """The run of a module that only reads (edge_info): its namespace entered, READ(module)'s dict returned."""
    try:
        netns = module.params.get('netns')
        if netns:
            enter_netns(netns)
        result = read(module)
    except EdgeError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)
