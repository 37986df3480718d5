"""Benchmark: BGP announcements with BIRD in namespaces (tests/bgp/bgp_lab.py: a router and two edges
over veth pairs, real BIRD, the real health daemon). Run under the heavy lock:

    flock /work/locks/heavy.lock sudo .venv/bin/python bench/bgp/run.py [--repeat 10] [--prefixes 1000]

Measured, each side by side with what it is compared to:

* withdraw: from the proxy's death (its listener killed) to the withdrawal seen in the router's
  kernel (the ECMP route loses the edge), with the role's default health timers (0.5 s x 2)
  and with faster ones (0.2 s x 2);
* freeze: from a frozen edge (SIGSTOP of its BIRD and health daemon) to the same, with BFD
  (200 ms x 5, the default) and without it (the 9 s hold timer alone);
* mechanism: how fast a change reaches the router through the kernel health table that BIRD
  learns (what the daemon does) and through `birdc disable` of a static protocol per group (the
  alternative), and which of the two survives `birdc configure` and a restart of BIRD;
* scale: PREFIXES announced prefixes per edge - the bgp_speaker module's render + validate +
  `birdc configure` (module time, wall clock of one module process) beside `bird -p` plus
  `birdc configure` of the same file by hand (the floor), its no-op re-run, a one-prefix change
  (sessions must not restart), and the time until the router holds all of them once the health
  daemon announces them.

Results: printed, and written to bench/results/bgp-<time>.json. The converge time the role adds to a
no-op site.yml is measured in the lab: bench/bgp/converge.sh.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, 'tests'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'bgp'))
import helpers  # noqa: E402
import bgp_lab  # noqa: E402
from bgp_lab import PREFIX4  # noqa: E402

PREFIX = helpers.ns_prefix('aebb')


def summary(values):
    values = sorted(values)
    return {'n': len(values), 'median': round(statistics.median(values), 3), 'min': round(values[0], 3),
            'max': round(values[-1], 3), 'p90': round(values[int(0.9 * (len(values) - 1))], 3)}


def fresh_lab(factory, **health):
    lab = bgp_lab.BgpLab(factory)
    lab.start()
    for edge in lab.edges:
        edge.write_health_config(**health)
        edge.start_listener()
        edge.start_health()
    lab.wait_nexthops(PREFIX4, lab.both(4), timeout=30)
    return lab


def bench_withdraw(repeat):
    out = {}
    for label, interval in (('default 0.5 s x 2', 0.5), ('fast 0.2 s x 2', 0.2)):
        factory = helpers.NamespaceFactory(PREFIX)
        try:
            lab = fresh_lab(factory, hold_down=1.0, interval=interval)
            edge1, edge2 = lab.edges
            times = []
            for _round in range(repeat):
                time.sleep(0.37)        # not in step with the daemon's rounds
                edge1.kill_listener()
                times.append(lab.wait_nexthops(PREFIX4, {edge2.address4}, timeout=10, interval=0.005))
                edge1.start_listener()
                lab.wait_nexthops(PREFIX4, lab.both(4), timeout=20)
            out[label] = summary(times)
            lab.stop()
        finally:
            factory.cleanup()
    return out


def bench_freeze(repeat):
    out = {}
    for label, bfd in (('BFD 200 ms x 5', True), ('no BFD, hold time 9 s', False)):
        factory = helpers.NamespaceFactory(PREFIX)
        try:
            lab = bgp_lab.BgpLab(factory, bfd=bfd)
            lab.start()
            for edge in lab.edges:
                edge.write_health_config(hold_down=1.0)
                edge.start_listener()
                edge.start_health()
            lab.wait_nexthops(PREFIX4, lab.both(4), timeout=30)
            edge1, edge2 = lab.edges
            times = []
            for _round in range(repeat if bfd else max(2, repeat // 3)):
                pids = [edge1.bird.pid, edge1.health.pid]
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                times.append(lab.wait_nexthops(PREFIX4, {edge2.address4}, timeout=30, interval=0.005))
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
                lab.wait_sessions(timeout=60)
                lab.wait_nexthops(PREFIX4, lab.both(4), timeout=30)
            out[label] = summary(times)
            lab.stop()
        finally:
            factory.cleanup()
    return out


def bench_mechanism(repeat):
    """Kernel table + learn (the daemon's way) against a static protocol per group toggled by birdc."""
    factory = helpers.NamespaceFactory(PREFIX)
    out = {}
    try:
        lab = bgp_lab.BgpLab(factory)
        lab.start()
        edge1 = lab.edges[0]
        # The alternative: a static protocol per health group, announced while enabled
        # (birdc enable / disable), exported by the same BGP sessions.
        helpers.nsexec(edge1.ns, ['ip', 'route', 'add', 'local', '198.51.100.0/24', 'dev', 'lo', 'proto', '172'])
        args = edge1.speaker_args(extra_config='protocol static group_static { ipv4; route 198.51.100.0/24 blackhole; }')
        assert not helpers.run_module('bgp_speaker', args).get('failed')
        with open(edge1.bird.config) as handle:
            cfg = handle.read()
        with open(edge1.bird.config, 'w') as handle:
            handle.write(cfg.replace('  if proto != "anycast_health4" then reject;',
                                     '  if proto = "group_static" then accept;\n'
                                     '  if proto != "anycast_health4" then reject;'))
        edge1.bird.cli('configure')
        lab.wait_nexthops('198.51.100.0/24', {edge1.address4}, timeout=10)

        def table(op):
            helpers.nsexec(edge1.ns, ['ip', 'route', op, 'blackhole', PREFIX4, 'table', '4179', 'proto', '173'])

        kernel, static = [], []
        for _round in range(repeat):
            start = time.monotonic()
            table('add')
            lab.wait_nexthops(PREFIX4, {edge1.address4}, timeout=10, interval=0.002)
            kernel.append(time.monotonic() - start)
            start = time.monotonic()
            table('del')
            lab.wait_nexthops(PREFIX4, set(), timeout=10, interval=0.002)
            kernel.append(time.monotonic() - start)
            start = time.monotonic()
            edge1.bird.cli('disable group_static')
            lab.wait_nexthops('198.51.100.0/24', set(), timeout=10, interval=0.002)
            static.append(time.monotonic() - start)
            start = time.monotonic()
            edge1.bird.cli('enable group_static')
            lab.wait_nexthops('198.51.100.0/24', {edge1.address4}, timeout=10, interval=0.002)
            static.append(time.monotonic() - start)
        out['kernel table + learn: add or delete a route -> router kernel'] = summary(kernel)
        out['static protocol: birdc enable/disable -> router kernel'] = summary(static)
        # What survives: withdraw both ways, then `birdc configure` (a changed file) and a restart of BIRD.
        edge1.bird.cli('disable group_static')
        lab.wait_nexthops('198.51.100.0/24', set(), timeout=10)
        with open(edge1.bird.config, 'a') as handle:
            handle.write('\n# touched\n')
        edge1.bird.cli('configure')
        time.sleep(2)
        out['static protocol disabled by birdc, after `birdc configure`'] = (
            'still withdrawn' if not lab.nexthops('198.51.100.0/24') else 'ANNOUNCED AGAIN (state lost)')
        table('add')
        lab.wait_nexthops(PREFIX4, {edge1.address4}, timeout=10)
        edge1.bird.stop()
        time.sleep(1)
        edge1.bird.start()
        lab.wait_sessions(timeout=60)
        time.sleep(2)
        out['after a restart of BIRD'] = {
            'kernel table route': 'announced' if lab.nexthops(PREFIX4) else 'LOST',
            'static protocol disabled by birdc': 'still withdrawn' if not lab.nexthops('198.51.100.0/24')
            else 'ANNOUNCED AGAIN (state lost)'}
        lab.stop()
    finally:
        factory.cleanup()
    return out


def prefixes(count, base='10.64.0.0/10', length=24):
    return [str(n) for _index, n in zip(range(count), ipaddress.ip_network(base).subnets(new_prefix=length))]


def router_routes(lab):
    """How many of the benchmark's prefixes (10.64.0.0/10) the router's kernel holds from BGP."""
    out = helpers.nsexec(lab.router, ['ip', 'route', 'show', 'root', '10.64.0.0/10', 'proto', 'bird']).stdout
    return sum(1 for line in out.splitlines() if line.startswith('10.'))


def bench_scale(count):
    factory = helpers.NamespaceFactory(PREFIX)
    out = {'prefixes': count}
    try:
        lab = bgp_lab.BgpLab(factory)
        nets = prefixes(count + 1)
        edge1 = lab.edges[0]
        for edge in lab.edges:
            helpers.nsexec(edge.ns, ['ip', 'route', 'add', 'local', '10.64.0.0/10', 'dev', 'lo', 'proto', '172'])
            assert not edge.configure().get('failed')
            edge.bird.start()
        lab.router_bird.start()
        lab.wait_sessions()

        def timed(args):
            start = time.monotonic()
            result = helpers.run_module('bgp_speaker', args)
            assert not result.get('failed'), result
            return time.monotonic() - start, result

        args = edge1.speaker_args(served_prefixes=['10.64.0.0/10'],  # as the role passes them
                                  prefixes=[{'prefix': p, 'communities': ['64512:%d' % (i % 7)]}
                                            for i, p in enumerate(nets[:count])])
        seconds, result = timed(args)
        out['module: render + validate + configure (first apply)'] = round(seconds, 3)
        assert result['changed'] and result['applied'] and result['restarted'] == []
        seconds, result = timed(args)
        out['module: no-op re-run'] = round(seconds, 3)
        assert not result['changed']
        changed = dict(args, prefixes=args['prefixes'][1:] + [{'prefix': nets[count], 'communities': []}])
        seconds, result = timed(changed)
        out['module: one prefix replaced'] = round(seconds, 3)
        out['sessions restarted by the change'] = result['restarted']
        # The floors: a module process that does nothing (anycast.edge.confirm with no token: Python and
        # Ansible's module start), and the same BIRD work by hand, on the same file.
        start = time.monotonic()
        helpers.run_module('confirm', {'tokens': []})
        out['an empty module process (confirm, no token)'] = round(time.monotonic() - start, 3)
        start = time.monotonic()
        helpers.sh(['bird', '-p', '-c', edge1.bird.config])
        edge1.bird.cli('configure')
        out['by hand: bird -p + birdc configure of the same file'] = round(time.monotonic() - start, 3)
        start = time.monotonic()
        helpers.run_module('bgp_speaker', dict(changed, config_file=edge1.bird.config + '.dry'), check=True)
        out['module in check mode (render + validate only)'] = round(time.monotonic() - start, 3)
        # Announce them all: the health daemon's one `ip -batch`, until the router's kernel holds all.
        group = {'name': 'all', 'prefixes': [p['prefix'] for p in changed['prefixes']]}
        edge1.write_health_config(hold_down=0.0, groups=[group])
        start = time.monotonic()
        edge1.start_health()
        while True:
            held = router_routes(lab)
            if held >= count or time.monotonic() - start > 60:
                break
            time.sleep(0.05)
        out['health daemon start -> router kernel holds all prefixes'] = round(time.monotonic() - start, 3)
        out['router holds'] = held
        start = time.monotonic()
        edge1.stop_health()
        while router_routes(lab) > 0 and time.monotonic() - start < 60:
            time.sleep(0.05)
        out['health daemon stop -> router kernel holds none'] = round(time.monotonic() - start, 3)
        lab.stop()
    finally:
        factory.cleanup()
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--prefixes', type=int, default=1000)
    parser.add_argument('--only', default='withdraw,freeze,mechanism,scale')
    args = parser.parse_args()
    missing = [tool for tool in ('bird', 'birdc') if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        raise SystemExit('bench/bgp needs root and BIRD 2 (bird2): missing %s' % (', '.join(missing) or 'root'))
    results = {'started': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
               'load_before': os.getloadavg()}
    for name in args.only.split(','):
        print('== %s' % name, flush=True)
        results[name] = {'withdraw': lambda: bench_withdraw(args.repeat),
                         'freeze': lambda: bench_freeze(args.repeat),
                         'mechanism': lambda: bench_mechanism(args.repeat),
                         'scale': lambda: bench_scale(args.prefixes)}[name]()
        print(json.dumps(results[name], indent=1), flush=True)
    results['load_after'] = os.getloadavg()
    os.makedirs(os.path.join(REPO, 'bench', 'results'), exist_ok=True)
    path = os.path.join(REPO, 'bench', 'results', 'bgp-%s.json' % time.strftime('%Y%m%d-%H%M%S'))
    with open(path, 'w') as handle:
        json.dump(results, handle, indent=1)
    print('wrote %s' % path)


if __name__ == '__main__':
    main()
