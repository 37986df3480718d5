"""Can kernel socket splicing (BPF sockhash + SK_SKB verdict) relay one bulk TCP connection
at >= 0.8x the throughput of direct loopback? A probe, not part of the proxy.

Run as root from the repository root (each about 15 s):

    python3 bench/proxy/sockmap_probe.py [--rounds 3] [--bytes 1073741824] [--json out.json]
    python3 bench/proxy/sockmap_probe.py checks     # the behaviour facts listed below (~15 s)

Throughput: one throwaway network namespace (aes*, removed at the end) with the bench's own
origin (load.py serve 127.0.0.1:9000) and client (load.py bulk), and these targets, measured
in interleaved rounds (best of the rounds):
- direct: the client dials the origin;
- copy relay: a minimal userspace relay (one epoll loop, recv_into a 1 MiB buffer, send);
- sockmap: the same relay, but both sockets are put in a BPF sockhash at connect time and an
  SK_SKB verdict program redirects every received skb to the egress of the peer socket
  (bpf_sk_redirect_hash, flags 0); userspace only relays the FIN;
- sockmap sndbuf 64M: the same with SO_SNDBUFFORCE 64 MiB on both relay sockets (the best
  tuning found: the kworker that sends the redirected skbs stalls less on a full send buffer);
- sockmap bounded: the same as sockmap, plus userspace flow control (the kernel has none, see
  below): when more than 4 MiB received on one side are not yet in the peer's send queue, that
  side's verdict is switched off (its data then stays in its receive queue and TCP closes the
  window), and on again below 1 MiB or after 5 ms; checked every millisecond. It loses data
  now and then (see below); a failed run is counted, not measured.
For each: Gbit/s, ratio to direct, the relay process's CPU (utime+stime) per GiB, and the
machine's CPU per GiB (all non-idle time in /proc/stat during the transfer, all CPUs: with
sockmap the work moves into softirq and kworkers, outside the relay process).

Result (2026-11-21 13:08 UTC, 2-vCPU Firecracker VM, kernel 6.18, load average 0.01; best
of 3 rounds, 1 GiB each; CPU figures are the lowest of the rounds):

| target             | Gbit/s | x direct | relay CPU-s/GiB | machine CPU-s/GiB | failed runs |
|--------------------|--------|----------|-----------------|-------------------|-------------|
| direct             | 57.32  | 1.00     | -               | 0.25              | 0           |
| copy relay         | 21.63  | 0.38     | 0.28            | 0.62              | 0           |
| sockmap            | 12.80  | 0.22     | 0.04            | 0.80              | 0           |
| sockmap sndbuf 64M | 15.53  | 0.27     | 0.00            | 0.79              | 0           |
| sockmap bounded    | 11.27  | 0.20     | 0.09            | 0.78              | 1 (data lost) |

Earlier runs the same day agree (sockmap 4-15, with 64 MiB send buffers 11-17 Gbit/s; direct
42-61). So no: sockmap does not reach 0.8x here, nor even the copy relay. The relay process
itself does almost nothing, but the machine spends more CPU per GiB than with the copy relay:
in `perf`, the client's copy into the socket (_copy_from_iter) and the origin's copy out
(_copy_to_iter) take ~70% of all samples, against a few percent for the kworker that sends
the redirected skbs. With no backpressure the data in flight grows (psock queue, large send
buffers) and those copies go to memory instead of cache; and on loopback all of the kernel
work (both TCP passes and the kworker) runs on the sending CPU. Also tried, none better:
BPF_SK_SKB_STREAM_VERDICT, a stream parser + verdict, TCP_NODELAY off, cubic instead of bbr,
SO_RCVBUFFORCE 16 MiB, RPS on lo (both CPUs then saturated, still ~12 Gbit/s), userspace flow
control with thresholds from 1 to 32 MiB polled at 0.1-1 ms.

The BPF side, all by hand with ctypes (no libbpf/clang/bcc): two SOCKHASH maps keyed by the
u64 socket cookie (SO_COOKIE). "verdict" holds each relayed socket under its own cookie and
carries the program (BPF_SK_SKB_VERDICT, no parser); "redirect" holds socket B under
cookie(A) and A under cookie(B). The program: key = bpf_get_socket_cookie(skb);
bpf_sk_redirect_hash(skb, redirect, &key, 0); return SK_PASS (a failed lookup leaves the data
readable by userspace; SK_DROP would lose data TCP has already acknowledged). Two maps so
that one direction can be switched off (delete from "verdict") while the socket stays a
redirect target for the other direction.

What `checks` shows (kernel 6.18):
- bpf_get_socket_cookie is allowed in SK_SKB programs; verdict-only attach to the map works.
- Data queued before insertion is not relayed until the next sk_data_ready; in the check the
  sender is then window-limited and the transfer just stalls (4 more bytes sent do not help
  within 0.5 s). setsockopt(SO_RCVLOWAT, 1) after insertion (tcp_set_rcvlowat
  calls tcp_data_ready) relays it, in order, byte for byte.
- If userspace has read part of an skb before insertion, the verdict path relays the whole
  skb again (tcp_read_skb reads whole skbs): the bytes already read are duplicated.
- No backpressure: with a receiver that does not read, the sender keeps sending at full speed;
  the redirected skbs pile up in the peer's psock queue, uncharged to either socket (not in
  /proc/net/sockstat) - gigabytes within seconds. Deleting the source from the verdict map
  stops that (TCP closes its window) and re-inserting + SO_RCVLOWAT resumes in order - but
  not safely while data flows: in "sockmap bounded" runs a whole skb (65483 bytes, once
  2 x 65483) now and then vanishes, received and acknowledged on one side, never sent on the
  other (the relay reports it and resets). This fits the kernel code: an skb that
  tcp_read_skb() hands to sk_psock_verdict_recv() just after the program was detached from
  the psock gets __SK_DROP. Deleting the redirect entry instead (SK_PASS into the source's
  psock queue) cannot be undone without reordering. So there is no safe flow control.
- A socket that is out of the verdict map (paused) when its FIN arrives cannot go back in:
  the update fails with EOPNOTSUPP (a sockmap takes only ESTABLISHED TCP sockets); the rest of
  its data has to be read and written by userspace, after the peer's kernel backlog drained.
- End of stream: tcpi_bytes_received counts the FIN as one byte; "everything received on src
  is in dst's send queue" is tcpi_bytes_sent - tcpi_bytes_retrans + tcpi_notsent_bytes of dst
  catching up with the data bytes received on src (FIONREAD is no help: on a socket in a
  sockmap it reports the psock queue, not the TCP receive queue).
- Closing a socket removes its sockhash entries.
- Privileges: creating the map and loading the program need CAP_BPF + CAP_NET_ADMIN (or
  CAP_SYS_ADMIN); with either one alone, or as nobody, bpf() fails with EPERM.
"""
import argparse
import ctypes
import errno
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# The proxy benchmark's own helpers: one way to run commands and to count CPU.
from run import LOAD, PY, cpu_seconds, machine_busy_seconds, sh  # noqa: E402  pylint: disable=wrong-import-position

