# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant's firewall: one nftables table ``inet anycast_edge`` in its namespace.

The table is replaced in one transaction. Its comment records a digest of the
input it was written from and a digest of nft's own listing of it right after
writing, so a later run recognises both "written from this input" and
"changed by hand since" without predicting how nft spells each rule.
"""

from __future__ import annotations

import hashlib
import re

from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError
from ansible_collections.anycast.edge.plugins.module_utils._tenant_spec import OWNER

NFT_TABLE = 'anycast_edge'
NFT_CHAIN = 'ingress'
ND_RULE = 'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept'
NFT_COMMENT_RE = re.compile(r'\s*comment "anycast\.edge tenant (\S+) input=([0-9a-f]+) kernel=([0-9a-z]+)"\s*')
LIST_TABLE = 'list table inet %s' % NFT_TABLE
DELETE_TABLE = 'delete table inet %s' % NFT_TABLE


# A location in nft's messages: FILE:LINE:COLUMN[-COLUMN]: (our own buffer is <cmdline>)
_LOCATION_RE = re.compile(r'(?:In file included from )?(\S+?):\d+:\d+(?:-\d+)?:')
_CARETS_RE = re.compile(r'\s*[\^~]+\s*')


def quiet(err):
    """nft's error text without any line it quotes from a file other than our own input.

    nft shows the offending line of whatever file it read; a ruleset cannot include a file (the
    input checks refuse include), and should one be read anyway its contents never reach a message.
    """
    out = []
    hiding = False
    for line in err.strip().splitlines():
        if hiding:      # the quoted line, up to nft's caret line under it
            if _CARETS_RE.fullmatch(line):
                hiding = False
            continue
        location = _LOCATION_RE.match(line)
        out.append(line)
        if location and location.group(1) not in ('<cmdline>', '/dev/stdin') and 'Error:' in line:
            hiding = True
            out.append('(the line it quotes from %s is not shown)' % location.group(1))
    return '\n'.join(out)


def input_digest(tenant):
    policy, rules = tenant.firewall
    text = '\n'.join([tenant.name, tenant.tenant_if, policy] + rules)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def nft_script(tenant, kernel='pending', rules=None):
    """The transaction that replaces the table (KERNEL: the listing digest for its comment).

    RULES: these instead of the tenant's own (a dry run of part of them).
    """
    policy, own = tenant.firewall
    rules = own if rules is None else rules
    lines = [
        'add table inet %s' % NFT_TABLE,
        DELETE_TABLE,
        'table inet %s {' % NFT_TABLE,
        '\tcomment "%s %s input=%s kernel=%s"' % (OWNER, tenant.name, input_digest(tenant), kernel),
        '\tchain %s {' % NFT_CHAIN,
        '\t\ttype filter hook prerouting priority filter; policy %s;' % policy,
        # Only what enters from the host is the tenant's inbound traffic; its own
        # (loopback, tunnels) is not filtered here.
        '\t\tiifname != "%s" accept' % tenant.tenant_if,
        # neighbour discovery keeps the link itself working (ARP is not filtered here either)
        '\t\t%s' % ND_RULE,
    ]
    lines += ['\t\t%s' % rule for rule in rules]
    lines += ['\t}', '}']
    return '\n'.join(lines) + '\n'


def one_rule_script(rule):
    """A one-line script with one rule: nft's error then points into the right line
    (libnftables 1.0 shows the buffer's first line whatever line failed)."""
    return ('table inet %s { chain %s { type filter hook prerouting priority filter; policy accept; %s; }; }\n'
            % (NFT_TABLE, NFT_CHAIN, rule))


def desired_lines(tenant):
    """The chain's lines as nft lists them, for a ruleset written as the input spells it."""
    policy, rules = tenant.firewall
    return ['type filter hook prerouting priority filter; policy %s;' % policy,
            'iifname != "%s" accept' % tenant.tenant_if, ND_RULE] + rules


def as_input(lines):
    """(policy, rules) of chain lines as listed, or None when they are not a ruleset of ours."""
    if len(lines) < 3:
        return None
    found = re.fullmatch(r'type filter hook prerouting priority filter; policy (accept|drop);', lines[0])
    if not found or not lines[1].startswith('iifname != ') or lines[2] != ND_RULE:
        return None
    return found.group(1), lines[3:]


def listing_digest(listing):
    """Digest of a listing without our comment line: the ruleset as the kernel holds it."""
    lines = [line.strip() for line in listing.splitlines() if line.strip() and not NFT_COMMENT_RE.fullmatch(line)]
    return hashlib.sha256('\n'.join(lines).encode()).hexdigest()[:16]


def parse_listing(listing):
    """(comment (name, input digest, kernel digest) or None, listing digest, chain lines) of our table."""
    comment = None
    for line in listing.splitlines():
        match = NFT_COMMENT_RE.fullmatch(line)
        if match:
            comment = match.groups()
            break
    body = []
    inside = False
    for line in (line.strip() for line in listing.splitlines()):
        if line.startswith('chain '):
            inside = True
            continue
        if inside and line == '}':
            inside = False
            continue
        if inside and line:
            body.append(line)
    return comment, listing_digest(listing), body


def read_listing(nft, netns):
    """The text listing of our table through NFT (a context in the tenant's namespace), or None."""
    ok, out, err = nft.run(LIST_TABLE)
    if ok:
        return out
    if 'No such file or directory' in err:
        return None
    raise EdgeError("reading nftables table inet %s in namespace '%s': nft said: %s" % (NFT_TABLE, netns, quiet(err)))


def check(tenant, nft):
    """nft --check the tenant's ruleset through NFT; raise EdgeError naming the rule nft rejects.

    A dry run changes nothing anywhere, so a tenant whose namespace does not exist
    yet is checked in the host's namespace. The first rule nft rejects is found by
    bisection (the rules are independent: no rule refers to another), so 3,000 rules
    with one bad one cost about a dozen dry runs, not 3,000, while the host lock is held.
    """
    ok, _out, err = nft.run(nft_script(tenant), dry_run=True)
    if ok:
        return
    rules = tenant.firewall[1]

    def fails(count):
        return not nft.run(nft_script(tenant, rules=rules[:count]), dry_run=True)[0]

    if rules and fails(len(rules)):
        low, high = 0, len(rules)       # rules[:low] pass, rules[:high] fail
        while high - low > 1:
            middle = (low + high) // 2
            if fails(middle):
                high = middle
            else:
                low = middle
        index = high - 1
        _rule_ok, _out, rule_err = nft.run(one_rule_script(rules[index]), dry_run=True)
        raise EdgeError("%s.firewall.rules[%d]: nft rejects '%s', nothing was changed: %s"
                        % (tenant.param, index, rules[index], quiet(rule_err or err)))
    raise EdgeError('%s.firewall: nft rejects the ruleset of tenant %s, nothing was changed: %s'
                    % (tenant.param, tenant.name, quiet(err)))


def write(tenant, nft, netns):
    """Replace the table in one transaction, then once more with the kernel digest in its comment.

    Returns the second transaction (its digest is only known once the first is written).
    """
    ok, _out, err = nft.run(nft_script(tenant))
    if not ok:
        raise EdgeError('%s.firewall: nft rejected the ruleset of tenant %s, nothing was changed (one '
                        'transaction): %s' % (tenant.param, tenant.name, quiet(err)))
    script = nft_script(tenant, listing_digest(read_listing(nft, netns)))
    ok, _out, err = nft.run(script)
    if not ok:
        raise EdgeError('%s.firewall: nft refused to rewrite the ruleset of tenant %s: %s'
                        % (tenant.param, tenant.name, quiet(err)))
    return script


def remove(tenant, nft):
    ok, _out, err = nft.run(DELETE_TABLE)
    if not ok:
        raise EdgeError('tenant %s: removing nftables table inet %s: nft said: %s' % (tenant.name, NFT_TABLE, quiet(err)))
