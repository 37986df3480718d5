# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The python-iptables (libiptc) xtables driver: legacy tables only.

Holds ``/run/xtables.lock`` while it reads, modifies and commits (libiptc
takes no lock of its own), commits explicitly (the library's autocommit
swallows errors). One commit per table is atomic. The rules it writes are the
model Rules of ``_xtables``, byte for byte what the CLI writes.
"""

from __future__ import annotations

import ctypes
import importlib.util
import ipaddress
import os
import pickle

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError
from ansible_collections.anycast.edge.plugins.module_utils._lock import xtables_lock
from ansible_collections.anycast.edge.plugins.module_utils._xtables import (
    TAG_RE, IptablesCliDriver, SavedRule, TableState, _quote)

# python-iptables is imported only when its driver is used: the import alone
# costs about half a second (it pulls in distutils to find libxtables).
iptc = None
HAS_IPTC = importlib.util.find_spec('iptc') is not None
IPTC_IMPORT_ERROR = None if HAS_IPTC else 'No module named iptc'


def _load_iptc():
    global iptc
    if iptc is None:
        try:
            import iptc as loaded  # pylint: disable=import-outside-toplevel
        except Exception as exc:  # ImportError, or XTablesError when libxtables is missing
            raise EdgeError('driver: python-iptables could not be loaded on the managed host: %s' % exc)
        iptc = loaded
        _keep_udata_alive()
    return iptc


def _iptc_value(value):
    if value is None:
        return ''
    if isinstance(value, tuple):
        return [str(v) for v in value]
    return str(value)


def _prefix_len(mask):
    try:
        return ipaddress.ip_network('0.0.0.0/%s' % mask).prefixlen if '.' in mask else \
            ipaddress.ip_network('::/%s' % mask).prefixlen
    except ValueError:
        return mask


def _addr_text(value):
    """libiptc's 'addr/netmask' -> 'addr/len'; None for 'any'."""
    if not value:
        return None
    addr, _sep, mask = value.partition('/')
    if addr in ('0.0.0.0', '::') and mask in ('0.0.0.0', '::', '0'):
        return None
    if not mask:
        return addr
    length = _prefix_len(mask)
    full = 32 if '.' in addr else 128
    return addr if length == full else '%s/%s' % (addr, length)


def iptc_rule_text(rule):
    """A python-iptables Rule in iptables-save syntax (for display and tags)."""
    parts = []
    for flag, value in (('-s', _addr_text(rule.src)), ('-d', _addr_text(rule.dst)),
                        ('-i', rule.in_interface), ('-o', rule.out_interface)):
        if value:
            parts += [flag, value]
    if rule.protocol and rule.protocol not in ('ip', 'all', '0'):
        parts += ['-p', rule.protocol]
    tag = None
    for match in rule.matches:
        parts += ['-m', match.name]
        for key, values in match.get_all_parameters().items():
            parts.append('--' + key)
            parts += [_quote(v) for v in values]
            if key == 'comment' and values and TAG_RE.match(values[0]):
                tag = values[0]
    target = rule.target.name if rule.target else None
    if target:
        parts += ['-j', target]
        for key, values in rule.target.get_all_parameters().items():
            parts.append('--' + key)
            parts += [_quote(v) for v in values]
    return ' '.join(parts), target, tag


