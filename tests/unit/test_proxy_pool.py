"""The proxy's origin pools: balancing, consistent hashing, health state machine, tiers, reload.

Pure logic of roles/transparent_proxy/files/anycast_proxy (balance.py, pool.py,
config.py): no sockets. The traffic through pools is tested in
tests/integration/test_proxy_pools.py.
"""
import collections
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'roles', 'transparent_proxy', 'files'))

from anycast_proxy import balance  # noqa: E402
from anycast_proxy.config import parse_config  # noqa: E402
from anycast_proxy.pool import build_pools  # noqa: E402


def route(origins, **extra):
    """One parsed route of a config with these origins (strings or objects)."""
    raw = dict({'name': 'r', 'destination': '192.0.2.0/24', 'origins': origins}, **extra)
    return parse_config({'routes': [raw]}).routes[0]


def pool_of(origins, **extra):
    r = route(origins, **extra)
    return build_pools([r])['r']


def picks(pool, n, key='10.0.0.1'):
    return [pool.pick(key).label for _unused1 in range(n)]


# -- round-robin ----------------------------------------------------------------------

def test_round_robin_cycles_through_equal_origins():
    pool = pool_of(['10.0.2.1:80', '10.0.2.2:80', '10.0.2.3:80'])
    got = picks(pool, 9)
    assert collections.Counter(got) == {'10.0.2.1:80': 3, '10.0.2.2:80': 3, '10.0.2.3:80': 3}
    assert all(got[i] != got[i + 1] for i in range(len(got) - 1))


def test_weights_share_the_connections_and_interleave_smoothly():
    pool = pool_of([{'address': '10.0.2.1:80', 'weight': 5}, {'address': '10.0.2.2:80', 'weight': 1},
                    {'address': '10.0.2.3:80', 'weight': 1}])
    got = picks(pool, 70)
    assert collections.Counter(got) == {'10.0.2.1:80': 50, '10.0.2.2:80': 10, '10.0.2.3:80': 10}
    # Smooth: a a b a c a a, then again; never five of the heavy one in a row.
    assert max(len(run) for run in ''.join('a' if g == '10.0.2.1:80' else '.' for g in got).split('.')) <= 4


def test_smooth_schedule_of_weights():
    a, b, c = (type('O', (), {'weight': w})() for w in (5, 1, 1))
    assert balance.smooth_schedule([a, b, c]) == [a, a, b, a, c, a, a]


# -- least-connections -------------------------------------------------------------------

def test_least_connections_takes_the_least_loaded_per_weight():
    pool = pool_of([{'address': '10.0.2.1:80', 'weight': 2}, '10.0.2.2:80', '10.0.2.3:80'], balance='least-connections')
    one, two, three = pool.origins
    one.active, two.active, three.active = 4, 1, 3
    assert pool.pick('x') is two
    two.active = 3                     # one: 4/2 = 2 per weight, the others 3
    assert pool.pick('x') is one


def test_least_connections_spreads_an_idle_pool():
    pool = pool_of(['10.0.2.1:80', '10.0.2.2:80', '10.0.2.3:80'], balance='least-connections')
    assert len(set(picks(pool, 3))) == 3


# -- source-hash (consistent hashing) ---------------------------------------------------------

