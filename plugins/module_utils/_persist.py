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

Lock: ``/run/anycast-edge.lock`` serialises the read-diff-apply of every
module on a host (two playbooks at once cannot interleave).
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

from ansible_collections.anycast.edge.plugins.module_utils._lock import FileLock, LockTimeout

DEFAULT_STATE_DIR = '/etc/anycast-edge/state'
PENDING_DIR = '/run/anycast-edge/pending'
LOCK_PATH = '/run/anycast-edge.lock'
LOCK_TIMEOUT = 120

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


class HostLock(FileLock):
    """flock(/run/anycast-edge.lock): one collection module applies at a time on a host.

    A module that cannot take it fails cleanly, naming the lock.
    """

    def __init__(self, module):
        super().__init__(LOCK_PATH, LOCK_TIMEOUT, 'another anycast.edge run')
        self.module = module

    def __enter__(self):
        try:
            return super().__enter__()
        except LockTimeout as exc:
            self.module.fail_json(msg='nothing was changed: %s' % exc)


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


def module_dotted_name(name):
    return 'ansible_collections.anycast.edge.plugins.modules.%s' % name


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
            self.module.fail_json(msg='confirm_timeout: %d is out of range 0-3600 seconds' % self.confirm_timeout)
        if self.confirm_timeout and not self.enabled:
            self.module.fail_json(msg='confirm_timeout: needs persist=true (the rollback re-applies the '
                                      'previous recorded state)')

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
        target = os.path.join(self.state_dir, 'anycast-edge-restore')
        data = RUNNER_SOURCE.encode()
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
        runner = os.path.join(self.state_dir, 'anycast-edge-restore')
        subprocess.Popen([sys.executable, runner, 'watch', path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                         start_new_session=True)
        return {'confirm_token': token, 'confirm_deadline': pending['deadline']}


def save_per_object(module, name, list_param, key_of, removed, changed):
    """One record per listed object (a tenant, a tunnel), so that several calls add up.

    ``removed``: keys of objects the run removed (absent or purged) whose
    records must go too. Returns the result keys to merge.
    """
    shared = dict((k, v) for k, v in Persistence(module, name).params().items() if k not in (list_param, 'purge'))
    persisted = {}
    for item in module.params[list_param]:
        key = key_of(item)
        record = dict(shared, purge=False)
        record[list_param] = [item]
        saved = Persistence(module, name, key).save(item.get('state') != 'absent', changed, params=record)
        persisted[key] = saved.get('persisted')
    for key in removed:
        if key not in persisted:
            Persistence(module, name, key).save(False, changed)
            persisted[key] = None
    return {'persisted': persisted} if module.params['persist'] and not module.check_mode else {}


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


def confirm_pending(tokens=None):
    """Make pending changes permanent; returns the keys confirmed."""
    confirmed = []
    for pending in list_pending():
        path = pending['path']
        if tokens and pending.get('token') not in tokens:
            continue
        # Whoever renames the pending file first wins: this confirm or the watchdog's rollback.
        claimed = path + '.confirming'
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            continue
        path = claimed
        record_path = os.path.join(pending['state_dir'], pending['key'] + '.json')
        if pending.get('confirm') is None:
            if os.path.exists(record_path):
                os.unlink(record_path)
        else:
            _atomic_write(record_path, (json.dumps(pending['confirm'], indent=2, sort_keys=True) + '\n').encode())
        os.unlink(path)
        confirmed.append(pending['key'])
    return confirmed


# The restore script, written next to the records. Standard library only: it
# runs at boot without Ansible, and from the commit-confirm watchdog.
RUNNER_SOURCE = r'''#!/usr/bin/python3
"""anycast-edge-restore: re-apply what anycast.edge modules recorded.

  anycast-edge-restore restore [STATE_DIR]   apply every record, in order (boot)
  anycast-edge-restore check [STATE_DIR]     check mode for every record; JSON of drift
  anycast-edge-restore watch PENDING_FILE    commit-confirm watchdog (internal)
Written by the anycast.edge collection; do not edit.
"""
import json
import os
import subprocess
import sys
import time

DEFAULT_STATE_DIR = '/etc/anycast-edge/state'
BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
        "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def records(state_dir):
    found = []
    for name in sorted(os.listdir(state_dir)):
        if name.endswith('.json') and not name.startswith('.'):
            with open(os.path.join(state_dir, name)) as handle:
                found.append(json.load(handle))
    return sorted(found, key=lambda r: (r.get('order', 90), r['key']))


def run(state_dir, record, check=False, persist=False):
    params = dict(record['params'])
    params['persist'] = persist
    params['state_dir'] = state_dir
    params['confirm_timeout'] = 0
    params['_ansible_check_mode'] = check
    params['_ansible_diff'] = check
    payload = os.path.join(state_dir, record['payload'])
    python = record.get('python') if os.path.exists(record.get('python') or '') else sys.executable
    module = 'ansible_collections.anycast.edge.plugins.modules.' + record['module']
    proc = subprocess.run([python, '-c', BOOT, payload, module], input=json.dumps({'ANSIBLE_MODULE_ARGS': params}),
                          capture_output=True, text=True, timeout=600)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {'failed': True, 'msg': 'no result (rc %d): %s' % (proc.returncode, (proc.stderr or proc.stdout)[-2000:])}


def restore(state_dir):
    failed = 0
    for record in records(state_dir):
        result = run(state_dir, record)
        status = 'FAILED: ' + result.get('msg', '') if result.get('failed') else ('changed' if result.get('changed') else 'ok')
        print('%s: %s' % (record['key'], status), flush=True)
        failed += bool(result.get('failed'))
    return 1 if failed else 0


def check(state_dir):
    report = {}
    for record in records(state_dir):
        result = run(state_dir, record, check=True)
        report[record['key']] = {'module': record['module'], 'drifted': bool(result.get('changed')),
                                 'failed': bool(result.get('failed')), 'msg': result.get('msg'),
                                 'diff': result.get('diff')}
    print(json.dumps(report))
    return 0


def watch(path):
    with open(path) as handle:
        pending = json.load(handle)
    while time.time() < pending['deadline']:
        time.sleep(min(0.2, max(0.0, pending['deadline'] - time.time())))
        if not os.path.exists(path):
            return 0  # confirmed
    # Whoever renames the pending file first wins: the rollback or a confirm.
    claimed = path + '.rolling'
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return 0
    with open(claimed) as handle:
        if json.load(handle).get('token') != pending['token']:
            os.rename(claimed, path)  # superseded by a newer change with its own watchdog
            return 0
    path = claimed
    result = run(pending['state_dir'], pending['rollback'], persist=not pending['rollback'].get('absent'))
    if pending['rollback'].get('absent'):
        record_path = os.path.join(pending['state_dir'], pending['key'] + '.json')
        if os.path.exists(record_path):
            os.unlink(record_path)
    os.unlink(path)
    print('%s: rolled back: %s' % (pending['key'], 'FAILED ' + result.get('msg', '') if result.get('failed') else 'ok'))
    return 1 if result.get('failed') else 0


def main():
    command = sys.argv[1] if len(sys.argv) > 1 else 'restore'
    arg = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_STATE_DIR
    if command == 'restore':
        return restore(arg) if os.path.isdir(arg) else 0
    if command == 'check':
        return check(arg) if os.path.isdir(arg) else print('{}') or 0
    if command == 'watch':
        return watch(arg)
    sys.stderr.write(__doc__)
    return 2


if __name__ == '__main__':
    sys.exit(main())
'''
