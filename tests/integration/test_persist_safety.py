"""Persistence, commit-confirm, concurrent runs and failure mid-apply (anyip_route, tproxy_rule)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

import helpers
from helpers import nsexec, ok, run_module, run_playbook

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
NS_PREFIX = helpers.ns_prefix('aes')
HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX4 = '192.0.2.0/24'
PREFIX6 = '2001:db8:1::/64'
EDGE_ADDR = '198.51.100.1'


def edge_tasks(ns, **extra):
    return [
        {'anycast.edge.anyip_route': dict({'prefixes': [PREFIX4, PREFIX6], 'netns': ns}, **extra)},
        {'anycast.edge.tproxy_rule': dict({'netns': ns, 'rules': [
            {'destination': PREFIX4, 'on_port': 1234},
            {'destination': PREFIX6, 'on_port': 1234, 'protocol': 'udp'},
        ]}, **extra)},
    ]


@pytest.fixture
def edge(netns_factory, veth):
    edge_ns = netns_factory()
    controller_ns = netns_factory()
    veth(edge_ns, controller_ns, 'edge0', 'ctl0', [EDGE_ADDR + '/30'], ['198.51.100.2/30'])
    return edge_ns, controller_ns


@pytest.fixture
def state_dir():
    return helpers.scratch_dir('ae8-state-')


def restore(state_dir_path, command='restore'):
    return subprocess.run([sys.executable, os.path.join(state_dir_path, 'anycast-edge-restore'), command,
                           state_dir_path], capture_output=True, text=True, timeout=300, check=False)


def owned_routes(ns):
    return '\n'.join(line for line in helpers.route_dump(ns).splitlines() if 'proto 172' in line)


def reboot_namespace(ns):
    """What a reboot does to a namespace's network state: all of it is gone."""
    helpers.sh(['ip', 'netns', 'del', ns])
    helpers.sh(['ip', 'netns', 'add', ns])
    nsexec(ns, ['ip', 'link', 'set', 'lo', 'up'])


