"""Shared fixtures: throwaway network namespaces, always removed."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import helpers  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line('markers', 'vm: needs the QEMU VM with a GRE-capable kernel')
    helpers.ensure_collection_link()


class NamespaceFactory(object):
    """Creates namespaces named PREFIX + random suffix; deletes all of them at teardown."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.created = []

    def __call__(self, loopback_up=True, forwarding=True):
        name = helpers.unique_name(self.prefix)
        helpers.sh(['ip', 'netns', 'add', name])
        self.created.append(name)
        if loopback_up:
            helpers.nsexec(name, ['ip', 'link', 'set', 'lo', 'up'])
        # New namespaces may inherit ip_forward; say what we want.
        helpers.nsexec(name, ['sysctl', '-qw', 'net.ipv4.ip_forward=%d' % int(forwarding),
                              'net.ipv6.conf.all.forwarding=%d' % int(forwarding),
                              'net.ipv4.icmp_ratelimit=0'])
        return name

    def track(self, name):
        """Also delete a namespace the code under test created."""
        self.created.append(name)
        return name

    def cleanup(self):
        for name in reversed(self.created):
            # kill anything still running inside before deleting
            helpers.sh('ip netns pids %s 2>/dev/null | xargs -r kill -9' % name, check=False)
            helpers.sh(['ip', 'netns', 'del', name], check=False)


@pytest.fixture
def netns_factory(request):
    """Call with no arguments to get a fresh namespace; module tests set NS_PREFIX."""
    prefix = getattr(request.module, 'NS_PREFIX', 'aet')
    factory = NamespaceFactory(prefix)
    try:
        yield factory
    finally:
        factory.cleanup()


def link_pair(host_ns, peer_ns, host_if, peer_if, host_addrs, peer_addrs):
    """A veth pair between two namespaces, with addresses, both ends up."""
    helpers.nsexec(host_ns, ['ip', 'link', 'add', host_if, 'type', 'veth', 'peer', 'name', peer_if,
                             'netns', peer_ns])
    for ns, ifname, addrs, link_local in ((host_ns, host_if, host_addrs, 'fe80::1/64'),
                                          (peer_ns, peer_if, peer_addrs, 'fe80::2/64')):
        # IPv6 link-local addresses set by hand rather than autoconfigured: they
        # exist at once (no race with before/after dumps of kernel state), and
        # neighbour discovery for forwarded and replied packets needs them
        helpers.nsexec(ns, ['ip', 'link', 'set', ifname, 'addrgenmode', 'none'])
        addrs = list(addrs) + [link_local]
        for addr in addrs:
            helpers.nsexec(ns, ['ip', 'addr', 'add', addr, 'dev', ifname, 'nodad'])
        helpers.nsexec(ns, ['ip', 'link', 'set', ifname, 'up'])


@pytest.fixture
def veth():
    return link_pair
