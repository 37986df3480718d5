"""hashlimit and conntrack_sizing on a whole machine, through a real SSH connection (QEMU VM).

What the namespace tests cannot show: a real ``SSH_CONNECTION`` set by sshd
(the lockout guards of hashlimit and anyip_route), fresh SSH connections
surviving a 1/min limit on port 22 because the guard exempted the controller,
and nf_conntrack_max/buckets set in the initial network namespace and persisted
under /etc/sysctl.d.

Opt-in (boots the project's QEMU VM, a few minutes under software emulation):
    sudo .venv/bin/pytest -q -m vm tests/vm/test_hashlimit_vm.py
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

VM_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, VM_DIR)

import vm as vmlib  # noqa: E402

pytestmark = pytest.mark.vm

CONTROLLER = '10.0.2.2'   # QEMU user networking: the host as the guest sees it
SSH_LIMIT = {'protocol': 'tcp', 'ports': [22], 'rate': '1/min', 'burst': 1, 'family': 'ipv4', 'log': False}


@pytest.fixture(scope='module')
def machine(request):
    if 'vm' not in (request.config.getoption('markexpr') or ''):
        pytest.skip('not applicable: boots a QEMU VM, run with -m vm')
    vmlib.require_vm()
    image = vmlib.ensure_image()
    with vmlib.VM(image, name='aeh-vm') as booted:
        with booted.ansible_workdir('aeh-ansible-'):
            yield booted


def _vm_conftest():
    """tests/vm/conftest.py, loaded under its own name (``conftest`` is tests/conftest.py here)."""
    path = os.path.join(VM_DIR, 'conftest.py')
    spec = importlib.util.spec_from_file_location('aeh_vm_conftest', path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def play(machine, tasks, check=False):
    return _vm_conftest().vm_playbook(machine, tasks, check=check)


def fresh_ssh(machine):
    """A new SSH connection (no shared master): does the handshake get through?"""
    cmd = ['ssh', *vmlib.SSH_OPTIONS, '-o', 'ControlMaster=no', '-o', 'ControlPath=none', '-i', str(machine.key),
           '-p', str(machine.port), 'root@127.0.0.1', 'true']
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False).returncode == 0


def test_ssh_guard_over_a_real_ssh_connection(machine):
    refused = play(machine, [{'anycast.edge.hashlimit': SSH_LIMIT}])[0]
    assert refused.get('failed') and refused['msg'].startswith('exempt:')
    assert '%s/32' % CONTROLLER in refused['msg']
    assert 'RATE-LIMIT' not in machine.run('iptables-save').stdout

    guarded = play(machine, [{'anycast.edge.hashlimit': dict(SSH_LIMIT, ssh_guard='exempt')}])[0]
    assert not guarded.get('failed'), guarded
    assert guarded['ssh_exempt'] == '%s/32' % CONTROLLER
    assert '-A RATE-LIMIT -s %s/32' % CONTROLLER in machine.run('iptables-save').stdout
    # 1/min with burst 1, yet every new SSH connection from the controller gets in
    assert [fresh_ssh(machine) for _attempt in range(4)] == [True] * 4

    # the control: without the exemption the same limit refuses the second fresh connection
    # (the commands below ride on already established connections, which the limit never sees)
    ignored = play(machine, [{'anycast.edge.hashlimit': dict(SSH_LIMIT, ssh_guard='ignore')}])[0]
    assert not ignored.get('failed') and ignored['ssh_exempt'] is None
    attempts = [fresh_ssh(machine) for _attempt in range(3)]
    assert attempts.count(False) >= 2, attempts
    machine.run('iptables -D INPUT 1 && iptables -F RATE-LIMIT && iptables -X RATE-LIMIT')
    assert fresh_ssh(machine)


def test_anyip_lockout_guard_over_a_real_ssh_connection(machine):
    """sshd's SSH_CONNECTION names the controller, which QEMU's user networking also makes the
    default gateway: a prefix containing it is refused, a neighbouring one is applied."""
    before = machine.run('ip route show table local').stdout
    refused = play(machine, [{'anycast.edge.anyip_route': {'prefixes': ['192.0.2.0/24', '10.0.2.0/24']}}])[0]
    assert refused.get('failed'), refused
    assert refused['msg'].startswith('prefixes[1]: 10.0.2.0/24 contains %s, the address of the SSH client'
                                     % CONTROLLER), refused['msg']
    assert machine.run('ip route show table local').stdout == before
    applied = play(machine, [{'anycast.edge.anyip_route': {'prefixes': ['192.0.2.0/24'], 'persist': False}}])[0]
    assert not applied.get('failed') and applied['added'] == ['192.0.2.0/24'], applied
    machine.run('ip route del local 192.0.2.0/24 table local')


def test_conntrack_sizing_applies_and_persists_on_the_host(machine):
    task = {'anycast.edge.conntrack_sizing': {'expected_connections': 100000, 'headroom': 2}}
    result = play(machine, [task])[0]
    assert not result.get('failed'), result
    # 100000 x 2 / 4 = 50000 buckets, up to a multiple of 512 -> 50176; max = 4 x 50176
    assert result['nf_conntrack_buckets'] == 50176 and result['nf_conntrack_max'] == 200704
    for key, value in (('nf_conntrack_buckets', 50176), ('nf_conntrack_max', 200704)):
        assert result['runtime'][key]['writable'] is True and result['runtime'][key]['applied'] is True
        assert machine.run('cat /proc/sys/net/netfilter/%s' % key).stdout.strip() == str(value)
    conf = machine.run('cat /etc/sysctl.d/90-anycast-edge-conntrack.conf').stdout
    assert 'net.netfilter.nf_conntrack_max = 200704' in conf
    # the persisted file is what the boot-time loader applies
    machine.run('sysctl -qw net.netfilter.nf_conntrack_max=1000 && '
                'sysctl -q -p /etc/sysctl.d/90-anycast-edge-conntrack.conf')
    assert machine.run('cat /proc/sys/net/netfilter/nf_conntrack_max').stdout.strip() == '200704'
    again = play(machine, [task])[0]
    assert again['changed'] is False