CLIENTS = ['10.%d.%d.%d' % (i // 65536, i // 256 % 256, i % 256) for i in range(1, 4001)]


def assignment(pool):
    return {client: pool.pick(client).label for client in CLIENTS}


def test_source_hash_keeps_a_client_on_one_origin_and_spreads_clients():
    pool = pool_of(['10.0.2.%d:80' % i for i in range(1, 5)], balance='source-hash')
    first = assignment(pool)
    assert assignment(pool) == first   # stable
    shares = collections.Counter(first.values())
    assert len(shares) == 4 and min(shares.values()) > 0.15 * len(CLIENTS), shares


def test_source_hash_moves_only_the_share_of_an_origin_that_goes_down_and_back():
    pool = pool_of(['10.0.2.%d:80' % i for i in range(1, 5)], balance='source-hash')
    before = assignment(pool)
    down = pool.origins[1]
    for _unused1 in range(3):
        pool.observe(down, False)   # fall 3
    assert not down.up
    during = assignment(pool)
    moved = [c for c in CLIENTS if before[c] != during[c]]
    assert moved and all(before[c] == down.label for c in moved)
    assert all(during[c] != down.label for c in CLIENTS)
    # Its clients spread over the three others, not all onto one neighbour.
    assert len(collections.Counter(during[c] for c in moved)) == 3
    for _unused1 in range(2):
        pool.observe(down, True)    # rise 2
    assert down.up and assignment(pool) == before


def test_source_hash_is_the_same_in_every_process():
    # blake2b, not Python's randomised hash() of str: workers and restarted processes agree.
    code = ('import sys; sys.path.insert(0, %r); from anycast_proxy.config import parse_config; '
            'from anycast_proxy.pool import build_pools; '
            'r = parse_config({"routes": [{"name": "r", "destination": "192.0.2.0/24", "balance": "source-hash", '
            '"origins": ["10.0.2.%%d:80" %% i for i in range(1, 5)]}]}).routes[0]; p = build_pools([r])["r"]; '
            'print(" ".join(p.pick("10.1.%%d.%%d" %% (i // 256, i %% 256)).label for i in range(200)))'
            % os.path.join(ROOT, 'roles', 'transparent_proxy', 'files'))
    runs = {subprocess.run([sys.executable, '-c', code], env=dict(os.environ, PYTHONHASHSEED=seed),
                           capture_output=True, text=True, check=True).stdout for seed in ('1', '2', '3')}
    assert len(runs) == 1 and len(set(runs.pop().split())) == 4


def test_source_hash_respects_weights():
    pool = pool_of([{'address': '10.0.2.1:80', 'weight': 3}, '10.0.2.2:80'], balance='source-hash')
    shares = collections.Counter(assignment(pool).values())
    assert 2.0 < shares['10.0.2.1:80'] / shares['10.0.2.2:80'] < 4.5, shares


# -- health state machine --------------------------------------------------------------------

def test_an_origin_goes_down_after_fall_failures_in_a_row_and_up_after_rise_successes():
    pool = pool_of(['10.0.2.1:80', '10.0.2.2:80'], health_check={'rise': 2, 'fall': 3})
    origin = pool.origins[0]
    assert origin.up                                # starts up
    assert [origin.observe(False, 2, 3) for _unused1 in range(2)] == [False, False]
    assert origin.observe(True, 2, 3) is False      # a success resets the count of failures
    assert [origin.observe(False, 2, 3) for _unused1 in range(3)] == [False, False, True]
    assert not origin.up
    assert origin.observe(True, 2, 3) is False
    assert origin.observe(False, 2, 3) is False     # a failure resets the count of successes
    assert [origin.observe(True, 2, 3) for _unused1 in range(2)] == [False, True]
    assert origin.up


def test_the_pool_hears_of_every_change_once():
    changes = []
    r = route(['10.0.2.1:80', '10.0.2.2:80'], health_check={'fall': 1, 'rise': 1})
    pool = build_pools([r], on_change=lambda p, o: changes.append((o.label, o.up)))['r']
    pool.observe(pool.origins[0], False)
    pool.observe(pool.origins[0], False)
    pool.observe(pool.origins[0], True)
    assert changes == [('10.0.2.1:80', False), ('10.0.2.1:80', True)]
    assert [o.label for o in pool.live_primaries] == ['10.0.2.1:80', '10.0.2.2:80']


# -- tiers and failover order ---------------------------------------------------------------

def take_down(pool, origin):
    while origin.up:
        pool.observe(origin, False)


def test_backups_take_traffic_only_when_every_primary_is_down():
    pool = pool_of(['10.0.2.1:80', '10.0.2.2:80', {'address': '10.0.2.9:80', 'backup': True}])
    a, b, backup = pool.origins
    assert set(picks(pool, 10)) == {a.label, b.label}
    take_down(pool, a)
    assert set(picks(pool, 10)) == {b.label}
    take_down(pool, b)
    assert set(picks(pool, 10)) == {backup.label}


def test_when_nothing_is_up_every_origin_is_still_tried_primaries_first():
    pool = pool_of(['10.0.2.1:80', '10.0.2.2:80', {'address': '10.0.2.9:80', 'backup': True}])
    for origin in pool.origins:
        take_down(pool, origin)
    order, tried = [], []
    origin = pool.pick('c')
    while origin is not None:
        order.append(origin.label)
        tried.append(origin)
        origin = pool.next_after('c', tried)
    assert order == ['10.0.2.1:80', '10.0.2.2:80', '10.0.2.9:80']


def test_failover_goes_through_live_primaries_then_backups_then_the_rest():
    pool = pool_of(['10.0.2.1:80', '10.0.2.2:80', '10.0.2.3:80', {'address': '10.0.2.9:80', 'backup': True}])
    take_down(pool, pool.origins[2])
    first = pool.pick('c')
    tried = [first]
    order = [first.label]
    while True:
        following = pool.next_after('c', tried)
        if following is None:
            break
        order.append(following.label)
        tried.append(following)
    assert sorted(order[:2]) == ['10.0.2.1:80', '10.0.2.2:80']
    assert order[2:] == ['10.0.2.9:80', '10.0.2.3:80']
    assert pool.untried_live([first]) == 2    # the other primary and the backup


@pytest.mark.parametrize('method', sorted(balance.METHODS))
def test_every_method_fails_over_to_each_live_origin_once(method):
    pool = pool_of(['10.0.2.%d:80' % i for i in range(1, 6)], balance=method)
    tried = [pool.pick('10.0.0.7')]
    while True:
        following = pool.next_after('10.0.0.7', tried)
        if following is None:
            break
        assert following not in tried
        tried.append(following)
    assert len(tried) == 5


# -- reload and DNS ---------------------------------------------------------------------------

def test_a_reload_keeps_the_pool_and_the_state_of_origins_that_stay():
    old = route(['10.0.2.1:80', '10.0.2.2:80'])
    pools = build_pools([old])
    pool = pools['r']
    a, b = pool.origins
    take_down(pool, b)
    a.active = 7
    new = route(['10.0.2.2:80', '10.0.2.3:80', {'address': '10.0.2.1:80', 'weight': 3}])
    pools2 = build_pools([new], pools)
    assert pools2['r'] is pool and new.pool is pool
    labels = {o.label: o for o in pool.origins}
    assert labels['10.0.2.1:80'] is a and a.active == 7 and a.weight == 3
    assert labels['10.0.2.2:80'] is b and not b.up
    assert labels['10.0.2.3:80'].up


def test_a_name_keeps_its_last_good_addresses_across_a_reload():
    pools = build_pools([route(['origin.example:80'])], resolved={'origin.example': [
        (socket.AF_INET, '10.0.2.1'), (socket.AF_INET6, 'fd00::1')]})
    assert [o.label for o in pools['r'].origins] == ['10.0.2.1:80', '[fd00::1]:80']
    # The resolver found nothing this time (an error text): the pool keeps what it had.
    pools = build_pools([route(['origin.example:80', '10.0.2.9:80'])], pools,
                        resolved={'origin.example': 'no answer'})
    assert [o.label for o in pools['r'].origins] == ['10.0.2.1:80', '[fd00::1]:80', '10.0.2.9:80']


def test_a_name_that_never_resolved_leaves_its_route_without_origins():
    pools = build_pools([route(['origin.example:80'])], resolved={'origin.example': 'Name or service not known'})
    assert pools['r'].pick('c') is None


# -- configuration: defaults, inheritance, when checks run ------------------------------------

def test_health_checks_run_for_pools_and_names_but_not_for_one_address():
    config = parse_config({'routes': [
        {'destination': '192.0.2.0/26', 'origin': '10.0.2.1:80'},
        {'destination': '192.0.2.64/26', 'origins': ['10.0.2.1:80', '10.0.2.2:80']},
        {'destination': '192.0.2.128/26', 'origin': 'origin.example:80'},
        {'destination': '192.0.2.192/26', 'origins': ['10.0.2.1:80', '10.0.2.2:80'], 'health_check': False},
        {'destination': '192.0.2.0/26', 'protocol': 'udp', 'origins': ['10.0.2.1:53', '10.0.2.2:53']},
    ]})
    assert [r.health_check.active for r in config.routes] == [False, True, True, False, False]
    assert config.routes[1].health_check.interval == 2.0 and config.routes[1].health_check.fall == 3


def test_defaults_hold_balance_health_check_and_resolve_interval():
    config = parse_config({
        'defaults': {'balance': 'source-hash', 'health_check': {'interval': 5, 'rise': 4}, 'resolve_interval': 60},
        'routes': [
            {'destination': '192.0.2.0/25', 'origin': '10.0.2.1:80'},
            {'destination': '192.0.2.128/25', 'origin': '10.0.2.1:80', 'balance': 'round-robin',
             'health_check': {'fall': 1}},
        ]})
    first, second = config.routes
    assert (first.balance, first.resolve_interval) == ('source-hash', 60.0)
    assert first.health_check.active and (first.health_check.interval, first.health_check.rise) == (5.0, 4)
    # A route's own health_check is merged over the defaults' one.
    assert second.balance == 'round-robin'
    assert (second.health_check.interval, second.health_check.rise, second.health_check.fall) == (5.0, 4, 1)


def test_origin_objects_and_shorthands():
    r = route(['10.0.2.1', '[fd00::2]:8443', {'address': 'origin.example:80', 'weight': 3, 'backup': True}],
              health_check={'port': 8080})
    assert [(o.host, o.port, o.weight, o.backup, o.is_name) for o in r.origins] == [
        ('10.0.2.1', None, 1, False, False), ('fd00::2', 8443, 1, False, False),
        ('origin.example', 80, 3, True, True)]
    assert r.health_check.port == 8080
