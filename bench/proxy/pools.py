"""Benchmark anycast-proxy's origin pools and restarts beside HAProxy with the same pool.

Run as root from the repository root (a git checkout: the "before" restart runs the proxy
of commit d75f0ed, taken with git archive):

    python3 bench/proxy/pools.py [--quick] [--json results.json]

Everything happens inside one throwaway network namespace (${AE_NS_TAG}aepp*), removed at
the end, with the AnyIP + TPROXY set-up of bench/proxy/run.py. Three parts:

1. What a pool costs: short connections (request, answer, close; 50 in flight) and one bulk
   transfer through anycast-proxy and through HAProxy (one process, one thread), each once with
   one origin and once with a pool of four (round-robin, active checks every second):
   connections/s, the proxy's own CPU per connection (utime+stime from /proc), Gbit/s, CPU
   per GiB. The four origins of the pool are four addresses (127.0.0.1-4:9000) of one origin
   process (bench/proxy/load.py serve), the single origin is one of them: the origin side is
   the same for both, only the proxy's work differs. Rounds interleave the four targets; each
   figure is the best of the rounds.
2. An origin dies under 50 new connections/s: four origin processes on 127.0.0.1:9001-9004,
   pools of those four in both proxies; one origin is
   killed (its port refuses) and, in a second run, one goes silent (its SYNs are dropped)
   2.5 s into 8 s of dialling. Both proxies are configured alike: 3 s to connect in all
   (HAProxy: `timeout connect 1s`, `retries 2`, `option redispatch 1`), checks every second,
   rise 2, fall 3, failed connections count against the origin (`observe layer4`).
   A dial fails when it is refused, reset, closed early or unanswered within 2 s.
3. New connections lost across a restart, at 25 new connections/s with a restart 3 s in
   (what `systemctl restart` does, played here as in tests/integration/test_proxy_restart.py):
   before (the proxy of d75f0ed: its own listeners; SIGTERM, wait for the exit, start the
   next) and after (listeners owned outside the proxy and passed with LISTEN_FDS, as
   anycast-proxy.socket does; established connections handed to the drain service).
   A dial fails when it is refused, reset or unanswered within 1 s (the issue's measure).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import run as base

sys.path.insert(0, os.path.join(base.REPO, "tests", "proxy"))
import support  # noqa: E402  (ProxyProcess, SocketOwner: the proxy under systemd's rules)

ORIGINS = ["127.0.0.1:%d" % port for port in (9001, 9002, 9003, 9004)]
# Part 1: one origin process, four addresses of it.
COST_ORIGIN = "0.0.0.0:9000"
COST_POOL = ["127.0.0.%d:9000" % i for i in (1, 2, 3, 4)]
OLD_COMMIT = "d75f0ed"
HEALTH = {"interval": 1, "timeout": 1, "rise": 2, "fall": 3}
CONNECT_TIMEOUT = 3
# TPROXY prefixes and listener ports of bench/proxy/run.py's setup().
PREFIX = {1234: "192.0.2.0/24", 1235: "198.51.100.0/24", 1237: "203.0.113.0/24", 1238: "10.99.0.0/24",
          1239: "172.16.0.0/24"}


def dial_target(port):
    return PREFIX[port] + ":any"


# -- origins ----------------------------------------------------------------------------------
class Origins(object):
    def __init__(self, ns):
        self.ns, self.procs = ns, {}
        for address in ORIGINS:
            self.start(address)

    def start(self, address):
        proc = self.ns.popen([base.PY, base.LOAD, "serve", address])
        base.wait_port(self.ns, "127.0.0.1", int(address.rsplit(":", 1)[1]), proc)
        self.procs[address] = proc

    def kill(self, address):
        proc = self.procs.pop(address)
        proc.kill()
        proc.wait()

    def ensure(self):
        for address in ORIGINS:
            if address not in self.procs:
                self.start(address)

    def stop(self):
        for proc in self.procs.values():
            base.stop(proc)


def silence(ns, address, on):
    """Drop the SYNs to ADDRESS (the origin's host stops answering) or stop dropping them."""
    host, port = address.rsplit(":", 1)
    rule = ["OUTPUT", "-p", "tcp", "-d", host, "--dport", port, "--syn", "-j", "DROP"]
    if on:
        ns.run("iptables", "-I", *rule)
    else:
        subprocess.run(["ip", "netns", "exec", ns.name, "iptables", "-D"] + rule, check=False,
                       capture_output=True)


# -- the proxies ------------------------------------------------------------------------------
def anycast_config(port, origins, metrics=None):
    route = {"name": "pool" if len(origins) > 1 else "one", "destination": PREFIX[port],
             "connect_timeout": CONNECT_TIMEOUT, "idle_timeout": 600}
    if len(origins) > 1:
        route.update(origins=origins, health_check=HEALTH)
    else:
        route["origin"] = origins[0]
    config = {"listen": ["127.0.0.1:%d" % port], "workers": 1, "log_connections": False,
              "max_connections_per_source": 0, "routes": [route]}
    if metrics:
        config["metrics"] = metrics
    return config


def start_anycast(ns, workdir, port, origins, metrics=None):
    path = os.path.join(workdir, "anycast-%d.json" % port)
    with open(path, "w") as fh:
        json.dump(anycast_config(port, origins, metrics), fh)
    proc = ns.popen([base.PY, base.PROXY_PKG, "--config", path], stdout=subprocess.DEVNULL,
                    stderr=open(os.path.join(workdir, "anycast-%d.log" % port), "ab"),
                    env=dict(os.environ, ANYCAST_PROXY_LOOP="dataplane"))
    base.wait_port(ns, "127.0.0.1", port, proc)
    return proc


def haproxy_config(port, origins, stats):
    lines = ["global", "    nbthread 1", "    maxconn 9900", "    stats socket %s mode 600 level admin" % stats,
             "defaults", "    mode tcp", "    timeout connect %ds" % (CONNECT_TIMEOUT if len(origins) == 1 else 1),
             "    timeout client 600s", "    timeout server 600s"]
    if len(origins) > 1:
        # Three attempts of 1 s (anycast-proxy: 3 s in all, shared by the attempts), each on
        # another server; checks and passive marking as anycast-proxy's.
        lines += ["    retries 2", "    option redispatch 1"]
    lines += ["frontend fe", "    bind 127.0.0.1:%d transparent" % port, "    default_backend be",
              "backend be", "    balance roundrobin"]
    if len(origins) > 1:
        lines.append("    default-server check inter %ds rise %d fall %d observe layer4 error-limit %d "
                     "on-error mark-down" % (HEALTH["interval"], HEALTH["rise"], HEALTH["fall"], HEALTH["fall"]))
    lines += ["    server o%d %s" % (i + 1, address) for i, address in enumerate(origins)]
    return "\n".join(lines) + "\n"


def start_haproxy(ns, workdir, port, origins):
    stats = os.path.join(workdir, "haproxy-%d.sock" % port)
    path = os.path.join(workdir, "haproxy-%d.cfg" % port)
    with open(path, "w") as fh:
        fh.write(haproxy_config(port, origins, stats))
    proc = ns.popen(["haproxy", "-db", "-f", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base.wait_port(ns, "127.0.0.1", port, proc)
    proc.stats_socket = stats
    return proc


def anycast_origins_up(ns, metrics_port):
    """{origin: up} from anycast-proxy's metrics endpoint."""
    sock = support.socket_in(ns.name)
    sock.settimeout(5)
    with sock:
        sock.connect(("127.0.0.1", metrics_port))
        data = support.ask(sock, b"GET /metrics HTTP/1.0\r\n\r\n")
    samples = support.parse_metrics(data.partition(b"\r\n\r\n")[2].decode())
    return {dict(labels)["origin"]: value == 1 for (name, labels), value in samples.items()
            if name == "anycast_proxy_origin_up"}


def haproxy_origins_up(stats_socket):
    """{origin: up} from HAProxy's stats socket (show stat: svname, status)."""
    import socket
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(stats_socket)
        data = support.ask(sock, b"show stat\n")
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    state = {}
    for line in lines[1:]:
        fields = dict(zip(header, line.split(",")))
        if fields.get("pxname") == "be" and fields.get("svname", "").startswith("o"):
            state[ORIGINS[int(fields["svname"][1:]) - 1]] = fields.get("status", "").startswith("UP")
    return state


# -- part 1: what a pool costs ----------------------------------------------------------------
def measure_cost(ns, targets, rounds, bulk_bytes, short_s):
    runs = {t.name: {"bulk": [], "short_c50": []} for t in targets}
    for rnd in range(rounds):
        for t in targets:
            print("cost, round %d: %s ..." % (rnd + 1, t.name), file=sys.stderr, flush=True)
            runs[t.name]["bulk"].append(base.measure_bulk(ns, t, bulk_bytes))
            runs[t.name]["short_c50"].append(base.measure_short(ns, t, short_s, 50))
    results = {}
    for t in targets:
        r = results[t.name] = {"runs": runs[t.name]}
        r["bulk"] = dict(max(runs[t.name]["bulk"], key=lambda x: x["gbit_s"]))
        r["bulk"]["cpu_s_per_gib"] = min(x["cpu_s_per_gib"] for x in runs[t.name]["bulk"])
        r["short_c50"] = dict(max(runs[t.name]["short_c50"], key=lambda x: x["per_second"]))
        r["short_c50"]["cpu_us_per_conn"] = min(x["cpu_us_per_conn"] for x in runs[t.name]["short_c50"])
    return results


# -- dials at a fixed rate --------------------------------------------------------------------
def paced(ns, target, rate, seconds, timeout):
    """Start load.py paced in the namespace; .result() waits for it and returns its rows."""
    proc = ns.popen([base.PY, base.LOAD, "paced", target, str(rate), str(seconds), str(timeout)],
                    stdout=subprocess.PIPE, text=True)

    class Run(object):
        started = time.time()

        @staticmethod
        def result():
            out = proc.communicate(timeout=seconds + timeout + 60)[0]
            return json.loads(out.strip().splitlines()[-1])["rows"]
    return Run


def percentile(values, share):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * share))] if values else None


