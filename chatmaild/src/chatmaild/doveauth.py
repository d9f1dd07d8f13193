"""doveauth: Dovecot's passdb and userdb, accounts created on first login (doc/contract.md §2.2).

Dovecot 2.3 asks this service over the dict protocol (`passdb`/`userdb` `driver = dict`,
`proxy:<socket>:auth`). Keys:

- `shared/passdb/<E(password)>"<E(user)>`: the login attempt. `E` is Dovecot's `%E` escaping
  (backslash before `"`, `'` and `\\`), so the first unescaped `"` separates the two.
- `shared/userdb/<user>`: the user's home and ids (also used by LMTP before delivery).

A found user gets a JSON object with `addr`, `home`, `uid`, `gid` and `password` (the stored
`{SHA512-CRYPT}` hash); Dovecot compares the login password with the hash itself. An unknown
user whose credentials pass every creation rule is created first. A password no hash can
match (not UTF-8, over 511 bytes, a NUL) gets "not found" for any user, like a wrong one:
never a failure reply, which Dovecot reports as a temporary error. Iterating
`shared/userdb/` lists every account, for `doveadm user '*'` and `doveadm -A`.

Usage: doveauth SOCKET INI [--nocreate-file PATH]
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from . import accounts, dictserver, metrics, registration, resources
from .config import Config
from .service import dict_service_parser, load_config_or_exit, setup_logging

log = logging.getLogger("doveauth")

PASSDB_PREFIX = "shared/passdb/"
USERDB_PREFIX = "shared/userdb/"
DEFAULT_NOCREATE_FILE = Path("/etc/chatmail-nocreate")
RECORD_CACHE_SIZE = 100_000  # accounts whose login record stays in memory (~40 MB at most)
# the metric's reason for each resource shortage
SHORTAGE_REASONS = {
    resources.LOAD_TOO_HIGH: "load",
    resources.MEMORY_TOO_LOW: "memory",
    resources.DISK_TOO_LOW: "disk",
}


class Refusal(NamedTuple):
    """Why an account is not created: `reason` is the metric's label, `text` the log's."""

    reason: str  # nocreate, closed, invite, autorelay, invalid, load, memory or disk
    text: str


def split_passdb_key(rest: str) -> tuple[str, str] | None:
    """`<E(password)>"<E(user)>` -> (password, user); None if there is no unescaped `"`."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(rest)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == '"' and not parts:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if not parts:
        return None
    return parts[0], "".join(current)


