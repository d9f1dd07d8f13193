"""A strict reader of message structure for the encryption gate (doc/encryption-gate.md §2.1).

The gate must read a message the one way every other program reads it, so this reader does not
recover from anything: it works on the bytes as transmitted (RFC 5322 header fields, RFC 2045
Content-Type, RFC 2046 multipart delimiters) and reports whatever another parser could read
differently (a bare CR or LF, an obsolete `Name : value` line, a field given twice, a
parameter given twice, a delimiter line with something after it) as a `problem`, instead of
guessing. The predicates in `mailshape` then grant no exception to a message with a problem.

Everything here is pure, takes bytes, and never raises on any input. It copies as little as
it can: a part is located by offsets into the message, so a 25 MB message is not copied per
MIME level.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

CRLF = b"\r\n"

# Fields RFC 5322 §3.6 and RFC 2045 allow once, and the chat fields the gate reads: a second
# instance would leave the choice to the reader (doc §2.1).
SINGLE_FIELDS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-description",
        "content-id",
        "secure-join",
        "auto-submitted",
    }
)

# RFC 5322 §2.2: a field name is printable US-ASCII except ":" (and so has no space in it).
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+\Z")
# RFC 2045 §5.1: token = 1*<any US-ASCII CHAR except SPACE, CTLs, or tspecials>
_TOKEN = r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]+"  # noqa: S105 (a pattern, not a password)
# A quoted value holds no `;` (some parsers split parameters at every `;`, quoted or not)
# and no `"` or `\` (no quoted pairs); an RFC 2047 encoded word in it is refused below.
_QUOTED = r'"([\x20\x21\x23-\x3a\x3c-\x5b\x5d-\x7e]*)"'
_PARAM = re.compile(rf"[ \t]*;[ \t]*({_TOKEN})=(?:({_TOKEN})|{_QUOTED})")
_TYPE = re.compile(rf"[ \t]*({_TOKEN})/({_TOKEN})")
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[BbQq]\?[^?]*\?=")
_TRAILER = re.compile(r"[ \t]*(?:;[ \t]*)?\Z")
# RFC 2046 §5.1.1 bcharsnospace; a boundary may also hold spaces, but not at its end.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]\Z")


# Bounds of a header section (doc §2.1): Postfix cuts a header field at header_size_limit
# (100 KB), and what a parser of ours reads must not cost more than a small multiple of it.
MAX_HEADER_SECTION = 256 * 1024
MAX_FIELD = 64 * 1024
# RFC 5322 §2.1.1: 998 octets per line. Postfix breaks longer lines (CRLF and a space) when
# it delivers: the mailbox would hold other bytes than the gate judged.
MAX_LINE = 998


def has_bare_newline(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """Whether `data[start:end]` holds a CR not followed by LF, or an LF not after a CR."""
    # replace() drops exactly the CRLFs that count() would find, so a CR or LF left is a bare
    # one. Two passes at memchr speed: CPython 3.11 counts a single byte in a slow loop, and
    # three counts were most of the gate's CPU for a large message.
    rest = data[start:end].replace(CRLF, b"")
    return b"\r" in rest or b"\n" in rest


def crlf_only(data: bytes, window: int = 1 << 18) -> bool:
    """Whether every CR and LF in `data` is part of a CRLF. Judged a window of whole lines at a
    time, so that a thread doing this for a 25 MB message lets the others run meanwhile."""
    return not any(has_bare_newline(data, pos, stop) for pos, stop in _windows(data, window))


def lines_within_limit(data: bytes, window: int = 1 << 18) -> bool:
    """Whether `data` has only CRLF line ends and no line over `MAX_LINE` octets; judged a
    window at a time like `crlf_only`."""
    return crlf_only(data, window) and _no_line_longer(data, MAX_LINE + 1)  # with its CR


def _windows(data: bytes, window: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive windows of about `window` bytes, each ending just after an
    LF (or at the end), so that no CRLF is split between two of them."""
    pos, end = 0, len(data)
    while pos < end:
        stop = data.find(b"\n", min(pos + window, end) - 1) + 1 or end
        yield pos, stop
        pos = stop


