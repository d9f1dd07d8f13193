"""Device tokens for push notifications, per account (RFC 5464).

`<home>/metadata.json` holds `{"devicetoken": {<token>: <unix time of its last set>}}`. A
token is valid while it was set less than 90 days ago and its time is at most 60 s in the
future; setting it again refreshes it, and tokens of several devices coexist. Invalid tokens
are pruned whenever the file is written. An older list-format file (`{"devicetoken": [..]}`)
is read with "now" as every token's time.

The pure functions take `now`; `TokenStore` does the I/O through `fsutil.write_atomic`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import fsutil

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
TOKEN_LIFETIME = 90 * 86400
MAX_CLOCK_SKEW = 60
MAX_TOKEN_LENGTH = 4096  # tokens are encrypted blobs of a few hundred bytes
MAX_TOKENS = 32  # devices per account; the oldest token goes first beyond that

Tokens = dict[str, float]


def token_error(token: str) -> str | None:
    """Why `token` cannot be stored, or None. Tokens are printable ASCII without spaces
    (lookups join them with single spaces)."""
    if not token:
        return "empty token"
    if len(token) > MAX_TOKEN_LENGTH:
        return "token too long"
    if not all(0x21 <= ord(ch) <= 0x7E for ch in token):
        return "token has spaces, control or non-ASCII characters"
    return None


def valid(tokens: Tokens, now: float) -> Tokens:
    return {
        t: when for t, when in tokens.items() if now - TOKEN_LIFETIME < when <= now + MAX_CLOCK_SKEW
    }


def with_token(tokens: Tokens, token: str, now: float) -> Tokens:
    """`tokens` pruned, with `token` added or refreshed, keeping at most MAX_TOKENS."""
    kept = valid(tokens, now)
    kept.pop(token, None)
    kept[token] = now
    newest = sorted(kept.items(), key=lambda item: item[1])[-MAX_TOKENS:]
    return dict(newest)


def parse(raw: bytes, now: float) -> Tokens:
    """The tokens in a metadata.json; an unreadable file counts as no tokens."""
    try:
        data = json.loads(raw)
        stored = data.get("devicetoken", {}) if isinstance(data, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    if isinstance(stored, list):  # the old format: no times, so refresh them all
        return {t: now for t in stored if isinstance(t, str)}
    if isinstance(stored, dict):
        return {
            t: float(when)
            for t, when in stored.items()
            if isinstance(t, str) and isinstance(when, int | float)
        }
    return {}


def serialize(tokens: Tokens) -> bytes:
    return json.dumps({"devicetoken": tokens}, sort_keys=True).encode()


class TokenStore:
    """Reads and writes the token file of accounts under one mailboxes directory."""

    def __init__(self, mailboxes: Path) -> None:
        self.mailboxes = mailboxes

    def _path(self, addr: str) -> Path:
        return self.mailboxes / addr / METADATA_FILE

    def read(self, addr: str, now: float) -> Tokens:
        try:
            return parse(self._path(addr).read_bytes(), now)
        except (FileNotFoundError, NotADirectoryError):
            return {}

    def valid_tokens(self, addr: str, now: float) -> list[str]:
        return sorted(valid(self.read(addr, now), now))

    def add(self, addr: str, token: str, now: float) -> bool:
        """Store or refresh `token`; False if the account does not exist."""
        if not (self.mailboxes / addr).is_dir():
            return False
        tokens = with_token(self.read(addr, now), token, now)
        fsutil.write_atomic(self._path(addr), serialize(tokens))
        return True

    def remove(self, addr: str, token: str, now: float) -> None:
        """Forget `token` (the push service said it is gone for good)."""
        tokens = valid(self.read(addr, now), now)
        if tokens.pop(token, None) is not None and (self.mailboxes / addr).is_dir():
            fsutil.write_atomic(self._path(addr), serialize(tokens))
