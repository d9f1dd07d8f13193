"""Registration on a deployed relay (doc/accounts.md), in invite mode and with the autorelay
switch, and blocked accounts: what an app and another relay see.

Each test sets the mode over SSH with the relay's chatmail-accounts (what `cmdeploy
registration` and `cmdeploy invite` run) and puts the relay back to chatmail.ini's setting
afterwards. Delta Chat core cannot fetch a `DCACCOUNT:` URL from a relay whose certificate
comes from a private CA (the lab's): there the test fetches `/new?token=...` itself, trusting
that CA, and configures core from the credentials, as core would after fetching.
"""

from __future__ import annotations

import imaplib
import json
import secrets
import shlex
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from chatmail_online import (
    REMOTE_INI,
    ChatClients,
    Credentials,
    Factory,
    Registry,
    Relay,
    close_smtp,
    encrypted_message,
    imap_connect,
    message_id,
    mxdeliv,
    post_new,
    smtps_connect,
    transact,
)
from test_online_9_metrics import fetch, samples

pytestmark = pytest.mark.timeout(240)

TOOL = f"/usr/local/lib/chatmaild/venv/bin/chatmail-accounts {REMOTE_INI}"
REFUSED = {
    "missing": "This relay creates accounts by invitation only: use an invite from its operator.",
    "expired": "This invite has expired: ask the relay's operator for a new one.",
    "used_up": "This invite has been used up: ask the relay's operator for a new one.",
    "invalid": "This invite is not valid: it was mistyped, or its operator revoked it.",
}


def tool(relay: Relay, *args: str) -> str:
    return relay.ssh(f"{TOOL} {shlex.join(args)}")


@pytest.fixture
def invites(relay1: Relay, registry: Registry) -> Iterator[list[str]]:
    """Relay1 in invite mode; the ids of the invites a test makes are revoked after it."""
    made: list[str] = []
    tool(relay1, "registration", "invite")
    try:
        yield made
    finally:
        for invite_id in made:
            tool(relay1, "invite", "--revoke", invite_id)
        tool(relay1, "registration", "reset")


def create_invite(relay: Relay, made: list[str], registry: Registry, *args: str) -> str:
    """A new invite's DCACCOUNT URL (its token registered for the privacy check)."""
    out = tool(relay, "invite", *args)
    made.append(out.split()[1].rstrip(":"))
    [url] = [line for line in out.splitlines() if line.startswith("DCACCOUNT:")]
    registry.tokens.add(token_of(url))
    return url


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url.removeprefix("DCACCOUNT:")).query)["token"][0]


def redeem(relay: Relay, url: str, registry: Registry) -> Credentials:
    """What core does with a scanned DCACCOUNT URL: POST to it, take the credentials."""
    status, _, body = post_new(relay, query=f"?token={token_of(url)}", refusals=True)
    assert status == 200, body
    data = json.loads(body)
    return registry.add(Credentials(data["email"], data["password"], relay))


def refusal(relay: Relay, query: str, method: str = "POST") -> tuple[int, str]:
    status, _, body = post_new(relay, method, query, refusals=True)
    return status, body.decode().strip()


def refused_login(relay: Relay, addr: str, password: str) -> bool:
    conn = imap_connect(relay)
    try:
        conn.login(addr, password)
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e)
        return True
    finally:
        conn.shutdown()
    return False


def scanned(chat_clients: ChatClients, relay: Relay, url: str, registry: Registry) -> Any:
    """A core account from an invite's URL: core fetches it where it can trust the relay."""
    if relay.certificate_checks == "automatic":
        account = chat_clients.deltachat.add_account()
        account.add_transport_from_qr(url)
        addr = account.list_transports()[0]["addr"]
        registry.add_address(addr, relay)
        return chat_clients.online(account, Credentials(addr, "", relay))
    return chat_clients.account_with(relay, redeem(relay, url, registry))


