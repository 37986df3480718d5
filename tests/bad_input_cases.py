"""Every invalid input the modules refuse: the single list behind docs/bad-input.md.

Each case is (module, arguments, parameter named in the message, words of the
message). Arguments may use the placeholders HOST (the namespace standing in
for the host) and TENANT (an existing second namespace); the message shown in
the document uses the same placeholders. tests/integration/test_bad_input.py
runs every case and checks that nothing changed; scripts/gen_bad_input_doc.py
writes the document from the same runs.
"""

from __future__ import annotations

R4 = '192.0.2.0/24'
R6 = '2001:db8::/64'


def _tproxy(**rule):
    return {'rules': [dict({'destination': R4, 'on_port': 1234}, **rule)]}


def _tenant(name='acme', mark='0x10', table=110, prefixes=(R4,), **extra):
    return dict({'name': name, 'mark': mark, 'table': table, 'prefixes': list(prefixes)}, **extra)


def _gre(**extra):
    return {'tunnels': [dict({'name': 'gre-acme', 'netns': 'TENANT', 'local': '192.0.2.1',
                              'remote': '198.51.100.7', 'address': '10.255.0.1/30'}, **extra)]}


def _bgp(neighbor=None, **extra):
    base = {'local_as': 64512, 'router_id': '192.0.2.1', 'prefixes': [R4], 'served_prefixes': [R4],
            'neighbors': [dict({'address': '198.51.100.1', 'remote_as': 64500}, **(neighbor or {}))]}
    base.update(extra)
    return base


