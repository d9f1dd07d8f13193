"""Dovecot 2.3 keeps its connection to doveauth between lookups (auth-dict.conf.ext's
`idle_msecs`, doc/performance.md), and that changes no answer: a real Dovecot, real doveauth."""

from __future__ import annotations

import imaplib
import smtplib
import subprocess
from collections.abc import Iterator

import pytest
from chatmaild_testing import dovecot_or_skip
from dovecot_harness import Relay

from chatmaild.accounts import BLOCKED_FILE

pytestmark = pytest.mark.dovecot

PASSWORD = "pass-word-1"
SENDER = "a@elsewhere.example"


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    dovecot_or_skip()
    from dovecot_harness import running_relay

    with running_relay() as r:
        yield r


def create(relay: Relay, addr: str) -> None:
    conn = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)
    conn.login(addr, PASSWORD)  # the first login creates the account
    conn.select("INBOX")
    conn.logout()


def logs_in(relay: Relay, addr: str) -> bool:
    conn = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)
    try:
        conn.login(addr, PASSWORD)
    except imaplib.IMAP4.error:
        conn.shutdown()
        return False
    conn.logout()
    return True


def deliver(relay: Relay, addr: str) -> int:
    """LMTP's reply code for one message to `addr`."""
    message = f"From: {SENDER}\r\nTo: {addr}\r\nSubject: [...]\r\n\r\nhello\r\n".encode()
    with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
        lmtp.mail(SENDER)
        code, _ = lmtp.rcpt(addr)
        if code != 250:
            return code
        return lmtp.data(message)[0]


def open_connections(relay: Relay) -> int:
    """Connections doveauth has accepted and not yet closed."""
    out = subprocess.run(
        ["ss", "-xH", "state", "established", "src", str(relay.doveauth_socket)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(out.splitlines())


def test_the_connection_to_doveauth_stays_open_after_a_delivery(relay: Relay) -> None:
    create(relay, "keptconn1@example.org")
    assert deliver(relay, "keptconn1@example.org") == 250
    # the dict client's default would have closed it right after the answer
    assert open_connections(relay) >= 1


def test_a_blocked_or_deleted_account_is_refused_over_the_kept_connection(relay: Relay) -> None:
    blocked, deleted = "keptconn2@example.org", "keptconn3@example.org"
    for addr in (blocked, deleted):
        create(relay, addr)
        assert deliver(relay, addr) == 250
    assert open_connections(relay) >= 1
    (relay.mailboxes / blocked / BLOCKED_FILE).touch()
    (relay.mailboxes / deleted / "password").unlink()
    # nothing is cached along the connection: each delivery is asked about afresh
    assert deliver(relay, blocked) == 550
    assert deliver(relay, deleted) == 550
    assert not logs_in(relay, blocked)


def test_after_doveauth_restarts_the_next_login_and_delivery_go_through(relay: Relay) -> None:
    addr = "keptconn4@example.org"
    create(relay, addr)
    assert open_connections(relay) >= 1
    logged = len(relay.dovecot_log())
    relay.restart_service("doveauth")  # it closes the connection Dovecot kept
    # no temporary failure: Dovecot noticed the close and connects again
    assert deliver(relay, addr) == 250
    assert logs_in(relay, addr)
    since = relay.dovecot_log()[logged:]
    assert "Error" not in since and "Warning" not in since, since
