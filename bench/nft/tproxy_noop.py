"""Benchmark: a no-op re-apply of N TPROXY rules, driver nft against driver iptables, side by side.

Each driver gets a throwaway namespace (prefix $AE_NS_TAG + aebn) with the same N rules applied once;
then the no-op re-apply (module time: one module process as Ansible runs it) is measured REPEAT times,
the drivers interleaved so that both see the same machine load. Reports the medians and their ratio.

Rerun (benchmarks run under the shared lock):
  flock /work/locks/heavy.lock sudo .venv/bin/python bench/nft/tproxy_noop.py [--rules 1000 --repeat 7]
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, 'tests'))
sys.path.insert(0, os.path.join(REPO, 'bench', 'foundation'))
import helpers  # noqa: E402
from run import tproxy_rules  # noqa: E402

DRIVERS = ('iptables', 'nft')


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--rules', type=int, default=1000)
    parser.add_argument('--repeat', type=int, default=7)
    args = parser.parse_args()
    factory = helpers.NamespaceFactory(helpers.ns_prefix('aebn'))
    times = dict((driver, []) for driver in DRIVERS)
    try:
        calls = {}
        for driver in DRIVERS:
            calls[driver] = {'rules': tproxy_rules(args.rules), 'netns': factory(), 'driver': driver,
                             'persist': False}
            result = helpers.run_module('tproxy_rule', calls[driver])
            assert result.get('changed'), result.get('msg')
        for _round in range(args.repeat):
            for driver in DRIVERS:
                start = time.perf_counter()
                result = helpers.run_module('tproxy_rule', calls[driver])
                times[driver].append(time.perf_counter() - start)
                assert result.get('changed') is False, result.get('msg')
    finally:
        factory.cleanup()
    medians = dict((driver, statistics.median(values)) for driver, values in times.items())
    print('| tproxy_rule no-op re-apply, %d rules (module time, median of %d) | seconds | min-max |'
          % (args.rules, args.repeat))
    print('|---|---:|---:|')
    for driver in DRIVERS:
        print('| driver: %s | %.3f | %.3f-%.3f |' % (driver, medians[driver], min(times[driver]), max(times[driver])))
    print('| nft / iptables | %.2f |  |' % (medians['nft'] / medians['iptables']))


if __name__ == '__main__':
    main()
