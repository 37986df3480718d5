"""A tenant's server in the lab: runs inside a tenant's network namespace on an
edge, listens on the given TCP ports and answers one JSON line naming the tenant,
the edge, the port and the client, then closes.

usage: tenant_service.py --tenant acme --edge ael-edge1 --ports 21,22
"""

import argparse
import json
import socket
import socketserver
import threading


def serve(port, tenant, edge):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            answer = {'tenant': tenant, 'edge': edge, 'port': port, 'client': self.client_address[0],
                      'address': self.request.getsockname()[0]}
            try:
                self.request.sendall((json.dumps(answer, sort_keys=True) + '\n').encode())
            except OSError:
                pass

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    server = Server(('0.0.0.0', port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tenant', required=True)
    parser.add_argument('--edge', default=socket.gethostname())
    parser.add_argument('--ports', default='21,22')
    args = parser.parse_args()
    threads = [serve(int(port), args.tenant, args.edge) for port in args.ports.split(',')]
    for thread in threads:
        thread.join()


if __name__ == '__main__':
    main()
