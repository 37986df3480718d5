"""The site and status playbooks against the example and lab inventories: what site.yml does on each
host (which modules it calls, in which order, with which arguments, what it installs, what check mode
skips; worked out by Ansible itself from the inventory), the status table it prints, and that the
inventories resolve to what the playbooks read; the lab's PROXY v2 origin decodes the header the proxy
sends. Cheap: no hosts are contacted."""

import ast
import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
INVENTORIES = {
    'example': os.path.join(REPO, 'inventories', 'example'),
    'lab': os.path.join(REPO, 'lab', 'inventory'),
}
# What site.yml configures; the example inventory must show every one of them.
FEATURES = ['edge_conntrack', 'edge_rate_limit', 'edge_anyip_prefixes', 'edge_anyip_purge', 'edge_tproxy_rules',
            'edge_tenants', 'edge_tenants_purge', 'edge_gre_tunnels', 'edge_gre_purge', 'transparent_proxy_routes',
            'transparent_proxy_prefixes', 'edge_xtables_driver', 'bgp_local_as', 'bgp_neighbors', 'bgp_router_id']


def ansible_env():
    collections = os.path.join(REPO, 'build', 'collections')
    link = os.path.join(collections, 'ansible_collections', 'anycast', 'edge')
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(REPO, link)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR='1')
    env.pop('ANSIBLE_CONFIG', None)
    return env


