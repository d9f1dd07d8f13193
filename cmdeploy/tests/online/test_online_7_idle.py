"""IMAP IDLE through Dovecot's hibernation: what a phone waiting for mail sees.

Delta Chat keeps one IDLE connection open all day. After `imap_hibernate_timeout` Dovecot
moves it into the shared imap-hibernate process; when mail arrives, the connection must come
back to an imap process and the client be told about the message on the same connection.
"""

from __future__ import annotations

import shlex
import time

import pytest
from chatmail_online import (
    NET_TIMEOUT,
    REPORT,
    Factory,
    Relay,
    encrypted_message,
    message_id,
    transact,
)

pytestmark = pytest.mark.timeout(150)

HIBERNATION_WAIT = 75.0  # seconds: the relay's imap_hibernate_timeout is 30 s


def hibernated(relay: Relay, addr: str) -> bool:
    """Whether the account's IMAP connection is held by the imap-hibernate process."""
    pids = relay.ssh(
        f"doveadm who -1 {shlex.quote(addr)} | awk 'NR > 1 {{ print $3 }}' | tr -d '()'"
    ).split()
    if not pids:
        return False
    names = relay.ssh(f"ps -o comm= -p {','.join(pids)} || true")
    return "imap-hibernate" in names


def test_a_hibernated_idle_client_is_told_of_new_mail(relay1: Relay, make_account: Factory) -> None:
    sender, recipient = make_account(relay1), make_account(relay1)
    with recipient.imap() as conn:
        typ, data = conn.select("INBOX")
        assert typ == "OK", data
        tag = conn._new_tag()  # imaplib has no IDLE before Python 3.14: speak it directly
        conn.send(tag + b" IDLE\r\n")
        assert conn.readline().startswith(b"+")
        deadline = time.monotonic() + HIBERNATION_WAIT
        while not hibernated(relay1, recipient.addr):
            assert time.monotonic() < deadline, "the IDLE connection was never hibernated"
            time.sleep(1)

        msgid = message_id(relay1)
        sent = time.monotonic()
        with sender.smtp() as smtp:
            data_ = encrypted_message(sender.addr, recipient.addr, msgid)
            assert transact(smtp, sender.addr, [recipient.addr], data_).code == 250
        conn.sock.settimeout(NET_TIMEOUT)
        # Dovecot's keep-alives ("* OK Still here") may come first; anything else is wrong
        while (line := conn.readline()).startswith(b"* OK "):
            pass
        assert line.endswith(b"EXISTS\r\n"), f"instead of EXISTS the client got {line!r}"
        took = time.monotonic() - sent
        conn.send(b"DONE\r\n")
        while not (line := conn.readline()).startswith(tag):
            assert line, "the connection closed after IDLE"
        assert b" OK " in line, line
    assert took < NET_TIMEOUT
    REPORT.append(f"hibernated IDLE client told of new mail after {took:.2f} s")
