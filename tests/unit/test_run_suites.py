"""scripts/run_suites.py (the driver of `make test`) and tests/prerequisites.py (skips under CI=true).

Inner pytest runs are real pytest processes on small test files, with the project's plugin loaded
as pytest.ini loads it; their junit XML is what the driver then counts.
"""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'scripts'))

import run_suites as rs  # noqa: E402

INNER_TESTS = '''
import pytest
from prerequisites import missing_prerequisite, not_applicable

def test_passes():
    assert True

def test_fails():
    assert 1 == 2

def test_prerequisite_from_a_fixture():
    missing_prerequisite('ae-no-such-tool is not installed')

@pytest.mark.needs(commands=['ae-no-such-tool'])
def test_marker_names_a_missing_command():
    pass

@pytest.mark.needs(commands=['sh'])
def test_marker_met():
    pass

@pytest.mark.skipif(True, reason='written by hand')
def test_plain_skip():
    pass

def test_not_applicable_here():
    not_applicable('the kernel has the feature')

@pytest.mark.xfail(reason='known', strict=True)
def test_expected_failure():
    assert False
'''


def inner_pytest(tmp_path, ci):
    """Run INNER_TESTS with the plugin; return (exit status, Counts from its junit XML)."""
    (tmp_path / 'test_inner.py').write_text(INNER_TESTS)
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, 'tests'))
    env.pop('CI', None)
    if ci:
        env['CI'] = 'true'
    xml = tmp_path / 'inner.xml'
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'prerequisites', '-c', os.devnull,
                           '--rootdir', str(tmp_path), '--junitxml', str(xml), str(tmp_path / 'test_inner.py')],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120, check=False)
    return proc, rs.read_junit(str(xml))


def test_outside_ci_missing_prerequisites_and_other_skips_are_counted_with_their_reasons(tmp_path):
    proc, counts = inner_pytest(tmp_path, ci=False)
    assert proc.returncode == 1, proc.stdout   # test_fails
    # passes, marker met, xfail (reported as a skip by junit, reason 'known')
    assert (counts.passed, counts.failed, counts.skipped) == (2, 1, 5), (counts, proc.stdout)
    assert counts.skip_reasons['missing prerequisite: ae-no-such-tool is not installed'] == 1
    assert counts.skip_reasons['missing prerequisite: ae-no-such-tool not installed'] == 1
    assert counts.skip_reasons['written by hand'] == 1
    assert counts.skip_reasons['not applicable: the kernel has the feature'] == 1


def test_under_ci_a_skip_fails_unless_not_applicable(tmp_path):
    proc, counts = inner_pytest(tmp_path, ci=True)
    assert proc.returncode == 1
    # test_fails, both missing prerequisites and the hand-written skip fail; not applicable stays a skip
    assert (counts.passed, counts.failed) == (2, 4), (counts, proc.stdout)
    assert set(counts.skip_reasons) == {'not applicable: the kernel has the feature', 'known'}
    # the summary names what was missing
    assert counts.prerequisite_failures == {
        'missing prerequisite: ae-no-such-tool is not installed (CI=true: a missing prerequisite is a failure)': 1,
        'missing prerequisite: ae-no-such-tool not installed (CI=true: a missing prerequisite is a failure)': 1,
        'CI=true: a skipped test is a failure (only "not applicable:..." skips are allowed): written by hand': 1}
    assert 'CI=true: a missing prerequisite is a failure' in proc.stdout
    assert 'CI=true: a skipped test is a failure' in proc.stdout and 'written by hand' in proc.stdout


def test_ci_mode_reads_the_ci_variable():
    assert rs.ci_mode({'CI': 'true'}) and rs.ci_mode({'CI': 'TRUE'}) and rs.ci_mode({'CI': '1'})
    assert not rs.ci_mode({}) and not rs.ci_mode({'CI': 'false'}) and not rs.ci_mode({'CI': ''})


