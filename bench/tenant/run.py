"""Benchmark: anycast.edge.tenant with many tenants, one module call per run.

A throwaway namespace (prefix aen) plays the host; the tenants' namespaces are
created by the module (prefix aen too) and all deleted at the end, also on
failure. Measured:

* module time: one module process (as Ansible runs it, AnsiballZ aside) for the
  first apply of TENANTS tenants with PREFIXES prefixes and RULES firewall
  rules each, then the no-op re-apply (target: under 3 s), then a re-apply
  with one tenant's firewall changed, then the removal of all of them;
* the first apply's and the no-op's wall time through ansible-playbook, with
  the venv's python (pyroute2 0.9) and Debian's /usr/bin/python3 (0.7).

Rerun: sudo .venv/bin/python bench/tenant/run.py [--tenants 100 --prefixes 4 --rules 10]
"""

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, 'tests'))
import helpers  # noqa: E402

PREFIX = 'aen'


def tenants(count, n_prefixes, n_rules, variant=0):
    base4 = ipaddress.ip_network('10.0.0.0/8').subnets(new_prefix=24)
    base6 = ipaddress.ip_network('2001:db8::/32').subnets(new_prefix=48)
    out = []
    for index in range(count):
        prefixes = []
        for p_index in range(n_prefixes):
            prefixes.append(str(next(base6) if p_index % 2 else next(base4)))
        first = prefixes[0].split('/')[0]
        rules = ['ip daddr %s tcp dport %d accept' % (first, 1000 + r + variant) for r in range(n_rules)]
        out.append({'name': 't%03d' % index, 'prefixes': prefixes, 'mark': '0x%x' % (0x1000 + index),
                    'table': 1000 + index, 'firewall': {'policy': 'drop', 'rules': rules}})
    return out


def ansible_only_path():
    """A directory holding only the venv's ansible package: Debian's python gets ansible's
    module_utils from it (as AnsiballZ would ship them) but keeps its own pyroute2."""
    import ansible
    path = os.path.join(tempfile.gettempdir(), 'aen-bench-ansible')
    os.makedirs(path, exist_ok=True)
    link = os.path.join(path, 'ansible')
    if not os.path.islink(link):
        os.symlink(os.path.dirname(ansible.__file__), link)
    return path


def module_run(args, python=None):
    payload = dict(args, _ansible_check_mode=False, _ansible_diff=False, _ansible_tmpdir=tempfile.gettempdir())
    cmd = [python or helpers.PYTHON, os.path.join(REPO, 'plugins', 'modules', 'tenant.py')]
    env = helpers.module_env()
    if python:
        env['PYTHONPATH'] += os.pathsep + ansible_only_path()
    start = time.perf_counter()
    proc = subprocess.run(cmd, input=json.dumps({'ANSIBLE_MODULE_ARGS': payload}), capture_output=True,
                          text=True, env=env, timeout=900, check=False)
    seconds = time.perf_counter() - start
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit('module printed no JSON:\n%s\n%s' % (proc.stdout[-3000:], proc.stderr[-3000:]))
    if result.get('failed'):
        raise SystemExit('module failed: %s' % result.get('msg'))
    return seconds, result


def playbook_run(args, python):
    start = time.perf_counter()
    result = helpers.run_playbook([{'anycast.edge.tenant': args}],
                                  extra_vars={'ansible_python_interpreter': python})[0]
    seconds = time.perf_counter() - start
    if result.get('failed'):
        raise SystemExit('playbook failed: %s' % result.get('msg'))
    return seconds, result


def cleanup(host, ns_prefix):
    helpers.sh(['ip', 'netns', 'del', host], check=False)
    for name in helpers.netns_list():
        if name.startswith(ns_prefix):
            helpers.sh(['ip', 'netns', 'del', name], check=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--tenants', type=int, default=100)
    parser.add_argument('--prefixes', type=int, default=4)
    parser.add_argument('--rules', type=int, default=10)
    parser.add_argument('--skip-playbook', action='store_true')
    opts = parser.parse_args()

    host = helpers.unique_name(PREFIX)
    ns_prefix = helpers.unique_name(PREFIX) + '-'
    helpers.sh(['ip', 'netns', 'add', host])
    rows = []
    try:
        helpers.nsexec(host, ['ip', 'link', 'set', 'lo', 'up'])
        wanted = tenants(opts.tenants, opts.prefixes, opts.rules)
        args = {'netns': host, 'netns_prefix': ns_prefix, 'tenants': wanted, 'purge': True}

        seconds, result = module_run(args)
        assert result['changed'] and len(result['tenants']) == opts.tenants
        rows.append(('first apply (module)', seconds, len(result['actions'])))
        seconds, result = module_run(args)
        assert not result['changed'], result['actions'][:5]
        rows.append(('no-op re-apply (module)', seconds, 0))
        seconds, result = module_run(args, python='/usr/bin/python3')
        assert not result['changed'], result['actions'][:5]
        rows.append(('no-op re-apply (module, Debian python3 + pyroute2 0.7)', seconds, 0))

        changed = tenants(opts.tenants, opts.prefixes, opts.rules)
        changed[0]['firewall']['rules'][0] = changed[0]['firewall']['rules'][0].replace('accept', 'drop')
        seconds, result = module_run(dict(args, tenants=changed))
        assert result['changed']
        rows.append(('one firewall changed (module)', seconds, len(result['actions'])))

        if not opts.skip_playbook:
            seconds, result = playbook_run(args, helpers.PYTHON)
            rows.append(('re-apply, one firewall back (ansible-playbook, venv python)', seconds,
                         len(result['actions'])))
            seconds, result = playbook_run(args, helpers.PYTHON)
            assert not result['changed']
            rows.append(('no-op re-apply (ansible-playbook, venv python)', seconds, 0))
            seconds, result = playbook_run(args, '/usr/bin/python3')
            assert not result['changed']
            rows.append(('no-op re-apply (ansible-playbook, /usr/bin/python3)', seconds, 0))

        seconds, result = module_run({'netns': host, 'tenants': [], 'purge': True})
        assert sorted(result['purged']) == sorted(t['name'] for t in wanted)
        rows.append(('purge all (module)', seconds, len(result['actions'])))
        left = [n for n in helpers.netns_list() if n.startswith(ns_prefix)]
        assert not left, left
    finally:
        cleanup(host, ns_prefix)

    print('tenants=%d prefixes=%d rules=%d (python %s)' % (opts.tenants, opts.prefixes, opts.rules,
                                                           sys.version.split()[0]))
    print('%-62s %9s %8s' % ('run', 'seconds', 'actions'))
    for label, seconds, actions in rows:
        print('%-62s %9.2f %8d' % (label, seconds, actions))


if __name__ == '__main__':
    main()
