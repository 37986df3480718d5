# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One xtables rule model, two drivers.

The collection owns whole chains (``ANYCAST-TPROXY``, ``RATE-LIMIT``, ...) and
the jumps into them. Every rule it writes carries a comment
``anycast.edge <digest>`` where the digest covers the rule's full
specification, so the state of a chain is compared as a list of digests: no
need to predict how each extension prints itself, identical for both drivers.

Drivers:

* ``iptables``: the host's own ``iptables-save`` / ``iptables-restore
  --noflush --wait``; follows whichever variant (nf_tables or legacy) the host
  uses. One save and one restore per address family and table: each restore is
  one kernel transaction.
* ``python-iptables``: libiptc through the python-iptables library, legacy
  tables only. Holds ``/run/xtables.lock`` while it reads, modifies and commits,
  commits explicitly (the library's autocommit swallows errors) and retries on
  EAGAIN. One libiptc commit per table is atomic.

``driver: auto`` looks at ``iptables -V`` and never writes into the variant the
host does not use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import re

from ansible_collections.anycast.edge.plugins.module_utils._lock import FileLock, LockTimeout

OWNER = 'anycast.edge'
TAG_RE = re.compile(r'^anycast\.edge ([0-9a-f]{12})$')
XTABLES_LOCK = '/run/xtables.lock'
LOCK_TIMEOUT = 30.0
DRIVERS = ('auto', 'python-iptables', 'iptables')


class XtablesError(Exception):
    """A failure already phrased for the user."""


def _quote(value):
    """Quote a value for iptables-restore (same rules as iptables-save)."""
    if value == '' or re.search(r'[\s"\'\\]', value):
        return '"%s"' % value.replace('\\', '\\\\').replace('"', '\\"')
    return value


def _option(opt, value):
    """``--opt`` with no value (None), one value, or several (a tuple: ``--tcp-flags SYN,RST SYN``)."""
    if value is None:
        return ['--' + opt]
    if isinstance(value, tuple):
        return ['--' + opt] + [str(v) for v in value]
    return ['--' + opt, str(value)]


def _iptc_value(value):
    if value is None:
        return ''
    if isinstance(value, tuple):
        return [str(v) for v in value]
    return str(value)


class Rule(object):
    """A rule of an owned chain (or a jump into one), independent of the driver.

    ``matches`` is a sequence of ``(extension, ((option, value or None), ...))``
    and ``target_options`` a sequence of ``(option, value or None)``; a value
    that is a tuple gives the option several words. Option
    names are written without the leading dashes, exactly as the iptables CLI
    spells them.
    """

    def __init__(self, family, target, target_options=(), src=None, dst=None, protocol=None,
                 in_iface=None, out_iface=None, matches=()):
        self.family = family
        self.src = src
        self.dst = dst
        self.protocol = protocol
        self.in_iface = in_iface
        self.out_iface = out_iface
        self.matches = tuple((name, tuple(opts)) for name, opts in matches)
        self.target = target
        self.target_options = tuple(target_options)

    def _args(self, with_comment):
        args = []
        for flag, value in (('-s', self.src), ('-d', self.dst), ('-i', self.in_iface),
                            ('-o', self.out_iface), ('-p', self.protocol)):
            if value:
                args += [flag, str(value)]
        for name, opts in self.matches:
            args += ['-m', name]
            for opt, value in opts:
                args += _option(opt, value)
        if with_comment:
            args += ['-m', 'comment', '--comment', self.tag]
        args += ['-j', self.target]
        for opt, value in self.target_options:
            args += _option(opt, value)
        return args

    @property
    def tag(self):
        spec = 'v%d %s' % (self.family, ' '.join(self._args(False)))
        return '%s %s' % (OWNER, hashlib.sha1(spec.encode()).hexdigest()[:12])

    def restore_text(self):
        return ' '.join(_quote(a) for a in self._args(True))

    def __repr__(self):
        return 'Rule(%s)' % self.restore_text()


class Jump(object):
    """A rule in a built-in chain that enters an owned chain."""

    def __init__(self, from_chain, rule):
        self.from_chain = from_chain
        self.rule = rule


class ChainSpec(object):
    """The desired content of one owned chain, and the jumps into it."""

    def __init__(self, family, table, name, rules, jumps=(), present=True):
        self.family = family
        self.table = table
        self.name = name
        self.rules = list(rules)
        self.jumps = list(jumps)
        self.present = present  # False: the chain and every jump into it go


class SavedRule(object):
    """A rule as read from the kernel."""

    def __init__(self, chain, text, target, tag, packets=0, bytes_=0):
        self.chain = chain
        self.text = text        # iptables-save syntax, without '-A CHAIN'
        self.target = target
        self.tag = tag          # our ownership tag, or None
        self.packets = packets
        self.bytes = bytes_

    def restore_text(self):
        return self.text


class TableState(object):
    def __init__(self, family, table, chains, policies=None):
        self.family = family
        self.table = table
        self.chains = chains    # name -> [SavedRule], built-in and user chains
        self.policies = policies or {}  # built-in chain -> policy

    def is_pristine(self):
        """Only built-in chains, no rules, every policy ACCEPT: a table nobody uses."""
        return all(not rules and self.policies.get(name) == 'ACCEPT' for name, rules in self.chains.items())

    def rules_jumping_to(self, chain):
        return [r for rules in self.chains.values() for r in rules if r.target == chain]


# --------------------------------------------------------------------------
# Planning: compare tags, produce per-table operation lists.

def _plan_table(state, specs):
    ops = []
    for spec in specs:
        existing = state.chains.get(spec.name)
        if spec.present:
            if existing is None or [r.tag for r in existing] != [r.tag for r in spec.rules]:
                ops.append(('replace_chain', spec.name, spec.rules))
            # All jumps from one built-in chain are compared as an ordered list
            # (a scope of several prefixes needs several jumps).
            wanted_by_chain = {}
            for jump in spec.jumps:
                wanted_by_chain.setdefault(jump.from_chain, []).append(jump.rule)
            for from_chain, wanted in wanted_by_chain.items():
                current = [r for r in state.chains.get(from_chain, []) if r.target == spec.name]
                if [r.tag for r in current] == [rule.tag for rule in wanted]:
                    continue
                for saved in current:
                    ops.append(('delete', from_chain, saved))
                for rule in reversed(wanted):  # each is inserted at position 1
                    ops.append(('insert', from_chain, rule))
            # jumps from chains the spec no longer names
            wanted_from = set(j.from_chain for j in spec.jumps)
            for chain_name, rules in state.chains.items():
                if chain_name in wanted_from or chain_name == spec.name:
                    continue
                for saved in rules:
                    if saved.target == spec.name:
                        ops.append(('delete', chain_name, saved))
        elif existing is not None or state.rules_jumping_to(spec.name):
            for saved in state.rules_jumping_to(spec.name):
                ops.append(('delete', saved.chain, saved))
            if existing is not None:
                ops.append(('delete_chain', spec.name, None))
    # deletions of jumps first, then chain (re)creation, then inserts, then drops:
    # a jump never points at a missing chain inside the transaction.
    order = {'delete': 0, 'replace_chain': 1, 'insert': 2, 'delete_chain': 3}
    ops.sort(key=lambda op: order[op[0]])
    return ops


def render_state(state, specs):
    """Lines describing the owned chains and their jumps, for diff output."""
    lines = []
    for spec in specs:
        for saved in state.rules_jumping_to(spec.name):
            lines.append('-A %s %s' % (saved.chain, saved.text))
        for saved in state.chains.get(spec.name, []) or []:
            lines.append('-A %s %s' % (spec.name, saved.text))
    return lines


def render_planned(state, specs):
    """The same lines as render_state, predicted for after the change.

    Rules whose tag already exists keep the kernel's spelling, so the diff only
    shows what really changes.
    """
    known = {}
    for rules in state.chains.values():
        for saved in rules:
            if saved.tag:
                known.setdefault(saved.tag, saved.text)
    lines = []
    for spec in specs:
        if not spec.present:
            continue
        for jump in spec.jumps:
            lines.append('-A %s %s' % (jump.from_chain, known.get(jump.rule.tag, jump.rule.restore_text())))
        for rule in spec.rules:
            lines.append('-A %s %s' % (spec.name, known.get(rule.tag, rule.restore_text())))
    return lines


def describe_ops(family, table, ops):
    out = []
    for kind, chain, payload in ops:
        where = 'IPv%d %s' % (family, table)
        if kind == 'replace_chain':
            out.append('%s: write chain %s (%d rules)' % (where, chain, len(payload)))
        elif kind == 'insert':
            out.append('%s: insert jump %s -> %s' % (where, chain, payload.target))
        elif kind == 'delete':
            out.append('%s: delete from %s: %s' % (where, chain, payload.text))
        else:
            out.append('%s: delete chain %s' % (where, chain))
    return out


def sync_chains(driver, specs, check_mode):
    """Make the owned chains in ``specs`` match; return a result dict.

    Reads each (family, table) once, plans, applies one transaction per table
    unless in check mode, reads back and verifies.
    """
    groups = {}
    for spec in specs:
        groups.setdefault((spec.family, spec.table), []).append(spec)
    before, after, actions, plans = [], [], [], []
    for (family, table), group in sorted(groups.items()):
        state = driver.read(family, table)
        ops = _plan_table(state, group)
        prefix = 'v%d %s: ' % (family, table)
        before += [prefix + line for line in render_state(state, group)]
        after += [prefix + line for line in render_planned(state, group)]
        actions += describe_ops(family, table, ops)
        plans.append((family, table, group, ops, state))
    changed = any(ops for _f, _t, _g, ops, _s in plans)
    if changed and not check_mode:
        done = []
        for family, table, group, ops, state in plans:
            if not ops:
                continue
            try:
                driver.apply(family, table, ops)
            except XtablesError as exc:
                raise XtablesError('%s%s' % (exc, _roll_back(driver, done)))
            done.append((family, table, group, state))
        for family, table, group, _state in done:
            state = driver.read(family, table)
            leftover = _plan_table(state, group)
            if leftover:
                raise XtablesError('read-back after writing %s (IPv%d) does not match: still to do: %s'
                                   % (table, family, '; '.join(describe_ops(family, table, leftover))))
            if not any(spec.present for spec in group) and state.is_pristine():
                driver.drop_unused_table(family, table)
    return {
        'changed': changed,
        'actions': actions,
        'diff': {'before': '\n'.join(before) + ('\n' if before else ''),
                 'after': '\n'.join(after) + ('\n' if after else '')},
    }


def _restore_ops(current, before, specs):
    """Operations that put the owned chains of ``specs`` back as they were in ``before``."""
    ops = []
    for spec in specs:
        for saved in current.rules_jumping_to(spec.name):
            ops.append(('delete', saved.chain, saved))
        if spec.name in before.chains:
            ops.append(('replace_chain', spec.name, before.chains[spec.name]))
            for saved in reversed(before.rules_jumping_to(spec.name)):
                ops.append(('insert', saved.chain, saved))
        elif spec.name in current.chains:
            ops.append(('delete_chain', spec.name, None))
    order = {'delete': 0, 'replace_chain': 1, 'insert': 2, 'delete_chain': 3}
    ops.sort(key=lambda op: order[op[0]])
    return ops


def _roll_back(driver, done):
    """Undo the tables already written in this run; return a sentence for the error."""
    if not done:
        return ''
    names = []
    for family, table, group, before in reversed(done):
        where = 'IPv%d %s' % (family, table)
        try:
            driver.apply(family, table, _restore_ops(driver.read(family, table), before, group))
            names.append(where)
        except XtablesError as exc:
            return '; undoing the change already made to %s FAILED too: %s' % (where, exc)
    return '; the change already made to %s was rolled back' % ', '.join(names)


def read_chain_counters(driver, family, table, chain):
    """[(tag, packets, bytes, text)] for the rules of one chain, in order."""
    state = driver.read(family, table)
    return [(r.tag, r.packets, r.bytes, r.text) for r in state.chains.get(chain, []) or []]


# --------------------------------------------------------------------------
# Driver selection.

def host_variant(module):
    """'nf_tables' or 'legacy', from the host's ``iptables -V``."""
    binary = module.get_bin_path('iptables')
    if not binary:
        raise XtablesError('the iptables command is not installed on this host (package iptables); '
                           'it is needed to tell which iptables variant the host uses')
    rc, out, err = module.run_command([binary, '-V'])
    text = (out or '') + (err or '')
    if rc != 0:
        raise XtablesError('iptables -V failed: %s' % text.strip())
    return 'nf_tables' if 'nf_tables' in text else 'legacy'


def select_driver(module, requested):
    """Return a driver object for ``requested`` ('auto' or a driver name)."""
    variant = host_variant(module)
    if requested == 'auto':
        if variant == 'legacy' and HAS_IPTC:
            requested = 'python-iptables'
        else:
            requested = 'iptables'
    if requested == 'python-iptables':
        if variant != 'legacy':
            raise XtablesError("driver: python-iptables writes the legacy xtables, but this host's iptables "
                               "is the %s variant; rules written there would be invisible to the host's "
                               "tools. Use driver=iptables or driver=auto." % variant)
        if not HAS_IPTC:
            raise XtablesError('driver: python-iptables needs the python-iptables library on the managed host '
                               '(apt install python3-iptables, or pip install python-iptables): %s' % IPTC_IMPORT_ERROR)
        return PythonIptablesDriver(module)
    return IptablesCliDriver(module, variant)


# --------------------------------------------------------------------------
# The iptables CLI driver.

_COUNTERS = re.compile(r'^\[(\d+):(\d+)\]\s+')


_TARGET_RE = re.compile(r'(?:^|\s)-[jg]\s+(\S+)')
_OUR_COMMENT_RE = re.compile(r'--comment "?(anycast\.edge [0-9a-f]{12})"?(?:\s|$)')


def _parse_rule_text(text):
    """(target, tag) of one iptables-save rule body.

    Matches print before the target, and target options never contain " -j ",
    so the last -j/-g is the target even if someone's comment mentions one.
    """
    targets = _TARGET_RE.findall(text)
    tag = _OUR_COMMENT_RE.search(text)
    return (targets[-1] if targets else None), (tag.group(1) if tag else None)


def parse_save(text, family, table):
    """Parse ``iptables-save -c -t TABLE`` output into a TableState."""
    chains = {}
    policies = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith('*'):
            in_table = line[1:].strip() == table
            continue
        if not in_table:
            continue
        if line.startswith(':'):
            fields = line[1:].split()
            chains.setdefault(fields[0], [])
            if len(fields) > 1 and fields[1] != '-':
                policies[fields[0]] = fields[1]
            continue
        packets = bytes_ = 0
        match = _COUNTERS.match(line)
        if match:
            packets, bytes_ = int(match.group(1)), int(match.group(2))
            line = line[match.end():]
        if not line.startswith('-A '):
            continue
        _flag, chain, body = line.split(' ', 2) if line.count(' ') >= 2 else (line, line.split()[1], '')
        target, tag = _parse_rule_text(body)
        chains.setdefault(chain, []).append(SavedRule(chain, body, target, tag, packets, bytes_))
    return TableState(family, table, chains, policies)


class IptablesCliDriver(object):
    name = 'iptables'

    def __init__(self, module, variant, legacy_names=False):
        self.module = module
        self.variant = variant
        self.legacy_names = legacy_names  # iptables-legacy-restore rather than iptables-restore

    def _bin(self, family, suffix):
        base = 'ip6tables' if family == 6 else 'iptables'
        name = base + suffix
        if self.legacy_names:  # Debian names the legacy tools explicitly; older distros do not
            path = self.module.get_bin_path(base + '-legacy' + suffix)
            if path:
                return path
        path = self.module.get_bin_path(name)
        if not path:
            raise XtablesError('%s is not installed on this host (package iptables)' % name)
        return path

    def read(self, family, table):
        rc, out, err = self.module.run_command([self._bin(family, '-save'), '-c', '-t', table])
        if rc != 0:
            raise XtablesError('%s -t %s failed: %s' % (self._bin(family, '-save'), table, (err or out).strip()))
        return parse_save(out, family, table)

    def restore_payload(self, table, ops):
        lines = ['*%s' % table]
        for kind, chain, payload in ops:
            if kind == 'replace_chain':
                # Declaring a chain in --noflush mode creates it or flushes it.
                lines.append(':%s - [0:0]' % chain)
                lines += ['-A %s %s' % (chain, rule.restore_text()) for rule in payload]  # Rule or SavedRule
            elif kind == 'insert':
                lines.append('-I %s 1 %s' % (chain, payload.restore_text()))
            elif kind == 'delete':
                lines.append('-D %s %s' % (chain, payload.text))
            elif kind == 'delete_chain':
                lines += ['-F %s' % chain, '-X %s' % chain]
        lines.append('COMMIT')
        return '\n'.join(lines) + '\n'

    def drop_unused_table(self, family, table):
        """iptables-nft creates a whole nftables table on first use; when we were
        its only user, remove it so that state=absent leaves no trace."""
        nft = self.module.get_bin_path('nft')
        if self.variant != 'nf_tables' or not nft:
            return
        self.module.run_command([nft, 'delete', 'table', 'ip6' if family == 6 else 'ip', table])

    def apply(self, family, table, ops):
        restore = self._bin(family, '-restore')
        payload = self.restore_payload(table, ops)
        rc, out, err = self.module.run_command([restore, '--noflush', '--wait'], data=payload,
                                               binary_data=True)
        if rc != 0:
            detail = (err or out).strip()
            raise XtablesError('%s refused the change to table %s (nothing was applied, the '
                               'transaction is atomic): %s' % (os.path.basename(restore), table, detail))


# --------------------------------------------------------------------------
# The python-iptables (libiptc) driver.

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
            raise XtablesError('driver: python-iptables could not be loaded on the managed host: %s' % exc)
        iptc = loaded
    return iptc


class _XtablesLock(FileLock):
    """flock on /run/xtables.lock, the lock iptables itself takes."""

    def __init__(self):
        super().__init__(XTABLES_LOCK, LOCK_TIMEOUT, 'another iptables user')

    def __enter__(self):
        try:
            return super().__enter__()
        except LockTimeout as exc:
            raise XtablesError(str(exc))


def _prefix_len(mask):
    try:
        import ipaddress
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
        except XtablesError as exc:
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
        raise XtablesError('the libiptc worker process died without an answer')
    kind, value = pickle.loads(data)
    if kind == 'error':
        raise XtablesError(value)
    return value


def _iptc_table(family, table):
    cls = iptc.Table6 if family == 6 else iptc.Table
    tbl = cls(table, autocommit=False)
    tbl.refresh()
    return tbl


def _iptc_read(family, table):
    with _XtablesLock():
        tbl = _iptc_table(family, table)
        chains = {}
        for chain in tbl.chains:
            saved = []
            for rule in chain.rules:
                text, target, tag = iptc_rule_text(rule)
                packets, bytes_ = rule.get_counters()
                saved.append(SavedRule(chain.name, text, target, tag, packets, bytes_))
            chains[chain.name] = saved
        return TableState(family, table, chains)


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
        if name in IPTC_FIXUPS:
            IPTC_FIXUPS[name](match, dict(opts))
    comment = built.create_match('comment')
    comment.comment = rule.tag
    target = built.create_target(rule.target)
    for opt, value in rule.target_options:
        target.set_parameter(opt, _iptc_value(value))
    if rule.target in IPTC_FIXUPS:
        IPTC_FIXUPS[rule.target](target, dict(rule.target_options))
    return built


# Extensions whose python-iptables objects need a fix-up before commit:
# name -> callable(match_or_target, options dict). See the hashlimit module.
IPTC_FIXUPS = {}


def _iptc_apply(family, table, ops):
    with _XtablesLock():
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
            raise XtablesError('libiptc refused the change to the %s %s table (nothing was applied, '
                               'a commit is atomic): %s' % ('IPv6' if family == 6 else 'IPv4', table, exc))
    return True


class PythonIptablesDriver(object):
    name = 'python-iptables'

    def __init__(self, module=None):
        self.module = module
        _load_iptc()  # in the parent, so the forked workers share the import

    def drop_unused_table(self, family, table):
        """Legacy tables always exist: nothing to remove."""

    def read(self, family, table):
        return _run_forked(_iptc_read, family, table)

    def apply(self, family, table, ops):
        if any(isinstance(payload, SavedRule) or (kind == 'replace_chain' and any(
                isinstance(r, SavedRule) for r in payload)) for kind, _c, payload in ops):
            # Rules read back from the kernel (a rollback) exist only as text;
            # the legacy CLI restores them into the same legacy tables.
            return IptablesCliDriver(self.module, 'legacy', legacy_names=True).apply(family, table, ops)
        return _run_forked(_iptc_apply, family, table, ops)
