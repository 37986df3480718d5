# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One xtables rule model; its planning; the iptables command-line driver.

The collection owns whole chains (``ANYCAST-TPROXY``, ``RATE-LIMIT``, ...) and
the jumps into them. Every rule it writes carries a comment
``anycast.edge <digest>`` where the digest covers the rule's full
specification, so the state of a chain is compared as a list of digests: no
need to predict how each extension prints itself, identical for both drivers.

The run: :func:`read_tables` reads every (family, table) a module needs, one
``iptables-save`` per family; :func:`plan_chains` (pure) orders the changes per
table; :func:`apply_chains` writes each table in one transaction and, if a
later table fails, rolls back the earlier ones. The engine re-plans after the
read-back: the plan must come out empty.

Drivers:

* ``iptables`` (here): the host's own ``iptables-save`` / ``iptables-restore
  --noflush --wait``; follows whichever variant (nf_tables or legacy) the host
  uses. Each restore is one kernel transaction.
* ``python-iptables`` (``_iptc.py``): libiptc, legacy tables only, one commit
  per table.

``driver: auto`` looks at ``iptables -V`` and never writes into the variant the
host does not use.
"""

from __future__ import annotations

import hashlib
import os
import re

from ansible_collections.anycast.edge.plugins.module_utils._engine import Plan
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError

OWNER = 'anycast.edge'
TAG_RE = re.compile(r'^anycast\.edge ([0-9a-f]{12})$')
DRIVERS = ('auto', 'python-iptables', 'iptables')
FAMILY_NAME = {4: 'IPv4', 6: 'IPv6'}


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


class Rule(object):
    """A rule of an owned chain (or a jump into one), independent of the driver.

    ``matches`` is a sequence of ``(extension, ((option, value or None), ...))``
    and ``target_options`` a sequence of ``(option, value or None)``; a value
    that is a tuple gives the option several words. Option names are written
    without the leading dashes, exactly as the iptables CLI spells them.
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
        self._tag = None

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
        if self._tag is None:   # a Rule does not change once made; planning asks for its tag often
            spec = 'v%d %s' % (self.family, ' '.join(self._args(False)))
            self._tag = '%s %s' % (OWNER, hashlib.sha1(spec.encode()).hexdigest()[:12])
        return self._tag

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
    """A rule as read from the kernel (or as a plan predicts it)."""

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

    def applied(self, ops):
        """The TableState these operations lead to (what a plan predicts)."""
        chains = dict((name, list(rules)) for name, rules in self.chains.items())
        for kind, chain, payload in ops:
            if kind == 'replace_chain':
                chains[chain] = [_predicted(chain, rule) for rule in payload]
            elif kind == 'insert':
                chains.setdefault(chain, []).insert(0, _predicted(chain, payload))
            elif kind == 'delete':
                rules = chains.get(chain, [])
                for index, saved in enumerate(rules):
                    if saved.text == payload.text:
                        del rules[index]
                        break
            else:
                chains.pop(chain, None)
        return TableState(self.family, self.table, chains, self.policies)


def _predicted(chain, rule):
    if isinstance(rule, SavedRule):
        return SavedRule(chain, rule.text, rule.target, rule.tag)
    return SavedRule(chain, rule.restore_text(), rule.target, rule.tag)


# --------------------------------------------------------------------------
# Planning: compare tags, produce per-table operation lists.

_ORDER = {'delete': 0, 'replace_chain': 1, 'insert': 2, 'delete_chain': 3}


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
    ops.sort(key=lambda op: _ORDER[op[0]])
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
        where = '%s %s' % (FAMILY_NAME[family], table)
        if kind == 'replace_chain':
            out.append('%s: write chain %s (%d rules)' % (where, chain, len(payload)))
        elif kind == 'insert':
            out.append('%s: insert jump %s -> %s' % (where, chain, payload.target))
        elif kind == 'delete':
            out.append('%s: delete from %s: %s' % (where, chain, payload.text))
        else:
            out.append('%s: delete chain %s' % (where, chain))
    return out


