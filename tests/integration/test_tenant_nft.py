"""anycast.edge.tenant with driver: nft: the mark rules in chains of inet anycast_edge_dp, for real.

The topology, listeners and dialer are test_tenant.py's: a host namespace, a client beside it, tenants a and b.
"""

from __future__ import annotations

import json

import pytest

import helpers
from helpers import nsexec, ok, run_module, run_playbook
from test_tenant import (  # noqa: F401  pylint: disable=unused-import
    A_ADDR, A_ADDR6, B_ADDR, SYSTEM_PYTHON, host_state, our_netns, site, wait_until_gone)
from test_tenant import leftovers as xt_leftovers

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
NS_PREFIX = helpers.ns_prefix('aent')
TABLE = ['inet', 'anycast_edge_dp']
FOREIGN = '''table inet somebody_else {
    chain pre {
        type filter hook prerouting priority mangle; policy accept;
        tcp dport 22 counter accept
    }
}
'''


def nft_task(site, tenants, **params):
    return site.task(tenants, driver='nft', **params)


def nft_chains(ns):
    """{chain name: (hook, prio, [rule expressions])} of our table ({} without one)."""
    proc = nsexec(ns, ['nft', '-j', 'list', 'table'] + TABLE, check=False)
    if proc.returncode:
        return {}
    objects = json.loads(proc.stdout)['nftables']
    chains = dict((o['chain']['name'], (o['chain'].get('hook'), o['chain'].get('prio'), []))
                  for o in objects if 'chain' in o)
    for rule in (o['rule'] for o in objects if 'rule' in o):
        chains[rule['chain']][2].append(rule['expr'])
    return chains


def leftovers(site):
    return xt_leftovers(site) + [name for name in nft_chains(site.host) if name.startswith('AE-TENANT-')]


def mangle_rules(ns):
    return [line for line in nsexec(ns, ['iptables-save', '-t', 'mangle']).stdout.splitlines() if line.startswith('-A')]


def serve(site):
    nsexec(site.ns('a'), ['ip', 'addr', 'add', A_ADDR + '/32', 'dev', 'lo'])
    nsexec(site.ns('a'), ['ip', 'addr', 'add', A_ADDR6 + '/128', 'dev', 'lo', 'nodad'])
    nsexec(site.ns('b'), ['ip', 'addr', 'add', B_ADDR + '/32', 'dev', 'lo'])
    site.listen(site.ns('a'), 'tenant-a', [A_ADDR + ':21', A_ADDR6 + ':21'])
    site.listen(site.ns('b'), 'tenant-b', [B_ADDR + ':21'])


def test_nft_marks_send_each_tenants_traffic_to_its_namespace(site):
    result = ok(run_playbook([nft_task(site, site.tenants())])[0])
    assert result['changed'] and result['driver'] == 'nft'
    assert 'inet anycast_edge_dp: write chain AE-TENANT-a (2 rules)' in result['actions']
    serve(site)
    # read back through the JSON API: one base chain per tenant, prerouting at the mangle priority
    chains = nft_chains(site.host)
    assert sorted(chains) == ['AE-TENANT-a', 'AE-TENANT-b']
    assert chains['AE-TENANT-a'][:2] == ('prerouting', -150) and len(chains['AE-TENANT-a'][2]) == 2
    assert [e['mangle'] for e in chains['AE-TENANT-b'][2][0] if 'mangle' in e] == [
        {'key': {'meta': {'key': 'mark'}}, 'value': 0x20}]
    # no xtables rule does it
    assert xt_leftovers(site) and not [x for x in xt_leftovers(site) if 'AE-TENANT' in x]
    assert 'dev ae-a' not in nsexec(site.host, ['ip', 'route', 'get', A_ADDR], check=False).stdout
    assert site.dial([[A_ADDR, 21], [A_ADDR6, 21], [B_ADDR, 21]]) == ['tenant-a', 'tenant-a', 'tenant-b']

    # the mark is what steers: without a's chain its traffic no longer arrives, and the next run puts it back
    nsexec(site.host, ['nft', 'delete', 'chain'] + TABLE + ['AE-TENANT-a'])
    assert site.dial([[A_ADDR, 21], [B_ADDR, 21]])[1] == 'tenant-b'
    assert site.dial([[A_ADDR, 21]])[0].startswith('error')
    repaired = ok(run_playbook([nft_task(site, site.tenants())])[0])
    assert repaired['changed'] and repaired['actions'] == ['inet anycast_edge_dp: write chain AE-TENANT-a (2 rules)']
    assert site.dial([[A_ADDR, 21], [A_ADDR6, 21]]) == ['tenant-a', 'tenant-a']
    assert ok(run_playbook([nft_task(site, site.tenants())])[0])['changed'] is False


