"""Route lookup: longest destination prefix wins, then the narrowest port range.

Routes are grouped by (protocol, family, prefix length) and indexed by their
network number, so a lookup is at most one dict probe per distinct prefix
length in use, longest first.
"""
import socket

_MAX_BITS = {socket.AF_INET: 32, socket.AF_INET6: 128}


class RouteTable:
    def __init__(self, routes):
        self.routes = list(routes)
        # (protocol, family) -> [(prefixlen, mask, {net_int: [routes by port span]})], longest first
        self._index = {}
        groups = {}
        for r in self.routes:
            key = (r.protocol, r.family)
            by_len = groups.setdefault(key, {})
            by_net = by_len.setdefault(r.prefixlen, {})
            by_net.setdefault(r.net_int, []).append(r)
        for key, by_len in groups.items():
            bits = _MAX_BITS[key[1]]
            levels = []
            for plen in sorted(by_len, reverse=True):
                mask = ((1 << plen) - 1) << (bits - plen) if plen else 0
                nets = {n: sorted(rs, key=lambda r: (r.port_span, r.index)) for n, rs in by_len[plen].items()}
                levels.append((mask, nets))
            self._index[key] = levels

    def lookup(self, protocol, family, address, port):
        """address: the packed address bytes (socket.inet_pton) or its int value."""
        levels = self._index.get((protocol, family))
        if not levels:
            return None
        if not isinstance(address, int):
            address = int.from_bytes(address, "big")
        for mask, nets in levels:
            candidates = nets.get(address & mask)
            if candidates:
                for r in candidates:
                    if r.port_lo <= port <= r.port_hi:
                        return r
        return None

    def lookup_text(self, protocol, host, port):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if family == socket.AF_INET6 and "%" in host:
            host = host.split("%", 1)[0]
        return self.lookup(protocol, family, socket.inet_pton(family, host), port)
