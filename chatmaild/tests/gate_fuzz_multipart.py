"""Gate fuzzer mutations aimed at the multipart body and the cleartext exceptions.

Test-only; part of the fuzzer of gate_fuzz.py; doc/encryption-gate.md 2.2 and 2.4.
Preamble, epilogue, delimiter lines, transport padding, the close delimiter, the order and
nesting of the parts, the boundary value, the control part's "Version: 1", and the fields the
cleartext exceptions of 2.4 look at. Each registers itself in gate_fuzz_mutations.MUTATIONS
when this module is imported.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence

from gate_fuzz_mutations import (
    BEGIN,
    END,
    boundary_of,
    delimiter_lines,
    field_lines,
    header_lines,
    lined,
    mutation,
)
from gate_oracle import THUNDERBIRD

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
