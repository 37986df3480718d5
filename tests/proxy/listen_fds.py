"""Run a command with sockets passed the way systemd's socket activation passes them.

    python3 listen_fds.py FD[,FD...] -- COMMAND [ARG...]

The descriptors (inherited from the caller) become 3, 4, ... of COMMAND, with
LISTEN_FDS and LISTEN_PID set for it; the tests' stand-in for a socket unit.
"""
import fcntl
import os
import sys


def main(argv):
    fds = [int(fd) for fd in argv[1].split(',') if fd]
    command = argv[argv.index('--') + 1:]
    # Out of the way first (above any target number): a given descriptor may be numbered 3 already.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    for fd in fds:
        os.close(fd)
    for index, fd in enumerate(moved):
        os.dup2(fd, 3 + index, inheritable=True)
        os.close(fd)
    os.environ['LISTEN_FDS'] = str(len(fds))
    os.environ['LISTEN_PID'] = str(os.getpid())
    os.execvp(command[0], command)


if __name__ == '__main__':
    main(sys.argv)
