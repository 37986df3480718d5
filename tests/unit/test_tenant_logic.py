"""Pure-logic checks of the tenant module's input handling and nftables bookkeeping (no kernel needed)."""

from __future__ import annotations

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _nft_rules as nr
from ansible_collections.anycast.edge.plugins.module_utils import _tenant_marks as marks
from ansible_collections.anycast.edge.plugins.module_utils import _tenant_firewall as fw
from ansible_collections.anycast.edge.plugins.module_utils import _tenant_spec as spec
from ansible_collections.anycast.edge.plugins.module_utils import _tenant_view as view
from ansible_collections.anycast.edge.plugins.module_utils._validate import ParamError


def params(*tenants, **extra):
    out = {'tenants': list(tenants), 'netns_prefix': 'tenant-', 'link_pool_ipv4': None, 'link_pool_ipv6': None,
           'rule_priority': 1000}
    out.update(extra)
    return out


def tenant(name='acme', mark='0x10', table=100, prefixes=('203.0.113.0/24',), **extra):
    item = {'name': name, 'mark': mark, 'table': table, 'prefixes': list(prefixes)}
    item.update(extra)
    return item


def test_defaults_are_derived_from_name_and_table():
    tenants, _settings = spec.validate(params(tenant(prefixes=['203.0.113.0/24', '2001:db8:ac3e::/48'])))
    acme = tenants[0]
    assert (acme.netns, acme.host_if, acme.tenant_if) == ('tenant-acme', 'ae-acme', 'ae-acme-t')
    assert [str(i) for i in acme.link4] == ['169.254.0.200/31', '169.254.0.201/31']
    assert [str(i) for i in acme.link6] == ['fdac:ed6e:7e4a::c8/127', 'fdac:ed6e:7e4a::c9/127']
    assert (acme.mark, acme.mask, acme.table) == (0x10, 0xFFFFFFFF, 100)


def test_ipv4_only_tenant_gets_no_ipv6_link():
    tenants, _settings = spec.validate(params(tenant()))
    assert tenants[0].link6 is None
    assert view.desired_view(tenants[0], {'rule_priority': 1000}, 1).host_ipv6_off == '1'


def test_derived_links_never_collide_between_distinct_tables_of_the_pool():
    items = [tenant('t%d' % n, mark=str(n + 1), table=n + 1, prefixes=['10.%d.0.0/16' % n]) for n in range(200)]
    tenants, _settings = spec.validate(params(*items))
    addresses = [str(p.ip) for tn in tenants for p in tn.link4]
    assert len(addresses) == len(set(addresses)) == 400


def test_derived_link_collision_is_reported_with_the_fix():
    # table 1 and table 1 + 16384 share the /31 of a /17 pool
    with pytest.raises(ParamError) as err:
        spec.validate(params(tenant('a', '1', 1, ['192.0.2.0/24']), tenant('b', '2', 16385, ['198.51.100.0/24'])))
    assert str(err.value).startswith('tenants[1].link:')
    assert 'set link.host_ipv4 and link.tenant_ipv4' in str(err.value)


def test_explicit_link_addresses_are_checked():
    good = tenant(link={'host_ipv4': '10.9.0.0/31', 'tenant_ipv4': '10.9.0.1/31'})
    tenants, _settings = spec.validate(params(good))
    assert [str(i) for i in tenants[0].link4] == ['10.9.0.0/31', '10.9.0.1/31']
    with pytest.raises(ParamError, match=r'^tenants\[0\]\.link\.tenant_ipv4: give both'):
        spec.validate(params(tenant(link={'host_ipv4': '10.9.0.0/31'})))
    with pytest.raises(ParamError, match=r'^tenants\[0\]\.link\.tenant_ipv4: .* not in the same subnet'):
        spec.validate(params(tenant(link={'host_ipv4': '10.9.0.0/31', 'tenant_ipv4': '10.9.0.3/31'})))


