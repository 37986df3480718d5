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

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    PYROUTE2_IMPORT_ERROR = None
except ImportError as _exc:  # reported by open_iproute()
    PYROUTE2_IMPORT_ERROR = _exc
    IPRoute = None

    class NetlinkError(Exception):  # type: ignore[no-redef]
        code = 0


def require_pyroute2():
    if PYROUTE2_IMPORT_ERROR is not None:
        raise EdgeError('this module needs the Python library pyroute2 on the managed host '
                        '(Debian/Ubuntu: apt install python3-pyroute2; or pip install pyroute2): %s'
                        % PYROUTE2_IMPORT_ERROR)


def open_iproute():
    """An IPRoute socket in the current thread's namespace, with readable kernel errors."""
    require_pyroute2()
    for kwargs in ({'ext_ack': True, 'strict_check': True}, {'ext_ack': True}, {}):
        try:
            return IPRoute(**kwargs)
        except TypeError:
            continue
    return IPRoute()


def call(what, func, *args, **kwargs):
    """func(*args, **kwargs); a kernel refusal becomes an EdgeError naming WHAT.

    ``ignore``: errno values that mean the change is already there (gone, exists).
    """
    ignore = kwargs.pop('ignore', ())
    try:
        return func(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code in ignore:
            return None
        raise failure(what, exc)
