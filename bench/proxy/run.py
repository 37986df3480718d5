"""Benchmark anycast-proxy beside direct loopback, HAProxy (TCP mode, one thread) and socat.

Run as root from the repository root:

    python3 bench/proxy/run.py [--quick] [--json results.json]

Everything happens inside one throwaway network namespace (aepb-*), which is
removed at the end. In it:
- an origin (bench/proxy/load.py serve) on 127.0.0.1:9000;
- AnyIP 192.0.2.0/24 -> TPROXY -> anycast-proxy on 127.0.0.1:1234;
- AnyIP 203.0.113.0/24 -> TPROXY -> anycast-proxy with 2 workers on 127.0.0.1:1237;
- AnyIP 10.99.0.0/24 -> TPROXY -> anycast-proxy with `splice: true` on 127.0.0.1:1238;
- AnyIP 198.51.100.0/24 -> TPROXY -> HAProxy `bind ... transparent` on 127.0.0.1:1235;
- socat (no transparent listener in Debian's 1.7.4) on 127.0.0.1:1236;
- AnyIP 172.16.0.0/24 -> TPROXY -> bench/proxy/floor_relay.py on 127.0.0.1:1239 ("cpython
  floor": the same system calls as anycast-proxy and nothing else; short connections only);
- "direct" dials the origin itself.
CPU is the proxy's own (utime+stime of its process tree, from /proc), never
the load generator's; "machine" CPU per GiB is the whole machine's (/proc/stat).
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PROXY_PKG = os.path.join(REPO, "roles", "transparent_proxy", "files", "anycast_proxy")
LOAD = os.path.join(HERE, "load.py")
PY = "/usr/bin/python3"
TICK = os.sysconf("SC_CLK_TCK")
ORIGIN = "127.0.0.1:9000"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


class Namespace:
    def __init__(self, prefix="aepb"):
        # AE_NS_TAG keeps one engineer's namespaces apart from another's on a shared machine.
        self.name = "%s%s%06x" % (os.environ.get("AE_NS_TAG", ""), prefix, random.getrandbits(24))
        sh(["ip", "netns", "add", self.name])

    def run(self, *cmd, timeout=60):
        return sh(["ip", "netns", "exec", self.name] + list(cmd), timeout=timeout)

    def popen(self, cmd, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.name] + list(cmd), **kw)

    def delete(self):
        subprocess.run("ip netns pids %s | xargs -r kill -9" % self.name, shell=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def setup(ns):
    ns.run("ip", "link", "set", "lo", "up")
    ns.run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1",
           "net.core.somaxconn=8192")
    ns.run("iptables", "-t", "mangle", "-N", "ANYCAST-TPROXY")
    ns.run("iptables", "-t", "mangle", "-A", "PREROUTING", "-j", "ANYCAST-TPROXY")
    for prefix, port in (("192.0.2.0/24", 1234), ("198.51.100.0/24", 1235), ("203.0.113.0/24", 1237),
                         ("10.99.0.0/24", 1238), ("172.16.0.0/24", 1239)):
        # src 127.0.0.1: locally originated traffic must not hit TPROXY on the way back.
        ns.run("ip", "route", "add", "local", prefix, "dev", "lo", "src", "127.0.0.1")
        ns.run("iptables", "-t", "mangle", "-A", "ANYCAST-TPROXY", "-d", prefix, "-p", "tcp",
               "-j", "TPROXY", "--on-port", str(port), "--on-ip", "127.0.0.1")


def tree_pids(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            with open("/proc/%d/task/%d/children" % (p, p)) as fh:
                todo += [int(x) for x in fh.read().split()]
        except OSError:
            pass
    return pids


def cpu_seconds(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            with open("/proc/%d/stat" % p) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def rss_mib(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            with open("/proc/%d/status" % p) as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def machine_busy_seconds():
    """CPU time of the whole machine outside idle and iowait (all processes, softirqs, kworkers)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def tcp_out_segments(ns):
    lines = [l.split() for l in ns.run("cat", "/proc/net/snmp").stdout.splitlines() if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutSegs")])


def load(ns, *args, timeout=120):
    out = ns.run(PY, LOAD, *[str(a) for a in args], timeout=timeout).stdout
    return json.loads(out.strip().splitlines()[-1])


class Target:
    def __init__(self, name, dial, proc=None):
        self.name, self.dial, self.proc = name, dial, proc

    def cpu(self):
        return cpu_seconds(self.proc.pid) if self.proc else 0.0


def start_anycast_proxy(ns, workdir, workers=1, log=False, loop="dataplane", port=1234, prefix="192.0.2.0/24",
                        splice=False):
    config = {
        "listen": ["127.0.0.1:%d" % port], "workers": workers, "log_connections": log, "splice": splice,
        "max_connections_per_source": 0,
        "routes": [{"destination": prefix, "origin": ORIGIN, "idle_timeout": 600}],
    }
    path = os.path.join(workdir, "proxy-%d.json" % port)
    with open(path, "w") as fh:
        json.dump(config, fh)
    env = dict(os.environ, ANYCAST_PROXY_LOOP=loop)
    proc = ns.popen([PY, PROXY_PKG, "--config", path], stdout=subprocess.DEVNULL,
                    stderr=open(os.path.join(workdir, "proxy.log"), "ab"), env=env)
    wait_port(ns, "127.0.0.1", port, proc, expected=workers + (1 if workers > 1 else 0))
    return proc


def start_haproxy(ns, workdir):
    cfg = os.path.join(workdir, "haproxy.cfg")
    with open(cfg, "w") as fh:
        fh.write("""global
    nbthread 1
    maxconn 9900
defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
frontend fe
    bind 127.0.0.1:1235 transparent
    default_backend be
backend be
    server origin %s
""" % ORIGIN)
    proc = ns.popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(ns, "127.0.0.1", 1235, proc)
    return proc


def start_floor(ns):
    proc = ns.popen([PY, os.path.join(HERE, "floor_relay.py"), "127.0.0.1:1239", ORIGIN])
    wait_port(ns, "127.0.0.1", 1239, proc)
    return proc


def start_socat(ns):
    proc = ns.popen(["socat", "TCP-LISTEN:1236,bind=127.0.0.1,reuseaddr,fork,backlog=4096", "TCP:" + ORIGIN],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(ns, "127.0.0.1", 1236, proc)
    return proc


def wait_port(ns, host, port, proc, expected=1):
    for _unused1 in range(200):
        if proc.poll() is not None:
            raise SystemExit("%s exited with %s" % (proc.args, proc.returncode))
        out = ns.run("ss", "-Hltn", "sport = :%d" % port).stdout
        if len(out.strip().splitlines()) >= 1:
            time.sleep(0.3 if expected > 1 else 0.05)
            return
        time.sleep(0.05)
    raise SystemExit("nothing listens on %s:%d" % (host, port))


def stop(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure_bulk(ns, target, nbytes):
    c0, m0 = target.cpu(), machine_busy_seconds()
    res = load(ns, "bulk", target.dial, nbytes)
    res["cpu_s"] = target.cpu() - c0
    res["cpu_s_per_gib"] = res["cpu_s"] / (nbytes / 2**30)
    # The whole machine too: client, origin, softirqs and kernel threads, whoever did the work.
    res["machine_cpu_s_per_gib"] = (machine_busy_seconds() - m0) / (nbytes / 2**30)
    return res


def measure_short(ns, target, seconds, conc):
    c0, g0 = target.cpu(), tcp_out_segments(ns)
    res = load(ns, "short", target.dial, seconds, conc)
    res["cpu_s"] = target.cpu() - c0
    res["cpu_us_per_conn"] = res["cpu_s"] / max(res["connections"], 1) * 1e6
    # Every TCP segment sent in the namespace (client, proxy and origin alike) per connection.
    res["segments_per_conn"] = (tcp_out_segments(ns) - g0) / max(res["connections"], 1)
    return res


def measure_idle(ns, target, count):
    client = ns.popen([PY, LOAD, "idle", target.dial, str(count)], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, text=True)
    try:
        line = client.stdout.readline()
        if not line:
            raise RuntimeError("idle client failed")
        time.sleep(1)
        return {"connections": json.loads(line)["connections"], "rss_mib": rss_mib(target.proc.pid)}
    finally:
        client.stdin.close()
        client.wait(60)
        time.sleep(1)


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller volumes (a smoke run)")
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--loop", default="dataplane", choices=["auto", "dataplane", "asyncio", "uvloop"],
                    help="ANYCAST_PROXY_LOOP for anycast-proxy (default dataplane, as in docs/benchmarks.md)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (it creates a network namespace)")
    bulk_bytes = (256 if args.quick else 1024) << 20
    short_s = 1.0 if args.quick else 2.0
    rounds = 1 if args.quick else 3
    idle_n = 1000 if args.quick else 9000

    ns = Namespace()
    workdir = tempfile.mkdtemp(prefix="aepb-")
    procs = []
    results = {"env": {"nproc": os.cpu_count(), "kernel": os.uname().release, "loop": args.loop,
                       "rounds": rounds, "bulk_bytes": bulk_bytes, "short_seconds": short_s}}
    try:
        setup(ns)
        origin = ns.popen([PY, LOAD, "serve", ORIGIN])
        procs.append(origin)
        wait_port(ns, "127.0.0.1", 9000, origin)
        ap1 = start_anycast_proxy(ns, workdir, loop=args.loop)
        ap2 = start_anycast_proxy(ns, workdir, workers=2, loop=args.loop, port=1237, prefix="203.0.113.0/24")
        aps = start_anycast_proxy(ns, workdir, loop=args.loop, port=1238, prefix="10.99.0.0/24", splice=True)
        hap = start_haproxy(ns, workdir)
        soc = start_socat(ns)
        flo = start_floor(ns)
        procs += [ap1, ap2, aps, hap, soc, flo]
        targets = [
            Target("direct", ORIGIN),
            Target("anycast-proxy", "192.0.2.0/24:any", ap1),
            Target("anycast-proxy x2", "203.0.113.0/24:any", ap2),
            Target("anycast-proxy splice", "10.99.0.0/24:any", aps),
            Target("haproxy", "198.51.100.0/24:any", hap),
            Target("socat", "127.0.0.1:1236", soc),
            Target("cpython floor", "172.16.0.0/24:any", flo),
        ]
        # Rounds interleave the targets, so that load from elsewhere on the machine hits all of
        # them alike; each figure is the best of the rounds.
        runs = {t.name: {"bulk": [], "short_c1": [], "short_c50": []} for t in targets}
        for rnd in range(rounds):
            for t in targets:
                print("round %d: %s ..." % (rnd + 1, t.name), file=sys.stderr, flush=True)
                if t.name != "cpython floor":   # it drops what a receiver does not take at once
                    runs[t.name]["bulk"].append(measure_bulk(ns, t, bulk_bytes))
                runs[t.name]["short_c1"].append(measure_short(ns, t, short_s, 1))
                runs[t.name]["short_c50"].append(measure_short(ns, t, short_s, 50))
        for t in targets:
            r = results[t.name] = {"runs": runs[t.name]}
            r["bulk"] = dict(max(runs[t.name]["bulk"], key=lambda x: x["gbit_s"], default={}))
            for key in ("cpu_s_per_gib", "machine_cpu_s_per_gib"):
                r["bulk"][key] = min((x[key] for x in runs[t.name]["bulk"]), default=None)
            for key in ("short_c1", "short_c50"):
                r[key] = dict(max(runs[t.name][key], key=lambda x: x["per_second"]))
                for field in ("cpu_us_per_conn", "segments_per_conn"):
                    r[key][field] = min(x[field] for x in runs[t.name][key])
        by_name = {t.name: t for t in targets}
        # Over a million connections leave TIME_WAIT and FIN_WAIT2 sockets (past the namespace's
        # TIME_WAIT limit: TcpExtTCPTimeWaitOverflow); idle clients that meet their leftovers get
        # resets, so let them expire first (tcp_fin_timeout and TIME_WAIT are 60 s).
        print("waiting 61 s for the rounds' closing connections to expire ...", file=sys.stderr, flush=True)
        time.sleep(61)
        for name, count in (("anycast-proxy", idle_n), ("haproxy", idle_n),
                            ("anycast-proxy x2", 10000 if not args.quick else idle_n)):
            t = by_name[name]
            print("idle connections: %s ..." % t.name, file=sys.stderr, flush=True)
            results[t.name]["idle"] = measure_idle(ns, t, count)
    finally:
        for p in procs:
            stop(p)
        ns.delete()
        shutil.rmtree(workdir, ignore_errors=True)

    direct = results["direct"]["bulk"]["gbit_s"]
    rows = [("target", "bulk Gbit/s", "x direct", "CPU s/GiB", "machine s/GiB", "c1 conn/s", "c1 p99 ms",
             "c50 conn/s", "c50 p99 ms", "CPU us/conn", "segs/conn", "idle conns", "RSS MiB")]
    for name in ("direct", "anycast-proxy", "anycast-proxy x2", "anycast-proxy splice", "haproxy", "socat",
                 "cpython floor"):
        r = results[name]
        idle = r.get("idle", {})
        gbit_s = r["bulk"].get("gbit_s")
        rows.append((
            name, fmt(gbit_s, ".2f"), fmt(gbit_s and gbit_s / direct, ".2f"),
            "-" if name == "direct" else fmt(r["bulk"]["cpu_s_per_gib"], ".2f"),
            fmt(r["bulk"]["machine_cpu_s_per_gib"], ".2f"),
            fmt(r["short_c1"]["per_second"], ".0f"), fmt(r["short_c1"]["p99_ms"], ".2f"),
            fmt(r["short_c50"]["per_second"], ".0f"), fmt(r["short_c50"]["p99_ms"], ".2f"),
            "-" if name == "direct" else fmt(r["short_c50"]["cpu_us_per_conn"], ".0f"),
            fmt(r["short_c50"]["segments_per_conn"], ".1f"),
            fmt(idle.get("connections"), "d"), fmt(idle.get("rss_mib"), ".1f"),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines))
    ap = results["anycast-proxy"]
    hp = results["haproxy"]
    print()
    print("targets: bulk >= 0.8x direct: %s; <= 0.4 CPU-s/GiB: %s; CPU/conn <= HAProxy's: %s; "
          "<= 100 MiB for 10,000 idle: %s" % (
              "met" if ap["bulk"]["gbit_s"] / direct >= 0.8 else "NOT met",
              "met" if ap["bulk"]["cpu_s_per_gib"] <= 0.4 else "NOT met",
              "met" if ap["short_c50"]["cpu_us_per_conn"] <= hp["short_c50"]["cpu_us_per_conn"] else "NOT met",
              "met" if results["anycast-proxy x2"]["idle"]["rss_mib"] <= 100 else "NOT met"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
