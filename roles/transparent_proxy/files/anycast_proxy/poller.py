"""The data plane's readiness: relayed sockets bypass asyncio's callback machinery.

With the standard asyncio loop, the proxy installs DataPlaneSelector: the
loop's own epoll also holds the relayed sockets, and their events are
dispatched inline from select() (one dict lookup and one call each), while
asyncio's own descriptors (signals, the metrics endpoint, worker control)
are returned to the loop as usual. One epoll_wait serves both.

With another loop (uvloop), the relayed sockets live on a private epoll
whose descriptor is one asyncio reader.

Either way a connection costs a couple of epoll_ctl calls and one dict
entry; no Handle objects, no per-event allocations.
"""
import math
import select
import selectors

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLET = select.EPOLLET
EPOLLEXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 1 << 28)
MAX_EVENTS = 512


def _dispatch_batch(fd_event_list, handlers, deferred, on_error, ready=None, key_from_fd=None):
    """Call data-plane handlers; collect other descriptors' events into READY.

    Sockets closed during a batch free their descriptor numbers. Listeners
    (`deferred`) run after the rest of the batch, so that the sockets they
    open cannot receive a stale event meant for a closed one.
    """
    later = None
    for fd, event in fd_event_list:
        handler = handlers.get(fd)
        if handler is None:
            if key_from_fd is not None:
                key = key_from_fd(fd)
                if key:
                    events = 0
                    if event & ~EPOLLIN:
                        events |= selectors.EVENT_WRITE
                    if event & ~EPOLLOUT:
                        events |= selectors.EVENT_READ
                    ready.append((key, events & key.events))
            continue
        if fd in deferred:
            if later is None:
                later = []
            later.append((handler, event))
            continue
        try:
            handler(event)
        except Exception as exc:  # one broken connection must not stop the others
            on_error(exc)
    if later:
        for handler, event in later:
            try:
                handler(event)
            except Exception as exc:
                on_error(exc)


def _reraise(exc):
    raise exc


class DataPlaneSelector(selectors.EpollSelector):
    """asyncio's selector, with data-plane descriptors dispatched inline."""

    def __init__(self):
        super().__init__()
        self.handlers = {}
        self.deferred = set()
        self.on_error = _reraise

    def select(self, timeout=None):
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            timeout = math.ceil(timeout * 1e3) * 1e-3
        ready = []
        try:
            fd_event_list = self._selector.poll(timeout, max(MAX_EVENTS, len(self._fd_to_key)))
        except InterruptedError:
            return ready
        # _fd_to_key exists from 3.4 to 3.13; the _key_from_fd() helper is gone in 3.13.
        _dispatch_batch(fd_event_list, self.handlers, self.deferred, self.on_error, ready, self._fd_to_key.get)
        return ready


def new_event_loop():
    import asyncio
    return asyncio.SelectorEventLoop(DataPlaneSelector())


class Poller:
    def __init__(self, loop):
        self.loop = loop
        selector = getattr(loop, "_selector", None)
        if isinstance(selector, DataPlaneSelector):
            self.epoll = selector._selector
            self.handlers = selector.handlers
            self.deferred = selector.deferred
            selector.on_error = self._on_error
            self.nested = False
        else:
            self.epoll = select.epoll()
            self.handlers = {}
            self.deferred = set()
            self.nested = True
            loop.add_reader(self.epoll.fileno(), self._dispatch)

    def _on_error(self, exc):
        self.loop.call_exception_handler({"message": "data-plane handler failed", "exception": exc})

    def register(self, fd, events, handler, deferred=False):
        """deferred: call HANDLER after the rest of its batch (listeners)."""
        self.epoll.register(fd, events)
        self.handlers[fd] = handler
        if deferred:
            self.deferred.add(fd)

    def modify(self, fd, events):
        self.epoll.modify(fd, events)

    def unregister(self, fd):
        self.handlers.pop(fd, None)
        self.deferred.discard(fd)
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def _dispatch(self):
        _dispatch_batch(self.epoll.poll(0, MAX_EVENTS), self.handlers, self.deferred, self._on_error)

    def close(self):
        if self.nested:
            self.loop.remove_reader(self.epoll.fileno())
            self.epoll.close()
