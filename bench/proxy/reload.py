"""Benchmark a reload (SIGHUP) with many routes: how long it takes, and how long connections stall.

Run as root from the repository root (a git checkout: "before" is the proxy of OLD_COMMIT,
taken with git archive), under the shared lock:

    flock /work/locks/heavy.lock python3 bench/proxy/reload.py [--routes 10000] [--reloads 3] [--json out.json]

Everything happens inside one throwaway network namespace (${AE_NS_TAG}aepr*), removed at the
end, with the AnyIP + TPROXY set-up of bench/proxy/run.py. An echo origin listens on
127.0.0.1:9000. Each version of the proxy (before, then after; one at a time, so they do not
compete for the CPU) runs with ROUTES routes: the first covers the TPROXY prefix the probe
dials, the others are /24s of 10.0.0.0/8 to the same origin (what a big edge's list looks
like to the parser). The probe (this file, `probe`, inside the namespace) holds 20 connections
through the proxy and sends one byte on one of them every 2 ms, timing the echo, and dials a
new connection (connect, one byte, its echo, close) every 20 ms. Meanwhile the proxy gets
SIGHUP RELOADS times, at least 2 s apart; a reload's time is from the signal to the proxy's READY=1
(sd_notify, after RELOADING=1). Reported per version: reload times, and the worst echo and the
worst new connection from each signal until 0.5 s after its READY=1, beside the worst echo of
the quiet second before the first signal. The target is no stall over 100 ms.
"""
import argparse
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import run as base

sys.path.insert(0, os.path.join(base.REPO, "tests", "proxy"))
import support  # noqa: E402  (ProxyProcess: the proxy with a notify socket, as under systemd)

OLD_COMMIT = "8ea5776"     # before issue 18: quadratic duplicate check, reload parsed on the event loop
ORIGIN = "127.0.0.1:9000"
VERSIONS = {"before": (1237, "203.0.113.0/24"), "after": (1234, "192.0.2.0/24")}   # bench/proxy/run.py's setup()
HELD = 20
ECHO_EVERY = 0.002
DIAL_EVERY = 0.02


# -- inside the namespace: the origin and the probe ----------------------------------------------
def echo(listen):
    host, port = listen.rsplit(":", 1)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, int(port)))
    lsock.listen(4096)
    poller = select.epoll()
    poller.register(lsock.fileno(), select.EPOLLIN)
    conns = {}
    while True:
        for fd, _events in poller.poll():
            if fd == lsock.fileno():
                conn, _unused1 = lsock.accept()
                conn.setblocking(False)
                conns[conn.fileno()] = conn
                poller.register(conn.fileno(), select.EPOLLIN)
                continue
            conn = conns[fd]
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if data:
                conn.sendall(data)
            else:
                poller.unregister(fd)
                del conns[fd]
                conn.close()


def probe(target):
    """Until a line on stdin, then JSON on stdout: {"echo": [[monotonic time, rtt]], "dial": [[time, seconds or null]]}."""
    host, port = target.rsplit(":", 1)
    address = (host, int(port))
    held = [socket.create_connection(address, timeout=30) for _unused1 in range(HELD)]
    for sock in held:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    echoes, dials = [], []
    stopping = threading.Event()

    def dialler():
        port_no = 1
        while not stopping.is_set():
            started = time.monotonic()
            port_no = port_no % 60000 + 1
            try:
                with socket.create_connection((host, 1000 + port_no), timeout=30) as sock:
                    sock.sendall(b"d")
                    ok = sock.recv(1) == b"d"
                dials.append([started, time.monotonic() - started if ok else None])
            except OSError:
                dials.append([started, None])
            time.sleep(max(0.0, started + DIAL_EVERY - time.monotonic()))

    thread = threading.Thread(target=dialler)
    thread.start()
    n = 0
    while not select.select([sys.stdin], [], [], 0)[0]:
        sock = held[n % HELD]
        n += 1
        started = time.monotonic()
        sock.sendall(b"e")
        if sock.recv(1) != b"e":
            raise SystemExit("held connection %d closed" % (n % HELD))
        echoes.append([started, time.monotonic() - started])
        time.sleep(max(0.0, started + ECHO_EVERY - time.monotonic()))
    stopping.set()
    thread.join()
    for sock in held:
        sock.close()
    print(json.dumps({"echo": echoes, "dial": dials}))


