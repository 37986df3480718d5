"""anyip_route's input checks, lockout guard and plan (no kernel needed)."""

from __future__ import annotations

import ipaddress

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _anyip
from ansible_collections.anycast.edge.plugins.module_utils import _validate as v
from ansible_collections.anycast.edge.plugins.module_utils._netlink import ROUTE_PROTO

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
        _anyip.check_lockout(networks, client and addr(client), [addr(g) for g in gateways], ' of this host')
    assert str(err.value).startswith(param + ': ') and words in str(err.value), str(err.value)
    assert 'lockout_guard: false' in str(err.value)


def test_lockout_guard_lets_unrelated_prefixes_through():
    _anyip.check_lockout([net('192.0.2.0/24'), net('2001:db8::/64')], addr('198.51.100.7'),
                         [addr('203.0.113.1'), addr('2001:db8:1::1')])


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
