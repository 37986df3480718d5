# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A minimal binding to libnftables (``libnftables.so.1``) through ctypes.

There is no maintained binding on PyPI, and Debian's python3-nftables is not
importable from a virtualenv; the library's C API is small and stable, so we
call it directly. A context binds its netlink socket to the network namespace
of the thread that creates it: create one inside ``_netns.in_netns`` and run
every command of that namespace through it while still inside.

When the library is missing, or cannot hold two contexts at once (0.9.8, Debian
11: freeing the second one aborts the process with a double free), the ``nft``
binary is run with ``-f -`` instead (a child process inherits the calling
thread's namespace, so that also works inside ``in_netns``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess

# include/nftables/libnftables.h
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_STATELESS = 1 << 2   # no counter values, quota usage ...
NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(Exception):
    """nft refused a command; the text is nft's own error message."""


_LIB = None
_LIB_ERROR = None


def _load():
    global _LIB, _LIB_ERROR
    if _LIB is not None or _LIB_ERROR is not None:
        return _LIB
    names = ['libnftables.so.1']
    found = ctypes.util.find_library('nftables')
    if found and found not in names:
        names.append(found)
    for name in names:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            break
        except OSError as exc:
            _LIB_ERROR = exc
    else:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.restype = None
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
    lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.restype = None
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_buffer_output.restype = ctypes.c_int
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.restype = ctypes.c_int
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_set_dry_run.restype = None
    lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    if not _contexts_coexist(lib):
        _LIB_ERROR = OSError('%s cannot hold two contexts at once (libnftables 0.9.8 frees shared '
                             'tables twice and aborts)' % name)
        return None
    _LIB = lib
    _LIB_ERROR = None
    return lib


def _contexts_coexist(lib):
    """Whether two live contexts can both be freed, tried in a forked child.

    The tenant module keeps a context per namespace. libnftables 0.9.8 keeps tables of
    each context in globals, so the second nft_ctx_free() is a double free, which glibc
    answers with abort(). Whether the library at hand does that is a property of its
    code, not of a version number the library would tell.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only reports through its exit status
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)  # glibc's "double free" message is not ours to print
            first, second = lib.nft_ctx_new(NFT_CTX_DEFAULT), lib.nft_ctx_new(NFT_CTX_DEFAULT)
            for ctx in (first, second):
                lib.nft_ctx_buffer_output(ctx)
                lib.nft_ctx_buffer_error(ctx)
                lib.nft_run_cmd_from_buffer(ctx, b'list tables')
            lib.nft_ctx_free(first)
            lib.nft_ctx_free(second)
        finally:
            os._exit(0)
    _pid, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def available():
    """True when libnftables or the nft binary can be used."""
    return _load() is not None or shutil.which('nft') is not None


class Nft(object):
    """One nftables context in the namespace of the thread that creates it.

    ``stateless`` output leaves counter values out of listings, so a listing
    is a stable picture of the ruleset.
    """

    def __init__(self, stateless=True):
        self.stateless = stateless
        self._ctx = None
        lib = _load()
        if lib is not None:
            ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
            if not ctx:
                raise NftError('libnftables could not create a context')
            self._ctx = ctx
            if stateless:
                lib.nft_ctx_output_set_flags(ctx, lib.nft_ctx_output_get_flags(ctx) | NFT_CTX_OUTPUT_STATELESS)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
        else:
            self._binary = shutil.which('nft')
            if not self._binary:
                raise NftError('the nft command (package nftables) is not installed, and libnftables cannot '
                               'be used: %s' % _LIB_ERROR)

    @property
    def backend(self):
        return 'libnftables' if self._ctx else 'nft'

    def run(self, commands, dry_run=False):
        """Run nft commands (one buffer = one transaction); return (ok, output, error).

        ``dry_run`` has the kernel check the whole transaction and then abort
        it (``nft --check``): nothing changes either way.
        """
        if self._ctx:
            if dry_run:
                _LIB.nft_ctx_set_dry_run(self._ctx, True)
            try:
                rc = _LIB.nft_run_cmd_from_buffer(self._ctx, commands.encode('utf-8'))
            finally:
                if dry_run:
                    _LIB.nft_ctx_set_dry_run(self._ctx, False)
            out = _LIB.nft_ctx_get_output_buffer(self._ctx) or b''
            err = _LIB.nft_ctx_get_error_buffer(self._ctx) or b''
            return rc == 0, out.decode('utf-8', 'replace'), err.decode('utf-8', 'replace')
        args = [self._binary] + (['-s'] if self.stateless else []) + (['-c'] if dry_run else []) + ['-f', '-']
        proc = subprocess.run(args, input=commands, capture_output=True, text=True, check=False)
        return proc.returncode == 0, proc.stdout, proc.stderr

    def close(self):
        if self._ctx:
            _LIB.nft_ctx_free(self._ctx)
            self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
