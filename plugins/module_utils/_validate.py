# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Input checks shared by every module.

Each check raises :class:`ParamError` whose text starts with the parameter's
path (``rules[2].on_port``) so the user knows exactly what to fix. Modules
validate everything before they touch the kernel.
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.anycast.edge.plugins.module_utils._errors import ParamError

IFNAMSIZ_CHARS = 15         # IFNAMSIZ (16) less the terminating NUL
XT_CHAIN_MAXLEN = 28        # XT_EXTENSION_MAXNAMELEN (29) less the NUL
BUILTIN_CHAINS = frozenset(('PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING'))
XT_VERDICTS = frozenset(('ACCEPT', 'DROP', 'RETURN', 'QUEUE'))
# Whole-string patterns, used with fullmatch(): a '$' at the end would also admit "name\n".
CHAIN_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*')


def shown(text):
    """TEXT for a message: quoted as written, with any control character escaped (repr)."""
    if isinstance(text, str) and text.isprintable():
        return "'%s'" % text
    return repr(text)


def check_printable(text, param, what):
    """Refuse a name holding a control character or other unprintable text (a newline, a tab, NUL...).

    Such a name is a different kernel object than it looks like in every listing, and a tool that
    parses those listings line by line can neither find nor remove it.
    """
    if isinstance(text, str) and not text.isprintable():
        bad = next(char for char in text if not char.isprintable())
        raise ParamError(param, '%s %s contains the control character %r; names are printable text'
                         % (what, shown(text), bad))
    return text


# Names of xtables extensions (iptables 1.8's targets and matches, and xtables-addons' common targets).
# iptables resolves `-j NAME` to a target before a chain of that name, so a chain named MARK is written by
# iptables-restore but every jump into it is a MARK target without options, and the chain cannot be removed by
# the tools again. Compared without case: a chain that reads like an extension is never what was meant.
XT_TARGETS = frozenset((
    'ACCOUNT', 'AUDIT', 'CHAOS', 'CHECKSUM', 'CLASSIFY', 'CLUSTERIP', 'CONNMARK', 'CONNSECMARK', 'CT', 'DELUDE',
    'DHCPMAC', 'DNAT', 'DNETMAP', 'DNPT', 'DSCP', 'ECHO', 'ECN', 'ERROR', 'HL', 'HMARK', 'IDLETIMER', 'IPMARK', 'LED',
    'LOG', 'LOGMARK', 'MARK', 'MASQUERADE', 'MIRROR', 'NETMAP', 'NFLOG', 'NFQUEUE', 'NOTRACK', 'PROTO', 'RATEEST',
    'RAWDNAT', 'RAWSNAT', 'REDIRECT', 'REJECT', 'SAME', 'SECMARK', 'SET', 'SNAT', 'SNPT', 'STANDARD', 'SYNPROXY',
    'SYSRQ', 'TARPIT', 'TCPMSS', 'TCPOPTSTRIP', 'TEE', 'TOS', 'TPROXY', 'TRACE', 'TTL', 'ULOG'))
XT_MATCHES = frozenset((
    'addrtype', 'ah', 'bpf', 'cgroup', 'cluster', 'comment', 'condition', 'connbytes', 'connlabel', 'connlimit',
    'connmark', 'conntrack', 'cpu', 'dccp', 'devgroup', 'dscp', 'dst', 'ecn', 'esp', 'eui64', 'frag', 'fuzzy',
    'geoip', 'gradm', 'hashlimit', 'hbh', 'helper', 'hl', 'icmp', 'icmp6', 'iface', 'ipcomp', 'ipp2p', 'iprange',
    'ipv4options', 'ipv6header', 'ipvs', 'length', 'length2', 'limit', 'lscan', 'mac', 'mark', 'mh', 'multiport',
    'nfacct', 'osf', 'owner', 'physdev', 'pknock', 'pkttype', 'policy', 'psd', 'quota', 'quota2', 'rateest',
    'realm', 'recent', 'rpfilter', 'rt', 'sctp', 'set', 'socket', 'srh', 'state', 'statistic', 'string', 'tcp',
    'tcpmss', 'time', 'tos', 'ttl', 'u32', 'udp', 'udplite', 'unclean'))
XT_EXTENSIONS = frozenset(name.upper() for name in XT_TARGETS | XT_MATCHES)
# Chains another module owns, by the prefix of their names: no other module may write or remove them.
MODULE_CHAIN_PREFIXES = (('AE-TENANT-', 'tenant'), ('ANYCAST-MSS-', 'gre_tunnel'))


