"""The lab's origin: reads the PROXY protocol v2 header the edge's proxy sends,
answers one JSON line saying who the client really was, what it dialled and
which edge relayed it, then closes.

usage: origin.py [--port 8080]      (listens on [::]:PORT, IPv4 and IPv6)
"""

import argparse
import ipaddress
import json
import socket
import socketserver
import struct

SIGNATURE = b'\r\n\r\n\x00\r\nQUIT\n'
# family/transport byte -> (address length, address family name)
FAMILIES = {0x11: (4, 'tcp4'), 0x12: (4, 'udp4'), 0x21: (16, 'tcp6'), 0x22: (16, 'udp6')}


def read_exactly(sock, size):
    data = b''
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ValueError('connection closed after %d of %d header bytes' % (len(data), size))
        data += chunk
    return data


def parse_proxy_v2(sock):
    """The addresses of a PROXY v2 header read from sock; raises ValueError."""
    fixed = read_exactly(sock, 16)
    if fixed[:12] != SIGNATURE:
        raise ValueError('no PROXY v2 signature (got %r)' % fixed[:12])
    version_command, family, length = fixed[12], fixed[13], struct.unpack('!H', fixed[14:16])[0]
    if version_command >> 4 != 2:
        raise ValueError('PROXY protocol version %d, expected 2' % (version_command >> 4))
    body = read_exactly(sock, length)
    if version_command & 0x0F == 0:
        return {'command': 'LOCAL'}
    if family not in FAMILIES:
        raise ValueError('unsupported PROXY v2 family byte 0x%02x' % family)
    size, name = FAMILIES[family]
    if length < 2 * size + 4:
        raise ValueError('PROXY v2 address block too short (%d bytes)' % length)
    source = ipaddress.ip_address(body[:size])
    destination = ipaddress.ip_address(body[size:2 * size])
    source_port, destination_port = struct.unpack('!HH', body[2 * size:2 * size + 4])
    return {'command': 'PROXY', 'family': name,
            'client': str(source), 'client_port': source_port,
            'dialled': str(destination), 'dialled_port': destination_port,
            'tlv_bytes': length - (2 * size + 4)}


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        peer = self.client_address[0]
        if peer.startswith('::ffff:'):
            peer = peer[len('::ffff:'):]
        try:
            answer = parse_proxy_v2(self.request)
        except (ValueError, OSError) as error:
            answer = {'error': str(error)}
        answer.update({'edge': peer, 'origin': socket.gethostname()})
        try:
            self.request.sendall((json.dumps(answer, sort_keys=True) + '\n').encode())
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--port', type=int, default=8080)
    args = parser.parse_args()
    with Server(('::', args.port), Handler) as server:
        server.serve_forever()


if __name__ == '__main__':
    main()
