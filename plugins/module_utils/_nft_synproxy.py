# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hashlimit's ``synproxy`` option (``driver: nft``): SYN cookies from nftables for the TCP ports listed.

For each scope entry (destination prefix) and the ``synproxy.ports`` the module
adds, before its own rules::

    RATE-LIMIT-notrack      (prerouting, raw)  SCOPE_SP tcp flags syn / fin,syn,rst,ack notrack
                                               SCOPE_SP accept         (the rest of these flows stays tracked)
    RATE-LIMIT-notrack-out  (output, raw)      SCOPE_SP_OUT accept     (the server's replies stay tracked)
    RATE-LIMIT              (input, filter)    SCOPE_SP ct state invalid,untracked counter synproxy mss M wscale W ...
                                               SCOPE_SP ct state invalid counter drop

A client's SYN is untracked, so the synproxy statement answers it with a SYN
cookie and nothing is stored: neither a conntrack entry nor an element of the
per-source set. The client's ACK has no connection and (with
``nf_conntrack_tcp_loose=0``) is invalid: synproxy checks its cookie and opens
the connection to the server itself. That SYN comes in over loopback, tracked
(``ct state new``), and goes through the module's jump into the per-source
limit: with synproxy the limit counts completed handshakes, which a spoofed
source cannot make. Invalid packets of these ports are dropped.

