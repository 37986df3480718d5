"""Run the test suites of `make test` and end with one line per suite and its counts.

usage: python3 scripts/run_suites.py [SUITE ...]     (default: every suite in SUITES, in order)
       python3 scripts/run_suites.py --list

Each suite is a make target (`make unit`, `make vm`, ...), so a single suite still runs alone with
make. Every suite runs even when an earlier one failed: an operator sees everything that is wrong in
one run; the exit status is non-zero when any suite failed.

A suite's counts come from what its tool reports: pytest's junit XML (tests), ansible-test's junit
files (sanity tests), ansible-lint's closing line (files processed / violations), the build's
`ansible-doc` lines (modules), molecule's action lines (actions). Skips are counted and their
reasons listed under the table.

Prerequisites. A suite declares the programs (and root) it needs in SUITES; a pytest test declares
its own with `pytest.mark.needs(...)` (tests/prerequisites.py). With CI=true a missing prerequisite
fails the run with the reason; otherwise the suite or test is skipped and the skip is shown here.

On a machine shared by several checkouts, AE_HEAVY_LOCK=/work/locks/heavy.lock makes the heavy
suites (podman, QEMU) hold an exclusive flock on that file while they run; the others do not wait
for it, and the time spent waiting is reported apart from the suite's time.

Adding a suite (e.g. BGP with BIRD): a make target `bgp` that writes build/reports/bgp.xml
(`$(PYTEST) ... --junitxml=$(REPORTS)/bgp.xml`), and one line in SUITES:
    Suite('bgp', junit('bgp.xml'), needs=Needs(root=True, commands=('bird', 'birdc'))),
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORTS = os.path.join(REPO, 'build', 'reports')
BUDGET_SECONDS = 45 * 60      # `make test` must stay under this (CI allows 90 minutes)
ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def ci_mode(environ=None):
    """True when CI=true (or 1/yes): missing prerequisites are failures, not skips."""
    return (environ if environ is not None else os.environ).get('CI', '').strip().lower() in ('true', '1', 'yes')


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    skip_reasons: dict = field(default_factory=dict)   # reason -> number of skips
    missing: list = field(default_factory=list)        # prerequisites the tool said it lacked
    prerequisite_failures: dict = field(default_factory=dict)   # reason -> tests failed for it (CI=true)

    def skip(self, reason, number=1):
        self.skipped += number
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + number

    @property
    def total(self):
        return self.passed + self.failed + self.skipped


@dataclass
class Needs:
    root: bool = False
    commands: tuple = ()

    def unmet(self, which=shutil.which, euid=None):
        """What is missing, as one sentence, or None."""
        problems = []
        absent = [command for command in self.commands if which(command) is None]
        if absent:
            problems.append('%s not installed' % ', '.join(absent))
        if self.root and (os.geteuid() if euid is None else euid) != 0:
            problems.append('needs root')
        return '; '.join(problems) or None


# --------------------------------------------------------------------------
# Reading a suite's counts. Each reader takes the suite's output (text) and
# returns Counts, or None when the tool left nothing to count.

def junit(name, named=False):
    """Counts from pytest's or ansible-test's junit XML: build/reports/NAME (a file or a directory).
    NAMED: a skip's reason starts with the test's name (few tests, each skipped for its own reason)."""
    path = os.path.join(REPORTS, name)

    def read(_output):
        return read_junit(path, named)
    read.path = path
    return read


def read_junit(path, named=False):
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith('.xml'))
    else:
        files = [path] if os.path.exists(path) else []
    if not files:
        return None
    counts = Counts()
    for name in files:
        for case in ET.parse(name).getroot().iter('testcase'):
            failure = case.find('failure') if case.find('failure') is not None else case.find('error')
            if failure is not None:
                counts.failed += 1
                reason = _prerequisite_reason(failure.get('message') or '')
                if reason:
                    counts.prerequisite_failures[reason] = counts.prerequisite_failures.get(reason, 0) + 1
            elif case.find('skipped') is not None:
                skipped = case.find('skipped')
                reason = (skipped.get('message') or skipped.text or 'no reason given').strip()
                counts.skip('%s: %s' % (case.get('name'), reason) if named else reason)
            else:
                counts.passed += 1
    return counts


# How tests/prerequisites.py words a test that failed, under CI=true, for want of a prerequisite.
_PREREQUISITE_FAILURES = ('missing prerequisite: ', 'CI=true: a skipped test is a failure')


def _prerequisite_reason(message):
    for marker in _PREREQUISITE_FAILURES:
        found = message.find(marker)
        if found >= 0:
            return message[found:].strip().rstrip('"').strip()
    return None


def sanity_report(name):
    """ansible-test's junit files, plus the programs it said it could not find: it then skips
    that test as "No tests applicable", which must not pass for a clean run."""
    read_files = junit(name, named=True)

    def read(output):
        counts = read_files(output)
        if counts is not None:
            counts.missing += ['%s not installed (ansible-test)' % program for program in
                               re.findall(r'Required program "([^"]+)" not found', ANSI.sub('', output))]
        return counts
    read.path = read_files.path
    return read


_LINT = re.compile(r'^(Passed|Failed): (\d+) failure\(s\), (\d+) warning\(s\) (?:in|on) (\d+) files', re.M)


def ansible_lint(output):
    """'Passed: 0 failure(s), 0 warning(s) in 142 files processed ...' -> files passed, violations failed."""
    found = _LINT.findall(ANSI.sub('', output))
    if not found:
        return None
    _verdict, failures, _warnings, files = found[-1]
    return Counts(passed=int(files), failed=int(failures))


_DOC = re.compile(r'^ansible-doc (\S+): (ok|FAILED)$', re.M)


def module_docs(output):
    """The build's 'ansible-doc anycast.edge.MODULE: ok|FAILED' lines."""
    found = _DOC.findall(ANSI.sub('', output))
    if not found:
        return None
    return Counts(passed=sum(1 for _m, v in found if v == 'ok'), failed=sum(1 for _m, v in found if v != 'ok'))


