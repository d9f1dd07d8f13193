"""The gate as a milter, with the real Postfix (doc/milter.md): the client gets the gate's
replies byte for byte, the gate judges the message Postfix queues, and a gate that is down
or broken costs a temporary error, never a message.

The private Postfix of postfix_harness.py, its port-25 listener changed from the proxy filter
to `smtpd_milters` (as doc/milter.md §3 configures it); the milter is `chatmaild.milter`
serving a scripted gate in this process, so each test says what the gate answers and sees
what it was asked.
"""

from __future__ import annotations

import asyncio
import imaplib
import secrets
import smtplib
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dovecot_harness import Relay
from postfix_harness import (
    PEER_ADDRESS,
    PostfixRelay,
    postfix_or_skip,
    running_postfix,
    unverified_tls,
)

from chatmaild import smtpreject
from chatmaild.milter import start_milter_server
from chatmaild.smtpreject import Reject

pytestmark = pytest.mark.dovecot

SENDER = "x@[192.0.2.1]"
PASSWORD = "gate-test-password"
MAX_SIZE = 1_000_000
MILTER_STAGES = ("connect", "helo", "mail", "rcpt", "data", "end_of_header", "end_of_data")


@dataclass
class ScriptedGate:
    """Refuses a sender or recipient whose local part starts with `refuse`; at the end of a
    message answers what `answers` holds for the marker in its Message-ID (None: queue it)."""

    answers: dict[str, str | Reject | None] = field(default_factory=dict)
    judged: dict[str, tuple[str, list[str], bytes]] = field(default_factory=dict)
    sender_refusal: Reject | None = None

    def check_sender(self, mail_from: str) -> str:
        if mail_from.startswith("refuse") and self.sender_refusal is not None:
            raise self.sender_refusal
        return mail_from

    def check_recipient(self, rcpt: str) -> str:
        if rcpt.startswith("refuse"):
            raise smtpreject.recipient_blocked()
        return rcpt

    async def judge(
        self, mail_from: str, rcpts: list[str], message: bytes, as_given: bool
    ) -> str | None:
        marker = message.split(b"Message-ID: <", 1)[1].split(b"@", 1)[0].decode()
        self.judged[marker] = (mail_from, rcpts, message)
        answer = self.answers.get(marker)
        if isinstance(answer, Reject):
            raise answer
        if answer == "crash":
            raise RuntimeError("a bug in the gate")
        return answer


class MilterThread:
    """`chatmaild.milter` on a UNIX socket, as the relay serves it, its event loop in a thread
    of its own."""

    def __init__(self, gate: ScriptedGate, directory: Path) -> None:
        self.gate = gate
        self.path = str(directory / "milter.sock")
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.AbstractServer | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            start_milter_server(self.gate, self.path, MAX_SIZE), self.loop
        ).result(10)
        Path(self.path).chmod(0o666)  # Postfix's smtpd connects as the postfix user

    def stop(self) -> None:
        if self.server is not None:
            self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def gate() -> ScriptedGate:
    return ScriptedGate()


@pytest.fixture(scope="module")
def milter(gate: ScriptedGate) -> Iterator[MilterThread]:
    with tempfile.TemporaryDirectory(prefix="milter-test-") as tmp:
        Path(tmp).chmod(0o755)
        thread = MilterThread(gate, Path(tmp))
        thread.start()
        try:
            yield thread
        finally:
            thread.stop()


@pytest.fixture(scope="module")
def postfix(relay: Relay, milter: MilterThread) -> Iterator[PostfixRelay]:
    postfix_or_skip()

    def as_milter(postfix: PostfixRelay) -> None:
        service = postfix.smtp_service
        postfix.postconf("-PX", f"{service}/smtpd_proxy_filter")
        postfix.postconf("-P", f"{service}/smtpd_milters=unix:{milter.path}")
        # the settings of doc/milter.md §3: a gate that cannot answer fails safe
        settings = {"milter_default_action": "tempfail", "milter_protocol": "6"}
        settings.update({f"milter_{stage}_macros": "" for stage in MILTER_STAGES})
        postfix.postconf("-e", *(f"{k}={v}" for k, v in settings.items()))

    with running_postfix(relay, adapt=as_milter) as instance:
        yield instance


@pytest.fixture
def account(postfix: PostfixRelay) -> str:
    addr = f"m{secrets.token_hex(4)}@{postfix.domain}"
    conn = imaplib.IMAP4("127.0.0.1", postfix.dovecot.imap_port, timeout=10)
    conn.login(addr, PASSWORD)  # the first login creates the account
    conn.logout()
    return addr


