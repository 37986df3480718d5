#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: hashlimit
short_description: Rate-limit new connections per source address in the kernel (iptables hashlimit)
version_added: "0.1.0"
description:
  - Owns one chain in the C(filter) table (default C(RATE-LIMIT)) and the jump into it from C(INPUT), for
    IPv4 and IPv6. By default it is the chain of the Pusher write-up; new connections
    (C(-m conntrack --ctstate NEW)) jump to C(RATE-LIMIT), where
    C(-m hashlimit --hashlimit-mode srcip --hashlimit-upto 50/sec --hashlimit-burst 20 --hashlimit-name conn_rate_limit)
    accepts, a C(LOG) sampled by C(-m limit --limit 1/sec) records what is refused, and C(REJECT) refuses the rest.
  - Each source (or each O(srcmask) prefix) has its own bucket of O(burst) credits refilled at O(rate); a new
    connection that finds its bucket empty is logged (sampled) and refused.
  - The scope (O(protocol), O(ports), O(destinations)) sits on the jump rule, so other traffic never enters the
    chain. O(exempt) sources are accepted before the hashlimit rule and never touch a bucket.
  - O(match=syn) limits TCP SYNs statelessly (C(-p tcp --syn)) instead of conntrack NEW, for hosts that keep
    conntrack off their AnyIP prefixes. The module then also owns a chain of the same name in the C(raw) table
    that marks the scope C(-j CT --notrack), jumped to from C(PREROUTING) (packets to the scope) and from
    C(OUTPUT) (their replies, by source address and port). Untracked packets never match C(--ctstate ESTABLISHED),
    so a host firewall that relies on conntrack for the same ports must allow them otherwise; with neither
    O(ports) nor O(destinations) every TCP packet of the host is untracked.
  - The hashlimit table is always created with explicit O(htable_size), O(htable_max), O(htable_expire) and
    O(htable_gcinterval). The kernel shares a table by name and keeps a live table's old settings when its rule is
    replaced; so when the hashlimit rule changes while its table exists, the chain is first emptied (for a few
    milliseconds new connections are not limited), which frees the table, and then written.
  - Every rule carries a comment C(anycast.edge <digest>); the chains are compared by those digests, rewritten in
    one transaction per table when they differ, and read back.
  - The result reports per-rule packet and byte counters, how full the hashlimit tables and conntrack are, and
    warns when a table is more than 80% full.
author:
  - anycast.edge developers (@anycast-edge)
requirements:
  - iptables on the managed host, or nftables (python3-nftables or the nft command) for O(driver=nft)
  - python-iptables on legacy-iptables hosts for O(driver=python-iptables)