@pytest.mark.parametrize('item, param, problem', [
    (tenant(name='a' * 11), 'tenants[0].name', "'ae-aaaaaaaaaaa-t' (16 characters)"),
    (tenant(name='a' * 16, link={'host_if': 'h', 'tenant_if': 't'}), 'tenants[0].name', 'at most 15'),
    (tenant(name='bad name'), 'tenants[0].name', 'not a tenant name'),
    (tenant(mark=None), 'tenants[0].mark', 'is required'),
    (tenant(mark='0x1/0x100'), 'tenants[0].mark', 'outside its mask'),
    (tenant(table=None), 'tenants[0].table', 'is required'),
    (tenant(table=255), 'tenants[0].table', "'local' table"),
    (tenant(prefixes=['203.0.113.0/24', '203.0.113.0/24']), 'tenants[0].prefixes[1]', 'listed twice'),
    (tenant(netns='a/b'), 'tenants[0].netns', 'namespace name'),
    (tenant(firewall={'policy': 'reject', 'rules': []}), 'tenants[0].firewall.policy', 'accept, drop'),
    (tenant(firewall={'rules': ['accept\ndelete table inet x']}), 'tenants[0].firewall.rules[0]', 'one line'),
    (tenant(firewall={'rules': ['accept } table inet x {']}), 'tenants[0].firewall.rules[0]', "'}' without"),
    (tenant(firewall={'rules': ['ip saddr { 10.0.0.1 accept']}), 'tenants[0].firewall.rules[0]', "'{' without"),
    (tenant(firewall={'rules': ['  ']}), 'tenants[0].firewall.rules[0]', 'nft syntax'),
])
def test_bad_tenant_names_the_parameter(item, param, problem):
    with pytest.raises(ParamError) as err:
        spec.validate(params(item))
    assert str(err.value).startswith(param + ':'), str(err.value)
    assert problem in str(err.value)


def test_pairs_of_tenants_must_differ():
    a = tenant('a', '0x1', 101, ['192.0.2.0/24'])
    for other, param in ((tenant('a', '0x2', 102, ['198.51.100.0/24']), 'tenants[1].name'),
                         (tenant('b', '0x1', 102, ['198.51.100.0/24']), 'tenants[1].mark'),
                         (tenant('b', '0x2', 101, ['198.51.100.0/24']), 'tenants[1].table'),
                         (tenant('b', '0x2', 102, ['192.0.2.64/26']), 'tenants[1].prefixes[0]'),
                         (tenant('b', '0x2', 102, ['198.51.100.0/24'], netns='tenant-a'), 'tenants[1].netns')):
        with pytest.raises(ParamError) as err:
            spec.validate(params(a, other))
        assert str(err.value).startswith(param + ':'), str(err.value)


def test_absent_tenants_need_only_a_name_and_do_not_compete():
    tenants, _settings = spec.validate(params(tenant('a', '0x1', 101, ['192.0.2.0/24']),
                                              {'name': 'b', 'state': 'absent', 'prefixes': ['192.0.2.0/24']}))
    assert [x.state for x in tenants] == ['present', 'absent']


def test_quoted_semicolons_are_part_of_a_rule():
    assert spec._nft_rule_problem('tcp dport 22 accept comment "ssh; admins only"') is None
    assert spec._nft_rule_problem('tcp dport 22 accept; flush ruleset') is not None


def test_nft_script_is_one_table_replacement_and_its_digest_ignores_the_comment():
    tenants, _settings = spec.validate(params(tenant(firewall={'policy': 'drop', 'rules': ['tcp dport 21 accept']})))
    script = fw.nft_script(tenants[0])
    lines = script.splitlines()
    assert lines[:3] == ['add table inet anycast_edge', 'delete table inet anycast_edge', 'table inet anycast_edge {']
    assert 'policy drop;' in script and '\t\ttcp dport 21 accept' in lines
    listing = script.split('\n', 2)[2]
    comment, digest, body = fw.parse_listing(listing)
    assert comment == ('acme', fw.input_digest(tenants[0]), 'pending')
    assert digest == fw.listing_digest(listing.replace('kernel=pending', 'kernel=0123456789abcdef'))
    assert body == fw.desired_lines(tenants[0])


