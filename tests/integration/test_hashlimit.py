"""anycast.edge.hashlimit for real: connection floods between namespaces, counters read back.

Topology: a client namespace with several source addresses, joined by a veth
pair to an edge namespace where a TCP listener accepts and closes. The edge
gets its chain from ansible-playbook; the client opens connections from chosen
sources and records which were accepted, refused (TCP reset) or timed out.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

import helpers
from helpers import nsexec, ok, run_module, run_playbook

NS_PREFIX = helpers.ns_prefix('aeh')
PORT = 8080
EDGE_ADDRS = ['10.77.0.1/24', '10.77.1.1/24', '10.77.2.1/24', 'fd77::1/64']
FLOODER = '10.77.0.2'       # the noisy source
NEIGHBOUR = '10.77.0.3'     # same /24 as the flooder
OTHER = '10.77.1.2'         # another /24
EXEMPT = '10.77.2.2'        # listed in exempt
FLOODER6 = 'fd77::2'
CLIENT_ADDRS = ['%s/24' % a for a in (FLOODER, NEIGHBOUR, OTHER, EXEMPT)] + ['fd77::2/64', 'fd77::3/64']
NO_SSH = {'SSH_CONNECTION': ''}   # the runner may itself be under SSH; tests set it explicitly

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)

SERVER = r'''
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('::', int(sys.argv[1])))
s.listen(4096)
print('ready', flush=True)
while True:
    c, _ = s.accept()
    c.close()
'''

# Connects from each source in turn (interleaved, so the sources are served
# "at the same time"); prints per source: ok/refused/timeout and the time
# from before its first connect to after its last.
DIALER = r'''
import json, socket, sys, time
plan = json.loads(sys.argv[1])
port = int(sys.argv[2])
res = {}
for src, _dst, _n in plan:
    res[src] = {'ok': 0, 'refused': 0, 'timeout': 0, 'other': 0, 'start': None, 'end': None}
for i in range(max(n for _s, _d, n in plan)):
    for src, dst, n in plan:
        if i >= n:
            continue
        r = res[src]
        fam = socket.AF_INET6 if ':' in dst else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(1.0)
        s.bind((src, 0))
        if r['start'] is None:
            r['start'] = time.monotonic()
        try:
            s.connect((dst, port))
            r['ok'] += 1
        except ConnectionRefusedError:
            r['refused'] += 1
        except socket.timeout:
            r['timeout'] += 1
        except OSError:
            r['other'] += 1
        finally:
            s.close()
        r['end'] = time.monotonic()
for r in res.values():
    r['elapsed'] = r['end'] - r['start']
print(json.dumps(res))
'''


@pytest.fixture
def topo(netns_factory, veth):
    """(edge, client) namespaces with a listener on PORT in the edge."""
    edge = netns_factory()
    client = netns_factory()
    veth(edge, client, 'edge0', 'cli0', EDGE_ADDRS, CLIENT_ADDRS)
    server = subprocess.Popen(['ip', 'netns', 'exec', edge, sys.executable, '-c', SERVER, str(PORT)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == 'ready'
        yield edge, client
    finally:
        server.kill()
        server.wait()


def dial(client, plan):
    """plan: [(source, destination, count)] -> {source: {ok, refused, timeout, elapsed}}."""
    out = nsexec(client, [sys.executable, '-c', DIALER, json.dumps(plan), str(PORT)], timeout=120).stdout
    return json.loads(out)


def bound(rate_per_sec, burst, elapsed):
    """Most connections a bucket can accept in ELAPSED seconds: full bucket + refill + one tick."""
    return burst + int(math.floor(rate_per_sec * elapsed)) + 1


def limiter(ns, **extra):
    args = {'netns': ns, 'rate': '10/sec', 'burst': 5, 'protocol': 'tcp', 'ports': [PORT]}
    args.update(extra)
    return {'anycast.edge.hashlimit': args}


def legacy_env(variant):
    env = dict(NO_SSH)
    if variant == 'legacy':
        env['PATH'] = helpers.legacy_host_path()
    return env


def assert_limited(result, rate, burst, sent):
    assert result['ok'] + result['refused'] == sent, result
    assert burst <= result['ok'] <= bound(rate, burst, result['elapsed']), result


@pytest.mark.parametrize('variant', ['nf_tables', 'legacy'])
def test_flood_is_limited_per_source_others_served_and_counters_match(topo, variant):
    edge, client = topo
    env = legacy_env(variant)
    task = limiter(edge, exempt=['%s/32' % EXEMPT], htable_expire=60000)   # entries outlive the playbook
    applied = ok(run_playbook([task], env=env)[0])
    assert applied['changed'] and applied['driver'] == ('python-iptables' if variant == 'legacy' else 'iptables')
    save = nsexec(edge, ['iptables-legacy-save' if variant == 'legacy' else 'iptables-save', '-t', 'filter']).stdout
    assert '--hashlimit-upto 10/sec --hashlimit-burst 5 --hashlimit-mode srcip --hashlimit-name conn_rate_limit' in save

    got = dial(client, [(FLOODER, '10.77.0.1', 30), (OTHER, '10.77.1.1', 5), (EXEMPT, '10.77.2.1', 30),
                        (FLOODER6, 'fd77::1', 30)])
    flood, other, exempt, flood6 = got[FLOODER], got[OTHER], got[EXEMPT], got[FLOODER6]
    assert_limited(flood, 10, 5, 30)
    assert_limited(flood6, 10, 5, 30)
    assert flood['refused'] >= 30 - bound(10, 5, flood['elapsed'])
    assert other['ok'] == 5 and other['refused'] == 0      # its own bucket, same moment
    assert exempt['ok'] == 30 and exempt['refused'] == 0   # never limited
    assert flood['timeout'] == flood6['timeout'] == 0     # refused by a reset, not dropped

    again = ok(run_playbook([task], env=env)[0])
    assert again['changed'] is False
    v4, v6 = again['counters']['ipv4'], again['counters']['ipv6']
    assert v4['accepted']['packets'] == flood['ok'] + other['ok']
    assert v4['refused']['packets'] == flood['refused']
    assert v4['exempt']['packets'] == 30
    assert v6['accepted']['packets'] == flood6['ok'] and v6['refused']['packets'] == flood6['refused']
    # one SYN per connection: 60 bytes over IPv4, 80 over IPv6 (with Linux's TCP options)
    assert v4['accepted']['bytes'] == 60 * v4['accepted']['packets']
    assert v6['refused']['bytes'] == 80 * v6['refused']['packets']
    # LOG sampled by limit 1/sec (burst 5): some refusals logged, never more than refused
    assert 1 <= v4['logged']['packets'] <= min(v4['refused']['packets'], bound(1, 5, flood['elapsed']))
    # one bucket per limited source; the exempt source never got one
    assert again['hashlimit_table']['ipv4']['entries'] == 2 and again['hashlimit_table']['ipv6']['entries'] == 1
    assert again['conntrack']['count'] >= 1


def test_srcmask_makes_one_budget_per_prefix(topo):
    edge, client = topo
    ok(run_playbook([limiter(edge, srcmask={'ipv4': 24, 'ipv6': 64})], env=NO_SSH)[0])
    got = dial(client, [(FLOODER, '10.77.0.1', 15), (NEIGHBOUR, '10.77.0.1', 15), (OTHER, '10.77.1.1', 5)])
    a, b = got[FLOODER], got[NEIGHBOUR]
    shared = a['ok'] + b['ok']
    elapsed = max(a['end'], b['end']) - min(a['start'], b['start'])
    assert 5 <= shared <= bound(10, 5, elapsed), got   # one bucket for the whole /24
    assert a['ok'] >= 1 and b['ok'] >= 1 and a['refused'] + b['refused'] == 30 - shared
    assert got[OTHER]['ok'] == 5                       # another /24 has its own bucket
    line = [entry for entry in nsexec(edge, ['cat', '/proc/net/ipt_hashlimit/conn_rate_limit']).stdout.splitlines()
            if '10.77.0.' in entry]
    assert len(line) == 1 and '10.77.0.0:' in line[0]   # the table keys the /24, not the address


def test_syn_match_limits_without_conntrack(topo):
    edge, client = topo
    # conntrack stays on for the rest of the host, as on an edge that only exempts its AnyIP prefixes
    for tool in ('iptables', 'ip6tables'):
        nsexec(edge, [tool, '-A', 'INPUT', '-m', 'conntrack', '--ctstate', 'INVALID', '-j', 'DROP'])
    result = ok(run_playbook([limiter(edge, match='syn', destinations=['10.77.0.0/16', 'fd77::/64'])],
                             env=NO_SSH)[0])
    raw = nsexec(edge, ['iptables-save', '-t', 'raw']).stdout
    assert '-j CT --notrack' in raw and '-A PREROUTING -d 10.77.0.0/16 -p tcp -m tcp --dport 8080' in raw
    assert '-A OUTPUT -s 10.77.0.0/16 -p tcp -m tcp --sport 8080' in raw
    assert '--tcp-flags FIN,SYN,RST,ACK SYN' in nsexec(edge, ['iptables-save', '-t', 'filter']).stdout
    assert result['changed']
    got = dial(client, [(FLOODER, '10.77.0.1', 30), (OTHER, '10.77.1.1', 5), (FLOODER6, 'fd77::1', 30)])
    assert_limited(got[FLOODER], 10, 5, 30)
    assert_limited(got[FLOODER6], 10, 5, 30)
    assert got[OTHER]['ok'] == 5
    # outside the scope conntrack does track: a UDP datagram to port 8081 leaves an entry per family
    nsexec(client, [sys.executable, '-c', 'import socket\nfor a, f in (("10.77.1.1", socket.AF_INET), '
                    '("fd77::1", socket.AF_INET6)):\n    socket.socket(f, socket.SOCK_DGRAM).sendto(b"x", (a, 8081))'])
    tracked = nsexec(edge, ['conntrack', '-L'], check=False).stdout
    tracked += nsexec(edge, ['conntrack', '-L', '-f', 'ipv6'], check=False).stdout
    assert 'dport=8081' in tracked and 'dst=fd77::1' in tracked, tracked
    assert 'dport=%d' % PORT not in tracked and 'sport=%d' % PORT not in tracked, tracked
    counters = ok(run_module('hashlimit', {'netns': edge, 'rate': '10/sec', 'burst': 5, 'protocol': 'tcp',
                                           'ports': [PORT], 'match': 'syn',
                                           'destinations': ['10.77.0.0/16', 'fd77::/64']}, env=NO_SSH))
    assert counters['changed'] is False
    assert counters['counters']['ipv4']['accepted']['packets'] == got[FLOODER]['ok'] + 5
    assert counters['counters']['ipv4']['refused']['packets'] == got[FLOODER]['refused']


def kernel_state(ns):
    """helpers.kernel_state without packet counters: legacy chain policies count live traffic (IPv6 ND)."""
    return re.sub(r'\[\d+:\d+\]', '[-]', helpers.kernel_state(ns))


@pytest.mark.parametrize('variant', ['nf_tables', 'legacy'])
def test_check_mode_diff_idempotence_and_absent_leaves_no_trace(topo, variant):
    edge, _client = topo
    env = legacy_env(variant)
    save = 'iptables-legacy-save' if variant == 'legacy' else 'iptables-save'
    save6 = 'ip6tables-legacy-save' if variant == 'legacy' else 'ip6tables-save'
    if variant == 'legacy':
        # Reading a legacy table makes the kernel instantiate it (empty, policies ACCEPT): any reader
        # does, check mode included; and python-iptables opens all five tables when it builds a jump
        # to a user chain. Let them exist before the snapshot.
        for tool in ('iptables-legacy', 'ip6tables-legacy'):
            for table in ('filter', 'raw', 'mangle', 'nat', 'security'):
                nsexec(edge, [tool, '-t', table, '-S'])
    pristine = kernel_state(edge)
    tasks = [{'anycast.edge.hashlimit': {'netns': edge}}]

    checked = run_playbook(tasks, check=True, diff=True, env=env)[0]
    assert ok(checked)['changed'] and kernel_state(edge) == pristine
    assert checked['diff']['before'] == ''
    # the write-up's chain, as its last listing shows it
    assert ('-A RATE-LIMIT -m hashlimit --hashlimit-upto 50/sec --hashlimit-burst 20 --hashlimit-mode srcip '
            '--hashlimit-name conn_rate_limit') in checked['diff']['after']
    assert '-m limit --limit 1/sec' in checked['diff']['after'] and 'IPTables-Rejected: ' in checked['diff']['after']
    assert '-A INPUT -m conntrack --ctstate NEW' in checked['diff']['after']

    applied = ok(run_playbook(tasks, diff=True, env=env)[0])
    assert applied['changed'] and applied['actions'] == checked['actions']
    save4 = nsexec(edge, [save, '-t', 'filter']).stdout
    assert '-A INPUT -m conntrack --ctstate NEW' in save4 and '-j REJECT --reject-with tcp-reset' in save4
    assert '-j REJECT --reject-with icmp6-port-unreachable' in nsexec(edge, [save6, '-t', 'filter']).stdout
    settled = kernel_state(edge)
    again, checked_again = run_playbook(tasks + [dict(tasks[0], check_mode=True)], diff=True, env=env)
    assert ok(again)['changed'] is False and ok(checked_again)['changed'] is False
    assert kernel_state(edge) == settled

    # switch to syn (raw chains appear), then remove everything
    syn = ok(run_module('hashlimit', {'netns': edge, 'match': 'syn', 'ports': [443]}, env=env))
    assert syn['changed'] and 'RATE-LIMIT' in nsexec(edge, [save6, '-t', 'raw']).stdout
    absent = {'anycast.edge.hashlimit': {'netns': edge, 'state': 'absent'}}
    gone = run_playbook([dict(absent, check_mode=True), absent, absent], env=env)
    assert [ok(result)['changed'] for result in gone] == [True, True, False]
    assert kernel_state(edge) == pristine


def _saved(ns, tool):
    """iptables-save text of filter and raw, without counters or the generated-by comments."""
    text = nsexec(ns, [tool, '-t', 'filter']).stdout + nsexec(ns, [tool, '-t', 'raw']).stdout
    return [re.sub(r' \[\d+:\d+\]$', '', line) for line in text.splitlines() if not line.startswith('#')]


def test_python_iptables_writes_exactly_what_the_cli_writes(topo):
    edge, _client = topo
    legacy = dict(NO_SSH, PATH=helpers.legacy_host_path())
    spec = {'netns': edge, 'name': 'web_syn', 'chain': 'WEB-LIMIT', 'match': 'syn', 'ports': [80, 443, '8000-8100'],
            'destinations': ['10.77.0.0/16', 'fd77::/64'], 'rate': '3000/min', 'burst': 7,
            'srcmask': {'ipv4': 24, 'ipv6': 64}, 'exempt': ['10.77.2.0/24', 'fd77::3/128'],
            'log': {'rate': '5/min', 'prefix': 'web limit: '}, 'htable_max': 4096}
    by_cli = ok(run_module('hashlimit', dict(spec, driver='iptables'), env=legacy))
    assert by_cli['changed'] and by_cli['driver'] == 'iptables'
    cli_text = _saved(edge, 'iptables-legacy-save') + _saved(edge, 'ip6tables-legacy-save')
    assert any('--hashlimit-htable-expire 60000' in line for line in cli_text)
    # the other driver sees the same chains as settled
    assert ok(run_module('hashlimit', dict(spec, driver='python-iptables'), env=legacy))['changed'] is False
    ok(run_module('hashlimit', {'netns': edge, 'chain': 'WEB-LIMIT', 'state': 'absent', 'driver': 'iptables'},
                  env=legacy))
    assert not any('WEB-LIMIT' in line for line in _saved(edge, 'iptables-legacy-save'))

    by_lib = ok(run_module('hashlimit', dict(spec, driver='python-iptables'), env=legacy))
    assert by_lib['changed'] and by_lib['driver'] == 'python-iptables'
    assert _saved(edge, 'iptables-legacy-save') + _saved(edge, 'ip6tables-legacy-save') == cli_text
    assert ok(run_module('hashlimit', dict(spec, driver='iptables'), env=legacy))['changed'] is False


def test_new_table_settings_take_effect_and_a_full_table_warns(topo):
    """The kernel keeps a live table's sizing when its rule is replaced; the module rebuilds it."""
    edge, client = topo
    small = limiter(edge, htable_max=2, htable_size=2, htable_expire=60000)
    ok(run_playbook([small], env=NO_SSH)[0])
    got = dial(client, [(FLOODER, '10.77.0.1', 1), (OTHER, '10.77.1.1', 1), (EXEMPT, '10.77.2.1', 1)])
    assert [got[s]['ok'] for s in (FLOODER, OTHER)] == [1, 1]
    assert got[EXEMPT]['timeout'] == 1           # no entry left: dropped, not refused
    full = ok(run_module('hashlimit', small['anycast.edge.hashlimit'], env=NO_SSH))
    assert full['hashlimit_table']['ipv4']['entries'] == 2 and full['hashlimit_table']['ipv4']['percent'] == 100.0
    warnings = json.dumps(full.get('warnings', []))   # ansible-core 2.19 returns warning records
    assert 'hashlimit table conn_rate_limit (IPv4) holds 2 entries of htable_max 2' in warnings

    bigger = ok(run_playbook([limiter(edge, htable_max=100, htable_expire=60000)], env=NO_SSH)[0])
    got = dial(client, [(EXEMPT, '10.77.2.1', 1), (FLOODER, '10.77.0.1', 1)])
    assert got[EXEMPT]['ok'] == 1 and got[FLOODER]['ok'] == 1
    assert bigger['changed'] and any('rebuilt' in a for a in bigger['actions'])


