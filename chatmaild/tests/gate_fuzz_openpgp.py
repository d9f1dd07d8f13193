"""OpenPGP packets and ASCII armor for the gate fuzzer: built for generating, not checking.

Test-only; part of the fuzzer of gate_fuzz.py. RFC 4880 §4.2 (packet headers: old and new
format, definite and partial lengths) and §6 (armor, CRC24), in the shapes
doc/encryption-gate.md 2.3 allows: gate_fuzz_seeds.py frames generated messages with these,
and gate_fuzz_armor.py decodes and re-encodes packet streams with them. It does not judge
anything; the judges are the gate and gate_oracle.py.
"""

from __future__ import annotations

import base64
import random

CRLF = b"\r\n"


# --- OpenPGP packets and armor (RFC 4880 §4.2, §6), written for generating, not checking

PKESK, SKESK, SEIPD = 1, 3, 18


def crc24(data: bytes) -> bytes:
    crc = 0xB704CE
    for octet in data:
        crc ^= octet << 16
        for _ in range(8):
            crc = (crc << 1) ^ (0x1864CFB if crc & 0x800000 else 0)
    return (crc & 0xFFFFFF).to_bytes(3, "big")


def new_length(n: int, rng: random.Random) -> bytes:
    """A definite new-format length of `n`, in one of the encodings that can hold it."""
    choices = [b"\xff" + n.to_bytes(4, "big")]
    if n < 192:
        choices.append(bytes([n]))
    if 192 <= n < 8384:
        choices.append(bytes([((n - 192) >> 8) + 192, (n - 192) & 0xFF]))
    return rng.choice(choices)


def encode_packet(tag: int, body: bytes, rng: random.Random, partial: bool = False) -> bytes:
    """`body` as a packet: old format when the tag fits, new format, or partial chunks."""
    if partial:
        exponent = rng.randrange(0, 10)
        out, size = bytes([0xC0 | tag]), 1 << exponent
        while len(body) > size:  # the last chunk is a definite length, possibly 0
            out += bytes([224 + exponent]) + body[:size]
            body = body[size:]
        return out + new_length(len(body), rng) + body
    if tag < 16 and rng.random() < 0.4:
        kind = rng.choice([k for k in (0, 1, 2) if len(body) < 1 << (8 << k)])
        return bytes([0x80 | tag << 2 | kind]) + len(body).to_bytes(1 << kind, "big") + body
    return bytes([0xC0 | tag]) + new_length(len(body), rng) + body


def split_packets(data: bytes) -> list[tuple[int, bytes]] | None:
    """(tag, body) of each packet, partial chunks joined; None if the stream does not parse."""
    packets, pos = [], 0
    while pos < len(data):
        ctb, pos = data[pos], pos + 1
        if not ctb & 0x80:
            return None
        body = b""
        if ctb & 0x40:
            tag = ctb & 0x3F
            while pos < len(data):
                first = data[pos]
                if first < 192:
                    n, pos = first, pos + 1
                elif first < 224:
                    n, pos = ((first - 192) << 8) + data[min(pos + 1, len(data) - 1)] + 192, pos + 2
                elif first == 255:
                    n, pos = int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
                else:
                    n, pos = 1 << (first & 0x1F), pos + 1
                body, pos = body + data[pos : pos + n], pos + n
                if not 224 <= first < 255:
                    break
        else:
            tag, kind = (ctb >> 2) & 0x0F, ctb & 3
            if kind == 3:
                body, pos = data[pos:], len(data)
            else:
                width = 1 << kind
                n = int.from_bytes(data[pos : pos + width], "big")
                body, pos = data[pos + width : pos + width + n], pos + width + n
        if pos > len(data):
            return None
        packets.append((tag, body))
    return packets


def gen_stream(rng: random.Random) -> bytes:
    """Zero to three PKESK/SKESK, then one SEIPD, bodies random, formats random."""
    out = b""
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
        out += encode_packet(rng.choice((PKESK, SKESK)), rng.randbytes(rng.randrange(300)), rng)
    seipd = rng.randbytes(rng.choice((0, 1, 50, 191, 192, 600, 3000, 9000)))
    return out + encode_packet(SEIPD, seipd, rng, partial=rng.random() < 0.4)


def armor(rng: random.Random, stream: bytes, version: bool = False, width: int = 0) -> bytes:
    """ASCII armor of 2.3: BEGIN, an optional Version header, one blank line, base64, CRC."""
    text = base64.b64encode(stream)
    width = width or rng.choice((64, 64, 64, 76, 4, 60, rng.randrange(1, 120)))
    lines = [b"-----BEGIN PGP MESSAGE-----"]
    if version:
        lines.append(b"Version: " + rng.choice((b"GnuPG v2", b"OpenPGP.js 4.10", b"x")))
    lines.append(b"")
    data = [text[i : i + width] for i in range(0, len(text), width)]
    if len(data) > 1 and not data[-1].strip(b"="):  # padding alone on a line: join it
        data[-2:] = [data[-2] + data[-1]]
    lines += data
    if rng.random() < 0.8:
        crc = crc24(stream) if rng.random() < 0.8 else rng.randbytes(3)
        lines.append(b"=" + base64.b64encode(crc))
    lines.append(b"-----END PGP MESSAGE-----")
    return CRLF.join(lines)
