"""_networkd: which of the collection's routes and rules systemd-networkd would delete.

The per-version expectations are what networkd 247, 252 and 257 (Debian 11, 12, 13) did in
containers (molecule/networkd shows it end to end): routes of a managed uplink go in every
version; the loopback's only with 257; policy rules never with 247, with 252 when a managed
link other than lo is configured, with 257 for any managed link.
"""

import os

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _networkd as nd

LO = {'state': 'configured', 'loopback': True, 'keep_configuration': 'no'}
UPLINK = {'state': 'configured', 'loopback': False, 'keep_configuration': 'no'}
TENANT = {'state': 'unmanaged', 'loopback': False, 'keep_configuration': 'no'}
ROUTES = [{'prefix': '192.0.2.0/24', 'dev': 'lo'}, {'prefix': '198.18.0.0/24', 'dev': 'up0'},
          {'prefix': '203.0.113.0/24', 'dev': 'ae-acme'}]
RULES = [{'family': 'ipv4', 'fwmark': '0x10', 'fwmask': '0xff', 'table': 110}]
DEFAULTS = {'manage_foreign_routes': True, 'manage_foreign_rules': True}


def prefixes(risk):
    return sorted(route['prefix'] for route in risk['routes'])


@pytest.mark.parametrize('version, links, routes, rules', [
    (247, {'lo': LO, 'up0': UPLINK, 'ae-acme': TENANT}, ['198.18.0.0/24'], 0),
    (247, {'lo': LO}, [], 0),
    (252, {'lo': LO, 'up0': UPLINK, 'ae-acme': TENANT}, ['198.18.0.0/24'], 1),
    (252, {'lo': LO}, [], 0),
    (257, {'lo': LO, 'up0': UPLINK, 'ae-acme': TENANT}, ['192.0.2.0/24', '198.18.0.0/24'], 1),
    (257, {'lo': LO}, ['192.0.2.0/24'], 1),
    (257, {'up0': dict(UPLINK, state='unmanaged')}, [], 0),
    (None, {'lo': LO}, ['192.0.2.0/24'], 1),  # unknown version: judged like the newest read
])
def test_what_each_version_deletes_without_the_guard(version, links, routes, rules):
    risk = nd.at_risk(version, DEFAULTS, links, ROUTES, RULES)
    assert prefixes(risk) == routes
    assert len(risk['rules']) == rules


@pytest.mark.parametrize('version', [247, 252, 257])
def test_the_guard_leaves_everything(version):
    links = {'lo': LO, 'up0': UPLINK}
    risk = nd.at_risk(version, {'manage_foreign_routes': False, 'manage_foreign_rules': False}, links, ROUTES, RULES)
    assert risk['routes'] == [] and risk['rules'] == []
    assert risk['triggers']  # the links are still managed; only the settings make the difference


def test_keep_configuration_per_version():
    keep_static = dict(UPLINK, keep_configuration='static')
    keep_yes = dict(UPLINK, keep_configuration='yes')
    assert nd.drops_on(252, keep_static) == (True, True)
    assert nd.drops_on(257, keep_static) == (True, False)
    assert nd.drops_on(257, keep_yes) == (False, False)
    assert nd.drops_on(252, keep_yes) == (False, False)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        handle.write(text)


def test_config_precedence_main_file_then_dropins_by_name(tmp_path):
    etc, usr = str(tmp_path / 'etc'), str(tmp_path / 'usr')
    write(usr + '/networkd.conf', '[Network]\nManageForeignRoutes=no\n')
    write(etc + '/networkd.conf', '[Network]\n#ManageForeignRoutes=yes\n')
    write(usr + '/networkd.conf.d/10-a.conf', '[Network]\nManageForeignRoutes=no\n')
    write(etc + '/networkd.conf.d/10-a.conf', '[Network]\nManageForeignRoutes=yes\n')  # hides usr's 10-a
    write(usr + '/networkd.conf.d/99-anycast-edge.conf', '[Network]\nManageForeignRoutingPolicyRules=off\n')
    write(etc + '/networkd.conf.d/README', 'not a .conf file')
    files = nd.config_files(roots=(etc, usr))
    assert files == [etc + '/networkd.conf', etc + '/networkd.conf.d/10-a.conf',
                     usr + '/networkd.conf.d/99-anycast-edge.conf']
    assert nd.settings(files) == {'manage_foreign_routes': True, 'manage_foreign_rules': False}


def test_options_outside_the_network_section_do_not_count(tmp_path):
    path = str(tmp_path / 'x.conf')
    write(path, '[DHCPv4]\nManageForeignRoutes=no\n[Network]\nSpeedMeter=yes\n')
    assert nd.settings([path]) == DEFAULTS


def test_keep_configuration_of_a_network_file(tmp_path):
    path = str(tmp_path / '10-up.network')
    write(path, '[Match]\nName=up0\n[Network]\nKeepConfiguration=static\n')
    assert nd.keep_configuration(path) == 'static'
    write(path, '[Network]\nKeepConfiguration=true\n')
    assert nd.keep_configuration(path) == 'yes'
    assert nd.keep_configuration(None) == 'no'


# As networkctl of 247 and 257 print them (252 looks like 247).
LIST = """  1 lo    loopback routable   configured
  2 up1   ether    off        unmanaged
  3 up0   ether    no-carrier configured
  5 ae-acme ether  routable   unmanaged
"""
PAD = ' ' * 24  # 247 pads the header line with spaces
STATUS_247 = """\u25cf 1: lo%s
                     Link File: n/a
                  Network File: /etc/systemd/network/10-lo.network
                          Type: loopback

\u25cf 3: up0%s
                     Link File: n/a
                  Network File: /etc/systemd/network/20-up.network
""" % (PAD, PAD)
STATUS_257 = """\u25cf 1: lo
                   Link File: n/a
                Network File: /etc/systemd/network/10-lo.network

\u25cf 3: up0
                Network File: n/a
"""


def test_networkctl_output_of_each_version():
    links = nd.parse_list(LIST)
    assert sorted(n for n, l in links.items() if l['state'] in nd.MANAGED) == ['lo', 'up0']
    assert links['lo']['loopback'] and not links['up0']['loopback']
    assert nd.parse_network_files(STATUS_247) == {'lo': '/etc/systemd/network/10-lo.network',
                                                  'up0': '/etc/systemd/network/20-up.network'}
    assert nd.parse_network_files(STATUS_257) == {'lo': '/etc/systemd/network/10-lo.network', 'up0': None}


def test_a_host_without_systemd_reports_networkd_off(monkeypatch):
    monkeypatch.setattr(nd.shutil, 'which', lambda name: None)
    calls = []
    out, warnings = nd.report(calls.append)
    assert out['active'] is False and out['enabled'] is False and warnings == [] and calls == []
