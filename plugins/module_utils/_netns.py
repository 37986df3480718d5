# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Enter a named network namespace for the whole module run.

Private to the collection. A module calls :func:`enter_netns` once, before it
opens any netlink socket, libiptc handle or libnftables context: all of those
bind to the namespace of the thread that creates them. Nothing here ever
creates a namespace (pyroute2's own ``netns=`` arguments do, which is why we
do not use them).
"""

from __future__ import annotations

import ctypes
import errno
import os

NETNS_RUN_DIR = '/run/netns'
CLONE_NEWNET = 0x40000000


class NetnsError(Exception):
    """A namespace could not be found or entered; the text is for the user."""


def netns_path(name):
    return os.path.join(NETNS_RUN_DIR, name)


def check_netns_name(name):
    """Return an error sentence for a name iproute2 would refuse, else None."""
    if not name:
        return 'must not be empty'
    if name in ('.', '..') or '/' in name or '\x00' in name:
        return "'%s' is not a valid namespace name (no '/', not '.' or '..')" % name
    if len(name) > 255:
        return 'is longer than 255 characters'
    return None


def netns_exists(name):
    return check_netns_name(name) is None and os.path.exists(netns_path(name))


def list_netns():
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


_LIBC = []


def _setns(fd):
    setns = getattr(os, 'setns', None)  # Python >= 3.12
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))  # libc is already loaded: no library search
    if _LIBC[0].setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter_netns(name, param='netns'):
    """Move the calling process into namespace ``name`` (an ``ip netns`` name).

    Raises NetnsError with a sentence naming ``param`` when the namespace does
    not exist or cannot be entered.
    """
    problem = check_netns_name(name)
    if problem:
        raise NetnsError('%s: %s' % (param, problem))
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError("%s: network namespace '%s' does not exist (no %s); "
                         "this module never creates namespaces" % (param, name, path))
    except OSError as exc:
        raise NetnsError("%s: cannot open network namespace '%s': %s" % (param, name, exc.strerror))
    try:
        _setns(fd)
    except OSError as exc:
        hint = ' (entering a namespace needs CAP_SYS_ADMIN)' if exc.errno == errno.EPERM else ''
        raise NetnsError("%s: cannot enter network namespace '%s': %s%s"
                         % (param, name, exc.strerror, hint))
    finally:
        os.close(fd)


def enter_module_netns(module, param='netns'):
    """Enter ``module.params[param]`` if set; fail the module cleanly otherwise."""
    name = module.params.get(param)
    if not name:
        return None
    try:
        enter_netns(name, param)
    except NetnsError as exc:
        module.fail_json(msg=str(exc))
    return name


class in_netns(object):
    """Temporarily switch the calling thread into namespace ``name``.

    Sockets opened inside the block (IPRoute, libnftables contexts, libiptc
    handles) stay bound to that namespace after the block returns, so one
    module run can hold sockets in many namespaces without forking. The
    previous namespace is restored on exit, even on errors.
    """

    def __init__(self, name, param='netns'):
        self.name = name
        self.param = param
        self._home = None

    def __enter__(self):
        self._home = os.open('/proc/thread-self/ns/net', os.O_RDONLY | os.O_CLOEXEC)
        try:
            enter_netns(self.name, self.param)
        except Exception:
            os.close(self._home)
            raise
        return self

    def __exit__(self, *exc):
        try:
            _setns(self._home)
        finally:
            os.close(self._home)
