"""anyip_route's input checks, lockout guard and plan (no kernel needed)."""

from __future__ import annotations

import ipaddress

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _anyip
from ansible_collections.anycast.edge.plugins.module_utils import _validate as v
from ansible_collections.anycast.edge.plugins.module_utils._netlink import ROUTE_PROTO, Address

net = ipaddress.ip_network
addr = ipaddress.ip_address


@pytest.mark.parametrize('prefix, words', [
    ('0.0.0.0/0', 'is a default route'),
    ('::/0', 'is a default route'),
    ('127.0.0.0/8', 'is the loopback range 127.0.0.0/8'),
    ('127.0.0.1/32', 'lies in the loopback range'),
    ('96.0.0.0/3', 'contains the loopback range 127.0.0.0/8'),
    ('0.0.0.0/8', 'unspecified'),
    ('::/128', 'is the unspecified address'),
    ('::1/128', 'is the loopback address'),
    ('169.254.0.0/16', 'link-local'),
    ('fe80::/64', 'lies in the link-local range fe80::/10'),
    ('224.0.0.0/4', 'multicast'),
    ('239.1.1.0/24', 'multicast'),
    ('ff02::/16', 'multicast'),
    ('255.255.255.255/32', 'broadcast'),
    ('::ffff:192.0.2.0/120', 'lies in the IPv4-mapped IPv6 range ::ffff:0:0/96'),
    ('::/64', 'contains the'),            # :: itself, ::1 and the v4-mapped range
])
def test_special_prefixes_are_refused_naming_the_parameter(prefix, words):
    with pytest.raises(v.ParamError) as err:
        v.check_unicast_prefix(net(prefix), 'prefixes[3]')
    assert str(err.value).startswith('prefixes[3]: %s ' % net(prefix)) and words in str(err.value), str(err.value)


@pytest.mark.parametrize('prefix', ['192.0.2.0/24', '198.51.100.1/32', '2001:db8::/32', '10.0.0.0/8',
                                    '192.0.0.0/3', '2000::/3'])
def test_unicast_prefixes_pass(prefix):
    assert v.check_unicast_prefix(net(prefix), 'prefixes[0]') == net(prefix)


def test_the_ssh_client_comes_from_ssh_connection_or_ssh_client():
    assert v.ssh_client_address({'SSH_CONNECTION': '198.51.100.7 50022 192.0.2.1 22'}) == addr('198.51.100.7')
    assert v.ssh_client_address({'SSH_CLIENT': '198.51.100.8 50022 22'}) == addr('198.51.100.8')
    assert v.ssh_client_address({'SSH_CONNECTION': '::ffff:198.51.100.9 1 ::ffff:192.0.2.1 22'}) == \
        addr('198.51.100.9')
    assert v.ssh_client_address({'SSH_CLIENT': '2001:db8::7 50022 22'}) == addr('2001:db8::7')
    assert v.ssh_client_address({}) is None and v.ssh_client_address({'SSH_CLIENT': 'garbage'}) is None


@pytest.mark.parametrize('client, gateways, param, words', [
    ('198.51.100.7', [], 'prefixes[1]', '198.51.100.0/24 contains 198.51.100.7, the address of the SSH client'),
    (None, ['203.0.113.1'], 'prefixes[0]', '203.0.113.0/24 contains 203.0.113.1, the IPv4 default gateway'),
    (None, ['2001:db8:1::1'], 'prefixes[2]', 'the IPv6 default gateway'),
    ('2001:db8:1::99', [], 'prefixes[2]', 'SSH client'),
])
def test_lockout_guard_names_the_prefix_and_what_it_contains(client, gateways, param, words):
    networks = [net('203.0.113.0/24'), net('198.51.100.0/24'), net('2001:db8:1::/64')]
    with pytest.raises(v.ParamError) as err:
        _anyip.check_lockout(networks, client and addr(client), [(addr(g), None) for g in gateways], ' of this host')
    assert str(err.value).startswith(param + ': ') and words in str(err.value), str(err.value)
    assert 'lockout_guard: false' in str(err.value)


