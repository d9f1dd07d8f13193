"""Backup and restore against a real Dovecot (doc/backup.md): an account lost after a backup
comes back from the archive, logs in with its old password through doveauth, and Dovecot
shows the same UIDVALIDITY, UIDs and flags, so a client fetches nothing twice."""

from __future__ import annotations

import imaplib
import io
import re
import shutil
import smtplib
from pathlib import Path

import pytest
from dovecot_harness import Relay
from imap_logins import login

from chatmaild import backupformat as fmt
from chatmaild.accounts import Mailboxes
from chatmaild.backup import Backup
from chatmaild.registration import InviteStore
from chatmaild.restore import NoUnits, Restore

pytestmark = pytest.mark.dovecot

ADDR = "restored1@example.org"
PASSWORD = "pass-word-12"
MESSAGE = b"Subject: [...]\r\n\r\n-----BEGIN PGP MESSAGE-----\r\nwcBMA\r\n"


def mailbox_state(relay: Relay) -> tuple[bytes, list[bytes]]:
    """INBOX's UIDVALIDITY and each message's UID, flags and body, as a client sees them."""
    conn = login(relay, ADDR, PASSWORD)
    try:
        conn.select("INBOX")
        validity = conn.response("UIDVALIDITY")[1][0]
        _, data = conn.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
        fetched = [part[0] + part[1] for part in data if isinstance(part, tuple)]
    finally:
        conn.logout()
    assert validity is not None
    return validity, [re.sub(rb"^\d+ ", b"", line) for line in fetched]


def paths(relay: Relay, registration: Path) -> fmt.RelayPaths:
    return fmt.RelayPaths(
        ini=relay.ini,
        mailboxes=relay.mailboxes,
        registration=registration,
        turn_secret=relay.turn_secret_file,
        dkim_dir=None,
        tls=None,
    )


def test_a_lost_account_comes_back_as_it_was(relay: Relay, tmp_path: Path) -> None:
    login(relay, ADDR, PASSWORD).logout()  # doveauth creates the account
    with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
        for _ in range(3):
            lmtp.sendmail("a@elsewhere.example", [ADDR], MESSAGE)
    conn = login(relay, ADDR, PASSWORD)
    conn.select("INBOX")
    conn.uid("STORE", "2", "+FLAGS", r"(\Seen)")  # the client read the second one
    conn.uid("STORE", "1", "+FLAGS", r"(\Deleted)")
    conn.expunge()  # ... and deleted the first: UIDs 2 and 3 are left
    conn.logout()
    before = mailbox_state(relay)
    assert [line[:6] for line in before[1]] == [b"(UID 2", b"(UID 3"]

    registration = tmp_path / "registration"
    InviteStore(registration).make_dirs()
    archive = io.BytesIO()
    Backup(paths(relay, registration), "example.org", "example.org").write(archive, 0)

    relay.doveadm("kick", ADDR)
    shutil.rmtree(relay.mailboxes / ADDR)  # the disk is lost
    report = Restore(paths(relay, registration), "example.org", NoUnits()).run(
        io.BytesIO(archive.getvalue())
    )
    assert report.accounts_new == 1
    assert Mailboxes(relay.mailboxes).password_hash(ADDR) is not None
    assert mailbox_state(relay) == before
    # the old password only: the hash came back, not a new account
    with pytest.raises(imaplib.IMAP4.error):
        login(relay, ADDR, "another-password")