def _run_forked(func, *args):
    """Run func(*args) in a forked child and return its (picklable) result.

    libxtables registers an extension only for the address family that is
    current when its shared object is first loaded, and never loads it again:
    once IPv4 used TPROXY (or multiport, hashlimit, ...) in a process, IPv6
    cannot. Each family's libiptc work therefore runs in a child of its own,
    forked from a parent that never loads extensions.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 0
        try:
            os.close(read_fd)
            payload = ('ok', func(*args))
        except EdgeError as exc:
            payload = ('error', str(exc))
        except BaseException as exc:  # report anything, never return into the parent's code
            payload = ('error', '%s: %s' % (type(exc).__name__, exc))
        try:
            with os.fdopen(write_fd, 'wb') as handle:
                handle.write(pickle.dumps(payload))
        except BaseException:
            status = 1
        os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, 'rb') as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    if not data:
        raise EdgeError('the libiptc worker process died without an answer')
    kind, value = pickle.loads(data)
    if kind == 'error':
        raise EdgeError(value)
    return value


def _iptc_table(family, table):
    cls = iptc.Table6 if family == 6 else iptc.Table
    tbl = cls(table, autocommit=False)
    tbl.refresh()
    return tbl


def _iptc_read(family, tables):
    found = {}
    with xtables_lock():
        for table in tables:
            tbl = _iptc_table(family, table)
            chains = {}
            for chain in tbl.chains:
                saved = []
                for rule in chain.rules:
                    text, target, tag = iptc_rule_text(rule)
                    packets, bytes_ = rule.get_counters()
                    saved.append(SavedRule(chain.name, text, target, tag, packets, bytes_))
                chains[chain.name] = saved
            found[table] = TableState(family, table, chains)
    return found


def iptc_build(family, rule):
    """Turn a model Rule into a python-iptables rule (in the worker process)."""
    built = iptc.Rule6() if family == 6 else iptc.Rule()
    if rule.src:
        built.src = rule.src
    if rule.dst:
        built.dst = rule.dst
    if rule.protocol:
        built.protocol = rule.protocol
    if rule.in_iface:
        built.in_interface = rule.in_iface
    if rule.out_iface:
        built.out_interface = rule.out_iface
    for name, opts in rule.matches:
        match = built.create_match(name)
        for opt, value in opts:
            match.set_parameter(opt, _iptc_value(value))
        if name in FIXUPS:
            FIXUPS[name](match, dict(opts))
    comment = built.create_match('comment')
    comment.comment = rule.tag
    target = built.create_target(rule.target)
    for opt, value in rule.target_options:
        target.set_parameter(opt, _iptc_value(value))
    return built


def _iptc_apply(family, table, ops):
    with xtables_lock():
        tbl = _iptc_table(family, table)
        try:
            for kind, chain_name, payload in ops:
                if kind == 'replace_chain':
                    if not tbl.is_chain(chain_name):
                        tbl.create_chain(chain_name)
                    chain = iptc.Chain(tbl, chain_name)
                    chain.flush()
                    for rule in payload:
                        chain.append_rule(iptc_build(family, rule))
                elif kind == 'insert':
                    iptc.Chain(tbl, chain_name).insert_rule(iptc_build(family, payload))
                elif kind == 'delete':
                    chain = iptc.Chain(tbl, chain_name)
                    for rule in chain.rules:
                        if iptc_rule_text(rule)[0] == payload.text:
                            chain.delete_rule(rule)
                            break
                elif kind == 'delete_chain':
                    chain = iptc.Chain(tbl, chain_name)
                    chain.flush()
                    tbl.delete_chain(chain_name)
            tbl.commit()
        except Exception as exc:  # iptc.IPTCError, XTablesError, ValueError from extensions
            raise EdgeError('libiptc refused the change to the %s %s table (nothing was applied, '
                            'a commit is atomic): %s' % ('IPv6' if family == 6 else 'IPv4', table, exc))
    return True


class PythonIptablesDriver(object):
    name = 'python-iptables'

    def __init__(self, module=None):
        self.module = module
        _load_iptc()  # in the parent, so the forked workers share the import

    def drop_unused_table(self, family, table):
        """Legacy tables always exist: nothing to remove."""

    def read(self, family, tables):
        return _run_forked(_iptc_read, family, list(tables))

    def apply(self, family, table, ops):
        if any(isinstance(payload, SavedRule) or (kind == 'replace_chain' and any(
                isinstance(r, SavedRule) for r in payload)) for kind, _c, payload in ops):
            # Rules read back from the kernel (a rollback) exist only as text;
            # the legacy CLI restores them into the same legacy tables.
            return IptablesCliDriver(self.module, 'legacy', legacy_names=True).apply(family, table, ops)
        return _run_forked(_iptc_apply, family, table, ops)


# --------------------------------------------------------------------------
# Extensions whose python-iptables objects need a fix-up before commit:
# name -> callable(match, options dict).
#
# hashlimit: libxt_hashlimit keeps the rate's unit in a per-extension scratch
# buffer (udata) between parsing and the final check, which derives the
# default htable-expire from it. python-iptables allocates that buffer as a
# local in Match.reset() and lets it be freed on return, and its final_check()
# resets and re-parses the saved match; the check then reads freed memory and
# the kernel refuses the rule (EINVAL). Each hashlimit Match owns a buffer for
# its whole life here, and the collection's rules always carry an explicit
# expire, so the committed rule is byte for byte the one the iptables CLI
# writes.

_PATCHED = []


def _keep_udata_alive():
    if _PATCHED:
        return
    match_cls = iptc.Match
    original_reset = match_cls.reset

    def reset(self):
        original_reset(self)
        size = getattr(self._module, 'udata_size', 0)
        if size and self._name == 'hashlimit':
            keep = self.__dict__.get('_ae_udata')
            if keep is None or len(keep) < size:
                keep = (ctypes.c_ubyte * size)()
                object.__setattr__(self, '_ae_udata', keep)
            ctypes.memset(ctypes.byref(keep), 0, size)
            self._module.udata = ctypes.cast(ctypes.byref(keep), ctypes.c_void_p)

    match_cls.reset = reset
    _PATCHED.append(original_reset)


def _hashlimit_fixup(match, options):
    """Parse the options again with the buffer in place."""
    match.reset()
    for opt, value in options.items():
        match.set_parameter(opt, '' if value is None else str(value))


FIXUPS = {'hashlimit': _hashlimit_fixup}
