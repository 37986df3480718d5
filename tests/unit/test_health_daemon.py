"""The health daemon's logic without a kernel: its configuration checks, the per-group state machine
(fall, hold-down, drain with GRACEFUL_SHUTDOWN, a reload's adoption), and its readers of iproute2's
JSON and /proc/net/tcp. tests/integration/test_bgp.py runs it for real against BIRD."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import subprocess
import sys

import pytest

PROGRAM = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       'roles', 'bgp', 'files', 'anycast_edge_health.py')
spec = importlib.util.spec_from_file_location('anycast_edge_health', PROGRAM)
health = importlib.util.module_from_spec(spec)
spec.loader.exec_module(health)


def config(**extra):
    data = {'table': 4179, 'interval': 0.5, 'fall': 2, 'hold_down': 5, 'graceful_shutdown': 3,
            'drain_file': '/var/lib/x/drained', 'status_file': '/run/x/status.json',
            'groups': [{'name': 'proxy', 'prefixes': ['192.0.2.0/24'],
                        'checks': [{'type': 'tcp', 'address': '127.0.0.1', 'port': 1234}]}]}
    data.update(extra)
    return health.Config(data)


def test_a_failure_needs_fall_rounds_but_a_first_failure_counts_at_once():
    group = config().groups[0]
    group.observe(False, 'refused', 0.0)
    assert not group.healthy                                   # first sight: no benefit of the doubt
    group = config().groups[0]
    group.observe(True, '', 0.0)
    group.observe(False, 'refused', 0.5)
    assert group.healthy                                       # one failure of fall=2
    group.observe(False, 'refused', 1.0)
    assert not group.healthy and group.reason == 'refused'


def test_announced_only_after_the_hold_down_and_withdrawn_at_once():
    group = config().groups[0]
    group.observe(True, '', 10.0)
    assert group.desired(10.0, None, False) == (health.WITHDRAWN, 'hold-down: healthy for 0.0 of 5.0 s')
    assert group.desired(14.9, None, False)[0] == health.WITHDRAWN
    group.state = health.ANNOUNCED if group.desired(15.0, None, False)[0] == health.ANNOUNCED else None
    assert group.state == health.ANNOUNCED
    group.observe(False, 'x', 15.5)
    group.observe(False, 'x', 16.0)
    assert group.desired(16.0, None, False) == (health.WITHDRAWN, 'x')
    group.state = health.WITHDRAWN
    # Back, then down before the hold-down passed, then back: the hold-down starts again.
    group.observe(True, '', 16.5)
    group.observe(False, 'x', 19.0)
    group.observe(False, 'x', 19.5)
    group.observe(True, '', 20.0)
    assert group.desired(24.0, None, False)[0] == health.WITHDRAWN
    assert group.desired(25.0, None, False)[0] == health.ANNOUNCED


def test_drain_announces_graceful_shutdown_first_then_withdraws_and_undrain_needs_no_new_hold_down():
    group = config().groups[0]
    group.observe(True, '', 0.0)
    group.state = health.ANNOUNCED
    assert group.desired(100.0, None, True)[0] == health.GRACEFUL_SHUTDOWN
    group.state = health.GRACEFUL_SHUTDOWN
    assert group.desired(102.9, None, True)[0] == health.GRACEFUL_SHUTDOWN
    assert group.desired(103.0, None, True) == (health.WITHDRAWN, 'drained')
    group.state = health.WITHDRAWN
    assert group.desired(200.0, None, False) == (health.ANNOUNCED, '')      # healthy all along


def test_a_drained_host_at_start_never_announces():
    group = config().groups[0]
    group.observe(True, '', 0.0)
    assert group.desired(1000.0, None, True) == (health.WITHDRAWN, 'drained')


def test_nothing_is_announced_before_the_restore_unit_succeeded():
    group = config().groups[0]
    group.observe(True, '', 0.0)
    assert group.desired(100.0, 'waiting for anycast-edge-restore.service', False) == \
        (health.WITHDRAWN, 'waiting for anycast-edge-restore.service')


def test_a_reload_keeps_a_healthy_group_announced_without_hold_down():
    group = config().groups[0]
    group.adopted = True
    group.observe(True, '', 0.0)
    assert group.desired(0.0, None, False) == (health.ANNOUNCED, '')
    group = config().groups[0]
    group.adopted = True
    group.observe(False, 'refused', 0.0)
    assert group.desired(0.0, None, False)[0] == health.WITHDRAWN


@pytest.mark.parametrize('extra,message', [
    ({'table': 254}, "table: 254 is one of the kernel's own tables"),
    ({'interval': 0}, 'interval: expected a number'),
    ({'hold_down': -1}, 'hold_down'),
    ({'bogus': 1}, 'unknown key(s): bogus'),
    ({'drain_file': 'relative'}, 'drain_file: expected an absolute path'),
    ({'groups': [{'name': 'a', 'prefixes': ['192.0.2.0/33']}]}, "groups[0].prefixes[0]: '192.0.2.0/33' is not a prefix"),
    ({'groups': [{'name': 'a', 'prefixes': ['192.0.2.0/24']}, {'name': 'b', 'prefixes': ['192.0.2.0/24']}]},
     'groups: 192.0.2.0/24 is in a and b'),
    ({'groups': [{'name': 'a', 'prefixes': ['192.0.2.0/24'], 'checks': [{'type': 'ping'}]}]}, 'groups[0].checks[0]'),
    ({'groups': [{'name': 'a', 'prefixes': ['192.0.2.0/24'], 'checks': [{'type': 'tcp', 'address': 'x', 'port': 1}]}]},
     "groups[0].checks[0].address: 'x' is not an IP address"),
    ({'groups': [{'name': 'a', 'prefixes': ['192.0.2.0/24'], 'checks': [{'type': 'link', 'name': '../x'}]}]},
     'groups[0].checks[0].name'),
])
def test_bad_configurations_are_refused_naming_the_key(extra, message):
    with pytest.raises(health.ConfigError) as err:
        config(**extra)
    assert message in str(err.value)


def test_check_config_on_the_command_line(tmp_path):
    good, bad = tmp_path / 'good.json', tmp_path / 'bad.json'
    good.write_text(json.dumps({'groups': [{'name': 'proxy', 'prefixes': ['192.0.2.0/24']}]}))
    bad.write_text('{"table": 255}')
    run = [sys.executable, PROGRAM, 'check-config']
    good_run = subprocess.run(run + [str(good)], capture_output=True, text=True, check=False)
    assert good_run.returncode == 0 and good_run.stdout.endswith('1 groups, 1 prefixes\n')
    proc = subprocess.run(run + [str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "table: 255 is one of the kernel's own tables" in proc.stderr


def test_iproute2_json_is_read_with_host_routes_as_prefixes():
    routes = health.parse_ip_routes(json.dumps([
        {'type': 'blackhole', 'dst': '192.0.2.0/24', 'protocol': '173'},
        {'type': 'unreachable', 'dst': '198.51.100.1', 'protocol': '173'},
        {'dst': '10.0.0.0/8', 'gateway': '10.0.0.1'},
        {'type': 'blackhole', 'dst': 'default'}]))
    assert routes == {ipaddress.ip_network('192.0.2.0/24'): 'blackhole',
                      ipaddress.ip_network('198.51.100.1/32'): 'unreachable',
                      ipaddress.ip_network('10.0.0.0/8'): 'unicast'}


def test_established_connections_to_the_prefixes_are_counted_from_proc(tmp_path):
    header = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n'
    # 192.0.2.10:443 established, 192.0.2.11:443 listening, 10.0.0.1:22 established
    (tmp_path / 'tcp').write_text(header + ''.join(
        '   %d: %s:01BB 0100000A:D431 %s 00000000:00000000 00:00000000 00000000     0        0 1\n' % (i, a, st)
        for i, (a, st) in enumerate([('0A0200C0', '01'), ('0B0200C0', '0A'), ('0100000A', '01')])))
    # 2001:db8:100::5 established
    (tmp_path / 'tcp6').write_text(header + '   0: B80D0120000000010000000005000000:01BB '
                                   '00000000000000000000000001000000:D431 01 0:0 0:0 0 0 0 1\n')
    prefixes = [ipaddress.ip_network('192.0.2.0/24'), ipaddress.ip_network('2001:db8:100::/64')]
    assert health.established_connections(prefixes, proc=str(tmp_path)) == 2
    assert health.established_connections(prefixes[:1], proc=str(tmp_path)) == 1
