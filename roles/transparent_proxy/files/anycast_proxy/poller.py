"""The data plane's readiness: a private epoll drained from one asyncio reader.

Relayed sockets never go through asyncio's selector: a connection costs a
couple of epoll_ctl calls and one dict entry, and an event costs one dict
lookup and one call. asyncio still runs everything else (signals, timers,
the metrics endpoint, worker control) on the same thread.
"""
import select

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
MAX_EVENTS = 512


class Poller:
    def __init__(self, loop):
        self.loop = loop
        self.epoll = select.epoll()
        self.handlers = {}
        self.deferred = set()
        loop.add_reader(self.epoll.fileno(), self._dispatch)

    def register(self, fd, events, handler, deferred=False):
        """deferred: call HANDLER after the rest of the batch (listeners, see _dispatch)."""
        self.epoll.register(fd, events)
        self.handlers[fd] = handler
        if deferred:
            self.deferred.add(fd)

    def modify(self, fd, events):
        self.epoll.modify(fd, events)

    def forget(self, fd):
        """Before closing fd: closing removes it from the epoll set by itself."""
        self.handlers.pop(fd, None)

    def unregister(self, fd):
        self.handlers.pop(fd, None)
        self.deferred.discard(fd)
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def _dispatch(self):
        # Sockets closed during a batch free their descriptor numbers. Accepting (which opens
        # new sockets) only after the rest of the batch keeps a stale event of a closed socket
        # from reaching a new socket that reuses its number.
        handlers = self.handlers
        deferred = self.deferred
        later = None
        for fd, events in self.epoll.poll(0, MAX_EVENTS):
            handler = handlers.get(fd)
            if handler is None:
                continue
            if fd in deferred:
                if later is None:
                    later = []
                later.append((handler, events))
            else:
                handler(events)
        if later:
            for handler, events in later:
                handler(events)

    def close(self):
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()
