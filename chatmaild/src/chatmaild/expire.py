"""chatmail-expire: the daily expiry of old mail and inactive accounts.

A systemd timer runs `chatmail-expire <ini> -v --remove` as vmail every day. One pass over
every `*@*` directory in the mailboxes directory; for each mailbox:

1. if the `password` mtime (the last login day, doc/contract.md §2.3) is older than
   `delete_inactive_users_after` days, the whole mailbox directory is removed, unless the
   operator blocked the account (doc/accounts.md);
2. a directory without a `password` file is removed only if it holds nothing but the stale
   leftovers of an account creation that died (see below), or nothing at all;
3. every regular file in a `cur`, `new` or `tmp` directory at any folder depth is deleted if
   its mtime is older than `delete_mails_after` days, or if it lies in `cur` (seen), is larger
   than 200000 bytes on disk and older than `delete_large_after` days;
4. the remaining messages are pruned to 70 % of `max_mailbox_size` exactly as quota expiry
   does (`chatmaild.quota_expire`), never deleting mail less than 24 h old;
5. if any file was deleted, `maildirsize` is removed so Dovecot recalculates the quota;
6. leftovers of writes that died, older than `LEFTOVER_AGE`, are deleted: `password.lock` and
   the temporary files of `fsutil.write_atomic` (`.password.<pid>.<ns>.tmp`, ...), and in a
   directory without `password` also `enforceE2EEincoming`. They go under the account's lock,
   taken without waiting, so never while a creation runs.
7. after all mailboxes: the records of addresses `/new` handed out in invite mode go once
   their account exists or when they stayed unused for a month
   (`registration.InviteStore.stale_handed`, doc/accounts.md).

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

from . import fsutil, quota_expire
from .accounts import BLOCKED_FILE, ENFORCE_E2EE_FILE, LOCK_FILE, PASSWORD_FILE, log_id
from .config import DEFAULT_INI_PATH, Config
from .quota_expire import DAY, MAILDIR_SUBDIRS, QUOTA_SUBDIRS, OneLineArgumentParser
from .registration import InviteStore
from .service import load_config_or_exit, setup_logging

log = logging.getLogger("expire")

LARGE_MESSAGE_SIZE = 200000  # bytes; seen messages above this expire after delete_large_after
QUOTA_CLEANUP_FACTOR = 0.7  # step 4 prunes to this share of max_mailbox_size
# Step 6: a creation holds its lock for one hash and one fsync (milliseconds; it waits at most
# accounts.LOCK_TIMEOUT, 5 s, for another) and a temporary file lives as long as its fsync, so
# nothing an hour old belongs to a write still running. The lock file's mtime is that of its
# first creation and a later creation may reuse it: the lock taken before removing is what
# keeps a running creation safe, the age keeps fresh files out of the way.
LEFTOVER_AGE = 3600.0  # seconds


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
class Leftover:
    """A top-level file an account creation or atomic write may leave behind (step 6)."""

    name: str
    mtime: float


@dataclass(frozen=True)
class MailboxFacts:
    """What `decide` needs to know about one mailbox directory."""

    password_mtime: float | None  # None: no password file
    is_empty: bool  # nothing in it but `leftovers`
    files: tuple[MailFile, ...]
    leftovers: tuple[Leftover, ...] = ()
    blocked: bool = False  # the operator blocked it (doc/accounts.md)


@dataclass(frozen=True)
class Verdict:
    remove_mailbox: bool = False
    remove_files: tuple[str, ...] = ()  # relpaths
    remove_leftovers: tuple[str, ...] = ()  # names in the mailbox directory


# --- deciding (pure) -----------------------------------------------------------------------


def is_expired(f: MailFile, policy: Policy, now: float) -> bool:
    """Step 3: too old, or seen, large and older than the large-message limit."""
    age = now - f.mtime
    if age > policy.mails_after:
        return True
    return f.subdir == "cur" and f.size > LARGE_MESSAGE_SIZE and age > policy.large_after


def decide(
    facts: MailboxFacts, policy: Policy, now: float, wall_now: float | None = None
) -> Verdict:
    """Which of steps 1-6 apply to this mailbox at time `now`.

    Leftovers are judged at `wall_now` (the real time) when it is earlier: `--days` moves `now`
    to see what expires when, never making a fresh leftover look old.
    """
    leftovers_now = now if wall_now is None else min(now, wall_now)
    stale = [f.name for f in facts.leftovers if leftovers_now - f.mtime > LEFTOVER_AGE]
    if facts.password_mtime is None:
        if facts.is_empty and len(stale) == len(facts.leftovers):
            return Verdict(remove_mailbox=True)
    elif now - facts.password_mtime > policy.inactive_after and not facts.blocked:
        # a blocked account cannot log in, so it always looks inactive: removing it would
        # free its address for anyone's first login, undoing the block
        return Verdict(remove_mailbox=True)
    expired = [f.relpath for f in facts.files if is_expired(f, policy, now)]
    gone = set(expired)
    remaining = [
        quota_expire.message_from_file(f.relpath, f.mtime, f.size)
        for f in facts.files
        if f.relpath not in gone and f.subdir in QUOTA_SUBDIRS
    ]
    over_quota = quota_expire.select_over_target(remaining, policy.quota_target, now)
    return Verdict(
        remove_files=(*expired, *(m.relpath for m in over_quota)),
        # a kept directory keeps its e2ee setting, however old
        remove_leftovers=tuple(name for name in stale if name != ENFORCE_E2EE_FILE),
    )


@dataclass
class Stats:
    mailboxes: int = 0
    removed_mailboxes: int = 0
    files: int = 0  # in the mailboxes that were kept
    removed_files: int = 0
    errors: int = 0
    removed_leftovers: int = 0  # in the mailboxes that were kept
    removed_handed: int = 0  # step 7

    def add(self, facts: MailboxFacts, verdict: Verdict) -> None:
        self.mailboxes += 1
        if verdict.remove_mailbox:
            self.removed_mailboxes += 1
        else:
            self.files += len(facts.files)
            self.removed_files += len(verdict.remove_files)
            self.removed_leftovers += len(verdict.remove_leftovers)


def summary(stats: Stats, remove: bool, seconds: float) -> str:
    verb = "Removed" if remove else "Would remove"
    line = (
        f"{verb} {stats.removed_mailboxes} out of {stats.mailboxes} mailboxes and "
        f"{stats.removed_files} out of {stats.files} files in {seconds:.2f} seconds"
    )
    if stats.removed_leftovers:
        line += f", and {stats.removed_leftovers} leftover(s) of interrupted writes"
    if stats.removed_handed:
        line += f", and {stats.removed_handed} handed-out record(s) no longer needed"
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


def is_leftover_name(name: str, has_password: bool) -> bool:
    if name == LOCK_FILE or fsutil.is_temporary_name(name):
        return True
    # created just before the password: alone, it marks a creation that died
    return name == ENFORCE_E2EE_FILE and not has_password


def scan_mailbox(home: Path) -> MailboxFacts:
    try:
        password_mtime: float | None = (home / PASSWORD_FILE).stat().st_mtime
    except FileNotFoundError:
        password_mtime = None
    leftovers, is_empty = [], True
    with os.scandir(home) as it:
        for entry in it:
            if is_leftover_name(entry.name, password_mtime is not None) and entry.is_file(
                follow_symlinks=False
            ):
                leftovers.append(Leftover(entry.name, entry.stat(follow_symlinks=False).st_mtime))
            else:
                is_empty = False
    files = tuple(
        MailFile(relpath, st.st_mtime, st.st_size)
        for relpath, st in quota_expire.iter_maildir_files(home, MAILDIR_SUBDIRS)
    )
    blocked = (home / BLOCKED_FILE).exists()
    return MailboxFacts(password_mtime, is_empty, files, tuple(leftovers), blocked)


def remove_leftovers(home: Path, names: Iterable[str]) -> bool:
    """Delete `names` under the account's lock, taken without waiting: a creation holding it is
    alive, and nothing is removed (False). The lock file itself, if among `names` or made just
    for this, goes last, still held: a creation waiting on it then locks a new one
    (`fsutil.file_lock`)."""
    lock = home / LOCK_FILE
    names = set(names)
    if not lock.exists():
        names.add(LOCK_FILE)  # file_lock makes it below
    try:
        with fsutil.file_lock(lock, timeout=0):
            for name in names - {LOCK_FILE}:
                (home / name).unlink(missing_ok=True)
            if LOCK_FILE in names:
                lock.unlink(missing_ok=True)
    except fsutil.LockTimeout:
        return False
    return True


def apply(home: Path, facts: MailboxFacts, verdict: Verdict) -> None:
    if verdict.remove_mailbox:
        if facts.password_mtime is None:
            # Only a directory without anything but old leftovers: if a creation holds the
            # lock, or a file appeared meanwhile (an account being created), it stays.
            names = [f.name for f in facts.leftovers]
            if not names or remove_leftovers(home, names):
                try:
                    os.rmdir(home)
                except OSError as e:
                    if e.errno != errno.ENOTEMPTY:
                        raise
        else:
            shutil.rmtree(home)
        return
    if verdict.remove_files:
        quota_expire.remove_files(home, verdict.remove_files)
        quota_expire.remove_maildirsize(home)
    if verdict.remove_leftovers:
        remove_leftovers(home, verdict.remove_leftovers)


def log_verdict(lid: str, facts: MailboxFacts, verdict: Verdict, remove: bool) -> None:
    verb = "removed" if remove else "would remove"
    if verdict.remove_mailbox:
        log.debug("mailbox %s: %s the whole mailbox", lid, verb)
    elif verdict.remove_files:
        n, total = len(verdict.remove_files), len(facts.files)
        log.debug("mailbox %s: %s %d of %d files", lid, verb, n, total)
    if verdict.remove_leftovers and not verdict.remove_mailbox:
        n = len(verdict.remove_leftovers)
        log.debug("mailbox %s: %s %d leftover(s) of interrupted writes", lid, verb, n)


def expire_mailboxes(
    mailboxes: Iterable[Path],
    policy: Policy,
    now: float,
    remove: bool,
    wall_now: float | None = None,
) -> Stats:
    """Steps 1-6 for each mailbox; deletes only if `remove`. One failing mailbox is logged
    (without its name) and counted, and the others still get their turn. `wall_now`: see
    `decide`."""
    stats = Stats()
    for home in mailboxes:
        lid = log_id(home.name)
        try:
            facts = scan_mailbox(home)
            verdict = decide(facts, policy, now, wall_now)
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


def expire_handed(config: Config, now: float, remove: bool) -> int:
    """Step 7; how many records go (or would). Its failure is logged, never fatal: the records
    only take space."""
    store = InviteStore(config.registration_path)
    mailboxes = config.mailboxes_path

    def account_exists(addr: str) -> bool:
        return (mailboxes / addr / PASSWORD_FILE).exists()

    try:
        stale = store.stale_handed(account_exists, now)
        if remove:
            store.remove_handed(stale)
    except OSError as e:
        log.warning("handed-out records: %s", e.strerror or type(e).__name__)
        return 0
    return len(stale)


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
        description="Delete old mail and inactive accounts. A dry run unless --remove is given.",
    )
    parser.add_argument(
        "ini", type=Path, nargs="?", default=DEFAULT_INI_PATH, help="path of chatmail.ini"
    )
    parser.add_argument(
        "--days",
        type=int,
        default=0,
        metavar="N",
        help="evaluate as if the date were N days ago, so less expires; "
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
    wall_now = time.time()
    now = wall_now - args.days * DAY
    mailboxes = list_mailboxes(config.mailboxes_path, args.maxnum)
    stats = expire_mailboxes(mailboxes, Policy.from_config(config), now, args.remove, wall_now)
    stats.removed_handed = expire_handed(config, now, args.remove)
    print(summary(stats, args.remove, time.monotonic() - start))
    if stats.errors:
        raise SystemExit(1)