CASES = [
    # anyip_route
    ('anyip_route', {'prefixes': ['192.0.2.0/33']}, 'prefixes[0]', 'not a valid'),
    ('anyip_route', {'prefixes': ['not-a-prefix']}, 'prefixes[0]', 'not a valid'),
    ('anyip_route', {'prefixes': ['192.0.2.1/24']}, 'prefixes[0]', 'host bits'),
    ('anyip_route', {'prefixes': ['2001:db8::1/64']}, 'prefixes[0]', 'host bits'),
    ('anyip_route', {'prefixes': [R4, R4]}, 'prefixes[1]', 'also given'),
    ('anyip_route', {'prefixes': [R4], 'src': '::1'}, 'src', 'expected IPv4'),
    ('anyip_route', {'prefixes': [R4], 'src': 'localhost'}, 'src', 'not a valid'),
    ('anyip_route', {'prefixes': [R4], 'device': 'nosuchdevice0'}, 'device', 'does not exist'),
    ('anyip_route', {'prefixes': [R4], 'device': 'a-very-long-ifname'}, 'device', 'at most 15'),
    ('anyip_route', {'prefixes': [R4], 'state': 'gone'}, 'state', 'must be one of'),
    ('anyip_route', {'prefixes': [R4], 'confirm_timeout': -1}, 'confirm_timeout', 'out of range'),
    ('anyip_route', {'prefixes': [R4], 'netns': 'ae9-no-such-ns'}, 'netns', 'does not exist'),
    ('anyip_route', {'prefixes': ['0.0.0.0/0']}, 'prefixes[0]', 'default route'),
    ('anyip_route', {'prefixes': [R4, '::/0'], 'lockout_guard': False}, 'prefixes[1]', 'default route'),
    ('anyip_route', {'prefixes': ['127.0.0.0/8']}, 'prefixes[0]', 'is the loopback range'),
    ('anyip_route', {'prefixes': ['127.0.0.0/8'], 'state': 'absent'}, 'prefixes[0]', 'loopback'),
    ('anyip_route', {'prefixes': ['96.0.0.0/3']}, 'prefixes[0]', 'contains the loopback range'),
    ('anyip_route', {'prefixes': ['::1/128']}, 'prefixes[0]', 'loopback'),
    ('anyip_route', {'prefixes': ['0.0.0.0/32']}, 'prefixes[0]', 'unspecified'),
    ('anyip_route', {'prefixes': ['::/128']}, 'prefixes[0]', 'unspecified'),
    ('anyip_route', {'prefixes': ['224.0.0.0/24']}, 'prefixes[0]', 'multicast'),
    ('anyip_route', {'prefixes': ['ff05::/16']}, 'prefixes[0]', 'multicast'),
    ('anyip_route', {'prefixes': ['169.254.0.0/16']}, 'prefixes[0]', 'link-local'),
    ('anyip_route', {'prefixes': ['fe80::/64']}, 'prefixes[0]', 'link-local'),
    ('anyip_route', {'prefixes': ['::ffff:192.0.2.0/120']}, 'prefixes[0]', 'IPv4-mapped'),
    ('anyip_route', {'prefixes': ['198.51.100.0/24'],
                     '_env': {'SSH_CONNECTION': '198.51.100.2 50022 198.51.100.1 22'}}, 'prefixes[0]', 'SSH client'),
    ('anyip_route', {'prefixes': [R4, '2001:db8:5::/64'], '_env': {'SSH_CLIENT': '2001:db8:5::2 50022 22'}},
     'prefixes[1]', 'SSH client'),
    # HOST's default gateways (see test_bad_input.give_default_routes): 198.18.0.1 and 2001:db8:ff::1
    ('anyip_route', {'prefixes': ['198.18.0.0/24']}, 'prefixes[0]', 'IPv4 default gateway'),
    ('anyip_route', {'prefixes': [R4, '2001:db8:ff::/64']}, 'prefixes[1]', 'IPv6 default gateway'),
    # anyip_route, issue 18 (HOST's aegw0 has 198.18.0.2/24 and 2001:db8:ff::2/64)
    ('anyip_route', {'prefixes': ['198.18.0.128/25']}, 'prefixes[0]',
     'subnet connected to aegw0'),
    ('anyip_route', {'prefixes': ['2001:db8:ff::/56']}, 'prefixes[0]', 'IPv6 default gateway'),
    ('anyip_route', {'prefixes': ['2001:db8:ff::8/125']}, 'prefixes[0]', 'subnet connected to aegw0'),
    ('anyip_route', {'prefixes': [R4], 'src': '0.0.0.0'}, 'src', 'not a unicast address'),
    ('anyip_route', {'prefixes': [R4], 'src': '192.0.2.1'}, 'src', 'not an address of this host'),
    ('anyip_route', {'prefixes': ['fe80::%lo/64']}, 'prefixes[0]', 'zone index'),
    ('anyip_route', {'prefixes': ['2001:db8::%lo/64']}, 'prefixes[0]', 'zone index'),
    # tproxy_rule
    ('tproxy_rule', _tproxy(on_port=0), 'rules[0].on_port', 'out of range'),
    ('tproxy_rule', _tproxy(on_port=65536), 'rules[0].on_port', 'out of range'),
    ('tproxy_rule', {'rules': [{'destination': R4}]}, 'on_port', 'missing required'),
    ('tproxy_rule', _tproxy(ports=0), 'rules[0].ports', 'out of range'),
    ('tproxy_rule', _tproxy(ports=[80, 65536]), 'rules[0].ports[1]', 'out of range'),
    ('tproxy_rule', _tproxy(ports='90-80'), 'rules[0].ports', 'ends before'),
    ('tproxy_rule', _tproxy(ports='80,443'), 'rules[0].ports', 'as a list'),
    ('tproxy_rule', _tproxy(destination=R6, on_ip='127.0.0.1'), 'rules[0].on_ip', 'IPv4 but destination'),
    ('tproxy_rule', _tproxy(on_ip='::1'), 'rules[0].on_ip', 'IPv6 but destination'),
    ('tproxy_rule', _tproxy(destination='192.0.2.5/24'), 'rules[0].destination', 'host bits'),
    ('tproxy_rule', _tproxy(mark='0x1/0x1/1'), 'rules[0].mark', 'not a mark'),
    ('tproxy_rule', _tproxy(mark='0x3/0x1'), 'rules[0].mark', 'outside its mask'),
    ('tproxy_rule', _tproxy(protocol='sctp'), 'protocol', 'must be one of'),
    ('tproxy_rule', {'chain': 'A' * 29, 'rules': []}, 'chain', 'at most 28'),
    ('tproxy_rule', {'chain': 'PREROUTING', 'rules': []}, 'chain', 'built-in'),
    ('tproxy_rule', {'chain': 'bad chain', 'rules': []}, 'chain', 'not a valid chain name'),
    ('tproxy_rule', dict(_tproxy(), driver='libiptc'), 'driver', 'must be one of'),
    # tproxy_rule, issue 18
    ('tproxy_rule', {'chain': 'MARK', 'rules': []}, 'chain', 'xtables target or match'),
    ('tproxy_rule', {'chain': 'NFLOG', 'rules': []}, 'chain', 'xtables target or match'),
    ('tproxy_rule', {'chain': 'TPROXY', 'rules': []}, 'chain', 'xtables target or match'),
    ('tproxy_rule', {'chain': 'ANYCAST-TPROXY\n', 'rules': []}, 'chain', 'control character'),
    ('tproxy_rule', {'chain': 'AE-TENANT-rza', 'rules': []}, 'chain', 'anycast.edge.tenant owns'),
    ('tproxy_rule', {'chain': 'AE-TENANT-web', 'state': 'absent'}, 'chain', 'anycast.edge.tenant owns'),
    ('tproxy_rule', {'chain': 'ANYCAST-MSS-gre1', 'rules': []}, 'chain', 'anycast.edge.gre_tunnel owns'),
    ('tproxy_rule', _tproxy(destination='fe80::%lo/64'), 'rules[0].destination', 'zone index'),
    ('tproxy_rule', _tproxy(destination=R6, on_ip='::ffff:127.0.0.1'), 'rules[0].on_ip', 'IPv4 address written'),
    ('tproxy_rule', _tproxy(destination='::ffff:192.0.2.0/120', on_ip='::1'), 'rules[0].destination',
     'IPv4-mapped'),
    ('tproxy_rule', {'rules': [_tproxy()['rules'][0], _tproxy()['rules'][0]]}, 'rules[1]', 'same rule as rules[0]'),
    ('tproxy_rule', {'rules': [_tproxy()['rules'][0], _tproxy(destination='192.0.2.0/25', ports=80,
                                                              on_port=8080)['rules'][0]]},
     'rules[1]', 'never reached'),
    ('tproxy_rule', dict(_tproxy(), driver='python-iptables'), 'driver', 'nf_tables variant'),
    # hashlimit
    ('hashlimit', {'rate': 'fast'}, 'rate', 'not a rate'),
    ('hashlimit', {'burst': 0}, 'burst', 'out of range'),
    ('hashlimit', {'burst': 10001}, 'burst', 'out of range'),
    ('hashlimit', {'srcmask': 33, 'family': 'ipv4'}, 'srcmask', 'IPv4'),
    ('hashlimit', {'srcmask': 64}, 'srcmask', 'with family both'),
    ('hashlimit', {'dstmask': {'ipv6': 129}}, 'dstmask.ipv6', 'at most 128'),
    ('hashlimit', {'name': 'x' * 255}, 'name', 'at most 254'),
    ('hashlimit', {'name': 'a/b'}, 'name', 'not a valid'),
    ('hashlimit', {'mode': ['srcip', 'dst']}, 'mode[1]', 'not one of'),
    ('hashlimit', {'mode': []}, 'mode', 'at least one'),
    ('hashlimit', {'match': 'syn', 'protocol': 'udp'}, 'protocol', 'must be tcp'),
    ('hashlimit', {'ports': [80]}, 'ports', 'protocol tcp or udp'),
    ('hashlimit', {'protocol': 'tcp', 'ports': list(range(1, 40, 2))}, 'ports', 'multiport'),
    ('hashlimit', {'destinations': [R4, R4]}, 'destinations[1]', 'listed twice'),
    ('hashlimit', {'exempt': ['192.0.2.1/24']}, 'exempt[0]', 'host bits'),
    ('hashlimit', {'exempt': ['0.0.0.0/0']}, 'exempt[0]', 'limit nobody'),
    ('hashlimit', {'exempt': ['2001:db8::/32', '::/1', '8000::/1'], 'family': 'ipv6'}, 'exempt[2]', 'limit nobody'),
    ('hashlimit', {'log': {'prefix': 'p' * 30}}, 'log.prefix', 'at most 29'),
    ('hashlimit', {'log': {'rate': 'often'}}, 'log.rate', 'not a rate'),
    ('hashlimit', {'htable_max': 100, 'htable_size': 200}, 'htable_size', 'at most htable_max'),
    ('hashlimit', {'htable_max': 2000000}, 'htable_max', 'out of range'),
    ('hashlimit', {'chain': 'INPUT'}, 'chain', 'built-in'),
    # hashlimit, issue 18
    ('hashlimit', {'chain': 'MARK'}, 'chain', 'xtables target or match'),
    ('hashlimit', {'chain': 'NFLOG'}, 'chain', 'xtables target or match'),
    ('hashlimit', {'chain': 'RATE-LIMIT\n'}, 'chain', 'control character'),
    ('hashlimit', {'chain': 'AE-TENANT-rza'}, 'chain', 'anycast.edge.tenant owns'),
    ('hashlimit', {'exempt': ['::/0'], 'family': 'ipv4'}, 'exempt[0]', 'exempt nothing'),
    ('hashlimit', {'destinations': ['2001:db8::%lo/64']}, 'destinations[0]', 'zone index'),
    ('hashlimit', {'action': 'tarpit'}, 'action', 'must be one of'),
    ('hashlimit', {'protocol': 'tcp', 'ports': 22, 'ssh_guard': 'fail',
                   '_env': {'SSH_CONNECTION': '198.51.100.2 50022 198.51.100.1 22'}}, 'exempt', 'SSH connection'),
    # driver: nft (tproxy_rule, hashlimit): options only the iptables drivers have, nftables' own limits
    ('tproxy_rule', dict(_tproxy(on_port=0), driver='nft'), 'rules[0].on_port', 'out of range'),
    ('hashlimit', {'driver': 'nft', 'htable_size': 1024}, 'htable_size', 'iptables drivers only'),
    ('hashlimit', {'driver': 'nft', 'htable_gcinterval': 500}, 'htable_gcinterval', 'iptables drivers only'),
    ('hashlimit', {'driver': 'nft', 'htable_expire': 1500}, 'htable_expire', 'whole seconds'),
    ('hashlimit', {'driver': 'nft', 'htable_max': 0}, 'htable_max', 'out of range'),
    ('hashlimit', {'driver': 'nft', 'name': 'n' * 250}, 'name', 'driver: nft names its sets'),
    # hashlimit synproxy (driver: nft, issue 17, h17syn)
    ('hashlimit', {'driver': 'nft', 'protocol': 'tcp', 'ports': [443], 'synproxy': {'ports': [443]}}, 'match',
     'cannot go with synproxy'),
    ('hashlimit', {'driver': 'nft', 'match': 'syn', 'synproxy': {'ports': [443], 'mss': 0}}, 'synproxy.mss',
     'out of range'),
    ('hashlimit', {'driver': 'nft', 'match': 'syn', 'synproxy': {'ports': [443], 'mss': 65496}}, 'synproxy.mss',
     'out of range'),
    ('hashlimit', {'driver': 'nft', 'match': 'syn', 'synproxy': {'ports': [443], 'wscale': 15}}, 'synproxy.wscale',
     'out of range'),
    ('hashlimit', {'driver': 'nft', 'match': 'syn', 'synproxy': {'ports': [443], 'wscale': -1}}, 'synproxy.wscale',
     'out of range'),
    ('hashlimit', {'driver': 'nft', 'match': 'syn', 'synproxy': {'mss': 1460}}, 'synproxy', 'ports'),
    ('hashlimit', {'driver': 'nft', 'match': 'syn', 'synproxy': {'ports': [0]}}, 'synproxy.ports[0]', 'out of range'),
    ('hashlimit', {'driver': 'nft', 'match': 'syn', 'synproxy': {'ports': []}}, 'synproxy.ports', 'at least one'),
    ('hashlimit', {'match': 'syn', 'synproxy': {'ports': [443]}}, 'synproxy', 'driver: nft only'),
    ('hashlimit', {'driver': 'nft', 'match': 'syn', 'ports': [80, 443], 'synproxy': {'ports': [8443]}},
     'synproxy.ports', 'outside the limited ports'),
    ('hashlimit', {'driver': 'iptables', 'match': 'syn', 'synproxy': {'ports': [443]}}, 'synproxy',
     'driver: nft only'),
    ('hashlimit', {'driver': 'python-iptables', 'match': 'syn', 'synproxy': {'ports': [443]}}, 'synproxy',
     'driver: nft only'),
    ('hashlimit', {'driver': 'nft', 'match': 'syn', 'htable_max': 0, 'synproxy': {'ports': [443]}}, 'htable_max',
     'out of range'),
    # conntrack_sizing
    ('conntrack_sizing', {}, 'expected_connections', 'missing'),
    ('conntrack_sizing', {'expected_connections': 0}, 'expected_connections', 'at least 1'),
    ('conntrack_sizing', {'expected_connections': 1000, 'headroom': 0.5}, 'headroom', 'at least 1'),
    # conntrack_sizing, issue 18 (h18tenant)
    ('conntrack_sizing', {'expected_connections': 1000, 'headroom': 'inf'}, 'headroom', 'finite'),
    ('conntrack_sizing', {'expected_connections': 1000, 'headroom': 1e308}, 'headroom', 'at most 1000'),
    ('conntrack_sizing', {'expected_connections': 1000, 'headroom': 'nan'}, 'headroom', 'finite'),
    ('conntrack_sizing', {'expected_connections': 2000000000, 'headroom': 2}, 'expected_connections',
     'more connections than the kernel can track'),
    ('conntrack_sizing', {'expected_connections': True}, 'expected_connections', 'expected a number'),
    ('conntrack_sizing', {'expected_connections': 1000, 'sysctl_file': '/etc'}, 'sysctl_file', 'is a directory'),
    ('conntrack_sizing', {'state': 'absent', 'sysctl_file': '/etc/'}, 'sysctl_file', 'is a directory'),
    ('conntrack_sizing', {'expected_connections': 1000, 'sysctl_file': 'conntrack.conf'}, 'sysctl_file',
     'relative path'),
    # tenant
    ('tenant', {'tenants': [_tenant(name='verylongname')]}, 'tenants[0].name', 'at most'),
    ('tenant', {'tenants': [_tenant(), _tenant(name='b', table=111, prefixes=['198.51.100.0/24'])]},
     'tenants[1].mark', 'also used by tenants[0]'),
    ('tenant', {'tenants': [_tenant(), _tenant(name='b', mark='0x11', prefixes=['198.51.100.0/24'])]},
     'tenants[1].table', 'also used by tenants[0]'),
    ('tenant', {'tenants': [_tenant(), _tenant(name='b', mark='0x11', table=111, prefixes=['192.0.2.128/25'])]},
     'tenants[1].prefixes[0]', 'overlaps'),
    ('tenant', {'tenants': [_tenant(table=254)]}, 'tenants[0].table', "'main' table"),
    ('tenant', {'tenants': [_tenant(mark='0')]}, 'tenants[0].mark', 'must not be 0'),
    ('tenant', {'tenants': [_tenant(prefixes=['192.0.2.1/24'])]}, 'tenants[0].prefixes[0]', 'host bits'),
    ('tenant', {'tenants': [_tenant(link={'host_if': 'a-very-long-ifname'})]}, 'tenants[0].link.host_if', 'at most 15'),
    ('tenant', {'tenants': [_tenant(firewall={'rules': ['accept; flush ruleset']})]},
     'tenants[0].firewall.rules[0]', "';'"),
    ('tenant', {'tenants': [_tenant(firewall={'rules': ['ip daddr 192.0.2.300 accept']})]},
     'tenants[0].firewall.rules[0]', '192.0.2.300'),
    # tenant, issue 18 (h18tenant): names with a newline, statements that are not rules, link pools
    ('tenant', {'tenants': [_tenant(name='rzq\n', link={'host_if': 'ae9-rzq', 'tenant_if': 'ae9-rzq-t'})]},
     'tenants[0].name', 'not a tenant name'),
    ('tenant', {'tenants': [_tenant(netns='ae9-rzq\n')]}, 'tenants[0].netns', 'control character'),
    ('tenant', {'tenants': [_tenant(link={'host_if': 'ae9-rzq\n', 'tenant_if': 'ae9-rzq-t'})]},
     'tenants[0].link.host_if', 'control character'),
    ('tenant', {'tenants': [_tenant(firewall={'rules': ['include "/etc/passwd"']})]},
     'tenants[0].firewall.rules[0]', "'include' is not a rule"),
    ('tenant', {'tenants': [_tenant(firewall={'rules': ['define ssh = 22']})]},
     'tenants[0].firewall.rules[0]', "'define' is not a rule"),
    ('tenant', {'tenants': [_tenant(firewall={'rules': ['tcp dport $ssh accept']})]},
     'tenants[0].firewall.rules[0]', "'$'"),
    ('tenant', {'tenants': [_tenant(firewall={'rules': ['policy accept']})]},
     'tenants[0].firewall.rules[0]', "'policy' is not a rule"),
    ('tenant', {'tenants': [_tenant(firewall={'rules': ['accept } } table ip evil { chain c {']})]},
     'tenants[0].firewall.rules[0]', "'}' without its '{'"),
    ('tenant', {'tenants': [_tenant(mark='0x100/0x100'),
                            _tenant(name='b', mark='0x300/0x300', table=111, prefixes=['198.51.100.0/24'])]},
     'tenants[1].mark', 'both match packets marked 0x300'),
    ('tenant', {'tenants': [_tenant(prefixes=['0.0.0.0/0'])]}, 'tenants[0].prefixes[0]', 'default route'),
    ('tenant', {'tenants': [_tenant(prefixes=['127.0.0.0/8'])]}, 'tenants[0].prefixes[0]', 'loopback'),
    ('tenant', {'tenants': [_tenant()], 'link_pool_ipv4': '127.0.0.0/8'}, 'link_pool_ipv4', 'overlaps 127.0.0.0/8'),
    ('tenant', {'tenants': [_tenant()], 'link_pool_ipv4': '192.0.2.0/25'}, 'link_pool_ipv4',
     'overlaps 192.0.2.0/24 of tenant acme'),
    # HOST has 198.18.0.2/24 on aegw0 (see test_bad_input.give_default_routes)
    ('tenant', {'tenants': [_tenant()], 'link_pool_ipv4': '198.18.0.0/24'}, 'link_pool_ipv4',
     'the connected subnet of aegw0'),
    ('tenant', {'tenants': [_tenant(link={'host_ipv4': '198.18.0.10/31', 'tenant_ipv4': '198.18.0.11/31'})]},
     'tenants[0].link', 'the connected subnet of aegw0'),
    # tenant, driver: nft (h17fast): refused before the one nftables transaction, as with the iptables drivers
    ('tenant', {'driver': 'nftables', 'tenants': [_tenant()]}, 'driver', 'must be one of'),
    ('tenant', {'driver': 'nft', 'tenants': [_tenant(mark='0')]}, 'tenants[0].mark', 'must not be 0'),
    ('tenant', {'driver': 'nft', 'tenants': [_tenant(), _tenant(name='b', table=111, prefixes=['198.51.100.0/24'])]},
     'tenants[1].mark', 'also used by tenants[0]'),
    ('tenant', {'driver': 'nft', 'tenants': [_tenant()], 'link_pool_ipv4': '198.18.0.0/24'}, 'link_pool_ipv4',
     'the connected subnet of aegw0'),
    # gre_tunnel
    ('gre_tunnel', _gre(name='gre-a-very-long-name'), 'tunnels[0].name', 'at most 15'),
    ('gre_tunnel', _gre(remote='192.0.2.1'), 'tunnels[0].remote', 'same as local'),
    ('gre_tunnel', _gre(key=4294967296), 'tunnels[0].key', 'out of range'),
    ('gre_tunnel', _gre(key=-1), 'tunnels[0].key', 'out of range'),
    ('gre_tunnel', _gre(remote='2001:db8::2'), 'tunnels[0].remote', 'same address family'),
    ('gre_tunnel', _gre(ttl=256), 'tunnels[0].ttl', 'out of range'),
    ('gre_tunnel', _gre(mtu=40), 'tunnels[0].mtu', 'out of range'),
    ('gre_tunnel', _gre(address='10.255.0.1'), 'tunnels[0].address', 'prefix length'),
    ('gre_tunnel', _gre(routes=['203.0.113.1/24']), 'tunnels[0].routes[0]', 'host bits'),
    ('gre_tunnel', _gre(local='not-an-address'), 'tunnels[0].local', 'not a valid'),
    ('gre_tunnel', _gre(netns='ae9-no-such-tenant'), 'tunnels[0].netns', 'does not exist'),
    # gre_tunnel, driver: nft (h17fast): refused before the MSS clamp's nftables transaction
    ('gre_tunnel', dict(_gre(ttl=256), driver='nft'), 'tunnels[0].ttl', 'out of range'),
    ('gre_tunnel', dict(_gre(netns='ae9-no-such-tenant'), driver='nft'), 'tunnels[0].netns', 'does not exist'),
    # bgp_speaker (the live BIRD configuration and the running BIRD are checked too)
    ('bgp_speaker', _bgp(local_as=0), 'local_as', 'outside 1..4294967295'),
    ('bgp_speaker', _bgp(local_as=4294967296), 'local_as', 'outside 1..4294967295'),
    ('bgp_speaker', _bgp({'remote_as': 0}), 'neighbors[0].remote_as', 'outside 1..4294967295'),
    ('bgp_speaker', _bgp(router_id='2001:db8::1'), 'router_id', 'not an IPv4 address'),
    ('bgp_speaker', _bgp(router_id='edge-1'), 'router_id', 'not an IPv4 address'),
    ('bgp_speaker', _bgp({'address': 'router-1'}), 'neighbors[0].address', 'not a valid'),
    ('bgp_speaker', _bgp({'address': '198.51.100.1'}, neighbors=[{'address': '198.51.100.1', 'remote_as': 1},
                                                                 {'address': '198.51.100.1', 'remote_as': 2}]),
     'neighbors[1].address', 'also given'),
    ('bgp_speaker', _bgp({'password': 'pa"ss'}), 'neighbors[0].password', 'double quote'),
    ('bgp_speaker', _bgp({'password': 'pa}ss'}), 'neighbors[0].password', 'brace'),
    ('bgp_speaker', _bgp({'password': 'pa;ss'}), 'neighbors[0].password', 'semicolon'),
    ('bgp_speaker', _bgp({'password': 'pa\nss'}), 'neighbors[0].password', 'newline'),
    ('bgp_speaker', _bgp(prefixes=['198.51.100.0/24']), 'prefixes[0]', 'not served by this host'),
    ('bgp_speaker', _bgp(prefixes=['0.0.0.0/0'], allow_unserved=True), 'prefixes[0]', 'default route'),
    ('bgp_speaker', _bgp({'hold_time': 2}), 'neighbors[0].hold_time', 'below 3 s'),
    ('bgp_speaker', _bgp({'keepalive_time': 5}), 'neighbors[0].keepalive_time', 'more than a third'),
    ('bgp_speaker', _bgp(bfd_interval=5), 'bfd_interval', 'out of range 10-10000 ms'),
    ('bgp_speaker', _bgp(bfd_interval=60000), 'bfd_interval', 'out of range 10-10000 ms'),
    ('bgp_speaker', _bgp(bfd_multiplier=1), 'bfd_multiplier', 'out of range 2-255'),
    ('bgp_speaker', _bgp({'multihop': 2}), 'neighbors[0].source_address', 'multihop session with BFD'),
    ('bgp_speaker', _bgp(communities=['65535:0']), 'communities[0]', 'GRACEFUL_SHUTDOWN'),
    ('bgp_speaker', _bgp(communities=['64500:70000']), 'communities[0]', 'at most 65535'),
    ('bgp_speaker', _bgp(health_table=254), 'health_table', "'main' table"),
    # edge_info, confirm, install_info
    ('edge_info', {'driver': 'nft'}, 'driver', 'must be one of'),
    ('edge_info', {'netns': 'ae9-no-such-ns'}, 'netns', 'does not exist'),
    ('edge_info', {'proxy_metrics': 'localhost:9464'}, 'proxy_metrics', 'not an IP address'),
    ('confirm', {'tokens': {'a': 1}}, 'tokens', 'list'),
    ('install_info', {'paths': ['/etc/app', 'etc/app/app.conf']}, 'paths[1]', 'not an absolute path'),
    ('install_info', {'units': ['--all']}, 'units[0]', 'not a unit name'),
    ('install_info', {'units': ['app.service'], 'properties': ['Id,ExecStart']}, 'properties[0]',
     'not a unit property name'),
    ('install_info', {'packages': ['python3*']}, 'packages[0]', 'not a package name'),
]


