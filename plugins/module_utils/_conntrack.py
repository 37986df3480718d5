# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Conntrack sizing: nf_conntrack_buckets and nf_conntrack_max from the connections expected.

The persisted state is a file in /etc/sysctl.d (systemd-sysctl applies it at
boot); the running values are set where the namespace lets us (in this
kernel both are global, writable only in the initial namespace).
"""

from __future__ import annotations

import math
import os
import re
import tempfile

from ansible_collections.anycast.edge.plugins.module_utils._engine import Domain, Plan
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError, ParamError
from ansible_collections.anycast.edge.plugins.module_utils._hashlimit import conntrack_status

PROC = '/proc/sys/net/netfilter/'
KEYS = ('nf_conntrack_buckets', 'nf_conntrack_max')    # buckets first: max is sized on them
BUCKETS_PER_PAGE = 512      # PAGE_SIZE / sizeof(struct hlist_nulls_head)
ENTRIES_PER_BUCKET = 4
HEADROOM_MAX = 1000         # a factor above the expected peak; more is a typo, not a sizing
HEADER_RE = re.compile(r'^# Managed by anycast\.edge\.conntrack_sizing: (\d+) expected connections x headroom (\S+)\.$',
                       re.M)


def compute(expected, headroom):
    buckets = int(math.ceil(expected * headroom / ENTRIES_PER_BUCKET))
    buckets = int(math.ceil(buckets / float(BUCKETS_PER_PAGE))) * BUCKETS_PER_PAGE
    return buckets * ENTRIES_PER_BUCKET, buckets


def file_text(expected, headroom, maximum, buckets):
    return ('# Managed by anycast.edge.conntrack_sizing: %d expected connections x headroom %s.\n'
            '# Buckets first: the maximum is four entries per bucket.\n'
            'net.netfilter.nf_conntrack_buckets = %d\n'
            'net.netfilter.nf_conntrack_max = %d\n' % (expected, headroom, buckets, maximum))


def read_file(path):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def read_value(key):
    try:
        with open(PROC + key) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def writable(key):
    try:
        return bool(os.stat(PROC + key).st_mode & 0o200)
    except OSError:
        return False


class ConntrackState(object):
    def __init__(self, text, values, can_write):
        self.text = text                # the sysctl file, or None
        self.values = values            # key -> running value, or None (conntrack not loaded)
        self.can_write = can_write      # key -> whether this namespace may write it

    @property
    def loaded(self):
        return self.values.get('nf_conntrack_max') is not None


class ConntrackPlan(Plan):
    def __init__(self, path, text, remove, modprobe, sets):
        self.path = path
        self.text = text                # the file to write, or None
        self.remove = remove            # remove the file
        self.modprobe = modprobe
        self.sets = sets                # [(key, value)], in order
        commands = []
        if text is not None:
            commands.append("cat > %s <<'EOF'\n%sEOF" % (path, text))
        if remove:
            commands.append('rm -f %s' % path)
        if modprobe:
            commands.append('modprobe nf_conntrack')
        commands += ['sysctl -w net.netfilter.%s=%d' % (key, value) for key, value in sets]
        super().__init__(commands)


class ConntrackSizing(Domain):
    name = 'conntrack_sizing'
    persist = False

    def validate(self):
        params = self.params
        self.path = params['sysctl_file']
        self.present = params['state'] != 'absent'
        self.wanted = None
        self._check_path(params['state'] != 'rendered')
        if params['state'] in ('present', 'rendered'):
            if isinstance(params['expected_connections'], bool):
                raise ParamError('expected_connections', 'expected a number of connections, got %r'
                                 % params['expected_connections'])
            if params['expected_connections'] < 1:
                raise ParamError('expected_connections', 'must be at least 1, got %d' % params['expected_connections'])
            headroom = params['headroom']
            if isinstance(headroom, bool) or not math.isfinite(headroom):
                raise ParamError('headroom', 'must be a finite number from 1 to %d (a factor above the expected '
                                 'peak), got %s' % (HEADROOM_MAX, headroom))
            if not 1.0 <= headroom <= HEADROOM_MAX:
                raise ParamError('headroom', 'must be at least 1 and at most %d (a factor above the expected peak), '
                                 'got %s' % (HEADROOM_MAX, headroom))
            if params['expected_connections'] * headroom > 2 ** 31 - 1:
                raise ParamError('expected_connections', '%d x headroom %s is more connections than the kernel can '
                                 'track (nf_conntrack_max is at most %d)'
                                 % (params['expected_connections'], headroom, 2 ** 31 - 1))
            maximum, buckets = compute(params['expected_connections'], headroom)
            if maximum > 2 ** 31 - 1:
                raise ParamError('expected_connections', '%d x headroom %s needs nf_conntrack_max %d, more than the '
                                 'kernel accepts' % (params['expected_connections'], params['headroom'], maximum))
            self.wanted = {'nf_conntrack_max': maximum, 'nf_conntrack_buckets': buckets}
            self.text = file_text(params['expected_connections'], params['headroom'], maximum, buckets)
        self.notes = []

    def _check_path(self, on_host):
        """sysctl_file must be an absolute path to a file (ON_HOST: also look at what is there)."""
        if not os.path.isabs(self.path):
            raise ParamError('sysctl_file', "'%s' is a relative path: it would be written wherever the module happens "
                             "to run; give an absolute path (systemd-sysctl reads /etc/sysctl.d/*.conf)" % self.path)
        if on_host and os.path.isdir(self.path):
            raise ParamError('sysctl_file', '%s is a directory: give the path of the file to write, like '
                             '%s/90-anycast-edge-conntrack.conf' % (self.path, self.path.rstrip('/')))

    def read(self):
        return ConntrackState(read_file(self.path), dict((key, read_value(key)) for key in KEYS),
                              dict((key, writable(key)) for key in KEYS))

    def empty(self):
        return ConntrackState(None, dict((key, 0) for key in KEYS), dict((key, True) for key in KEYS))

    def plan(self, state):
        text = self.text if self.present else None
        write = text if text is not None and state.text != text else None
        remove = text is None and state.text is not None
        modprobe = self.present and self.params['runtime'] and not state.loaded
        sets = []
        if self.present and self.params['runtime']:
            for key in KEYS:
                if modprobe or (state.values[key] != self.wanted[key] and state.can_write[key]):
                    sets.append((key, self.wanted[key]))
        return ConntrackPlan(self.path, write, remove, modprobe, sets)

    def apply(self, plan):
        if plan.text is not None:
            self._write(plan.text)
        if plan.remove:
            os.unlink(self.path)
        if plan.modprobe:
            modprobe = self.module.get_bin_path('modprobe')
            rc, _out, err = self.module.run_command([modprobe, 'nf_conntrack']) if modprobe else (1, '', 'no modprobe')
            if rc != 0:
                self.notes.append('conntrack is not loaded and modprobe nf_conntrack failed: %s' % err.strip())
                return
        for key, value in plan.sets:
            if not writable(key):
                continue
            try:
                with open(PROC + key, 'w') as handle:
                    handle.write('%d\n' % value)
            except OSError as exc:
                raise EdgeError('the kernel refused net.netfilter.%s = %d: %s' % (key, value, exc.strerror))

    def _write(self, text):
        directory = os.path.dirname(self.path) or '.'
        if not os.path.isdir(directory):
            raise ParamError('sysctl_file', 'directory %s does not exist' % directory)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix='.conntrack-sizing.')
        try:
            with os.fdopen(fd, 'w') as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)
            os.rename(tmp, self.path)
        except OSError as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise ParamError('sysctl_file', 'cannot write %s: %s' % (self.path, exc.strerror))

    def gather(self, state):
        if state.text is None:
            return {'sysctl_file': self.path, 'state': 'absent'}
        found = HEADER_RE.search(state.text)
        if not found:
            self.warn('%s was not written by this module: no parameters to give back' % self.path)
            return {'sysctl_file': self.path}
        expected, headroom = int(found.group(1)), float(found.group(2))
        if file_text(expected, headroom, *compute(expected, headroom)) != state.text:
            self.warn('%s was changed by hand since this module wrote it' % self.path)
        return {'expected_connections': expected, 'headroom': headroom, 'sysctl_file': self.path}

    def expected(self, state, plan):
        if not self.present:
            return {'sysctl_file': self.path, 'state': 'absent'}
        return {'expected_connections': self.params['expected_connections'], 'headroom': self.params['headroom'],
                'sysctl_file': self.path}

    def diff(self, state, plan):
        after = self.text if self.present else None
        return {'before': state.text or '', 'after': after or '', 'before_header': self.path,
                'after_header': self.path}

    def result(self, state, plan, after):
        for note in self.notes:
            self.warn(note)
        result = {'sysctl_file': self.path}
        if self.present:
            result.update(self.wanted)
            result['runtime'] = self._runtime(state, plan, after)
            if plan.modprobe and not self.notes and not self.check_mode:
                result['loaded_nf_conntrack'] = True
            current_max = result['runtime']['nf_conntrack_max']['after']
            if current_max is not None and current_max < self.wanted['nf_conntrack_max'] and \
                    not result['runtime']['nf_conntrack_max']['writable']:
                self.warn('nf_conntrack_max is %d here, below the %d computed for %d connections, and this network '
                          'namespace cannot change it (the kernel keeps one global value, set in the initial '
                          'namespace): apply %s on the host'
                          % (current_max, self.wanted['nf_conntrack_max'], self.params['expected_connections'],
                             self.path))
        result['conntrack'] = conntrack_status(self.warn)
        return result

    def _runtime(self, state, plan, after):
        """Per setting: running value before and after, whether it is writable here, whether it now has its value."""
        report = {}
        planned = dict(plan.sets)
        for key in KEYS:
            before = state.values[key]
            if after is not None:
                now = after.values[key]
            elif key in planned and (self.check_mode or not plan.changed):
                now = planned[key]
            else:
                now = before
            entry = {'before': before, 'after': now, 'wanted': self.wanted[key],
                     'writable': bool(state.can_write[key] and before is not None)}
            entry['applied'] = now == self.wanted[key]
            report[key] = entry
        return report
