"""Validation, lockout check and rule building of the hashlimit module (no kernel needed)."""

from __future__ import annotations

import ipaddress

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _hashlimit as hl
from ansible_collections.anycast.edge.plugins.module_utils._validate import ParamError, parse_ssh_connection

DEFAULTS = dict(name='conn_rate_limit', chain='RATE-LIMIT', rate='50/sec', burst=20, mode=['srcip'], srcmask=None,
                dstmask=None, match='new', protocol=None, ports=None, destinations=None, exempt=[], log=True,
                action='reject', htable_max=65536, htable_size=None, htable_expire=None, htable_gcinterval=1000,
                family='both', ssh_guard='fail', state='present')


def cfg(**extra):
    params = dict(DEFAULTS)
    params.update(extra)
    return hl.validate(params)


@pytest.mark.parametrize('text, expected', [
    ('50/sec', (50, 'sec')), ('3000/min', (3000, 'min')), ('10/s', (10, 'sec')), ('1/day', (1, 'day')),
    ('7/hour', (7, 'hour')), ('20', (20, 'sec')), (' 5 / minute ', (5, 'min')),
])
def test_rates(text, expected):
    assert hl.parse_rate(text, 'rate') == expected


@pytest.mark.parametrize('text, words', [
    ('fast', 'not a rate'), ('0/sec', 'at least 1'), ('5/fortnight', 'unknown unit'), ('2000000/sec', 'faster'),
    (True, 'expected a rate'),
])
def test_bad_rates(text, words):
    with pytest.raises(ParamError) as err:
        hl.parse_rate(text, 'rate')
    assert str(err.value).startswith('rate: ') and words in str(err.value)


def test_the_default_is_the_write_ups_chain():
    config = cfg()
    specs, roles = hl.build_plan(config, config['exempt'])
    filter4 = [s for s in specs if s.family == 4 and s.table == 'filter'][0]
    texts = [r.restore_text() for r in filter4.rules]
    assert texts[0].startswith('-m hashlimit --hashlimit-upto 50/sec --hashlimit-burst 20 --hashlimit-mode srcip '
                               '--hashlimit-name conn_rate_limit --hashlimit-htable-size 16384 '
                               '--hashlimit-htable-max 65536 --hashlimit-htable-expire 1000 ')
    assert texts[0].endswith('-j ACCEPT')
    assert texts[1].startswith('-m limit --limit 1/sec ') and 'IPTables-Rejected: ' in texts[1]
    assert texts[2].startswith('-p tcp ') and texts[2].endswith('-j REJECT --reject-with tcp-reset')
    assert texts[3].endswith('-j REJECT --reject-with icmp-port-unreachable')
    assert filter4.jumps[0].from_chain == 'INPUT'
    assert filter4.jumps[0].rule.restore_text().startswith('-m conntrack --ctstate NEW ')
    assert [role for role, _tag in roles[4]] == ['accepted', 'logged', 'refused', 'refused']
    raw = [s for s in specs if s.table == 'raw']
    assert raw and not any(s.present for s in raw)


def test_expire_follows_the_rate_unit_and_masks_per_family():
    config = cfg(rate='3000/min', srcmask={'ipv4': 24, 'ipv6': 64})
    opts4 = dict(hl.hashlimit_options(config, 4))
    opts6 = dict(hl.hashlimit_options(config, 6))
    assert opts4['hashlimit-htable-expire'] == '60000'
    assert opts4['hashlimit-srcmask'] == '24' and opts6['hashlimit-srcmask'] == '64'


def test_syn_mode_scope_and_notrack_chain():
    config = cfg(match='syn', ports=[80, 443], destinations=['192.0.2.0/24'])
    specs, _roles = hl.build_plan(config, [])
    present = dict(((s.family, s.table), s) for s in specs if s.present)
    assert set(present) == {(4, 'filter'), (4, 'raw')}   # no IPv6 destination: no IPv6 chain
    jump = present[(4, 'filter')].jumps[0].rule.restore_text()
    assert jump.startswith('-d 192.0.2.0/24 -p tcp -m multiport --dports 80,443 -m tcp --syn ')
    raw = present[(4, 'raw')]
    assert [j.from_chain for j in raw.jumps] == ['PREROUTING', 'OUTPUT']
    assert raw.jumps[1].rule.restore_text().startswith('-s 192.0.2.0/24 -p tcp -m multiport --sports 80,443 ')
    assert raw.rules[0].restore_text().endswith('-j CT --notrack')


def test_udp_scope_rejects_with_port_unreachable_only():
    config = cfg(protocol='udp', ports=[53])
    rules = hl.chain_rules(config, 6, [])
    assert [r.restore_text().split(' -j ')[-1] for _role, r in rules][-1] == 'REJECT --reject-with icmp6-port-unreachable'
    assert not any('tcp-reset' in r.restore_text() for _role, r in rules)


