"""The resource-module contract of every state-changing module, for real.

* ``state: gathered`` returns what the namespace holds of the module's objects,
  in the module's own input shape; given back as input it changes nothing, and
  it is what ``after`` said (check mode's prediction included).
* ``state: rendered`` returns the commands the input would send to a host
  without those objects; it reads and touches no host and no namespace, and
  works as an unprivileged user. The commands are the ones the module really
  sends when it applies the same input to an empty namespace.

bgp_speaker's host is a real BIRD 2 in the namespace, with its own control socket
and configuration file (started on a configuration of its own: the empty host).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest

import helpers
from helpers import nsexec, ok, run_module
from prerequisites import missing_prerequisite

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
    # communities common to all prefixes and per prefix, a large one, multihop, an extra protocol
    'bgp_speaker': {'local_as': 64512, 'router_id': '192.0.2.10', 'communities': ['64512:1'],
                    'neighbors': [{'name': 'r4', 'address': '198.18.0.1', 'remote_as': 64500, 'hold_time': 12},
                                  {'address': '2001:db8:ff::1', 'remote_as': 64500, 'bfd': False, 'multihop': 2}],
                    'prefixes': ['2001:db8:1::/64', {'prefix': '192.0.2.0/24', 'communities': ['64500:1:2']}],
                    'served_prefixes': ['192.0.2.0/24', '2001:db8:1::/48'], 'error_wait_time': [2, 60],
                    'extra_config': 'protocol static aer_static { ipv4; route 198.18.9.0/24 blackhole; }\n'},
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
    if module == 'bgp_speaker':
        args['config_file'] = str(tmp_path / 'bird.conf')
        args['control_socket'] = str(tmp_path / 'bird.ctl')
    return args


def start_bird(ns, args):
    """BIRD in NS on a configuration of its own (a host without bgp_speaker's), with its own socket."""
    if shutil.which('bird') is None:
        missing_prerequisite('bird is not installed (bird2 in scripts/apt-packages.txt)')
    with open(args['config_file'], 'w') as handle:
        handle.write('router id 192.0.2.99;\nprotocol device { }\n')
    nsexec(ns, ['bird', '-c', args['config_file'], '-s', args['control_socket'],
                '-P', args['config_file'] + '.pid'])
    deadline = time.monotonic() + 10
    while not os.path.exists(args['control_socket']):
        assert time.monotonic() < deadline, 'BIRD did not start in %s' % ns
        time.sleep(0.05)


def bird_status(args):
    """When BIRD last read a configuration, and its protocols with their start times."""
    lines = [line for command in ('show status', 'show protocols')
             for line in helpers.sh(['birdc', '-s', args['control_socket'], command]).stdout.splitlines()[1:]]
    return [line for line in lines if not line.startswith('Current server time')]


def back_as_input(module, gathered, args):
    """GATHERED as the next call's input: the same namespace and files, nothing else added."""
    given = dict(gathered)
    for key in ('netns', 'sysctl_file', 'netns_prefix', 'ssh_guard', 'config_file', 'control_socket',
                'served_prefixes'):
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
    if module == 'bgp_speaker':
        start_bird(host, args)
    predicted = ok(run_module(module, args, check=True))
    applied = ok(run_module(module, args))
    assert applied['changed'] is (module != 'gre_tunnel')
    assert _comparable(predicted['commands']) == _comparable(applied['commands'])
    # what names the objects (a chain, a file) is part of the question
    question = dict((key, args[key]) for key in ('netns', 'chain', 'sysctl_file', 'config_file') if key in args)
    gathered = ok(run_module(module, dict(question, state='gathered')))
    assert gathered['changed'] is False
    after = applied.get('after', applied['before'])     # 'after' comes with a change only
    assert gathered['gathered'] == after == predicted.get('after', predicted['before']), (gathered, after)
    settled = helpers.kernel_state(host)
    if module == 'bgp_speaker':
        assert applied['applied'] is True       # BIRD took it
        settled = (settled, bird_status(args), os.stat(args['config_file']).st_mtime_ns)
    again = ok(run_module(module, back_as_input(module, gathered['gathered'], args)))
    assert again['changed'] is False, again['commands']
    assert again['commands'] == [] and again['before'] == gathered['gathered'] and 'after' not in again
    if module == 'bgp_speaker':     # not even told to reconfigure, no session restarted, the file not written
        assert (helpers.kernel_state(host), bird_status(args), os.stat(args['config_file']).st_mtime_ns) == settled
    else:
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
    if module == 'bgp_speaker':
        start_bird(host, args)
    missing = helpers.unique_name(NS_PREFIX + 'gone')
    before = helpers.netns_list()
    files = sorted(os.listdir(str(tmp_path)))
    if module == 'bgp_speaker':
        files = (files, bird_status(args), os.stat(args['config_file']).st_mtime_ns)
    rendered = as_nobody(module, dict(args, state='rendered', netns=missing))
    assert not rendered.get('failed'), rendered.get('msg')
    assert rendered['changed'] is False and rendered['rendered'], rendered
    assert helpers.netns_list() == before              # no namespace created, not even the one named
    assert not os.path.exists(str(tmp_path / 'conntrack.conf'))
    if module == 'bgp_speaker':     # the live file and the running BIRD untouched
        assert (sorted(os.listdir(str(tmp_path))), bird_status(args), os.stat(args['config_file']).st_mtime_ns) \
            == files
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
