# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The GRE tunnels' MSS clamping rules, in the namespace of each tunnel: xtables or nftables.

One chain per tunnel, ``ANYCAST-MSS-<tunnel>``, clamping the MSS of SYN (and
SYN-ACK) packets forwarded out of the tunnel to the path MTU.

xtables: a mangle chain per family jumped to from FORWARD with ``-o TUNNEL``
(``-p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu``).

nftables (``driver: nft``): a base chain of ``inet anycast_edge_dp`` of that
namespace at the forward hook and the mangle priority, one rule for the
families asked for::

    oifname "TUNNEL" [meta nfproto ipv4] tcp flags syn / syn,rst tcp option maxseg size set rt mtu

(``rt mtu`` here is the route's MSS, as ``--clamp-mss-to-pmtu`` takes it.)

Both layers give ``_gre`` one interface: ``open()``, ``read(netns)`` (called
inside the namespace), ``clamped(state, name)``, ``plan(state, names, netns,
rendered)`` (NAMES: {tunnel: set of families}, an empty set removes the chain)
and ``apply(netns, plan)`` (called inside the namespace).
"""

from __future__ import annotations

from ansible_collections.anycast.edge.plugins.module_utils import _nft_rules as nr
from ansible_collections.anycast.edge.plugins.module_utils import _xtables
from ansible_collections.anycast.edge.plugins.module_utils._xtables import ChainSpec, Jump, Rule

MSS_CHAIN_PREFIX = 'ANYCAST-MSS-'   # + interface name: at most 27 of the 28 characters


def mss_chain(name):
    return MSS_CHAIN_PREFIX + name


# --------------------------------------------------------------------------
# xtables

def mss_specs(name, families):
    """ChainSpecs (IPv4, IPv6) of one tunnel: clamped in FAMILIES, absent in the others."""
    specs = []
    for family in (4, 6):
        chain = mss_chain(name)
        rule = Rule(family, 'TCPMSS', target_options=(('clamp-mss-to-pmtu', None),), protocol='tcp',
                    matches=(('tcp', (('tcp-flags', ('SYN,RST', 'SYN')),)),))
        jump = Jump('FORWARD', Rule(family, chain, out_iface=name))
        specs.append(ChainSpec(family, 'mangle', chain, [rule], [jump], present=family in families))
    return specs


class XtMss(_xtables.ChainLayer):
    def read(self, netns):
        return self.read_keys([(4, 'mangle'), (6, 'mangle')])

    @staticmethod
    def clamped(state, name):
        return any(mss_chain(name) in (table.chains if table else {}) for table in (state or {}).values())

    def plan(self, state, names, netns, rendered=False):
        specs = []
        for name, families in sorted(names.items()):
            specs += mss_specs(name, families)
        return self.plan_specs(state, specs, rendered, where=netns)

    def apply(self, netns, plan):
        self.apply_plan(plan)


# --------------------------------------------------------------------------
# nftables

def nft_chain(name, families):
    """The tunnel's base chain: one clamping rule for FAMILIES (a set of 4 and/or 6, not empty)."""
    expr = [nr.match(nr.meta('oifname'), name)]
    if len(families) == 1:
        expr.append(nr.nfproto(min(families)))
    expr += [nr.match({'&': [nr.payload('tcp', 'flags'), ['syn', 'rst']]}, 'syn'),
             {'mangle': {'key': {'tcp option': {'name': 'maxseg', 'field': 'size'}}, 'value': {'rt': {'key': 'mtu'}}}}]
    text = 'oifname "%s"%s tcp flags syn / syn,rst tcp option maxseg size set rt mtu' % (
        name, ' meta nfproto ipv%d' % min(families) if len(families) == 1 else '')
    return nr.NftChain(mss_chain(name), [nr.NftRule(expr, text)], 'forward', 'mangle')


class NftMss(object):
    """One NftDriver per namespace, made (and used) inside it."""

    name = 'nft'

    def __init__(self):
        self.drivers = {}

    def open(self):
        nr.NftDriver(shared=True).close()   # nftables is there (else an EdgeError now, as select_driver gives)

    def _driver(self, netns):
        if netns not in self.drivers:
            self.drivers[netns] = nr.NftDriver(shared=True)
        return self.drivers[netns]

    def read(self, netns):
        return self._driver(netns).read()

    @staticmethod
    def clamped(state, name):
        return state is not None and mss_chain(name) in state.chains

    @staticmethod
    def plan(state, names, netns, rendered=False):
        chains = [nft_chain(name, families) for name, families in sorted(names.items()) if families]
        desired = nr.Desired(chains, [], [mss_chain(name) for name in sorted(names)], [])
        plan = nr.plan(state if state is not None and not rendered else nr.TableState(), desired, True)
        # the transaction goes to the tunnel's namespace, as the xtables layer's commands say too
        plan.commands = ['ip netns exec %s %s' % (netns, command) for command in plan.commands]
        return plan

    def apply(self, netns, plan):
        nr.apply(self._driver(netns), plan)


def select(module, requested):
    """The MSS layer for REQUESTED ('auto', an xtables driver or 'nft')."""
    return NftMss() if nr.wants_nft(module, requested) else XtMss(module, requested)
