"""Handing established connections to another process, and taking them over.

A stopping proxy (restart, upgrade, a change of workers) gives its TCP
connections to the drain service instead of waiting for them: it sends both
sockets of each connection (SCM_RIGHTS) with what the relay knows about it --
addresses, route, timeouts, which directions have ended, and the bytes read
but not yet delivered -- and exits at once, so that systemd can start its
successor without delay. The drain service relays them on with the same code
until they finish or its drain_timeout passes.

A connection is frozen before it is described: its sockets leave this
process's epoll set (EPOLL_CTL_DEL: closing our descriptor would not remove
them, the drain service holds the same open files), and nothing of this
process touches it again. A connection still dialling its origin travels with
its attempt in progress and the origins left to fail over to. The drain
service acknowledges each frame once it relays its connections; only then
does this process close its descriptors. A frame it does not acknowledge is
thawed, and its connections drain here as before.
"""
import asyncio
import os
import socket
import time

from . import tcp_relay
from .channel import Channel, ChannelError
from .config import OriginSpec
from .netutil import fmt_addr
from .pool import Origin

VERSION = 1
BATCH = 100             # connections per frame: two descriptors each, under SCM_MAX_FD
MAX_CANDIDATES = 8      # origins a dialling connection may still fail over to
SEND_TIMEOUT = 10.0     # for everything; the drain service is started by systemd on demand

_monotonic = time.monotonic


# -- the stopping side ----------------------------------------------------------------
def _pump_state(pump, blobs):
    data = b""
    if pump.splice_mode and pump.in_pipe:
        chunks = []
        while pump.in_pipe:
            chunk = os.read(pump.pipe_r, pump.in_pipe)
            pump.in_pipe -= len(chunk)
            chunks.append(chunk)
        data = b"".join(chunks)
        pump.pending = memoryview(data)   # what the pipe held is now ordinary pending data
    elif pump.pending is not None:
        data = bytes(pump.pending)
    # Without its pipe a pump copies (and may enter splice mode again with a new pipe): so it
    # goes on here if the hand-over fails, and so it starts in the drain service.
    pump.close_pipe()
    pump.splice_mode = False
    blobs.append(data)
    return {"pending": len(data), "blocked": pump.blocked, "eof": pump.eof, "done": pump.done,
            "bulk": pump.bulk}


def _address(origin, dialled_port):
    host, port = origin.sockaddr(dialled_port)
    return [int(origin.family), host, port]


def freeze(session, blobs):
    """Take SESSION out of this process's hands; its description (pending bytes go to BLOBS)."""
    relay = session.relay
    poller = relay.poller
    poller.unregister(session.cfd)
    if session.origin is not None:
        poller.unregister(session.ofd)
    relay.connecting.discard(session)
    session.closed = True          # any callback still scheduled for it does nothing now
    now = _monotonic()
    state = {
        "client_addr": list(session.client_addr[:2]), "dst": list(session.dst[:2]),
        "route": session.route.name, "idle_timeout": session.route.idle_timeout,
        "proxy_protocol": session.route.proxy_protocol, "age": now - session.t_start,
        "idle": now - session.last_activity, "connected": session.connected,
        "origin": session.origin is not None,
    }
    if session.c2o is not None:
        state["c2o"] = _pump_state(session.c2o, blobs)
        state["o2c"] = _pump_state(session.o2c, blobs)
    if session.connected:
        state["target"] = _address(session.target, session.dst[1])
    else:
        tried = list(session.tried or ())
        if session.target is not None:
            state["target"] = _address(session.target, session.dst[1])
            tried.append(session.target)
        candidates = []
        while len(candidates) < MAX_CANDIDATES:
            following = session.pool.next_after(session.source_key, tried)
            if following is None:
                break
            candidates.append(_address(following, session.dst[1]))
            tried.append(following)
        state["candidates"] = candidates
        state["deadline"] = max(0.0, session.deadline - now)
        state["attempt_deadline"] = max(0.0, (session.connect_deadline or now) - now)
    return state


def thaw(session):
    """A frozen SESSION stays here after all (the hand-over failed)."""
    relay = session.relay
    session.closed = False
    poller = relay.poller
    if session.c2o is not None:
        poller.register(session.cfd, tcp_relay._ORIGIN_EVENTS, session.on_client)
        session.client_writable_watched = True
    if session.origin is not None:
        poller.register(session.ofd, tcp_relay._ORIGIN_EVENTS, session.on_origin)
        if not session.connected:
            relay.connecting.add(session)
    elif not session.connected and session.target is None:
        # It was between two attempts: go on from here (unless the attempt it had scheduled
        # still comes; _attempt() does nothing for a session that dials already).
        session.relay.loop.call_soon(lambda: session.closed or session.target is not None or session.connect())


def release(session):
    """The drain service has SESSION: close this process's descriptors (no FIN, no RST: the
    connection lives on there)."""
    relay = session.relay
    relay.sessions.discard(session)
    session.stats.active -= 1
    if session.target is not None:
        session.target.active -= 1
    session.client.close()
    if session.origin is not None:
        session.origin.close()


