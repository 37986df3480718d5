# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Netlink writes through pyroute2, for both 0.7.x (Debian 12) and 0.9.x (PyPI).

Reads go through ``_netlink.RawRtnl``; objects with many attributes (veth
pairs across namespaces, GRE devices, addresses, policy rules) are written
here. Only the API surface that behaves the same in both series is used:
``IPRoute()`` without ``netns=`` (the thread has already entered its
namespace: pyroute2's own ``netns=`` would create a missing one), and
``link``/``addr``/``route``/``rule`` with explicit numeric fields.
"""

from __future__ import annotations

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError
from ansible_collections.anycast.edge.plugins.module_utils._netlink import failure

# Imported when first needed: pyroute2 takes a tenth of a second to import, and
# only modules that write links, addresses or rules need it.
_PYROUTE2 = []


def _pyroute2():
    """(IPRoute, NetlinkError) of pyroute2, imported on first use."""
    if not _PYROUTE2:
        try:
            from pyroute2 import IPRoute  # pylint: disable=import-outside-toplevel
            from pyroute2.netlink.exceptions import NetlinkError  # pylint: disable=import-outside-toplevel
        except ImportError as exc:
            raise EdgeError('this module needs the Python library pyroute2 on the managed host '
                            '(Debian/Ubuntu: apt install python3-pyroute2; or pip install pyroute2): %s' % exc)
        _PYROUTE2.append((IPRoute, NetlinkError))
    return _PYROUTE2[0]


def refused(exc):
    """True when EXC is pyroute2's NetlinkError: the kernel said no."""
    return bool(_PYROUTE2) and isinstance(exc, _PYROUTE2[0][1])


def open_iproute():
    """An IPRoute socket in the current thread's namespace, with readable kernel errors."""
    iproute = _pyroute2()[0]
    for kwargs in ({'ext_ack': True, 'strict_check': True}, {'ext_ack': True}, {}):
        try:
            return iproute(**kwargs)
        except TypeError:
            continue
    return iproute()


def call(what, func, *args, **kwargs):
    """func(*args, **kwargs); a kernel refusal becomes an EdgeError naming WHAT.

    ``ignore``: errno values that mean the change is already there (gone, exists).
    """
    ignore = kwargs.pop('ignore', ())
    try:
        return func(*args, **kwargs)
    except Exception as exc:  # pylint: disable=broad-except
        if not refused(exc):
            raise
        if exc.code in ignore:
            return None
        raise failure(what, exc)
