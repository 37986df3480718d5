"""Print the lab's tables.

  report.py --status-log LOG            the table status.yml printed, as plain lines
  report.py --results DIR [--seconds N] one line per proven behaviour; exit 1 if any failed
"""

import argparse
import json
import os
import sys

import yaml

LAB_VARS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'inventory', 'group_vars', 'edge.yml')


def status_lines(log):
    """The msg list of the last debug task of a status.yml run (default callback, JSON results)."""
    lines = open(log).read().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith('ok: [') and line.endswith('=> {'))
    end = lines.index('}', start)
    return json.loads('{' + '\n'.join(lines[start + 1:end + 1]))['msg']


def load(path):
    with open(path) as handle:
        return json.load(handle)


def check_converge(results):
    first, second = load(os.path.join(results, 'converge-1.json')), load(os.path.join(results, 'converge-2.json'))
    ok = second['changed'] == 0
    return ('site.yml twice', ok, 'first run changed=%d (%ds), second run changed=%d (%ds)'
            % (first['changed'], first['seconds'], second['changed'], second['seconds']))


def check_check_mode(results):
    check = load(os.path.join(results, 'check.json'))
    return ('site.yml --check --diff', check['unchanged'],
            '%d changes predicted; ael-edge1 routes, rules, netns, iptables, files %s'
            % (check['predicted'], 'unchanged' if check['unchanged'] else 'CHANGED'))


EDGES = {'10.89.77.11': 'ael-edge1', 'fd00:ae1::11': 'ael-edge1', '10.89.77.12': 'ael-edge2',
         'fd00:ae1::12': 'ael-edge2'}


def check_dial(results):
    rows = load(os.path.join(results, 'dial.json'))['results']
    good = [r for r in rows if r['good']]
    edges = sorted({EDGES.get(r['answer'].get('edge'), r['answer'].get('edge')) for r in good})
    families = sorted({'IPv6' if ':' in r['address'] else 'IPv4' for r in good})
    ports = sorted({r['port'] for r in good})
    clients = sorted({r['answer'].get('client') for r in good})
    ok = len(good) == len(rows) and len(edges) == 2 and len(families) == 2
    detail = ('%d/%d connections to random AnyIP addresses and ports (%d..%d) over %s reached the origin, through '
              'ael-router\'s ECMP route via %s; PROXY v2 gave it the real client %s and the dialled address'
              % (len(good), len(rows), ports[0] if ports else 0, ports[-1] if ports else 0, '/'.join(families),
                 ' and '.join(edges), ', '.join(c for c in clients if c)))
    bad = [r for r in rows if not r['good']]
    if bad:
        first = bad[0]
        detail += '; first failure: %s:%s %s %s' % (first['address'], first['port'], first['outcome'], first['answer'])
    return ('AnyIP + TPROXY + proxy', ok, detail)


def check_banner(results):
    rows = []
    with open(os.path.join(results, 'banner.jsonl')) as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
    good = [r for r in rows if r['result']['outcome'] == 'ok'
            and (r['result']['answer'] or {}).get('client') == r['result']['own']]
    return ('origin speaks first', len(good) == len(rows) == 2,
            '%d/%d connections that only read (SMTP/SSH-like) got the origin\'s answer: %s'
            % (len(good), len(rows), ', '.join('%s %s' % (r['edge'], r['result']['outcome']) for r in rows)))


