"""IMAP logins against a test instance of Dovecot, for the component tests of both Debian
releases (chatmaild/tests/dovecot_harness.py, cmdeploy/tests/dovecot24_harness.py)."""

from __future__ import annotations

import imaplib
from typing import Protocol


class Instance(Protocol):
    imap_port: int  # plaintext IMAP on 127.0.0.1


def login(relay: Instance, addr: str, password: str) -> imaplib.IMAP4:
    conn = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)
    try:
        conn.login(addr, password)
    except imaplib.IMAP4.error:
        conn.shutdown()
        raise
    return conn


def refused(relay: Instance, addr: str, password: str) -> bool:
    """Whether Dovecot refused the login: a refusal, never a temporary failure."""
    try:
        login(relay, addr, password).logout()
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e)
        return True
    return False


def plain_login(relay: Instance, addr: str, password: bytes) -> str:
    """AUTHENTICATE PLAIN with any bytes as the password: "OK" or Dovecot's refusal text."""
    conn = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)
    try:
        conn.authenticate("PLAIN", lambda _: b"\0" + addr.encode() + b"\0" + password)
    except imaplib.IMAP4.error as e:
        return str(e)
    finally:
        conn.shutdown()
    return "OK"
