"""Durable files: every persistent file of the relay is written through `write_atomic`.

A reader sees either the old content or the new one, never a torn file: the data goes to a
temporary file in the same directory, is fsync'ed, then renamed over the target. A process
killed in between leaves the temporary file (`is_temporary_name`); chatmail-expire removes
old ones.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path


class LockTimeout(Exception):
    """Another holder kept the lock longer than we were willing to wait."""


# `.<name>.<pid>.<monotonic ns>.tmp`, as `write_atomic` names its temporary files
_TEMPORARY_NAME = re.compile(r"\.[^/]+\.[0-9]+\.[0-9]+\.tmp")


def is_temporary_name(name: str) -> bool:
    return _TEMPORARY_NAME.fullmatch(name) is not None


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(
    path: Path,
    timeout: float,
    poll: float = 0.005,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing), waiting at most `timeout` seconds.

    flock locks belong to the open file description, so this excludes other threads of the
    same process as well as other processes. A holder may remove the lock file before it lets
    go (chatmail-expire does, for old ones): whoever got the lock on the removed file then
    locks the file now at `path` instead, so two holders never run at once.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(str(path)) from None
                sleep(poll)
                continue
            if _is_named(fd, path):
                break
            newer = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            fd = newer
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _is_named(fd: int, path: Path) -> bool:
    """Whether `path` still names the open file `fd`."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