def check_rate_limit(results):
    flood, steady = load(os.path.join(results, 'flood.json')), load(os.path.join(results, 'steady.json'))
    accepted = flood['counts'].get('ok', 0)
    refused = sum(v for k, v in flood['counts'].items() if k != 'ok')
    served = steady['counts'].get('ok', 0)
    # Each edge's token bucket admits at most burst + rate x elapsed (+1 for a refill
    # landing during the last attempt) connections from one source; the router's ECMP
    # spreads the flood over both edges, each limiting it on its own.
    limit = yaml.safe_load(open(LAB_VARS))['edge_rate_limit']
    count, unit = limit['rate'].split('/')
    per_second = float(count) / {'sec': 1, 'min': 60, 'hour': 3600, 'day': 86400}[unit]
    bound = 2 * (int(limit['burst'] + per_second * flood['seconds']) + 1)
    ok = refused > 0 and 0 < accepted <= bound and served == steady['attempts']
    return ('per-source rate limit', ok,
            'ael-client flood: %d new connections in %.1fs, %d accepted (bound: 2 edges x (burst %d + %s x %.1fs) '
            '= %d), %d refused (%s); ael-client2 meanwhile: %d/%d served by the origin'
            % (flood['attempts'], flood['seconds'], accepted, limit['burst'], limit['rate'], flood['seconds'],
               bound, refused,
               ', '.join('%s %d' % kv for kv in sorted(flood['counts'].items()) if kv[0] != 'ok'),
               served, steady['attempts']))


def check_tenants(results):
    rows = {}
    with open(os.path.join(results, 'tenant.jsonl')) as handle:
        for line in handle:
            if line.strip():
                item = json.loads(line)
                rows[item['check']] = item['result']
    out = []
    expectations = [
        ('acme-ftp', 'acme', True, 'firewall admits tcp/21'),
        ('acme-ssh', 'acme', False, 'firewall (policy drop) refuses tcp/22, a listener is there'),
        ('globex-ftp', 'globex', True, 'policy accept'),
        ('globex-ssh', 'globex', True, 'policy accept'),
    ]
    for check, tenant, reachable, why in expectations:
        result = rows.get(check, {})
        answer = result.get('answer') or {}
        if reachable:
            ok = result.get('outcome') == 'ok' and answer.get('tenant') == tenant
            detail = '%s:%s reached tenant %s namespace on %s, which saw client %s (%s)' % (
                result.get('address'), result.get('port'), answer.get('tenant'), answer.get('edge'),
                answer.get('client'), why)
        else:
            ok = result.get('outcome') in ('timeout', 'refused', 'reset')
            detail = '%s:%s %s (%s)' % (result.get('address'), result.get('port'), result.get('outcome'), why)
        out.append(('tenant %s' % check, ok, detail))
    return out


def check_gre(results):
    gre = load(os.path.join(results, 'gre.json'))
    if gre['status'] == 'skipped':
        return ('GRE', None, 'SKIPPED: ' + gre['reason'])
    return ('GRE', gre['status'] == 'ok', gre['reason'])


def jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def dials(results, name):
    return sorted(jsonl(os.path.join(results, '%s-dials.jsonl' % name)), key=lambda r: r['t'])


def failed(rows):
    return [r for r in rows if r['outcome'] != 'ok']


def share(rows, edge):
    return '%d/%d via %s' % (sum(1 for r in rows if EDGES.get(r['edge']) == edge), len(rows), edge)


def check_origin_failover(results):
    event = load(os.path.join(results, 'origin-failover.json'))
    rows = sorted(dials(results, 'origin-failover-ael-client') + dials(results, 'origin-failover-ael-client2'),
                  key=lambda r: r['t'])
    stopped, started, back = event['stopped'], event['started'], event['back']
    before = [r for r in rows if r['t'] < stopped]
    # A dial begun just before the stop may still be answered by ael-origin2.
    during = [r for r in rows if stopped + 1 <= r['t'] < started]
    after = [r for r in rows if back is not None and r['t'] >= back + 0.5]
    served = [r for r in rows if r['outcome'] == 'ok']
    slowest = max((r['ms'] for r in rows if stopped <= r['t'] < started), default=0)
    ok = (event['ready'] and len(rows) >= 700 and not failed(rows)
          and {r['origin'] for r in before} == {'ael-origin', 'ael-origin2'}
          and during and all(r['origin'] == 'ael-origin' for r in during)
          and event['down'] is not None and back is not None
          and any(r['origin'] == 'ael-origin2' for r in after))
    detail = ('%d dials at 2 x 20/s to the pools web and web-v6 (two origins each); systemctl stop of ael-origin2\'s '
              'origin for %.1f s: %d failed (%d served); both edges marked it down %s; meanwhile %d/%d dials went to '
              'ael-origin, the slowest took %.0f ms; it was back in both edges\' pools %s after its start and then '
              'served %s; before the stop: %s'
              % (len(rows), started - stopped, len(failed(rows)), len(served),
                 '%.2f s after the stop' % (event['down'] - stopped) if event['down'] else 'NEVER',
                 sum(1 for r in during if r['origin'] == 'ael-origin'), len(during), slowest,
                 '%.1f s' % (back - started) if back else 'NEVER',
                 origin_share(after, 'ael-origin2'), origin_share(before, 'ael-origin2')))
    if failed(rows):
        first = failed(rows)[0]
        detail += '; first failure %.2f s after the stop: %s' % (first['t'] - stopped, first['outcome'])
    return ('origin pool failover', ok, detail)


