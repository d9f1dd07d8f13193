"""Time-limited TURN credentials for coturn's REST-API scheme (`use-auth-secret`).

coturn and this relay share one secret. A username is the unix time until which the
credentials are valid; the password is base64(HMAC-SHA1(secret, username)). coturn accepts
them until that time without any state, and rejects them afterwards. The username holds no
`:` so that the metadata value `<domain>:3478:<username>:<password>` splits unambiguously.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

LIFETIME = 5 * 86400  # as the reference relay's TURN server issues them
PORT = 3478


def credentials(secret: bytes, now: float, lifetime: int = LIFETIME) -> tuple[str, str]:
    username = str(int(now) + lifetime)
    digest = hmac.new(secret, username.encode("ascii"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def read_secret(path: Path) -> bytes | None:
    """The shared secret (one line), or None when it is missing or empty."""
    try:
        secret = path.read_bytes().strip()
    except OSError:
        return None
    return secret or None


def metadata_value(domain: str, secret: bytes, now: float) -> str:
    username, password = credentials(secret, now)
    return f"{domain}:{PORT}:{username}:{password}"
