"""_nftables uses the python3-nftables binding only where two live contexts can both be freed.

Debian 11's libnftables 0.9.8 aborts the process with a double free when the second of two
contexts is freed (seen in molecule on Debian 11: the tenant module died after applying). The
probe runs that sequence in a forked child; here a stand-in binding that aborts the same way,
one that does not, and this machine's real binding.
"""

import os

from ansible_collections.anycast.edge.plugins.module_utils import _nftables


def stand_in_binding(abort_on_second_free):
    freed = []

    class Nftables(object):
        def cmd(self, _commands):
            return 0, '', ''

        def __del__(self):
            freed.append(self)
            if abort_on_second_free and len(freed) == 2:
                os.abort()  # what glibc does on a double free

    return Nftables


def test_a_binding_that_aborts_on_the_second_free_is_not_used():
    assert _nftables._contexts_coexist(stand_in_binding(abort_on_second_free=True)) is False


def test_a_binding_that_frees_both_is_used():
    assert _nftables._contexts_coexist(stand_in_binding(abort_on_second_free=False)) is True


def test_this_machines_binding_passes_the_probe_and_is_used():
    from nftables import Nftables  # python3-nftables, made importable in the venv by scripts/install-deps.sh
    assert _nftables._contexts_coexist(Nftables) is True
    assert _nftables.Nft().backend == 'python3-nftables'
