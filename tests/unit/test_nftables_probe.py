"""_nftables uses the python3-nftables binding only where two live contexts can both be freed.

Debian 11's libnftables 0.9.8 aborts the process with a double free when the second of two
contexts is freed (seen in molecule on Debian 11: the tenant module died after applying). The
probe runs that sequence in a forked child; here a stand-in binding that aborts the same way,
one that does not, and this machine's real binding.
"""

import os
import subprocess

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
    # python3-nftables (scripts/apt-packages.txt) is importable by the system's Python, which runs the
    # modules on a managed host, not by the test venv
    collections = os.path.join(os.path.dirname(__file__), '..', '..', 'build', 'collections')
    probe = ('from nftables import Nftables\n'
             'from ansible_collections.anycast.edge.plugins.module_utils import _nftables\n'
             'print(_nftables._contexts_coexist(Nftables), _nftables.Nft().backend)\n')
    out = subprocess.run(['/usr/bin/python3', '-c', probe], env=dict(os.environ, PYTHONPATH=collections),
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ['True', 'python3-nftables']
