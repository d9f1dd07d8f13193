"""Every spelling of a recipient gets the plain address's decision or a refusal, never
delivery of cleartext (doc/encryption-gate.md §1): on port 25 and over /mxdeliv, through the
relay's real Postfix, filtermail and Dovecot."""

from __future__ import annotations

import json
import time

import pytest
from chatmail_online import (
    DELIVERY_TIMEOUT,
    ENCRYPTION_NEEDED,
    Credentials,
    Factory,
    Relay,
    cleartext_message,
    close_smtp,
    encrypted_message,
    message_id,
    mxdeliv,
    random_local,
    starttls_connect,
    transact,
    wait_for_message_id,
)

pytestmark = pytest.mark.timeout(300)


def spellings(local: str, relay: Relay) -> dict[str, str]:
    """Other ways to write `local@<d>` that Postfix or Dovecot could read as the account."""
    domain = relay.address_domain
    named = not relay.config.is_ipv4
    forms = {
        "plain": f"{local}@{domain}",
        "upper-case": f"{local.upper()}@{domain.upper()}",
        "quoted": f'"{local}"@{domain}',
        "quoted-address": f'"{local}@{domain}"@{domain}',
        "detail": f"{local}+x@{domain}",
        "percent": f"{local}%{domain}@{domain}",
        "bang": f"{domain}!{local}@{domain}",
        "source-route": f"@other.example:{local}@{domain}",
        "comment": f"{local}@{domain} (comment)",
        "space": f"{local} @{domain}",
        "ip-literal": f"{local}@[{relay.ip}]",
        "ipv6-mapped": f"{local}@[IPv6:::ffff:{relay.ip}]",
    }
    if named:
        forms["trailing-dot"] = f"{local}@{domain}."
        fullwidth_r = "\uff52"  # IDNA maps it to "r"
        forms["fullwidth"] = f"{local}@{domain.replace('r', fullwidth_r, 1)}"
    return forms


def wait_for_empty_queue(relay: Relay, sender: str, timeout: float = DELIVERY_TIMEOUT) -> None:
    """Until Postfix's queue holds nothing from `sender`: any delivery of what this test sent
    has happened. Mail of other tests (a bounce waiting for its retry) does not count."""
    deadline = time.monotonic() + timeout

    def queued() -> list[str]:
        lines = relay.ssh("postqueue -j", check=False).splitlines()
        return [line for line in lines if json.loads(line).get("sender") == sender]

    while queued():
        if time.monotonic() > deadline:
            raise AssertionError(f"{relay.domain}: mail still queued after {timeout} s")
        time.sleep(0.2)


def inbox_message_ids(creds: Credentials) -> list[bytes]:
    with creds.imap() as conn:
        typ, data = conn.select("INBOX", readonly=True)
        assert typ == "OK", data
        count = int(data[0] or 0)
        if not count:
            return []
        typ, fetched = conn.fetch(f"1:{count}", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "OK", fetched
        return [item[1].strip() for item in fetched if isinstance(item, tuple)]


def test_port_25_spellings_never_deliver_cleartext(relay2: Relay, make_account: Factory) -> None:
    recipient = make_account(relay2)  # a new account: it enforces encryption
    local = recipient.addr.rpartition("@")[0]
    outcomes: dict[str, str] = {}
    conn = starttls_connect(relay2, 25)
    try:
        sender = f"{random_local(relay2)}@[{conn.sock.getsockname()[0]}]"  # no DKIM to check
        for name, rcpt in spellings(local, relay2).items():
            data = cleartext_message(sender, recipient.addr, message_id(relay2))
            conn.command_encoding = "utf-8"  # internationalized spellings; RSET resets it
            code, text = conn.docmd(f"MAIL FROM:<{sender}> SMTPUTF8")
            assert code == 250, (code, text)
            code, text = conn.docmd(f"RCPT TO:<{rcpt}>")
            if code == 250:
                code, text = conn.data(data)
            outcomes[name] = f"{code} {text.decode(errors='replace')}"
            conn.rset()
    finally:
        close_smtp(conn)
    for name, outcome in outcomes.items():
        code = int(outcome[:3])
        # the plain address's decision, or a refusal at RCPT
        assert outcome == ENCRYPTION_NEEDED or 500 <= code < 600, (name, outcome)
    assert outcomes["plain"] == ENCRYPTION_NEEDED
    assert outcomes["quoted"].startswith("553 5.1.3"), outcomes
    # an encrypted message to the plain address is the marker that delivery has run
    marker = message_id(relay2)
    conn = starttls_connect(relay2, 25)
    try:
        outcome = transact(conn, sender, [recipient.addr], encrypted_message(sender, "x", marker))
    finally:
        close_smtp(conn)
    assert (outcome.stage, outcome.code) == ("done", 250), outcome
    wait_for_message_id(recipient, marker)
    wait_for_empty_queue(relay2, sender)
    assert inbox_message_ids(recipient) == [f"Message-ID: {marker}".encode()]


def test_mxdeliv_spellings_never_deliver_cleartext(
    relay1: Relay, relay2: Relay, make_account: Factory
) -> None:
    recipient = make_account(relay2)
    local = recipient.addr.rpartition("@")[0]
    sender = f"{random_local(relay1)}@[192.0.2.1]"  # an IP-literal sender: no DKIM to check
    answers = {}
    for name, rcpt in spellings(local, relay2).items():
        headers: dict[str, str | bytes] = {"X-MAIL-FROM": sender, "X-MAIL-TO": rcpt.encode()}
        data = cleartext_message(sender, recipient.addr, message_id(relay2))
        answers[name] = mxdeliv(relay2, "POST", headers, data)
    for name, (status, reply) in answers.items():
        assert status == 400, (name, status, reply)
        assert reply == ENCRYPTION_NEEDED or reply.startswith("553 5.1.3 "), (name, reply)
    assert answers["plain"] == (400, ENCRYPTION_NEEDED)
    marker = message_id(relay2)
    headers = {"X-MAIL-FROM": sender, "X-MAIL-TO": recipient.addr.encode()}
    assert mxdeliv(relay2, "POST", headers, encrypted_message(sender, "x", marker)) == (
        200,
        "250 OK",
    )
    wait_for_message_id(recipient, marker)
    wait_for_empty_queue(relay2, sender)
    assert inbox_message_ids(recipient) == [f"Message-ID: {marker}".encode()], json.dumps(
        {k: list(v) for k, v in answers.items()}
    )
