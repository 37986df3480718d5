"""Traffic ends for the molecule verification of anycast.edge.transparent_proxy.

  edge_net.py origin PORT [PP_PORT]   an origin: greets each connection, then echoes lines.
                                      On PP_PORT it first reads a PROXY v1 header and greets
                                      with it, to show what the proxy saw. It also answers UDP
                                      datagrams on PORT with "origin-udp " and their content.
  edge_net.py probe HOST PORT [HOST PORT ...]
                                      one connection each: greeting, one echoed line; one JSON
                                      line per connection on stdout.
  edge_net.py udp-probe HOST PORT [HOST PORT ...]
                                      one datagram each; the answer must come back from the
                                      address and port that were dialled.
  edge_net.py hold HOST PORT READY GO one connection kept open: an exchange, touch READY,
                                      wait for the file GO, another exchange; JSON on stdout.
  edge_net.py load PREFIX RATE HELD READY STOP
                                      HELD connections to random addresses of the IPv4 /24
                                      PREFIX kept open, and RATE new ones a second (greeting,
                                      one echoed line) until the file STOP exists; READY is
                                      touched once both run. Then every held connection
                                      exchanges a line again. One JSON line: dials, failed,
                                      syn_resent (SYNs the kernel sent again meanwhile, in the
                                      client's namespace and the edge's: a dropped SYN),
                                      slow (greeted after more than SLOW s), max_greeting,
                                      held, held_lost, errors. Exit status 0 when nothing failed.

Exit status 0 only when every echo came back unchanged.
"""
import ipaddress
import json
import os
import random
import socket
import socketserver
import sys
import threading
import time

TIMEOUT = 10
# A SYN that is dropped (a restart that refuses, a full queue) shows in syn_resent, whatever the
# machine's load; SLOW bounds how long a restart may keep new connections waiting in the queue
# (one Python start: 0.2-0.5 s, up to 1 s when three platforms restart at once on two CPUs).
SLOW = 2.0
HOLD_LIMIT = 600  # the role runs in between; slow on a busy machine


class OriginHandler(socketserver.StreamRequestHandler):
    def handle(self):
        header = ""
        if self.server.server_address[1] == self.server.pp_port:
            header = self.rfile.readline(256).decode("ascii", "replace").strip()
        self.wfile.write(("origin-hello %s\n" % header).rstrip(" \n").encode() + b"\n")
        for line in self.rfile:
            self.wfile.write(line)


class DualStackServer(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    # socketserver's default backlog is 5: a restarted proxy dials every connection queued
    # meanwhile at once, the origin's queue overflows and their SYNs wait 1 s to be sent again.
    request_queue_size = 1024

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def udp_echo(port):
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(b"origin-udp " + data, peer)


def origin(port, pp_port=None):
    threading.Thread(target=udp_echo, args=(port,), daemon=True).start()
    servers = []
    for number in [port] + ([pp_port] if pp_port else []):
        server = DualStackServer(("::", number), OriginHandler)
        server.pp_port = pp_port
        servers.append(server)
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


def exchange(stream, result, key):
    token = "ping-%s-%08x\n" % (key, random.getrandbits(32))
    stream.write(token.encode())
    stream.flush()
    answer = stream.readline().decode()
    result[key] = answer.strip()
    return answer == token


def connect(host, port):
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    stream = sock.makefile("rwb")
    return sock, stream


def probe(host, port):
    result = {"host": host, "port": port}
    sock, stream = connect(host, port)
    with sock, stream:
        result["local"] = "%s:%s" % sock.getsockname()[:2]
        result["greeting"] = stream.readline().decode().strip()
        ok = exchange(stream, result, "echo")
    result["ok"] = ok and result["greeting"].startswith("origin-hello")
    return result


def udp_probe(host, port):
    result = {"host": host, "port": port, "protocol": "udp"}
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    token = b"ping-udp-%08x" % random.getrandbits(32)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT / 3)
        answer, sender = b"", None
        # UDP may lose a datagram; ask up to three times.
        for _unused1 in range(3):
            sock.sendto(token, (host, port))
            try:
                answer, sender = sock.recvfrom(65535)
                break
            except socket.timeout:
                continue
    result["answer"] = answer.decode(errors="replace")
    result["from"] = "%s:%s" % sender[:2] if sender else None
    result["ok"] = answer == b"origin-udp " + token and sender is not None and \
        (ipaddress.ip_address(sender[0]), sender[1]) == (ipaddress.ip_address(host), port)
    return result


