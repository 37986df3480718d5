"""Fixtures and helpers of the proxy's integration tests (tests/integration/test_proxy*.py).

A test module imports the fixtures it uses (`from fixtures import topo, ...`);
each module gets its own client/edge/origin topology (module scope).
"""
from __future__ import annotations

import random
import shutil

import pytest

import helpers
import support
from support import ORIGIN_V4


def unprivileged(*caps):
    """Run as nobody with only CAPS (ambient, so they survive exec)."""
    keep = ','.join('+' + cap for cap in caps)
    return ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all,' + keep,
            '--ambient-caps=-all,' + keep, '--bounding-set=-all,' + keep]


# The service's capability when no UDP route covers a port below 1024.
UNPRIVILEGED = unprivileged('net_admin')


def random_v4():
    return '192.0.2.%d' % random.randint(1, 254)


def random_port():
    return random.randint(1, 65535)


def assert_reset(topo, address, port, timeout=5):
    """The connection is reset: during the handshake or at the first read."""
    sock = support.socket_in(topo.client)
    sock.settimeout(timeout)
    with sock, pytest.raises(ConnectionResetError):
        sock.connect((address, port))
        sock.recv(10)


def base_config(**extra):
    config = {
        'listen': ['127.0.0.1:1234', '[::1]:1234'],
        'metrics': '127.0.0.1:9100',
        'drain_timeout': 2,
        'routes': [
            {'name': 'web', 'destination': '192.0.2.0/24', 'origin': '%s:8080' % ORIGIN_V4},
        ],
    }
    config.update(extra)
    return config


@pytest.fixture(scope='module')
def topo(request):
    """One client/edge/origin topology for the module (setting it up is the slow part)."""
    factory = helpers.NamespaceFactory(request.module.NS_PREFIX)
    try:
        topology = support.build_topology(factory, helpers.link_pair)
        support.setup_edge(topology.edge)
        yield topology
    finally:
        factory.cleanup()


@pytest.fixture
def start_proxy(topo):
    procs = []
    dirs = []

    def start(config, user_cmd=(), env=None, wait=True):
        d = support.workdir()
        dirs.append(d)
        # The same loop on every machine, whether uvloop is installed or not; tests that
        # care about the loop say which one.
        env = dict({'ANYCAST_PROXY_LOOP': 'dataplane'}, **(env or {}))
        proc = support.ProxyProcess(topo.edge, config, d, user_cmd=user_cmd, env=env)
        procs.append(proc)
        if wait:
            proc.wait_ready()
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def origin(topo):
    servers = []

    def make(cls=support.TcpOrigin, **kw):
        server = cls(topo.origin, **kw)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for s in servers:
            s.close()
