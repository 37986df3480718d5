"""The edge_status_table filter (playbooks/status.yml's table): the default columns, columns added,
replaced and removed through edge_status_columns (JMESPath over edge_info's result), and the refusals
that name the variable. The playbook itself with a column from the inventory: test_playbooks.py."""

from __future__ import annotations

import json
import os
import sys

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.anycast.edge.plugins.filter.edge_status import edge_status_table

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_playbooks import run  # noqa: E402

INFO = {
    'anyip': {'ipv4': ['192.0.2.0/24'], 'ipv6': []},
    'xtables': [{'chain': 'RATE-LIMIT', 'rules': [{'rule': '-m hashlimit --hashlimit-upto 5/sec -j ACCEPT',
                                                   'packets': 10},
                                                  {'rule': '-j DROP', 'packets': 3}]}],
    'conntrack': {'count': 0, 'max': 1024},
    'tenants': [{'name': 'acme', 'netns': 'tenant-acme', 'counters': {'accepted': 7, 'dropped': 2}}],
    'proxy_origins': {'available': True, 'origins': [{'route': 'web', 'origin': '10.0.2.2:8080', 'up': True},
                                                     {'route': 'web', 'origin': '10.0.2.3:8080', 'up': False}]},
    'drift': {}, 'records': [], 'warnings': [],
}


def host(name='edge-a', info=None, **extra):
    return dict({'inventory_hostname': name, 'edge_status_info': INFO if info is None else info,
                 'edge_status_shell': {'stdout_lines': ['proxy=active', 'connections=5']}}, **extra)


def table(hosts, columns=None):
    lines = edge_status_table(hosts, columns)
    return lines, [line.split() for line in lines]


def cells(lines, title):
    """{host: cell} of the column TITLE (a one-word title), by its position in the header."""
    header = lines[0]
    start = header.index(title)
    return dict((line.split()[0], line[start:].split()[0] if len(line) > start and line[start] != ' ' else '')
                for line in lines[2:] if line and not line.split()[0].endswith(':'))


def test_default_columns():
    lines, split = table([host()])
    assert split[0][:4] == ['HOST', 'PROXY', 'CONNS', 'ORIGINS'] and split[0][-1] == 'DRIFT'
    assert split[2] == ['edge-a', 'active', '5', '1/2', '1+0', '0', '10/3', '-', '0/1024', 'acme', '-', '-', '-',
                        'none']


def test_a_column_added_replaced_and_removed():
    columns = [{'title': 'DOWN', 'unit': 'origins', 'query': 'proxy_origins.origins[?!up].origin'},
               {'title': 'DROPPED', 'query': 'sum(tenants[].counters.dropped)'},
               {'title': 'TENANTS', 'unit': 'name:ns', 'query': "tenants[].join(':', [name, netns])"},
               {'title': 'GRE', 'remove': True}]
    lines, split = table([host()], columns)
    assert 'GRE' not in split[0] and split[0][-3:] == ['DRIFT', 'DOWN', 'DROPPED']
    assert split[1][-1] == 'origins'      # DROPPED has no unit
    assert split[2][-2:] == ['10.0.2.3:8080', '2']
    assert cells(lines, 'TENANTS') == {'edge-a': 'acme:tenant-acme'}


def test_a_column_that_does_not_fit_a_host_is_a_question_mark_and_a_note():
    lines, split = table([host(), host('edge-b', dict(INFO, tenants='none'))],
                         [{'title': 'N', 'query': 'length(tenants[0].counters)'}])
    assert split[2][-1] == '2' and split[3][-1] == '?'
    assert lines[-1].startswith('edge-b: column N: ')


def test_a_failed_host_shows_error_and_the_reason_below():
    lines, split = table([host('edge-b', {'failed': True, 'msg': 'No module named pyroute2'})])
    assert split[2][:5] == ['edge-b', 'active', '5', '-', 'error'] and split[2][-2:] == ['see', 'below']
    assert lines[-1] == 'edge-b: edge_info failed: No module named pyroute2'


@pytest.mark.parametrize('columns,message', [
    ([{'title': 'BAD', 'query': 'tenants[?'}], r"edge_status_columns\[0\]\.query: 'tenants\[\?' is not a JMESPath"),
    ([{'title': 'X', 'query': 'a'}, {'title': 'Y', 'query': 'length(@'}], r'edge_status_columns\[1\]\.query: '),
    ([{'title': 'X'}], r'edge_status_columns\[0\]\.query: expected a JMESPath expression'),
    ([{'title': 'X', 'query': 'builtin:drift'}], r'edge_status_columns\[0\]\.query: expected a JMESPath'),
    ([{'query': 'a'}], r'edge_status_columns\[0\]\.title: expected the column heading'),
    ([{'title': 'X', 'query': 'a', 'width': 3}], r'edge_status_columns\[0\]: unknown key\(s\) width'),
    ([{'title': 'NOPE', 'remove': True}], r"edge_status_columns\[0\]\.title: no column 'NOPE' to remove"),
    ({'title': 'X'}, r'edge_status_columns: expected a list'),
    (['tenants'], r'edge_status_columns\[0\]: expected \{title, query, unit\}'),
])
def test_bad_columns_are_refused_naming_the_variable(columns, message):
    with pytest.raises(AnsibleFilterError, match=message):
        edge_status_table([host()], columns)


def test_status_yml_takes_a_column_from_the_inventory(tmp_path):
    """An operator's column in group_vars, no change to the playbook: a tenant's counters."""
    inventory = tmp_path / 'hosts.json'
    inventory.write_text(json.dumps({'edge': {
        'hosts': {'edge-a': host()},
        'vars': {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                 'edge_status_columns': [{'title': 'ACME', 'unit': 'dropped',
                                          'query': "tenants[?name=='acme'].counters.dropped | [0]"}]}}}))
    output = run('ansible-playbook', '-i', str(inventory), 'playbooks/status.yml',
                 '--start-at-task', 'Print one line per edge host')
    lines = output.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith('ok: [') and line.endswith('=> {'))
    table_lines = json.loads('{' + '\n'.join(lines[start + 1:lines.index('}', start) + 1]))['msg']
    assert table_lines[0].split()[-1] == 'ACME' and table_lines[1].split()[-1] == 'dropped'
    assert table_lines[2].split()[-1] == '2'


def test_a_bad_expression_in_the_inventory_fails_the_play_naming_it(tmp_path):
    inventory = tmp_path / 'hosts.json'
    inventory.write_text(json.dumps({'edge': {
        'hosts': {'edge-a': host()},
        'vars': {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                 'edge_status_columns': [{'title': 'ACME', 'query': 'tenants[?'}]}}}))
    with pytest.raises(AssertionError) as failed:
        run('ansible-playbook', '-i', str(inventory), 'playbooks/status.yml',
            '--start-at-task', 'Print one line per edge host')
    assert 'edge_status_columns[0].query' in str(failed.value)
