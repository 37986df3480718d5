# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nftables through the distribution's binding: the ``nftables`` module of python3-nftables.

The binding wraps libnftables (``libnftables.so.1``). A context opens its
netlink socket in the network namespace of the thread that creates it: create
one inside ``_netns.in_netns`` and run every command of that namespace through
it. Commands are nft's own language (the tenants' rules are written in it);
one buffer is one kernel transaction.
"""

from __future__ import annotations

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError


class Nft(object):
    """One nftables context in the namespace of the thread that creates it.

    Listings are stateless (no counter values), so a listing is a stable
    picture of the ruleset.
    """

    def __init__(self):
        try:
            # imported here: only tenants need it
            from nftables import Nftables  # pylint: disable=import-outside-toplevel
        except ImportError as exc:
            raise EdgeError('this module needs the nftables Python binding on the managed host (Debian/Ubuntu: '
                            'apt install python3-nftables): %s' % exc)
        self._ctx = Nftables()
        self._ctx.set_stateless_output(True)

    def run(self, commands, dry_run=False):
        """Run nft commands (one buffer = one transaction); return (ok, output, error).

        ``dry_run`` has the kernel check the whole transaction and then abort
        it (``nft --check``): nothing changes either way.
        """
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
