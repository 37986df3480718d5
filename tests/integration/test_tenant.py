"""anycast.edge.tenant for real: namespaces, marks, policy routing and nftables, through ansible-playbook.

A test namespace plays the host (the module's ``netns``); a client namespace
reaches it over a veth pair. The tenants' namespaces are created by the module
itself, named ``aen...`` and tracked by the fixture so they go away even when a
test fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

import helpers
from helpers import nsexec, ok, run_module, run_playbook

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
NS_PREFIX = helpers.ns_prefix('aen')

A_PREFIXES = ['203.0.113.0/24', '2001:db8:a::/48']
B_PREFIXES = ['192.0.2.0/24']
A_ADDR, A_ADDR6, B_ADDR = '203.0.113.100', '2001:db8:a::100', '192.0.2.1'
SYSTEM_PYTHON = {'ansible_python_interpreter': '/usr/bin/python3'}   # Debian's pyroute2 0.7

LISTENER = textwrap.dedent('''
    import socket, sys, threading
    tag, binds = sys.argv[1], sys.argv[2:]
    def serve(sock):
        while True:
            conn, _peer = sock.accept()
            conn.sendall((tag + "\\n").encode())
            conn.close()
    for bind in binds:
        addr, port = bind.rsplit(":", 1)
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, int(port)))
        sock.listen(16)
        threading.Thread(target=serve, args=(sock,), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
''')

DIAL = textwrap.dedent('''
    import json, socket, sys
    out = []
    for addr, port in json.loads(sys.argv[1]):
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            try:
                sock.connect((addr, port))
                out.append(sock.makefile().readline().strip())
            except OSError as exc:
                out.append("error: %s" % exc.__class__.__name__)
    print(json.dumps(out))
''')


class Site(object):
    def __init__(self, host, client, prefix):
        self.host = host
        self.client = client
        self.prefix = prefix          # tenant namespaces are PREFIX + tenant name
        self.listeners = []

    def ns(self, tenant):
        return self.prefix + tenant

    def tenants(self, a_rules=None, b=True, **extra):
        a = {'name': 'a', 'prefixes': A_PREFIXES, 'mark': '0x10', 'table': 110,
             'firewall': {'policy': 'drop', 'rules': a_rules if a_rules is not None else [
                 'ip daddr 203.0.113.100 tcp dport 20-21 accept',
                 'ip6 daddr 2001:db8:a::100 tcp dport 21 accept',
                 'tcp dport 22 reject with tcp reset']}}
        items = [a]
        if b:
            items.append({'name': 'b', 'prefixes': B_PREFIXES, 'mark': '0x20', 'table': 120,
                          'firewall': {'policy': 'accept', 'rules': ['ip daddr != 192.0.2.0/24 counter drop',
                                                                     'ip daddr 192.0.2.0/24 counter accept']}})
        return items

    def task(self, tenants, **params):
        args = {'netns': self.host, 'netns_prefix': self.prefix, 'tenants': tenants}
        args.update(params)
        return {'anycast.edge.tenant': args}

    def listen(self, ns, tag, binds):
        proc = subprocess.Popen(['ip', 'netns', 'exec', ns, sys.executable, '-c', LISTENER, tag] + binds,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.listeners.append(proc)
        assert proc.stdout.readline().strip() == 'ready'

    def dial(self, targets, ns=None):
        out = nsexec(ns or self.client, [sys.executable, '-c', DIAL, json.dumps(targets)], timeout=60).stdout
        return json.loads(out)

    def stop(self):
        for proc in self.listeners:
            proc.kill()
            proc.wait()


@pytest.fixture
def site(netns_factory, veth):
    host = netns_factory(forwarding=False)    # the module must switch forwarding on itself
    client = netns_factory()
    veth(host, client, 'up0', 'cl0', ['198.51.100.1/24', '2001:db8:ff::1/64'],
         ['198.51.100.2/24', '2001:db8:ff::2/64'])
    nsexec(client, ['ip', 'route', 'add', 'default', 'via', '198.51.100.1'])
    nsexec(client, ['ip', '-6', 'route', 'add', 'default', 'via', '2001:db8:ff::1'])
    prefix = helpers.unique_name(NS_PREFIX) + '-'
    for name in ('a', 'b', 'c'):
        netns_factory.track(prefix + name)
    site = Site(host, client, prefix)
    try:
        yield site
    finally:
        site.stop()


def our_netns():
    """Namespaces of this test module's prefix (other engineers' come and go meanwhile)."""
    return [ns for ns in helpers.netns_list() if ns.startswith(NS_PREFIX)]


def host_state(ns):
    """helpers.kernel_state without packet counters (neighbour discovery keeps them moving)."""
    text = helpers.kernel_state(ns)
    text = re.sub(r'packets \d+ bytes \d+', 'packets - bytes -', text)
    return re.sub(r'\[\d+:\d+\]', '[-:-]', text)


def main_tables(ns):
    return nsexec(ns, ['ip', '-4', 'route', 'show', 'table', 'main']).stdout + \
        nsexec(ns, ['ip', '-6', 'route', 'show', 'table', 'main']).stdout


def mark_counters(ns, chain):
    """Packets counted by the MARK rules of one of our mangle chains (IPv4 + IPv6)."""
    total = 0
    for tool in ('iptables-save', 'ip6tables-save'):
        for line in nsexec(ns, [tool, '-c', '-t', 'mangle']).stdout.splitlines():
            match = re.match(r'^\[(\d+):\d+\] -A %s .*-j MARK' % re.escape(chain), line)
            if match:
                total += int(match.group(1))
    return total


def nft_counters(ns):
    """Packets of each counter of the tenant's firewall, in order."""
    text = nsexec(ns, ['nft', 'list', 'table', 'inet', 'anycast_edge']).stdout
    return [int(n) for n in re.findall(r'counter packets (\d+)', text)]


