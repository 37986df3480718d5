"""driver: nft planning (no kernel needed): one batch, idempotent on its own prediction, ownership, absent."""

from __future__ import annotations

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _hashlimit as hl
from ansible_collections.anycast.edge.plugins.module_utils import _nft_hashlimit as nh
from ansible_collections.anycast.edge.plugins.module_utils import _nft_rules as nr
from ansible_collections.anycast.edge.plugins.module_utils import _nft_tproxy as nt
from ansible_collections.anycast.edge.plugins.module_utils._tproxy import validate_rules
from ansible_collections.anycast.edge.plugins.module_utils._validate import ParamError

DEFAULTS = dict(name='conn_rate_limit', chain='RATE-LIMIT', rate='50/sec', burst=20, mode=['srcip'], srcmask=None,
                dstmask=None, match='new', protocol=None, ports=None, destinations=None, exempt=[], log=True,
                action='reject', htable_max=65536, htable_size=None, htable_expire=None, htable_gcinterval=1000,
                family='both', ssh_guard='fail', state='present')


def tproxy_desired(rules, chain='ANYCAST-TPROXY'):
    built = sum((nt.kernel_rules(r) for r in validate_rules(rules)), [])
    return nr.Desired([nr.NftChain(chain, built, 'prerouting', 'mangle')], [], [chain], [])


def limit_desired(**extra):
    cfg = hl.validate(dict(DEFAULTS, **extra))
    return nh.desired(cfg, cfg['exempt'])[0]


def test_a_plan_from_nothing_is_one_batch_and_its_prediction_needs_no_second():
    desired = tproxy_desired([{'destination': '192.0.2.0/24', 'on_port': 1234, 'ports': [80, '8000-8100']},
                              {'destination': '2001:db8::/64', 'on_port': 1234, 'mark': '0x1/0xff'}])
    plan = nr.plan(nr.TableState(), desired)
    assert len(plan.commands) == 1 and plan.batch[0] == {'add': {'table': {'family': 'inet', 'name': nr.TABLE}}}
    assert [list(c)[0] for c in plan.batch[1:]] == ['add'] * 5
    assert not nr.plan(plan.predicted, desired).changed
    gone = nr.plan(plan.predicted, desired, present=False)
    assert gone.batch[-1] == {'delete': {'table': {'family': 'inet', 'name': nr.TABLE}}}
    assert not nr.plan(gone.predicted, desired, present=False).changed


def test_the_table_stays_while_someone_else_has_an_object_in_it():
    desired = tproxy_desired([{'destination': '192.0.2.0/24', 'on_port': 1234}])
    state = nr.plan(nr.TableState(), desired).predicted
    state.chains['theirs'] = {'spec': {'name': 'theirs'}, 'rules': []}
    gone = nr.plan(state, desired, present=False)
    assert {'delete': {'table': {'family': 'inet', 'name': nr.TABLE}}} not in gone.batch
    assert 'theirs' in gone.predicted.chains


def test_a_changed_exempt_set_rewrites_the_chains_using_it_in_the_same_batch():
    before = limit_desired(exempt=['10.0.0.0/8'])
    state = nr.plan(nr.TableState(), before).predicted
    plan = nr.plan(state, limit_desired(exempt=['10.0.0.0/8', '192.0.2.0/24']))
    kinds = [(list(c)[0], list(list(c.values())[0])[0]) for c in plan.batch]
    assert ('delete', 'set') in kinds and ('add', 'set') in kinds
    assert kinds.index(('flush', 'chain')) < kinds.index(('delete', 'set'))
    assert 'inet anycast_edge_dp: write chain RATE-LIMIT-v4 (3 rules)' in plan.actions


@pytest.mark.parametrize('modes, masks, key_type', [
    (['srcip'], {'srcmask': {'ipv4': 24, 'ipv6': 64}}, 'ipv4_addr'),
    (['srcip', 'dstport'], {}, ['ipv4_addr', 'inet_service']),
    (['dstip', 'srcport'], {'dstmask': {'ipv4': 16}}, ['inet_service', 'ipv4_addr']),   # in hashlimit's order
])
def test_mode_becomes_the_sets_key(modes, masks, key_type):
    cfg = hl.validate(dict(DEFAULTS, mode=modes, **masks))
    expr, found, _text = nh.set_key(cfg, 4)
    assert found == key_type
    if masks.get('srcmask'):
        assert expr == {'&': [nr.payload('ip', 'saddr'), '255.255.255.0']}


