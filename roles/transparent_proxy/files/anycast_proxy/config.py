"""Configuration: JSON file -> validated, immutable Config.

Every error names the offending key with its path (`routes[2].ports`), so a
bad file is refused before anything listens.
"""
import ipaddress
import json
import socket

DEFAULT_LISTEN = ["127.0.0.1:1234", "[::1]:1234"]
PROXY_PROTOCOLS = ("none", "v1", "v2")
PROTOCOLS = ("tcp", "udp")
LOG_LEVELS = ("debug", "info", "warning", "error")

TOP_KEYS = {
    "listen", "routes", "metrics", "workers", "max_connections_per_source",
    "drain_timeout", "log_connections", "log_level", "buffer_size", "bulk_buffer_size",
    "splice", "defaults",
}
ROUTE_KEYS = {
    "name", "destination", "ports", "protocol", "origin", "proxy_protocol",
    "connect_timeout", "idle_timeout", "max_connections",
}
# Keys a route may inherit from the top-level "defaults" object.
DEFAULTABLE_KEYS = {"proxy_protocol", "connect_timeout", "idle_timeout", "max_connections"}
ROUTE_DEFAULTS = {
    "ports": "1-65535",
    "protocol": "tcp",
    "proxy_protocol": "none",
    "connect_timeout": 5.0,
    "idle_timeout": 300.0,
    "max_connections": 0,
}


class ConfigError(ValueError):
    """A configuration problem; str() starts with the key path."""

    def __init__(self, key, message):
        super().__init__(f"{key}: {message}")
        self.key = key


class Endpoint:
    """An address and port, as given (`"127.0.0.1:1234"`, `"[::1]:1234"`)."""

    __slots__ = ("family", "host", "port")

    def __init__(self, family, host, port):
        self.family = family
        self.host = host
        self.port = port

    @property
    def sockaddr(self):
        return (self.host, self.port)

    def __str__(self):
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def __repr__(self):
        return f"Endpoint({self})"

    def __eq__(self, other):
        return isinstance(other, Endpoint) and (self.family, self.host, self.port) == (
            other.family, other.host, other.port)

    def __hash__(self):
        return hash((self.family, self.host, self.port))


class Route:
    """One validated route. `origin_port` None means: the port that was dialled."""

    __slots__ = (
        "index", "name", "network", "family", "net_int", "prefixlen", "port_lo",
        "port_hi", "protocol", "origin_text", "origin_family", "origin_host",
        "origin_port", "proxy_protocol", "connect_timeout", "idle_timeout",
        "max_connections",
    )

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)

    def origin_for(self, dialled_port):
        return (self.origin_host, self.origin_port or dialled_port)

    @property
    def port_span(self):
        return self.port_hi - self.port_lo

    def __repr__(self):
        return f"Route({self.name!r})"


class Config:
    __slots__ = (
        "listen", "routes", "metrics", "workers", "max_connections_per_source",
        "drain_timeout", "log_connections", "log_level", "buffer_size", "bulk_buffer_size",
        "splice", "source",
    )

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)

    @property
    def has_udp(self):
        return any(r.protocol == "udp" for r in self.routes)


def parse_endpoint(text, key, allow_no_port=False):
    """`"1.2.3.4:80"`, `"[::1]:80"`, `"host:80"`; with allow_no_port also bare hosts.

    Returns (host, port or None, family or None); family None means a name.
    """
    if not isinstance(text, str) or not text:
        raise ConfigError(key, f"expected \"ADDRESS:PORT\" as a string, got {text!r}")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(key, f"{text!r}: missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ConfigError(key, f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(key, f"{text!r}: {host!r} is not an IPv6 address") from None
        family = socket.AF_INET6
    else:
        if text.count(":") > 1:
            raise ConfigError(key, f"{text!r}: write IPv6 addresses in brackets, like \"[::1]:1234\"")
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = None
        family = None
        try:
            ipaddress.IPv4Address(host)
            family = socket.AF_INET
        except ValueError:
            pass
    if port_text is None:
        if not allow_no_port:
            raise ConfigError(key, f"{text!r}: a port is required (\"ADDRESS:PORT\")")
        port = None
    else:
        port = _port(port_text, key, text)
    return host, port, family


def _port(text, key, whole):
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(key, f"{whole!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_listen_address(text, key):
    host, port, family = parse_endpoint(text, key)
    if family is None:
        raise ConfigError(key, f"{text!r}: listeners need an IP address, not a name")
    return Endpoint(family, host, port)


def parse_ports(value, key):
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a port or range like \"443\" or \"8000-8100\", got {value!r}")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a port or range like \"443\" or \"8000-8100\", got {value!r}")
    lo_text, sep, hi_text = value.strip().partition("-")
    lo = _port(lo_text.strip(), key, value)
    hi = _port(hi_text.strip(), key, value) if sep else lo
    if hi < lo:
        raise ConfigError(key, f"{value!r}: the range ends before it starts")
    return lo, hi


