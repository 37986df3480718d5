"""Restarts that lose nothing, through namespaces: listeners owned outside the proxy, connections
handed to the drain service.

What systemd does for the service (tests/proxy/support.SocketOwner plays the
socket unit: transparent listeners passed with LISTEN_FDS; the drain service
runs with --drain) is played here by the test, so the proxy's side of it can
be tested on any machine; molecule (molecule/default/verify.yml) repeats the
restart under real systemd. While a client dials 25 new connections a second
and 100 connections are held open:

- a restart (SIGTERM, then a new process on the same listeners), also with a
  change of workers: no dial fails or waits more than 1 s, no held connection
  is reset: each exchanges data again afterwards and half-closes cleanly;
- a crash (SIGKILL): no dial fails; the crashed process's own connections are
  lost, and that is what they see.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'proxy'))

import helpers  # noqa: E402
import support  # noqa: E402
from fixtures import base_config, origin, topo  # noqa: E402,F401  pylint: disable=unused-import
from support import ORIGIN_V4, ORIGIN_V6  # noqa: E402

NS_PREFIX = helpers.ns_prefix('aeq')
pytestmark = pytest.mark.needs(root=True)   # network namespaces (tests/prerequisites.py)

HELD = 100
RATE = 25.0


@pytest.fixture
def service(topo):
    """A socket owner, a drain service and the proxies started on its sockets; all stopped after."""
    workdir = support.workdir()
    owner = support.SocketOwner(topo.edge)
    procs = []

    class Service(object):
        drain_socket = os.path.join(workdir, 'drain.sock')

        def config(self, **extra):
            config = base_config(drain_socket=self.drain_socket, drain_timeout=30, routes=[
                {'name': 'web', 'destination': '192.0.2.0/24', 'origin': '%s:8080' % ORIGIN_V4},
                {'name': 'web6', 'destination': '2001:db8:100::/64', 'origin': '[%s]:8080' % ORIGIN_V6},
            ])
            config.update(extra)
            return config

        def start(self, config, wait=True):
            d = support.workdir()
            proc = support.ProxyProcess(topo.edge, config, d, sockets=owner,
                                        env={'ANYCAST_PROXY_LOOP': 'dataplane'})
            procs.append(proc)
            if wait:
                proc.wait_ready()
            return proc

        def start_drain(self):
            d = support.workdir()
            proc = support.ProxyProcess(topo.edge, {}, d, args=['--drain', '--drain-listen', self.drain_socket])
            procs.append(proc)
            proc.wait_ready()
            return proc

    try:
        yield Service()
    finally:
        for proc in procs:
            proc.stop(timeout=40)
        owner.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def servers(origin):
    origin(port=8080)
    origin(address=ORIGIN_V6, port=8080, family=support.socket.AF_INET6)


def address_of(i):
    return '192.0.2.%d' % (1 + i % 250) if i % 4 else '2001:db8:100::%x' % (1 + i)


def dial_targets():
    return ['192.0.2.%d' % random.randint(1, 254) for _unused1 in range(7)] + ['2001:db8:100::77']


@pytest.mark.parametrize('workers_after', [1, 2])
def test_a_restart_refuses_delays_and_resets_nothing(topo, service, servers, workers_after):
    service.start_drain()
    old = service.start(service.config())
    held = support.HeldConnections(topo, HELD, address_of)
    load = support.DialLoad(topo, dial_targets(), rate=RATE).start()
    time.sleep(1.5)
    old.signal(signal.SIGTERM)
    assert old.proc.wait(10) == 0
    stopped = time.monotonic()
    new = service.start(service.config(workers=workers_after))
    ready_after = time.monotonic() - stopped
    time.sleep(1.5)
    load.stop()
    problems = held.finish()
    assert load.count >= 60 and load.failures == [], load.failures
    assert problems == [], problems
    assert 'handed %d of %d connections to the drain service' % (HELD, HELD) in old.logs(), old.logs()
    print("restart: %d dials, max greeting %.3fs, ready after %.3fs" % (load.count, max(load.latencies), ready_after))
    assert max(load.latencies) < 1.0, (max(load.latencies), ready_after)
    assert 'Traceback' not in new.logs()


def test_held_connections_are_reset_at_the_drain_deadline_and_say_so(topo, service, servers):
    drain = service.start_drain()
    old = service.start(service.config(drain_timeout=1, log_connections=True))
    held = support.HeldConnections(topo, 3, address_of)
    old.signal(signal.SIGTERM)
    assert old.proc.wait(10) == 0
    drain.wait_log('outcome=drain_deadline', count=3, timeout=10)
    problems = held.finish()
    assert len(problems) == 3 and all('ConnectionResetError' in p or 'EOFError' in p or 'BrokenPipe' in p
                                      for p in problems), problems


def test_without_a_drain_service_the_process_drains_itself(topo, service, servers):
    old = service.start(service.config())
    held = support.HeldConnections(topo, 5, address_of)
    old.signal(signal.SIGTERM)
    old.wait_message('STOPPING=1')
    time.sleep(0.3)
    assert old.proc.poll() is None          # still draining its own connections
    assert held.finish() == []
    assert old.proc.wait(10) == 0
    assert 'cannot hand connections to the drain service' in old.logs()


def test_connections_a_drain_service_does_not_acknowledge_drain_here(topo, service, servers):
    # A stand-in that accepts the hand-over, reads a little and hangs up without an answer.
    listener = support.socket.socket(support.socket.AF_UNIX)
    listener.bind(service.drain_socket)
    listener.listen(1)

    def hang_up():
        conn, _unused1 = listener.accept()
        conn.recv(64)
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        old = service.start(service.config())
        held = support.HeldConnections(topo, 5, address_of)
        old.signal(signal.SIGTERM)
        old.wait_message('STOPPING=1')
        old.wait_log('stopped after 0')
        assert old.proc.poll() is None          # draining them itself
        assert held.finish() == []
        assert old.proc.wait(10) == 0
    finally:
        listener.close()


def test_a_crash_refuses_no_new_connection(topo, service, servers):
    service.start_drain()
    old = service.start(service.config())
    held = support.HeldConnections(topo, 10, address_of)
    load = support.DialLoad(topo, dial_targets(), rate=RATE).start()
    time.sleep(1)
    old.proc.kill()
    old.proc.wait(10)
    service.start(service.config())
    time.sleep(1.5)
    load.stop()
    assert load.failures == [], load.failures
    # The crashed process's own connections are gone with it: the kernel closed them.
    assert len(held.finish()) == 10


@pytest.mark.parametrize('splice', [False, True])
def test_a_connection_in_the_middle_of_a_bulk_transfer_survives_a_restart(topo, service, servers, splice):
    service.start_drain()
    old = service.start(service.config(splice=splice))
    sock = topo.connect('192.0.2.9', 443, timeout=20)
    support.talk(sock)
    block, blocks = os.urandom(1 << 20), 48
    sender = threading.Thread(target=lambda: [sock.sendall(block) for _unused1 in range(blocks)], daemon=True)
    sender.start()
    digest, received, restarted = hashlib.sha256(), 0, False
    while received < blocks * len(block):
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        digest.update(chunk)
        received += len(chunk)
        if not restarted and received > blocks * len(block) // 4:
            # Mid-stream: bytes in flight in the proxy (read, not yet written) travel with it.
            old.signal(signal.SIGTERM)
            restarted = True
    sender.join(20)
    assert restarted and received == blocks * len(block)
    assert digest.hexdigest() == hashlib.sha256(block * blocks).hexdigest()
    sock.shutdown(support.socket.SHUT_WR)
    # The origin counts what it got: the greeting's ping and the blocks.
    assert support.recv_until_eof(sock) == b'bye %d\n' % (len(b'ping') + blocks * len(block))
    sock.close()
    assert 'handed 1 of 1 connections' in old.logs()
