"""anycast-edge-health: a prefix is announced over BGP only while what answers it is healthy.

The program behind anycast-edge-health.service, shipped by the anycast.edge.bgp role.
Standard library and iproute2 only; it runs without Ansible.

How it announces: BIRD learns kernel routing table TABLE (its configuration, written
by anycast.edge.bgp_speaker, exports exactly the configured prefixes found there).
This daemon is the only writer of that table. Per health group (the proxy's
prefixes, each tenant's, ...) it runs the group's checks every INTERVAL seconds and
keeps one route per prefix in the table:

  blackhole PREFIX  announced (the route's type is irrelevant to forwarding: no
                    `ip rule` looks the table up)
  unreachable       announced with GRACEFUL_SHUTDOWN (RFC 8326): the host is being
                    drained; after GRACEFUL_SHUTDOWN seconds the route goes
  no route          withdrawn

A group is withdrawn after FALL failed checks in a row, and announced again only
after it has passed its checks for HOLD_DOWN seconds without interruption. Nothing
is announced while the drain file exists (it lives under /var/lib and survives a
reboot) or while the restore unit (anycast-edge-restore.service) has not finished
successfully. When the daemon stops, it withdraws everything (the unit's
ExecStopPost does too, after a crash). SIGHUP re-executes the program with the
configuration on disk; routes of groups that are still healthy stay, so a reload
or an upgrade withdraws nothing.

usage:
  anycast_edge_health.py run --config FILE          the daemon
  anycast_edge_health.py check-config FILE          exit 1 naming what is wrong
  anycast_edge_health.py drain --config FILE [--timeout S] [--max-connections N] [--reason TEXT]
  anycast_edge_health.py undrain --config FILE [--timeout S] [--require GROUP ...]
  anycast_edge_health.py status --config FILE       the daemon's status, as JSON
  anycast_edge_health.py connections --config FILE  established TCP connections to the prefixes
  anycast_edge_health.py withdraw --config FILE     remove every route from the table
"""

import argparse
import errno
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import syslog
import time

ROUTE_PROTO = 173
ANNOUNCED, GRACEFUL_SHUTDOWN, WITHDRAWN = 'announced', 'graceful-shutdown', 'withdrawn'
ROUTE_TYPE = {ANNOUNCED: 'blackhole', GRACEFUL_SHUTDOWN: 'unreachable'}
CHECK_TYPES = ('service', 'listen', 'tcp', 'netns', 'link', 'command')
RESYNC_SECONDS = 10        # re-read the table this often, in case someone else changed it
HEARTBEAT_SECONDS = 5      # the status file is rewritten at least this often
TCP_ESTABLISHED = '01'


class ConfigError(ValueError):
    pass


