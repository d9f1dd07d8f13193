"""Time-limited TURN credentials for coturn's REST-API scheme (`use-auth-secret`).

coturn and this relay share one secret. A username is the unix time until which the
credentials are valid; the password is base64(HMAC-SHA1(secret, username)). coturn accepts
them until that time without any state, and rejects them afterwards. The username holds no
`:` so that the metadata value `<domain>:3478:<username>:<password>` splits unambiguously.

What Delta Chat reads from that value (doc/metadata.md): it splits it at the first three
`:` into host, port, timestamp and password; the timestamp is the TURN username and, at the
same time, the moment the credentials expire. The client compares it with its own clock and
asks for new credentials once fewer than 12 hours are left; until then it keeps these. So
the field is not the current time: it is now + LIFETIME, the expiry coturn enforces, and
LIFETIME must stay well above those 12 hours, or a client would ask again at every
connection. A client whose clock runs ahead only asks more often; one whose clock lags by
more than 12 hours still holds the credentials for a while after coturn refuses them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

LIFETIME = 5 * 86400  # seconds; a client renews 12 hours before the end
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
