"""A whole machine reboots and returns, by itself, to the state the collection applied.

In the QEMU VM (a GRE-capable kernel, systemd as PID 1) the VM's own network
namespace is the host: AnyIP routes, TPROXY and rate-limit chains, a tenant
with its namespace, policy routing and nftables firewall, and an anycast GRE
tunnel in it, then the edge_restore role. After `systemctl reboot` every object
is back, in the order the restore unit applies them, and edge_info sees no
drift from the records.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vm as vmlib  # noqa: E402

pytestmark = pytest.mark.vm

STATE = r'''
{
ip -4 route show table local proto 172
iptables-save -t mangle | grep -E '^(:ANYCAST|:AE-|-A)'
iptables-save -t filter | grep -E '^(:RATE-LIMIT|-A)'
ip rule show | grep 'lookup 110'
ip route show table 110
ip netns list | grep -o '^tenant-acme'
ip netns exec tenant-acme nft --stateless list table inet anycast_edge
ip netns exec tenant-acme ip -d link show gre-acme | grep -oE 'gre remote [0-9.]+ local [0-9.]+ ttl [0-9]+'
ip netns exec tenant-acme ip -4 addr show dev gre-acme | grep -o 'inet [0-9./]*'
ip netns exec tenant-acme ip route show proto 172
ip netns exec tenant-acme iptables-save -t mangle | grep -E '^(:ANYCAST-MSS|-A)'
} | sed 's/ \[[0-9]*:[0-9]*\]$//' | LC_ALL=C sort
'''

EDGE = [
    {'anycast.edge.anyip_route': {'prefixes': ['192.0.2.0/24']}},
    {'anycast.edge.tproxy_rule': {'rules': [{'destination': '192.0.2.0/24', 'ports': '8000-8100',
                                             'on_port': 1234}]}},
    # port 22 stays out of the scope: Ansible reaches the VM over SSH
    {'anycast.edge.hashlimit': {'protocol': 'tcp', 'ports': [8000], 'rate': '100/sec', 'burst': 50}},
    {'anycast.edge.tenant': {'tenants': [{
        'name': 'acme', 'prefixes': ['203.0.113.0/24'], 'mark': '0x10', 'table': 110,
        'firewall': {'policy': 'drop', 'rules': ['ip daddr 203.0.113.100 tcp dport 20-21 accept']}}]}},
    {'anycast.edge.gre_tunnel': {'tunnels': [{
        'name': 'gre-acme', 'netns': 'tenant-acme', 'local': '192.0.2.1', 'remote': '198.51.100.2',
        'address': '10.255.0.1/30', 'routes': ['203.0.113.0/24']}]}},
    {'ansible.builtin.include_role': {'name': 'anycast.edge.edge_restore'}},
]


@pytest.fixture(scope='module')
def machine():
    vmlib.require_vm()
    with vmlib.VM(vmlib.ensure_image(), name='aeg-reboot', allow_reboot=True) as booted:
        with booted.ansible_workdir('aeg-ansible-'):
            yield booted


def test_a_reboot_restores_every_recorded_object_before_anything_else(machine):
    for result in vmlib.vm_playbook(machine, EDGE, roles=True):
        assert not result.get('failed'), result.get('msg', result)
    before = machine.script(STATE).stdout
    assert 'gre remote 198.51.100.2 local 192.0.2.1' in before and 'RATE-LIMIT' in before, before
    records = machine.run('ls /etc/anycast-edge/state').stdout.split()
    assert sorted(r for r in records if r.endswith('.json')) == [
        'anyip_route@host.json', 'gre_tunnel@host@tenant-acme_gre-acme.json',
        'hashlimit@host@RATE-LIMIT.json', 'tenant@host@acme.json', 'tproxy_rule@host@ANYCAST-TPROXY.json']

    machine.run('systemctl reboot', check=False)
    time.sleep(5)  # let the old sshd go before polling for the new one
    machine.wait_for_ssh(time.monotonic() + 300)
    machine.run('systemctl is-system-running --wait', check=False, timeout=300)
    unit = machine.run('systemctl show anycast-edge-restore.service --property=ActiveState,Result').stdout
    assert 'ActiveState=active' in unit and 'Result=success' in unit, unit
    after = machine.script(STATE).stdout
    assert after == before

    (info,) = vmlib.vm_playbook(machine, [{'anycast.edge.edge_info': {}}])
    assert not info.get('failed'), info.get('msg')
    assert not [key for key, report in info['drift'].items() if report['drifted']], info['drift']
    assert [t['name'] for t in info['tunnels']] == ['gre-acme']
