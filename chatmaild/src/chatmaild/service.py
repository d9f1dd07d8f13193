"""What every chatmaild service does at start: log to stderr (journald), load the config,
take the socket systemd passes, keep asyncio's accept errors to one line a minute."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .config import Config, ConfigError, read_config

log = logging.getLogger("chatmaild")

# What asyncio's selector loop passes to the loop's exception handler for each accept() that
# fails with EMFILE, ENFILE, ENOBUFS or ENOMEM. It tries as many accepts as the listen backlog
# is long in one go, so out of descriptors the default handler logs that many lines, with a
# traceback each, every second.
ACCEPT_ERROR_MESSAGE = "socket.accept() out of system resource"


def setup_logging(verbose: bool = False) -> None:
    # No timestamps: journald adds them. No addresses, passwords or tokens in any message.
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(levelname)s: %(message)s",
    )


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def dict_service_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line every dict service shares: `<prog> SOCKET INI [--metrics-dir DIR]`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("socket", type=Path, help="unix socket to listen on")
    parser.add_argument("ini", type=Path, help="path of chatmail.ini")
    add_metrics_argument(parser)
    return parser


def add_metrics_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-dir",
        type=Path,
        default=None,
        help="write a snapshot of the service's counters here every few seconds "
        "(the relay uses /run/chatmail-metrics); none without it",
    )


def load_config_or_exit(path: Path) -> Config:
    try:
        return read_config(path)
    except ConfigError as e:
        fail(str(e))


LISTEN_FDS_START = 3  # sd_listen_fds(3): passed sockets start at fd 3


class NoSocket(Exception):
    """The process was not started by its systemd socket unit."""


def passed_socket_count(environ: dict[str, str], pid: int) -> int:
    """How many sockets systemd passed, from LISTEN_PID and LISTEN_FDS (sd_listen_fds(3))."""
    if environ.get("LISTEN_PID") != str(pid):
        return 0
    try:
        return max(0, int(environ.get("LISTEN_FDS", "0")))
    except ValueError:
        return 0


def systemd_socket(kind: socket.SocketKind) -> socket.socket:
    """The one unix socket of `kind` that the service's socket unit passed. systemd made it,
    with its owner, group and mode, before the service ran, and keeps it while the service
    restarts: a peer that connects meanwhile waits in its backlog."""
    count = passed_socket_count(dict(os.environ), os.getpid())
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for anything this process might start
    if count != 1:
        raise NoSocket(f"expected one socket from systemd (LISTEN_FDS), got {count}")
    try:
        sock = socket.socket(fileno=LISTEN_FDS_START)
    except OSError:
        raise NoSocket(f"descriptor {LISTEN_FDS_START} is not a socket") from None
    if sock.family != socket.AF_UNIX or sock.type != kind:
        sock.detach()  # not ours to close
        raise NoSocket(f"the socket systemd passed is not a unix {kind.name} socket")
    return sock


def quiet_accept_errors(
    loop: asyncio.AbstractEventLoop,
    interval: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Install a loop exception handler that logs failing accepts at most once per `interval`
    seconds, one line without traceback, with the count since the last line; every other
    context goes on to the handler set before (or asyncio's default one).

    The context's socket is never logged: its repr holds the listening address.
    """
    previous = loop.get_exception_handler()
    failures = 0
    last_line: float | None = None

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal failures, last_line
        if context.get("message") != ACCEPT_ERROR_MESSAGE:
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        failures += 1
        now = clock()
        if last_line is not None and now - last_line < interval:
            return
        error = context.get("exception")
        reason = error.strerror if isinstance(error, OSError) else type(error).__name__
        log.error(
            "cannot accept connections (%s): %d failed accept(s) since the last such line",
            reason,
            failures,
        )
        failures, last_line = 0, now

    loop.set_exception_handler(handle)