def test_nft_check_mode_diff_idempotence_purge_and_absent_touch_only_ours(site):
    nsexec(site.host, ['sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'])
    # neighbours: a foreign table, iptables-nft rules, and tproxy_rule's chain in our own table
    nsexec(site.host, ['nft', '-f', '-'], input=FOREIGN)
    nsexec(site.host, ['iptables', '-t', 'mangle', '-A', 'PREROUTING', '-p', 'udp', '--dport', '53', '-j', 'MARK',
                       '--set-mark', '7'])
    ok(run_module('tproxy_rule', {'netns': site.host, 'driver': 'nft', 'persist': False,
                                  'rules': [{'destination': '192.0.2.128/25', 'on_port': 1234}]}))
    theirs = mangle_rules(site.host)
    tproxy = nft_chains(site.host)['ANYCAST-TPROXY']
    state_before = host_state(site.host)
    namespaces_before = our_netns()

    checked = ok(run_playbook([nft_task(site, site.tenants())], check=True, diff=True, extra_vars=SYSTEM_PYTHON)[0])
    assert checked['changed'] and checked['driver'] == 'nft'
    assert 'chain AE-TENANT-a { type filter hook prerouting priority mangle; policy accept; }' in \
        checked['diff']['after']
    assert 'ip6 daddr 2001:db8:a::/48 meta mark set 0x10' in checked['diff']['after']
    assert host_state(site.host) == state_before and our_netns() == namespaces_before
    applied = ok(run_playbook([nft_task(site, site.tenants())], diff=True, extra_vars=SYSTEM_PYTHON)[0])
    assert applied['diff']['after'] == checked['diff']['after']
    assert [c for c in applied['commands'] if c.startswith('nft -j')] == \
        [c for c in checked['commands'] if c.startswith('nft -j')]
    again = ok(run_playbook([nft_task(site, site.tenants())], check=True, extra_vars=SYSTEM_PYTHON)[0])
    assert again['changed'] is False, again['actions']
    gathered = ok(run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix, 'driver': 'nft',
                                        'state': 'gathered'}))['gathered']
    assert sorted(t['name'] for t in gathered['tenants']) == ['a', 'b']

    # purge: a goes (namespace, veth, rules, its chain); b's chain, tproxy_rule's chain and the neighbours stay
    purged = ok(run_playbook([nft_task(site, site.tenants()[1:], purge=True)])[0])
    assert purged['purged'] == ['a'] and 'inet anycast_edge_dp: delete chain AE-TENANT-a' in purged['actions']
    assert sorted(nft_chains(site.host)) == ['AE-TENANT-b', 'ANYCAST-TPROXY']
    assert nft_chains(site.host)['ANYCAST-TPROXY'] == tproxy
    # absent: b's chain goes, the table stays for tproxy_rule's chain
    ok(run_playbook([nft_task(site, [{'name': 'b', 'state': 'absent'}])])[0])
    assert leftovers(site) == []
    assert sorted(nft_chains(site.host)) == ['ANYCAST-TPROXY']
    assert mangle_rules(site.host) == theirs == ['-A PREROUTING -p udp -m udp --dport 53 -j MARK --set-xmark 0x7/0xffffffff']
    assert 'tcp dport 22 counter' in nsexec(site.host, ['nft', 'list', 'table', 'inet', 'somebody_else']).stdout
    # and once tproxy_rule's chain is gone too, the table goes with it
    ok(run_module('tproxy_rule', {'netns': site.host, 'driver': 'nft', 'persist': False, 'state': 'absent'}))
    assert nft_chains(site.host) == {}
    assert ok(run_playbook([nft_task(site, [{'name': 'b', 'state': 'absent'}])])[0])['changed'] is False


