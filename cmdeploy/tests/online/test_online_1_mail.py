"""The encryption gate, the origin check and what delivered mail looks like
(doc/encryption-gate.md)."""

from __future__ import annotations

import math
import time

import pytest
from chatmail_online import (
    DELIVERY_TIMEOUT,
    ENCRYPTION_NEEDED,
    REPORT,
    Factory,
    Registry,
    Relay,
    cleartext_message,
    close_smtp,
    encrypted_message,
    message_id,
    mxdeliv,
    parse_mail,
    random_local,
    starttls_connect,
    transact,
    wait_for_mail,
    wait_for_message_id,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["local", "remote"])
def destination(request: pytest.FixtureRequest, relay1: Relay) -> Relay:
    """The recipient's relay: the sender's own, or the second relay."""
    if request.param == "local":
        return relay1
    return request.getfixturevalue("relay2")


# --- outgoing: the submission gate ----------------------------------------------------------


@pytest.mark.parametrize("to", ["self", "local", "remote"])
def test_outgoing_cleartext_refused(
    to: str, relay1: Relay, make_account: Factory, request: pytest.FixtureRequest
) -> None:
    sender = make_account(relay1)
    if to == "self":
        rcpt = sender.addr
    else:
        relay = relay1 if to == "local" else request.getfixturevalue("relay2")
        rcpt = make_account(relay).addr
    with sender.smtp() as conn:
        outcome = transact(
            conn, sender.addr, [rcpt], cleartext_message(sender.addr, rcpt, message_id(relay1))
        )
    assert (outcome.stage, f"{outcome.code} {outcome.text}") == ("data", ENCRYPTION_NEEDED)


def autocrypt_setup_message(from_addr: str, to_addr: str, msgid: str) -> bytes:
    """A cleartext Autocrypt Setup Message: multipart/mixed, its fixed Subject
    (doc/encryption-gate.md §2.4)."""
    head = [
        f"From: {from_addr}",
        f"To: {to_addr}",
        "Subject: Autocrypt Setup Message",
        f"Message-ID: {msgid}",
        "MIME-Version: 1.0",
        "Autocrypt-Setup-Message: v1",
        'Content-Type: multipart/mixed; boundary="XbOuNdArYx"',
    ]
    body = [
        "--XbOuNdArYx",
        "Content-Type: text/plain",
        "",
        "Setup",
        "",
        "--XbOuNdArYx",
        "Content-Type: application/autocrypt-setup",
        "",
        "-----BEGIN PGP MESSAGE-----",
        "",
        "--XbOuNdArYx--",
    ]
    return ("\r\n".join([*head, "", *body]) + "\r\n").encode()


@pytest.mark.parametrize("to", ["self", "other"])
def test_autocrypt_setup_message_only_to_self(
    to: str, relay1: Relay, make_account: Factory
) -> None:
    sender = make_account(relay1)
    rcpt = sender.addr if to == "self" else make_account(relay1).addr
    msgid = message_id(relay1)
    with sender.smtp() as conn:
        outcome = transact(
            conn, sender.addr, [rcpt], autocrypt_setup_message(sender.addr, rcpt, msgid)
        )
    if to == "other":
        assert (outcome.stage, f"{outcome.code} {outcome.text}") == ("data", ENCRYPTION_NEEDED)
        return
    assert (outcome.stage, outcome.code) == ("done", 250), outcome
    assert parse_mail(wait_for_message_id(sender, msgid))["Subject"] == "[...]"


@pytest.mark.parametrize("forged", ["local", "foreign"])
def test_forged_from_header_refused(forged: str, relay1: Relay, make_account: Factory) -> None:
    sender, other = make_account(relay1), make_account(relay1)
    from_addr = other.addr if forged == "local" else "someone@example.org"
    data = encrypted_message(from_addr, other.addr, message_id(relay1))
    with sender.smtp() as conn:
        outcome = transact(conn, sender.addr, [other.addr], data)
    assert outcome.stage == "data" and outcome.code == 500, outcome
    assert outcome.text.startswith(f"Invalid FROM <{from_addr}> for <{sender.addr}>")


