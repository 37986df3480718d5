"""driver: nft for tproxy_rule and hashlimit, for real: traffic through namespaces, the table read back with nft."""

from __future__ import annotations

import json

import pytest

import helpers
from helpers import nsexec, ok, run_module, run_playbook
from test_anyip_tproxy import LISTEN_PORT, PREFIX4, PREFIX6, dial, edge, listener, random_targets  # noqa: F401

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
    assert FOREIGN.split('\n')[0] in ruleset(edge_ns) and 'tcp dport 22 counter' in ruleset(edge_ns)
    assert '-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT' in nsexec(edge_ns, ['iptables-save']).stdout

    # someone else's chain in our table: absent removes ours and keeps the table for them
    nsexec(edge_ns, ['nft', 'add', 'chain'] + TABLE.split() + ['theirs'])
    gone = ok(run_module('tproxy_rule', {'netns': edge_ns, 'driver': 'nft', 'state': 'absent'}))
    assert gone['changed'] and gone['actions'] == ['inet anycast_edge_dp: delete chain ANYCAST-TPROXY']
    assert [o['chain']['name'] for o in nft_json(edge_ns) if 'chain' in o] == ['theirs']
    nsexec(edge_ns, ['nft', 'delete', 'table'] + TABLE.split())
    # and everything of theirs is as it was
    assert helpers.xtables_dump(edge_ns) == theirs