def test_nft_namespace_deleted_by_hand_is_cleaned_up_by_purge(site):
    """The ip rules a vanished namespace left are found by the mark its nft chain holds."""
    tenants = site.tenants()
    tenants[0]['mark'] = '0x100/0xf00'
    ok(run_playbook([nft_task(site, tenants)])[0])
    helpers.sh(['ip', 'netns', 'del', site.ns('a')])
    wait_until_gone(site, 'ae-a@')
    assert ok(run_playbook([nft_task(site, tenants[1:])])[0])['changed'] is False
    purged = ok(run_playbook([nft_task(site, tenants[1:], purge=True)])[0])
    assert purged['purged'] == ['a'], purged
    assert any('remove ip -4 rule fwmark 0x100 lookup 110' in a for a in purged['actions']), purged['actions']
    rest = leftovers(site)
    assert rest and not [x for x in rest if 'ae-a' in x or '0x100' in x or 'AE-TENANT-a' in x], rest
    assert ok(run_playbook([nft_task(site, tenants[1:], purge=True)])[0])['changed'] is False


def test_nft_rendered_is_one_json_transaction(site):
    rendered = ok(run_module('tenant', {'netns_prefix': site.prefix, 'driver': 'nft', 'state': 'rendered',
                                        'tenants': site.tenants()}))['rendered']
    (batch,) = [c for c in rendered if c.startswith('nft -j -f -')]
    assert '"AE-TENANT-a"' in batch and '"AE-TENANT-b"' in batch
    assert not [c for c in rendered if 'iptables' in c]


def xt_mark_chains(ns):
    return sorted(set(line.split()[0] for line in
                      (nsexec(ns, ['iptables-save', '-t', 'mangle']).stdout +
                       nsexec(ns, ['ip6tables-save', '-t', 'mangle']).stdout).splitlines()
                      if line.startswith(':AE-TENANT-')))


def test_switching_the_driver_moves_the_mark_chains(site):
    ok(run_playbook([site.task(site.tenants(), driver='iptables')])[0])
    serve(site)
    assert xt_mark_chains(site.host) == [':AE-TENANT-a', ':AE-TENANT-b'] and nft_chains(site.host) == {}
    before = host_state(site.host)
    checked = ok(run_playbook([nft_task(site, site.tenants())], check=True)[0])
    assert host_state(site.host) == before
    assert 'inet anycast_edge_dp: write chain AE-TENANT-a (2 rules)' in checked['actions']
    assert 'IPv4 mangle: delete chain AE-TENANT-a' in checked['actions'] and \
        'IPv6 mangle: delete chain AE-TENANT-a' in checked['actions'], checked['actions']
    moved = ok(run_playbook([nft_task(site, site.tenants())])[0])
    assert moved['actions'] == checked['actions'] and moved['driver'] == 'nft'
    assert xt_mark_chains(site.host) == [] and sorted(nft_chains(site.host)) == ['AE-TENANT-a', 'AE-TENANT-b']
    assert site.dial([[A_ADDR, 21], [A_ADDR6, 21], [B_ADDR, 21]]) == ['tenant-a', 'tenant-a', 'tenant-b']
    assert ok(run_playbook([nft_task(site, site.tenants())])[0])['changed'] is False
    # and back: the nft chains go, and the table with them
    back = ok(run_playbook([site.task(site.tenants(), driver='iptables')])[0])
    assert 'inet anycast_edge_dp: delete the table (nothing else is in it)' in back['actions']
    assert xt_mark_chains(site.host) == [':AE-TENANT-a', ':AE-TENANT-b'] and nft_chains(site.host) == {}
    assert site.dial([[A_ADDR, 21], [B_ADDR, 21]]) == ['tenant-a', 'tenant-b']
    assert ok(run_playbook([site.task(site.tenants(), driver='iptables')])[0])['changed'] is False
