"""The restore / rollback program (module_utils/_restore.py) on its own.

Records and payloads are made here the way the modules make them: a payload is
a zip holding an importable module under ansible_collections...plugins.modules;
the program runs each record from its payload in a process of its own. The
stand-in module answers as a module does (JSON on stdout) and writes down what
it was given, so the tests see exactly how each record was run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _persist, _restore

STAND_IN = '''
import json, os, sys
args = json.loads(sys.stdin.read())['ANSIBLE_MODULE_ARGS']
with open(os.path.join(args['state_dir'], 'ran.jsonl'), 'a') as handle:
    handle.write(json.dumps({'module': %(name)r, 'args': args}) + '\\n')
if args.get('fail'):
    print(json.dumps({'failed': True, 'msg': 'refused: ' + args['fail']}))
elif args.get('crash'):
    sys.exit(3)
else:
    changed = bool(args.get('differs'))
    print(json.dumps({'changed': changed, 'diff': {'before': 'b', 'after': 'a'} if changed else None}))
'''


def payload(state_dir, name):
    """A payload zip with a stand-in module NAME, as _persist keeps it."""
    path = os.path.join(state_dir, 'payloads', name + '.zip')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, 'w') as archive:
        for package in ('ansible_collections', 'ansible_collections/anycast', 'ansible_collections/anycast/edge',
                        'ansible_collections/anycast/edge/plugins', 'ansible_collections/anycast/edge/plugins/modules'):
            archive.writestr(package + '/__init__.py', '')
        archive.writestr('ansible_collections/anycast/edge/plugins/modules/%s.py' % name, STAND_IN % {'name': name})
    return os.path.join('payloads', name + '.zip')


def record(state_dir, name, key, order, **params):
    entry = {'module': name, 'key': key, 'order': order, 'python': sys.executable,
             'payload': payload(state_dir, name), 'params': params}
    with open(os.path.join(state_dir, key + '.json'), 'w') as handle:
        json.dump(entry, handle)
    return entry


def runs(state_dir):
    path = os.path.join(state_dir, 'ran.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path)


def test_restore_runs_every_record_in_boot_order_from_its_payload(state_dir, capsys):
    record(state_dir, 'tproxy_rule', 'tproxy_rule@host@ANYCAST-TPROXY', 50, rules=[1])
    record(state_dir, 'anyip_route', 'anyip_route@host', 30, prefixes=['192.0.2.0/24'], differs=True)
    record(state_dir, 'tenant', 'tenant@host@acme', 20)
    assert _restore.restore(state_dir) == 0
    assert capsys.readouterr().out.splitlines() == [
        'tenant@host@acme: ok', 'anyip_route@host: changed', 'tproxy_rule@host@ANYCAST-TPROXY: ok']
    ran = runs(state_dir)
    assert [r['module'] for r in ran] == ['tenant', 'anyip_route', 'tproxy_rule']
    args = ran[1]['args']
    assert args['prefixes'] == ['192.0.2.0/24']
    # at boot: applied for real, not recorded again, no commit-confirm
    assert (args['persist'], args['confirm_timeout'], args['_ansible_check_mode'], args['state_dir']) == \
        (False, 0, False, state_dir)


def test_a_failed_record_is_reported_the_others_still_run_and_the_exit_status_says_so(state_dir, capsys):
    record(state_dir, 'tenant', 'tenant@host@acme', 20, fail='no such device')
    record(state_dir, 'anyip_route', 'anyip_route@host', 30, crash=True)
    record(state_dir, 'hashlimit', 'hashlimit@host@RATE-LIMIT', 60)
    assert _restore.restore(state_dir) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'tenant@host@acme: FAILED: refused: no such device'
    assert lines[1].startswith('anyip_route@host: FAILED: no result (rc 3)')
    assert lines[2] == 'hashlimit@host@RATE-LIMIT: ok'


def test_check_reports_drift_per_record_in_check_mode(state_dir):
    record(state_dir, 'anyip_route', 'anyip_route@host', 30, differs=True)
    record(state_dir, 'tproxy_rule', 'tproxy_rule@host@T', 50)
    report = _restore.check_report(state_dir)
    assert report['anyip_route@host'] == {'module': 'anyip_route', 'drifted': True, 'failed': False, 'msg': None,
                                          'diff': {'before': 'b', 'after': 'a'}}
    assert report['tproxy_rule@host@T']['drifted'] is False
    assert all(r['args']['_ansible_check_mode'] for r in runs(state_dir))
    assert _restore.check_report(os.path.join(state_dir, 'missing')) == {}


def pending(state_dir, key, deadline, rollback, token='t1'):
    path = os.path.join(state_dir, 'pending-' + key + '.json')
    with open(path, 'w') as handle:
        json.dump({'token': token, 'key': key, 'deadline': deadline, 'state_dir': state_dir,
                   'confirm': None, 'rollback': rollback}, handle)
    return path


def test_watch_rolls_back_an_unconfirmed_change_at_its_deadline(state_dir):
    previous = record(state_dir, 'tproxy_rule', 'tproxy_rule@host@T', 50, rules=['old'])
    path = pending(state_dir, 'tproxy_rule@host@T', time.time() + 0.3, dict(previous, absent=False))
    assert _restore.watch(path, poll=0.05) == 0
    (ran,) = runs(state_dir)
    assert ran['args']['rules'] == ['old'] and ran['args']['persist'] is True   # the previous state, recorded again
    assert not os.path.exists(path) and not os.path.exists(path + '.rolling')


def test_watch_removes_the_record_when_the_change_created_it(state_dir):
    gone = record(state_dir, 'anyip_route', 'anyip_route@host', 30, prefixes=[], state='absent')
    path = pending(state_dir, 'anyip_route@host', time.time() + 0.1, dict(gone, absent=True))
    assert _restore.watch(path, poll=0.05) == 0
    assert runs(state_dir)[0]['args']['persist'] is False
    assert not os.path.exists(os.path.join(state_dir, 'anyip_route@host.json'))


def watch_in_background(path):
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_restore.watch(path, poll=0.02)))
    thread.start()
    return thread, outcome


def test_a_confirmed_change_is_not_rolled_back(state_dir):
    previous = record(state_dir, 'tproxy_rule', 'tproxy_rule@host@T', 50)
    path = pending(state_dir, 'tproxy_rule@host@T', time.time() + 0.5, previous)
    thread, outcome = watch_in_background(path)
    time.sleep(0.1)
    os.unlink(path)   # what confirm does
    thread.join(5)
    assert outcome == [0] and runs(state_dir) == []


def test_a_change_superseded_by_a_newer_one_is_left_to_the_newer_watchdog(state_dir):
    previous = record(state_dir, 'tproxy_rule', 'tproxy_rule@host@T', 50)
    path = pending(state_dir, 'tproxy_rule@host@T', time.time() + 0.3, previous, token='older')
    thread, outcome = watch_in_background(path)
    time.sleep(0.1)
    pending(state_dir, 'tproxy_rule@host@T', time.time() + 60, previous, token='newer')   # a newer change
    thread.join(5)
    assert outcome == [0] and runs(state_dir) == []
    with open(path) as handle:
        assert json.load(handle)['token'] == 'newer'     # still pending, for its own watchdog


def test_the_program_written_next_to_the_records_is_this_file_and_runs_alone(state_dir):
    record(state_dir, 'anyip_route', 'anyip_route@host', 30, differs=True)
    program = os.path.join(state_dir, _restore.PROGRAM_NAME)
    with open(program, 'wb') as handle:
        handle.write(_persist.program_source())
    with open(_restore.__file__, 'rb') as handle:
        assert _persist.program_source() == b'#!/usr/bin/python3\n' + handle.read()
    # as the boot unit runs it: the system's python3, no Ansible, no collection on the path
    proc = subprocess.run(['/usr/bin/python3', program, 'check', state_dir], capture_output=True, text=True,
                          timeout=60, check=False, env={'PATH': '/usr/bin:/bin'})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)['anyip_route@host']['drifted'] is True
    proc = subprocess.run(['/usr/bin/python3', program, 'restore', os.path.join(state_dir, 'nothing-here')],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (0, '')
    proc = subprocess.run(['/usr/bin/python3', program, 'frobnicate'], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2 and 'anycast-edge-restore restore' in proc.stderr


def test_the_state_directory_is_one_path_everywhere():
    """Code takes it from _restore.DEFAULT_STATE_DIR; what must spell it out (docs, the role) says the same."""
    import yaml
    from ansible_collections.anycast.edge.plugins.doc_fragments.persist import ModuleDocFragment
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert yaml.safe_load(ModuleDocFragment.DOCUMENTATION)['options']['state_dir']['default'] == \
        _restore.DEFAULT_STATE_DIR
    with open(os.path.join(repo, 'roles', 'edge_restore', 'defaults', 'main.yml')) as handle:
        assert yaml.safe_load(handle)['edge_restore_state_dir'] == _restore.DEFAULT_STATE_DIR
    with open(os.path.join(repo, 'roles', 'edge_restore', 'meta', 'argument_specs.yml')) as handle:
        spec = yaml.safe_load(handle)['argument_specs']['main']['options']['edge_restore_state_dir']
    assert spec['default'] == _restore.DEFAULT_STATE_DIR
    assert _persist.DEFAULT_STATE_DIR is _restore.DEFAULT_STATE_DIR


def test_null_options_of_a_record_are_passed_as_omitted(state_dir):
    # issue 18: hashlimit recorded with protocol null was refused at boot ("must be one of ... got: None")
    record(state_dir, 'hashlimit', 'hashlimit@host@RATE-LIMIT', 60, protocol=None, rate='50/sec',
           log={'rate': None, 'prefix': 'x'}, rules=[{'on_ip': None, 'on_port': 1}])
    assert _restore.restore(state_dir) == 0
    (ran,) = runs(state_dir)
    assert 'protocol' not in ran['args'] and ran['args']['rate'] == '50/sec'
    assert ran['args']['log'] == {'prefix': 'x'} and ran['args']['rules'] == [{'on_port': 1}]
