"""Dial a list of (address, port) pairs and print what each answered, as JSON.

Run inside the client namespace: `dial.py '[["192.0.2.7", 1], ...]'`.
An entry's answer is the text the server sent, or "error: ..." when the
connection failed.
"""

import json
import socket
import sys


def dial(address, port, timeout):
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            data = b''
            while not data.endswith(b'\n'):
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.decode().strip()
        except OSError as exc:
            return 'error: %s' % exc


def main():
    targets = json.loads(sys.argv[1])
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    print(json.dumps([[address, port, dial(address, port, timeout)] for address, port in targets]))


if __name__ == '__main__':
    main()