def leftovers(site):
    """Everything of ours that could remain in the host namespace."""
    found = []
    links = nsexec(site.host, ['ip', '-o', 'link']).stdout
    found += re.findall(r'ae-[ab]\b', links)
    for family in ('-4', '-6'):
        found += [line for line in nsexec(site.host, ['ip', family, 'rule']).stdout.splitlines() if 'proto 172' in line]
        found += [line for line in nsexec(site.host, ['ip', family, 'route', 'show', 'table', 'all']).stdout.splitlines()
                  if 'table 110' in line or 'table 120' in line]
    for tool in ('iptables-save', 'ip6tables-save'):
        found += [line for line in nsexec(site.host, [tool, '-t', 'mangle']).stdout.splitlines() if 'AE-TENANT' in line]
    found += [ns for ns in our_netns() if ns.startswith(site.prefix)]
    return found


def test_traffic_is_marked_routed_to_the_tenant_and_filtered_by_its_firewall(site):
    main_before = main_tables(site.host)
    result = ok(run_playbook([site.task(site.tenants())])[0])
    assert result['changed'] is True
    for key in ('net.ipv4.ip_forward', 'net.ipv6.conf.all.forwarding'):
        assert nsexec(site.host, ['sysctl', '-n', key]).stdout.strip() == '1'
        assert nsexec(site.ns('a'), ['sysctl', '-n', key]).stdout.strip() == '1'
    by_name = dict((t['name'], t) for t in result['tenants'])
    assert by_name['a']['netns'] == site.ns('a') and by_name['a']['table'] == 110 and by_name['a']['mark'] == '0x10'
    assert by_name['a']['interfaces'] == {'host': 'ae-a', 'tenant': 'ae-a-t'}

    # the tenants' own addresses and services (stand-ins for what sits behind their tunnels)
    nsexec(site.ns('a'), ['ip', 'addr', 'add', A_ADDR + '/32', 'dev', 'lo'])
    nsexec(site.ns('a'), ['ip', 'addr', 'add', A_ADDR6 + '/128', 'dev', 'lo', 'nodad'])
    nsexec(site.ns('b'), ['ip', 'addr', 'add', B_ADDR + '/32', 'dev', 'lo'])
    site.listen(site.ns('a'), 'tenant-a', [A_ADDR + ':21', A_ADDR + ':22', A_ADDR6 + ':21'])
    site.listen(site.ns('b'), 'tenant-b', [B_ADDR + ':21'])
    site.listen(site.host, 'host', ['198.51.100.1:8080'])

    # The host has no route of its own to the tenants' prefixes: only the marks and tables get packets there.
    assert nsexec(site.host, ['ip', 'route', 'get', A_ADDR], check=False).returncode != 0 or \
        'ae-a' not in nsexec(site.host, ['ip', 'route', 'get', A_ADDR], check=False).stdout
    assert 'dev ae-a' in nsexec(site.host, ['ip', 'route', 'get', A_ADDR, 'mark', '0x10']).stdout

    marks_b = mark_counters(site.host, 'AE-TENANT-b')
    assert site.dial([[A_ADDR, 21], [A_ADDR, 22], [A_ADDR6, 21]]) == \
        ['tenant-a', 'error: ConnectionRefusedError', 'tenant-a']
    # port 22 does have a listener: from inside the tenant (not through the veth) it answers
    assert site.dial([[A_ADDR, 22]], ns=site.ns('a')) == ['tenant-a']
    assert mark_counters(site.host, 'AE-TENANT-a') >= 3
    # isolation: nothing of A's traffic was marked for B or reached B's namespace
    assert mark_counters(site.host, 'AE-TENANT-b') == marks_b
    assert nft_counters(site.ns('b')) == [0, 0]

    # B works, through its own mark and table, and its firewall counter sees it
    assert site.dial([[B_ADDR, 21]]) == ['tenant-b']
    foreign, own = nft_counters(site.ns('b'))
    assert foreign == 0 and own > 0
    assert mark_counters(site.host, 'AE-TENANT-b') > marks_b

    # other destinations are not touched: the host itself, unmarked
    marks_a = mark_counters(site.host, 'AE-TENANT-a')
    marks_b = mark_counters(site.host, 'AE-TENANT-b')
    assert site.dial([['198.51.100.1', 8080]]) == ['host']
    assert (mark_counters(site.host, 'AE-TENANT-a'), mark_counters(site.host, 'AE-TENANT-b')) == (marks_a, marks_b)

    assert main_tables(site.host) == main_before
    # the firewalls were checked (nft --check) in the host namespace before their tenants existed: no trace there
    assert 'anycast_edge' not in nsexec(site.host, ['nft', 'list', 'ruleset']).stdout
    again = ok(run_playbook([site.task(site.tenants())])[0])
    assert again['changed'] is False, again['actions']


