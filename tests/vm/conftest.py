"""Fixtures for tests that need the QEMU VM (a kernel with GRE).

The VM is booted once per test session and always stopped at the end. The
tests skip, with the reason shown, only when this machine cannot run QEMU or
build the image at all; a failing build or boot is an error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vm as vmlib  # noqa: E402


def say(config, line):
    """A line on the terminal even under -q and output capture."""
    reporter = config.pluginmanager.get_plugin('terminalreporter')
    capture = config.pluginmanager.get_plugin('capturemanager')
    if reporter is None or capture is None:
        sys.stderr.write(line + '\n')
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope='session')
def gre_vm(request):
    reason = vmlib.unavailable_reason()
    if reason:
        say(request.config, 'SKIPPING the GRE VM tests: %s' % reason)
        pytest.skip('QEMU VM tests cannot run on this machine: %s' % reason)
    started = time.monotonic()
    image = vmlib.ensure_image()
    build_seconds = time.monotonic() - started
    with vmlib.VM(image) as machine:
        say(request.config, 'GRE VM: image ready in %.0f s, booted to SSH in %.0f s (kernel %s)'
            % (build_seconds, machine.boot_seconds, (image / 'kernel-release').read_text().strip()))
        machine.base = tempfile.mkdtemp(prefix='aeg-ansible-')
        machine.inventory_path = machine.inventory(os.path.join(machine.base, 'inventory.ini'))
        yield machine


def vm_playbook(machine, tasks, check=False, diff=False, timeout=600):
    """Run TASKS with ansible-playbook against the VM; return each task's result.

    A failed task does not stop the play (ignore_errors), so tests can assert on
    failures; results come from the json stdout callback.
    """
    play_tasks = []
    for index, task in enumerate(tasks):
        task = dict(task)
        task.setdefault('name', 'task %d' % index)
        task['ignore_errors'] = True
        play_tasks.append(task)
    playbook = [{'hosts': 'edge', 'gather_facts': False, 'tasks': play_tasks}]
    path = os.path.join(machine.base, 'play.yml')
    with open(path, 'w') as handle:
        json.dump(playbook, handle)  # JSON is YAML
    cmd = [vmlib.ansible_playbook_binary(), '-i', machine.inventory_path, path]
    if check:
        cmd.append('--check')
    if diff:
        cmd.append('--diff')
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=vmlib.ansible_env(machine.base),
                          timeout=timeout)
    try:
        report = json.loads(proc.stdout)
        play = report['plays'][0]
        results = [task['hosts']['vm'] for task in play['tasks']]
    except (ValueError, KeyError, IndexError):
        raise AssertionError('ansible-playbook gave no usable JSON (rc %d):\n%s\n%s'
                             % (proc.returncode, proc.stdout[-5000:], proc.stderr[-5000:]))
    if len(results) != len(tasks):
        raise AssertionError('expected %d task results, got %d:\n%s' % (len(tasks), len(results), proc.stdout[-5000:]))
    return results
