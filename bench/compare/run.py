"""Benchmark: module time of the no-op re-apply, two checkouts side by side in one run.

The no-op figures of bench/foundation (10,000 AnyIP prefixes, 1,000 TPROXY
rules), bench/tenant (100 tenants x 4 prefixes x 10 firewall rules, purge on)
and the rate-limit chain of bench/hashlimit (both families, filter and raw),
and bgp_speaker with 1,000 prefixes (BIRD running in the namespace, its own socket),
for this checkout ("new") and another git revision ("old", default: main),
measured in the same run on the same kernel state:

  each module's objects are applied once (by the new code); then the no-op is
  run alternately by old and new, ROUNDS times each, every run checked to be a
  no-op (changed=false), and the medians compared.

Alternating keeps a busy neighbour on this shared machine from favouring one
side. The old revision is exported with `git archive` into a scratch
directory; both run with this venv's python, from plain module files (the way
tests/helpers.run_module runs them: AnsiballZ aside). Everything runs inside
namespaces this script creates (prefix <AE_NS_TAG>aec) and removes, even on errors.

Rerun (as root, from the repository root, under the shared lock):
    flock /work/locks/heavy.lock .venv/bin/python bench/compare/run.py [--old main] [--rounds 7] [--json FILE]
        [--only anyip_route,tproxy_rule,hashlimit,tenant,bgp_speaker]
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, 'tests'))
import helpers  # noqa: E402

PREFIX = helpers.ns_prefix('aec')


def bench(name):
    """bench/NAME/run.py as a module: the same objects as that benchmark."""
    spec = importlib.util.spec_from_file_location('bench_' + name, os.path.join(REPO, 'bench', name, 'run.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export(revision, into):
    """A checkout of REVISION at INTO, with its own build/collections link."""
    os.makedirs(into)
    archive = subprocess.run(['git', '-C', REPO, 'archive', revision], capture_output=True, check=True).stdout
    subprocess.run(['tar', '-x', '-C', into], input=archive, check=True)
    link = os.path.join(into, 'build', 'collections', 'ansible_collections', 'anycast')
    os.makedirs(link)
    os.symlink(into, os.path.join(link, 'edge'))
    return into


def module_time(tree, module, args):
    """Seconds of one module process run from TREE, and its result."""
    payload = dict(args, _ansible_check_mode=False, _ansible_diff=False, _ansible_tmpdir=tempfile.gettempdir())
    env = dict(os.environ, PYTHONPATH=os.path.join(tree, 'build', 'collections'))
    start = time.perf_counter()
    proc = subprocess.run([helpers.PYTHON, os.path.join(tree, 'plugins', 'modules', module + '.py')],
                          input=json.dumps({'ANSIBLE_MODULE_ARGS': payload}), capture_output=True, text=True,
                          env=env, timeout=900, check=False)
    seconds = time.perf_counter() - start
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit('%s printed no JSON (%s):\n%s' % (module, tree, proc.stderr[-3000:]))
    if result.get('failed'):
        raise SystemExit('%s failed (%s): %s' % (module, tree, result.get('msg')))
    return seconds, result


def start_bird(ns, scratch):
    """BIRD in NS on a configuration of its own, with its own socket: bgp_speaker's host."""
    bird = {'config_file': os.path.join(scratch, 'bird.conf'), 'control_socket': os.path.join(scratch, 'bird.ctl')}
    with open(bird['config_file'], 'w') as handle:
        handle.write('router id 192.0.2.1;\nprotocol device { }\n')
    helpers.nsexec(ns, ['bird', '-c', bird['config_file'], '-s', bird['control_socket'],
                        '-P', os.path.join(scratch, 'bird.pid')])
    deadline = time.monotonic() + 10
    while not os.path.exists(bird['control_socket']):
        if time.monotonic() > deadline:
            raise SystemExit('BIRD did not start in %s' % ns)
        time.sleep(0.05)
    return bird