def test_check_mode_diff_idempotence_purge_and_absent(site):
    """With Debian's own python and pyroute2 0.7, as on a real host."""
    # Forwarding stays on when tenants go (it is never switched off), and IPv6 forwarding adds the
    # subnet-router anycast routes: start with it on so that before/after compares our objects only.
    nsexec(site.host, ['sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'])
    routes_before = helpers.route_dump(site.host)
    namespaces_before = our_netns()
    state_before = host_state(site.host)

    checked = ok(run_playbook([site.task(site.tenants())], check=True, diff=True, extra_vars=SYSTEM_PYTHON)[0])
    assert checked['changed'] is True
    assert "tenant a: create network namespace '%s'" % site.ns('a') in checked['actions']
    assert 'fwmark 0x10/0xffffffff lookup 110' in checked['diff']['after']
    assert checked['diff']['before'] == ''
    assert our_netns() == namespaces_before
    assert host_state(site.host) == state_before

    applied = ok(run_playbook([site.task(site.tenants())], diff=True, extra_vars=SYSTEM_PYTHON)[0])
    assert applied['changed'] is True
    assert applied['diff']['after'] == checked['diff']['after']
    assert set([site.ns('a'), site.ns('b')]) <= set(our_netns())

    again = run_playbook([site.task(site.tenants())], diff=True, extra_vars=SYSTEM_PYTHON)
    assert ok(again[0])['changed'] is False, again[0]['actions']
    assert again[0]['diff']['before'] == again[0]['diff']['after']
    rechecked = ok(run_playbook([site.task(site.tenants())], check=True, extra_vars=SYSTEM_PYTHON)[0])
    assert rechecked['changed'] is False

    # drift inside the tenant is seen and repaired: a rule added by hand, a route removed
    nsexec(site.ns('a'), ['nft', 'add', 'rule', 'inet', 'anycast_edge', 'ingress', 'tcp', 'dport', '23', 'accept'])
    nsexec(site.host, ['ip', 'route', 'del', '203.0.113.0/24', 'table', '110'])
    repaired = ok(run_playbook([site.task(site.tenants())], extra_vars=SYSTEM_PYTHON)[0])
    assert repaired['changed'] is True
    assert any('replace nftables table' in a for a in repaired['actions'])
    assert any('route 203.0.113.0/24' in a for a in repaired['actions'])
    assert 'dport 23' not in nsexec(site.ns('a'), ['nft', 'list', 'table', 'inet', 'anycast_edge']).stdout
    assert ok(run_playbook([site.task(site.tenants())], extra_vars=SYSTEM_PYTHON)[0])['changed'] is False

    # the veth pair deleted by hand (its routes go with it): recreated with addresses and routes
    nsexec(site.host, ['ip', 'link', 'del', 'ae-b'])
    relinked = ok(run_playbook([site.task(site.tenants())], extra_vars=SYSTEM_PYTHON)[0])
    assert any('create veth ae-b' in a for a in relinked['actions']), relinked['actions']
    assert nsexec(site.host, ['ip', 'route', 'show', 'table', '120']).stdout.startswith('192.0.2.0/24 via 169.254.0.241')
    assert 'default via 169.254.0.240' in nsexec(site.ns('b'), ['ip', 'route']).stdout
    assert ok(run_playbook([site.task(site.tenants())], extra_vars=SYSTEM_PYTHON)[0])['changed'] is False

    # purge: only b listed, a goes entirely
    purged = ok(run_playbook([site.task(site.tenants()[1:], purge=True)], extra_vars=SYSTEM_PYTHON)[0])
    assert purged['changed'] is True and purged['purged'] == ['a']
    assert site.ns('a') not in our_netns() and site.ns('b') in our_netns()
    rest = leftovers(site)
    assert rest and all(('ae-b' in x or '0x20' in x or 'table 120' in x or 'AE-TENANT-b' in x
                         or x == site.ns('b')) for x in rest), rest

    # absent: nothing of ours remains, routing state as before the first run
    gone = ok(run_playbook([site.task([{'name': 'b', 'state': 'absent'}])], extra_vars=SYSTEM_PYTHON)[0])
    assert gone['changed'] is True
    assert leftovers(site) == []
    assert helpers.route_dump(site.host) == routes_before
    assert ok(run_playbook([site.task([{'name': 'b', 'state': 'absent'}])])[0])['changed'] is False


def test_changed_mark_table_prefixes_and_interfaces_leave_nothing_of_the_old(site):
    ok(run_playbook([site.task(site.tenants(b=False))])[0])
    changed = site.tenants(b=False)
    changed[0].update({'mark': '0x11', 'table': 111, 'prefixes': ['203.0.113.0/25'],
                       'link': {'host_if': 'ae-a2', 'tenant_if': 'ae-a2-t'}})
    result = ok(run_playbook([site.task(changed)], diff=True)[0])
    assert result['changed'] is True
    assert 'lookup 110' in result['diff']['before'] and 'lookup 111' in result['diff']['after']
    rules = nsexec(site.host, ['ip', 'rule']).stdout + nsexec(site.host, ['ip', '-6', 'rule']).stdout
    assert 'fwmark 0x11 lookup 111 proto 172' in rules and '0x10' not in rules and 'lookup 110' not in rules
    assert nsexec(site.host, ['ip', '-4', 'route', 'show', 'table', '111']).stdout.startswith('203.0.113.0/25 via')
    assert nsexec(site.host, ['ip', '-4', 'route', 'show', 'table', '110']).stdout == ''
    assert nsexec(site.host, ['ip', '-6', 'route', 'show', 'table', '110']).stdout == ''
    links = nsexec(site.host, ['ip', '-o', 'link']).stdout
    assert 'ae-a2@' in links and 'ae-a@' not in links
    assert 'ae-a2-t@' in nsexec(site.ns('a'), ['ip', '-o', 'link']).stdout
    # IPv6 prefixes are gone: so are the IPv6 mark chain and the host end's IPv6
    assert 'AE-TENANT-a' not in nsexec(site.host, ['ip6tables-save', '-t', 'mangle']).stdout
    assert nsexec(site.host, ['sysctl', '-n', 'net.ipv6.conf.ae-a2.disable_ipv6']).stdout.strip() == '1'
    assert ok(run_playbook([site.task(changed)])[0])['changed'] is False


