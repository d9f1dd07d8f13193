"""IMAP METADATA and push notifications (RFC 5464)."""

from __future__ import annotations

import json
import secrets
import time

import pytest
from chatmail_online import (
    DELIVERY_TIMEOUT,
    Factory,
    Registry,
    Relay,
    Target,
    encrypted_message,
    imap_metadata,
    imap_set_metadata,
    message_id,
    transact,
    wait_for_file_line,
    wait_for_message_id,
)

from chatmaild import appversions, turn

pytestmark = pytest.mark.timeout(180)

TOKEN_ENTRY = "/private/devicetoken"
VENDOR = "/shared/vendor/deltachat"


def new_token(registry: Registry) -> str:
    token = f"onlinetest-{secrets.token_hex(16)}"
    registry.tokens.add(token)
    return token


def test_device_tokens_round_trip(relay1: Relay, make_account: Factory, registry: Registry) -> None:
    creds = make_account(relay1)
    first, second = new_token(registry), new_token(registry)
    with creds.imap() as conn:
        assert imap_metadata(conn, "INBOX", TOKEN_ENTRY).get(TOKEN_ENTRY, "") == ""
        imap_set_metadata(conn, "INBOX", TOKEN_ENTRY, first)
        imap_set_metadata(conn, "INBOX", TOKEN_ENTRY, second)
        imap_set_metadata(conn, "INBOX", TOKEN_ENTRY, first)  # setting again refreshes it
    with creds.imap() as conn:  # stored, not kept in the session
        value = imap_metadata(conn, "INBOX", TOKEN_ENTRY)[TOKEN_ENTRY]
    assert sorted(value.split(" ")) == sorted([first, second])


def test_server_metadata(relay1: Relay, make_account: Factory) -> None:
    creds = make_account(relay1)
    entries = [
        f"{VENDOR}/irohrelay",
        f"{VENDOR}/turn",
        f"{VENDOR}/maxsmtprecipients",
        f"{VENDOR}/appversions",
    ]
    with creds.imap() as conn:
        values = imap_metadata(conn, '""', *entries)
    assert values[f"{VENDOR}/maxsmtprecipients"] == "1000"
    host, port, username, password = values[f"{VENDOR}/turn"].split(":", 3)
    assert (host, port) == (relay1.domain, "3478") and password
    # the timestamp Delta Chat reads is the credentials' expiry (doc/metadata.md): days ahead,
    # more than the 12 hours before which a client asks again (an hour for clock differences)
    expiry = int(username)
    assert time.time() + 12 * 3600 < expiry < time.time() + turn.LIFETIME + 3600, expiry
    # the app-update catalogue: one line of JSON of the shape the apps read (doc/metadata.md)
    catalogue = values[f"{VENDOR}/appversions"]
    assert "\n" not in catalogue
    appversions.check(json.loads(catalogue))
    iroh = relay1.config.iroh_relay
    if iroh:
        assert values[f"{VENDOR}/irohrelay"] == iroh
    else:  # the relay runs no iroh relay: it announces none (NIL), not its own domain
        assert f"{VENDOR}/irohrelay" not in values


def test_push_on_mail_from_another_relay(
    target: Target, relay1: Relay, relay2: Relay, make_account: Factory, registry: Registry
) -> None:
    if target.push_tokens is None:
        pytest.skip("the target has no push fake whose tokens the suite can read")
    sender, recipient = make_account(relay1), make_account(relay2)
    token = new_token(registry)
    with recipient.imap() as conn:
        imap_set_metadata(conn, "INBOX", TOKEN_ENTRY, token)
    msgid = message_id(relay1)
    with sender.smtp() as conn:
        data = encrypted_message(sender.addr, recipient.addr, msgid)
        outcome = transact(conn, sender.addr, [recipient.addr], data)
    assert (outcome.stage, outcome.code) == ("done", 250), outcome
    wait_for_message_id(recipient, msgid)
    line = wait_for_file_line(target.push_tokens, token, DELIVERY_TIMEOUT)
    assert line.strip() == token  # the gateway gets the token as it was set, nothing else
