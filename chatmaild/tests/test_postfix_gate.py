"""The encryption gate with the real daemons: no spelling of an account's address gets
cleartext past it (doc/encryption-gate.md §1).

A private Postfix rendered from the relay's templates, the real `filtermail incoming` and a
private Dovecot (postfix_harness.py, dovecot_harness.py). A peer sends cleartext over the
port-25 listener (STARTTLS) to one spelling of a fresh account's address; the account has
`enforceE2EEincoming`. Each spelling must get exactly the plain address's decision (`523`
after DATA) or a refusal (a 5xx before DATA), and the cleartext must never reach a mailbox.
Two controls show the path can deliver: encrypted mail to the plain address, and cleartext to
an account without the file; and what the gate re-injects is the canonical address it judged.
`/mxdeliv` is checked the same way with `X-MAIL-TO`.

Each outcome (replies, the mailboxes holding the message, Postfix's log lines about it) is
printed, so `pytest -rA` shows what the real daemons did with every spelling.

The sender is an IP-literal domain, so the gate's DKIM check does not apply and
no DNS is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import imaplib
import re
import secrets
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dovecot_harness import Relay
from postfix_harness import (
    MAIN_CF_REMOVED,
    PEER_ADDRESS,
    PostfixRelay,
    main_cf_changes,
    postfix_or_skip,
    running_postfix,
    unverified_tls,
)

from chatmaild.accounts import BLOCKED_FILE, ENFORCE_E2EE_FILE
from chatmaild.reinject import Reinjector

pytestmark = pytest.mark.dovecot

MAIL = Path(__file__).parent / "data" / "mail"
SENDER = "x@[192.0.2.1]"
PASSWORD = "gate-test-password"
CYRILLIC = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441"}

# name: (RCPT TO argument, X-MAIL-TO value), None where a form has no counterpart; {l} the
# local part, {d} the domain, {L} and {D} upper case; {cyr} the domain with a Cyrillic
# look-alike letter, {full} in fullwidth forms, {ideo} with ideographic full stops (the last
# two map to the domain under UTS #46). Postfix reads many of these as the plain address.
SPELLINGS: dict[str, tuple[str | None, str | None]] = {
    "plain": ("<{l}@{d}>", "{l}@{d}"),
    "upper-case": ("<{L}@{D}>", "{L}@{D}"),
    "quoted-local-part": ('<"{l}"@{d}>', '"{l}"@{d}'),
    "quoted-pair": ('<"\\{l}"@{d}>', '"\\{l}"@{d}'),
    "quoted-whole-address": ('<"{l}@{d}"@{d}>', '"{l}@{d}"@{d}'),
    "quoted-domain": ('<{l}@"{d}">', '{l}@"{d}"'),
    "backslash-escape": ("<\\{l}@{d}>", "\\{l}@{d}"),
    "trailing-dot": ("<{l}@{d}.>", "{l}@{d}."),
    "plus-detail": ("<{l}+x@{d}>", "{l}+x@{d}"),
    "percent-hack": ("<{l}%other.example@{d}>", "{l}%other.example@{d}"),
    "percent-hack-own-domain": ("<{l}%{d}@{d}>", "{l}%{d}@{d}"),
    "bang-path": ("<{d}!{l}@{d}>", "{d}!{l}@{d}"),
    "source-route": ("<@x.example:{l}@{d}>", "@x.example:{l}@{d}"),
    "source-route-two-hops": ("<@a.example,@b.example:{l}@{d}>", "@a.example,@b.example:{l}@{d}"),
    "comment": ("<{l}@{d}> (comment)", "{l}@{d} (comment)"),
    "comment-in-path": ("<{l}@{d} (comment)>", None),
    "comment-before": ("<(comment){l}@{d}>", "(comment){l}@{d}"),
    "phrase": ("<Name <{l}@{d}>>", "Name <{l}@{d}>"),
    "angle-brackets": ("<<{l}@{d}>>", "<{l}@{d}>"),
    "no-brackets": ("{l}@{d}", None),
    "space-before-at": ("<{l} @{d}>", "{l} @{d}"),
    "tab-before-at": ("<{l}\t@{d}>", "{l}\t@{d}"),
    "spaces-inside-brackets": ("< {l}@{d} >", None),
    "ip-literal-of-host": ("<{l}@[127.0.0.1]>", "{l}@[127.0.0.1]"),
    "ip-literal-of-host-ipv6": ("<{l}@[IPv6:::ffff:127.0.0.1]>", "{l}@[IPv6:::ffff:127.0.0.1]"),
    "idn-cyrillic-letter": ("<{l}@{cyr}>", "{l}@{cyr}"),
    "idn-fullwidth": ("<{l}@{full}>", "{l}@{full}"),
    "idn-ideographic-dot": ("<{l}@{ideo}>", "{l}@{ideo}"),
}
SMTP_SPELLINGS = [name for name, (rcpt, _) in SPELLINGS.items() if rcpt is not None]
MXDELIV_SPELLINGS = [name for name, (_, x_mail_to) in SPELLINGS.items() if x_mail_to is not None]


def spell(template: str, local: str, domain: str) -> str:
    letter = next(ch for ch in domain if ch in CYRILLIC)
    return template.format(
        l=local,
        d=domain,
        L=local.capitalize(),
        D=domain.upper(),
        cyr=domain.replace(letter, CYRILLIC[letter], 1),
        full="".join(chr(ord(ch) + 0xFEE0) for ch in domain),  # "." -> U+FF0E
        ideo=domain.replace(".", "\u3002"),
    )


@pytest.fixture(scope="module")
def postfix(relay: Relay) -> Iterator[PostfixRelay]:
    postfix_or_skip()
    with running_postfix(relay) as instance:
        yield instance


@dataclass
class Account:
    addr: str
    local: str
    home: Path


@pytest.fixture
def account(postfix: PostfixRelay) -> Account:
    """A fresh account, created by its first IMAP login: it enforces encryption."""
    local = "g" + secrets.token_hex(4)  # 9 characters, as username_min/max_length ask
    addr = f"{local}@{postfix.domain}"
    with imap(postfix, addr):
        pass
    home = postfix.dovecot.mailboxes / addr
    assert (home / ENFORCE_E2EE_FILE).exists()
    return Account(addr, local, home)


@contextlib.contextmanager
def imap(postfix: PostfixRelay, addr: str) -> Iterator[imaplib.IMAP4]:
    """Logged in as `addr` (the first login creates the account)."""
    conn = imaplib.IMAP4("127.0.0.1", postfix.dovecot.imap_port, timeout=10)
    try:
        conn.login(addr, PASSWORD)
        yield conn
    finally:
        conn.logout()


def holding(postfix: PostfixRelay, account: Account, marker: str) -> list[str]:
    """The account's mailboxes (every one, by IMAP) holding a message with `marker`."""
    found = []
    with imap(postfix, account.addr) as conn:
        typ, listing = conn.list()
        assert typ == "OK"
        for item in listing:
            assert isinstance(item, bytes)
            m = re.match(rb'\(.*?\) (?:"[^"]*"|NIL) (.+)$', item)
            assert m, item
            name = m.group(1).decode()
            typ, _ = conn.select(name, readonly=True)
            assert typ == "OK", name
            typ, data = conn.fetch("1:*", "(BODY.PEEK[])") if _count(conn) else ("OK", [])
            assert typ == "OK"
            for part in data:
                if isinstance(part, tuple) and marker.encode() in part[1]:
                    found.append(name)
            conn.close()
    return found


