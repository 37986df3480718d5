"""Counters and the Prometheus text endpoint.

Counters are plain attributes on per-route objects: the relay increments
them inline. A snapshot is a JSON-able dict, so worker processes can send
theirs to the supervisor, which sums them for one scrape.
"""
import asyncio
import bisect

PREFIX = "anycast_proxy"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REFUSAL_REASONS = ("no_route", "max_connections", "source_limit", "draining")


class RouteStats:
    __slots__ = ("protocol", "active", "total", "bytes_in", "bytes_out", "connect_errors",
                 "latency_counts", "latency_sum", "latency_count")

    def __init__(self, protocol):
        self.protocol = protocol
        self.active = 0
        self.total = 0
        self.bytes_in = 0    # client -> origin
        self.bytes_out = 0   # origin -> client
        self.connect_errors = {}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def observe_connect(self, seconds):
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def connect_error(self, kind):
        self.connect_errors[kind] = self.connect_errors.get(kind, 0) + 1


class Metrics:
    def __init__(self):
        self.routes = {}
        self.pools = {}      # route name -> pool.Pool (set by the server)
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self.reloads = 0
        self.reload_failures = 0

    def route(self, name, protocol):
        stats = self.routes.get(name)
        if stats is None:
            stats = self.routes[name] = RouteStats(protocol)
        return stats

    def refuse(self, reason):
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def snapshot(self):
        return {
            "routes": {
                name: {
                    "protocol": s.protocol, "active": s.active, "total": s.total,
                    "bytes_in": s.bytes_in, "bytes_out": s.bytes_out,
                    "connect_errors": dict(s.connect_errors),
                    "latency_counts": list(s.latency_counts), "latency_sum": s.latency_sum,
                    "latency_count": s.latency_count,
                } for name, s in self.routes.items()
            },
            "refused": dict(self.refused),
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "origins": {
                name: {
                    o.label: {"up": int(o.up), "active": o.active, "total": o.total,
                              "connect_failures": o.connect_failures, "check_failures": o.check_failures}
                    for o in pool.origins
                } for name, pool in self.pools.items()
            },
            "resolve": {
                name: {text: {"ok": int(r.ok), "failures": r.failures} for text, r in pool.resolution.items()}
                for name, pool in self.pools.items() if pool.resolution
            },
        }


def merge(snapshots):
    """Sum snapshots from several processes."""
    out = {"routes": {}, "refused": dict.fromkeys(REFUSAL_REASONS, 0), "reloads": 0, "reload_failures": 0}
    for snap in snapshots:
        for name, r in snap["routes"].items():
            acc = out["routes"].get(name)
            if acc is None:
                out["routes"][name] = {**r, "connect_errors": dict(r["connect_errors"]),
                                       "latency_counts": list(r["latency_counts"])}
                continue
            for k in ("active", "total", "bytes_in", "bytes_out", "latency_sum", "latency_count"):
                acc[k] += r[k]
            for k, v in r["connect_errors"].items():
                acc["connect_errors"][k] = acc["connect_errors"].get(k, 0) + v
            acc["latency_counts"] = [a + b for a, b in zip(acc["latency_counts"], r["latency_counts"])]
        for k, v in snap["refused"].items():
            out["refused"][k] = out["refused"].get(k, 0) + v
        # An origin is up when every worker sees it up; a name resolves when it does for every worker.
        for section, minimum in (("origins", "up"), ("resolve", "ok")):
            acc_section = out.setdefault(section, {})
            for route, entries in snap.get(section, {}).items():
                acc_route = acc_section.setdefault(route, {})
                for label, values in entries.items():
                    acc = acc_route.get(label)
                    if acc is None:
                        acc_route[label] = dict(values)
                        continue
                    for k, v in values.items():
                        acc[k] = min(acc[k], v) if k == minimum else acc[k] + v
        out["reloads"] = max(out["reloads"], snap["reloads"])
        out["reload_failures"] = max(out["reload_failures"], snap["reload_failures"])
    return out