def restore_payload(table, ops):
    """The iptables-restore --noflush input of one table's operations (one transaction)."""
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


class TablePlan(object):
    """The operations on one (family, table), and the state they start from."""

    def __init__(self, family, table, specs, state, ops):
        self.family = family
        self.table = table
        self.specs = specs
        self.state = state
        self.ops = ops


class XtPlan(Plan):
    """Per table, the operations of one transaction; commands are the restore inputs.

    ``where``: the namespace the tables live in, for commands (None: the module's).
    """

    def __init__(self, tables, driver_name='iptables', where=None):
        self.tables = tables
        self.where = where
        super().__init__([restore_command(driver_name, t.family, t.table, t.ops, where) for t in tables if t.ops])

    @property
    def actions(self):
        out = []
        for table in self.tables:
            out += describe_ops(table.family, table.table, table.ops)
        return out

    def before_lines(self):
        out = []
        for table in self.tables:
            prefix = 'v%d %s: ' % (table.family, table.table)
            out += [prefix + line for line in render_state(table.state, table.specs)]
        return out

    def after_lines(self):
        out = []
        for table in self.tables:
            prefix = 'v%d %s: ' % (table.family, table.table)
            out += [prefix + line for line in render_planned(table.state, table.specs)]
        return out

    def predicted(self):
        """{(family, table): TableState} after the plan."""
        return dict(((t.family, t.table), t.state.applied(t.ops)) for t in self.tables)


def restore_command(driver_name, family, table, ops, where=None):
    """What a driver sends for one table, as a shell command with the transaction as its input."""
    base = 'ip6tables' if family == 6 else 'iptables'
    payload = restore_payload(table, ops)
    if driver_name == 'python-iptables':
        command = '%s-legacy-restore --noflush' % base
        payload = '# one libiptc commit (python-iptables) of the same changes\n' + payload
    else:
        command = '%s-restore --noflush --wait' % base
    if where:
        command = 'ip netns exec %s %s' % (where, command)
    return "%s <<'EOF'\n%sEOF" % (command, payload)


def spec_keys(specs):
    return sorted(set((spec.family, spec.table) for spec in specs))


def read_tables(driver, keys):
    """{(family, table): TableState} for KEYS, one driver read per family."""
    tables = {}
    for family in sorted(set(f for f, _t in keys)):
        names = sorted(t for f, t in keys if f == family)
        for name, state in driver.read(family, names).items():
            tables[(family, name)] = state
    return tables


def plan_chains(states, specs, driver_name='iptables', where=None):
    """The XtPlan that makes the owned chains of SPECS as they say; pure."""
    groups = {}
    for spec in specs:
        groups.setdefault((spec.family, spec.table), []).append(spec)
    tables = []
    for (family, table), group in sorted(groups.items()):
        state = states.get((family, table)) or TableState(family, table, {})
        tables.append(TablePlan(family, table, group, state, _plan_table(state, group)))
    return XtPlan(tables, driver_name, where)


def empty_states(specs):
    return dict(((s.family, s.table), TableState(s.family, s.table, {})) for s in specs)


def apply_chains(driver, plan):
    """One transaction per table; a failure rolls back the tables already written."""
    done = []
    for table in plan.tables:
        if not table.ops:
            continue
        try:
            driver.apply(table.family, table.table, table.ops)
        except EdgeError as exc:
            raise EdgeError('%s%s' % (exc, _roll_back(driver, done)))
        done.append(table)
    for table in done:
        if not any(spec.present for spec in table.specs):
            # iptables-nft creates a whole nftables table on first use; when we
            # were its only user, remove it so that state=absent leaves no trace.
            state = driver.read(table.family, [table.table])[table.table]
            if state.is_pristine():
                driver.drop_unused_table(table.family, table.table)


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
    ops.sort(key=lambda op: _ORDER[op[0]])
    return ops


def _put_back(driver, table):
    """Write the owned chains of TABLE (a TablePlan) back as they were in the state it started from."""
    current = driver.read(table.family, [table.table])[table.table]
    driver.apply(table.family, table.table, _restore_ops(current, table.state, table.specs))


