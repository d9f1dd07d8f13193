"""Gate fuzzer mutations aimed at the armor and the packet stream: doc/encryption-gate.md 2.3.

Test-only; part of the fuzzer of gate_fuzz.py. Armor headers, the blank line, text around and
on the BEGIN and END lines, a second armor, the CRC line and the base64 text; and, through
gate_fuzz_openpgp.py, changes of the decoded packet stream (tags, order, lengths, partial
chunks) armored again in place. Each registers itself in gate_fuzz_mutations.MUTATIONS when
this module is imported.
"""

from __future__ import annotations

import base64
import random

from gate_fuzz_mutations import BEGIN, END, edit_line, lined, mutation
from gate_fuzz_openpgp import SEIPD, crc24, encode_packet, split_packets

# --- 2.3 the armor


def armor_lines(lines: list[bytes]) -> tuple[int, int, int, int] | None:
    """(BEGIN, first base64 line, CRC line or END, END) of the first armor, or None."""
    if BEGIN not in lines:
        return None
    begin = lines.index(BEGIN)
    ends = [i for i in range(begin + 1, len(lines)) if lines[i] == END]
    blanks = [i for i in range(begin + 1, ends[0]) if lines[i] == b""] if ends else []
    if not ends or not blanks:
        return None
    stop = ends[0] - 1 if lines[ends[0] - 1].startswith(b"=") else ends[0]
    return begin, blanks[0] + 1, stop, ends[0]