def _label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(snap):
    lines = []

    def family(name, kind, help_text):
        lines.append(f"# HELP {PREFIX}_{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}_{name} {kind}")

    routes = sorted(snap["routes"].items())
    family("active_connections", "gauge", "Connections (TCP) or flows (UDP) open now, per route.")
    for name, r in routes:
        lines.append(f'{PREFIX}_active_connections{{route="{_label(name)}",protocol="{r["protocol"]}"}} {r["active"]}')
    family("connections_total", "counter",
           "Connections (TCP) or flows (UDP) matched to a route, refused ones included.")
    for name, r in routes:
        lines.append(f'{PREFIX}_connections_total{{route="{_label(name)}",protocol="{r["protocol"]}"}} {r["total"]}')
    family("bytes_total", "counter", "Payload bytes relayed, per route and direction.")
    for name, r in routes:
        lab = f'route="{_label(name)}",protocol="{r["protocol"]}"'
        lines.append(f'{PREFIX}_bytes_total{{{lab},direction="client_to_origin"}} {r["bytes_in"]}')
        lines.append(f'{PREFIX}_bytes_total{{{lab},direction="origin_to_client"}} {r["bytes_out"]}')
    family("refused_total", "counter", "Connections or flows refused, by reason.")
    for reason, n in sorted(snap["refused"].items()):
        lines.append(f'{PREFIX}_refused_total{{reason="{_label(reason)}"}} {n}')
    family("origin_connect_errors_total", "counter", "Failed connections to origins, per route and error.")
    for name, r in routes:
        for kind, n in sorted(r["connect_errors"].items()):
            lines.append(f'{PREFIX}_origin_connect_errors_total{{route="{_label(name)}",error="{_label(kind)}"}} {n}')
    family("origin_connect_seconds", "histogram", "Time to establish the connection to the origin.")
    for name, r in routes:
        if r["protocol"] != "tcp":
            continue
        lab = f'route="{_label(name)}"'
        cumulative = 0
        for bound, n in zip(LATENCY_BUCKETS + (None,), r["latency_counts"]):
            cumulative += n
            le = "+Inf" if bound is None else repr(bound)
            lines.append(f'{PREFIX}_origin_connect_seconds_bucket{{{lab},le="{le}"}} {cumulative}')
        lines.append(f'{PREFIX}_origin_connect_seconds_sum{{{lab}}} {r["latency_sum"]:.6f}')
        lines.append(f'{PREFIX}_origin_connect_seconds_count{{{lab}}} {r["latency_count"]}')
    origins = sorted(snap.get("origins", {}).items())
    for name, kind, key, help_text in (
            ("origin_up", "gauge", "up", "1 while the origin is up (health checks and connections), else 0."),
            ("origin_active_connections", "gauge", "active", "Connections open or being opened to the origin."),
            ("origin_connections_total", "counter", "total", "Connections established to the origin."),
            ("origin_connect_failures_total", "counter", "connect_failures",
             "Failed attempts to connect a client to the origin (each one failed over, if any origin was left)."),
            ("origin_check_failures_total", "counter", "check_failures", "Failed active health checks.")):
        family(name, kind, help_text)
        for route, entries in origins:
            for label, values in sorted(entries.items()):
                lines.append(f'{PREFIX}_{name}{{route="{_label(route)}",origin="{_label(label)}"}} {values[key]}')
    resolve = sorted(snap.get("resolve", {}).items())
    family("origin_resolve_ok", "gauge",
           "1 when the last resolution of an origin's name worked; 0 while the last good addresses are kept.")
    for route, names in resolve:
        for text, values in sorted(names.items()):
            lines.append(f'{PREFIX}_origin_resolve_ok{{route="{_label(route)}",name="{_label(text)}"}} {values["ok"]}')
    family("origin_resolve_failures_total", "counter", "Failed resolutions of an origin's name.")
    for route, names in resolve:
        for text, values in sorted(names.items()):
            lines.append(f'{PREFIX}_origin_resolve_failures_total{{route="{_label(route)}",name="{_label(text)}"}} '
                         f'{values["failures"]}')
    family("config_reloads_total", "counter", "Successful configuration reloads.")
    lines.append(f"{PREFIX}_config_reloads_total {snap['reloads']}")
    family("config_reload_failures_total", "counter", "Reloads refused because the new configuration was invalid.")
    lines.append(f"{PREFIX}_config_reload_failures_total {snap['reload_failures']}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """A minimal HTTP/1.0 responder: GET /metrics (any path) -> text exposition."""

    def __init__(self, endpoint, collect, sock_factory):
        self.endpoint = endpoint
        self.collect = collect          # async () -> snapshot dict
        self.sock_factory = sock_factory
        self.server = None

    async def start(self):
        sock = self.sock_factory(self.endpoint)
        self.server = await asyncio.start_server(self._handle, sock=sock)

    def close(self):
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _handle(self, reader, writer):
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path.split(b"?")[0] not in (b"/metrics", b"/"):
                body, status = b"not found\n", b"404 Not Found"
            else:
                body, status = render(await self.collect()).encode(), b"200 OK"
            writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