# -- the orchestra ------------------------------------------------------------------------------------
def config(port, prefix, routes):
    route_list = [{"name": "probe", "destination": prefix, "origin": ORIGIN}]
    route_list += [{"name": "r%d" % i, "destination": "10.%d.%d.0/24" % (i // 256 % 256, i % 256), "origin": ORIGIN}
                   for i in range(1, routes)]
    return {"listen": ["127.0.0.1:%d" % port], "log_connections": False, "max_connections_per_source": 0,
            "routes": route_list}


def old_program(workdir):
    dest = os.path.join(workdir, "old")
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", base.REPO, "archive", OLD_COMMIT, "roles/transparent_proxy/files/anycast_proxy"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return os.path.join(dest, "roles", "transparent_proxy", "files", "anycast_proxy")


def measure(ns, workdir, version, program, routes, reloads):
    port, prefix = VERSIONS[version]
    proxy_dir = os.path.join(workdir, version)
    os.makedirs(proxy_dir)
    started = time.monotonic()
    proxy = support.ProxyProcess(ns.name, config(port, prefix, routes), proxy_dir, program=program,
                                 env={"ANYCAST_PROXY_LOOP": "dataplane"})
    try:
        proxy.wait_ready(timeout=300)
        start_s = time.monotonic() - started
        target = prefix.rsplit(".", 1)[0] + ".10:80"
        run_probe = ns.popen([base.PY, os.path.abspath(__file__), "probe", target],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        time.sleep(1.5)
        windows = []
        for _unused1 in range(reloads):
            t0 = time.monotonic()
            proxy.signal(signal.SIGHUP)
            proxy.wait_message("RELOADING=1", timeout=120)
            proxy.wait_message("READY=1", timeout=120)
            t1 = time.monotonic()
            windows.append((t0, t1))
            time.sleep(max(0.0, t0 + 2.0 - time.monotonic(), t1 + 0.6 - time.monotonic()))
        out, _unused1 = run_probe.communicate(b"stop\n", timeout=120)
        if run_probe.returncode != 0:
            raise SystemExit("the probe failed against %s:\n%s" % (version, proxy.logs()))
        samples = json.loads(out)
    finally:
        proxy.stop()
    quiet = [rtt for t, rtt in samples["echo"] if windows[0][0] - 1.0 <= t < windows[0][0]]
    rows = []
    ends = [w[0] for w in windows[1:]] + [float("inf")]
    for (t0, t1), end in zip(windows, ends):
        during = [rtt for t, rtt in samples["echo"] if t0 <= t <= t1 + 0.5]
        # After it (a garbage collection of the old configuration could come later).
        after = [rtt for t, rtt in samples["echo"] if t1 + 0.5 < t < end]
        dials = [d for t, d in samples["dial"] if t0 <= t <= t1 + 0.5]
        rows.append({"reload_s": round(t1 - t0, 4), "echoes": len(during),
                     "worst_echo_s": round(max(during), 4) if during else None,
                     "echoes_over_100ms": sum(1 for r in during if r > 0.1),
                     "worst_echo_after_s": round(max(after), 4) if after else None,
                     "dials": len(dials), "failed_dials": sum(1 for d in dials if d is None),
                     "worst_dial_s": round(max((d for d in dials if d is not None), default=0), 4)})
    return {"start_s": round(start_s, 3), "quiet_worst_echo_s": round(max(quiet), 4) if quiet else None,
            "reloads": rows}


def report(results):
    env = results["env"]
    print("\nReload with %d routes (%d held connections echoing every %g ms, a new connection every %g ms); "
          "%d CPUs, kernel %s, load %.2f before, %.2f after\n" % (
              env["routes"], HELD, ECHO_EVERY * 1000, DIAL_EVERY * 1000, env["nproc"], env["kernel"],
              env["load_before"][0], env["load_after"][0]))
    print("| version | start (s) | reload (s) | worst echo during reload (ms) | echoes > 100 ms | "
          "worst new connection during reload (ms) | failed dials | worst echo until the next reload (ms) | "
          "worst echo, quiet second before (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for version in ("before", "after"):
        r = results[version]
        for i, row in enumerate(r["reloads"]):
            print("| %s%s | %s | %.3f | %.1f | %d of %d | %.1f | %d of %d | %.1f | %s |" % (
                version, " (%s)" % OLD_COMMIT if version == "before" else "", "%.2f" % r["start_s"] if i == 0 else "",
                row["reload_s"], (row["worst_echo_s"] or 0) * 1000, row["echoes_over_100ms"], row["echoes"],
                row["worst_dial_s"] * 1000, row["failed_dials"], row["dials"], (row["worst_echo_after_s"] or 0) * 1000,
                "%.1f" % (r["quiet_worst_echo_s"] * 1000) if i == 0 and r["quiet_worst_echo_s"] else ""))
    before = max(row["worst_echo_s"] or 0 for row in results["before"]["reloads"])
    after = max(row["worst_echo_s"] or 0 for row in results["after"]["reloads"])
    print("\nworst echo during a reload: before %.1f ms, after %.1f ms (%.0fx less)" % (
        before * 1000, after * 1000, before / after if after else float("inf")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=10000)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--only-after", action="store_true", help="skip the old version (slow to start with many routes)")
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (it creates a network namespace)")
    results = {"env": {"nproc": os.cpu_count(), "kernel": os.uname().release, "routes": args.routes,
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": os.getloadavg(),
                       "old_commit": OLD_COMMIT}}
    ns = base.Namespace(prefix="aepr")
    workdir = tempfile.mkdtemp(prefix="aepr-")
    os.chmod(workdir, 0o755)
    origin = None
    try:
        base.setup(ns)
        origin = ns.popen([base.PY, os.path.abspath(__file__), "echo", ORIGIN])
        base.wait_port(ns, "127.0.0.1", 9000, origin)
        programs = {"after": base.PROXY_PKG}
        if not args.only_after:
            programs["before"] = old_program(workdir)
        for version in ("before", "after"):
            if version in programs:
                print("%s: %d routes, %d reloads ..." % (version, args.routes, args.reloads), file=sys.stderr, flush=True)
                results[version] = measure(ns, workdir, version, programs[version], args.routes, args.reloads)
        results["env"]["load_after"] = os.getloadavg()
    finally:
        if origin is not None:
            base.stop(origin)
        ns.delete()
        shutil.rmtree(workdir, ignore_errors=True)
    if "before" in results:
        report(results)
    else:
        print(json.dumps(results["after"], indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "echo":
        echo(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "probe":
        probe(sys.argv[2])
    else:
        main()
