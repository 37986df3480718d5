"""Fixtures for tests that need the QEMU VM (a kernel with GRE).

The VM is booted once per test session and always stopped at the end. The
tests skip, with the reason shown, only when this machine cannot run QEMU or
build the image at all (under CI=true that is a failure too, see
tests/prerequisites.py); a failing build or boot is an error.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vm as vmlib  # noqa: E402

# The playbook runner lives in vm.py (importable without conftest name clashes);
# kept here too for tests that load this file directly.
vm_playbook = vmlib.vm_playbook


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
        say(request.config, 'the GRE VM tests cannot run: %s' % reason)
    vmlib.require_vm()
    started = time.monotonic()
    image = vmlib.ensure_image()
    build_seconds = time.monotonic() - started
    with vmlib.VM(image) as machine:
        say(request.config, 'GRE VM: image ready in %.0f s, booted to SSH in %.0f s (kernel %s)'
            % (build_seconds, machine.boot_seconds, (image / 'kernel-release').read_text().strip()))
        with machine.ansible_workdir('aeg-ansible-'):
            yield machine