_MOLECULE = re.compile(r'^([A-Z]+[ \t]+)?(\S+) (?:\u279c|>) (\S+): Executed: (\w+)(?: \((.*)\))?\s*$', re.M)


def molecule_actions(output):
    """molecule's 'INFO default > converge: Executed: Successful' lines, one per action. Its closing
    DETAILS report repeats them without the log level: counted only when the log lines are absent."""
    counts = Counts()
    found = _MOLECULE.findall(ANSI.sub('', output))
    logged = [line for line in found if line[0]]
    for _level, scenario, action, state, note in logged or found:
        state = state.lower()
        if state == 'successful':
            counts.passed += 1
        elif state in ('skipped', 'disabled'):
            counts.skip('%s %s: %s%s' % (scenario, action, state, ' (%s)' % note if note else ''))
        else:
            counts.failed += 1
    return counts if counts.total else None


# --------------------------------------------------------------------------
# The suites, in the order `make test` runs them.

@dataclass
class Suite:
    name: str
    report: object                  # a reader above
    counted: str = 'tests'          # what the counts count
    needs: Needs = field(default_factory=Needs)
    command: tuple = ()             # default: make NAME
    heavy: bool = False             # containers or VMs: under AE_HEAVY_LOCK when it is set

    def argv(self):
        return list(self.command) or ['make', '--no-print-directory', self.name]

    def lock_path(self, environ=None):
        """The lock file a heavy suite holds while it runs, or None. Machines shared by several
        checkouts serialise podman and QEMU work on one file; the other suites run meanwhile."""
        lock = (environ if environ is not None else os.environ).get('AE_HEAVY_LOCK')
        return lock if self.heavy and lock else None


