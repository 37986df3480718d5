# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Network namespaces: named like ``ip netns`` names them; entered, created and deleted here only.

Netlink sockets, libiptc handles and libnftables contexts bind to the
namespace of the thread that creates them, so a module enters its own
namespace once (``enter_netns``) before it opens anything, and opens what it
needs in other namespaces inside ``in_netns``. Nothing but ``create_netns``
ever creates a namespace (pyroute2's own ``netns=`` arguments would, which is
why they are not used).

:class:`Namespaces` keeps one set of handles (a descriptor, a raw rtnetlink
socket, a pyroute2 socket and an nftables context, each opened when first
needed) per namespace, and releases them as soon as the caller is done with
a namespace: with hundreds of tenants, holding them all would exhaust file
descriptors (and libnftables aborts the process on a socket numbered above
FD_SETSIZE, it uses select()).
"""

from __future__ import annotations

import ctypes
import errno
import os

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError
from ansible_collections.anycast.edge.plugins.module_utils._iproute import open_iproute
from ansible_collections.anycast.edge.plugins.module_utils._netlink import RawRtnl
from ansible_collections.anycast.edge.plugins.module_utils._nftables import Nft

NETNS_RUN_DIR = '/run/netns'
THREAD_NETNS = '/proc/thread-self/ns/net'
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_LIBC = []


def _libc():
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))  # libc is loaded already: no library search
    return _LIBC[0]


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, '%s: %s' % (what, os.strerror(err)))


def netns_path(name):
    return os.path.join(NETNS_RUN_DIR, name)


def check_netns_name(name):
    """Return an error sentence for a name iproute2 would refuse, else None."""
    if not name:
        return 'must not be empty'
    if not name.isprintable():
        # a newline or another control character: `ip netns list` and every tool reading it line by line
        # would show (and look up) another name
        return '%r contains a control character; namespace names are printable text' % (name,)
    if name in ('.', '..') or '/' in name:
        return "'%s' is not a valid namespace name (no '/', not '.' or '..')" % name
    if len(name) > 255:
        return 'is longer than 255 characters'
    return None


def exists(name):
    """True when namespace NAME exists (a stale file of a killed creation does not count)."""
    return os.path.exists(netns_path(name)) and not is_stale(name)


def list_netns():
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def host_inode():
    """The inode of the calling thread's namespace: what tenant markers call their host."""
    return os.stat(THREAD_NETNS).st_ino


def setns(fd):
    """Move the calling thread into the network namespace of FD."""
    native = getattr(os, 'setns', None)  # Python >= 3.12
    if native is not None:
        native(fd, CLONE_NEWNET)
        return
    _check(_libc().setns(fd, CLONE_NEWNET), 'setns')


def enter_netns(name, param='netns'):
    """Move the calling thread into namespace NAME (an ``ip netns`` name).

    Raises EdgeError naming PARAM when it does not exist or cannot be entered.
    """
    problem = check_netns_name(name)
    if problem:
        raise EdgeError('%s: %s' % (param, problem))
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise EdgeError("%s: network namespace '%s' does not exist (no %s); "
                        "this module never creates namespaces" % (param, name, path))
    except OSError as exc:
        raise EdgeError("%s: cannot open network namespace '%s': %s" % (param, name, exc.strerror))
    try:
        setns(fd)
    except OSError as exc:
        hint = ' (entering a namespace needs CAP_SYS_ADMIN)' if exc.errno == errno.EPERM else ''
        raise EdgeError("%s: cannot enter network namespace '%s': %s%s" % (param, name, exc.strerror, hint))
    finally:
        os.close(fd)


class in_netns(object):
    """Switch the calling thread into namespace NAME for a block (None: stay where it is).

    What is opened inside (sockets, libiptc handles, nftables contexts, child
    processes) stays in that namespace after the block. The previous namespace
    is restored on exit, even on errors.
    """

    def __init__(self, name, param='netns'):
        self.name = name
        self.param = param
        self._home = None

    def __enter__(self):
        if self.name is None:
            return self
        self._home = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            enter_netns(self.name, self.param)
        except Exception:
            os.close(self._home)
            raise
        return self

    def __exit__(self, *exc):
        if self._home is None:
            return
        try:
            setns(self._home)
        finally:
            os.close(self._home)
            self._home = None