def cases(ns, state_dir, opts):
    common = {'netns': ns, 'state_dir': state_dir}
    prefixes = bench('foundation').prefixes
    bgp_prefixes = prefixes(opts.bgp_prefixes)
    return [
        ('bgp_speaker: no-op, %d prefixes' % opts.bgp_prefixes, 'bgp_speaker',
         {'netns': ns, 'local_as': 64512, 'router_id': '192.0.2.1', 'prefixes': bgp_prefixes,
          'neighbors': [{'name': 'r4', 'address': '198.18.0.1', 'remote_as': 64500}],
          # what the role passes: the served prefixes, here the announced ones collapsed
          'served_prefixes': [str(n) for n in ipaddress.collapse_addresses(
              ipaddress.ip_network(p) for p in bgp_prefixes)],
          'config_file': os.path.join(os.path.dirname(state_dir), 'bird.conf'),
          'control_socket': os.path.join(os.path.dirname(state_dir), 'bird.ctl')}),
        ('anyip_route: no-op, %d prefixes' % opts.routes, 'anyip_route', dict(common, prefixes=prefixes(opts.routes))),
        ('tproxy_rule: no-op, %d rules' % opts.rules, 'tproxy_rule',
         dict(common, rules=[{'destination': p, 'on_port': 1234} for p in prefixes(opts.rules)])),
        ('hashlimit: no-op, both families', 'hashlimit', dict(common, protocol='tcp', ports=[80, 443], ssh_guard='ignore')),
        ('tenant: no-op, %d tenants x %d prefixes x %d rules' % (opts.tenants, 4, 10), 'tenant',
         dict(common, netns_prefix=ns + '-', purge=True, tenants=bench('tenant').tenants(opts.tenants, 4, 10))),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--old', default='main', help='git revision to compare with (default: main)')
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--routes', type=int, default=10000)
    parser.add_argument('--rules', type=int, default=1000)
    parser.add_argument('--tenants', type=int, default=100)
    parser.add_argument('--bgp-prefixes', type=int, default=1000)
    parser.add_argument('--only', help='comma-separated modules to measure (default: all)')
    parser.add_argument('--json', help='also write the figures to this file')
    opts = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix='aec-')
    ns = helpers.unique_name(PREFIX)
    rows = []
    try:
        old = export(opts.old, os.path.join(scratch, 'old'))
        revision = subprocess.run(['git', '-C', REPO, 'rev-parse', '--short', opts.old], capture_output=True,
                                  text=True, check=True).stdout.strip()
        helpers.sh(['ip', 'netns', 'add', ns])
        helpers.nsexec(ns, ['ip', 'link', 'set', 'lo', 'up'])
        state_dir = os.path.join(scratch, 'state')
        for label, module, args in cases(ns, state_dir, opts):
            if opts.only and module not in opts.only.split(','):
                continue
            if module == 'bgp_speaker':
                start_bird(ns, scratch)
            module_time(REPO, module, args)                      # the objects, once
            times = {'old': [], 'new': []}
            for _round in range(opts.rounds):
                for side, tree in (('old', old), ('new', REPO)):
                    seconds, result = module_time(tree, module, args)
                    if result.get('changed'):
                        raise SystemExit('%s: the %s code did not see a no-op: %s' % (label, side, result))
                    times[side].append(seconds)
            old_s, new_s = statistics.median(times['old']), statistics.median(times['new'])
            rows.append({'benchmark': label, 'old_s': round(old_s, 3), 'new_s': round(new_s, 3),
                         'ratio': round(new_s / old_s, 3), 'old_runs': times['old'], 'new_runs': times['new']})
            print('%-50s old %6.3f s  new %6.3f s  new/old %.2f' % (label, old_s, new_s, new_s / old_s), flush=True)
    finally:
        for name in helpers.netns_list():
            if name == ns or name.startswith(ns + '-'):
                helpers.sh('ip netns pids %s | xargs -r kill -9' % name, check=False)     # BIRD
                helpers.sh(['ip', 'netns', 'del', name], check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print('| no-op re-apply (module time, median of %d) | old (%s) | new | new / old |' % (opts.rounds, revision))
    print('|---|---:|---:|---:|')
    for row in rows:
        print('| %s | %.3f s | %.3f s | %.2f |' % (row['benchmark'], row['old_s'], row['new_s'], row['ratio']))
    if opts.json:
        with open(opts.json, 'w') as handle:
            json.dump({'old': opts.old, 'revision': revision, 'rounds': opts.rounds, 'rows': rows}, handle, indent=1)


if __name__ == '__main__':
    main()
