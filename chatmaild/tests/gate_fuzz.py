"""A mutation fuzzer of the encryption gate, judged by the independent oracle of gate_oracle.py.

Seeds are the corpus messages the gate accepts (chatmaild/tests/data/mail, verdicts.toml)
and valid messages generated here: random packet streams framed as PKESK/SKESK + SEIPD,
armored with base64 and a CRC24 line, in the varied shapes doc/encryption-gate.md 2.2-2.4
allows. Each mutant is a seed with one to four mutations aimed at the rules of 2.1-2.4,
given to the gate and to the oracle in both directions. The property is one-directional: a
mutant the gate accepts and the oracle rejects is the bug class; the other way round only
informs (the gate may refuse for reasons the oracle does not model, such as From: parsing).

Everything is deterministic from one seed integer: mutant `i` of run seed `s` is the same
whatever the number of processes. CLI: `scripts/fuzz-gate --help`; test_gate_fuzz.py runs a
small subset in CI.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import itertools
import multiprocessing
import random
import re
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gate_oracle import THUNDERBIRD, well_formed

from chatmaild.mailcheck import check_incoming, check_outgoing
from chatmaild.smtpreject import Reject

CORPUS = Path(__file__).parent / "data" / "mail"
DIRECTIONS = ("outgoing", "incoming")
CRLF = b"\r\n"
ALICE, BOB = "alice@example.org", "bob@example.org"


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    mail_from: str = ALICE
    rcpts: tuple[str, ...] = (BOB,)


# --- seeds from the corpus


def corpus_seeds() -> list[Seed]:
    """Every corpus message accepted in a direction, with its envelope; cases that depend on
    a recipient without enforceE2EEincoming are left out (here every recipient enforces)."""
    verdicts = tomllib.loads((CORPUS / "verdicts.toml").read_text(encoding="utf-8"))
    defaults = verdicts["defaults"]
    seeds, seen = [], set()
    for case in verdicts["case"]:
        accepted = [d for d in DIRECTIONS if case.get(d) == "accept"]
        if not accepted or "enforcing" in case or case["file"] in seen:
            continue
        seen.add(case["file"])
        seed = Seed(
            case["name"],
            (CORPUS / case["file"]).read_bytes(),
            case.get("mail_from", defaults["mail_from"]),
            tuple(case.get("rcpts", defaults["rcpts"])),
        )
        seeds.append(seed)
    return seeds


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


# --- generated MIME messages, each in a shape of 2.2-2.4

BCHARS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=? "
TOKEN_CHARS = re.compile(rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")


def gen_boundary(rng: random.Random) -> tuple[bytes, bytes]:
    """A boundary and its parameter value (quoted or a token). No leading "-": a boundary of
    dashes would make "-----BEGIN" a delimiter-like line (2.2)."""
    size = rng.choice((1, 2, 10, 16, 32, 69, 70, rng.randrange(1, 71)))
    chars = bytes(rng.choice(BCHARS) for _ in range(size)).replace(b" ", b"_")
    if rng.random() < 0.3 and size > 2:  # a space inside, not at the end
        chars = chars[:1] + b" " + chars[2:]
    chars = chars.lstrip(b"-") or b"b"
    quoted = TOKEN_CHARS.fullmatch(chars) is None or rng.random() < 0.5
    return chars, (b'"' + chars + b'"' if quoted else chars)


def gen_headers(rng: random.Random, from_: bytes = ALICE.encode()) -> list[bytes]:
    displays = (b"", b"Alice ", b'"Alice Liddell" ', b"")
    sender = from_ if rng.random() < 0.5 else rng.choice(displays) + b"<" + from_ + b">"
    lines = [
        b"From: " + sender,
        b"To: " + BOB.encode(),
        b"Subject: " + rng.choice((b"[...]", b"Hi", b"=?utf-8?q?x?=")),
        b"Date: Thu, 01 Jan 2026 12:00:00 +0000",
        b"Message-ID: <gen" + str(rng.randrange(10**6)).encode() + b"@example.org>",
    ]
    extras = [
        b"MIME-Version: 1.0",
        b"Chat-Version: 1.0",
        b"Received: from a by b;\r\n\tThu, 01 Jan 2026 12:00:00 +0000",
        b"Received: from c by d; Thu, 01 Jan 2026 12:00:00 +0000",
        b"Autocrypt: addr=alice@example.org; prefer-encrypt=mutual;\r\n keydata=AAAA",
        b"X-Mailer: gate_fuzz",
    ]
    lines += [x for x in extras if rng.random() < 0.5]
    rng.shuffle(lines)
    return lines


def ows(rng: random.Random) -> bytes:
    return rng.choice((b"", b"", b" ", b"\t", b"  "))


def gen_content_type(rng: random.Random, ctype: bytes, params: list[bytes]) -> bytes:
    """`Content-Type: ctype; params` with random case of the type, order and spacing."""
    ctype = rng.choice((ctype, ctype.upper(), ctype.title()))
    params = list(params)
    rng.shuffle(params)
    value = ctype + b"".join(
        ows(rng) + b";" + rng.choice((b" ", b"", b"\r\n ")) + p for p in params
    )
    return b"Content-Type: " + value


def gen_part(
    rng: random.Random, ctype: bytes, params: list[bytes], body: bytes, encodings: Sequence[bytes]
) -> bytes:
    """A part with the fields 2.2 allows, each at most once, in random order and case."""
    fields = [gen_content_type(rng, ctype, params)]
    if rng.random() < 0.5:
        fields.append(b"Content-Description: " + rng.choice((b"PGP/MIME", b"x y", b"\xc3\xa9")))
    if rng.random() < 0.3:
        fields.append(
            b"Content-Disposition: " + rng.choice((b"inline", b'attachment; filename="a"'))
        )
    if rng.random() < 0.4:
        fields.append(b"Content-Transfer-Encoding: " + rng.choice(encodings))
    rng.shuffle(fields)
    case = rng.randrange(3)
    for i, line in enumerate(fields):
        name, value = line.split(b":", 1)
        fields[i] = (name.lower(), name.upper(), name)[case] + b":" + value
    return CRLF.join(fields) + CRLF + CRLF + body


def gen_multipart(
    rng: random.Random, boundary: bytes, parts: list[bytes], preamble: bytes
) -> bytes:
    body = preamble + b"".join(b"--" + boundary + CRLF + p + CRLF for p in parts)
    return body + b"--" + boundary + b"--" + CRLF * rng.choice((0, 1, 1, 2))


def gen_encrypted(rng: random.Random, incoming: bool) -> bytes:
    boundary, value = gen_boundary(rng)
    params = [b"boundary=" + value]
    if rng.random() < 0.7:
        params.append(b'protocol="application/pgp-encrypted"')
    if rng.random() < 0.2:
        params.append(b"charset=utf-8")
    head = gen_headers(rng)
    head.append(gen_content_type(rng, b"multipart/encrypted", params))
    if rng.random() < 0.3:
        head.append(b"Content-Transfer-Encoding: " + rng.choice((b"7bit", b"8bit")))
    pad = [b" ", b"\t", CRLF, b""]
    version = b"".join(rng.choices(pad, k=rng.randrange(3))) + b"Version: 1"
    version += b"".join(rng.choices(pad, k=rng.randrange(3))) + rng.choice((CRLF, b""))
    armored = armor(rng, gen_stream(rng), version=incoming and rng.random() < 0.5)
    name = [b'name="encrypted.asc"'] if rng.random() < 0.5 else []
    parts = [
        gen_part(rng, b"application/pgp-encrypted", [], version, [b"7bit"]),
        gen_part(
            rng, b"application/octet-stream", name, armored + CRLF * rng.randrange(3), [b"7bit"]
        ),
    ]
    preamble = rng.choice((b"", CRLF, CRLF * 2, THUNDERBIRD))
    return CRLF.join(head) + CRLF + CRLF + gen_multipart(rng, boundary, parts, preamble)


def gen_securejoin(rng: random.Random) -> bytes:
    boundary, value = gen_boundary(rng)
    head = [*gen_headers(rng), b"Secure-Join: " + rng.choice((b"vc-request", b"vg-request"))]
    head.append(gen_content_type(rng, b"multipart/mixed", [b"boundary=" + value]))
    step = rng.choice((b"Secure-Join: vc-request", b"secure-join: VG-REQUEST"))
    text = rng.choice((b"", CRLF, b"  ")) + step + rng.choice((b"", CRLF, b" \t" + CRLF))
    params = [p for p in (b"charset=utf-8", b"format=flowed") if rng.random() < 0.4]
    part = gen_part(rng, b"text/plain", params, text, [b"7bit", b"8bit"])
    return (
        CRLF.join(head)
        + CRLF
        + CRLF
        + gen_multipart(rng, boundary, [part], CRLF * rng.randrange(2))
    )


def gen_setup_message(rng: random.Random) -> bytes:
    boundary, value = gen_boundary(rng)
    head = [h for h in gen_headers(rng) if not h.startswith(b"Subject")]
    head += [b"Subject: Autocrypt Setup Message", b"Autocrypt-Setup-Message: v1"]
    head.append(gen_content_type(rng, b"multipart/mixed", [b"boundary=" + value]))
    parts = [
        b"Content-Type: text/plain\r\n\r\nSetup",
        b"Content-Type: application/autocrypt-setup\r\n\r\n" + armor(rng, rng.randbytes(40)),
    ]
    return CRLF.join(head) + CRLF + CRLF + gen_multipart(rng, boundary, parts, b"")


def gen_report(rng: random.Random) -> bytes:
    boundary, value = gen_boundary(rng)
    daemon = rng.choice((b"MAILER-DAEMON", b"mailer-daemon", b"Mailer-Daemon"))
    sender = rng.choice((b"%s@peer.example (Mail Delivery System)", b"System <%s@peer.example>"))
    head = [h for h in gen_headers(rng) if not h.startswith(b"From")]
    head += [b"From: " + sender.replace(b"%s", daemon), b"Auto-Submitted: auto-replied"]
    params = [b"report-type=delivery-status", b"boundary=" + value]
    head.append(gen_content_type(rng, b"multipart/report", params))
    parts = [
        b"Content-Type: text/plain\r\n\r\nIt bounced.",
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; peer.example",
    ]
    return CRLF.join(head) + CRLF + CRLF + gen_multipart(rng, boundary, parts, b"")


def generated_seeds(seed: int, count: int = 40) -> list[Seed]:
    """`count` valid messages from run seed `seed`: three of each cleartext exception of 2.4,
    the rest encrypted (2.2), every third of those with a Version armor header (incoming)."""
    rng = random.Random(f"generated-{seed}")
    seeds = []
    for i in range(3):
        rcpt = rng.choice((ALICE, ALICE.upper()))  # 1.2: the same local address
        seeds += [
            Seed(f"gen-securejoin-{i}", gen_securejoin(rng)),
            Seed(f"gen-setup-message-{i}", gen_setup_message(rng), rcpts=(rcpt,)),
            Seed(f"gen-report-{i}", gen_report(rng)),
        ]
    for i in range(count - len(seeds)):
        incoming = i % 3 == 2
        name = f"gen-encrypted-{i}" + ("-incoming" if incoming else "")
        seeds.append(Seed(name, gen_encrypted(rng, incoming)))
    return seeds


_SEEDS: dict[int, list[Seed]] = {}


def all_seeds(seed: int) -> list[Seed]:
    if seed not in _SEEDS:
        _SEEDS[seed] = corpus_seeds() + generated_seeds(seed)
    return _SEEDS[seed]


# --- the message as lines, to aim mutations at headers, delimiters and the armor

Mutation = Callable[[random.Random, bytes, Sequence[bytes]], bytes]
MUTATIONS: dict[str, Mutation] = {}


def mutation(fn: Mutation) -> Mutation:
    MUTATIONS[fn.__name__] = fn
    return fn


BEGIN, END = b"-----BEGIN PGP MESSAGE-----", b"-----END PGP MESSAGE-----"
INTERESTING = b"\x00\r\n \t-=:;\"\\()<>@,/?*'.\x7f\x80\xff\x0b\x0cAa0+"
JUNK = [
    b"", b"x", b" ", b"\t", b"--", b"=", b"==", b"=AAAA", b"AAAA", b"Version: 1", b"Comment: x",
    BEGIN, END, THUNDERBIRD.rstrip(), b"\x00", b"\xc3\xa9", b"Content-Type: text/plain",
    b"hello", b"-- ", b".", b"From: bob@example.org", b" x", b": x", b"\xef\xbb\xbfFrom: x",
    b"From alice@example.org Thu Jan  1 00:00:00 2026", b">From x",
]  # fmt: skip


def boundary_of(data: bytes) -> bytes | None:
    """The first boundary parameter in `data`, as the mutations aim at it (not a parser)."""
    match = re.search(rb'boundary=(?:"([^"\r\n]*)"|([^\s;"]+))', data, re.IGNORECASE)
    if match is None:
        return None
    return match[1] if match[1] is not None else match[2]


def header_lines(lines: list[bytes], boundary: bytes | None) -> list[int]:
    """Indices of the lines of the top header section and of each part's header section."""
    starts = [0]
    if boundary:
        starts += [i + 1 for i, line in enumerate(lines) if line == b"--" + boundary]
    out = []
    for i in starts:
        while i < len(lines) and lines[i] != b"":
            out.append(i)
            i += 1
    return out