@pytest.mark.parametrize('extra, param, words', [
    ({'burst': 0}, 'burst', 'out of range'),
    ({'burst': 10001}, 'burst', 'out of range'),
    ({'srcmask': 33, 'family': 'ipv4'}, 'srcmask', 'IPv4'),
    ({'srcmask': 64}, 'srcmask', 'with family both'),
    ({'dstmask': {'ipv6': 129}}, 'dstmask.ipv6', 'at most 128'),
    ({'name': 'x' * 255}, 'name', 'at most 254'),
    ({'name': 'a/b'}, 'name', 'not a valid'),
    ({'mode': ['srcip', 'dst']}, 'mode[1]', 'not one of'),
    ({'mode': []}, 'mode', 'at least one'),
    ({'match': 'syn', 'protocol': 'udp'}, 'protocol', 'must be tcp'),
    ({'ports': [80]}, 'ports', 'protocol tcp or udp'),
    ({'protocol': 'tcp', 'ports': list(range(1, 40, 2))}, 'ports', 'multiport'),
    ({'destinations': ['192.0.2.0/24', '192.0.2.0/24']}, 'destinations[1]', 'listed twice'),
    ({'exempt': ['192.0.2.1/24']}, 'exempt[0]', 'host bits'),
    ({'log': {'prefix': 'p' * 30}}, 'log.prefix', 'at most 29'),
    ({'log': {'rate': 'often'}}, 'log.rate', 'not a rate'),
    ({'htable_max': 100, 'htable_size': 200}, 'htable_size', 'at most htable_max'),
    ({'htable_max': 2000000}, 'htable_max', 'out of range'),
    ({'chain': 'INPUT'}, 'chain', 'built-in'),
])
def test_bad_input_names_the_parameter(extra, param, words):
    with pytest.raises(ParamError) as err:
        cfg(**extra)
    assert str(err.value).startswith(param + ': ') and words in str(err.value), str(err.value)


def test_htable_size_defaults_to_a_quarter_of_max():
    assert cfg(htable_max=1000)['htable_size'] == 250
    assert cfg(htable_max=3)['htable_size'] == 1


SSH = parse_ssh_connection('198.51.100.7 50022 192.0.2.1 22')


def test_ssh_connection_parsing():
    assert SSH == (ipaddress.ip_address('198.51.100.7'), 50022, ipaddress.ip_address('192.0.2.1'), 22)
    assert parse_ssh_connection('') is None and parse_ssh_connection('garbage') is None
    assert parse_ssh_connection('fe80::1%eth0 1 fe80::2%eth0 22')[2] == ipaddress.ip_address('fe80::2')
    mapped = parse_ssh_connection('::ffff:198.51.100.7 50022 ::ffff:192.0.2.1 22')
    assert mapped == SSH


@pytest.mark.parametrize('extra, exposed', [
    ({}, True),
    ({'protocol': 'tcp', 'ports': [22]}, True),
    ({'protocol': 'tcp', 'ports': ['20-30']}, True),
    ({'protocol': 'tcp', 'ports': [443]}, False),
    ({'protocol': 'udp'}, False),
    ({'destinations': ['192.0.2.0/24']}, True),
    ({'destinations': ['203.0.113.0/24']}, False),
    ({'family': 'ipv6'}, False),
    ({'exempt': ['198.51.100.0/24']}, False),
    ({'state': 'absent'}, False),
])
def test_ssh_exposure(extra, exposed):
    result = hl.ssh_exposure(cfg(**extra), SSH)
    assert (result is not None) == exposed
    if exposed:
        assert str(result) == '198.51.100.7/32'


@pytest.mark.parametrize('extra, param, words', [
    ({'exempt': ['0.0.0.0/0']}, 'exempt[0]', '0.0.0.0/0 exempts every IPv4 source'),
    ({'exempt': ['::/0'], 'family': 'ipv6'}, 'exempt[0]', 'remove the chain (state: absent)'),
    ({'exempt': ['10.0.0.0/8', '0.0.0.0/1', '128.0.0.0/1']}, 'exempt[2]', 'with the exempt prefixes before it'),
    ({'exempt': ['0.0.0.0/0'], 'destinations': ['192.0.2.0/24']}, 'exempt[0]', 'limit nobody'),
])
def test_an_exempt_list_that_covers_every_source_is_refused(extra, param, words):
    with pytest.raises(ParamError) as err:
        cfg(**extra)
    assert str(err.value).startswith(param + ': ') and words in str(err.value), str(err.value)


@pytest.mark.parametrize('extra', [
    {'exempt': ['0.0.0.0/1']},                                   # half of IPv4 is still limited
    {'exempt': ['0.0.0.0/0'], 'destinations': ['2001:db8::/64']},  # only an IPv6 chain
    {'exempt': ['0.0.0.0/0'], 'state': 'absent'},
])
def test_exempt_lists_that_leave_someone_limited_are_accepted(extra):
    assert cfg(**extra)['exempt']


def test_an_exempt_prefix_of_a_family_the_chain_is_not_for_is_refused():
    # issue 18: with family ipv4 there is no IPv6 chain, so ::/0 would exempt nothing: a mistake, not a no-op
    with pytest.raises(ParamError) as err:
        cfg(exempt=['192.0.2.0/24', '::/0'], family='ipv4')
    assert str(err.value).startswith('exempt[1]: ::/0 is IPv6, but family is ipv4')