def test_legacy_host_gets_its_marks_through_python_iptables(site):
    """On a host whose iptables is the legacy variant, driver auto writes the legacy tables (libiptc)."""
    legacy = {'PATH': helpers.legacy_host_path()}
    result = ok(run_playbook([site.task(site.tenants(b=False))], env=legacy)[0])
    assert result['driver'] == 'python-iptables'
    assert 'AE-TENANT-a' in nsexec(site.host, ['iptables-legacy-save', '-t', 'mangle']).stdout
    assert 'AE-TENANT-a' in nsexec(site.host, ['ip6tables-legacy-save', '-t', 'mangle']).stdout
    assert 'AE-TENANT-a' not in nsexec(site.host, ['iptables-save', '-t', 'mangle']).stdout
    nsexec(site.ns('a'), ['ip', 'addr', 'add', A_ADDR + '/32', 'dev', 'lo'])
    site.listen(site.ns('a'), 'tenant-a', [A_ADDR + ':21'])
    assert site.dial([[A_ADDR, 21]]) == ['tenant-a']
    assert ok(run_playbook([site.task(site.tenants(b=False))], env=legacy)[0])['changed'] is False
    gone = ok(run_playbook([site.task([], purge=True)], env=legacy)[0])
    assert gone['purged'] == ['a']
    assert 'AE-TENANT' not in nsexec(site.host, ['iptables-legacy-save', '-t', 'mangle']).stdout
    assert leftovers(site) == []


def test_namespace_deleted_by_hand_is_cleaned_up_by_purge(site):
    """The namespace (and with it the veth) is gone; the mark chains and ip rules it left are ours to remove."""
    ok(run_playbook([site.task(site.tenants())])[0])
    helpers.sh(['ip', 'netns', 'del', site.ns('a')])
    wait_until_gone(site, 'ae-a@')
    kept = ok(run_playbook([site.task(site.tenants()[1:])])[0])
    assert kept['changed'] is False      # without purge an unlisted tenant is left alone
    purged = ok(run_playbook([site.task(site.tenants()[1:], purge=True)])[0])
    assert purged['purged'] == ['a'], purged
    rest = leftovers(site)
    assert rest and not [x for x in rest if 'ae-a' in x or '0x10' in x or 'AE-TENANT-a' in x], rest
    assert ok(run_playbook([site.task(site.tenants()[1:], purge=True)])[0])['changed'] is False

    # the same without purge: b's namespace deleted by hand, then b listed as absent
    helpers.sh(['ip', 'netns', 'del', site.ns('b')])
    wait_until_gone(site, 'ae-b@')
    gone = ok(run_playbook([site.task([{'name': 'b', 'state': 'absent'}])])[0])
    assert gone['changed'] is True
    assert leftovers(site) == []


def wait_until_gone(site, link):
    for _attempt in range(50):   # the kernel tears a namespace down asynchronously
        if link not in nsexec(site.host, ['ip', '-o', 'link']).stdout:
            return
        time.sleep(0.1)


def test_tenant_routes_win_over_the_default_route_and_survive_reruns(site):
    """What the GRE module will add inside a tenant (a device, routes of the collection's protocol) stays."""
    ok(run_playbook([site.task(site.tenants(b=False))])[0])
    tenant_ns = site.ns('a')
    # A second link out of the tenant namespace stands in for a tunnel (this kernel has no GRE).
    site_router = helpers.unique_name(NS_PREFIX)
    helpers.sh(['ip', 'netns', 'add', site_router])
    try:
        nsexec(tenant_ns, ['ip', 'link', 'add', 'tun0', 'type', 'veth', 'peer', 'name', 'r0', 'netns', site_router])
        nsexec(tenant_ns, ['ip', 'addr', 'add', '10.255.0.1/30', 'dev', 'tun0'])
        nsexec(tenant_ns, ['ip', 'link', 'set', 'tun0', 'up'])
        nsexec(tenant_ns, ['ip', 'route', 'add', '0.0.0.0/0', 'dev', 'tun0', 'proto', '172'])
        nsexec(tenant_ns, ['ip', 'route', 'add', '10.77.0.0/16', 'dev', 'tun0', 'proto', '172'])
        routes = nsexec(tenant_ns, ['ip', 'route']).stdout
        assert 'dev tun0' in nsexec(tenant_ns, ['ip', 'route', 'get', '8.8.8.8']).stdout
        again = ok(run_playbook([site.task(site.tenants(b=False))])[0])
        assert again['changed'] is False, again['actions']
        assert nsexec(tenant_ns, ['ip', 'route']).stdout == routes
        # without the tenant's own default, replies go back to the host
        nsexec(tenant_ns, ['ip', 'route', 'del', '0.0.0.0/0', 'dev', 'tun0'])
        assert 'dev ae-a-t' in nsexec(tenant_ns, ['ip', 'route', 'get', '8.8.8.8']).stdout
    finally:
        helpers.sh(['ip', 'netns', 'del', site_router], check=False)


