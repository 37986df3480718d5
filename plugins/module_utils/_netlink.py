# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Netlink through pyroute2, for both 0.7.x (Debian 12) and 0.9.x (PyPI).

Only the small API surface that behaves the same in both series is used:
``IPRoute()`` without ``netns=`` (the process has already entered its
namespace, see _netns), ``route``/``link``/``addr``/``rule`` with explicit
numeric fields, and ``get_attr`` on the returned messages.
"""

from __future__ import annotations

import errno
import os
import socket

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: F401  pylint: disable=unused-import
    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None
except ImportError as _exc:  # reported by require_pyroute2()
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = _exc
    IPRoute = None

    class NetlinkError(Exception):  # type: ignore[no-redef]
        code = 0

# Ownership tag: every route (and policy rule) the collection creates carries
# this routing protocol number, so a purge never removes anybody else's.
# 172 is unassigned in iproute2's rt_protos and reads as "AC" in hex.
ROUTE_PROTO = 172

TABLE_MAIN = 254
TABLE_LOCAL = 255
RTN_UNICAST = 1
RTN_LOCAL = 2
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


class NetlinkFailure(Exception):
    """A kernel refusal, already phrased as a sentence for the user."""


def require_pyroute2(module):
    if not HAS_PYROUTE2:
        module.fail_json(msg='this module needs the Python library pyroute2 on the managed host '
                             '(Debian/Ubuntu: apt install python3-pyroute2; or pip install pyroute2): %s'
                             % PYROUTE2_IMPORT_ERROR)


def open_iproute():
    """An IPRoute socket in the current namespace, with readable kernel errors."""
    for kwargs in ({'ext_ack': True, 'strict_check': True}, {'ext_ack': True}, {}):
        try:
            return IPRoute(**kwargs)
        except TypeError:
            continue
    return IPRoute()


def kernel_says(exc):
    """'File exists (errno 17)' from a NetlinkError or OSError."""
    code = getattr(exc, 'code', None) or getattr(exc, 'errno', None) or 0
    text = ''
    args = getattr(exc, 'args', ())
    if len(args) > 1 and isinstance(args[1], str):
        text = args[1]
    if not text and code:
        text = os.strerror(code)
    if not text:
        text = str(exc)
    return '%s (errno %s)' % (text, code) if code else text


def failure(what, exc, hint=None):
    """Build a NetlinkFailure naming the object and what the kernel said."""
    msg = '%s: the kernel refused: %s' % (what, kernel_says(exc))
    code = getattr(exc, 'code', None)
    if hint is None and code == errno.EOPNOTSUPP:
        hint = 'the running kernel lacks the feature this object needs'
    if hint:
        msg += '; %s' % hint
    return NetlinkFailure(msg)


def get_attr(msg, name, default=None):
    value = msg.get_attr(name)
    return default if value is None else value


def link_index(ipr, name):
    """Interface index by name in the current namespace, or None."""
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_names(ipr):
    return {msg['index']: get_attr(msg, 'IFLA_IFNAME') for msg in ipr.get_links()}


def dump_routes(ipr, family, table, proto=None):
    """All routes of one family and table (optionally one protocol), as dicts.

    pyroute2 0.9 returns generators; both series accept these filters.
    """
    found = []
    for msg in ipr.route('dump', family=FAMILY[family], table=table):
        if get_attr(msg, 'RTA_TABLE', msg['table']) != table:
            continue
        if proto is not None and msg['proto'] != proto:
            continue
        found.append({
            'family': family,
            'dst': get_attr(msg, 'RTA_DST', '0.0.0.0' if family == 4 else '::'),
            'dst_len': msg['dst_len'],
            'type': msg['type'],
            'scope': msg['scope'],
            'proto': msg['proto'],
            'oif': get_attr(msg, 'RTA_OIF'),
            'prefsrc': get_attr(msg, 'RTA_PREFSRC'),
            'gateway': get_attr(msg, 'RTA_GATEWAY'),
            'priority': get_attr(msg, 'RTA_PRIORITY'),
            'table': table,
        })
    return found
