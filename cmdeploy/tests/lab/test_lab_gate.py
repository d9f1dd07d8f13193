"""The outgoing gate on a deployed relay. Its socket (doc/milter.md §3): systemd makes it with
the owner, group and mode Postfix's smtpd needs, and holds it while filtermail is down, so a
client that submits meanwhile is served once filtermail is back, not told to try again. And
a recipient at an IP literal of the relay's own address, which the deployed Postfix (on all
interfaces) takes as its own, is refused (doc/encryption-gate.md §1.2)."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from labmail import inbox, new_user, send, ssh, tls, wait_for
from test_lab_relays import LAB, relays

from cmdeploy.layout import Layout

pytestmark = pytest.mark.skipif(LAB is None, reason="needs a lab: cmdeploy lab up")
GATE, GATE_SOCKET = "filtermail.service", "filtermail.socket"


def main_pid(ip: str) -> str:
    return ssh(ip, f"systemctl show -p MainPID --value {GATE}").strip()


@pytest.fixture
def relay() -> dict[str, Any]:
    return relays()[0]


def test_only_postfix_and_filtermail_reach_the_gate(relay: dict[str, Any]) -> None:
    ip = relay["ip"]
    socket = Layout.gate_socket
    assert ssh(ip, f"systemctl show -p Listen --value {GATE_SOCKET}").split() == [
        str(socket),
        "(Stream)",
    ]
    assert ssh(ip, f"stat -c '%F %U %G %a' {socket}").strip() == "socket vmail postfix 660"
    # the socket's group does it: filtermail itself is in no group of Postfix's
    groups = ssh(ip, f"grep '^Groups:' /proc/{main_pid(ip)}/status").split()[1:]
    postfix = ssh(ip, "getent group postfix postdrop | cut -d: -f3").split()
    assert groups and not set(groups) & set(postfix), (groups, postfix)


def test_a_submission_while_filtermail_is_down_is_served(relay: dict[str, Any]) -> None:
    ip, domain = relay["ip"], relay["domain"]
    sender, recipient = new_user(ip, domain), new_user(ip, domain)
    inbox(ip, recipient)  # the first login creates the account
    before = main_pid(ip)
    ssh(ip, f"systemctl stop {GATE}")
    assert ssh(ip, f"systemctl is-active {GATE} || true").strip() == "inactive"
    # Postfix's smtpd connects to the socket systemd holds; that starts filtermail
    msgid = send(ip, sender, recipient)
    after = main_pid(ip)
    assert after not in ("0", before)
    wait_for(ip, recipient, msgid)


def test_a_recipient_at_the_relays_own_ip_literal_is_refused(relay: dict[str, Any]) -> None:
    ip, domain = relay["ip"], relay["domain"]
    if domain.startswith("["):
        pytest.skip("an IPv4 relay: its own IP literal is its domain")
    sender, recipient = new_user(ip, domain), new_user(ip, domain)
    literal = f"{recipient.addr.split('@')[0]}@[{ip}]"
    with smtplib.SMTP_SSL(ip, 465, context=tls(), timeout=60) as smtp:
        smtp.login(sender.addr, sender.password)
        assert smtp.mail(sender.addr)[0] == 250
        assert smtp.rcpt(literal) == (553, b"5.1.3 Invalid recipient address")
