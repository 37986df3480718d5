"""Origin pools of the transparent proxy, end to end: balancing, failover, health checks, DNS.

Same topology as test_proxy.py (client -> edge with AnyIP + TPROXY -> origin);
the origin namespace serves several origins on ports 81xx and on extra
addresses. Each test says which origins are up; the client dials random
addresses of the AnyIP prefix and the origin's greeting says which one served.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'proxy'))

import helpers  # noqa: E402
import support  # noqa: E402
from fixtures import assert_reset, base_config, origin, random_port, random_v4, start_proxy, topo  # noqa: E402,F401  pylint: disable=unused-import
from support import ORIGIN_V4, metric, talk, wait_for  # noqa: E402

NS_PREFIX = helpers.ns_prefix('aeo')
pytestmark = pytest.mark.needs(root=True)   # network namespaces (tests/prerequisites.py)

# Addresses of the origin namespace besides ORIGIN_V4 (10.0.2.2), for DNS names with several records.
EXTRA_ORIGINS = ('10.0.2.3', '10.0.2.4')


@pytest.fixture(scope='module', autouse=True)
def extra_origin_addresses(topo):
    for address in EXTRA_ORIGINS:
        helpers.nsexec(topo.origin, ['ip', 'addr', 'add', address + '/24', 'dev', 'org0'])


def pool_config(origins, **route):
    return base_config(routes=[dict({'name': 'pool', 'destination': '192.0.2.0/24', 'origins': origins,
                                     'connect_timeout': 2}, **route)])


def served_by(topo, count, **connect):
    """The origin (address, port) that greeted each of COUNT new connections."""
    served = []
    for _unused1 in range(count):
        with topo.connect(random_v4(), random_port(), **connect) as sock:
            greeting, echo = talk(sock)
            assert echo == b'ping'
            served.append(tuple(greeting['local']))
    return served


def port_counts(served):
    return collections.Counter(port for _unused1, port in served)


# -- balancing ----------------------------------------------------------------------------

def test_round_robin_spreads_evenly(topo, start_proxy, origin):
    for port in (8101, 8102, 8103):
        origin(port=port)
    proxy = start_proxy(pool_config(['%s:%d' % (ORIGIN_V4, p) for p in (8101, 8102, 8103)]))
    assert port_counts(served_by(topo, 30)) == {8101: 10, 8102: 10, 8103: 10}
    samples = proxy.metrics()
    for port in (8101, 8102, 8103):
        labels = dict(route='pool', origin='%s:%d' % (ORIGIN_V4, port))
        assert metric(samples, 'anycast_proxy_origin_connections_total', **labels) == 10
        assert metric(samples, 'anycast_proxy_origin_up', **labels) == 1


def test_weights(topo, start_proxy, origin):
    origin(port=8101)
    origin(port=8102)
    start_proxy(pool_config([{'address': '%s:8101' % ORIGIN_V4, 'weight': 3}, '%s:8102' % ORIGIN_V4]))
    assert port_counts(served_by(topo, 40)) == {8101: 30, 8102: 10}


def test_least_connections_sends_new_connections_to_the_origin_with_fewer_open(topo, start_proxy, origin):
    origin(port=8101)
    origin(port=8102)
    proxy = start_proxy(pool_config(['%s:8101' % ORIGIN_V4, '%s:8102' % ORIGIN_V4], balance='least-connections'))
    held = []
    try:
        # Three held on 8101 ...
        for _unused1 in range(6):
            sock = topo.connect(random_v4(), random_port())
            held.append((sock, talk(sock)[0]['local'][1]))
        on_8101 = [s for s, port in held if port == 8101]
        assert len(on_8101) == 3
        # ... of which two end: the next two connections go to 8101 (1 open) rather than 8102 (3).
        for sock in on_8101[:2]:
            sock.close()
        wait_for(lambda: metric(proxy.metrics(), 'anycast_proxy_origin_active_connections', route='pool',
                                origin='%s:8101' % ORIGIN_V4) == 1, what='two connections to end')
        for _unused1 in range(2):
            sock = topo.connect(random_v4(), random_port())
            held.append((sock, talk(sock)[0]['local'][1]))
        assert [port for _unused1, port in held[-2:]] == [8101, 8101]
    finally:
        for sock, _unused1 in held:
            sock.close()


def test_source_hash_keeps_each_client_on_its_origin_and_moves_only_the_dead_ones_clients(topo, start_proxy, origin):
    sources = ['10.0.1.%d' % i for i in range(11, 31)]
    for address in sources:
        helpers.nsexec(topo.client, ['ip', 'addr', 'add', address + '/24', 'dev', 'cli0'])
    try:
        servers = {port: origin(port=port) for port in (8101, 8102, 8103)}
        start_proxy(pool_config(['%s:%d' % (ORIGIN_V4, p) for p in (8101, 8102, 8103)], balance='source-hash',
                                health_check={'interval': 60}))
        home = {}
        for source in sources:
            ports = set(port_counts(served_by(topo, 3, source=source)))
            assert len(ports) == 1, (source, ports)     # one client address, one origin
            home[source] = ports.pop()
        assert set(home.values()) == {8101, 8102, 8103}
        dead = collections.Counter(home.values()).most_common(1)[0][0]
        servers[dead].close()
        for source in sources:
            ports = set(port_counts(served_by(topo, 2, source=source)))
            if home[source] == dead:
                assert dead not in ports              # failed over
            else:
                assert ports == {home[source]}        # untouched
    finally:
        for address in sources:
            helpers.nsexec(topo.client, ['ip', 'addr', 'del', address + '/24', 'dev', 'cli0'], check=False)


# -- failover -----------------------------------------------------------------------------

def test_a_refusing_origin_fails_over_at_once_and_goes_down(topo, start_proxy, origin):
    origin(port=8102)
    # 8101: nobody listens, every connection to it is refused.
    proxy = start_proxy(pool_config(['%s:8101' % ORIGIN_V4, '%s:8102' % ORIGIN_V4],
                                    health_check={'interval': 60, 'fall': 3}))
    started = time.monotonic()
    assert port_counts(served_by(topo, 20)) == {8102: 20}
    assert time.monotonic() - started < 5
    samples = proxy.metrics()
    down = dict(route='pool', origin='%s:8101' % ORIGIN_V4)
    assert metric(samples, 'anycast_proxy_origin_up', **down) == 0
    # Passive: three failed connections made it down (fall 3); after that it was not tried again.
    assert metric(samples, 'anycast_proxy_origin_connect_failures_total', **down) == 3
    assert metric(samples, 'anycast_proxy_origin_connections_total', route='pool', origin='%s:8102' % ORIGIN_V4) == 20
    logs = proxy.wait_log('failed_over_from=%s:8101' % ORIGIN_V4, count=3)
    assert 'route pool: origin %s:8101 is down (connect: Connection refused); 1 of 2 up' % ORIGIN_V4 in logs


def test_a_silent_origin_fails_over_within_the_connect_timeout(topo, start_proxy, origin):
    origin(port=8102)
    helpers.nsexec(topo.origin, ['iptables', '-A', 'INPUT', '-p', 'tcp', '--dport', '8101', '-j', 'DROP'])
    try:
        proxy = start_proxy(pool_config(['%s:8101' % ORIGIN_V4, '%s:8102' % ORIGIN_V4], connect_timeout=2,
                                        health_check={'interval': 60, 'fall': 2}))
        waits = []
        for _unused1 in range(6):
            started = time.monotonic()
            assert served_by(topo, 1, timeout=10)[0][1] == 8102
            waits.append(time.monotonic() - started)
        # The silent origin's attempts get half of the 2 s each (two live origins), twice (fall 2);
        # then it is down and never waited for again.
        assert sum(1 for w in waits if w > 0.8) == 2 and max(waits) < 1.8, waits
        assert metric(proxy.metrics(), 'anycast_proxy_origin_connect_failures_total', route='pool',
                      origin='%s:8101' % ORIGIN_V4) == 2
    finally:
        helpers.nsexec(topo.origin, ['iptables', '-F', 'INPUT'])


def test_backup_takes_over_when_every_primary_is_down_and_hands_back(topo, start_proxy, origin):
    primary = origin(port=8101)
    origin(port=8109)
    proxy = start_proxy(pool_config(['%s:8101' % ORIGIN_V4, {'address': '%s:8109' % ORIGIN_V4, 'backup': True}],
                                    health_check={'interval': 0.2, 'timeout': 0.5, 'rise': 2, 'fall': 2}))
    assert port_counts(served_by(topo, 5)) == {8101: 5}
    primary.close()
    wait_for(lambda: metric(proxy.metrics(), 'anycast_proxy_origin_up', origin='%s:8101' % ORIGIN_V4) == 0,
             what='the checks to find the primary down')
    assert port_counts(served_by(topo, 5)) == {8109: 5}
    origin(port=8101)
    wait_for(lambda: metric(proxy.metrics(), 'anycast_proxy_origin_up', origin='%s:8101' % ORIGIN_V4) == 1,
             what='the checks to find the primary up again')
    assert port_counts(served_by(topo, 5)) == {8101: 5}
    assert 'route pool: origin %s:8101 is up again' % ORIGIN_V4 in proxy.logs()


def test_when_every_origin_is_down_the_client_is_reset(topo, start_proxy, origin):
    proxy = start_proxy(pool_config(['%s:8101' % ORIGIN_V4, '%s:8102' % ORIGIN_V4],
                                    health_check={'interval': 60, 'fall': 1}))
    for _unused1 in range(3):
        sock = support.socket_in(topo.client)
        sock.settimeout(5)
        with sock, pytest.raises(ConnectionResetError):
            sock.connect((random_v4(), random_port()))
            sock.recv(10)
    # Both are down after the first connection, and still both were tried for the others.
    samples = proxy.metrics()
    for port in (8101, 8102):
        assert metric(samples, 'anycast_proxy_origin_connect_failures_total', origin='%s:%d' % (ORIGIN_V4, port)) == 3


def test_a_pool_under_load_loses_no_connection_when_an_origin_dies(topo, start_proxy, origin):
    servers = [origin(port=port) for port in (8101, 8102, 8103)]
    start_proxy(pool_config(['%s:%d' % (ORIGIN_V4, p) for p in (8101, 8102, 8103)],
                            health_check={'interval': 0.5, 'fall': 2}))
    failures, done = [], []

    def dial():
        for _unused1 in range(60):
            try:
                served_by(topo, 1)
            except (OSError, EOFError, ValueError) as exc:
                failures.append(repr(exc))
            done.append(1)
            time.sleep(0.02)

    threads = [threading.Thread(target=dial) for _unused1 in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: len(done) >= 40, what='traffic to flow')
    servers[1].close()
    for t in threads:
        t.join(60)
    assert len(done) == 120 and failures == []


# -- active health checks --------------------------------------------------------------------

@pytest.mark.parametrize('version,header', [
    ('v2', b'\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00'),
    ('v1', b'PROXY UNKNOWN\r\n'),
    ('none', b''),
])
def test_health_checks_connect_and_send_a_local_header_on_proxy_protocol_routes(topo, start_proxy, version, header):
    recorder = support.RecordingOrigin(topo.origin, port=8101)
    other = support.RecordingOrigin(topo.origin, port=8102)
    try:
        proxy = start_proxy(pool_config(['%s:8101' % ORIGIN_V4, '%s:8102' % ORIGIN_V4], proxy_protocol=version,
                                        health_check={'interval': 0.2}))
        wait_for(lambda: len(recorder.received) >= 3, what='three checks')
        assert set(recorder.received[:3]) == {header}
        samples = proxy.metrics()
        assert metric(samples, 'anycast_proxy_origin_check_failures_total', origin='%s:8101' % ORIGIN_V4) == 0
        assert metric(samples, 'anycast_proxy_origin_connections_total', origin='%s:8101' % ORIGIN_V4) == 0
    finally:
        recorder.close()
        other.close()


def test_checks_find_an_origin_down_without_traffic_and_up_again(topo, start_proxy, origin):
    origin(port=8102)
    proxy = start_proxy(pool_config(['%s:8101' % ORIGIN_V4, '%s:8102' % ORIGIN_V4],
                                    health_check={'interval': 0.2, 'timeout': 0.5, 'rise': 3, 'fall': 2}))
    labels = dict(route='pool', origin='%s:8101' % ORIGIN_V4)
    wait_for(lambda: metric(proxy.metrics(), 'anycast_proxy_origin_up', **labels) == 0, what='8101 down')
    assert metric(proxy.metrics(), 'anycast_proxy_origin_connect_failures_total', **labels) == 0
    assert metric(proxy.metrics(), 'anycast_proxy_origin_check_failures_total', **labels) >= 2
    origin(port=8101)
    wait_for(lambda: metric(proxy.metrics(), 'anycast_proxy_origin_up', **labels) == 1, what='8101 up')
    assert 'origin %s:8101 is down (check: Connection refused)' % ORIGIN_V4 in proxy.logs()


def test_a_single_origin_is_not_checked_unless_asked(topo, start_proxy):
    recorder = support.RecordingOrigin(topo.origin, port=8101)
    try:
        start_proxy(pool_config(['%s:8101' % ORIGIN_V4]))
        time.sleep(2.5)   # longer than the default interval
        assert recorder.received == []
    finally:
        recorder.close()


# -- DNS ---------------------------------------------------------------------------------------

@pytest.fixture
def edge_hosts(topo):
    """/etc/hosts and resolv.conf of the edge namespace (`ip netns exec` mounts /etc/netns/NS/*).

    No name server answers (127.0.0.1:53 refuses at once), so a name missing from the file
    fails to resolve quickly. Returns a function that rewrites the hosts file in place.
    """
    directory = os.path.join('/etc/netns', topo.edge)
    os.makedirs(directory)
    with open(os.path.join(directory, 'resolv.conf'), 'w') as fh:
        fh.write('nameserver 127.0.0.1\noptions timeout:1 attempts:1\n')
    path = os.path.join(directory, 'hosts')

    def write(entries):
        # In place (same inode): the running proxy's mount of the file sees the new content.
        with open(path, 'a') as fh:
            fh.truncate(0)
            fh.write('127.0.0.1 localhost\n' + ''.join('%s %s\n' % (a, n) for a, n in entries))

    write([])
    try:
        yield write
    finally:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


def test_a_name_is_re_resolved_and_keeps_its_last_good_addresses_when_resolution_fails(
        topo, start_proxy, origin, edge_hosts):
    for address in (ORIGIN_V4,) + EXTRA_ORIGINS:
        origin(address=address, port=8101)
    edge_hosts([(ORIGIN_V4, 'origin.test'), (EXTRA_ORIGINS[0], 'origin.test')])
    proxy = start_proxy(pool_config(['origin.test:8101'], resolve_interval=0.5, health_check={'interval': 60}))
    # Every record is an origin.
    assert {a for a, _unused1 in served_by(topo, 8)} == {ORIGIN_V4, EXTRA_ORIGINS[0]}
    # The name moves: the pool follows within a resolve_interval.
    edge_hosts([(EXTRA_ORIGINS[1], 'origin.test')])
    wait_for(lambda: 'now resolves to %s' % EXTRA_ORIGINS[1] in proxy.logs(), what='the new address')
    assert {a for a, _unused1 in served_by(topo, 4)} == {EXTRA_ORIGINS[1]}
    # The name vanishes: the last good set stays, and that is said and counted.
    edge_hosts([])
    wait_for(lambda: metric(proxy.metrics(), 'anycast_proxy_origin_resolve_ok', route='pool',
                            name='origin.test:8101') == 0, what='a failed resolution')
    assert {a for a, _unused1 in served_by(topo, 4)} == {EXTRA_ORIGINS[1]}
    assert metric(proxy.metrics(), 'anycast_proxy_origin_resolve_failures_total', name='origin.test:8101') >= 1
    assert ('route pool: cannot resolve origin.test' in proxy.logs()
            and 'keeping the last good addresses: %s' % EXTRA_ORIGINS[1] in proxy.logs())
    edge_hosts([(ORIGIN_V4, 'origin.test')])
    wait_for(lambda: metric(proxy.metrics(), 'anycast_proxy_origin_resolve_ok', name='origin.test:8101') == 1,
             what='the name to resolve again')
    assert {a for a, _unused1 in served_by(topo, 2)} == {ORIGIN_V4}


def test_origins_that_are_the_proxy_itself_are_not_dialled_and_others_are_served(topo, start_proxy, origin, edge_hosts):
    # Issue 18, defect 15: an origin on one of the edge's own AnyIP addresses at the listener's
    # port turned one client connection into an endless chain of the proxy dialling itself, until
    # it held every descriptor; that client and the next hung. Validation refuses such addresses;
    # names are resolved at run time, so each dial is checked: inside a route ('loop' dials its
    # own prefix, which TPROXY steers back to the proxy), or the wildcard listener on an address of the edge ('mine' dials the edge's
    # own 10.0.1.2:1234, which only the kernel knows to be local).
    origin(port=8080)
    edge_hosts([('198.51.100.77', 'anyip.test'), (support.EDGE_CLIENT_V4, 'edge.test')])
    proxy = start_proxy(base_config(listen=['0.0.0.0:1234', '[::1]:1234'], routes=[
        {'name': 'web', 'destination': '192.0.2.0/24', 'origin': '%s:8080' % ORIGIN_V4},
        {'name': 'loop', 'destination': '198.51.100.0/25', 'origin': 'anyip.test:80', 'health_check': False},
        {'name': 'mine', 'destination': '198.51.100.128/25', 'origin': 'edge.test:1234', 'health_check': False},
    ]))
    for address, route in (('198.51.100.5', 'loop'), ('198.51.100.200', 'mine')):
        for _unused1 in range(3):
            started = time.monotonic()
            assert_reset(topo, address, 80)
            assert time.monotonic() - started < 2
        assert metric(proxy.metrics(), 'anycast_proxy_origin_connect_errors_total', route=route, error='self_dial') == 3
    logs = proxy.logs()
    assert ('route loop: origin 198.51.100.77:80 is not dialled: it is inside routes[1] (198.51.100.0/25 '
            'ports 1-65535/tcp)') in logs, logs
    assert "route mine: origin 10.0.1.2:1234 is not dialled: it is the proxy's own listener listen[0]" in logs, logs
    # Said once per origin, not per connection.
    assert logs.count('is not dialled') == 2, logs
    # No chain of the proxy's own connections: a handful of descriptors, and everyone else is served.
    assert len(os.listdir('/proc/%d/fd' % proxy.proc.pid)) < 40
    for _unused1 in range(3):
        with topo.connect(random_v4(), random_port()) as sock:
            assert talk(sock)[1] == b'ping'


def test_a_name_that_does_not_resolve_at_start_is_retried(topo, start_proxy, origin, edge_hosts):
    origin(port=8101)
    proxy = start_proxy(pool_config(['late.test:8101'], resolve_interval=30))
    sock = support.socket_in(topo.client)
    sock.settimeout(5)
    with sock, pytest.raises(ConnectionResetError):
        sock.connect((random_v4(), random_port()))
        sock.recv(10)
    assert 'outcome=no_origin' in proxy.wait_log('outcome=no_origin')
    edge_hosts([(ORIGIN_V4, 'late.test')])
    # Unresolved names are asked again every 5 s at most, not every resolve_interval.
    wait_for(lambda: metric(proxy.metrics(), 'anycast_proxy_origin_resolve_ok', name='late.test:8101') == 1,
             timeout=12, what='the name to resolve')
    assert served_by(topo, 1)[0] == (ORIGIN_V4, 8101)


# -- reload ----------------------------------------------------------------------------------

def test_a_reload_keeps_the_health_of_origins_that_stay(topo, start_proxy, origin):
    origin(port=8102)
    origin(port=8103)
    config = pool_config(['%s:8101' % ORIGIN_V4, '%s:8102' % ORIGIN_V4], health_check={'interval': 60, 'fall': 1})
    proxy = start_proxy(config)
    served_by(topo, 2)      # one of them tried 8101 and failed over: it is down now
    config['routes'][0]['origins'].append('%s:8103' % ORIGIN_V4)
    proxy.write_config(config)
    proxy.signal(signal.SIGHUP)
    proxy.wait_message('RELOADING=1')
    proxy.wait_ready()
    samples = proxy.metrics()
    assert metric(samples, 'anycast_proxy_origin_up', origin='%s:8101' % ORIGIN_V4) == 0
    assert metric(samples, 'anycast_proxy_origin_up', origin='%s:8103' % ORIGIN_V4) == 1
    assert port_counts(served_by(topo, 6)) == {8102: 3, 8103: 3}


def test_metrics_list_every_origin_of_every_route(topo, start_proxy, origin):
    proxy = start_proxy(base_config(routes=[
        {'name': 'a', 'destination': '192.0.2.0/25', 'origins': ['%s:8101' % ORIGIN_V4, '%s:8102' % ORIGIN_V4],
         'health_check': False},
        {'name': 'b', 'destination': '192.0.2.128/25', 'origin': '%s:8103' % ORIGIN_V4},
    ]))
    samples = proxy.metrics()
    up = sorted((dict(labels)['route'], dict(labels)['origin'], value) for (name, labels), value in samples.items()
                if name == 'anycast_proxy_origin_up')
    assert up == [('a', '%s:8101' % ORIGIN_V4, 1), ('a', '%s:8102' % ORIGIN_V4, 1), ('b', '%s:8103' % ORIGIN_V4, 1)]
    assert json.dumps(up)


# -- edge_info reads it -------------------------------------------------------------------------

def test_edge_info_reports_the_origins_that_are_down(topo, start_proxy, origin):
    origin(port=8102)
    start_proxy(pool_config(['%s:8101' % ORIGIN_V4, '%s:8102' % ORIGIN_V4],
                            health_check={'interval': 0.2, 'fall': 1}))
    wait_for(lambda: helpers.run_module('edge_info', {'netns': topo.edge, 'drift': False,
                                                      'proxy_metrics': '127.0.0.1:9100'})['proxy_origins']['down'],
             what='edge_info to see the origin down')
    info = helpers.ok(helpers.run_module('edge_info', {'netns': topo.edge, 'drift': False,
                                                       'proxy_metrics': '127.0.0.1:9100'}, check=True))
    origins = info['proxy_origins']
    assert origins['available'] and origins['error'] is None
    assert origins['down'] == [{'route': 'pool', 'origin': '%s:8101' % ORIGIN_V4}]
    assert [(o['origin'], o['up']) for o in origins['origins']] == [('%s:8101' % ORIGIN_V4, False),
                                                                    ('%s:8102' % ORIGIN_V4, True)]
    assert 'proxy route pool: origin %s:8101 is down' % ORIGIN_V4 in info['warnings']
    # Nothing listens there: reported, not a failure (a host may have no proxy).
    info = helpers.ok(helpers.run_module('edge_info', {'netns': topo.edge, 'drift': False,
                                                       'proxy_metrics': '127.0.0.1:9'}))
    assert info['proxy_origins']['available'] is False and 'refused' in info['proxy_origins']['error']