LOCKOUT = {'SSH_CONNECTION': '10.77.9.9 50022 10.77.0.1 22'}


@pytest.mark.parametrize('args, env, param, words', [
    ({'rate': 'fast'}, NO_SSH, 'rate', 'not a rate'),
    ({'burst': 0}, NO_SSH, 'burst', 'out of range'),
    ({'srcmask': 33, 'family': 'ipv4'}, NO_SSH, 'srcmask', 'IPv4'),
    ({'name': 'n' * 255}, NO_SSH, 'name', 'at most 254'),
    ({'mode': ['srcip', 'srcipp']}, NO_SSH, 'mode[1]', 'not one of'),
    ({'ports': [22, 443], 'protocol': 'tcp'}, LOCKOUT, 'exempt', 'SSH connection'),
    ({}, LOCKOUT, 'exempt', '10.77.9.9/32'),
])
def test_bad_input_fails_naming_the_parameter_and_changes_nothing(netns_factory, args, env, param, words):
    edge = netns_factory()
    ok(run_module('hashlimit', {'netns': edge, 'ports': [443], 'protocol': 'tcp'}, env=NO_SSH))
    before = helpers.kernel_state(edge)
    result = run_module('hashlimit', dict({'netns': edge}, **args), env=env)
    assert result.get('failed'), result
    assert result['msg'].startswith(param + ':') and words in result['msg'], result['msg']
    assert helpers.kernel_state(edge) == before


