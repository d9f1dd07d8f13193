"""Registration: who may create an account, and invites (doc/accounts.md).

The mode (`open`, `invite`, `closed`) and the autorelay switch come from chatmail.ini
(`registration`, `refuse_autorelay`) unless `cmdeploy registration` set them at run time in
`<registration_dir>/state.json`, which then wins, key by key. doveauth and `/new` read the
file again whenever its inode, mtime or size changes: no restart. `/etc/chatmail-nocreate`
stays the emergency switch above all of this (doveauth checks it first).

Invites, under `<registration_dir>`:

- `invites/<id>.json`: `{"hash", "uses", "expires", "created"}`, written by root. The token
  itself is stored nowhere: `hash` is its SHA-256, `id` the first 12 hex digits of it, so a
  leaked directory listing or backup redeems nothing. Revoking deletes the file.
- `uses/<id>/<addr>`: one empty file per address `/new` handed out for the invite; their
  number is the invite's use count. `/new` takes an flock on the invite file while it counts
  and adds one, so two requests never spend the last use twice.
- `handed/<addr>`: the same address, for doveauth: in invite mode an account is created only
  at the first login of an address that has this file. chatmail-expire removes it once the
  account exists (it is needed no more), or when it was never used for `HANDED_UNUSED_DAYS`.

`/new` runs as www-data (fcgiwrap), doveauth and chatmail-expire as vmail: the deploy gives
`uses/` to www-data, `handed/` to www-data with group vmail (which reads and removes), and
`invites/` is readable by its group.

A password of exactly `AUTORELAY_PASSWORD_LENGTH` characters is the mark of an account that
Delta Chat created on a relay the user did not choose (issue #16); `/new` never hands out one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import fsutil
from .config import REGISTRATION_MODES, Config

log = logging.getLogger("registration")

AUTORELAY_PASSWORD_LENGTH = 23
STATE_FILE = "state.json"
PUBLIC_FILE = "public.json"  # the mode alone, for the web page (served as /registration.json)
INVITES = "invites"
USES = "uses"
HANDED = "handed"
# Delta Chat logs in seconds after /new answered; a month covers any retry of a first login
HANDED_UNUSED_DAYS = 30
TOKEN_BYTES = 16  # 128 bits: guessing one is hopeless, and /new is rate limited besides
ID_LENGTH = 12
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")
_ID_RE = re.compile(rf"[0-9a-f]{{{ID_LENGTH}}}\Z")
_DURATION_RE = re.compile(r"([1-9][0-9]{0,5})([mhdw])\Z")
_DURATION_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# why /new hands out nothing: the reason word, and the text the app shows
MISSING, INVALID, EXPIRED, USED_UP = "missing", "invalid", "expired", "used_up"


def is_autorelay(password: str) -> bool:
    return len(password) == AUTORELAY_PASSWORD_LENGTH


# --- the mode ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    mode: str
    refuse_autorelay: bool
    source: str  # "chatmail.ini", "cmdeploy registration", or why the state file is unusable


def parse_state(data: bytes) -> dict[str, object]:
    """The keys of a state file; ValueError for anything but the two keys with valid values."""
    state = json.loads(data)
    if not isinstance(state, dict) or set(state) - {"mode", "refuse_autorelay"}:
        raise ValueError("not an object of mode and refuse_autorelay")
    if "mode" in state and state["mode"] not in REGISTRATION_MODES:
        raise ValueError("unknown mode")
    if "refuse_autorelay" in state and not isinstance(state["refuse_autorelay"], bool):
        raise ValueError("refuse_autorelay is not true or false")
    return state


def effective(config: Config, state: dict[str, object] | None) -> Settings:
    """The run-time state over the config, key by key."""
    if not state:
        return Settings(config.registration, config.refuse_autorelay, "chatmail.ini")
    mode = state.get("mode", config.registration)
    refuse = state.get("refuse_autorelay", config.refuse_autorelay)
    return Settings(str(mode), bool(refuse), "cmdeploy registration")


class SettingsReader:
    """The current settings, read again only when the state file changed."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.path = config.registration_path / STATE_FILE
        self._version: tuple[int, int, int] | None = None
        self._settings = effective(config, None)

    def current(self) -> Settings:
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            self._version = None
            return effective(self.config, None)
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        if version != self._version:
            self._version = version
            try:
                self._settings = effective(self.config, parse_state(self.path.read_bytes()))
            except (OSError, ValueError) as e:
                # Nobody but an editor by hand writes it badly: no new account until it is
                # fixed is the safe side, and says so once per version of the file.
                log.warning("%s unusable (%s): registration closed", self.path, type(e).__name__)
                self._settings = Settings("closed", True, f"{STATE_FILE} unusable")
        return self._settings