def _shared_run_dir():
    """/run/netns as a shared mount point, so the bind mounts show in every mount namespace."""
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    libc = _libc()
    if libc.mount(b'', NETNS_RUN_DIR.encode(), b'none', MS_SHARED | MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:
        _check(-1, 'making %s a shared mount' % NETNS_RUN_DIR)
    _check(libc.mount(NETNS_RUN_DIR.encode(), NETNS_RUN_DIR.encode(), b'none', MS_BIND | MS_REC, None),
           'bind-mounting %s onto itself' % NETNS_RUN_DIR)
    _check(libc.mount(b'', NETNS_RUN_DIR.encode(), b'none', MS_SHARED | MS_REC, None),
           'making %s a shared mount' % NETNS_RUN_DIR)


def is_stale(name):
    """True when /run/netns/NAME is a plain file with no namespace mounted on it.

    ``ip netns add`` and :func:`create_netns` create that file first and mount the new
    namespace onto it; a process killed in between leaves the file alone, which nothing can
    enter ("Invalid argument") and which blocks creating the name again.
    """
    path = netns_path(name)
    try:
        stat = os.lstat(path)
        parent = os.stat(NETNS_RUN_DIR)
    except OSError:
        return False
    # a mounted namespace shows nsfs's device, a bare file the directory's
    return stat.st_dev == parent.st_dev and os.path.isfile(path) and stat.st_size == 0


def create_netns(name, setup=None):
    """Create namespace NAME as ``ip netns add`` does (unshare + bind mount), without a process.

    SETUP, when given, runs inside the new namespace before it gets its name (sockets it opens
    belong to the new namespace): what it does is there as soon as the name is, so a process
    killed at any point leaves either no namespace (at most a stale file, see :func:`is_stale`)
    or one with SETUP done. A stale file of a previous attempt is replaced.
    The calling thread comes back to where it was.
    """
    path = netns_path(name)
    try:
        _shared_run_dir()
        if is_stale(name):
            os.unlink(path)
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    except OSError as exc:
        raise EdgeError("cannot create network namespace '%s': %s" % (name, exc))
    home = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc().unshare(CLONE_NEWNET), 'unshare')
        if setup is not None:
            setup()
        _check(_libc().mount(THREAD_NETNS.encode(), path.encode(), b'none', MS_BIND, None),
               'bind mount onto %s' % path)
    except (OSError, EdgeError) as exc:
        try:
            os.unlink(path)
        except OSError:
            pass
        if isinstance(exc, EdgeError):
            raise
        raise EdgeError("cannot create network namespace '%s': %s" % (name, exc.strerror))
    finally:
        try:
            setns(home)
        finally:
            os.close(home)


def delete_netns(name):
    """``ip netns del``: unmount and remove the name (the kernel frees it once unused)."""
    path = netns_path(name)
    if _libc().umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise EdgeError("cannot delete network namespace '%s': %s" % (name, os.strerror(err)))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise EdgeError("cannot delete network namespace '%s': %s" % (name, exc.strerror))


class Handles(object):
    """What one namespace's work needs, each opened inside it when first used.

    NAME None is the namespace the module runs in (nothing to enter).
    """

    def __init__(self, name):
        self.name = name
        self._rt = None
        self._ipr = None
        self._nft = None
        self._fd = None

    def inside(self):
        return in_netns(self.name)

    @property
    def rt(self):
        """The raw rtnetlink socket (reads, bulk routes)."""
        if self._rt is None:
            with self.inside():
                self._rt = RawRtnl()
        return self._rt

    @property
    def ipr(self):
        """The pyroute2 socket (writes)."""
        if self._ipr is None:
            with self.inside():
                self._ipr = open_iproute()
        return self._ipr

    @property
    def nft(self):
        if self._nft is None:
            with self.inside():
                self._nft = Nft()
        return self._nft

    @property
    def fd(self):
        """A descriptor of the namespace (to move devices into it, to ask for ids)."""
        if self._fd is None:
            path = THREAD_NETNS if self.name is None else netns_path(self.name)
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return self._fd

    def sysctl(self, path, value=None):
        """Read (VALUE None) or write a /proc/sys file as this namespace sees it, or None if unreadable."""
        with self.inside():   # /proc/sys/net follows the calling thread's namespace
            if value is None:
                return read_sysctl(path)
            write_sysctl(path, value)
            return value

    def close(self, keep_nft=False):
        """Close everything; with KEEP_NFT hand the nftables context back instead of freeing it."""
        nft, self._nft = self._nft, None
        for handle in (self._rt, self._ipr):
            if handle is not None:
                handle.close()
        self._rt = self._ipr = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if nft is not None and not keep_nft:
            nft.close()
        return nft


class Namespaces(object):
    """Handles by namespace name; the module's own namespace is ``host``."""

    # Freeing an nftables context right after a transaction that deleted something
    # waits for the kernel to release the old objects (an RCU grace period, ~10 ms);
    # a few dozen namespaces later the wait is over.
    NFT_CLOSE_LAG = 32

    def __init__(self):
        self.host = Handles(None)
        self.host_stat = os.fstat(self.host.fd)
        self._open = {}
        self._nft_closing = []

    def get(self, name):
        if name not in self._open:
            self._open[name] = Handles(name)
        return self._open[name]

    def is_host(self, name):
        """True when NAME is the very namespace the module runs in."""
        stat = os.fstat(self.get(name).fd)
        return (stat.st_dev, stat.st_ino) == (self.host_stat.st_dev, self.host_stat.st_ino)

    def release(self, name):
        """Close the namespace's handles (opened again when next needed)."""
        handles = self._open.pop(name, None)
        if handles is None:
            return
        nft = handles.close(keep_nft=True)
        if nft is not None:
            self._nft_closing.append(nft)
            if len(self._nft_closing) > self.NFT_CLOSE_LAG:
                self._nft_closing.pop(0).close()

    def close(self):
        for name in list(self._open):
            self.release(name)
        while self._nft_closing:
            self._nft_closing.pop(0).close()
        self.host.close()


def read_sysctl(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def write_sysctl(path, value):
    try:
        with open(path, 'w') as handle:
            handle.write(value)
    except OSError as exc:
        raise EdgeError('cannot set %s to %s: %s' % (sysctl_name(path), value, exc.strerror))


def sysctl_name(path):
    """'/proc/sys/net/ipv4/ip_forward' -> 'net.ipv4.ip_forward'."""
    return path.replace('/proc/sys/', '').replace('/', '.')