def test_needs_names_what_is_missing():
    assert rs.Needs(commands=('sh',)).unmet() is None
    assert rs.Needs(commands=('sh', 'ae-no-such-tool')).unmet() == 'ae-no-such-tool not installed'
    assert rs.Needs(root=True).unmet(euid=1000) == 'needs root'
    assert rs.Needs(root=True).unmet(euid=0) is None


LINT_PASSED = ('WARNING: PATH altered\n\n\x1b[32mPassed\x1b[0m: 0 failure(s), 0 warning(s) in 142 files processed '
               "of 169 encountered. Profile 'production' was required, and it passed.\n")
LINT_FAILED = 'Failed: 3 failure(s), 1 warning(s) in 140 files processed of 169 encountered.\n'


def test_ansible_lint_counts_files_and_violations():
    passed = rs.ansible_lint(LINT_PASSED)
    assert (passed.passed, passed.failed, passed.skipped) == (142, 0, 0)
    failed = rs.ansible_lint(LINT_FAILED)
    assert (failed.passed, failed.failed) == (140, 3)
    assert rs.ansible_lint('ansible-lint: command not found\n') is None


def test_module_docs_counts_ok_and_failed_lines_only():
    output = ('rc=0; for m in ...; echo "ansible-doc anycast.edge.$m: ok"; done\n'
              'ansible-doc anycast.edge.anyip_route: ok\nansible-doc anycast.edge.tenant: FAILED\n'
              'ansible-doc anycast.edge.confirm: ok\n')
    counts = rs.module_docs(output)
    assert (counts.passed, counts.failed) == (2, 1)


MOLECULE = '''\
INFO     default \u279c destroy: Executed: Successful
INFO     default \u279c create: Executed: Successful
INFO     default \u279c check: Executed: Successful
INFO     default \u279c converge: Executed: Successful
INFO     default \u279c idempotence: Executed: Successful
INFO     default > side_effect: Executed: Skipped (No side effect playbook configured)
\x1b[31mERROR\x1b[0m    default \u279c verify: Executed: Failed
'''


def test_molecule_counts_each_action_once_beside_its_details_report():
    logged = 'INFO     default \u279c create: Executed: Successful\nINFO     default \u279c verify: Executed: Successful\n'
    details = '\nDETAILS\ndefault \u279c create: Executed: Successful\ndefault \u279c verify: Executed: Successful\n'
    assert rs.molecule_actions(logged + details).passed == 2
    assert rs.molecule_actions(details).passed == 2


def test_molecule_counts_actions():
    counts = rs.molecule_actions(MOLECULE)
    assert (counts.passed, counts.failed, counts.skipped) == (5, 1, 1)
    assert list(counts.skip_reasons) == ['default side_effect: skipped (No side effect playbook configured)']
    assert rs.molecule_actions('Traceback (most recent call last):\n') is None


def test_sanity_counts_junit_files_and_names_programs_ansible_test_lacked(tmp_path):
    # ansible-test writes one file per sanity test; a test whose program is missing is a skip
    for name, body in (('pep8', '<testcase classname="sanity" name="pep8"/>'),
                       ('shellcheck', '<testcase classname="sanity" name="shellcheck"><skipped>No tests '
                                      'applicable.</skipped></testcase>'),
                       ('pylint', '<testcase classname="sanity" name="pylint"><failure message="x">y</failure>'
                                  '</testcase>')):
        (tmp_path / ('ansible-test-sanity-%s.xml' % name)).write_text(
            '<?xml version="1.0" ?><testsuites><testsuite name="ansible-test">%s</testsuite></testsuites>' % body)
    read = rs.sanity_report(str(tmp_path))
    counts = read('Running sanity test "shellcheck"\nWARNING: Required program "shellcheck" not found.\n')
    assert (counts.passed, counts.failed, counts.skipped) == (1, 1, 1)
    assert counts.skip_reasons == {'shellcheck: No tests applicable.': 1}
    assert counts.missing == ['shellcheck not installed (ansible-test)']