def field_lines(lines: list[bytes], boundary: bytes | None, name: bytes = b"") -> list[int]:
    """Header lines that start a field (named `name`, any case, if given)."""
    out = []
    for i in header_lines(lines, boundary):
        if lines[i][:1] in (b" ", b"\t") or b":" not in lines[i]:
            continue
        if not name or lines[i].split(b":", 1)[0].strip().lower() == name:
            out.append(i)
    return out


def delimiter_lines(lines: list[bytes], boundary: bytes | None) -> list[int]:
    if not boundary:
        return []
    return [i for i, line in enumerate(lines) if line.startswith(b"--" + boundary)]


def lined(fn: Callable[[random.Random, list[bytes], bytes | None], None]) -> Mutation:
    """A mutation that edits the list of CRLF-separated lines in place."""

    def apply(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
        lines = data.split(CRLF)
        fn(rng, lines, boundary_of(data))
        return CRLF.join(lines)

    apply.__name__ = fn.__name__
    return apply


def edit_line(rng: random.Random, line: bytes, inserts: Sequence[bytes]) -> bytes:
    pos = rng.randrange(len(line) + 1)
    return line[:pos] + rng.choice(inserts) + line[pos:]


# --- byte level


@mutation
def flip_bit(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ 1 << rng.randrange(8)]) + data[i + 1 :]


