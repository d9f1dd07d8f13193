"""A strict oracle of the encryption gate, written from doc/encryption-gate.md alone.

`well_formed` says whether a message has exactly one of the shapes of sections 2.2-2.4 that
its direction allows. It was written without looking at the gate (mailshape, mailcheck,
openpgp, smtpfront) and in another style on purpose: the message is matched by whole
regular expressions over bytes (a grammar, not a line-by-line parser), and the packet stream
of 2.3 by a separate tiny walker, so the two implementations are unlikely to share a bug.
gate_fuzz.py holds the gate against it: whatever the gate accepts, the oracle must accept.

Where the document leaves a choice, the oracle takes the stricter reading; each such place
is marked "STRICT:" below.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

CRLF = b"\r\n"

# --- 2.1 The header section

# A field name: printable ASCII other than ":" (STRICT: printable means 0x21-0x7E, so a
# space in a name, as in the obsolete `Name : value`, is no field). A field ends at CRLF;
# a continuation line starts with a space or tab. NUL, bare CR and bare LF match nowhere.
_NAME = rb"[\x21-\x39\x3b-\x7e]+"
_TEXT = rb"[^\r\n\x00]*"
# A continuation line holds more than white space: one that holds only that ends the header
# section for some parsers (2.1).
_MORE = rb"[ \t]+[^\r\n\x00 \t]" + _TEXT
_FIELD = rb"(?P<name>" + _NAME + rb"):(?P<value>" + _TEXT + rb"(?:\r\n" + _MORE + rb")*)\r\n"
# One or more fields, nothing else: no continuation before the first field (2.1).
_SECTION = re.compile(rb"(?:" + _NAME + rb":" + _TEXT + rb"\r\n(?:" + _MORE + rb"\r\n)*)+")
_FIELDS = re.compile(_FIELD)

# Fields RFC 5322, MIME or the chat protocol allow once (2.1), compared ignoring case.
ONCE = frozenset(
    name.lower().encode()
    for name in (
        "From Sender Reply-To To Cc Bcc Subject Date Message-ID In-Reply-To References "
        "MIME-Version Content-Type Content-Transfer-Encoding Content-Disposition "
        "Content-Description Content-ID Secure-Join Auto-Submitted"
    ).split()
)

# 2.1 structured MIME fields: RFC 2045 tokens, quoted strings without backslash escapes
# (STRICT: and of printable ASCII, space and tab only), no comments, OWS around ";" only.
_TOKEN = rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
# no ";" in a quoted value (2.1): some parsers split parameters at every ";"
_QUOTED = rb'"[\t\x20\x21\x23-\x3a\x3c-\x5b\x5d-\x7e]*"'
_OWS = rb"[ \t]*"
_PARAM = _OWS + rb";" + _OWS + _TOKEN + rb"=(?:" + _TOKEN + rb"|" + _QUOTED + rb")"
_PARAMS = rb"(?P<params>(?:" + _PARAM + rb")*)"
# STRICT: OWS is allowed at the start (after "Name:") and at the end of a field value only,
# and one ";" may end the parameters (2.1).
_END = rb"(?:" + _OWS + rb";)?" + _OWS
_CONTENT_TYPE = re.compile(
    _OWS + rb"(?P<type>" + _TOKEN + rb")/(?P<sub>" + _TOKEN + rb")" + _PARAMS + _END
)
# Content-Disposition is read with the same parameter grammar (STRICT: the doc gives the
# grammar for Content-Type only; a disposition is one token instead of type/subtype).
_DISPOSITION = re.compile(_OWS + rb"(?P<type>" + _TOKEN + rb")(?P<sub>)" + _PARAMS + _END)
# Content-Transfer-Encoding: one token, compared ignoring case (2.1).
_ENCODING = re.compile(_OWS + rb"(?P<type>" + _TOKEN + rb")" + _OWS)
_ONE_PARAM = re.compile(
    _OWS + rb";" + _OWS + rb"(?P<attr>" + _TOKEN + rb")=(?P<val>" + _TOKEN + rb"|" + _QUOTED + rb")"
)

# RFC 2046 boundary: 1-70 bchars, not ending in a space (2.2).
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


@dataclass(frozen=True)
class MimeType:
    type: bytes  # lowercase, for Content-Disposition the disposition
    sub: bytes  # lowercase, empty for Content-Disposition
    params: dict[bytes, bytes]  # lowercase attribute -> value without quotes


@dataclass(frozen=True)
class Header:
    """A header section that is not ambiguous (2.1)."""

    fields: tuple[tuple[bytes, bytes], ...]  # (lowercase name, unfolded value)
    content_type: MimeType | None
    encoding: bytes | None  # Content-Transfer-Encoding, lowercase, OWS removed

    def get(self, name: bytes) -> bytes | None:
        for key, value in self.fields:
            if key == name:
                return value
        return None

    def names(self) -> list[bytes]:
        return [key for key, _ in self.fields]


def _structured(pattern: re.Pattern[bytes], value: bytes) -> MimeType | None:
    """A Content-Type or Content-Disposition by the grammar of 2.1, None if unreadable."""
    match = pattern.fullmatch(value)
    if match is None:
        return None
    params: dict[bytes, bytes] = {}
    for param in _ONE_PARAM.finditer(match["params"]):
        attr, val = param["attr"].lower(), param["val"]
        if b"*" in attr or attr in params:  # RFC 2231 forms, a parameter named twice
            return None
        if re.search(rb"=\?[^?]*\?[bq]\?[^?]*\?=", val, re.IGNORECASE):
            return None  # an encoded word: some parsers decode it first (2.1)
        params[attr] = val[1:-1] if val.startswith(b'"') else val
    return MimeType(match["type"].lower(), match["sub"].lower(), params)


def parse_header(section: bytes) -> Header | None:
    """The header section `section` (its lines with their CRLFs), None if ambiguous (2.1)."""
    # bounds (2.1): 256 KiB for the section, 64 KiB for a field with its folding
    if len(section) > 256 * 1024 or _SECTION.fullmatch(section) is None:
        return None
    found = list(_FIELDS.finditer(section))
    if any(len(m["value"]) > 64 * 1024 for m in found):
        return None
    fields = tuple((m["name"].lower(), m["value"].replace(CRLF, b"")) for m in found)
    names = [name for name, _ in fields]
    if any(names.count(name) > 1 for name in ONCE):
        return None
    header = Header(fields, None, None)
    # A structured MIME field that does not parse makes the message ambiguous (2.1).
    content_type = encoding = None
    if (value := header.get(b"content-type")) is not None:
        if (content_type := _structured(_CONTENT_TYPE, value)) is None:
            return None
    if (value := header.get(b"content-disposition")) is not None:
        if _structured(_DISPOSITION, value) is None:
            return None
    if (value := header.get(b"content-transfer-encoding")) is not None:
        if (match := _ENCODING.fullmatch(value)) is None:
            return None
        encoding = match["type"].lower()
    return Header(fields, content_type, encoding)


def split_entity(data: bytes) -> tuple[Header, bytes] | None:
    """Header section and body of a message or a part: up to the first empty line (2.1).

    STRICT: without an empty line (a message of header fields only, or one cut inside its
    header) there is no shape at all.
    """
    if data.startswith(CRLF):  # the first line is empty: no field at all
        return None
    end = data.find(CRLF + CRLF)
    if end < 0:
        return None
    header = parse_header(data[: end + 2])
    return None if header is None else (header, data[end + 4 :])


def _multipart_boundary(header: Header, subtype: bytes) -> bytes | None:
    """The boundary of a `multipart/<subtype>` entity (STRICT: always required, RFC 2046)."""
    ctype = header.content_type
    if ctype is None or (ctype.type, ctype.sub) != (b"multipart", subtype):
        return None
    # STRICT: a multipart's own Content-Transfer-Encoding may only be 7bit or 8bit
    # (RFC 2045 §6.4 also allows binary, which no shape here needs).
    if header.encoding not in (None, b"7bit", b"8bit"):
        return None
    boundary = ctype.params.get(b"boundary")
    if boundary is None or _BOUNDARY.fullmatch(boundary) is None:
        return None
    return boundary


# --- 2.2 the multipart body: delimiter lines are exactly "--B"


def split_multipart(body: bytes, boundary: bytes) -> tuple[bytes, list[bytes], bytes] | None:
    """Preamble, parts and epilogue of `body`; None unless every line starting with --B is a
    delimiter line exactly (no transport padding) and the close delimiter ends the body but
    for the epilogue. A bare CR or LF starts a line here too (STRICT)."""
    dash = b"--" + boundary
    starts = [m.start() for m in re.finditer(rb"(?:\A|(?<=[\r\n]))" + re.escape(dash), body)]
    if len(starts) < 2:
        return None
    *opens, close = starts
    closing = re.compile(re.escape(dash) + rb"--(?P<epilogue>(?:\r\n)*)")
    if (match := closing.fullmatch(body, close)) is None:
        return None
    for start in starts:
        if start > 0 and body[start - 2 : start] != CRLF:
            return None
    for start in opens:
        if body[start : start + len(dash) + 2] != dash + CRLF:
            return None
    parts = []
    for start, end in zip(opens, starts[1:], strict=True):
        first = start + len(dash) + 2
        if end - 2 < first:  # the CRLF before the next delimiter is that line's own
            return None
        parts.append(body[first : end - 2])
    return body[: opens[0]], parts, match["epilogue"]


PART_FIELDS = frozenset(
    [b"content-type", b"content-transfer-encoding", b"content-description", b"content-disposition"]
)


def _part(
    data: bytes, ctype: tuple[bytes, bytes], encodings: tuple[bytes, ...]
) -> tuple[MimeType, bytes] | None:
    """Content-Type and body of a part of type `ctype` with the fields of 2.2 only, each once."""
    entity = split_entity(data)
    if entity is None:
        return None
    header, body = entity
    names = header.names()
    if not set(names) <= PART_FIELDS or len(set(names)) != len(names):
        return None
    if header.encoding not in (None, *encodings):
        return None
    found = header.content_type
    if found is None or (found.type, found.sub) != ctype:
        return None
    return found, body


THUNDERBIRD = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)" + CRLF
_BLANK_LINES = re.compile(rb"(?:\r\n)*")
_THUNDERBIRD_PREAMBLE = re.compile(rb"(?:\r\n)*" + re.escape(THUNDERBIRD) + rb"(?:\r\n)*")
_VERSION_1 = re.compile(rb"(?:[ \t]|\r\n)*Version: 1(?:[ \t]|\r\n)*")

# --- 2.3 the armor, one grammar for the whole data part body

_ARMOR = re.compile(
    rb"-----BEGIN PGP MESSAGE-----\r\n"
    # at most one armor header, "Version: " and text (STRICT: one or more printable ASCII)
    rb"(?:Version: (?P<version>[\x20-\x7e]+)\r\n)?"
    rb"\r\n"  # exactly one blank line
    # base64 lines (STRICT: each holds at least one base64 character); padding is checked
    # on their concatenation below
    rb"(?P<base64>(?:[A-Za-z0-9+/]+=*\r\n)+)"
    rb"(?:=[A-Za-z0-9+/]{4}\r\n)?"  # the CRC24 line, optional, not verified
    rb"-----END PGP MESSAGE-----"
    rb"(?:\r\n)*"  # the data part body: the armor followed by nothing but CRLFs (2.2)
)


def dearmor(body: bytes, direction: str) -> bytes | None:
    """The octets of the armor that is the whole of `body`, strictly decoded (2.3)."""
    match = _ARMOR.fullmatch(body)
    if match is None:
        return None
    if match["version"] is not None and direction != "incoming":
        return None
    text = match["base64"].replace(CRLF, b"")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
    # Canonical: "=" only as the final padding, the right amount of it, no stray bits.
    return data if base64.b64encode(data) == text else None


PKESK, SKESK, SEIPD = 1, 3, 18


def packet_tags(data: bytes) -> list[int] | None:
    """The tags of the packet stream `data` (RFC 4880 §4.2), None if it does not parse.

    STRICT: partial lengths (walked chunk by chunk) only on SEIPD, the one data packet here;
    RFC 4880 §4.2.2.4 forbids them on other packets. The doc does not say.
    """
    tags, pos, size = [], 0, len(data)
    while pos < size:
        octet = data[pos]
        pos += 1
        if not octet & 0x80:
            return None
        if octet & 0x40:  # new format: 6-bit tag, lengths of 1, 2 or 5 octets, or partial
            tag = octet & 0x3F
            while True:
                if pos >= size:
                    return None
                first = data[pos]
                partial = 224 <= first < 255
                if first < 192:
                    length, pos = first, pos + 1
                elif first < 224:
                    if pos + 2 > size:
                        return None
                    length, pos = ((first - 192) << 8) + data[pos + 1] + 192, pos + 2
                elif first == 255:
                    if pos + 5 > size:
                        return None
                    length, pos = int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
                else:
                    length, pos = 1 << (first & 0x1F), pos + 1
                if partial and tag != SEIPD:
                    return None
                if pos + length > size:
                    return None
                pos += length
                if not partial:
                    break
        else:  # old format: 4-bit tag, lengths of 1, 2 or 4 octets; indeterminate refused
            tag, kind = (octet >> 2) & 0x0F, octet & 0x03
            if kind == 3:
                return None
            width = 1 << kind
            if pos + width > size:
                return None
            length = int.from_bytes(data[pos : pos + width], "big")
            pos += width
            if pos + length > size:
                return None
            pos += length
        tags.append(tag)
    return tags


def encrypted_stream(data: bytes) -> bool:
    """Zero or more PKESK or SKESK closed by exactly one SEIPD that ends the data (2.3)."""
    tags = packet_tags(data)
    if not tags or tags[-1] != SEIPD:
        return False
    return all(tag in (PKESK, SKESK) for tag in tags[:-1])


# --- the shapes


def encrypted(header: Header, body: bytes, direction: str) -> bool:
    """2.2 and 2.3: RFC 3156 PGP/MIME, exactly."""
    boundary = _multipart_boundary(header, b"encrypted")
    if boundary is None:
        return False
    assert header.content_type is not None
    protocol = header.content_type.params.get(b"protocol")
    # a media type: compared ignoring case (2.2)
    if protocol is not None and protocol.lower() != b"application/pgp-encrypted":
        return False
    split = split_multipart(body, boundary)
    if split is None:
        return False
    preamble, parts, _ = split
    # blank lines, Thunderbird's line among them at most (2.2)
    if (
        _BLANK_LINES.fullmatch(preamble) is None
        and _THUNDERBIRD_PREAMBLE.fullmatch(preamble) is None
    ):
        return False
    if len(parts) != 2:
        return False
    control = _part(parts[0], (b"application", b"pgp-encrypted"), (b"7bit",))
    if control is None or _VERSION_1.fullmatch(control[1]) is None:
        return False
    data = _part(parts[1], (b"application", b"octet-stream"), (b"7bit",))
    if data is None:
        return False
    packets = dearmor(data[1], direction)
    return packets is not None and encrypted_stream(packets)


_STEP = re.compile(rb"[ \t]*(?:vc|vg)-request[ \t]*")
_SECURE_JOIN_BODY = re.compile(
    rb"(?:[ \t]|\r\n)*secure-join: (?:vc|vg)-request(?:[ \t]|\r\n)*", re.IGNORECASE
)


def secure_join_request(header: Header, body: bytes) -> bool:
    """2.4: the opening step of Secure-Join, cleartext."""
    step = header.get(b"secure-join")
    if step is None or _STEP.fullmatch(step) is None:  # STRICT: case as written
        return False
    boundary = _multipart_boundary(header, b"mixed")
    split = None if boundary is None else split_multipart(body, boundary)
    if split is None:
        return False
    preamble, parts, _ = split
    if _BLANK_LINES.fullmatch(preamble) is None or len(parts) != 1:
        return False
    text = _part(parts[0], (b"text", b"plain"), (b"7bit", b"8bit"))
    if text is None:
        return False
    return _SECURE_JOIN_BODY.fullmatch(text[1]) is not None


def setup_message(header: Header, mail_from: str, rcpts: list[str]) -> bool:
    """2.4: an Autocrypt Setup Message to oneself (outgoing). The body is not looked at.

    The recipient is compared with the sender ignoring ASCII case: outgoing, both are local
    addresses, which 1.2 writes in lowercase before judging them.
    """
    if len(rcpts) != 1 or not mail_from or rcpts[0].lower() != mail_from.lower():
        return False
    subject = header.get(b"subject")
    if subject is None or subject.strip(b" \t") != b"Autocrypt Setup Message":
        return False
    return _multipart_boundary(header, b"mixed") is not None


# From for the delivery report (2.1, 2.4): one mailbox, either addr-spec or
# [display-name] "<" addr-spec ">", optionally followed by one comment without nesting; the
# display name words of atext (with ".", encoded words and UTF-8) or quoted strings.
_ATEXT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL = _ATEXT + rb"+(?:\." + _ATEXT + rb"+)*"
_DOMAIN = rb"@[A-Za-z0-9.\-_\[\]:]+"
_COMMENT = rb"(?:[ \t]*\([\t\x20-\x27\x2a-\x5b\x5d-\x7e\x80-\xff]*\))?"
_PHRASE_WORD = rb'(?:[A-Za-z0-9!#$%&\'*+/=?^_`{|}~.\x80-\xff-]+|"(?:[^"\\\r\n]|\\[^\r\n])*")'
_DISPLAY = rb"(?:" + _PHRASE_WORD + rb"(?:[ \t]+" + _PHRASE_WORD + rb")*)?"
_FROM = re.compile(
    rb"[ \t]*(?:(?P<local>"
    + _LOCAL
    + rb")"
    + _DOMAIN
    + rb"|"
    + _DISPLAY
    + rb"[ \t]*<(?P<l2>"
    + _LOCAL
    + rb")"
    + _DOMAIN
    + rb">)"
    + _COMMENT
    + rb"[ \t]*"
)
RETURNED = {
    (b"message", b"rfc822"),
    (b"text", b"rfc822-headers"),
    (b"message", b"rfc822-headers"),
}


def delivery_report(header: Header, body: bytes) -> bool:
    """2.4: a bounce from a mailer-daemon (incoming): RFC 3464's shape, parts' bodies unread."""
    auto = header.get(b"auto-submitted")
    if auto is None or auto.strip(b" \t").lower() in (b"", b"no"):  # RFC 3834
        return False
    from_ = header.get(b"from")
    match = None if from_ is None else _FROM.fullmatch(from_)
    if match is None or (match["local"] or match["l2"]).lower() != b"mailer-daemon":
        return False
    boundary = _multipart_boundary(header, b"report")
    if boundary is None or header.content_type is None:
        return False
    if header.content_type.params.get(b"report-type", b"").lower() != b"delivery-status":
        return False
    split = split_multipart(body, boundary)
    if split is None:
        return False
    types = []
    for part in split[1]:
        entity = split_entity(part)
        if entity is None or entity[0].content_type is None:
            return False
        types.append((entity[0].content_type.type, entity[0].content_type.sub))
    first = [(b"text", b"plain"), (b"message", b"delivery-status")]
    return types[:2] == first and (len(types) == 2 or (len(types) == 3 and types[2] in RETURNED))


def well_formed(data: bytes, direction: str, mail_from: str, rcpts: list[str]) -> bool:
    """True iff `data` has one of the shapes of 2.2-2.4 that `direction` allows."""
    if direction not in ("outgoing", "incoming"):
        raise ValueError(direction)
    # 2.1: lines of at most 998 octets, anywhere in the message
    if any(len(line) > 998 for line in data.split(CRLF)):
        return False
    entity = split_entity(data)
    if entity is None:  # ambiguous or no header: cleartext to the gate (2.1)
        return False
    header, body = entity
    if encrypted(header, body, direction) or secure_join_request(header, body):
        return True
    if direction == "outgoing":
        return setup_message(header, mail_from, rcpts)
    return delivery_report(header, body)