def test_envelope_sender_must_be_the_login(relay1: Relay, make_account: Factory) -> None:
    sender, other = make_account(relay1), make_account(relay1)
    data = encrypted_message(other.addr, sender.addr, message_id(relay1))
    with sender.smtp() as conn:
        outcome = transact(conn, other.addr, [sender.addr], data)
    # Postfix delays the restriction to RCPT by default (smtpd_delay_reject)
    assert outcome.stage in ("mail", "rcpt") and outcome.code == 553, outcome
    assert "not owned by user" in outcome.text


def test_outgoing_encrypted_accepted_and_subject_hidden(
    relay1: Relay, destination: Relay, make_account: Factory
) -> None:
    """Encrypted mail passes; the delivered copy has the Subject `[...]`, no DKIM-Signature,
    Authentication-Results or Received header, and nothing of the sender's IP address."""
    sender, recipient = make_account(relay1), make_account(destination)
    msgid = message_id(relay1)
    with sender.smtp() as conn:
        client_ip = conn.sock.getsockname()[0]
        data = encrypted_message(
            sender.addr,
            recipient.addr,
            msgid,
            subject="A secret subject line",
            extra=[
                ("X-Originating-IP", f"[{client_ip}]"),
                ("X-Mailer", "online-test mailer"),
                ("User-Agent", "online-test agent"),
            ],
        )
        outcome = transact(conn, sender.addr, [recipient.addr], data)
    assert (outcome.stage, outcome.code) == ("done", 250), outcome

    raw = wait_for_message_id(recipient, msgid)
    msg = parse_mail(raw)
    assert msg.get_all("Subject") == ["[...]"]
    assert b"secret subject" not in raw
    for header in (
        "DKIM-Signature",
        "Authentication-Results",
        "Received",
        "X-Originating-IP",
        "X-Mailer",
        "User-Agent",
    ):
        assert msg.get_all(header) is None, f"delivered mail has {header}: {msg[header]}"
    assert client_ip.encode() not in raw, f"the sender's address {client_ip} is in the message"
    assert msg.get_content_type() == "multipart/encrypted"


@pytest.mark.parametrize(("to", "signed"), [("local", False), ("remote", True)])
def test_only_mail_that_leaves_the_relay_passes_the_signing_listener(
    to: str, signed: bool, relay1: Relay, make_account: Factory, request: pytest.FixtureRequest
) -> None:
    """DKIM signing is a sixth of the relay's CPU per message, and a local delivery removes
    the signature again: mail for local users only is queued by the submission listener, after
    the gate as its milter (doc/milter.md), and never re-enters Postfix where it is signed.
    (That mail to other relays arrives signed, their DKIM check shows.)"""
    destination = relay1 if to == "local" else request.getfixturevalue("relay2")
    sender, recipient = make_account(relay1), make_account(destination)
    since = relay1.ssh("date +%s").strip()
    msgid = message_id(relay1)
    data = encrypted_message(sender.addr, recipient.addr, msgid)
    with sender.smtp() as conn:
        outcome = transact(conn, sender.addr, [recipient.addr], data)
    assert (outcome.stage, outcome.code) == ("done", 250), outcome
    wait_for_message_id(recipient, msgid)
    listener = "postfix/reinject/smtpd"

    def logged() -> bool:
        return f'"{listener}"' in relay1.ssh(
            f"journalctl --no-pager -o json --output-fields=SYSLOG_IDENTIFIER -t {listener}"
            f" --since @{since}"
        )

    if not signed:  # re-injection comes before delivery: a line would be there by now
        assert not logged(), f"mail for a local user passed {listener}"
        return
    # journald may lag behind the delivery by a moment
    deadline = time.monotonic() + 10
    while not logged():
        assert time.monotonic() < deadline, f"no line of {listener} on {relay1.domain}"
        time.sleep(0.2)