def _number(value, key, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError('%s: expected a number %s-%s, got %r' % (key, low, high, value))
    return value


class Check(object):
    """One health check; run() -> (ok, reason)."""

    def __init__(self, spec, key, timeout):
        if not isinstance(spec, dict) or spec.get('type') not in CHECK_TYPES:
            raise ConfigError('%s: expected {type: %s, ...}, got %r' % (key, '|'.join(CHECK_TYPES), spec))
        self.type = spec['type']
        self.timeout = timeout
        if self.type == 'service':
            self.unit = self._text(spec, 'unit', key)
        elif self.type in ('tcp', 'listen'):
            address = self._text(spec, 'address', key)
            try:
                self.address = str(ipaddress.ip_address(address))
            except ValueError:
                raise ConfigError('%s.address: %r is not an IP address' % (key, address))
            self.port = int(_number(spec.get('port'), key + '.port', 1, 65535))
        elif self.type in ('netns', 'link'):
            self.name = self._text(spec, 'name', key)
            if '/' in self.name or self.name in ('.', '..'):
                raise ConfigError('%s.name: %r is not a valid name' % (key, self.name))
        else:
            argv = spec.get('argv')
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise ConfigError('%s.argv: expected a non-empty list of strings' % key)
            self.argv = argv

    @staticmethod
    def _text(spec, field, key):
        value = spec.get(field)
        if not isinstance(value, str) or not value:
            raise ConfigError('%s.%s: expected a non-empty string' % (key, field))
        return value

    def describe(self):
        return {'service': lambda: 'service %s' % self.unit,
                'tcp': lambda: 'tcp %s' % _endpoint(self.address, self.port),
                'listen': lambda: 'listen %s' % _endpoint(self.address, self.port),
                'netns': lambda: 'netns %s' % self.name,
                'link': lambda: 'link %s' % self.name,
                'command': lambda: 'command %s' % ' '.join(self.argv)}[self.type]()

    def run(self):
        return getattr(self, '_run_' + self.type)()

    def _run_service(self):
        state = _run(['systemctl', 'is-active', self.unit], self.timeout)
        return state == 'active', 'service %s is %s' % (self.unit, state or 'unknown')

    def _run_listen(self):
        """A listening socket on the address and port whose accept queue has room: the kernel completes
        the handshake of the next connection. Asked with sock_diag, so no connection reaches the service
        (a transparent proxy would log and count every probe as a refused connection)."""
        try:
            listeners = [(queued, backlog) for address, port, queued, backlog in tcp_listeners()
                         if port == self.port and address in (self.address, '0.0.0.0', '::')]
        except OSError as exc:
            return False, 'cannot list listening sockets: %s' % (exc.strerror or exc)
        if not listeners:
            return False, 'nothing listens on %s' % _endpoint(self.address, self.port)
        full = [(q, b) for q, b in listeners if q > b]   # the kernel's sk_acceptq_is_full()
        if full:
            return False, '%s: accept queue full (%d of %d)' % (_endpoint(self.address, self.port), full[0][0], full[0][1])
        return True, ''

    def _run_tcp(self):
        family = socket.AF_INET6 if ':' in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.address, self.port))
            return True, ''
        except ConnectionResetError:
            # The handshake completed and the service reset the connection at once: it accepts.
            return True, ''
        except socket.timeout:
            return False, '%s did not accept within %.1f s' % (_endpoint(self.address, self.port), self.timeout)
        except OSError as exc:
            return False, '%s: %s' % (_endpoint(self.address, self.port), exc.strerror or exc)
        finally:
            sock.close()

    def _run_netns(self):
        return os.path.exists('/run/netns/' + self.name), 'network namespace %s does not exist' % self.name

    def _run_link(self):
        try:
            with open('/sys/class/net/%s/operstate' % self.name) as handle:
                state = handle.read().strip()
        except OSError:
            return False, 'link %s does not exist' % self.name
        return state == 'up', 'link %s is %s' % (self.name, state)

    def _run_command(self):
        try:
            proc = subprocess.run(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=self.timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            return False, 'command %s did not finish within %.1f s' % (self.argv[0], self.timeout)
        except OSError as exc:
            return False, 'command %s: %s' % (self.argv[0], exc.strerror)
        said = proc.stderr.decode(errors='replace').strip().splitlines()
        last = (': ' + said[-1]) if said else ''
        return proc.returncode == 0, 'command %s exited %d%s' % (self.argv[0], proc.returncode, last)


NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
NLM_F_REQUEST, NLM_F_DUMP, NLMSG_ERROR, NLMSG_DONE = 0x1, 0x300, 2, 3
TCP_LISTEN = 10
_NLMSGHDR = struct.Struct('=IHHII')
_DIAG_REQ = struct.Struct('=BBBBI')             # inet_diag_req_v2 head; the socket id (48 bytes) follows
_DIAG_MSG = struct.Struct('=BBBB')              # inet_diag_msg head; id, expires, rqueue, wqueue... follow


def tcp_listeners():
    """[(local address, port, accept queue length, backlog)] of the TCP listening sockets of this
    network namespace, both families, from one sock_diag dump each (listeners only: cheap however many
    connections the host holds)."""
    found = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as sock:
        for family in (socket.AF_INET, socket.AF_INET6):
            request = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN) + bytes(48)
            sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY,
                                     NLM_F_REQUEST | NLM_F_DUMP, family, 0) + request)
            done = False
            while not done:
                data = sock.recv(65536)
                offset = 0
                while offset + _NLMSGHDR.size <= len(data):
                    length, kind = _NLMSGHDR.unpack_from(data, offset)[:2]
                    if length < _NLMSGHDR.size:
                        raise OSError(errno.EPROTO, 'malformed sock_diag reply')
                    body = offset + _NLMSGHDR.size
                    if kind == NLMSG_DONE:
                        done = True
                    elif kind == NLMSG_ERROR:
                        code = -struct.unpack_from('=i', data, body)[0]
                        if code:
                            raise OSError(code, os.strerror(code))
                        done = True
                    else:
                        msg_family, state = _DIAG_MSG.unpack_from(data, body)[:2]
                        sport = struct.unpack_from('!H', data, body + 4)[0]
                        raw = data[body + 8:body + 8 + (4 if msg_family == socket.AF_INET else 16)]
                        rqueue, wqueue = struct.unpack_from('=II', data, body + 4 + 48 + 4)
                        if state == TCP_LISTEN:
                            found.append((str(ipaddress.ip_address(raw)), sport, rqueue, wqueue))
                    offset += (length + 3) & ~3
    return found


