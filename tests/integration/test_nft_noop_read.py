"""driver: nft settles a no-op from an nfnetlink dump of the rules' tags (_nft_netlink); the JSON API decides the rest.

Proven here: the dump gives the same chains, hooks, priorities, policies and tags as the JSON listing (a table with
tproxy_rule's and hashlimit's objects and somebody's chain); any difference a user can make by hand (a rule deleted
or added, a chain's policy) still makes the next run rewrite the chain; check mode and the read-back stay exact.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import helpers
from helpers import nsexec, ok, run_module

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
NS_PREFIX = helpers.ns_prefix('aenq')
TABLE = ['inet', 'anycast_edge_dp']
RULES = [{'destination': '10.%d.%d.0/24' % (i // 256, i % 256), 'on_port': 1234} for i in range(300)] + \
    [{'destination': '2001:db8:%x::/48' % i, 'protocol': 'udp', 'ports': [53, '8000-8100'], 'on_port': 1234,
      'mark': '0x10/0xff'} for i in range(20)]

# Runs inside the namespace: both readings of the table, as comparable JSON.
COMPARE = r'''
import json, sys
from ansible_collections.anycast.edge.plugins.module_utils import _nft_netlink, _nft_rules as nr
full = nr.NftDriver().read()
quick = _nft_netlink.read_summary(nr.FAMILY, nr.TABLE, nr.TableState, nr.ReadRule)
def shape(state):
    return {'exists': state.exists, 'sets': sorted(state.sets),
            'chains': dict((name, [list(state.chain_key(name)), [r.tag for r in chain['rules']]])
                           for name, chain in state.chains.items())}
print(json.dumps([shape(full), shape(quick) if quick is not None else None]))
'''


def readings(ns):
    proc = subprocess.run(['ip', 'netns', 'exec', ns, sys.executable, '-c', COMPARE], env=helpers.module_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def task(ns, **extra):
    return dict({'netns': ns, 'driver': 'nft', 'rules': RULES}, **extra)


def handles(ns, chain):
    listing = json.loads(nsexec(ns, ['nft', '-j', '-a', 'list', 'chain'] + TABLE + [chain]).stdout)['nftables']
    return [o['rule']['handle'] for o in listing if 'rule' in o]


@pytest.fixture
def edge_ns(netns_factory):
    return netns_factory()


def test_the_dump_reads_what_the_json_listing_reads(edge_ns):
    assert readings(edge_ns) == [{'exists': False, 'sets': [], 'chains': {}}] * 2
    ok(run_module('tproxy_rule', task(edge_ns)))
    ok(run_module('hashlimit', {'netns': edge_ns, 'driver': 'nft', 'chain': 'RL', 'rate': '10/sec', 'burst': 5,
                                'ports': [80], 'match': 'syn', 'exempt': ['192.0.2.0/24']}))
    nsexec(edge_ns, ['nft', 'add', 'chain'] + TABLE + ['theirs', '{ type filter hook output priority 10; policy drop; }'])
    nsexec(edge_ns, ['nft', 'add', 'rule'] + TABLE + ['theirs', 'tcp', 'dport', '22', 'accept', 'comment', '"mine"'])
    nsexec(edge_ns, ['nft', 'add', 'rule'] + TABLE + ['theirs', 'udp', 'dport', '53', 'accept'])
    full, quick = readings(edge_ns)
    assert quick == full
    assert len(full['chains']['ANYCAST-TPROXY'][1]) == 2 * len(RULES)
    assert full['chains']['ANYCAST-TPROXY'][0] == ['filter', 'prerouting', -150, 'accept']
    assert full['chains']['theirs'] == [['filter', 'output', 10, 'drop'], ['mine', None]]
    assert full['chains']['RL-v4'][0] == [None, None, None, None] and 'conn_rate_limit_v4' in full['sets']


@pytest.mark.parametrize('drift', ['delete a rule', 'add a rule', 'policy drop', 'delete the chain'])
def test_a_chain_changed_by_hand_is_rewritten(edge_ns, drift):
    ok(run_module('tproxy_rule', task(edge_ns)))
    settled = helpers.xtables_dump(edge_ns)
    assert ok(run_module('tproxy_rule', task(edge_ns)))['changed'] is False
    if drift == 'delete a rule':
        nsexec(edge_ns, ['nft', 'delete', 'rule'] + TABLE + ['ANYCAST-TPROXY', 'handle',
                                                             str(handles(edge_ns, 'ANYCAST-TPROXY')[123])])
    elif drift == 'add a rule':
        nsexec(edge_ns, ['nft', 'add', 'rule'] + TABLE + ['ANYCAST-TPROXY', 'counter'])
    elif drift == 'policy drop':
        nsexec(edge_ns, ['nft', 'add', 'chain'] + TABLE + ['ANYCAST-TPROXY', '{ policy drop; }'])
    else:
        nsexec(edge_ns, ['nft', 'flush', 'chain'] + TABLE + ['ANYCAST-TPROXY'])
        nsexec(edge_ns, ['nft', 'delete', 'chain'] + TABLE + ['ANYCAST-TPROXY'])
    drifted = helpers.xtables_dump(edge_ns)
    checked = ok(run_module('tproxy_rule', task(edge_ns), check=True))
    assert checked['changed'] and helpers.xtables_dump(edge_ns) == drifted
    fixed = ok(run_module('tproxy_rule', task(edge_ns)))
    assert fixed['changed'] and fixed['actions'] == checked['actions'] and fixed['commands'] == checked['commands']
    assert helpers.xtables_dump(edge_ns) == settled
    assert ok(run_module('tproxy_rule', task(edge_ns)))['changed'] is False


def test_gathered_and_diff_of_a_noop_match_the_json_reading(edge_ns):
    ok(run_module('tproxy_rule', task(edge_ns)))
    noop = ok(run_module('tproxy_rule', task(edge_ns), diff=True))
    assert noop['changed'] is False and noop['commands'] == []
    assert noop['diff']['before'] == noop['diff']['after'] and noop['diff']['before'].count('\n') == 1 + 2 * len(RULES)
    gathered = ok(run_module('tproxy_rule', {'netns': edge_ns, 'driver': 'nft', 'state': 'gathered'}))['gathered']
    assert gathered == noop['before'] and len(gathered['rules']) == len(RULES)
    # a changed input reads through the JSON API and plans only the difference
    changed = ok(run_module('tproxy_rule', task(edge_ns, rules=RULES[:-1]), check=True))
    assert changed['changed'] and changed['actions'] == ['inet anycast_edge_dp: write chain ANYCAST-TPROXY (638 rules)']
