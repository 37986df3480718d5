"""--self-test: does this host deliver the configured routes' traffic to us?

Reads kernel state, changes nothing:
- the capability to set IP_TRANSPARENT on each listener's family, and to answer
  UDP routes from ports below net.ipv4.ip_unprivileged_port_start;
- an AnyIP route (`local` route in table local) covering each route's
  destination (`ip -j route show table local`);
- a TPROXY rule reachable from mangle PREROUTING that covers each route's
  destination, protocol and ports and points at one of our listeners
  (`iptables-save -t mangle`, `ip6tables-save -t mangle`, and the legacy
  variants when they hold rules).
"""
import ipaddress
import json
import shlex
import shutil
import socket
import subprocess

from .netutil import CAP_NET_ADMIN, effective_caps, set_transparent, udp_bind_problem

ANYIP_PROTOCOL = "172"


class Report:
    def __init__(self):
        self.lines = []
        self.missing = 0

    def ok(self, text):
        self.lines.append(f"ok:      {text}")

    def miss(self, text):
        self.missing += 1
        self.lines.append(f"MISSING: {text}")

    def note(self, text):
        self.lines.append(f"note:    {text}")


def _run(cmd):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if proc.returncode != 0:
        return None, (proc.stderr.strip() or f"exit status {proc.returncode}")
    return proc.stdout, None


def check_capability(config, report):
    families = sorted({ep.family for ep in config.listen})
    caps = effective_caps()
    if caps is not None and not caps & (1 << CAP_NET_ADMIN):
        report.miss("CAP_NET_ADMIN is not in the effective capability set (needed for IP_TRANSPARENT)")
        return
    for family in families:
        name = "IPV6_TRANSPARENT" if family == socket.AF_INET6 else "IP_TRANSPARENT"
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                set_transparent(sock, family)
        except PermissionError:
            report.miss(f"cannot set {name}: the process lacks CAP_NET_ADMIN")
        except OSError as exc:
            report.miss(f"cannot set {name}: {exc.strerror}")
        else:
            report.ok(f"{name} can be set")
    problem = udp_bind_problem(config.routes)
    if problem:
        report.miss(problem)


def _network(text, family):
    if text in ("default", None):
        return ipaddress.ip_network("::/0" if family == 6 else "0.0.0.0/0")
    return ipaddress.ip_network(text, strict=False)


def local_routes():
    routes, errors = [], []
    for fam in ("-4", "-6"):
        out, err = _run(["ip", fam, "-j", "route", "show", "table", "local"])
        if out is None:
            errors.append(f"ip {fam} route show table local: {err}")
            continue
        for entry in json.loads(out or "[]"):
            if entry.get("type") != "local":
                continue
            try:
                net = _network(entry.get("dst"), 6 if fam == "-6" else 4)
            except ValueError:
                continue
            routes.append((net, entry))
    return routes, errors


def check_anyip(config, report):
    routes, errors = local_routes()
    for err in errors:
        report.miss(f"cannot read the local routing table: {err}")
    seen = set()
    for r in config.routes:
        if r.network in seen:
            continue
        seen.add(r.network)
        covering = [(net, e) for net, e in routes
                    if net.version == r.network.version and r.network.subnet_of(net)]
        if not covering:
            hint = f"ip route add local {r.network} dev lo" + (" src 127.0.0.1" if r.network.version == 4 else "")
            report.miss(f"AnyIP route for {r.network} (route {r.name}): no local route covers it; e.g. `{hint}`")
            continue
        net, entry = max(covering, key=lambda c: c[0].prefixlen)
        proto = str(entry.get("protocol", ""))
        report.ok(f"AnyIP route {net} dev {entry.get('dev', '?')} covers {r.network}"
                  + (" (anycast.edge)" if proto == ANYIP_PROTOCOL else f" (protocol {proto or 'kernel'})"))
        if r.network.version == 4 and net.prefixlen < 32 and entry.get("prefsrc") is None and proto == ANYIP_PROTOCOL:
            report.note(f"{net} has no `src 127.0.0.1`: locally originated connections to it will hang")


class TproxyRule:
    __slots__ = ("chain", "destination", "protocol", "ports", "on_port", "on_ip", "text")

    def covers(self, route, listeners):
        if self.protocol != route.protocol:
            return False
        if self.destination is not None and not (
                self.destination.version == route.network.version and route.network.subnet_of(self.destination)):
            return False
        if self.ports is not None and not any(lo <= route.port_lo and route.port_hi <= hi for lo, hi in self.ports):
            return False
        for ep in listeners:
            if ep.port != self.on_port:
                continue
            if self.on_ip is None or ipaddress.ip_address(self.on_ip) == ipaddress.ip_address(ep.host):
                return True
        return False


def _ports(text):
    out = []
    for part in text.split(","):
        lo, _unused1, hi = part.partition(":")
        out.append((int(lo), int(hi or lo)))
    return out


