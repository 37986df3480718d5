"""plugins/module_utils/_proxy_origins.py reads what the proxy's metrics.render() writes."""
import os
import sys

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _proxy_origins

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                'roles', 'transparent_proxy', 'files'))

from anycast_proxy.metrics import render  # noqa: E402

SNAPSHOT = {
    'routes': {}, 'refused': {}, 'reloads': 0, 'reload_failures': 0,
    'origins': {
        'web': {'10.0.2.2:8080': {'up': 1, 'active': 3, 'total': 40, 'connect_failures': 0, 'check_failures': 0},
                '[fd00::2]:8080': {'up': 0, 'active': 0, 'total': 7, 'connect_failures': 3, 'check_failures': 12}},
        'we"ird': {'origin.example': {'up': 1, 'active': 0, 'total': 0, 'connect_failures': 0, 'check_failures': 0}},
    },
    'resolve': {'we"ird': {'origin.example': {'ok': 0, 'failures': 2}}},
}


def test_it_reads_what_the_proxy_writes():
    parsed = _proxy_origins.parse(render(SNAPSHOT))
    assert parsed['origins'] == [
        {'route': 'we"ird', 'origin': 'origin.example', 'up': True, 'active': 0, 'connections': 0,
         'connect_failures': 0, 'check_failures': 0},
        {'route': 'web', 'origin': '10.0.2.2:8080', 'up': True, 'active': 3, 'connections': 40,
         'connect_failures': 0, 'check_failures': 0},
        {'route': 'web', 'origin': '[fd00::2]:8080', 'up': False, 'active': 0, 'connections': 7,
         'connect_failures': 3, 'check_failures': 12},
    ]
    assert parsed['resolve'] == [{'route': 'we"ird', 'name': 'origin.example', 'ok': False, 'failures': 2}]


@pytest.mark.parametrize('text, words', [
    ('localhost:9464', "'localhost' is not an IP address"),
    ('127.0.0.1', 'is not ADDRESS:PORT'),
    ('127.0.0.1:0', 'is not ADDRESS:PORT'),
    ('::1:9464', 'go in brackets'),
    ('[127.0.0.1]:9464', 'go in brackets'),
])
def test_bad_endpoints_are_named(text, words):
    with pytest.raises(ValueError, match=words):
        _proxy_origins.parse_endpoint(text)


def test_good_endpoints():
    assert _proxy_origins.parse_endpoint('127.0.0.1:9464') == ('127.0.0.1', 9464)
    assert _proxy_origins.parse_endpoint('[::1]:9464') == ('::1', 9464)