def run(*argv):
    result = subprocess.run([os.path.join(BIN, argv[0])] + list(argv[1:]), cwd=REPO, env=ansible_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout
    return result.stdout


@pytest.mark.parametrize('inventory', sorted(INVENTORIES))
@pytest.mark.parametrize('playbook', ['site.yml', 'status.yml', 'drain.yml', 'undrain.yml'])
def test_playbook_syntax(playbook, inventory):
    output = run('ansible-playbook', '-i', INVENTORIES[inventory], '--syntax-check',
                 os.path.join('playbooks', playbook))
    assert 'playbook: playbooks/%s' % playbook in output


RENDER = os.path.join(REPO, 'tests', 'unit', 'render_playbook.py')
MODULE_PACKAGES = ('iproute2', 'iptables', 'nftables', 'conntrack', 'libnftables1', 'python3-pyroute2',
                   'python3-iptables', 'python3-nftables')   # site.yml's default edge_packages


def site_on(inventory, host, packages=MODULE_PACKAGES, check=False, **extra_vars):
    """What site.yml does on HOST of INVENTORY, worked out by Ansible (tests/unit/render_playbook.py):
    the kernel play and the proxy play, each task with whether it runs and its templated arguments."""
    extra = dict(extra_vars, ansible_check_mode=check,
                 edge_installed_packages={'packages': {name: {'version': '1', 'arch': 'amd64'} for name in packages}})
    output = run(os.path.basename(sys.executable), RENDER, os.path.join('playbooks', 'site.yml'),
                 INVENTORIES[inventory], host, json.dumps(extra))
    kernel, proxy = json.loads(output)
    return kernel, proxy


def module_calls(play):
    """[(module, args)] of the collection's modules that apply kernel state the play runs, in order
    (install_info, which reads the packages, left out)."""
    return [(task['action'].split('.')[-1], task['args']) for task in play['tasks']
            if task['runs'] and task['action'].startswith('anycast.edge.') and task['action'] != 'anycast.edge.install_info']


def task(play, action, name=None):
    """The one task of PLAY with ACTION (and NAME, where a play has several)."""
    found = [t for t in play['tasks'] if t['action'] == action and name in (None, t['name'])]
    assert len(found) == 1, (action, name, found)
    return found[0]


HOSTS = [('example', 'edge-ams-1'), ('example', 'edge-fra-1'), ('example', 'edge-fra-2'),
         ('lab', 'ael-edge1'), ('lab', 'ael-edge2')]


@pytest.mark.parametrize('inventory, host', HOSTS)
def test_site_makes_one_call_per_module_with_the_hosts_variables(inventory, host):
    variables = inventory_hosts(inventory)[1][host]
    kernel, proxy = site_on(inventory, host)
    assert task(kernel, 'ansible.builtin.assert')['false'] == []
    calls = module_calls(kernel)
    modules = [name for name, _args in calls]
    # one call per module, the rate limit in place before any prefix becomes local
    assert len(set(modules)) == len(modules), modules
    assert modules.index('hashlimit') < modules.index('anyip_route'), modules
    args = dict(calls)
    driver = variables.get('edge_xtables_driver')
    limit = variables['edge_rate_limit']
    assert args['hashlimit'] == dict(limit, driver=limit.get('driver', driver), state='present')
    assert args['conntrack_sizing'] == dict(variables['edge_conntrack'], state='present')
    assert args['anyip_route']['prefixes'] == variables['edge_anyip_prefixes'] + variables['transparent_proxy_prefixes']
    assert args['anyip_route']['purge'] == variables['edge_anyip_purge']
    assert args['tproxy_rule'] == {'chain': variables.get('edge_tproxy_chain', 'EDGE-TPROXY'), 'driver': driver,
                                   'rules': variables['edge_tproxy_rules'], 'state': 'present'}
    assert args['tenant'] == {'tenants': variables['edge_tenants'], 'purge': variables['edge_tenants_purge'],
                              'driver': driver}
    # every package is there: nothing to install
    assert not task(kernel, 'ansible.builtin.apt')['runs']
    # the GRE tasks and the boot-time restore, then the proxy role a batch at a time, stopping at a failure
    assert task(kernel, 'ansible.builtin.include_tasks')['args'] == {'_raw_params': 'tasks/gre.yml'}
    roles = [(t['args']['name'], t['runs']) for t in kernel['tasks'] if t['action'] == 'ansible.builtin.include_role']
    assert roles == [('anycast.edge.edge_restore', True), ('anycast.edge.bgp', True)]
    assert (proxy['serial'], proxy['max_fail_percentage']) == ('34%', 0)
    assert task(proxy, 'ansible.builtin.include_role', 'Run the transparent proxy role')['args'] == \
        {'name': 'anycast.edge.transparent_proxy'}


def include_vars(inventory, host, name, **extra_vars):
    """The vars site.yml gives the include_role task NAME, templated for HOST (Ansible's own view)."""
    from ansible.parsing.dataloader import DataLoader
    playbook = DataLoader().load_from_file(os.path.join(REPO, 'playbooks', 'site.yml'))   # trusted templates
    found = [t for play in playbook for t in play['tasks'] if t.get('name') == name]
    assert len(found) == 1, name
    variables = dict(inventory_hosts(inventory)[1][host], **extra_vars)
    from ansible.template import Templar, trust_as_template
    templar = Templar(loader=DataLoader(), variables=variables)
    return {key: templar.template(trust_as_template(value)) for key, value in found[0].get('vars', {}).items()}


@pytest.mark.parametrize('inventory, host', HOSTS)
def test_site_makes_the_proxys_prefixes_local_once(inventory, host):
    """The kernel play's one anyip_route call holds the proxy's prefixes; the role is told not to call
    it again. Without transparent_proxy_prefixes the role makes its routes' destinations local."""
    variables = inventory_hosts(inventory)[1][host]
    kernel, _proxy = site_on(inventory, host)
    assert dict(module_calls(kernel))['anyip_route']['prefixes'][-len(variables['transparent_proxy_prefixes']):] == \
        variables['transparent_proxy_prefixes']
    assert include_vars(inventory, host, 'Run the transparent proxy role')['transparent_proxy_manage_anyip'] is False
    assert include_vars(inventory, host, 'Run the transparent proxy role',
                        transparent_proxy_prefixes=[])['transparent_proxy_manage_anyip'] is True
    # with no edge prefixes and no purge, the proxy's prefixes alone still make the call
    kernel, _proxy = site_on(inventory, host, edge_anyip_prefixes=[], edge_anyip_purge=False)
    assert dict(module_calls(kernel))['anyip_route']['prefixes'] == variables['transparent_proxy_prefixes']


def test_site_leaves_out_what_a_host_does_not_configure():
    kernel, proxy = site_on('example', 'edge-fra-1', edge_conntrack={}, edge_rate_limit={}, edge_anyip_prefixes=[],
                            edge_anyip_purge=False, edge_tproxy_rules=[], edge_tenants=[], edge_tenants_purge=False,
                            edge_gre_tunnels=[], edge_gre_purge=False, transparent_proxy_routes=[],
                            transparent_proxy_prefixes=[])
    # only the TPROXY chain is still managed: an empty list removes it
    assert module_calls(kernel) == [('tproxy_rule', {'chain': 'EDGE-TPROXY', 'driver': 'auto', 'rules': [],
                                                     'state': 'absent'})]
    assert not task(kernel, 'ansible.builtin.include_tasks')['runs']
    assert not any(t['runs'] for t in proxy['tasks'] if t['action'] == 'ansible.builtin.include_role')


def test_site_with_an_anyip_purge_refuses_to_drop_the_proxys_prefixes():
    kernel, _proxy = site_on('example', 'edge-fra-1', transparent_proxy_prefixes=[])
    assert len(task(kernel, 'ansible.builtin.assert')['false']) == 1


def test_site_installs_only_the_missing_packages_and_check_mode_then_predicts_no_kernel_state():
    missing = ['python3-pyroute2', 'python3-nftables']
    packages = [name for name in MODULE_PACKAGES if name not in missing]
    kernel, _proxy = site_on('example', 'edge-fra-1', packages=packages)
    # one read of these packages only (dpkg), not of every package the host has
    assert task(kernel, 'anycast.edge.install_info')['args'] == {'packages': list(MODULE_PACKAGES)}
    assert sorted(task(kernel, 'ansible.builtin.apt')['args']['name']) == sorted(missing)
    assert len(module_calls(kernel)) == 5
    # in check mode the modules could not even be imported yet: said, and skipped
    checked, _proxy = site_on('example', 'edge-fra-1', packages=packages, check=True)
    assert module_calls(checked) == []
    said = task(checked, 'ansible.builtin.debug')['args']['msg']
    assert 'not installed yet' in said and all(name in said for name in missing), said   # in set order


def test_site_proxy_batch_size_is_an_extra_var():
    _kernel, proxy = site_on('example', 'edge-fra-1', edge_proxy_serial=1)
    assert proxy['serial'] == 1


def inventory_hosts(name):
    data = json.loads(run('ansible-inventory', '-i', INVENTORIES[name], '--list'))
    return data, data['_meta']['hostvars']


def test_example_inventory_shows_every_feature():
    data, hostvars = inventory_hosts('example')
    assert sorted(data['edge']['children']) == ['edge_ams', 'edge_fra']
    assert sorted(hostvars) == ['edge-ams-1', 'edge-fra-1', 'edge-fra-2']
    for host, variables in hostvars.items():
        missing = [name for name in FEATURES if name not in variables]
        assert not missing, '%s lacks %s' % (host, missing)
        # The AnyIP purge keeps edge_anyip_prefixes + transparent_proxy_prefixes only.
        assert variables['transparent_proxy_prefixes'], host
    assert hostvars['edge-fra-1']['transparent_proxy_workers'] == 4
    assert hostvars['edge-ams-1']['edge_conntrack']['expected_connections'] == 200000
    assert hostvars['edge-fra-2']['edge_xtables_driver'] == 'python-iptables'
    tenants = hostvars['edge-fra-1']['edge_tenants']
    marks = [t['mark'] for t in tenants]
    assert len(set(marks)) == len(marks)
    namespaces = {'tenant-' + t['name'] for t in tenants}
    assert {t['netns'] for t in hostvars['edge-fra-1']['edge_gre_tunnels']} <= namespaces


@pytest.mark.parametrize('inventory', sorted(INVENTORIES))
def test_every_host_of_the_inventories_has_a_bgp_plan_without_errors(inventory):
    from ansible_collections.anycast.edge.plugins.filter.bgp import bgp_plan
    _data, hostvars = inventory_hosts(inventory)
    for host, variables in hostvars.items():
        plan = bgp_plan(variables)
        assert plan['errors'] == [], (host, plan['errors'])
        groups = [g['name'] for g in plan['health']['groups']]
        assert groups[0] == 'proxy' and 'tenant-acme' in groups, (host, groups)
        sites = {n['address'].rsplit('.', 1)[0] for n in plan['speaker']['neighbors'] if '.' in n['address']}
        assert len(sites) == 1, (host, sites)         # each host peers with its own site's routers


def test_example_sites_peer_with_two_routers_each_with_bfd_and_communities():
    _data, hostvars = inventory_hosts('example')
    for host, variables in hostvars.items():
        v4 = [n for n in variables['bgp_neighbors'] if '.' in n['address']]
        assert len(v4) == 2 and len(variables['bgp_neighbors']) == 4, host
        assert variables['bgp_neighbor_defaults']['bfd'] is True and variables['bgp_communities'], host
    assert hostvars['edge-ams-1']['bgp_prefixes'][0]['communities'] == ['64602:90']


def test_lab_inventory_uses_the_podman_connection():
    data, hostvars = inventory_hosts('lab')
    assert sorted(hostvars) == ['ael-edge1', 'ael-edge2']
    for variables in hostvars.values():
        assert variables['ansible_connection'] == 'containers.podman.podman'
        for prefix in variables['transparent_proxy_prefixes'] + variables['edge_anyip_prefixes']:
            # Documentation prefixes only.
            assert prefix.startswith(('192.0.2.', '198.51.100.', '203.0.113.', '2001:db8:')), prefix


def load_origin():
    spec = importlib.util.spec_from_file_location('lab_origin', os.path.join(REPO, 'lab', 'origin.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def proxy_v2(family_byte, source, destination, source_port, destination_port, tlv=b''):
    addresses = (socket.inet_pton(socket.AF_INET6 if ':' in source else socket.AF_INET, source)
                 + socket.inet_pton(socket.AF_INET6 if ':' in destination else socket.AF_INET, destination)
                 + struct.pack('!HH', source_port, destination_port) + tlv)
    return b'\r\n\r\n\x00\r\nQUIT\n' + bytes([0x21, family_byte]) + struct.pack('!H', len(addresses)) + addresses


@pytest.mark.parametrize('header, expected', [
    (proxy_v2(0x11, '10.89.77.21', '192.0.2.77', 40000, 31337),
     {'family': 'tcp4', 'client': '10.89.77.21', 'client_port': 40000, 'dialled': '192.0.2.77', 'dialled_port': 31337}),
    (proxy_v2(0x21, 'fd00:ae1::21', '2001:db8:100::5', 1, 65535, tlv=b'\x04\x00\x01\x00'),
     {'family': 'tcp6', 'client': 'fd00:ae1::21', 'client_port': 1, 'dialled': '2001:db8:100::5',
      'dialled_port': 65535, 'tlv_bytes': 4}),
])
def test_lab_origin_reads_proxy_v2(header, expected):
    origin = load_origin()
    left, right = socket.socketpair()
    try:
        left.sendall(header + b'payload')
        answer = origin.parse_proxy_v2(right)
        assert right.recv(7) == b'payload'     # nothing beyond the header was consumed
    finally:
        left.close()
        right.close()
    for key, value in expected.items():
        assert answer[key] == value, key


@pytest.mark.parametrize('data, message', [
    (b'GET / HTTP/1.1\r\n\r\n', 'no PROXY v2 signature'),
    (b'\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c', 'version 1'),
    (b'\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04abcd', 'too short'),
])
def test_lab_origin_refuses_bad_headers(data, message):
    origin = load_origin()
    left, right = socket.socketpair()
    try:
        left.sendall(data)
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(ValueError, match=message):
            origin.parse_proxy_v2(right)
    finally:
        left.close()
        right.close()


def test_status_table_renders(tmp_path):
    """The table play alone (--start-at-task), fed with what edge_info and the helper
    script returned on two hosts: one line per host, counters summed, notes below."""
    rate_chain = [{'rule': '-m hashlimit --hashlimit-upto 20/sec -j ACCEPT', 'packets': 79, 'bytes': 1},
                  {'rule': '-m limit --limit 1/sec -j LOG', 'packets': 5, 'bytes': 1},
                  {'rule': '-p tcp -j REJECT --reject-with tcp-reset', 'packets': 521, 'bytes': 1}]
    healthy = {
        'edge_status_info': {
            'anyip': {'ipv4': ['192.0.2.0/24', '198.51.100.1/32'], 'ipv6': ['2001:db8:100::/64']},
            'xtables': [{'family': 'ipv4', 'table': 'filter', 'chain': 'EDGE-RATE-LIMIT', 'rules': rate_chain},
                        {'family': 'ipv6', 'table': 'filter', 'chain': 'EDGE-RATE-LIMIT', 'rules': rate_chain},
                        {'family': 'ipv4', 'table': 'mangle', 'chain': 'ANYCAST-TPROXY',
                         'rules': [{'rule': '-d 192.0.2.0/24 -p tcp -j TPROXY --on-port 1234', 'packets': 3}]}],
            'hashlimit_tables': [{'entries': 3}, {'entries': 1}],
            'conntrack': {'count': 120, 'max': 262144},
            'tenants': [{'name': 'acme'}, {'name': 'globex'}],
            'tunnels': [],
            'records': ['anyip_route@host', 'hashlimit@host@EDGE-RATE-LIMIT'],
            'drift': {'anyip_route@host': {'drifted': True, 'failed': False},
                      'hashlimit@host@EDGE-RATE-LIMIT': {'drifted': False, 'failed': False}},
            'pending': [],
            'warnings': ['conntrack is 85% full', 'proxy route web: origin 10.0.2.3:8080 is down'],
            'bgp': {'sessions': [{'state': 'Established'}, {'state': 'Active'}], 'announced': ['192.0.2.0/24'],
                    'withheld': [{'prefix': '2001:db8:100::/64'}], 'drained': {'reason': 'maintenance'}},
            'proxy_origins': {'available': True, 'origins': [{'route': 'web', 'origin': '10.0.2.2:8080', 'up': True},
                                                             {'route': 'web', 'origin': '10.0.2.3:8080', 'up': False}]},
        },
        'edge_status_shell': {'stdout_lines': ['proxy=active', 'kernel=6.18.0', 'ip_gre=no', 'connections=42']},
        'edge_rate_limit': {'chain': 'EDGE-RATE-LIMIT'},
        'edge_gre_tunnels': [{'name': 'gre-acme'}],
    }
    broken = {'edge_status_info': {'failed': True, 'msg': 'No module named pyroute2'},
              'edge_status_shell': {'stdout_lines': ['proxy=inactive']}}
    inventory = tmp_path / 'hosts.json'
    inventory.write_text(json.dumps({'edge': {'hosts': {'edge-a': healthy, 'edge-b': broken},
                                              'vars': {'ansible_connection': 'local',
                                                       'ansible_python_interpreter': sys.executable}}}))
    output = run('ansible-playbook', '-i', str(inventory), 'playbooks/status.yml',
                 '--start-at-task', 'Print one line per edge host')
    lines = output.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith('ok: [') and line.endswith('=> {'))
    table = json.loads('{' + '\n'.join(lines[start + 1:lines.index('}', start) + 1]))['msg']
    header, row_a, row_b = table[0].split(), table[2].split(), table[3].split()
    assert header[:4] == ['HOST', 'PROXY', 'CONNS', 'ORIGINS']
    # proxy, connections, proxy origins up of all, AnyIP v4+v6, TPROXY rules, hashlimit accepted/refused
    # over both families, table entries, conntrack, tenants, GRE (no GRE in the kernel), drift against the records
    assert row_a[:11] == ['edge-a', 'active', '42', '1/2', '2+1', '1', '158/1042', '3+1', '120/262144', 'acme,globex',
                          'skipped,'], row_a
    assert table[2].rstrip().endswith('1 of 2 records')
    assert ' 1/2 up ' in table[2] and ' 1/1 drained ' in table[2], table[2]
    assert header[12:14] == ['BGP', 'PREFIXES']     # 'RATE LIMIT' is two words
    assert row_b[:5] == ['edge-b', 'inactive', '-', '-', 'error']
    notes = table[4:]
    assert 'edge-a: warning: conntrack is 85% full' in notes
    assert 'edge-a: warning: proxy route web: origin 10.0.2.3:8080 is down' in notes
    assert 'edge-b: edge_info failed: No module named pyroute2' in notes
    assert 'edge-a: drained (maintenance); playbooks/undrain.yml announces it again' in notes
    assert any(note.startswith('edge-a: GRE skipped: kernel 6.18.0 has no ip_gre') for note in notes)


def module_options(name):
    """The options of a module, from the DOCUMENTATION string of its source."""
    with open(os.path.join(REPO, 'plugins', 'modules', name + '.py')) as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'DOCUMENTATION' for t in node.targets):
            return yaml.safe_load(ast.literal_eval(node.value))['options']
    raise AssertionError('%s has no DOCUMENTATION' % name)


@pytest.mark.parametrize('inventory', sorted(INVENTORIES))
def test_inventory_keys_are_module_options(inventory):
    """Every key the inventories pass through site.yml is an option of the module that gets it."""
    hostvars = inventory_hosts(inventory)[1]
    hashlimit, conntrack = module_options('hashlimit'), module_options('conntrack_sizing')
    tenant, gre, tproxy = module_options('tenant'), module_options('gre_tunnel'), module_options('tproxy_rule')
    role_spec = yaml.safe_load(open(os.path.join(REPO, 'roles', 'transparent_proxy', 'meta', 'argument_specs.yml')))
    role_options = role_spec['argument_specs']['main']['options']
    for host, variables in hostvars.items():
        assert set(variables.get('edge_rate_limit', {})) <= set(hashlimit), host
        assert set(variables.get('edge_conntrack', {})) <= set(conntrack), host
        for item in variables.get('edge_tenants', []):
            assert set(item) <= set(tenant['tenants']['suboptions']), (host, item)
            assert set(item.get('firewall') or {}) <= set(tenant['tenants']['suboptions']['firewall']['suboptions'])
        for item in variables.get('edge_gre_tunnels', []):
            assert set(item) <= set(gre['tunnels']['suboptions']), (host, item)
        for item in variables.get('edge_tproxy_rules', []):
            assert set(item) <= set(tproxy['rules']['suboptions']), (host, item)
        for name in variables:
            if name.startswith('transparent_proxy_'):
                assert name in role_options, (host, name)
        for route in variables.get('transparent_proxy_routes', []):
            assert set(route) <= set(role_options['transparent_proxy_routes']['options']), (host, route)