def _no_line_longer(data: bytes, limit: int) -> bool:
    """Whether no run of bytes without an LF is longer than `limit`: the last LF within
    `limit + 1` bytes of a line's start skips all the short lines before it at once, so a
    message of 70-octet lines costs one short search per kilobyte, not one per line."""
    pos, end = 0, len(data)
    while end - pos > limit:
        newline = data.rfind(b"\n", pos, pos + limit + 1)
        if newline < 0:
            return False
        pos = newline + 1
    return True


@dataclass(frozen=True)
class Field:
    name: str  # lowercase
    value: bytes  # as transmitted, folding CRLFs included

    def text(self) -> str:
        """The value unfolded and stripped of spaces around it, 8-bit bytes as surrogates."""
        unfolded = self.value.replace(CRLF, b"").strip(b" \t")
        return unfolded.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Entity:
    """A message or a MIME part: its header fields, and where its body lies in `data`."""

    data: bytes
    fields: tuple[Field, ...]
    body_start: int
    body_end: int
    problem: str | None  # why this header section could be read two ways; None if it cannot

    def get(self, name: str) -> Field | None:
        """The first field `name` (lowercase), None if absent; see `problem` for duplicates."""
        return next((f for f in self.fields if f.name == name), None)

    def all(self, name: str) -> list[Field]:
        return [f for f in self.fields if f.name == name]

    def body(self) -> bytes:
        return self.data[self.body_start : self.body_end]


def read_entity(data: bytes, start: int = 0, end: int | None = None) -> Entity:
    """The header section of `data[start:end]` (RFC 5322 §2.1), judged strictly (doc §2.1)."""
    end = len(data) if end is None else end
    if data.startswith(CRLF, start):
        return Entity(data, (), start + 2, end, None)
    blank = data.find(CRLF + CRLF, start, min(end, start + MAX_HEADER_SECTION + 2))
    if blank < 0 and end - start > MAX_HEADER_SECTION:
        return Entity(data, (), end, end, "header section over its bound")
    header_end, body_start = (end, end) if blank < 0 else (blank + 2, blank + 4)
    fields, problem = _read_fields(data[start:header_end])
    if blank < 0:
        # header fields only, or cut off inside them: where the body starts is a guess
        problem = problem or "no empty line after the header section"
    return Entity(data, tuple(fields), body_start, end, problem)


def _read_fields(header: bytes) -> tuple[list[Field], str | None]:
    """The fields, split at CRLF only, and the first problem found. Lexing goes on after a
    problem, so that the message still has a From field to judge and answer by."""
    problem: str | None = None
    if has_bare_newline(header):
        problem = "bare CR or LF in the header section"
    elif b"\0" in header:
        problem = "NUL in the header section"
    lines = header.split(CRLF)
    if lines and lines[-1] == b"":
        lines.pop()  # the CRLF that ends the last field
    names: list[str] = []
    values: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not values or not line.strip(b" \t"):
                problem = problem or "continuation line without a field, or only white space"
                continue
            values[-1].append(line)
            continue
        raw_name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.match(raw_name):
            problem = problem or "a line that is not a header field"
            continue
        names.append(raw_name.decode("ascii").lower())
        values.append([value])
    fields = [Field(n, CRLF.join(v)) for n, v in zip(names, values, strict=True)]
    if any(len(f.value) > MAX_FIELD for f in fields):
        problem = problem or "a header field over its bound"
    seen: set[str] = set()
    for name in names:
        if name in SINGLE_FIELDS and name in seen:
            problem = problem or f"{name} given twice"
        seen.add(name)
    return fields, problem


@dataclass(frozen=True)
class ContentType:
    maintype: str
    subtype: str
    params: dict[str, str]

    @property
    def type(self) -> str:
        return f"{self.maintype}/{self.subtype}"


