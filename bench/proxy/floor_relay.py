"""The least a CPython TCP relay can do per connection: a floor for anycast-proxy's CPU figures.

    floor_relay.py LISTEN_HOST:PORT ORIGIN_HOST:PORT

One process, one edge-triggered epoll loop, a transparent listener; per connection exactly the
system calls anycast-proxy makes (accept4, getsockname for the original destination, socket,
connect, two epoll_ctl, setsockopt, recv/send each way, shutdown, close x2) and nothing else: no
route table, no metrics, no timeouts, no backpressure, no asyncio. Its CPU per short connection,
measured beside anycast-proxy and HAProxy (bench/proxy/run.py --floor), is what the interpreter
costs for this work whatever the proxy's design. Not for production: it drops what a peer does not
take at once.
"""
import _socket
import select
import socket
import sys

IN, OUT, RDHUP, ET = select.EPOLLIN, select.EPOLLOUT, select.EPOLLRDHUP, select.EPOLLET
DONTWAIT = socket.MSG_DONTWAIT
DONTWAIT_MORE = DONTWAIT | socket.MSG_MORE


def main(listen, origin):
    host, port = listen.rsplit(":", 1)
    ohost, oport = origin.rsplit(":", 1)
    origin_addr = (ohost, int(oport))
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.setsockopt(socket.SOL_IP, 19, 1)   # IP_TRANSPARENT
    lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lsock.bind((host, int(port)))
    lsock.listen(4096)
    lsock.setblocking(False)
    lfd = lsock.fileno()
    ep = select.epoll()
    ep.register(lfd, IN)
    peer = {}        # fd -> [own socket, peer socket, connected?, eof read?]
    buf = bytearray(65536)
    view = memoryview(buf)
    while True:
        for fd, ev in ep.poll():
            if fd == lfd:
                while True:
                    try:
                        cfd, _addr = lsock._accept()
                    except BlockingIOError:
                        break
                    client = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, cfd)
                    client.getsockname()   # the original destination (a real proxy routes on it)
                    org = _socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                    org.connect_ex(origin_addr)
                    c = [client, org, True, False]
                    o = [org, client, False, False]
                    peer[cfd] = c
                    peer[org.fileno()] = o
                    ep.register(cfd, IN | RDHUP | ET)
                    ep.register(org.fileno(), IN | OUT | RDHUP | ET)
                continue
            entry = peer.get(fd)
            if entry is None:
                continue
            own, other = entry[0], entry[1]
            if ev & OUT and not entry[2]:
                entry[2] = True   # the origin's connect finished
                own.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not ev & IN:
                continue
            try:
                n = own.recv_into(buf, 65536, DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if n:
                try:
                    other.send(view[:n], DONTWAIT_MORE if ev & RDHUP else DONTWAIT)
                except OSError:
                    pass
                if not ev & RDHUP:
                    continue
            entry[3] = True
            back = peer[other.fileno()]
            if back[3]:
                del peer[fd], peer[other.fileno()]
                own.close()
                other.close()
            else:
                try:
                    other.shutdown(socket.SHUT_WR)
                except OSError:
                    pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