def origin_share(rows, origin):
    return '%d/%d by %s' % (sum(1 for r in rows if r['origin'] == origin), len(rows), origin)


def check_bgp_paths(results):
    rows = jsonl(os.path.join(results, 'bgp-paths.jsonl'))
    wrong = [r for r in rows if r['nexthops'] != r['want']]
    ok = len(rows) >= 6 and not wrong and any(':' in r['prefix'] for r in rows)
    detail = ('%d prefixes (IPv4 and IPv6: proxy, tenants, GRE endpoint, anycast DNS) in ael-router\'s kernel as '
              'ECMP routes over ael-edge1 and ael-edge2 (BGP, BFD, layer-4 hash)' % len(rows))
    if wrong:
        detail += '; wrong: ' + ', '.join('%s via [%s]' % (r['prefix'], r['nexthops']) for r in wrong)
    return ('BGP: both paths', ok, detail)


def check_bgp_event(results, name, title, start_key, end_key, what):
    event = load(os.path.join(results, '%s.json' % name))
    rows = dials(results, name)
    start, end = event[start_key], event[end_key]
    early = [r for r in failed(rows) if r['t'] < start + 3]
    late = [r for r in failed(rows) if r['t'] >= start + 3]
    during = [r for r in rows if start + 3 <= r['t'] < end]
    ok = (len(rows) >= 150 and not late and event['withdrawn'] is not None and event['back'] is not None
          and during and all(EDGES.get(r['edge']) == 'ael-edge2' for r in during))
    detail = ('%d dials at 20/s; %s: the router withdrew ael-edge1 after %s s; %d dial(s) failed in the first 3 s (%s), '
              '%d after; meanwhile %s; both paths back %s s after %s'
              % (len(rows), what, '%.2f' % (event['withdrawn'] - start) if event['withdrawn'] else 'NEVER',
                 len(early), ', '.join(sorted(set(r['outcome'] for r in early))) or 'none', len(late),
                 share(during, 'ael-edge2'), '%.1f' % (event['back'] - end) if event['back'] else 'NEVER',
                 'the restart' if name == 'proxy-stop' else 'the thaw'))
    if late:
        detail += '; first late failure %.2f s after: %s' % (late[0]['t'] - start, late[0]['outcome'])
    return (title, ok, detail)


def check_bgp_proxy_stop(results):
    return check_bgp_event(results, 'proxy-stop', 'BGP: proxy stopped', 'stopped', 'started',
                           'systemctl stop anycast-proxy.socket anycast-proxy.service on ael-edge1')


def check_bgp_freeze(results):
    return check_bgp_event(results, 'freeze', 'BGP: host frozen (BFD)', 'frozen', 'thawed',
                           'podman pause ael-edge1')


def check_bgp_drain(results):
    event = load(os.path.join(results, 'drain.json'))
    rows = dials(results, 'drain')
    after = [r for r in rows if r['t'] >= event['finished']]
    ok = (event['rc'] == 0 and len(rows) >= 300 and not failed(rows) and event['paths_after'] == 'ok'
          and event['drained'] and event['gshut_seen'] is not None
          and all(EDGES.get(r['edge']) == 'ael-edge2' for r in after))
    detail = ('playbooks/drain.yml -l ael-edge1 took %.1f s while %d dials ran at 20/s: %d failed; the router saw '
              'GRACEFUL_SHUTDOWN (65535:0) %s, then every prefix only via ael-edge2 (%s); afterwards %s; %s'
              % (event['finished'] - event['started'], len(rows), len(failed(rows)),
                 '%.1f s in' % (event['gshut_seen'] - event['started']) if event['gshut_seen'] else 'NEVER',
                 event['paths_after'], share(after, 'ael-edge2'), event['report']))
    return ('BGP: drain', ok, detail)


