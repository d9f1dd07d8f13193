"""What a message is, by its MIME shape: the classifications of relay-spec §4.2-4.5.

Parsing uses the standard library's `compat32` policy, which never parses header values on its
own: a hostile header cannot make a lazy header parser raise later, and we read exactly the
fields we need. Bodies are taken as transmitted, without undoing a Content-Transfer-Encoding,
as the reference does: real clients send the armor and the Secure-Join text as 7bit, and
anything else simply does not match.

The predicates take a parsed message and answer a bool; only `parse_message` and
`from_address` raise, and only `Reject`: what the standard library raises on hostile input
becomes a 500. The verdicts that combine them live in `mailcheck`.
"""

from __future__ import annotations

import email.errors
import email.policy
import re
from email.message import Message
from email.parser import BytesParser
from email.policy import Compat32

from . import openpgp
from .smtpreject import invalid_from_header, parse_failed

SECUREJOIN_STEPS = frozenset({"vc-request", "vg-request"})
SECUREJOIN_BODIES = frozenset({f"secure-join: {step}" for step in SECUREJOIN_STEPS})
AUTOCRYPT_SETUP_SUBJECT = "Autocrypt Setup Message"
MAILER_DAEMON_LOCALPART = "mailer-daemon"

_FOLD_RE = re.compile(r"\r?\n")
# Characters that never belong in the bare address we compare and report: whitespace and
# controls, and the delimiters of the RFC 5322 address syntax around an address. (`:` may
# appear, in an IPv6 domain literal.)
_NOT_IN_ADDRESS_RE = re.compile(r'[\x00-\x20\x7f<>,;"()\\]')


class _RawHeaders(Compat32):
    """compat32, except that a header value comes back as the `str` it was parsed into.

    compat32 would hand back an `email.header.Header` for values with 8-bit bytes; a plain
    string (8-bit bytes as surrogate escapes) keeps every caller on one type.
    """

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value


_PARSER = BytesParser(policy=_RawHeaders())

# What the email package raises on input it cannot cope with (deep nesting exhausts the stack;
# bad charsets and encodings; internal assumptions about well-formed structure). Anything
# else would be a bug of ours, and goes to the front end's generic 451.
MALFORMED_INPUT_ERRORS = (ValueError, LookupError, TypeError, AttributeError, RecursionError)


def parse_message(data: bytes) -> Message:
    """The message in `data` (CRLF as from SMTP, or LF); Reject 500 if it is not a message."""
    try:
        msg = _PARSER.parsebytes(data)
    except MALFORMED_INPUT_ERRORS as e:
        raise parse_failed(type(e).__name__) from None
    if not msg.keys():
        # compat32 takes anything as a body; bytes without a single header field are not mail.
        raise parse_failed("no header fields")
    return msg


def _header(msg: Message, name: str) -> str | None:
    """The first `name` header, unfolded and stripped, or None if absent."""
    value = msg.get(name)
    if value is None:
        return None
    return _FOLD_RE.sub("", str(value)).strip()


def _body_text(part: Message) -> str:
    """The body as transmitted; "" (which matches nothing) if it cannot be read as text.

    compat32 decodes an 8-bit body with the charset the part names, and some codecs raise
    there (`charset=idna` refuses the "replace" error handler).
    """
    try:
        payload = part.get_payload()
    except MALFORMED_INPUT_ERRORS:
        return ""
    return payload if isinstance(payload, str) else ""


def _body_bytes(part: Message) -> bytes:
    # compat32 keeps the body as str (8-bit bytes decoded with the part's charset, errors
    # replaced); anything non-ASCII fails the armor's strict base64 anyway.
    return _body_text(part).encode("utf-8", "replace")


def _leaf_parts(msg: Message) -> list[Message] | None:
    """The direct parts of a multipart message if none of them is itself multipart, else None."""
    if not msg.is_multipart():
        return None
    parts = msg.get_payload()
    if not isinstance(parts, list):
        return None
    leaves: list[Message] = []
    for part in parts:
        if not isinstance(part, Message) or part.is_multipart():
            return None
        leaves.append(part)
    return leaves


