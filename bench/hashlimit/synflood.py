"""Benchmark: a SYN flood against the edge, for each data plane of the hashlimit module, side by side in one run.

Three namespaces joined by veth pairs: ``edge`` runs an accept-and-close TCP
server on 8080; ``flood`` sends raw SYNs from one address, each with its own
source port (tests/integration/synflood.py), and answers nothing (as a spoofed
flood's sender never sees the SYN-ACKs); ``legit`` connects at a steady rate
with a 1 s timeout (a lost SYN would cost a 1 s retransmission: a failure).

Data planes, each the module's chain for port 8080 with its defaults (50/sec,
burst 20, per source address) and ``action: drop``:

  ipt-new        driver: iptables, match: new   (hashlimit + conntrack NEW; iptables-nft here)
  ipt-syn        driver: iptables, match: syn   (hashlimit on SYNs, scope on CT --notrack)
  nft-set        driver: nft, match: new        (dynamic set + limit, conntrack NEW)
  nft-notrack    driver: nft, match: syn        (dynamic set + limit, scope on notrack)
  nft-synproxy   driver: nft, match: syn, synproxy: {ports: [8080]}  (SYN cookies, the set counts handshakes)
and two references:
  ingress-drop   no chain; the flood dropped at the edge veth's ingress hook (the least an edge can spend)
  none           no chain: the listener (kernel SYN cookies once its queue is full)

How the rate and the CPU are measured. The sender runs unpaced, pinned to CPU 1
(taskset); the legit client and the server to CPU 0. On a veth the receiving
namespace's whole path (IP input, netfilter, the synproxy's answer) runs in
softirq right after each send, on the sender's CPU: as its process's system
time (this kernel has tick-based accounting without IRQ time accounting, so a
softirq tick is charged to the task it interrupted) or in ksoftirqd/1. So one
core is spent on: making the SYN + the edge's work for it, and the SYNs per
second that one core pushes through are the rate the data plane absorbs *for
one core of CPU*. CPU time counted: the sender's user+system time over its
sending loop (its own getrusage) plus ksoftirqd/0 and /1 over the phase, per
refused SYN; ``edge ms`` subtracts the ingress-drop reference's cost per SYN
(making and sending it, up to the veth's ingress hook), leaving what the edge's
IP input, netfilter and answers spent. /proc/stat's softirq share of CPU 1 is
shown beside it (ticks sampled in softirq context: a part of the same time).

Every configuration runs ``--rounds`` times, interleaved (the machine is shared:
ratios within one run hold better than absolute figures). Everything runs in
namespaces this script creates (prefix $AE_NS_TAG + aehs) and removes.

``--spoof`` sends each SYN from a random address of 10.80.0.0/16 instead (a
spoofed flood: the per-source limits then refuse nothing, the listener's or
synproxy's cookies absorb it); its CPU is per SYN sent.

Rerun (as root, from the repository root, under the heavy lock; about 100 s each):
    flock /work/locks/heavy.lock .venv/bin/python bench/hashlimit/synflood.py --duration 6 --rounds 2 \\
        --json build/bench-synflood.json
    flock /work/locks/heavy.lock .venv/bin/python bench/hashlimit/synflood.py --duration 6 --rounds 2 --spoof
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'tests'))

import helpers  # noqa: E402

SENDER = os.path.join(REPO, 'tests', 'integration', 'synflood.py')
ENDPOINTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'endpoints.py')
PORT = 8080
EDGE_FLOOD, FLOODER = '10.79.0.1', '10.79.0.2'
SPOOFED = '10.80.0.0/16'     # --spoof: every SYN from a random address of it
EDGE_LEGIT, LEGIT = '10.79.1.1', '10.79.1.2'
NO_SSH = {'SSH_CONNECTION': ''}
FLOOD_CPU, EDGE_CPU = '1', '0'

LIMITS = {
    'ipt-new': {'driver': 'iptables', 'match': 'new'},
    'ipt-syn': {'driver': 'iptables', 'match': 'syn'},
    'nft-set': {'driver': 'nft', 'match': 'new'},
    'nft-notrack': {'driver': 'nft', 'match': 'syn'},
    'nft-synproxy': {'driver': 'nft', 'match': 'syn', 'synproxy': {'ports': [PORT]}},
}
ORDER = ['ingress-drop', 'none', 'ipt-new', 'ipt-syn', 'nft-set', 'nft-notrack', 'nft-synproxy']
INGRESS = '''table netdev aehs_ref {
    chain in {
        type filter hook ingress device fl0 priority -500; policy accept;
        ip saddr %s counter drop
    }
}
'''

FLOOD_SINK = '''table netdev aehs_sink {
    chain in {
        type filter hook ingress device fl1 priority -500; policy accept;
        ip protocol tcp drop
    }
}
'''


def limiter(ns, name):
    return dict({'netns': ns, 'protocol': 'tcp', 'ports': [PORT], 'action': 'drop', 'ssh_guard': 'ignore'},
                **LIMITS[name])


def module(args):
    result = helpers.run_module('hashlimit', args, env=NO_SSH)
    if result.get('failed'):
        raise SystemExit('hashlimit module failed: %s' % result.get('msg'))
    return result


def thread_cpu(comm):
    """{comm: seconds} of the kernel threads named COMM/N (ksoftirqd/0, ksoftirqd/1)."""
    ticks = float(os.sysconf('SC_CLK_TCK'))
    out = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % pid) as handle:
                text = handle.read()
        except OSError:
            continue
        name = text[text.index('(') + 1:text.rindex(')')]
        if name.startswith(comm + '/'):
            fields = text.rsplit(')', 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def cpu_stat():
    """{cpuN: [user, nice, system, idle, iowait, irq, softirq, steal]} ticks."""
    out = {}
    with open('/proc/stat') as handle:
        for line in handle:
            if line.startswith('cpu') and line[3].isdigit():
                parts = line.split()
                out[parts[0]] = [int(v) for v in parts[1:9]]
    return out


def phase(ns, duration, legit_rate, spoof):
    """One phase: the unpaced flood on CPU 1, the legit client on CPU 0; what each did and what CPU it cost."""
    legit = subprocess.Popen(['ip', 'netns', 'exec', ns['legit'], 'taskset', '-c', EDGE_CPU, sys.executable, ENDPOINTS,
                              'legit', EDGE_LEGIT, str(PORT), str(duration), str(legit_rate), '1.0'],
                             stdout=subprocess.PIPE, text=True)
    soft0, stat0 = thread_cpu('ksoftirqd'), cpu_stat()
    flood = subprocess.Popen(['ip', 'netns', 'exec', ns['flood'], 'taskset', '-c', FLOOD_CPU, sys.executable, SENDER,
                              FLOODER, EDGE_FLOOD, str(PORT), '--duration', str(duration)]
                             + (['--spoof', SPOOFED] if spoof else []),
                             stdout=subprocess.PIPE, text=True)
    out = flood.communicate(timeout=duration + 120)[0]
    soft1, stat1 = thread_cpu('ksoftirqd'), cpu_stat()
    legit_out = json.loads(legit.communicate(timeout=duration + 60)[0])
    sent = json.loads(out)
    cpu1 = [b - a for a, b in zip(stat0['cpu' + FLOOD_CPU], stat1['cpu' + FLOOD_CPU])]
    total = sum(cpu1) or 1
    lat = sorted(legit_out['latencies'])
    attempts = len(lat) + legit_out['failed']
    return {
        'sent': sent['sent'], 'per_sec': sent['per_sec'], 'elapsed': sent['elapsed'],
        'sender_cpu_s': sent['cpu_s'],
        'sender_user_s': sent['user_s'],
        'ksoftirqd_s': round(sum(soft1.get(k, 0) - v for k, v in soft0.items()), 3),
        'cpu1_busy_pct': round(100.0 * (total - cpu1[3] - cpu1[4]) / total, 1),
        'cpu1_softirq_pct': round(100.0 * cpu1[6] / total, 1),
        'legit_attempts': attempts,
        'legit_ok_pct': round(100.0 * len(lat) / attempts, 2) if attempts else None,
        'legit_p50_ms': round(1000 * lat[len(lat) // 2], 3) if lat else None,
        'legit_p99_ms': round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3) if lat else None,
    }


def refused_of(name, before, after, sent, legit_ok):
    """SYNs of the flood the configuration refused (counters where the module gives them)."""
    if before is None:
        return sent
    if name == 'nft-synproxy':
        # the synproxy rule also saw each legit client's SYN and ACK
        answered = after['counters']['ipv4']['synproxy']['packets'] - before['counters']['ipv4']['synproxy']['packets']
        return answered - 2 * legit_ok
    return after['counters']['ipv4']['refused']['packets'] - before['counters']['ipv4']['refused']['packets']


def run_config(name, ns, duration, legit_rate, spoof):
    edge = ns['edge']
    before = after = None
    if name == 'ingress-drop':
        helpers.nsexec(edge, ['nft', '-f', '-'], input=INGRESS % (SPOOFED if spoof else FLOODER))
    elif name in LIMITS:
        before = module(limiter(edge, name))
    helpers.nsexec(edge, ['conntrack', '-F'], check=False)
    row = phase(ns, duration, legit_rate, spoof)
    row['conntrack_entries'] = int(helpers.nsexec(edge, ['conntrack', '-C'], check=False).stdout.strip() or 0)
    if name == 'ingress-drop':
        helpers.nsexec(edge, ['nft', 'delete', 'table', 'netdev', 'aehs_ref'])
    elif name in LIMITS:
        after = module(limiter(edge, name))
        module(dict(limiter(edge, name), state='absent'))
        if name == 'nft-synproxy':
            # synproxy set it; the next round's conntrack configurations start as a fresh namespace does
            helpers.nsexec(edge, ['sysctl', '-qw', 'net.netfilter.nf_conntrack_tcp_loose=1'])
    legit_ok = round(row['legit_attempts'] * (row['legit_ok_pct'] or 0) / 100.0)
    row['refused'] = refused_of(name, before, after, row['sent'], legit_ok) if name != 'none' else None
    row['config'] = name
    return row


def setup():
    tag = uuid.uuid4().hex[:4]
    prefix = helpers.ns_prefix('aehs')
    ns = {'edge': prefix + 'e' + tag, 'flood': prefix + 'f' + tag, 'legit': prefix + 'l' + tag}
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
        # the flood's sender never answers (a spoofed flood's SYN-ACKs go nowhere); dropped at its veth's
        # ingress, the least this stand-in for the wire adds to the edge's answers
        helpers.nsexec(ns['flood'], ['nft', '-f', '-'], input=FLOOD_SINK)
        # answers to spoofed sources go back towards the flood (and are dropped there); no reverse-path check
        helpers.nsexec(ns['edge'], ['ip', 'route', 'add', SPOOFED, 'via', FLOODER])
        for conf in ('all', 'default', 'fl0'):
            helpers.nsexec(ns['edge'], ['sysctl', '-qw', 'net.ipv4.conf.%s.rp_filter=0' % conf])
    except Exception:
        cleanup(created)
        raise
    return ns, created


def cleanup(created):
    for name in created:
        helpers.sh('ip netns pids %s 2>/dev/null | xargs -r kill -9' % name, check=False)
        helpers.sh(['ip', 'netns', 'del', name], check=False)


def summarise(rows, spoof=False):
    """One line per configuration: medians over the rounds, the edge's share, the ratios to ipt-new."""
    by = {}
    for row in rows:
        by.setdefault(row['config'], []).append(row)

    def med(name, key):
        values = [r[key] for r in by[name] if r[key] is not None]
        return statistics.median(values) if values else None

    # what making and sending one SYN costs (the reference drops it as early as the edge can)
    ref_cost = statistics.median(r['path_cpu_s'] / r['sent'] for r in by['ingress-drop'])
    out = {}
    for name in ORDER:
        if name not in by:
            continue
        # per refused SYN (every SYN the configuration did not let through; all of them for 'none')
        # (with --spoof most SYNs pass the per-source limit: per SYN sent, each one absorbed somehow)
        per_syn = [r['path_cpu_s'] / (r['sent'] if spoof else (r['refused'] or r['sent'])) for r in by[name]]
        edge = [(r['path_cpu_s'] - ref_cost * r['sent']) / (r['sent'] if spoof else (r['refused'] or r['sent']))
                for r in by[name]]
        refused = med(name, 'refused')
        out[name] = {
            'syn_per_sec': int(med(name, 'per_sec')),
            'legit_ok_pct': min(r['legit_ok_pct'] for r in by[name]),
            'legit_p50_ms': med(name, 'legit_p50_ms'),
            'cpu_ms_per_100k_refused': round(1e8 * statistics.median(per_syn), 1),
            'edge_ms_per_100k_refused': round(1e8 * statistics.median(edge), 1),
            'refused_pct': round(100.0 * refused / med(name, 'sent'), 2) if refused is not None else None,
            'cpu1_softirq_pct': med(name, 'cpu1_softirq_pct'),
            'conntrack_entries_after': max(r['conntrack_entries'] for r in by[name]),
            'rounds': [r['per_sec'] for r in by[name]],
        }
    for row in out.values():
        # the rate one core absorbs: the sender shares CPU 1 with the machine's other work, so the achieved
        # rate varies with it; the CPU per SYN does not
        row['per_core'] = int(1e8 / row['cpu_ms_per_100k_refused'])
        row['edge_per_core'] = int(1e8 / row['edge_ms_per_100k_refused']) if row['edge_ms_per_100k_refused'] > 0 else None
    base = out.get('ipt-new')
    if base:
        for row in out.values():
            row['per_core_vs_ipt_new'] = round(row['per_core'] / base['per_core'], 2)
            row['edge_per_core_vs_ipt_new'] = round(row['edge_per_core'] / base['edge_per_core'], 2) \
                if row['edge_per_core'] else None
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--duration', type=float, default=6.0, help='seconds per phase (max 30)')
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--legit-rate', type=float, default=20.0, help='legit connections per second')
    parser.add_argument('--only', nargs='*', choices=ORDER, help='run these configurations only (ingress-drop always)')
    parser.add_argument('--spoof', action='store_true',
                        help='each SYN from a random address of %s (a spoofed flood: no source to limit)' % SPOOFED)
    parser.add_argument('--json', help='also write the results to this file')
    args = parser.parse_args()
    duration = min(args.duration, 30.0)
    names = [n for n in ORDER if not args.only or n in args.only or n == 'ingress-drop']
    ns, created = setup()
    server = None
    rows = []
    started = time.monotonic()
    try:
        server = subprocess.Popen(['ip', 'netns', 'exec', ns['edge'], 'taskset', '-c', EDGE_CPU, sys.executable, ENDPOINTS,
                                   'sink', str(PORT), '1024'], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == 'ready'
        for round_ in range(args.rounds):
            for name in names:
                row = run_config(name, ns, duration, args.legit_rate, args.spoof)
                row['round'] = round_
                row['path_cpu_s'] = row['sender_cpu_s'] + row['ksoftirqd_s']
                rows.append(row)
                print('%-13s %8d SYN/s  legit %6.2f%%  path cpu %.2f s (softirq cpu1 %4.1f%%)  refused %s  ct %d'
                      % (name, row['per_sec'], row['legit_ok_pct'], row['path_cpu_s'], row['cpu1_softirq_pct'],
                         row['refused'], row['conntrack_entries']), flush=True)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        cleanup(created)
    summary = summarise(rows, args.spoof)
    print('\n%-13s %8s %7s %12s %9s %6s %12s %9s %6s %8s %4s' % (
        'config', 'SYN/s', 'legit%', 'cpu ms/100k', 'SYN/s/cpu', 'x', 'edge ms/100k', 'edge/cpu', 'x', 'refused%', 'ct'))
    for name, row in summary.items():
        print('%-13s %8d %7.2f %12.1f %9d %6s %12.1f %9s %6s %8s %4d' % (
            name, row['syn_per_sec'], row['legit_ok_pct'], row['cpu_ms_per_100k_refused'], row['per_core'],
            row.get('per_core_vs_ipt_new'), row['edge_ms_per_100k_refused'], row['edge_per_core'],
            row.get('edge_per_core_vs_ipt_new'), row['refused_pct'], row['conntrack_entries_after']))
    with open('/proc/loadavg') as handle:
        load = handle.read().split()[:3]
    print('wall %.0f s, load average after: %s' % (time.monotonic() - started, ' '.join(load)))
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump({'rows': rows, 'summary': summary, 'duration': duration, 'rounds': args.rounds, 'spoof': args.spoof,
                       'legit_rate': args.legit_rate, 'load_after': load}, handle, indent=1)


if __name__ == '__main__':
    main()
