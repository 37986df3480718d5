"""Test support for the transparent proxy: a client/edge/origin topology,
sockets opened inside namespaces, origin servers and the proxy process.

Sockets keep the network namespace they were created in, so the test process
opens client and origin sockets in their namespaces (from a short-lived
thread that entered the namespace) and uses them like any other socket.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))

import helpers  # noqa: E402

PROXY_PKG = os.path.join(REPO, 'roles', 'transparent_proxy', 'files', 'anycast_proxy')
SYSTEM_PYTHON = '/usr/bin/python3'
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

CLIENT_V4, EDGE_CLIENT_V4 = '10.0.1.1', '10.0.1.2'
EDGE_ORIGIN_V4, ORIGIN_V4 = '10.0.2.1', '10.0.2.2'
CLIENT_V6, EDGE_CLIENT_V6 = 'fd00:1::1', 'fd00:1::2'
EDGE_ORIGIN_V6, ORIGIN_V6 = 'fd00:2::1', 'fd00:2::2'
ANYIP_V4 = '192.0.2.0/24'
ANYIP_V4_UNROUTED = '198.51.100.0/24'   # AnyIP + TPROXY on the edge, but no proxy route
ANYIP_V6 = '2001:db8:100::/64'
LISTEN_PORT = 1234


# -- namespaces ---------------------------------------------------------------
def ask(sock, request):
    """Send REQUEST on the connected SOCK and return everything the peer sends until it closes."""
    sock.sendall(request)
    data = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def socket_in(ns, family=socket.AF_INET, type=socket.SOCK_STREAM):
    """A socket created inside network namespace NS."""
    result = {}

    def create():
        fd = os.open('/run/netns/%s' % ns, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                result['error'] = OSError(err, 'setns(%s): %s' % (ns, os.strerror(err)))
                return
            result['sock'] = socket.socket(family, type)
        finally:
            os.close(fd)

    thread = threading.Thread(target=create)
    thread.start()
    thread.join()
    if 'error' in result:
        raise result['error']
    return result['sock']


class Topology(object):
    """client <-veth-> edge <-veth-> origin; the client routes the AnyIP prefixes to the edge."""

    def __init__(self, client, edge, origin):
        self.client, self.edge, self.origin = client, edge, origin

    def connect(self, address, port, family=socket.AF_INET, timeout=5.0, source=None):
        sock = socket_in(self.client, family)
        sock.settimeout(timeout)
        if source is not None:
            sock.bind((source, 0))
        sock.connect((address, port))
        return sock


def build_topology(netns_factory, link_pair):
    client, edge, origin = netns_factory(), netns_factory(forwarding=False), netns_factory()
    link_pair(client, edge, 'cli0', 'edge0', [CLIENT_V4 + '/24', CLIENT_V6 + '/64'],
              [EDGE_CLIENT_V4 + '/24', EDGE_CLIENT_V6 + '/64'])
    link_pair(edge, origin, 'edge1', 'org0', [EDGE_ORIGIN_V4 + '/24', EDGE_ORIGIN_V6 + '/64'],
              [ORIGIN_V4 + '/24', ORIGIN_V6 + '/64'])
    for prefix in (ANYIP_V4, ANYIP_V4_UNROUTED):
        helpers.nsexec(client, ['ip', 'route', 'add', prefix, 'via', EDGE_CLIENT_V4])
    helpers.nsexec(client, ['ip', '-6', 'route', 'add', ANYIP_V6, 'via', EDGE_CLIENT_V6])
    return Topology(client, edge, origin)


def setup_edge(edge, prefixes=(ANYIP_V4, ANYIP_V4_UNROUTED, ANYIP_V6), port=LISTEN_PORT):
    """AnyIP routes and TPROXY rules (tcp and udp) for PREFIXES to the listener on PORT.

    Done with the collection's own modules, as a deployment would.
    """
    rules = []
    for prefix in prefixes:
        on_ip = '::1' if ':' in prefix else '127.0.0.1'
        for proto in ('tcp', 'udp'):
            rules.append({'destination': prefix, 'protocol': proto, 'on_ip': on_ip, 'on_port': port})
    results = helpers.run_playbook([
        {'anycast.edge.anyip_route': {'prefixes': list(prefixes), 'netns': edge}},
        {'anycast.edge.tproxy_rule': {'rules': rules, 'netns': edge}},
    ])
    for result in results:
        helpers.ok(result)
    return results


# -- PROXY protocol (parsed independently of the proxy's own code) ------------
V2_SIG = b'\r\n\r\n\x00\r\nQUIT\n'


def read_exact(sock, n):
    data = b''
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError('connection closed after %d of %d bytes' % (len(data), n))
        data += chunk
    return data


def parse_proxy_v2(data):
    """(header length, info dict) of a PROXY v2 header at the start of DATA."""
    assert data[:12] == V2_SIG, data[:16]
    ver_cmd, fam, length = data[12], data[13], struct.unpack('!H', data[14:16])[0]
    assert ver_cmd == 0x21, hex(ver_cmd)
    body = data[16:16 + length]
    af, proto = fam >> 4, fam & 0xf
    if af == 1:
        src, dst = socket.inet_ntop(socket.AF_INET, body[0:4]), socket.inet_ntop(socket.AF_INET, body[4:8])
        sport, dport = struct.unpack('!HH', body[8:12])
    elif af == 2:
        src, dst = socket.inet_ntop(socket.AF_INET6, body[0:16]), socket.inet_ntop(socket.AF_INET6, body[16:32])
        sport, dport = struct.unpack('!HH', body[32:36])
    else:
        raise AssertionError('unexpected address family %#x' % fam)
    return 16 + length, {'src': src, 'sport': sport, 'dst': dst, 'dport': dport,
                         'transport': {1: 'stream', 2: 'dgram'}[proto]}


def read_proxy_header(sock, version):
    if version == 'v2':
        head = read_exact(sock, 16)
        length = struct.unpack('!H', head[14:16])[0]
        return parse_proxy_v2(head + read_exact(sock, length))[1]
    line = b''
    while not line.endswith(b'\r\n'):
        line += read_exact(sock, 1)
        assert len(line) <= 107, line
    parts = line.decode().split()
    assert parts[0] == 'PROXY' and parts[1] in ('TCP4', 'TCP6'), line
    return {'src': parts[2], 'dst': parts[3], 'sport': int(parts[4]), 'dport': int(parts[5])}


# -- origins --------------------------------------------------------------------
class TcpOrigin(object):
    """A threaded TCP server in the origin namespace.

    Per connection: optionally reads a PROXY header, sends one JSON line
    describing what it saw, echoes everything, and after the client's FIN
    sends `bye <byte count>` and closes (proves half-close). A chunk
    `RST\\n` makes it reset the connection; `events` records how each
    connection ended.
    """

    def __init__(self, ns, address=ORIGIN_V4, port=8080, proxy_protocol=None, family=socket.AF_INET):
        self.proxy_protocol = proxy_protocol
        self.sock = socket_in(ns, family)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.seen = []
        self.events = []
        self.stall = False     # stop reading: the client's data backs up
        self.closing = False
        self.threads = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.closing:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn, peer), daemon=True)
            t.start()

    def _handle(self, conn, peer):
        with conn:
            try:
                info = {'peer': list(peer[:2]), 'local': list(conn.getsockname()[:2])}
                if self.proxy_protocol:
                    info['proxy'] = read_proxy_header(conn, self.proxy_protocol)
                self.seen.append(info)
                conn.sendall(json.dumps(info).encode() + b'\n')
                total = 0
                while True:
                    if self.stall:
                        time.sleep(0.05)
                        continue
                    data = conn.recv(65536)
                    if not data:
                        break
                    if data == b'RST\n':
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                        self.events.append('sent reset')
                        return
                    total += len(data)
                    conn.sendall(data)
                conn.sendall(b'bye %d\n' % total)
                self.events.append('closed')
            except ConnectionResetError:
                self.events.append('got reset')
            except (OSError, EOFError, AssertionError):
                self.events.append('error')

    def close(self):
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class RecordingOrigin(object):
    """Records everything each connection sends until it closes (health checks, for one)."""

    def __init__(self, ns, address=ORIGIN_V4, port=8090, family=socket.AF_INET):
        self.sock = socket_in(ns, family)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(64)
        self.received = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _unused1 = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b''
                try:
                    while True:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                self.received.append(data)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class UdpOrigin(object):
    """Answers each datagram with JSON: what it got, from whom, and the PROXY v2 header if any."""

    def __init__(self, ns, address=ORIGIN_V4, port=5353, proxy_protocol=None, family=socket.AF_INET):
        self.sock = socket_in(ns, family, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.proxy_protocol = proxy_protocol
        self.closing = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            if self.closing:
                return
            info = {'peer': list(peer[:2])}
            if self.proxy_protocol == 'v2':
                length, info['proxy'] = parse_proxy_v2(data)
                data = data[length:]
            info['payload'] = data.decode(errors='replace')
            try:
                self.sock.sendto(json.dumps(info).encode(), peer)
            except OSError:
                pass

    def close(self):
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recvfrom
        except OSError:
            pass
        self.thread.join(5)
        self.sock.close()


def recv_line(sock, limit=65536):
    data = b''
    while not data.endswith(b'\n'):
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError('connection closed before the end of the line: %r' % data)
        data += chunk
        assert len(data) < limit
    return data


def recv_until_eof(sock):
    data = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def talk(sock, payload=b'ping'):
    """Read the origin's greeting, send PAYLOAD, read the echo: (greeting dict, echo)."""
    greeting = json.loads(recv_line(sock))
    sock.sendall(payload)
    return greeting, read_exact(sock, len(payload))


