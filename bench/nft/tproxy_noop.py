"""Benchmark: a no-op re-apply of N TPROXY rules, driver nft against driver iptables, side by side.

Each driver gets a throwaway namespace (prefix $AE_NS_TAG + aebn) with the same N rules applied once;
then the no-op re-apply (module time: one module process as Ansible runs it) is measured REPEAT times,
the drivers interleaved so that both see the same machine load. Reports the medians and their ratio.

With ``--before REF`` the same runs are also made with the collection as it was at git REF (exported
with ``git archive`` into a temporary directory), interleaved with this tree's: before and after in one run.

Rerun (benchmarks run under the shared lock):
  flock /work/locks/heavy.lock sudo .venv/bin/python bench/nft/tproxy_noop.py [--rules 1000 --repeat 7]
  flock /work/locks/heavy.lock sudo .venv/bin/python bench/nft/tproxy_noop.py --before main --repeat 9
"""

import argparse
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
sys.path.insert(0, os.path.join(REPO, 'bench', 'foundation'))
import helpers  # noqa: E402
from run import tproxy_rules  # noqa: E402

DRIVERS = ('iptables', 'nft')


def export_tree(ref, scratch):
    """The collection at git REF, as ansible_collections/anycast/edge under SCRATCH; returns (tree, collections)."""
    tree = os.path.join(scratch, 'ansible_collections', 'anycast', 'edge')
    os.makedirs(tree)
    archive = subprocess.run(['git', '-C', REPO, 'archive', ref], capture_output=True, check=True).stdout
    subprocess.run(['tar', '-x', '-C', tree], input=archive, check=True)
    return tree, scratch


def run_from(tree, collections, args):
    """One module run (tproxy_rule) of the collection in TREE, as helpers.run_module runs this tree's."""
    payload = dict(args, state_dir=helpers.scratch_dir('state-'), _ansible_check_mode=False, _ansible_diff=False,
                   _ansible_tmpdir=tempfile.gettempdir())
    proc = subprocess.run([sys.executable, os.path.join(tree, 'plugins', 'modules', 'tproxy_rule.py')],
                          input=json.dumps({'ANSIBLE_MODULE_ARGS': payload}), capture_output=True, text=True,
                          env=helpers.module_env({'PYTHONPATH': collections}), timeout=300, check=False)
    return json.loads(proc.stdout)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--rules', type=int, default=1000)
    parser.add_argument('--repeat', type=int, default=7)
    parser.add_argument('--before', metavar='REF', help='also measure the collection at this git ref')
    args = parser.parse_args()
    factory = helpers.NamespaceFactory(helpers.ns_prefix('aebn'))
    scratch = tempfile.mkdtemp(prefix='aebn-before-')
    runners = {'after': lambda call: helpers.run_module('tproxy_rule', call)}
    if args.before:
        tree, collections = export_tree(args.before, scratch)
        runners['before'] = lambda call: run_from(tree, collections, call)
    versions = sorted(runners)      # 'after' first, then 'before'
    times = dict(((version, driver), []) for version in versions for driver in DRIVERS)
    try:
        calls = {}
        for key in times:
            # each version and driver in its own namespace: a version never reads the other's rules
            calls[key] = {'rules': tproxy_rules(args.rules), 'netns': factory(), 'driver': key[1], 'persist': False}
            result = runners[key[0]](calls[key])
            assert result.get('changed'), result.get('msg')
        for _round in range(args.repeat):
            for key in times:
                start = time.perf_counter()
                result = runners[key[0]](calls[key])
                times[key].append(time.perf_counter() - start)
                assert result.get('changed') is False, result.get('msg')
    finally:
        factory.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)
    medians = dict((key, statistics.median(values)) for key, values in times.items())
    label = dict(after='this tree', before=args.before)
    print('| tproxy_rule no-op re-apply, %d rules (module time, median of %d) | seconds | min-max |'
          % (args.rules, args.repeat))
    print('|---|---:|---:|')
    for version in versions:
        for driver in DRIVERS:
            key = (version, driver)
            prefix = '%s, ' % label[version] if args.before else ''
            print('| %sdriver: %s | %.3f | %.3f-%.3f |'
                  % (prefix, driver, medians[key], min(times[key]), max(times[key])))
    for version in versions:
        prefix = '%s, ' % label[version] if args.before else ''
        ratio = medians[(version, 'nft')] / medians[(version, 'iptables')]
        print('| %snft / iptables | %.2f |  |' % (prefix, ratio))
    if args.before:
        for driver in DRIVERS:
            ratio = medians[('after', driver)] / medians[('before', driver)]
            print('| driver %s: this tree / %s | %.2f |  |' % (driver, args.before, ratio))


if __name__ == '__main__':
    main()
