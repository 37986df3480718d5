"""Traffic for the proxy benchmark: an origin server and three clients.

    load.py serve HOST:PORT              origin: 'B' -> discard to EOF; 'R' -> 64-byte answer, close;
                                         'I' -> answer 'k', hold until EOF
    load.py bulk TARGET BYTES            one connection, send BYTES, wait for the origin's close
    load.py short TARGET SECONDS CONC    short connections (request/answer/close), CONC in flight
    load.py idle TARGET COUNT            open COUNT end-to-end connections, print "ready", hold until stdin closes
    load.py paced TARGET RATE SECONDS TIMEOUT
                                         RATE new connections a second (request/answer/close); each that is
                                         refused, reset, closed early or unanswered within TIMEOUT failed

TARGET is HOST:PORT, or PREFIX/24:any to dial random addresses and ports of a
/24 (the AnyIP case). Results are one JSON line on stdout. Standard library
only; one epoll loop per process.
"""
import errno
import json
import random
import select
import socket
import sys
import time

REQUEST = b"R" * 64
ANSWER = b"A" * 64


def target_picker(text):
    host, _unused1, port = text.rpartition(":")
    if port == "any":
        base = host.split("/")[0].rsplit(".", 1)[0]
        return lambda: ("%s.%d" % (base, random.randint(1, 254)), random.randint(1, 65535))
    return lambda: (host, int(port))


def serve(listen):
    host, port = listen.rsplit(":", 1)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, int(port)))
    lsock.listen(4096)
    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    conns = {}          # fd -> [sock, mode]
    buf = bytearray(1 << 20)
    while True:
        for fd, _ev in ep.poll():
            if fd == lsock.fileno():
                while True:
                    try:
                        c, _unused1 = lsock.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    conns[c.fileno()] = [c, None]
                    ep.register(c.fileno(), select.EPOLLIN)
                continue
            entry = conns.get(fd)
            if entry is None:
                continue
            c = entry[0]
            while True:
                try:
                    n = c.recv_into(buf)
                except BlockingIOError:
                    break
                except OSError:
                    n = 0
                if n == 0:
                    ep.unregister(fd)
                    del conns[fd]
                    c.close()
                    break
                if entry[1] is None:
                    entry[1] = buf[0:1]
                    if entry[1] == b"R":
                        try:
                            c.send(ANSWER)
                        except OSError:
                            pass
                        ep.unregister(fd)
                        del conns[fd]
                        c.close()
                        break
                    if entry[1] == b"I":
                        c.send(b"k")
                if n < len(buf):
                    break


def bulk(target, nbytes):
    host, port = target_picker(target)()
    s = socket.create_connection((host, port))
    chunk = b"B" * (1 << 20)
    view = memoryview(chunk)
    t0 = time.perf_counter()
    left = nbytes
    while left > 0:
        left -= s.send(view[:min(left, len(chunk))])
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    elapsed = time.perf_counter() - t0
    s.close()
    print(json.dumps({"bytes": nbytes, "seconds": elapsed, "gbit_s": nbytes * 8 / elapsed / 1e9}))


