"""Active health checks: a TCP connect to each origin of the routes that check.

One asyncio task per origin: a first check at a random point of the first
interval (so that many origins are not checked in step), then one per
`interval`. A check passes when the origin accepts within `timeout`; on a
PROXY-protocol route it then receives a LOCAL header (what HAProxy's
check-send-proxy sends: the origin learns this connection is the proxy's own),
and the connection is closed. Outcomes feed the same state machine as the
connections' own (pool.Origin.observe).

Settings are read from the pool at every check, so a reload takes effect
without restarting the tasks; `sync()` starts and stops tasks as origins come
and go (reload, DNS).
"""
import asyncio
import os
import random
import socket

from .proxy_protocol import local_header


class HealthChecker:
    def __init__(self, loop):
        self.loop = loop
        self.tasks = {}      # Origin -> task
        self.guard = None    # selfdial.SelfDialGuard: an origin that is the proxy itself is never up

    def sync(self, pools):
        """Check exactly the origins of POOLS whose route checks actively."""
        wanted = {}
        for pool in pools.values():
            if pool.route.health_check.active:
                for origin in pool.origins:
                    wanted[origin] = pool
        for origin in [o for o in self.tasks if o not in wanted]:
            self.tasks.pop(origin).cancel()
        for origin, pool in wanted.items():
            if origin not in self.tasks:
                self.tasks[origin] = self.loop.create_task(self._run(pool, origin))

    async def _run(self, pool, origin):
        await asyncio.sleep(random.uniform(0, pool.route.health_check.interval))
        while True:
            ok = await self.check(pool, origin)
            if not ok:
                origin.check_failures += 1
            pool.observe(origin, ok)
            await asyncio.sleep(pool.route.health_check.interval)

    async def check(self, pool, origin):
        route = pool.route
        settings = route.health_check
        address = (origin.host, settings.port or origin.port)
        if self.guard is not None:
            why = self.guard.check(origin, "tcp", address[1])
            if why:
                # The proxy would accept its own check: a success that no connection would see.
                origin.last_error = f"check: not dialled: {why}"
                return False
        try:
            sock = socket.socket(origin.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            origin.last_error = f"check: {exc.strerror}"
            return False
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, address), settings.timeout)
            header = local_header(route.proxy_protocol)
            if header:
                sock.send(header)
            return True
        except asyncio.TimeoutError:
            origin.last_error = f"check: no answer within {settings.timeout:g}s"
            return False
        except OSError as exc:
            # asyncio words it "Connect call failed (...)": the errno says it better.
            origin.last_error = f"check: {os.strerror(exc.errno) if exc.errno else exc}"
            return False
        finally:
            sock.close()

    def close(self):
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
