"""The decisions of the encryption gate, filtermail (relay-spec §4.4 outgoing, §4.5 incoming).

Pure functions from an envelope and the message bytes to a verdict: return to accept, raise
`Reject` to refuse. The SMTP and HTTP front ends are built on top; they own what needs state
or I/O (the size limit of §4.1, the rate limit of §4.4.2, the DKIM check of §4.6, the
re-injection), and turn a `Reject` into the reply line. The only filesystem access is
`mailbox_enforces_e2ee`, which a front end passes in as the `enforces_e2ee` callable.

A malformed message never raises anything but `Reject`: whatever the standard library's email
package raises on hostile input becomes `500 Failed to parse message`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path

from .accounts import ENFORCE_E2EE_FILE
from .mailshape import (
    MALFORMED_INPUT_ERRORS,
    from_address,
    is_autocrypt_setup_message,
    is_encrypted,
    is_mailer_daemon_report,
    is_securejoin_request,
    parse_message,
)
from .smtpreject import (
    Reject,
    encryption_needed,
    from_mismatch,
    invalid_from_address,
    parse_failed,
)

__all__ = [
    "Reject",
    "check_incoming",
    "check_mail_from",
    "check_outgoing",
    "from_address",
    "is_autocrypt_setup_message",
    "is_encrypted",
    "is_mailer_daemon_report",
    "is_securejoin_request",
    "mailbox_enforces_e2ee",
    "parse_message",
]


@contextmanager
def _malformed_is_parse_failure() -> Iterator[None]:
    """Turn what the email package raises on hostile input into `500 Failed to parse message`.

    Parsing itself is guarded in `parse_message`; reading a body later can still decode 8-bit
    text with the charset the message names, and some codecs raise there.
    """
    try:
        yield
    except MALFORMED_INPUT_ERRORS as e:
        raise parse_failed(type(e).__name__) from None


def check_mail_from(addr: str) -> None:
    """Outgoing MAIL FROM (§4.4.1): exactly one `@`, else `500 Invalid from address <...>`."""
    if addr.count("@") != 1:
        raise invalid_from_address(addr)


def check_outgoing(mail_from: str, rcpts: list[str], data: bytes) -> None:
    """Accept a submission (return) or raise `Reject`, per §4.4 steps 4-7.

    The From header must name MAIL FROM (which Postfix has tied to the login). Then only
    encrypted mail, a Secure-Join request, or a self-sent Autocrypt Setup Message passes; this
    holds for local recipients and for mail to oneself as well.
    """
    with _malformed_is_parse_failure():
        msg = parse_message(data)
        from_addr = from_address(msg)
        if from_addr.lower() != mail_from.lower():
            raise from_mismatch(from_addr, mail_from)
        if _is_exempt_as_encrypted(msg, outgoing=True):
            return
        if is_autocrypt_setup_message(msg, from_addr, rcpts):
            return
    raise encryption_needed("outgoing cleartext that no exception allows")


def check_incoming(
    mail_from: str, rcpts: list[str], data: bytes, enforces_e2ee: Callable[[str], bool]
) -> str:
    """Accept mail from a peer, or raise `Reject`, per §4.5 steps 2-5 (not the DKIM step).

    Returns the envelope sender for re-injection: MAIL FROM when it equals the From address
    (ignoring case), else "" for `<>` (§4.5.3: SRS forwarders keep working, and nobody bounces
    to a forged sender). `enforces_e2ee(rcpt)` says whether a recipient refuses cleartext;
    it is asked only for cleartext, and only until the first recipient that does.
    """
    with _malformed_is_parse_failure():
        msg = parse_message(data)
        from_addr = from_address(msg)
        envelope_sender = mail_from if mail_from.lower() == from_addr.lower() else ""
        exempt = _is_exempt_as_encrypted(msg, outgoing=False) or is_mailer_daemon_report(
            msg, from_addr
        )
    if not exempt and any(enforces_e2ee(rcpt) for rcpt in rcpts):
        raise encryption_needed("incoming cleartext for a recipient that enforces encryption")
    return envelope_sender


def _is_exempt_as_encrypted(msg: Message, outgoing: bool) -> bool:
    return is_encrypted(msg, outgoing) or is_securejoin_request(msg)


def mailbox_enforces_e2ee(mailboxes_dir: Path, rcpt: str) -> bool:
    """Whether `rcpt` refuses incoming cleartext: `<mbdir>/<rcpt>/enforceE2EEincoming` (§4.5.5).

    An address that cannot name a mailbox directory counts as having the file, so no recipient
    string can reach outside `mailboxes_dir`. When the file's existence cannot be determined
    (permissions, a name too long) the answer is also yes: the gate fails closed.
    """
    mailbox = _mailbox_name(rcpt)
    if mailbox is None:
        return True
    try:
        os.stat(mailboxes_dir / mailbox / ENFORCE_E2EE_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _mailbox_name(rcpt: str) -> str | None:
    """The directory name of the mailbox `rcpt` is delivered to, or None if it names none.

    §4.5.5 calls an address invalid if it is empty, has no `@` or contains `/`. Also refused
    here: more than one `@`, an empty local part, a backslash and control characters (NUL would
    make the path unusable). The name is lowercased and a `+detail` dropped, because Dovecot
    delivers `Alice+x@<d>` to the mailbox `alice@<d>`; account names are lowercase and never
    contain `+` (§2.2), so this only closes a way around the check, never opens one.
    """
    if not rcpt or rcpt.count("@") != 1 or "/" in rcpt or "\\" in rcpt:
        return None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in rcpt):
        return None
    local, _at, domain = rcpt.partition("@")
    local = local.split("+", 1)[0]
    if not local or not domain:
        return None
    return f"{local}@{domain}".lower()
