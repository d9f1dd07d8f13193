"""What a message is, by its exact shape: the classifications of doc/encryption-gate.md §2.

The predicates read the message through `mimeparse`, which keeps the bytes as transmitted and
reports whatever could be read two ways. A message with such a problem in a header section it
needs is granted nothing: it is cleartext to the gate. Bodies are taken as transmitted, without
undoing a Content-Transfer-Encoding: the only encoding the shapes allow is the identity
(`7bit`, `8bit`).

The predicates answer a bool; only `parse_message` and `from_address` raise, and only
`Reject` (500), for bytes that are not a message at all or a From field without one address.
The verdicts that combine them live in `mailcheck`.
"""

from __future__ import annotations

import re

from . import openpgp
from .addresses import parse_mailbox
from .mimeparse import (
    CRLF,
    ContentType,
    Entity,
    has_bare_newline,
    is_boundary,
    only_blank_lines,
    parse_content_type,
    parse_disposition,
    parse_token_field,
    read_entity,
    split_multipart,
)
from .smtpreject import invalid_from_header, parse_failed

SECUREJOIN_STEPS = frozenset({"vc-request", "vg-request"})
SECUREJOIN_BODIES = frozenset({f"secure-join: {step}".encode() for step in SECUREJOIN_STEPS})
AUTOCRYPT_SETUP_SUBJECT = "Autocrypt Setup Message"
MAILER_DAEMON_LOCALPART = "mailer-daemon"
# The third part of a delivery report: the returned message, or its header (RFC 3462, 6522)
RETURNED_MESSAGE_TYPES = frozenset(
    {"message/rfc822", "text/rfc822-headers", "message/rfc822-headers"}
)
# The one preamble text a real OpenPGP mailer writes (Thunderbird, and others after it).
OPENPGP_PREAMBLE = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)"
PART_FIELDS = frozenset(
    {"content-type", "content-transfer-encoding", "content-description", "content-disposition"}
)
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit"})
# The From field, in the forms mail programs write (doc §2.1): the address alone, or an
# optional display name and the address in angle brackets, then at most one comment, not
# nested. Words of the display name are atoms (with ".", RFC 2047 encoded words and UTF-8
# among them, RFC 6532) or quoted strings. One linear regular expression: no group syntax,
# no list, and no reading of one field two ways (Python's RFC 5322 parser takes the first
# address in `a@b <c@d>`, a mail client the second).
_CONTROL = r"\x00-\x1f\x7f-\x9f"  # no control character anywhere in the field
_ATOM_CHAR = rf'[^\s"<>()\[\]\\,;:@{_CONTROL}]'
_WORD = rf'(?:{_ATOM_CHAR}+|"(?:[^"\\{_CONTROL}]|\\[^{_CONTROL}])*")'
_ADDR = rf"{_ATOM_CHAR}+@(?:{_ATOM_CHAR}+|\[[^\s\[\]\\{_CONTROL}]+\])"
_COMMENT = rf"\([^()\\{_CONTROL}]*\)"
_FROM = re.compile(
    rf"[ \t]*(?:(?P<bare>{_ADDR})|(?:{_WORD}(?:[ \t]+{_WORD})*)?[ \t]*<(?P<bracketed>{_ADDR})>)"
    rf"(?:[ \t]*{_COMMENT})?[ \t]*\Z"
)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
MAX_FROM = 2000  # characters of a From field: a display name is never longer


def parse_message(data: bytes) -> Entity:
    """The message in `data` (CRLF as from SMTP); Reject 500 if it has no header field at all."""
    msg = read_entity(data)
    if not msg.fields:
        raise parse_failed("no header fields")
    return msg


def from_address(msg: Entity) -> str:
    """The one address of the one From field; Reject 500 `Invalid FROM header: ...` otherwise.

    Stricter than RFC 5322 needs for reading, as spoofing needs exactly these: more than one
    From field, more than one address in it, and forms other than those of `_FROM` (a group,
    nested comments, an address before the angle brackets) are refused. The address itself
    is in the one syntax of envelope addresses (doc §1.1).
    """
    fields = msg.all("from")
    if not fields:
        raise invalid_from_header("missing")
    if len(fields) > 1:
        raise invalid_from_header("more than one From header")
    try:
        # 8-bit header bytes are read as UTF-8 (RFC 6532), nothing else
        text = fields[0].value.replace(CRLF, b"").decode("utf-8")
    except UnicodeError:
        raise invalid_from_header("not UTF-8") from None
    if not text.strip(" \t"):
        raise invalid_from_header("no address")
    written = _FROM.match(text) if len(text) <= MAX_FROM else None
    if written is None:
        if "," in _QUOTED.sub("", text):
            raise invalid_from_header("more than one address")
        raise invalid_from_header("malformed address")
    addr = written["bare"] or written["bracketed"]
    if parse_mailbox(addr) is None:
        raise invalid_from_header("malformed address")
    return addr


def _content_type(entity: Entity) -> ContentType | None:
    """The Content-Type of an entity whose header section has one reading, else None. A
    Content-Disposition and a Content-Transfer-Encoding, if there, must be readable too."""
    if entity.problem is not None:
        return None
    disposition = entity.get("content-disposition")
    if disposition is not None and parse_disposition(disposition) is None:
        return None
    encoding = entity.get("content-transfer-encoding")
    if encoding is not None and parse_token_field(encoding) is None:
        return None
    return parse_content_type(entity.get("content-type"))


def _identity_encoded(entity: Entity, allowed: frozenset[str] = _IDENTITY_ENCODINGS) -> bool:
    field = entity.get("content-transfer-encoding")
    return field is None or parse_token_field(field) in allowed


