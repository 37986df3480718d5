"""Messages with file descriptors over a unix stream socket.

A frame is a header (magic, JSON length, blob length), a JSON object (its
"fds" key: how many descriptors come with it) and an optional blob of raw
bytes; its descriptors (at most MAX_FDS) travel as
SCM_RIGHTS with the frame's first byte. The kernel never hands a reader the
descriptors of two sendmsg() calls in one recvmsg(), and delivers them no
later than the first byte of their frame, so the reader keeps them in a queue
and a complete frame takes its count from the front.

Used between the supervisor and its workers (metrics, reload with the
listeners) and for handing established connections to the drain service.
"""
import array
import asyncio
import errno
import json
import os
import socket
import struct

MAGIC = b"AEP1"
HEADER = struct.Struct("!4sII")
MAX_FDS = 250            # SCM_MAX_FD is 253
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_READ = 1 << 16


class ChannelError(Exception):
    pass


def encode(obj, blob=b""):
    text = json.dumps(obj, separators=(",", ":")).encode()
    return HEADER.pack(MAGIC, len(text), len(blob)) + text + blob


class Channel:
    def __init__(self, sock, loop=None):
        sock.setblocking(False)
        self.sock = sock
        self.loop = loop or asyncio.get_running_loop()
        self.buffer = bytearray()
        self.fds = []               # received, not yet claimed by a frame
        self.eof = False

    # -- sending -----------------------------------------------------------------
    async def send(self, obj, fds=(), blob=b""):
        """Send one frame; wait while the socket (or the kernel's in-flight descriptor limit) is full."""
        if len(fds) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} descriptors per frame")
        data = memoryview(encode(obj, blob))
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        while data:
            try:
                sent = self.sock.sendmsg([data], ancillary)
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            except OSError as exc:
                if exc.errno == errno.ETOOMANYREFS and ancillary:   # the reader has not caught up yet
                    await asyncio.sleep(0.02)
                    continue
                raise
            data = data[sent:]
            ancillary = []

    async def _writable(self):
        future = self.loop.create_future()
        fd = self.sock.fileno()
        self.loop.add_writer(fd, future.set_result, None)
        try:
            await future
        finally:
            self.loop.remove_writer(fd)

    # -- receiving -----------------------------------------------------------------
    async def recv(self):
        """(obj, fds, blob) of the next frame; None at the end of the stream."""
        while True:
            frame = self._frame()
            if frame is not None:
                return frame
            if self.eof:
                if self.buffer:
                    raise ChannelError(f"the stream ended inside a frame ({len(self.buffer)} bytes)")
                return None
            await self._readable()
            self._read()

    def _frame(self):
        if len(self.buffer) < HEADER.size:
            return None
        magic, text_len, blob_len = HEADER.unpack_from(self.buffer)
        if magic != MAGIC:
            raise ChannelError(f"not a frame of this protocol (starts with {bytes(self.buffer[:4])!r})")
        end = HEADER.size + text_len + blob_len
        if len(self.buffer) < end:
            return None
        obj = json.loads(bytes(self.buffer[HEADER.size:HEADER.size + text_len]))
        blob = bytes(self.buffer[HEADER.size + text_len:end])
        del self.buffer[:end]
        count = obj.get("fds", 0) if isinstance(obj, dict) else 0
        if count > len(self.fds):
            raise ChannelError(f"a frame announced {count} descriptors, {len(self.fds)} arrived")
        fds, self.fds = self.fds[:count], self.fds[count:]
        return obj, fds, blob

    async def _readable(self):
        future = self.loop.create_future()
        fd = self.sock.fileno()
        self.loop.add_reader(fd, future.set_result, None)
        try:
            await future
        finally:
            self.loop.remove_reader(fd)

    def _read(self):
        try:
            data, ancillary, flags, _unused1 = self.sock.recvmsg(_READ, _ANCILLARY, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            data, ancillary, flags = b"", [], 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise ChannelError("descriptors were lost (ancillary data truncated)")
        if not data:
            self.eof = True
        self.buffer += data

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.sock.close()
