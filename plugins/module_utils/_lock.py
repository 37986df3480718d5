# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""flock-based locks shared between processes (and with iptables itself)."""

from __future__ import annotations

import errno
import fcntl
import os
import time

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError

# One collection module applies at a time on a host (two playbooks at once
# cannot interleave their read-plan-apply); commit-confirm rollbacks take it too.
HOST_LOCK_PATH = '/run/anycast-edge.lock'
HOST_LOCK_TIMEOUT = 120
# The lock iptables itself takes (libiptc does not).
XTABLES_LOCK_PATH = '/run/xtables.lock'
XTABLES_LOCK_TIMEOUT = 30


class FileLock(object):
    """Exclusive flock on PATH, polled until TIMEOUT seconds have passed.

    A lock that stays taken raises EdgeError saying who else takes it.
    """

    def __init__(self, path, timeout, holder, prefix=''):
        self.path = path
        self.timeout = timeout
        self.holder = holder  # who else takes it, for the error message
        self.prefix = prefix
        self.fd = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK) or time.monotonic() > deadline:
                    os.close(self.fd)
                    raise EdgeError('%s%s held %s for more than %ds (%s)'
                                    % (self.prefix, self.holder, self.path, self.timeout, exc.strerror))
                time.sleep(0.05)

    def __exit__(self, *exc):
        os.close(self.fd)


def host_lock():
    """flock(/run/anycast-edge.lock), failing with 'nothing was changed'."""
    return FileLock(HOST_LOCK_PATH, HOST_LOCK_TIMEOUT, 'another anycast.edge run', prefix='nothing was changed: ')


def xtables_lock():
    return FileLock(XTABLES_LOCK_PATH, XTABLES_LOCK_TIMEOUT, 'another iptables user')