def _multipart(msg: Entity, subtype: str) -> ContentType | None:
    """The Content-Type of a `multipart/<subtype>` message with a valid boundary and an
    identity encoding (a multipart declared base64 would be read as such by some), else None."""
    ctype = _content_type(msg)
    if ctype is None or ctype.type != f"multipart/{subtype}" or not _identity_encoded(msg):
        return None
    return ctype if is_boundary(ctype.params.get("boundary")) else None


def _leaf_parts(
    msg: Entity, ctype: ContentType, max_parts: int, preamble: bytes = b""
) -> list[Entity] | None:
    """The parts of a multipart message with a blank preamble (or `preamble` among blank
    lines) and epilogue, each with only PART_FIELDS; None if anything else."""
    multipart = split_multipart(msg, ctype.params["boundary"], max_parts)
    if multipart is None or not only_blank_lines(multipart.epilogue):
        return None
    if has_bare_newline(multipart.preamble):
        return None
    # without a bare CR or LF, strip() takes whole CRLFs only
    if multipart.preamble.strip(b"\r\n") not in (b"", preamble or b""):
        return None
    parts = [read_entity(msg.data, start, end) for start, end in multipart.parts]
    for part in parts:
        if part.problem is not None or any(f.name not in PART_FIELDS for f in part.fields):
            return None
    return parts


def _blank_around(body: bytes, text: bytes) -> bool:
    """Whether `body` is `text` with nothing but spaces, tabs and CRLFs around it."""
    return body.strip(b" \t\r\n") == text and not has_bare_newline(body)


def is_encrypted(msg: Entity, outgoing: bool) -> bool:
    """Exactly the PGP/MIME shape of doc §2.2 around an encrypted OpenPGP message (§2.3).

    Outgoing mail may not carry a `Version:` armor header; incoming mail may.
    """
    ctype = _multipart(msg, "encrypted")
    if ctype is None:
        return False
    if ctype.params.get("protocol", "application/pgp-encrypted").lower() != (
        "application/pgp-encrypted"
    ):
        return False
    parts = _leaf_parts(msg, ctype, 2, preamble=OPENPGP_PREAMBLE)
    if parts is None or len(parts) != 2:
        return False
    control, data = parts
    seven_bit = frozenset({"7bit"})
    if not (_identity_encoded(control, seven_bit) and _identity_encoded(data, seven_bit)):
        return False
    control_type, data_type = _content_type(control), _content_type(data)
    if control_type is None or control_type.type != "application/pgp-encrypted":
        return False
    if not _blank_around(control.body(), b"Version: 1"):
        return False
    if data_type is None or data_type.type != "application/octet-stream":
        return False
    return openpgp.is_armored_encrypted_message(
        data.data, not outgoing, data.body_start, data.body_end
    )


def is_securejoin_request(msg: Entity) -> bool:
    """The cleartext opening step of Secure-Join, `vc-request` or `vg-request` (§2.4).

    Header and body need not name the same step: each must be one of the two.
    """
    if msg.problem is not None:
        return False
    field = msg.get("secure-join")
    if field is None or field.text() not in SECUREJOIN_STEPS:
        return False
    ctype = _multipart(msg, "mixed")
    if ctype is None:
        return False
    parts = _leaf_parts(msg, ctype, 1)
    if parts is None or len(parts) != 1:
        return False
    (part,) = parts
    part_type = _content_type(part)
    if part_type is None or part_type.type != "text/plain" or not _identity_encoded(part):
        return False
    body = part.body()
    return not has_bare_newline(body) and body.strip(b" \t\r\n").lower() in SECUREJOIN_BODIES


def is_autocrypt_setup_message(msg: Entity, from_addr: str, rcpts: list[str]) -> bool:
    """A self-sent Autocrypt Setup Message (§2.4).

    The one recipient is compared with the From address ignoring case, as MAIL FROM is: both
    spellings reach the same mailbox. The Subject is compared as transmitted (after unfolding
    and trimming); an RFC 2047 encoded Subject does not match.
    """
    if len(rcpts) != 1 or rcpts[0].lower() != from_addr.lower():
        return False
    subject = msg.get("subject")
    if subject is None or subject.text() != AUTOCRYPT_SETUP_SUBJECT:
        return False
    return _multipart(msg, "mixed") is not None


def is_mailer_daemon_report(msg: Entity, from_addr: str) -> bool:
    """A cleartext delivery report from a mail system (§2.4), e.g. a peer's bounce: an
    `Auto-Submitted` other than `no` (RFC 3834), From `mailer-daemon@…`, and a
    `multipart/report; report-type=delivery-status` (RFC 3464) of the notice for people, the
    machine-readable status and, optionally, the returned message or its header."""
    auto_submitted = msg.get("auto-submitted")
    if auto_submitted is None or auto_submitted.text().lower() in ("", "no"):
        return False
    local, _at, _domain = from_addr.rpartition("@")
    if local.lower() != MAILER_DAEMON_LOCALPART:
        return False
    ctype = _multipart(msg, "report")
    if ctype is None or ctype.params.get("report-type", "").lower() != "delivery-status":
        return False
    multipart = split_multipart(msg, ctype.params["boundary"], max_parts=3)
    # a preamble of text is allowed: Postfix writes "This is a MIME-encapsulated message."
    if multipart is None or len(multipart.parts) < 2 or not only_blank_lines(multipart.epilogue):
        return False
    types = []
    for start, end in multipart.parts:
        part_type = _content_type(read_entity(msg.data, start, end))
        if part_type is None:
            return False
        types.append(part_type.type)
    return types[:2] == ["text/plain", "message/delivery-status"] and (
        len(types) == 2 or types[2] in RETURNED_MESSAGE_TYPES
    )
