"""Configuration: JSON file -> validated, immutable Config.

Every error names the offending key with its path (`routes[2].ports`), so a
bad file is refused before anything listens.
"""
import ipaddress
import json
import math
import socket

DEFAULT_LISTEN = ["127.0.0.1:1234", "[::1]:1234"]
PROXY_PROTOCOLS = ("none", "v1", "v2")
PROTOCOLS = ("tcp", "udp")
LOG_LEVELS = ("debug", "info", "warning", "error")

BALANCE_METHODS = ("round-robin", "least-connections", "source-hash")

TOP_KEYS = {
    "listen", "routes", "metrics", "workers", "max_connections_per_source",
    "drain_timeout", "drain_socket", "log_connections", "log_level", "buffer_size",
    "bulk_buffer_size", "splice", "defaults",
}
ROUTE_KEYS = {
    "name", "destination", "ports", "protocol", "origin", "origins", "balance", "health_check",
    "resolve_interval", "proxy_protocol", "connect_timeout", "idle_timeout", "max_connections",
}
ORIGIN_KEYS = {"address", "weight", "backup"}
HEALTH_CHECK_KEYS = {"interval", "timeout", "rise", "fall", "port"}
MAX_WEIGHT = 256
# Keys a route may inherit from the top-level "defaults" object.
DEFAULTABLE_KEYS = {"proxy_protocol", "connect_timeout", "idle_timeout", "max_connections", "balance",
                    "health_check", "resolve_interval"}
ROUTE_DEFAULTS = {
    "ports": "1-65535",
    "protocol": "tcp",
    "proxy_protocol": "none",
    "connect_timeout": 5.0,
    "idle_timeout": 300.0,
    "max_connections": 0,
    "balance": "round-robin",
    "resolve_interval": 30.0,
}
# HAProxy's defaults (inter 2s, rise 2, fall 3), with a timeout below the interval.
HEALTH_CHECK_DEFAULTS = {"interval": 2.0, "timeout": 1.0, "rise": 2, "fall": 3}
# A route name is a label in every log line and metric: short, printable, one line.
MAX_NAME_LENGTH = 128
# 10,000 routes are about 2 MiB of JSON; a file bigger than this is a mistake (or /dev/zero).
MAX_CONFIG_BYTES = 32 * 1024 * 1024


class ConfigError(ValueError):
    """A configuration problem; str() starts with the key path."""

    def __init__(self, key, message):
        if len(message) > 400:
            message = message[:400] + "..."   # a value quoted in it may be megabytes long
        super().__init__(f"{key}: {message}")
        self.key = key


def _excerpt(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(value)} characters)"


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


class OriginSpec:
    """One entry of a route's origins, as configured. `family` None: `host` is a name, resolved
    at run time (every A/AAAA record is an origin); `port` None: the port that was dialled."""

    __slots__ = ("text", "host", "port", "family", "weight", "backup", "key")

    def __init__(self, text, host, port, family, weight=1, backup=False, key=None):
        self.key = key          # where it was configured: "routes[2].origins[0].address"
        self.text = text
        self.host = host
        self.port = port
        self.family = family
        self.weight = weight
        self.backup = backup

    @property
    def is_name(self):
        return self.family is None

    def __repr__(self):
        return f"OriginSpec({self.text!r}, weight={self.weight}, backup={self.backup})"


class HealthCheck:
    """Thresholds of a route's health state machine, and whether it checks actively."""

    __slots__ = ("active", "interval", "timeout", "rise", "fall", "port")

    def __init__(self, active, interval, timeout, rise, fall, port=None):
        self.active = active
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
        self.port = port


class Route:
    """One validated route. `pool` is attached by the server (the live origins)."""

    __slots__ = (
        "index", "name", "network", "family", "net_int", "prefixlen", "port_lo",
        "port_hi", "protocol", "origins", "balance", "health_check", "resolve_interval",
        "proxy_protocol", "connect_timeout", "idle_timeout", "max_connections", "pool",
    )

    def __init__(self, **kw):
        self.pool = None
        for k, v in kw.items():
            setattr(self, k, v)

    @property
    def port_span(self):
        return self.port_hi - self.port_lo

    def __repr__(self):
        return f"Route({self.name!r})"


