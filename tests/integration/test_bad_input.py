"""Every case of tests/bad_input_cases.py: refused, naming the parameter, nothing changed, documented."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

import helpers
from bad_input_cases import CASES, PROXY_CASES, cell, placeholders, substitute

PROXY_PKG = os.path.join(helpers.REPO, 'roles', 'transparent_proxy', 'files', 'anycast_proxy')

NS_PREFIX = helpers.ns_prefix('ae9')
DOC = os.path.join(helpers.REPO, 'docs', 'bad-input.md')


def run_case(module, args, host, tenant):
    """Run one case the way the document shows it; return (result, message with placeholders)."""
    mapping = {'HOST': host, 'TENANT': tenant}
    args = substitute(dict(args), mapping)
    env = args.pop('_env', None)
    args.setdefault('netns', host)
    if module == 'tenant':
        args['netns_prefix'] = NS_PREFIX + 't-'
    result = helpers.run_module(module, args, env=env)
    return result, placeholders(result.get('msg', ''), mapping)


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
        yield factory(), factory()
    finally:
        factory.cleanup()


@pytest.mark.parametrize('module,args,param,words', CASES,
                         ids=['%02d-%s-%s' % (i, c[0], c[2]) for i, c in enumerate(CASES)])
def test_refused_naming_the_parameter_changing_nothing_and_documented(namespaces, module, args, param, words):
    host, tenant = namespaces
    before = helpers.kernel_state(host), helpers.kernel_state(tenant)
    ours = [n for n in helpers.netns_list() if n.startswith(NS_PREFIX)]
    state_dir = helpers.scratch_dir('ae9-state-')
    result, message = run_case(module, dict(args, **({'state_dir': state_dir} if module in
                                                     helpers.persisted_modules() else {})), host, tenant)
    assert result.get('failed'), result
    assert param in result['msg'] and words in result['msg'], result['msg']
    assert (helpers.kernel_state(host), helpers.kernel_state(tenant)) == before
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