# -- a client that keeps dialling, and connections held open ---------------------------
class DialLoad(object):
    """New connections at RATE per second (each in its own thread), each a full exchange with
    the origin (greeting, echo, close), until stop(). A dial that fails, or that gets no greeting
    within LIMIT seconds of its start, is a failure; `latencies` are times to the greeting."""

    def __init__(self, topo, addresses, rate=25.0, limit=1.0):
        self.topo, self.addresses, self.rate, self.limit = topo, addresses, rate, limit
        self.failures, self.latencies, self.threads = [], [], []
        self.stopping = threading.Event()
        self.pacer = threading.Thread(target=self._pace, daemon=True)

    def start(self):
        self.pacer.start()
        return self

    def _pace(self):
        n = 0
        started = time.monotonic()
        while not self.stopping.is_set():
            address, port = self.addresses[n % len(self.addresses)], 1000 + n % 60000
            t = threading.Thread(target=self._dial, args=(address, port), daemon=True)
            t.start()
            self.threads.append(t)
            n += 1
            time.sleep(max(0.0, started + n / self.rate - time.monotonic()))

    def _dial(self, address, port):
        started = time.monotonic()
        try:
            family = socket.AF_INET6 if ':' in address else socket.AF_INET
            with self.topo.connect(address, port, family=family, timeout=5) as sock:
                greeting = json.loads(recv_line(sock))
                waited = time.monotonic() - started
                sock.sendall(b'x')
                assert read_exact(sock, 1) == b'x'
            self.latencies.append(waited)
            if waited > self.limit:
                self.failures.append('%s:%d greeted after %.3fs' % (address, port, waited))
            assert greeting['local']
        except (OSError, EOFError, ValueError, AssertionError) as exc:
            self.failures.append('%s:%d %r after %.3fs' % (address, port, exc, time.monotonic() - started))

    def stop(self):
        self.stopping.set()
        self.pacer.join(10)
        for t in self.threads:
            t.join(10)
        return self

    @property
    def count(self):
        return len(self.threads)


