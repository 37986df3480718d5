"""anycast.edge.gre_tunnel on a kernel with GRE, in a QEMU VM, through ansible-playbook.

Topology inside the VM (all network namespaces):

    cli (10.0.1.2) -- inet -- srv1 (anycast 192.0.2.1, AnyIP) -- ten1 (tenant, tunnel gre-acme)
                          |-- srv2 (anycast 192.0.2.1, AnyIP) -- ten2 (tenant, tunnel gre-acme)
                          `-- rtr (198.51.100.2, the tenant's router; 203.0.113.100 behind it)

srv1 and srv2 stand for two edge servers carrying the same tenant with the same
configuration. ``inet`` decides which server receives the tenant's prefix
(203.0.113.0/24) and which receives the router's GRE packets to the anycast
address, so the test can send each direction through either server.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from vm import vm_playbook

pytestmark = pytest.mark.vm

ANYCAST = '192.0.2.1'
ROUTER = '198.51.100.2'
TARGET = '203.0.113.100'
KEY = 42

SETUP = r'''
pair() {  # pair NS1 IF1 NS2 IF2 ADDR1 ADDR2
  ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
  ip -n "$1" addr add "$5" dev "$2"; ip -n "$3" addr add "$6" dev "$4"
  ip -n "$1" link set dev "$2" up; ip -n "$3" link set dev "$4" up
}
for ns in aeg-inet aeg-cli aeg-srv1 aeg-srv2 aeg-ten1 aeg-ten2 aeg-rtr; do
  ip netns add $ns
  ip -n $ns link set lo up
  # asymmetric paths (in through one server, back through the other) are the point
  ip netns exec $ns sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
     net.ipv4.conf.default.rp_filter=0
done
pair aeg-inet to-cli aeg-cli uplink 10.0.1.1/24 10.0.1.2/24
pair aeg-inet to-srv1 aeg-srv1 uplink 10.0.11.1/24 10.0.11.2/24
pair aeg-inet to-srv2 aeg-srv2 uplink 10.0.12.1/24 10.0.12.2/24
pair aeg-inet to-rtr aeg-rtr uplink 198.51.100.1/24 198.51.100.2/24
ip -n aeg-cli route add default via 10.0.1.1
for i in 1 2; do
  ip -n aeg-srv$i route add default via 10.0.1$i.1
  ip -n aeg-srv$i route add local 192.0.2.0/24 dev lo     # AnyIP: the anycast endpoint
  pair aeg-srv$i to-tenant aeg-ten$i veth0 10.1.$i.1/30 10.1.$i.2/30
  ip -n aeg-srv$i route add 203.0.113.0/24 via 10.1.$i.2  # what the tenant module's table does
  ip -n aeg-ten$i route add default via 10.1.$i.1
done
ip -n aeg-inet route add 203.0.113.0/24 via 10.0.11.2
ip -n aeg-inet route add 192.0.2.1/32 via 10.0.11.2
# the tenant's router: its end of the tunnel, and a service behind it
ip -n aeg-rtr route add 192.0.2.1/32 via 198.51.100.1
ip -n aeg-rtr link add gre-up type gre local 198.51.100.2 remote 192.0.2.1 key 42 ttl 64
ip -n aeg-rtr addr add 10.255.0.2/30 dev gre-up
ip -n aeg-rtr link set gre-up up
ip -n aeg-rtr addr add 203.0.113.100/32 dev lo
ip -n aeg-rtr route add default dev gre-up
ip netns exec aeg-rtr setsid socat TCP-LISTEN:8080,bind=203.0.113.100,fork,reuseaddr \
  SYSTEM:'echo hello-from-tenant' </dev/null >/dev/null 2>&1 &
'''

TEARDOWN = r'''
for ns in aeg-inet aeg-cli aeg-srv1 aeg-srv2 aeg-ten1 aeg-ten2 aeg-rtr; do
  ip netns pids $ns 2>/dev/null | xargs -r kill -9
  ip netns del $ns 2>/dev/null || true
done
'''


@pytest.fixture(scope='module')
def lab(gre_vm):
    gre_vm.script(SETUP)
    try:
        yield gre_vm
    finally:
        gre_vm.script(TEARDOWN, check=False)


def acme(server, **overrides):
    spec = {'name': 'gre-acme', 'netns': 'aeg-ten%d' % server, 'local': ANYCAST, 'remote': ROUTER,
            'key': KEY, 'address': '10.255.0.1/30', 'routes': ['203.0.113.0/24']}
    spec.update(overrides)
    return spec


def task(server, tunnels, **extra):
    args = {'netns': 'aeg-srv%d' % server, 'tunnels': tunnels}
    args.update(extra)
    return {'anycast.edge.gre_tunnel': args}


def ok(result):
    assert not result.get('failed'), result.get('msg', result)
    return result


def counters(machine):
    """Packet counters of the three tunnel ends, read in one go."""
    spots = [('aeg-ten1', 'gre-acme', 'tx'), ('aeg-ten2', 'gre-acme', 'tx'), ('aeg-ten1', 'gre-acme', 'rx'),
             ('aeg-ten2', 'gre-acme', 'rx'), ('aeg-rtr', 'gre-up', 'rx')]
    out = machine.run('; '.join('ip netns exec %s cat /sys/class/net/%s/statistics/%s_packets' % spot
                                for spot in spots)).stdout.split()
    return dict(((ns, which), int(value)) for (ns, _ifname, which), value in zip(spots, out))


def ensure_acme(machine):
    """Both servers carry the tunnel as acme() describes; a play only if they do not."""
    state = [link_json(machine, 'aeg-ten%d' % s, 'gre-acme') for s in (1, 2)]
    if all(link and link['mtu'] == 1476 and link['linkinfo']['info_data'].get('ttl') == 64
           and link['linkinfo']['info_data'].get('ikey') in ('0.0.0.42', '42') for link in state):
        return
    for result in vm_playbook(machine, [task(1, [acme(1)]), task(2, [acme(2)])]):
        ok(result)


def route_via(machine, prefix_server, anycast_server):
    """inet sends the tenant prefix to one server and GRE for the anycast address to another."""
    machine.run('ip -n aeg-inet route replace 203.0.113.0/24 via 10.0.1%d.2 && '
                'ip -n aeg-inet route replace 192.0.2.1/32 via 10.0.1%d.2' % (prefix_server, anycast_server))


def link_json(machine, ns, ifname):
    out = machine.run('ip -n %s -d -j link show dev %s' % (ns, ifname), check=False)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)[0]


def link_names(machine, ns):
    """Interface names of a namespace (the kernel's gre0/gretap0/erspan0 included)."""
    return sorted(link['ifname'] for link in json.loads(machine.run('ip -n %s -j link show' % ns).stdout))


def test_check_mode_then_apply_then_idempotent(lab):
    # check mode: a full prediction, nothing created anywhere
    predicted = vm_playbook(lab, [task(1, [acme(1)])], check=True, diff=True)[0]
    ok(predicted)
    assert predicted['changed'] is True
    assert "create tunnel 'gre-acme' in namespace 'aeg-ten1'" in predicted['actions'][0]
    assert 'aeg-ten1: gre-acme gre local 192.0.2.1 remote 198.51.100.2 ttl 64 key 42 mtu 1476' \
        in predicted['diff']['after']
    assert 'ANYCAST-MSS-gre-acme' in predicted['diff']['after']
    assert predicted['diff']['before'] == ''
    assert link_json(lab, 'aeg-ten1', 'gre-acme') is None
    assert link_names(lab, 'aeg-srv1') == link_names(lab, 'aeg-srv2')   # no temporary device either
    assert 'ANYCAST-MSS' not in lab.run('ip netns exec aeg-ten1 iptables-save').stdout

    first = vm_playbook(lab, [task(1, [acme(1)]), task(2, [acme(2)])], diff=True)
    for result in first:
        ok(result)
        assert result['changed'] is True
        assert result['corrected'] == []
    # the device lives in the tenant namespace, its underlay stays in the server's
    for server in (1, 2):
        link = link_json(lab, 'aeg-ten%d' % server, 'gre-acme')
        assert link is not None
        assert link['linkinfo']['info_kind'] == 'gre'
        data = link['linkinfo']['info_data']
        assert (data['local'], data['remote'], data['ttl'], link['mtu']) == (ANYCAST, ROUTER, 64, 1476)
        assert data['ikey'] in ('0.0.0.42', '42') and data['okey'] in ('0.0.0.42', '42')
        assert 'link_netnsid' in link, link      # underlay in another namespace
        assert link['ifalias'] == 'anycast.edge gre'
        assert 'UP' in link['flags']
        assert 'gre-acme' not in lab.run('ip -n aeg-srv%d link show' % server).stdout
        routes = lab.run('ip -n aeg-ten%d route show 203.0.113.0/24' % server).stdout
        assert 'dev gre-acme proto 172' in routes
        assert '10.255.0.1/30' in lab.run('ip -n aeg-ten%d addr show dev gre-acme' % server).stdout
        save = lab.run('ip netns exec aeg-ten%d iptables-save -t mangle' % server).stdout
        assert '-A FORWARD -o gre-acme' in save and '-j ANYCAST-MSS-gre-acme' in save
        assert '--clamp-mss-to-pmtu' in save

    again = vm_playbook(lab, [task(1, [acme(1)])], check=True, diff=True) + \
        vm_playbook(lab, [task(1, [acme(1)]), task(2, [acme(2)])])
    for result in again:
        ok(result)
        assert result['changed'] is False, result['actions']
        assert result['actions'] == []


def test_either_server_encapsulates_and_decapsulates(lab):
    """Client traffic for the tenant prefix enters through one server and is
    encapsulated to the router; the router's replies to the anycast address are
    decapsulated by whichever server the network hands them to."""
    ensure_acme(lab)
    for prefix_server, anycast_server in ((1, 1), (2, 2), (1, 2), (2, 1)):
        route_via(lab, prefix_server, anycast_server)
        ingress, egress = 'aeg-ten%d' % prefix_server, 'aeg-ten%d' % anycast_server
        other = 'aeg-ten%d' % (3 - anycast_server)
        before = counters(lab)
        lab.run('ip netns exec aeg-cli ping -c 3 -i 0.2 -W 5 %s' % TARGET)
        reply = lab.run('ip netns exec aeg-cli socat -T 10 - TCP:%s:8080 </dev/null' % TARGET).stdout
        assert 'hello-from-tenant' in reply, (prefix_server, anycast_server)
        after = counters(lab)
        where = (prefix_server, anycast_server, before, after)
        assert after[(ingress, 'tx')] >= before[(ingress, 'tx')] + 3, where
        assert after[('aeg-rtr', 'rx')] >= before[('aeg-rtr', 'rx')] + 3, where
        assert after[(egress, 'rx')] >= before[(egress, 'rx')] + 3, where
        # the other server decapsulated nothing of this exchange
        assert after[(other, 'rx')] == before[(other, 'rx')], where


def tunnel_path_mtu(machine):
    """The path MTU srv1's tenant namespace uses towards the target.

    The device MTU (1476) until the tunnel first sends; then the tunnel's own
    computation (1500 less IPv4 and GRE headers with the key: 1472), cached
    on the route.
    """
    machine.run('ip netns exec aeg-cli ping -c 1 -W 5 %s' % TARGET)
    text = machine.run('ip -n aeg-ten1 route get %s' % TARGET).stdout
    found = re.search(r'\bmtu (\d+)', text)
    return int(found.group(1)) if found else link_json(machine, 'aeg-ten1', 'gre-acme')['mtu']


def syn_mss_at_router(machine):
    """Open one TCP connection through srv1's tunnel; return the MSS the router sees in the SYN."""
    route_via(machine, 1, 1)
    machine.run('rm -f /tmp/aeg-syn.txt /tmp/aeg-syn.err; ip netns exec aeg-rtr setsid timeout 60 '
                'tcpdump -l -n -v -c 1 -i gre-up "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn" '
                '>/tmp/aeg-syn.txt 2>/tmp/aeg-syn.err </dev/null &')
    for _attempt in range(120):
        if 'listening on' in machine.run('cat /tmp/aeg-syn.err', check=False).stdout:
            break
        time.sleep(0.5)
    else:
        raise AssertionError('tcpdump did not start: %s' % machine.run('cat /tmp/aeg-syn.err', check=False).stdout)
    reply = machine.run('ip netns exec aeg-cli socat -T 10 - TCP:%s:8080 </dev/null' % TARGET).stdout
    assert 'hello-from-tenant' in reply
    for _attempt in range(120):
        text = machine.run('cat /tmp/aeg-syn.txt', check=False).stdout
        if 'mss' in text:
            break
        time.sleep(0.5)
    found = re.search(r'mss (\d+)', text)
    assert found, text
    return int(found.group(1))


def test_mss_clamped_to_the_tunnel_path_mtu(lab):
    ensure_acme(lab)
    # the client's SYN leaves it with MSS 1460 (1500-byte veth); through the
    # tunnel it must arrive clamped to the tunnel's path MTU less 40
    pmtu = tunnel_path_mtu(lab)
    assert pmtu <= 1476
    assert syn_mss_at_router(lab) == pmtu - 40
    off = ok(vm_playbook(lab, [task(1, [acme(1, mss_clamp=False)])], diff=True)[0])
    assert off['changed'] is True
    assert 'ANYCAST-MSS-gre-acme' in off['diff']['before'] and 'ANYCAST-MSS' not in off['diff']['after']
    assert 'ANYCAST-MSS-gre-acme' not in lab.run('ip netns exec aeg-ten1 iptables-save -t mangle').stdout
    assert syn_mss_at_router(lab) == 1460
    on = ok(vm_playbook(lab, [task(1, [acme(1)])])[0])
    assert on['changed'] is True
    assert syn_mss_at_router(lab) == tunnel_path_mtu(lab) - 40


def test_mss_clamped_in_nftables_with_driver_nft(lab):
    """driver: nft puts the clamp in inet anycast_edge_dp; through the real GRE tunnel the SYN arrives clamped."""
    ensure_acme(lab)
    ok(vm_playbook(lab, [task(1, [acme(1, mss_clamp=False)])])[0])      # the xtables chain goes first (docs/gre.md)
    predicted = ok(vm_playbook(lab, [task(1, [acme(1)], driver='nft')], check=True, diff=True)[0])
    assert predicted['changed'] is True
    assert 'ANYCAST-MSS' not in lab.run('ip netns exec aeg-ten1 nft list ruleset').stdout
    on = ok(vm_playbook(lab, [task(1, [acme(1)], driver='nft')])[0])
    assert on['changed'] is True and on['driver'] == 'nft'
    table = lab.run('ip netns exec aeg-ten1 nft list table inet anycast_edge_dp').stdout
    assert 'ANYCAST-MSS-gre-acme' in table and 'maxseg size set rt mtu' in table, table
    assert 'ANYCAST-MSS' not in lab.run('ip netns exec aeg-ten1 iptables-save -t mangle').stdout
    assert syn_mss_at_router(lab) == tunnel_path_mtu(lab) - 40
    assert ok(vm_playbook(lab, [task(1, [acme(1)], driver='nft')])[0])['changed'] is False
    ok(vm_playbook(lab, [task(1, [acme(1, mss_clamp=False)], driver='nft')])[0])
    assert 'ANYCAST-MSS' not in lab.run('ip netns exec aeg-ten1 nft list ruleset').stdout
    assert syn_mss_at_router(lab) == 1460
    ok(vm_playbook(lab, [task(1, [acme(1)])])[0])       # back to the xtables clamp the other tests read


def test_drift_is_corrected(lab):
    ensure_acme(lab)
    lab.run('ip -n aeg-ten1 link set gre-acme mtu 1400')
    lab.run('ip -n aeg-ten1 route del 203.0.113.0/24 dev gre-acme')
    fixed = ok(vm_playbook(lab, [task(1, [acme(1)])])[0])
    assert fixed['changed'] is True
    assert any('set mtu 1476' in a for a in fixed['actions']), fixed['actions']
    assert any('route 203.0.113.0/24' in a for a in fixed['actions']), fixed['actions']
    assert link_json(lab, 'aeg-ten1', 'gre-acme')['mtu'] == 1476
    # a changed key (or endpoint) means a new tunnel: recreated, still in the tenant namespace
    changed = ok(vm_playbook(lab, [task(1, [acme(1, key=7, ttl=32)])])[0])
    assert any('recreate' in a for a in changed['actions']), changed['actions']
    link = link_json(lab, 'aeg-ten1', 'gre-acme')
    assert link['linkinfo']['info_data']['ttl'] == 32
    assert link['linkinfo']['info_data']['ikey'] in ('0.0.0.7', '7')
    assert 'link_netnsid' in link
    assert 'dev gre-acme proto 172' in lab.run('ip -n aeg-ten1 route show 203.0.113.0/24').stdout


def test_bad_input_changes_nothing(lab):
    ensure_acme(lab)
    before = lab.run('ip -n aeg-srv1 -d link; ip -n aeg-ten1 -d link; ip -n aeg-ten1 addr; ip -n aeg-ten1 route; '
                     'ip netns exec aeg-ten1 iptables-save -t mangle | grep -v "^#"').stdout
    cases = [
        (acme(1, name='gre-acme-too-long'), 'tunnels[0].name', 'at most 15'),
        (acme(1, remote=ANYCAST), 'tunnels[0].remote', 'same as local'),
        (acme(1, key=2 ** 32), 'tunnels[0].key', 'out of range'),
        (acme(1, remote='2001:db8::2'), 'tunnels[0].remote', 'same address family'),
    ]
    # each bad entry comes with a good change that must not be applied either
    tasks = [task(1, [acme(1, mtu=1400, name='gre-ok'), dict(bad)], purge=True) for bad, _p, _t in cases]
    results = vm_playbook(lab, tasks)
    for result, (_bad, param, text) in zip(results, cases):
        assert result.get('failed'), result
        assert result['msg'].startswith(param.replace('[0]', '[1]')), result['msg']
        assert text in result['msg'], result['msg']
    after = lab.run('ip -n aeg-srv1 -d link; ip -n aeg-ten1 -d link; ip -n aeg-ten1 addr; ip -n aeg-ten1 route; '
                    'ip netns exec aeg-ten1 iptables-save -t mangle | grep -v "^#"').stdout
    assert after == before


def test_purge_and_absent_remove_only_our_tunnels(lab):
    ensure_acme(lab)
    # a GRE device somebody else made in the tenant namespace
    lab.run('ip -n aeg-ten1 link add gre-other type gre local 10.1.1.2 remote 10.9.9.9')
    purged = vm_playbook(lab, [task(1, [], purge=True)], diff=True)[0]
    ok(purged)
    assert purged['changed'] is True
    assert purged['actions'][0] == "delete tunnel 'gre-acme' in namespace 'aeg-ten1' (purge)"
    assert 'gre-acme' in purged['diff']['before'] and 'gre-acme' not in purged['diff']['after']
    assert link_json(lab, 'aeg-ten1', 'gre-acme') is None
    assert link_json(lab, 'aeg-ten1', 'gre-other') is not None
    assert 'ANYCAST-MSS' not in lab.run('ip netns exec aeg-ten1 iptables-save -t mangle').stdout
    # srv2's tunnel (underlay srv2) is not srv1's to purge
    assert link_json(lab, 'aeg-ten2', 'gre-acme') is not None
    assert ok(vm_playbook(lab, [task(1, [], purge=True)])[0])['changed'] is False

    # renamed with purge: the old device goes first, so the new one can have the same endpoints and key
    renamed = ok(vm_playbook(lab, [task(2, [acme(2, name='gre-acme2')], purge=True)])[0])
    assert renamed['changed'] is True
    assert link_json(lab, 'aeg-ten2', 'gre-acme') is None
    assert link_json(lab, 'aeg-ten2', 'gre-acme2')['linkinfo']['info_data']['local'] == ANYCAST
    save = lab.run('ip netns exec aeg-ten2 iptables-save -t mangle').stdout
    assert 'ANYCAST-MSS-gre-acme2' in save and not re.search(r'ANYCAST-MSS-gre-acme\b', save)

    gone = {'name': 'gre-acme2', 'netns': 'aeg-ten2', 'state': 'absent'}
    removed = vm_playbook(lab, [task(2, [gone])], check=True)[0]
    assert ok(removed)['changed'] is True
    assert link_json(lab, 'aeg-ten2', 'gre-acme2') is not None
    removed = ok(vm_playbook(lab, [task(2, [gone])])[0])
    assert removed['changed'] is True
    assert link_json(lab, 'aeg-ten2', 'gre-acme2') is None
    assert '203.0.113.0/24' not in lab.run('ip -n aeg-ten2 route').stdout
    assert 'ANYCAST-MSS' not in lab.run('ip netns exec aeg-ten2 iptables-save -t mangle').stdout
    again = ok(vm_playbook(lab, [task(2, [gone])])[0])
    assert again['changed'] is False
    lab.run('ip -n aeg-ten1 link del gre-other')


def test_ipv6_underlay(lab):
    """IPv6 endpoints give an ip6gre tunnel, read back (key flags included) like an IPv4 one."""
    lab.run('ip -n aeg-srv1 -6 route replace local 2001:db8:a::/64 dev lo')
    gre6 = {'name': 'gre6-acme', 'netns': 'aeg-ten1', 'local': '2001:db8:a::1', 'remote': '2001:db8:b::2',
            'key': 7, 'mtu': 1448, 'address': '2001:db8:ffff::1/64', 'routes': ['2001:db8:cafe::/48']}
    first, second = vm_playbook(lab, [task(1, [gre6]), task(1, [gre6])])
    assert ok(first)['changed'] is True and first['corrected'] == []
    assert ok(second)['changed'] is False, second['actions']
    link = link_json(lab, 'aeg-ten1', 'gre6-acme')
    assert link['linkinfo']['info_kind'] == 'ip6gre'
    data = link['linkinfo']['info_data']
    assert (data['local'], data['remote'], link['mtu']) == ('2001:db8:a::1', '2001:db8:b::2', 1448)
    assert data['ikey'] in ('0.0.0.7', '7') and data['okey'] in ('0.0.0.7', '7')
    assert 'link_netnsid' in link
    assert 'dev gre6-acme proto 172' in lab.run('ip -n aeg-ten1 -6 route show 2001:db8:cafe::/48').stdout
    save = lab.run('ip netns exec aeg-ten1 ip6tables-save -t mangle').stdout
    assert '-o gre6-acme' in save and '--clamp-mss-to-pmtu' in save
    # read back after writing: ip6gre ignores an MTU it cannot take, without an error; the module
    # sees it, tries once more (the kernel refuses now) and reports both
    big = dict(gre6, name='gre6-big', key=8, mtu=65535, address=None, routes=[])
    too_big = vm_playbook(lab, [task(1, [gre6, big])])[0]
    assert too_big.get('failed'), too_big
    msg = too_big['msg']
    assert 'read-back after writing does not match' in msg, msg
    assert re.search(r"'gre6-big' in namespace 'aeg-ten1': mtu is \d+, expected 65535", msg), msg
    assert 'correcting it failed' in msg and 'gre6-acme' not in msg, msg
    absent = [{'name': name, 'netns': 'aeg-ten1', 'state': 'absent'} for name in ('gre6-acme', 'gre6-big')]
    gone = ok(vm_playbook(lab, [task(1, absent)])[0])
    assert gone['changed'] is True
    assert link_json(lab, 'aeg-ten1', 'gre6-acme') is None
    assert link_json(lab, 'aeg-ten1', 'gre6-big') is None
    assert 'ANYCAST-MSS' not in lab.run('ip netns exec aeg-ten1 ip6tables-save -t mangle').stdout


def test_edge_info_and_gathered_read_an_ipv6_tunnel_as_gre_tunnel_wrote_it(lab):
    """edge_info reads tunnels with gre_tunnel's own reader: an ip6gre tunnel's IPv6 endpoints and key (it
    once read the IPv4 attributes for every tunnel), and only tunnels whose underlay is this host namespace
    (srv2's tunnels are not srv1's). gathered, given back as input, changes nothing."""
    ensure_acme(lab)
    lab.run('ip -n aeg-srv1 -6 route replace local 2001:db8:a::/64 dev lo')
    gre6 = {'name': 'gre6-info', 'netns': 'aeg-ten1', 'local': '2001:db8:a::1', 'remote': '2001:db8:b::2',
            'key': 9, 'mtu': 1448, 'address': '2001:db8:ffff::1/64', 'routes': ['2001:db8:cafe::/48']}
    try:
        made, info, gathered = vm_playbook(lab, [
            task(1, [gre6]),
            {'anycast.edge.edge_info': {'netns': 'aeg-srv1', 'drift': False}},
            {'anycast.edge.gre_tunnel': {'netns': 'aeg-srv1', 'state': 'gathered'}},
        ])
        ok(made)
        by_name = dict(((t['netns'], t['name']), t) for t in ok(info)['tunnels'])
        tunnel = by_name[('aeg-ten1', 'gre6-info')]
        assert (tunnel['kind'], tunnel['local'], tunnel['remote'], tunnel['key'], tunnel['mtu']) == \
            ('ip6gre', '2001:db8:a::1', '2001:db8:b::2', 9, 1448), tunnel
        assert tunnel['addresses'] == ['2001:db8:ffff::1/64']
        assert by_name[('aeg-ten1', 'gre-acme')]['local'] == ANYCAST
        assert ('aeg-ten2', 'gre-acme') not in by_name          # its underlay is srv2
        tunnels = ok(gathered)['gathered']['tunnels']
        assert dict(gre6, ttl=64) in [dict(t, ttl=t.get('ttl', 64)) for t in tunnels], tunnels
        again = ok(vm_playbook(lab, [task(1, tunnels)])[0])
        assert again['changed'] is False and again['commands'] == [], again['commands']
    finally:
        vm_playbook(lab, [task(1, [{'name': 'gre6-info', 'netns': 'aeg-ten1', 'state': 'absent'}])])


def test_tunnel_in_a_tenant_made_by_the_tenant_module(lab):
    """The whole Magic Transit path on a third server: anycast.edge.tenant marks the
    tenant's prefix into its namespace (firewall included), anycast.edge.gre_tunnel
    carries it from there to the router and back."""
    lab.script(r'''
ip netns add aeg-srv3
ip -n aeg-srv3 link set lo up
ip netns exec aeg-srv3 sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
ip link add to-srv3 netns aeg-inet type veth peer name uplink netns aeg-srv3
ip -n aeg-inet addr add 10.0.13.1/24 dev to-srv3; ip -n aeg-srv3 addr add 10.0.13.2/24 dev uplink
ip -n aeg-inet link set dev to-srv3 up; ip -n aeg-srv3 link set dev uplink up
ip -n aeg-srv3 route add default via 10.0.13.1
ip -n aeg-srv3 route add local 192.0.2.0/24 dev lo
''')
    try:
        tenant = {'name': 'acme', 'netns': 'aeg-t3', 'prefixes': ['203.0.113.0/24'], 'mark': '0x3',
                  'table': 103, 'firewall': {'policy': 'drop', 'rules': [
                      'ip daddr 203.0.113.100 tcp dport 8080 accept', 'icmp type echo-request accept']}}
        results = vm_playbook(lab, [
            {'anycast.edge.tenant': {'netns': 'aeg-srv3', 'tenants': [tenant]}},
            task(3, [acme(3, netns='aeg-t3')]),
        ])
        for result in results:
            ok(result)
        link = link_json(lab, 'aeg-t3', 'gre-acme')
        assert link is not None and 'link_netnsid' in link
        route_via(lab, 3, 3)
        lab.run('ip netns exec aeg-cli ping -c 2 -W 5 %s' % TARGET)
        reply = lab.run('ip netns exec aeg-cli socat -T 10 - TCP:%s:8080 </dev/null' % TARGET).stdout
        assert 'hello-from-tenant' in reply
        assert counter_of(lab, 'aeg-t3', 'gre-acme', 'rx') >= 2
        # the tenant's firewall still applies in front of the tunnel
        refused = lab.run('ip netns exec aeg-cli socat -T 3 - TCP:%s:8081,connect-timeout=3 </dev/null'
                          % TARGET, check=False)
        assert refused.returncode != 0
        removed = vm_playbook(lab, [
            task(3, [{'name': 'gre-acme', 'netns': 'aeg-t3', 'state': 'absent'}]),
            {'anycast.edge.tenant': {'netns': 'aeg-srv3', 'tenants': [dict(tenant, state='absent')]}},
        ])
        for result in removed:
            assert ok(result)['changed'] is True
        assert 'aeg-t3' not in lab.run('ip netns list').stdout
    finally:
        lab.script('ip netns del aeg-t3 2>/dev/null || true; ip netns del aeg-srv3', check=False)
        route_via(lab, 1, 1)


def counter_of(machine, ns, ifname, which):
    out = machine.run('ip netns exec %s cat /sys/class/net/%s/statistics/%s_packets' % (ns, ifname, which))
    return int(out.stdout.strip())