def _route(**keys):
    """A proxy configuration with one route to R4 and KEYS."""
    return {'routes': [dict({'destination': R4}, **keys)]}


O1, O2 = '10.0.2.2:8080', '10.0.2.3:8080'

# The transparent proxy's configuration (roles/transparent_proxy/files/anycast_proxy/config.py):
# (configuration, key named in the message, words of the message). Each is refused by
# `anycast_proxy --check-config` (tests/integration/test_bad_input.py), by a running proxy on
# SIGHUP, which keeps its configuration (tests/integration/test_proxy.py), and by the role's
# preflight before anything changes, naming the role variable (tests/unit/test_proxy_program_filter.py).
PROXY_CASES = [
    (_route(origins=[]), 'routes[0].origins', 'at least one origin'),
    (_route(origins=[O1, O1]), 'routes[0].origins[1]', 'same origin as origins[0]'),
    (_route(origins=[O1, {'address': '10.0.2.02:8080'}]), 'routes[0].origins[1].address',
     'not a valid IPv4 address'),
    (_route(origins=[{'address': O1, 'weight': 0}, O2]), 'routes[0].origins[0].weight', 'must be at least 1'),
    (_route(origins=[{'address': O1, 'weight': -2}, O2]), 'routes[0].origins[0].weight', 'must be at least 1'),
    (_route(origins=[{'address': O1, 'weight': 1000}, O2]), 'routes[0].origins[0].weight', 'at most 256'),
    (_route(origins=[{'address': O1, 'backup': True}, {'address': O2, 'backup': True}]), 'routes[0].origins',
     'every origin is a backup'),
    (_route(origins=[{'address': O1, 'priority': 2}]), 'routes[0].origins[0].priority', 'unknown key'),
    (_route(origin=O1, origins=[O2]), 'routes[0].origins', 'not both'),
    (_route(), 'routes[0].origin', 'required key is missing'),
    (_route(origins=[O1, O2], balance='random'), 'routes[0].balance', 'expected one of'),
    (_route(origins=[O1, O2], health_check={'interval': 0}), 'routes[0].health_check.interval', 'greater than 0'),
    (_route(origins=[O1, O2], health_check={'interval': -5}), 'routes[0].health_check.interval', 'greater than 0'),
    (_route(origins=[O1, O2], health_check={'timeout': 0}), 'routes[0].health_check.timeout', 'greater than 0'),
    (_route(origins=[O1, O2], health_check={'rise': 0}), 'routes[0].health_check.rise', 'must be at least 1'),
    (_route(origins=[O1, O2], health_check={'fall': 0}), 'routes[0].health_check.fall', 'must be at least 1'),
    (_route(origins=[O1, O2], health_check={'inter': 2}), 'routes[0].health_check.inter', 'unknown key'),
    (_route(origins=[O1, O2], health_check=True), 'routes[0].health_check', 'an object'),
    (_route(origins=['10.0.2.2', O2], health_check={}), 'routes[0].health_check.port', 'port of their own'),
    (_route(origin='origin.example:80', resolve_interval=0), 'routes[0].resolve_interval', 'greater than 0'),
    (_route(origin='bad_name!:80'), 'routes[0].origin', 'neither an IP address nor a host name'),
    (dict(_route(origin=O1), defaults={'balance': 'fastest'}), 'defaults.balance', 'expected one of'),
    (dict(_route(origin=O1), defaults={'origins': [O2]}), 'defaults.origins', 'not a key routes can inherit'),
    (dict(_route(origin=O1), drain_socket='run/drain.sock'), 'drain_socket', 'absolute path'),
    # issue 18 (the proxy, defects 16-17 and the debatable items it decided to refuse)
    (dict(_route(origin=O1), listen=['127.0.0.1:\u00b2']), 'listen[0]', 'not a number from 1 to 65535'),
    (dict(_route(origin=O1), listen=['127.0.0.1:\u0661\u0662\u0663\u0664']), 'listen[0]',
     'not a number from 1 to 65535'),
    (_route(origin=O1, ports='\u0668\u0660'), 'routes[0].ports', 'not a number from 1 to 65535'),
    (_route(origin='10.0.2.2:\u0668\u0660\u0668\u0660'), 'routes[0].origin', 'not a number from 1 to 65535'),
    (_route(origin='\u043e\u0440\u0438\u0433\u0438\u043d.example:80'), 'routes[0].origin',
     'neither an IP address nor a host name'),
    (_route(origin=O1, connect_timeout=float('nan')), 'routes[0].connect_timeout', 'finite number'),
    (_route(origin=O1, idle_timeout=float('inf')), 'routes[0].idle_timeout', 'finite number'),
    (_route(origins=[O1, O2], health_check={'interval': float('-inf')}), 'routes[0].health_check.interval',
     'finite number'),
    (dict(_route(origin=O1), drain_timeout=float('nan')), 'drain_timeout', 'finite number'),
    (dict(_route(origin=O1), defaults={'resolve_interval': float('inf')}), 'defaults.resolve_interval',
     'finite number'),
    (dict(_route(origin=O1), listen=['127.0.0.1:1234'], metrics='127.0.0.1:1234'), 'metrics',
     'the address of listen[0]'),
    (dict(_route(origin=O1), listen=['0.0.0.0:1234'], metrics='127.0.0.1:1234'), 'metrics',
     'the address of listen[0]'),
    (dict(_route(origin=O1), listen=['[::1]:1234'], metrics='[::]:1234'), 'metrics', 'the address of listen[0]'),
    (dict(_route(origin=O1), listen=['0.0.0.0:1234', '127.0.0.1:1234']), 'listen[1]', 'overlaps listen[0]'),
    (_route(origin=O1, name='x' * 129), 'routes[0].name', 'at most 128 characters'),
    (_route(origin=O1, name='web\rroute=admin'), 'routes[0].name', 'U+000D'),
    (_route(origin=O1, name='web\u2028outcome=ok'), 'routes[0].name', 'U+2028'),
    (_route(origin=O1, name='web\u200eweb'), 'routes[0].name', 'U+200E'),
    # defect 15: an origin that is the proxy itself (its listener, or inside one of its routes)
    (dict(_route(origin='192.0.2.77:1234'), listen=['0.0.0.0:1234']), 'routes[0].origin',
     'inside routes[0]'),
    (_route(origin='127.0.0.1:1234'), 'routes[0].origin', "the proxy's own listener listen[0]"),
    (dict(_route(origin='127.0.0.2:1234'), listen=['0.0.0.0:1234']), 'routes[0].origin',
     "the proxy's own listener listen[0]"),
    (_route(origins=[O1, {'address': '[::1]:1234'}]), 'routes[0].origins[1].address',
     "the proxy's own listener listen[1]"),
    (_route(origin='192.0.2.9'), 'routes[0].origin', 'with the port the client dialled'),
    ({'routes': [{'destination': R4, 'ports': '80', 'origin': O1},
                 {'destination': '198.51.100.0/24', 'origin': '192.0.2.9:80'}]}, 'routes[1].origin',
     'inside routes[0]'),
    (_route(origin='0.0.0.0:8080'), 'routes[0].origin', 'no address to dial'),
]


def substitute(value, mapping):
    """Replace the placeholders in a case's arguments (recursively)."""
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, list):
        return [substitute(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, mapping) for k, v in value.items()}
    return value


def placeholders(text, mapping):
    """Put the placeholders back into a message, for the document."""
    for placeholder, actual in mapping.items():
        text = text.replace(actual, placeholder)
    return text


def cell(value):
    """A value as it stands in a cell of the document's tables."""
    return str(value).replace('|', '\\|').replace('\n', ' ')
