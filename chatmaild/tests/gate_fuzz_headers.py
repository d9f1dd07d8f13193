"""Gate fuzzer mutations aimed at the header fields: doc/encryption-gate.md 2.1.

Test-only; part of the fuzzer of gate_fuzz.py. Duplicated, folded, renamed, added and dropped
fields, obsolete syntax and control characters in the top header section and in each part's,
Content-Transfer-Encoding values, and the structured Content-Type field (comments, RFC 2231
parameters, repeated parameters, spacing and quoting, other types). Each registers itself in
gate_fuzz_mutations.MUTATIONS when this module is imported.
"""

from __future__ import annotations

import random
import re

from gate_fuzz_mutations import (
    delimiter_lines,
    edit_line,
    field_lines,
    header_lines,
    lined,
    mutation,
)

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
