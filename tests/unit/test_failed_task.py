"""scripts/failed_task.py finds the failure in a molecule log as CI shows it (coloured, framed)."""

import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      'scripts', 'failed_task.py')
FRAME = '  \x1b[2m\u2502\x1b[0m '

IGNORED = """TASK [Probe something optional] ***
fatal: [aem-edge]: FAILED! => {"msg": "optional probe failed"}
...ignoring
"""
RESCUED = """TASK [anycast.edge.transparent_proxy : Assert that the routes fit
  together] ***
fatal: [aem-edge]: FAILED! => {"msg": "rescued
  preflight"}

TASK [Assert the preflight named the prefix] ***
ok: [aem-edge]
"""
REAL = """TASK [Assert that every connection got the origin's greeting and its echo]
  ***************************
fatal: [aem-edge]: FAILED! => {"assertion": "x", "msg":
  "the real failure"}

PLAY RECAP *****
aem-edge : ok=3 changed=0 unreachable=0 failed=1
"""


def framed(text):
    return ''.join(FRAME + line + '\n' for line in text.splitlines())


def summary(tmp_path, text):
    log = tmp_path / 'molecule.log'
    log.write_text(text, encoding='utf-8')
    proc = subprocess.run([sys.executable, SCRIPT, str(log)], capture_output=True, text=True, check=True)
    return proc.stdout


REAL_TASK = "TASK [Assert that every connection got the origin's greeting and its echo]"
RESCUED_TASK = 'TASK [anycast.edge.transparent_proxy : Assert that the routes fit together]'


@pytest.mark.parametrize('text,expected', [
    (framed(RESCUED + REAL), [(RESCUED_TASK, 'rescued preflight'),
                              (REAL_TASK, '{"assertion": "x", "msg": "the real failure"}')]),
    # with several platforms, a host that rescues may print after the one that failed
    (framed(REAL + RESCUED), [(REAL_TASK, 'the real failure'), (RESCUED_TASK, 'rescued preflight')]),
    (framed(REAL + IGNORED), [(REAL_TASK, 'the real failure')]),
    (RESCUED, [(RESCUED_TASK, 'rescued preflight')]),
])
def test_the_last_failures_are_printed_with_their_task_and_whole_message(tmp_path, text, expected):
    lines = summary(tmp_path, text).splitlines()
    assert lines[0].startswith('=== the last %d failures' % len(expected))
    assert len(lines) == 1 + 2 * len(expected)
    for index, (task, message) in enumerate(expected):
        assert lines[1 + 2 * index] == task
        assert message in lines[2 + 2 * index]
    assert '\x1b' not in ''.join(lines)


def test_only_the_last_failures_are_printed(tmp_path):
    lines = summary(tmp_path, framed(REAL * 6)).splitlines()
    assert len(lines) == 1 + 2 * 4


def test_a_log_without_failures_prints_nothing(tmp_path):
    assert summary(tmp_path, framed(IGNORED.replace('fatal', 'ok'))) == ''
    assert summary(tmp_path, framed(IGNORED)) == ''
