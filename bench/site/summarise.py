"""Summarise bench/site/noop.sh: reads "what index start end log" lines, prints runs and a JSON summary."""

import json
import re
import statistics
import sys
import time

PROFILE_LINE = re.compile(r'^(.*?) -+ ([0-9.]+)s$', re.M)


def changed(text):
    recap = text.split('PLAY RECAP')[-1]
    return sum(int(n) for n in re.findall(r'changed=(\d+)', recap))


def task_times(text):
    """profile_tasks' closing table: [(task, seconds)], slowest first."""
    table = text.split('PLAY RECAP')[-1]
    return [(name.strip(), float(seconds)) for name, seconds in PROFILE_LINE.findall(table)
            if not name.strip().startswith('=')]


def main(pings, results_dir):
    runs = []
    last_site = None
    for line in sys.stdin:
        what, index, start, end, log = line.split()
        text = open(log).read()
        seconds = float(end) - float(start)
        run = {'what': what, 'run': int(index), 'seconds': round(seconds, 2), 'changed': changed(text)}
        if what in ('site', 'base'):
            times = task_times(text)
            run['tasks'] = len(times)
            if what == 'site':
                last_site = times
            if run['changed'] and what == 'site':
                raise SystemExit('site.yml run %s reported changed=%d: the lab is not converged (%s)'
                                 % (index, run['changed'], log))
        runs.append(run)
        detail = ', %d tasks, changed=%d' % (run['tasks'], run['changed']) if what != 'pings' else ''
        print('%-5s run %s: %6.2f s%s' % (what, index, seconds, detail), flush=True)
    site = statistics.median(r['seconds'] for r in runs if r['what'] == 'site')
    ping_run = statistics.median(r['seconds'] for r in runs if r['what'] == 'pings')
    summary = {
        'runs': runs,
        'pings': pings,
        'site_seconds': round(site, 2),
        'pings_seconds': round(ping_run, 2),
        'ping_equivalents': round(pings * site / ping_run, 1),
        'target_met': site <= ping_run,
    }
    base = [r['seconds'] for r in runs if r['what'] == 'base']
    if base:
        summary['base_seconds'] = round(statistics.median(base), 2)
        summary['base_ping_equivalents'] = round(pings * summary['base_seconds'] / ping_run, 1)
    summary.update({
        'slowest_site_tasks': [{'task': t, 'seconds': s} for t, s in (last_site or [])[:15]],
    })
    print('\nslowest tasks of the last site.yml run:')
    for task, seconds in (last_site or [])[:15]:
        print('  %5.2f s  %s' % (seconds, task))
    print(json.dumps(summary, indent=1))
    with open('%s/site-noop-%s.json' % (results_dir, time.strftime('%Y%m%d-%H%M%S')), 'w') as handle:
        json.dump(summary, handle, indent=1)


if __name__ == '__main__':
    main(int(sys.argv[1]), sys.argv[2])