def summarise(rows, event=None):
    failed = [r for r in rows if r[1] != "ok"]
    outcomes = {}
    for r in failed:
        outcomes[r[1]] = outcomes.get(r[1], 0) + 1
    ms = [r[2] for r in rows if r[1] == "ok"]
    out = {"dials": len(rows), "failed": len(failed), "failed_outcomes": outcomes,
           "p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99), "max_ms": max(ms, default=None)}
    if event is not None:
        window = [r for r in rows if event <= r[0] < event + 3]
        out["after_event"] = {"dials": len(window), "failed": sum(1 for r in window if r[1] != "ok"),
                              "max_ms": max((r[2] for r in window if r[1] == "ok"), default=None),
                              "over_100ms": sum(1 for r in window if r[1] == "ok" and r[2] > 100)}
    return out


# -- part 2: an origin dies -------------------------------------------------------------------
def wait_all_up(check, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = check()
            if len(state) == len(ORIGINS) and all(state.values()):
                return True
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the pool did not come back up within %ds: %s" % (timeout, check()))


def measure_failures(ns, origins, pools, rate, seconds, at):
    results = {}
    for kind, victim in (("killed", ORIGINS[2]), ("silent", ORIGINS[3])):
        for name, (port, check) in pools.items():
            origins.ensure()
            wait_all_up(check)
            print("origin %s under %d dials/s: %s ..." % (kind, rate, name), file=sys.stderr, flush=True)
            run = paced(ns, dial_target(port), rate, seconds, 2.0)
            time.sleep(max(0.0, run.started + at - time.time()))
            event = time.time()
            if kind == "killed":
                origins.kill(victim)
            else:
                silence(ns, victim, True)
            down_after = None
            while time.time() < run.started + seconds:
                try:
                    if down_after is None and check().get(victim) is False:
                        down_after = time.time() - event
                except OSError:
                    pass
                time.sleep(0.05)
            rows = run.result()
            if kind == "silent":
                silence(ns, victim, False)
            r = results.setdefault(kind, {})[name] = summarise(rows, event)
            r["marked_down_after_s"] = down_after
            r["rows"] = rows
    return results


# -- part 3: restarts -------------------------------------------------------------------------
def old_program(workdir):
    dest = os.path.join(workdir, "old")
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", base.REPO, "archive", OLD_COMMIT, "roles/transparent_proxy/files/anycast_proxy"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return os.path.join(dest, "roles", "transparent_proxy", "files", "anycast_proxy")


def measure_restart(ns, workdir, version, rate, seconds, at):
    """One restart under load; VERSION 'before' (d75f0ed, own listeners) or 'after' (socket unit + drain)."""
    procs, owner = [], None
    port = 1239 if version == "before" else 1234
    config = anycast_config(port, ORIGINS[:1])
    config["drain_timeout"] = 30
    env = {"ANYCAST_PROXY_LOOP": "dataplane"}
    try:
        if version == "before":
            program = old_program(tempfile.mkdtemp(dir=workdir))

            def start():
                proc = support.ProxyProcess(ns.name, config, tempfile.mkdtemp(dir=workdir), env=env, program=program)
                procs.append(proc)
                proc.wait_ready()
                return proc
        else:
            owner = support.SocketOwner(ns.name, endpoints=("127.0.0.1:%d" % port,))
            drain_socket = os.path.join(tempfile.mkdtemp(dir=workdir), "drain.sock")
            drain = support.ProxyProcess(ns.name, {}, tempfile.mkdtemp(dir=workdir),
                                         args=["--drain", "--drain-listen", drain_socket])
            procs.append(drain)
            drain.wait_ready()
            config["drain_socket"] = drain_socket

            def start():
                proc = support.ProxyProcess(ns.name, config, tempfile.mkdtemp(dir=workdir), env=env, sockets=owner)
                procs.append(proc)
                proc.wait_ready()
                return proc
        old = start()
        run = paced(ns, dial_target(port), rate, seconds, 1.0)
        time.sleep(max(0.0, run.started + at - time.time()))
        event = time.time()
        old.signal(signal.SIGTERM)
        old.proc.wait(40)
        exited = time.time() - event
        start()
        ready = time.time() - event
        rows = run.result()
        result = summarise(rows, event)
        result.update(stopped_after_s=exited, ready_after_s=ready, rows=rows)
        return result
    finally:
        for proc in procs:
            proc.stop(timeout=40)
        if owner:
            owner.close()


# -- report -----------------------------------------------------------------------------------
def table(rows):
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def ms(value):
    return "-" if value is None else "%.1f" % value


def report(results):
    cost = results["cost"]
    rows = [("target", "conn/s (c50)", "CPU us/conn", "vs 1 origin", "bulk Gbit/s", "CPU s/GiB")]
    for proxy in ("anycast-proxy", "haproxy"):
        one = cost["%s, 1 origin" % proxy]
        for origins in (1, 4):
            r = cost["%s, %d origin%s" % (proxy, origins, "s" if origins > 1 else "")]
            rows.append((
                "%s, %d origin%s" % (proxy, origins, "s" if origins > 1 else ""),
                "%.0f" % r["short_c50"]["per_second"], "%.0f" % r["short_c50"]["cpu_us_per_conn"],
                "%.3f" % (r["short_c50"]["cpu_us_per_conn"] / one["short_c50"]["cpu_us_per_conn"]),
                "%.2f" % r["bulk"]["gbit_s"], "%.2f" % r["bulk"]["cpu_s_per_gib"]))
    print(table(rows))
    print()
    rows = [("origin", "proxy", "dials", "failed", "p50 ms", "p99 ms", "max ms", "3 s after: dials / >100 ms / max ms",
             "marked down after s")]
    for kind, by_proxy in results["failover"].items():
        for proxy, r in by_proxy.items():
            a = r["after_event"]
            rows.append((kind, proxy, r["dials"], "%d %s" % (r["failed"], r["failed_outcomes"] or ""),
                         ms(r["p50_ms"]), ms(r["p99_ms"]), ms(r["max_ms"]),
                         "%d / %d / %s" % (a["dials"], a["over_100ms"], ms(a["max_ms"])),
                         "-" if r["marked_down_after_s"] is None else "%.2f" % r["marked_down_after_s"]))
    print(table(rows))
    print()
    rows = [("restart", "dials", "failed", "failed outcomes", "max ms", "exit after s", "ready after s")]
    for version, runs in results["restart"].items():
        for r in runs:
            rows.append((version, r["dials"], r["failed"], r["failed_outcomes"] or "-", ms(r["max_ms"]),
                         "%.3f" % r["stopped_after_s"], "%.3f" % r["ready_after_s"]))
    print(table(rows))
    ap1, ap4 = cost["anycast-proxy, 1 origin"], cost["anycast-proxy, 4 origins"]
    ratio = ap4["short_c50"]["cpu_us_per_conn"] / ap1["short_c50"]["cpu_us_per_conn"]
    failed = sum(results["failover"][kind]["anycast-proxy"]["failed"] for kind in ("killed", "silent"))
    lost = {v: sum(r["failed"] for r in runs) for v, runs in results["restart"].items()}
    dials = {v: sum(r["dials"] for r in runs) for v, runs in results["restart"].items()}
    print("\ntargets: a pool of 4 costs <= 5%% CPU per connection over 1 origin: %s (%.3fx); 0 failed dials "
          "when an origin dies or goes silent: %s (%d); restart: %d of %d dials lost before, %d of %d after"
          % ("met" if ratio <= 1.05 else "NOT met", ratio, "met" if failed == 0 else "NOT met", failed,
             lost["before"], dials["before"], lost["after"], dials["after"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one round, shorter runs (a smoke run)")
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (it creates a network namespace)")
    rounds = 1 if args.quick else 5
    bulk_bytes = (128 if args.quick else 512) << 20
    short_s = 1.0 if args.quick else 2.0
    restarts = 1 if args.quick else 2
    results = {"env": {"nproc": os.cpu_count(), "kernel": os.uname().release, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "load_before": os.getloadavg(), "rounds": rounds, "bulk_bytes": bulk_bytes,
                       "short_seconds": short_s, "haproxy": base.sh(["haproxy", "-v"]).stdout.splitlines()[0],
                       "old_commit": OLD_COMMIT}}
    ns = base.Namespace(prefix="aepp")
    workdir = tempfile.mkdtemp(prefix="aepp-")
    os.chmod(workdir, 0o755)
    procs, origins = [], None
    try:
        base.setup(ns)
        cost_origin = ns.popen([base.PY, base.LOAD, "serve", COST_ORIGIN])
        procs.append(cost_origin)
        base.wait_port(ns, "127.0.0.1", 9000, cost_origin)
        ap1 = start_anycast(ns, workdir, 1234, COST_POOL[:1])
        ap4 = start_anycast(ns, workdir, 1237, COST_POOL)
        hp1 = start_haproxy(ns, workdir, 1235, COST_POOL[:1])
        hp4 = start_haproxy(ns, workdir, 1238, COST_POOL)
        procs += [ap1, ap4, hp1, hp4]
        targets = [base.Target("anycast-proxy, 1 origin", dial_target(1234), ap1),
                   base.Target("anycast-proxy, 4 origins", dial_target(1237), ap4),
                   base.Target("haproxy, 1 origin", dial_target(1235), hp1),
                   base.Target("haproxy, 4 origins", dial_target(1238), hp4)]
        results["cost"] = measure_cost(ns, targets, rounds, bulk_bytes, short_s)
        for proc in procs:
            base.stop(proc)
        origins = Origins(ns)
        ap4 = start_anycast(ns, workdir, 1237, ORIGINS, metrics="127.0.0.1:9101")
        hp4 = start_haproxy(ns, workdir, 1238, ORIGINS)
        procs += [ap4, hp4]
        pools = {"anycast-proxy": (1237, lambda: anycast_origins_up(ns, 9101)),
                 "haproxy": (1238, lambda: haproxy_origins_up(hp4.stats_socket))}
        results["failover"] = measure_failures(ns, origins, pools, rate=50, seconds=8, at=2.5)
        for proc in procs:
            base.stop(proc)
        origins.ensure()
        results["restart"] = {"before": [], "after": []}
        for _unused1 in range(restarts):
            for version in ("before", "after"):
                print("restart under 25 dials/s: %s ..." % version, file=sys.stderr, flush=True)
                results["restart"][version].append(measure_restart(ns, workdir, version, 25, 10, 3))
        results["env"]["load_after"] = os.getloadavg()
    finally:
        for proc in procs:
            base.stop(proc)
        if origins:
            origins.stop()
        ns.delete()
        shutil.rmtree(workdir, ignore_errors=True)
    report(results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