def _count(conn: imaplib.IMAP4) -> int:
    typ, data = conn.search(None, "ALL")
    assert typ == "OK"
    return len(data[0].split()) if data and data[0] else 0


def cleartext(marker: str, to: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {to}\r\nSubject: cleartext\r\n"
        "Date: Thu, 01 Jan 2026 12:00:00 +0000\r\n"
        f"Message-ID: <{marker}@gate.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Cleartext that must not be stored: {marker}\r\n"
    ).encode()


def encrypted(marker: str, to: str) -> bytes:
    """enc-bob.eml with our sender, recipient and Message-ID; the gate only checks shape."""
    text = (MAIL / "enc-bob.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    for old, new in [
        (b"From: alice@example.org", f"From: {SENDER}"),
        (b"To: bob@example.org", f"To: {to}"),
        (b"Message-ID: <corpus@example.org>", f"Message-ID: <{marker}@gate.test>"),
    ]:
        assert old in text
        text = text.replace(old, new.encode())
    return text


@dataclass
class Outcome:
    """What the peer saw, and where the message went."""

    replies: list[tuple[str, int, str]] = field(default_factory=list)  # (command, code, text)
    refused_before_data: bool = False
    final: int | None = None  # the reply to the message (DATA's end), if it got that far
    mailboxes: list[str] = field(default_factory=list)
    trail: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return bool(self.mailboxes) or any(" status=sent " in line for line in self.trail)

    def describe(self) -> str:
        return "\n".join(
            [
                *(f"{command} {code} {text}" for command, code, text in self.replies),
                f"mailboxes holding it: {self.mailboxes}",
                "Postfix log:",
                *self.trail,
            ]
        )

    def codes(self) -> list[tuple[str, int]]:
        return [(command, code) for command, code, _text in self.replies]


