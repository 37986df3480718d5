"""Benchmark: anyip_route / tproxy_rule against the usual per-object Ansible loop.

Everything runs inside a throwaway network namespace (prefix aeb). Measured in
one run, side by side:

* module time: one module process (as Ansible runs it, AnsiballZ aside) applying
  N_ROUTES AnyIP prefixes / N_RULES TPROXY rules, then re-applying with nothing
  to do; and the same through ansible-playbook (whole play wall time);
* the usual way: ansible-playbook looping ansible.builtin.command `ip route add`
  and ansible.builtin.iptables over a smaller N (LOOP_N), run inside the
  namespace (`ip netns exec NS ansible-playbook ...`), reported per object.

Rerun: sudo .venv/bin/python bench/foundation/run.py [--routes 10000 --rules 1000 --loop 50]
"""

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, 'tests'))
import helpers  # noqa: E402


def prefixes(count):
    base = ipaddress.ip_network('10.0.0.0/8')  # inside the namespace only
    out = []
    for index, net in enumerate(base.subnets(new_prefix=24)):
        if index >= count:
            return out
        out.append(str(net))
    return out


def tproxy_rules(count):
    return [{'destination': p, 'on_port': 1234} for p in prefixes(count)]


def timed(func):
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def loop_playbook(ns, items, kind):
    if kind == 'route':
        task = {'ansible.builtin.command': 'ip route add local {{ item }} dev lo src 127.0.0.1',
                'loop': items, 'changed_when': True}
    else:
        # ansible.builtin.iptables has no TPROXY options (--on-port); the closest per-rule
        # cost is a rule with the same matches in mangle PREROUTING, so ACCEPT stands in.
        task = {'ansible.builtin.iptables': {'table': 'mangle', 'chain': 'PREROUTING',
                                             'destination': '{{ item }}', 'protocol': 'tcp',
                                             'jump': 'ACCEPT'},
                'loop': items}
    play = [{'hosts': 'localhost', 'gather_facts': False, 'tasks': [task]}]
    path = os.path.join(helpers.scratch_dir('aeb-'), 'loop.yml')
    with open(path, 'w') as handle:
        json.dump(play, handle)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=helpers.COLLECTIONS)
    cmd = ['ip', 'netns', 'exec', ns, os.path.join(helpers.VENV_BIN, 'ansible-playbook'), '-i', 'localhost,',
           '-c', 'local', '-e', 'ansible_python_interpreter=%s' % helpers.PYTHON, path]
    seconds, proc = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, env=env, check=False))
    if proc.returncode != 0:
        raise SystemExit('loop playbook failed:\n%s' % proc.stdout[-3000:])
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--routes', type=int, default=10000)
    parser.add_argument('--rules', type=int, default=1000)
    parser.add_argument('--loop', type=int, default=50)
    args = parser.parse_args()
    namespaces = []

    def fresh():
        name = helpers.unique_name('aeb')
        helpers.sh(['ip', 'netns', 'add', name])
        helpers.nsexec(name, ['ip', 'link', 'set', 'lo', 'up'])
        namespaces.append(name)
        return name

    rows = []
    try:
        ns = fresh()
        route_args = {'prefixes': prefixes(args.routes), 'netns': ns}
        t_apply, r = timed(lambda: helpers.run_module('anyip_route', route_args))
        assert r.get('changed') and len(r['added']) == args.routes, r.get('msg')
        t_noop, r = timed(lambda: helpers.run_module('anyip_route', route_args))
        assert r.get('changed') is False, r.get('msg')
        t_play_noop, res = timed(lambda: helpers.run_playbook([{'anycast.edge.anyip_route': route_args}]))
        assert res[0].get('changed') is False
        rule_args = {'rules': tproxy_rules(args.rules), 'netns': ns}
        t_rapply, r = timed(lambda: helpers.run_module('tproxy_rule', rule_args))
        assert r.get('changed'), r.get('msg')
        t_rnoop, r = timed(lambda: helpers.run_module('tproxy_rule', rule_args))
        assert r.get('changed') is False, r.get('msg')
        t_play_rnoop, res = timed(lambda: helpers.run_playbook([{'anycast.edge.tproxy_rule': rule_args}]))
        assert res[0].get('changed') is False

        loop_ns = fresh()
        t_loop_routes = loop_playbook(loop_ns, prefixes(args.loop), 'route')
        t_loop_rules = loop_playbook(loop_ns, prefixes(args.loop), 'rule')

        per_route = t_apply / args.routes
        per_rule = t_rapply / args.rules
        loop_route = t_loop_routes / args.loop
        loop_rule = t_loop_rules / args.loop
        rows = [
            ('anyip_route: apply %d prefixes (module time)' % args.routes, t_apply, per_route * 1e3, None),
            ('anyip_route: no-op re-apply (module time)', t_noop, None, None),
            ('anyip_route: no-op re-apply (whole ansible-playbook run)', t_play_noop, None, None),
            ('loop of command `ip route add` x %d (ansible-playbook)' % args.loop, t_loop_routes, loop_route * 1e3,
             loop_route / per_route),
            ('tproxy_rule: apply %d rules (module time)' % args.rules, t_rapply, per_rule * 1e3, None),
            ('tproxy_rule: no-op re-apply (module time)', t_rnoop, None, None),
            ('tproxy_rule: no-op re-apply (whole ansible-playbook run)', t_play_rnoop, None, None),
            ('loop of ansible.builtin.iptables x %d (ansible-playbook)' % args.loop, t_loop_rules, loop_rule * 1e3,
             loop_rule / per_rule),
        ]
    finally:
        for name in namespaces:
            helpers.sh(['ip', 'netns', 'del', name], check=False)
    print('| measurement | seconds | ms per object | loop / module per object |')
    print('|---|---:|---:|---:|')
    for label, seconds, per_ms, ratio in rows:
        print('| %s | %.2f | %s | %s |' % (label, seconds, '%.3f' % per_ms if per_ms else '',
                                           '%.0fx' % ratio if ratio else ''))


if __name__ == '__main__':
    main()
