"""A raised `max_message_size` (50M) with the real daemons (doc/message-size.md).

A private Postfix from the relay's templates with the real `filtermail incoming` in front of
a private Dovecot (postfix_harness.py, dovecot_harness.py), all from one chatmail.ini with
`max_message_size = 50M`. The limit is announced as it is (EHLO SIZE on the port-25
listener, IMAP APPENDLIMIT), a message of exactly that many bytes goes all the way into the
mailbox (the default limit would refuse it), and one byte more is refused at the door.
"""

from __future__ import annotations

import http.client
import imaplib
import secrets
import smtplib
from collections.abc import Iterator

import pytest
from bench_filtermail import pgp_message
from dovecot_harness import Relay, running_relay
from postfix_harness import (
    PEER_ADDRESS,
    PostfixRelay,
    postfix_or_skip,
    running_postfix,
    unverified_tls,
)

from chatmaild.config import HEADER_HEADROOM, Config

pytestmark = pytest.mark.dovecot

LIMIT = 50 * 2**20
DEFAULT_LIMIT = Config.from_params({"mail_domain": "example.org"}).max_message_size
SENDER = "x@[192.0.2.1]"  # an IP-literal domain: no DKIM check, no DNS
PASSWORD = "size-test-password"


@pytest.fixture(scope="module")
def sized_relay() -> Iterator[Relay]:
    from chatmaild_testing import dovecot_or_skip

    dovecot_or_skip()
    with running_relay(extra_params="max_message_size = 50M\n") as relay:
        yield relay


@pytest.fixture(scope="module")
def postfix(sized_relay: Relay) -> Iterator[PostfixRelay]:
    postfix_or_skip()
    with running_postfix(sized_relay) as instance:
        assert instance.config.max_message_size == LIMIT > DEFAULT_LIMIT
        yield instance


def account(relay: Relay) -> str:
    """A fresh account, created by its first login."""
    addr = f"s{secrets.token_hex(4)}@example.org"
    imap = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=30)
    imap.login(addr, PASSWORD)
    imap.logout()
    return addr


def message_of_size(size: int, to: str, marker: str) -> bytes:
    """Structurally valid PGP/MIME of exactly `size` bytes: the gate passes it."""
    guess = size
    while True:
        message = pgp_message(guess).replace(b"To: bob@example.org", f"To: {to}".encode())
        message = message.replace(b"From: alice@example.org", f"From: {SENDER}".encode())
        header = f"Subject: [...]\r\nMessage-ID: <{marker}@size.test>\r\n".encode()
        message = message.replace(b"Subject: [...]\r\n", header)
        missing = size - len(message)
        if 0 <= missing <= 60:  # the armor grows in steps of 4 bytes and a line break
            return message.replace(b"@size.test>", b"@size.test" + b"x" * missing + b">")
        guess += missing if missing > 0 else missing - 8


def port_25(postfix: PostfixRelay) -> smtplib.SMTP:
    smtp = smtplib.SMTP(
        "127.0.0.1", postfix.smtp_port, timeout=120, source_address=(PEER_ADDRESS, 0)
    )
    smtp.ehlo("peer.example")
    smtp.starttls(context=unverified_tls())
    smtp.ehlo("peer.example")
    return smtp


def send(postfix: PostfixRelay, rcpt: str, message: bytes) -> tuple[int, bytes]:
    with port_25(postfix) as smtp:
        smtp.mail(SENDER)
        smtp.rcpt(rcpt)
        code, text = smtp.data(message)
    postfix.wait_queue_settled()
    return code, text


def delivered(postfix: PostfixRelay, marker: str) -> bool:
    return any(" status=sent " in line for line in postfix.trail(marker))


def gate_saw(postfix: PostfixRelay) -> int:
    return postfix.filtermail_logs["incoming"].read_text().count("passed the gate")


def test_port_25_announces_the_limit(postfix: PostfixRelay) -> None:
    with port_25(postfix) as smtp:
        assert smtp.esmtp_features["size"] == str(LIMIT)


