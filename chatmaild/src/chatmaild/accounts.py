"""Accounts on disk, and the rules for creating one.

An account is the directory `<mailboxes_dir>/<addr>/` holding `password` (the
`{SHA512-CRYPT}` hash; its mtime is the last login day, doc/contract.md §2.3) and
`enforceE2EEincoming`, and `blocked` while the operator has blocked it (doc/accounts.md): no
login, no incoming mail. Every path is built from an address that `address_error` accepted
first, so an address with `/`, `..`, NUL or a second `@` never touches the filesystem.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from . import fsutil, pwhash

PASSWORD_FILE = "password"  # noqa: S105 (a file name)
LOCK_FILE = "password.lock"
ENFORCE_E2EE_FILE = "enforceE2EEincoming"
BLOCKED_FILE = "blocked"
LOCK_TIMEOUT = 5.0
# libxcrypt hashes at most CRYPT_MAX_PASSPHRASE_SIZE (512) bytes including the final NUL, and
# Dovecot verifies with the same libcrypt: a longer password can never log in.
MAX_PASSWORD_BYTES = 511
_LOCALPART_RE = re.compile(r"^[a-z0-9._-]+$")
_LOG_KEY = secrets.token_bytes(16)


def log_id(addr: str) -> str:
    """A short keyed hash of an address: correlates log lines without revealing who."""
    return hmac.new(_LOG_KEY, addr.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[
        :10
    ]


def address_error(addr: str, address_domain: str) -> str | None:
    """Why `addr` cannot name an account directory of this relay, or None if it can."""
    suffix = "@" + address_domain
    if not addr.endswith(suffix):
        return "not in this relay's domain"
    local = addr[: -len(suffix)]
    if not local:
        return "empty local part"
    if "@" in local:
        return "more than one @"
    if "/" in local or "\\" in local or ".." in local or local.startswith("."):
        return "path characters in local part"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in local):
        return "control characters in local part"
    return None


def password_error(password: str) -> str | None:
    """Why no account can be created or entered with `password`, or None.

    The dict server decodes with `surrogateescape`, so bytes that are not UTF-8 arrive as lone
    surrogates; libcrypt cannot hash them the way Dovecot would verify them, nor a password
    longer than `MAX_PASSWORD_BYTES`, and a NUL would silently cut the C string it hashes.
    """
    try:
        size = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        return "password is not valid UTF-8"
    if size > MAX_PASSWORD_BYTES:
        return f"password longer than {MAX_PASSWORD_BYTES} bytes"
    if "\0" in password:
        return "password holds a NUL"
    return None


def creation_error(addr: str, password: str, address_domain: str, limits: NameLimits) -> str | None:
    """Why a new account may not be created with these credentials (doc/contract.md §2.2)."""
    if len(password) < limits.password_min_length:
        return "password too short"
    if addr.count("@") != 1:
        return "address must have exactly one @"
    local = addr[: -len("@" + address_domain)]
    if not limits.username_min_length <= len(local) <= limits.username_max_length:
        return "local part length out of bounds"
    if not _LOCALPART_RE.match(local):
        return "local part has characters other than a-z 0-9 . _ -"
    return None


@dataclass(frozen=True)
class NameLimits:
    username_min_length: int
    username_max_length: int
    password_min_length: int


class Mailboxes:
    """The accounts under one mailboxes directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_prefix = os.path.join(root, "")

    def home(self, addr: str) -> Path:
        return self.root / addr

    def password_path(self, addr: str) -> str:
        # a plain string: this is on the path of every login, and pathlib costs microseconds
        return f"{self._root_prefix}{addr}/{PASSWORD_FILE}"

    def is_blocked(self, addr: str) -> bool:
        """Whether the operator blocked `addr` (a name `address_error` accepted).

        A stat that fails for another reason than a missing file (permissions) counts as
        blocked: refusing a login or a message is the safe side of not knowing.
        """
        try:
            os.stat(f"{self._root_prefix}{addr}/{BLOCKED_FILE}")
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            return True
        return True

    def password_hash(self, addr: str) -> str | None:
        """The stored hash, or None if the account does not exist (or has an empty hash)."""
        try:
            with open(self.password_path(addr), encoding="ascii") as f:
                stored = f.read().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return stored or None

    def create(self, addr: str, password: str) -> tuple[str, bool]:
        """Create the account unless it exists; returns (stored hash, whether it was created).

        Under a per-account lock, with the existence check repeated inside it, so that any
        number of simultaneous first logins produce exactly one hash.
        """
        home = self.root / addr
        try:
            home.mkdir(mode=0o700)
        except FileExistsError:
            pass
        with fsutil.file_lock(home / LOCK_FILE, LOCK_TIMEOUT):
            existing = self.password_hash(addr)
            if existing is not None:
                return existing, False
            stored = pwhash.hash_password(password)
            (home / ENFORCE_E2EE_FILE).touch(mode=0o600)
            # No fsync of the directory: if a crash loses the new entry, the app's next login
            # creates the account again with the same password.
            fsutil.write_atomic(home / PASSWORD_FILE, stored.encode("ascii"))
        return stored, True

    def addresses(self) -> list[str]:
        """Every account directory name (those containing '@')."""
        try:
            with os.scandir(self.root) as it:
                return sorted(e.name for e in it if "@" in e.name and e.is_dir())
        except FileNotFoundError:
            return []

    def set_last_login_day(self, addr: str, epoch: int) -> bool:
        """Record a login on the day of `epoch` as the password file's mtime.

        Writes only when the day changes. Returns False if the account does not exist.
        """
        day = epoch - epoch % 86400
        path = self.root / addr / PASSWORD_FILE
        try:
            st = path.stat()
            if int(st.st_mtime) != day:
                os.utime(path, (st.st_atime, day))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise
        return True