class HeldConnections(object):
    """COUNT connections opened through the proxy and kept open; finish() has each exchange
    data once more and half-close, and says which of them were reset or cut."""

    def __init__(self, topo, count, address_of):
        self.socks = []
        for i in range(count):
            address = address_of(i)
            family = socket.AF_INET6 if ':' in address else socket.AF_INET
            sock = topo.connect(address, 2000 + i, family=family, timeout=10)
            talk(sock, b'held %d' % i)
            self.socks.append(sock)

    def finish(self):
        problems = []
        for i, sock in enumerate(self.socks):
            try:
                payload = b'again %d' % i
                sock.sendall(payload)
                assert read_exact(sock, len(payload)) == payload
                sock.shutdown(socket.SHUT_WR)
                rest = recv_until_eof(sock)
                assert rest.startswith(b'bye '), rest
            except (OSError, EOFError, AssertionError) as exc:
                problems.append('held %d: %r' % (i, exc))
            finally:
                sock.close()
        return problems


# -- the proxy process --------------------------------------------------------------
LISTEN_FDS = os.path.join(HERE, 'listen_fds.py')


class SocketOwner(object):
    """The tests' socket unit: transparent listeners made in the edge namespace and kept open
    here, passed to each proxy it starts as systemd passes them (LISTEN_FDS)."""

    def __init__(self, ns, endpoints=('127.0.0.1:%d' % LISTEN_PORT, '[::1]:%d' % LISTEN_PORT)):
        self.socks = []
        for text in endpoints:
            host, port = text.rsplit(':', 1)
            family = socket.AF_INET6 if host.startswith('[') else socket.AF_INET
            sock = socket_in(ns, family)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, 75, 1)  # IPV6_TRANSPARENT
            else:
                sock.setsockopt(socket.IPPROTO_IP, 19, 1)    # IP_TRANSPARENT
            sock.bind((host.strip('[]'), int(port)))
            sock.listen(4096)
            self.socks.append(sock)

    def command(self):
        """The prefix that hands the sockets to the command after it, and the descriptors to keep."""
        fds = [s.fileno() for s in self.socks]
        return [SYSTEM_PYTHON, LISTEN_FDS, ','.join(map(str, fds)), '--'], fds

    def close(self):
        for sock in self.socks:
            sock.close()


