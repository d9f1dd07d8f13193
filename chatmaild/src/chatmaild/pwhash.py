"""Password hashes in the `{SHA512-CRYPT}` scheme that Dovecot verifies (doc/contract.md §2.2).

Hashing calls libcrypt's `crypt_r` through ctypes rather than Python's `crypt` module: the module
is deprecated (and gone in Python 3.13), and a ctypes call releases the GIL, so several first
logins hash in parallel on several cores.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import secrets

SCHEME_PREFIX = "{SHA512-CRYPT}"
# struct crypt_data is 32768 bytes in libxcrypt and smaller in older glibc; this covers both.
_CRYPT_DATA_SIZE = 32768 + 4096


def _load_crypt_r() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    lib = ctypes.CDLL(name, use_errno=True)
    func = lib.crypt_r
    func.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
    func.restype = ctypes.c_char_p
    return func


_crypt_r = _load_crypt_r()


def sha512_crypt(password: str, salt: str | None = None) -> str:
    """The crypt(3) string `$6$<salt>$<hash>` of `password`."""
    if salt is None:
        # 12 random bytes are 16 base64 characters; '+' is the one not in crypt's alphabet
        salt = base64.b64encode(secrets.token_bytes(12)).decode("ascii").replace("+", ".")
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    result = _crypt_r(password.encode("utf-8"), f"$6${salt}".encode("ascii"), data)
    if not result or result.startswith(b"*"):
        raise ValueError("libcrypt refused to hash")
    return str(result.decode("ascii"))


def hash_password(password: str) -> str:
    return SCHEME_PREFIX + sha512_crypt(password)


def verify_password(password: str, stored: str) -> bool:
    """What Dovecot does at login; used by tests and tools, never on the login path."""
    if not stored.startswith(SCHEME_PREFIX):
        return False
    crypted = stored[len(SCHEME_PREFIX) :]
    salt = crypted.split("$")[2] if crypted.count("$") >= 3 else ""
    return secrets.compare_digest(sha512_crypt(password, salt), crypted)