async def hand_over(path, relay, settings, log):
    """Send every TCP session of RELAY to the drain service at PATH; how many it took.

    A batch stays frozen (alive, relayed by nobody) until the drain service acknowledges it; only
    then are this process's descriptors closed. Batches it does not acknowledge -- it refused the
    version, broke off, or did not answer in time -- are thawed and drain here.
    """
    sessions = [s for s in relay.sessions if not s.closed]
    if not sessions:
        return 0
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        log.warning(f"cannot hand connections to the drain service at {path}: {exc.strerror}; "
                    "draining them here")
        return 0
    channel = Channel(sock)
    deadline = _monotonic() + SEND_TIMEOUT
    handed = 0
    unacknowledged = []
    try:
        await asyncio.wait_for(channel.send({"hello": VERSION, "pid": os.getpid(), "settings": settings}),
                               SEND_TIMEOUT)
        # Everything goes out first (the drain service may still be starting), then the answers.
        for start in range(0, len(sessions), BATCH):
            batch = [s for s in sessions[start:start + BATCH] if not s.closed]
            blobs, states, fds = [], [], []
            for session in batch:
                states.append(freeze(session, blobs))
                fds.append(session.cfd)
                if session.origin is not None:
                    fds.append(session.ofd)
            unacknowledged.append(batch)
            await asyncio.wait_for(channel.send({"sessions": states, "fds": len(fds)}, fds, b"".join(blobs)),
                                   max(0.1, deadline - _monotonic()))
        while unacknowledged:
            answer = await asyncio.wait_for(channel.recv(), max(0.1, deadline - _monotonic()))
            if answer is None or answer[0].get("ack") != len(unacknowledged[0]):
                raise ChannelError("the drain service did not take them" if answer is None
                                   else f"unexpected answer {answer[0]!r}")
            for session in unacknowledged.pop(0):
                release(session)
                handed += 1
    except (OSError, asyncio.TimeoutError, ChannelError) as exc:
        reason = "no answer" if isinstance(exc, asyncio.TimeoutError) else str(exc)
        log.warning(f"handing connections to the drain service at {path} stopped after {handed}: {reason}; "
                    "draining the rest here")
        for batch in unacknowledged:
            for session in batch:
                thaw(session)
    finally:
        channel.close()
    return handed


# -- the taking side ------------------------------------------------------------------
class HandedRoute:
    """What a handed-over connection keeps of its route."""

    __slots__ = ("name", "idle_timeout", "proxy_protocol", "connect_timeout", "pool")

    def __init__(self, name, idle_timeout, proxy_protocol, pool):
        self.name = name
        self.idle_timeout = idle_timeout
        self.proxy_protocol = proxy_protocol
        self.connect_timeout = 0.0
        self.pool = pool


class HandedPool:
    """The origins a handed-over dialling connection may still try, in order; no health."""

    def __init__(self, candidates):
        self.live_primaries = candidates
        self.live_backups = []

    def pick(self, key):
        return self.next_after(key, ())

    def next_after(self, key, tried):
        for origin in self.live_primaries:
            if origin not in tried:
                return origin
        return None

    def untried_live(self, tried):
        return sum(1 for o in self.live_primaries if o not in tried)

    def observe(self, origin, ok):
        pass


def _origin(route_name, address):
    family, host, port = address
    return Origin(route_name, OriginSpec(fmt_addr((host, port)), host, port, family), host, family)


def _restore_pump(pump, state, data):
    pump.blocked = state["blocked"]
    pump.eof = state["eof"]
    pump.done = state["done"]
    pump.bulk = state["bulk"]
    pump.pending = memoryview(data) if data else None


def adopt(relay, state, client_fd, origin_fd, blob, offset):
    """Rebuild one session from its description; returns (session, new blob offset)."""
    now = _monotonic()
    client = tcp_relay._RawSocket(fileno=client_fd)
    origin = tcp_relay._RawSocket(fileno=origin_fd) if origin_fd is not None else None
    name = state["route"]
    candidates = [_origin(name, a) for a in state.get("candidates", ())]
    target = _origin(name, state["target"]) if state.get("target") else None
    pool = HandedPool(candidates)
    route = HandedRoute(name, state["idle_timeout"], state["proxy_protocol"], pool)
    stats = relay.metrics.route(name, "tcp")
    session = tcp_relay.TcpSession(relay, client, tuple(state["client_addr"]), tuple(state["dst"]), route,
                                   stats, state["client_addr"][0])
    session.t_start = now - state["age"]
    session.last_activity = now - state["idle"]
    session.target = target
    if target is not None:
        target.active += 1
        session.origin_addr = target.sockaddr(session.dst[1])
    stats.active += 1
    stats.total += 1
    relay.sessions.add(session)
    poller = relay.poller
    if origin is not None:
        session.origin, session.ofd = origin, origin.fileno()
        session.c2o = tcp_relay._Pump(session, client, origin, True)
        session.o2c = tcp_relay._Pump(session, origin, client, False)
        for key, pump in (("c2o", session.c2o), ("o2c", session.o2c)):
            size = state[key]["pending"]
            _restore_pump(pump, state[key], blob[offset:offset + size])
            offset += size
        session.connected = state["connected"]
        # Registering reports what is already there (data, FIN, room to write): nothing is missed.
        session.client_writable_watched = True
        poller.register(session.cfd, tcp_relay._ORIGIN_EVENTS, session.on_client)
        poller.register(session.ofd, tcp_relay._ORIGIN_EVENTS, session.on_origin)
        if not session.connected:
            session.deadline = now + state["deadline"]
            session.connect_deadline = now + state["attempt_deadline"]
            relay.connecting.add(session)
    else:
        # Between two attempts: go on with the next origin.
        session.deadline = now + state.get("deadline", 0.0)
        for key in ("c2o", "o2c"):
            offset += state.get(key, {}).get("pending", 0)
        session.tried = []
        following = pool.next_after(session.source_key, ())
        if following is None:
            session.close("connect_failed", reset_client=True)
        else:
            relay.loop.call_soon(session._attempt, following)
    return session, offset