def _number(value, key, minimum, integer=False, allow_zero=False):
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number of seconds"
        raise ConfigError(key, f"expected {kind}, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {value!r}")
    if value == 0 and not allow_zero:
        raise ConfigError(key, "must be greater than 0")
    return value


def _choice(value, key, choices):
    if value not in choices:
        raise ConfigError(key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _resolve(host, key, text):
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(key, f"{text!r}: cannot resolve {host!r} ({exc.strerror})") from None
    family, _unused1, _unused2, _unused3, sockaddr = infos[0]
    return family, sockaddr[0]


def parse_route(raw, index, defaults):
    base = f"routes[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(base, f"expected an object, got {type(raw).__name__}")
    for k in raw:
        if k not in ROUTE_KEYS:
            raise ConfigError(f"{base}.{k}", f"unknown key (known: {', '.join(sorted(ROUTE_KEYS))})")
    for k in ("destination", "origin"):
        if k not in raw:
            raise ConfigError(f"{base}.{k}", "required key is missing")
    merged = dict(ROUTE_DEFAULTS)
    merged.update(defaults)
    merged.update(raw)

    dest = merged["destination"]
    if not isinstance(dest, str):
        raise ConfigError(f"{base}.destination", f"expected a CIDR like \"192.0.2.0/24\", got {dest!r}")
    try:
        network = ipaddress.ip_network(dest, strict=True)
    except ValueError as exc:
        raise ConfigError(f"{base}.destination", f"{dest!r} is not a network in CIDR notation ({exc})") from None
    port_lo, port_hi = parse_ports(merged["ports"], f"{base}.ports")
    protocol = _choice(merged["protocol"], f"{base}.protocol", PROTOCOLS)

    origin_text = merged["origin"]
    host, oport, ofamily = parse_endpoint(origin_text, f"{base}.origin", allow_no_port=True)
    if ofamily is None:
        ofamily, host = _resolve(host, f"{base}.origin", origin_text)

    proxy_protocol = _choice(merged["proxy_protocol"], f"{base}.proxy_protocol", PROXY_PROTOCOLS)
    if protocol == "udp" and proxy_protocol == "v1":
        raise ConfigError(f"{base}.proxy_protocol", "PROXY protocol v1 cannot describe UDP; use \"v2\" or \"none\"")
    connect_timeout = _number(merged["connect_timeout"], f"{base}.connect_timeout", 0)
    idle_timeout = _number(merged["idle_timeout"], f"{base}.idle_timeout", 0)
    max_connections = _number(merged["max_connections"], f"{base}.max_connections", 0, integer=True,
                              allow_zero=True)
    name = merged.get("name")
    if name is None:
        name = f"{network}:{port_lo}" + (f"-{port_hi}" if port_hi != port_lo else "") + f"/{protocol}"
    elif not isinstance(name, str) or not name or any(c in name for c in '"\\\n'):
        raise ConfigError(f"{base}.name", f"expected a non-empty string without quotes or backslashes, got {name!r}")
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    return Route(
        index=index, name=name, network=network, family=family,
        net_int=int(network.network_address), prefixlen=network.prefixlen,
        port_lo=port_lo, port_hi=port_hi, protocol=protocol,
        origin_text=origin_text, origin_family=ofamily, origin_host=host, origin_port=oport,
        proxy_protocol=proxy_protocol, connect_timeout=float(connect_timeout),
        idle_timeout=float(idle_timeout), max_connections=max_connections,
    )


def parse_config(data, source="<config>"):
    if not isinstance(data, dict):
        raise ConfigError("(top level)", f"expected a JSON object, got {type(data).__name__}")
    for k in data:
        if k not in TOP_KEYS:
            raise ConfigError(k, f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")

    listen_raw = data.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen_raw, list) or not listen_raw:
        raise ConfigError("listen", f"expected a non-empty list of \"ADDRESS:PORT\", got {listen_raw!r}")
    listen = []
    for i, item in enumerate(listen_raw):
        ep = parse_listen_address(item, f"listen[{i}]")
        if ep in listen:
            raise ConfigError(f"listen[{i}]", f"{item!r} is listed twice")
        listen.append(ep)

    metrics = data.get("metrics")
    if metrics is not None:
        metrics = parse_listen_address(metrics, "metrics")

    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError("defaults", f"expected an object, got {defaults!r}")
    for k in defaults:
        if k not in DEFAULTABLE_KEYS:
            known = ", ".join(sorted(DEFAULTABLE_KEYS))
            raise ConfigError(f"defaults.{k}", f"not a key routes can inherit (those are: {known})")

    routes_raw = data.get("routes")
    if routes_raw is None:
        raise ConfigError("routes", "required key is missing (a list of routes)")
    if not isinstance(routes_raw, list):
        raise ConfigError("routes", f"expected a list, got {type(routes_raw).__name__}")
    routes = [parse_route(r, i, defaults) for i, r in enumerate(routes_raw)]
    seen = {}
    for r in routes:
        same = [o for o in routes[:r.index]
                if (o.network, o.port_lo, o.port_hi, o.protocol) == (r.network, r.port_lo, r.port_hi, r.protocol)]
        if same:
            raise ConfigError(f"routes[{r.index}].destination",
                              f"routes[{same[0].index}] already covers {r.network} "
                              f"ports {r.port_lo}-{r.port_hi}/{r.protocol}")
        if r.name in seen:
            raise ConfigError(f"routes[{r.index}].name", f"{r.name!r} is also the name of routes[{seen[r.name]}]")
        seen[r.name] = r.index

    workers = _number(data.get("workers", 1), "workers", 1, integer=True)
    if workers > 64:
        raise ConfigError("workers", f"at most 64 worker processes, got {workers}")
    per_source = _number(data.get("max_connections_per_source", 0), "max_connections_per_source", 0,
                         integer=True, allow_zero=True)
    drain_timeout = _number(data.get("drain_timeout", 30), "drain_timeout", 0, allow_zero=True)
    log_connections = data.get("log_connections", True)
    if not isinstance(log_connections, bool):
        raise ConfigError("log_connections", f"expected true or false, got {log_connections!r}")
    log_level = _choice(data.get("log_level", "info"), "log_level", LOG_LEVELS)
    buffer_size = _number(data.get("buffer_size", 65536), "buffer_size", 1024, integer=True)
    if buffer_size > 16 * 1024 * 1024:
        raise ConfigError("buffer_size", f"at most 16 MiB, got {buffer_size}")
    bulk_buffer_size = _number(data.get("bulk_buffer_size", max(524288, buffer_size)), "bulk_buffer_size",
                               buffer_size, integer=True)
    if bulk_buffer_size > 16 * 1024 * 1024:
        raise ConfigError("bulk_buffer_size", f"at most 16 MiB, got {bulk_buffer_size}")
    splice = data.get("splice", False)
    if not isinstance(splice, bool):
        raise ConfigError("splice", f"expected true or false, got {splice!r}")

    return Config(
        listen=listen, routes=routes, metrics=metrics, workers=workers,
        max_connections_per_source=per_source, drain_timeout=float(drain_timeout),
        log_connections=log_connections, log_level=log_level, buffer_size=buffer_size,
        bulk_buffer_size=bulk_buffer_size, splice=splice, source=source,
    )


def load_config(path):
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError("(file)", f"{path} is not valid JSON: {exc}") from None
    return parse_config(data, source=str(path))
