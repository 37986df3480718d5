"""A minimal IP_TRANSPARENT listener for tests (the Spectrum write-up's server).

Listens on 127.0.0.1:PORT and [::1]:PORT with IP_TRANSPARENT / IPV6_TRANSPARENT,
and answers every connection with the address it was dialled on, as
"ADDRESS PORT\n" from getsockname(). Prints "ready" once both listen.
"""

import selectors
import socket
import sys

IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75


def listener(family, address, port):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
    sock.bind((address, port))
    sock.listen(128)
    return sock


def main():
    port = int(sys.argv[1])
    selector = selectors.DefaultSelector()
    for family, address in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):
        selector.register(listener(family, address, port), selectors.EVENT_READ)
    print('ready', flush=True)
    while True:
        for key, _events in selector.select():
            conn, _peer = key.fileobj.accept()
            local = conn.getsockname()
            conn.sendall(('%s %d\n' % (local[0], local[1])).encode())
            conn.close()


if __name__ == '__main__':
    main()