def _endpoint(address, port):
    return '[%s]:%d' % (address, port) if ':' in address else '%s:%d' % (address, port)


def _run(argv, timeout):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=timeout,
                              check=False).stdout.decode().strip()
    except (OSError, subprocess.TimeoutExpired):
        return ''


class Group(object):
    """A set of prefixes announced together, with the checks that gate them and their state machine."""

    def __init__(self, spec, key, config):
        if not isinstance(spec, dict):
            raise ConfigError('%s: expected a dictionary' % key)
        self.name = spec.get('name')
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError('%s.name: expected a non-empty string' % key)
        prefixes = spec.get('prefixes')
        if not isinstance(prefixes, list) or not prefixes:
            raise ConfigError('%s.prefixes: expected a non-empty list' % key)
        self.prefixes = []
        for index, text in enumerate(prefixes):
            try:
                self.prefixes.append(ipaddress.ip_network(text))
            except (TypeError, ValueError):
                raise ConfigError('%s.prefixes[%d]: %r is not a prefix' % (key, index, text))
        checks = spec.get('checks', [])
        if not isinstance(checks, list):
            raise ConfigError('%s.checks: expected a list' % key)
        self.checks = [Check(c, '%s.checks[%d]' % (key, i), config.check_timeout) for i, c in enumerate(checks)]
        self.fall = config.fall
        self.hold_down = config.hold_down
        self.failures = 0
        self.healthy = False
        self.healthy_since = None   # monotonic time of the first passed check of the current run
        self.checked = False
        self.reason = 'not checked yet'
        self.state = WITHDRAWN
        self.state_since = time.time()
        self.state_reason = 'not checked yet'
        self.gshut_until = None
        self.adopted = False   # announced by the previous process (reload): no hold-down
        self.gshut_seconds = config.graceful_shutdown

    def observe(self, ok, reason, now):
        """Record one round of checks; FALL failures in a row make the group unhealthy."""
        first = not self.checked
        self.checked = True
        if ok:
            self.failures = 0
            if not self.healthy:
                self.healthy, self.healthy_since = True, now
            self.reason = ''
        else:
            self.failures += 1
            self.reason = reason
            # A group seen for the first time gets no benefit of the doubt.
            if self.failures >= self.fall or first:
                self.healthy, self.healthy_since = False, None

    def desired(self, now, gate, drained):
        """(state, reason) this group should be in now.

        gate: None when announcing may start, else why not (the restore has not finished).
        drained: the host is drained; an announced group first gets GRACEFUL_SHUTDOWN.
        """
        if not self.healthy:
            return WITHDRAWN, self.reason or 'unhealthy'
        if drained:
            if self.state in (ANNOUNCED, GRACEFUL_SHUTDOWN):
                if self.gshut_until is None:
                    self.gshut_until = now + self.gshut_seconds
                if now < self.gshut_until:
                    return GRACEFUL_SHUTDOWN, 'draining: announced with GRACEFUL_SHUTDOWN until withdrawn'
            return WITHDRAWN, 'drained'
        self.gshut_until = None
        if gate:
            return WITHDRAWN, gate
        if self.state in (ANNOUNCED, GRACEFUL_SHUTDOWN) or self.adopted:
            return ANNOUNCED, ''
        held = now - self.healthy_since
        if held >= self.hold_down:
            return ANNOUNCED, ''
        return WITHDRAWN, 'hold-down: healthy for %.1f of %.1f s' % (held, self.hold_down)

    def status(self):
        return {'name': self.name, 'prefixes': [str(p) for p in self.prefixes], 'state': self.state,
                'since': round(self.state_since, 3), 'healthy': self.healthy, 'reason': self.state_reason,
                'checks': [c.describe() for c in self.checks]}


