"""_nftables uses libnftables only where two live contexts can both be freed.

Debian 11's libnftables 0.9.8 aborts the process with a double free when the second of two
contexts is freed (seen in molecule on Debian 11: the tenant module died after applying). The
probe runs that sequence in a forked child; here a stand-in library that aborts the same way,
one that does not, and this machine's real library.
"""

import ctypes
import os

from ansible_collections.anycast.edge.plugins.module_utils import _nftables


class StandInLibrary(object):
    def __init__(self, abort_on_second_free):
        self.abort_on_second_free = abort_on_second_free
        self.contexts = 0
        self.freed = 0

    def nft_ctx_new(self, _flags):
        self.contexts += 1
        return self.contexts

    def nft_ctx_buffer_output(self, _ctx):
        return 0

    nft_ctx_buffer_error = nft_ctx_buffer_output

    def nft_run_cmd_from_buffer(self, _ctx, _buffer):
        return 0

    def nft_ctx_free(self, _ctx):
        self.freed += 1
        if self.abort_on_second_free and self.freed == 2:
            os.abort()  # what glibc does on a double free


def test_a_library_that_aborts_on_the_second_free_is_not_used():
    assert _nftables._contexts_coexist(StandInLibrary(abort_on_second_free=True)) is False


def test_a_library_that_frees_both_is_used():
    assert _nftables._contexts_coexist(StandInLibrary(abort_on_second_free=False)) is True


def test_this_machines_libnftables_passes_the_probe():
    lib = ctypes.CDLL('libnftables.so.1')  # libnftables1 is in scripts/apt-packages.txt
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    assert _nftables._contexts_coexist(lib) is True
