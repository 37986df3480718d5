"""BGP announcements for real: BIRD in namespaces (two edges, one router, veth pairs), configured
by the bgp_speaker module, gated by the real health daemon (roles/bgp/files/anycast_edge_health.py).

What the router's kernel installs is the proof: ECMP routes over both edges, one edge's path gone
when its service dies, when its BIRD freezes (BFD) and when it is drained, and back again.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

import helpers

sys.path.insert(0, os.path.join(helpers.REPO, 'tests', 'bgp'))
import bgp_lab  # noqa: E402
from bgp_lab import PREFIX4, PREFIX6  # noqa: E402

NS_PREFIX = helpers.ns_prefix('aeb')

# network namespaces, and BIRD 2 (Debian package bird2, in scripts/apt-packages.txt)
pytestmark = pytest.mark.needs(root=True, commands=('bird', 'birdc'))


@pytest.fixture(scope='module')
def lab():
    """Sessions up, both edges' health daemons running against a listener: both paths announced."""
    factory = helpers.NamespaceFactory(NS_PREFIX)
    lab = None
    try:
        lab = bgp_lab.BgpLab(factory)
        lab.start()
        for edge in lab.edges:
            edge.write_health_config()
            edge.start_listener()
            edge.start_health()
        lab.wait_nexthops(PREFIX4, lab.both(4))
        lab.wait_nexthops(PREFIX6, lab.both(6))
        yield lab
    finally:
        if lab is not None:
            lab.stop()
        factory.cleanup()


def baseline(lab):
    """Both edges healthy and announcing, whatever a test left behind."""
    for edge in lab.edges:
        edge.health_cli('undrain', '--timeout', '0')
        if edge.listener is None:
            edge.start_listener()
        if edge.health is None:
            edge.start_health()
    lab.wait_nexthops(PREFIX4, lab.both(4), timeout=20)
    lab.wait_nexthops(PREFIX6, lab.both(6), timeout=20)


def test_both_edges_announce_v4_and_v6_and_the_router_installs_ecmp(lab):
    assert lab.nexthops(PREFIX4) == lab.both(4)
    assert lab.nexthops(PREFIX6) == lab.both(6)
    route = helpers.nsexec(lab.router, ['ip', 'route', 'show', 'exact', PREFIX4]).stdout
    assert 'proto bird' in route and route.count('nexthop via') == 2, route
    for edge in lab.edges:
        assert 'blackhole %s proto 173' % PREFIX4 in edge.table()
        assert edge.status()['groups'][0]['state'] == 'announced'


def test_service_death_withdraws_within_3s_and_it_comes_back_only_after_the_hold_down(lab):
    edge1, edge2 = lab.edges
    try:
        edge1.kill_listener()
        withdrawn = lab.wait_nexthops(PREFIX4, {edge2.address4}, timeout=3)
        lab.wait_nexthops(PREFIX6, {edge2.address6}, timeout=3)
        # The daemon removes the route, then writes its status file: the router can see the
        # withdrawal a moment before the file says why.
        deadline = time.monotonic() + 2.0
        while '127.0.0.1:1234' not in edge1.status()['groups'][0]['reason'] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert '127.0.0.1:1234' in edge1.status()['groups'][0]['reason']
        # Back up: not announced before the hold-down (2 s here) has passed.
        edge1.start_listener()
        started = time.monotonic()
        time.sleep(1.0)
        assert lab.nexthops(PREFIX4) == {edge2.address4}, 'announced again before the hold-down'
        assert 'hold-down' in edge1.status()['groups'][0]['reason']
        lab.wait_nexthops(PREFIX4, lab.both(4), timeout=5)
        back = time.monotonic() - started
        assert back >= 2.0, back
        print('withdrawn %.2f s after the service died; back %.2f s after it returned' % (withdrawn, back))
    finally:
        baseline(lab)