def _roll_back(driver, done):
    """Undo the tables already written in this run; return a sentence for the error."""
    if not done:
        return ''
    names = []
    for table in reversed(done):
        where = '%s %s' % (FAMILY_NAME[table.family], table.table)
        try:
            _put_back(driver, table)
            names.append(where)
        except EdgeError as exc:
            return '; undoing the change already made to %s FAILED too: %s' % (where, exc)
    return '; the change already made to %s was rolled back' % ', '.join(names)


def undo_chains(driver, plan, touched=None):
    """Put the owned chains of every table PLAN (an XtPlan) wrote, or of the (family, table) keys in TOUCHED,
    back as they were before it. Raises EdgeError naming the table that could not be put back."""
    for table in reversed(plan.tables):
        if not (table.ops if touched is None else (table.family, table.table) in touched):
            continue
        try:
            _put_back(driver, table)
        except EdgeError as exc:
            raise EdgeError('%s %s: %s' % (FAMILY_NAME[table.family], table.table, exc))


# --------------------------------------------------------------------------
# Driver selection.

def host_variant(module):
    """'nf_tables' or 'legacy', from the host's ``iptables -V``."""
    binary = module.get_bin_path('iptables')
    if not binary:
        raise EdgeError('the iptables command is not installed on this host (package iptables); '
                        'it is needed to tell which iptables variant the host uses')
    rc, out, err = module.run_command([binary, '-V'])
    text = (out or '') + (err or '')
    if rc != 0:
        raise EdgeError('iptables -V failed: %s' % text.strip())
    return 'nf_tables' if 'nf_tables' in text else 'legacy'


def select_driver(module, requested):
    """Return a driver object for ``requested`` ('auto' or a driver name)."""
    from ansible_collections.anycast.edge.plugins.module_utils import _iptc  # pylint: disable=import-outside-toplevel
    variant = host_variant(module)
    if requested == 'auto':
        requested = 'python-iptables' if variant == 'legacy' and _iptc.HAS_IPTC else 'iptables'
    if requested == 'python-iptables':
        if variant != 'legacy':
            raise EdgeError("driver: python-iptables writes the legacy xtables, but this host's iptables "
                            "is the %s variant; rules written there would be invisible to the host's "
                            "tools. Use driver=iptables or driver=auto." % variant)
        if not _iptc.HAS_IPTC:
            raise EdgeError('driver: python-iptables needs the python-iptables library on the managed host '
                            '(apt install python3-iptables, or pip install python-iptables): %s'
                            % _iptc.IPTC_IMPORT_ERROR)
        return _iptc.PythonIptablesDriver(module)
    return IptablesCliDriver(module, variant)


class ChainLayer(object):
    """The xtables side of a module whose rules can also live in nftables (tenant marks, GRE MSS
    clamps): the driver REQUESTED ('auto' or a driver name), selected at open(), and its chains
    read, planned and applied through this module's functions."""

    def __init__(self, module, requested):
        self.module = module
        self.requested = requested
        self.driver = None

    @property
    def name(self):
        return self.driver.name if self.driver else self.requested

    def open(self):
        self.driver = select_driver(self.module, self.requested)

    def read_keys(self, keys):
        return read_tables(self.driver, keys)

    def plan_specs(self, states, specs, rendered=False, where=None):
        """The XtPlan for SPECS against STATES (against nothing when RENDERED)."""
        return plan_chains(empty_states(specs) if rendered else states or {}, specs, self.name, where)

    def apply_plan(self, plan):
        apply_chains(self.driver, plan)


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
    """Parse ``iptables-save -c [-t TABLE]`` output into the TableState of TABLE."""
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
            raise EdgeError('%s is not installed on this host (package iptables)' % name)
        return path

    def read(self, family, tables):
        """{table: TableState} of TABLES, from one iptables-save (every table when several)."""
        save = self._bin(family, '-save')
        args = [save, '-c'] + (['-t', tables[0]] if len(tables) == 1 else [])
        rc, out, err = self.module.run_command(args)
        if rc != 0:
            raise EdgeError('%s failed: %s' % (' '.join([os.path.basename(save)] + args[1:]), (err or out).strip()))
        return dict((table, parse_save(out, family, table)) for table in tables)

    def drop_unused_table(self, family, table):
        """Delete the nftables table iptables-nft made, if nft shows it truly empty (iptables-save cannot show
        sets, maps or nft's own chains, which someone else may keep there)."""
        nft = self.module.get_bin_path('nft')
        if self.variant != 'nf_tables' or not nft:
            return
        nft_family = 'ip6' if family == 6 else 'ip'
        rc, out, _err = self.module.run_command([nft, '-j', 'list', 'table', nft_family, table])
        if rc != 0 or not nft_table_is_empty(out):
            return
        self.module.run_command([nft, 'delete', 'table', nft_family, table])

    def apply(self, family, table, ops):
        restore = self._bin(family, '-restore')
        rc, out, err = self.module.run_command([restore, '--noflush', '--wait'], data=restore_payload(table, ops),
                                               binary_data=True)
        if rc != 0:
            detail = (err or out).strip()
            raise EdgeError('%s refused the change to table %s (nothing was applied, the '
                            'transaction is atomic): %s' % (os.path.basename(restore), table, detail))