SUITES = [
    Suite('unit', junit('unit.xml')),
    Suite('integration', junit('integration.xml')),
    Suite('sanity', sanity_report('sanity'), 'sanity tests', Needs(commands=('git', 'rsync'))),
    Suite('lint', ansible_lint, 'files / violations'),
    Suite('build', module_docs, 'modules documented'),
    Suite('molecule', molecule_actions, 'molecule actions',
          Needs(root=True, commands=('podman', 'runc', 'debootstrap', 'rsync')), heavy=True),
    Suite('vm', junit('vm.xml'), heavy=True),
]


# --------------------------------------------------------------------------
# Running and judging.

@dataclass
class Outcome:
    suite: Suite
    status: str                     # passed, failed, skipped
    counts: Counts = None
    notes: list = field(default_factory=list)
    seconds: float = 0.0


def judge(suite, returncode, counts, ci, unmet=None):
    """The verdict on one suite. UNMET: its declared prerequisites that are missing (it did not run)."""
    if unmet:
        if ci:
            return Outcome(suite, 'failed', counts, ['missing prerequisite: %s (CI=true: a failure)' % unmet])
        return Outcome(suite, 'skipped', counts, ['missing prerequisite: %s (not run)' % unmet])
    notes = []
    if returncode != 0:
        notes.append('exit status %d' % returncode)
    if counts is None:
        notes.append('nothing to count in its report')
        return Outcome(suite, 'failed', counts, notes)
    if counts.missing:
        notes += ['missing prerequisite: %s%s' % (m, ' (CI=true: a failure)' if ci else '') for m in counts.missing]
    if counts.total == 0:
        notes.append('ran no test')
    if returncode != 0 or counts.failed or counts.total == 0 or (ci and counts.missing):
        return Outcome(suite, 'failed', counts, notes)
    if counts.passed == 0:
        return Outcome(suite, 'skipped', counts, notes)
    return Outcome(suite, 'passed', counts, notes)