def test_an_invite_creates_accounts_that_chat(
    relay1: Relay, chat_clients: ChatClients, registry: Registry, invites: list[str]
) -> None:
    url = create_invite(relay1, invites, registry, "--uses", "2", "--expires", "1h")
    assert url.startswith(f"DCACCOUNT:https://{relay1.domain}/new?token=")
    alice = scanned(chat_clients, relay1, url, registry)
    bob = scanned(chat_clients, relay1, url, registry)
    chat = alice.create_chat(bob)
    chat.send_text("hello from an invited account")
    received = chat_clients.wait_incoming(bob, "hello from an invited account")
    assert received.show_padlock
    # both uses spent: the third scan gets the clear refusal
    assert refusal(relay1, f"?token={token_of(url)}") == (403, REFUSED["used_up"])
    # the daily expiry (vmail) removes the records of addresses whose accounts now exist
    handed = f"{relay1.config.registration_dir}/handed"
    addrs = [account.list_transports()[0]["addr"] for account in (alice, bob)]
    assert all(relay1.exists(f"{handed}/{addr}") for addr in addrs)
    relay1.ssh("systemctl start chatmail-expire.service", timeout=240)
    assert relay1.ssh("systemctl show chatmail-expire.service -p Result --value").strip() == (
        "success"
    )
    assert not any(relay1.exists(f"{handed}/{addr}") for addr in addrs)


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_url_without_a_token_fails_clearly(
    relay1: Relay, invites: list[str], method: str
) -> None:
    def counts() -> dict[str, float]:
        values = samples(fetch(relay1)[2])
        return {r: values.get(f'chatmail_new_requests_total{{outcome="{r}"}}', 0) for r in REFUSED}

    before = counts()
    assert refusal(relay1, "", method) == (403, REFUSED["missing"])
    assert refusal(relay1, "?token=not-an-invite-at-all", method) == (403, REFUSED["invalid"])
    # /new (www-data) counts at once, and the exporter serves it: at least these two, since
    # other clients may ask at the same time
    after = counts()
    assert after["missing"] >= before["missing"] + 1
    assert after["invalid"] >= before["invalid"] + 1


def test_an_expired_invite_fails_clearly(
    relay1: Relay, registry: Registry, invites: list[str]
) -> None:
    url = create_invite(relay1, invites, registry, "--expires", "1h")
    # move its expiry into the past instead of waiting for it
    path = f"{relay1.config.registration_dir}/invites/{invites[-1]}.json"
    relay1.ssh(
        "python3 -c 'import json, sys; p = sys.argv[1]; d = json.load(open(p)); "
        f'd["expires"] = d["created"]; json.dump(d, open(p, "w"))\' {shlex.quote(path)}'
    )
    assert refusal(relay1, f"?token={token_of(url)}") == (403, REFUSED["expired"])


def test_a_revoked_invite_fails_clearly(
    relay1: Relay, registry: Registry, invites: list[str]
) -> None:
    url = create_invite(relay1, invites, registry)
    tool(relay1, "invite", "--revoke", invites[-1])
    assert refusal(relay1, f"?token={token_of(url)}") == (403, REFUSED["invalid"])


def random_address(relay: Relay) -> str:
    alphabet = string.ascii_lowercase + string.digits
    local = "".join(secrets.choice(alphabet) for _ in range(relay.config.username_max_length))
    return f"{local}@{relay.address_domain}"


def test_a_first_login_with_an_unknown_address_is_refused(
    relay1: Relay, registry: Registry, invites: list[str]
) -> None:
    addr = random_address(relay1)
    registry.add_address(addr, relay1)
    assert refused_login(relay1, addr, "a-password-of-some-length")
    assert not relay1.exists(relay1.mailbox_dir(addr))


def test_the_web_page_learns_the_mode(relay1: Relay, invites: list[str]) -> None:
    import urllib.request

    url = f"https://{relay1.domain}/registration.json"
    context = relay1.tls_context()
    with urllib.request.urlopen(url, context=context, timeout=20) as response:  # noqa: S310
        assert json.loads(response.read()) == {"registration": "invite"}


def test_the_autorelay_switch(relay1: Relay, registry: Registry) -> None:
    tool(relay1, "registration", "open", "--refuse-autorelay")
    try:
        marked, unmarked = random_address(relay1), random_address(relay1)
        for addr in (marked, unmarked):
            registry.add_address(addr, relay1)
        assert refused_login(relay1, marked, "x" * 23)
        assert not refused_login(relay1, unmarked, "x" * 24)
    finally:
        tool(relay1, "registration", "reset")


# --- blocked accounts ---------------------------------------------------------------------------


def test_a_blocked_account_cannot_log_in_nor_receive(relay1: Relay, make_account: Factory) -> None:
    sender, blocked = make_account(relay1), make_account(relay1)
    said = tool(relay1, "block", blocked.addr.upper())
    assert said.startswith(f"blocked {blocked.addr}: no login, no incoming mail")
    try:
        assert refused_login(relay1, blocked.addr, blocked.password)
        data = encrypted_message(sender.addr, blocked.addr, message_id(relay1))
        conn = smtps_connect(relay1)
        try:
            conn.login(sender.addr, sender.password)
            outcome = transact(conn, sender.addr, [blocked.addr], data)
        finally:
            close_smtp(conn)
        assert (outcome.stage, outcome.code) == ("rcpt", 550), outcome
        assert "5.2.1" in outcome.text
        # another relay's delivery over HTTPS gets the same permanent refusal
        headers: dict[str, str | bytes] = {"X-MAIL-FROM": sender.addr, "X-MAIL-TO": blocked.addr}
        assert mxdeliv(relay1, "POST", headers, data) == (
            400,
            "550 5.2.1 Mailbox disabled, not accepting messages",
        )
    finally:
        assert tool(relay1, "unblock", blocked.addr).startswith(f"unblocked {blocked.addr}")
    with blocked.imap() as imap:  # the old password again
        imap.select("INBOX")