@mutation
def set_byte(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.choice(INTERESTING)]) + data[i + 1 :]


@mutation
def insert_byte(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + bytes([rng.choice(INTERESTING)]) + data[i:]


@mutation
def delete_bytes(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + data[i + rng.randrange(1, 5) :]


@mutation
def insert_nul(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    """A NUL, in the top header section half of the time (2.1)."""
    end = data.find(CRLF + CRLF)
    i = rng.randrange((end if end > 0 and rng.random() < 0.5 else len(data)) + 1)
    return data[:i] + b"\x00" + data[i:]


@mutation
def truncate(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    if rng.random() < 0.5:
        return data[: len(data) - rng.randrange(1, 40)]
    return data[: rng.randrange(len(data) + 1)]


@mutation
def splice(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    other = rng.choice(pool)
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]


@mutation
def splice_lines(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    mine, other = data.split(CRLF), rng.choice(pool).split(CRLF)
    return CRLF.join(mine[: rng.randrange(len(mine) + 1)] + other[rng.randrange(len(other)) :])


# --- line level


@mutation
@lined
def delete_line(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    del lines[rng.randrange(len(lines))]


@mutation
@lined
def duplicate_line(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    i = rng.randrange(len(lines))
    lines.insert(rng.choice((i, rng.randrange(len(lines) + 1))), lines[i])


@mutation
@lined
def swap_lines(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    i = rng.randrange(len(lines))
    j = min(i + 1, len(lines) - 1) if rng.random() < 0.5 else rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]


@mutation
@lined
def insert_line(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    line = rng.choice([*JUNK, *(b"--" + boundary + s for s in (b"", b"--", b" ") if boundary)])
    lines.insert(rng.randrange(len(lines) + 1), line)


@mutation
@lined
def change_case(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    i = rng.randrange(len(lines))
    lines[i] = rng.choice((bytes.upper, bytes.lower, bytes.swapcase, bytes.title))(lines[i])


@mutation
def change_word_case(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    """One word (a type, a parameter, BEGIN, a field name, ...) in another case."""
    words = list(re.finditer(rb"[A-Za-z][A-Za-z-]+", data))
    if not words:
        return data
    word = rng.choice(words)
    change = rng.choice((bytes.upper, bytes.lower, bytes.swapcase, bytes.title))
    return data[: word.start()] + change(word[0]) + data[word.end() :]


@mutation
@lined
def trailing_space(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    i = rng.randrange(len(lines))
    lines[i] += rng.choice((b" ", b"\t", b"  ", b" \t"))


@mutation
def bare_line_end(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    """One CRLF as a bare LF, a bare CR or a doubled CR (2.1, 2.3)."""
    ends = [m.start() for m in re.finditer(CRLF, data)]
    if not ends:
        return data
    i = rng.choice(ends)
    return data[:i] + rng.choice((b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n\n")) + data[i + 2 :]


@mutation
def all_lf(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    return data.replace(CRLF, b"\n")


@mutation
@lined
def join_lines(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    if len(lines) > 1:
        i = rng.randrange(len(lines) - 1)
        lines[i : i + 2] = [lines[i] + lines[i + 1]]


# --- 2.1 header fields


@mutation
@lined
def duplicate_field(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """A second instance of a field (top or part), possibly in another case or value."""
    fields = field_lines(lines, boundary)
    if not fields:
        return
    i = rng.choice(fields)
    end = i + 1
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    copy = lines[i:end]
    name, value = copy[0].split(b":", 1)
    if rng.random() < 0.4:
        name = rng.choice((name.lower(), name.upper()))
    if rng.random() < 0.3:
        copy = [
            name
            + b":"
            + rng.choice((b" x", b"", b" text/plain", b' multipart/mixed; boundary="b"'))
        ]
    else:
        copy[0] = name + b":" + value
    at = rng.choice((end, i, rng.choice(header_lines(lines, boundary))))
    lines[at:at] = copy


@mutation
@lined
def obsolete_colon(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    fields = field_lines(lines, boundary)
    if fields:
        i = rng.choice(fields)
        lines[i] = lines[i].replace(b":", rng.choice((b" :", b"\t:", b" : ", b"  :")), 1)


@mutation
@lined
def fold_field(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """Fold a field at a space or ";", or add a continuation of white space only."""
    fields = field_lines(lines, boundary)
    if not fields:
        return
    i = rng.choice(fields)
    line = lines[i]
    spots = [m.end() for m in re.finditer(rb"[ ;:=/]", line)]
    if spots and rng.random() < 0.6:
        at = rng.choice(spots)
        lines[i : i + 1] = [line[:at], rng.choice((b" ", b"\t", b"  ")) + line[at:].lstrip()]
    else:
        lines.insert(i + 1, rng.choice((b" ", b"\t", b" \t")))


@mutation
@lined
def continuation_first(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    starts = [0, *(i + 1 for i in delimiter_lines(lines, boundary))]
    lines.insert(rng.choice(starts), rng.choice((b" x", b"\tContent-Type: text/plain", b" ")))


@mutation
@lined
def field_control_char(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """A bare CR, bare LF, NUL or other control inside a header line."""
    heads = header_lines(lines, boundary)
    if heads:
        i = rng.choice(heads)
        lines[i] = edit_line(rng, lines[i], (b"\r", b"\n", b"\x00", b"\x0b", b"\x7f", b"\r\n"))


@mutation
@lined
def field_name_junk(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    fields = field_lines(lines, boundary)
    if fields:
        i = rng.choice(fields)
        cut = lines[i].index(b":")
        at = rng.randrange(cut + 1)
        junk = rng.choice((b" ", b"\t", b"\x80", b"\xc3\xa9", b"\x01", b"(", b"_"))
        lines[i] = lines[i][:at] + junk + lines[i][at:]


TOP_FIELDS = [
    b"Content-Transfer-Encoding: 7bit", b"Content-Transfer-Encoding: base64",
    b"Secure-Join: vc-request", b"Subject: Autocrypt Setup Message",
    b"Auto-Submitted: auto-replied", b"Content-Disposition: inline", b"Content-ID: <x@y>",
    b"MIME-Version: 1.0", b"X-Foo: bar", b"Content-Type: text/plain", b"Content-Description: x",
    b"Content-Location: x", b"Sender: bob@example.org", b"Received: x", b"Content-Base: x",
    b"Content-Disposition: attachment; filename=a; filename=b", b"Content-MD5: AAAA",
]  # fmt: skip


@mutation
@lined
def add_field(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    heads = header_lines(lines, boundary)
    if heads:
        lines.insert(rng.choice(heads) + rng.randrange(2), rng.choice(TOP_FIELDS))


@mutation
@lined
def drop_field(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    fields = field_lines(lines, boundary)
    if fields:
        del lines[rng.choice(fields)]


@mutation
@lined
def rename_field(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    fields = field_lines(lines, boundary)
    if fields:
        i = rng.choice(fields)
        name, value = lines[i].split(b":", 1)
        new = (b"X-" + name, name[:-1], name + b"s", name.replace(b"-", b"_"), name.swapcase())
        lines[i] = rng.choice(new) + b":" + value


ENCODINGS = [
    b"7bit", b"8bit", b"7BIT", b"8Bit", b"binary", b"base64", b"quoted-printable",
    b"7bit (c)", b'"7bit"', b"x-token", b"", b"7bit;", b"  7bit  ", b"7 bit", b"7bit\x00",
]  # fmt: skip


@mutation
@lined
def set_encoding(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """Change or add a Content-Transfer-Encoding, top or in a part."""
    found = field_lines(lines, boundary, b"content-transfer-encoding")
    value = rng.choice(ENCODINGS)
    if found and rng.random() < 0.6:
        lines[rng.choice(found)] = b"Content-Transfer-Encoding: " + value
    else:
        types = field_lines(lines, boundary, b"content-type")
        if types:
            lines.insert(rng.choice(types), b"Content-Transfer-Encoding: " + value)


# --- 2.1 structured fields: Content-Type


def content_type_line(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> int | None:
    found = field_lines(lines, boundary, b"content-type")
    return rng.choice(found) if found else None


@mutation
@lined
def ct_comment(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    i = content_type_line(rng, lines, boundary)
    if i is not None:
        spots = [m.start() for m in re.finditer(rb"[;/=]|$", lines[i])]
        at = rng.choice(spots) + rng.randrange(2)
        lines[i] = lines[i][:at] + rng.choice((b"(c)", b" (x) ", b"(a;b=c)")) + lines[i][at:]


@mutation
@lined
def ct_rfc2231(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    i = content_type_line(rng, lines, boundary)
    if i is None:
        return
    line, b = lines[i], boundary or b"b"
    edits = (
        line + b"; boundary*=utf-8''" + b,
        line + b'; boundary*0="' + b[:1] + b'"; boundary*1="' + b[1:] + b'"',
        re.sub(rb"(?i)boundary=", b"boundary*=", line, count=1),
        re.sub(rb"(?i)boundary=", b"boundary*0=", line, count=1),
        line + b"; name*=utf-8''x",
        line + b"; protocol*=us-ascii''application%2Fpgp-encrypted",
    )
    lines[i] = rng.choice(edits)


@mutation
@lined
def ct_repeat_param(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """A parameter named twice: boundary, protocol, name, with the same or another value."""
    i = content_type_line(rng, lines, boundary)
    if i is None:
        return
    b = boundary or b"b"
    extra = rng.choice((
        b'; boundary="' + b + b'"', b"; boundary=other", b'; BOUNDARY="' + b + b'"',
        b'; protocol="application/pgp-encrypted"', b'; name="encrypted.asc"', b"; charset=a",
    ))  # fmt: skip
    lines[i] = rng.choice((lines[i] + extra, lines[i].replace(b";", extra + b";", 1)))


@mutation
@lined
def ct_param_edit(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """Spacing, quoting and values of Content-Type parameters (2.1 grammar, 2.2 protocol)."""
    i = content_type_line(rng, lines, boundary)
    if i is None:
        return
    line = lines[i]
    edits = (
        line.replace(b"=", b" =", 1),
        line.replace(b"=", b"= ", 1),
        line.replace(b"/", b" / ", 1),
        line.replace(b"/", b"/ ", 1),
        line + b";",
        line + b"; ",
        line + b"; charset=utf-8",
        line + b'; x=""',
        line + b"; x",
        line + b"; x=",
        line.replace(b'"', b"", 2),
        line.replace(b'="', b'="\\', 1),
        line.replace(b'"', b"", 1),
        line.replace(b'"', b'\\"', 1),
        line.replace(b'"', b'"\xc3\xa9', 1),
        line.replace(b"application/pgp-encrypted", b"Application/PGP-Encrypted"),
        line.replace(b"application/pgp-encrypted", b"application/pgp-signature"),
        line.replace(b'"application/pgp-encrypted"', b"application/pgp-encrypted"),
        re.sub(rb";\s*protocol=\"[^\"]*\"", b"", line),
        re.sub(rb"(?i);\s*boundary=(\"[^\"]*\"|[^;\s]*)", b"", line),
        line.replace(b";", b",", 1),
        line.replace(b"; ", b";;", 1),
        line.replace(b":", b": ;", 1),
    )
    lines[i] = rng.choice(edits)


TYPES = [
    b"multipart/encrypted", b"multipart/mixed", b"multipart/report", b"multipart/signed",
    b"application/pgp-encrypted", b"application/octet-stream", b"text/plain", b"message/rfc822",
    b"MULTIPART/ENCRYPTED", b"multipart", b"multipart/encrypted/x", b"multipart/*",
]  # fmt: skip


@mutation
@lined
def ct_type(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    i = content_type_line(rng, lines, boundary)
    if i is not None:
        name, value = lines[i].split(b":", 1)
        lines[i] = name + b":" + re.sub(rb"^\s*[^;\s]*", b" " + rng.choice(TYPES), value, count=1)


# --- 2.2 the multipart body


@mutation
@lined
def preamble(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    delims = delimiter_lines(lines, boundary)
    if not delims or b"" not in lines:
        return
    start, first = lines.index(b"") + 1, delims[0]
    text = THUNDERBIRD.rstrip()
    choices: list[list[bytes]] = [
        [], [b""], [b"", b""], [text], [text, b""], [b"", text], [b"x"], [b" "], [b"\t"],
        [b"This is a multi-part message in MIME format."], [text + b" "], [BEGIN, END],
        [b"--" + (boundary or b"") + b"x"], [b"--"], [text.lower()],
    ]  # fmt: skip
    lines[start:first] = rng.choice(choices)


@mutation
@lined
def epilogue(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    delims = delimiter_lines(lines, boundary)
    if not delims:
        return
    last = delims[-1]
    dash = b"--" + (boundary or b"")
    choices = [b"x", b" ", b"\t", dash, dash + b"--", b"epilogue", BEGIN, b"\x00", b"\r"]
    if rng.random() < 0.3:
        lines[last] += rng.choice((b" ", b"x", b"\t", b"--"))
    else:
        lines.insert(last + 1 + rng.randrange(2), rng.choice(choices))


@mutation
@lined
def delimiter_edit(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    delims = delimiter_lines(lines, boundary)
    if not delims:
        return
    i = rng.choice(delims)
    line = lines[i]
    edits = (
        line + b" ", line + b"\t", line + b" \t", line + b"x", line + b"-", line + b"--",
        line[:-1], line.upper(), line.lower(), b" " + line, b"-- " + line[2:],
        line + b"--" if not line.endswith(b"--") else line[:-2], line + b"--x",
    )  # fmt: skip
    lines[i] = rng.choice(edits)


@mutation
@lined
def transport_padding(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """White space after every delimiter line (RFC 2046 allows it; 2.2 does not)."""
    pad = rng.choice((b" ", b"\t", b"  ", b" \t"))
    for i in delimiter_lines(lines, boundary):
        lines[i] += pad


@mutation
@lined
def drop_close(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    closes = [i for i in delimiter_lines(lines, boundary) if lines[i].endswith(b"--")]
    if closes:
        del lines[closes[-1] :]
        lines.append(b"")


@mutation
@lined
def part_shuffle(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """Swap, drop, duplicate the parts, or nest one in a multipart."""
    delims = delimiter_lines(lines, boundary)
    if len(delims) < 2 or not boundary:
        return
    parts = [lines[a + 1 : b] for a, b in itertools.pairwise(delims)]
    op = rng.randrange(4)
    if op == 0 and len(parts) > 1:
        parts[0], parts[1] = parts[1], parts[0]
    elif op == 1 and parts:
        del parts[rng.randrange(len(parts))]
    elif op == 2:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(parts))
    elif parts:
        k = rng.randrange(len(parts))
        inner = [b"Content-Type: multipart/mixed; boundary=in", b"", b"--in", *parts[k], b"--in--"]
        parts[k] = inner
    body = [line for p in parts for line in (b"--" + boundary, *p)]
    lines[delims[0] : delims[-1]] = body


@mutation
def boundary_value(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    """Another boundary in the parameter and the delimiter lines alike: edge cases of 2.2."""
    old = boundary_of(data)
    if not old:
        return data
    new = rng.choice((
        b"a" * 70, b"a" * 71, b"ab ", b"a b", b"a!b", b"a\xc3\xa9", b"-", b"--", b"a\\b", b"a;b",
        b"a=b", b"a?b:c", b"a(b)", b"'", b"a.b", b"=_", b"=?", old + b"x", old[:-1] or b"x",
    ))  # fmt: skip
    param = re.compile(rb'(?i)boundary=(?:"[^"\r\n]*"|[^\s;"]+)')
    data = param.sub(lambda m: b'boundary="' + new + b'"', data, count=1)
    return re.sub(rb"(?m)^--" + re.escape(old), lambda m: b"--" + new, data)


@mutation
def boundary_mismatch(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    """The parameter and the delimiter lines disagree (case, a character)."""
    old = boundary_of(data)
    if not old:
        return data
    new = rng.choice((old.upper(), old.lower(), old + b"x", old[:-1], old + b" "))
    return data.replace(old, new, 1)


# --- 2.2 the control part, 2.4 exceptions


@mutation
@lined
def control_body(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    found = [i for i, line in enumerate(lines) if line.strip(b" \t") == b"Version: 1"]
    if found:
        i = rng.choice(found)
        new = rng.choice((
            [b"Version: 1", b"x"], [b"Version:1"], [b" Version: 1\t"], [b"Version: 1\x00"],
            [b"Version: 2"], [b"Version: 1", b"Version: 1"], [b"version: 1"], [b"Version: 1 "],
            [b"Version: 1\x0b"], [b"Version: 01"], [b"x", b"Version: 1"], [b"Version:  1"],
        ))  # fmt: skip
        lines[i : i + 1] = new


@mutation
@lined
def shape_fields(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    """The fields the exceptions of 2.4 look at: Secure-Join, Subject, From, Auto-Submitted."""
    name, values = rng.choice((
        (b"Secure-Join", (b"vc-request", b"vg-request", b"vc-auth", b"VC-REQUEST", b"vc-request x",
                          b"", b" vc-request", b"vc-request\t", b"vc-requests")),
        (b"Subject", (b"Autocrypt Setup Message", b"autocrypt setup message",
                      b"Autocrypt Setup Message ", b"Autocrypt  Setup Message",
                      b"=?utf-8?q?Autocrypt_Setup_Message?=")),
        (b"From", (b"MAILER-DAEMON@x.example", b'"mailer-daemon"@x.example', b"mailer-daemon-x@x",
                   b"<MAILER-DAEMON@x>", b"a@b, MAILER-DAEMON@x", b"MAILER-DAEMON@x <bob@y>",
                   b"MAILER-DAEMON", b"alice@example.org", b"mailer-daemon@x (a (b) c)")),
        (b"Auto-Submitted", (b"", b" ", b"no", b"auto-replied", b"\t")),
    ))  # fmt: skip
    found = field_lines(lines, boundary, name.lower())
    value = name + b": " + rng.choice(values)
    if found and rng.random() < 0.7:
        lines[rng.choice(found)] = value
    elif b"" in lines:
        lines.insert(rng.randrange(lines.index(b"") + 1), value)


@mutation
@lined
def securejoin_body(rng: random.Random, lines: list[bytes], boundary: bytes | None) -> None:
    found = [i for i, x in enumerate(lines) if x.strip(b" \t").lower().startswith(b"secure-join:")]
    found = [i for i in found if i not in header_lines(lines, boundary)]
    if found:
        lines[rng.choice(found)] = rng.choice((
            b"secure-join: vc-auth", b"Secure-Join: vc-request x", b"Secure-Join:vc-request",
            b"Secure-Join: vc-request\x00", b"Secure-Join: vc-request\x0b",
            b"Secure-Join:  vg-request",
        ))  # fmt: skip


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


# --- running: mutants, verdicts, tallies


def make_mutant(
    seeds: Sequence[Seed], run_seed: int, index: int
) -> tuple[Seed, bytes, tuple[str, ...]]:
    """Mutant `index` of run `run_seed`: a seed and one to four mutations, all from one RNG."""
    rng = random.Random(run_seed * 1_000_000_007 + index)
    seed = seeds[rng.randrange(len(seeds))]
    pool = [s.data for s in seeds]
    names = tuple(rng.choices(sorted(MUTATIONS), k=rng.choice((1, 1, 1, 1, 2, 2, 3, 4))))
    data = seed.data
    for name in names:
        data = MUTATIONS[name](rng, data, pool)
    return seed, data, names


def gate_verdict(direction: str, data: bytes, mail_from: str, rcpts: list[str]) -> str:
    """ "accept", "reject", or the type of an exception other than Reject (a crash)."""
    try:
        if direction == "outgoing":
            check_outgoing(mail_from, rcpts, data)
        else:
            check_incoming(mail_from, rcpts, data, lambda rcpt: True)
    except Reject:
        return "reject"
    except Exception as exc:  # the gate crashing is a finding, not the fuzzer's end
        return type(exc).__name__
    return "accept"


@dataclass(frozen=True)
class Example:
    index: int
    seed: str
    mutations: tuple[str, ...]
    data: bytes
    note: str = ""


@dataclass
class Tally:
    """The counts of one direction; examples are kept for distinct mutation lists."""

    keep: int = 20
    total: int = 0
    gate_accepted: int = 0
    oracle_accepted: int = 0
    gate_only: int = 0  # the gate accepts, the oracle rejects: the bug class
    oracle_only: int = 0  # the oracle accepts, the gate rejects: informational
    gate_errors: int = 0
    gate_only_examples: list[Example] = field(default_factory=list)
    oracle_only_examples: list[Example] = field(default_factory=list)
    error_examples: list[Example] = field(default_factory=list)
    gate_only_mutations: Counter[str] = field(default_factory=Counter)

    def _keep(self, examples: list[Example], example: Example) -> None:
        if len(examples) < self.keep and all(e.mutations != example.mutations for e in examples):
            examples.append(example)

    def record(self, example: Example, gate: str, oracle: bool) -> None:
        self.total += 1
        self.gate_accepted += gate == "accept"
        self.oracle_accepted += oracle
        if gate not in ("accept", "reject"):
            self.gate_errors += 1
            self._keep(self.error_examples, dataclasses.replace(example, note=gate))
        if gate == "accept" and not oracle:
            self.gate_only += 1
            self.gate_only_mutations.update(set(example.mutations))
            self._keep(self.gate_only_examples, example)
        if gate != "accept" and oracle:
            self.oracle_only += 1
            self._keep(self.oracle_only_examples, example)

    def merge(self, other: Tally) -> None:
        for name in ("total", "gate_accepted", "oracle_accepted", "gate_only", "oracle_only"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.gate_errors += other.gate_errors
        self.gate_only_mutations.update(other.gate_only_mutations)
        for mine, theirs in (
            (self.gate_only_examples, other.gate_only_examples),
            (self.oracle_only_examples, other.oracle_only_examples),
            (self.error_examples, other.error_examples),
        ):
            for example in theirs:
                self._keep(mine, example)


def run_range(run_seed: int, start: int, stop: int, keep: int = 20) -> dict[str, Tally]:
    """Mutants `start` to `stop` (exclusive) of run `run_seed`, judged in both directions."""
    seeds = all_seeds(run_seed)
    tallies = {d: Tally(keep) for d in DIRECTIONS}
    for index in range(start, stop):
        seed, data, names = make_mutant(seeds, run_seed, index)
        example = Example(index, seed.name, names, data)
        for direction in DIRECTIONS:
            gate = gate_verdict(direction, data, seed.mail_from, list(seed.rcpts))
            oracle = well_formed(data, direction, seed.mail_from, list(seed.rcpts))
            tallies[direction].record(example, gate, oracle)
    return tallies


CHUNK = 500  # fixed, so that the examples kept do not depend on the number of processes


def _run_chunk(job: tuple[int, int, int, int]) -> dict[str, Tally]:
    return run_range(*job)


def run(mutants: int, seed: int = 0, jobs: int = 1, keep: int = 20) -> dict[str, Tally]:
    """Run `mutants` mutants of run seed `seed` on `jobs` processes; tallies per direction."""
    chunks = [(seed, a, min(a + CHUNK, mutants), keep) for a in range(0, mutants, CHUNK)]
    tallies = {d: Tally(keep) for d in DIRECTIONS}
    if jobs <= 1:
        results = map(_run_chunk, chunks)
        for result in results:
            for d in DIRECTIONS:
                tallies[d].merge(result[d])
        return tallies
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for result in pool.imap(_run_chunk, chunks):  # in order: deterministic examples
            for d in DIRECTIONS:
                tallies[d].merge(result[d])
    return tallies


# --- the command line


def show(data: bytes, seed: bytes, width: int) -> str:
    """The mutant as a Python bytes literal, cut to `width` around its first difference."""
    same = next((i for i, (a, b) in enumerate(zip(data, seed, strict=False)) if a != b), None)
    if same is None:
        same = min(len(data), len(seed))
    start = max(0, same - width // 3)
    text = repr(data[start : start + width])
    return ("…" if start else "") + text + ("…" if start + width < len(data) else "")


def report(tallies: dict[str, Tally], seeds: Sequence[Seed], examples: int, width: int) -> str:
    by_name = {s.name: s.data for s in seeds}
    out = [
        f"{'direction':10} {'mutants':>8} {'gate-accepted':>14} {'oracle-accepted':>16}"
        f" {'gate-only (bug)':>16} {'oracle-only':>12} {'gate-errors':>12}"
    ]
    for d, t in tallies.items():
        out.append(
            f"{d:10} {t.total:>8} {t.gate_accepted:>14} {t.oracle_accepted:>16}"
            f" {t.gate_only:>16} {t.oracle_only:>12} {t.gate_errors:>12}"
        )
    for d, t in tallies.items():
        for title, found in (
            ("accepted by the gate, rejected by the oracle", t.gate_only_examples),
            ("gate errors (exceptions other than Reject)", t.error_examples),
        ):
            if not found:
                continue
            out.append(f"\n{d}: {title}")
            if found is t.gate_only_examples:
                common = ", ".join(f"{n} {c}" for n, c in t.gate_only_mutations.most_common(12))
                out.append(f"  mutations involved: {common}")
            for e in found[:examples]:
                note = f" [{e.note}]" if e.note else ""
                out.append(f"  #{e.index} seed {e.seed}, {' + '.join(e.mutations)}{note}:")
                out.append("    " + show(e.data, by_name[e.seed], width))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=int, default=1_000_000, help="how many (default 1e6)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--examples", type=int, default=5, help="examples shown per direction")
    parser.add_argument("--width", type=int, default=240, help="bytes shown per example")
    parser.add_argument("--replay", type=int, metavar="I", help="print mutant I in full, stop")
    args = parser.parse_args(argv)
    seeds = all_seeds(args.seed)
    if args.replay is not None:
        seed, data, names = make_mutant(seeds, args.seed, args.replay)
        print(f"# seed {seed.name}, {' + '.join(names)}; {seed.mail_from} -> {list(seed.rcpts)}")
        for d in DIRECTIONS:
            gate = gate_verdict(d, data, seed.mail_from, list(seed.rcpts))
            oracle = well_formed(data, d, seed.mail_from, list(seed.rcpts))
            print(f"# {d}: gate {gate}, oracle {'accept' if oracle else 'reject'}")
        print(repr(data))
        return 0
    began = time.monotonic()
    tallies = run(args.mutants, args.seed, args.jobs)
    took = time.monotonic() - began
    print(
        f"gate fuzz: {args.mutants} mutants of {len(seeds)} seeds, run seed {args.seed},"
        f" {len(MUTATIONS)} mutations, {args.jobs} processes, {took:.1f} s"
    )
    print(report(tallies, seeds, args.examples, args.width))
    return 1 if any(t.gate_only for t in tallies.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