def test_applied_state_is_recorded_and_restored_without_ansible(edge, state_dir):
    edge_ns, _ctl = edge
    for result in run_playbook(edge_tasks(edge_ns), state_dir=state_dir):
        assert ok(result)['persisted'].startswith(state_dir)
    files = sorted(os.listdir(state_dir))
    assert 'anycast-edge-restore' in files
    assert 'anyip_route@%s.json' % edge_ns in files and 'tproxy_rule@%s@ANYCAST-TPROXY.json' % edge_ns in files
    assert sorted(os.listdir(os.path.join(state_dir, 'payloads'))) == ['anyip_route.zip', 'tproxy_rule.zip']
    applied = owned_routes(edge_ns), nsexec(edge_ns, ['iptables-save', '-t', 'mangle']).stdout
    assert PREFIX4 in applied[0] and PREFIX6 in applied[0]

    reboot_namespace(edge_ns)
    assert PREFIX4 not in helpers.route_dump(edge_ns)
    proc = restore(state_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ['anyip_route@%s: changed' % edge_ns,
                                        'tproxy_rule@%s@ANYCAST-TPROXY: changed' % edge_ns]
    restored = owned_routes(edge_ns), nsexec(edge_ns, ['iptables-save', '-t', 'mangle']).stdout
    assert restored[0] == applied[0]
    assert [l for l in restored[1].splitlines() if l.startswith('-A')] == \
        [l for l in applied[1].splitlines() if l.startswith('-A')]

    report = json.loads(restore(state_dir, 'check').stdout)
    assert {k: v['drifted'] for k, v in report.items()} == {
        'anyip_route@%s' % edge_ns: False, 'tproxy_rule@%s@ANYCAST-TPROXY' % edge_ns: False}
    nsexec(edge_ns, ['ip', 'route', 'del', 'local', PREFIX4, 'dev', 'lo', 'table', 'local'])
    report = json.loads(restore(state_dir, 'check').stdout)
    assert report['anyip_route@%s' % edge_ns]['drifted'] is True
    assert PREFIX4 in report['anyip_route@%s' % edge_ns]['diff']['after']


def test_the_record_holds_every_owned_prefix_and_absent_removes_it(edge, state_dir):
    edge_ns, _ctl = edge
    ok(run_playbook([{'anycast.edge.anyip_route': {'prefixes': [PREFIX4], 'netns': edge_ns}},
                     {'anycast.edge.anyip_route': {'prefixes': [PREFIX6], 'netns': edge_ns}}],
                    state_dir=state_dir)[1])
    with open(os.path.join(state_dir, 'anyip_route@%s.json' % edge_ns)) as handle:
        assert json.load(handle)['params']['prefixes'] == [PREFIX4, PREFIX6]
    gone = run_playbook([{'anycast.edge.anyip_route': {'prefixes': [PREFIX4, PREFIX6], 'state': 'absent',
                                                       'netns': edge_ns}},
                         {'anycast.edge.tproxy_rule': {'state': 'absent', 'netns': edge_ns}}],
                        state_dir=state_dir)
    assert [ok(r)['persisted'] for r in gone] == [None, None]
    assert not [f for f in os.listdir(state_dir) if f.endswith('.json')]


def test_persist_false_records_nothing(edge, state_dir):
    edge_ns, _ctl = edge
    ok(run_playbook(edge_tasks(edge_ns, persist=False), state_dir=state_dir)[0])
    assert os.listdir(state_dir) == []


def dial_ok(ns, address, port, timeout=1.0):
    out = nsexec(ns, [sys.executable, os.path.join(HERE, 'dial.py'), json.dumps([[address, port]]),
                      str(timeout)]).stdout
    return not json.loads(out)[0][2].startswith('error')


@pytest.fixture
def control_path(edge):
    """A stand-in for the SSH service the controller uses: a plain listener on the edge's port 22."""
    edge_ns, _ctl = edge
    proc = subprocess.Popen(['ip', 'netns', 'exec', edge_ns, sys.executable, '-c',
                             'import socket\n'
                             's = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n'
                             's.bind(("%s", 22)); s.listen(16); print("ready", flush=True)\n'
                             'while True:\n c, _ = s.accept(); c.sendall(b"SSH-2.0-standin\\n"); c.close()\n'
                             % EDGE_ADDR], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'ready'
        yield
    finally:
        proc.kill()
        proc.wait()


# Sends every new connection to the edge's port 22 to a port nobody listens on:
# the control path is cut as soon as this is applied.
CUT_OFF = {'chain': 'ANYCAST-LOCKOUT', 'rules': [
    {'destination': EDGE_ADDR + '/32', 'ports': 22, 'on_port': 9}]}


def wait_until(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return predicate()


def test_unconfirmed_change_that_cuts_the_controller_off_heals_itself(edge, control_path, state_dir):
    edge_ns, ctl_ns = edge
    assert dial_ok(ctl_ns, EDGE_ADDR, 22)
    before = helpers.kernel_state(edge_ns)
    result = ok(run_playbook([{'anycast.edge.tproxy_rule': dict(CUT_OFF, netns=edge_ns, confirm_timeout=3)}],
                             state_dir=state_dir)[0])
    assert result['changed'] and result['confirm_token']
    assert not dial_ok(ctl_ns, EDGE_ADDR, 22)                 # cut off: the confirm task cannot run
    assert not [f for f in os.listdir(state_dir) if f.endswith('.json')]  # not persisted unconfirmed
    assert wait_until(lambda: dial_ok(ctl_ns, EDGE_ADDR, 22), 15), 'the change was not rolled back'
    assert wait_until(lambda: helpers.kernel_state(edge_ns) == before, 5)
    assert not [f for f in os.listdir(state_dir) if f.endswith('.json')]


def test_confirmed_change_stays_and_is_persisted(edge, state_dir):
    edge_ns, _ctl = edge
    key = 'tproxy_rule@%s@ANYCAST-LOCKOUT' % edge_ns
    results = run_playbook([
        {'anycast.edge.tproxy_rule': dict(CUT_OFF, netns=edge_ns, confirm_timeout=4)},
        # by token: a confirm without tokens confirms every pending change of the machine, other test runs' too
        {'anycast.edge.confirm': {'tokens': ['{{ ae_r0.confirm_token }}']}, 'check_mode': True},
        {'anycast.edge.confirm': {'tokens': ['{{ ae_r0.confirm_token }}']}},
    ], state_dir=state_dir)
    token = ok(results[0])['confirm_token']
    # check mode predicts the confirmation and confirms nothing: the real run still finds it pending
    assert ok(results[1])['confirmed'] == [key] and results[1]['changed'], results[1]
    assert ok(results[2])['confirmed'] == [key], results[2]
    assert token
    time.sleep(5)  # past the deadline: a pending rollback would have run by now
    assert 'ANYCAST-LOCKOUT' in nsexec(edge_ns, ['iptables-save', '-t', 'mangle']).stdout
    assert os.path.exists(os.path.join(state_dir, 'tproxy_rule@%s@ANYCAST-LOCKOUT.json' % edge_ns))


@pytest.mark.parametrize('variant', ['nf_tables', 'legacy'])
def test_parallel_runs_and_another_tool_lose_no_rule(edge, state_dir, variant):
    """Six rule chains and six prefixes applied at once, while another tool keeps writing the same table.

    On the legacy variant the modules use the python-iptables driver, which must
    hold the xtables lock that iptables-legacy -w takes, or a libiptc commit
    would replace the table without the other tool's rules.
    """
    edge_ns, _ctl = edge
    legacy = variant == 'legacy'
    env = helpers.module_env({'PATH': helpers.legacy_host_path()} if legacy else None)
    procs = []
    for index in range(6):
        args = {'ANSIBLE_MODULE_ARGS': {'netns': edge_ns, 'chain': 'PAR-%d' % index, 'state_dir': state_dir,
                                        'rules': [{'destination': '203.0.113.%d/32' % index, 'on_port': 1000 + index}]}}
        procs.append(subprocess.Popen([sys.executable, os.path.join(helpers.REPO, 'plugins/modules/tproxy_rule.py')],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
        procs[-1].stdin.write(json.dumps(args))
        procs[-1].stdin.close()
        args = {'ANSIBLE_MODULE_ARGS': {'netns': edge_ns, 'state_dir': state_dir,
                                        'prefixes': ['198.51.100.%d/32' % (64 + index)]}}
        procs.append(subprocess.Popen([sys.executable, os.path.join(helpers.REPO, 'plugins/modules/anyip_route.py')],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
        procs[-1].stdin.write(json.dumps(args))
        procs[-1].stdin.close()
    # meanwhile another tool (think Docker) keeps changing the same table
    other = subprocess.run(['ip', 'netns', 'exec', edge_ns, 'sh', '-c',
                            'for i in $(seq 1 40); do %s -w -t mangle -A FORWARD -s 10.9.9.$i -j ACCEPT; done'
                            % ('iptables-legacy' if legacy else 'iptables')],
                           capture_output=True, text=True, timeout=120, check=False)
    for proc in procs:
        out = proc.stdout.read()
        proc.wait()
        assert not json.loads(out).get('failed'), out
    assert other.returncode == 0, other.stderr
    save = nsexec(edge_ns, ['iptables-legacy-save' if legacy else 'iptables-save', '-t', 'mangle']).stdout
    for index in range(6):
        assert save.count('-j PAR-%d' % index) == 1
        assert '-A PAR-%d -d 203.0.113.%d/32' % (index, index) in save
    assert save.count('-A FORWARD -s 10.9.9.') == 40
    routes = nsexec(edge_ns, ['ip', 'route', 'show', 'table', 'local', 'proto', '172']).stdout
    assert sorted(l.split()[1] for l in routes.splitlines()) == sorted('198.51.100.%d' % (64 + i) for i in range(6))
    with open(os.path.join(state_dir, 'anyip_route@%s.json' % edge_ns)) as handle:
        assert len(json.load(handle)['params']['prefixes']) == 6


def test_a_kernel_refusal_mid_batch_leaves_the_routes_as_they_were(edge, state_dir):
    edge_ns, _ctl = edge
    ok(run_module('anyip_route', {'prefixes': ['203.0.113.0/25'], 'netns': edge_ns}, state_dir=state_dir))
    nsexec(edge_ns, ['sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1'])  # the kernel will refuse IPv6 routes
    before = helpers.route_dump(edge_ns)
    result = run_module('anyip_route', {'netns': edge_ns, 'purge': True, 'state_dir': state_dir,
                                        'prefixes': ['192.0.2.%d/32' % i for i in range(20)] + [PREFIX6]})
    assert result['failed'] and PREFIX6 in result['msg'] and 'undone' in result['msg'], result['msg']
    assert helpers.route_dump(edge_ns) == before              # 20 adds and the purge were undone
    with open(os.path.join(state_dir, 'anyip_route@%s.json' % edge_ns)) as handle:
        assert json.load(handle)['params']['prefixes'] == ['203.0.113.0/25']


def test_a_failure_in_the_second_table_rolls_back_the_first(edge, state_dir, tmp_path):
    edge_ns, _ctl = edge
    ok(run_module('tproxy_rule', dict(edge_tasks(edge_ns)[1]['anycast.edge.tproxy_rule']), state_dir=state_dir))
    before = [nsexec(edge_ns, [tool, '-t', 'mangle']).stdout for tool in ('iptables-save', 'ip6tables-save')]
    # Inject the failure: the IPv6 transaction fails after the IPv4 table was written.
    failing = tmp_path / 'bin'
    failing.mkdir()
    script = failing / 'ip6tables-restore'
    script.write_text('#!/bin/sh\necho "forced failure injected by the test" >&2\nexit 1\n')
    script.chmod(0o755)
    rules = [{'destination': '192.0.2.128/25', 'on_port': 1234},
             {'destination': '2001:db8:2::/64', 'on_port': 1234}]
    result = run_module('tproxy_rule', {'netns': edge_ns, 'rules': rules}, state_dir=state_dir,
                        env={'PATH': str(failing) + os.pathsep + os.environ['PATH']})
    assert result['failed'] and 'forced failure' in result['msg'], result['msg']
    assert 'IPv4 mangle was rolled back' in result['msg'], result['msg']
    after = [nsexec(edge_ns, [tool, '-t', 'mangle']).stdout for tool in ('iptables-save', 'ip6tables-save')]

    def rules_of(text):
        return [line for line in text.splitlines() if line.startswith('-A')]
    assert [rules_of(t) for t in after] == [rules_of(t) for t in before]
    assert '192.0.2.128/25' not in after[0]


def test_an_ssh_exemption_is_recorded_so_a_reboot_cannot_lock_the_operator_out(edge, state_dir):
    edge_ns, _ctl = edge
    ssh = {'SSH_CONNECTION': '198.51.100.2 50022 %s 22' % EDGE_ADDR}
    result = ok(run_module('hashlimit', {'netns': edge_ns, 'protocol': 'tcp', 'ssh_guard': 'exempt'},
                           env=ssh, state_dir=state_dir))
    assert result['ssh_exempt'] == '198.51.100.2/32'
    with open(os.path.join(state_dir, 'hashlimit@%s@RATE-LIMIT.json' % edge_ns)) as handle:
        assert json.load(handle)['params']['exempt'] == ['198.51.100.2/32']


# -- issue 18: a later change while a confirmation is pending -------------------------------------

PENDING_DIR = '/run/anycast-edge/pending'


def on_port_rules(ns, chain):
    save = nsexec(ns, ['iptables-save', '-t', 'mangle']).stdout
    return re.findall(r'-A %s .*--on-port (\d+)' % chain, save)


def recorded_port(state_dir_path, key):
    path = os.path.join(state_dir_path, key + '.json')
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)['params']['rules'][0]['on_port']


def on_port_task(ns, port, **extra):
    return {'anycast.edge.tproxy_rule': dict({'netns': ns, 'chain': 'Q9', 'rules': [
        {'destination': PREFIX4, 'on_port': port}]}, **extra)}


def test_a_later_change_supersedes_a_pending_confirmation(edge, state_dir):
    """1111; then 2222 with confirm_timeout; then 3333 without it: the pending rollback used to put 1111
    back (kernel and record) at its deadline. The later run confirms the pending change and cancels its
    rollback: it reached the host, which is all anycast.edge.confirm proves."""
    edge_ns, _ctl = edge
    key = 'tproxy_rule@%s@Q9' % edge_ns
    results = run_playbook([on_port_task(edge_ns, 1111), on_port_task(edge_ns, 2222, confirm_timeout=4)],
                           state_dir=state_dir)
    deadline = ok(results[1])['confirm_deadline']
    assert os.path.exists(os.path.join(PENDING_DIR, key + '.json'))
    predicted = ok(run_module('tproxy_rule', on_port_task(edge_ns, 3333)['anycast.edge.tproxy_rule'], check=True,
                              state_dir=state_dir))
    assert predicted['superseded'] == [key]
    assert os.path.exists(os.path.join(PENDING_DIR, key + '.json'))     # check mode confirms nothing
    later = ok(run_playbook([on_port_task(edge_ns, 3333)], state_dir=state_dir)[0])
    assert later['changed'] and later['superseded'] == [key], later
    assert any('confirmed the change still waiting for confirmation' in w for w in later.get('warnings', [])), later
    assert not os.path.exists(os.path.join(PENDING_DIR, key + '.json'))
    time.sleep(max(0.0, deadline - time.time()) + 3)      # past the deadline: the rollback would have run
    assert on_port_rules(edge_ns, 'Q9') == ['3333']
    assert recorded_port(state_dir, key) == 3333


def test_a_later_unconfirmed_change_rolls_back_to_the_state_it_superseded(edge, state_dir):
    """2222 with confirm_timeout, then 3333 with confirm_timeout and nobody confirms: 2222 was proven
    reachable by the second run, so that is what the host returns to (kernel and record)."""
    edge_ns, _ctl = edge
    key = 'tproxy_rule@%s@Q9' % edge_ns
    results = run_playbook([on_port_task(edge_ns, 1111), on_port_task(edge_ns, 2222, confirm_timeout=30),
                            on_port_task(edge_ns, 3333, confirm_timeout=3)], state_dir=state_dir)
    assert ok(results[2])['superseded'] == [key]
    assert recorded_port(state_dir, key) == 2222
    assert on_port_rules(edge_ns, 'Q9') == ['3333']
    assert wait_until(lambda: on_port_rules(edge_ns, 'Q9') == ['2222'], 20), on_port_rules(edge_ns, 'Q9')
    assert wait_until(lambda: not os.path.exists(os.path.join(PENDING_DIR, key + '.json.rolling')), 20)
    time.sleep(1)
    assert on_port_rules(edge_ns, 'Q9') == ['2222'] and recorded_port(state_dir, key) == 2222


def test_a_change_while_its_rollback_runs_is_refused_and_changes_nothing(edge, state_dir):
    edge_ns, _ctl = edge
    key = 'tproxy_rule@%s@Q9' % edge_ns
    ok(run_module('tproxy_rule', on_port_task(edge_ns, 1111)['anycast.edge.tproxy_rule'], state_dir=state_dir))
    rolling = os.path.join(PENDING_DIR, key + '.json.rolling')
    os.makedirs(PENDING_DIR, exist_ok=True)
    with open(rolling, 'w') as handle:      # what a watchdog holds while it re-applies the previous state
        json.dump({'token': 'x', 'key': key, 'deadline': time.time() - 1}, handle)
    try:
        result = run_module('tproxy_rule', on_port_task(edge_ns, 3333)['anycast.edge.tproxy_rule'],
                            state_dir=state_dir)
        assert result.get('failed') and 'rollback of %s is running' % key in result['msg'], result
        assert result['msg'].startswith('nothing was changed'), result['msg']
        assert on_port_rules(edge_ns, 'Q9') == ['1111'] and recorded_port(state_dir, key) == 1111
    finally:
        os.unlink(rolling)
