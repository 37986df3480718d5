"""The traffic ends of the hashlimit benchmarks (run.py, synflood.py), run inside their namespaces.

  endpoints.py sink PORT BACKLOG                    accepts on PORT and closes each connection;
                                                    prints "ready" once listening
  endpoints.py legit DST PORT DURATION RATE TIMEOUT dials RATE connections a second for DURATION s;
                                                    JSON: the connect latencies and the failures
  endpoints.py flood DST PORT DURATION LIMIT RATE   dials back to back (RATE a second, 0: unpaced) until
                                                    DURATION s or LIMIT attempts; JSON: what came of them

Clients close with SO_LINGER 0, so the client side keeps no TIME_WAIT.
"""
import json
import select
import socket
import struct
import sys
import time

LINGER_RESET = struct.pack('ii', 1, 0)


def _client(timeout):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    sock.settimeout(timeout)
    return sock


def sink(port, backlog):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(('0.0.0.0', port))
    server.listen(backlog)
    server.setblocking(False)
    poller = select.epoll()
    poller.register(server.fileno(), select.EPOLLIN)
    print('ready', flush=True)
    while True:
        for _fd, _events in poller.poll():
            while True:
                try:
                    conn, _addr = server.accept()
                except BlockingIOError:
                    break
                conn.close()


def legit(dst, port, duration, rate, timeout):
    latencies, failed = [], 0
    start = time.monotonic()
    n = 0
    while n / rate <= duration:
        pause = start + n / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        sock = _client(timeout)
        began = time.perf_counter()
        try:
            sock.connect((dst, port))
            latencies.append(time.perf_counter() - began)
        except OSError:
            failed += 1
        sock.close()
        n += 1
    return {'latencies': latencies, 'failed': failed}


def flood(dst, port, duration, limit, rate):
    ok = refused = other = 0
    start = time.monotonic()
    end = start + duration
    while time.monotonic() < end and ok + refused + other < limit:
        n = ok + refused + other
        if rate and n % 50 == 0:
            ahead = start + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        sock = _client(1.0)
        try:
            sock.connect((dst, port))
            ok += 1
        except ConnectionRefusedError:
            refused += 1
        except OSError:
            other += 1
        sock.close()
    attempted = ok + refused + other
    return {'attempted': attempted, 'accepted': ok, 'refused': refused, 'other': other,
            'per_sec': round(attempted / (time.monotonic() - start))}


def main(argv):
    command, args = argv[1], argv[2:]
    if command == 'sink':
        sink(int(args[0]), int(args[1]))
    elif command == 'legit':
        print(json.dumps(legit(args[0], int(args[1]), float(args[2]), float(args[3]), float(args[4]))))
    elif command == 'flood':
        print(json.dumps(flood(args[0], int(args[1]), float(args[2]), int(args[3]), float(args[4]))))
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main(sys.argv)