def test_oversized_message_refused(relay1: Relay, make_account: Factory) -> None:
    """A message over `max_message_size` gets 552 (doc/encryption-gate.md)."""
    sender, recipient = make_account(relay1), make_account(relay1)
    data = encrypted_message(sender.addr, recipient.addr, message_id(relay1))
    line = b"A" * 76 + b"\r\n"
    padding = line * (relay1.config.max_message_size // len(line) + 1)
    head, _, body = data.partition(b"\r\n\r\n")
    data = head + b"\r\n\r\n" + padding + body
    with sender.smtp() as conn:
        outcome = transact(conn, sender.addr, [recipient.addr], data)
    assert (outcome.stage, outcome.code) == ("data", 552), outcome


def test_rate_limit_after_the_burst(relay1: Relay, make_account: Factory) -> None:
    """The `burst`+1-th message in quick succession gets 450, and none before it does."""
    config = relay1.config
    burst, rate = config.max_user_send_burst_size, config.max_user_send_per_minute
    sender = make_account(relay1)  # a dedicated account: the limit is per sender
    accepted = 0
    started = time.monotonic()
    with sender.smtp() as conn:
        for _ in range(burst + 20):
            data = encrypted_message(sender.addr, sender.addr, message_id(relay1))
            outcome = transact(conn, sender.addr, [sender.addr], data)
            if outcome.code != 250:
                break
            accepted += 1
    elapsed = time.monotonic() - started
    REPORT.append(f"rate limit: {accepted} accepted in {elapsed:.2f} s, then {outcome}")
    assert outcome.code == 450, f"after {accepted} accepted: {outcome}"
    assert "4.7.1: Too much mail from" in outcome.text, outcome
    assert accepted >= burst, f"rate limited after only {accepted} messages (burst {burst})"
    refilled = math.ceil(elapsed * rate / 60)  # units that came back while sending
    assert accepted <= burst + refilled, f"{accepted} accepted in {elapsed:.1f} s"


# --- incoming: port 25 ----------------------------------------------------------------------


def test_incoming_cleartext_refused(relay1: Relay, relay2: Relay, make_account: Factory) -> None:
    """A peer sending cleartext to an account (all new accounts enforce E2EE) gets 523."""
    sender, recipient = make_account(relay1), make_account(relay2)
    data = cleartext_message(sender.addr, recipient.addr, message_id(relay1))
    conn = starttls_connect(relay2, 25)
    try:
        outcome = transact(conn, sender.addr, [recipient.addr], data)
    finally:
        close_smtp(conn)
    assert (outcome.stage, f"{outcome.code} {outcome.text}") == ("data", ENCRYPTION_NEEDED)


def skip_for_ip_literal_sender(relay: Relay) -> None:
    if relay.config.is_ipv4:
        pytest.skip(
            "mail from an IPv4 relay has no DKIM to check (doc/encryption-gate.md): "
            "test_incoming_from_ip_literal_address_accepted covers it"
        )


@pytest.mark.parametrize(
    ("signature", "reply"),
    [
        (None, "554 5.7.1 No DKIM signature found"),
        (
            "v=1; a=rsa-sha256; c=relaxed/simple; d={domain}; s=opendkim; h=from:to:subject;"
            " bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=Zm9yZ2VkIHNpZ25hdHVyZQ==",
            "554 5.7.1 No valid DKIM signature found",
        ),
    ],
    ids=["unsigned", "forged-signature"],
)
def test_incoming_without_valid_dkim_refused(
    signature: str | None, reply: str, relay1: Relay, relay2: Relay, make_account: Factory
) -> None:
    """Encrypted mail on port 25 claiming to be from relay1 needs relay1's DKIM signature."""
    skip_for_ip_literal_sender(relay1)
    sender, recipient = make_account(relay1), make_account(relay2)
    data = encrypted_message(sender.addr, recipient.addr, message_id(relay1))
    if signature:  # first in the header, where a signer puts it
        data = f"DKIM-Signature: {signature.format(domain=relay1.domain)}\r\n".encode() + data
    conn = starttls_connect(relay2, 25)
    try:
        outcome = transact(conn, sender.addr, [recipient.addr], data)
    finally:
        close_smtp(conn)
    assert (outcome.stage, f"{outcome.code} {outcome.text}") == ("data", reply)


def test_port_25_refuses_relaying(relay1: Relay) -> None:
    conn = starttls_connect(relay1, 25)
    try:
        outcome = transact(conn, "someone@example.org", ["other@example.net"], b"")
    finally:
        close_smtp(conn)
    assert outcome.stage == "rcpt" and outcome.code in (454, 554), outcome
    assert "Relay access denied" in outcome.text


def test_bounce_for_unknown_user_reaches_the_sender(
    relay1: Relay, relay2: Relay, make_account: Factory, registry: Registry
) -> None:
    """relay2 bounces mail for a user it does not have; relay1 accepts the bounce, which
    proves it was DKIM-signed by relay2 (relay1 refuses unsigned mail, see above)."""
    sender = make_account(relay1)
    nobody = f"{random_local(relay2)}@{relay2.address_domain}"
    registry.add_address(nobody, relay2)
    msgid = message_id(relay1)
    with sender.smtp() as conn:
        outcome = transact(
            conn, sender.addr, [nobody], encrypted_message(sender.addr, nobody, msgid)
        )
    assert (outcome.stage, outcome.code) == ("done", 250), outcome

    started = time.monotonic()
    raw = wait_for_mail(
        sender, lambda raw: msgid.encode() in raw and b"multipart/report" in raw, DELIVERY_TIMEOUT
    )
    REPORT.append(f"bounce from {relay2.domain} arrived after {time.monotonic() - started:.2f} s")
    bounce = parse_mail(raw)
    assert bounce.get_content_type() == "multipart/report"
    assert bounce["From"] and "mailer-daemon@" + relay2.domain in bounce["From"].lower()
    assert bounce["Auto-Submitted"]
    assert nobody.encode() in raw
    assert not relay2.exists(relay2.mailbox_dir(nobody)), "a bounce created the mailbox"


@pytest.mark.parametrize(
    ("kind", "status", "reply"),
    [
        ("cleartext", 400, ENCRYPTION_NEEDED),
        ("unsigned", 400, "554 5.7.1 No DKIM signature found"),
    ],
)
def test_mxdeliv_applies_the_same_gate(
    kind: str, status: int, reply: str, relay1: Relay, relay2: Relay, make_account: Factory
) -> None:
    """Relay-to-relay delivery over HTTPS gets the checks of port 25 (doc/encryption-gate.md)."""
    if kind != "cleartext":
        skip_for_ip_literal_sender(relay1)
    sender, recipient = make_account(relay1), make_account(relay2)
    build = cleartext_message if kind == "cleartext" else encrypted_message
    data = build(sender.addr, recipient.addr, message_id(relay1))
    headers = {"X-MAIL-FROM": sender.addr, "X-MAIL-TO": recipient.addr}
    assert mxdeliv(relay2, "POST", headers, data) == (status, reply)


def test_mxdeliv_takes_only_post(relay2: Relay) -> None:
    assert mxdeliv(relay2, "GET", {}, b"")[0] == 405


def test_incoming_from_ip_literal_address_accepted(relay2: Relay, make_account: Factory) -> None:
    """Mail from an IPv4 relay's user (`user@[a.b.c.d]`) has no DKIM to check
    (doc/encryption-gate.md): encrypted, it is accepted on port 25 and delivered."""
    recipient = make_account(relay2)
    conn = starttls_connect(relay2, 25)
    try:
        sender = f"{random_local(relay2)}@[{conn.sock.getsockname()[0]}]"
        msgid = message_id(relay2)
        data = encrypted_message(sender, recipient.addr, msgid)
        outcome = transact(conn, sender, [recipient.addr], data)
    finally:
        close_smtp(conn)
    assert (outcome.stage, outcome.code) == ("done", 250), outcome
    wait_for_message_id(recipient, msgid)