def test_ssh_guard_exempt_and_scope_outside_ssh(netns_factory):
    edge = netns_factory()
    # the SSH port is outside the scope: nothing to guard
    assert ok(run_module('hashlimit', {'netns': edge, 'protocol': 'tcp', 'ports': [443]}, env=LOCKOUT))['changed']
    # the client is exempted already: fine
    assert ok(run_module('hashlimit', {'netns': edge, 'exempt': ['10.77.9.0/24']}, env=LOCKOUT))['changed']
    # ssh_guard: exempt adds the client by itself
    guarded = ok(run_module('hashlimit', {'netns': edge, 'ssh_guard': 'exempt'}, env=LOCKOUT))
    assert guarded['ssh_exempt'] == '10.77.9.9/32'
    assert '-A RATE-LIMIT -s 10.77.9.9/32' in nsexec(edge, ['iptables-save', '-t', 'filter']).stdout
    assert 'RATE-LIMIT -s' not in nsexec(edge, ['ip6tables-save', '-t', 'filter']).stdout


UDP_ECHO = r'''
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', int(sys.argv[1])))
print('ready', flush=True)
while True:
    data, peer = s.recvfrom(100)
    s.sendto(data, peer)
'''

# One datagram per new socket (a new source port is a new conntrack flow): echoed, or refused by ICMP.
UDP_DIALER = r'''
import json, socket, sys
src, dst, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
res = {'echoed': 0, 'refused': 0, 'lost': 0}
for i in range(count):
    s = socket.socket(socket.AF_INET6 if ':' in dst else socket.AF_INET, socket.SOCK_DGRAM)
    # A source port of its own for each datagram: a port picked twice would make the later datagram
    # part of the earlier one's conntrack flow (not NEW, so never counted against the limit).
    s.bind((src, 40000 + i))
    s.connect((dst, port))
    s.settimeout(1.0)
    s.send(b'hello')
    try:
        s.recv(100); res['echoed'] += 1
    except ConnectionRefusedError:
        res['refused'] += 1
    except socket.timeout:
        res['lost'] += 1
    s.close()
print(json.dumps(res))
'''


