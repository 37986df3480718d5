"""Every case of tests/bad_input_cases.py: refused, naming the parameter, nothing changed, documented."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

import helpers
from bad_input_cases import CASES, PROXY_CASES, cell, placeholders, substitute

PROXY_PKG = os.path.join(helpers.REPO, 'roles', 'transparent_proxy', 'files', 'anycast_proxy')

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
NS_PREFIX = helpers.ns_prefix('ae9')
DOC = os.path.join(helpers.REPO, 'docs', 'bad-input.md')


def run_case(module, args, host, tenant, bird=None):
    """Run one case the way the document shows it; return (result, message with placeholders).

    bird: {'config_file', 'control_socket'} of the live BIRD a bgp_speaker case must leave alone.
    """
    mapping = {'HOST': host, 'TENANT': tenant}
    args = substitute(dict(args), mapping)
    env = args.pop('_env', None)
    if module != 'install_info':     # it reads files, units and accounts, no namespace
        args.setdefault('netns', host)
    if module == 'tenant':
        args['netns_prefix'] = NS_PREFIX + 't-'
    if module == 'bgp_speaker':
        scratch = bird or {'config_file': os.path.join(helpers.scratch_dir('ae9-bird-'), 'bird.conf'),
                           'control_socket': '/nonexistent/bird.ctl'}
        args.setdefault('config_file', scratch['config_file'])
        args.setdefault('control_socket', scratch['control_socket'])
    result = helpers.run_module(module, args, env=env)
    return result, placeholders(result.get('msg', ''), mapping)


def give_default_routes(ns):
    """Default routes via 198.18.0.1 and 2001:db8:ff::1 in NS (a veth pair inside it stands for the
    uplink): the gateways anyip_route's lockout guard reads from the kernel."""
    helpers.nsexec(ns, ['ip', 'link', 'add', 'aegw0', 'type', 'veth', 'peer', 'name', 'aegw1'])
    for ifname in ('aegw0', 'aegw1'):
        # no autoconfigured link-local addresses: their routes would appear while a case runs
        helpers.nsexec(ns, ['ip', 'link', 'set', ifname, 'addrgenmode', 'none'])
    helpers.nsexec(ns, ['ip', 'addr', 'add', '198.18.0.2/24', 'dev', 'aegw0'])
    helpers.nsexec(ns, ['ip', 'addr', 'add', '2001:db8:ff::2/64', 'dev', 'aegw0', 'nodad'])
    for ifname in ('aegw0', 'aegw1'):
        helpers.nsexec(ns, ['ip', 'link', 'set', ifname, 'up'])
    helpers.nsexec(ns, ['ip', 'route', 'add', 'default', 'via', '198.18.0.1'])
    helpers.nsexec(ns, ['ip', '-6', 'route', 'add', 'default', 'via', '2001:db8:ff::1'])


def make_namespaces(factory):
    """(HOST, TENANT) of the cases; HOST has default gateways."""
    host, tenant = factory(), factory()
    give_default_routes(host)
    return host, tenant


def run_proxy_case(config):
    """`anycast_proxy --check-config` on CONFIG: (exit status, message without the file's name)."""
    with tempfile.NamedTemporaryFile('w', suffix='.json') as handle:
        json.dump(config, handle)
        handle.flush()
        proc = subprocess.run(['/usr/bin/python3', '-B', PROXY_PKG, '--check-config', handle.name],
                              capture_output=True, text=True, timeout=30, check=False)
        prefix = 'anycast-proxy: config error in %s: ' % handle.name
    message = proc.stderr.strip()
    return proc.returncode, message[len(prefix):] if message.startswith(prefix) else message


@pytest.fixture(scope='module')
def namespaces():
    factory = helpers.NamespaceFactory(NS_PREFIX)
    try:
        yield make_namespaces(factory)
    finally:
        factory.cleanup()


@pytest.fixture(scope='module')
def live_bird(namespaces):
    """A BIRD running in the host namespace on a valid configuration: bgp_speaker refusals leave both alone."""
    workdir = helpers.scratch_dir('ae9-bird-')
    os.chmod(workdir, 0o755)
    bird = {'config_file': os.path.join(workdir, 'bird.conf'), 'control_socket': os.path.join(workdir, 'bird.ctl')}
    with open(bird['config_file'], 'w') as handle:
        handle.write('router id 192.0.2.1;\nprotocol device { }\n')
    if shutil.which('bird') is None:
        if os.environ.get('CI') == 'true':
            pytest.fail('bird is not installed (bird2 in scripts/apt-packages.txt)')
        yield dict(bird, running=False)
        return
    helpers.nsexec(namespaces[0], ['bird', '-c', bird['config_file'], '-s', bird['control_socket'],
                                   '-P', os.path.join(workdir, 'bird.pid')])
    yield dict(bird, running=True)


def bird_state(bird):
    """The live file and, when BIRD runs, when it last read a configuration."""
    with open(bird['config_file']) as handle:
        text = handle.read()
    status = ''
    if bird['running']:
        status = helpers.sh(['birdc', '-s', bird['control_socket'], 'show status']).stdout
        status = [line for line in status.splitlines() if line.startswith('Last reconfiguration')]
    return text, status


@pytest.mark.parametrize('module,args,param,words', CASES,
                         ids=['%02d-%s-%s' % (i, c[0], c[2]) for i, c in enumerate(CASES)])
def test_refused_naming_the_parameter_changing_nothing_and_documented(namespaces, live_bird, module, args, param,
                                                                      words):
    host, tenant = namespaces
    before = helpers.kernel_state(host), helpers.kernel_state(tenant)
    bird_before = bird_state(live_bird)
    ours = [n for n in helpers.netns_list() if n.startswith(NS_PREFIX)]
    state_dir = helpers.scratch_dir('ae9-state-')
    result, message = run_case(module, dict(args, **({'state_dir': state_dir} if module in
                                                     helpers.persisted_modules() else {})), host, tenant, live_bird)
    assert result.get('failed'), result
    assert param in result['msg'] and words in result['msg'], result['msg']
    assert (helpers.kernel_state(host), helpers.kernel_state(tenant)) == before
    assert bird_state(live_bird) == bird_before
    assert sorted(os.listdir(os.path.dirname(live_bird['config_file']))) == ['bird.conf', 'bird.ctl', 'bird.pid'] \
        if live_bird['running'] else ['bird.conf']
    assert [n for n in helpers.netns_list() if n.startswith(NS_PREFIX)] == ours
    assert os.listdir(state_dir) == []
    with open(DOC) as handle:
        assert cell(message) in handle.read(), 'docs/bad-input.md is stale: run scripts/gen_bad_input_doc.py'


def test_the_document_covers_at_least_sixty_cases_of_every_module():
    modules = set(case[0] for case in CASES)
    assert len(CASES) >= 60
    assert modules == set(name[:-3] for name in os.listdir(os.path.join(helpers.REPO, 'plugins', 'modules'))
                          if name.endswith('.py'))


@pytest.mark.parametrize('config,key,words', PROXY_CASES,
                         ids=['%02d-%s' % (i, c[1]) for i, c in enumerate(PROXY_CASES)])
def test_the_proxy_refuses_its_bad_configurations_naming_the_key_and_documented(config, key, words):
    status, message = run_proxy_case(config)
    assert status == 2, message
    assert message.startswith(key + ': ') and words in message, message
    with open(DOC) as handle:
        assert cell(message) in handle.read(), 'docs/bad-input.md is stale: run scripts/gen_bad_input_doc.py'
