"""The drain service waits on standby until its first hand-over, then exits once idle.

roles/transparent_proxy/files/anycast_proxy/drain.py with a real unix socket and
event loop; a hand-over of zero connections stands for one that has drained. The
hand-over of real connections is tested in tests/integration/test_proxy_restart.py.
"""
import asyncio
import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'roles', 'transparent_proxy', 'files'))

from anycast_proxy.channel import Channel  # noqa: E402
from anycast_proxy.drain import DrainServer, bind_drain_socket  # noqa: E402
from anycast_proxy.handoff import VERSION  # noqa: E402
from anycast_proxy.log import Log  # noqa: E402
from anycast_proxy.sd_notify import Notifier  # noqa: E402

LINGER = 0.5


def run_drain(path, client=None, timeout=3.0):
    """Run a drain service on PATH for up to TIMEOUT s (CLIENT runs beside it); seconds it ran, or None."""
    async def main():
        server = DrainServer(bind_drain_socket(path), Log('error'), Notifier({}), linger=LINGER)
        started = time.monotonic()
        task = asyncio.ensure_future(server.run())
        if client is not None:
            await client()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.TimeoutError:
            task.cancel()
            return None
        return time.monotonic() - started
    return asyncio.run(main())


def test_without_a_hand_over_the_drain_service_stays_on_standby(tmp_path):
    assert run_drain(str(tmp_path / 'drain.sock'), timeout=4 * LINGER) is None


def test_after_a_hand_over_it_exits_once_idle(tmp_path):
    path = str(tmp_path / 'drain.sock')

    async def hand_over_nothing():
        await asyncio.sleep(0.2)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, path)
        channel = Channel(sock)
        await channel.send({'hello': VERSION, 'pid': 1, 'settings': {'drain_timeout': 5}})
        channel.close()

    ran = run_drain(path, hand_over_nothing, timeout=10 * LINGER)
    assert ran is not None and ran >= 0.2 + LINGER, ran
