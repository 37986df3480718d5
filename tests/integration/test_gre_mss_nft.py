"""gre_tunnel's MSS clamp with driver: nft (_gre_mss.NftMss), on a veth: this kernel has no GRE devices.

A client, a router and a server in three namespaces; the router's link to the server has a smaller MTU (1400)
than the client's (1500). The clamp chain is written for the router's outgoing interface through the layer
gre_tunnel uses, read back through the JSON API (the re-plan is empty), and a SYN forwarded out of that
interface then carries the route's MSS: the server's connection has the smaller segment size. Only the rule
and its effect are proven here; the module with real GRE tunnels runs in the VM suite (tests/vm).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import helpers
from helpers import nsexec

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
NS_PREFIX = helpers.ns_prefix('aenm')

# inside the router namespace: the layer's plan for {OUT: families}, applied, read back, re-planned
CLAMP = textwrap.dedent(r'''
    import json, sys
    from ansible_collections.anycast.edge.plugins.module_utils import _gre_mss
    names = dict((name, set(families)) for name, families in json.loads(sys.argv[1]).items())
    layer = _gre_mss.NftMss()
    layer.open()
    plan = layer.plan(layer.read('router'), names, 'router')
    layer.apply('router', plan)
    after = layer.read('router')
    print(json.dumps({'actions': plan.actions, 'again': layer.plan(after, names, 'router').actions,
                      'clamped': dict((name, layer.clamped(after, name)) for name in names)}))
''')

# inside the server namespace: accept one connection and say its segment size (TCP_MAXSEG)
SERVE = textwrap.dedent(r'''
    import socket, sys
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(('10.0.2.2', 8080))
    sock.listen(4)
    print('ready', flush=True)
    for _ in range(int(sys.argv[1])):
        conn, _peer = sock.accept()
        conn.sendall(b'%d\n' % conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
        conn.close()
''')

DIAL = "import socket; s = socket.create_connection(('10.0.2.2', 8080), 3); print(s.makefile().readline().strip())"


@pytest.fixture
def path(netns_factory, veth):
    client, router, server = netns_factory(), netns_factory(), netns_factory()
    veth(client, router, 'fam-c', 'fam-rc', ['10.0.1.2/24'], ['10.0.1.1/24'])
    veth(router, server, 'fam-rs', 'fam-s', ['10.0.2.1/24'], ['10.0.2.2/24'])
    nsexec(router, ['ip', 'link', 'set', 'fam-rs', 'mtu', '1400'])
    nsexec(client, ['ip', 'route', 'add', 'default', 'via', '10.0.1.1'])
    nsexec(server, ['ip', 'route', 'add', 'default', 'via', '10.0.2.1'])
    return client, router, server


def clamp(router, names):
    proc = subprocess.run(['ip', 'netns', 'exec', router, sys.executable, '-c', CLAMP, json.dumps(names)],
                          env=helpers.module_env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def segment_sizes(client, server, count):
    proc = subprocess.Popen(['ip', 'netns', 'exec', server, sys.executable, '-c', SERVE, str(count)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'ready'
        return [int(nsexec(client, [sys.executable, '-c', DIAL]).stdout) for _dial in range(count)]
    finally:
        proc.kill()
        proc.wait()


def test_nft_mss_clamp_on_the_outgoing_interface_lowers_the_forwarded_syns_mss(path):
    client, router, server = path
    unclamped = segment_sizes(client, server, 1)[0]
    assert unclamped > 1400 - 40    # the client's 1500-byte MTU reaches the server unclamped

    done = clamp(router, {'fam-rs': [4, 6]})
    assert done == {'actions': ['inet anycast_edge_dp: write chain ANYCAST-MSS-fam-rs (1 rules)'], 'again': [],
                    'clamped': {'fam-rs': True}}
    listed = json.loads(nsexec(router, ['nft', '-j', 'list', 'chain', 'inet', 'anycast_edge_dp',
                                        'ANYCAST-MSS-fam-rs']).stdout)['nftables']
    (chain,) = [o['chain'] for o in listed if 'chain' in o]
    assert (chain['hook'], chain['prio']) == ('forward', -150)
    clamped = segment_sizes(client, server, 1)[0]
    assert clamped <= 1400 - 40 < unclamped, (clamped, unclamped)

    # IPv6 only: IPv4 SYNs pass unclamped again; then the chain goes, and the table with it
    assert clamp(router, {'fam-rs': [6]})['again'] == []
    assert segment_sizes(client, server, 1)[0] == unclamped
    gone = clamp(router, {'fam-rs': []})
    assert gone['actions'] == ['inet anycast_edge_dp: delete chain ANYCAST-MSS-fam-rs',
                               'inet anycast_edge_dp: delete the table (nothing else is in it)']
    assert 'anycast_edge_dp' not in nsexec(router, ['nft', 'list', 'tables']).stdout


def test_gre_tunnel_renders_its_clamp_as_one_nft_transaction_in_the_tunnels_namespace():
    tunnel = {'name': 'gre-acme', 'netns': 'tenant-acme', 'local': '192.0.2.1', 'remote': '198.51.100.7',
              'address': '10.255.0.1/30'}
    rendered = helpers.ok(helpers.run_module('gre_tunnel', {'driver': 'nft', 'state': 'rendered',
                                                            'tunnels': [tunnel]}))['rendered']
    (batch,) = [c for c in rendered if 'nft -j -f -' in c]
    assert batch.startswith('ip netns exec tenant-acme nft -j -f -') and '"ANYCAST-MSS-gre-acme"' in batch
    assert '"rt": {"key": "mtu"}' in batch and not [c for c in rendered if 'iptables' in c]
