"""quota-expire: makes room in a mailbox that crossed its quota warning.

Dovecot's `quota_warning = storage=75%%` runs `chatmail-quota-expire <target_mb> <mailbox>`
as vmail, with the target at 70 % of `max_mailbox_size`. This deletes the oldest messages
until the mailbox holds at most the target, so delivery is never refused for quota under
normal traffic: old mail gives way to new.

- A message's time and size come from its Maildir file name, `<unix time>.<unique>,S=<size>
  ,W=<vsize>:2,<flags>` (the size Dovecot's quota counts, uncompressed). A name without a
  leading time or without `,S=` falls back to the file's mtime or size on disk.
- Messages are those in every `cur` and `new` directory of the mailbox, at any folder depth
  (the quota covers all folders, so `.DeltaChat/cur` counts too); `tmp` is never touched.
- A message less than 24 h old is never deleted, even if the target is not reached, so that
  a looping sender still fills the quota and the user's device learns about it.
- If anything was deleted, `maildirsize` is removed so Dovecot recalculates the quota.

The daily expiry (`chatmaild.expire`) reuses `select_over_target` for its step 4.

Usage: chatmail-quota-expire TARGET_MB MAILBOX_PATH
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import stat
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NoReturn

from .service import fail, setup_logging

log = logging.getLogger("quota_expire")

DAY = 86400
PROTECTED_AGE = DAY  # never delete mail younger than this
MAILDIR_SUBDIRS = frozenset({"cur", "new", "tmp"})
QUOTA_SUBDIRS = frozenset({"cur", "new"})
MAILDIRSIZE_FILE = "maildirsize"

_TIME_RE = re.compile(r"^(\d+)\.")
_SIZE_RE = re.compile(r",S=(\d+)")


@dataclass(frozen=True, order=True)
class Message:
    """One message file: ordered by time first, so sorting puts the oldest first."""

    time: float
    size: int
    relpath: str  # relative to the mailbox directory, '/'-separated


def parse_name(name: str) -> tuple[int | None, int | None]:
    """The (unix time, size) a Dovecot Maildir file name carries; None where it has none."""
    base = name.split(":", 1)[0]  # the part after ':' holds the flags
    time_match = _TIME_RE.match(base)
    size_match = _SIZE_RE.search(base)
    return (
        int(time_match.group(1)) if time_match else None,
        int(size_match.group(1)) if size_match else None,
    )


def message_from_file(relpath: str, mtime: float, size: int) -> Message:
    """A Message with time and size from the file name, else from the file's stat."""
    name_time, name_size = parse_name(PurePosixPath(relpath).name)
    return Message(
        time=mtime if name_time is None else name_time,
        size=size if name_size is None else name_size,
        relpath=relpath,
    )


def select_over_target(messages: Iterable[Message], target_bytes: int, now: float) -> list[Message]:
    """The oldest messages to delete so the rest total at most `target_bytes`.

    Stops early at the first message less than 24 h old: it and all newer ones stay.
    """
    ordered = sorted(messages)
    total = sum(m.size for m in ordered)
    selected: list[Message] = []
    for message in ordered:
        if total <= target_bytes or now - message.time < PROTECTED_AGE:
            break
        selected.append(message)
        total -= message.size
    return selected


# --- I/O: finding and deleting files -------------------------------------------------------


def iter_maildir_files(
    mailbox: Path, kinds: Collection[str]
) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every regular file directly in a `cur`, `new` or `tmp`
    directory at any depth below `mailbox`, for the directory names in `kinds`."""
    for dirpath, dirnames, filenames in os.walk(mailbox):
        rel = Path(dirpath).relative_to(mailbox)
        if rel.name not in MAILDIR_SUBDIRS:
            continue
        dirnames[:] = []  # a Maildir has no folders inside cur/new/tmp
        if rel.name not in kinds:
            continue
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:  # Dovecot moved or expunged it meanwhile
                continue
            if stat.S_ISREG(st.st_mode):
                yield (rel / name).as_posix(), st


def scan_messages(mailbox: Path) -> list[Message]:
    return [
        message_from_file(relpath, st.st_mtime, st.st_size)
        for relpath, st in iter_maildir_files(mailbox, QUOTA_SUBDIRS)
    ]


def remove_files(mailbox: Path, relpaths: Iterable[str]) -> int:
    """Delete the files; one that vanished meanwhile is not an error. Returns how many."""
    removed = 0
    for relpath in relpaths:
        with contextlib.suppress(FileNotFoundError):
            (mailbox / relpath).unlink()
            removed += 1
    return removed


def remove_maildirsize(mailbox: Path) -> None:
    (mailbox / MAILDIRSIZE_FILE).unlink(missing_ok=True)


def expire_to_target(mailbox: Path, target_bytes: int, now: float) -> int:
    """Delete the oldest messages down to `target_bytes`; returns how many were deleted."""
    selected = select_over_target(scan_messages(mailbox), target_bytes, now)
    removed = remove_files(mailbox, (m.relpath for m in selected))
    if removed:
        remove_maildirsize(mailbox)
    return removed


# --- command line --------------------------------------------------------------------------


class OneLineArgumentParser(argparse.ArgumentParser):
    """Argument errors become one `error: ...` line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}")


def parse_target_mb(raw: str) -> int:
    """TARGET_MB (a number of MiB, 0 or more) in bytes."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"target must be a number of megabytes: {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"target must be 0 or more megabytes: {raw!r}")
    return int(value * 1024 * 1024)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(
        prog="chatmail-quota-expire",
        description="Delete a mailbox's oldest messages (none younger than 24 h) until it "
        "holds at most TARGET_MB; run by Dovecot's quota warning.",
    )
    parser.add_argument(
        "target_bytes", metavar="TARGET_MB", type=parse_target_mb, help="target size in MiB"
    )
    parser.add_argument("mailbox", metavar="MAILBOX_PATH", type=Path, help="the user's home")
    args = parser.parse_args(argv)
    setup_logging()
    if not args.mailbox.is_dir():
        # The path names the user, so it stays out of the message.
        fail("MAILBOX_PATH is not an existing directory")
    removed = expire_to_target(args.mailbox, args.target_bytes, time.time())
    log.info("quota-expire: removed %d message(s)", removed)
