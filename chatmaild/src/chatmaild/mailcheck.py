"""The decisions of the encryption gate, filtermail (doc/encryption-gate.md §2, §3).

Pure functions from an envelope and the message bytes to a verdict: return to accept, raise
`Reject` to refuse. The envelope addresses have been put into their one spelling by
`addresses` before (at MAIL and RCPT); the SMTP and HTTP front ends own what needs state or
I/O (the size limit, the rate limit, the DKIM check, the re-injection), and turn a `Reject`
into the reply line. The only filesystem access is `mailbox_enforces_e2ee`, which a front end
passes in as the `enforces_e2ee` callable.

A malformed message never raises anything but `Reject`: the strict reader in `mimeparse`
never raises, and a message it cannot read one way only is simply granted no exception.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .accounts import ENFORCE_E2EE_FILE
from .mailshape import (
    from_address,
    is_autocrypt_setup_message,
    is_encrypted,
    is_mailer_daemon_report,
    is_securejoin_request,
    parse_message,
)
from .mimeparse import Entity, lines_within_limit
from .smtpreject import Reject, encryption_needed, from_mismatch

_ACCOUNT_NAME = re.compile(r"[a-z0-9._-]+@[^@/\\\x00-\x1f\x7f]+\Z")

__all__ = [
    "Incoming",
    "Reject",
    "check_incoming",
    "check_outgoing",
    "from_address",
    "is_autocrypt_setup_message",
    "is_encrypted",
    "is_mailer_daemon_report",
    "is_securejoin_request",
    "mailbox_enforces_e2ee",
    "parse_message",
]


def check_outgoing(mail_from: str, rcpts: list[str], data: bytes) -> str:
    """Accept a submission (return what it is, see `Kind`) or raise `Reject` (doc §2, §3).

    The From header must name MAIL FROM (which Postfix has tied to the login). Then only
    encrypted mail, a Secure-Join request, or a self-sent Autocrypt Setup Message passes; this
    holds for local recipients and for mail to oneself as well.
    """
    msg = parse_message(data)
    from_addr = from_address(msg)
    if from_addr.lower() != mail_from.lower():
        raise from_mismatch(from_addr, mail_from)
    kind = _exempt_kind(msg, outgoing=True)
    if kind is None and is_autocrypt_setup_message(msg, from_addr, rcpts):
        kind = Kind.SETUP_MESSAGE
    if kind is None or not lines_within_limit(data):
        raise encryption_needed("outgoing cleartext that no exception allows")
    return kind


@dataclass(frozen=True)
class Incoming:
    """What an accepted message from a peer is re-injected with, and checked against."""

    envelope_sender: str  # MAIL FROM, or "" for <>
    from_domain: str  # for the DKIM origin check
    kind: str  # what let it in (`Kind`), for the metrics


def check_incoming(
    mail_from: str, rcpts: list[str], data: bytes, enforces_e2ee: Callable[[str], bool]
) -> Incoming:
    """Accept mail from a peer, or raise `Reject` (doc §2, §3; not the DKIM check).

    The envelope sender for re-injection is MAIL FROM when it equals the From address
    (ignoring case), else "" for `<>`: SRS forwarders keep working, and nobody bounces to a
    forged sender. `enforces_e2ee(rcpt)` says whether a recipient refuses cleartext; it is
    asked only for cleartext, and only until the first recipient that does.
    """
    msg = parse_message(data)
    from_addr = from_address(msg)
    envelope_sender = mail_from if mail_from.lower() == from_addr.lower() else ""
    kind = _exempt_kind(msg, outgoing=False)
    if kind is None and is_mailer_daemon_report(msg, from_addr):
        kind = Kind.REPORT
    if kind is None or not lines_within_limit(data):
        if any(enforces_e2ee(rcpt) for rcpt in rcpts):
            raise encryption_needed("incoming cleartext for a recipient that enforces encryption")
        kind = Kind.CLEARTEXT
    return Incoming(envelope_sender, from_addr.rpartition("@")[2], kind)


class Kind:
    """What let a message through the gate: label values of the gate's metrics."""

    ENCRYPTED = "encrypted"
    SECUREJOIN = "securejoin"
    SETUP_MESSAGE = "setup_message"  # outgoing only
    REPORT = "report"  # incoming only: a mailer-daemon report
    CLEARTEXT = "cleartext"  # incoming only: for recipients who accept it


def _exempt_kind(msg: Entity, outgoing: bool) -> str | None:
    if is_encrypted(msg, outgoing):
        return Kind.ENCRYPTED
    if is_securejoin_request(msg):
        return Kind.SECUREJOIN
    return None


def mailbox_enforces_e2ee(mailboxes_dir: Path, rcpt: str) -> bool:
    """Whether `rcpt` refuses incoming cleartext: `<mbdir>/<rcpt>/enforceE2EEincoming`.

    `rcpt` comes in its canonical form (`addresses.AddressPolicy.incoming_recipient`), the
    name of the mailbox Dovecot delivers to. An address that still cannot name a mailbox
    directory counts as having the file, so no recipient string can reach outside
    `mailboxes_dir`. When the file's existence cannot be determined (permissions, a name too
    long) the answer is also yes: the gate fails closed.
    """
    if not _names_a_directory(rcpt):
        return True
    try:
        os.stat(mailboxes_dir / rcpt / ENFORCE_E2EE_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _names_a_directory(rcpt: str) -> bool:
    """An account's name: local part of account characters, a domain without path separators
    or control characters (NUL included)."""
    return _ACCOUNT_NAME.match(rcpt) is not None
