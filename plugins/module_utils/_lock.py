# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""flock-based locks shared between processes (and with iptables itself)."""

from __future__ import annotations

import errno
import fcntl
import os
import time


class LockTimeout(Exception):
    """The lock stayed taken for longer than the timeout; the text is for the user."""


class FileLock(object):
    """Exclusive flock on PATH, polled until TIMEOUT seconds have passed."""

    def __init__(self, path, timeout, holder):
        self.path = path
        self.timeout = timeout
        self.holder = holder  # who else takes it, for the error message
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
                    raise LockTimeout('%s held %s for more than %ds (%s)'
                                      % (self.holder, self.path, self.timeout, exc.strerror))
                time.sleep(0.05)

    def __exit__(self, *exc):
        os.close(self.fd)
