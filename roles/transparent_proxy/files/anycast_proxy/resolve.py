"""Origins given by name: every A/AAAA record is an origin, re-resolved every resolve_interval.

getaddrinfo() runs in the loop's thread pool, so a slow resolver never holds
up the relay. A failed resolution (no answer, no records, a timeout) keeps the
last good set of addresses, is logged, and shows in the metrics
(`origin_resolve_ok` 0 and `origin_resolve_failures_total`). Addresses are kept
sorted, so a DNS server that rotates its answers does not reshuffle the pool.
"""
import asyncio
import ipaddress
import socket

RESOLVE_TIMEOUT = 10.0   # one attempt, as seconds; the libc resolver has its own retries inside


class Resolution:
    """What the last resolutions of one name of one route gave."""

    __slots__ = ("ok", "failures", "error", "resolved")

    def __init__(self):
        self.ok = False          # the last attempt succeeded
        self.failures = 0        # failed attempts so far
        self.error = ""
        self.resolved = False    # at least one attempt succeeded


async def lookup(loop, host):
    """Sorted [(family, address)] of HOST's A and AAAA records; raises OSError or TimeoutError."""
    infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    found = {(family, sockaddr[0]) for family, _unused1, _unused2, _unused3, sockaddr in infos
             if family in (socket.AF_INET, socket.AF_INET6)}
    if not found:
        raise OSError(0, "no A or AAAA records")
    return sorted(found, key=lambda fa: (fa[0] != socket.AF_INET, ipaddress.ip_address(fa[1])))


class Resolver:
    def __init__(self, loop, log, on_update):
        self.loop = loop
        self.log = log
        self.on_update = on_update     # callable(pool) after a pool's addresses changed
        self.tasks = {}                # (pool, name text) -> task

    def sync(self, pools):
        """Re-resolve exactly the names of POOLS."""
        wanted = {}
        for pool in pools.values():
            for spec in pool.route.origins:
                if spec.is_name:
                    wanted[(pool, spec.text)] = pool
        for key in [k for k in self.tasks if k not in wanted]:
            self.tasks.pop(key).cancel()
        for key, pool in wanted.items():
            if key not in self.tasks:
                self.tasks[key] = self.loop.create_task(self._run(pool, key[1]))

    async def prefetch(self, routes, pools, timeout):
        """Resolve, once and concurrently, the names of ROUTES that their pool (in POOLS, by route
        name) has no addresses of: {name: [(family, address)] or an error text}. At start and
        before a reload, so that a new name has its origins when its route takes connections."""
        names = set()
        for route in routes:
            pool = pools.get(route.name)
            known = {spec.text for spec in pool.addresses} if pool is not None else set()
            names.update(spec.host for spec in route.origins if spec.is_name and spec.text not in known)
        if not names:
            return {}
        tasks = {name: self.loop.create_task(lookup(self.loop, name)) for name in sorted(names)}
        await asyncio.wait(list(tasks.values()), timeout=timeout)
        results = {}
        for name, task in tasks.items():
            if not task.done():
                task.cancel()
                results[name] = "no answer within %gs" % timeout
            elif task.exception() is not None:
                exc = task.exception()
                results[name] = ("no answer within %gs" % RESOLVE_TIMEOUT if isinstance(exc, asyncio.TimeoutError)
                                 else getattr(exc, "strerror", None) or str(exc))
            else:
                results[name] = task.result()
        return results

    def record(self, pools, results):
        """Note what prefetch() found in the pools' resolution states, and say what failed."""
        for pool in pools.values():
            for spec in pool.route.origins:
                result = results.get(spec.host) if spec.is_name else None
                if result is None or spec.text in pool.resolution:
                    continue
                state = pool.resolution[spec.text] = Resolution()
                if isinstance(result, list):
                    state.ok = state.resolved = True
                else:
                    state.failures, state.error = 1, result
                    self.log.warning(f"route {pool.name}: cannot resolve {spec.host} ({result}); "
                                     f"no addresses yet, trying again every {pool.route.resolve_interval:g}s")

    def _spec(self, pool, text):
        for spec in pool.route.origins:
            if spec.text == text:
                return spec
        return None

    async def _run(self, pool, text):
        while True:
            state = pool.resolution.get(text)
            # A name that never resolved is asked again sooner than one that did.
            unresolved = state is None or not state.resolved
            await asyncio.sleep(min(pool.route.resolve_interval, 5.0) if unresolved else pool.route.resolve_interval)
            spec = self._spec(pool, text)
            if spec is not None:
                await self.resolve(pool, spec)

    async def resolve(self, pool, spec):
        state = pool.resolution.setdefault(spec.text, Resolution())
        old = pool.addresses.get(spec)
        try:
            addresses = await lookup(self.loop, spec.host)
        except (OSError, asyncio.TimeoutError) as exc:
            state.ok = False
            state.failures += 1
            state.error = ("no answer within %gs" % RESOLVE_TIMEOUT if isinstance(exc, asyncio.TimeoutError)
                           else exc.strerror or str(exc))
            kept = ", ".join(host for _unused1, host in old) if old else "none yet"
            self.log.warning(f"route {pool.name}: cannot resolve {spec.host} ({state.error}); "
                             f"keeping the last good addresses: {kept}")
            return
        if state.resolved and not state.ok:
            self.log.info(f"route {pool.name}: {spec.host} resolves again")
        state.ok = state.resolved = True
        state.error = ""
        if addresses != old:
            if old is not None:
                self.log.info(f"route {pool.name}: {spec.host} now resolves to "
                              f"{', '.join(h for _unused1, h in addresses)} "
                              f"(was {', '.join(h for _unused1, h in old)})")
            pool.set_addresses(spec, addresses)
            self.on_update(pool)

    def close(self):
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