ORIGIN = ("127.0.0.1", 9000)

# -- bpf(2) ----------------------------------------------------------------------------
_NR_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
MAP_CREATE, MAP_LOOKUP, MAP_UPDATE, MAP_DELETE, MAP_NEXT_KEY, PROG_LOAD, PROG_ATTACH = 0, 1, 2, 3, 4, 5, 8
SOCKHASH, PROG_SK_SKB, SK_SKB_VERDICT = 18, 14, 38
SO_COOKIE, SO_SNDBUFFORCE = 57, 32
FIN_SEEN = {6, 8, 9, 11}   # TIME_WAIT CLOSE_WAIT LAST_ACK CLOSING: tcpi_bytes_received includes the FIN


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    ret = _libc.syscall(_NR_BPF, cmd, buf, 128)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, "bpf(cmd %d): %s" % (cmd, os.strerror(err)))
    return ret


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def cookie(sock):
    return struct.unpack("<Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


class Splice:
    """The two sockhash maps and the verdict program (see the docstring)."""

    def __init__(self, entries=4096):
        self.verdict = bpf(MAP_CREATE, struct.pack("<IIIIII", SOCKHASH, 8, 8, entries, 0, 0))
        self.redirect = bpf(MAP_CREATE, struct.pack("<IIIIII", SOCKHASH, 8, 8, entries, 0, 0))
        code = b"".join([
            insn(0xbf, 6, 1),                               # r6 = skb
            insn(0x85, imm=46),                             # r0 = bpf_get_socket_cookie(skb)
            insn(0x7b, 10, 0, -8),                          # *(u64 *)(r10 - 8) = r0
            insn(0xbf, 1, 6),                               # r1 = skb
            insn(0x18, 2, 1, 0, self.redirect), insn(0),    # r2 = &redirect (ld_imm64 map fd)
            insn(0xbf, 3, 10), insn(0x07, 3, imm=-8),       # r3 = &key
            insn(0xb7, 4, imm=0),                           # r4 = 0: the peer's egress
            insn(0x85, imm=72),                             # bpf_sk_redirect_hash()
            insn(0xb7, 0, imm=1), insn(0x95),               # return SK_PASS
        ])
        prog = ctypes.create_string_buffer(code, len(code))
        lic = ctypes.create_string_buffer(b"GPL")
        log = ctypes.create_string_buffer(16384)
        try:
            self.prog = bpf(PROG_LOAD, struct.pack(
                "<IIQQIIQII16sII", PROG_SK_SKB, len(code) // 8, ctypes.addressof(prog), ctypes.addressof(lic),
                1, len(log), ctypes.addressof(log), 0, 0, b"aes_redirect", 0, 0))
        except OSError as exc:
            raise OSError(exc.errno, "%s; verifier: %s" % (exc.strerror, log.value.decode(errors="replace")))
        bpf(PROG_ATTACH, struct.pack("<IIII", self.verdict, self.prog, SK_SKB_VERDICT, 0))

    def _elem(self, cmd, map_fd, key, value=None):
        k = ctypes.create_string_buffer(struct.pack("<Q", key))
        v = ctypes.create_string_buffer(struct.pack("<Q", value or 0))
        bpf(cmd, struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(k), ctypes.addressof(v) if value else 0, 0))

    def attach(self, a, b):
        ca, cb = cookie(a), cookie(b)
        self._elem(MAP_UPDATE, self.redirect, ca, b.fileno())
        self._elem(MAP_UPDATE, self.redirect, cb, a.fileno())
        self.resume(a)
        self.resume(b)

    def pause(self, src):
        """src's data stays in its receive queue (TCP flow control works again)."""
        self._elem(MAP_DELETE, self.verdict, cookie(src))

    def resume(self, src):
        self._elem(MAP_UPDATE, self.verdict, cookie(src), src.fileno())
        # Data queued before insertion waits for the next sk_data_ready; this is one.
        src.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    def keys(self, map_fd):
        out, prev = [], None
        while True:
            k = ctypes.create_string_buffer(struct.pack("<Q", prev or 0))
            nk = ctypes.create_string_buffer(8)
            try:
                bpf(MAP_NEXT_KEY, struct.pack("<IIQQQ", map_fd, 0, 0 if prev is None else ctypes.addressof(k),
                                              ctypes.addressof(nk), 0))
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return out
                raise
            prev = struct.unpack("<Q", nk.raw)[0]
            out.append(prev)


