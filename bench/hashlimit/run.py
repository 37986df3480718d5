"""Benchmark: a connection flood from one source against a TCP server, with and without the hashlimit chain.

Three namespaces joined by veth pairs: ``edge`` runs an accept-and-close TCP
server; ``flood`` opens new connections from one address as fast as one
process can (bounded by --duration and --max-flood); ``legit`` connects at a
steady rate from another address and records whether each connect succeeded
and how long it took. Six phases, each --duration seconds:

  idle          legit client only, no chain
  flood         legit + flood, no chain
  flood+new     legit + flood, the anycast.edge.hashlimit chain on (defaults: 50/sec, burst 20, srcip,
                conntrack NEW), scoped to the server's port
  idle+new      legit client only, that chain on
  flood+syn     legit + flood, the same limit with match: syn (stateless, scope untracked)
  idle+syn      legit client only, that chain on

The flood process runs at nice 19: on a real edge the flood's sender is
another machine, and on this 2-core box an un-niced sender would mostly
measure CPU starvation of the legit client, not the server's behaviour.

Reported per phase: legit success rate, connect latency p50/p99, flood
connections attempted/accepted, and the server's CPU (user+system time of
its process over the phase, in % of one core). Everything runs inside
namespaces this script creates (prefix aehb) and removes, even on errors.

Rerun (as root, from the repository root):
    .venv/bin/python bench/hashlimit/run.py --duration 10 --flood-rate 10000 --json build/bench-hashlimit.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'tests'))

import helpers  # noqa: E402

PORT = 8080
EDGE_FLOOD, FLOODER = '10.79.0.1', '10.79.0.2'
ENDPOINTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'endpoints.py')
EDGE_LEGIT, LEGIT = '10.79.1.1', '10.79.1.2'


def cpu_seconds(pid):
    """user+system CPU seconds of a process (and its reaped children)."""
    with open('/proc/%d/stat' % pid) as handle:
        fields = handle.read().rsplit(')', 1)[1].split()
    ticks = os.sysconf('SC_CLK_TCK')
    return (int(fields[11]) + int(fields[12])) / float(ticks)


def machine_busy():
    with open('/proc/stat') as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def percentile(values, pct):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100.0 * (len(ordered) - 1))))]


def phase(name, ns, server_pid, duration, flood, legit_rate, max_flood, flood_rate):
    legit = subprocess.Popen(['ip', 'netns', 'exec', ns['legit'], sys.executable, ENDPOINTS, 'legit', EDGE_LEGIT,
                              str(PORT), str(duration), str(legit_rate), '2.0'], stdout=subprocess.PIPE, text=True)
    flooder = None
    if flood:
        # niced: in reality the flood's sender runs elsewhere; here it must not starve the edge of CPU
        command = ['ip', 'netns', 'exec', ns['flood'], 'nice', '-n', '19', sys.executable, ENDPOINTS, 'flood',
                   EDGE_FLOOD, str(PORT), str(duration), str(max_flood), str(flood_rate)]
        flooder = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    cpu0, busy0, t0 = cpu_seconds(server_pid), machine_busy(), time.monotonic()
    legit_out = json.loads(legit.communicate(timeout=duration + 60)[0])
    flood_out = json.loads(flooder.communicate(timeout=duration + 60)[0]) if flooder else None
    cpu1, busy1, t1 = cpu_seconds(server_pid), machine_busy(), time.monotonic()
    lat = legit_out['latencies']
    attempts = len(lat) + legit_out['failed']
    return {
        'phase': name,
        'legit_attempts': attempts,
        'legit_success_pct': round(100.0 * len(lat) / attempts, 2) if attempts else None,
        'latency_p50_ms': round(1000 * percentile(lat, 50), 3) if lat else None,
        'latency_p90_ms': round(1000 * percentile(lat, 90), 3) if lat else None,
        'latency_p99_ms': round(1000 * percentile(lat, 99), 3) if lat else None,
        'flood': flood_out,
        'server_cpu_pct': round(100.0 * (cpu1 - cpu0) / (t1 - t0), 2),
        'machine_busy_pct': round(100.0 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1),
    }


def setup():
    tag = uuid.uuid4().hex[:5]
    ns = {'edge': 'aehbe' + tag, 'flood': 'aehbf' + tag, 'legit': 'aehbl' + tag}
    created = []
    try:
        for name in ns.values():
            helpers.sh(['ip', 'netns', 'add', name])
            created.append(name)
            helpers.nsexec(name, ['ip', 'link', 'set', 'lo', 'up'])
        helpers.nsexec(ns['edge'], ['ip', 'link', 'add', 'fl0', 'type', 'veth', 'peer', 'name', 'fl1',
                                    'netns', ns['flood']])
        helpers.nsexec(ns['edge'], ['ip', 'link', 'add', 'lg0', 'type', 'veth', 'peer', 'name', 'lg1',
                                    'netns', ns['legit']])
        for side, ifname, addr in ((ns['edge'], 'fl0', EDGE_FLOOD), (ns['flood'], 'fl1', FLOODER),
                                   (ns['edge'], 'lg0', EDGE_LEGIT), (ns['legit'], 'lg1', LEGIT)):
            helpers.nsexec(side, ['ip', 'addr', 'add', addr + '/24', 'dev', ifname])
            helpers.nsexec(side, ['ip', 'link', 'set', ifname, 'up'])
        helpers.nsexec(ns['flood'], ['sysctl', '-qw', 'net.ipv4.ip_local_port_range=1024 65000'])
    except Exception:
        cleanup(created)
        raise
    return ns, created


def cleanup(created):
    for name in created:
        helpers.sh('ip netns pids %s 2>/dev/null | xargs -r kill -9' % name, check=False)
        helpers.sh(['ip', 'netns', 'del', name], check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--duration', type=float, default=5.0, help='seconds per phase (max 30)')
    parser.add_argument('--legit-rate', type=float, default=40.0, help='legit connections per second')
    parser.add_argument('--max-flood', type=int, default=200000, help='most flood connections per phase')
    parser.add_argument('--flood-rate', type=float, default=10000.0,
                        help='flood connections per second (0: as fast as one process can)')
    parser.add_argument('--json', help='also write the results to this file')
    args = parser.parse_args()
    duration = min(args.duration, 30.0)
    ns, created = setup()
    server = None
    try:
        server = subprocess.Popen(['ip', 'netns', 'exec', ns['edge'], sys.executable, ENDPOINTS, 'sink', str(PORT), '4096'],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == 'ready'
        # `ip netns exec` execs the interpreter: same pid

        def run(name, flood):
            return phase(name, ns, server.pid, duration, flood, args.legit_rate, args.max_flood, args.flood_rate)

        results = [run('idle', False), run('flood', True)]
        counters = {}
        for match in ('new', 'syn'):
            limiter = {'netns': ns['edge'], 'protocol': 'tcp', 'ports': [PORT], 'match': match}
            applied = helpers.run_module('hashlimit', limiter, env={'SSH_CONNECTION': ''})
            if applied.get('failed'):
                raise SystemExit('hashlimit module failed: %s' % applied.get('msg'))
            results.append(run('flood+%s' % match, True))
            results.append(run('idle+%s' % match, False))
            counters[match] = helpers.run_module('hashlimit', limiter,
                                                 env={'SSH_CONNECTION': ''})['counters']['ipv4']
    finally:
        if server is not None:
            server.kill()
            server.wait()
        cleanup(created)

    idle = results[0]
    print('%-12s %8s %9s %9s %9s %9s %10s %9s %8s' % ('phase', 'legit ok', 'p50 ms', 'p90 ms', 'p99 ms', 'flood/s',
                                                      'flood ok', 'srv cpu%', 'busy%'))
    for row in results:
        flood = row['flood'] or {}
        print('%-12s %7s%% %9s %9s %9s %9s %10s %9s %8s' % (
            row['phase'], row['legit_success_pct'], row['latency_p50_ms'], row['latency_p90_ms'], row['latency_p99_ms'],
            flood.get('per_sec', '-'), flood.get('accepted', '-'), row['server_cpu_pct'], row['machine_busy_pct']))
    ratios = {'server_cpu_flood_without_chain_pct': results[1]['server_cpu_pct']}
    for chain in results[2::2]:
        key = chain['phase']
        ratios[key] = {
            'legit_success_pct': chain['legit_success_pct'],
            'p50_latency_ratio_vs_idle': round(chain['latency_p50_ms'] / idle['latency_p50_ms'], 2),
            'p90_latency_ratio_vs_idle': round(chain['latency_p90_ms'] / idle['latency_p90_ms'], 2),
            'p99_latency_ratio_vs_idle': round(chain['latency_p99_ms'] / idle['latency_p99_ms'], 2),
            'server_cpu_delta_vs_idle_pct_points': round(chain['server_cpu_pct'] - idle['server_cpu_pct'], 2),
        }
    print(json.dumps(ratios, indent=1))
    print('chain counters: %s' % json.dumps(counters))
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump({'results': results, 'ratios': ratios, 'counters': counters,
                       'duration': duration, 'legit_rate': args.legit_rate, 'flood_rate': args.flood_rate},
                      handle, indent=1)


if __name__ == '__main__':
    main()