def test_rejected_firewall_rule_changes_nothing(site):
    ok(run_playbook([site.task(site.tenants(b=False))])[0])
    ruleset = nsexec(site.ns('a'), ['nft', 'list', 'ruleset']).stdout
    state = host_state(site.host)
    bad = site.tenants(a_rules=['ip daddr 203.0.113.100 tcp dport 21 accept', 'tcp dport 22 frobnicate'])
    result = run_playbook([site.task(bad)])[0]
    assert result.get('failed'), result
    assert result['msg'].startswith("tenants[0].firewall.rules[1]: nft rejects 'tcp dport 22 frobnicate'"), result['msg']
    assert 'Error: syntax error' in result['msg']
    assert nsexec(site.ns('a'), ['nft', 'list', 'ruleset']).stdout == ruleset
    assert host_state(site.host) == state

    # a new tenant with a rejected rule: not even its namespace is created
    namespaces = our_netns()
    new = {'name': 'c', 'prefixes': ['198.18.0.0/24'], 'mark': '0x30', 'table': 130,
           'firewall': {'rules': ['ip daddr 198.18.0.300 accept']}}
    result = run_playbook([site.task(site.tenants(b=False) + [new])])[0]
    assert result.get('failed') and result['msg'].startswith('tenants[1].firewall.rules[0]:'), result
    assert '198.18.0.300' in result['msg']
    assert our_netns() == namespaces
    assert host_state(site.host) == state


def _tenant(name, mark, table, prefixes, **extra):
    item = {'name': name, 'mark': mark, 'table': table, 'prefixes': prefixes}
    item.update(extra)
    return item


@pytest.mark.parametrize('tenants, param, problem', [
    ([_tenant('verylongname', '0x1', 101, ['192.0.2.0/24'])], 'tenants[0].name', 'at most 15'),
    ([_tenant('a', '0x1', 101, ['192.0.2.0/24']), _tenant('b', '0x1', 102, ['198.51.100.0/24'])],
     'tenants[1].mark', 'also used by tenants[0]'),
    ([_tenant('a', '0x1', 101, ['192.0.2.0/24']), _tenant('b', '0x2', 101, ['198.51.100.0/24'])],
     'tenants[1].table', 'also used by tenants[0]'),
    ([_tenant('a', '0x1', 101, ['192.0.2.0/24']), _tenant('b', '0x2', 102, ['192.0.2.128/25'])],
     'tenants[1].prefixes[0]', 'overlaps 192.0.2.0/24 of tenant a'),
    ([_tenant('a', '0x1', 101, ['2001:db8::/32']), _tenant('b', '0x2', 102, ['2001:db8:1::/48'])],
     'tenants[1].prefixes[0]', 'overlaps'),
    ([_tenant('a', '0x1', 254, ['192.0.2.0/24'])], 'tenants[0].table', "'main' table"),
    ([_tenant('a', '0', 101, ['192.0.2.0/24'])], 'tenants[0].mark', 'must not be 0'),
    ([_tenant('a', '0x1', 101, ['192.0.2.1/24'])], 'tenants[0].prefixes[0]', 'host bits'),
    ([_tenant('a', '0x1', 101, ['192.0.2.0/24'], link={'host_if': 'a-very-long-ifname'})],
     'tenants[0].link.host_if', 'at most 15'),
    ([_tenant('a', '0x1', 101, ['192.0.2.0/24'], firewall={'rules': ['accept; flush ruleset']})],
     'tenants[0].firewall.rules[0]', "';'"),
])
def test_bad_input_is_refused_naming_the_parameter_and_changes_nothing(site, tenants, param, problem):
    state = host_state(site.host)
    namespaces = our_netns()
    result = run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix, 'tenants': tenants})
    assert result.get('failed'), result
    assert result['msg'].startswith(param + ':'), result['msg']
    assert problem in result['msg'], result['msg']
    assert host_state(site.host) == state
    assert our_netns() == namespaces


def test_bad_input_through_ansible_playbook(site):
    """The playbook path says the same: the interface name that would be too long."""
    result = run_playbook([site.task([_tenant('elevenchars', '0x1', 101, ['192.0.2.0/24'])])])[0]
    assert result.get('failed')
    assert "tenants[0].name: 'elevenchars' gives the interface name 'ae-elevenchars-t' (16 characters)" in result['msg']
    assert not [ns for ns in our_netns() if ns.startswith(site.prefix)]


def test_foreign_namespace_is_never_taken_over_or_deleted(site, netns_factory):
    foreign = netns_factory()
    tenant = _tenant('a', '0x1', 101, ['192.0.2.0/24'], netns=foreign)
    result = run_module('tenant', {'netns': site.host, 'tenants': [tenant]})
    assert result.get('failed') and 'was not created by this module' in result['msg'], result
    gone = ok(run_module('tenant', {'netns': site.host, 'purge': True,
                                    'tenants': [{'name': 'a', 'netns': foreign, 'state': 'absent'}]}))
    assert gone['changed'] is False
    assert foreign in our_netns()


def test_nftables_binding_works_inside_a_namespace(netns_factory):
    """The distribution's binding (python3-nftables) opens its socket where the thread is: a dry run changes
    nothing, a bad rule says why, a listing carries no counter values."""
    sys.path.insert(0, helpers.COLLECTIONS)
    from ansible_collections.anycast.edge.plugins.module_utils import _nftables
    from ansible_collections.anycast.edge.plugins.module_utils._netns import in_netns

    script = ('table inet anycast_edge { chain ingress { type filter hook prerouting priority filter; '
              'policy accept; tcp dport 21 counter accept; }; }\n')
    ns = netns_factory()
    with in_netns(ns):
        nft = _nftables.Nft()
        assert nft.run(script, dry_run=True)[0] is True
        assert nsexec(ns, ['nft', 'list', 'ruleset']).stdout == ''   # a dry run changes nothing
        ok_, _out, err = nft.run('add rule inet anycast_edge ingress tcp dport 22 frobnicate\n')
        assert not ok_ and 'syntax error' in err
        assert nft.run(script)[0] is True
        ok_, listing, _err = nft.run('list table inet anycast_edge')
        nft.close()
    assert ok_ and 'tcp dport 21 counter accept' in listing   # stateless: no packet counts
    assert 'tcp dport 21 counter packets 0 bytes 0 accept' in nsexec(ns, ['nft', 'list', 'ruleset']).stdout


