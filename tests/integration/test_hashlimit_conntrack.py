"""anycast.edge.conntrack_sizing in a test namespace, persisting to a temporary sysctl.d file.

The running values are global on this kernel (read-only outside the initial
namespace), and tests never touch the root namespace: what is shown here is
the computation, the persisted file, check mode, idempotence, and that the
module says plainly when it cannot set the running value.
"""

from __future__ import annotations

import json
import os

import pytest

import helpers
from helpers import nsexec, ok, run_module, run_playbook

NS_PREFIX = helpers.ns_prefix('aec')
pytestmark = pytest.mark.needs(root=True)   # network namespaces and netfilter (tests/prerequisites.py)
PROC = '/proc/sys/net/netfilter/'


def parse_sysctl_d(text):
    """{key: value} as sysctl.d(5) reads a file: '#' and ';' comments, blank lines, 'key = value' with
    optional blanks around '=', a leading '-' (ignore failures). A later duplicate wins; anything else
    is an error sysctl would report."""
    settings = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in '#;':
            continue
        key, sep, value = line.lstrip('-').partition('=')
        assert sep and key.strip() and value.strip(), 'line %d is not key = value: %r' % (number, raw)
        assert ' ' not in key.strip(), 'line %d: %r is not a sysctl key' % (number, key)
        settings[key.strip().replace('/', '.')] = value.strip()
    return settings


def running(ns, key):
    return int(nsexec(ns, ['cat', PROC + key]).stdout)


def test_sizing_is_persisted_idempotent_and_reports_the_namespace(netns_factory, tmp_path):
    ns = netns_factory()
    path = str(tmp_path / '90-conntrack.conf')
    current_max = running(ns, 'nf_conntrack_max')
    task = {'anycast.edge.conntrack_sizing': {'expected_connections': 100000, 'headroom': 1.5,
                                              'sysctl_file': path, 'netns': ns}}

    checked = ok(run_playbook([task], check=True, diff=True)[0])
    assert checked['changed'] and not os.path.exists(path)
    # 100000 x 1.5 / 4 = 37500 buckets, up to a multiple of 512 -> 37888; max = 4 x buckets
    assert checked['nf_conntrack_buckets'] == 37888 and checked['nf_conntrack_max'] == 151552
    assert 'net.netfilter.nf_conntrack_max = 151552' in checked['diff']['after']

    applied = ok(run_playbook([task], diff=True)[0])
    assert applied['changed']
    with open(path) as handle:
        text = handle.read()
    assert 'net.netfilter.nf_conntrack_buckets = 37888\nnet.netfilter.nf_conntrack_max = 151552\n' in text
    assert oct(os.stat(path).st_mode & 0o777) == '0o644'
    # parsed as sysctl.d(5) reads it: exactly these keys and values, each naming a real sysctl
    settings = parse_sysctl_d(text)
    assert settings == {'net.netfilter.nf_conntrack_buckets': '37888', 'net.netfilter.nf_conntrack_max': '151552'}
    for key in settings:
        assert os.path.exists('/proc/sys/' + key.replace('.', '/')), key
    # global on this kernel: read-only in a namespace, reported as such, running value untouched
    runtime = applied['runtime']
    for key in ('nf_conntrack_max', 'nf_conntrack_buckets'):
        assert runtime[key]['writable'] is False and runtime[key]['applied'] is False
    assert runtime['nf_conntrack_max']['before'] == runtime['nf_conntrack_max']['after'] == current_max
    assert running(ns, 'nf_conntrack_max') == current_max
    assert applied['conntrack']['max'] == current_max and applied['conntrack']['count'] == 0
    assert 'warnings' not in applied          # 151552 is below the running maximum: nothing to warn about

    again = ok(run_playbook([task])[0])
    assert again['changed'] is False

    # more than the running maximum: the file is written, and the module warns it cannot apply it here
    bigger = ok(run_module('conntrack_sizing', {'expected_connections': current_max, 'sysctl_file': path,
                                                'netns': ns}))
    assert bigger['changed'] and bigger['nf_conntrack_max'] >= 2 * current_max
    assert 'cannot change it' in json.dumps(bigger['warnings'])

    gone = ok(run_module('conntrack_sizing', {'state': 'absent', 'sysctl_file': path, 'netns': ns}))
    assert gone['changed'] and not os.path.exists(path)
    assert ok(run_module('conntrack_sizing', {'state': 'absent', 'sysctl_file': path, 'netns': ns}))['changed'] is False


def test_conntrack_count_is_per_namespace(netns_factory, tmp_path, veth):
    edge, client = netns_factory(), netns_factory()
    veth(edge, client, 'edge0', 'cli0', ['10.78.0.1/24'], ['10.78.0.2/24'])
    nsexec(edge, ['iptables', '-A', 'INPUT', '-m', 'conntrack', '--ctstate', 'NEW', '-j', 'ACCEPT'])
    # three UDP flows: conntrack keeps each for its UDP timeout (30 s)
    nsexec(client, ['python3', '-c', 'import socket\nfor p in (7001, 7002, 7003):\n'
                    '    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("10.78.0.1", p))'])
    result = ok(run_module('conntrack_sizing', {'expected_connections': 10, 'sysctl_file': str(tmp_path / 'c.conf'),
                                                'netns': edge}))
    assert result['conntrack']['count'] == 3
    other = ok(run_module('conntrack_sizing', {'expected_connections': 10, 'sysctl_file': str(tmp_path / 'd.conf'),
                                               'netns': netns_factory()}))
    assert other['conntrack']['count'] == 0


@pytest.mark.parametrize('args, words', [
    ({'expected_connections': 0}, 'expected_connections: must be at least 1'),
    ({'expected_connections': 10, 'headroom': 0.5}, 'headroom: must be at least 1'),
    ({'expected_connections': 2 ** 31}, 'expected_connections:'),
    ({}, 'expected_connections'),
])
def test_bad_input_fails_naming_the_parameter(netns_factory, tmp_path, args, words):
    ns = netns_factory()
    path = str(tmp_path / 'x.conf')
    result = run_module('conntrack_sizing', dict(args, sysctl_file=path, netns=ns))
    assert result.get('failed') and words in result['msg'], result
    assert not os.path.exists(path)
    assert helpers.netns_list().count(ns) == 1
