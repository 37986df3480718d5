"""BGP in namespaces: a router and two edges over veth pairs, real BIRD processes, the real
health daemon. Used by tests/integration/test_bgp.py and bench/bgp/run.py.

    edge1 (10.255.1.2, fd00:ae:1::2) --veth-- (10.255.1.1, fd00:ae:1::1) router
    edge2 (10.255.2.2, fd00:ae:2::2) --veth-- (10.255.2.1, fd00:ae:2::1) router

Each edge's BIRD configuration is written by the bgp_speaker module (run for real, with its
own config file and control socket); the router's is this file's: eBGP to both edges, IPv4
and IPv6, BFD, ECMP into its kernel (merge paths), GRACEFUL_SHUTDOWN honoured (local
preference 0). Every BIRD runs with its own socket and pid file inside its namespace; the
namespaces' processes are killed when the namespaces go (helpers.NamespaceFactory).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import helpers  # noqa: E402

REPO = helpers.REPO
HEALTH = os.path.join(REPO, 'roles', 'bgp', 'files', 'anycast_edge_health.py')
SYSTEM_PYTHON = '/usr/bin/python3'
ROUTER_AS, EDGE_AS = 64500, 64512
PREFIX4, PREFIX6 = '192.0.2.0/24', '2001:db8:100::/64'
HEALTH_TABLE = 4179


def birdc(socket_path, command, check=True):
    return helpers.sh(['birdc', '-s', socket_path, command], check=check).stdout


def router_config(edges, export_default=False, bfd=True):
    lines = [
        'router id 10.255.0.1;',
        'timeformat protocol "%F %T.%3f";',
        'protocol device { scan time 10; }',
        'protocol kernel { merge paths on; ipv4 { import none; export where source = RTS_BGP; }; }',
        'protocol kernel { merge paths on; ipv6 { import none; export where source = RTS_BGP; }; }',
        'protocol bfd { interface "*" { interval 200 ms; multiplier 5; }; }',
        '# RFC 8326: a path with GRACEFUL_SHUTDOWN is the least preferred.',
        'filter from_edge { if (65535, 0) ~ bgp_community then bgp_local_pref = 0; accept; }',
    ]
    if export_default:
        lines += ['protocol static defaults4 { ipv4; route 0.0.0.0/0 blackhole; }',
                  'protocol static defaults6 { ipv6; route ::/0 blackhole; }']
    export4 = 'export where proto = "defaults4"' if export_default else 'export none'
    export6 = 'export where proto = "defaults6"' if export_default else 'export none'
    on = 'on' if bfd else 'off'
    for edge in edges:
        lines += [
            'protocol bgp %s_v4 { local as %d; neighbor %s as %d; hold time 9; bfd %s; direct; error wait time 1, 5;'
            ' ipv4 { import filter from_edge; %s; }; }' % (edge.name, ROUTER_AS, edge.address4, EDGE_AS, on, export4),
            'protocol bgp %s_v6 { local as %d; neighbor %s as %d; hold time 9; bfd %s; direct; error wait time 1, 5;'
            ' ipv6 { import filter from_edge; %s; }; }' % (edge.name, ROUTER_AS, edge.address6, EDGE_AS, on, export6),
        ]
    return '\n'.join(lines) + '\n'


class Bird(object):
    """One BIRD process in a namespace, with its own files."""

    def __init__(self, ns, workdir, name):
        self.ns = ns
        self.config = os.path.join(workdir, '%s.conf' % name)
        self.socket = os.path.join(workdir, '%s.ctl' % name)
        self.pidfile = os.path.join(workdir, '%s.pid' % name)

    def start(self):
        helpers.nsexec(self.ns, ['bird', '-c', self.config, '-s', self.socket, '-P', self.pidfile])
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if time.monotonic() > deadline:
                raise AssertionError('bird in %s did not create %s' % (self.ns, self.socket))
            time.sleep(0.05)

    @property
    def pid(self):
        with open(self.pidfile) as handle:
            return int(handle.read().strip())

    def stop(self):
        if os.path.exists(self.pidfile):
            try:
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass

    def cli(self, command):
        return birdc(self.socket, command)

    def protocols(self):
        """{name: (state, since, info)} of `show protocols`."""
        found = {}
        for line in self.cli('show protocols').splitlines()[2:]:
            fields = line.split()
            if len(fields) >= 6:
                found[fields[0]] = (fields[3], fields[4] + ' ' + fields[5], ' '.join(fields[6:]))
        return found

    def last_reconfiguration(self):
        for line in self.cli('show status').splitlines():
            if line.startswith('Last reconfiguration'):
                return line
        return None


class Edge(object):
    def __init__(self, name, ns, index, workdir, bfd=True):
        self.bfd = bfd
        self.name = name
        self.ns = ns
        self.index = index
        self.address4, self.router4 = '10.255.%d.2' % index, '10.255.%d.1' % index
        self.address6, self.router6 = 'fd00:ae:%d::2' % index, 'fd00:ae:%d::1' % index
        self.bird = Bird(ns, workdir, name)
        self.workdir = workdir
        self.health_config = os.path.join(workdir, '%s-health.json' % name)
        self.status_file = os.path.join(workdir, '%s-status.json' % name)
        self.drain_file = os.path.join(workdir, '%s-drained' % name)
        self.health = None
        self.listener = None

    def speaker_args(self, **extra):
        args = {
            'local_as': EDGE_AS, 'router_id': self.address4,
            'neighbors': [{'name': 'r4', 'address': self.router4, 'remote_as': ROUTER_AS, 'bfd': self.bfd},
                          {'name': 'r6', 'address': self.router6, 'remote_as': ROUTER_AS, 'bfd': self.bfd}],
            'prefixes': [PREFIX4, PREFIX6],
            'health_table': HEALTH_TABLE,
            'config_file': self.bird.config, 'control_socket': self.bird.socket, 'netns': self.ns,
        }
        args.update(extra)
        return args

    def configure(self, check=False, diff=False, **extra):
        return helpers.run_module('bgp_speaker', self.speaker_args(**extra), check=check, diff=diff)

    # -- the service the proxy's prefixes depend on ---------------------------
    def start_listener(self, port=1234):
        """A TCP listener on 127.0.0.1:PORT in the edge (what the proxy's listener is to the health check)."""
        code = ('import socket,time\n'
                's=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n'
                's.bind(("127.0.0.1", %d)); s.listen(64)\n'
                'while True:\n    c, _ = s.accept(); c.close()\n' % port)
        self.listener = subprocess.Popen(['ip', 'netns', 'exec', self.ns, SYSTEM_PYTHON, '-c', code])
        deadline = time.monotonic() + 10
        while helpers.nsexec(self.ns, ['ss', '-Hltn', 'sport = :%d' % port]).stdout.strip() == '':
            if time.monotonic() > deadline:
                raise AssertionError('listener did not come up in %s' % self.ns)
            time.sleep(0.02)

    def kill_listener(self):
        """The service dies (SIGKILL: no goodbye)."""
        if self.listener is not None:
            self.listener.kill()
            self.listener.wait()
            self.listener = None

    # -- the health daemon ------------------------------------------------------
    def write_health_config(self, hold_down=2.0, graceful_shutdown=2.0, port=1234, check='listen', **extra):
        config = dict({
            'table': HEALTH_TABLE, 'interval': 0.2, 'fall': 2, 'hold_down': hold_down, 'check_timeout': 0.5,
            'graceful_shutdown': graceful_shutdown, 'drain_file': self.drain_file, 'status_file': self.status_file,
            'restore_unit': None,
            'groups': [{'name': 'proxy', 'prefixes': [PREFIX4, PREFIX6],
                        'checks': [{'type': check, 'address': '127.0.0.1', 'port': port}]}],
        }, **extra)
        with open(self.health_config, 'w') as handle:
            json.dump(config, handle)
        return config

    def health_cli(self, *args, timeout=120):
        return helpers.nsexec(self.ns, [SYSTEM_PYTHON, '-B', HEALTH] + list(args) + ['--config', self.health_config]
                              if args[0] != 'check-config' else [SYSTEM_PYTHON, '-B', HEALTH] + list(args),
                              timeout=timeout, check=False)

    def start_health(self):
        env = dict(os.environ, ANYCAST_HEALTH_STDERR='1')
        log = open(os.path.join(self.workdir, '%s-health.log' % self.name), 'a')
        self.health = subprocess.Popen(['ip', 'netns', 'exec', self.ns, SYSTEM_PYTHON, '-B', HEALTH, 'run',
                                        '--config', self.health_config], env=env, stdout=log, stderr=log)
        log.close()

    def stop_health(self, sig=signal.SIGTERM):
        if self.health is not None:
            self.health.send_signal(sig)
            self.health.wait(timeout=20)
            self.health = None

    def status(self):
        try:
            with open(self.status_file) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def table(self):
        return ''.join(helpers.nsexec(self.ns, ['ip', family, 'route', 'show', 'table', str(HEALTH_TABLE)],
                                      check=False).stdout for family in ('-4', '-6'))


class BgpLab(object):
    """Router + two edges, built in namespaces from a NamespaceFactory (which removes them)."""

    def __init__(self, factory, export_default=False, bfd=True):
        self.factory = factory
        self.workdir = helpers.scratch_dir('bgp-')
        os.chmod(self.workdir, 0o755)
        self.router = factory()
        self.edges = []
        for index in (1, 2):
            edge = Edge('edge%d' % index, factory(), index, self.workdir, bfd)
            helpers.nsexec(edge.ns, ['ip', 'link', 'add', 'up%d' % index, 'type', 'veth', 'peer', 'name',
                                     'down%d' % index, 'netns', self.router])
            for ns, ifname, v4, v6, link_local in (
                    (edge.ns, 'up%d' % index, edge.address4, edge.address6, 'fe80::2/64'),
                    (self.router, 'down%d' % index, edge.router4, edge.router6, 'fe80::1/64')):
                # Link-local addresses by hand: they exist at once (no kernel state changing under a test).
                helpers.nsexec(ns, ['ip', 'link', 'set', ifname, 'addrgenmode', 'none'])
                helpers.nsexec(ns, ['ip', 'addr', 'add', v4 + '/24', 'dev', ifname])
                for v6_address in (v6 + '/64', link_local):
                    helpers.nsexec(ns, ['ip', 'addr', 'add', v6_address, 'dev', ifname, 'nodad'])
                helpers.nsexec(ns, ['ip', 'link', 'set', ifname, 'up'])
            # What the host serves: AnyIP routes, as anyip_route makes them.
            helpers.nsexec(edge.ns, ['ip', 'route', 'add', 'local', PREFIX4, 'dev', 'lo', 'proto', '172'])
            helpers.nsexec(edge.ns, ['ip', '-6', 'route', 'add', 'local', PREFIX6, 'dev', 'lo', 'proto', '172'])
            self.edges.append(edge)
        helpers.nsexec(self.router, ['sysctl', '-qw', 'net.ipv4.fib_multipath_hash_policy=1',
                                     'net.ipv6.fib_multipath_hash_policy=1'])
        self.router_bird = Bird(self.router, self.workdir, 'router')
        with open(self.router_bird.config, 'w') as handle:
            handle.write(router_config(self.edges, export_default, bfd))

    def start(self, **speaker_args):
        """Configure and start every BIRD; wait until all sessions are up."""
        for edge in self.edges:
            result = edge.configure(**speaker_args)
            assert not result.get('failed'), result
            edge.bird.start()
        self.router_bird.start()
        self.wait_sessions()

    def wait_sessions(self, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            # both ends: an edge may still be in OpenConfirm when the router already calls it Established
            states = [(name, p[2]) for name, p in self.router_bird.protocols().items() if name.startswith('edge')]
            count = len(states)
            states += [(edge.ns + ':' + name, p[2]) for edge in self.edges
                       for name, p in edge.bird.protocols().items() if name.startswith('bgp_')]
            if count == 4 and all(info.startswith('Established') for _n, info in states):
                return
            if time.monotonic() > deadline:
                raise AssertionError('BGP sessions not established: %s' % states)
            time.sleep(0.1)

    def stop(self):
        for edge in self.edges:
            edge.stop_health()
            edge.kill_listener()
            edge.bird.stop()
        self.router_bird.stop()

    def nexthops(self, prefix):
        """The router's kernel route for PREFIX: the set of edge addresses it forwards to."""
        family = '-6' if ':' in prefix else '-4'
        out = helpers.nsexec(self.router, ['ip', family, '-j', 'route', 'show', 'exact', prefix]).stdout
        hops = set()
        for route in json.loads(out or '[]'):
            if route.get('gateway'):
                hops.add(route['gateway'])
            for hop in route.get('nexthops', []):
                hops.add(hop['gateway'])
        return hops

    def wait_nexthops(self, prefix, expected, timeout=10.0, interval=0.01):
        """Seconds until the router's route for PREFIX goes to exactly EXPECTED (a set of addresses)."""
        started = time.monotonic()
        while True:
            hops = self.nexthops(prefix)
            if hops == set(expected):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError('router route for %s goes to %s, not %s after %.1f s'
                                     % (prefix, sorted(hops), sorted(expected), timeout))
            time.sleep(interval)

    def both(self, family=4):
        return {e.address4 if family == 4 else e.address6 for e in self.edges}