def parse_prefix(value, param, family=None):
    """Parse a CIDR (a bare address means a host prefix).

    Host bits are refused rather than silently cleared: ``10.0.0.1/24`` is more
    often a typo for an address than a prefix, and normalising it would make the
    module manage something other than what was written.
    """
    if not isinstance(value, str) or not value.strip():
        raise ParamError(param, 'expected an IPv4 or IPv6 prefix in CIDR notation, got %r' % (value,))
    text = value.strip()
    _refuse_zone(text, param, 'a prefix')
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ParamError(param, "'%s' is not a valid IPv4 or IPv6 prefix (CIDR like 192.0.2.0/24 "
                                    "or 2001:db8::/64)" % text)
        raise ParamError(param, "'%s' has host bits set; the prefix is %s" % (text, net))
    if family is not None and net.version != family:
        raise ParamError(param, "'%s' is IPv%d, expected IPv%d" % (text, net.version, family))
    return net


# Ranges an AnyIP prefix may not touch: making any of their addresses local breaks the host itself
# (loopback, the kernel's own 127.0.0.0/8 route), its links (link-local, neighbour discovery), or
# means nothing (unspecified, multicast, broadcast, IPv4-mapped IPv6, which never reaches the wire).
SPECIAL_RANGES = tuple((ipaddress.ip_network(net), what) for net, what in (
    ('0.0.0.0/8', 'the unspecified ("this network") range'),
    ('127.0.0.0/8', 'the loopback range'),
    ('169.254.0.0/16', 'the link-local range'),
    ('224.0.0.0/4', 'the multicast range'),
    ('255.255.255.255/32', 'the limited broadcast address'),
    ('::/128', 'the unspecified address'),
    ('::1/128', 'the loopback address'),
    ('::ffff:0:0/96', 'the IPv4-mapped IPv6 range'),
    ('fe80::/10', 'the link-local range'),
    ('ff00::/8', 'the multicast range'),
))


def check_unicast_prefix(net, param):
    """Refuse a default route and a prefix that touches a special range (SPECIAL_RANGES)."""
    if net.prefixlen == 0:
        raise ParamError(param, '%s is a default route: every address would become local, the gateway\'s and '
                                'the SSH client\'s included' % net)
    for special, what in SPECIAL_RANGES:
        if special.version != net.version or not net.overlaps(special):
            continue
        if net == special:
            relation = 'is'
        elif net.subnet_of(special):
            relation = 'lies in'
        else:
            relation = 'contains'
        text = str(net)
        mapped = getattr(net.network_address, 'ipv4_mapped', None)
        if mapped is not None and net.prefixlen >= 96:
            text += ' (%s written as IPv4-mapped IPv6; give IPv4 prefixes as IPv4)' % ipaddress.ip_network(
                '%s/%d' % (mapped, net.prefixlen - 96))
        raise ParamError(param, '%s %s %s %s; only unicast prefixes routed to this host can be made local'
                         % (text, relation, what, special))
    return net


def parse_ssh_connection(text):
    """SSH_CONNECTION 'client_ip client_port server_ip server_port' -> tuple or None."""
    if not text:
        return None
    parts = text.split()
    if len(parts) != 4:
        return None
    try:
        client = _unmapped(ipaddress.ip_address(parts[0].split('%')[0]))
        server = _unmapped(ipaddress.ip_address(parts[2].split('%')[0]))
        return client, int(parts[1]), server, int(parts[3])
    except ValueError:
        return None


def ssh_client_address(environ):
    """The SSH client's address this process runs for: from SSH_CONNECTION, else SSH_CLIENT
    ('client_ip client_port server_port'); None when not under SSH."""
    connection = parse_ssh_connection(environ.get('SSH_CONNECTION'))
    if connection:
        return connection[0]
    parts = (environ.get('SSH_CLIENT') or '').split()
    if len(parts) == 3:
        try:
            return _unmapped(ipaddress.ip_address(parts[0].split('%')[0]))
        except ValueError:
            return None
    return None


def _unmapped(address):
    # a dual-stack sshd may report IPv4 peers as ::ffff:a.b.c.d; the kernel routes them as IPv4
    return getattr(address, 'ipv4_mapped', None) or address


def _refuse_zone(text, param, what):
    # Python's ipaddress takes an IPv6 zone (fe80::1%eth0) that routes, rules and sockets of this collection
    # cannot carry: the zone would be dropped silently or fail later in inet_pton.
    if '%' in text:
        raise ParamError(param, "'%s' has a zone index (the part from '%%'); %s here is written without one"
                         % (text, what))


def parse_address(value, param, family=None):
    if not isinstance(value, str) or not value.strip():
        raise ParamError(param, 'expected an IPv4 or IPv6 address, got %r' % (value,))
    _refuse_zone(value.strip(), param, 'an address')
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ParamError(param, "'%s' is not a valid IPv4 or IPv6 address" % value)
    if family is not None and addr.version != family:
        raise ParamError(param, "'%s' is IPv%d, expected IPv%d" % (value, addr.version, family))
    return addr


def parse_interface(value, param, family=None):
    """An address with its prefix length (``10.0.0.1/30``), host bits allowed."""
    if not isinstance(value, str) or '/' not in value:
        raise ParamError(param, "expected an address with prefix length like 10.0.0.1/30, got %r" % (value,))
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError:
        raise ParamError(param, "'%s' is not a valid address/prefix-length" % value)
    if family is not None and iface.version != family:
        raise ParamError(param, "'%s' is IPv%d, expected IPv%d" % (value, iface.version, family))
    return iface


