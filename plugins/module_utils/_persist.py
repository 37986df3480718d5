# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Persistence, commit-confirm and the host-wide apply lock, shared by every module.

Persistence: after a successful run a module records its validated
parameters in ``STATE_DIR/<module>@<netns>[@<instance>].json`` and keeps a
copy of the very payload Ansible ran it from (AnsiballZ zip: the module and
every module_utils it imports). At boot, ``anycast-edge-restore.service`` runs
the restore script (written next to the records) which re-runs each recorded
module from its payload with the recorded parameters: the same code paths as
an Ansible run, without Ansible, in a fixed order (sysctls, tenants, AnyIP,
tunnels, TPROXY, rate limits), before the proxy starts. ``state: absent``
removes the record.

Commit-confirm (``confirm_timeout``): the change is applied, the previous
record is kept aside in ``/run/anycast-edge/pending`` and a detached watchdog
re-applies it when the timeout passes, unless ``anycast.edge.confirm`` (run by
the controller as the next task, so only if it can still reach the host) has
confirmed the change. Only a confirmed change replaces the persisted record.

The restore program itself is ``_restore.py`` (a module_utils every payload
carries), copied next to the records.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from ansible_collections.anycast.edge.plugins.module_utils import _restore
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError, ParamError
from ansible_collections.anycast.edge.plugins.module_utils._restore import DEFAULT_STATE_DIR, PROGRAM_NAME

PENDING_DIR = '/run/anycast-edge/pending'

# Boot order: later entries may depend on earlier ones (AnyIP before TPROXY,
# tenants' namespaces before their tunnels).
ORDER = {'conntrack_sizing': 10, 'tenant': 20, 'anyip_route': 30, 'gre_tunnel': 40,
         'tproxy_rule': 50, 'hashlimit': 60}

PERSIST_ARGUMENT_SPEC = dict(
    persist=dict(type='bool', default=True),
    state_dir=dict(type='path', default=DEFAULT_STATE_DIR),
    confirm_timeout=dict(type='int', default=0),
)
CONTROL_KEYS = tuple(PERSIST_ARGUMENT_SPEC)


def _atomic_write(path, data, mode=0o600):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
    try:
        with os.fdopen(handle, 'wb') as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except Exception:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_payload():
    """Path of the AnsiballZ zip this module runs from, or None (run from a plain file)."""
    from ansible.module_utils import basic  # pylint: disable=import-outside-toplevel
    path = basic.__file__ or ''
    marker = '.zip' + os.sep
    if marker in path:
        zip_path = path.split(marker, 1)[0] + '.zip'
        if os.path.isfile(zip_path):
            return zip_path
    return None


def program_source():
    """The restore program's source, read through the loader that imported it (a payload zip or a file)."""
    data = _restore.__loader__.get_data(_restore.__file__)
    return b'#!/usr/bin/python3\n' + data