def send_smtp(postfix: PostfixRelay, rcpt_argument: str, message: bytes) -> Outcome:
    """One transaction on the port-25 listener, from outside mynetworks, over STARTTLS."""
    outcome = Outcome()
    utf8 = not rcpt_argument.isascii()

    def step(command: str, code: int, text: bytes) -> bool:
        outcome.replies.append((command, code, text.decode(errors="replace")))
        if command in ("MAIL", "RCPT") and code >= 500:
            outcome.refused_before_data = True
        return 200 <= code < 400

    with smtplib.SMTP(
        "127.0.0.1", postfix.smtp_port, timeout=30, source_address=(PEER_ADDRESS, 0)
    ) as smtp:
        smtp.ehlo("peer.example")
        smtp.starttls(context=unverified_tls())
        smtp.ehlo("peer.example")
        smtp.command_encoding = "utf-8"
        if not step("MAIL", *smtp.docmd("MAIL", f"FROM:<{SENDER}>{' SMTPUTF8' if utf8 else ''}")):
            return outcome
        step("RCPT", *smtp.docmd("RCPT", f"TO:{rcpt_argument}"))
        # DATA even after a refused RCPT: its reply is part of the record
        if not step("DATA", *smtp.docmd("DATA")):
            return outcome
        stuffed = re.sub(rb"(?m)^\.", b"..", message)
        smtp.send(stuffed + b".\r\n")
        code, text = smtp.getreply()
        step("END-OF-DATA", code, text)
        outcome.final = code
    return outcome


def send_mxdeliv(postfix: PostfixRelay, x_mail_to: str, message: bytes) -> Outcome:
    """`POST /mxdeliv` straight to filtermail incoming's HTTP port."""
    outcome = Outcome()
    conn = http.client.HTTPConnection("127.0.0.1", postfix.mxdeliv_port, timeout=30)
    try:
        conn.putrequest("POST", "/mxdeliv")
        conn.putheader("X-MAIL-FROM", SENDER)
        conn.putheader("X-MAIL-TO", x_mail_to.encode("utf-8"))
        conn.putheader("Content-Length", str(len(message)))
        conn.endheaders(message)
        response = conn.getresponse()
        body = response.read().decode(errors="replace").strip()
    finally:
        conn.close()
    outcome.replies.append(("HTTP", response.status, body))
    outcome.final = int(body[:3]) if body[:3].isdigit() else None
    return outcome