@mutation
@lined
def armor_header(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    if BEGIN in lines:
        i = lines.index(BEGIN) + 1
        new = rng.choice((
            b"Version: GnuPG v2", b"Comment: x", b"Charset: utf-8", b"Version:x", b"Version: ",
            b"version: x", b"Version:  x", b"Hash: SHA256", b"Version: x\x00", b"Version: \xc3\xa9",
            b" Version: x", b"Version: x ", b"MessageID: x",
        ))  # fmt: skip
        lines[i:i] = [new] * rng.choice((1, 1, 2))


@mutation
@lined
def armor_blank(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    found = armor_lines(lines)
    if found:
        blank = found[1] - 1
        lines[blank : blank + 1] = rng.choice(([], [b"", b""], [b" "], [b"\t"], [b"", b"", b""]))


@mutation
@lined
def around_armor(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """A line before BEGIN, after the CRC line, before or after END."""
    found = armor_lines(lines)
    if found:
        begin, _, stop, end = found
        at = rng.choice((begin, stop, stop + 1 if stop < end else end, end, end + 1))
        lines.insert(at, rng.choice((b"", b"x", b"AAAA", b"=AAAA", b" ", b"--", b"=", END)))


@mutation
@lined
def armor_line_edit(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """Text on the BEGIN or END line, or another label."""
    found = armor_lines(lines)
    if found:
        i = rng.choice((found[0], found[3]))
        line = lines[i]
        lines[i] = rng.choice((
            line + b" ", line + b"\t", line + b"x", line + b"-", b" " + line, line.lower(),
            line.replace(b"MESSAGE", b"SIGNATURE"), line.replace(b"-----", b"----", 1),
            line.replace(b"PGP ", b"PGP  "), line + line, line + b"\x00",
        ))  # fmt: skip


@mutation
@lined
def second_armor(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    found = armor_lines(lines)
    if found:
        block = lines[found[0] : found[3] + 1]
        at = rng.choice((found[3] + 1, found[0], len(lines), rng.randrange(len(lines) + 1)))
        lines[at:at] = rng.choice(([], [b""], [b"x"])) + block


@mutation
@lined
def crc_edit(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    found = armor_lines(lines)
    if not found:
        return
    _, first, stop, end = found
    if stop < end:
        crc = lines[stop]
        lines[stop : stop + 1] = rng.choice((
            [], [crc, crc], [crc[:-1]], [crc + b"A"], [b"=" + crc], [crc[:-1] + b"="],
            [crc.lower()], [crc + b" "], [b"=AA=="], [b"="],
        ))  # fmt: skip
    else:
        lines.insert(stop, rng.choice((b"=AAAA", b"=AAA", b"=AAAAA", b"==AAA")))


@mutation
@lined
def base64_edit(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """Padding in the middle, stray bits, a character more or less, another line width."""
    found = armor_lines(lines)
    if not found or found[1] >= found[2]:
        return
    first, stop = found[1], found[2]
    i = rng.randrange(first, stop)
    line = lines[i]
    op = rng.randrange(8)
    if op == 0:
        lines[i] = edit_line(rng, line, (b"=", b"==", b" ", b"\t", b"-", b"_", b"\x00", b"."))
    elif op == 1:  # stray bits: the character before the padding
        last = lines[stop - 1].rstrip(b"=")
        pad = lines[stop - 1][len(last) :]
        if pad and last:
            lines[stop - 1] = last[:-1] + bytes([rng.choice(b"BCDEFGHIJKLMNOP")]) + pad
    elif op == 2:
        lines[i] = line[:-1] if len(line) > 1 else line + b"A"
    elif op == 3:
        lines[i] = line + rng.choice((b"A", b"AAAA", b"=", b"A="))
    elif op == 4:
        text = b"".join(lines[first:stop])
        width = rng.choice((1, 3, 4, 5, 63, 65, 76, 77, 200))
        lines[first:stop] = [text[j : j + width] for j in range(0, len(text), width)]
    elif op == 5:
        lines[stop - 1] = lines[stop - 1].rstrip(b"=")
    elif op == 6:
        lines.insert(rng.randrange(first, stop + 1), rng.choice((b"", b"==", b"=", b" ")))
    else:
        lines[i : i + 1] = [line[: len(line) // 2], line[len(line) // 2 :]]


@mutation
@lined
def packet_edit(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """Decode the armor, change the packet stream (2.3), armor it again in place."""
    found = armor_lines(lines)
    if not found or found[1] >= found[2]:
        return
    first, stop = found[1], found[2]
    try:
        stream = base64.b64decode(b"".join(lines[first:stop]), validate=True)
    except ValueError:
        return
    new = mutate_stream(rng, stream)
    text = base64.b64encode(new)
    width = len(lines[first]) or 64
    body = [text[j : j + width] for j in range(0, len(text), width)]
    if stop < found[3]:
        body.append(b"=" + base64.b64encode(crc24(new)))
    lines[first : found[3]] = body


def mutate_stream(rng: random.Random, stream: bytes) -> bytes:
    """A packet-level change of an OpenPGP packet stream."""
    packets = split_packets(stream)
    if not packets or rng.random() < 0.15:
        op = rng.randrange(3)
        if op == 0:
            return stream + rng.randbytes(rng.randrange(1, 4))
        if op == 1:
            return stream[: rng.randrange(len(stream) + 1)]
        i = rng.randrange(len(stream) or 1)
        return stream[:i] + bytes([rng.randrange(256)]) + stream[i + 1 :]
    k = rng.randrange(len(packets))
    op = rng.randrange(12)
    if op == 0:  # change a tag
        packets[k] = (rng.choice((0, 1, 2, 3, 8, 9, 10, 11, 18, 19, 20, 60, 63)), packets[k][1])
    elif op == 1:  # insert a packet
        tag = rng.choice((1, 3, 8, 10, 11, 18, 20, 2, 0))
        packets.insert(rng.randrange(len(packets) + 1), (tag, rng.randbytes(rng.randrange(40))))
    elif op == 2 and len(packets) > 1:
        del packets[k]
    elif op == 3:
        j = rng.randrange(len(packets))
        packets[k], packets[j] = packets[j], packets[k]
    elif op == 4:
        packets.insert(k, packets[k])
    elif op == 5:  # SEIPD with no body
        packets[-1] = (packets[-1][0], b"")
    encoded = [
        encode_packet(tag, body, rng, tag == SEIPD and rng.random() < 0.3) for tag, body in packets
    ]
    if op == 6 and packets[k][0] < 16:  # old format, indeterminate length
        encoded[k] = bytes([0x80 | packets[k][0] << 2 | 3]) + packets[k][1]
    elif op == 7:  # partial lengths on any packet (2.3 says "walked chunk by chunk")
        encoded[k] = encode_packet(packets[k][0], packets[k][1], rng, partial=True)
    elif op == 8:  # a length one off
        head = encoded[k]
        pos = 1 if head[0] & 0x40 else 1 + (1 << (head[0] & 3)) - 1
        if pos < len(head):
            delta = rng.choice((1, 255))
            encoded[k] = head[:pos] + bytes([(head[pos] + delta) & 0xFF]) + head[pos + 1 :]
    elif op == 9:  # partial chunks up to the very end, no final definite length
        size = 1 << rng.randrange(0, 6)
        body = packets[k][1] + rng.randbytes(-len(packets[k][1]) % size)
        tag = packets[k][0]
        chunks = [body[j : j + size] for j in range(0, len(body), size)] or [b""]
        encoded[k] = bytes([0xC0 | tag]) + b"".join(
            bytes([224 + size.bit_length() - 1]) + c for c in chunks
        )
    elif op == 10:  # without the packet tag bit
        encoded[k] = bytes([encoded[k][0] & 0x7F]) + encoded[k][1:]
    elif op == 11:  # a length beyond the data
        encoded[k] = bytes([0xC0 | packets[k][0], 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]) + packets[k][1]
    return b"".join(encoded)
