"""anyip_route + tproxy_rule, for real: traffic through namespaces, kernel state read back."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import sys
import time

import pytest

import helpers
from helpers import nsexec, ok, run_module, run_playbook

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
NS_PREFIX = helpers.ns_prefix('ae2')
HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX4 = '192.0.2.0/24'
PREFIX6 = '2001:db8:1::/64'
LISTEN_PORT = 1234


@pytest.fixture
def edge(netns_factory, veth):
    """An edge namespace and a client namespace joined by a veth pair.

    The client routes the AnyIP prefixes to the edge; nothing else is set up.
    """
    edge_ns = netns_factory()
    client_ns = netns_factory()
    veth(edge_ns, client_ns, 'edge0', 'client0',
         ['198.51.100.1/30', '2001:db8:ffff::1/64'], ['198.51.100.2/30', '2001:db8:ffff::2/64'])
    nsexec(client_ns, ['ip', 'route', 'add', PREFIX4, 'via', '198.51.100.1'])
    nsexec(client_ns, ['ip', '-6', 'route', 'add', PREFIX6, 'via', '2001:db8:ffff::1'])
    return edge_ns, client_ns


@pytest.fixture
def listener(edge):
    """The Spectrum write-up's IP_TRANSPARENT server on port 1234 in the edge namespace."""
    proc = subprocess.Popen(['ip', 'netns', 'exec', edge[0], sys.executable,
                             os.path.join(HERE, 'transparent_echo.py'), str(LISTEN_PORT)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'ready'
        yield proc
    finally:
        proc.kill()
        proc.wait()


def edge_tasks(ns, driver='auto'):
    return [
        {'anycast.edge.anyip_route': {'prefixes': [PREFIX4, PREFIX6], 'netns': ns}},
        {'anycast.edge.tproxy_rule': {'netns': ns, 'driver': driver, 'rules': [
            {'destination': PREFIX4, 'on_port': LISTEN_PORT},
            {'destination': PREFIX6, 'on_port': LISTEN_PORT},
        ]}},
    ]


def random_targets(count):
    """(address, port) pairs on random addresses of both prefixes; ports 1 and 65535 included."""
    rng = random.Random()
    ports = [1, 65535] + rng.sample(range(2, 65535), count - 2)
    targets = []
    for index, port in enumerate(ports):
        net = ipaddress.ip_network(PREFIX4 if index % 2 == 0 else PREFIX6)
        host = net.network_address + rng.randrange(1, min(net.num_addresses - 1, 2 ** 32))
        targets.append((str(host), port))
    return targets


def dial(client_ns, targets):
    out = nsexec(client_ns, [sys.executable, os.path.join(HERE, 'dial.py'), json.dumps(targets)]).stdout
    return json.loads(out)


@pytest.mark.parametrize('variant', ['nf_tables', 'legacy'])
def test_any_port_on_any_address_reaches_the_transparent_listener(edge, listener, variant):
    edge_ns, client_ns = edge
    env = {'PATH': helpers.legacy_host_path()} if variant == 'legacy' else None
    results = run_playbook(edge_tasks(edge_ns), env=env)
    for result in results:
        ok(result)
    assert results[1]['driver'] == ('python-iptables' if variant == 'legacy' else 'iptables')

    targets = random_targets(24)
    answers = dial(client_ns, targets)
    for address, port, answer in answers:
        assert answer == '%s %d' % (address, port), (address, port, answer)

    # the rules sit in the variant the host uses, and only there
    save = 'iptables-legacy-save' if variant == 'legacy' else 'iptables-save'
    other = 'iptables-save' if variant == 'legacy' else 'iptables-legacy-save'
    assert '-j TPROXY' in nsexec(edge_ns, [save, '-t', 'mangle']).stdout
    assert 'ANYCAST-TPROXY' not in nsexec(edge_ns, [other, '-t', 'mangle']).stdout


def test_without_rules_the_same_ports_are_refused(edge, listener):
    """The control: with only the AnyIP route and no TPROXY rule, nothing listens on those ports."""
    edge_ns, client_ns = edge
    ok(run_playbook(edge_tasks(edge_ns)[:1])[0])
    answers = dial(client_ns, random_targets(4))
    assert all(answer.startswith('error') for _a, _p, answer in answers), answers


def test_check_mode_diff_and_idempotence(edge):
    edge_ns, _client = edge
    namespaces = [n for n in helpers.netns_list() if n.startswith(NS_PREFIX)]
    before = helpers.kernel_state(edge_ns)

    checked = run_playbook(edge_tasks(edge_ns), check=True, diff=True)
    assert [r['changed'] for r in checked] == [True, True]
    assert helpers.kernel_state(edge_ns) == before
    assert [n for n in helpers.netns_list() if n.startswith(NS_PREFIX)] == namespaces
    assert '192.0.2.0/24' in checked[0]['diff']['after'] and checked[0]['diff']['before'] == ''
    assert '-j TPROXY' in checked[1]['diff']['after']
    assert checked[0]['added'] == [PREFIX4, PREFIX6]

    applied = run_playbook(edge_tasks(edge_ns), diff=True)
    assert [ok(r)['changed'] for r in applied] == [True, True]
    assert applied[0]['added'] == checked[0]['added']
    assert applied[1]['actions'] == checked[1]['actions']
    routes = nsexec(edge_ns, ['ip', 'route', 'show', 'table', 'local', 'proto', '172']).stdout
    assert 'local 192.0.2.0/24 dev lo scope host src 127.0.0.1' in routes
    assert PREFIX6 in nsexec(edge_ns, ['ip', '-6', 'route', 'show', 'table', 'local', 'proto', '172']).stdout

    settled = helpers.kernel_state(edge_ns)
    again = run_playbook(edge_tasks(edge_ns), diff=True)
    assert [ok(r)['changed'] for r in again] == [False, False]
    assert helpers.kernel_state(edge_ns) == settled
    checked_again = run_playbook(edge_tasks(edge_ns), check=True)
    assert [r['changed'] for r in checked_again] == [False, False]


def test_chain_drift_is_repaired(edge):
    edge_ns, _client = edge
    ok(run_playbook(edge_tasks(edge_ns))[1])
    nsexec(edge_ns, ['iptables', '-t', 'mangle', '-I', 'ANYCAST-TPROXY', '-j', 'ACCEPT'])
    nsexec(edge_ns, ['ip6tables', '-t', 'mangle', '-D', 'PREROUTING', '1'])
    repaired = ok(run_playbook(edge_tasks(edge_ns))[1])
    assert repaired['changed']
    v4 = nsexec(edge_ns, ['iptables-save', '-t', 'mangle']).stdout
    v6 = nsexec(edge_ns, ['ip6tables-save', '-t', 'mangle']).stdout
    assert '-A ANYCAST-TPROXY -j ACCEPT' not in v4
    assert v6.count('-j ANYCAST-TPROXY') == 1
    assert ok(run_playbook(edge_tasks(edge_ns))[1])['changed'] is False


def test_purge_removes_only_owned_routes_and_absent_leaves_nothing(edge):
    edge_ns, _client = edge
    nsexec(edge_ns, ['ip', 'route', 'add', 'local', '203.0.113.0/24', 'dev', 'lo'])
    pristine = helpers.kernel_state(edge_ns)

    for result in run_playbook(edge_tasks(edge_ns) + [
            {'anycast.edge.anyip_route': {'prefixes': ['198.51.100.128/25'], 'netns': edge_ns}}]):
        ok(result)
    purged = ok(run_playbook([{'anycast.edge.anyip_route': {
        'prefixes': [PREFIX4], 'purge': True, 'netns': edge_ns}}])[0])
    assert sorted(purged['removed']) == sorted(['198.51.100.128/25', PREFIX6])
    assert purged['prefixes'] == [PREFIX4]
    local = nsexec(edge_ns, ['ip', 'route', 'show', 'table', 'local']).stdout
    assert 'local 203.0.113.0/24 dev lo' in local          # added by hand: kept
    assert '198.51.100.128/25' not in local

    gone = run_playbook([
        {'anycast.edge.anyip_route': {'prefixes': [PREFIX4, PREFIX6], 'state': 'absent', 'netns': edge_ns}},
        {'anycast.edge.tproxy_rule': {'state': 'absent', 'netns': edge_ns}},
    ])
    assert [ok(r)['changed'] for r in gone] == [True, True]
    assert helpers.kernel_state(edge_ns) == pristine
    assert 'local 203.0.113.0/24 dev lo' in nsexec(edge_ns, ['ip', 'route', 'show', 'table', 'local']).stdout


def test_hand_made_route_for_a_listed_prefix_is_adopted(edge):
    edge_ns, _client = edge
    nsexec(edge_ns, ['ip', 'route', 'add', 'local', PREFIX4, 'dev', 'lo'])
    result = ok(run_module('anyip_route', {'prefixes': [PREFIX4], 'netns': edge_ns}))
    assert result['adopted'] == [PREFIX4] and result['changed']
    assert 'proto 172' in nsexec(edge_ns, ['ip', 'route', 'show', 'table', 'local', PREFIX4]).stdout
    assert ok(run_module('anyip_route', {'prefixes': [PREFIX4], 'netns': edge_ns}))['changed'] is False


def local_routes(ns, prefix, family='-4'):
    return nsexec(ns, ['ip', family, 'route', 'show', 'table', 'local', prefix]).stdout


def binds(ns, address):
    """Can a plain socket (no IP_FREEBIND/IP_TRANSPARENT) bind ADDRESS in NS, i.e. is it local?"""
    code = 'import socket, sys\ns = socket.socket()\ntry:\n    s.bind((sys.argv[1], 0))\nexcept OSError:\n    sys.exit(1)'
    return nsexec(ns, [sys.executable, '-c', code, address], check=False).returncode == 0


def test_the_kernels_own_local_routes_survive_a_purge_with_an_empty_list(edge):
    edge_ns, _client = edge
    loopback = local_routes(edge_ns, '127.0.0.0/8')
    assert 'proto kernel' in loopback and binds(edge_ns, '127.0.0.5')
    # 198.51.100.1 is an address of edge0: the kernel's local route, listed as a prefix
    interface = local_routes(edge_ns, '198.51.100.1')
    assert 'dev edge0 proto kernel' in interface
    listed = run_module('anyip_route', {'prefixes': [PREFIX4, '198.51.100.1/32'], 'netns': edge_ns})
    assert ok(listed)['kernel_routes'] == ['198.51.100.1/32'] and listed['adopted'] == []
    assert listed['prefixes'] == [PREFIX4] and 'left to the kernel: 198.51.100.1/32' in listed['warnings'][0]
    assert local_routes(edge_ns, '198.51.100.1') == interface
    assert ok(run_module('anyip_route', {'prefixes': [PREFIX4, '198.51.100.1/32'], 'netns': edge_ns}))[
        'changed'] is False

    purged = ok(run_module('anyip_route', {'prefixes': [], 'purge': True, 'netns': edge_ns}))
    assert purged['removed'] == [PREFIX4] and purged['prefixes'] == []
    assert local_routes(edge_ns, '127.0.0.0/8') == loopback
    assert local_routes(edge_ns, '198.51.100.1') == interface
    assert binds(edge_ns, '127.0.0.5') and binds(edge_ns, '127.255.255.254') and binds(edge_ns, '198.51.100.1')
    assert 'proto kernel' in local_routes(edge_ns, '::1', '-6')
    assert ok(run_module('anyip_route', {'prefixes': [], 'purge': True, 'netns': edge_ns}))['changed'] is False


LINK4 = '198.51.100.0/30'   # edge0's subnet; the gateway 198.51.100.2 is in it


@pytest.fixture
def edge_with_gateways(edge):
    """The edge's default routes lead to the client: 198.51.100.2 and 2001:db8:ffff::2."""
    edge_ns, client_ns = edge
    nsexec(edge_ns, ['ip', 'route', 'add', 'default', 'via', '198.51.100.2'])
    nsexec(edge_ns, ['ip', '-6', 'route', 'add', 'default', 'via', '2001:db8:ffff::2'])
    return edge_ns, client_ns


@pytest.mark.parametrize('check', [False, True])
@pytest.mark.parametrize('prefix, gateway', [('198.51.100.0/24', '198.51.100.2'),
                                             ('2001:db8:ffff::/48', '2001:db8:ffff::2')])
def test_a_prefix_covering_the_default_gateway_is_refused(edge_with_gateways, prefix, gateway, check):
    edge_ns, _client = edge_with_gateways
    before = helpers.kernel_state(edge_ns)
    result = run_module('anyip_route', {'prefixes': [PREFIX4, prefix], 'netns': edge_ns}, check=check)
    assert result.get('failed'), result
    assert result['msg'].startswith('prefixes[1]: %s contains %s, the IPv%d default gateway of network namespace'
                                    % (prefix, gateway, 6 if ':' in prefix else 4)), result['msg']
    assert 'lockout_guard: false' in result['msg']
    assert helpers.kernel_state(edge_ns) == before


def test_the_gateways_of_a_multipath_default_route_are_all_guarded(edge):
    edge_ns, _client = edge
    nsexec(edge_ns, ['ip', 'route', 'add', 'default', 'nexthop', 'via', '198.51.100.2', 'dev', 'edge0',
                     'nexthop', 'via', '203.0.113.9', 'dev', 'edge0', 'onlink'])
    result = run_module('anyip_route', {'prefixes': ['203.0.113.0/24'], 'netns': edge_ns})
    assert result.get('failed') and 'contains 203.0.113.9, the IPv4 default gateway' in result['msg'], result


@pytest.fixture
def gateway_service(edge_with_gateways):
    """A TCP service on the gateway's address (in the client namespace) answering 'gateway'."""
    _edge, client_ns = edge_with_gateways
    proc = subprocess.Popen(['ip', 'netns', 'exec', client_ns, 'socat',
                             'TCP-LISTEN:8099,bind=198.51.100.2,reuseaddr,fork', 'SYSTEM:echo gateway'])
    target = [['198.51.100.2', 8099]]
    try:
        deadline = time.monotonic() + 10
        while dial(client_ns, target)[0][2] != 'gateway':
            assert time.monotonic() < deadline, 'socat did not start listening'
            time.sleep(0.1)
        yield target
    finally:
        proc.kill()
        proc.wait()


def test_lockout_guard_false_applies_such_a_prefix_and_shows_why_it_is_guarded(edge_with_gateways, gateway_service):
    # the edge0 link's own /30: as long as the connected route, so the local route wins the lookup
    edge_ns, _client = edge_with_gateways
    assert dial(edge_ns, gateway_service)[0][2] == 'gateway'
    assert not binds(edge_ns, '198.51.100.2')
    state_dir = helpers.scratch_dir('ae2-state-')
    applied = ok(run_playbook([{'anycast.edge.anyip_route': {'prefixes': [LINK4], 'lockout_guard': False,
                                                             'netns': edge_ns}}], state_dir=state_dir)[0])
    assert applied['changed'] and applied['added'] == [LINK4]
    assert 'proto 172' in local_routes(edge_ns, LINK4)
    # what the guard prevents: the gateway's address is now the edge's own, the real gateway unreachable
    assert binds(edge_ns, '198.51.100.2')
    assert nsexec(edge_ns, ['ip', 'route', 'get', '198.51.100.2']).stdout.startswith('local 198.51.100.2 dev lo')
    assert dial(edge_ns, gateway_service)[0][2].startswith('error:')      # refused by the edge itself
    # the record re-applies it at boot without the guard (there is no SSH client then; it was let through)
    nsexec(edge_ns, ['ip', 'route', 'del', 'local', LINK4, 'table', 'local'])
    restore = subprocess.run([sys.executable, os.path.join(state_dir, 'anycast-edge-restore'), 'restore', state_dir],
                             capture_output=True, text=True, timeout=300, check=False)
    assert restore.returncode == 0 and 'anyip_route@%s: changed' % edge_ns in restore.stdout, restore
    assert 'proto 172' in local_routes(edge_ns, LINK4)
    # idempotent with the override; without it the same call is refused, and nothing changes
    assert ok(run_module('anyip_route', {'prefixes': [LINK4], 'lockout_guard': False,
                                         'netns': edge_ns}))['changed'] is False
    settled = helpers.kernel_state(edge_ns)
    assert run_module('anyip_route', {'prefixes': [LINK4], 'netns': edge_ns}).get('failed')
    assert helpers.kernel_state(edge_ns) == settled
    # removing it needs no override and gives the gateway back
    ok(run_module('anyip_route', {'prefixes': [LINK4], 'state': 'absent', 'netns': edge_ns}))
    assert dial(edge_ns, gateway_service)[0][2] == 'gateway'


def test_the_ssh_client_is_guarded_in_a_namespace_too(edge):
    edge_ns, _client = edge
    before = helpers.kernel_state(edge_ns)
    ssh = {'SSH_CONNECTION': '192.0.2.77 50022 198.51.100.1 22'}
    refused = run_module('anyip_route', {'prefixes': [PREFIX4], 'netns': edge_ns}, env=ssh)
    assert refused.get('failed') and 'contains 192.0.2.77, the address of the SSH client' in refused['msg']
    assert helpers.kernel_state(edge_ns) == before
    assert ok(run_module('anyip_route', {'prefixes': [PREFIX4], 'netns': edge_ns, 'lockout_guard': False},
                         env=ssh))['changed']


def test_auto_driver_follows_the_host_variant(edge):
    edge_ns, _client = edge
    rules = {'rules': [{'destination': PREFIX4, 'on_port': LISTEN_PORT}], 'netns': edge_ns}
    assert ok(run_module('tproxy_rule', rules, check=True))['driver'] == 'iptables'
    legacy = {'PATH': helpers.legacy_host_path()}
    assert ok(run_module('tproxy_rule', rules, check=True, env=legacy))['driver'] == 'python-iptables'
    # iptables driver on a legacy host writes the legacy tables through the legacy CLI
    result = ok(run_module('tproxy_rule', dict(rules, driver='iptables'), env=legacy))
    assert result['driver'] == 'iptables' and result['changed']
    assert 'ANYCAST-TPROXY' in nsexec(edge_ns, ['iptables-legacy-save', '-t', 'mangle']).stdout
    assert 'ANYCAST-TPROXY' not in nsexec(edge_ns, ['iptables-save', '-t', 'mangle']).stdout
    # both drivers see the same chain as settled
    assert ok(run_module('tproxy_rule', dict(rules, driver='python-iptables'), env=legacy))['changed'] is False


def test_python_iptables_driver_is_refused_on_an_nf_tables_host(edge):
    edge_ns, _client = edge
    before = helpers.kernel_state(edge_ns)
    result = run_module('tproxy_rule', {'rules': [{'destination': PREFIX4, 'on_port': 1}],
                                        'driver': 'python-iptables', 'netns': edge_ns})
    assert result['failed'] and 'driver: python-iptables' in result['msg'] and 'nf_tables' in result['msg']
    assert helpers.kernel_state(edge_ns) == before


# Bad input for both modules: tests/bad_input_cases.py (run by test_bad_input.py).


@pytest.mark.parametrize('module', ['anyip_route', 'tproxy_rule'])
@pytest.mark.parametrize('check', [False, True])
def test_missing_namespace_is_an_error_and_is_never_created(module, check):
    name = helpers.unique_name(helpers.ns_prefix('ae2gone'))
    args = {'netns': name, 'prefixes': [PREFIX4]} if module == 'anyip_route' else \
        {'netns': name, 'rules': [{'destination': PREFIX4, 'on_port': 1}]}
    result = run_module(module, args, check=check)
    assert result['failed'] and "netns: network namespace '%s' does not exist" % name in result['msg']
    assert name not in helpers.netns_list()


def test_debian_system_python_with_pyroute2_0_7_and_python3_iptables(edge, listener):
    """The role deploys Debian's python3-pyroute2 (0.7) and python3-iptables: same behaviour."""
    edge_ns, client_ns = edge
    version = helpers.sh(['/usr/bin/python3', '-c', 'from importlib.metadata import version; '
                          'print(version("pyroute2"))'], check=False).stdout.strip()
    assert version.startswith('0.7'), 'this test needs Debian python3-pyroute2 0.7 in /usr/bin/python3'
    legacy = {'PATH': helpers.legacy_host_path()}
    system = {'ansible_python_interpreter': '/usr/bin/python3'}
    results = run_playbook(edge_tasks(edge_ns), env=legacy, extra_vars=system)
    assert [ok(r)['changed'] for r in results] == [True, True]
    assert results[1]['driver'] == 'python-iptables'
    for address, port, answer in dial(client_ns, random_targets(6)):
        assert answer == '%s %d' % (address, port)
    again = run_playbook(edge_tasks(edge_ns), env=legacy, extra_vars=system)
    assert [ok(r)['changed'] for r in again] == [False, False]