def suite(name='demo', needs=None):
    return rs.Suite(name, rs.ansible_lint, needs=needs or rs.Needs())


def test_judge():
    ok = rs.Counts(passed=3)
    assert rs.judge(suite(), 0, ok, ci=True).status == 'passed'
    # a missing prerequisite: skipped outside CI (and said why), a failure under CI
    skipped = rs.judge(suite(), None, None, ci=False, unmet='qemu-system-x86_64 not installed')
    assert skipped.status == 'skipped' and 'qemu-system-x86_64 not installed' in skipped.notes[0]
    failed = rs.judge(suite(), None, None, ci=True, unmet='qemu-system-x86_64 not installed')
    assert failed.status == 'failed' and 'CI=true' in failed.notes[0]
    # the same for a prerequisite the tool itself reported missing
    lacking = rs.Counts(passed=3, missing=['shellcheck not installed (ansible-test)'])
    assert rs.judge(suite(), 0, lacking, ci=False).status == 'passed'
    assert rs.judge(suite(), 0, lacking, ci=True).status == 'failed'
    # exit status, failures, no report, no test at all, only skips
    assert rs.judge(suite(), 2, ok, ci=False).notes == ['exit status 2']
    assert rs.judge(suite(), 2, ok, ci=False).status == 'failed'
    assert rs.judge(suite(), 0, rs.Counts(passed=3, failed=1), ci=False).status == 'failed'
    assert rs.judge(suite(), 0, None, ci=False).status == 'failed'
    assert rs.judge(suite(), 5, rs.Counts(), ci=False).notes == ['exit status 5', 'ran no test']
    only_skips = rs.Counts()
    only_skips.skip('missing prerequisite: no qemu', 4)
    assert rs.judge(suite(), 0, only_skips, ci=False).status == 'skipped'


def test_a_suite_runs_its_command_and_is_counted(tmp_path, capsys):
    script = tmp_path / 'lint.sh'
    script.write_text('echo "Passed: 0 failure(s), 0 warning(s) in 7 files processed"\n')
    demo = rs.Suite('demo', rs.ansible_lint, 'files', command=('bash', str(script)))
    outcome = rs.run_suite(demo, ci=True)
    assert outcome.status == 'passed' and outcome.counts.passed == 7
    assert 'Passed: 0 failure(s)' in capsys.readouterr().out   # the output is shown as it comes
    failing = rs.Suite('demo', rs.ansible_lint, 'files', command=('bash', '-c', 'exit 3'))
    assert rs.run_suite(failing, ci=False).notes == ['exit status 3', 'nothing to count in its report']


def test_summary_has_one_line_per_suite_and_a_closing_count_line():
    counts = rs.Counts(passed=10, failed=1, prerequisite_failures={'missing prerequisite: no bird (CI=true)': 1})
    counts.skip('missing prerequisite: qemu-system-x86_64 not installed', 2)
    outcomes = [rs.Outcome(suite('unit'), 'passed', rs.Counts(passed=120), seconds=41),
                rs.Outcome(suite('vm'), 'failed', counts, seconds=3),
                rs.Outcome(suite('molecule', rs.Needs(commands=('podman',))), 'failed', None,
                           ['missing prerequisite: podman not installed (CI=true: a failure)'], 0.1)]
    text = rs.summary(outcomes, ci=True, elapsed=3000)
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[3:6]] == ['unit', 'vm', 'molecule']
    assert lines[3].split()[1:5] == ['passed', '120', '0', '0']
    assert lines[5].split()[1:5] == ['failed', '-', '-', '-']
    assert '  vm: 2 skipped: missing prerequisite: qemu-system-x86_64 not installed' in lines
    assert '  molecule: missing prerequisite: podman not installed (CI=true: a failure)' in lines
    assert '  vm: 1 failed: missing prerequisite: no bird (CI=true)' in lines
    assert 'FAILED: vm, molecule' in text and 'warning: longer than the 45m00s budget' in text
    # the last line is the plain count line CI reads; a failure without counts counts once
    assert lines[-1] == 'total: 130 passed, 2 failed, 2 skipped'
    # outside CI the same suite is skipped, not run: one skip
    outcomes[2] = rs.Outcome(suite('molecule'), 'skipped', None, ['missing prerequisite: podman not installed'])
    assert rs.summary(outcomes, ci=False, elapsed=60).splitlines()[-1] == 'total: 130 passed, 1 failed, 3 skipped'


