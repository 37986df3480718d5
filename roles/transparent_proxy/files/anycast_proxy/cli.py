"""Command line: run, --check-config, --self-test, --drain."""
import argparse
import asyncio
import os
import socket
import sys

from . import __version__
from .config import ConfigError, load_config
from .sd_notify import Notifier, listen_fds

PROG = "anycast-proxy"


def _parser():
    p = argparse.ArgumentParser(prog=PROG, description="Transparent TCP/UDP proxy for TPROXY-steered traffic.")
    p.add_argument("--config", metavar="FILE", help="JSON configuration to run with")
    p.add_argument("--check-config", metavar="FILE", help="validate FILE and exit (status 2 when invalid)")
    p.add_argument("--self-test", action="store_true",
                   help="check this host's AnyIP routes, TPROXY rules and capabilities for --config, then exit")
    p.add_argument("--drain", action="store_true",
                   help="run the drain service: finish the connections that stopping proxies hand over "
                        "(on the socket systemd gives, or --drain-listen)")
    p.add_argument("--drain-listen", metavar="PATH", help="with --drain and no socket from systemd: bind PATH")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--worker", metavar="INDEX:FD", help=argparse.SUPPRESS)
    p.add_argument("--listener-fds", metavar="FD,...", help=argparse.SUPPRESS)
    return p


def _new_loop():
    """ANYCAST_PROXY_LOOP: auto (uvloop if installed, else dataplane), uvloop, dataplane, asyncio."""
    choice = os.environ.get("ANYCAST_PROXY_LOOP", "auto")
    if choice in ("auto", "uvloop"):
        try:
            import uvloop  # optional: used when installed
            return uvloop.new_event_loop()
        except ImportError:
            if choice == "uvloop":
                raise
    if choice == "asyncio":
        # The plain loop: relayed sockets go on a nested epoll (as under uvloop).
        return asyncio.new_event_loop()
    from .poller import new_event_loop
    return new_event_loop()


def _load(path):
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{PROG}: config error in {path}: {exc}", file=sys.stderr)
        return None


def _run(runner):
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(runner.run())
    except PermissionError as exc:
        runner.log.error(str(exc))
        return 1
    except OSError as exc:
        runner.log.error(exc.strerror if exc.strerror else str(exc))
        return 1
    finally:
        loop.close()


def _drain(args):
    from .drain import DrainServer, bind_drain_socket
    from .log import Log
    log = Log("info")
    given = listen_fds()
    if given:
        listener = given[0]
    elif args.drain_listen:
        listener = bind_drain_socket(args.drain_listen)
    else:
        _parser().error("--drain needs a socket from systemd (a socket unit) or --drain-listen PATH")
    return _run(DrainServer(listener, log, Notifier(os.environ)))


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.drain:
        return _drain(args)
    if args.check_config:
        config = _load(args.check_config)
        if config is None:
            return 2
        print(f"{args.check_config}: OK ({len(config.routes)} routes, {len(config.listen)} listeners, "
              f"{config.workers} workers)")
        return 0
    if not args.config:
        _parser().error("--config FILE is required (or --check-config FILE)")
    config = _load(args.config)
    if config is None:
        return 2
    if args.self_test:
        from .selftest import run_self_test
        return run_self_test(config)

    if args.worker:
        index, fd = (int(x) for x in args.worker.split(":"))
        given = [socket.socket(fileno=int(fd)) for fd in args.listener_fds.split(",") if fd.isdigit()]
        return run_worker(args.config, config, index, socket.socket(fileno=fd), given)

    from .listeners import Listeners
    from .log import Log
    from .server import ProxyServer
    from .supervisor import Supervisor
    log = Log(config.log_level)
    notifier = Notifier(os.environ)
    listeners = Listeners(listen_fds())     # from systemd's socket unit
    if config.workers > 1:
        runner = Supervisor(args.config, config, log, notifier, listeners)
    else:
        runner = ProxyServer(args.config, config, log, notifier, listeners)
    return _run(runner)


def run_worker(config_path, config, index, control, given):
    """Worker INDEX of a supervisor: the proxy on the GIVEN listeners, answering the supervisor on CONTROL.

    Entered from the command line (a worker the supervisor started again) or in a fork of the
    supervisor (supervisor.py: the workers of a start)."""
    from .listeners import Listeners
    from .log import Log
    from .server import ProxyServer
    log = Log(config.log_level, f"worker {index}: ")
    return _run(ProxyServer(config_path, config, log, Notifier({}), Listeners(given), worker=(index, control)))