def parse_port(value, param):
    if isinstance(value, bool):
        raise ParamError(param, 'expected a port number 1-65535, got %r' % (value,))
    try:
        port = int(str(value).strip(), 10)
    except ValueError:
        raise ParamError(param, "'%s' is not a port number (1-65535)" % (value,))
    if not 1 <= port <= 65535:
        raise ParamError(param, 'port %d is out of range 1-65535' % port)
    return port


_RANGE = re.compile(r'\s*(\d+)\s*[-:]\s*(\d+)\s*')


def parse_port_range(value, param):
    """``443`` / ``"8000-8100"`` / ``"8000:8100"`` -> (first, last)."""
    match = _RANGE.fullmatch(str(value)) if not isinstance(value, (int, bool)) else None
    if match:
        first = parse_port(match.group(1), param)
        last = parse_port(match.group(2), param)
        if first > last:
            raise ParamError(param, "range '%s' ends before it starts" % value)
        return first, last
    port = parse_port(value, param)
    return port, port


def parse_ports(value, param):
    """None (all ports), a port, a range, or a list of those -> sorted, merged ranges."""
    if value is None or value == '' or value == []:
        return None
    items = value if isinstance(value, list) else [value]
    ranges = []
    for index, item in enumerate(items):
        item_param = '%s[%d]' % (param, index) if isinstance(value, list) else param
        if isinstance(item, str) and ',' in item:
            raise ParamError(item_param, "'%s': give several ports as a list, not a comma string" % item)
        ranges.append(parse_port_range(item, item_param))
    ranges.sort()
    merged = [list(ranges[0])]
    for first, last in ranges[1:]:
        if first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    if merged == [[1, 65535]]:
        return None
    return [tuple(r) for r in merged]


def check_ifname(name, param):
    if not isinstance(name, str) or not name:
        raise ParamError(param, 'expected an interface name')
    check_printable(name, param, 'interface name')
    if len(name) > IFNAMSIZ_CHARS:
        raise ParamError(param, "interface name '%s' is %d characters; the kernel allows at most %d"
                         % (name, len(name), IFNAMSIZ_CHARS))
    if name in ('.', '..') or re.search(r'[\s/:]', name):
        raise ParamError(param, "'%s' is not a valid interface name (no whitespace, '/' or ':')" % name)
    return name


def check_chain_name(name, param):
    if not isinstance(name, str) or not name:
        raise ParamError(param, 'expected a chain name')
    check_printable(name, param, 'chain name')
    if len(name) > XT_CHAIN_MAXLEN:
        raise ParamError(param, "chain name '%s' is %d characters; the kernel allows at most %d"
                         % (name, len(name), XT_CHAIN_MAXLEN))
    if name in BUILTIN_CHAINS or name in XT_VERDICTS:
        raise ParamError(param, "'%s' is a built-in chain or verdict; the collection only manages chains of its own" % name)
    if not CHAIN_NAME_RE.fullmatch(name):
        raise ParamError(param, "%s is not a valid chain name (letters, digits, '_', '.', '-')" % shown(name))
    if name.upper() in XT_EXTENSIONS:
        raise ParamError(param, "'%s' is the name of an xtables target or match: iptables would read a jump to it "
                                "as that extension, and the chain could not be removed again; choose another name" % name)
    for prefix, owner in MODULE_CHAIN_PREFIXES:
        if name.startswith(prefix):
            raise ParamError(param, "'%s' starts with %s, the prefix of the chains anycast.edge.%s owns; another "
                                    "module's chains are never written or removed here" % (name, prefix, owner))
    return name


def check_mark(value, param):
    """``0x10``, ``16`` or ``0x10/0xff`` -> (mark, mask) integers."""
    text = str(value).strip()
    parts = text.split('/')
    if len(parts) > 2:
        raise ParamError(param, "'%s' is not a mark (VALUE or VALUE/MASK)" % text)
    try:
        numbers = [int(p, 0) for p in parts]
    except ValueError:
        raise ParamError(param, "'%s' is not a mark (VALUE or VALUE/MASK, decimal or 0x hex)" % text)
    for number in numbers:
        if not 0 <= number <= 0xFFFFFFFF:
            raise ParamError(param, "'%s' does not fit in 32 bits" % text)
    mark = numbers[0]
    mask = numbers[1] if len(numbers) == 2 else 0xFFFFFFFF
    if mark & ~mask:
        raise ParamError(param, "'%s' sets bits outside its mask" % text)
    return mark, mask


def require_unique(values, param, what):
    seen = {}
    for index, value in enumerate(values):
        if value in seen:
            raise ParamError('%s[%d]' % (param, index), '%s %s is also given at %s[%d]'
                             % (what, value, param, seen[value]))
        seen[value] = index
