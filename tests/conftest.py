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


@pytest.fixture
def netns_factory(request):
    """Call with no arguments to get a fresh namespace; module tests set NS_PREFIX."""
    prefix = getattr(request.module, 'NS_PREFIX', 'aet')
    factory = helpers.NamespaceFactory(prefix)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def veth():
    return helpers.link_pair