def settle(postfix: PostfixRelay, account: Account, marker: str, outcome: Outcome) -> Outcome:
    postfix.wait_queue_settled()
    outcome.mailboxes = holding(postfix, account, marker)
    outcome.trail = postfix.trail(marker)
    print(outcome.describe())  # shown with -rA / -s: the record of what Postfix did
    return outcome


# --- the harness is the relay's Postfix --------------------------------------------------


def test_harness_differs_from_the_templates_only_where_documented(postfix: PostfixRelay) -> None:
    differences = postfix.differences_from_templates()
    print(differences)
    documented = set(main_cf_changes(postfix.base, postfix.dovecot)) | set(MAIN_CF_REMOVED)
    assert set(differences) <= documented, differences
    # what decides about addresses is the template's (defaults where it sets nothing)
    address_handling = postfix.effective(
        "mydestination",
        "recipient_delimiter",
        "allow_percent_hack",
        "swap_bangpath",
        "strict_rfc821_envelopes",
        "resolve_dequoted_address",
        "smtputf8_enable",
    )
    print(address_handling)
    assert address_handling["mydestination"] == postfix.domain
    smtp = postfix.service_parameters(postfix.smtp_service)
    assert smtp["smtpd_proxy_filter"] == f"127.0.0.1:{postfix.config.filtermail_smtp_port_incoming}"
    assert smtp["smtpd_relay_restrictions"] == "reject_unauth_destination"
    assert smtp["smtpd_tls_security_level"] == "encrypt"


def test_postfix_runs_with_the_contracts_address_settings(postfix: PostfixRelay) -> None:
    # doc/encryption-gate.md §1.1: no rerouting of a%b@d or d!a@d, no comments around a path
    assert postfix.effective("allow_percent_hack", "swap_bangpath", "strict_rfc821_envelopes") == {
        "allow_percent_hack": "no",
        "swap_bangpath": "no",
        "strict_rfc821_envelopes": "yes",
    }


def test_port_25_requires_starttls(postfix: PostfixRelay) -> None:
    with smtplib.SMTP(
        "127.0.0.1", postfix.smtp_port, timeout=30, source_address=(PEER_ADDRESS, 0)
    ) as smtp:
        smtp.ehlo("peer.example")
        code, _ = smtp.docmd("MAIL", f"FROM:<{SENDER}>")
        assert code == 530


# --- controls: the path delivers ----------------------------------------------------------


def test_encrypted_mail_to_the_plain_address_is_delivered(
    postfix: PostfixRelay, account: Account
) -> None:
    marker = secrets.token_hex(8)
    outcome = send_smtp(postfix, f"<{account.addr}>", encrypted(marker, account.addr))
    settle(postfix, account, marker, outcome)
    assert outcome.final == 250, outcome.describe()
    assert outcome.mailboxes == ["INBOX"], outcome.describe()


