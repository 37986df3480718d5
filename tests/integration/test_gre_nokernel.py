"""anycast.edge.gre_tunnel on this machine's kernel, which has no GRE.

The full behaviour is shown in the QEMU VM (tests/vm/test_gre_vm.py); here:
the module refuses with a sentence naming the missing kernel support, bad
input is refused naming the parameter, and in every case nothing changes in
any namespace and no namespace is created.
"""

from __future__ import annotations

import difflib
import os

import pytest

import helpers

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
NS_PREFIX = helpers.ns_prefix('aeg')


def kernel_has_gre():
    """ip_gre loaded, built in, or installable for the running kernel."""
    if os.path.isdir('/sys/module/ip_gre'):
        return True
    for index in ('modules.builtin', 'modules.dep'):
        try:
            with open('/lib/modules/%s/%s' % (os.uname().release, index)) as handle:
                if '/ip_gre.ko' in handle.read():
                    return True
        except OSError:
            continue
    return False


HAS_GRE = kernel_has_gre()


def my_namespaces():
    # other engineers' tests create namespaces at the same time: only ours count
    return [ns for ns in helpers.netns_list() if ns.startswith(NS_PREFIX)]


def links(ns):
    return helpers.nsexec(ns, ['ip', '-d', 'link', 'show']).stdout


def snapshot(namespaces):
    return {ns: helpers.kernel_state(ns) + links(ns) + helpers.nsexec(ns, ['ip', 'addr']).stdout
            for ns in namespaces}


def assert_unchanged(before, namespaces):
    """Every namespace's kernel state as before; on failure, show what differs."""
    after = snapshot(namespaces)
    for ns in namespaces:
        if after[ns] != before[ns]:
            lines = difflib.unified_diff(before[ns].splitlines(), after[ns].splitlines(), 'before', 'after',
                                         lineterm='')
            diff = '\n'.join(lines)
            raise AssertionError('namespace %s changed:\n%s' % (ns, diff))


@pytest.fixture
def edge(netns_factory):
    """A host namespace with an anycast address, and a tenant namespace."""
    host = netns_factory()
    tenant = netns_factory()
    helpers.nsexec(host, ['ip', 'route', 'add', 'local', '192.0.2.0/24', 'dev', 'lo', 'src', '127.0.0.1'])
    return host, tenant


def tunnel(tenant, **overrides):
    spec = {'name': 'gre-acme', 'netns': tenant, 'local': '192.0.2.1', 'remote': '198.51.100.2',
            'key': 42, 'address': '10.255.0.1/30', 'routes': ['203.0.113.0/24']}
    spec.update(overrides)
    return spec


@pytest.mark.skipif(HAS_GRE, reason='not applicable: this kernel has GRE, the no-GRE path cannot be shown here')
def test_kernel_without_gre_fails_naming_it_and_changes_nothing(edge):
    host, tenant = edge
    namespaces_before = my_namespaces()
    state_before = snapshot([host, tenant])
    task = {'anycast.edge.gre_tunnel': {'netns': host, 'tunnels': [tunnel(tenant)]}}
    applied, checked = helpers.run_playbook([task]), helpers.run_playbook([task], check=True)
    for result in (applied[0], checked[0]):
        assert result.get('failed'), result
        msg = result['msg']
        assert 'no GRE support' in msg and 'ip_gre' in msg and 'CONFIG_NET_IPGRE' in msg, msg
        assert 'nothing was changed' in msg, msg
    # the apply run really asked the kernel, and says what it answered
    assert 'the kernel said' in applied[0]['msg'], applied[0]['msg']
    assert_unchanged(state_before, [host, tenant])
    assert my_namespaces() == namespaces_before


def test_removing_needs_no_gre_and_changes_nothing(edge):
    host, tenant = edge
    state_before = snapshot([host, tenant])
    results = helpers.run_playbook([
        {'anycast.edge.gre_tunnel': {'netns': host,
                                     'tunnels': [{'name': 'gre-acme', 'netns': tenant, 'state': 'absent'}]}},
        {'anycast.edge.gre_tunnel': {'netns': host, 'tunnels': [], 'purge': True}},
    ])
    for result in results:
        helpers.ok(result)
        assert result['changed'] is False, result
        assert result['actions'] == [], result
    assert_unchanged(state_before, [host, tenant])


BAD_INPUT = [
    ({'name': 'gre-a-very-long-name'}, 'tunnels[0].name', 'at most 15'),
    ({'remote': '192.0.2.1'}, 'tunnels[0].remote', 'same as local'),
    ({'key': 4294967296}, 'tunnels[0].key', 'out of range 0-4294967295'),
    ({'key': -1}, 'tunnels[0].key', 'out of range 0-4294967295'),
    ({'remote': '2001:db8::2'}, 'tunnels[0].remote', 'same address family'),
    ({'ttl': 256}, 'tunnels[0].ttl', 'out of range 0-255'),
    ({'mtu': 40}, 'tunnels[0].mtu', 'out of range 68-65507'),
    ({'mtu': 65535}, 'tunnels[0].mtu', 'out of range 68-65507'),
    ({'address': '10.255.0.1'}, 'tunnels[0].address', 'prefix length'),
    ({'routes': ['203.0.113.1/24']}, 'tunnels[0].routes[0]', 'host bits'),
    ({'local': 'not-an-address'}, 'tunnels[0].local', 'not a valid'),
    ({'netns': 'aeg-no-such-tenant'}, 'tunnels[0].netns', 'does not exist'),
]


def test_bad_input_is_refused_naming_the_parameter(edge):
    host, tenant = edge
    namespaces_before = my_namespaces()
    state_before = snapshot([host, tenant])
    tasks = [{'anycast.edge.gre_tunnel': {'netns': host, 'tunnels': [tunnel(tenant, **override)]}}
             for override, _param, _text in BAD_INPUT]
    # two tunnels the kernel could not tell apart
    tasks.append({'anycast.edge.gre_tunnel': {'netns': host, 'tunnels': [
        tunnel(tenant), tunnel(tenant, name='gre-acme2', routes=[])]}})
    # a host namespace that does not exist is not created
    tasks.append({'anycast.edge.gre_tunnel': {'netns': 'aeg-no-such-host', 'tunnels': [tunnel(tenant)]}})
    results = helpers.run_playbook(tasks) + helpers.run_playbook(tasks, check=True)
    expected = [(param, text) for _o, param, text in BAD_INPUT]
    expected += [('tunnels[1]', 'could not tell the two tunnels apart'), ('netns', 'does not exist')]
    for result, (param, text) in zip(results, expected * 2):
        assert result.get('failed'), result
        assert result['msg'].startswith(param), (param, result['msg'])
        assert text in result['msg'], (text, result['msg'])
    assert_unchanged(state_before, [host, tenant])
    assert my_namespaces() == namespaces_before