def test_many_tenants_with_few_file_descriptors(site, netns_factory):
    """Namespaces are read and written one after the other, their sockets released: 60 tenants fit in
    96 descriptors (libnftables aborts the process on a socket numbered above FD_SETSIZE, so holding
    one per tenant would crash a host with a few hundred tenants)."""
    import resource
    items = [{'name': 't%02d' % n, 'prefixes': ['10.%d.0.0/16' % n], 'mark': str(n + 1), 'table': 1000 + n,
              'firewall': {'rules': ['tcp dport 22 accept']}} for n in range(60)]
    args = {'netns': site.host, 'netns_prefix': site.prefix, 'tenants': items, 'purge': True}
    for item in items:
        netns_factory.track(site.ns(item['name']))

    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))

    def run(module_args):
        payload = dict(module_args, _ansible_check_mode=False, _ansible_diff=False, _ansible_tmpdir='/tmp')
        proc = subprocess.run([sys.executable, os.path.join(helpers.REPO, 'plugins', 'modules', 'tenant.py')],
                              input=json.dumps({'ANSIBLE_MODULE_ARGS': payload}), capture_output=True, text=True,
                              env=helpers.module_env(), preexec_fn=limited, timeout=600, check=False)
        assert proc.stdout, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    try:
        assert ok(run(args))['changed'] is True
        assert len([ns for ns in our_netns() if ns.startswith(site.prefix)]) == 60
        assert ok(run(args))['changed'] is False
    finally:
        gone = run({'netns': site.host, 'tenants': [], 'purge': True})
    assert len(ok(gone)['purged']) == 60
    assert leftovers(site) == []


# -- issue 18: hostile or careless input ---------------------------------------------------------

def _netns_files(prefix):
    """Names under /run/netns starting with PREFIX, stale files included (ip netns list shows those too)."""
    return sorted(name for name in os.listdir('/run/netns') if name.startswith(prefix))


@pytest.mark.parametrize('rule, words', [
    ('include "/etc/passwd"', "'include' is not a rule"),
    ('define evil = 1', "'define' is not a rule"),
    ('redefine evil = 1', "'redefine' is not a rule"),
    ('policy accept', "'policy' is not a rule"),
    ('type filter hook input priority 0', "'type' is not a rule"),
    ('tcp dport $ssh accept', "'$'"),
    ('accept } } table inet evil { chain c { type filter hook input priority 0', "'}' without its '{'"),
    ('tcp dport 22 accept\n', 'printable'),
])
def test_a_firewall_statement_that_is_not_a_rule_is_refused(site, rule, words):
    """The docs say a rule cannot escape its chain: include (which read any file and could close the chain
    from inside it), define and the chain's own settings are refused before nft sees them."""
    state = host_state(site.host)
    result = run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix,
                                   'tenants': site.tenants(a_rules=['tcp dport 21 accept', rule], b=False)})
    assert result.get('failed') and result['msg'].startswith('tenants[0].firewall.rules[1]: '), result
    assert words in result['msg'], result['msg']
    assert host_state(site.host) == state
    assert not _netns_files(site.prefix)


def test_an_included_file_can_neither_open_a_table_nor_show_its_contents(site, tmp_path):
    """What the tester ran: a crafted file that closes the chain and opens a table of its own, and
    /etc/passwd. Both are refused as input; and nft's messages never quote a file's lines."""
    ok(run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix, 'tenants': site.tenants(b=False)}))
    crafted = tmp_path / 'crafted.nft'
    crafted.write_text('accept\n}\n}\ntable inet evil {\n chain c {\n  type filter hook input priority 0;\n'
                       '  accept\n')
    ruleset = nsexec(site.ns('a'), ['nft', 'list', 'ruleset']).stdout
    for path in (str(crafted), '/etc/passwd'):
        result = run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix,
                                       'tenants': site.tenants(a_rules=['include "%s"' % path], b=False)})
        assert result.get('failed') and 'tenants[0].firewall.rules[0]' in result['msg'], result
        assert 'root:' not in result['msg'] and 'evil' not in result['msg'], result['msg']
    assert nsexec(site.ns('a'), ['nft', 'list', 'ruleset']).stdout == ruleset
    assert 'evil' not in nsexec(site.ns('a'), ['nft', 'list', 'tables']).stdout

    sys.path.insert(0, helpers.COLLECTIONS)
    from ansible_collections.anycast.edge.plugins.module_utils._tenant_firewall import quiet
    said = ('In file included from <cmdline>:1:86-109:\n/etc/passwd:1:5-5: Error: syntax error, unexpected colon\n'
            'root:x:0:0:root:/root:/bin/bash\n    ^\n')
    assert 'root:x' not in quiet(said) and '/etc/passwd:1:5-5: Error: syntax error' in quiet(said)


