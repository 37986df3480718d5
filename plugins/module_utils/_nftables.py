# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nftables through the distribution's binding: the ``nftables`` module of python3-nftables.

The binding wraps libnftables (``libnftables.so.1``). A context opens its
netlink socket in the network namespace of the thread that creates it: create
one inside ``_netns.in_netns`` and run every command of that namespace through
it. Commands are nft's own language (the tenants' rules are written in it);
one buffer is one kernel transaction.

Where the library cannot hold two contexts at once (0.9.8, Debian 11: freeing
the second one aborts the process with a double free), the ``nft`` command is
run with ``-f -`` instead, in the namespace the Nft was created in (held open
as a descriptor and entered with ``nsenter``), as a context's socket would be.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError

_BINDING = {}   # 'class': the binding's Nftables class, or 'error': why it is not used (probed once)


def _binding():
    """The binding's Nftables class, or None (the reason in _BINDING['error'])."""
    if not _BINDING:
        try:
            # imported here: only tenants need it
            from nftables import Nftables  # pylint: disable=import-outside-toplevel
        except ImportError as exc:
            _BINDING['error'] = 'the nftables Python binding is missing (Debian/Ubuntu: apt install ' \
                                'python3-nftables): %s' % exc
        else:
            if _contexts_coexist(Nftables):
                _BINDING['class'] = Nftables
            else:
                _BINDING['error'] = 'libnftables cannot hold two contexts at once (0.9.8 frees shared tables ' \
                                    'twice and aborts)'
    return _BINDING.get('class')


def _contexts_coexist(nftables_class):
    """Whether two live contexts can both be freed, tried in a forked child.

    The tenant module keeps a context per namespace. libnftables 0.9.8 keeps tables of each context in
    globals, so the second nft_ctx_free() is a double free, which glibc answers with abort(). Whether
    the library at hand does that is a property of its code, not of a version number it would tell.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only reports through its exit status
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)  # glibc's "double free" message is not ours to print
            contexts = [nftables_class(), nftables_class()]
            for index in range(2):
                contexts[index].cmd('list tables')
            del contexts[:]     # both freed here, the second one last
        finally:
            os._exit(0)
    _pid, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


class Nft(object):
    """One nftables context in the namespace of the thread that creates it.

    Listings are stateless (no counter values), so a listing is a stable
    picture of the ruleset.
    """

    def __init__(self):
        self._ctx = None
        self._binary = None
        self._netns_fd = None
        nftables_class = _binding()
        if nftables_class is not None:
            self._ctx = nftables_class()
            self._ctx.set_stateless_output(True)
        else:
            self._binary = shutil.which('nft')
            if not self._binary:
                raise EdgeError('this module needs nftables on the managed host (Debian/Ubuntu: apt install '
                                'python3-nftables nftables): %s, and the nft command is not installed'
                                % _BINDING['error'])
            self._nsenter = shutil.which('nsenter')
            if not self._nsenter:
                raise EdgeError('the nft command needs nsenter (util-linux) to run in a namespace')
            self._netns_fd = os.open('/proc/thread-self/ns/net', os.O_RDONLY | os.O_CLOEXEC)

    @property
    def backend(self):
        return 'python3-nftables' if self._ctx is not None else 'nft'

    def run(self, commands, dry_run=False):
        """Run nft commands (one buffer = one transaction); return (ok, output, error).

        ``dry_run`` has the kernel check the whole transaction and then abort
        it (``nft --check``): nothing changes either way.
        """
        if self._ctx is None:
            args = [self._nsenter, '--net=/proc/self/fd/%d' % self._netns_fd, self._binary, '-s'] + \
                (['-c'] if dry_run else []) + ['-f', '-']
            proc = subprocess.run(args, input=commands, capture_output=True, text=True, check=False,
                                  pass_fds=(self._netns_fd,))
            return proc.returncode == 0, proc.stdout, proc.stderr
        if dry_run:
            self._ctx.set_dry_run(True)
        try:
            rc, out, err = self._ctx.cmd(commands)
        finally:
            if dry_run:
                self._ctx.set_dry_run(False)
        return rc == 0, out, err

    def close(self):
        """Drop the context: the binding frees it (and its socket) when the last reference goes."""
        self._ctx = None
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