def short(target, seconds, concurrency):
    pick = target_picker(target)
    ep = select.epoll()
    inflight = {}   # fd -> [sock, t0, state]
    latencies = []
    errors = 0
    t_end = time.perf_counter() + seconds

    def start():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        err = s.connect_ex(pick())
        if err not in (0, errno.EINPROGRESS):
            s.close()
            return False
        inflight[s.fileno()] = [s, time.perf_counter(), 0]
        ep.register(s.fileno(), select.EPOLLOUT)
        return True

    t0 = time.perf_counter()
    for _unused1 in range(concurrency):
        start()
    while inflight:
        for fd, ev in ep.poll(1.0):
            entry = inflight.get(fd)
            if entry is None:
                continue
            s = entry[0]
            done = failed = False
            if entry[2] == 0:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    failed = True
                else:
                    try:
                        s.send(REQUEST)
                        entry[2] = 1
                        ep.modify(fd, select.EPOLLIN)
                    except OSError:
                        failed = True
            else:
                try:
                    data = s.recv(4096)
                    if not data:
                        done = True
                except BlockingIOError:
                    pass
                except OSError:
                    failed = True
            if done or failed:
                ep.unregister(fd)
                del inflight[fd]
                s.close()
                if failed:
                    errors += 1
                else:
                    latencies.append(time.perf_counter() - entry[1])
                if time.perf_counter() < t_end:
                    start()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    n = len(latencies)
    print(json.dumps({
        "connections": n, "errors": errors, "seconds": elapsed, "per_second": n / elapsed,
        "p50_ms": latencies[n // 2] * 1e3 if n else None,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else None,
    }))


def idle(target, count):
    pick = target_picker(target)
    socks = []
    for _unused1 in range(count):
        s = socket.create_connection(pick(), timeout=10)
        s.sendall(b"I")
        socks.append(s)
    for s in socks:
        if s.recv(1) != b"k":
            raise SystemExit("a connection was not proxied end to end")
    print(json.dumps({"connections": len(socks)}), flush=True)
    sys.stdin.read()


def paced(target, rate, seconds, timeout):
    """New connections at a fixed rate, whatever happens to earlier ones (a dial that hangs does not
    hold the next back). One row per dial: [epoch seconds at its start, outcome, milliseconds to the
    origin's answer or to the failure]."""
    pick = target_picker(target)
    ep = select.epoll()
    inflight = {}   # fd -> [sock, started (epoch), state, bytes of the answer]
    rows = []
    total = int(rate * seconds)
    t0 = time.time()
    dialled = 0

    def finish(fd, outcome):
        entry = inflight.pop(fd)
        ep.unregister(fd)
        entry[0].close()
        rows.append([round(entry[1], 4), outcome, round((time.time() - entry[1]) * 1e3, 2)])

    while dialled < total or inflight:
        now = time.time()
        while dialled < total and t0 + dialled / rate <= now:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            started = time.time()
            err = s.connect_ex(pick())
            dialled += 1
            if err not in (0, errno.EINPROGRESS):
                s.close()
                rows.append([round(started, 4), errno.errorcode.get(err, str(err)), 0.0])
                continue
            inflight[s.fileno()] = [s, started, 0, 0]
            ep.register(s.fileno(), select.EPOLLOUT)
        for fd in [fd for fd, entry in inflight.items() if now - entry[1] > timeout]:
            finish(fd, "timeout")
        wait = (t0 + dialled / rate - time.time()) if dialled < total else 0.01
        for fd, _ev in ep.poll(min(max(wait, 0.0), 0.01)):
            entry = inflight.get(fd)
            if entry is None:
                continue
            s = entry[0]
            if entry[2] == 0:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(fd, {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset"}.get(
                        err, errno.errorcode.get(err, str(err))))
                    continue
                try:
                    s.send(REQUEST)
                except OSError:
                    finish(fd, "reset")
                    continue
                entry[2] = 1
                ep.modify(fd, select.EPOLLIN)
                continue
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                finish(fd, "reset")
                continue
            entry[3] += len(data)
            if entry[3] >= len(ANSWER):
                finish(fd, "ok")
            elif not data:
                finish(fd, "closed")
    rows.sort()
    print(json.dumps({"rate": rate, "seconds": seconds, "timeout": timeout, "rows": rows}))


def main(argv):
    mode = argv[1]
    if mode == "serve":
        serve(argv[2])
    elif mode == "bulk":
        bulk(argv[2], int(argv[3]))
    elif mode == "short":
        short(argv[2], float(argv[3]), int(argv[4]))
    elif mode == "idle":
        idle(argv[2], int(argv[3]))
    elif mode == "paced":
        paced(argv[2], float(argv[3]), float(argv[4]), float(argv[5]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