class Config(object):
    def __init__(self, data):
        if not isinstance(data, dict):
            raise ConfigError('the configuration must be a JSON object')
        unknown = sorted(set(data) - {'table', 'interval', 'fall', 'hold_down', 'check_timeout', 'graceful_shutdown',
                                      'drain_file', 'status_file', 'restore_unit', 'groups'})
        if unknown:
            raise ConfigError('unknown key(s): %s' % ', '.join(unknown))
        self.table = int(_number(data.get('table', 4179), 'table', 1, 4294967295))
        if self.table in (253, 254, 255):
            raise ConfigError("table: %d is one of the kernel's own tables" % self.table)
        self.interval = float(_number(data.get('interval', 0.5), 'interval', 0.05, 60))
        self.fall = int(_number(data.get('fall', 2), 'fall', 1, 100))
        self.hold_down = float(_number(data.get('hold_down', 5), 'hold_down', 0, 3600))
        self.check_timeout = float(_number(data.get('check_timeout', 0.5), 'check_timeout', 0.05, 60))
        self.graceful_shutdown = float(_number(data.get('graceful_shutdown', 5), 'graceful_shutdown', 0, 3600))
        self.drain_file = data.get('drain_file', '/var/lib/anycast-edge/bgp-drained')
        self.status_file = data.get('status_file', '/run/anycast-edge-health/status.json')
        self.restore_unit = data.get('restore_unit')
        for key in ('drain_file', 'status_file'):
            if not isinstance(getattr(self, key), str) or not os.path.isabs(getattr(self, key)):
                raise ConfigError('%s: expected an absolute path' % key)
        if self.restore_unit is not None and (not isinstance(self.restore_unit, str) or not self.restore_unit):
            raise ConfigError('restore_unit: expected a unit name or null')
        groups = data.get('groups', [])
        if not isinstance(groups, list):
            raise ConfigError('groups: expected a list')
        self.groups = [Group(g, 'groups[%d]' % i, self) for i, g in enumerate(groups)]
        seen_names, seen_prefixes = set(), {}
        for group in self.groups:
            if group.name in seen_names:
                raise ConfigError('groups: the name %s is given twice' % group.name)
            seen_names.add(group.name)
            for prefix in group.prefixes:
                if prefix in seen_prefixes:
                    raise ConfigError('groups: %s is in %s and %s' % (prefix, seen_prefixes[prefix], group.name))
                seen_prefixes[prefix] = group.name

    @classmethod
    def load(cls, path):
        try:
            with open(path) as handle:
                data = json.load(handle)
        except OSError as exc:
            raise ConfigError('cannot read %s: %s' % (path, exc.strerror))
        except ValueError as exc:
            raise ConfigError('%s is not JSON: %s' % (path, exc))
        return cls(data)

    @property
    def prefixes(self):
        return [p for g in self.groups for p in g.prefixes]


