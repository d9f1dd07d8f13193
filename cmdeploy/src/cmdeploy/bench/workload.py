"""What the bench sends: PGP/MIME messages of a chosen size and the names of its accounts (issue 7).

A relay refuses cleartext (doc/encryption-gate.md), so every message has the exact shape of an
OpenPGP/MIME message: a `multipart/encrypted` with the `Version: 1` part and an armored packet
stream of one PKESK and one SEIPD packet. The gate only walks packet framing (it never
decrypts), so the packet bodies are random bytes; that is also what real ciphertext looks like
to the relay. Pure apart from `os.urandom`/`secrets`; the unit tests run every message through
`chatmaild.mailcheck.check_outgoing`.

Account names: every account of one run starts with `b` and a random run id, then a base-36
counter, exactly `username_max_length` characters of `[a-z0-9]`, so a run never touches an
account it did not create, and removing them is an explicit list (never a glob).
"""

from __future__ import annotations

import base64
import email.utils
import os
import secrets
import string
from dataclasses import dataclass

LOCAL_ALPHABET = string.ascii_lowercase + string.digits
PASSWORD_ALPHABET = string.ascii_letters + string.digits
BASE36_DIGITS = string.digits + string.ascii_lowercase
RUN_ID_LENGTH = 3
BOUNDARY = "bEnChBoUnDaRy"
ARMOR_LINE = 64

# OpenPGP packet tags (RFC 4880 §4.3) and the new-format header bit pattern.
_NEW_FORMAT = 0xC0
_TAG_PKESK = 1
_TAG_SEIPD = 18
_PKESK_BODY = 94  # version 3, key id, ECDH algorithm, and the size of an X25519 session key


def new_run_id() -> str:
    return "".join(secrets.choice(LOCAL_ALPHABET) for _ in range(RUN_ID_LENGTH))


def base36(number: int, width: int) -> str:
    digits = ""
    while number:
        number, rest = divmod(number, 36)
        digits = BASE36_DIGITS[rest] + digits
    return digits.rjust(width, "0")[-width:]


def local_part(run_id: str, index: int, length: int) -> str:
    """The `index`-th account name of a run: `b<run id><base-36 index>`, `length` characters."""
    width = length - 1 - len(run_id)
    if width < 2:
        raise ValueError(f"local parts of {length} characters leave no room for a counter")
    if index >= 36**width:
        raise ValueError(f"at most {36**width} accounts fit in {length} characters")
    return f"b{run_id}{base36(index, width)}"


def new_password(length: int) -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def _new_format_packet(tag: int, body: bytes) -> bytes:
    # the five-octet length form works for every size, which keeps this simple
    return bytes([_NEW_FORMAT | tag, 0xFF]) + len(body).to_bytes(4, "big") + body


def encrypted_packets(payload_size: int) -> bytes:
    """One PKESK and one SEIPD (version 1) packet; the SEIPD carries `payload_size` bytes."""
    pkesk = bytes([3]) + os.urandom(8) + bytes([18]) + os.urandom(_PKESK_BODY - 10)
    seipd = bytes([1]) + os.urandom(max(1, payload_size))
    return _new_format_packet(_TAG_PKESK, pkesk) + _new_format_packet(_TAG_SEIPD, seipd)


def crc24(data: bytes) -> int:
    """The armor checksum of RFC 4880 §6.1 (readers cut the last `=` line as the checksum,
    so without it they would cut off base64 padding instead)."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def armor(packets: bytes) -> bytes:
    text = base64.b64encode(packets)
    lines = [text[i : i + ARMOR_LINE] for i in range(0, len(text), ARMOR_LINE)]
    checksum = b"=" + base64.b64encode(crc24(packets).to_bytes(3, "big"))
    return (
        b"-----BEGIN PGP MESSAGE-----\r\n\r\n"
        + b"\r\n".join([*lines, checksum])
        + b"\r\n-----END PGP MESSAGE-----\r\n"
    )


@dataclass(frozen=True)
class MessageBody:
    """The encrypted MIME body, made once per size and shared by every message of that size."""

    size: int
    mime: bytes

    @classmethod
    def of_size(cls, size: int) -> MessageBody:
        # base64 grows by 4/3 and each 64-character line adds CRLF; headers add about 400
        overhead = 700
        payload = max(64, (size - overhead) * 3 // 4 * ARMOR_LINE // (ARMOR_LINE + 2))
        mime = (
            (
                f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
                f' boundary="{BOUNDARY}"\r\n\r\n'
                f"--{BOUNDARY}\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
                f"--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + armor(encrypted_packets(payload))
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        return cls(size, mime)


def message(body: MessageBody, from_addr: str, to_addr: str, message_id: str) -> bytes:
    """A whole message: From equals the authenticated sender, as the gate demands
    (doc/contract.md §3.1)."""
    head = (
        f"From: <{from_addr}>\r\n"
        f"To: <{to_addr}>\r\n"
        "Subject: [...]\r\n"
        f"Date: {email.utils.formatdate()}\r\n"
        f"Message-ID: <{message_id}>\r\n"
        "MIME-Version: 1.0\r\n"
    )
    return head.encode() + body.mime


def dot_stuffed(data: bytes) -> bytes:
    """SMTP DATA transparency (RFC 5321 §4.5.2), ending with the final `.` line."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"
