# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The transparent proxy's origins as the proxy sees them, read from its metrics endpoint.

The proxy publishes per origin whether it is up (its health checks and its
connections' outcomes), its open and total connections and its failures, and
per origin host name whether the last resolution worked
(roles/transparent_proxy/files/anycast_proxy/metrics.py). Reading that, rather
than checking the origins from here, reports exactly what the proxy acts on.
"""

from __future__ import annotations

import ipaddress
import re
import socket

SAMPLE = re.compile(r'^(anycast_proxy_origin_[a-z_]+)\{(.*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
FIELDS = {
    'anycast_proxy_origin_up': 'up',
    'anycast_proxy_origin_active_connections': 'active',
    'anycast_proxy_origin_connections_total': 'connections',
    'anycast_proxy_origin_connect_failures_total': 'connect_failures',
    'anycast_proxy_origin_check_failures_total': 'check_failures',
}
TIMEOUT = 3.0


def parse_endpoint(text):
    """(host, port) of "ADDRESS:PORT" ("[IPv6]:PORT"); ValueError naming what is wrong."""
    host, sep, port = text.rpartition(':')
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError('%r is not ADDRESS:PORT' % text)
    bracketed = host.startswith('[') and host.endswith(']')
    if bracketed:
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError('%r: %r is not an IP address' % (text, host)) from None
    if (address.version == 6) != bracketed:
        raise ValueError('%r: IPv6 addresses, and only they, go in brackets' % text)
    return host, int(port)


def _unescape(value):
    return value.replace('\\"', '"').replace('\\n', '\n').replace('\\\\', '\\')


def parse(text):
    """{'origins': [...], 'resolve': [...]} from the proxy's Prometheus text."""
    origins, resolve = {}, {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.group(1), dict((k, _unescape(v)) for k, v in LABEL.findall(match.group(2))), match.group(3)
        number = int(float(value))
        if name in FIELDS and 'route' in labels and 'origin' in labels:
            entry = origins.setdefault((labels['route'], labels['origin']),
                                       {'route': labels['route'], 'origin': labels['origin']})
            entry[FIELDS[name]] = bool(number) if FIELDS[name] == 'up' else number
        elif name.startswith('anycast_proxy_origin_resolve_') and 'name' in labels:
            entry = resolve.setdefault((labels['route'], labels['name']),
                                       {'route': labels.get('route'), 'name': labels['name']})
            entry['ok' if name.endswith('_ok') else 'failures'] = bool(number) if name.endswith('_ok') else number
    return {'origins': [origins[k] for k in sorted(origins)], 'resolve': [resolve[k] for k in sorted(resolve)]}


def fetch(endpoint, timeout=TIMEOUT):
    """The metrics text of the proxy at ENDPOINT ("ADDRESS:PORT"); OSError when it does not answer."""
    host, port = parse_endpoint(endpoint)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b'GET /metrics HTTP/1.0\r\nHost: anycast-proxy\r\n\r\n')
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _sep, body = b''.join(chunks).partition(b'\r\n\r\n')
    if not head.startswith(b'HTTP/1.0 200') and not head.startswith(b'HTTP/1.1 200'):
        raise OSError('the metrics endpoint answered %r' % head.split(b'\r\n', 1)[0].decode(errors='replace'))
    return body.decode(errors='replace')


def proxy_origins(endpoint, warnings):
    """What edge_info returns as proxy_origins; a warning per origin down and per name that
    does not resolve. A proxy that does not answer is reported, not an error: a host may have
    no proxy at all."""
    result = {'endpoint': endpoint, 'available': False, 'error': None, 'origins': [], 'down': [], 'resolve': []}
    try:
        result.update(parse(fetch(endpoint)))
    except (OSError, ValueError) as exc:
        result['error'] = str(exc)
        return result
    result['available'] = True
    result['down'] = [{'route': o['route'], 'origin': o['origin']} for o in result['origins'] if not o.get('up', True)]
    for origin in result['down']:
        warnings.append('proxy route %s: origin %s is down' % (origin['route'], origin['origin']))
    for name in result['resolve']:
        if not name.get('ok', True):
            warnings.append('proxy route %s: %s does not resolve (the proxy keeps its last good addresses)'
                            % (name['route'], name['name']))
    return result