The kernel settings this needs live in the namespace the module works in:
``net.netfilter.nf_conntrack_tcp_loose`` must be 0 (else the ACK is picked up
as a new connection and synproxy never sees it), ``net.ipv4.tcp_syncookies``
at least 1, and ``net.ipv4.tcp_timestamps`` at least 1 when the timestamp
option is used (the server must answer synproxy's SYN with timestamps). The
module sets what differs, before the nftables batch, and reports it.
"""

from __future__ import annotations

from ansible_collections.anycast.edge.plugins.module_utils import _nft_rules as nr
from ansible_collections.anycast.edge.plugins.module_utils._errors import EdgeError, ParamError
from ansible_collections.anycast.edge.plugins.module_utils._netns import read_sysctl, write_sysctl
from ansible_collections.anycast.edge.plugins.module_utils._validate import parse_ports

MSS_MIN, MSS_MAX = 536, 65495      # RFC 879's default MSS .. the largest loopback MTU less headers
WSCALE_MAX = 14                    # RFC 7323
DEFAULT_MSS = {4: 1460, 6: 1440}   # a 1500-byte MTU less the IPv4/IPv6 and TCP headers
LOOSE = 'net.netfilter.nf_conntrack_tcp_loose'
SYNCOOKIES = 'net.ipv4.tcp_syncookies'
TIMESTAMPS = 'net.ipv4.tcp_timestamps'
CT_STATE = {'ct': {'key': 'state'}}


def _covered(ranges, scope):
    """Whether every port of RANGES is in SCOPE (None: all ports)."""
    if scope is None:
        return True
    return all(any(first >= low and last <= high for low, high in scope) for first, last in ranges)


def parse_synproxy(params, cfg):
    """The validated synproxy option (None when not given). CFG is hashlimit's validated configuration."""
    value = params.get('synproxy')
    if value is None:
        return None
    if cfg['match'] != 'syn':
        raise ParamError('match', "'%s' cannot go with synproxy: synproxy answers the SYNs that are kept out "
                         "of conntrack, which is what match: syn does; set match: syn" % cfg['match'])
    if value.get('ports') in (None, '', []):
        raise ParamError('synproxy.ports', 'give at least one TCP port to answer with SYN cookies')
    ports = parse_ports(value.get('ports'), 'synproxy.ports')
    if not _covered(ports or [(1, 65535)], cfg['ports']):
        raise ParamError('synproxy.ports', 'lists ports outside the limited ports (%s): synproxy protects ports of '
                         'the scope; add them to ports' % ', '.join(
                             '%d' % f if f == l else '%d-%d' % (f, l) for f, l in cfg['ports']))
    mss = value.get('mss')
    if mss is not None and not MSS_MIN <= mss <= MSS_MAX:
        raise ParamError('synproxy.mss', '%d is out of range: the MSS synproxy announces must be %d-%d (the '
                         "server's own MSS: 1460 behind a 1500-byte MTU)" % (mss, MSS_MIN, MSS_MAX))
    wscale = value.get('wscale')
    if wscale is None:
        wscale = 7
    if not 0 <= wscale <= WSCALE_MAX:
        raise ParamError('synproxy.wscale', '%d is out of range: a TCP window scale is 0-%d (the server\'s own: '
                         'net.ipv4.tcp_rmem decides it, usually 7)' % (wscale, WSCALE_MAX))
    return {'ports': ports, 'mss': mss, 'wscale': wscale, 'timestamp': value.get('timestamp', True) is not False,
            'sack_perm': value.get('sack_perm', True) is not False}


def statement(syn, family):
    """The synproxy statement of one family."""
    spec = {'mss': syn['mss'] or DEFAULT_MSS[family], 'wscale': syn['wscale']}
    flags = [name for name, key in (('timestamp', 'timestamp'), ('sack-perm', 'sack_perm')) if syn[key]]
    if flags:
        spec['flags'] = flags
    text = 'synproxy mss %d wscale %d%s' % (spec['mss'], spec['wscale'], ''.join(' ' + f for f in flags))
    return {'synproxy': spec}, text


def rules(scope, family, syn):
    """{'notrack': [...], 'notrack_out': [...], 'base': [...]}: the NftRules to put first in those chains.

    SCOPE(family, field, port_field, ports) gives [(JSON matches, text)] as hashlimit's scope does.
    """
    out = {'notrack': [], 'notrack_out': [], 'base': []}
    stmt, stmt_text = statement(syn, family)
    flags = nr.match({'&': [nr.payload('tcp', 'flags'), ['fin', 'syn', 'rst', 'ack']]}, 'syn')
    for expr, text in scope(family, 'daddr', 'dport', syn['ports']):
        out['notrack'].append(nr.NftRule(expr + [flags, {'notrack': None}],
                                         text + ' tcp flags syn / fin,syn,rst,ack notrack'))
        # the rest of a synproxied flow stays tracked: synproxy needs the ACK and the connection
        out['notrack'].append(nr.NftRule(expr + [{'accept': None}], text + ' accept'))
        out['base'].append(nr.NftRule(expr + [nr.match(CT_STATE, ['invalid', 'untracked'], 'in'), nr.counter(), stmt],
                                      text + ' ct state invalid,untracked counter ' + stmt_text, 'synproxy'))
        out['base'].append(nr.NftRule(expr + [nr.match(CT_STATE, 'invalid', 'in'), nr.counter(), {'drop': None}],
                                      text + ' ct state invalid counter drop', 'invalid'))
    for expr, text in scope(family, 'saddr', 'sport', syn['ports']):
        out['notrack_out'].append(nr.NftRule(expr + [{'accept': None}], text + ' accept'))
    return out


# --------------------------------------------------------------------------
# The namespace's settings synproxy needs.

def _path(key):
    return '/proc/sys/' + key.replace('.', '/')


def read_sysctls():
    """{key: value or None} in the namespace this thread is in."""
    values = {}
    for key in (LOOSE, SYNCOOKIES, TIMESTAMPS):
        text = read_sysctl(_path(key))
        values[key] = int(text) if text is not None and text.isdigit() else None
    return values


def wanted_writes(syn, values):
    """[(key, now, new)] that synproxy needs written (in this order)."""
    writes = []
    if values.get(LOOSE) != 0:
        writes.append((LOOSE, values.get(LOOSE), 0))
    if not values.get(SYNCOOKIES):
        writes.append((SYNCOOKIES, values.get(SYNCOOKIES), 1))
    if syn['timestamp'] and not values.get(TIMESTAMPS):
        writes.append((TIMESTAMPS, values.get(TIMESTAMPS), 1))
    return writes


def command(key, value):
    return 'sysctl -w %s=%d' % (key, value)


def write_sysctls(writes):
    """Write each (key, now, new); on a failure put back what was written and raise."""
    done = []
    for key, now, new in writes:
        try:
            write_sysctl(_path(key), '%d\n' % new)
        except EdgeError as exc:
            undo_sysctls(done)
            raise EdgeError('synproxy needs %s=%d in this namespace: %s (nothing was changed)' % (key, new, exc))
        done.append((key, now, new))


def undo_sysctls(done):
    for key, now, _new in reversed(done):
        if now is None:
            continue
        try:
            write_sysctl(_path(key), '%d\n' % now)
        except EdgeError:
            pass
