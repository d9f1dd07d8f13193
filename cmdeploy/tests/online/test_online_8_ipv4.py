"""An IPv4 relay: no DNS name, addresses `user@[a.b.c.d]` (doc/config.md).

Run when the target has one (the lab's `relay3`, with `cmdeploy lab up --relays 3`).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from chatmail_online import (
    Credentials,
    Factory,
    Registry,
    Relay,
    encrypted_message,
    message_id,
    post_new,
    transact,
    wait_for_message_id,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def ipv4_relay(relays: list[Relay]) -> Relay:
    found = [r for r in relays if r.config.is_ipv4]
    if not found:
        pytest.skip("no IPv4 relay in the target")
    return found[0]


def test_new_hands_out_an_ip_literal_address_and_a_dclogin_url(
    ipv4_relay: Relay, registry: Registry
) -> None:
    status, _, body = post_new(ipv4_relay)
    assert status == 200
    data = json.loads(body)
    registry.add(Credentials(data["email"], data["password"], ipv4_relay))
    assert data["email"].endswith(f"@[{ipv4_relay.config.mail_domain}]")
    url = urlsplit(data["dclogin_url"])
    assert url.scheme == "dclogin" and unquote(url.path) == data["email"]
    query = parse_qs(url.query)
    # the app cannot look the servers up by name: they are given, and the certificate is
    # the relay's own
    assert query["ih"] == [ipv4_relay.config.mail_domain]
    assert query["sh"] == [ipv4_relay.config.mail_domain]
    assert query["ic"] == ["3"] and query["p"] == [data["password"]]


def test_mail_between_a_named_relay_and_an_ipv4_relay(
    ipv4_relay: Relay, relay1: Relay, make_account: Factory
) -> None:
    if relay1 is ipv4_relay:
        pytest.skip("needs a relay with a DNS name besides the IPv4 relay")
    named, literal = make_account(relay1), make_account(ipv4_relay)
    for sender, recipient in ((named, literal), (literal, named)):
        msgid = message_id(sender.relay)
        with sender.smtp() as smtp:
            data = encrypted_message(sender.addr, recipient.addr, msgid)
            assert transact(smtp, sender.addr, [recipient.addr], data).code == 250
        wait_for_message_id(recipient, msgid)


def test_mail_between_two_users_of_an_ipv4_relay(ipv4_relay: Relay, make_account: Factory) -> None:
    """`user@[a.b.c.d]` to `user@[a.b.c.d]` re-enters Postfix at the local-only listener,
    which must take the relay's own address literal as local."""
    sender, recipient = make_account(ipv4_relay), make_account(ipv4_relay)
    msgid = message_id(ipv4_relay)
    with sender.smtp() as smtp:
        data = encrypted_message(sender.addr, recipient.addr, msgid)
        assert transact(smtp, sender.addr, [recipient.addr], data).code == 250
    wait_for_message_id(recipient, msgid)
