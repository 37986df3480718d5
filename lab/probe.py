"""The lab's client side: connects to edges and tenants and prints JSON results.

  probe.py dial  --target NAME,PREFIX,EDGE_ADDRESS[|EDGE_ADDRESS...] [--target ...] --count N [--pace S]
      N connections per target to random addresses of PREFIX on random ports, each
      sending a line first (client-first, like HTTP)
      (the first target also gets ports 1 and 65535); each must reach the origin,
      which reports (PROXY v2) the client's real address and what was dialled,
      and sees the connection come from one of the EDGE_ADDRESSes (the edge that
      relayed it: through anycast, whichever the router's ECMP picked).
  probe.py flood --prefix PREFIX --count N --duration S [--rate R]
      new connections as fast as possible or R per second, bounded by N and S seconds; each is
      closed once the handshake is done (the kernel's rate limit acts there).
  probe.py steady --prefix PREFIX --count N --interval S
      N connections, one every S seconds; served means the origin answered.
  probe.py tcp --address A --port P [--timeout S]
      one connection that only reads (the server speaks first); reports its
      outcome and the answer line.
  probe.py timeline --prefix PREFIX [--prefix ...] --rate R --duration S [--timeout T]
      R new connections a second for S seconds, each in its own thread (a dial that
      hangs does not slow the others), to random addresses and ports of the prefixes
      in turn, client-first like dial; prints one JSON object per line: when the
      dial started (epoch seconds, the clock the containers share), its outcome and
      the edge the origin saw it come through and which origin answered. --stop-file F:
      stop early once F exists.
  probe.py origins [--metrics ADDRESS:PORT]
      (on an edge) the proxy's view of its origins from its metrics endpoint, as one JSON
      object: {"ROUTE ORIGIN": 1 or 0} (anycast_proxy_origin_up).
"""

import argparse
import errno
import ipaddress
import json
import os
import random
import re
import socket
import sys
import time


def random_address(prefix):
    network = ipaddress.ip_network(prefix)
    # Neither the first nor the last address: they are valid AnyIP addresses,
    # but a reader of the table should not wonder.
    offset = random.randint(1, network.num_addresses - 2)
    return str(network.network_address + offset)


def connect(address, port, timeout, send=b'', connect_only=False):
    """(outcome, answer dict or None, own address, seconds).

    send: bytes written before reading (a client-first protocol, like HTTP);
    without, the origin speaks first (a banner, like SMTP or SSH).
    connect_only: the outcome of the handshake alone ('ok' once connected).
    """
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    started = time.monotonic()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    own = None
    try:
        sock.connect((address, port))
        own = sock.getsockname()[0]
        if connect_only:
            return 'ok', None, own, time.monotonic() - started
        if send:
            sock.sendall(send)
        data = b''
        while not data.endswith(b'\n'):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data:
            return 'closed', None, own, time.monotonic() - started
        return 'ok', json.loads(data.decode()), own, time.monotonic() - started
    except socket.timeout:
        return 'timeout', None, own, time.monotonic() - started
    except ConnectionRefusedError:
        return 'refused', None, own, time.monotonic() - started
    except ConnectionResetError:
        return 'reset', None, own, time.monotonic() - started
    except OSError as error:
        return errno.errorcode.get(error.errno, str(error)), None, own, time.monotonic() - started
    finally:
        sock.close()


def cmd_dial(args):
    results = []
    first = True
    for target in args.target:
        # EDGE_ADDRESS may be several, separated by '|': through anycast any of them may answer.
        edge, prefix, edge_addresses = target.split(',', 2)
        ports = [random.randint(1, 65535) for dummy in range(args.count)]
        if first:
            ports[:2] = [1, 65535][:len(ports)]
            first = False
        for port in ports:
            address = random_address(prefix)
            outcome, answer, own, seconds = connect(address, port, args.timeout, send=b'HELLO\n')
            answer = answer or {}
            good = (outcome == 'ok' and answer.get('client') == own and answer.get('dialled') == address
                    and answer.get('dialled_port') == port and answer.get('edge') in edge_addresses.split('|'))
            results.append({'edge': edge, 'prefix': prefix, 'address': address, 'port': port,
                            'outcome': outcome, 'own': own, 'answer': answer, 'good': bool(good),
                            'ms': round(seconds * 1000, 1)})
            time.sleep(args.pace)
    print(json.dumps({'results': results}, sort_keys=True))


