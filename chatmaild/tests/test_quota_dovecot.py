"""Quota through a real Dovecot: the 75 % warning prunes the oldest mail (doc/contract.md §5.4)."""

from __future__ import annotations

import imaplib
import os
import smtplib
import time
from collections.abc import Iterator

import pytest
from chatmaild_testing import dovecot_or_skip
from dovecot_harness import Relay, running_relay, wait_for

pytestmark = pytest.mark.dovecot

ADDR, PASSWORD = "quotauser@example.org", "pass-word-1"
DAY = 86400


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    dovecot_or_skip()
    with running_relay(extra_params="max_mailbox_size = 1M\n") as r:
        yield r


def deliver(relay: Relay, size: int) -> tuple[int, bytes]:
    body = b"x" * size
    message = b"From: a@elsewhere.example\r\nTo: " + ADDR.encode() + b"\r\n\r\n" + body + b"\r\n"
    with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
        lmtp.mail("a@elsewhere.example")
        lmtp.rcpt(ADDR)
        return lmtp.data(message)


def old_message(relay: Relay, days: int, size: int) -> str:
    """A message stored `days` ago, as Dovecot names it (time and size in the file name)."""
    stamp = int(time.time()) - days * DAY
    name = f"{stamp}.M1P{days}.relay,S={size},W={size}:2,S"
    path = relay.mailboxes / ADDR / "cur" / name
    path.write_bytes(b"y" * size)
    os.chown(path, path.parent.stat().st_uid, path.parent.stat().st_gid)
    return name


def test_quota_warning_prunes_the_oldest_mail(relay: Relay) -> None:
    conn = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)
    conn.login(ADDR, PASSWORD)  # creates the account
    conn.select("INBOX")  # and its maildir
    conn.logout()
    oldest = old_message(relay, days=3, size=300_000)
    older = old_message(relay, days=2, size=300_000)
    assert relay.doveadm("quota", "recalc", "-u", ADDR).returncode == 0
    # 600 kB of 1 MiB used; 250 kB more crosses 75 % and fires the warning
    code, _ = deliver(relay, 250_000)
    assert code == 250
    cur = relay.mailboxes / ADDR / "cur"
    wait_for(lambda: not (cur / oldest).exists(), what="the oldest message to go")
    # down to 70 %: one old message is enough; the fresh one is never touched
    assert (cur / older).exists()
    assert len(list((relay.mailboxes / ADDR / "new").iterdir())) == 1


def test_a_message_over_the_quota_is_refused(relay: Relay) -> None:
    code, text = deliver(relay, 2_000_000)
    assert code == 552, text
    assert b"Quota exceeded" in text
