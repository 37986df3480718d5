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
        loop.add_reader(self.epoll.fileno(), self._dispatch)

    def register(self, fd, events, handler):
        self.epoll.register(fd, events)
        self.handlers[fd] = handler

    def modify(self, fd, events):
        self.epoll.modify(fd, events)

    def forget(self, fd):
        """Before closing fd: closing removes it from the epoll set by itself."""
        self.handlers.pop(fd, None)

    def unregister(self, fd):
        self.handlers.pop(fd, None)
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def _dispatch(self):
        handlers = self.handlers
        for fd, events in self.epoll.poll(0, MAX_EVENTS):
            handler = handlers.get(fd)
            if handler is not None:
                handler(events)

    def close(self):
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()
