"""The submission path with the real daemons: Postfix's submission listener as the templates
have it, the real `filtermail outgoing` as its milter (doc/milter.md), Dovecot's SASL and LMTP
behind (postfix_harness.running_submission). The signing re-injection listener runs without
OpenDKIM, which the harness does not start, and the harness refuses recipients of other
domains: mail that leaves the relay is the lab's to check (cmdeploy/tests/online).

What a user of the relay would notice: a message for an account of the relay is delivered in
one pass, cleartext is refused with the gate's reply exactly, the self-sent Autocrypt Setup
Message passes although the header cleanup runs before the gate reads it, and a message the
gate passes on itself (here: an address in another spelling) is delivered once, not twice.
"""

from __future__ import annotations

import secrets
import smtplib
from pathlib import Path

import pytest
from postfix_harness import (
    LISTEN_ADDRESS,
    Submission,
    _queue_id,
    unverified_tls,
)
from test_postfix_gate import PASSWORD, encrypted, imap

from chatmaild import smtpreject

pytestmark = pytest.mark.dovecot

MAIL = Path(__file__).parent / "data" / "mail"


def account(submission: Submission) -> str:
    addr = f"s{secrets.token_hex(4)}@{submission.postfix.domain}"
    with imap(submission.postfix, addr):
        pass  # the first login creates the account
    return addr


def submit(
    submission: Submission, sender: str, rcpts: list[str], data: bytes, login: str = ""
) -> str:
    """The reply to the end of the message, or the refusal before it, as "code text"; logged
    in as `login`, the sender unless given."""
    with smtplib.SMTP(LISTEN_ADDRESS, submission.port, timeout=30) as smtp:
        smtp.starttls(context=unverified_tls())
        smtp.login(login or sender, PASSWORD)
        code, text = smtp.mail(sender)
        if code != 250:
            return f"{code} {text.decode()}"
        for rcpt in rcpts:
            code, text = smtp.rcpt(rcpt)
            if code != 250:
                return f"{code} {text.decode()}"
        code, text = smtp.data(data)
        return f"{code} {text.decode()}"


def mail_of(sender: str, rcpt: str, marker: str) -> bytes:
    """An encrypted message (the gate checks its shape) from `sender` to `rcpt`."""
    data = encrypted(marker, rcpt)
    return data.replace(b"From: x@[192.0.2.1]", f"From: {sender}".encode())


def stored(submission: Submission, addr: str, marker: str) -> int:
    submission.postfix.wait_queue_settled()
    with imap(submission.postfix, addr) as conn:
        conn.select("INBOX", readonly=True)
        typ, data = conn.search(None, "TEXT", marker)
        assert typ == "OK"
        return len(data[0].split())


def copies(submission: Submission, marker: str) -> tuple[set[str], set[str]]:
    """The queue IDs of the message with `marker`: all of them, and those of the copies a
    listener dropped at the gate's word (`milter-discard`)."""
    submission.postfix.wait_queue_settled()
    trail = submission.postfix.trail(marker)
    every = {qid for qid in map(_queue_id, trail) if qid}
    dropped = {qid for line in trail if "milter-discard" in line and (qid := _queue_id(line))}
    return every, dropped


def reinjected(submission: Submission, marker: str) -> bool:
    """Whether the signing listener took the message with `marker` in its Message-ID."""
    return any("postfix/reinject/smtpd" in line for line in submission.postfix.trail(marker))


def test_a_message_for_an_account_of_the_relay_is_delivered_in_one_pass(
    submission: Submission,
) -> None:
    alice, bob = account(submission), account(submission)
    marker = secrets.token_hex(6)
    assert submit(submission, alice, [bob], mail_of(alice, bob, marker)).startswith("250 ")
    assert stored(submission, bob, marker) == 1
    assert not reinjected(submission, marker)


