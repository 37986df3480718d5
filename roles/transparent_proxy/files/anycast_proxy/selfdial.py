"""The proxy must never dial itself: the run-time side of config.SelfDialIndex.

Validation refuses origins given as addresses that are the proxy's own listeners or inside its
routes; what it cannot see is checked here, before each dial: the addresses host names resolve
to, a wildcard listener (`0.0.0.0:P` takes every local address of the host, which only the
kernel knows: an address is local when a socket can bind it), and, for origins without a port,
the port each client dialled. The verdict of an origin is computed once per configuration
(it is kept on the Origin, with the guard it came from), so a dial costs an attribute read;
only an origin without a port whose address some route or listener covers is checked per port.
"""
import ipaddress
import socket

_PER_PORT = "per port"


class SelfDialGuard:
    def __init__(self, index, log):
        self.index = index       # config.SelfDialIndex of the running configuration
        self.log = log
        self._local = {}         # address -> whether this host has it

    def check(self, origin, protocol, port):
        """Why dialling ORIGIN (pool.Origin) for a client that dialled PORT reaches the proxy
        itself, or None."""
        verdict = origin.self_dial
        if verdict is None or verdict[0] is not self:
            verdict = origin.self_dial = (self,) + self._classify(origin, protocol)
        if verdict[1] is _PER_PORT:
            return self.index.reason(protocol, verdict[2], port, port, self.is_local)
        return verdict[1]

    def _classify(self, origin, protocol):
        address = ipaddress.ip_address(origin.host.split("%", 1)[0])
        if origin.port is not None:
            why = self.index.reason(protocol, address, origin.port, origin.port, self.is_local)
            if why:
                self.log.warning(f"route {origin.route_name}: origin {origin.label} is not dialled: {why}; "
                                 f"the proxy would relay connections to itself")
            return why, address
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        if self.index.covers_host(protocol, address) or any(
                ep.family == family and (ipaddress.ip_address(ep.host) == address
                                         or ipaddress.ip_address(ep.host).is_unspecified and self.is_local(address))
                for ep in self.index.listen):
            return _PER_PORT, address
        return None, address

    def is_local(self, address):
        known = self._local.get(address)
        if known is None:
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            probe = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                probe.bind((str(address), 0))
                known = True
            except OSError:
                known = False
            finally:
                probe.close()
            self._local[address] = known
        return known