def hold(host, port, ready, go):
    result = {"host": host, "port": port}
    sock, stream = connect(host, port)
    with sock, stream:
        result["greeting"] = stream.readline().decode().strip()
        first = exchange(stream, result, "before")
        with open(ready, "w") as handle:
            handle.write("connected\n")
        deadline = time.monotonic() + HOLD_LIMIT
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.2)
        result["released"] = os.path.exists(go)
        second = exchange(stream, result, "after")
    result["ok"] = first and second and result["released"]
    return result


def load(prefix, rate, held_count, ready, stop):
    base = prefix.split("/")[0].rsplit(".", 1)[0]
    result = {"dials": 0, "failed": 0, "slow": 0, "max_greeting": 0.0, "held": held_count, "held_lost": 0,
              "errors": []}
    lock = threading.Lock()

    def dial(port):
        started = time.monotonic()
        try:
            sock, stream = connect("%s.%d" % (base, random.randint(1, 254)), port)
            with sock, stream:
                greeting = stream.readline().decode()
                waited = time.monotonic() - started
                ok = greeting.startswith("origin-hello") and exchange(stream, {}, "dial")
        except OSError as exc:
            ok, waited = False, time.monotonic() - started
            greeting = repr(exc)
        with lock:
            result["max_greeting"] = max(result["max_greeting"], round(waited, 3))
            if not ok:
                result["failed"] += 1
                result["errors"].append("dial to port %d: %s after %.3fs" % (port, greeting.strip(), waited))
            elif waited > SLOW:
                result["slow"] += 1
                result["errors"].append("dial to port %d greeted after %.3fs" % (port, waited))

    resent_before = syn_resent()
    held = []
    for i in range(held_count):
        sock, stream = connect("%s.%d" % (base, 1 + i % 254), 20000 + i)
        stream.readline()
        exchange(stream, {}, "held")
        held.append((sock, stream))
    threads = []
    started = time.monotonic()
    deadline = started + HOLD_LIMIT
    while not os.path.exists(stop) and time.monotonic() < deadline:
        thread = threading.Thread(target=dial, args=(1000 + result["dials"] % 60000,), daemon=True)
        thread.start()
        threads.append(thread)
        result["dials"] += 1
        if result["dials"] == 1:
            with open(ready, "w") as handle:
                handle.write("running\n")
        time.sleep(max(0.0, started + result["dials"] / rate - time.monotonic()))
    for thread in threads:
        thread.join(TIMEOUT)
    for i, (sock, stream) in enumerate(held):
        try:
            with sock, stream:
                if not exchange(stream, {}, "again"):
                    raise OSError("no echo")
        except OSError as exc:
            result["held_lost"] += 1
            if len(result["errors"]) < 20:
                result["errors"].append("held %d: %r" % (i, exc))
    result["syn_resent"] = {where: syn_resent()[where] - count for where, count in resent_before.items()}
    result["ok"] = (result["failed"] == 0 and result["slow"] == 0 and result["held_lost"] == 0
                    and not any(result["syn_resent"].values()))
    return result


def syn_resent():
    """TcpExt TCPSynRetrans of this process's namespace (the client's) and of PID 1's (the edge's)."""
    found = {}
    for where, path in (("client", "/proc/self/net/netstat"), ("edge", "/proc/1/net/netstat")):
        with open(path) as handle:
            lines = handle.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            if names.startswith("TcpExt:"):
                found[where] = int(dict(zip(names.split()[1:], values.split()[1:]))["TCPSynRetrans"])
    return found


def main(argv):
    command = argv[1] if len(argv) > 1 else ""
    if command == "origin" and len(argv) in (3, 4):
        origin(int(argv[2]), int(argv[3]) if len(argv) == 4 else None)
        return 0
    if command == "load" and len(argv) == 7:
        result = load(argv[2], float(argv[3]), int(argv[4]), argv[5], argv[6])
        print(json.dumps(result, sort_keys=True), flush=True)
        return 0 if result["ok"] else 1
    if command in ("probe", "udp-probe") and len(argv) >= 4 and len(argv) % 2 == 0:
        targets = list(zip(argv[2::2], argv[3::2]))
    elif command == "hold" and len(argv) == 6:
        targets = [(argv[2], argv[3])]
    else:
        sys.stderr.write(__doc__)
        return 2
    failures = 0
    for host, port in targets:
        try:
            if command == "probe":
                result = probe(host, int(port))
            elif command == "udp-probe":
                result = udp_probe(host, int(port))
            else:
                result = hold(host, int(port), argv[4], argv[5])
        except OSError as exc:
            result = {"host": host, "port": port, "ok": False, "error": str(exc)}
        print(json.dumps(result, sort_keys=True), flush=True)
        failures += not result["ok"]
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
