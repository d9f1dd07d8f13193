"""What the relays remember: their journals, after the suite (runs last, by its name).

Passwords and push tokens must appear nowhere in a relay's journal. Addresses must not appear
in what chatmail's own services and Dovecot log, not even in Dovecot's error for a delivery it
failed (which names the recipient; its lines pass through chatmail-postlog too). Postfix's
lines (every journal entry whose syslog identifier starts with `postfix`, whichever process
wrote it) pass through
chatmail-postlog, so they must hold no test address, not even its local part,
and no IP address literal at all: not the test client's, and not the relays' own either,
since the scrubber replaces every one. Other units may name IPs (sshd logs the address the
suite connects from), so the IP rule is asserted for Postfix's lines only. Postfix must still
log: each relay's lines include a delivery (`status=sent`).
"""

from __future__ import annotations

import imaplib
import ipaddress
import re
import shlex
import socket
import time

import pytest
from chatmail_online import (
    REPORT,
    Credentials,
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
# Dovecot's error when it cannot write a message into the maildir's tmp/
DOVECOT_SAVE_FAILED = "Permission denied"
# "2026-11-26T03:43:53+0000 relay2 postfix/qmgr[9862]: ..." (journalctl -o short-iso)
POSTFIX_LINE = re.compile(r"^\S+ \S+ postfix[^\s\[:]*(?:\[\d+\])?: ")
IPV4_LITERAL = re.compile(r"(?<![0-9])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9])")


def ip_literals(line: str) -> list[str]:
    """IPv4 literals, and the tokens between delimiters that are IPv6 addresses."""
    found = IPV4_LITERAL.findall(line)
    for token in re.split(r"[\s\[\]()<>,;=]+", line):
        for candidate in (token, token.removeprefix("IPv6:"), token.rpartition(":")[0]):
            try:
                if ipaddress.ip_address(candidate.rstrip(".")).version == 6:
                    found.append(candidate)
                    break
            except ValueError:
                pass
    return found


def client_address(relay: Relay) -> str:
    """The address this client connects to `relay` from (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((relay.ip, 25))
        return str(probe.getsockname()[0])


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
    failed_delivery(relay1, sender, make_account(relay1))


def failed_delivery(relay: Relay, sender: Credentials, recipient: Credentials) -> None:
    """A delivery Dovecot fails, as on a full disk: its error names the recipient and the
    maildir's path. Its tmp/ made read-only makes Dovecot fail to save the message; Postfix
    keeps it (a 4xx) and delivers it once tmp/ is writable again."""
    tmp = shlex.quote(relay.mailbox_dir(recipient.addr) + "/tmp")
    relay.ssh(f"install -d -o vmail -g vmail -m 0500 {tmp} && chmod 0500 {tmp}")
    msgid = message_id(relay)
    try:
        with sender.smtp() as smtp:
            data = encrypted_message(sender.addr, recipient.addr, msgid)
            assert transact(smtp, sender.addr, [recipient.addr], data).code == 250
        sent, deadline = time.time(), time.monotonic() + 60
        # the scrubber writes Dovecot's lines, so they are in its unit's journal
        while DOVECOT_SAVE_FAILED not in journal(relay, sent, ["chatmail-postlog*"]):
            assert time.monotonic() < deadline, "Dovecot logged no failed delivery"
            time.sleep(1)
    finally:
        relay.ssh(f"chmod 0700 {tmp}")
    relay.ssh("postqueue -f")  # instead of waiting for Postfix's next retry
    wait_for_message_id(recipient, msgid)


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
        postfix = [
            line
            for line in journal(relay, registry.started, fmt="short-iso").splitlines()
            if POSTFIX_LINE.match(line)
        ]
        client = client_address(relay)
        for line in postfix:
            message = POSTFIX_LINE.sub("", line)
            for addr in addresses:
                local = addr.partition("@")[0]
                if local.lower() in message.lower():
                    problems.append(f"{relay.domain}: Postfix logged a test address: {line}")
            if client in ip_literals(message):
                problems.append(f"{relay.domain}: Postfix logged the client's IP: {line}")
            elif ip_literals(message):
                problems.append(f"{relay.domain}: Postfix logged an IP address: {line}")
        if not any("status=sent" in line for line in postfix):
            problems.append(f"{relay.domain}: no Postfix delivery line in the journal")
        if relay is relays[0] and DOVECOT_SAVE_FAILED not in own:
            problems.append(f"{relay.domain}: Dovecot's failed delivery is not in the journal")
        REPORT.append(f"{relay.domain}: {len(postfix)} Postfix journal lines checked")
    assert not problems, "\n".join(problems)
