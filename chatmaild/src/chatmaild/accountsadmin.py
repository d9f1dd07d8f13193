"""The operator's account actions (doc/accounts.md): count, list, block, unblock, delete.

`chatmail-accounts` runs them on the relay as root; `cmdeploy accounts` calls it over SSH.
Every action takes an address as the operator typed it and works on the one spelling that
names the account directory (`canonical_address`), so `Alice@Example.org` blocks
`alice@example.org`, and nothing that is not such a name (`../x@d`, a quoted local part, another
domain) touches the filesystem. Each action is idempotent and returns the line it prints.
Addresses are printed to the operator, never logged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import fsutil
from .accounts import BLOCKED_FILE, LOCK_FILE, LOCK_TIMEOUT, Mailboxes, address_error
from .addresses import AddressPolicy

DAY = 86400
# Buckets of the login-day histogram: (label, first day ago, last day ago or None).
LOGIN_BUCKETS = (
    ("today", 0, 0),
    ("1-6 days ago", 1, 6),
    ("7-29 days ago", 7, 29),
    ("30-89 days ago", 30, 89),
    ("90+ days ago", 90, None),
)

Kick = Callable[[str], bool]


class AdminError(Exception):
    """Input the operator must correct, or an account that is not there: one line, exit 1."""


def canonical_address(text: str, address_domain: str) -> str:
    """The account directory name `text` stands for, or AdminError naming what is wrong."""
    address = AddressPolicy(address_domain).local_address(text.strip())
    if address is None or address_error(address, address_domain) is not None:
        shown = "".join(ch if " " < ch <= "~" else "?" for ch in text)[:100]
        raise AdminError(f"not an address of this relay (@{address_domain}): {shown!r}")
    return address


# --- pure parts -------------------------------------------------------------------------------


def login_histogram(login_days: list[float | None], now: float) -> list[tuple[str, int]]:
    """How many accounts last logged in how long ago; None (no password file) is left out."""
    counts = dict.fromkeys((label for label, _, _ in LOGIN_BUCKETS), 0)
    today = now - now % DAY
    for mtime in login_days:
        if mtime is None:
            continue
        days_ago = max(0, int((today - (mtime - mtime % DAY)) // DAY))
        for label, first, last in LOGIN_BUCKETS:
            if days_ago >= first and (last is None or days_ago <= last):
                counts[label] += 1
                break
    return list(counts.items())


@dataclass(frozen=True)
class Account:
    address: str
    login_day: float | None  # mtime of `password`; None while an account is half created
    blocked: bool


def render_summary(accounts: list[Account], now: float) -> str:
    blocked = sum(a.blocked for a in accounts)
    lines = [f"accounts: {len(accounts)} ({blocked} blocked)", "last login:"]
    for label, n in login_histogram([a.login_day for a in accounts], now):
        lines.append(f"  {label:<15} {n:>8}")
    return "\n".join(lines) + "\n"


def render_addresses(accounts: list[Account]) -> str:
    lines = []
    for a in accounts:
        day = "-" if a.login_day is None else time.strftime("%Y-%m-%d", time.gmtime(a.login_day))
        lines.append(f"{a.address}  {day}{'  blocked' if a.blocked else ''}")
    return "".join(line + "\n" for line in lines)


# --- the filesystem -----------------------------------------------------------------------------


def doveadm_kick(address: str) -> bool:
    """Close the account's IMAP sessions; False if Dovecot is not there to ask."""
    try:
        result = subprocess.run(
            ["doveadm", "kick", address], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


class Admin:
    def __init__(self, mailboxes_path: Path, address_domain: str, kick: Kick = doveadm_kick):
        self.mailboxes = Mailboxes(mailboxes_path)
        self.domain = address_domain
        self.kick = kick

    def accounts(self) -> list[Account]:
        found = []
        for address in self.mailboxes.addresses():
            if address_error(address, self.domain) is not None:
                continue  # another domain's directory, or a name no login can reach
            try:
                login_day: float | None = os.stat(self.mailboxes.password_path(address)).st_mtime
            except (FileNotFoundError, NotADirectoryError):
                login_day = None
            found.append(Account(address, login_day, self.mailboxes.is_blocked(address)))
        return found

    def _existing(self, text: str) -> tuple[str, Path]:
        address = canonical_address(text, self.domain)
        home = self.mailboxes.home(address)
        if self.mailboxes.password_hash(address) is None:
            raise AdminError(f"no account {address}")
        return address, home

    def block(self, text: str) -> str:
        address, home = self._existing(text)
        if self.mailboxes.is_blocked(address):
            return f"{address} was already blocked"
        marker = home / BLOCKED_FILE
        fsutil.write_atomic(marker, f"{int(time.time())}\n".encode(), mode=0o600)
        st = home.stat()
        os.chown(marker, st.st_uid, st.st_gid)  # the services and expiry run as its owner
        kicked = self.kick(address)
        closed = ", its open sessions closed" if kicked else ""
        return f"blocked {address}: no login, no incoming mail, data kept{closed}"

    def unblock(self, text: str) -> str:
        address, home = self._existing(text)
        try:
            (home / BLOCKED_FILE).unlink()
        except FileNotFoundError:
            return f"{address} was not blocked"
        return f"unblocked {address}: it logs in with its old password and receives mail again"

    def delete(self, text: str) -> str:
        address = canonical_address(text, self.domain)
        home = self.mailboxes.home(address)
        if not home.is_dir():
            return f"no account {address}: nothing deleted"
        self.kick(address)
        # under the account's lock, so that a first login running now cannot interleave
        # with the removal and leave half an account
        try:
            with fsutil.file_lock(home / LOCK_FILE, LOCK_TIMEOUT):
                shutil.rmtree(home)
        except FileNotFoundError:
            return f"no account {address}: nothing deleted"
        except fsutil.LockTimeout:
            raise AdminError(f"{address} is being created right now: try again") from None
        return f"deleted {address} and all its mail"