@pytest.mark.parametrize('extra, param', [
    ({'htable_size': 100}, 'htable_size'), ({'htable_gcinterval': 10}, 'htable_gcinterval'),
    ({'htable_expire': 1500}, 'htable_expire'),
])
def test_options_of_the_iptables_drivers_are_refused(extra, param):
    params = dict(DEFAULTS, **extra)
    with pytest.raises(ParamError) as caught:
        nh.check_nft_params(params, hl.validate(params))
    assert caught.value.param == param


def test_a_mark_with_a_mask_reads_back_from_nfts_own_spelling():
    (rule,) = validate_rules([{'destination': '2001:db8::/64', 'on_port': 1, 'mark': '0x10/0xff'}])
    # nft stores (mark & ~MASK) ^ VALUE as (mark & (~MASK | VALUE)) | VALUE
    stored = {'mangle': {'key': nr.meta('mark'), 'value': {'|': [{'&': [nr.meta('mark'), 0xffffff10]}, 0x10]}}}
    assert nt._parse_mark(stored) == '0x10/0xff'
    assert nt._parse_mark(nt._mark_expr(rule['mark'])) == '0x10/0xff'


def test_rules_built_from_shared_pieces_carry_the_digest_of_their_whole_expression():
    rules = validate_rules([
        {'destination': '192.0.2.0/24', 'on_port': 1234},
        {'destination': '198.51.100.0/24', 'protocol': 'udp', 'ports': [53, '8000-8100'], 'on_port': 1234,
         'mark': '0x10/0xff'},
        {'destination': '2001:db8::/64', 'on_port': 80, 'on_ip': '::1', 'mark': '0x1'},
        {'destination': '203.0.113.7/32', 'ports': 443, 'on_port': 1234, 'mark': '0x10/0xff'}])
    pieces = {}
    for rule in rules:
        for built in nt.kernel_rules(rule, pieces) + nt.kernel_rules(rule):
            assert built.tag == 'anycast.edge %s' % nr._digest(built.expr)
    # the tags of chains already written by the previous release: a no-op after an upgrade rewrites nothing
    assert [r.tag for rule in rules[:3] for r in nt.kernel_rules(rule)] == [
        'anycast.edge fbb4c65909f9', 'anycast.edge 444268e2f2cc', 'anycast.edge b39e5981873c',
        'anycast.edge 639ecab75b3f', 'anycast.edge 8a0c7b64cca7', 'anycast.edge 826de653bf68']


def test_gre_mss_clamp_chain_and_plan():
    from ansible_collections.anycast.edge.plugins.module_utils import _gre_mss as mss
    both, v4 = mss.nft_chain('gre-acme', {4, 6}), mss.nft_chain('gre-b', {4})
    assert (both.name, both.hook, both.priority) == ('ANYCAST-MSS-gre-acme', 'forward', 'mangle')
    assert [r.text for r in both.rules + v4.rules] == [
        'oifname "gre-acme" tcp flags syn / syn,rst tcp option maxseg size set rt mtu',
        'oifname "gre-b" meta nfproto ipv4 tcp flags syn / syn,rst tcp option maxseg size set rt mtu']
    state = nr.TableState(True, {'ANYCAST-MSS-gre-old': {'spec': {}, 'rules': []},
                                 'ANYCAST-TPROXY': {'spec': {}, 'rules': []}})
    plan = mss.NftMss.plan(state, {'gre-acme': {4, 6}, 'gre-old': set()}, 'tenant-acme')
    assert plan.actions == ['inet anycast_edge_dp: write chain ANYCAST-MSS-gre-acme (1 rules)',
                            'inet anycast_edge_dp: delete chain ANYCAST-MSS-gre-old']
    assert mss.NftMss.clamped(plan.predicted, 'gre-acme') and not mss.NftMss.clamped(plan.predicted, 'gre-old')
    assert plan.commands[0].startswith("ip netns exec tenant-acme nft -j -f - <<'EOF'")