class Table(object):
    """The kernel routing table BIRD learns; read and written with iproute2."""

    def __init__(self, number):
        self.number = number

    def read(self):
        """{prefix: route type} of every route in the table (whoever added it)."""
        routes = {}
        for family in ('-4', '-6'):
            out = subprocess.run(['ip', '-j', family, 'route', 'show', 'table', str(self.number)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, timeout=10)
            if out.returncode != 0 and b'table does not exist' in out.stderr:
                continue   # an empty table does not exist for the kernel
            if out.returncode != 0:
                raise OSError('ip route show table %d: %s' % (self.number, out.stderr.decode().strip()))
            routes.update(parse_ip_routes(out.stdout.decode()))
        return routes

    def apply(self, want, have):
        """Make the table hold exactly WANT ({prefix: type}); HAVE is what it holds now. One `ip -batch`."""
        lines = []
        for prefix, kind in sorted(have.items(), key=_sort_key):
            if prefix not in want:
                lines.append('route del %s table %d' % (prefix, self.number))
        for prefix, kind in sorted(want.items(), key=_sort_key):
            if have.get(prefix) != kind:
                # replace: one netlink message, so BIRD sees an update, never a withdrawal in between
                lines.append('route replace %s %s table %d proto %d' % (kind, prefix, self.number, ROUTE_PROTO))
        if not lines:
            return []
        proc = subprocess.run(['ip', '-force', '-batch', '-'], input=('\n'.join(lines) + '\n').encode(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, timeout=30)
        if proc.returncode != 0:
            log(syslog.LOG_ERR, 'ip -batch: %s' % proc.stderr.decode(errors='replace').strip())
        return lines


def parse_ip_routes(text):
    routes = {}
    for route in json.loads(text or '[]'):
        dst = route.get('dst')
        if not dst or dst == 'default':
            continue
        routes[ipaddress.ip_network(dst)] = route.get('type', 'unicast')
    return routes


def _sort_key(item):
    return (item[0].version, item[0])


def log(priority, message):
    syslog.syslog(priority, message)
    if sys.stderr.isatty() or os.environ.get('ANYCAST_HEALTH_STDERR'):
        sys.stderr.write(message + '\n')
        sys.stderr.flush()


class Notifier(object):
    """sd_notify without libsystemd."""

    def __init__(self):
        path = os.environ.get('NOTIFY_SOCKET')
        self.address = ('\0' + path[1:] if path.startswith('@') else path) if path else None

    def send(self, *fields):
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto('\n'.join(fields).encode(), self.address)
        except OSError:
            pass


def restore_gate(unit):
    """None when announcing may start, else why not: the restore unit has not finished well."""
    if not unit:
        return None
    props = dict(line.split('=', 1) for line in _run(
        ['systemctl', 'show', unit, '--property=LoadState,ActiveState,Result'], 10).splitlines() if '=' in line)
    if not props:
        return 'cannot ask systemd about %s' % unit
    if props.get('LoadState') == 'not-found':
        return None
    if props.get('Result') == 'success' and props.get('ActiveState') in ('active', 'inactive'):
        return None
    return 'waiting for %s (%s, result %s)' % (unit, props.get('ActiveState'), props.get('Result'))


def read_drain(path):
    """The drain record {'since', 'reason'}, or None when the host is not drained."""
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {'since': None, 'reason': 'drain file unreadable'}
    try:
        record = json.loads(text)
        return record if isinstance(record, dict) else {'since': None, 'reason': text.strip()}
    except ValueError:
        return {'since': None, 'reason': text.strip()}


def atomic_write(path, text, mode=0o644):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = '%s.%d.tmp' % (path, os.getpid())
    with open(tmp, 'w') as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Daemon(object):
    def __init__(self, config, clock=time.monotonic):
        self.config = config
        self.clock = clock
        self.table = Table(config.table)
        self.running = True
        self.reexec = False
        self.restore_ok = False
        self.drain = None
        self.last_status = None
        self.last_status_write = 0.0
        self.notifier = Notifier()

    def adopt(self, have):
        """Groups whose routes are all in the table already were announced by our predecessor (a reload):
        they stay announced if their first check passes."""
        for group in self.config.groups:
            group.adopted = all(have.get(p) == ROUTE_TYPE[ANNOUNCED] for p in group.prefixes)

    def tick(self, have):
        """One round: checks, states, table. Returns the table as it is afterwards."""
        now = self.clock()
        self.drain = read_drain(self.config.drain_file)
        gate = None
        if not self.restore_ok:   # once done, the restore stays done
            gate = restore_gate(self.config.restore_unit)
            self.restore_ok = gate is None
        want = {}
        for group in self.config.groups:
            ok, reason = True, ''
            for check in group.checks:
                ok, reason = check.run()
                if not ok:
                    break
            group.observe(ok, reason, now)
            state, why = group.desired(now, gate, self.drain is not None)
            group.adopted = False
            if state != group.state:
                log(syslog.LOG_NOTICE, 'group %s: %s -> %s%s (%s)' % (
                    group.name, group.state, state, (': ' + why) if why else '',
                    ', '.join(str(p) for p in group.prefixes)))
                group.state, group.state_since = state, time.time()
            group.state_reason = why
            if state in ROUTE_TYPE:
                for prefix in group.prefixes:
                    want[prefix] = ROUTE_TYPE[state]
        if self.table.apply(want, have):
            have = self.table.read()
        return have

    def status(self):
        groups = [g.status() for g in self.config.groups]
        return {'table': self.config.table, 'drained': self.drain, 'restore': 'done' if self.restore_ok else 'waiting',
                'groups': groups}

    def write_status(self, force=False):
        status = self.status()
        now = time.time()
        if not force and status == self.last_status and now - self.last_status_write < HEARTBEAT_SECONDS:
            return
        summary = '%d of %d groups announced%s' % (
            sum(1 for g in status['groups'] if g['state'] == ANNOUNCED), len(status['groups']),
            ', drained' if status['drained'] else '')
        if status != self.last_status:
            self.notifier.send('STATUS=' + summary)
        self.last_status, self.last_status_write = status, now
        atomic_write(self.config.status_file, json.dumps(dict(status, updated=round(now, 3), pid=os.getpid()),
                                                         indent=1, sort_keys=True) + '\n')

    def run(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        signal.signal(signal.SIGHUP, self._reload)
        have = self.table.read()
        self.adopt(have)
        ready = False
        last_read = self.clock()
        while self.running:
            started = self.clock()
            if started - last_read >= RESYNC_SECONDS:
                have, last_read = self.table.read(), started
            have = self.tick(have)
            self.write_status()
            if not ready:
                self.notifier.send('READY=1', 'MAINPID=%d' % os.getpid())
                ready = True
            self.notifier.send('WATCHDOG=1')
            time.sleep(max(0.0, self.config.interval - (self.clock() - started)))
        if self.reexec:
            self.notifier.send('RELOADING=1')
            log(syslog.LOG_NOTICE, 're-executing with the configuration on disk')
            os.execv(sys.executable, [sys.executable] + sys.argv)
        self.notifier.send('STOPPING=1')
        self.table.apply({}, self.table.read())
        for group in self.config.groups:
            group.state, group.state_reason, group.state_since = WITHDRAWN, 'stopped', time.time()
        self.write_status(force=True)
        log(syslog.LOG_NOTICE, 'stopped: every prefix withdrawn')

    def _stop(self, signum, frame):
        self.running = False

    def _reload(self, signum, frame):
        # Only re-execute into a configuration that loads; otherwise keep running the old one.
        path = sys.argv[sys.argv.index('--config') + 1] if '--config' in sys.argv else None
        try:
            if path:
                Config.load(path)
        except ConfigError as exc:
            log(syslog.LOG_ERR, 'reload refused, keeping the running configuration: %s' % exc)
            return
        self.reexec, self.running = True, False


# -- host-side commands -----------------------------------------------------------


def established_connections(prefixes, proc='/proc/net'):
    """Established TCP connections whose local address lies in PREFIXES (the proxy's, through TPROXY)."""
    count = 0
    for name, version in (('tcp', 4), ('tcp6', 6)):
        nets = [p for p in prefixes if p.version == version]
        if not nets:
            continue
        try:
            with open(os.path.join(proc, name)) as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != TCP_ESTABLISHED:
                continue
            address = _proc_address(fields[1].split(':')[0], version)
            if any(address in net for net in nets):
                count += 1
    return count


def _proc_address(hexa, version):
    """/proc/net/tcp addresses are 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hexa)
    words = b''.join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words) if version == 6 else ipaddress.IPv4Address(words)


def _in_table(config):
    have = Table(config.table).read()
    return sorted(str(p) for p in config.prefixes if p in have)


def read_status(config):
    try:
        with open(config.status_file) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def cmd_drain(config, args):
    """Drain: no prefix announced (after GRACEFUL_SHUTDOWN), then wait for connections to finish."""
    started = time.time()
    record = read_drain(config.drain_file)
    was_drained = record is not None
    if not was_drained:
        atomic_write(config.drain_file, json.dumps({'since': round(started, 3), 'reason': args.reason}) + '\n')
    deadline = started + config.graceful_shutdown + 5 * max(config.interval, 1.0)
    forced = False
    while _in_table(config):
        if time.time() > deadline:
            # The daemon did not do it (stopped or stuck): withdraw here; it will not re-announce while drained.
            Table(config.table).apply({}, Table(config.table).read())
            forced = True
            break
        time.sleep(0.1)
    withdrawn = time.time()
    connections = established_connections(config.prefixes)
    while connections > args.max_connections and time.time() - withdrawn < args.timeout:
        time.sleep(0.5)
        connections = established_connections(config.prefixes)
    result = {'drained': True, 'was_drained': was_drained, 'withdrawn_after': round(withdrawn - started, 2),
              'forced': forced, 'connections': connections, 'max_connections': args.max_connections,
              'waited': round(time.time() - withdrawn, 2), 'timed_out': connections > args.max_connections}
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_undrain(config, args):
    """Undrain: remove the drain file, wait until the REQUIREd groups (default: every healthy one) are announced."""
    started = time.time()
    was_drained = read_drain(config.drain_file) is not None
    try:
        os.unlink(config.drain_file)
    except FileNotFoundError:
        pass
    names = set(g.name for g in config.groups)
    unknown = sorted(set(args.require) - names)
    if unknown:
        print(json.dumps({'error': 'no such group: %s' % ', '.join(unknown)}))
        return 2
    while True:
        status = read_status(config)
        fresh = status is not None and status.get('updated', 0) > started and not status.get('drained')
        groups = status.get('groups', []) if fresh else []
        wanted = [g for g in groups if g['name'] in args.require or (not args.require and g['healthy'])]
        pending = [g for g in wanted if g['state'] != ANNOUNCED]
        if fresh and not pending:
            break
        if time.time() - started > args.timeout:
            break
        time.sleep(0.2)
    result = {'drained': False, 'was_drained': was_drained, 'seconds': round(time.time() - started, 2),
              'announced': sorted(g['name'] for g in groups if g['state'] == ANNOUNCED),
              'withheld': [{'group': g['name'], 'state': g['state'], 'reason': g['reason']}
                           for g in groups if g['state'] != ANNOUNCED],
              'fresh_status': fresh}
    print(json.dumps(result, sort_keys=True))
    required_missing = [name for name in args.require if name not in result['announced']]
    return 1 if (not fresh or required_missing) else 0


def cmd_status(config, args):
    status = read_status(config)
    print(json.dumps({'status': status, 'drained': read_drain(config.drain_file), 'in_table': _in_table(config)},
                     indent=1, sort_keys=True))
    return 0


def cmd_connections(config, args):
    print(established_connections(config.prefixes))
    return 0


def cmd_withdraw(config, args):
    table = Table(config.table)
    removed = table.apply({}, table.read())
    print(json.dumps({'removed': len(removed)}))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog='anycast-edge-health', description=__doc__.split('\n', maxsplit=1)[0])
    sub = parser.add_subparsers(dest='command', required=True)
    check = sub.add_parser('check-config')
    check.add_argument('file')
    for name in ('run', 'drain', 'undrain', 'status', 'connections', 'withdraw'):
        command = sub.add_parser(name)
        command.add_argument('--config', required=True)
        if name == 'drain':
            command.add_argument('--timeout', type=float, default=60.0,
                                 help='seconds to wait for connections after the withdrawal')
            command.add_argument('--max-connections', type=int, default=0,
                                 help='stop waiting once at most this many connections remain')
            command.add_argument('--reason', default='drained')
        if name == 'undrain':
            command.add_argument('--timeout', type=float, default=30.0)
            command.add_argument('--require', action='append', default=[],
                                 help='group that must be announced again (repeatable)')
    args = parser.parse_args(argv)
    path = args.file if args.command == 'check-config' else args.config
    try:
        config = Config.load(path)
    except ConfigError as exc:
        sys.stderr.write('%s: %s\n' % (path, exc))
        return 1
    if args.command == 'check-config':
        print('%s: %d groups, %d prefixes' % (path, len(config.groups), len(config.prefixes)))
        return 0
    if args.command == 'run':
        syslog.openlog('anycast-edge-health', syslog.LOG_PID, syslog.LOG_DAEMON)
        Daemon(config).run()
        return 0
    return {'drain': cmd_drain, 'undrain': cmd_undrain, 'status': cmd_status, 'connections': cmd_connections,
            'withdraw': cmd_withdraw}[args.command](config, args)


if __name__ == '__main__':
    sys.exit(main())
