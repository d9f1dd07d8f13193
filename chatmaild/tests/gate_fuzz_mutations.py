"""The mutation registry of the gate fuzzer, its line helpers, and the generic mutations.

Test-only; part of the fuzzer of gate_fuzz.py. A mutation takes an RNG, a message and the pool
of seed messages and returns a changed message; `@mutation` registers it in MUTATIONS by name,
and `@lined` lets it edit the message as a list of CRLF-separated lines, with helpers that find
the header, field and delimiter lines to aim at. This module holds the byte-level and
line-level mutations that know nothing of the rules; the ones aimed at the rules of
doc/encryption-gate.md live beside it and register here when imported:
gate_fuzz_headers.py (2.1), gate_fuzz_multipart.py (2.2, 2.4), gate_fuzz_armor.py (2.3).
gate_fuzz.py imports them all, so its MUTATIONS is the full set.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from gate_fuzz_openpgp import CRLF
from gate_oracle import THUNDERBIRD

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
