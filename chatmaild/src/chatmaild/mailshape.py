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

import email.errors
import email.policy
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
    strip_blank_lines,
)
from .smtpreject import invalid_from_header, parse_failed

SECUREJOIN_STEPS = frozenset({"vc-request", "vg-request"})
SECUREJOIN_BODIES = frozenset({f"secure-join: {step}".encode() for step in SECUREJOIN_STEPS})
AUTOCRYPT_SETUP_SUBJECT = "Autocrypt Setup Message"
MAILER_DAEMON_LOCALPART = "mailer-daemon"
# The one preamble text a real OpenPGP mailer writes (Thunderbird, and others after it).
OPENPGP_PREAMBLE = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)"
PART_FIELDS = frozenset(
    {"content-type", "content-transfer-encoding", "content-description", "content-disposition"}
)
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit"})
# Characters that never belong in the bare address we compare and report: whitespace and
# controls, and the delimiters of the RFC 5322 address syntax around an address. (`:` may
# appear, in an IPv6 domain literal.)
_NOT_IN_ADDRESS = frozenset('\x7f<>,;"()\\') | frozenset(map(chr, range(0x21)))

# The From field of a delivery report, in the forms mail systems write (doc §2.4): the
# address, or a display name (atoms or one quoted string) and the address in brackets; then
# at most one comment, not nested.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_BARE_ADDRESS = r"[^\s<>()\[\]\",;:\\@]+@(?:[^\s<>()\[\]\",;:\\@]+|\[[0-9A-Za-z.:]+\])"
_DISPLAY_NAME = rf'"[\x20\x21\x23-\x5b\x5d-\x7e]*"|{_ATOM}(?:[ \t]+{_ATOM})*'
_COMMENT = r"\([\t\x20-\x27\x2a-\x5b\x5d-\x7e]*\)"
_REPORT_FROM = re.compile(
    rf"[ \t]*(?:(?P<bare>{_BARE_ADDRESS})"
    rf"|(?:{_DISPLAY_NAME})?[ \t]*<(?P<bracketed>{_BARE_ADDRESS})>)"
    rf"(?:[ \t]*{_COMMENT})?[ \t]*\Z"
)

# What the email package's address parser may raise on hostile input.
_ADDRESS_PARSE_ERRORS = (
    ValueError,
    LookupError,
    TypeError,
    AttributeError,
    RecursionError,
    email.errors.HeaderParseError,
)


def parse_message(data: bytes) -> Entity:
    """The message in `data` (CRLF as from SMTP); Reject 500 if it has no header field at all."""
    msg = read_entity(data)
    if not msg.fields:
        raise parse_failed("no header fields")
    return msg


def from_address(msg: Entity) -> str:
    """The one address of the one From header; Reject 500 `Invalid FROM header: ...` otherwise.

    Stricter than RFC 5322 needs for reading, as spoofing needs exactly these: more than one
    From field, and more than one address in it, are refused.
    """
    fields = msg.all("from")
    if not fields:
        raise invalid_from_header("missing")
    if len(fields) > 1:
        raise invalid_from_header("more than one From header")
    try:
        # 8-bit header bytes arrive as surrogate escapes; only UTF-8 (RFC 6532) is accepted.
        text = fields[0].value.replace(CRLF, b"").decode("utf-8")
    except UnicodeError:
        raise invalid_from_header("not UTF-8") from None
    try:
        # The RFC 5322 parser of email.headerregistry, not email.utils.getaddresses: the
        # latter's strict mode (Debian's fix for CVE-2023-27043) drops domain literals such
        # as user@[192.0.2.1], the addresses of IPv4 relays.
        header = email.policy.default.header_factory("From", text)
        addresses = [str(a.addr_spec) for a in header.addresses if a.addr_spec]
    except _ADDRESS_PARSE_ERRORS:
        raise invalid_from_header("unparsable") from None
    if not addresses:
        raise invalid_from_header("no address")
    if len(addresses) > 1:
        raise invalid_from_header("more than one address")
    addr = addresses[0]
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or "@" in local or _NOT_IN_ADDRESS & set(addr):
        raise invalid_from_header("malformed address")
    return addr


def _content_type(entity: Entity) -> ContentType | None:
    """The Content-Type of an entity whose header section has one reading, else None. A
    Content-Disposition, if there is one, must be readable too."""
    if entity.problem is not None:
        return None
    disposition = entity.get("content-disposition")
    if disposition is not None and parse_disposition(disposition) is None:
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


def _leaf_parts(msg: Entity, ctype: ContentType, preamble: bytes = b"") -> list[Entity] | None:
    """The parts of a multipart message with a blank preamble (or `preamble` among blank
    lines) and epilogue, each with only PART_FIELDS; None if anything else."""
    multipart = split_multipart(msg, ctype.params["boundary"])
    if multipart is None or not only_blank_lines(multipart.epilogue):
        return None
    if strip_blank_lines(multipart.preamble) not in (b"", preamble or b""):
        return None
    if has_bare_newline(multipart.preamble):
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
    parts = _leaf_parts(msg, ctype, preamble=OPENPGP_PREAMBLE)
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
    parts = _leaf_parts(msg, ctype)
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
    """A cleartext delivery report from a mail system (§2.4), e.g. a peer's bounce.

    Its From field must be in one of the simple forms mail systems write, naming `from_addr`
    in the one address syntax: a bounce is the one cleartext that comes from anybody.
    """
    auto_submitted = msg.get("auto-submitted")
    if auto_submitted is None or not auto_submitted.text():
        return False
    local, _at, _domain = from_addr.rpartition("@")
    if local.lower() != MAILER_DAEMON_LOCALPART or parse_mailbox(from_addr) is None:
        return False
    from_field = msg.get("from")
    written = _REPORT_FROM.match(from_field.text()) if from_field is not None else None
    if written is None or (written["bare"] or written["bracketed"]) != from_addr:
        return False
    return _multipart(msg, "report") is not None
