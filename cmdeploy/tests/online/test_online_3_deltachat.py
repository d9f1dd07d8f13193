"""Delta Chat core against the relays: onboarding, 1:1 chats, Secure-Join, verified groups."""

from __future__ import annotations

import time
from typing import Any

import pytest
from chatmail_online import (
    REPORT,
    ChatClients,
    Credentials,
    Registry,
    Relay,
    post_new,
)

pytestmark = pytest.mark.timeout(240)


def test_core_version(deltachat_version: str) -> None:
    REPORT.append(f"Delta Chat core: deltachat-rpc-server {deltachat_version}")
    assert deltachat_version


def test_configure_from_dclogin_url(
    relay1: Relay, chat_clients: ChatClients, registry: Registry
) -> None:
    """Self-signed relays hand out a `dclogin:` URL that core can configure from."""
    if relay1.config.tls_mode != "self":
        pytest.skip("dclogin_url is only returned by self-signed relays")
    import json

    _status, _headers, body = post_new(relay1)
    data = json.loads(body)
    creds = registry.add(Credentials(data["email"], data["password"], relay1))
    account = chat_clients.new_account_from_qr(relay1, data["dclogin_url"], creds)
    assert account.is_configured()
    assert [t["addr"] for t in account.list_transports()] == [creds.addr]


def exchange(clients: ChatClients, sender: Any, receiver: Any, text: str) -> Any:
    """Send `text` from sender to receiver in their 1:1 chat; the received snapshot."""
    chat = sender.create_chat(receiver)
    started = time.monotonic()
    chat.send_text(text)
    snapshot = clients.wait_incoming(receiver, text)
    REPORT.append(
        f"1:1 {clients.addr(sender).partition('@')[2]} -> "
        f"{clients.addr(receiver).partition('@')[2]}: {time.monotonic() - started:.2f} s"
    )
    return snapshot


@pytest.mark.parametrize("where", ["one relay", "two relays"])
def test_encrypted_one_to_one_chat(
    where: str, relay1: Relay, chat_clients: ChatClients, request: pytest.FixtureRequest
) -> None:
    other = relay1 if where == "one relay" else request.getfixturevalue("relay2")
    alice, bob = chat_clients.new_account(relay1), chat_clients.new_account(other)
    # contacts from each other's vCard, which carries the key: the chat is encrypted at once
    received = exchange(chat_clients, alice, bob, f"hello bob, {where}")
    assert received.show_padlock
    assert received.sender.get_snapshot().address == chat_clients.addr(alice)
    # bob accepts the contact request and answers; alice sees a read receipt for her message
    bob.get_chat_by_id(received.chat_id).accept()
    reply = exchange(chat_clients, bob, alice, "hello alice")
    assert reply.show_padlock
    bob.mark_seen_messages([received.message])
    chat_clients.wait_event(alice, "MsgRead")


def test_secure_join_across_relays(relay1: Relay, relay2: Relay, chat_clients: ChatClients) -> None:
    alice, bob = chat_clients.new_account(relay1), chat_clients.new_account(relay2)
    qr = alice.get_qr_code()
    started = time.monotonic()
    bob.secure_join(qr)
    inviter = chat_clients.wait_event(
        alice, "SecurejoinInviterProgress", lambda e: e["progress"] == 1000
    )
    joiner = chat_clients.wait_event(
        bob, "SecurejoinJoinerProgress", lambda e: e["progress"] == 1000
    )
    REPORT.append(f"Secure-Join across relays: {time.monotonic() - started:.2f} s")
    bob_seen_by_alice = alice.get_contact_by_id(inviter["contactId"]).get_snapshot()
    alice_seen_by_bob = bob.get_contact_by_id(joiner["contactId"]).get_snapshot()
    assert bob_seen_by_alice.address == chat_clients.addr(bob)
    assert alice_seen_by_bob.address == chat_clients.addr(alice)
    assert bob_seen_by_alice.e2ee_avail and alice_seen_by_bob.e2ee_avail
    assert bob_seen_by_alice.is_key_contact and alice_seen_by_bob.is_key_contact
    # the chat is usable both ways, encrypted, without a contact request
    received = exchange(chat_clients, alice, bob, "after secure join")
    assert received.show_padlock
    assert not bob.get_chat_by_id(received.chat_id).get_basic_snapshot().is_contact_request
    assert exchange(chat_clients, bob, alice, "answer").show_padlock


def test_verified_group_across_relays(
    relay1: Relay, relay2: Relay, chat_clients: ChatClients
) -> None:
    """Members join alice's group by its Secure-Join QR, from the other relay and her own."""
    alice = chat_clients.new_account(relay1)
    bob, carol = chat_clients.new_account(relay2), chat_clients.new_account(relay1)
    group = alice.create_group("online test group")
    qr = group.get_qr_code()
    for member in (bob, carol):
        member.secure_join(qr)
        chat_clients.wait_event(
            alice,
            "SecurejoinInviterProgress",
            lambda e: e["progress"] == 1000 and e.get("chatType") == "Group",
        )
        chat_clients.wait_event(member, "SecurejoinJoinerProgress", lambda e: e["progress"] == 1000)
    assert len(group.get_contacts()) == 3

    group.send_text("welcome to the group")
    chats = {}
    for member in (bob, carol):
        snapshot = chat_clients.wait_incoming(member, "welcome to the group")
        assert snapshot.show_padlock
        chat = member.get_chat_by_id(snapshot.chat_id)
        full = chat.get_full_snapshot()
        assert full.chat_type == "Group" and full.is_encrypted and not full.is_contact_request
        assert full.name == "online test group" and len(full.contact_ids) == 3
        chats[member.id] = chat

    chats[bob.id].send_text("bob from the other relay")
    for member in (alice, carol):
        snapshot = chat_clients.wait_incoming(member, "bob from the other relay")
        assert snapshot.show_padlock
        assert snapshot.sender.get_snapshot().address == chat_clients.addr(bob)
