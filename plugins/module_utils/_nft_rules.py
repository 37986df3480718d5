# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``driver: nft`` data plane: the collection's own nftables table, written through the JSON API.

Every module that takes ``driver: nft`` owns named chains and sets inside one
table, ``inet anycast_edge_dp`` (the data plane; a tenant's firewall table
``inet anycast_edge`` lives in the tenant's namespace and is not this one).
Other modules' chains and sets in the same table, and every other table, are
never touched.

As with the xtables drivers (``_xtables.py``), every rule carries a comment
``anycast.edge <digest>`` of its full JSON expression, so a chain is compared
as a list of digests. A call is one JSON batch, which the kernel applies as
one transaction: the table created when missing, changed chains flushed and
refilled, changed sets replaced (the chains that use them rewritten with
them), owned objects no longer wanted deleted, and the table itself deleted
once it holds nothing at all. The engine reads back: the re-plan must be empty.

Reading and writing go through the distribution's binding (python3-nftables,
``_nftables``'s probe of it), or ``nft -j -f -`` where there is none.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shutil
import subprocess

from ansible_collections.anycast.edge.plugins.module_utils import _nft_netlink, _nftables
from ansible_collections.anycast.edge.plugins.module_utils._engine import Plan
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError

FAMILY = 'inet'
TABLE = 'anycast_edge_dp'
OWNER = 'anycast.edge'
WHERE = '%s %s' % (FAMILY, TABLE)
# nf_tables hook priorities by name (nft's own table)
PRIORITY = {'raw': -300, 'mangle': -150, 'filter': 0}


_CANONICAL = json.JSONEncoder(sort_keys=True)    # json.dumps(sort_keys=True) without a new encoder per call


def canonical(value):
    """The JSON text a digest is taken of (sorted keys: the same value always gives the same text)."""
    return _CANONICAL.encode(value)


def _digest(value):
    return hashlib.sha1(canonical(value).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------
# JSON expression helpers (the spellings nft's JSON API uses).

def match(left, right, op='=='):
    return {'match': {'op': op, 'left': left, 'right': right}}


def payload(protocol, field):
    return {'payload': {'protocol': protocol, 'field': field}}


def meta(key):
    return {'meta': {'key': key}}


def address_match(family, field, net):
    """``ip saddr 192.0.2.0/24`` (a host prefix as a plain address, as nft prints it)."""
    if not isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        net = ipaddress.ip_network(net)     # (a network given as one is not parsed again: 1,000 rules, 20 ms)
    right = str(net.network_address) if net.prefixlen == net.max_prefixlen else \
        {'prefix': {'addr': str(net.network_address), 'len': net.prefixlen}}
    return match(payload('ip' if family == 4 else 'ip6', field), right)


def ports_value(ranges):
    """A port, a range or an anonymous set of them, for ``th dport``."""
    items = [first if first == last else {'range': [first, last]} for first, last in ranges]
    return items[0] if len(items) == 1 else {'set': items}


def nfproto(family):
    return match(meta('nfproto'), 'ipv4' if family == 4 else 'ipv6')


def counter():
    return {'counter': None}


# --------------------------------------------------------------------------
# What a module wants in the table.

class NftRule(object):
    """One rule: its JSON expressions, a line as nft would list it (for diffs), its role (counters).

    ENCODED, when given, is ``canonical()`` of each expression of EXPR, in order: a module that builds many
    rules from the same pieces encodes each piece once (the digest is the same as of EXPR encoded whole).
    """

    def __init__(self, expr, text, role=None, encoded=None):
        self.expr = list(expr)
        self.text = text
        self.role = role
        if encoded is None:
            self.tag = '%s %s' % (OWNER, _digest(self.expr))
        else:
            text = '[%s]' % ', '.join(encoded)
            self.tag = '%s %s' % (OWNER, hashlib.sha1(text.encode()).hexdigest()[:12])

    def command(self, chain):
        return {'add': {'rule': {'family': FAMILY, 'table': TABLE, 'chain': chain, 'expr': self.expr,
                                 'comment': self.tag}}}


class NftChain(object):
    """An owned chain: a base chain when HOOK is given, else a regular one (jumped to)."""

    def __init__(self, name, rules, hook=None, priority=None):
        self.name = name
        self.rules = list(rules)
        self.hook = hook
        self.priority = priority

    def spec(self):
        spec = {'family': FAMILY, 'table': TABLE, 'name': self.name}
        if self.hook:
            spec.update({'type': 'filter', 'hook': self.hook, 'prio': PRIORITY[self.priority], 'policy': 'accept'})
        return spec

    def header(self):
        if not self.hook:
            return 'chain %s' % self.name
        return 'chain %s { type filter hook %s priority %s; policy accept; }' % (self.name, self.hook, self.priority)


class NftSet(object):
    """An owned set. ``elements``: prefixes (an interval set of addresses), or None (filled by the data path)."""

    def __init__(self, name, key_type, flags=(), size=None, timeout=None, elements=None, text=None):
        self.name = name
        self.key_type = key_type            # 'ipv4_addr' or a list for a concatenation
        self.flags = sorted(flags)
        self.size = size
        self.timeout = timeout              # seconds
        self.elements = elements
        self.text = text or ''

    def spec(self):
        spec = {'family': FAMILY, 'table': TABLE, 'name': self.name, 'type': self.key_type}
        if self.flags:
            spec['flags'] = self.flags
        if self.size:
            spec['size'] = self.size
        if self.timeout:
            spec['timeout'] = self.timeout
        if self.elements:
            spec['elem'] = [address_match(4, 'saddr', net)['match']['right'] for net in self.elements]
        return spec

    def key(self):
        """What decides whether the kernel's set is this one."""
        return (json.dumps(self.key_type), tuple(f for f in self.flags if f != 'dynamic'), self.size,
                self.timeout, _networks(self.elements or []))


def _networks(items):
    """A canonical tuple of the prefixes an interval set holds (nft may merge or split them)."""
    nets = []
    for item in items:
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            nets.append(item)
        elif isinstance(item, str):
            nets.append(ipaddress.ip_network(item))
        elif isinstance(item, dict) and 'prefix' in item:
            nets.append(ipaddress.ip_network('%s/%d' % (item['prefix']['addr'], item['prefix']['len'])))
        elif isinstance(item, dict) and 'range' in item:
            first, last = (ipaddress.ip_address(a) for a in item['range'])
            nets += list(ipaddress.summarize_address_range(first, last))
        elif isinstance(item, dict) and 'elem' in item:
            nets += _networks([item['elem']['val']])
    out = []
    for version in (4, 6):
        out += [str(n) for n in ipaddress.collapse_addresses(n for n in nets if n.version == version)]
    return tuple(out)


class Desired(object):
    """What one module call wants: chains and sets to hold (in order), and every name it owns."""

    def __init__(self, chains, sets, owned_chains, owned_sets):
        self.chains = chains
        self.sets = sets
        self.owned_chains = list(owned_chains)   # removed when present but not wanted
        self.owned_sets = list(owned_sets)


# --------------------------------------------------------------------------
# What the kernel holds.

class ReadRule(object):
    def __init__(self, expr, tag, packets=0, bytes_=0):
        self.expr = expr
        self.tag = tag
        self.packets = packets
        self.bytes = bytes_


class TableState(object):
    """Our table as listed: chains (spec, rules) and sets (spec, elements); ``exists`` False when absent."""

    def __init__(self, exists=False, chains=None, sets=None, others=0):
        self.exists = exists
        self.chains = chains or {}      # name -> {'spec': {...}, 'rules': [ReadRule]}
        self.sets = sets or {}          # name -> the set's JSON object (elements under 'elem')
        self.others = others            # maps, counters, flowtables ...: objects nobody here owns

    def chain_key(self, name):
        spec = self.chains[name]['spec']
        return tuple(spec.get(k) for k in ('type', 'hook', 'prio', 'policy'))

    def set_key(self, name):
        spec = self.sets[name]
        key_type = spec.get('type')
        return (json.dumps(key_type), tuple(sorted(f for f in spec.get('flags', []) if f != 'dynamic')),
                spec.get('size'), spec.get('timeout'),
                _networks(spec.get('elem', [])) if 'interval' in spec.get('flags', []) else ())

    def elements(self, name):
        return len(self.sets.get(name, {}).get('elem', []) or [])


def _counter_of(expr):
    for item in expr:
        if isinstance(item, dict) and isinstance(item.get('counter'), dict):
            return item['counter'].get('packets', 0), item['counter'].get('bytes', 0)
    return 0, 0


def _strip_counters(expr):
    return [{'counter': None} if isinstance(item, dict) and 'counter' in item else item for item in expr]


def parse_listing(objects):
    """TableState of the ``nftables`` array of a JSON listing of our table."""
    state = TableState(exists=False)
    for obj in objects:
        if 'table' in obj:
            state.exists = True
        elif 'chain' in obj:
            spec = obj['chain']
            state.chains[spec['name']] = {'spec': spec, 'rules': []}
        elif 'set' in obj:
            state.sets[obj['set']['name']] = obj['set']
        elif 'rule' in obj:
            rule = obj['rule']
            packets, bytes_ = _counter_of(rule['expr'])
            state.chains.setdefault(rule['chain'], {'spec': {}, 'rules': []})['rules'].append(
                ReadRule(_strip_counters(rule['expr']), rule.get('comment'), packets, bytes_))
        elif 'metainfo' not in obj:
            state.others += 1
    return state


def _one_context_binding():
    """The binding's Nftables class, or None.

    Not ``_nftables._binding()``: its probe (a forked child freeing two contexts, for the tenant module's
    context per namespace) costs a fork per run, and this driver holds one context per process.
    """
    try:
        from nftables import Nftables  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        _nftables._BINDING.setdefault('error', 'the nftables Python binding is missing (Debian/Ubuntu: apt install '
                                               'python3-nftables): %s' % exc)
        return None
    return Nftables


class NftDriver(object):
    """Reads and writes our table in the namespace of the thread that opened it.

    The libnftables context is made at the first JSON command (in that namespace): a no-op that
    :meth:`unchanged` settles never needs one.
    """

    name = 'nft'

    def __init__(self, shared=False):
        """SHARED: the process holds other libnftables contexts too (the tenant module, one per namespace).

        Then the binding is used only where two contexts can coexist (``_nftables``'s probe: 0.9.8 frees
        shared tables twice and aborts), else the nft command.
        """
        self._ctx = None
        self._binding = _nftables._binding() if shared else _one_context_binding()
        self._binary = None
        if self._binding is None:
            self._binary = shutil.which('nft')
            if not self._binary:
                raise EdgeError('driver: nft needs nftables on the managed host (Debian/Ubuntu: apt install '
                                'python3-nftables nftables): %s, and the nft command is not installed'
                                % _nftables._BINDING.get('error'))

    def _json(self, commands):
        data = {'nftables': commands}
        if self._binding is not None:
            if self._ctx is None:
                self._ctx = self._binding()
                self._ctx.set_json_output(True)
                self._ctx.set_handle_output(False)
            rc, out, err = self._ctx.json_cmd(data)
            return rc == 0, out, err
        proc = subprocess.run([self._binary, '-j', '-f', '-'], input=json.dumps(data), capture_output=True,
                              text=True, check=False)
        out = proc.stdout
        try:
            out = json.loads(out) if out.strip() else {}
        except ValueError:
            pass
        return proc.returncode == 0, out, proc.stderr

    def read(self):
        ok, out, err = self._json([{'list': {'table': {'family': FAMILY, 'name': TABLE}}}])
        if not ok:
            if 'No such file or directory' in (err or ''):
                return TableState(exists=False)
            raise EdgeError('reading nftables table %s: nft said: %s' % (WHERE, (err or '').strip()))
        return parse_listing((out or {}).get('nftables', []))

    def unchanged(self, desired, present=True):
        """The table's state when a cheap nfnetlink dump shows DESIRED holds already (plan() empty), else None.

        Chains are compared by their rules' tags, so the tags and the chains' hooks are all a no-op needs;
        the dump (``_nft_netlink``) gives them without libnftables decoding and printing every rule. Only
        for DESIRED without sets (their types and elements are compared too): None then, and read() decides.
        """
        if desired.sets or desired.owned_sets:
            return None
        state = _nft_netlink.read_summary(FAMILY, TABLE, TableState, ReadRule)
        if state is None or plan(state, desired, present).changed:
            return None
        return state

    def apply(self, batch):
        ok, _out, err = self._json(batch)
        if not ok:
            raise EdgeError('nft refused the change to table %s (nothing was applied, the batch is one '
                            'transaction): %s' % (WHERE, (err or '').strip()))

    def close(self):
        self._ctx = None


# --------------------------------------------------------------------------
# Planning: one batch.

def _ref(name):
    return {'family': FAMILY, 'table': TABLE, 'name': name}


class NftPlan(Plan):
    """One JSON batch (``batch``), what it does in words (``actions``), and the states around it."""

    def __init__(self, desired, state, batch, actions, predicted):
        self.desired = desired
        self.state = state
        self.batch = batch
        self.actions = actions
        self.predicted = predicted      # the TableState after the batch
        super().__init__([render_command(batch)] if batch else [])

    def before_lines(self):
        return render_state(self.state, self.desired)

    def after_lines(self):
        return render_state(self.predicted, self.desired)


def render_command(batch):
    """The batch as the shell command that sends the same transaction."""
    body = ',\n'.join(json.dumps(command, sort_keys=True) for command in batch)
    return "nft -j -f - <<'EOF'\n{\"nftables\": [\n%s\n]}\nEOF" % body


def plan(state, desired, present=True):
    """The NftPlan that makes our objects in STATE as DESIRED says (PRESENT False: all of them go)."""
    chains = desired.chains if present else []
    sets = desired.sets if present else []
    wanted_chains = dict((c.name, c) for c in chains)
    wanted_sets = dict((s.name, s) for s in sets)
    flush, delete_chains, delete_sets, add_sets, add_chains, fill = [], [], [], [], [], []
    actions = []
    changed_sets = set()
    for item in sets:
        if item.name not in state.sets:
            add_sets.append(item)
            actions.append('%s: add set %s%s' % (WHERE, item.name, item.text))
        elif state.set_key(item.name) != item.key():
            delete_sets.append(item.name)
            add_sets.append(item)
            changed_sets.add(item.name)
            actions.append('%s: replace set %s%s' % (WHERE, item.name, item.text))
    for name in desired.owned_sets:
        if name in state.sets and name not in wanted_sets:
            delete_sets.append(name)
            changed_sets.add(name)
            actions.append('%s: delete set %s' % (WHERE, name))
    for chain in chains:
        current = state.chains.get(chain.name)
        if current is None:
            add_chains.append(chain)
            fill.append(chain)
            actions.append('%s: write chain %s (%d rules)' % (WHERE, chain.name, len(chain.rules)))
            continue
        respec = state.chain_key(chain.name) != tuple(chain.spec().get(k) for k in ('type', 'hook', 'prio', 'policy'))
        uses_changed = any(_uses(rule.expr, changed_sets) for rule in current['rules'])
        if respec or uses_changed or [r.tag for r in current['rules']] != [r.tag for r in chain.rules]:
            flush.append(chain.name)
            if respec:
                delete_chains.append(chain.name)
                add_chains.append(chain)
            fill.append(chain)
            actions.append('%s: write chain %s (%d rules)' % (WHERE, chain.name, len(chain.rules)))
    for name in desired.owned_chains:
        if name in state.chains and name not in wanted_chains:
            flush.append(name)
            delete_chains.append(name)
            actions.append('%s: delete chain %s' % (WHERE, name))
    # A chain that jumps to one being deleted must be flushed first: flush every chain of ours that changes
    # before any delete, then sets, then adds (a rule never refers to a missing set or chain mid-batch).
    batch = []
    if (chains or sets) and not state.exists:
        batch.append({'add': {'table': {'family': FAMILY, 'name': TABLE}}})
    batch += [{'flush': {'chain': _ref(name)}} for name in flush]
    batch += [{'delete': {'chain': _ref(name)}} for name in delete_chains]
    batch += [{'delete': {'set': _ref(name)}} for name in delete_sets]
    batch += [{'add': {'set': item.spec()}} for item in add_sets]
    batch += [{'add': {'chain': chain.spec()}} for chain in add_chains]
    for chain in fill:
        batch += [rule.command(chain.name) for rule in chain.rules]
    predicted = _predict(state, chains, sets, delete_chains, delete_sets, fill, add_sets, desired)
    if state.exists and not predicted.chains and not predicted.sets and not predicted.others:
        # nobody else has anything in it: the table goes with our last object
        batch.append({'delete': {'table': {'family': FAMILY, 'name': TABLE}}})
        actions.append('%s: delete the table (nothing else is in it)' % WHERE)
        predicted.exists = False
    return NftPlan(desired, state, batch, actions, predicted)


def _uses(expr, set_names):
    if not set_names:
        return False
    text = json.dumps(expr)
    return any('"@%s"' % name in text or '"set": "@%s"' % name in text for name in set_names)


def _predict(state, chains, sets, delete_chains, delete_sets, fill, add_sets, desired):
    predicted = TableState(state.exists or bool(chains or sets), dict(state.chains), dict(state.sets), state.others)
    for name in delete_chains:
        predicted.chains.pop(name, None)
    for name in delete_sets:
        predicted.sets.pop(name, None)
    for item in add_sets:
        spec = dict(item.spec())
        predicted.sets[item.name] = spec
    for chain in fill:
        predicted.chains[chain.name] = {'spec': chain.spec(),
                                        'rules': [ReadRule(r.expr, r.tag) for r in chain.rules]}
    return predicted


def render_state(state, desired):
    """Lines describing our objects in STATE, for diff output (rules we know by tag in our own words)."""
    known = {}
    for chain in desired.chains:
        for rule in chain.rules:
            known[rule.tag] = rule.text
    lines = []
    names = [s.name for s in desired.sets] + [n for n in desired.owned_sets if n not in [s.name for s in desired.sets]]
    by_name = dict((s.name, s) for s in desired.sets)
    for name in names:
        if name in state.sets:
            spec = state.sets[name]
            wanted = by_name.get(name)
            if wanted is not None and state.set_key(name) == wanted.key():
                lines.append('set %s%s' % (name, wanted.text))
            else:
                shown = dict((k, v) for k, v in spec.items() if k not in ('family', 'table', 'handle'))
                lines.append('set %s %s' % (name, json.dumps(shown, sort_keys=True)))
    wanted = [c.name for c in desired.chains]
    names = wanted + [n for n in desired.owned_chains if n not in wanted]
    headers = dict((c.name, c.header()) for c in desired.chains)
    for name in names:
        if name not in state.chains:
            continue
        lines.append(headers.get(name, 'chain %s' % name))
        for rule in state.chains[name]['rules']:
            lines.append('  ' + known.get(rule.tag, json.dumps(rule.expr, sort_keys=True)))
    return lines


def apply(driver, nft_plan):
    if nft_plan.batch:
        driver.apply(nft_plan.batch)


def counters(state, chain_names, roles):
    """{role: {packets, bytes}} summed over the rules of CHAIN_NAMES whose tags ROLES maps to a role."""
    sums = dict((role, {'packets': 0, 'bytes': 0}) for role in sorted(set(roles.values())))
    for name in chain_names:
        for rule in state.chains.get(name, {}).get('rules', []):
            role = roles.get(rule.tag)
            if role:
                sums[role]['packets'] += rule.packets
                sums[role]['bytes'] += rule.bytes
    return sums


# --------------------------------------------------------------------------
# Driver choice.

def wants_nft(module, requested):
    """Whether REQUESTED ('auto' or a driver name) means nft on this host.

    ``auto`` keeps the iptables drivers' choice, except on a host without any iptables
    command (an nftables-only host), where it is nft.
    """
    if requested == 'nft':
        return True
    if requested != 'auto':
        return False
    return not any(module.get_bin_path(name) for name in ('iptables', 'iptables-legacy', 'iptables-nft'))


# --------------------------------------------------------------------------
# edge_info's section.

def info(context):
    """edge_info: the chains and sets of our table, with counters and how full each sized set is (None: no nftables)."""
    try:
        driver = NftDriver()
    except EdgeError:
        return None
    try:
        state = driver.read()
    finally:
        driver.close()
    if not state.exists:
        return {'table': WHERE, 'chains': [], 'sets': []}
    chains = [{'chain': name, 'hook': chain['spec'].get('hook'), 'priority': chain['spec'].get('prio'),
               'rules': [{'rule': rule.tag or json.dumps(rule.expr, sort_keys=True), 'packets': rule.packets,
                          'bytes': rule.bytes} for rule in chain['rules']]}
              for name, chain in sorted(state.chains.items())]
    sets = []
    for name, spec in sorted(state.sets.items()):
        entries = state.elements(name)
        size = spec.get('size')
        percent = round(100.0 * entries / size, 1) if size else None
        sets.append({'set': name, 'entries': entries, 'size': size, 'percent': percent})
        if size and entries > 0.8 * size:
            context.warnings.append('nftables set %s (%s) is %.1f%% full (%d of %d): raise htable_max'
                                    % (name, WHERE, percent, entries, size))
    return {'table': WHERE, 'chains': chains, 'sets': sets}
