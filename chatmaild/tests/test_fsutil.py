"""Durable files and per-account locks (fsutil): the lock survives its file being removed."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import pytest

from chatmaild import fsutil


@pytest.mark.parametrize(
    ("name", "temporary"),
    [
        (".password.1234.98765432101234.tmp", True),
        (".metadata.json.7.8.tmp", True),
        ("password", False),
        (".password.tmp", False),
        (".password.x.1.tmp", False),
        (".DeltaChat", False),
        ("password.lock", False),
    ],
)
def test_temporary_names_are_those_write_atomic_makes(name: str, temporary: bool) -> None:
    assert fsutil.is_temporary_name(name) == temporary


def test_write_atomic_leaves_only_the_target(tmp_path: Path) -> None:
    fsutil.write_atomic(tmp_path / "password", b"hash")
    assert [p.name for p in tmp_path.iterdir()] == ["password"]


def test_a_waiter_on_a_removed_lock_file_takes_the_new_one(tmp_path: Path) -> None:
    """A holder removes the lock file (as chatmail-expire does) while another thread waits on
    it and a third creates a new one: the waiter must not run beside the third."""
    lock = tmp_path / "password.lock"
    events: queue.Queue[str] = queue.Queue()
    go = threading.Event()

    def waiting(_: float) -> None:
        events.put("waiting")
        go.wait(10)
        go.clear()

    def waiter() -> None:
        with fsutil.file_lock(lock, timeout=30, sleep=waiting):
            events.put("inside")

    with fsutil.file_lock(lock, timeout=0):
        thread = threading.Thread(target=waiter)
        thread.start()
        assert events.get(timeout=10) == "waiting"  # it opened the old file and found it held
        lock.unlink()
    with fsutil.file_lock(lock, timeout=0):  # a new file, a new holder
        go.set()
        # the old file is free now, but it is not the lock any more: wait for the new one
        assert events.get(timeout=10) == "waiting"
        assert events.empty()
    go.set()
    assert events.get(timeout=10) == "inside"
    thread.join(10)
    assert lock.exists()


def test_a_held_lock_times_out_at_once_with_timeout_zero(tmp_path: Path) -> None:
    lock = tmp_path / "password.lock"
    with fsutil.file_lock(lock, timeout=0), pytest.raises(fsutil.LockTimeout):
        with fsutil.file_lock(lock, timeout=0):
            pass
    with fsutil.file_lock(lock, timeout=0):
        assert os.path.exists(lock)
