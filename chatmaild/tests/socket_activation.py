"""Start a service the way its systemd socket unit does: the listening socket on fd 3,
LISTEN_PID set to the service's own pid and LISTEN_FDS=1 (sd_listen_fds(3))."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import IO, Any

# A shim that moves the socket to fd 3, sets the variables and execs the command, so that the
# pid stays the one LISTEN_PID names. (dash cannot move descriptors past 9.)
SHIM = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(sys.argv[2], sys.argv[2:])
"""


def popen_with_socket(
    listen: socket.socket | IO[Any], command: list[str], **kwargs: Any
) -> subprocess.Popen[Any]:
    """Run `command` with `listen` passed as systemd passes it, then close our copy: the
    process holds the socket now, as it would under systemd."""
    try:
        return subprocess.Popen(
            [sys.executable, "-c", SHIM, str(listen.fileno()), *command],
            pass_fds=[listen.fileno()],
            **kwargs,
        )
    finally:
        listen.close()