def run_suite(suite, ci, out=None):
    """Run one suite, its output shown as it comes and kept in build/reports/NAME.log."""
    out = out or sys.stdout
    started = time.monotonic()
    unmet = suite.needs.unmet()
    if unmet:
        outcome = judge(suite, None, None, ci, unmet)
        outcome.seconds = time.monotonic() - started
        return outcome
    os.makedirs(REPORTS, exist_ok=True)
    stale = getattr(suite.report, 'path', None)
    if stale and os.path.isdir(stale):
        shutil.rmtree(stale)
    elif stale and os.path.exists(stale):
        os.remove(stale)
    print('\n==== %s: %s' % (suite.name, ' '.join(suite.argv())), file=out, flush=True)
    log_path = os.path.join(REPORTS, '%s.log' % suite.name)
    chunks = []
    with held(suite.lock_path(), out) as waited, open(log_path, 'w') as log:
        started += waited                # the suite's time, not the queue's
        proc = subprocess.Popen(suite.argv(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors='replace', bufsize=1)
        for line in proc.stdout:
            out.write(line)
            log.write(line)
            chunks.append(line)
        returncode = proc.wait()
    out.flush()
    output = ''.join(chunks)
    try:
        counts = suite.report(output)
    except (ET.ParseError, OSError) as exc:
        counts = None
        output += '\n%s' % exc
    outcome = judge(suite, returncode, counts, ci)
    outcome.seconds = time.monotonic() - started
    if waited >= 1:
        outcome.notes.append('waited %s for %s (not in its time)' % (duration(waited), suite.lock_path()))
    return outcome


@contextlib.contextmanager
def held(path, out):
    """Hold an exclusive flock on PATH (if any) for the block; yields the seconds spent waiting."""
    if not path:
        yield 0.0
        return
    with open(path, 'a') as handle:
        started = time.monotonic()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print('waiting for %s (held by another run)' % path, file=out, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield time.monotonic() - started
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def duration(seconds):
    seconds = int(round(seconds))
    return '%dm%02ds' % divmod(seconds, 60) if seconds >= 60 else '%ds' % seconds


def summary(outcomes, ci, elapsed):
    """The closing table: one line per suite, its skips and notes, then the totals."""
    def cell(counts, name):
        return '-' if counts is None else str(getattr(counts, name))

    lines = ['', '==== make test summary (CI=%s)' % ('true' if ci else 'false'),
             '%-12s %-8s %7s %7s %8s  %-19s %8s' % ('suite', 'result', 'passed', 'failed', 'skipped', 'counted',
                                                    'time')]
    for outcome in outcomes:
        counts = outcome.counts
        lines.append('%-12s %-8s %7s %7s %8s  %-19s %8s' % (
            outcome.suite.name, outcome.status, cell(counts, 'passed'), cell(counts, 'failed'),
            cell(counts, 'skipped'), outcome.suite.counted, duration(outcome.seconds)))
    for outcome in outcomes:
        for note in outcome.notes:
            lines.append('  %s: %s' % (outcome.suite.name, note))
        if outcome.counts is not None:
            for reason, number in sorted(outcome.counts.prerequisite_failures.items()):
                lines.append('  %s: %d failed: %s' % (outcome.suite.name, number, reason))
            for reason, number in sorted(outcome.counts.skip_reasons.items()):
                lines.append('  %s: %d skipped: %s' % (outcome.suite.name, number, reason))
    failed = [o.suite.name for o in outcomes if o.status == 'failed']
    skipped = [o.suite.name for o in outcomes if o.status == 'skipped']
    verdict = 'FAILED: %s' % ', '.join(failed) if failed else 'all suites passed'
    if skipped:
        verdict += '; suites skipped: %s' % ', '.join(skipped)
    lines.append('%d suites in %s: %s' % (len(outcomes), duration(elapsed), verdict))
    if elapsed > BUDGET_SECONDS:
        lines.append('warning: longer than the %s budget of make test' % duration(BUDGET_SECONDS))
    counted = [o.counts for o in outcomes if o.counts is not None]
    # A suite that failed without counts (it did not start, or left no report) counts as one failure.
    uncounted_failures = sum(1 for o in outcomes if o.status == 'failed' and
                             (o.counts is None or not o.counts.failed))
    # ... and a suite that was not run (its prerequisites missing, outside CI) as one skip.
    unrun = sum(1 for o in outcomes if o.status == 'skipped' and o.counts is None)
    lines.append('total: %d passed, %d failed, %d skipped' % (
        sum(c.passed for c in counted), sum(c.failed for c in counted) + uncounted_failures,
        sum(c.skipped for c in counted) + unrun))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('suites', nargs='*', metavar='SUITE', help='suites to run (default: all, in order)')
    parser.add_argument('--list', action='store_true', help='list the suites and what they need')
    args = parser.parse_args(argv)
    by_name = {suite.name: suite for suite in SUITES}
    if args.list:
        for suite in SUITES:
            needs = ', '.join(list(suite.needs.commands) + (['root'] if suite.needs.root else [])) or '-'
            print('%-12s counts %-19s needs %s' % (suite.name, suite.counted, needs))
        return 0
    unknown = [name for name in args.suites if name not in by_name]
    if unknown:
        parser.error('unknown suite(s): %s (known: %s)' % (', '.join(unknown), ', '.join(by_name)))
    selected = [by_name[name] for name in args.suites] or SUITES
    ci = ci_mode()
    started = time.monotonic()
    outcomes = [run_suite(suite, ci) for suite in selected]
    text = summary(outcomes, ci, time.monotonic() - started)
    print(text, flush=True)
    os.makedirs(REPORTS, exist_ok=True)
    with open(os.path.join(REPORTS, 'summary.txt'), 'w') as handle:
        handle.write(text.lstrip('\n') + '\n')
    return 1 if any(o.status == 'failed' for o in outcomes) else 0


if __name__ == '__main__':
    sys.exit(main())
