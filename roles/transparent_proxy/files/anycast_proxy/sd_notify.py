"""systemd's notification protocol (sd_notify) and socket activation (sd_listen_fds), without libsystemd."""
import os
import socket
import time


class Notifier:
    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        path = environ.get("NOTIFY_SOCKET")
        self.address = None
        if path:
            # A leading '@' names an abstract socket.
            self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_interval = None
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            # Ping at half the deadline, as sd_watchdog_enabled(3) advises.
            self.watchdog_interval = int(usec) / 2e6

    @property
    def enabled(self):
        return self.address is not None

    def notify(self, *fields):
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
            return True
        except OSError:
            return False

    def ready(self, status="listening"):
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self):
        # MONOTONIC_USEC lets Type=notify-reload (systemd >= 253) match this to its SIGHUP.
        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self):
        return self.notify("STOPPING=1")

    def status(self, text):
        return self.notify(f"STATUS={text}")

    def watchdog(self):
        return self.notify("WATCHDOG=1")


SD_LISTEN_FDS_START = 3


def listen_fds(environ=None):
    """Descriptors systemd passed to this process (LISTEN_FDS, for LISTEN_PID), as sockets.

    The variables are removed, so that processes started from here do not take them for theirs.
    """
    environ = os.environ if environ is None else environ
    pid, count = environ.pop("LISTEN_PID", None), environ.pop("LISTEN_FDS", None)
    environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not count or not count.isdigit():
        return []
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        socks.append(socket.socket(fileno=fd))
    return socks