class Config:
    __slots__ = (
        "listen", "routes", "metrics", "workers", "max_connections_per_source",
        "drain_timeout", "drain_socket", "log_connections", "log_level", "buffer_size",
        "bulk_buffer_size", "splice", "source", "self_dial_index",
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
    # isdigit() alone admits "²" and Arabic-Indic digits, which int() then reads or refuses.
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 1 <= int(text) <= 65535:
        raise ConfigError(key, f"{_excerpt(whole)}: port {_excerpt(text)} is not a number from 1 to 65535")
    return int(text)


def parse_listen_address(text, key):
    host, port, family = parse_endpoint(text, key)
    if family is None:
        raise ConfigError(key, f"{text!r}: listeners need an IP address, not a name")
    # One spelling per address, so that sockets handed over by systemd match the configuration.
    return Endpoint(family, str(ipaddress.ip_address(host)), port)


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
    if not math.isfinite(value):
        # NaN compares false with everything: it would pass every bound and never time out.
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    if minimum == 0 and not allow_zero and value <= 0:
        raise ConfigError(key, f"must be greater than 0, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {value!r}")
    return value


def _choice(value, key, choices):
    if value not in choices:
        raise ConfigError(key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _bool(value, key):
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def _check_keys(raw, key, known):
    for k in raw:
        if k not in known:
            raise ConfigError(f"{key}.{k}", f"unknown key (known: {', '.join(sorted(known))})")


def parse_origin(raw, key):
    """`"HOST:PORT"`, `"HOST"`, or {address, weight, backup} -> OriginSpec."""
    weight, backup = 1, False
    if isinstance(raw, dict):
        _check_keys(raw, key, ORIGIN_KEYS)
        if "address" not in raw:
            raise ConfigError(f"{key}.address", "required key is missing")
        text = raw["address"]
        address_key = f"{key}.address"
        weight = _number(raw.get("weight", 1), f"{key}.weight", 1, integer=True)
        if weight > MAX_WEIGHT:
            raise ConfigError(f"{key}.weight", f"at most {MAX_WEIGHT}, got {weight}")
        backup = _bool(raw.get("backup", False), f"{key}.backup")
    else:
        text, address_key = raw, key
    if not isinstance(text, str) or not text:
        raise ConfigError(address_key, f"expected \"HOST:PORT\" or \"HOST\" as a string, got {text!r}")
    host, port, family = parse_endpoint(text, address_key, allow_no_port=True)
    if family is None and host.replace(".", "").isdigit():
        # inet_aton() would read 10.0.2.02 as 10.0.2.2 and 010 as octal: say so instead.
        raise ConfigError(address_key, f"{text!r}: {host!r} is not a valid IPv4 address")
    if family is None and not (host.isascii() and _valid_name(host)):
        raise ConfigError(address_key, f"{text!r}: {host!r} is neither an IP address nor a host name")
    if family is not None:
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            raise ConfigError(address_key, f"{text!r}: {host} is no address to dial "
                                           "(a connection to it reaches this host, the proxy included)")
        host = str(address)   # one spelling, for duplicates and labels
    return OriginSpec(text, host, port, family, weight, backup, address_key)


def _valid_name(host):
    labels = host.rstrip(".").split(".")
    return 0 < len(host) <= 253 and all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        and all(c.isalnum() or c in "-_" for c in label) for label in labels)


def parse_origins(raw, base):
    """The route's origins: `origin` (one) or `origins` (a pool), never both."""
    if "origin" in raw and "origins" in raw:
        raise ConfigError(f"{base}.origins", "give either origin (one) or origins (a list), not both")
    if "origin" in raw:
        return (parse_origin(raw["origin"], f"{base}.origin"),)
    if "origins" not in raw:
        raise ConfigError(f"{base}.origin", "required key is missing (give origin, or origins for a pool)")
    items = raw["origins"]
    if not isinstance(items, list):
        raise ConfigError(f"{base}.origins", f"expected a list, got {type(items).__name__}")
    if not items:
        raise ConfigError(f"{base}.origins", "must list at least one origin")
    specs, seen = [], {}
    for i, item in enumerate(items):
        spec = parse_origin(item, f"{base}.origins[{i}]")
        identity = (spec.host.lower(), spec.port)
        if identity in seen:
            raise ConfigError(f"{base}.origins[{i}]", f"{spec.text!r} is the same origin as origins[{seen[identity]}]")
        seen[identity] = i
        specs.append(spec)
    if all(s.backup for s in specs):
        raise ConfigError(f"{base}.origins", "every origin is a backup: at least one must take traffic")
    return tuple(specs)


def parse_health_check(defaults, raw, base, protocol, origins):
    """The route's health checks: `false`, or an object merged over `defaults.health_check`."""
    value = raw.get("health_check", defaults.get("health_check"))
    key = f"{base}.health_check" if "health_check" in raw else "defaults.health_check"
    if value is None:
        # Unsaid: active checks for a TCP pool (several origins, or a name that may have several
        # addresses); a single address has nowhere to fail over to.
        active = protocol == "tcp" and (len(origins) > 1 or any(o.is_name for o in origins))
        settings = dict(HEALTH_CHECK_DEFAULTS)
    elif value is False:
        active = False
        settings = dict(HEALTH_CHECK_DEFAULTS)
    elif isinstance(value, dict):
        _check_keys(value, key, HEALTH_CHECK_KEYS)
        settings = dict(HEALTH_CHECK_DEFAULTS)
        inherited = defaults.get("health_check")
        if isinstance(inherited, dict) and "health_check" in raw:
            settings.update(inherited)
        settings.update(value)
        active = True
    else:
        raise ConfigError(key, f"expected an object like {{\"interval\": 2}} or false, got {value!r}")
    interval = _number(settings["interval"], f"{key}.interval", 0)
    timeout = _number(settings["timeout"], f"{key}.timeout", 0)
    rise = _number(settings["rise"], f"{key}.rise", 1, integer=True)
    fall = _number(settings["fall"], f"{key}.fall", 1, integer=True)
    port = settings.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        raise ConfigError(f"{key}.port", f"expected a port from 1 to 65535, got {port!r}")
    if active and port is None:
        portless = [o.text for o in origins if o.port is None]
        if portless:
            raise ConfigError(f"{key}.port", f"origin {portless[0]!r} takes the port the client dialled, "
                                             "so the checks need a port of their own")
    return HealthCheck(active, float(interval), float(timeout), rise, fall, port)


def parse_route(raw, index, defaults):
    base = f"routes[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(base, f"expected an object, got {type(raw).__name__}")
    for k in raw:
        if k not in ROUTE_KEYS:
            raise ConfigError(f"{base}.{k}", f"unknown key (known: {', '.join(sorted(ROUTE_KEYS))})")
    if "destination" not in raw:
        raise ConfigError(f"{base}.destination", "required key is missing")
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
    origins = parse_origins(raw, base)
    balance = _choice(merged["balance"], _where("balance", raw, base), BALANCE_METHODS)
    resolve_interval = _number(merged["resolve_interval"], _where("resolve_interval", raw, base), 0)
    health_check = parse_health_check(defaults, raw, base, protocol, origins)

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
    elif not isinstance(name, str) or not name or any(c in name for c in '"\\'):
        raise ConfigError(f"{base}.name", f"expected a non-empty string without quotes or backslashes, "
                                          f"got {_excerpt(name)}")
    elif len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{base}.name", f"at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    elif not name.isprintable():
        # CR, LF, U+2028 and the like would forge log lines; format characters hide text.
        bad = next(c for c in name if not c.isprintable())
        raise ConfigError(f"{base}.name", f"{name!r} contains the control, format or separator character "
                                          f"U+{ord(bad):04X}")
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    return Route(
        index=index, name=name, network=network, family=family,
        net_int=int(network.network_address), prefixlen=network.prefixlen,
        port_lo=port_lo, port_hi=port_hi, protocol=protocol,
        origins=origins, balance=balance, health_check=health_check,
        resolve_interval=float(resolve_interval),
        proxy_protocol=proxy_protocol, connect_timeout=float(connect_timeout),
        idle_timeout=float(idle_timeout), max_connections=max_connections,
    )


class SelfDialIndex:
    """Which address:port the proxy must not dial because it would reach the proxy itself:
    one of its listeners, or an address and port inside one of its routes (on a host where the
    routes' destinations are AnyIP prefixes, a connection to one goes through TPROXY back to a
    listener: one client connection became an endless chain of the proxy dialling itself).

    A lookup is one dict probe per distinct prefix length, as routing.RouteTable's."""

    def __init__(self, routes, listen):
        self.listen = list(listen)
        self._index = {}      # (protocol, IP version) -> [(prefixlen, mask, {net_int: [routes]})]
        groups = {}
        for r in routes:
            by_net = groups.setdefault((r.protocol, r.network.version), {}).setdefault(r.prefixlen, {})
            by_net.setdefault(r.net_int, []).append(r)
        for key, by_len in groups.items():
            bits = 32 if key[1] == 4 else 128
            self._index[key] = [(plen, ((1 << plen) - 1) << (bits - plen) if plen else 0, by_len[plen])
                                for plen in sorted(by_len, reverse=True)]

    def covers_host(self, protocol, address):
        """Whether some route of PROTOCOL contains ADDRESS (an ipaddress object), at any port."""
        value = int(address)
        return any(value & mask in nets for _plen, mask, nets in self._index.get((protocol, address.version), ()))

    def reason(self, protocol, address, lo, hi, is_local):
        """Why dialling ADDRESS at a port from LO to HI over PROTOCOL reaches the proxy itself, or None.
        IS_LOCAL(address): whether a wildcard listener takes connections to ADDRESS."""
        for j, ep in enumerate(self.listen):
            if lo <= ep.port <= hi and ep.family == (socket.AF_INET if address.version == 4 else socket.AF_INET6):
                listener = ipaddress.ip_address(ep.host)
                if listener == address or (listener.is_unspecified and is_local(address)):
                    return f"it is the proxy's own listener listen[{j}] {str(ep)!r}"
        value = int(address)
        for _plen, mask, nets in self._index.get((protocol, address.version), ()):
            for other in nets.get(value & mask, ()):
                if other.port_lo <= hi and lo <= other.port_hi:
                    return (f"it is inside routes[{other.index}] ({other.network} ports {other.port_lo}-"
                            f"{other.port_hi}/{other.protocol}), whose connections come to the proxy")
        return None


def _statically_local(address):
    """What validation knows to be this host without asking it: loopback."""
    return address.is_loopback


def _check_self_dials(routes, listen):
    index = SelfDialIndex(routes, listen)
    for r in routes:
        for spec in r.origins:
            if spec.is_name:
                continue     # resolved at run time, and refused there (server.SelfDialGuard)
            lo, hi = (spec.port, spec.port) if spec.port else (r.port_lo, r.port_hi)
            why = index.reason(r.protocol, ipaddress.ip_address(spec.host), lo, hi, _statically_local)
            if why:
                dialled = "" if spec.port else " (with the port the client dialled)"
                raise ConfigError(spec.key, f"{spec.text!r}{dialled}: {why}; the proxy would relay "
                                            "connections to itself")
    return index


def _binds_overlap(a, b):
    """Whether sockets bound to A and to B collide (Linux refuses the second bind, SO_REUSEADDR
    or not, once the first listens). IPv6 sockets here are IPV6_V6ONLY: no overlap across families."""
    if a.family != b.family or a.port != b.port:
        return False
    return a.host == b.host or ipaddress.ip_address(a.host).is_unspecified or \
        ipaddress.ip_address(b.host).is_unspecified


def _where(key, raw, base):
    """The path of a key the route may have inherited: the route's own, or defaults'."""
    return f"{base}.{key}" if key in raw else f"defaults.{key}"


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
        for j, other in enumerate(listen):
            if _binds_overlap(ep, other):
                raise ConfigError(f"listen[{i}]", f"{item!r} " + (
                    "is listed twice" if ep == other else f"overlaps listen[{j}] {str(other)!r}: "
                    "both cannot be bound (a wildcard address covers every address of its family)"))
        listen.append(ep)

    metrics = data.get("metrics")
    if metrics is not None:
        metrics = parse_listen_address(metrics, "metrics")
        for j, other in enumerate(listen):
            if _binds_overlap(metrics, other):
                raise ConfigError("metrics", f"{str(metrics)!r} is the address of listen[{j}] {str(other)!r}"
                                  + ("" if metrics == other else " (a wildcard address covers every address "
                                                                 "of its family)")
                                  + ": the proxy could not bind both")

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
    # One dict probe per route (a scan of the earlier routes made 10,000 routes take 11 s).
    seen_names, seen_keys = {}, {}
    for r in routes:
        identity = (r.network, r.port_lo, r.port_hi, r.protocol)
        if identity in seen_keys:
            raise ConfigError(f"routes[{r.index}].destination",
                              f"routes[{seen_keys[identity]}] already covers {r.network} "
                              f"ports {r.port_lo}-{r.port_hi}/{r.protocol}")
        seen_keys[identity] = r.index
        if r.name in seen_names:
            raise ConfigError(f"routes[{r.index}].name",
                              f"{r.name!r} is also the name of routes[{seen_names[r.name]}]")
        seen_names[r.name] = r.index
    self_dial_index = _check_self_dials(routes, listen)

    workers = _number(data.get("workers", 1), "workers", 1, integer=True)
    if workers > 64:
        raise ConfigError("workers", f"at most 64 worker processes, got {workers}")
    per_source = data.get("max_connections_per_source")
    if per_source is not None:    # None: a quarter of the descriptor limit (netutil.default_per_source_limit)
        per_source = _number(per_source, "max_connections_per_source", 0, integer=True, allow_zero=True)
    drain_timeout = _number(data.get("drain_timeout", 30), "drain_timeout", 0, allow_zero=True)
    log_connections = _bool(data.get("log_connections", True), "log_connections")
    log_level = _choice(data.get("log_level", "info"), "log_level", LOG_LEVELS)
    buffer_size = _number(data.get("buffer_size", 65536), "buffer_size", 1024, integer=True)
    if buffer_size > 16 * 1024 * 1024:
        raise ConfigError("buffer_size", f"at most 16 MiB, got {buffer_size}")
    bulk_buffer_size = _number(data.get("bulk_buffer_size", max(524288, buffer_size)), "bulk_buffer_size",
                               buffer_size, integer=True)
    if bulk_buffer_size > 16 * 1024 * 1024:
        raise ConfigError("bulk_buffer_size", f"at most 16 MiB, got {bulk_buffer_size}")
    splice = _bool(data.get("splice", False), "splice")
    drain_socket = data.get("drain_socket")
    if drain_socket is not None and (not isinstance(drain_socket, str) or not drain_socket.startswith("/")
                                     or len(drain_socket.encode()) > 107):
        raise ConfigError("drain_socket", f"expected the absolute path of a unix socket (at most 107 bytes), "
                                          f"got {drain_socket!r}")

    return Config(
        listen=listen, routes=routes, metrics=metrics, workers=workers,
        max_connections_per_source=per_source, drain_timeout=float(drain_timeout),
        drain_socket=drain_socket, log_connections=log_connections, log_level=log_level, buffer_size=buffer_size,
        bulk_buffer_size=bulk_buffer_size, splice=splice, source=source, self_dial_index=self_dial_index,
    )


def load_config(path):
    try:
        with open(path, "rb") as fh:
            text = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read {path}: {exc.strerror}") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError("(file)", f"{path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a configuration")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError("(file)", f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError("(file)", f"{path} nests arrays or objects too deeply") from None
    return parse_config(data, source=str(path))