def message(marker: str, to: str, extra: str = "") -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {to}\r\nSubject: milter\r\n{extra}"
        "Date: Thu, 01 Jan 2026 12:00:00 +0000\r\n"
        f"Message-ID: <{marker}@gate.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"The body of {marker}\r\n"
    ).encode()


@dataclass
class Sent:
    replies: list[str]  # "code text" of MAIL, each RCPT and the end of DATA, as far as it got


def send(postfix: PostfixRelay, mail_from: str, rcpts: list[str], data: bytes) -> Sent:
    replies: list[str] = []
    with smtplib.SMTP(
        "127.0.0.1", postfix.smtp_port, timeout=30, source_address=(PEER_ADDRESS, 0)
    ) as smtp:
        smtp.ehlo("peer.test")
        smtp.starttls(context=unverified_tls())
        smtp.ehlo("peer.test")
        code, text = smtp.mail(mail_from)
        replies.append(f"{code} {text.decode()}")
        if code != 250:
            return Sent(replies)
        accepted = 0
        for rcpt in rcpts:
            code, text = smtp.rcpt(rcpt)
            replies.append(f"{code} {text.decode()}")
            accepted += code == 250
        if not accepted:
            return Sent(replies)
        code, text = smtp.data(data)
        replies.append(f"{code} {text.decode()}")
    return Sent(replies)


def stored(postfix: PostfixRelay, addr: str, marker: str) -> list[bytes]:
    """The messages in the account's INBOX that carry `marker`, once Postfix is done."""
    postfix.wait_queue_settled()
    conn = imaplib.IMAP4("127.0.0.1", postfix.dovecot.imap_port, timeout=10)
    try:
        conn.login(addr, PASSWORD)
        conn.select("INBOX", readonly=True)
        typ, data = conn.search(None, "ALL")
        assert typ == "OK"
        found = []
        for num in data[0].split():
            typ, fetched = conn.fetch(num, "(BODY.PEEK[])")
            assert typ == "OK" and isinstance(fetched[0], tuple)
            if marker.encode() in fetched[0][1]:
                found.append(fetched[0][1])
        return found
    finally:
        conn.logout()


def body(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[1]


# --- replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "refusal",
    [
        smtpreject.invalid_from_address("refuse%percent@[192.0.2.1]"),
        smtpreject.too_much_mail("refuse@[192.0.2.1]", "2026-12-07 10:00:01 UTC"),
    ],
    ids=["invalid-sender-with-percent", "rate-limited"],
)
def test_a_refused_sender_gets_the_gates_reply_exactly(
    postfix: PostfixRelay, gate: ScriptedGate, account: str, refusal: Reject
) -> None:
    gate.sender_refusal = refusal
    sender = refusal.public.split("<", 1)[1].split(">", 1)[0]
    sent = send(postfix, sender, [account], message("never", account))
    # judged at the first RCPT, after Postfix's own sender restrictions (doc/milter.md §1)
    assert sent.replies[0].startswith("250 ")
    assert sent.replies[1:] == [refusal.reply()]


def test_a_refused_recipient_gets_the_gates_reply_and_the_others_their_message(
    postfix: PostfixRelay, gate: ScriptedGate, account: str
) -> None:
    marker = secrets.token_hex(6)
    refused = f"refuse@{postfix.domain}"
    elsewhere = "someone@elsewhere.example"  # Postfix's own refusal: no relaying on port 25
    sent = send(postfix, SENDER, [refused, elsewhere, account], message(marker, account))
    assert sent.replies[1] == smtpreject.recipient_blocked().reply()
    assert sent.replies[2].startswith("554 "), sent.replies
    assert sent.replies[3].startswith("250 "), sent.replies
    # the gate judged exactly the recipients Postfix queued
    assert gate.judged[marker][1] == [account]
    assert len(stored(postfix, account, marker)) == 1