def cmd_flood(args):
    counts = {}
    started = time.monotonic()
    attempts = 0
    while attempts < args.count and time.monotonic() - started < args.duration:
        if args.rate:
            time.sleep(max(0.0, started + attempts / args.rate - time.monotonic()))
        outcome = connect(random_address(args.prefix), random.randint(1, 65535), args.timeout,
                          connect_only=True)[0]
        counts[outcome] = counts.get(outcome, 0) + 1
        attempts += 1
    print(json.dumps({'attempts': attempts, 'counts': counts,
                      'seconds': round(time.monotonic() - started, 3)}, sort_keys=True))


def cmd_steady(args):
    counts = {}
    started = time.monotonic()
    for index in range(args.count):
        outcome = connect(random_address(args.prefix), random.randint(1, 65535), args.timeout,
                          send=b'HELLO\n')[0]
        counts[outcome] = counts.get(outcome, 0) + 1
        next_start = started + (index + 1) * args.interval
        time.sleep(max(0.0, next_start - time.monotonic()))
    print(json.dumps({'attempts': args.count, 'counts': counts,
                      'seconds': round(time.monotonic() - started, 3)}, sort_keys=True))


def cmd_tcp(args):
    outcome, answer, own, seconds = connect(args.address, args.port, args.timeout)
    print(json.dumps({'address': args.address, 'port': args.port, 'outcome': outcome, 'answer': answer,
                      'own': own, 'ms': round(seconds * 1000, 1)}, sort_keys=True))


def cmd_timeline(args):
    import threading
    lock = threading.Lock()
    started = time.time()
    threads = []

    def one(index, prefix):
        began = time.time()
        outcome, answer, own, seconds = connect(random_address(prefix), random.randint(1, 65535), args.timeout,
                                                send=b'HELLO\n')
        line = json.dumps({'i': index, 't': round(began, 3), 'outcome': outcome, 'ms': round(seconds * 1000, 1),
                           'edge': (answer or {}).get('edge'), 'origin': (answer or {}).get('origin'),
                           'prefix': prefix}, sort_keys=True)
        with lock:
            print(line, flush=True)

    index = 0
    while time.time() - started < args.duration and not (args.stop_file and os.path.exists(args.stop_file)):
        time.sleep(max(0.0, started + index / args.rate - time.time()))
        thread = threading.Thread(target=one, args=(index, args.prefix[index % len(args.prefix)]))
        thread.start()
        threads.append(thread)
        index += 1
    for thread in threads:
        thread.join()


def cmd_origins(args):
    from urllib.request import urlopen
    with urlopen('http://%s/metrics' % args.metrics, timeout=5) as response:
        text = response.read().decode()
    state = {}
    for line in text.splitlines():
        match = re.match(r'anycast_proxy_origin_up\{(.*)\} (\S+)$', line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            state['%s %s' % (labels.get('route'), labels.get('origin'))] = int(float(match.group(2)))
    print(json.dumps(state, sort_keys=True))


def main():
    parser = argparse.ArgumentParser(description='lab client probes')
    sub = parser.add_subparsers(dest='command', required=True)
    dial = sub.add_parser('dial')
    dial.add_argument('--target', action='append', required=True)
    dial.add_argument('--count', type=int, default=8)
    dial.add_argument('--pace', type=float, default=0.02)
    dial.add_argument('--timeout', type=float, default=5)
    flood = sub.add_parser('flood')
    flood.add_argument('--prefix', required=True)
    flood.add_argument('--count', type=int, default=300)
    flood.add_argument('--duration', type=float, default=5)
    flood.add_argument('--rate', type=float, default=0, help='attempts per second (0: as fast as possible)')
    flood.add_argument('--timeout', type=float, default=2)
    steady = sub.add_parser('steady')
    steady.add_argument('--prefix', required=True)
    steady.add_argument('--count', type=int, default=20)
    steady.add_argument('--interval', type=float, default=0.1)
    steady.add_argument('--timeout', type=float, default=3)
    tcp = sub.add_parser('tcp')
    tcp.add_argument('--address', required=True)
    tcp.add_argument('--port', type=int, required=True)
    tcp.add_argument('--timeout', type=float, default=3)
    timeline = sub.add_parser('timeline')
    timeline.add_argument('--prefix', action='append', required=True)
    timeline.add_argument('--rate', type=float, default=20)
    timeline.add_argument('--duration', type=float, default=10)
    timeline.add_argument('--timeout', type=float, default=3)
    timeline.add_argument('--stop-file', help='stop dialling once this file exists')
    origins = sub.add_parser('origins')
    origins.add_argument('--metrics', default='127.0.0.1:9464')
    args = parser.parse_args()
    {'dial': cmd_dial, 'flood': cmd_flood, 'steady': cmd_steady, 'tcp': cmd_tcp,
     'timeline': cmd_timeline, 'origins': cmd_origins}[args.command](args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