def parse_content_type(field: Field | None) -> ContentType | None:
    """`type/subtype; a=b; …` as RFC 2045 §5.1 has it; None if absent or not readable that way.

    Not readable: comments, RFC 2231 parameters (`name*=`), quoted pairs, 8-bit bytes, and a
    parameter named twice (which value counts would be the reader's choice).
    """
    if field is None:
        return None
    text = field.text()
    m = _TYPE.match(text)
    if m is None:
        return None
    params: dict[str, str] = {}
    pos = m.end()
    while (p := _PARAM.match(text, pos)) is not None:
        name = p.group(1).lower()
        if "*" in name or name in params:
            return None
        value = p.group(2) if p.group(2) is not None else p.group(3)
        if _ENCODED_WORD.search(value):
            return None  # some parsers decode an RFC 2047 encoded word first
        params[name] = value
        pos = p.end()
    if not _TRAILER.match(text, pos):
        return None
    return ContentType(m.group(1).lower(), m.group(2).lower(), params)


def parse_disposition(field: Field) -> str | None:
    """`inline; filename="a"` (RFC 2183) read as Content-Type is: the type, lowercase, or
    None if not readable that way (a parameter named twice, a comment, RFC 2231)."""
    text = field.text()
    m = re.match(rf"[ \t]*({_TOKEN})", text)
    if m is None:
        return None
    names: set[str] = set()
    pos = m.end()
    while (p := _PARAM.match(text, pos)) is not None:
        name = p.group(1).lower()
        if "*" in name or name in names:
            return None
        names.add(name)
        pos = p.end()
    return m.group(1).lower() if _TRAILER.match(text, pos) else None


def parse_token_field(field: Field | None) -> str | None:
    """A field whose value is one token, lowercase (Content-Transfer-Encoding); None if not."""
    if field is None:
        return None
    text = field.text()
    return text.lower() if re.fullmatch(_TOKEN, text) else None


@dataclass(frozen=True)
class Multipart:
    preamble: bytes
    parts: tuple[tuple[int, int], ...]  # (start, end) of each part in the message
    epilogue: bytes


def is_boundary(value: str | None) -> bool:
    """Whether `value` is a boundary RFC 2046 §5.1.1 allows."""
    return value is not None and _BOUNDARY.match(value) is not None


def split_multipart(entity: Entity, boundary: str, max_parts: int) -> Multipart | None:
    """The parts of a multipart body (RFC 2046 §5.1.1); None unless there is one reading only.

    A delimiter line is exactly `--boundary` (no transport padding), the close delimiter
    exactly `--boundary--`; any other line starting with `--boundary` makes the body
    unreadable, as does a missing close delimiter (recovering from it is a guess). More than
    `max_parts` parts is None too, found without reading further.
    """
    if not is_boundary(boundary):
        return None
    data, start, end = entity.data, entity.body_start, entity.body_end
    dash = b"--" + boundary.encode("ascii")
    # every position where a line starts with --boundary: the body's start, or after CRLF
    starts: list[int] = []
    if data.startswith(dash, start, end):
        starts.append(start)
    pos = start
    while (pos := data.find(CRLF + dash, pos, end)) >= 0:
        starts.append(pos + 2)
        pos += 2
        if len(starts) > max_parts + 1:  # the delimiters of max_parts, and the close one
            return None
    if not starts:
        return None
    parts: list[tuple[int, int]] = []
    for i, line_start in enumerate(starts):
        after = line_start + len(dash)
        if data.startswith(CRLF, after, end):
            if i + 1 == len(starts):
                return None  # a delimiter with no close delimiter after it
            part_end = starts[i + 1] - 2
            if part_end < after + 2:
                return None  # the next delimiter line has no CRLF of its own before it
            parts.append((after + 2, part_end))
            continue
        if i + 1 < len(starts) or not data.startswith(b"--", after, end):
            return None  # padding or text after a delimiter, or text after the close delimiter
        epilogue_start = after + 2
        if epilogue_start < end and not data.startswith(CRLF, epilogue_start, end):
            return None
        preamble_end = starts[0] - 2 if starts[0] > start else start
        return Multipart(
            data[start:preamble_end], tuple(parts), data[min(epilogue_start + 2, end) : end]
        )
    return None


def only_blank_lines(text: bytes) -> bool:
    """Whether `text` is nothing but CRLFs."""
    return text.replace(CRLF, b"") == b""