def test_cleartext_is_refused_with_the_gates_reply_and_not_delivered(
    submission: Submission,
) -> None:
    alice, bob = account(submission), account(submission)
    marker = secrets.token_hex(6)
    data = (
        f"From: {alice}\r\nTo: {bob}\r\nSubject: hello\r\n"
        f"Message-ID: <{marker}@gate.test>\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    ).encode()
    reply = submit(submission, alice, [bob], data)
    assert reply == smtpreject.encryption_needed("x").reply()
    assert stored(submission, bob, marker) == 0


@pytest.mark.parametrize("name", ["Subject", "Subject ", "subject\t"])
def test_no_spelling_of_a_subject_reaches_the_mailbox_in_the_clear(
    submission: Submission, name: str
) -> None:
    """Postfix takes a header name with blanks before its colon; its cleanup queues the name
    without them, and hands the gate the same: the Subject rule replaces it, and what the gate
    read is what is stored."""
    alice, bob = account(submission), account(submission)
    marker = secrets.token_hex(6)
    data = mail_of(alice, bob, marker)
    assert b"\r\nSubject: [...]\r\n" in data
    data = data.replace(b"Subject: [...]", f"{name}: meet me at the station".encode(), 1)
    assert submit(submission, alice, [bob], data).startswith("250 ")
    assert stored(submission, bob, marker) == 1
    with imap(submission.postfix, bob) as conn:
        conn.select("INBOX", readonly=True)
        typ, found = conn.search(None, "TEXT", marker)
        typ, fetched = conn.fetch(found[0].split()[-1], "(BODY.PEEK[HEADER])")
    assert typ == "OK" and isinstance(fetched[0], tuple)
    assert b"station" not in fetched[0][1]


def test_a_from_header_naming_someone_else_is_refused(submission: Submission) -> None:
    alice, bob = account(submission), account(submission)
    data = mail_of(bob, bob, secrets.token_hex(6))  # From: bob, sent by alice
    assert submit(submission, alice, [bob], data) == smtpreject.from_mismatch(bob, alice).reply()


@pytest.mark.parametrize("to_self", [True, False], ids=["self-sent", "to-another"])
def test_the_autocrypt_setup_message_passes_only_to_oneself(
    submission: Submission, to_self: bool
) -> None:
    """The header cleanup runs before the gate reads the message; it leaves this one Subject
    alone, so that the gate recognizes the Setup Message (doc/contract.md §5.1)."""
    alice = account(submission)
    rcpt = alice if to_self else account(submission)
    marker = secrets.token_hex(6)
    data = (MAIL / "asm-self.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    data = data.replace(b"alice@example.org", alice.encode(), 1)
    data = data.replace(b"To: alice@example.org", f"To: {rcpt}".encode())
    data = data.replace(b"<corpus@example.org>", f"<{marker}@gate.test>".encode())
    reply = submit(submission, alice, [rcpt], data)
    if to_self:
        assert reply.startswith("250 "), reply
        assert stored(submission, alice, marker) == 1
    else:
        assert reply == smtpreject.encryption_needed("x").reply()
        assert stored(submission, rcpt, marker) == 0


def test_an_address_in_another_spelling_is_delivered_through_the_reinjection(
    submission: Submission,
) -> None:
    """Postfix queued the client's spelling; the gate passes the message on in the canonical
    one, and the submission's own copy is dropped: delivered once."""
    alice, bob = account(submission), account(submission)
    marker = secrets.token_hex(6)
    reply = submit(submission, alice, [bob.upper()], mail_of(alice, bob, marker))
    assert reply.startswith("250 "), reply
    assert stored(submission, bob, marker) == 1
    assert reinjected(submission, marker)
    every, dropped = copies(submission, marker)
    assert len(dropped) == 1 and len(every - dropped) == 1, submission.postfix.trail(marker)


def test_an_ip_literal_of_this_host_is_refused_at_rcpt(submission: Submission) -> None:
    """Postfix takes mail for an IP literal of an address it listens on (here 127.0.0.1) as
    its own; the gate refuses it, which the client hears at RCPT, instead of a 250 and a
    bounce from Dovecot later."""
    alice, bob = account(submission), account(submission)
    rcpt = f"{bob.split('@')[0]}@[127.0.0.1]"
    marker = secrets.token_hex(6)
    reply = submit(submission, alice, [rcpt], mail_of(alice, rcpt, marker))
    assert reply == "553 5.1.3 Invalid recipient address"
    assert stored(submission, bob, marker) == 0 and stored(submission, alice, marker) == 0


def test_nobody_spends_another_users_rate_limit(submission: Submission) -> None:
    """Postfix ties MAIL FROM to the login only at the first RCPT; the gate counts a sender
    against its rate limit only after that, so a user sending as someone else is refused
    by Postfix and costs that someone nothing."""
    alice, bob = account(submission), account(submission)
    burst = submission.postfix.config.max_user_send_burst_size
    for _ in range(burst + 1):
        reply = submit(submission, bob, [alice], mail_of(bob, alice, "x"), login=alice)
        assert reply.startswith("553 5.7.1 "), reply  # not owned by the login
    marker = secrets.token_hex(6)
    assert submit(submission, bob, [alice], mail_of(bob, alice, marker)).startswith("250 ")
    assert stored(submission, alice, marker) == 1
