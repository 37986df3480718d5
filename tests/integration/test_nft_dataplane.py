"""driver: nft for tproxy_rule and hashlimit, for real: traffic through namespaces, the table read back with nft."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import helpers
from helpers import nsexec, ok, run_module, run_playbook
from test_anyip_tproxy import LISTEN_PORT, PREFIX4, PREFIX6, dial, edge, listener, random_targets  # noqa: F401  pylint: disable=unused-import

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
NS_PREFIX = helpers.ns_prefix('aen')
TABLE = 'inet anycast_edge_dp'


def tproxy_task(ns, **extra):
    return {'anycast.edge.tproxy_rule': dict({'netns': ns, 'driver': 'nft', 'rules': [
        {'destination': PREFIX4, 'on_port': LISTEN_PORT},
        {'destination': PREFIX6, 'on_port': LISTEN_PORT},
    ]}, **extra)}


def nft_json(ns):
    """Our table as nft lists it in JSON ([] when there is none)."""
    proc = nsexec(ns, ['nft', '-j', 'list', 'table'] + TABLE.split(), check=False)
    return json.loads(proc.stdout)['nftables'] if proc.returncode == 0 else []


def ruleset(ns):
    return nsexec(ns, ['nft', '--stateless', 'list', 'ruleset']).stdout


def test_tproxy_nft_hands_every_dialled_port_to_the_transparent_listener(edge, listener):
    edge_ns, client_ns = edge
    results = run_playbook([{'anycast.edge.anyip_route': {'prefixes': [PREFIX4, PREFIX6], 'netns': edge_ns}},
                            tproxy_task(edge_ns)])
    assert [ok(r)['changed'] for r in results] == [True, True]
    assert results[1]['driver'] == 'nft'
    for address, port, answer in dial(client_ns, random_targets(24)):
        assert answer == '%s %d' % (address, port), (address, port, answer)
    # read back through the JSON API: one base chain at the mangle priority, tproxy and socket rules, both families
    objects = nft_json(edge_ns)
    (chain,) = [o['chain'] for o in objects if 'chain' in o]
    assert (chain['name'], chain['hook'], chain['prio']) == ('ANYCAST-TPROXY', 'prerouting', -150)
    rules = [o['rule'] for o in objects if 'rule' in o]
    assert len(rules) == 4 and all(r['comment'].startswith('anycast.edge ') for r in rules)
    assert [e['tproxy'] for r in rules for e in r['expr'] if 'tproxy' in e] == [
        {'family': 'ip', 'addr': '127.0.0.1', 'port': LISTEN_PORT}, {'family': 'ip6', 'addr': '::1', 'port': LISTEN_PORT}]
    # the iptables tools see nothing of it
    assert 'TPROXY' not in nsexec(edge_ns, ['iptables-save', '-t', 'mangle']).stdout


def test_tproxy_nft_check_mode_diff_idempotence_and_absent_removes_the_table(edge):
    edge_ns, _client = edge
    namespaces = [n for n in helpers.netns_list() if n.startswith(NS_PREFIX)]
    before = helpers.kernel_state(edge_ns)
    task = tproxy_task(edge_ns, rules=[{'destination': PREFIX4, 'on_port': LISTEN_PORT, 'mark': '0x10/0xff'},
                                       {'destination': PREFIX6, 'ports': [80, '8000-8100'], 'protocol': 'udp',
                                        'on_port': LISTEN_PORT}])
    checked = ok(run_playbook([task], check=True, diff=True)[0])
    assert checked['changed'] and helpers.kernel_state(edge_ns) == before
    assert [n for n in helpers.netns_list() if n.startswith(NS_PREFIX)] == namespaces
    assert checked['diff']['before'] == ''
    assert 'tproxy ip to 127.0.0.1:1234 meta mark set meta mark & 0xffffff00 ^ 0x10 accept' in checked['diff']['after']
    assert 'th dport { 80, 8000-8100 } tproxy ip6 to [::1]:1234 accept' in checked['diff']['after']

    applied = ok(run_playbook([task], diff=True)[0])
    assert applied['changed'] and applied['actions'] == checked['actions'] == [
        'inet anycast_edge_dp: write chain ANYCAST-TPROXY (4 rules)']
    assert applied['after'] == checked['after']
    assert applied['diff'] == checked['diff']
    settled = helpers.kernel_state(edge_ns)
    again, checked_again = run_playbook([task, dict(task, check_mode=True)])
    assert ok(again)['changed'] is False and ok(checked_again)['changed'] is False
    assert helpers.kernel_state(edge_ns) == settled
    gathered = ok(run_module('tproxy_rule', {'netns': edge_ns, 'driver': 'nft', 'state': 'gathered'}))['gathered']
    assert ok(run_module('tproxy_rule', dict(gathered, netns=edge_ns, driver='nft')))['changed'] is False

    # a rule changed by hand is put back
    nsexec(edge_ns, ['nft', 'insert', 'rule'] + TABLE.split() + ['ANYCAST-TPROXY', 'accept'])
    assert ok(run_module('tproxy_rule', task['anycast.edge.tproxy_rule']))['changed']
    assert helpers.kernel_state(edge_ns) == settled

    absent = {'anycast.edge.tproxy_rule': {'netns': edge_ns, 'driver': 'nft', 'state': 'absent'}}
    gone = run_playbook([dict(absent, check_mode=True), absent, absent])
    assert [ok(r)['changed'] for r in gone] == [True, True, False]
    assert 'delete the table' in gone[1]['actions'][-1]
    assert helpers.kernel_state(edge_ns) == before


FOREIGN = '''table inet somebody_else {
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 22 counter accept
    }
}
'''


def test_tproxy_nft_leaves_iptables_nft_rules_and_foreign_tables_alone(edge, listener):
    edge_ns, client_ns = edge
    nsexec(edge_ns, ['nft', '-f', '-'], input=FOREIGN)
    nsexec(edge_ns, ['iptables', '-t', 'mangle', '-A', 'PREROUTING', '-p', 'udp', '--dport', '53', '-j', 'ACCEPT'])
    nsexec(edge_ns, ['ip6tables', '-A', 'INPUT', '-p', 'tcp', '--dport', '22', '-j', 'ACCEPT'])
    theirs = helpers.xtables_dump(edge_ns)
    ok(run_playbook([{'anycast.edge.anyip_route': {'prefixes': [PREFIX4, PREFIX6], 'netns': edge_ns}},
                     tproxy_task(edge_ns)])[1])
    for address, port, answer in dial(client_ns, random_targets(6)):
        assert answer == '%s %d' % (address, port)
    assert FOREIGN.split('\n', maxsplit=1)[0] in ruleset(edge_ns) and 'tcp dport 22 counter' in ruleset(edge_ns)
    assert '-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT' in nsexec(edge_ns, ['iptables-save']).stdout

    # someone else's chain in our table: absent removes ours and keeps the table for them
    nsexec(edge_ns, ['nft', 'add', 'chain'] + TABLE.split() + ['theirs'])
    gone = ok(run_module('tproxy_rule', {'netns': edge_ns, 'driver': 'nft', 'state': 'absent'}))
    assert gone['changed'] and gone['actions'] == ['inet anycast_edge_dp: delete chain ANYCAST-TPROXY']
    assert [o['chain']['name'] for o in nft_json(edge_ns) if 'chain' in o] == ['theirs']
    nsexec(edge_ns, ['nft', 'delete', 'table'] + TABLE.split())
    # and everything of theirs is as it was
    assert helpers.xtables_dump(edge_ns) == theirs


# ---------------------------------------------------------------------------
# hashlimit, driver: nft (the topology and dialer of test_hashlimit.py)

from test_hashlimit import (  # noqa: E402,F401  pylint: disable=unused-import
    EXEMPT, FLOODER, FLOODER6, NEIGHBOUR, NO_SSH, OTHER, PORT, assert_limited, bound, topo)
from test_hashlimit import dial as dial_sources  # noqa: E402


def nft_limiter(ns, **extra):
    args = {'netns': ns, 'driver': 'nft', 'rate': '10/sec', 'burst': 5, 'protocol': 'tcp', 'ports': [PORT]}
    args.update(extra)
    return {'anycast.edge.hashlimit': args}


def set_elements(ns, name):
    objects = json.loads(nsexec(ns, ['nft', '-j', 'list', 'set'] + TABLE.split() + [name]).stdout)['nftables']
    return [o['set'] for o in objects if 'set' in o][0].get('elem', [])


def test_nft_flood_is_limited_per_source_others_and_exempt_served_counters_match(topo):
    edge, client = topo
    task = nft_limiter(edge, exempt=['%s/32' % EXEMPT], htable_expire=60000)
    applied = ok(run_playbook([task], env=NO_SSH)[0])
    assert applied['changed'] and applied['driver'] == 'nft'
    # (nft leaves out a burst of 5 packets, its default)
    assert 'update @conn_rate_limit_v4 { ip saddr limit rate 10/second } counter' in ruleset(edge)

    got = dial_sources(client, [(FLOODER, '10.77.0.1', 30), (OTHER, '10.77.1.1', 5), (EXEMPT, '10.77.2.1', 30),
                                (FLOODER6, 'fd77::1', 30)])
    flood, other, exempt, flood6 = got[FLOODER], got[OTHER], got[EXEMPT], got[FLOODER6]
    assert_limited(flood, 10, 5, 30)
    assert_limited(flood6, 10, 5, 30)
    assert other['ok'] == 5 and other['refused'] == 0
    assert exempt['ok'] == 30 and exempt['refused'] == 0
    assert flood['timeout'] == flood6['timeout'] == 0     # refused by a reset, not dropped

    again = ok(run_playbook([task], env=NO_SSH)[0])
    assert again['changed'] is False
    v4, v6 = again['counters']['ipv4'], again['counters']['ipv6']
    assert v4['accepted']['packets'] == flood['ok'] + other['ok']
    assert v4['refused']['packets'] == flood['refused'] and v4['exempt']['packets'] == 30
    assert v6['accepted']['packets'] == flood6['ok'] and v6['refused']['packets'] == flood6['refused']
    assert 1 <= v4['logged']['packets'] <= min(v4['refused']['packets'], bound(1, 5, flood['elapsed']))
    # one element per limited source; the exempt source never got one
    assert again['hashlimit_table']['ipv4']['entries'] == 2 and again['hashlimit_table']['ipv6']['entries'] == 1
    assert len(set_elements(edge, 'conn_rate_limit_v4')) == 2


def test_nft_srcmask_makes_one_budget_per_prefix(topo):
    edge, client = topo
    ok(run_playbook([nft_limiter(edge, srcmask={'ipv4': 24, 'ipv6': 64}, htable_expire=60000)], env=NO_SSH)[0])
    got = dial_sources(client, [(FLOODER, '10.77.0.1', 15), (NEIGHBOUR, '10.77.0.1', 15), (OTHER, '10.77.1.1', 5)])
    a, b = got[FLOODER], got[NEIGHBOUR]
    shared = a['ok'] + b['ok']
    elapsed = max(a['end'], b['end']) - min(a['start'], b['start'])
    assert 5 <= shared <= bound(10, 5, elapsed), got
    assert a['ok'] >= 1 and b['ok'] >= 1 and a['refused'] + b['refused'] == 30 - shared
    assert got[OTHER]['ok'] == 5
    keys = [e['elem']['val'] if isinstance(e, dict) else e for e in set_elements(edge, 'conn_rate_limit_v4')]
    assert sorted(keys) == ['10.77.0.0', '10.77.1.0'], keys   # the set keys the /24, not the address


def conntrack_entries(ns):
    return nsexec(ns, ['conntrack', '-L'], check=False).stdout + \
        nsexec(ns, ['conntrack', '-L', '-f', 'ipv6'], check=False).stdout


def test_nft_syn_match_limits_and_leaves_no_conntrack_entry(topo):
    edge, client = topo
    # conntrack stays on for the rest of the host (a host firewall of iptables-nft that uses it)
    for tool in ('iptables', 'ip6tables'):
        nsexec(edge, [tool, '-A', 'INPUT', '-m', 'conntrack', '--ctstate', 'INVALID', '-j', 'DROP'])
    args = nft_limiter(edge, match='syn', destinations=['10.77.0.0/16', 'fd77::/64'])
    ok(run_playbook([args], env=NO_SSH)[0])
    listing = ruleset(edge)
    assert 'type filter hook prerouting priority raw; policy accept;' in listing
    assert 'ip daddr 10.77.0.0/16 tcp dport 8080 notrack' in listing
    assert 'ip saddr 10.77.0.0/16 tcp sport 8080 notrack' in listing
    got = dial_sources(client, [(FLOODER, '10.77.0.1', 30), (OTHER, '10.77.1.1', 5), (FLOODER6, 'fd77::1', 30)])
    assert_limited(got[FLOODER], 10, 5, 30)
    assert_limited(got[FLOODER6], 10, 5, 30)
    assert got[OTHER]['ok'] == 5
    # outside the scope conntrack does track (a UDP datagram to 8081); nothing of port 8080, refused or not
    nsexec(client, [sys.executable, '-c', 'import socket\nfor a, f in (("10.77.1.1", socket.AF_INET), '
                    '("fd77::1", socket.AF_INET6)):\n    socket.socket(f, socket.SOCK_DGRAM).sendto(b"x", (a, 8081))'])
    tracked = conntrack_entries(edge)
    assert 'dport=8081' in tracked and 'dst=fd77::1' in tracked, tracked
    assert 'dport=%d' % PORT not in tracked and 'sport=%d' % PORT not in tracked, tracked
    counters = ok(run_module('hashlimit', args['anycast.edge.hashlimit'], env=NO_SSH))
    assert counters['changed'] is False
    assert counters['counters']['ipv4']['accepted']['packets'] == got[FLOODER]['ok'] + 5
    assert counters['counters']['ipv4']['refused']['packets'] == got[FLOODER]['refused']


def test_nft_hashlimit_check_mode_diff_idempotence_and_absent_leaves_no_trace(topo):
    edge, _client = topo
    pristine = helpers.kernel_state(edge)
    tasks = [{'anycast.edge.hashlimit': {'netns': edge, 'driver': 'nft', 'exempt': ['10.77.2.0/24']}}]
    checked = ok(run_playbook(tasks, check=True, diff=True, env=NO_SSH)[0])
    assert checked['changed'] and helpers.kernel_state(edge) == pristine and checked['diff']['before'] == ''
    assert 'update @conn_rate_limit_v4 { ip saddr limit rate 50/second burst 20 packets } counter accept' in \
        checked['diff']['after']
    assert 'meta nfproto ipv6 ct state new jump RATE-LIMIT-v6' in checked['diff']['after']
    applied = ok(run_playbook(tasks, diff=True, env=NO_SSH)[0])
    assert applied['changed'] and applied['actions'] == checked['actions'] and applied['after'] == checked['after']
    assert applied['diff'] == checked['diff']
    settled = helpers.kernel_state(edge)
    again, checked_again = run_playbook(tasks + [dict(tasks[0], check_mode=True)], env=NO_SSH)
    assert ok(again)['changed'] is False and ok(checked_again)['changed'] is False
    assert helpers.kernel_state(edge) == settled
    # a change of size replaces the set (and the rules using it) in the same transaction
    bigger = ok(run_module('hashlimit', dict(tasks[0]['anycast.edge.hashlimit'], htable_max=1000), env=NO_SSH))
    assert 'inet anycast_edge_dp: replace set conn_rate_limit_v4 { type ipv4_addr; size 1000;' in \
        ' '.join(bigger['actions'])
    assert [o['set']['size'] for o in nft_json(edge) if 'set' in o and o['set']['name'] == 'conn_rate_limit_v4'] == [1000]
    absent = {'anycast.edge.hashlimit': {'netns': edge, 'driver': 'nft', 'state': 'absent'}}
    gone = run_playbook([dict(absent, check_mode=True), absent, absent], env=NO_SSH)
    assert [ok(r)['changed'] for r in gone] == [True, True, False]
    assert helpers.kernel_state(edge) == pristine


def test_nft_full_set_refuses_new_sources_and_warns(topo):
    edge, client = topo
    small = nft_limiter(edge, htable_max=2, htable_expire=60000)
    ok(run_playbook([small], env=NO_SSH)[0])
    got = dial_sources(client, [(FLOODER, '10.77.0.1', 1), (OTHER, '10.77.1.1', 1), (EXEMPT, '10.77.2.1', 1)])
    assert [got[s]['ok'] for s in (FLOODER, OTHER)] == [1, 1]
    assert got[EXEMPT]['refused'] == 1           # no element left for it: refused (and logged)
    full = ok(run_module('hashlimit', small['anycast.edge.hashlimit'], env=NO_SSH))
    assert full['hashlimit_table']['ipv4']['entries'] == 2 and full['hashlimit_table']['ipv4']['percent'] == 100.0
    assert full['counters']['ipv4']['refused']['packets'] == 1
    assert 'nftables set conn_rate_limit_v4 (inet anycast_edge_dp) holds 2 elements of its size 2' in \
        json.dumps(full['warnings'])


def test_edge_info_reads_the_nft_counters_and_set_fill(topo):
    edge, client = topo
    ok(run_playbook([nft_limiter(edge, htable_max=2, htable_expire=60000, family='ipv4')], env=NO_SSH)[0])
    dial_sources(client, [(FLOODER, '10.77.0.1', 8), (OTHER, '10.77.1.1', 1)])
    before = helpers.kernel_state(edge)
    info = ok(run_module('edge_info', {'netns': edge, 'drift': False, 'proxy_metrics': ''}, check=True))
    assert helpers.kernel_state(edge) == before
    nft = info['nftables']
    assert nft['table'] == TABLE
    assert {'set': 'conn_rate_limit_v4', 'entries': 2, 'size': 2, 'percent': 100.0} in nft['sets']
    chains = dict((c['chain'], c) for c in nft['chains'])
    accepted = sum(r['packets'] for r in chains['RATE-LIMIT-v4']['rules'])
    refused = chains['RATE-LIMIT-v4-refuse']['rules'][-1]['packets']
    assert accepted + refused == 9 and accepted >= 6      # every SYN counted once: burst 5 + the other source
    assert chains['RATE-LIMIT']['hook'] == 'input'
    assert any('conn_rate_limit_v4' in w and '100.0% full' in w for w in info['warnings']), info['warnings']


# ---------------------------------------------------------------------------
# Persistence and commit-confirm, as for the iptables drivers

def restore(state_dir, command='restore'):
    return helpers.sh([sys.executable, os.path.join(state_dir, 'anycast-edge-restore'), command, state_dir],
                      check=False, timeout=300)


def wait_until(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_nft_records_are_replayed_at_boot_and_an_unconfirmed_change_is_rolled_back(topo):
    edge, client = topo
    state_dir = helpers.scratch_dir('aen-state-')
    limit = nft_limiter(edge, exempt=['%s/32' % EXEMPT])
    results = run_playbook([tproxy_task(edge), limit], env=NO_SSH, state_dir=state_dir)
    assert [ok(r)['changed'] for r in results] == [True, True]
    applied = ruleset(edge)
    # what a reboot does to the namespace's netfilter state: all of it is gone
    nsexec(edge, ['nft', 'delete', 'table'] + TABLE.split())
    proc = restore(state_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ['tproxy_rule@%s@ANYCAST-TPROXY: changed' % edge,
                                        'hashlimit@%s@RATE-LIMIT: changed' % edge]
    assert ruleset(edge) == applied
    report = json.loads(restore(state_dir, 'check').stdout)
    assert not any(entry['drifted'] or entry['failed'] for entry in report.values()), report

    # an unconfirmed change (a slower rate) is undone by the watchdog: the recorded limit comes back
    slower = dict(limit['anycast.edge.hashlimit'], rate='1/sec', confirm_timeout=2)
    changed = ok(run_module('hashlimit', slower, env=NO_SSH, state_dir=state_dir))
    assert changed['changed'] and changed['confirm_token']
    assert 'limit rate 1/second' in ruleset(edge)
    assert wait_until(lambda: ruleset(edge) == applied, 20), ruleset(edge)


# ---------------------------------------------------------------------------
# synproxy: SYN cookies for listed ports, a legitimate client served through a SYN flood

HERE = os.path.dirname(os.path.abspath(__file__))
SP_PORT = 8443
SP_EDGE = ['10.78.0.1/24', 'fd78::1/64']
SP_LEGIT = ['10.78.0.2/24', 'fd78::2/64']
SP_FLOOD_EDGE, SP_FLOODER = '10.78.9.1', '10.78.9.2'
LOOSE = 'net.netfilter.nf_conntrack_tcp_loose'

ECHO = r'''
import socket, sys, threading
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('::', int(sys.argv[1])))
s.listen(4096)
print('ready', flush=True)
def serve(c):
    with c:
        data = c.recv(1 << 16)
        c.sendall(b'echo:' + data)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''

# Each connection sends a payload and must get it back within 3 s (on a loaded CI machine a retransmission
# or two is no failure of the data plane; a client refused or dropped for good is)
LEGIT = r'''
import json, socket, sys, time
dst, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ':' in dst else socket.AF_INET
out = {'ok': 0, 'failed': []}
for i in range(count):
    payload = b'hello %d ' % i * 50
    try:
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(3.0)
            s.connect((dst, port))
            s.sendall(payload)
            got = b''
            while len(got) < len(payload) + 5:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
            if got == b'echo:' + payload:
                out['ok'] += 1
            else:
                out['failed'].append('short answer %d' % len(got))
    except OSError as exc:
        out['failed'].append(str(exc))
    time.sleep(0.05)
print(json.dumps(out))
'''


@pytest.fixture
def synproxy_topo(netns_factory, veth):
    """(edge, legit, flood): an echo server on SP_PORT in the edge; the flood's own namespace never answers."""
    edge, legit, flood = netns_factory(), netns_factory(), netns_factory()
    veth(edge, legit, 'edge0', 'leg0', SP_EDGE, SP_LEGIT)
    veth(edge, flood, 'edge1', 'fld0', ['%s/24' % SP_FLOOD_EDGE], ['%s/24' % SP_FLOODER])
    # a spoofed flood's sender never sees the SYN-ACKs: nothing in its namespace answers them
    nsexec(flood, ['nft', 'add table inet sy; add chain inet sy in { type filter hook prerouting priority -400; '
                          'policy drop; }'])
    server = subprocess.Popen(['ip', 'netns', 'exec', edge, sys.executable, '-c', ECHO, str(SP_PORT)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == 'ready'
        yield edge, legit, flood
    finally:
        server.kill()
        server.wait()


def sysctl(ns, key):
    return int(nsexec(ns, ['sysctl', '-n', key]).stdout)


def synproxy_task(ns, **extra):
    args = {'netns': ns, 'driver': 'nft', 'match': 'syn', 'protocol': 'tcp', 'ports': [SP_PORT, 8080],
            'action': 'drop', 'rate': '20/sec', 'burst': 10,
            'synproxy': {'ports': [SP_PORT], 'mss': 1400, 'wscale': 6}}
    args.update(extra)
    return {'anycast.edge.hashlimit': args}


def test_nft_synproxy_serves_a_client_through_a_syn_flood_and_the_flood_leaves_no_conntrack_entry(synproxy_topo):
    edge, legit, flood = synproxy_topo
    assert sysctl(edge, LOOSE) == 1
    pristine = helpers.kernel_state(edge)
    task = synproxy_task(edge)
    checked = ok(run_playbook([task], check=True, diff=True, env=NO_SSH)[0])
    assert checked['changed'] and helpers.kernel_state(edge) == pristine and sysctl(edge, LOOSE) == 1
    assert checked['actions'][0] == 'sysctl %s: 1 -> 0 (synproxy needs it)' % LOOSE
    assert checked['commands'][0] == 'sysctl -w %s=0' % LOOSE
    assert 'sysctl %s = 1' % LOOSE in checked['diff']['before'] and 'sysctl %s = 0' % LOOSE in checked['diff']['after']
    assert ('meta nfproto ipv4 meta l4proto tcp th dport 8443 ct state invalid,untracked counter synproxy mss 1400 '
            'wscale 6 timestamp sack-perm') in checked['diff']['after']

    applied = ok(run_playbook([task], diff=True, env=NO_SSH)[0])
    assert applied['changed'] and applied['actions'] == checked['actions'] and applied['diff'] == checked['diff']
    assert sysctl(edge, LOOSE) == 0
    settled = helpers.kernel_state(edge)
    again, checked_again = run_playbook([task, dict(task, check_mode=True)], env=NO_SSH)
    assert ok(again)['changed'] is False and ok(checked_again)['changed'] is False
    assert helpers.kernel_state(edge) == settled
    gathered = ok(run_module('hashlimit', {'netns': edge, 'driver': 'nft', 'state': 'gathered',
                                           'synproxy': task['anycast.edge.hashlimit']['synproxy'],
                                           'match': 'syn', 'ports': [SP_PORT, 8080], 'protocol': 'tcp',
                                           'action': 'drop', 'rate': '20/sec', 'burst': 10}, env=NO_SSH))['gathered']
    assert gathered['synproxy']['ports'] == [SP_PORT]
    # read back through the JSON API: the synproxy statement of each family, SYN-only notrack before it
    rules = [o['rule'] for o in nft_json(edge) if 'rule' in o]
    stmts = [e['synproxy'] for r in rules for e in r['expr'] if 'synproxy' in e]
    assert stmts == [{'mss': 1400, 'wscale': 6, 'flags': ['timestamp', 'sack-perm']}] * 2
    listing = ruleset(edge)
    assert 'meta nfproto ipv4 tcp dport 8443 tcp flags syn / fin,syn,rst,ack notrack' in listing

    # the flood (a few seconds of 5,000 SYNs/s from one source) and the client at the same time
    flooder = subprocess.Popen(['ip', 'netns', 'exec', flood, sys.executable, os.path.join(HERE, 'synflood.py'),
                                SP_FLOODER, SP_FLOOD_EDGE, str(SP_PORT), '--duration', '4', '--rate', '5000'],
                               stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        served = [json.loads(nsexec(legit, [sys.executable, '-c', LEGIT, address, str(SP_PORT), '15']).stdout)
                  for address in ('10.78.0.1', 'fd78::1')]
        sent = json.loads(flooder.communicate(timeout=60)[0])['sent']
    finally:
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait()
    assert [s['ok'] for s in served] == [15, 15], served
    assert sent >= 10000, sent
    tracked = conntrack_entries(edge)
    assert 'src=10.78.0.2 ' in tracked and 'src=fd78::2 ' in tracked, tracked   # conntrack does track the clients
    assert 'src=%s ' % SP_FLOODER not in tracked, tracked                      # and nothing of the flood
    result = ok(run_module('hashlimit', task['anycast.edge.hashlimit'], env=NO_SSH))
    assert result['changed'] is False
    v4, v6 = result['counters']['ipv4'], result['counters']['ipv6']
    # every flood SYN answered by a cookie (and each client's SYN and ACK), never reaching the server
    assert v4['synproxy']['packets'] >= sent + 2 * 15 and v6['synproxy']['packets'] >= 2 * 15
    # the limit counts completed handshakes only: the clients' 15 each, nothing of the flood
    assert v4['accepted']['packets'] == 15 and v6['accepted']['packets'] == 15
    assert result['hashlimit_table']['ipv4']['entries'] <= 1

    absent = ok(run_module('hashlimit', {'netns': edge, 'driver': 'nft', 'state': 'absent'}, env=NO_SSH))
    assert absent['changed'] and not nft_json(edge)
    assert sysctl(edge, LOOSE) == 0      # left as it is (documented): other rules may rely on it


def test_nft_synproxy_record_is_replayed_at_boot_with_its_namespace_settings(synproxy_topo):
    edge, legit, _flood = synproxy_topo
    state_dir = helpers.scratch_dir('aen-state-')
    ok(run_playbook([synproxy_task(edge)], env=NO_SSH, state_dir=state_dir)[0])
    applied = ruleset(edge)
    # what a reboot does to the namespace: no netfilter state, the kernel's default settings
    nsexec(edge, ['nft', 'delete', 'table'] + TABLE.split())
    nsexec(edge, ['sysctl', '-qw', '%s=1' % LOOSE])
    proc = restore(state_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ['hashlimit@%s@RATE-LIMIT: changed' % edge]
    assert ruleset(edge) == applied and sysctl(edge, LOOSE) == 0
    served = json.loads(nsexec(legit, [sys.executable, '-c', LEGIT, '10.78.0.1', str(SP_PORT), '3']).stdout)
    assert served['ok'] == 3, served
