"""Every case of tests/bad_input_cases.py: refused, naming the parameter, nothing changed, documented."""

from __future__ import annotations

import os

import pytest

import helpers
from bad_input_cases import CASES, cell, placeholders, substitute

pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
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


@pytest.fixture(scope='module')
def namespaces():
    factory = helpers.NamespaceFactory(NS_PREFIX)
    try:
        yield make_namespaces(factory)
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
