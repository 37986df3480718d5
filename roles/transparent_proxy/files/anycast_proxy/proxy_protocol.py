"""PROXY protocol headers (HAProxy's spec, versions 1 and 2) towards origins.

The source is the client's address, the destination the address and port it
dialled (the original destination that TPROXY preserved).
"""
import socket
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_CMD_PROXY = 0x21  # version 2, command PROXY
_V2_CMD_LOCAL = 0x20  # version 2, command LOCAL
_FAM = {
    (socket.AF_INET, socket.SOCK_STREAM): 0x11,
    (socket.AF_INET, socket.SOCK_DGRAM): 0x12,
    (socket.AF_INET6, socket.SOCK_STREAM): 0x21,
    (socket.AF_INET6, socket.SOCK_DGRAM): 0x22,
}


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _unmap(host):
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is written as IPv4."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def header_v1(src, dst):
    """src, dst: (host, port, ...) tuples of a TCP connection."""
    shost, dhost = _unmap(src[0]), _unmap(dst[0])
    fam = _family(shost)
    if fam != _family(dhost):
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP6" if fam == socket.AF_INET6 else "TCP4"
    return f"PROXY {proto} {shost} {dhost} {src[1]} {dst[1]}\r\n".encode("ascii")


def header_v2(src, dst, sock_type=socket.SOCK_STREAM):
    shost, dhost = _unmap(src[0]), _unmap(dst[0])
    fam = _family(shost)
    if fam != _family(dhost):
        # Mixed families cannot be expressed: LOCAL-less UNSPEC keeps the stream valid.
        return V2_SIGNATURE + bytes([_V2_CMD_PROXY, 0x00]) + b"\x00\x00"
    addrs = (socket.inet_pton(fam, shost) + socket.inet_pton(fam, dhost)
             + struct.pack("!HH", src[1], dst[1]))
    return V2_SIGNATURE + bytes([_V2_CMD_PROXY, _FAM[(fam, sock_type)]]) + struct.pack("!H", len(addrs)) + addrs


def header(version, src, dst, sock_type=socket.SOCK_STREAM):
    if version == "v1":
        return header_v1(src, dst)
    if version == "v2":
        return header_v2(src, dst, sock_type)
    return b""


def local_header(version):
    """A LOCAL header (a connection of the proxy's own: a health check), as HAProxy's
    check-send-proxy sends it; b"" without PROXY protocol."""
    if version == "v1":
        return b"PROXY UNKNOWN\r\n"
    if version == "v2":
        return V2_SIGNATURE + bytes([_V2_CMD_LOCAL, 0x00]) + b"\x00\x00"
    return b""
