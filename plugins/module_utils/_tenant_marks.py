# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tenants' MARK rules in the host namespace: xtables chains or chains of our nftables table.

Both kinds give the tenant module (``_tenant``) one interface: ``open()``,
``read()`` (once per run, also the read-back), ``owned(state)`` (the tenants
whose chains are there, with the mark each holds: a namespace deleted by hand
leaves its ip rules to be found by that mark), ``plan(state, tenants, gone)``
(a plan with ``commands``, ``actions``, ``before_lines()``, ``after_lines()``)
and ``apply(plan)``, one transaction.

xtables (``driver`` python-iptables or iptables): chain ``AE-TENANT-NAME`` of
the mangle table per family, jumped to from PREROUTING, ``-d PREFIX -j MARK
--set-xmark MARK/MASK`` per prefix.

nftables (``driver: nft``): chain ``AE-TENANT-NAME`` of ``inet anycast_edge_dp``
(``_nft_rules``), a base chain of its own at the prerouting hook and the mangle
priority, so that no chain is shared between tenants (a call that lists only
some tenants never rewrites another's): ``ip daddr PREFIX meta mark set meta
mark & ~MASK ^ MARK`` per prefix, both families in the one chain (``meta mark
set MARK`` when the mask is all ones), exactly what ``--set-xmark`` does.
"""

from __future__ import annotations

import re

from ansible_collections.anycast.edge.plugins.module_utils import _nft_rules as nr
from ansible_collections.anycast.edge.plugins.module_utils import _xtables
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError
from ansible_collections.anycast.edge.plugins.module_utils._nft_tproxy import MARK_ALL, _mark_expr, _mark_text, _parse_mark
from ansible_collections.anycast.edge.plugins.module_utils._tenant_spec import XT_CHAIN_PREFIX
from ansible_collections.anycast.edge.plugins.module_utils._xtables import ChainSpec, Jump, Rule

XT_TABLE = 'mangle'
SET_XMARK_RE = re.compile(r'--set-xmark (0x[0-9a-f]+)/(0x[0-9a-f]+)')


def chain_name(name):
    return XT_CHAIN_PREFIX + name


# --------------------------------------------------------------------------
# xtables

def xt_specs(tenant):
    """MARK chains for both families (a family without prefixes: chain absent)."""
    specs = []
    for family in (4, 6):
        nets = [n for n in tenant.prefixes if n.version == family] if tenant.present else []
        rules = [Rule(family, 'MARK', (('set-xmark', '0x%x/0x%x' % (tenant.mark, tenant.mask)),), dst=str(net))
                 for net in nets]
        jump = Jump('PREROUTING', Rule(family, tenant.xt_chain))
        specs.append(ChainSpec(family, XT_TABLE, tenant.xt_chain, rules, [jump], present=bool(nets)))
    return specs


def absent_xt_specs(name):
    specs = []
    for family in (4, 6):
        chain = chain_name(name)
        specs.append(ChainSpec(family, XT_TABLE, chain, [], [Jump('PREROUTING', Rule(family, chain))],
                               present=False))
    return specs


def xt_owned_marks(tables):
    """{tenant name: (mark, mask) or None} from our mangle chains, both families."""
    found = {}
    for family in (4, 6):
        state = tables.get((family, XT_TABLE))
        for chain, rules in (state.chains.items() if state else ()):
            if not chain.startswith(XT_CHAIN_PREFIX):
                continue
            mark = None
            for saved in rules:
                match = SET_XMARK_RE.search(saved.text)
                if match:
                    mark = (int(match.group(1), 16), int(match.group(2), 16))
                    break
            if found.get(chain[len(XT_CHAIN_PREFIX):]) is None:
                found[chain[len(XT_CHAIN_PREFIX):]] = mark
    return found


class XtMarks(_xtables.ChainLayer):
    """The mark chains in the mangle tables, through the shared xtables layer."""

    def close(self):
        pass

    @staticmethod
    def empty():
        return {}

    def read(self):
        return self.read_keys([(family, XT_TABLE) for family in (4, 6)])

    @staticmethod
    def owned(state):
        return xt_owned_marks(state)

    def plan(self, state, tenants, gone, rendered=False):
        """The XtPlan that gives TENANTS (present or absent) their chains and removes those of the names GONE."""
        specs = []
        for tenant in tenants:
            specs += xt_specs(tenant) if tenant.present else absent_xt_specs(tenant.name)
        for name in gone:
            specs += absent_xt_specs(name)
        return self.plan_specs(state, specs, rendered)

    def apply(self, plan):
        self.apply_plan(plan)


# --------------------------------------------------------------------------
# nftables

def nft_chain(tenant):
    """The tenant's base chain: one mark rule per prefix, both families."""
    mark = (tenant.mark, tenant.mask)
    rules = []
    for net in sorted(tenant.prefixes, key=lambda n: (n.version, n)):
        rules.append(nr.NftRule([nr.address_match(net.version, 'daddr', net), _mark_expr(mark)],
                                '%s daddr %s%s' % ('ip' if net.version == 4 else 'ip6', net, _mark_text(mark))))
    return nr.NftChain(tenant.xt_chain, rules, 'prerouting', 'mangle')


def _parse_xmark(text):
    value, _slash, mask = text.partition('/')
    return int(value, 16), int(mask, 16) if mask else MARK_ALL


def nft_owned_marks(state):
    """{tenant name: (mark, mask) or None} from the AE-TENANT- chains of our table."""
    found = {}
    for name, chain in state.chains.items():
        if not name.startswith(XT_CHAIN_PREFIX):
            continue
        mark = None
        for rule in chain['rules']:
            for item in rule.expr or ():
                if isinstance(item, dict) and 'mangle' in item:
                    try:
                        mark = _parse_xmark(_parse_mark(item))
                    except (KeyError, IndexError, TypeError, ValueError):
                        continue
                    break
            if mark is not None:
                break
        found[name[len(XT_CHAIN_PREFIX):]] = mark
    return found


class NftMarks(object):
    """The mark chains in the collection's nftables table (``driver: nft``)."""

    name = 'nft'

    def __init__(self):
        self.driver = None

    def open(self):
        self.driver = nr.NftDriver(shared=True)     # beside the firewalls' contexts, one per namespace

    def close(self):
        if self.driver is not None:
            self.driver.close()

    @staticmethod
    def empty():
        return nr.TableState()

    def read(self):
        return self.driver.read()

    @staticmethod
    def owned(state):
        return nft_owned_marks(state)

    @staticmethod
    def plan(state, tenants, gone, rendered=False):
        """The NftPlan (one JSON batch) that gives TENANTS their chains and removes those of the names GONE."""
        chains = [nft_chain(t) for t in tenants if t.present and t.prefixes]
        owned = [t.xt_chain for t in tenants] + [chain_name(name) for name in gone]
        desired = nr.Desired(chains, [], owned, [])
        return nr.plan(state if not rendered else nr.TableState(), desired, True)

    def apply(self, plan):
        nr.apply(self.driver, plan)


# --------------------------------------------------------------------------
# A driver switch moves the chains

class MarkPlan(object):
    """The chosen layer's plan (WRITE) and the removal of the other kind's chains of the same tenants (CLEAR)."""

    def __init__(self, write, clear):
        self.write = write
        self.clear = clear

    @property
    def commands(self):
        return self.write.commands + (self.clear.commands if self.clear is not None else [])

    @property
    def changed(self):
        return bool(self.commands)

    @property
    def actions(self):
        return self.write.actions + (self.clear.actions if self.clear is not None else [])

    def before_lines(self):
        return self.write.before_lines() + (self.clear.before_lines() if self.clear is not None else [])

    def after_lines(self):
        return self.write.after_lines() + (self.clear.after_lines() if self.clear is not None else [])


class Marks(object):
    """The layer the driver names writes the chains; the other kind's chains of the tenants a call is about go.

    ``AE-TENANT-NAME`` chains are this module's alone in both kinds (the other modules refuse the prefix), so a
    tenant moved from ``driver: iptables`` to ``driver: nft`` (or back) keeps one chain: two would both set the
    packet mark, and after a change of the mark the stale one could win. The new chains are written first, then
    the old ones removed. The other kind is read only where the host has it (an iptables command; nftables).
    """

    def __init__(self, module, requested):
        if nr.wants_nft(module, requested):
            self.primary, self.other = NftMarks(), XtMarks(module, 'auto')
        else:
            self.primary, self.other = XtMarks(module, requested), NftMarks()

    @property
    def name(self):
        return self.primary.name

    def open(self):
        self.primary.open()
        try:
            self.other.open()
        except EdgeError:
            self.other = None       # the host has no such tables: nothing of that kind to remove

    def close(self):
        self.primary.close()
        if self.other is not None:
            self.other.close()

    def empty(self):
        return (self.primary.empty(), self.other.empty() if self.other is not None else None)

    def read(self):
        return (self.primary.read(), self.other.read() if self.other is not None else None)

    def owned(self, state):
        found = dict(self.other.owned(state[1])) if self.other is not None and state[1] is not None else {}
        for name, mark in self.primary.owned(state[0]).items():
            if mark is not None or name not in found:
                found[name] = mark
        return found

    def plan(self, state, tenants, gone, rendered=False):
        write = self.primary.plan(state[0], tenants, gone, rendered)
        clear = None
        if not rendered and self.other is not None and state[1] is not None:
            names = [t.name for t in tenants] + [name for name in gone if name not in [t.name for t in tenants]]
            clear = self.other.plan(state[1], [], names)
        return MarkPlan(write, clear)

    def apply(self, plan):
        self.primary.apply(plan.write)
        if plan.clear is not None and plan.clear.commands:
            self.other.apply(plan.clear)


def select(module, requested):
    """The mark layers for REQUESTED ('auto', an xtables driver or 'nft')."""
    return Marks(module, requested)