class Persistence(object):
    """Records, restore payloads and commit-confirm for one module instance."""

    def __init__(self, module, name, instance=None):
        self.module = module
        self.name = name
        self.enabled = module.params.get('persist', False)
        self.state_dir = module.params.get('state_dir') or DEFAULT_STATE_DIR
        self.confirm_timeout = module.params.get('confirm_timeout') or 0
        parts = [name, module.params.get('netns') or 'host']
        if instance:
            parts.append(instance)
        self.key = '@'.join(p.replace('/', '_') for p in parts)
        self.path = os.path.join(self.state_dir, self.key + '.json')

    def validate(self):
        if self.confirm_timeout < 0 or self.confirm_timeout > 3600:
            raise ParamError('confirm_timeout', '%d is out of range 0-3600 seconds' % self.confirm_timeout)
        if self.confirm_timeout and not self.enabled:
            raise ParamError('confirm_timeout', 'needs persist=true (the rollback re-applies the previous '
                                                'recorded state)')

    def params(self):
        return {k: v for k, v in self.module.params.items() if k not in CONTROL_KEYS}

    def load(self):
        try:
            with open(self.path) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def _record(self, params):
        return {
            'module': self.name,
            'key': self.key,
            'order': ORDER.get(self.name, 90),
            'python': sys.executable,
            'payload': os.path.join('payloads', self.name + '.zip'),
            'params': params,
        }

    def _store_payload(self):
        source = current_payload()
        if not source:
            return False
        target = os.path.join(self.state_dir, 'payloads', self.name + '.zip')
        with open(source, 'rb') as handle:
            data = handle.read()
        if os.path.exists(target):
            with open(target, 'rb') as handle:
                if hashlib.sha256(handle.read()).digest() == hashlib.sha256(data).digest():
                    return True
        _atomic_write(target, data)
        return True

    def _store_runner(self):
        target = os.path.join(self.state_dir, PROGRAM_NAME)
        data = program_source()
        try:
            with open(target, 'rb') as handle:
                if handle.read() == data:
                    return
        except OSError:
            pass
        _atomic_write(target, data, 0o755)

    def save(self, present, changed, params=None, rollback_params=None):
        """Call after a successful, non-check run. Returns result keys to merge.

        ``params``: what to record (default: this run's parameters).
        ``rollback_params``: what commit-confirm re-applies if the change is not
        confirmed (default: the previous record, or this run with state=absent).
        """
        if not self.enabled or self.module.check_mode:
            return {}
        result = {'persisted': self.path if present else None}
        record = self._record(params if params is not None else self.params()) if present else None
        if self.confirm_timeout and changed:
            result.update(self._arm_rollback(record, rollback_params))
            return result
        self._commit(record)
        return result

    def _commit(self, record):
        if record is None:
            if os.path.exists(self.path):
                os.unlink(self.path)
            return
        if not self._store_payload():
            self.module.warn('persist: this run did not come from an Ansible payload (direct module run), '
                             'so only the parameters were recorded; the next Ansible run records the payload')
        self._store_runner()
        _atomic_write(self.path, (json.dumps(record, indent=2, sort_keys=True) + '\n').encode())

    def _arm_rollback(self, record, rollback_params):
        if rollback_params is not None:
            previous = self._record(rollback_params)
            previous['absent'] = self.load() is None
        else:
            previous = self.load()
            if previous is None:
                previous = self._record(dict(self.params(), state='absent'))
                previous['absent'] = True
        # the rollback runs from the current payload if the old one is missing
        self._store_payload()
        self._store_runner()
        token = uuid.uuid4().hex
        pending = {
            'token': token,
            'key': self.key,
            'deadline': time.time() + self.confirm_timeout,
            'state_dir': self.state_dir,
            'confirm': record,           # becomes the persisted record on confirm (None: remove)
            'rollback': previous,        # re-applied if nobody confirms in time
        }
        path = os.path.join(PENDING_DIR, self.key + '.json')
        _atomic_write(path, json.dumps(pending).encode())
        runner = os.path.join(self.state_dir, PROGRAM_NAME)
        subprocess.Popen([sys.executable, runner, 'watch', path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                         start_new_session=True)
        return {'confirm_token': token, 'confirm_deadline': pending['deadline']}


def list_pending():
    """Pending (not yet confirmed) changes on this host, each with its file path."""
    found = []
    try:
        names = sorted(os.listdir(PENDING_DIR))
    except FileNotFoundError:
        return found
    for name in names:
        if not name.endswith('.json'):
            continue  # being confirmed or rolled back right now
        path = os.path.join(PENDING_DIR, name)
        try:
            with open(path) as handle:
                pending = json.load(handle)
        except (OSError, ValueError):
            continue  # the watchdog removed it meanwhile
        pending['path'] = path
        found.append(pending)
    return found


def _confirm_one(pending):
    """Make one pending change permanent; False when its watchdog (or another confirm) got there first."""
    # Whoever renames the pending file first wins: this confirm or the watchdog's rollback.
    claimed = pending['path'] + '.confirming'
    try:
        os.rename(pending['path'], claimed)
    except FileNotFoundError:
        return False
    record_path = os.path.join(pending['state_dir'], pending['key'] + '.json')
    if pending.get('confirm') is None:
        if os.path.exists(record_path):
            os.unlink(record_path)
    else:
        _atomic_write(record_path, (json.dumps(pending['confirm'], indent=2, sort_keys=True) + '\n').encode())
    os.unlink(claimed)
    return True


def confirm_pending(tokens=None):
    """Make pending changes permanent; returns the keys confirmed."""
    confirmed = []
    for pending in list_pending():
        if tokens and pending.get('token') not in tokens:
            continue
        if _confirm_one(pending):
            confirmed.append(pending['key'])
    return confirmed


def supersede_pending(keys, check=False):
    """A later run of KEYS supersedes their pending changes: each is confirmed, its rollback cancelled.

    Called under the host lock, before the run changes anything. The run itself reached the host
    after the pending change was applied, the very proof anycast.edge.confirm gives, so nothing is
    lost by confirming; leaving the rollback armed would revert this run's change later (issue 18:
    1111, then 2222 with confirm_timeout, then 3333 without it ended as 1111 in the kernel and the
    record). This run then persists, or arms its own rollback to the state it superseded.

    A rollback already running for a key (its deadline passed, its watchdog holds the change) would
    re-apply the old state right after this run: refused, nothing changed. The watchdog's own run
    (ROLLBACK_ENV set to the key) is not refused. CHECK: only predict. Returns the keys superseded.
    """
    superseded = []
    own_rollback = os.environ.get(_restore.ROLLBACK_ENV)
    for key in keys:
        path = os.path.join(PENDING_DIR, key + '.json')
        if not check and own_rollback != key:
            _refuse_running_rollback(key, path + '.rolling')
        try:
            with open(path) as handle:
                pending = json.load(handle)
        except (OSError, ValueError):
            continue
        pending['path'] = path
        if check or _confirm_one(pending):
            superseded.append(key)
        else:
            _refuse_running_rollback(key, path + '.rolling')
    return superseded


def _refuse_running_rollback(key, rolling):
    try:
        with open(rolling) as handle:
            deadline = json.load(handle).get('deadline', 0)
    except (OSError, ValueError):
        return
    # A watchdog killed mid-rollback leaves its claim behind: past the longest a rollback can take, it is stale.
    if time.time() > deadline + _restore.MODULE_TIMEOUT + 60:
        return
    raise EdgeError('nothing was changed: the commit-confirm rollback of %s is running (its confirm_timeout ran '
                    'out %d s ago) and would undo this run; run again when it has finished (edge_info lists '
                    'pending changes)' % (key, max(0, time.time() - deadline)))