def write_state(directory: Path, mode: str | None, refuse_autorelay: bool | None) -> None:
    """Set the given keys at run time (None: leave as it is), and the web page's copy."""
    path = directory / STATE_FILE
    try:
        state = parse_state(path.read_bytes())
    except (FileNotFoundError, ValueError):
        state = {}
    if mode is not None:
        state["mode"] = mode
    if refuse_autorelay is not None:
        state["refuse_autorelay"] = refuse_autorelay
    fsutil.write_atomic(path, json.dumps(state).encode() + b"\n", mode=0o644)


def write_public(directory: Path, settings: Settings) -> None:
    data = json.dumps({"registration": settings.mode}).encode() + b"\n"
    fsutil.write_atomic(directory / PUBLIC_FILE, data, mode=0o644)


def clear_state(directory: Path) -> bool:
    try:
        (directory / STATE_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


# --- invites (pure parts) ---------------------------------------------------------------------


def parse_duration(text: str) -> int:
    """`30m`, `12h`, `7d`, `2w` in seconds; ValueError otherwise."""
    match = _DURATION_RE.match(text.strip())
    if match is None:
        raise ValueError(f"not a duration like 12h, 7d or 2w: {text[:20]!r}")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Invite:
    id: str
    hash: str
    uses: int
    expires: float | None
    created: float

    def refusal(self, used: int, now: float) -> str | None:
        """Why it creates no more accounts at `now`, having been used `used` times."""
        if self.expires is not None and now >= self.expires:
            return EXPIRED
        if used >= self.uses:
            return USED_UP
        return None

    def to_json(self) -> bytes:
        fields = {"hash": self.hash, "uses": self.uses, "expires": self.expires}
        return json.dumps({**fields, "created": self.created}).encode() + b"\n"


def parse_invite(invite_id: str, data: bytes) -> Invite:
    raw = json.loads(data)
    expires = raw["expires"]
    return Invite(
        invite_id,
        str(raw["hash"]),
        int(raw["uses"]),
        None if expires is None else float(expires),
        float(raw["created"]),
    )


# --- invites on disk ----------------------------------------------------------------------------


Generate = Callable[[], tuple[str, str]]


class InviteStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.invites = directory / INVITES
        self.uses = directory / USES
        self.handed = directory / HANDED

    def make_dirs(self) -> None:
        """The directories, where the deploy has not made them (tests; owners stay as they are)."""
        for path in (self.invites, self.uses, self.handed):
            path.mkdir(parents=True, exist_ok=True)

    def create(self, uses: int, lifetime: int | None, now: float) -> tuple[str, Invite]:
        """A new token (shown once, stored nowhere) and its invite."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        digest = token_hash(token)
        expires = None if lifetime is None else now + lifetime
        invite = Invite(digest[:ID_LENGTH], digest, uses, expires, now)
        uses_dir = self.uses / invite.id
        uses_dir.mkdir(exist_ok=True)
        _same_owner(uses_dir, self.uses)  # /new (www-data) adds a file per address handed out
        path = self.invites / f"{invite.id}.json"
        fsutil.write_atomic(path, invite.to_json(), mode=0o640)
        _same_owner(path, self.invites, user=False)  # its group, /new's, reads it
        return token, invite

    def load(self, invite_id: str) -> Invite | None:
        if _ID_RE.match(invite_id) is None:
            return None
        try:
            return parse_invite(invite_id, (self.invites / f"{invite_id}.json").read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            log.warning("invite file %s unusable", invite_id)
            return None

    def used(self, invite_id: str) -> int:
        try:
            return len(os.listdir(self.uses / invite_id))
        except FileNotFoundError:
            return 0

    def all(self) -> list[tuple[Invite, int]]:
        try:
            names = sorted(os.listdir(self.invites))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            invite = self.load(name.removesuffix(".json")) if name.endswith(".json") else None
            if invite is not None:
                found.append((invite, self.used(invite.id)))
        return sorted(found, key=lambda pair: pair[0].created)

    def revoke(self, invite_id: str) -> bool:
        if _ID_RE.match(invite_id) is None:
            return False
        try:
            (self.invites / f"{invite_id}.json").unlink()
        except FileNotFoundError:
            return False
        # its use count is shown nowhere any more; rmtree removes a symlink at any depth
        # without following it
        shutil.rmtree(self.uses / invite_id, ignore_errors=True)
        return True

    def check(self, token: str | None, now: float) -> str | None:
        """Why `token` would hand out nothing now, without spending a use; None if it would."""
        if not token:
            return MISSING
        if _TOKEN_RE.match(token) is None:
            return INVALID
        digest = token_hash(token)
        invite = self.load(digest[:ID_LENGTH])
        if invite is None or not hmac.compare_digest(invite.hash, digest):
            return INVALID
        return invite.refusal(self.used(invite.id), now)

    def redeem(self, token: str | None, now: float, generate: Generate) -> tuple[str, str] | str:
        """Credentials handed out for `token`, recorded; or the reason word why not."""
        if not token:
            return MISSING
        if _TOKEN_RE.match(token) is None:
            return INVALID
        digest = token_hash(token)
        path = self.invites / f"{digest[:ID_LENGTH]}.json"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return INVALID
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held while counting and adding one use
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
            try:
                invite = parse_invite(digest[:ID_LENGTH], data)
            except (ValueError, KeyError, TypeError):
                log.warning("invite file %s unusable", digest[:ID_LENGTH])
                return INVALID
            if not hmac.compare_digest(invite.hash, digest):
                return INVALID
            if not os.path.exists(path):
                return INVALID  # revoked while we waited for the lock
            refusal = invite.refusal(self.used(invite.id), now)
            if refusal is not None:
                return refusal
            email, password = self._record(invite.id, generate)
        finally:
            os.close(fd)
        return email, password

    def _record(self, invite_id: str, generate: Generate) -> tuple[str, str]:
        uses_dir = self.uses / invite_id
        uses_dir.mkdir(exist_ok=True)
        while True:
            email, password = generate()
            try:
                fd = os.open(self.handed / email, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue  # handed out before (a 1 in 36^9 draw): draw another
            os.close(fd)
            (uses_dir / email).touch(mode=0o644)
            return email, password

    def stale_handed(self, account_exists: Callable[[str], bool], now: float) -> list[str]:
        """The handed-out records that are done with: their account exists, or nobody logged
        in with them for `HANDED_UNUSED_DAYS`. Only regular files count (nothing else is
        written there)."""
        try:
            entries = list(os.scandir(self.handed))
        except FileNotFoundError:
            return []
        cutoff = now - HANDED_UNUSED_DAYS * 86400
        stale = []
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if not entry.is_file(follow_symlinks=False):
                    continue
                if (
                    account_exists(entry.name)
                    or entry.stat(follow_symlinks=False).st_mtime < cutoff
                ):
                    stale.append(entry.name)
        return sorted(stale)

    def remove_handed(self, names: list[str]) -> None:
        for name in names:
            (self.handed / name).unlink(missing_ok=True)

    def handed_out(self, addr: str) -> bool:
        """Whether `/new` handed out `addr` (a name `accounts.address_error` accepted)."""
        try:
            os.stat(self.handed / addr)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                return False
            raise
        return True


def _same_owner(path: Path, like: Path, user: bool = True) -> None:
    """Give `path` the owner (and group) of `like`, as far as this process may."""
    st = like.stat()
    with contextlib.suppress(PermissionError):
        os.chown(path, st.st_uid if user else -1, st.st_gid)
