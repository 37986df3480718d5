"""Issue 18's defects in anyip_route, tproxy_rule, hashlimit and the records, reproduced in namespaces.

rz-h (the edge) has veth 10.77.0.1/24 to a neighbour 10.77.0.2 (rz-n), as the tester had it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import helpers
from helpers import nsexec, ok, run_module, run_playbook

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
NS_PREFIX = helpers.ns_prefix('ae18')
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def rz(netns_factory, veth):
    host, neighbour = netns_factory(), netns_factory()
    veth(host, neighbour, 'rz0', 'rz1', ['10.77.0.1/24'], ['10.77.0.2/24'])
    return host, neighbour


def reaches(ns, address):
    """Does a TCP connection from NS to ADDRESS:9 get an answer (accepted or refused by that host)?"""
    code = ('import socket, sys\ns = socket.socket(); s.settimeout(2)\ntry:\n    s.connect((sys.argv[1], 9))\n'
            'except ConnectionRefusedError:\n    pass\nexcept OSError:\n    sys.exit(1)')
    return nsexec(ns, [sys.executable, '-c', code, address], check=False).returncode == 0


def local_table(ns):
    return nsexec(ns, ['ip', 'route', 'show', 'table', 'local']).stdout


@pytest.mark.parametrize('check', [False, True])
def test_the_on_link_subnet_is_refused_and_the_neighbour_stays_reachable(rz, check):
    host, _neighbour = rz
    before = helpers.kernel_state(host)
    refused = run_module('anyip_route', {'prefixes': ['10.77.0.0/24'], 'netns': host}, check=check)
    assert refused.get('failed') and refused['msg'].startswith(
        'prefixes[0]: 10.77.0.0/24 overlaps 10.77.0.0/24, the subnet connected to rz0 (10.77.0.1/24)'), refused
    assert 'lockout_guard: false' in refused['msg']
    assert helpers.kernel_state(host) == before
    assert not nsexec(host, ['ip', 'route', 'get', '10.77.0.2']).stdout.startswith('local')
    assert reaches(host, '10.77.0.2')


def test_the_interfaces_own_address_stays_the_kernels_through_a_purge(rz):
    host, neighbour = rz
    kernel = nsexec(host, ['ip', 'route', 'show', 'table', 'local', '10.77.0.1']).stdout
    assert 'proto kernel' in kernel
    listed = ok(run_module('anyip_route', {'prefixes': ['10.77.0.1/32'], 'netns': host}))
    assert listed['changed'] is False and listed['kernel_routes'] == ['10.77.0.1/32'] and listed['adopted'] == []
    ok(run_module('anyip_route', {'prefixes': ['192.0.2.0/24'], 'netns': host}))
    purged = ok(run_module('anyip_route', {'prefixes': [], 'purge': True, 'netns': host}))
    assert purged['removed'] == ['192.0.2.0/24']
    assert nsexec(host, ['ip', 'route', 'show', 'table', 'local', '10.77.0.1']).stdout == kernel
    assert reaches(neighbour, '10.77.0.1')


@pytest.mark.parametrize('src, words', [('0.0.0.0', 'not a unicast address'),
                                        ('192.0.2.1', 'not an address of this host')])
def test_a_source_the_kernel_cannot_keep_is_refused_naming_src(rz, src, words):
    host, _neighbour = rz
    before = helpers.kernel_state(host)
    refused = run_module('anyip_route', {'prefixes': ['192.0.2.0/24'], 'src': src, 'netns': host})
    assert refused.get('failed') and refused['msg'].startswith('src: %s ' % src) and words in refused['msg'], refused
    assert helpers.kernel_state(host) == before


def test_a_failed_read_back_undoes_what_the_run_wrote(rz):
    """The kernel writes a route asked with preferred source 0.0.0.0 without one: a read-back that never matches
    (tests/integration/forced_mismatch.py gets it past validation). Added routes go, an adopted one comes back."""
    host, _neighbour = rz
    nsexec(host, ['ip', 'route', 'add', 'local', '198.51.100.0/24', 'dev', 'lo', 'table', 'local', 'proto', 'static'])
    before = helpers.kernel_state(host)
    proc = subprocess.run([helpers.PYTHON, os.path.join(HERE, 'forced_mismatch.py')],
                          input=json.dumps({'ANSIBLE_MODULE_ARGS': {
                              'prefixes': ['192.0.2.0/24', '198.51.100.0/24'], 'netns': host,
                              'state_dir': helpers.scratch_dir('ae18-state-'), '_ansible_tmpdir': '/tmp'}}),
                          capture_output=True, text=True, env=helpers.module_env(), timeout=120, check=False)
    result = json.loads(proc.stdout)
    assert result.get('failed') and 'read-back after writing does not match' in result['msg'], result
    assert result['msg'].endswith('what this run wrote was undone'), result['msg']
    assert helpers.kernel_state(host) == before
    assert 'local 198.51.100.0/24 dev lo proto static' in local_table(host)


def test_absent_keeps_a_table_that_holds_a_foreign_nftables_set(rz):
    host, _neighbour = rz
    rules = {'rules': [{'destination': '192.0.2.0/24', 'on_port': 1234}], 'netns': host}
    ok(run_module('tproxy_rule', rules))
    nsexec(host, ['nft', 'add', 'set', 'ip', 'mangle', 'blk', '{ type ipv4_addr; }'])
    nsexec(host, ['nft', 'add', 'element', 'ip', 'mangle', 'blk', '{ 203.0.113.9 }'])
    assert ok(run_module('tproxy_rule', {'state': 'absent', 'netns': host}))['changed']
    listed = nsexec(host, ['nft', 'list', 'set', 'ip', 'mangle', 'blk']).stdout
    assert '203.0.113.9' in listed
    assert 'ANYCAST-TPROXY' not in nsexec(host, ['iptables-save', '-t', 'mangle']).stdout
    # the control: without the set, absent leaves no trace
    nsexec(host, ['nft', 'delete', 'set', 'ip', 'mangle', 'blk'])
    ok(run_module('tproxy_rule', rules))
    ok(run_module('tproxy_rule', {'state': 'absent', 'netns': host}))
    assert 'table ip mangle' not in nsexec(host, ['nft', 'list', 'tables']).stdout


def restore(state_dir, command):
    return subprocess.run([sys.executable, os.path.join(state_dir, 'anycast-edge-restore'), command, state_dir],
                          capture_output=True, text=True, timeout=300, check=False)


def test_records_with_every_default_omitted_replay_at_boot_and_in_the_drift_check(rz):
    """The smallest input of each persisted module (hashlimit without protocol, as the README's example),
    recorded by Ansible, then checked for drift and restored by the restore program."""
    host, _neighbour = rz
    tenant_ns = helpers.unique_name(helpers.ns_prefix('ae18t'))
    state_dir = helpers.scratch_dir('ae18-state-')
    tasks = [
        {'anycast.edge.anyip_route': {'prefixes': ['192.0.2.0/24'], 'netns': host}},
        {'anycast.edge.tproxy_rule': {'rules': [{'destination': '192.0.2.0/24', 'on_port': 1234}], 'netns': host}},
        {'anycast.edge.hashlimit': {'netns': host}},
        {'anycast.edge.tenant': {'netns': host, 'tenants': [
            {'name': 'rza', 'netns': tenant_ns, 'prefixes': ['203.0.113.0/24'], 'mark': '0x10', 'table': 110}]}},
    ]
    try:
        for result in run_playbook(tasks, state_dir=state_dir):
            ok(result)
        records = sorted(n for n in os.listdir(state_dir) if n.endswith('.json'))
        assert len(records) == 4, records
        for name in records:
            with open(os.path.join(state_dir, name)) as handle:
                params = json.load(handle)['params']
            if name.startswith('hashlimit'):
                assert params.get('protocol') is None   # recorded as the user left it: omitted
        checked = restore(state_dir, 'check')
        report = json.loads(checked.stdout)
        assert not [k for k, v in report.items() if v['failed'] or v['drifted']], report
        # a rule deleted by hand is drift, and the restore puts it back
        nsexec(host, ['iptables', '-D', 'INPUT', '1'])   # the jump into RATE-LIMIT
        report = json.loads(restore(state_dir, 'check').stdout)
        drifted = dict((k, (v['drifted'], v['failed'])) for k, v in report.items())
        assert drifted['hashlimit@%s@RATE-LIMIT' % host] == (True, False), report
        info = ok(run_module('edge_info', {'netns': host, 'state_dir': state_dir}, check=True))
        assert info['drift']['hashlimit@%s@RATE-LIMIT' % host]['drifted'] is True
        restored = restore(state_dir, 'restore')
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert 'hashlimit@%s@RATE-LIMIT: changed' % host in restored.stdout
        assert '-j RATE-LIMIT' in nsexec(host, ['iptables-save', '-t', 'filter']).stdout
        report = json.loads(restore(state_dir, 'check').stdout)
        assert not [k for k, v in report.items() if v['failed'] or v['drifted']], report
    finally:
        run_playbook([{'anycast.edge.tenant': {'netns': host, 'tenants': [], 'purge': True}}], state_dir=state_dir)
        helpers.sh(['ip', 'netns', 'del', tenant_ns], check=False)