@pytest.mark.parametrize(
    "answer",
    [
        smtpreject.encryption_needed("test"),
        smtpreject.from_mismatch("a%b@x.test", SENDER),
        "451 4.3.0 Re-injection failed, try again",
        "crash",
    ],
    ids=["encryption-needed", "from-mismatch-with-percent", "temporary", "gate-crashes"],
)
def test_a_refused_message_gets_the_gates_reply_exactly_and_is_not_stored(
    postfix: PostfixRelay, gate: ScriptedGate, account: str, answer: str | Reject
) -> None:
    marker = secrets.token_hex(6)
    gate.answers[marker] = answer
    sent = send(postfix, SENDER, [account], message(marker, account))
    expected = {
        Reject: lambda: answer.reply() if isinstance(answer, Reject) else "",
        str: lambda: "451 4.3.0 Internal error, please try again later"
        if answer == "crash"
        else str(answer),
    }[type(answer)]()
    assert sent.replies[-1] == expected
    assert marker in gate.judged
    assert stored(postfix, account, marker) == []


# --- the bytes judged are the bytes queued --------------------------------------------------


def test_the_gate_judges_the_message_the_client_sent(
    postfix: PostfixRelay, gate: ScriptedGate, account: str
) -> None:
    marker = secrets.token_hex(6)
    extra = (
        "X-Folded: first\r\n\tsecond\r\n   third\r\n"
        "X-Twice: one\r\nX-Twice: two\r\n"
        "X-No-Space:tight\r\nX-Trailing: space \r\n"
        "X-Utf8: gr\xfc\xdfe\r\n"
    )
    data = message(marker, account, extra)
    sent = send(postfix, SENDER, [account], data)
    assert sent.replies[-1].startswith("250 "), sent.replies
    mail_from, rcpts, judged = gate.judged[marker]
    assert (mail_from, rcpts) == (SENDER, [account])
    assert judged == data
    [delivered] = stored(postfix, account, marker)
    assert body(delivered) == body(judged)


def test_what_postfix_changes_is_what_the_gate_judges(
    postfix: PostfixRelay, gate: ScriptedGate, account: str
) -> None:
    """A bare CR in a body line, and a last line without CRLF: the gate judges Postfix's
    version of them, which is the one delivered, not the client's bytes."""
    marker = secrets.token_hex(6)
    data = message(marker, account).replace(b"The body", b"A bare\rCR and the body")
    data += b"no line end"
    sent = send(postfix, SENDER, [account], data)
    assert sent.replies[-1].startswith("250 "), sent.replies
    judged = gate.judged[marker][2]
    assert judged != data
    [delivered] = stored(postfix, account, marker)
    assert body(delivered) == body(judged)


def test_a_discarded_message_is_answered_250_and_not_stored(
    postfix: PostfixRelay, gate: ScriptedGate, account: str
) -> None:
    """The gate passed the message on itself (re-injected it): Postfix drops its copy."""
    marker = secrets.token_hex(6)
    gate.answers[marker] = "250 2.0.0 Ok: queued as 4XyZ"
    sent = send(postfix, SENDER, [account], message(marker, account))
    assert sent.replies[-1].startswith("250 "), sent.replies
    assert marker in gate.judged
    assert stored(postfix, account, marker) == []


# --- a gate that cannot answer ------------------------------------------------------------


def test_without_the_gate_the_client_gets_a_temporary_error_and_nothing_is_queued(
    relay: Relay,
) -> None:
    """No milter at the socket (the relay's socket unit stopped, as `cmdeploy migrate` does):
    milter_default_action = tempfail, so the client keeps its message and tries again later."""
    postfix_or_skip()
    nowhere = "/run/chatmail-test-no-such-milter.sock"

    def to_nowhere(postfix: PostfixRelay) -> None:
        service = postfix.smtp_service
        postfix.postconf("-PX", f"{service}/smtpd_proxy_filter")
        postfix.postconf("-P", f"{service}/smtpd_milters=unix:{nowhere}")
        postfix.postconf("-e", "milter_default_action=tempfail", "milter_protocol=6")

    with running_postfix(relay, adapt=to_nowhere) as postfix:
        addr = f"m{secrets.token_hex(4)}@{postfix.domain}"
        conn = imaplib.IMAP4("127.0.0.1", postfix.dovecot.imap_port, timeout=10)
        conn.login(addr, PASSWORD)
        conn.logout()
        marker = secrets.token_hex(6)
        try:
            sent = send(postfix, SENDER, [addr], message(marker, addr))
            last = sent.replies[-1]
        except smtplib.SMTPResponseException as e:  # refused at STARTTLS
            last = f"{e.smtp_code} {e.smtp_error.decode()}"
        print(last)
        assert last.startswith("4"), last
        assert stored(postfix, addr, marker) == []
        assert not postfix.moving_queue_files()
