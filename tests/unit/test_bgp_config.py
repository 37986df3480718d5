"""The BGP speaker's input checks and the BIRD configuration it renders, the bgp_plan filter
(what a host announces, from its inventory variables), and the readers of BIRD's replies.
No kernel needed; `bird -p` (the real parser) checks the rendered text."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

from prerequisites import missing_prerequisite

from ansible_collections.anycast.edge.plugins.filter.bgp import bgp_plan
from ansible_collections.anycast.edge.plugins.module_utils import _bgp, _bird
from ansible_collections.anycast.edge.plugins.module_utils._bgp import Speaker, mask_passwords
from ansible_collections.anycast.edge.plugins.module_utils._validate import ParamError


def params(**extra):
    base = {'local_as': 64512, 'router_id': '198.51.100.11',
            'neighbors': [{'address': '198.51.100.1', 'remote_as': 64500},
                          {'address': '2001:db8:ffff::1', 'remote_as': 64500}],
            'prefixes': ['192.0.2.0/24', '2001:db8:100::/64']}
    base.update(extra)
    return base


def refused(**extra):
    with pytest.raises(ParamError) as err:
        Speaker(params(**extra))
    return str(err.value)


def bird_parses(text):
    if shutil.which('bird') is None:
        missing_prerequisite('bird is not installed (bird2 in scripts/apt-packages.txt)')
    with tempfile.NamedTemporaryFile('w', suffix='.conf') as handle:
        handle.write(text)
        handle.flush()
        proc = subprocess.run(['bird', '-p', '-c', handle.name], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr + '\n' + text


@pytest.mark.parametrize('extra,message', [
    ({'local_as': 0}, 'local_as: AS 0 is outside 1..4294967295'),
    ({'local_as': 4294967296}, 'local_as: AS 4294967296 is outside'),
    ({'router_id': '2001:db8::1'}, "router_id: '2001:db8::1' is not an IPv4 address"),
    ({'router_id': '0.0.0.0'}, 'router_id: 0.0.0.0 is not a valid router id'),
    ({'neighbors': []}, 'neighbors: at least one neighbour'),
    ({'neighbors': [{'address': 'router1', 'remote_as': 1}]}, "neighbors[0].address: 'router1' is not a valid"),
    ({'neighbors': [{'address': 'fe80::1', 'remote_as': 1}]}, 'neighbors[0].address'),
    ({'neighbors': [{'address': '198.51.100.1', 'remote_as': 1, 'hold_time': 2}]},
     'neighbors[0].hold_time: 2 s is below 3 s'),
    ({'neighbors': [{'address': '198.51.100.1', 'remote_as': 1, 'hold_time': 0}]}, 'below 3 s'),
    ({'neighbors': [{'address': '198.51.100.1', 'remote_as': 1, 'keepalive_time': 4}]}, 'more than a third'),
    ({'neighbors': [{'address': '198.51.100.1', 'remote_as': 1, 'multihop': 2}]}, 'neighbors[0].source_address'),
    ({'neighbors': [{'address': '198.51.100.1', 'remote_as': 1}, {'address': '198.51.100.1', 'remote_as': 2}]},
     'neighbors[1].address: 198.51.100.1 is also given at neighbors[0]'),
    ({'neighbors': [{'name': 'bad-name', 'address': '198.51.100.1', 'remote_as': 1}]}, 'neighbors[0].name'),
    ({'bfd_interval': 5}, 'bfd_interval: 5 is out of range 10-10000 ms'),
    ({'bfd_multiplier': 1}, 'bfd_multiplier: 1 is out of range 2-255'),
    ({'health_table': 254}, "health_table: table 254 is the kernel's 'main' table"),
    ({'communities': ['65535:0']}, 'communities[0]: 65535:0 is GRACEFUL_SHUTDOWN'),
    ({'communities': ['64500:70000']}, 'at most 65535'),
    ({'communities': ['no-export']}, 'is not a community'),
    ({'prefixes': ['0.0.0.0/0']}, 'prefixes[0]: 0.0.0.0/0 is a default route'),
    ({'prefixes': ['192.0.2.1/24']}, 'host bits'),
    ({'prefixes': ['192.0.2.0/24', {'prefix': '192.0.2.0/24'}]}, 'prefixes[1].prefix: prefix 192.0.2.0/24 is also'),
    ({'error_wait_time': [30, 10]}, 'error_wait_time: the minimum 30 s is above the maximum 10 s'),
])
def test_refusals_name_the_parameter(extra, message):
    assert message in refused(**extra)


@pytest.mark.parametrize('password,what', [
    ('pa"ss', 'a double quote'), ("pa'ss", 'a quote'), ('pa}ss', 'a brace'), ('pa{ss', 'a brace'),
    ('pa;ss', 'a semicolon'), ('pa\nss', 'a newline'), ('pa\\ss', 'a backslash'), ('pa\x00ss', 'control'),
    ('pässword', 'non-ASCII'), ('x' * 81, 'at most 80'),
])
def test_passwords_that_could_escape_their_string_are_refused_and_never_quoted(password, what):
    message = refused(neighbors=[{'address': '198.51.100.1', 'remote_as': 1, 'password': password}])
    assert message.startswith('neighbors[0].password: ') and what in message
    assert password not in message


def test_role_names_replace_the_module_names():
    with pytest.raises(ParamError) as err:
        Speaker(params(local_as=0), {'local_as': 'bgp_local_as'})
    assert str(err.value).startswith('bgp_local_as: ')


def test_unserved_prefixes_are_refused_unless_allowed():
    import ipaddress
    speaker = Speaker(params(prefixes=['192.0.2.0/25', '198.51.100.0/24']))
    served = [ipaddress.ip_network('192.0.2.0/24')]
    with pytest.raises(ParamError) as err:
        speaker.check_served(served, False)
    assert 'prefixes[1]: 198.51.100.0/24 is not served by this host (not inside 192.0.2.0/24)' in str(err.value)
    speaker.check_served(served, True)


def test_the_rendered_configuration_exports_only_the_listed_prefixes_and_imports_nothing():
    text = Speaker(params(communities=['64512:1'], prefixes=[
        '192.0.2.0/24', {'prefix': '198.51.100.0/24', 'communities': ['64500:7', '64500:1:2']},
        '2001:db8:100::/64'])).render()
    bird_parses(text)
    assert 'import none;' in text and 'import all; export filter' not in text
    assert 'if proto != "anycast_health4" then reject;' in text
    assert 'if !(net ~ ANYCAST_PREFIXES4) then reject;' in text
    assert 'kernel table 4179;' in text and 'learn;' in text
    assert 'anycast_kernel' not in text                   # no kernel protocol exports anything
    assert 'bgp_large_community.add((64500, 1, 2));' in text
    assert 'if dest = RTD_UNREACHABLE then bgp_community.add((65535, 0));' in text
    assert text == Speaker(params(communities=['64512:1'], prefixes=[
        '192.0.2.0/24', {'prefix': '198.51.100.0/24', 'communities': ['64500:7', '64500:1:2']},
        '2001:db8:100::/64'])).render()


def test_every_option_renders_a_configuration_bird_accepts():
    text = Speaker(params(
        import_routes=True, bfd_interval=100, bfd_multiplier=3, error_wait_time=[1, 10],
        neighbors=[{'name': 'r1', 'address': '198.51.100.1', 'remote_as': 64500, 'password': 'se#cr$t',
                    'hold_time': 30, 'keepalive_time': 10},
                   {'address': '203.0.113.1', 'remote_as': 64501, 'multihop': 3, 'source_address': '198.51.100.11'},
                   {'address': '2001:db8:ffff::1', 'remote_as': 64500, 'bfd': False}],
        extra_config='protocol static operator_static { ipv4; }')).render()
    bird_parses(text)
    assert 'password "se#cr$t";' in text and 'password "********";' in mask_passwords(text)
    assert 'se#cr$t' not in mask_passwords(text)
    assert 'protocol kernel anycast_kernel4' in text and 'export where source = RTS_BGP' in text
    assert 'multihop 3;' in text and 'local 198.51.100.11 as 64512;' in text


def test_a_family_without_prefixes_exports_nothing_to_its_neighbours():
    text = Speaker(params(prefixes=['192.0.2.0/24'])).render()
    bird_parses(text)
    assert Speaker(params(prefixes=['192.0.2.0/24'])).unreachable_families() == []
    assert 'ipv6 { import none; export none; };' in text
    assert Speaker(params(prefixes=['192.0.2.0/24'], neighbors=[
        {'address': '2001:db8:ffff::1', 'remote_as': 1}])).unreachable_families() == [4]


# -- the bgp_plan filter --------------------------------------------------------------------------

def hostvars(**extra):
    base = {
        'bgp_local_as': 64512, 'bgp_router_id': '198.51.100.11',
        'bgp_neighbors': [{'address': '198.51.100.1', 'remote_as': 64500}],
        'transparent_proxy_routes': [{'destination': '192.0.2.0/25', 'origin': '10.0.0.1:80'},
                                     {'destination': '192.0.2.128/25', 'origin': '10.0.0.1:80'},
                                     {'destination': '2001:db8:100::/64', 'origin': '[2001:db8::1]:80'}],
        'edge_anyip_prefixes': ['198.51.100.53/32', '198.51.100.1/32'],
        'edge_tenants': [{'name': 'acme', 'prefixes': ['203.0.113.0/25'], 'mark': '0x100', 'table': 100},
                         {'name': 'gone', 'prefixes': ['203.0.113.128/25'], 'state': 'absent'}],
        'edge_gre_tunnels': [{'name': 'gre-acme', 'netns': 'tenant-acme', 'local': '198.51.100.1',
                              'remote': '10.0.0.9'}],
    }
    base.update(extra)
    return base


def test_by_default_everything_served_is_announced_each_with_its_checks():
    plan = bgp_plan(hostvars())
    assert plan['errors'] == []
    groups = dict((g['name'], g) for g in plan['health']['groups'])
    assert groups['proxy']['prefixes'] == ['192.0.2.0/24', '2001:db8:100::/64']   # collapsed destinations
    assert groups['proxy']['checks'] == [{'type': 'service', 'unit': 'anycast-proxy.service'},
                                         {'type': 'listen', 'address': '127.0.0.1', 'port': 1234},
                                         {'type': 'listen', 'address': '::1', 'port': 1234}]
    assert groups['tenant-acme']['checks'] == [{'type': 'netns', 'name': 'tenant-acme'},
                                               {'type': 'link', 'name': 'ae-acme'}]
    # The GRE endpoint is also an AnyIP prefix: it is gated by its tunnel's namespace, once.
    assert groups['gre-gre-acme']['prefixes'] == ['198.51.100.1/32']
    assert groups['anyip']['prefixes'] == ['198.51.100.53/32']
    assert 'tenant-gone' not in groups
    assert plan['speaker']['prefixes'] == ['192.0.2.0/24', '2001:db8:100::/64', '203.0.113.0/25',
                                           '198.51.100.1/32', '198.51.100.53/32']
    assert plan['health']['restore_unit'] == 'anycast-edge-restore.service'


def test_given_prefixes_join_the_group_that_serves_them_and_unserved_ones_name_the_variable():
    plan = bgp_plan(hostvars(bgp_prefixes=['192.0.2.0/25', {'prefix': '203.0.113.0/25', 'communities': ['1:2']}]))
    assert plan['errors'] == []
    assert [(g['name'], g['prefixes']) for g in plan['health']['groups']] == [
        ('proxy', ['192.0.2.0/25']), ('tenant-acme', ['203.0.113.0/25'])]
    plan = bgp_plan(hostvars(bgp_prefixes=['192.0.0.0/22']))
    assert plan['errors'] == ['bgp_prefixes[0]: 192.0.0.0/22 is not served by this host (not inside 192.0.2.0/24, '
                              '2001:db8:100::/64, 203.0.113.0/25, 198.51.100.1/32, 198.51.100.53/32); set '
                              'bgp_allow_unserved to announce it anyway']
    plan = bgp_plan(hostvars(bgp_prefixes=['192.0.0.0/22'], bgp_allow_unserved=True))
    assert plan['errors'] == [] and plan['health']['groups'] == [
        {'name': 'unserved', 'prefixes': ['192.0.0.0/22'], 'checks': []}]


def test_the_speakers_checks_name_role_variables():
    plan = bgp_plan(hostvars(bgp_neighbors=[{'address': '198.51.100.1', 'remote_as': 1, 'password': 'a;b'}]))
    assert len(plan['errors']) == 1 and plan['errors'][0].startswith('bgp_neighbors[0].password: contains a semicolon')
    assert bgp_plan(hostvars(bgp_bfd_multiplier=0))['errors'][0].startswith('bgp_bfd_multiplier: 0 is out of range')
    plan = bgp_plan(hostvars(bgp_health_checks={'nosuch': []}))
    assert plan['errors'][0].startswith('bgp_health_checks: no announced group is called nosuch')


def test_neighbour_defaults_are_inherited():
    plan = bgp_plan(hostvars(bgp_neighbor_defaults={'hold_time': 30, 'remote_as': 64500},
                             bgp_neighbors=[{'address': '198.51.100.1'}, {'address': '198.51.100.2', 'remote_as': 1}]))
    assert plan['errors'] == []
    assert [(n['hold_time'], n['remote_as']) for n in plan['speaker']['neighbors']] == [(30, 64500), (30, 1)]


def test_a_host_without_the_proxy_announces_its_other_prefixes():
    plan = bgp_plan(hostvars(transparent_proxy_routes=[]))
    assert [g['name'] for g in plan['health']['groups']] == ['tenant-acme', 'gre-gre-acme', 'anyip']


# -- BIRD's replies ------------------------------------------------------------------------------

PROTOCOLS = [
    ('2002', 'Name       Proto      Table      State  Since         Info'),
    ('1002', 'device1    Device     ---        up     2026-12-05 08:41:47.478  '),
    ('1002', 'bgp_r4     BGP        ---        up     2026-12-05 08:41:51.473  Established   '),
    ('1006', '  BGP state:          Established'),
    ('1006', '    Neighbor address: 10.0.1.1'),
    ('1006', '    Neighbor AS:      65000'),
    ('1006', '  Channel ipv4'),
    ('1006', '    State:          UP'),
    ('1006', '    Routes:         0 imported, 2 exported, 0 preferred'),
    ('1002', 'bgp_r6     BGP        ---        start  2026-12-05 08:42:00.001  Idle          BFD session down'),
    ('1006', '  BGP state:          Idle'),
    ('1006', '    Last error:       BFD session down'),
    ('0000', ''),
]


def test_protocols_are_parsed_with_their_state_since_and_routes():
    protocols = _bird.parse_protocols(PROTOCOLS)
    assert [p['name'] for p in protocols] == ['device1', 'bgp_r4', 'bgp_r6']
    r4, r6 = protocols[1], protocols[2]
    assert (r4['bgp_state'], r4['since'], r4['neighbor_address'], r4['neighbor_as']) == \
        ('Established', '2026-12-05 08:41:51.473', '10.0.1.1', '65000')
    assert r4['channels'] == {'ipv4': {'state': 'UP', 'imported': 0, 'exported': 2}}
    assert (r6['state'], r6['info'], r6['last_error']) == ('start', 'Idle          BFD session down',
                                                           'BFD session down')


def test_bfd_sessions_and_route_listings_are_parsed():
    assert _bird.parse_bfd_sessions([
        ('1020', 'anycast_bfd:'),
        ('1020', 'IP address                Interface  State      Since         Interval  Timeout'),
        ('1020', '10.0.1.1                  e1r        Up         08:41:48.233    0.100    0.500'),
        ('0000', '')]) == {'10.0.1.1': {'interface': 'e1r', 'state': 'Up', 'since': '08:41:48.233'}}
    assert _bird.parse_route_prefixes([
        ('1007', 'Table master4:'),
        ('1007', '192.0.2.0/24         blackhole [anycast_health4 2026-12-05 08:47:59] * (10)'),
        ('1007', '\tType: inherit univ'),
        ('0000', '')]) == ['192.0.2.0/24']


@pytest.mark.parametrize('extra', [
    {},
    {'communities': ['64512:1'], 'import_routes': True, 'error_wait_time': [1, 9], 'extra_config': 'protocol static x { ipv4; }\n\n',
     'prefixes': [{'prefix': '2001:db8:100::/64', 'communities': ['64500:100', '1:2:3']}, '192.0.2.0/24']},
    {'neighbors': [{'name': 'fra', 'address': '198.51.100.1', 'remote_as': 64500, 'password': 'x-y', 'keepalive_time': 3},
                   {'address': '2001:db8:ffff::1', 'remote_as': 1, 'multihop': 2, 'source_address': '2001:db8::5'},
                   {'address': '198.51.100.2', 'remote_as': 2, 'bfd': False}], 'bfd_interval': 300, 'health_table': 7},
])
def test_gathered_input_is_what_renders_the_file_again(extra):
    """parse_config (state=gathered) gives the canonical input of the file: it renders the same bytes, and
    a run whose file already is its own rendering (speaker_input, no parsing) reports the same input."""
    speaker = Speaker(params(**extra))
    text = speaker.render()
    gathered = _bgp.parse_config(text)
    assert gathered == _bgp.speaker_input(speaker)
    assert Speaker(gathered).render() == text


@pytest.mark.parametrize('edit', [lambda t: t.replace('hold time 9;', 'hold time  9;', 1),
                                  lambda t: t.replace('# BGP announcements', '# mine', 1),
                                  lambda t: t + 'protocol static y { ipv4; }\n'])
def test_a_file_not_written_as_is_is_not_gathered(edit):
    with pytest.raises(_bgp.NotRendered):
        _bgp.parse_config(edit(Speaker(params()).render()))
