# Copyright: anycast.edge developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""route_plan: the transparent_proxy role's routes as AnyIP prefixes and TPROXY rules, and what does
not fit (controller side, pure: the role's preflight asserts on its errors before anything changes).

Input: {"routes", "prefixes", "listen_addresses", "listen_port"} (the role's variables without their
``transparent_proxy_`` prefix). Output: {"prefixes_ipv4", "prefixes_ipv6", "tproxy_rules",
"needs_net_bind_service", "errors"}. ipaddress does the prefix containment that Jinja cannot do
without netaddr.
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError

ALL_PORTS = (1, 65535)


def _network(text):
    """ip_network or None; strict, so 192.0.2.1/24 is an error, not 192.0.2.0/24."""
    try:
        return ipaddress.ip_network(str(text), strict=True)
    except ValueError:
        return None


def _ports(value):
    """(low, high) from 443, "443" or "8000-8100"; None when malformed."""
    if value is None:
        return ALL_PORTS
    if isinstance(value, bool):
        return None
    low_text, sep, high_text = str(value).strip().partition('-')
    if not low_text.strip().isdigit() or (sep and not high_text.strip().isdigit()):
        return None
    low = int(low_text)
    high = int(high_text) if sep else low
    if not 1 <= low <= high <= 65535:
        return None
    return low, high


def _collapse(networks):
    """Smallest list of prefixes covering networks, IPv4 first, in address order."""
    result = []
    for version in (4, 6):
        same = [n for n in networks if n.version == version]
        result.extend(ipaddress.collapse_addresses(same))
    return result


def plan(routes, prefixes, listen_addresses, listen_port, first_unprivileged_port=1024):
    """Return {'prefixes_ipv4', 'prefixes_ipv6', 'tproxy_rules', 'needs_net_bind_service', 'errors'}.

    needs_net_bind_service: the proxy binds a port below FIRST_UNPRIVILEGED_PORT, which needs
    CAP_NET_BIND_SERVICE: its listeners' port, or a port a UDP route covers (a datagram is
    answered from the port it was sent to).
    """
    errors = []
    needs_net_bind_service = listen_port is not None and int(listen_port) < first_unprivileged_port
    listeners = {}
    for address in listen_addresses or []:
        try:
            ip = ipaddress.ip_address(str(address))
        except ValueError:
            errors.append("transparent_proxy_listen_addresses: %r is not an IP address" % (address,))
            continue
        listeners.setdefault(ip.version, str(ip))

    destinations = []
    rules = []
    for index, route in enumerate(routes or []):
        where = 'transparent_proxy_routes[%d]' % index
        network = _network(route.get('destination'))
        if network is None:
            errors.append("%s.destination: %r is not a network in CIDR notation with its host bits zero "
                          "(like 192.0.2.0/24)" % (where, route.get('destination')))
            continue
        ports = _ports(route.get('ports'))
        if ports is None:
            errors.append("%s.ports: %r is not a port or a range like 443 or \"8000-8100\""
                          % (where, route.get('ports')))
            continue
        if network.version not in listeners:
            errors.append("%s.destination: %s is IPv%d but transparent_proxy_listen_addresses has no IPv%d "
                          "address for TPROXY to send its connections to"
                          % (where, network, network.version, network.version))
            continue
        destinations.append(network)
        rule = {
            'destination': str(network),
            'protocol': route.get('protocol') or 'tcp',
            'on_ip': listeners[network.version],
            'on_port': int(listen_port),
        }
        if rule['protocol'] == 'udp' and ports[0] < first_unprivileged_port:
            needs_net_bind_service = True
        if ports != ALL_PORTS:
            rule['ports'] = str(ports[0]) if ports[0] == ports[1] else '%d-%d' % ports
        if rule not in rules:
            rules.append(rule)

    if prefixes:
        anyip = []
        for index, text in enumerate(prefixes):
            network = _network(text)
            if network is None:
                errors.append("transparent_proxy_prefixes[%d]: %r is not a network in CIDR notation with its "
                              "host bits zero" % (index, text))
            else:
                anyip.append(network)
        for network in anyip:
            if not any(d.version == network.version and d.overlaps(network) for d in destinations):
                errors.append("transparent_proxy_prefixes: %s has no route in transparent_proxy_routes; the host "
                              "would accept its traffic and drop it. Add a route or remove the prefix." % network)
        for network in destinations:
            if not any(p.version == network.version and network.subnet_of(p) for p in anyip):
                errors.append("transparent_proxy_routes: destination %s is not inside any of "
                              "transparent_proxy_prefixes, so the host would not accept its traffic" % network)
    else:
        anyip = destinations

    collapsed = _collapse(anyip)
    return {
        'prefixes_ipv4': [str(n) for n in collapsed if n.version == 4],
        'prefixes_ipv6': [str(n) for n in collapsed if n.version == 6],
        'tproxy_rules': rules,
        'needs_net_bind_service': needs_net_bind_service,
        'errors': errors,
    }


def route_plan(request, first_unprivileged_port=1024):
    """The filter: plan() of REQUEST {"routes", "prefixes", "listen_addresses", "listen_port"}.

    FIRST_UNPRIVILEGED_PORT is the host's net.ipv4.ip_unprivileged_port_start (it covers IPv6 as
    well; the role's kernel probe reads it).
    """
    if not isinstance(request, dict):
        raise AnsibleFilterError('route_plan: expected a dictionary of routes, prefixes, listen_addresses and '
                                 'listen_port, got %s' % type(request).__name__)
    try:
        first_unprivileged_port = int(first_unprivileged_port)
    except (TypeError, ValueError):
        raise AnsibleFilterError('route_plan: first_unprivileged_port must be a port number, got %r'
                                 % (first_unprivileged_port,))
    return plan(request.get('routes') or [], request.get('prefixes') or [],
                request.get('listen_addresses') or [], request.get('listen_port'), first_unprivileged_port)


class FilterModule(object):
    def filters(self):
        return {'route_plan': route_plan}
