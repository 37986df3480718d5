# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""anycast-edge-restore: re-apply what anycast.edge modules recorded.

  anycast-edge-restore restore [STATE_DIR]   apply every record, in order (boot)
  anycast-edge-restore check [STATE_DIR]     check mode for every record; JSON of drift
  anycast-edge-restore watch PENDING_FILE    commit-confirm watchdog (internal)

This file is a module_utils of the collection, so every module payload carries
it; the modules copy it next to their records as ``STATE_DIR/anycast-edge-restore``,
which ``anycast-edge-restore.service`` runs at boot with the system's python3.
It uses the standard library only: it runs without Ansible, before anything
else of the edge. Each record is re-run by its own module, from the very
payload Ansible ran it from (kept under ``STATE_DIR/payloads``), with the
recorded parameters: the same code paths as an Ansible run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

DEFAULT_STATE_DIR = '/etc/anycast-edge/state'
PROGRAM_NAME = 'anycast-edge-restore'
MODULE_PACKAGE = 'ansible_collections.anycast.edge.plugins.modules.'
MODULE_TIMEOUT = 600
# Set to the record's key for the module run a commit-confirm rollback makes: that run, and only
# it, may change the key while its rollback is in progress (see _persist.supersede_pending).
ROLLBACK_ENV = 'ANYCAST_EDGE_ROLLBACK'
# Runs a module from its payload zip: python3 -c BOOT PAYLOAD DOTTED.NAME
BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
        "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def records(state_dir):
    """Every record of STATE_DIR, in boot order (tenants before their tunnels, AnyIP before TPROXY ...)."""
    found = []
    for name in sorted(os.listdir(state_dir)):
        if name.endswith('.json') and not name.startswith('.'):
            with open(os.path.join(state_dir, name)) as handle:
                found.append(json.load(handle))
    return sorted(found, key=lambda r: (r.get('order', 90), r['key']))


def given(value):
    """VALUE without the options that are null (at any depth): as a user omits them.

    A record keeps the parameters as the module saw them, with null for an option nobody gave; passed back
    explicitly, null is refused where the option has choices ("value of protocol must be one of ...").
    Omitted, each takes its default exactly as in the run that was recorded.
    """
    if isinstance(value, dict):
        return dict((key, given(item)) for key, item in value.items() if item is not None)
    if isinstance(value, list):
        return [given(item) for item in value]
    return value


def run(state_dir, record, check=False, persist=False, rollback=False):
    """Run the record's module with its recorded parameters; return the module's result.

    ROLLBACK: this run is the commit-confirm rollback of the record's key.
    """
    params = given(record['params'])
    params['persist'] = persist
    params['state_dir'] = state_dir
    params['confirm_timeout'] = 0
    params['_ansible_check_mode'] = check
    params['_ansible_diff'] = check
    payload = os.path.join(state_dir, record['payload'])
    python = record.get('python') if os.path.exists(record.get('python') or '') else sys.executable
    env = dict(os.environ)
    env.pop(ROLLBACK_ENV, None)
    if rollback:
        env[ROLLBACK_ENV] = record['key']
    proc = subprocess.run([python, '-c', BOOT, payload, MODULE_PACKAGE + record['module']],
                          input=json.dumps({'ANSIBLE_MODULE_ARGS': params}), capture_output=True, text=True,
                          timeout=MODULE_TIMEOUT, check=False, env=env)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {'failed': True, 'msg': 'no result (rc %d): %s' % (proc.returncode, (proc.stderr or proc.stdout)[-2000:])}


def restore(state_dir, out=None):
    """Apply every record; one line per record; exit status 1 if any failed."""
    out = out or sys.stdout
    failed = 0
    for record in records(state_dir):
        result = run(state_dir, record)
        if result.get('failed'):
            status = 'FAILED: ' + result.get('msg', '')
        else:
            status = 'changed' if result.get('changed') else 'ok'
        out.write('%s: %s\n' % (record['key'], status))
        out.flush()
        failed += bool(result.get('failed'))
    return 1 if failed else 0


def check_report(state_dir):
    """{record key: {module, drifted, failed, msg, diff}}: each record run in check mode."""
    if not os.path.isdir(state_dir):
        return {}
    report = {}
    for record in records(state_dir):
        result = run(state_dir, record, check=True)
        report[record['key']] = {'module': record['module'], 'drifted': bool(result.get('changed')),
                                 'failed': bool(result.get('failed')), 'msg': result.get('msg'),
                                 'diff': result.get('diff')}
    return report


def watch(path, poll=0.2):
    """Commit-confirm watchdog: re-apply the previous state unless the change is confirmed in time."""
    with open(path) as handle:
        pending = json.load(handle)
    while time.time() < pending['deadline']:
        time.sleep(min(poll, max(0.0, pending['deadline'] - time.time())))
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
    rollback = pending['rollback']
    result = run(pending['state_dir'], rollback, persist=not rollback.get('absent'), rollback=True)
    if rollback.get('absent'):
        record_path = os.path.join(pending['state_dir'], pending['key'] + '.json')
        if os.path.exists(record_path):
            os.unlink(record_path)
    os.unlink(claimed)
    outcome = 'FAILED ' + result.get('msg', '') if result.get('failed') else 'ok'
    sys.stdout.write('%s: rolled back: %s\n' % (pending['key'], outcome))
    return 1 if result.get('failed') else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else 'restore'
    arg = argv[1] if len(argv) > 1 else DEFAULT_STATE_DIR
    if command == 'restore':
        return restore(arg) if os.path.isdir(arg) else 0
    if command == 'check':
        sys.stdout.write(json.dumps(check_report(arg)) + '\n')
        return 0
    if command == 'watch':
        return watch(arg)
    sys.stderr.write(__doc__)
    return 2


if __name__ == '__main__':
    raise SystemExit(main())