def test_input_digest_follows_rules_policy_and_interface():
    base = tenant(firewall={'policy': 'drop', 'rules': ['tcp dport 21 accept']})
    digest = fw.input_digest(spec.validate(params(base))[0][0])
    for change in ({'firewall': {'policy': 'accept', 'rules': ['tcp dport 21 accept']}},
                   {'firewall': {'policy': 'drop', 'rules': ['tcp dport 22 accept']}},
                   {'link': {'tenant_if': 'eth9'}}):
        changed = dict(base, **change)
        assert fw.input_digest(spec.validate(params(changed))[0][0]) != digest


def test_marker_round_trip():
    tenants, _settings = spec.validate(params(tenant()))
    assert spec.parse_marker(tenants[0].marker(4026531840)) == {
        'name': 'acme', 'host': 4026531840, 'mark': 0x10, 'mask': 0xFFFFFFFF, 'table': 100}
    assert spec.parse_marker('anycast.edge tenant acme') is None
    assert spec.parse_marker(None) is None


def test_mark_chains_per_family():
    tenants, _settings = spec.validate(params(tenant(prefixes=['203.0.113.0/24', '198.51.100.0/24'])))
    v4, v6 = marks.xt_specs(tenants[0])
    assert (v4.family, v4.name, v4.present, len(v4.rules)) == (4, 'AE-TENANT-acme', True, 2)
    assert '-d 203.0.113.0/24' in v4.rules[0].restore_text()
    assert '-j MARK --set-xmark 0x10/0xffffffff' in v4.rules[0].restore_text()
    assert (v6.family, v6.present) == (6, False)


def test_nft_mark_chain_is_one_base_chain_for_both_families_and_reads_its_mark_back():
    tenants, _settings = spec.validate(params(tenant(prefixes=['2001:db8:1::/48', '203.0.113.0/24'], mark='0x100/0xf00')))
    chain = marks.nft_chain(tenants[0])
    assert (chain.name, chain.hook, chain.priority) == ('AE-TENANT-acme', 'prerouting', 'mangle')
    assert [r.text for r in chain.rules] == [
        'ip daddr 203.0.113.0/24 meta mark set meta mark & 0xfffff0ff ^ 0x100',
        'ip6 daddr 2001:db8:1::/48 meta mark set meta mark & 0xfffff0ff ^ 0x100']
    # what the kernel lists back (nft stores (mark & ~MASK) ^ VALUE as (mark & (~MASK | VALUE)) | VALUE)
    listed = nr.TableState(True, {'AE-TENANT-acme': {'spec': {}, 'rules': [nr.ReadRule([
        {'match': {}}, {'mangle': {'key': {'meta': {'key': 'mark'}},
                                   'value': {'|': [{'&': [{'meta': {'key': 'mark'}}, 0xfffff1ff]}, 0x100]}}}], None)]},
        'AE-TENANT-gone': {'spec': {}, 'rules': []}, 'ANYCAST-TPROXY': {'spec': {}, 'rules': []}})
    assert marks.nft_owned_marks(listed) == {'acme': (0x100, 0xf00), 'gone': None}


def test_nft_mark_plan_writes_listed_tenants_and_removes_only_ours():
    tenants, _settings = spec.validate(params(tenant(prefixes=['203.0.113.0/24'])))
    state = nr.TableState(True, {'ANYCAST-TPROXY': {'spec': {}, 'rules': []},
                                 'AE-TENANT-old': {'spec': {}, 'rules': []}})
    plan = marks.NftMarks.plan(state, tenants, ['old'])
    assert plan.actions == ['inet anycast_edge_dp: write chain AE-TENANT-acme (1 rules)',
                            'inet anycast_edge_dp: delete chain AE-TENANT-old']
    assert 'ANYCAST-TPROXY' not in plan.commands[0]
    rendered = marks.NftMarks.plan(marks.NftMarks.empty(), tenants, [], rendered=True)
    assert rendered.batch[0] == {'add': {'table': {'family': 'inet', 'name': 'anycast_edge_dp'}}}