def test_unknown_suite_is_refused():
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'run_suites.py'), 'nosuchsuite'],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 2 and 'unknown suite(s): nosuchsuite' in proc.stderr


def test_heavy_suites_wait_for_the_shared_lock_only_when_it_is_named(tmp_path, capsys):
    by_name = {s.name: s for s in rs.SUITES}
    lock = {'AE_HEAVY_LOCK': '/work/locks/heavy.lock'}
    assert by_name['vm'].lock_path(lock) == by_name['molecule'].lock_path(lock) == '/work/locks/heavy.lock'
    assert by_name['vm'].lock_path({}) is None and by_name['integration'].lock_path(lock) is None
    # a heavy suite waits while another process holds the lock, and its time leaves the wait out
    path = str(tmp_path / 'heavy.lock')
    holder = subprocess.Popen(['flock', path, 'sleep', '2'])
    try:
        time_start = rs.time.monotonic()
        while subprocess.run(['flock', '-n', path, 'true'], check=False).returncode == 0:
            assert rs.time.monotonic() - time_start < 10
        script = tmp_path / 'lint.sh'
        script.write_text('echo "Passed: 0 failure(s), 0 warning(s) in 1 files processed"\n')
        demo = rs.Suite('demo', rs.ansible_lint, command=('bash', str(script)), heavy=True)
        os.environ['AE_HEAVY_LOCK'] = path
        try:
            outcome = rs.run_suite(demo, ci=True)
        finally:
            del os.environ['AE_HEAVY_LOCK']
    finally:
        holder.wait()
    assert outcome.status == 'passed' and outcome.seconds < 1.0
    assert outcome.notes and outcome.notes[0].startswith('waited ') and path in outcome.notes[0]
    assert 'waiting for %s' % path in capsys.readouterr().out


def test_every_suite_is_a_make_target():
    with open(os.path.join(REPO, 'Makefile')) as handle:
        targets = set(line.split(':')[0] for line in handle if line[:1].isalpha() and ':' in line)
    assert set(s.name for s in rs.SUITES) <= targets


def test_every_integration_file_says_it_needs_root_the_same_way():
    folder = os.path.join(REPO, 'tests', 'integration')
    for name in sorted(os.listdir(folder)):
        if name.startswith('test_') and name.endswith('.py'):
            with open(os.path.join(folder, name)) as handle:
                text = handle.read()
            assert re.search(r'^pytestmark = pytest\.mark\.needs\(root=True[,)]', text, re.M), name
            assert 'geteuid() != 0' not in text, name


@pytest.mark.parametrize('name', [s.name for s in rs.SUITES if hasattr(s.report, 'path')])
def test_junit_suites_write_where_the_driver_reads(name):
    path = [s for s in rs.SUITES if s.name == name][0].report.path
    with open(os.path.join(REPO, 'Makefile')) as handle:
        makefile = handle.read()
    with open(os.path.join(REPO, 'scripts', 'sanity.sh')) as handle:
        sanity = handle.read()
    relative = os.path.relpath(path, os.path.join(REPO, 'build', 'reports'))
    assert '$(REPORTS)/%s' % relative in makefile or 'build/reports/%s' % relative in sanity, relative