def test_lockout_guard_lets_unrelated_prefixes_through():
    _anyip.check_lockout([net('192.0.2.0/24'), net('2001:db8::/64')], addr('198.51.100.7'),
                         [(addr('203.0.113.1'), None), (addr('2001:db8:1::1'), None)])


def addresses(*specs):
    """Address objects as RawRtnl.addresses() reads them: (ifindex, 'address/len'[, peer])."""
    found = []
    for spec in specs:
        iface = ipaddress.ip_interface(spec[1])
        found.append(Address(spec[0], iface.version, iface.network.prefixlen, 0, str(iface.ip),
                             spec[2] if len(spec) > 2 else None))
    return found


CONNECTED = _anyip.connected_subnets(addresses(
    (1, '127.0.0.1/8'), (1, '192.0.2.77/24'),          # loopback's subnets have no neighbours
    (2, '10.77.0.1/24'), (2, '2001:db8:77::1/64'),
    (3, '203.0.113.5/32'),                              # a host prefix: only the host's own address
    (4, '100.64.0.1/32', '100.64.0.2'),                 # point to point: the peer is the neighbour
), {1: 'lo', 2: 'qa0', 3: 'qa1', 4: 'ppp0'})


@pytest.mark.parametrize('prefix, words', [
    ('10.77.0.0/24', '10.77.0.0/24 overlaps 10.77.0.0/24, the subnet connected to qa0 (10.77.0.1/24)'),
    ('10.77.0.128/25', 'overlaps 10.77.0.0/24'),
    ('10.0.0.0/8', 'overlaps 10.77.0.0/24'),
    ('10.77.0.2/32', 'overlaps 10.77.0.0/24'),        # a neighbour
    ('10.77.0.255/32', 'overlaps 10.77.0.0/24'),      # the subnet's broadcast address
    ('2001:db8:77::/48', 'the subnet connected to qa0 (2001:db8:77::1/64)'),
    ('100.64.0.2/32', 'overlaps 100.64.0.2/32, the subnet connected to ppp0 (100.64.0.1/32)'),
    ('198.18.0.0/15', 'the gateway of the route to 198.18.5.0/24'),
])
def test_lockout_guard_refuses_prefixes_over_connected_subnets_and_any_gateway(prefix, words):
    connected, local = CONNECTED
    with pytest.raises(v.ParamError) as err:
        _anyip.check_lockout([net(prefix)], None, [(addr('198.18.1.1'), '198.18.5.0/24')], '', connected, local)
    assert str(err.value).startswith('prefixes[0]: ') and words in str(err.value), str(err.value)
    assert 'lockout_guard: false' in str(err.value)


@pytest.mark.parametrize('prefix', ['10.77.0.1/32', '2001:db8:77::1/128', '192.0.2.0/24', '203.0.113.0/24',
                                    '100.64.0.1/32', '10.78.0.0/16'])
def test_lockout_guard_lets_the_hosts_own_addresses_and_neighbourless_subnets_through(prefix):
    connected, local = CONNECTED
    _anyip.check_lockout([net(prefix)], None, [], '', connected, local)


def test_a_preferred_source_must_be_local_in_a_route_that_stays():
    current = {r.key: r for r in (local_route('127.0.0.0/8', 2), local_route('198.51.100.0/24', ROUTE_PROTO))}
    state = _anyip.AnyipState(current, None)
    desired = [local_route('192.0.2.0/24', ROUTE_PROTO)]
    _anyip.check_source('127.0.0.1', state, _anyip.plan_routes(state, desired, True, False))
    _anyip.check_source('198.51.100.9', state, _anyip.plan_routes(state, desired, True, False))
    for src, purge in (('192.0.2.1', False), ('198.51.100.9', True)):
        with pytest.raises(v.ParamError) as err:
            _anyip.check_source(src, state, _anyip.plan_routes(state, desired, True, purge))
        assert str(err.value).startswith('src: %s is not an address of this host' % src)