def nft_table_is_empty(listing):
    """Whether ``nft -j list table`` LISTING holds nothing but xtables' built-in base chains without rules,
    with policy accept: no rule, set, map, element, object or chain of anyone else."""
    import json  # pylint: disable=import-outside-toplevel
    try:
        items = json.loads(listing).get('nftables', [])
    except (ValueError, AttributeError):
        return False
    for item in items:
        kind = next(iter(item), None)
        if kind in ('metainfo', 'table'):
            continue
        chain = item.get('chain')
        if kind == 'chain' and chain.get('name') in ('PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING') \
                and 'hook' in chain and chain.get('policy', 'accept') == 'accept':
            continue
        return False
    return True


# --------------------------------------------------------------------------
# Reading rules back into their parts (for state=gathered).

class ParsedRule(object):
    """One rule of iptables-save (or libiptc) text, split into its parts."""

    def __init__(self):
        self.src = self.dst = self.in_iface = self.out_iface = self.protocol = None
        self.matches = []           # [(name, {option: [values]})], in order
        self.target = None
        self.target_options = {}    # option -> [values]

    def match(self, name):
        for found, options in self.matches:
            if found == name:
                return options
        return None


def parse_rule(text):
    """A ParsedRule of one rule body (without '-A CHAIN'); options keep their values as words."""
    import shlex  # pylint: disable=import-outside-toplevel
    words = shlex.split(text)
    rule = ParsedRule()
    current = None
    index = 0
    flags = {'-s': 'src', '-d': 'dst', '-i': 'in_iface', '-o': 'out_iface', '-p': 'protocol'}
    while index < len(words):
        word = words[index]
        if word in flags:
            setattr(rule, flags[word], words[index + 1])
            index += 2
        elif word == '-m':
            current = {}
            rule.matches.append((words[index + 1], current))
            index += 2
        elif word in ('-j', '-g'):
            rule.target = words[index + 1]
            current = rule.target_options
            index += 2
        elif word.startswith('--') and current is not None:
            values = []
            index += 1
            while index < len(words) and not words[index].startswith('-'):
                values.append(words[index])
                index += 1
            current[word[2:]] = values
        else:
            index += 1
    return rule


def parse_ports(rule, direction='d'):
    """'first:last' strings of a rule's --dport/--dports (or source), or None for every port."""
    multi = rule.match('multiport')
    if multi and multi.get('%sports' % direction):
        return multi['%sports' % direction][0].split(',')
    for name in ('tcp', 'udp'):
        options = rule.match(name)
        if options and options.get('%sport' % direction):
            return [options['%sport' % direction][0]]
    return None


def port_items(words):
    """['80', '8000:8100'] -> [80, '8000-8100'] (the modules' input spelling)."""
    if words is None:
        return None
    items = []
    for word in words:
        first, _sep, last = word.partition(':')
        items.append(int(first) if not last else '%s-%s' % (first, last))
    return items