class AuthDict:
    """The dict backend: lookups answer passdb/userdb, nothing can be written."""

    def __init__(
        self,
        config: Config,
        nocreate_file: Path = DEFAULT_NOCREATE_FILE,
        take_readings: Callable[[Path], resources.Readings] = resources.take_readings,
        registry: metrics.Registry | None = None,
    ) -> None:
        self.domain = config.address_domain
        registry = registry or metrics.Registry()
        self.created = registry.counter(
            "chatmail_accounts_created_total", "Accounts created at their first login."
        )
        self.refused = registry.counter(
            "chatmail_account_creations_refused_total",
            "First logins that created no account, by reason "
            "(nocreate, closed, invite, autorelay, invalid, load, memory, disk).",
            ("reason",),
        )
        self.blocked = registry.counter(
            "chatmail_logins_blocked_total",
            "Logins refused because the operator blocked the account (doc/accounts.md).",
        )
        self.mailboxes = accounts.Mailboxes(config.mailboxes_path)
        self.nocreate_file = nocreate_file
        self.registration = registration.SettingsReader(config)
        self.invites = registration.InviteStore(config.registration_path)
        self.take_readings = take_readings
        self._records: dict[str, tuple[tuple[int, int, int], str]] = {}
        # Creation hashes (GIL released) and fsyncs: two threads per core keep every core
        # hashing while others wait on the disk; more threads only add contention.
        self._creators = ThreadPoolExecutor(2 * (os.cpu_count() or 1), "create-account")
        self.name_limits = accounts.NameLimits(
            config.username_min_length, config.username_max_length, config.password_min_length
        )
        self.resource_limits = resources.ResourceLimits(
            config.max_load_1m, config.min_available_memory, config.min_free_disk_space
        )

    def record(self, addr: str, stored_hash: str) -> str:
        return json.dumps(
            {
                "addr": addr,
                "home": str(self.mailboxes.home(addr)),
                "uid": "vmail",
                "gid": "vmail",
                "password": stored_hash,
            }
        )

    async def lookup(self, key: str, user: str) -> str | None:
        if key.startswith(USERDB_PREFIX):
            return self.userdb(key[len(USERDB_PREFIX) :])
        if key.startswith(PASSDB_PREFIX):
            split = split_passdb_key(key[len(PASSDB_PREFIX) :])
            if split is None:
                log.warning("passdb key without a password separator")
                return None
            password, addr = split
            return await self.passdb(addr, password)
        return None

    def existing_record(self, addr: str) -> str | None:
        """The JSON record of an existing account, or None.

        Records are cached, each validated by a stat of its password file on every use: a
        replaced file (new inode), a touched one (the last-login day changes the ctime) or a
        deleted account is read again, so the cache never outlives the disk.
        """
        path = self.mailboxes.password_path(addr)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._records.pop(addr, None)
            return None
        version = (st.st_ino, st.st_ctime_ns, st.st_size)
        cached = self._records.get(addr)
        if cached is not None and cached[0] == version:
            return cached[1]
        stored = self.mailboxes.password_hash(addr)
        if stored is None:
            return None
        record = self.record(addr, stored)
        if len(self._records) >= RECORD_CACHE_SIZE:
            del self._records[next(iter(self._records))]  # the oldest entry
        self._records[addr] = (version, record)
        return record

    def userdb(self, addr: str) -> str | None:
        if accounts.address_error(addr, self.domain) is not None:
            return None
        # LMTP asks the userdb before each delivery: a blocked account gets no mail even when
        # a message passed the gate before the block
        if self.mailboxes.is_blocked(addr):
            return None
        return self.existing_record(addr)

    async def passdb(self, addr: str, password: str) -> str | None:
        if accounts.address_error(addr, self.domain) is not None:
            return None
        # Before the account is even looked up: such a password matches no stored hash, and
        # hashing it fails. A failure reply (F) would be a temporary error to the client, and
        # Dovecot logs the whole key of a failed lookup, password included.
        reason = accounts.password_error(password)
        if reason is not None:
            log.warning("login refused: %s", reason)
            return None
        # Before the record: the marker is not part of the cached record, and a blocked
        # account whose password is gone must not be created again either.
        if self.mailboxes.is_blocked(addr):
            log.warning("login refused: account %s is blocked", accounts.log_id(addr))
            self.blocked.inc()
            return None
        existing = self.existing_record(addr)
        if existing is not None:
            return existing
        refusal = self.refusal(addr, password)
        if refusal is not None:
            log.warning("registration rejected: %s", refusal.text)
            self.refused.inc(reason=refusal.reason)
            return None
        loop = asyncio.get_running_loop()
        new_hash, created = await loop.run_in_executor(
            self._creators, self.mailboxes.create, addr, password
        )
        if created:
            log.info("created account %s", accounts.log_id(addr))
            self.created.inc()
        return self.record(addr, new_hash)

    def refusal(self, addr: str, password: str) -> Refusal | None:
        """Why a new account may not be created now, checked in the order of
        doc/contract.md §2.2: the operator's registration settings (doc/accounts.md) right after
        the nocreate file, then the rules for names and passwords, then the resources."""
        if self.nocreate_file.exists():
            return Refusal("nocreate", f"{self.nocreate_file} exists")
        settings = self.registration.current()
        if settings.mode == "closed":
            return Refusal("closed", "registration is closed")
        # in any mode: the operator keeps the relay for people who chose it
        if settings.refuse_autorelay and registration.is_autorelay(password):
            return Refusal("autorelay", "autorelay password length")
        if settings.mode == "invite" and not self.invites.handed_out(addr):
            return Refusal("invite", "registration by invite, and /new did not hand out this")
        reason = accounts.creation_error(addr, password, self.domain, self.name_limits)
        if reason is not None:
            return Refusal("invalid", reason)
        readings = self.take_readings(self.mailboxes.root)
        shortage = resources.shortage(readings, self.resource_limits)
        return None if shortage is None else Refusal(SHORTAGE_REASONS[shortage], shortage)

    def iterate(self, prefix: str, user: str) -> Iterator[tuple[str, str]]:
        if not USERDB_PREFIX.startswith(prefix) and not prefix.startswith(USERDB_PREFIX):
            return
        suffix = "@" + self.domain
        for addr in self.mailboxes.addresses():
            key = USERDB_PREFIX + addr
            if addr.endswith(suffix) and key.startswith(prefix):
                yield key, ""

    def accepts(self, key: str) -> bool:
        return False

    async def commit(self, user: str, changes: list[tuple[str, str | None]]) -> bool:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = dict_service_parser("doveauth", __doc__.splitlines()[0])
    parser.add_argument(
        "--nocreate-file",
        type=Path,
        default=DEFAULT_NOCREATE_FILE,
        help="while this file exists no account is created (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    config = load_config_or_exit(args.ini)
    registry = metrics.Registry()
    backend = AuthDict(config, nocreate_file=args.nocreate_file, registry=registry)
    dictserver.run_dict_service(
        args.socket,
        backend,
        lambda: metrics.start_snapshots(registry, args.metrics_dir, "doveauth"),
    )