def check_bgp_undrain(results):
    event = load(os.path.join(results, 'undrain.json'))
    rows = dials(results, 'undrain')
    after = [r for r in rows if event['back'] and r['t'] >= event['back'] + 0.5]
    edges = sorted(set(EDGES.get(r['edge']) for r in after if r['edge']))
    ok = event['rc'] == 0 and event['back'] is not None and edges == ['ael-edge1', 'ael-edge2']
    detail = ('playbooks/undrain.yml -l ael-edge1: every prefix via both edges again %s s after it started; '
              'dials afterwards reached %s; %d of %d dials failed'
              % ('%.1f' % (event['back'] - event['started']) if event['back'] else 'NEVER', ' and '.join(edges),
                 len(failed(rows)), len(rows)))
    return ('BGP: undrain', ok, detail)


def check_bgp_rolling(results):
    event = load(os.path.join(results, 'rolling.json'))
    rows = [r for r in dials(results, 'rolling') if r['t'] <= event['finished']]
    restarted = [b != a for b, a in zip(event['pids_before'].split(), event['pids_after'].split())]
    ok = (event['rc'] == 0 and len(rows) >= 200 and not failed(rows) and len(restarted) == 2 and all(restarted)
          and event['drains'] == 2 and event['undrains'] == 2)
    detail = ('site.yml with a unit change (LimitNOFILE + 1) restarted the proxy on %d of 2 edges one batch at a time, '
              'each drained first and announced again once healthy (%d drains, %d undrains), in %.0f s while %d dials '
              'ran at 20/s: %d failed%s'
              % (sum(restarted), event['drains'], event['undrains'], event['finished'] - event['started'], len(rows),
                 len(failed(rows)), (' (%s)' % ', '.join(sorted(set(r['outcome'] for r in failed(rows)))))
                 if failed(rows) else ''))
    return ('BGP: rolling restart', ok, detail)


def check_status(results):
    path = os.path.join(results, 'status.txt')
    lines = [line for line in open(path).read().splitlines() if line.strip()] if os.path.exists(path) else []
    rows = [line for line in lines[1:] if line.startswith('ael-edge') and not line.split()[0].endswith(':')]
    ok = len(rows) == 2 and all(line.rstrip().endswith(' none') for line in rows)
    return ('status.yml', ok, '%d hosts in the table (edge_info), drift from the last apply: %s' % (
        len(rows), 'none' if ok else 'see the status table'))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--status-log')
    parser.add_argument('--results')
    parser.add_argument('--seconds', type=int)
    args = parser.parse_args()
    if args.status_log:
        for line in status_lines(args.status_log):
            print(line)
        return 0
    rows = []
    for check in (check_check_mode, check_converge, check_dial, check_banner, check_origin_failover, check_rate_limit,
                  check_tenants, check_gre, check_bgp_paths, check_bgp_proxy_stop, check_bgp_freeze, check_bgp_drain, check_bgp_undrain,
                  check_bgp_rolling, check_status):
        try:
            result = check(args.results)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
            result = (check.__name__.replace('check_', ''), False, 'no result: %s' % error)
        rows.extend(result if isinstance(result, list) else [result])
    width = max(len(row[0]) for row in rows)
    print('%-*s  %-7s  %s' % (width, 'CHECK', 'RESULT', 'DETAIL'))
    for name, ok, detail in rows:
        print('%-*s  %-7s  %s' % (width, name, {True: 'PASS', False: 'FAIL', None: 'SKIPPED'}[ok], detail))
    failed = [row[0] for row in rows if row[1] is False]
    if args.seconds is not None:
        print('\nlab up in %d s; %s' % (args.seconds, 'all checks passed' if not failed else
                                        'FAILED: ' + ', '.join(failed)))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