def from_address(msg: Message) -> str:
    """The one address of the one From header; Reject 500 `Invalid FROM header: ...` otherwise.

    Stricter than the reference in two places, both RFC 5322 violations that only spoofing
    needs: more than one From header, and more than one address in it, are refused.
    """
    values = msg.get_all("From") or []
    if not values:
        raise invalid_from_header("missing")
    if len(values) > 1:
        raise invalid_from_header("more than one From header")
    text = _FOLD_RE.sub("", str(values[0]))
    try:
        # 8-bit header bytes arrive as surrogate escapes; only UTF-8 (RFC 6532) is accepted.
        text = text.encode("ascii", "surrogateescape").decode("utf-8")
    except UnicodeError:
        raise invalid_from_header("not UTF-8") from None
    try:
        # The RFC 5322 parser of email.headerregistry, not email.utils.getaddresses: the
        # latter's strict mode (Debian's fix for CVE-2023-27043) drops domain literals such
        # as user@[192.0.2.1], the addresses of IPv4 relays.
        header = email.policy.default.header_factory("From", text)
        addresses = [str(a.addr_spec) for a in header.addresses if a.addr_spec]
    except (*MALFORMED_INPUT_ERRORS, email.errors.HeaderParseError):
        raise invalid_from_header("unparsable") from None
    if not addresses:
        raise invalid_from_header("no address")
    if len(addresses) > 1:
        raise invalid_from_header("more than one address")
    addr = addresses[0]
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or "@" in local or _NOT_IN_ADDRESS_RE.search(addr):
        raise invalid_from_header("malformed address")
    return addr


def is_encrypted(msg: Message, outgoing: bool) -> bool:
    """Strict RFC 3156 PGP/MIME around an encrypted OpenPGP message (§4.2).

    Outgoing mail may not carry a `Version:` armor header; incoming mail may (§4.2 step 3).
    """
    if msg.get_content_type() != "multipart/encrypted":
        return False
    parts = _leaf_parts(msg)
    if parts is None or len(parts) != 2:
        return False
    control, data = parts
    if control.get_content_type() != "application/pgp-encrypted":
        return False
    if _body_text(control).strip() != "Version: 1":
        return False
    if data.get_content_type() != "application/octet-stream":
        return False
    return openpgp.is_armored_encrypted_message(
        _body_bytes(data), allow_version_header=not outgoing
    )


def is_securejoin_request(msg: Message) -> bool:
    """The cleartext opening step of Secure-Join, `vc-request` or `vg-request` (§4.3).

    Header and body need not name the same step: the spec asks for each to be one of the two.
    """
    if _header(msg, "Secure-Join") not in SECUREJOIN_STEPS:
        return False
    parts = _leaf_parts(msg)
    if parts is None or len(parts) != 1:
        return False
    (part,) = parts
    if part.get_content_type() != "text/plain":
        return False
    return _body_text(part).strip().lower() in SECUREJOIN_BODIES


def is_autocrypt_setup_message(msg: Message, from_addr: str, rcpts: list[str]) -> bool:
    """A self-sent Autocrypt Setup Message (§4.4.6).

    The one recipient is compared with the From address ignoring case, as MAIL FROM is: both
    spellings reach the same mailbox. The Subject is compared as transmitted (after unfolding
    and trimming); an RFC 2047 encoded Subject does not match.
    """
    if len(rcpts) != 1 or rcpts[0].lower() != from_addr.lower():
        return False
    if _header(msg, "Subject") != AUTOCRYPT_SETUP_SUBJECT:
        return False
    return msg.get_content_type() == "multipart/mixed"


def is_mailer_daemon_report(msg: Message, from_addr: str) -> bool:
    """A cleartext delivery report from a mail system (§4.5.4), e.g. a peer's bounce."""
    if not _header(msg, "Auto-Submitted"):
        return False
    local, _at, _domain = from_addr.rpartition("@")
    if local.lower() != MAILER_DAEMON_LOCALPART:
        return False
    return msg.get_content_type() == "multipart/report"