def test_exactly_the_limit_is_delivered(postfix: PostfixRelay, sized_relay: Relay) -> None:
    """Over the default limit, within the raised one: every hop takes it, Received line,
    queue envelope and Dovecot's own headers included."""
    rcpt, marker = account(sized_relay), secrets.token_hex(8)
    message = message_of_size(LIMIT, rcpt, marker)
    assert len(message) == LIMIT > DEFAULT_LIMIT
    code, text = send(postfix, rcpt, message)
    assert code == 250, text
    assert delivered(postfix, marker), postfix.trail(marker)
    imap = imaplib.IMAP4("127.0.0.1", sized_relay.imap_port, timeout=60)
    imap.login(rcpt, PASSWORD)
    imap.select("INBOX", readonly=True)
    typ, found = imap.search(None, "HEADER", "Message-ID", marker)
    assert typ == "OK" and found[0], found
    typ, size = imap.fetch(found[0], "(RFC822.SIZE)")
    imap.logout()
    assert typ == "OK" and int(size[0].split()[-1].rstrip(b")")) >= LIMIT, size


def test_one_byte_more_is_refused_at_the_door(postfix: PostfixRelay, sized_relay: Relay) -> None:
    rcpt, marker = account(sized_relay), secrets.token_hex(8)
    seen = gate_saw(postfix)
    code, text = send(postfix, rcpt, message_of_size(LIMIT + 1, rcpt, marker))
    assert (code, text) == (552, b"5.3.4 Error: message file too big")
    assert not delivered(postfix, marker)
    assert gate_saw(postfix) == seen  # Postfix refused it before the filter judged it


def test_mxdeliv_takes_a_peers_message_at_the_limit(
    postfix: PostfixRelay, sized_relay: Relay
) -> None:
    """A peer relay sends its user's message of the full size with headers it added (its DKIM
    signature): /mxdeliv takes that, and refuses a body past the room for such headers."""
    rcpt, marker = account(sized_relay), secrets.token_hex(8)
    message = message_of_size(LIMIT, rcpt, marker)
    signature = b"\r\n\t".join([b"A" * 76] * 6)  # folded, as a 2048-bit signature is
    dkim = b"DKIM-Signature: v=1; a=rsa-sha256; d=peer.example; s=x;\r\n\tb=" + signature + b"\r\n"
    assert post_mxdeliv(postfix, rcpt, dkim + message) == (200, "250 OK")
    postfix.wait_queue_settled()
    assert delivered(postfix, marker), postfix.trail(marker)
    # refused on its Content-Length, before the body (nginx does the same in front of it)
    too_long = LIMIT + HEADER_HEADROOM + 1
    assert post_mxdeliv(postfix, rcpt, b"", too_long) == (413, "552 Message exceeds maximum size")


def post_mxdeliv(
    postfix: PostfixRelay, rcpt: str, body: bytes, length: int | None = None
) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", postfix.mxdeliv_port, timeout=120)
    try:
        conn.putrequest("POST", "/mxdeliv")
        conn.putheader("X-MAIL-FROM", SENDER)
        conn.putheader("X-MAIL-TO", rcpt)
        conn.putheader("Content-Length", str(len(body) if length is None else length))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, response.read().decode().strip()
    finally:
        conn.close()


def test_imap_announces_appendlimit_and_holds_to_it(sized_relay: Relay) -> None:
    """RFC 7889: APPENDLIMIT=<n> before and after login; APPEND takes n bytes, not n+1."""
    imap = imaplib.IMAP4("127.0.0.1", sized_relay.imap_port, timeout=60)
    assert f"APPENDLIMIT={LIMIT}" in imap.capabilities
    imap.login(account(sized_relay), PASSWORD)
    typ, data = imap.capability()
    assert f"APPENDLIMIT={LIMIT}" in data[0].decode().split()
    exact = message_of_size(LIMIT, "someone@example.org", secrets.token_hex(8))
    assert imap.append("INBOX", None, None, exact)[0] == "OK"
    typ, data = imap.append("INBOX", None, None, exact + b"x")
    assert typ == "NO" and b"[LIMIT]" in data[0], data
    imap.logout()
