"""The resource-module contract of every state-changing module, for real.

* ``state: gathered`` returns what the namespace holds of the module's objects,
  in the module's own input shape; given back as input it changes nothing, and
  it is what ``after`` said (check mode's prediction included).
* ``state: rendered`` returns the commands the input would send to a host
  without those objects; it reads and touches no host and no namespace, and
  works as an unprivileged user. The commands are the ones the module really
  sends when it applies the same input to an empty namespace.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

import helpers
from helpers import nsexec, ok, run_module

NS_PREFIX = helpers.ns_prefix('aer')
pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)

TENANTS = [
    {'name': 'a', 'prefixes': ['203.0.113.0/24', '2001:db8:a::/48'], 'mark': '0x10', 'table': 110,
     'firewall': {'policy': 'drop', 'rules': ['ip daddr 203.0.113.100 tcp dport 20-21 accept',
                                              'tcp dport { 80, 443 } accept',
                                              'ip6 daddr 2001:db8:a::100 tcp dport 21 counter accept']}},
    {'name': 'b', 'prefixes': ['192.0.2.0/24'], 'mark': '0x20/0xf0', 'table': 120,
     'link': {'host_if': 'ae-bee', 'tenant_if': 'bee0', 'host_ipv4': '10.9.0.0/31', 'tenant_ipv4': '10.9.0.1/31'}},
]

# module -> arguments that exercise what gathered has to read back exactly: both families,
# multiport split over two rules, marks, rates iptables prints in another unit, default
# masks left out, custom LOG, explicit link addresses, nft's own spelling of a set.
CASES = {
    'anyip_route': {'prefixes': ['192.0.2.0/24', '198.51.100.7/32', '2001:db8:1::/64']},
    'tproxy_rule': {'chain': 'AER-TPROXY', 'rules': [
        {'destination': '192.0.2.0/24', 'on_port': 1234, 'ports': list(range(1, 40, 2))},
        {'destination': '192.0.2.0/24', 'on_port': 1234, 'protocol': 'udp', 'mark': '0x1/0xff'},
        {'destination': '2001:db8:1::/64', 'on_port': 1235, 'ports': ['8000-8100', 443], 'on_ip': '::1'}]},
    'hashlimit': {'rate': '3000/min', 'burst': 30, 'mode': ['srcip', 'dstport'], 'srcmask': {'ipv4': 24},
                  'protocol': 'tcp', 'ports': [80, 443], 'exempt': ['198.51.100.0/24', '2001:db8:ff::/64'],
                  'log': {'rate': '60/min', 'prefix': 'aer: '}, 'htable_max': 1000, 'match': 'syn'},
    'conntrack_sizing': {'expected_connections': 1000, 'headroom': 1.5},
    'tenant': {'tenants': TENANTS, 'rule_priority': 900},
    'gre_tunnel': {'tunnels': []},   # this kernel has no GRE: an empty host (tests/vm has real tunnels)
}
MODULES = sorted(CASES)


def arguments(module, ns, tmp_path):
    args = json.loads(json.dumps(CASES[module]))
    args['netns'] = ns
    if module == 'conntrack_sizing':
        args['sysctl_file'] = str(tmp_path / 'conntrack.conf')
    if module == 'tenant':
        args['netns_prefix'] = ns + '-'
    if module == 'hashlimit':
        args['ssh_guard'] = 'ignore'
    return args


def back_as_input(module, gathered, args):
    """GATHERED as the next call's input: the same namespace and files, nothing else added."""
    given = dict(gathered)
    for key in ('netns', 'sysctl_file', 'netns_prefix', 'ssh_guard'):
        if key in args:
            given.setdefault(key, args[key])
    return given


@pytest.fixture
def host(netns_factory):
    ns = netns_factory()
    yield ns
    for tenant in helpers.netns_list():
        if tenant.startswith(ns + '-'):
            helpers.sh(['ip', 'netns', 'del', tenant], check=False)


