"""What a test needs from the machine, and what happens when it is missing.

Loaded into every pytest run by pytest.ini (``-p prerequisites``).

- ``pytestmark = pytest.mark.needs(root=True)`` (or ``commands=['bird', 'birdc']``) says what a
  test or a whole file needs; ``missing_prerequisite(reason)`` does the same from a fixture.
- Outside CI a missing prerequisite is a skip whose reason starts with "missing prerequisite:"
  (counted and listed in the summary of ``make test``); with ``CI=true`` it is a failure.
- ``not_applicable(reason)`` (or a skipif whose reason starts with "not applicable:") is the only
  skip CI accepts: the behaviour cannot exist on this machine (e.g. the no-GRE path on a kernel
  that has GRE). Under ``CI=true`` every other skip, however it was written, fails the test.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts'))

from run_suites import Needs, ci_mode  # noqa: E402  pylint: disable=wrong-import-position

MISSING = 'missing prerequisite: '
NOT_APPLICABLE = 'not applicable: '


def missing_prerequisite(reason):
    """Skip (outside CI) or fail (CI=true) the running test: REASON names what is missing."""
    if ci_mode():
        pytest.fail('%s%s (CI=true: a missing prerequisite is a failure)' % (MISSING, reason), pytrace=False)
    pytest.skip(MISSING + reason)


def not_applicable(reason):
    """Skip a test whose behaviour cannot exist on this machine; allowed under CI=true too."""
    pytest.skip(NOT_APPLICABLE + reason)


def pytest_configure(config):
    config.addinivalue_line('markers', 'needs(root=False, commands=()): what the test needs from the machine; '
                                       'missing is a skip, or a failure under CI=true')


def pytest_runtest_setup(item):
    for marker in item.iter_markers('needs'):
        reason = Needs(marker.kwargs.get('root', False), tuple(marker.kwargs.get('commands', ()))).unmet()
        if reason:
            missing_prerequisite(reason)


def _skip_reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
    """Under CI=true a skip is a failure unless the test is not applicable here."""
    outcome = yield
    report = outcome.get_result()
    if not (ci_mode() and report.skipped) or hasattr(report, 'wasxfail'):
        return
    reason = _skip_reason(report)
    if reason.startswith('Skipped: '):
        reason = reason[len('Skipped: '):]
    if reason.startswith(NOT_APPLICABLE):
        return
    report.outcome = 'failed'
    report.longrepr = 'CI=true: a skipped test is a failure (only "%s..." skips are allowed): %s' % (
        NOT_APPLICABLE.strip(), reason)