@pytest.mark.parametrize('field', ['name', 'netns', 'host_if', 'tenant_if'])
def test_a_name_with_a_trailing_newline_is_refused_and_leaves_nothing(site, netns_factory, field):
    """'rzq\\n' passed checks ending in '$' and left a namespace, a veth and an ip rule nothing could remove."""
    tenant = _tenant('rzq', '0x71', 171, ['192.0.2.0/24'], link={'host_if': 'qb-rzq', 'tenant_if': 'qb-rzq-t'})
    netns_factory.track(site.prefix + 'rzq\n')
    netns_factory.track(site.prefix + 'rzq')
    if field == 'name':
        tenant['name'] = 'rzq\n'
        param = 'tenants[0].name'
    elif field == 'netns':
        tenant['netns'] = site.prefix + 'rzq\n'
        param = 'tenants[0].netns'
    else:
        tenant['link'][field] += '\n'
        param = 'tenants[0].link.' + field
    state = host_state(site.host)
    result = run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix, 'tenants': [tenant]})
    assert result.get('failed') and result['msg'].startswith(param + ': '), result
    assert "\\n" in result['msg'], result['msg']       # shown escaped, not as a line break
    assert host_state(site.host) == state
    assert not _netns_files(site.prefix)
    assert 'qb-rzq' not in nsexec(site.host, ['ip', '-o', 'link']).stdout


def test_link_pools_that_overlap_the_hosts_networks_are_refused_before_anything_changes(site):
    ok(run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix, 'tenants': site.tenants(b=False)}))
    state = host_state(site.host)
    neighbour = nsexec(site.host, ['ip', 'route', 'get', '198.51.100.2']).stdout
    c = _tenant('c', '0x30', 130, ['198.18.0.0/24'])
    cases = [
        ({'link_pool_ipv4': '198.51.100.0/24'}, [c], 'link_pool_ipv4', 'the connected subnet of up0 198.51.100.0/24'),
        ({'link_pool_ipv4': '127.0.0.0/8'}, [c], 'link_pool_ipv4', 'overlaps 127.0.0.0/8'),
        ({'link_pool_ipv4': '203.0.113.0/25'}, [c], 'link_pool_ipv4', "another tenant's prefix"),
        ({'link_pool_ipv6': '2001:db8:ff::/64'}, [dict(c, prefixes=['2001:db8:c::/48'])], 'link_pool_ipv6',
         'the connected subnet of up0'),
        ({}, [dict(c, link={'host_ipv4': '198.51.100.10/31', 'tenant_ipv4': '198.51.100.11/31'})], 'tenants[0].link',
         'the connected subnet of up0'),
        ({'link_pool_ipv4': '198.18.0.0/24'}, [c], 'link_pool_ipv4', 'overlaps 198.18.0.0/24 of tenant c'),
    ]
    for extra, tenants, param, words in cases:
        args = dict({'netns': site.host, 'netns_prefix': site.prefix, 'tenants': tenants}, **extra)
        for check in (True, False):
            result = run_module('tenant', args, check=check)
            assert result.get('failed') and result['msg'].startswith(param + ': '), (extra, result)
            assert words in result['msg'], result['msg']
        assert host_state(site.host) == state
        assert _netns_files(site.ns('c')) == []
    assert nsexec(site.host, ['ip', 'route', 'get', '198.51.100.2']).stdout == neighbour


@pytest.mark.parametrize('tenants, param, words', [
    ([_tenant('a', '0x100/0x100', 101, ['192.0.2.0/24']), _tenant('b', '0x300/0x300', 102, ['198.51.100.0/24'])],
     'tenants[1].mark', 'both match packets marked 0x300'),
    ([_tenant('a', '0x1/0xf', 101, ['192.0.2.0/24']), _tenant('b', '0x10/0xf0', 102, ['198.51.100.0/24'])],
     'tenants[1].mark', 'both match packets marked 0x11'),
    ([_tenant('a', '0x1', 101, ['0.0.0.0/0'])], 'tenants[0].prefixes[0]', 'default route'),
    ([_tenant('a', '0x1', 101, ['::/0'])], 'tenants[0].prefixes[0]', 'default route'),
    ([_tenant('a', '0x1', 101, ['127.0.0.0/16'])], 'tenants[0].prefixes[0]', 'loopback'),
    ([_tenant('a', '0x1', 101, ['224.0.0.0/8'])], 'tenants[0].prefixes[0]', 'multicast'),
])
def test_debatable_tenant_input_is_refused(site, tenants, param, words):
    """Marks that only work by ip rule fall-through, a tenant owning the default route or a special range."""
    state = host_state(site.host)
    result = run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix, 'tenants': tenants})
    assert result.get('failed') and result['msg'].startswith(param + ': '), result
    assert words in result['msg'], result['msg']
    assert host_state(site.host) == state


def test_marks_that_never_match_the_same_packet_are_fine(site):
    tenants = [_tenant('a', '0x100/0x300', 101, ['192.0.2.0/24']), _tenant('b', '0x200/0x300', 102, ['198.18.0.0/24'])]
    ok(run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix, 'tenants': tenants}))


def test_a_stale_namespace_file_left_by_a_killed_run_is_repaired(site):
    """`ip netns add` and the module create /run/netns/NAME before mounting the namespace on it: a run
    killed in between leaves an empty file that nothing can enter ("Invalid argument")."""
    path = '/run/netns/' + site.ns('a')
    open(path, 'w').close()
    result = ok(run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix,
                                      'tenants': site.tenants(b=False)}))
    assert "tenant a: create network namespace '%s'" % site.ns('a') in result['actions']
    assert 'alias anycast.edge tenant a ' in nsexec(site.ns('a'), ['ip', 'link', 'show', 'lo']).stdout
    assert ok(run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix,
                                    'tenants': site.tenants(b=False)}))['changed'] is False


