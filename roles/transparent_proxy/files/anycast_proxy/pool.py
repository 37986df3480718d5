"""A route's origins: their health, which one takes a connection, and the order to fail over in.

An Origin is one address (a configured IP, or one A/AAAA record of a
configured name) with its weight, backup flag, health state and counters.
Its health is a small state machine fed by active checks and by what
connections see (passive), alike:

    up   --(fall consecutive failures)-->  down
    down --(rise consecutive successes)--> up

Origins start up (a restart must not wait `rise` checks before serving).

A Pool picks in tiers: the live primaries; when none is up, the live
backups; when nothing is up at all, every origin anyway (primaries first) --
a check's view may be stale, and refusing outright would turn a glitch of the
checks into an outage. Failing over, a connection takes the next origin the
balancing method would give it, tier by tier, each origin at most once.

A reload reconfigures each route name's Pool in place; an Origin object
(health, counters, open connections) stays while its route name and address do.
"""
import socket

from .balance import METHODS


class Origin:
    __slots__ = ("route_name", "spec", "host", "port", "family", "weight", "backup", "label",
                 "up", "successes", "failures", "active", "total", "connect_failures", "check_failures",
                 "last_error", "self_dial")

    def __init__(self, route_name, spec, host, family):
        self.route_name = route_name
        self.spec = spec
        self.host = host
        self.port = spec.port            # None: the port the client dialled
        self.family = family
        self.weight = spec.weight
        self.backup = spec.backup
        self.label = format_origin(host, spec.port, family)
        self.up = True
        self.successes = 0               # consecutive, while down
        self.failures = 0                # consecutive, while up
        self.active = 0                  # connections open or being opened to it
        self.total = 0                   # connections established to it
        self.connect_failures = 0        # failed connection attempts of clients
        self.check_failures = 0          # failed active checks
        self.last_error = ""             # what the last failure was, for the log
        self.self_dial = None            # (guard, verdict...): selfdial.SelfDialGuard's, per configuration

    def sockaddr(self, dialled_port):
        return (self.host, self.port or dialled_port)

    def observe(self, ok, rise, fall):
        """One check or connection outcome; True when it turned the origin up or down."""
        if ok:
            self.failures = 0
            if self.up:
                return False
            self.successes += 1
            if self.successes < rise:
                return False
            self.up, self.successes = True, 0
            return True
        self.successes = 0
        if not self.up:
            return False
        self.failures += 1
        if self.failures < fall:
            return False
        self.up, self.failures = False, 0
        return True

    def __repr__(self):
        return f"Origin({self.route_name}:{self.label} {'up' if self.up else 'down'})"


def format_origin(host, port, family):
    if port is None:
        return host
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