def parse_mangle(text, version):
    """TPROXY rules reachable from PREROUTING in an iptables-save dump of the mangle table."""
    jumps = {}
    rules = []
    for line in text.splitlines():
        if not line.startswith("-A "):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        chain = words[1]
        target = None
        rule = TproxyRule()
        rule.chain, rule.text = chain, line
        rule.destination = rule.protocol = rule.ports = rule.on_port = rule.on_ip = None
        negated = False
        i = 2
        while i < len(words):
            w = words[i]
            nxt = words[i + 1] if i + 1 < len(words) else None
            if w == "!":
                negated = True
            elif w in ("-j", "-g"):
                target = nxt
            elif w == "-d":
                rule.destination = ipaddress.ip_network(nxt, strict=False)
            elif w == "-p":
                rule.protocol = nxt
            elif w in ("--dport", "--destination-port", "--dports", "--destination-ports"):
                rule.ports = _ports(nxt)
            elif w == "--on-port":
                rule.on_port = int(nxt)
            elif w == "--on-ip":
                rule.on_ip = nxt.split("/")[0]
            i += 1
        if target == "TPROXY" and not negated:
            rules.append(rule)
        elif target and target not in ("ACCEPT", "DROP", "RETURN", "MARK", "CONNMARK", "LOG"):
            jumps.setdefault(chain, set()).add(target)
    reachable, todo = {"PREROUTING"}, ["PREROUTING"]
    while todo:
        for nxt in jumps.get(todo.pop(), ()):
            if nxt not in reachable:
                reachable.add(nxt)
                todo.append(nxt)
    return [r for r in rules if r.chain in reachable], [r for r in rules if r.chain not in reachable]


def _legacy_table_exists(version, table):
    """Whether the legacy (x_tables) table is in use in this namespace, without touching it."""
    names = "/proc/net/ip_tables_names" if version == 4 else "/proc/net/ip6_tables_names"
    try:
        with open(names) as handle:
            return table in handle.read().split()
    except OSError:
        return False


def tproxy_rules():
    """Rules from every readable mangle table; errors are (version, text)."""
    found, unreachable, sources, errors = [], [], [], []
    for version, tools in ((4, ("iptables-save", "iptables-legacy-save")),
                           (6, ("ip6tables-save", "ip6tables-legacy-save"))):
        for tool in tools:
            if shutil.which(tool) is None:
                continue
            if "legacy" in tool and not _legacy_table_exists(version, "mangle"):
                continue  # reading a legacy table would create it, and nft hosts then warn
            out, err = _run([tool, "-t", "mangle"])
            if out is None:
                errors.append((version, f"{tool} -t mangle: {err}"))
                continue
            ok, dead = parse_mangle(out, version)
            found += [(version, r) for r in ok]
            unreachable += [(version, r) for r in dead]
            sources.append(tool)
    return found, unreachable, sources, errors


def check_tproxy(config, report):
    found, unreachable, sources, errors = tproxy_rules()
    # A table that cannot be read (legacy tables need CAP_NET_RAW too) only matters when
    # no readable table has the rule.
    for _unused1, err in errors:
        report.note(f"cannot read {err}")
    if not sources:
        report.miss("could not read any mangle table: cannot check TPROXY rules")
        return
    for r in config.routes:
        listeners = [ep for ep in config.listen if ep.family == r.family]
        ports = f"{r.port_lo}" + (f"-{r.port_hi}" if r.port_hi != r.port_lo else "")
        what = f"TPROXY for {r.protocol} {r.network} ports {ports} (route {r.name})"
        if not listeners:
            report.miss(f"{what}: no IPv{r.network.version} listener in `listen`")
            continue
        match = [rule for v, rule in found if v == r.network.version and rule.covers(r, listeners)]
        if match:
            report.ok(f"{what}: chain {match[0].chain}: {match[0].text}")
            continue
        dead = [rule for v, rule in unreachable if v == r.network.version and rule.covers(r, listeners)]
        if dead:
            report.miss(f"{what}: chain {dead[0].chain} has a matching rule but is not jumped to from PREROUTING")
            continue
        ep = listeners[0]
        tool = "ip6tables" if r.network.version == 6 else "iptables"
        hint = (f"{tool} -t mangle -A ANYCAST-TPROXY -d {r.network} -p {r.protocol} -j TPROXY "
                f"--on-port {ep.port} --on-ip {ep.host}")
        unread = [err for v, err in errors if v == r.network.version]
        report.miss(f"{what}: no rule sends it to a listener ({', '.join(map(str, listeners))}); e.g. `{hint}`"
                    + (f" (not readable here: {'; '.join(unread)})" if unread else ""))


def run_self_test(config, out=None):
    import sys
    out = out or sys.stdout
    report = Report()
    check_capability(config, report)
    check_anyip(config, report)
    check_tproxy(config, report)
    for line in report.lines:
        print(line, file=out)
    if report.missing:
        print(f"self-test: {report.missing} prerequisite(s) missing", file=out)
        return 1
    print("self-test: OK", file=out)
    return 0