def test_the_outer_subject_is_not_stored(postfix: PostfixRelay, account: Account) -> None:
    """A client shows the outer Subject of a message it cannot decrypt: whatever a peer
    writes there would be cleartext in the chat. It is stored as `[...]`."""
    marker = secrets.token_hex(8)
    data = encrypted(marker, account.addr).replace(b"Subject: [...]", b"Subject: Buy pills", 1)
    outcome = send_smtp(postfix, f"<{account.addr}>", data)
    settle(postfix, account, marker, outcome)
    assert outcome.mailboxes == ["INBOX"], outcome.describe()
    with imap(postfix, account.addr) as conn:
        conn.select("INBOX", readonly=True)
        typ, found = conn.search(None, "HEADER", "Message-ID", marker)
        assert typ == "OK" and found[0], found
        typ, fetched = conn.fetch(found[0].split()[-1], "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and isinstance(fetched[0], tuple), fetched
    assert fetched[0][1].strip() == b"Subject: [...]"


def test_cleartext_to_an_account_without_the_file_is_delivered(
    postfix: PostfixRelay, account: Account
) -> None:
    (account.home / ENFORCE_E2EE_FILE).unlink()
    marker = secrets.token_hex(8)
    outcome = send_smtp(postfix, f"<{account.addr}>", cleartext(marker, account.addr))
    settle(postfix, account, marker, outcome)
    assert outcome.final == 250, outcome.describe()
    assert outcome.mailboxes == ["INBOX"], outcome.describe()


@pytest.mark.parametrize("path", ["smtp", "mxdeliv"])
def test_what_is_reinjected_is_the_canonical_address(
    postfix: PostfixRelay, account: Account, path: str
) -> None:
    """Encrypted mail to `Local@D` reaches Postfix as `local@d` (doc/encryption-gate.md §1.3),
    so Postfix delivers to exactly the mailbox whose file the gate looked at."""
    marker = secrets.token_hex(8)
    upper = f"{account.local.capitalize()}@{postfix.domain.upper()}"
    message = encrypted(marker, account.addr)
    if path == "smtp":
        outcome = send_smtp(postfix, f"<{upper}>", message)
    else:
        outcome = send_mxdeliv(postfix, upper, message)
    settle(postfix, account, marker, outcome)
    assert outcome.final == 250, outcome.describe()
    assert outcome.mailboxes == ["INBOX"], outcome.describe()
    deliveries = [line for line in outcome.trail if " status=sent " in line]
    assert len(deliveries) == 1, outcome.describe()
    # Postfix logs orig_to= when it rewrote the address it was given
    assert f" to=<{account.addr}>, relay=" in deliveries[0], outcome.describe()


# --- every spelling over port 25 ----------------------------------------------------------


@pytest.mark.parametrize("spelling", SMTP_SPELLINGS)
def test_cleartext_over_port_25(postfix: PostfixRelay, account: Account, spelling: str) -> None:
    marker = secrets.token_hex(8)
    template = SPELLINGS[spelling][0]
    assert template is not None
    rcpt = spell(template, account.local, postfix.domain)
    outcome = send_smtp(postfix, rcpt, cleartext(marker, account.addr))
    settle(postfix, account, marker, outcome)
    if spelling == "plain":
        assert outcome.codes() == [
            ("MAIL", 250),
            ("RCPT", 250),
            ("DATA", 354),
            ("END-OF-DATA", 523),
        ], outcome.describe()
        assert outcome.replies[-1][2] == "Encryption Needed: Invalid Unencrypted Mail"
    else:
        # the plain address's decision, or a refusal before any message text was taken
        decided_like_plain = not outcome.refused_before_data and outcome.final == 523
        refused = outcome.refused_before_data and outcome.final is None
        assert decided_like_plain or refused, outcome.describe()
    assert not outcome.delivered, outcome.describe()


# --- /mxdeliv: the same gate, then the same re-injection ---------------------------------


def test_mxdeliv_encrypted_is_delivered_through_the_reinjection_port(
    postfix: PostfixRelay, account: Account
) -> None:
    marker = secrets.token_hex(8)
    outcome = send_mxdeliv(postfix, account.addr, encrypted(marker, account.addr))
    settle(postfix, account, marker, outcome)
    assert outcome.replies == [("HTTP", 200, "250 OK")], outcome.describe()
    assert outcome.mailboxes == ["INBOX"], outcome.describe()
    # queued by the re-injection listener (postfix_reinject_port_incoming), delivered by LMTP
    assert any("postfix/reinject_incoming/smtpd[" in line for line in outcome.trail)
    assert any(" relay=" in line and " status=sent " in line for line in outcome.trail)


def test_mxdeliv_cleartext_to_an_account_without_the_file_is_delivered(
    postfix: PostfixRelay, account: Account
) -> None:
    (account.home / ENFORCE_E2EE_FILE).unlink()
    marker = secrets.token_hex(8)
    outcome = send_mxdeliv(postfix, account.addr, cleartext(marker, account.addr))
    settle(postfix, account, marker, outcome)
    assert outcome.replies == [("HTTP", 200, "250 OK")], outcome.describe()
    assert outcome.mailboxes == ["INBOX"], outcome.describe()


@pytest.mark.parametrize("spelling", MXDELIV_SPELLINGS)
def test_cleartext_over_mxdeliv(postfix: PostfixRelay, account: Account, spelling: str) -> None:
    marker = secrets.token_hex(8)
    template = SPELLINGS[spelling][1]
    assert template is not None
    x_mail_to = spell(template, account.local, postfix.domain)
    outcome = send_mxdeliv(postfix, x_mail_to, cleartext(marker, account.addr))
    settle(postfix, account, marker, outcome)
    if spelling == "plain":
        expected = [("HTTP", 400, "523 Encryption Needed: Invalid Unencrypted Mail")]
        assert outcome.replies == expected, outcome.describe()
    else:
        # a refusal: 400 with the 523 of the plain address or another 5xx line
        assert outcome.codes() == [("HTTP", 400)], outcome.describe()
        assert outcome.final is not None and outcome.final >= 500, outcome.describe()
    assert not outcome.delivered, outcome.describe()


# --- a blocked account (doc/accounts.md) ----------------------------------------------------


def unblock_settled(postfix: PostfixRelay, account: Account) -> None:
    """Once Postfix has done all it will with the message, unblock: `settle` looks into the
    mailbox over IMAP, which a blocked account cannot."""
    postfix.wait_queue_settled()
    (account.home / BLOCKED_FILE).unlink()


@pytest.mark.parametrize("spelling", ["plain", "upper-case"])
def test_a_blocked_account_is_refused_at_rcpt_over_port_25(
    postfix: PostfixRelay, account: Account, spelling: str
) -> None:
    (account.home / BLOCKED_FILE).touch()
    marker = secrets.token_hex(8)
    template = SPELLINGS[spelling][0]
    assert template is not None
    outcome = send_smtp(
        postfix, spell(template, account.local, postfix.domain), encrypted(marker, account.addr)
    )
    unblock_settled(postfix, account)
    settle(postfix, account, marker, outcome)
    assert outcome.replies[1] == (
        "RCPT",
        550,
        "5.2.1 Mailbox disabled, not accepting messages",
    ), outcome.describe()
    assert not outcome.delivered, outcome.describe()


def test_a_blocked_account_is_refused_over_mxdeliv(postfix: PostfixRelay, account: Account) -> None:
    (account.home / BLOCKED_FILE).touch()
    marker = secrets.token_hex(8)
    outcome = send_mxdeliv(postfix, account.addr, encrypted(marker, account.addr))
    unblock_settled(postfix, account)
    settle(postfix, account, marker, outcome)
    expected = [("HTTP", 400, "550 5.2.1 Mailbox disabled, not accepting messages")]
    assert outcome.replies == expected, outcome.describe()
    assert not outcome.delivered, outcome.describe()


def test_re_injection_sends_no_message_when_postfix_refuses_one_of_its_recipients(
    postfix: PostfixRelay, account: Account
) -> None:
    """filtermail pipelines MAIL, RCPT and DATA to Postfix (RFC 2920). Postfix's incoming
    re-injection listener refuses a recipient elsewhere, accepts the account, and answers DATA
    with 354 all the same: the message must not follow (the sender hears the refusal), and the
    next message still gets through."""
    refused_marker, marker = secrets.token_hex(8), secrets.token_hex(8)

    async def scenario() -> list[str]:
        injector = Reinjector("127.0.0.1", postfix.reinject_port)
        try:
            to_both = [account.addr, "someone@elsewhere.example"]
            return [
                await injector.deliver(SENDER, to_both, encrypted(refused_marker, account.addr)),
                await injector.deliver(SENDER, [account.addr], encrypted(marker, account.addr)),
            ]
        finally:
            await injector.close()

    refused, passed = asyncio.run(scenario())
    assert refused.startswith("554 5.7.1 ") and "Relay access denied" in refused, refused
    assert passed == "250 OK"
    postfix.wait_queue_settled()
    assert holding(postfix, account, refused_marker) == []
    assert holding(postfix, account, marker) == ["INBOX"]
