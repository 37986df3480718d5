# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a no-op needs of our nftables table, dumped over nfnetlink: chains and the tags of their rules.

The ``driver: nft`` modules compare a chain as the list of its rules' tags (the
comment ``anycast.edge <digest>``), never by their expressions. Listing the
table through the JSON API has libnftables decode every expression of every
rule and print it, and Python parse the text: 0.15 s for the 2,000 rules of
1,000 TPROXY inputs, most of a no-op run. nfnetlink requests (the table, its
chains, sets and rules) parsed with ``struct`` give the same chains and tags in
about 10 ms: the tag is the rule's user data, which the kernel keeps as
nft wrote it.

:func:`read_summary` returns a ``_nft_rules.TableState`` whose rules have
tags and no expressions, and whose sets are names only. The caller uses it
only to find that nothing is to be done; anything else (a change, the
read-back after a change, counters, set contents) is read through the JSON
API. Any doubt (an error, a dump interrupted by a concurrent change, a hook
number this module does not name) gives None: the JSON API decides then.
"""

from __future__ import annotations

import struct

from ansible_collections.anycast.edge.plugins.module_utils import _netlink
from ansible_collections.anycast.edge.plugins.module_utils._netlink import parse_attrs

# linux/netfilter/nfnetlink.h, nf_tables.h
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET, NFT_MSG_GETGEN = 1, 4, 7, 10, 16
NFTA_GEN_ID = 1
NFPROTO = {'inet': 1, 'ip': 2, 'ip6': 10}
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE = 1, 3, 4, 5, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_USERDATA = 1, 2, 7
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS = 1, 2, 3
NFT_SET_ANONYMOUS = 0x1           # a rule's own set ({ 80, 443 }): nft lists it inside the rule
NFTNL_UDATA_RULE_COMMENT = 0        # libnftnl's user data TLV of a rule comment
# nf_inet_hooks, as nft names them for the ip, ip6 and inet families
HOOKS = {0: 'prerouting', 1: 'input', 2: 'forward', 3: 'output', 4: 'postrouting'}
POLICIES = {0: 'drop', 1: 'accept'}

_NFGENMSG = struct.Struct('!BBH')


def _request(family, attrs):
    body = _NFGENMSG.pack(NFPROTO[family], 0, 0)
    for kind, text in attrs:
        body += _netlink._attr(kind, text.encode() + b'\0')
    return body


def _text(raw):
    return raw.split(b'\0', 1)[0].decode('utf-8', 'replace') if raw is not None else None


def rule_comment(userdata):
    """The comment in a rule's user data (libnftnl's type-length-value list), or None."""
    offset = 0
    while offset + 2 <= len(userdata):
        kind, length = userdata[offset], userdata[offset + 1]
        if kind == NFTNL_UDATA_RULE_COMMENT:
            return _text(userdata[offset + 2:offset + 2 + length])
        offset += 2 + length
    return None


def chain_spec(attrs):
    """The keys of a chain as nft's JSON lists them (name; type, hook, prio, policy of a base chain).

    None when the hook has no name here (the JSON API says what it is).
    """
    spec = {'name': _text(attrs.get(NFTA_CHAIN_NAME))}
    if NFTA_CHAIN_HOOK in attrs:
        hook = parse_attrs(attrs[NFTA_CHAIN_HOOK], 0)
        number = struct.unpack('!I', hook[NFTA_HOOK_HOOKNUM][:4])[0]
        policy = struct.unpack('!I', attrs[NFTA_CHAIN_POLICY][:4])[0] if NFTA_CHAIN_POLICY in attrs else 1
        if number not in HOOKS or policy not in POLICIES:
            return None
        spec.update({'type': _text(attrs.get(NFTA_CHAIN_TYPE)), 'hook': HOOKS[number],
                     'prio': struct.unpack('!i', hook[NFTA_HOOK_PRIORITY][:4])[0], 'policy': POLICIES[policy]})
    return spec


def read_summary(family, table, state_class, rule_class):
    """STATE_CLASS (TableState) of TABLE: chains with specs and rule tags, set names; None when unsure."""
    try:
        nfnl = _netlink.RawRtnl(_netlink.NETLINK_NETFILTER)
    except OSError:
        return None
    try:
        return _summary(nfnl, family, table, state_class, rule_class)
    except (OSError, KeyError, struct.error):
        return None
    finally:
        nfnl.close()


def _kind(msg):
    return (NFNL_SUBSYS_NFTABLES << 8) | msg


def _generation(nfnl):
    """The ruleset's generation id: every committed transaction of the namespace changes it."""
    (payload,) = nfnl._exchange(_kind(NFT_MSG_GETGEN), _netlink.NLM_F_REQUEST, _NFGENMSG.pack(0, 0, 0))
    return struct.unpack('!I', parse_attrs(payload, _NFGENMSG.size)[NFTA_GEN_ID][:4])[0]


def _summary(nfnl, family, table, state_class, rule_class):
    """The dumps, between two reads of the generation id: one picture, or None if anything was committed."""
    generation = _generation(nfnl)
    state = _dumps(nfnl, family, table, state_class, rule_class)
    if state is None or nfnl.interrupted or _generation(nfnl) != generation:
        return None
    return state


def _dumps(nfnl, family, table, state_class, rule_class):
    kind = _kind
    try:
        nfnl._exchange(kind(NFT_MSG_GETTABLE), _netlink.NLM_F_REQUEST, _request(family, [(NFTA_TABLE_NAME, table)]))
    except OSError as exc:
        if exc.errno == 2:      # ENOENT: no such table
            return state_class(exists=False)
        raise
    state = state_class(exists=True)
    for payload in nfnl.dump(kind(NFT_MSG_GETCHAIN), _request(family, [(NFTA_CHAIN_TABLE, table)])):
        attrs = parse_attrs(payload, _NFGENMSG.size)
        if _text(attrs.get(NFTA_CHAIN_TABLE)) != table:
            continue
        spec = chain_spec(attrs)
        if spec is None:
            return None
        spec.update({'family': family, 'table': table})
        state.chains[spec['name']] = {'spec': spec, 'rules': []}
    for payload in nfnl.dump(kind(NFT_MSG_GETSET), _request(family, [(NFTA_SET_TABLE, table)])):
        attrs = parse_attrs(payload, _NFGENMSG.size)
        flags = struct.unpack('!I', attrs[NFTA_SET_FLAGS][:4])[0] if NFTA_SET_FLAGS in attrs else 0
        if _text(attrs.get(NFTA_SET_TABLE)) == table and not flags & NFT_SET_ANONYMOUS:
            name = _text(attrs.get(NFTA_SET_NAME))
            state.sets[name] = {'family': family, 'table': table, 'name': name}
    for payload in nfnl.dump(kind(NFT_MSG_GETRULE), _request(family, [(NFTA_RULE_TABLE, table)])):
        attrs = parse_attrs(payload, _NFGENMSG.size)
        if _text(attrs.get(NFTA_RULE_TABLE)) != table:
            continue
        chain = state.chains.get(_text(attrs.get(NFTA_RULE_CHAIN)))
        if chain is None:
            return None     # a rule of a chain the chain dump did not show: changed in between
        userdata = attrs.get(NFTA_RULE_USERDATA)
        chain['rules'].append(rule_class(None, rule_comment(userdata) if userdata is not None else None))
    return state