def tcp_counts(sock):
    """(data bytes received, bytes handed to the send queue) from TCP_INFO."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    received = struct.unpack_from("<Q", raw, 128)[0] - (raw[0] in FIN_SEEN)
    notsent = struct.unpack_from("<I", raw, 144)[0]
    sent, retrans = struct.unpack_from("<QQ", raw, 200)
    return received, sent - retrans + notsent


# -- relays (each its own process in the namespace) ---------------------------------------
class Side:
    def __init__(self, sock):
        self.sock, self.fd = sock, sock.fileno()
        self.peer = self.pending = None
        self.eof = self.closed = self.paused = False
        self.base = (0, 0)
        self.pause_rx = self.pause_t = 0
        self.tail = b""
        self.fin_progress = (-1, 0.0)


def relay_main(mode, port, high=0, low=0, sndbuf=0):
    ks = Splice() if mode == "sockmap" else None
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(64)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    conns = {}
    fin_wait = []   # sides whose FIN waits until the kernel has handed their data to the peer
    active = []     # sockmap sides under flow control
    print("ready", flush=True)

    def close_pair(side):
        for s in (side, side.peer):
            if not s.closed:
                s.closed = True
                conns.pop(s.fd, None)
                s.sock.close()

    def end_of_stream(side):
        side.eof = True
        if side.peer.eof:
            close_pair(side)
        else:
            side.peer.sock.shutdown(socket.SHUT_WR)   # half-close: the other direction stays open

    while True:
        if high:
            now = time.monotonic()
            for side in list(active):
                if side.closed or side.eof:
                    active.remove(side)
                    continue
                rx = side.pause_rx if side.paused else tcp_counts(side.sock)[0]
                backlog = (rx - side.base[0]) - (tcp_counts(side.peer.sock)[1] - side.peer.base[1])
                try:
                    if not side.paused and backlog > high:
                        ks.pause(side.sock)
                        side.paused, side.pause_rx, side.pause_t = True, tcp_counts(side.sock)[0], now
                    elif side.paused and (backlog < low or now - side.pause_t > 0.005):
                        ks.resume(side.sock)
                        side.paused = False
                except OSError:
                    # ENOENT: TCP took the socket out of the maps (it closed); EOPNOTSUPP: the
                    # FIN came while paused (the end-of-stream path copies the rest).
                    active.remove(side)
        for side in list(fin_wait):
            if side.closed:
                fin_wait.remove(side)
                continue
            if side.paused:
                side.paused = False
                try:
                    ks.resume(side.sock)
                except OSError:
                    # Not ESTABLISHED any more (CLOSE_WAIT): a sockmap takes no such socket
                    # (EOPNOTSUPP). All its data is in, so read the rest here and write it
                    # once the kernel has handed over what it redirected before.
                    side.tail = bytearray()
                    while True:
                        d = side.sock.recv(1 << 20)
                        if not d:
                            break
                        side.tail += d
            rx = tcp_counts(side.sock)[0] - side.base[0] - len(side.tail)
            handed = tcp_counts(side.peer.sock)[1] - side.peer.base[1]
            if handed != side.fin_progress[0]:
                side.fin_progress = (handed, time.monotonic())
            elif time.monotonic() - side.fin_progress[1] > 2.0:
                # Nothing moved for 2 s and bytes are missing: the kernel dropped them.
                print("relay: %d of %d bytes received on one side never reached the other: lost" % (
                    rx - handed, rx), file=sys.stderr, flush=True)
                fin_wait.remove(side)
                for s in (side, side.peer):
                    s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                close_pair(side)
                continue
            if handed >= rx:
                fin_wait.remove(side)
                if side.tail:
                    side.peer.sock.setblocking(True)
                    side.peer.sock.sendall(side.tail)
                    side.peer.sock.setblocking(False)
                end_of_stream(side)
        timeout = 0.0005 if fin_wait or (high and active) else -1
        for fd, ev in ep.poll(timeout):
            if fd == lsock.fileno():
                c, _unused = lsock.accept()
                o = socket.create_connection(ORIGIN)
                sc, so = Side(c), Side(o)
                sc.peer, so.peer = so, sc
                for s in (sc, so):
                    s.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.sock.setblocking(False)
                    conns[s.fd] = s
                if ks:
                    for s in (sc, so):
                        if sndbuf:
                            s.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf)
                        # nothing read by userspace yet: base = bytes already in the send queue (0)
                        s.base = (0, tcp_counts(s.sock)[1])
                    ks.attach(c, o)
                    for s in (sc, so):
                        ep.register(s.fd, select.EPOLLRDHUP)   # the kernel moves the data
                        active.append(s)
                else:
                    for s in (sc, so):
                        ep.register(s.fd, select.EPOLLIN | select.EPOLLRDHUP)
                continue
            side = conns.get(fd)
            if side is None:
                continue
            if ks:
                if ev & select.EPOLLRDHUP and not side.eof and side not in fin_wait:
                    side.fin_progress = (-1, time.monotonic())
                    fin_wait.append(side)
                    ep.modify(fd, 0)
                elif ev & (select.EPOLLERR | select.EPOLLHUP):
                    close_pair(side)
                continue
            if ev & select.EPOLLOUT:   # side can take what its peer read
                peer = side.peer
                try:
                    n = side.sock.send(peer.pending)
                except BlockingIOError:
                    n = 0
                except OSError:
                    close_pair(side)
                    continue
                peer.pending = peer.pending[n:] or None
                if peer.pending is None:
                    ep.modify(fd, 0 if side.eof else select.EPOLLIN | select.EPOLLRDHUP)
                    if peer.eof:
                        end_of_stream(peer)
                    else:
                        ep.modify(peer.fd, select.EPOLLIN | select.EPOLLRDHUP)
                continue
            if side.pending is not None or side.eof:
                continue
            try:
                n = side.sock.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                close_pair(side)
                continue
            if n == 0:
                ep.modify(fd, 0)
                end_of_stream(side)
                continue
            try:
                m = side.peer.sock.send(view[:n])
            except BlockingIOError:
                m = 0
            except OSError:
                close_pair(side)
                continue
            if m < n:
                side.pending = bytes(view[m:n])
                ep.modify(fd, 0)
                ep.modify(side.peer.fd, select.EPOLLOUT)


# -- checks ------------------------------------------------------------------------------
def _pair():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    c = socket.create_connection(ls.getsockname())
    a, _unused = ls.accept()
    ls.close()
    return c, a


def _read(sock, limit, timeout):
    sock.settimeout(timeout)
    out = bytearray()
    try:
        while len(out) < limit:
            d = sock.recv(1 << 20)
            if not d:
                break
            out += d
    except socket.timeout:
        pass
    return bytes(out)


def _mem_available_mib():
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def checks_main():
    ks = Splice()
    pattern = bytes(random.getrandbits(8) for _unused in range(300000))

    def chain():   # client -> a (relay) ... b (relay) -> origin
        cli, a = _pair()
        b, org = _pair()
        return cli, a, b, org

    # 1. queued before insertion, without and with the SO_RCVLOWAT kick; and a partial read.
    for read_first, kick in ((0, False), (0, True), (10, True)):
        cli, a, b, org = chain()
        cli.sendall(pattern)
        time.sleep(0.05)
        if read_first:
            b.sendall(a.recv(read_first))
        ca, cb = cookie(a), cookie(b)
        ks._elem(MAP_UPDATE, ks.redirect, ca, b.fileno())
        ks._elem(MAP_UPDATE, ks.redirect, cb, a.fileno())
        for s in (a, b):
            ks._elem(MAP_UPDATE, ks.verdict, cookie(s), s.fileno())
            if kick:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        got = _read(org, len(pattern) + 1, 0.5)
        extra = ""
        if not kick:
            cli.sendall(b"more")
            got += _read(org, len(pattern) + 5, 0.5)
            extra = " (after 4 more bytes arrived: %d)" % len(got)
        print("queued before insert, userspace read %2d bytes first, SO_RCVLOWAT kick %-5s: origin got %d of %d, "
              "byte-exact %s%s" % (read_first, kick, len(got), len(pattern), got == pattern, extra))
        for s in (cli, a, b, org):
            s.close()
    # 2. both directions, FIN after data, half-close, counters.
    cli, a, b, org = chain()
    base_a, base_b = (0, tcp_counts(a)[1]), (0, tcp_counts(b)[1])
    ks.attach(a, b)
    threading.Thread(target=cli.sendall, args=(pattern,)).start()
    got = _read(org, len(pattern), 2)
    org.sendall(pattern[::-1])
    back = _read(cli, len(pattern), 2)
    cli.shutdown(socket.SHUT_WR)
    ep = select.epoll()
    ep.register(a.fileno(), select.EPOLLRDHUP)
    rdhup = bool(ep.poll(1))
    rx = tcp_counts(a)[0] - base_a[0]
    tx = tcp_counts(b)[1] - base_b[1]
    print("client->origin byte-exact %s, origin->client byte-exact %s; after the client's FIN: EPOLLRDHUP %s, "
          "a received %d data bytes, b handed %d" % (got == pattern, back == pattern[::-1], rdhup, rx, tx))
    b.shutdown(socket.SHUT_WR)
    org.settimeout(2)
    eof = org.recv(10) == b""
    org.sendall(b"still open")
    print("origin sees EOF after the data: %s; origin->client after half-close: %r" % (eof, _read(cli, 10, 2)))
    print("sockhash entries: %d verdict + %d redirect" % (len(ks.keys(ks.verdict)), len(ks.keys(ks.redirect))), end="")
    for s in (cli, a, b, org):
        s.close()
    time.sleep(0.1)
    print("; after close: %d + %d" % (len(ks.keys(ks.verdict)), len(ks.keys(ks.redirect))))
    # 3. a receiver that never reads.
    cli, a, b, org = chain()
    ks.attach(a, b)
    cli.setblocking(False)
    chunk = b"x" * (1 << 20)

    def push(seconds):
        sent, t_end = 0, time.monotonic() + seconds
        while time.monotonic() < t_end:
            try:
                sent += cli.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)
        return sent

    m0 = _mem_available_mib()
    sent = push(2)
    with open("/proc/net/sockstat") as fh:
        tcp_mem = [ln.strip() for ln in fh if ln.startswith("TCP:")][0]
    print("receiver not reading, 2 s: client sent %d MiB, the origin received %d KiB, MemAvailable -%d MiB; "
          "sockstat %s" % (sent >> 20, (tcp_counts(org)[0]) >> 10, m0 - _mem_available_mib(), tcp_mem))
    ks.pause(a)
    time.sleep(0.1)
    more = push(1)
    print("after deleting a from the verdict map: client could send %d MiB more in 1 s (socket buffers)" % (more >> 20))
    ks.resume(a)
    total = len(_read(org, sent + more, 5))
    print("after re-inserting a and reading at the origin: %d of %d bytes arrived" % (total, sent + more))
    for s in (cli, a, b, org):
        s.close()
    # 4. privileges.
    for caps in ("-all", "-all,+bpf", "-all,+net_admin", "-all,+bpf,+net_admin", "-all,+sys_admin"):
        out = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=" + caps, PY, os.path.abspath(__file__),
                              "open"], capture_output=True, text=True, check=False)
        print("bounding set %-22s %s" % (caps + ":", (out.stdout + out.stderr).strip().splitlines()[-1]))


# -- measurement -----------------------------------------------------------------------------
VARIANTS = [   # name, relay arguments (None: direct)
    ("direct", None),
    ("copy relay", ["copy", 9101]),
    ("sockmap", ["sockmap", 9102]),
    ("sockmap sndbuf 64M", ["sockmap", 9103, 0, 0, 64 << 20]),
    ("sockmap bounded", ["sockmap", 9104, 4 << 20, 1 << 20]),
]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "relay":
        relay_main(sys.argv[2], *[int(x) for x in sys.argv[3:]])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "open":
        try:
            Splice()
            print("sockhash + SK_SKB program: ok")
        except OSError as exc:
            print("sockhash + SK_SKB program: %s" % exc)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("what", nargs="?", default="bench", choices=["bench", "checks"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bytes", type=int, default=1 << 30)
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespace, bpf)")
    ns = "aes%06x" % random.getrandbits(24)
    sh(["ip", "netns", "add", ns])
    procs = []
    try:
        sh(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        if args.what == "checks":
            subprocess.run(["ip", "netns", "exec", ns, PY, os.path.abspath(__file__), "_checks"], check=True)
            return
        origin = subprocess.Popen(["ip", "netns", "exec", ns, PY, LOAD, "serve", "%s:%d" % ORIGIN])
        procs.append(origin)
        targets = []
        for name, relay in VARIANTS:
            if relay is None:
                targets.append((name, ORIGIN[1], None))
                continue
            p = subprocess.Popen(["ip", "netns", "exec", ns, PY, os.path.abspath(__file__), "relay"]
                                 + [str(x) for x in relay], stdout=subprocess.PIPE, text=True)
            procs.append(p)
            if p.stdout.readline().strip() != "ready":
                raise SystemExit("relay %s did not start" % name)
            targets.append((name, relay[1], p))
        time.sleep(0.5)
        gib = args.bytes / 2**30
        runs = {t[0]: [] for t in targets}
        failures = {}
        for rnd in range(args.rounds):
            for name, port, proc in targets:
                pc0 = cpu_seconds(proc.pid) if proc else 0.0
                m0 = machine_busy_seconds()
                try:
                    out = sh(["ip", "netns", "exec", ns, PY, LOAD, "bulk", "127.0.0.1:%d" % port, str(args.bytes)],
                             timeout=120).stdout
                except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
                    print("round %d %-20s failed: %s" % (rnd + 1, name, "timed out" if isinstance(
                        exc, subprocess.TimeoutExpired) else (exc.stderr or "").strip().splitlines()[-1:]),
                        file=sys.stderr, flush=True)
                    failures[name] = failures.get(name, 0) + 1
                    continue
                res = json.loads(out.strip().splitlines()[-1])
                res["machine_cpu_s_per_gib"] = (machine_busy_seconds() - m0) / gib
                res["proxy_cpu_s_per_gib"] = (cpu_seconds(proc.pid) - pc0) / gib if proc else None
                runs[name].append(res)
                print("round %d %-20s %6.2f Gbit/s  relay %s  machine %.2f CPU-s/GiB" % (
                    rnd + 1, name, res["gbit_s"],
                    "-" if proc is None else "%.2f" % res["proxy_cpu_s_per_gib"],
                    res["machine_cpu_s_per_gib"]), file=sys.stderr, flush=True)
    finally:
        for p in procs:
            p.kill()
        subprocess.run("ip netns pids %s | xargs -r kill -9" % ns, shell=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    direct = max(r["gbit_s"] for r in runs["direct"])
    print("| target | Gbit/s (best of %d) | x direct | relay CPU-s/GiB | machine CPU-s/GiB | failed runs |" % args.rounds)
    print("|---|---|---|---|---|---|")
    summary = {}
    for name, _unused1, proc in targets:
        if not runs[name]:
            print("| %s | - | - | - | - | %d |" % (name, failures.get(name, 0)))
            continue
        best = max(runs[name], key=lambda r: r["gbit_s"])
        summary[name] = {"gbit_s": best["gbit_s"], "ratio": best["gbit_s"] / direct,
                         "relay_cpu_s_per_gib": min(r["proxy_cpu_s_per_gib"] or 0 for r in runs[name]) if proc else None,
                         "machine_cpu_s_per_gib": min(r["machine_cpu_s_per_gib"] for r in runs[name])}
        s = summary[name]
        s["failed_runs"] = failures.get(name, 0)
        relay_cpu = "-" if proc is None else "%.2f" % s["relay_cpu_s_per_gib"]
        row = (name, s["gbit_s"], s["ratio"], relay_cpu, s["machine_cpu_s_per_gib"], s["failed_runs"])
        print("| %s | %.2f | %.2f | %s | %.2f | %d |" % row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"kernel": os.uname().release, "nproc": os.cpu_count(), "bytes": args.bytes,
                       "summary": summary, "runs": runs}, fh, indent=2)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_checks":
        checks_main()
    else:
        main()