options:
  name:
    description:
      - Name of the hashlimit table (C(/proc/net/ipt_hashlimit/NAME), C(/proc/net/ip6t_hashlimit/NAME)); at most
        254 characters. Tables are shared by name, so give each chain its own.
    type: str
    default: conn_rate_limit
  chain:
    description:
      - Name of the chain the module owns (at most 28 characters), in C(filter) and, with O(match=syn), C(raw).
      - Refused as for M(anycast.edge.tproxy_rule)'s O(anycast.edge.tproxy_rule#module:chain) - built-in chains,
        verdicts, names of xtables targets and matches in any case (C(MARK), C(NFLOG), ...), names with another
        module's prefix (C(AE-TENANT-), C(ANYCAST-MSS-)).
    type: str
    default: RATE-LIMIT
  rate:
    description:
      - Credits per source and time unit, C(COUNT/UNIT) with unit C(sec), C(min), C(hour) or C(day) (C(50/sec),
        C(3000/min)). Written as C(--hashlimit-upto).
    type: str
    default: 50/sec
  burst:
    description: Size of each bucket, also its initial fill (1-10000).
    type: int
    default: 20
  mode:
    description: What a bucket is kept for; any of V(srcip), V(srcport), V(dstip), V(dstport).
    type: list
    elements: str
    default: [srcip]
  srcmask:
    description:
      - Group sources by prefix instead of address (C(24) limits each /24 as one). An integer applies to every
        configured family and must fit IPv4 when IPv4 is configured.
      - 'A dictionary with keys C(ipv4) and C(ipv6), for example C({ipv4: 24, ipv6: 64}), sets each family.'
    type: raw
  dstmask:
    description: Like O(srcmask), for destination addresses (used with O(mode=dstip)).
    type: raw
  match:
    description:
      - V(new) limits connections conntrack sees as new (C(--ctstate NEW), the write-up's way, any protocol).
      - V(syn) limits TCP SYNs without conntrack and marks the scope untracked in the C(raw) table.
    type: str
    choices: [new, syn]
    default: new
  protocol:
    description:
      - Protocol of the limited traffic. Omitted means all protocols for O(match=new) and C(tcp) for O(match=syn).
    type: str
    choices: [all, tcp, udp]
  ports:
    description:
      - Destination ports of the limited traffic (needs O(protocol) C(tcp) or C(udp)). A port, a range
        (C("8000-8100")) or a list of them, at most 15 multiport slots (a range takes two). Omitted means all.
    type: raw
  destinations:
    description:
      - Destination prefixes of the limited traffic, any number of each family (one jump rule per prefix, all into
        the one chain and its one hashlimit table). When given, only the families that have a destination get a
        chain. Omitted means every local address.
    type: list
    elements: str
  exempt:
    description:
      - Source prefixes that are never limited (accepted before the hashlimit rule).
      - A prefix of a family O(family) leaves out (C(::/0) with C(family=ipv4)) is refused, as it would exempt nothing.
    type: list
    elements: str
    default: []
  log:
    description:
      - Log refused connections, sampled. V(false) disables the LOG rule; V(true) or a dictionary with C(rate)
        (default C(1/sec)) and C(prefix) (at most 29 characters) enables it.
      - 'The default prefix is C(IPTables-Rejected: ), as in the write-up.'
    type: raw
    default: true
  action:
    description:
      - What happens to connections over the limit. V(reject) sends a TCP reset to TCP and ICMP port unreachable to
        everything else (a reset only exists for TCP); V(reject-icmp) sends port unreachable to all; V(drop) drops
        silently.
    type: str
    choices: [reject, reject-icmp, drop]
    default: reject
  htable_max:
    description:
      - Most entries (buckets of sources) the hashlimit table holds, up to 1048576. When it is full, packets from
        sources without an entry are dropped before any later rule (no REJECT, no LOG), so keep it well above the
        number of distinct sources seen within O(htable_expire).
    type: int
    default: 65536
  htable_size:
    description: Number of hash buckets; defaults to O(htable_max)/4 and may not exceed it.
    type: int
  htable_expire:
    description:
      - Milliseconds after which an idle entry is removed. Defaults to the kernel's default, 1000 ms per second of
        the rate's unit (1000 for C(/sec), 60000 for C(/min)).
      - Any value from 1 ms is accepted, as the kernel takes it; but an entry that expires before its bucket refills
        (burst / rate) forgets the source, which then starts again with a full burst; below that, the limit is
        looser than O(rate) says.
    type: int
  htable_gcinterval:
    description:
      - Milliseconds between garbage collection runs of the table. Any value from 1 ms is accepted, as the kernel
        takes it; each run walks the whole table, so very short intervals cost CPU in proportion to O(htable_size).
    type: int
    default: 1000
  family:
    description: Address families to configure.
    type: str
    choices: [ipv4, ipv6, both]
    default: both
  ssh_guard:
    description:
      - Lockout safety. When the module runs under SSH (C(SSH_CONNECTION) is set) and the scope covers that
        connection's server address and port without exempting its client, V(fail) (the default) fails before
        changing anything, naming the client to add to O(exempt); V(exempt) adds the client's address to the exempt
        rules by itself (returned as RV(ssh_exempt); it changes with the controller's address); V(ignore) does
        neither. The check also applies with O(netns), since the module cannot tell which namespace the SSH session
        arrived in.
    type: str
    choices: [fail, exempt, ignore]
    default: fail
  state:
    description:
      - V(present) writes the chains; V(absent) removes the chains (filter and raw) and the jumps into them, for
        both families.
      - V(gathered) changes nothing and returns under RV(gathered) the limit the chain O(chain) holds, as this
        module's parameters (given back as input, they change nothing).
      - V(rendered) returns under RV(rendered) the iptables-restore transactions these parameters would send to a
        host without the chain, without reading or touching any host or namespace (works without root).
    type: str
    choices: [present, absent, gathered, rendered]
    default: present
  synproxy:
    description:
      - SYN cookies from the kernel for some TCP ports of the scope (nftables' C(synproxy) statement); needs
        O(driver=nft) and O(match=syn), and is refused otherwise.
      - The SYNs to these ports are put on C(notrack) at the C(raw) priority and answered by synproxy with a SYN
        cookie, storing nothing (no conntrack entry, no element of the per-source set). A client that completes
        the handshake gets its connection to the server from synproxy; only then does the per-source limit count
        it (one element per real source; a spoofed source cannot complete a handshake). Invalid packets of these
        ports are dropped. The rest of these flows stays tracked.
      - It needs, in the namespace the module works in, C(net.netfilter.nf_conntrack_tcp_loose=0),
        C(net.ipv4.tcp_syncookies) at least 1 and, with O(synproxy.timestamp), C(net.ipv4.tcp_timestamps) at least
        1. The module sets the ones that differ before writing the rules, and reports them in RV(actions) and
        RV(commands) (check mode predicts them). O(state=absent) leaves them as they are.
    type: dict
    suboptions:
      ports:
        description:
          - TCP ports to answer with SYN cookies, given as a port, a range (C("8000-8100")) or a list of them. They
            must be among O(ports) (any, when O(ports) is omitted).
        type: raw
        required: true
      mss:
        description:
          - The MSS synproxy announces to the client, 536-65495; give the server's own. Omitted, 1460 for IPv4 and
            1440 for IPv6 (a 1500-byte MTU).
        type: int
      wscale:
        description: The window scale synproxy announces, 0-14. Give the server's own (usually 7).
        type: int
        default: 7
      timestamp:
        description:
          - Offer TCP timestamps. Window scaling and SACK are carried in the timestamp cookie; without it, clients
            get neither.
        type: bool
        default: true
      sack_perm:
        description: Offer selective acknowledgements.
        type: bool
        default: true
  driver:
    description:
      - How rules are written. V(iptables) uses the host's C(iptables-save)/C(iptables-restore --noflush --wait)
        and follows the host's variant (nf_tables or legacy). V(python-iptables) uses libiptc and works only on
        hosts whose iptables is the legacy variant; it writes exactly the rules the CLI writes. V(auto) picks
        V(python-iptables) on legacy hosts that have the library and V(iptables) otherwise, and V(nft) on a host
        without any iptables command (nftables only).
      - V(nft) writes native nftables in the collection's own table C(inet anycast_edge_dp), through the JSON API
        (python3-nftables, else C(nft -j)), one transaction per call. Each family gets a dynamic set
        C(NAME_v4)/C(NAME_v6) keyed by O(mode) as a concatenation (O(srcmask)/O(dstmask) mask the addresses), of
        size O(htable_max), elements timing out after O(htable_expire) idle (whole seconds);
        C(update @set { KEY limit rate RATE burst N packets } accept), else the sampled log and O(action) in a
        refusing chain. A source that finds the set full is refused (xt_hashlimit drops it silently). O(exempt)
        prefixes are a named interval set C(NAME_exempt_v4)/C(NAME_exempt_v6). O(match=syn) puts the scope on
        C(notrack) in chains at the C(raw) priority (C(CHAIN-notrack), C(CHAIN-notrack-out)), so a refused SYN
        leaves no conntrack entry. The chains are C(CHAIN) (hook input, priority filter), C(CHAIN-v4),
        C(CHAIN-v6) and their C(-refuse) chains; the C(accept) of these chains does not skip the host's other
        base chains (an iptables-nft firewall still sees the packet).
      - O(synproxy) exists with V(nft) only. With V(nft), O(htable_size) and O(htable_gcinterval) (xt_hashlimit's
        buckets and garbage collection) are refused, and so is an O(htable_expire) that is not whole seconds; O(state=gathered) gives back the
        parameters when the chains hold exactly what they make.
      - 'Moving from an iptables driver: run the task with O(state=absent) and the old driver (check mode first),
        then with V(nft); see docs/nftables.md.'
    type: str
    choices: [auto, python-iptables, iptables, nft]
    default: auto
  netns:
    description: Network namespace to work in instead of the host's; it must exist and is never created.
    type: str
extends_documentation_fragment:
  - anycast.edge.persist
attributes:
  check_mode:
    support: full
    description: Predicts exactly what would change; changes nothing.
  diff_mode:
    support: full
    description: Shows the chains and their jumps before and after, in iptables-save syntax.
notes:
  - Needs C(CAP_NET_ADMIN) on the managed host (C(become)).
  - Size conntrack for the expected number of connections with M(anycast.edge.conntrack_sizing); with
    O(match=new) a full conntrack table drops new connections before this chain sees them.
seealso:
  - module: anycast.edge.conntrack_sizing
'''

EXAMPLES = r'''
- name: The write-up's chain, SSH from the admin network never limited
  anycast.edge.hashlimit:
    exempt: [192.0.2.0/28, "2001:db8:a::/64"]

- name: 10 new connections per second per /24 to the web ports of the AnyIP prefixes, stateless
  anycast.edge.hashlimit:
    name: web_syn
    chain: WEB-LIMIT
    match: syn
    ports: [80, 443]
    destinations: [198.51.100.0/24, "2001:db8:100::/48"]
    rate: 10/sec
    burst: 5
    srcmask: {ipv4: 24, ipv6: 64}
    htable_max: 262144
    log: {rate: 5/min, prefix: "web-limit: "}

- name: SYN cookies for the web ports on nftables, the handshakes then limited per source
  anycast.edge.hashlimit:
    driver: nft
    match: syn
    ports: [80, 443]
    destinations: [198.51.100.0/24]
    action: drop
    synproxy:
      ports: [80, 443]
      mss: 1460
      wscale: 7

- name: Remove the chains and their jumps
  anycast.edge.hashlimit:
    state: absent
'''

RETURN = r'''
before:
  description: The limit the chain held before the run, as this module's parameters (defaults left out).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: dict
  sample: {chain: RATE-LIMIT, rate: 50/sec, protocol: tcp, ports: [80, 443]}
after:
  description: The limit the chain holds after the run (predicted in check mode), as this module's parameters.
  returned: when something changed (in check mode, would change); unchanged, it is RV(before)
  type: dict
  sample: {chain: RATE-LIMIT, rate: 100/sec, protocol: tcp, ports: [80, 443]}
commands:
  description:
    - The transactions sent (in check mode, that would be sent), per family and table one C(iptables-restore
      --noflush) input, written as a shell here-document (two for a table whose hashlimit table is rebuilt). With
      the python-iptables driver the same changes are one libiptc commit, shown as the equivalent
      C(iptables-legacy-restore) input. With O(driver=nft) one C(nft -j -f -) batch, preceded with O(synproxy) by
      the C(sysctl -w) lines of the namespace settings it needs, when they differ.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
gathered:
  description: With O(state=gathered), the chain's limit as this module's parameters (V(state=absent) without it).
  returned: when O(state=gathered)
  type: dict
  sample: {chain: RATE-LIMIT, rate: 3000/min, burst: 50}
rendered:
  description: With O(state=rendered), the transactions the parameters would send to a host without the chains.
  returned: when O(state=rendered)
  type: list
  elements: str
persisted:
  description: The record re-applied at boot (null when the run removed it).
  returned: when O(persist=true) and not in check mode
  type: str
  sample: /etc/anycast-edge/state/hashlimit@host.json
confirm_token:
  description: With O(confirm_timeout), the token M(anycast.edge.confirm) takes; the change is rolled back unless confirmed.
  returned: when a change was applied with confirm_timeout
  type: str
driver:
  description: The driver that was used.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: str
  sample: iptables
actions:
  description: What was (or in check mode would be) done, one line per change.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: list
  elements: str
  sample: ["IPv4 filter: write chain RATE-LIMIT (4 rules)", "IPv4 filter: insert jump INPUT -> RATE-LIMIT"]
rules:
  description: Number of rules of the filter chain per family after the run.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: dict
  sample: {ipv4: 5, ipv6: 5}
ssh_exempt:
  description: The SSH client's prefix exempted by O(ssh_guard=exempt), else null.
  returned: unless O(state) is V(gathered) or V(rendered)
  type: str
  sample: 192.0.2.10/32
counters:
  description:
    - Packets and bytes that hit the chain's rules since they were written, per family and role; C(accepted) is
      the hashlimit rule, C(refused) the REJECT or DROP rules, C(logged) the sampled LOG rule, C(exempt) the exempt
      rules. With O(match=new) each connection counts one packet.
      - With O(synproxy), also C(synproxy) (the client SYNs answered with a cookie and the ACKs checked) and
        C(invalid) (the invalid packets of those ports dropped).
  returned: when state is present
  type: dict
  sample: {ipv4: {accepted: {packets: 6, bytes: 360}, refused: {packets: 24, bytes: 1440},
           logged: {packets: 5, bytes: 300}, exempt: {packets: 0, bytes: 0}}}
hashlimit_table:
  description: Entries in each family's hashlimit table against its htable_max (a warning is added above 80%).
  returned: when state is present
  type: dict
  sample: {ipv4: {name: conn_rate_limit, path: /proc/net/ipt_hashlimit/conn_rate_limit, entries: 3,
           htable_max: 65536, htable_size: 16384, percent: 0.0}}
conntrack:
  description: Conntrack entries in the namespace against nf_conntrack_max (a warning is added above 80%).
  returned: unless O(state) is V(gathered) or V(rendered)
  type: dict
  sample: {count: 120, max: 262144, buckets: 65536, percent: 0.0}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.anycast.edge.plugins.module_utils._engine import persisted, run_module, states
from ansible_collections.anycast.edge.plugins.module_utils._hashlimit import (
    DEFAULT_GCINTERVAL, DEFAULT_HTABLE_MAX, Hashlimit)
from ansible_collections.anycast.edge.plugins.module_utils._nft_hashlimit import NftHashlimit
from ansible_collections.anycast.edge.plugins.module_utils._nft_rules import wants_nft
from ansible_collections.anycast.edge.plugins.module_utils._xtables import DRIVERS


def main():
    module = AnsibleModule(
        argument_spec=persisted(dict(
            name=dict(type='str', default='conn_rate_limit'),
            chain=dict(type='str', default='RATE-LIMIT'),
            rate=dict(type='str', default='50/sec'),
            burst=dict(type='int', default=20),
            mode=dict(type='list', elements='str', default=['srcip']),
            srcmask=dict(type='raw'),
            dstmask=dict(type='raw'),
            match=dict(type='str', choices=['new', 'syn'], default='new'),
            protocol=dict(type='str', choices=['all', 'tcp', 'udp']),
            ports=dict(type='raw'),
            destinations=dict(type='list', elements='str'),
            exempt=dict(type='list', elements='str', default=[]),
            log=dict(type='raw', default=True),
            action=dict(type='str', choices=['reject', 'reject-icmp', 'drop'], default='reject'),
            htable_max=dict(type='int', default=DEFAULT_HTABLE_MAX),
            htable_size=dict(type='int'),
            htable_expire=dict(type='int'),
            htable_gcinterval=dict(type='int', default=DEFAULT_GCINTERVAL),
            family=dict(type='str', choices=['ipv4', 'ipv6', 'both'], default='both'),
            ssh_guard=dict(type='str', choices=['fail', 'exempt', 'ignore'], default='fail'),
            state=dict(type='str', choices=states('present', 'absent'), default='present'),
            synproxy=dict(type='dict', options=dict(
                ports=dict(type='raw', required=True),
                mss=dict(type='int'),
                wscale=dict(type='int', default=7),
                timestamp=dict(type='bool', default=True),
                sack_perm=dict(type='bool', default=True),
            )),
            driver=dict(type='str', choices=list(DRIVERS) + ['nft'], default='auto'),
            netns=dict(type='str'),
        )),
        supports_check_mode=True,
    )
    run_module(module, NftHashlimit if wants_nft(module, module.params['driver']) else Hashlimit)


if __name__ == '__main__':
    main()
