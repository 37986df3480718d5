"""edge_info: reports what the collection owns, fills and drift, and never changes anything."""

from __future__ import annotations

import sys

import pytest

import helpers
from helpers import nsexec, ok, run_module, run_playbook

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
NS_PREFIX = helpers.ns_prefix('ae8')
EDGE = '198.51.100.1'


@pytest.fixture
def edge(netns_factory, veth):
    edge_ns = netns_factory()
    client_ns = netns_factory()
    veth(edge_ns, client_ns, 'edge0', 'cli0', [EDGE + '/24'],
         ['198.51.100.%d/24' % i for i in range(10, 20)])
    return edge_ns, client_ns


def test_edge_info_reports_owned_state_fill_and_drift_without_changing_anything(edge):
    edge_ns, client_ns = edge
    state_dir = helpers.scratch_dir('ae8-state-')
    tenant_ns = helpers.unique_name(helpers.ns_prefix('ae8t'))
    results = run_playbook([
        {'anycast.edge.anyip_route': {'prefixes': ['192.0.2.0/24'], 'netns': edge_ns}},
        {'anycast.edge.tproxy_rule': {'rules': [{'destination': '192.0.2.0/24', 'on_port': 1234}], 'netns': edge_ns}},
        {'anycast.edge.hashlimit': {'netns': edge_ns, 'protocol': 'tcp', 'ports': 80, 'htable_max': 8,
                                    'htable_size': 2, 'family': 'ipv4', 'rate': '1/min', 'burst': 1}},
        {'anycast.edge.tenant': {'netns': edge_ns, 'tenants': [
            {'name': 'acme', 'netns': tenant_ns, 'prefixes': ['203.0.113.0/24'], 'mark': '0x10', 'table': 110,
             'firewall': {'policy': 'drop', 'rules': ['ip daddr 203.0.113.100 tcp dport 20-21 accept']}}]}},
    ], state_dir=state_dir)
    for result in results:
        ok(result)
    try:
        # 7 sources fill 7 of the 8 hashlimit slots: more than 80 %
        for index in range(10, 17):
            helpers.sh(['ip', 'netns', 'exec', client_ns, sys.executable, '-c',
                        'import socket; s = socket.socket(); s.settimeout(0.5); s.bind(("198.51.100.%d", 0))\n'
                        'try:\n s.connect(("%s", 80))\nexcept OSError:\n pass' % (index, EDGE)], check=False)
        before = helpers.kernel_state(edge_ns)
        info = ok(run_module('edge_info', {'netns': edge_ns, 'state_dir': state_dir}, check=True))
        assert helpers.kernel_state(edge_ns) == before
        assert info['changed'] is False
        assert info['anyip'] == {'ipv4': ['192.0.2.0/24'], 'ipv6': []}
        chains = {(c['family'], c['table'], c['chain']): c for c in info['xtables']}
        assert chains[('ipv4', 'mangle', 'ANYCAST-TPROXY')]['jumps_from'] == ['PREROUTING']
        assert chains[('ipv4', 'filter', 'RATE-LIMIT')]['jumps_from'] == ['INPUT']
        refused = sum(r['packets'] for r in chains[('ipv4', 'filter', 'RATE-LIMIT')]['rules'] if 'REJECT' in r['rule'])
        assert refused == 0  # one connection per source: each within its burst
        (table,) = info['hashlimit_tables']
        assert (table['name'], table['htable_max'], table['entries']) == ('conn_rate_limit', 8, 7)
        assert any('conn_rate_limit' in w and 'full' in w for w in info['warnings']), info['warnings']
        (tenant,) = info['tenants']
        assert (tenant['name'], tenant['netns'], tenant['table']) == ('acme', tenant_ns, 110)
        assert 'tcp dport 20-21 accept' in tenant['firewall']
        assert sorted(info['records']) == sorted([
            'anyip_route@%s' % edge_ns, 'tproxy_rule@%s@ANYCAST-TPROXY' % edge_ns,
            'hashlimit@%s@RATE-LIMIT' % edge_ns, 'tenant@%s@acme' % edge_ns])
        assert not any(report['drifted'] for report in info['drift'].values()), info['drift']

        nsexec(edge_ns, ['ip', 'route', 'del', 'local', '192.0.2.0/24', 'dev', 'lo', 'table', 'local'])
        info = ok(run_module('edge_info', {'netns': edge_ns, 'state_dir': state_dir}))
        assert info['drift']['anyip_route@%s' % edge_ns]['drifted'] is True
        assert any('anyip_route@%s' % edge_ns in w and 'drifted' in w for w in info['warnings'])
        assert info['anyip'] == {'ipv4': [], 'ipv6': []}
    finally:
        run_playbook([{'anycast.edge.tenant': {'netns': edge_ns, 'tenants': [], 'purge': True}}],
                     state_dir=state_dir)
        helpers.sh(['ip', 'netns', 'del', tenant_ns], check=False)
