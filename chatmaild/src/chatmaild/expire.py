"""chatmail-expire: the daily expiry of old mail and inactive accounts (relay-spec §7).

A systemd timer runs `chatmail-expire <ini> -v --remove` as vmail every day. One pass over
every `*@*` directory in the mailboxes directory; for each mailbox:

1. if the `password` mtime (the last login day, §2.3) is older than
   `delete_inactive_users_after` days, the whole mailbox directory is removed;
2. a directory without a `password` file is removed only if it is empty;
3. every regular file in a `cur`, `new` or `tmp` directory at any folder depth is deleted if
   its mtime is older than `delete_mails_after` days, or if it lies in `cur` (seen), is larger
   than 200000 bytes on disk and older than `delete_large_after` days;
4. the remaining messages are pruned to 70 % of `max_mailbox_size` exactly as quota expiry
   does (`chatmaild.quota_expire`), never deleting mail less than 24 h old;
5. if any file was deleted, `maildirsize` is removed so Dovecot recalculates the quota.

Without `--remove` nothing is deleted: the summary line says what would have been. Deciding
(`decide`) is pure and takes `now`; scanning and deleting are separate. Logs never name a
mailbox: with `-v` a mailbox appears as `accounts.log_id(address)`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import quota_expire
from .accounts import PASSWORD_FILE, log_id
from .config import DEFAULT_INI_PATH, Config
from .quota_expire import DAY, MAILDIR_SUBDIRS, QUOTA_SUBDIRS, OneLineArgumentParser
from .service import load_config_or_exit, setup_logging

log = logging.getLogger("expire")

LARGE_MESSAGE_SIZE = 200000  # bytes; seen messages above this expire after delete_large_after
QUOTA_CLEANUP_FACTOR = 0.7  # step 4 prunes to this share of max_mailbox_size


@dataclass(frozen=True)
class Policy:
    """The expiry limits, in seconds and bytes."""

    mails_after: float
    large_after: float
    inactive_after: float
    quota_target: int

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        return cls(
            mails_after=config.delete_mails_after * DAY,
            large_after=config.delete_large_after * DAY,
            inactive_after=config.delete_inactive_users_after * DAY,
            quota_target=int(config.max_mailbox_size * QUOTA_CLEANUP_FACTOR),
        )


@dataclass(frozen=True)
class MailFile:
    relpath: str  # relative to the mailbox, '/'-separated, e.g. ".DeltaChat/cur/1700..."
    mtime: float
    size: int  # on disk

    @property
    def subdir(self) -> str:
        """`cur`, `new` or `tmp`."""
        return PurePosixPath(self.relpath).parent.name


@dataclass(frozen=True)
class MailboxFacts:
    """What `decide` needs to know about one mailbox directory."""

    password_mtime: float | None  # None: no password file
    is_empty: bool
    files: tuple[MailFile, ...]


@dataclass(frozen=True)
class Verdict:
    remove_mailbox: bool = False
    remove_files: tuple[str, ...] = ()  # relpaths


# --- deciding (pure) -----------------------------------------------------------------------


def is_expired(f: MailFile, policy: Policy, now: float) -> bool:
    """Step 3: too old, or seen, large and older than the large-message limit."""
    age = now - f.mtime
    if age > policy.mails_after:
        return True
    return f.subdir == "cur" and f.size > LARGE_MESSAGE_SIZE and age > policy.large_after


def decide(facts: MailboxFacts, policy: Policy, now: float) -> Verdict:
    """Which of steps 1-4 apply to this mailbox at time `now`."""
    if facts.password_mtime is None:
        if facts.is_empty:
            return Verdict(remove_mailbox=True)
    elif now - facts.password_mtime > policy.inactive_after:
        return Verdict(remove_mailbox=True)
    expired = [f.relpath for f in facts.files if is_expired(f, policy, now)]
    gone = set(expired)
    remaining = [
        quota_expire.message_from_file(f.relpath, f.mtime, f.size)
        for f in facts.files
        if f.relpath not in gone and f.subdir in QUOTA_SUBDIRS
    ]
    over_quota = quota_expire.select_over_target(remaining, policy.quota_target, now)
    return Verdict(remove_files=(*expired, *(m.relpath for m in over_quota)))


@dataclass
class Stats:
    mailboxes: int = 0
    removed_mailboxes: int = 0
    files: int = 0  # in the mailboxes that were kept
    removed_files: int = 0
    errors: int = 0

    def add(self, facts: MailboxFacts, verdict: Verdict) -> None:
        self.mailboxes += 1
        if verdict.remove_mailbox:
            self.removed_mailboxes += 1
        else:
            self.files += len(facts.files)
            self.removed_files += len(verdict.remove_files)


def summary(stats: Stats, remove: bool, seconds: float) -> str:
    verb = "Removed" if remove else "Would remove"
    line = (
        f"{verb} {stats.removed_mailboxes} out of {stats.mailboxes} mailboxes and "
        f"{stats.removed_files} out of {stats.files} files in {seconds:.2f} seconds"
    )
    if not remove:
        line += " (dry run: pass --remove to delete)"
    if stats.errors:
        line += f"; {stats.errors} mailbox(es) had errors"
    return line


# --- scanning and deleting (I/O) -----------------------------------------------------------


def list_mailboxes(root: Path, maxnum: int | None = None) -> list[Path]:
    """The `*@*` directories in `root`, sorted; the first `maxnum` if given."""
    try:
        with os.scandir(root) as it:
            names = sorted(e.name for e in it if "@" in e.name and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        log.warning("the mailboxes directory does not exist")
        return []
    return [root / name for name in names[:maxnum]]


def scan_mailbox(home: Path) -> MailboxFacts:
    try:
        password_mtime: float | None = (home / PASSWORD_FILE).stat().st_mtime
    except FileNotFoundError:
        password_mtime = None
    with os.scandir(home) as it:
        is_empty = next(it, None) is None
    files = tuple(
        MailFile(relpath, st.st_mtime, st.st_size)
        for relpath, st in quota_expire.iter_maildir_files(home, MAILDIR_SUBDIRS)
    )
    return MailboxFacts(password_mtime, is_empty, files)


def apply(home: Path, facts: MailboxFacts, verdict: Verdict) -> None:
    if verdict.remove_mailbox:
        if facts.password_mtime is None:
            # Only ever an empty directory: if a file appeared meanwhile (an account being
            # created), rmdir fails and the directory stays.
            try:
                os.rmdir(home)
            except OSError as e:
                if e.errno != errno.ENOTEMPTY:
                    raise
        else:
            shutil.rmtree(home)
    elif verdict.remove_files:
        quota_expire.remove_files(home, verdict.remove_files)
        quota_expire.remove_maildirsize(home)


def log_verdict(lid: str, facts: MailboxFacts, verdict: Verdict, remove: bool) -> None:
    verb = "removed" if remove else "would remove"
    if verdict.remove_mailbox:
        log.debug("mailbox %s: %s the whole mailbox", lid, verb)
    elif verdict.remove_files:
        n, total = len(verdict.remove_files), len(facts.files)
        log.debug("mailbox %s: %s %d of %d files", lid, verb, n, total)


def expire_mailboxes(mailboxes: Iterable[Path], policy: Policy, now: float, remove: bool) -> Stats:
    """Steps 1-5 for each mailbox; deletes only if `remove`. One failing mailbox is logged
    (without its name) and counted, and the others still get their turn."""
    stats = Stats()
    for home in mailboxes:
        lid = log_id(home.name)
        try:
            facts = scan_mailbox(home)
            verdict = decide(facts, policy, now)
            if remove:
                apply(home, facts, verdict)
        except OSError as e:
            log.warning("mailbox %s: %s", lid, e.strerror or type(e).__name__)
            stats.mailboxes += 1
            stats.errors += 1
            continue
        stats.add(facts, verdict)
        log_verdict(lid, facts, verdict, remove)
    return stats


# --- command line --------------------------------------------------------------------------


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {raw!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="chatmail-expire",
        description="Delete old mail and inactive accounts (relay-spec §7). "
        "A dry run unless --remove is given.",
    )
    parser.add_argument(
        "ini", type=Path, nargs="?", default=DEFAULT_INI_PATH, help="path of chatmail.ini"
    )
    parser.add_argument(
        "--days",
        type=int,
        default=0,
        metavar="N",
        help="evaluate as if the date were N days ago (spec §7), so less expires; "
        "a negative N pretends -N days have passed, e.g. --days -40 shows what will "
        "expire 40 days from now",
    )
    parser.add_argument(
        "--maxnum", type=positive_int, metavar="N", help="process at most N mailboxes"
    )
    parser.add_argument(
        "-v", dest="verbose", action="store_true", help="log per-mailbox counts (no addresses)"
    )
    parser.add_argument("--remove", action="store_true", help="delete; without it, a dry run")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    config = load_config_or_exit(args.ini)
    start = time.monotonic()
    now = time.time() - args.days * DAY
    mailboxes = list_mailboxes(config.mailboxes_path, args.maxnum)
    stats = expire_mailboxes(mailboxes, Policy.from_config(config), now, args.remove)
    print(summary(stats, args.remove, time.monotonic() - start))
    if stats.errors:
        raise SystemExit(1)
