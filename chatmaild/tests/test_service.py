"""What every service shares: the sockets systemd passes (counted for this process only), and
the loop handler that keeps failing accepts to one line a minute.

The real process out of descriptors is in test_dictserver.py; here the loop's exception
handler gets the contexts asyncio gives it, with a clock the test moves.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from chatmaild.service import ACCEPT_ERROR_MESSAGE, passed_socket_count, quiet_accept_errors


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def accept_failed(loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
    error = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    loop.call_exception_handler(
        {"message": ACCEPT_ERROR_MESSAGE, "exception": error, "socket": listener}
    )


def test_accept_failures_make_one_line_per_interval_with_their_count(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    quiet_accept_errors(loop, interval=60.0, clock=clock)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        for _ in range(1000):
            accept_failed(loop, listener)
        clock.now += 59.9
        for _ in range(500):
            accept_failed(loop, listener)
        clock.now += 0.1
        accept_failed(loop, listener)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "cannot accept connections (Too many open files): "
        "1 failed accept(s) since the last such line",
        "cannot accept connections (Too many open files): "
        "1500 failed accept(s) since the last such line",
    ]
    assert all(r.exc_info is None for r in caplog.records)  # no traceback
    assert "127.0.0.1" not in caplog.text  # the listening socket stays out of the log


def test_other_contexts_reach_the_handler_set_before(loop: asyncio.AbstractEventLoop) -> None:
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: seen.append(context))
    quiet_accept_errors(loop, clock=Clock())
    loop.call_exception_handler({"message": "Task exception was never retrieved"})
    assert seen == [{"message": "Task exception was never retrieved"}]


def test_other_contexts_reach_asyncio_s_default_handler(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_accept_errors(loop, clock=Clock())
    loop.call_exception_handler({"message": "something else", "exception": ValueError("x")})
    (record,) = caplog.records
    assert record.name == "asyncio" and record.getMessage() == "something else"
    assert record.exc_info is not None


def test_passed_sockets_are_counted_only_for_this_process() -> None:
    assert passed_socket_count({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, 42) == 1
    assert passed_socket_count({"LISTEN_PID": "41", "LISTEN_FDS": "1"}, 42) == 0
    assert passed_socket_count({"LISTEN_FDS": "1"}, 42) == 0
    assert passed_socket_count({"LISTEN_PID": "42", "LISTEN_FDS": "x"}, 42) == 0