@pytest.mark.parametrize('value, param', [('fe80::%lo/64', 'prefixes[0]'), ('2001:db8::%eth0/64', 'prefixes[0]')])
def test_a_zone_index_is_refused_naming_the_parameter(value, param):
    with pytest.raises(v.ParamError) as err:
        v.parse_prefix(value, param)
    assert str(err.value).startswith("%s: '%s' has a zone index" % (param, value))
    with pytest.raises(v.ParamError):
        v.parse_address(value.split('/')[0], 'src')


@pytest.mark.parametrize('name, words', [
    ('MARK', 'xtables target or match'), ('NFLOG', 'xtables target or match'), ('TPROXY', 'target or match'),
    ('ACCEPT', 'verdict'), ('INPUT', 'built-in'), ('mark', 'target or match'), ('Hashlimit', 'target or match'),
    ('ERROR', 'target or match'), ('RATE-LIMIT\n', 'control character'),
    ('AE-TENANT-web', 'anycast.edge.tenant owns'), ('ANYCAST-MSS-gre1', 'anycast.edge.gre_tunnel owns'),
])
def test_chain_names_of_extensions_builtins_and_other_modules_are_refused(name, words):
    with pytest.raises(v.ParamError) as err:
        v.check_chain_name(name, 'chain')
    assert str(err.value).startswith('chain: ') and words in str(err.value), str(err.value)


def test_the_chain_prefixes_are_the_ones_the_owning_modules_use():
    from ansible_collections.anycast.edge.plugins.module_utils import _gre, _tenant_spec
    assert dict(v.MODULE_CHAIN_PREFIXES) == {_tenant_spec.XT_CHAIN_PREFIX: 'tenant', _gre.MSS_CHAIN_PREFIX: 'gre_tunnel'}
    for name in ('ANYCAST-TPROXY', 'RATE-LIMIT', 'EDGE-WEB', 'AE-TENANT', 'MARKS'):
        assert v.check_chain_name(name, 'chain') == name


def local_route(prefix, proto):
    return _anyip.AnyipRoute(net(prefix), 1, '127.0.0.1' if ':' not in prefix else None, proto)


def plan(current, desired, present, purge):
    """plan_routes over a state holding CURRENT; its (add, replace, remove, adopt)."""
    made = _anyip.plan_routes(_anyip.AnyipState(current, None), desired, present, purge)
    return made.add, made.replace, made.remove, made.adopt


def test_plan_never_adopts_or_removes_the_kernels_own_routes():
    current = {r.key: r for r in (local_route('127.0.0.0/8', 2), local_route('192.0.2.10/32', 2),
                                  local_route('198.51.100.0/24', ROUTE_PROTO))}
    desired = [local_route('192.0.2.10/32', ROUTE_PROTO), local_route('203.0.113.0/24', ROUTE_PROTO)]
    add, replace, remove, adopt = plan(current, desired, present=True, purge=True)
    assert [str(r.network) for r in add] == ['203.0.113.0/24']
    assert replace == [] and adopt == []
    # purge removes only what the collection owns: never 127.0.0.0/8 or an interface's address
    assert [str(r.network) for r in remove] == ['198.51.100.0/24']
    made = _anyip.plan_routes(_anyip.AnyipState(current, None), desired, True, True)
    assert [str(r.network) for r in made.kernel] == ['192.0.2.10/32']
    # an empty list with purge: still only ours
    assert [str(r.network) for r in plan(current, [], True, True)[2]] == ['198.51.100.0/24']
    # state absent of a kernel-held prefix removes nothing
    assert plan(current, [local_route('192.0.2.10/32', ROUTE_PROTO)], False, False)[2] == []


def test_plan_still_adopts_a_route_someone_added_by_hand():
    current = {r.key: r for r in (local_route('192.0.2.0/24', 3),)}   # proto boot: `ip route add` by hand
    add, replace, _remove, adopt = plan(current, [local_route('192.0.2.0/24', ROUTE_PROTO)], True, False)
    assert add == [] and [str(n.network) for n, _o in replace] == ['192.0.2.0/24'] and len(adopt) == 1