class Pool:
    """The origins of one route. One object per route name for the life of the process:
    a reload reconfigures it in place, so connections accepted before a reload report
    their outcomes to the same pool as the new ones."""

    def __init__(self, route, on_change=None, resolved=None):
        self.on_change = on_change       # callable(pool, origin) after an origin went up or down
        self.origins = []                # every origin, in configuration order
        self.addresses = {}              # spec -> [(family, host)] (names: the last good resolution)
        self.live_primaries = []
        self.live_backups = []
        self.resolution = {}             # name text -> resolve.Resolution
        self.route = None
        self.method = None
        self.reconfigure(route, resolved)

    def reconfigure(self, route, resolved=None):
        """Take ROUTE's origins and settings; origins that stay keep their state. RESOLVED:
        {name: [(family, address)]} for names this pool has no addresses of yet."""
        self.route = route
        self.name = route.name
        self.rise = route.health_check.rise
        self.fall = route.health_check.fall
        if route.balance != self.method:
            self.method = route.balance
            self.primary = METHODS[route.balance]()
            self.backup = METHODS[route.balance]()
        # A name keeps its last good resolution until the resolver says otherwise.
        by_text = {spec.text: addresses for spec, addresses in self.addresses.items() if spec.is_name}
        self.addresses = {}
        for spec in route.origins:
            if not spec.is_name:
                self.addresses[spec] = [(spec.family, spec.host)]
            elif spec.text in by_text:
                self.addresses[spec] = by_text[spec.text]
            elif isinstance((resolved or {}).get(spec.host), list):
                self.addresses[spec] = resolved[spec.host]
        names = {spec.text for spec in route.origins if spec.is_name}
        self.resolution = {text: r for text, r in self.resolution.items() if text in names}
        route.pool = self
        self.rebuild()

    # -- membership -------------------------------------------------------------
    def set_addresses(self, spec, addresses):
        """SPEC's addresses: a name's new resolution."""
        self.addresses[spec] = list(addresses)
        self.rebuild()

    def rebuild(self):
        """Origins from the addresses, keeping the objects (and state) of those that stay."""
        keep = {(o.spec.text, o.label): o for o in self.origins}
        origins = []
        for spec in self.route.origins:
            for family, host in self.addresses.get(spec, ()):
                label = format_origin(host, spec.port, family)
                origin = keep.get((spec.text, label))
                if origin is None or origin.family != family:
                    origin = Origin(self.name, spec, host, family)
                else:
                    origin.spec, origin.weight, origin.backup = spec, spec.weight, spec.backup
                origins.append(origin)
        self.origins = origins
        self.refresh()

    def refresh(self):
        """Recompute the tiers after a change of membership or health."""
        primaries = [o for o in self.origins if not o.backup]
        backups = [o for o in self.origins if o.backup]
        self.live_primaries = [o for o in primaries if o.up]
        self.live_backups = [o for o in backups if o.up]
        self.primary.rebuild(self.live_primaries, primaries)
        self.backup.rebuild(self.live_backups, backups)

    # -- health -------------------------------------------------------------------
    def observe(self, origin, ok):
        """A check's or a connection's outcome for ORIGIN (passive and active alike)."""
        if origin.observe(ok, self.rise, self.fall):
            self.refresh()
            if self.on_change is not None:
                self.on_change(self, origin)

    # -- choosing -------------------------------------------------------------------
    def pick(self, key):
        """The origin for a new connection (KEY: the client's address), or None."""
        if self.live_primaries:
            return self.primary.pick(key)
        if self.live_backups:
            return self.backup.pick(key)
        return self.next_after(key, ())

    def next_after(self, key, tried):
        """The next origin to try after the ones in TRIED failed, or None."""
        if self.live_primaries:
            origin = self.primary.pick(key, tried)
            if origin is not None:
                return origin
        if self.live_backups:
            origin = self.backup.pick(key, tried)
            if origin is not None:
                return origin
        # Nothing live is left: the others anyway, primaries first, in configuration order.
        for backup in (False, True):
            for origin in self.origins:
                if origin.backup is backup and not origin.up and origin not in tried:
                    return origin
        return None

    def untried_live(self, tried):
        """How many live origins are left to try (the connect timeout is shared among them)."""
        n = 0
        for o in self.live_primaries:
            if o not in tried:
                n += 1
        for o in self.live_backups:
            if o not in tried:
                n += 1
        return n

    def __len__(self):
        return len(self.origins)


BUILD_STEP = 500   # routes per step of build_pools_stepwise (about 5 ms of work)


def build_pools(routes, old_pools=None, on_change=None, resolved=None):
    """{route name: Pool} for ROUTES; a route name that stays keeps its Pool (reconfigured).
    RESOLVED: {name: [(family, address)] or an error text} for names new to their pool."""
    pools = {}
    for _unused1 in build_pools_stepwise(pools, routes, old_pools, on_change, resolved):
        pass
    return pools


def build_pools_stepwise(pools, routes, old_pools=None, on_change=None, resolved=None, step=BUILD_STEP):
    """build_pools() into POOLS, yielding after every STEP routes: a reload on the event loop
    lets the connections run between steps instead of stalling them for all its routes."""
    old_pools = old_pools or {}
    for i, route in enumerate(routes, 1):
        pool = old_pools.get(route.name)
        if pool is None:
            pool = Pool(route, on_change, resolved)
        else:
            pool.reconfigure(route, resolved)
        pools[route.name] = pool
        if i % step == 0:
            yield i