@pytest.mark.parametrize('module', MODULES)
def test_gathered_is_the_input_that_changes_nothing(module, host, tmp_path):
    args = arguments(module, host, tmp_path)
    predicted = ok(run_module(module, args, check=True))
    applied = ok(run_module(module, args))
    assert applied['changed'] is (module != 'gre_tunnel')
    assert _comparable(predicted['commands']) == _comparable(applied['commands'])
    # what names the objects (a chain, a file) is part of the question
    question = dict((key, args[key]) for key in ('netns', 'chain', 'sysctl_file') if key in args)
    gathered = ok(run_module(module, dict(question, state='gathered')))
    assert gathered['changed'] is False
    after = applied.get('after', applied['before'])     # 'after' comes with a change only
    assert gathered['gathered'] == after == predicted.get('after', predicted['before']), (gathered, after)
    settled = helpers.kernel_state(host)
    again = ok(run_module(module, back_as_input(module, gathered['gathered'], args)))
    assert again['changed'] is False, again['commands']
    assert again['commands'] == [] and again['before'] == gathered['gathered'] and 'after' not in again
    assert helpers.kernel_state(host) == settled


def test_gathered_reads_back_what_iptables_prints_differently(host):
    """iptables prints a rule in its own spelling: rates in another unit, default masks left out."""
    args = {'netns': host, 'rate': '60/hour', 'family': 'ipv4', 'srcmask': 32, 'ssh_guard': 'ignore',
            'htable_expire': 5000}
    ok(run_module('hashlimit', args))
    rule = nsexec(host, ['iptables-save', '-t', 'filter']).stdout
    assert '--hashlimit-upto 1/min' in rule and '--hashlimit-srcmask' not in rule   # how iptables prints it
    gathered = ok(run_module('hashlimit', {'netns': host, 'state': 'gathered'}))['gathered']
    assert (gathered['rate'], gathered['srcmask'], gathered['htable_expire']) == ('60/hour', 32, 5000)
    assert ok(run_module('hashlimit', dict(gathered, netns=host, ssh_guard='ignore')))['changed'] is False


def as_nobody(module, args):
    """Run a module as user nobody: no capability, no access to any namespace."""
    payload = dict(args, _ansible_check_mode=False, _ansible_diff=False, _ansible_tmpdir='/tmp')
    proc = subprocess.run(['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups', helpers.PYTHON,
                           os.path.join(helpers.REPO, 'plugins', 'modules', module + '.py')],
                          input=json.dumps({'ANSIBLE_MODULE_ARGS': payload}), capture_output=True, text=True,
                          env=helpers.module_env({'HOME': '/tmp'}), timeout=120, check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('%s printed no JSON as nobody (rc %d): %s' % (module, proc.returncode, proc.stderr))


def _comparable(commands):
    """Commands with what only a real host has (its namespace inode, nft's listing digest) masked."""
    text = '\n'.join(commands)
    text = re.sub(r'host (\d+|\$\(stat -L -c %i /proc/self/ns/net\)) mark', 'host HOST mark', text)
    text = re.sub(r'kernel=(<[^>]*>|[0-9a-f]+)"', 'kernel=DIGEST"', text)
    return text


@pytest.mark.parametrize('module', MODULES)
def test_rendered_touches_nothing_works_without_root_and_is_what_apply_sends(module, host, tmp_path):
    args = arguments(module, host, tmp_path)
    if module == 'gre_tunnel':
        args['tunnels'] = [{'name': 'gre-acme', 'netns': 'tenant-acme', 'local': '192.0.2.1',
                            'remote': '198.51.100.2', 'key': 42, 'address': '10.255.0.1/30',
                            'routes': ['203.0.113.0/24']}]
    missing = helpers.unique_name(NS_PREFIX + 'gone')
    before = helpers.netns_list()
    rendered = as_nobody(module, dict(args, state='rendered', netns=missing))
    assert not rendered.get('failed'), rendered.get('msg')
    assert rendered['changed'] is False and rendered['rendered'], rendered
    assert helpers.netns_list() == before              # no namespace created, not even the one named
    assert not os.path.exists(str(tmp_path / 'conntrack.conf'))
    if module == 'gre_tunnel':
        assert rendered['rendered'][0].startswith('ip link add aegre') and ' type gre local 192.0.2.1 ' in \
            rendered['rendered'][0]
        return
    if module == 'tenant':
        # a host that has never forwarded, as rendered assumes
        nsexec(host, ['sysctl', '-qw', 'net.ipv4.ip_forward=0', 'net.ipv6.conf.all.forwarding=0'])
    applied = ok(run_module(module, args))
    expected = applied['commands']
    if module == 'conntrack_sizing':
        expected = [c for c in expected if c.startswith('cat > ')]   # a namespace cannot set the global values
        rendered['rendered'] = [c for c in rendered['rendered'] if c.startswith('cat > ')]
    assert _comparable(rendered['rendered']).replace(missing, host) == _comparable(expected)
