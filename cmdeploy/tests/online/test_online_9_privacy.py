"""What the relays remember: their journals, after the suite (runs last, by its name).

Passwords and push tokens must appear nowhere in a relay's journal. Addresses must not appear
in what chatmail's own services and Dovecot log; Postfix logs envelope addresses by design,
which is reported in the summary, not asserted.
"""

from __future__ import annotations

import imaplib

import pytest
from chatmail_online import (
    REPORT,
    Factory,
    Registry,
    Relay,
    encrypted_message,
    imap_connect,
    imap_set_metadata,
    message_id,
    random_local,
    transact,
    wait_for_message_id,
)

pytestmark = pytest.mark.timeout(180)

# Units of chatmail's own services (globs as journalctl -u takes them), and Dovecot.
OWN_UNITS = ["doveauth*", "chatmail-*", "filtermail*", "dovecot*", "fcgiwrap*", "nginx*"]
CLOCK_MARGIN = 60  # seconds: journal entries are selected from suite start minus this


def journal(relay: Relay, since: float, units: list[str] | None = None, fmt: str = "cat") -> str:
    unit_args = " ".join(f"-u '{unit}'" for unit in units or [])
    return relay.ssh(
        f"journalctl --no-pager --quiet -o {fmt} --since @{int(since) - CLOCK_MARGIN} {unit_args}",
        timeout=120,
    )


@pytest.fixture
def exercised(
    relay1: Relay, relays: list[Relay], make_account: Factory, registry: Registry
) -> None:
    """Traffic that touches every logging path: logins, failed logins, a token, mail to
    another relay and to a user who does not exist."""
    other = relays[-1]
    sender, recipient = make_account(relay1), make_account(other)
    token = f"onlinetest-privacy-{message_id(relay1)[1:9]}"
    registry.tokens.add(token)
    with recipient.imap() as conn:
        imap_set_metadata(conn, "INBOX", "/private/devicetoken", token)
    conn = imap_connect(relay1)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(sender.addr, "wrong-" + sender.password)
    finally:
        conn.shutdown()
    nobody = f"{random_local(other)}@{other.address_domain}"
    registry.add_address(nobody, other)
    msgid = message_id(relay1)
    with sender.smtp() as smtp:
        for rcpt in (recipient.addr, nobody):
            data = encrypted_message(sender.addr, rcpt, msgid)
            assert transact(smtp, sender.addr, [rcpt], data).code == 250
    wait_for_message_id(recipient, msgid)
    wait_for_message_id(sender, msgid)  # the bounce for `nobody`


def test_journals_hold_no_secrets(exercised: None, relays: list[Relay], registry: Registry) -> None:
    secrets = sorted(registry.passwords | registry.tokens)
    addresses = sorted(registry.accounts)
    assert secrets and addresses
    problems = []
    for relay in relays:
        everything = journal(relay, registry.started)
        for secret in secrets:
            if secret in everything:
                problems.append(f"{relay.domain}: a test password or token is in the journal")
        own = journal(relay, registry.started, OWN_UNITS, fmt="short-iso")
        for line in own.splitlines():
            for addr in addresses:
                local = addr.partition("@")[0]
                if addr.lower() in line.lower() or local in line:
                    problems.append(f"{relay.domain}: an address in: {line}")
        postfix_lines = [
            line
            for line in journal(relay, registry.started, fmt="short-iso").splitlines()
            if "postfix" in line and any(addr.lower() in line.lower() for addr in addresses)
        ]
        REPORT.append(
            f"{relay.domain}: Postfix journal lines naming test addresses: {len(postfix_lines)}"
            " (by design, not asserted)"
        )
    assert not problems, "\n".join(problems)