class ProxyProcess(object):
    def __init__(self, edge, config, workdir, user_cmd=(), env=None, sockets=None, args=None, program=PROXY_PKG):
        """PROGRAM: the proxy package to run (bench/proxy/pools.py runs an older one beside it)."""
        self.edge = edge
        self.workdir = workdir
        self.config_path = os.path.join(workdir, 'config.json')
        self.write_config(config)
        self.notify_path = os.path.join(workdir, 'notify.sock')
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        os.chmod(self.notify_path, 0o777)
        self.notify.settimeout(0.2)
        self.messages = []
        self.log_path = os.path.join(workdir, 'proxy.log')
        self.log = open(self.log_path, 'wb')
        run_env = dict(os.environ)
        run_env.pop('PYTHONPATH', None)
        run_env['NOTIFY_SOCKET'] = self.notify_path
        run_env.update(env or {})
        prefix, fds = sockets.command() if sockets is not None else ([], [])
        cmd = (['ip', 'netns', 'exec', edge] + list(user_cmd) + prefix
               + [SYSTEM_PYTHON, program] + (args or ['--config', self.config_path]))
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=run_env, pass_fds=fds)

    def write_config(self, config):
        tmp = self.config_path + '.tmp'
        with open(tmp, 'w') as fh:
            json.dump(config, fh, indent=2)
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.config_path)

    def wait_message(self, prefix, timeout=20.0):
        """Wait for a sd_notify datagram containing a line starting with PREFIX."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, msg in enumerate(self.messages):
                if any(line.startswith(prefix) for line in msg.splitlines()):
                    del self.messages[:i + 1]
                    return msg
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except socket.timeout:
                if self.proc.poll() is not None:
                    raise AssertionError('proxy exited with %s:\n%s' % (self.proc.returncode, self.logs()))
        raise AssertionError('no %r from the proxy within %ss:\n%s' % (prefix, timeout, self.logs()))

    def wait_ready(self, timeout=20.0):
        return self.wait_message('READY=1', timeout)

    def logs(self):
        self.log.flush()
        with open(self.log_path, 'rb') as fh:
            return fh.read().decode(errors='replace')

    def wait_log(self, text, count=1, timeout=10.0):
        """The log, once TEXT occurs COUNT times in it (lines are written just after the sockets close)."""
        return wait_for(lambda: self.logs().count(text) >= count and self.logs(), timeout=timeout,
                        what='%d x %r in the proxy log' % (count, text))

    def signal(self, sig):
        self.proc.send_signal(sig)

    def metrics(self, address='127.0.0.1', port=9100):
        sock = socket_in(self.edge)
        sock.settimeout(5)
        with sock:
            sock.connect((address, port))
            data = ask(sock, b'GET /metrics HTTP/1.0\r\n\r\n')
        head, _unused1, body = data.partition(b'\r\n\r\n')
        assert head.startswith(b'HTTP/1.0 200'), head
        return parse_metrics(body.decode())

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self.log.close()
        return self.proc.returncode


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value} from the Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        m = _SAMPLE.match(line)
        assert m, 'unparsable metrics line %r' % line
        labels = frozenset(_LABEL.findall(m.group(2) or ''))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(samples, family, **labels):
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == family and want <= set(ls)]
    assert found, 'no sample %s%s in %s' % (family, labels, sorted({n for n, _unused1 in samples}))
    return sum(found)


def wait_for(predicate, timeout=10.0, interval=0.05, what='condition'):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for %s' % what)
        time.sleep(interval)


def workdir():
    """A scratch directory the proxy can read after it dropped root (removed at exit)."""
    d = helpers.scratch_dir('aep-')
    os.chmod(d, 0o755)
    return d
