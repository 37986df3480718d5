"""The transparent proxy (roles/transparent_proxy/files/anycast_proxy), end to end.

Three namespaces: client -> edge -> origin. The edge gets AnyIP routes and
TPROXY rules from the collection's modules; the proxy runs in the edge; the
client dials addresses of the AnyIP prefixes and talks to origins through it.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'proxy'))

import support  # noqa: E402
from support import (ORIGIN_V4, ORIGIN_V6, CLIENT_V4, CLIENT_V6, EDGE_ORIGIN_V4, metric,  # noqa: E402
                     talk, wait_for)

NS_PREFIX = 'aep'
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='needs root to create network namespaces')


def random_v4():
    return '192.0.2.%d' % random.randint(1, 254)


def random_port():
    return random.randint(1, 65535)


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
def topo():
    """One client/edge/origin topology for the module (setting it up is the slow part)."""
    import conftest
    factory = conftest.NamespaceFactory(NS_PREFIX)
    try:
        topology = support.build_topology(factory, conftest.link_pair)
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


def test_random_ports_on_random_anyip_addresses(topo, start_proxy, origin):
    origin(port=8080)
    proxy = start_proxy(base_config())
    for _ in range(25):
        address, port = random_v4(), random_port()
        with topo.connect(address, port) as sock:
            greeting, echo = talk(sock, b'hello %s %d' % (address.encode(), port))
            assert echo == b'hello %s %d' % (address.encode(), port)
            # The origin sees the proxy's own address, not the client's.
            assert greeting['peer'][0] == EDGE_ORIGIN_V4
    assert "outcome=ok" in wait_for(lambda: proxy.logs().count('outcome=ok') == 25 and proxy.logs(),
                                    what='25 close log lines')
    line = [l for l in proxy.logs().splitlines() if 'tcp closed' in l][0]
    for field in ('client=%s:' % CLIENT_V4, 'dst=192.0.2.', 'route=web', 'origin=%s:8080' % ORIGIN_V4):
        assert field in line