def _unmarked(prefix):
    """Namespaces of PREFIX that exist (mounted) but carry no ownership marker."""
    found = []
    for name in _netns_files(prefix):
        shown = helpers.sh(['ip', '-n', name, 'link', 'show', 'lo'], check=False)
        if shown.returncode == 0 and 'alias anycast.edge tenant' not in shown.stdout:
            found.append(name)
    return found


def test_a_create_killed_at_any_point_is_completed_by_the_next_run(site, netns_factory):
    """SIGKILL during a 30-tenant create used to leave a namespace with lo up and no marker: every rerun
    then failed ("was not created by this module") and purge left it. The namespace is now marked before
    it gets its name, and a stale file of a half-made one is replaced."""
    items = [{'name': 'k%02d' % n, 'prefixes': ['10.%d.0.0/16' % n], 'mark': str(n + 1), 'table': 1000 + n,
              'firewall': {'rules': ['tcp dport 22 accept']}} for n in range(30)]
    for item in items:
        netns_factory.track(site.ns(item['name']))
    args = {'netns': site.host, 'netns_prefix': site.prefix, 'tenants': items,
            '_ansible_check_mode': False, '_ansible_diff': False, '_ansible_tmpdir': '/tmp'}
    module = [sys.executable, os.path.join(helpers.REPO, 'plugins', 'modules', 'tenant.py')]
    kills = 0
    # kill right as the N-th namespace appears, then at moments in between (veths, addresses, routes)
    for target, delay in ((1, 0), (4, 0), (9, 0), (0, 0.35), (0, 0.8), (16, 0), (0, 1.5), (24, 0)):
        proc = subprocess.Popen(module, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=helpers.module_env())
        proc.stdin.write(json.dumps({'ANSIBLE_MODULE_ARGS': args}).encode())
        proc.stdin.close()
        start = len(_netns_files(site.prefix))
        started = time.monotonic()
        while proc.poll() is None and time.monotonic() < started + 120:
            count = len(_netns_files(site.prefix))
            if (target and count > start and count >= target) or (not target and time.monotonic() > started + delay):
                proc.kill()
                kills += 1
                break
        proc.wait()
        assert _unmarked(site.prefix) == [], 'a killed run left a namespace without its marker'
        unowned = [line for line in nsexec(site.host, ['ip', '-o', 'link']).stdout.splitlines()
                   if ' ae-k' in line and 'alias anycast.edge tenant' not in line]
        assert unowned == [], 'a killed run left an interface that is not recognisably ours'
    assert kills >= 4
    ok(run_module('tenant', dict((k, v) for k, v in args.items() if not k.startswith('_'))))
    assert len(_netns_files(site.prefix)) == 30 and _unmarked(site.prefix) == []
    assert ok(run_module('tenant', dict((k, v) for k, v in args.items() if not k.startswith('_'))))['changed'] is False
    gone = ok(run_module('tenant', {'netns': site.host, 'tenants': [], 'purge': True}))
    assert len(gone['purged']) == 30
    assert leftovers(site) == [] and _netns_files(site.prefix) == []


def test_one_bad_rule_among_3000_is_named_quickly(site):
    """The rejected rule is found by bisection (a dozen dry runs) while the host lock is held, not one by one."""
    rules = ['ip saddr 10.%d.%d.0/24 tcp dport 443 accept' % (n // 256, n % 256) for n in range(3000)]
    rules[2345] = 'ip saddr 10.9.9.300 accept'
    start = time.monotonic()
    result = run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix,
                                   'tenants': site.tenants(a_rules=rules, b=False)})
    elapsed = time.monotonic() - start
    assert result.get('failed') and result['msg'].startswith("tenants[0].firewall.rules[2345]: nft rejects"), result
    assert not _netns_files(site.prefix)
    print('3000 rules, one bad: refused in %.1f s' % elapsed)


def test_a_failed_apply_leaves_nothing_it_created(site, tmp_path):
    """The mark chains are written last; when iptables-restore fails there, the namespaces, veths, table
    routes and ip rules of the tenants this run was creating are removed again (an existing tenant is left
    for the next run to repair)."""
    ok(run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix, 'tenants': site.tenants(b=False)}))
    state = host_state(site.host)
    failing = tmp_path / 'bin'
    failing.mkdir()
    for tool in ('iptables-restore', 'ip6tables-restore'):
        script = failing / tool
        # reads its input first, as iptables-restore does: exiting at once made the module's write fail with
        # EPIPE ("Broken pipe") instead, now and then
        script.write_text('#!/bin/sh\ncat >/dev/null\necho "forced failure injected by the test" >&2\nexit 1\n')
        script.chmod(0o755)
    new = _tenant('c', '0x30', 130, ['198.18.0.0/24', '2001:db8:c::/48'], firewall={'rules': ['tcp dport 22 accept']})
    result = run_module('tenant', {'netns': site.host, 'netns_prefix': site.prefix, 'driver': 'iptables',
                                   'tenants': site.tenants(b=False) + [new]},
                        env={'PATH': str(failing) + os.pathsep + os.environ['PATH']})
    assert result.get('failed') and 'forced failure' in result['msg'], result
    assert 'what this run created for tenant(s) c was removed again' in result['msg'], result['msg']
    assert host_state(site.host) == state
    assert _netns_files(site.ns('c')) == []
    assert 'ae-c' not in nsexec(site.host, ['ip', '-o', 'link']).stdout