def test_udp_over_the_limit_gets_port_unreachable(topo):
    """action reject: a TCP reset only exists for TCP, so UDP gets ICMP port unreachable."""
    edge, client = topo
    nsexec(edge, ['sysctl', '-qw', 'net.ipv6.icmp.ratelimit=0'])   # IPv4's is off already (conftest)
    echo = subprocess.Popen(['ip', 'netns', 'exec', edge, sys.executable, '-c', UDP_ECHO, '5353'],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout.readline().strip() == 'ready'
        ok(run_playbook([limiter(edge, protocol='udp', ports=[5353], rate='1/min', burst=5)], env=NO_SSH)[0])
        assert '--reject-with icmp-port-unreachable' in nsexec(edge, ['iptables-save', '-t', 'filter']).stdout
        for source, dest in ((FLOODER, '10.77.0.1'), (FLOODER6, 'fd77::1')):
            out = nsexec(client, [sys.executable, '-c', UDP_DIALER, source, dest, '5353', '12']).stdout
            # 1/min: nothing refills during the test, so exactly the burst gets through
            assert json.loads(out) == {'echoed': 5, 'refused': 7, 'lost': 0}, (source, out)
    finally:
        echo.kill()
        echo.wait()


def test_a_table_name_used_by_another_rule_is_reported(topo):
    """Tables are shared by name: the module says so instead of pretending its sizing applies."""
    edge, _client = topo
    nsexec(edge, ['iptables', '-A', 'FORWARD', '-m', 'hashlimit', '--hashlimit-upto', '5/sec',
                  '--hashlimit-name', 'conn_rate_limit', '-j', 'ACCEPT'])
    result = ok(run_module('hashlimit', {'netns': edge, 'family': 'ipv4', 'protocol': 'tcp', 'ports': [PORT]},
                           env=NO_SSH))
    assert 'hashlimit table conn_rate_limit (IPv4) already exists for a rule outside chain RATE-LIMIT' \
        in json.dumps(result.get('warnings', []))


def test_several_destination_prefixes_get_one_jump_each(netns_factory):
    ns = netns_factory()
    args = {'netns': ns, 'protocol': 'tcp', 'ports': 80,
            'destinations': ['192.0.2.0/24', '198.51.100.0/24', '2001:db8::/64'], 'ssh_guard': 'ignore'}
    first = ok(run_module('hashlimit', args))
    assert first['changed']
    v4 = nsexec(ns, ['iptables-save', '-t', 'filter']).stdout
    jumps = [line for line in v4.splitlines() if line.startswith('-A INPUT') and '-j RATE-LIMIT' in line]
    assert [j.split()[3] for j in jumps] == ['192.0.2.0/24', '198.51.100.0/24']
    assert nsexec(ns, ['ip6tables-save', '-t', 'filter']).stdout.count('-d 2001:db8::/64') == 1
    assert ok(run_module('hashlimit', args))['changed'] is False
    narrowed = ok(run_module('hashlimit', dict(args, destinations=['198.51.100.0/24'])))
    assert narrowed['changed']
    v4 = nsexec(ns, ['iptables-save', '-t', 'filter']).stdout
    assert '192.0.2.0/24' not in v4 and v4.count('-j RATE-LIMIT') == 1
    assert '2001:db8::/64' not in nsexec(ns, ['ip6tables-save', '-t', 'filter']).stdout