def test_a_flapping_service_is_not_announced(lab):
    """Up for less than the hold-down, then down again, three times: the path never comes back."""
    edge1, edge2 = lab.edges
    try:
        edge1.kill_listener()
        lab.wait_nexthops(PREFIX4, {edge2.address4}, timeout=3)
        deadline = time.monotonic() + 4.5
        seen = set()
        while time.monotonic() < deadline:
            edge1.start_listener()
            for _poll in range(8):
                seen |= lab.nexthops(PREFIX4)
                time.sleep(0.1)
            edge1.kill_listener()
            time.sleep(0.4)
        assert seen == {edge2.address4}, seen
    finally:
        baseline(lab)


def test_a_reload_withdraws_nothing_and_runs_the_new_checks(lab):
    """SIGHUP (systemctl reload, the role's handler for a new program or configuration): the daemon
    re-executes itself and the healthy group stays announced throughout; the new configuration's check
    (a TCP connect instead of the listener's state) is the one that then decides."""
    edge1, edge2 = lab.edges
    try:
        edge1.write_health_config(check='tcp')
        pid = edge1.health.pid
        edge1.health.send_signal(signal.SIGHUP)
        seen = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            hops = lab.nexthops(PREFIX4)
            assert hops == lab.both(4), 'withdrawn during the reload: %s' % hops
            time.sleep(0.02)
            seen |= hops
        status = edge1.status()
        assert status['pid'] == pid and status['groups'][0]['checks'] == ['tcp 127.0.0.1:1234'], status
        edge1.kill_listener()
        lab.wait_nexthops(PREFIX4, {edge2.address4}, timeout=3)
        # the route goes before the status file is rewritten: give the daemon its next write
        deadline = time.monotonic() + 3
        while 'Connection refused' not in edge1.status()['groups'][0]['reason'] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 'Connection refused' in edge1.status()['groups'][0]['reason'], edge1.status()
    finally:
        edge1.write_health_config()
        edge1.health.send_signal(signal.SIGHUP)
        baseline(lab)


