"""hashlimit's synproxy option (driver: nft): validation, the rules it adds, the namespace settings it needs."""

from __future__ import annotations

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _hashlimit as hl
from ansible_collections.anycast.edge.plugins.module_utils import _nft_hashlimit as nh
from ansible_collections.anycast.edge.plugins.module_utils import _nft_rules as nr
from ansible_collections.anycast.edge.plugins.module_utils import _nft_synproxy as sp
from ansible_collections.anycast.edge.plugins.module_utils._validate import ParamError

from test_nft_rules import DEFAULTS

SYNPROXY = {'ports': [443], 'mss': None, 'wscale': 7, 'timestamp': True, 'sack_perm': True}


def configured(synproxy=None, **extra):
    params = dict(DEFAULTS, match='syn', synproxy=dict(SYNPROXY, **(synproxy or {})), **extra)
    cfg = hl.validate(params)
    cfg['synproxy'] = sp.parse_synproxy(params, cfg)
    return cfg


def chains(cfg):
    return dict((c.name, c) for c in nh.desired(cfg, cfg['exempt'])[0].chains)


def test_synproxy_rules_come_first_and_keep_the_rest_of_the_flow_tracked():
    cfg = configured(ports=[80, 443], destinations=['192.0.2.0/24'], family='ipv4')
    got = chains(cfg)
    texts = [r.text for r in got['RATE-LIMIT'].rules]
    assert texts == [
        'ip daddr 192.0.2.0/24 meta l4proto tcp th dport 443 ct state invalid,untracked counter synproxy mss 1460 '
        'wscale 7 timestamp sack-perm',
        'ip daddr 192.0.2.0/24 meta l4proto tcp th dport 443 ct state invalid counter drop',
        'ip daddr 192.0.2.0/24 meta l4proto tcp th dport { 80, 443 } tcp flags syn / fin,syn,rst,ack jump RATE-LIMIT-v4']
    notrack = [r.text for r in got['RATE-LIMIT-notrack'].rules]
    assert notrack == ['ip daddr 192.0.2.0/24 meta l4proto tcp th dport 443 tcp flags syn / fin,syn,rst,ack notrack',
                       'ip daddr 192.0.2.0/24 meta l4proto tcp th dport 443 accept',
                       'ip daddr 192.0.2.0/24 meta l4proto tcp th dport { 80, 443 } notrack']
    assert [r.text for r in got['RATE-LIMIT-notrack-out'].rules][0] == \
        'ip saddr 192.0.2.0/24 meta l4proto tcp th sport 443 accept'


def test_mss_defaults_per_family_and_options_drop_out():
    cfg = configured({'timestamp': False, 'sack_perm': False, 'wscale': 0})
    assert sp.statement(cfg['synproxy'], 4)[0] == {'synproxy': {'mss': 1460, 'wscale': 0}}
    assert sp.statement(cfg['synproxy'], 6)[0] == {'synproxy': {'mss': 1440, 'wscale': 0}}
    cfg = configured({'mss': 1400})
    assert sp.statement(cfg['synproxy'], 6)[0] == {'synproxy': {'mss': 1400, 'wscale': 7,
                                                                'flags': ['timestamp', 'sack-perm']}}


def test_without_synproxy_the_rules_are_unchanged():
    plain = hl.validate(dict(DEFAULTS, match='syn', ports=[443], protocol='tcp'))
    with_none = dict(plain, synproxy=None)
    assert [r.tag for c in nh.desired(plain, [])[0].chains for r in c.rules] == \
        [r.tag for c in nh.desired(with_none, [])[0].chains for r in c.rules]


@pytest.mark.parametrize('synproxy, extra, param', [
    ({'mss': 535}, {}, 'synproxy.mss'), ({'mss': 65496}, {}, 'synproxy.mss'),
    ({'wscale': 15}, {}, 'synproxy.wscale'), ({'ports': []}, {}, 'synproxy.ports'),
    ({'ports': [8443]}, {'ports': [443], 'protocol': 'tcp'}, 'synproxy.ports'),
])
def test_bad_synproxy_options_name_the_parameter(synproxy, extra, param):
    with pytest.raises(ParamError) as caught:
        configured(synproxy, **extra)
    assert caught.value.param == param


def test_synproxy_needs_match_syn():
    params = dict(DEFAULTS, synproxy=SYNPROXY)
    with pytest.raises(ParamError) as caught:
        sp.parse_synproxy(params, hl.validate(params))
    assert caught.value.param == 'match'


@pytest.mark.parametrize('values, timestamp, writes', [
    ({sp.LOOSE: 1, sp.SYNCOOKIES: 1, sp.TIMESTAMPS: 1}, True, [(sp.LOOSE, 1, 0)]),
    ({sp.LOOSE: 0, sp.SYNCOOKIES: 2, sp.TIMESTAMPS: 2}, True, []),
    ({sp.LOOSE: 0, sp.SYNCOOKIES: 0, sp.TIMESTAMPS: 0}, True, [(sp.SYNCOOKIES, 0, 1), (sp.TIMESTAMPS, 0, 1)]),
    ({sp.LOOSE: 0, sp.SYNCOOKIES: 1, sp.TIMESTAMPS: 0}, False, []),
])
def test_only_the_settings_that_differ_are_written(values, timestamp, writes):
    assert sp.wanted_writes(dict(SYNPROXY, timestamp=timestamp), values) == writes


def test_a_synproxy_plan_predicts_itself():
    cfg = configured(family='ipv4')
    desired = nh.desired(cfg, [])[0]
    first = nr.plan(nr.TableState(), desired)
    assert first.changed and not nr.plan(first.predicted, desired).changed