def test_bfd_withdraws_a_frozen_edge_within_about_a_second(lab):
    edge1, edge2 = lab.edges
    pid = edge1.bird.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        seconds = lab.wait_nexthops(PREFIX4, {edge2.address4}, timeout=5)
        lab.wait_nexthops(PREFIX6, {edge2.address6}, timeout=5)
        # BFD: 200 ms x 5 = 1 s; the hold time (9 s) would take much longer.
        assert seconds < 2.5, seconds
        bfd = helpers.sh(['birdc', '-s', lab.router_bird.socket, 'show protocols all edge1_v4']).stdout
        assert 'BFD session down' in bfd, bfd
        print('router withdrew the frozen edge after %.2f s' % seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
        lab.wait_sessions(timeout=30)
        baseline(lab)


def test_drain_announces_graceful_shutdown_then_withdraws_and_survives_a_daemon_restart(lab):
    edge1, edge2 = lab.edges
    try:
        started = time.monotonic()
        proc = helpers.sh(['ip', 'netns', 'exec', edge1.ns, bgp_lab.SYSTEM_PYTHON, '-B', bgp_lab.HEALTH, 'drain',
                           '--config', edge1.health_config, '--timeout', '5', '--reason', 'test'], check=False,
                          timeout=60)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result['was_drained'] is False and result['forced'] is False
        assert result['withdrawn_after'] >= 1.5, result     # GRACEFUL_SHUTDOWN for 2 s first
        assert result['connections'] == 0 and not result['timed_out']
        assert lab.nexthops(PREFIX4) == {edge2.address4}
        # The router saw the community before the withdrawal: its log of the edge1 path.
        assert edge1.status()['groups'][0]['reason'] == 'drained'
        assert edge1.table().strip() == ''
        # A restarted daemon (a reboot, as far as it knows) announces nothing while drained.
        edge1.stop_health()
        edge1.start_health()
        time.sleep(3)
        assert lab.nexthops(PREFIX4) == {edge2.address4}
        assert edge1.status()['drained']['reason'] == 'test'
        proc = edge1.health_cli('undrain', '--timeout', '10', '--require', 'proxy')
        assert proc.returncode == 0, proc.stdout + proc.stderr
        undrained = json.loads(proc.stdout)
        assert undrained['announced'] == ['proxy'] and undrained['was_drained'] is True
        lab.wait_nexthops(PREFIX4, lab.both(4), timeout=3)
        lab.wait_nexthops(PREFIX6, lab.both(6), timeout=3)
        print('drain took %.1f s' % (time.monotonic() - started))
    finally:
        baseline(lab)


def test_the_router_prefers_the_other_edge_during_graceful_shutdown(lab):
    """While draining, the edge1 path carries 65535:0: the router keeps it at local preference 0 and
    forwards over edge2 only, before anything is withdrawn."""
    edge1, edge2 = lab.edges
    try:
        edge1.write_health_config(graceful_shutdown=30.0)
        edge1.stop_health()
        edge1.start_health()
        lab.wait_nexthops(PREFIX4, lab.both(4), timeout=10)
        with open(edge1.drain_file, 'w') as handle:
            json.dump({'since': time.time(), 'reason': 'gshut test'}, handle)
        lab.wait_nexthops(PREFIX4, {edge2.address4}, timeout=3)
        assert 'unreachable %s proto 173' % PREFIX4 in edge1.table()
        routes = helpers.sh(['birdc', '-s', lab.router_bird.socket, 'show route %s all' % PREFIX4]).stdout
        assert '(65535,0)' in routes and 'BGP.local_pref: 0' in routes, routes
    finally:
        os.unlink(edge1.drain_file)
        edge1.write_health_config()
        edge1.stop_health()
        baseline(lab)


def test_export_is_strictly_the_configured_prefixes(lab):
    """Other routes of the edge - main table, more specifics and strangers in the health table,
    the local routes themselves - never reach the router."""
    edge1 = lab.edges[0]
    strangers = [['ip', 'route', 'add', '198.18.0.0/24', 'via', edge1.router4],
                 ['ip', 'route', 'add', 'blackhole', '198.18.1.0/24', 'table', '4179', 'proto', '173'],
                 ['ip', 'route', 'add', 'blackhole', '192.0.2.0/25', 'table', '4179', 'proto', '173'],
                 ['ip', 'route', 'add', 'blackhole', '10.0.0.0/8', 'table', '4179'],
                 ['ip', '-6', 'route', 'add', 'blackhole', '2001:db8:100::/65', 'table', '4179', 'proto', '173']]
    try:
        for command in strangers:
            helpers.nsexec(edge1.ns, command)
        time.sleep(1.5)
        router = helpers.nsexec(lab.router, ['ip', 'route', 'show', 'table', 'all']).stdout + \
            helpers.nsexec(lab.router, ['ip', '-6', 'route', 'show', 'table', 'all']).stdout
        for stranger in ('198.18.0.0', '198.18.1.0', '192.0.2.0/25', '10.0.0.0', '2001:db8:100::/65'):
            assert stranger not in router, router
        exported = helpers.sh(['birdc', '-s', edge1.bird.socket, 'show route export bgp_r4']).stdout
        assert PREFIX4 in exported and '198.18' not in exported and '192.0.2.0/25' not in exported, exported
    finally:
        helpers.nsexec(edge1.ns, ['ip', 'route', 'del', '198.18.0.0/24'], check=False)
        for prefix in ('198.18.1.0/24', '192.0.2.0/25', '10.0.0.0/8', '2001:db8:100::/65'):
            helpers.nsexec(edge1.ns, ['ip', 'route', 'del', prefix, 'table', '4179'], check=False)


def test_a_second_run_changes_nothing_and_a_prefix_change_resets_no_session(lab):
    edge1 = lab.edges[0]
    before = edge1.bird.protocols()
    reconfigured = edge1.bird.last_reconfiguration()
    again = edge1.configure()
    assert again['changed'] is False and again['applied'] is False, again
    assert edge1.bird.last_reconfiguration() == reconfigured      # BIRD was not even told
    try:
        helpers.nsexec(edge1.ns, ['ip', 'route', 'add', 'local', '198.51.100.0/24', 'dev', 'lo', 'proto', '172'])
        changed = edge1.configure(prefixes=[PREFIX4, PREFIX6, {'prefix': '198.51.100.0/24',
                                                               'communities': ['64512:7']}])
        assert changed['changed'] and changed['applied'] and changed['restarted'] == [], changed
        after = edge1.bird.protocols()
        for name in ('bgp_r4', 'bgp_r6'):
            assert after[name][1] == before[name][1], (before[name], after[name])   # "since" unchanged
        assert edge1.bird.last_reconfiguration() != reconfigured
    finally:
        edge1.configure()
        helpers.nsexec(edge1.ns, ['ip', 'route', 'del', 'local', '198.51.100.0/24', 'dev', 'lo'], check=False)
    assert edge1.bird.protocols()['bgp_r4'][1] == before['bgp_r4'][1]


def test_a_neighbour_option_change_restarts_only_that_session(lab):
    edge1 = lab.edges[0]
    before = edge1.bird.protocols()
    try:
        args = edge1.speaker_args()
        args['neighbors'][1]['hold_time'] = 12
        result = helpers.run_module('bgp_speaker', args)
        assert result['changed'] and result['restarted'] == ['bgp_r6'], result
        assert edge1.bird.protocols()['bgp_r4'][1] == before['bgp_r4'][1]
    finally:
        edge1.configure()
        lab.wait_sessions()


def test_check_mode_changes_nothing(lab):
    edge1 = lab.edges[0]
    with open(edge1.bird.config) as handle:
        live = handle.read()
    reconfigured = edge1.bird.last_reconfiguration()
    result = edge1.configure(check=True, diff=True, communities=['64512:99'])
    assert result['changed'] is True and result['applied'] is False, result
    assert '(64512, 99)' in result['diff']['after'] and '(64512, 99)' not in result['diff']['before']
    with open(edge1.bird.config) as handle:
        assert handle.read() == live
    assert edge1.bird.last_reconfiguration() == reconfigured
    assert [n for n in os.listdir(os.path.dirname(edge1.bird.config)) if n.startswith('.edge1.conf.')] == []


def test_a_configuration_bird_refuses_leaves_the_live_file_and_bird_untouched(lab):
    edge1 = lab.edges[0]
    with open(edge1.bird.config) as handle:
        live = handle.read()
    reconfigured = edge1.bird.last_reconfiguration()
    before = edge1.bird.protocols()
    result = edge1.configure(extra_config='protocol static broken { ipv4; route 192.0.2.0/33 blackhole; }')
    assert result.get('failed'), result
    assert 'BIRD refused the new configuration' in result['msg'] and 'unchanged' in result['msg'], result['msg']
    with open(edge1.bird.config) as handle:
        assert handle.read() == live
    assert edge1.bird.last_reconfiguration() == reconfigured
    assert edge1.bird.protocols() == before
    leftovers = [n for n in os.listdir(os.path.dirname(edge1.bird.config)) if n.startswith('.edge1.conf.')]
    assert leftovers == []


def test_passwords_are_masked_in_the_diff_and_never_printed(lab):
    edge1 = lab.edges[0]
    secret = 'Sup3r-secret_pw'
    args = edge1.speaker_args()
    args['neighbors'][0]['password'] = secret
    results = helpers.run_playbook([{'anycast.edge.bgp_speaker': args}], check=True, diff=True,
                                   env={'ANSIBLE_VERBOSITY': '3'})
    result = results[0]
    assert result['changed'] is True
    assert 'password "********";' in result['diff']['after']
    assert secret not in json.dumps(result) and secret not in result['_stdout']


def test_no_route_of_the_router_reaches_the_edge_kernel():
    """The router announces a default route: by default nothing changes on the edge; with
    import_routes the default appears in the edge's main table (the test can fail)."""
    factory = helpers.NamespaceFactory(NS_PREFIX)
    lab = None
    try:
        lab = bgp_lab.BgpLab(factory, export_default=True)
        edge1 = lab.edges[0]
        before = helpers.route_dump(edge1.ns)
        lab.start()
        time.sleep(2)
        received = helpers.sh(['birdc', '-s', lab.router_bird.socket, 'show route export edge1_v4']).stdout
        assert '0.0.0.0/0' in received, received          # the router does send it
        assert helpers.route_dump(edge1.ns) == before
        assert 'default' not in helpers.nsexec(edge1.ns, ['ip', 'route']).stdout
        result = edge1.configure(import_routes=True)
        assert result['changed'] and result['restarted'] == [], result
        deadline = time.monotonic() + 10
        while 'default' not in helpers.nsexec(edge1.ns, ['ip', 'route']).stdout:
            assert time.monotonic() < deadline, helpers.nsexec(edge1.ns, ['ip', 'route']).stdout
            time.sleep(0.1)
        assert 'default via %s' % edge1.router4 in helpers.nsexec(edge1.ns, ['ip', 'route']).stdout
    finally:
        if lab is not None:
            lab.stop()
        factory.cleanup()


def test_edge_info_reports_sessions_announced_and_withheld_prefixes(lab):
    edge1, edge2 = lab.edges
    args = {'netns': edge1.ns, 'drift': False,
            'bgp': {'control_socket': edge1.bird.socket, 'health_status': edge1.status_file}}
    info = helpers.run_module('edge_info', args)
    bgp = info['bgp']
    assert bgp['running'] and bgp['error'] is None, bgp
    assert [(s['name'], s['state'], s['bfd'], s['exported']) for s in bgp['sessions']] == [
        ('bgp_r4', 'Established', 'Up', 1), ('bgp_r6', 'Established', 'Up', 1)]
    assert bgp['announced'] == [PREFIX4, PREFIX6] and bgp['withheld'] == [] and bgp['drained'] is None
    try:
        edge1.kill_listener()
        lab.wait_nexthops(PREFIX4, {edge2.address4}, timeout=3)
        info = helpers.run_module('edge_info', args)
        assert info['bgp']['announced'] == []
        assert [(w['prefix'], w['group'], w['state']) for w in info['bgp']['withheld']] == [
            (PREFIX4, 'proxy', 'withdrawn'), (PREFIX6, 'proxy', 'withdrawn')]
        assert '127.0.0.1:1234' in info['bgp']['withheld'][0]['reason']
        assert any(w.startswith('%s (proxy) is not announced: nothing listens on 127.0.0.1:1234' % PREFIX4)
                   for w in info['warnings'])
    finally:
        baseline(lab)
    # A host without BGP: no section at all.
    assert helpers.run_module('edge_info', dict(args, bgp={'control_socket': '/nonexistent/bird.ctl',
                                                           'health_status': '/nonexistent/status.json'}))['bgp'] is None


def test_the_listen_check_sees_a_missing_listener_and_a_full_accept_queue():
    """The proxy's listener check asks sock_diag (no connection reaches the proxy): nothing listening,
    listening with room, and an accept queue the service does not drain."""
    factory = helpers.NamespaceFactory(NS_PREFIX)
    try:
        ns = factory()
        code = '\n'.join([
            'import importlib.util, json, socket, time',
            'spec = importlib.util.spec_from_file_location("h", %r)' % bgp_lab.HEALTH,
            'h = importlib.util.module_from_spec(spec); spec.loader.exec_module(h)',
            'check = h.Check({"type": "listen", "address": "127.0.0.1", "port": 4321}, "k", 0.5)',
            'out = [check.run()]',
            'server = socket.socket(); server.bind(("127.0.0.1", 4321)); server.listen(2)',
            'out.append(check.run())',
            'clients = [socket.create_connection(("127.0.0.1", 4321)) for _ in range(3)]',
            'time.sleep(0.2)',
            'out.append(check.run())',
            'print(json.dumps(out))'])
        results = json.loads(helpers.nsexec(ns, [bgp_lab.SYSTEM_PYTHON, '-c', code]).stdout)
        assert results == [[False, 'nothing listens on 127.0.0.1:4321'], [True, ''],
                           [False, '127.0.0.1:4321: accept queue full (3 of 2)']]
    finally:
        factory.cleanup()
