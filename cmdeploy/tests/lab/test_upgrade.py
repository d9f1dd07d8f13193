"""A relay upgraded in place from Debian 12 to 13 (doc/upgrade.md), in the lab.

relay1 runs Debian 12 with users, mail, a push token and its DKIM key. The host is upgraded
as an operator does it (doc/upgrade.md): Debian's sources to trixie, `apt full-upgrade`, a
reboot, then `cmdeploy run` again. Afterwards every account logs in with its old password,
the mail is there with its UIDs, the DKIM key and the certificate are the same, push still
reaches the push fake, mail goes both ways between relay1 (now 13) and relay2 (still 12),
and a second `cmdeploy run` changes nothing.

It leaves relay1 on Debian 13, so it runs only when asked (`CHATMAIL_LAB_UPGRADE=1`), after
everything else on that lab: scripts/test runs it last.
"""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import time
from pathlib import Path

import pytest
from labmail import KEY, WAIT, dkim_key, imap, inbox, new_user, send, ssh, wait_for
from test_lab_relays import LAB, assert_nothing_changed, cmdeploy, wheels  # noqa: F401

from cmdeploy import lab
from cmdeploy.lab import hosts

pytestmark = [
    pytest.mark.skipif(LAB is None, reason="needs a lab: cmdeploy lab up"),
    pytest.mark.skipif(
        os.environ.get("CHATMAIL_LAB_UPGRADE") != "1",
        reason="leaves relay1 on Debian 13: CHATMAIL_LAB_UPGRADE=1 (scripts/test runs it last)",
    ),
    pytest.mark.timeout(2400),
]

# What doc/upgrade.md tells the operator to run on the server, in this order: Postfix will
# not start at the next boot (Debian 13 runs it in a unit without the log scrubber's drop-in
# until the deploy), no service is restarted by the packages meanwhile (Dovecot 2.4 would
# refuse 2.3's configuration and fail the upgrade), the relay's configuration files are
# kept, then the host reboots.
UPGRADE = (
    "systemctl disable --quiet postfix && "
    "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && "
    "sed -i 's/bookworm/trixie/g' /etc/apt/sources.list "
    "$(ls /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null) && "
    "apt-get update -qq && "
    "DEBIAN_FRONTEND=noninteractive apt-get full-upgrade -y -qq "
    "-o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef && "
    "rm /usr/sbin/policy-rc.d"
)


def reboot(state: lab.State, relay: lab.Relay) -> None:
    """`reboot` on the host; the lab boots its tree again, as the machine's firmware would.

    Right after the upgrade the host's systemd is Debian 13's, re-executed in place, and in
    the lab's containers it cannot end the old processes (their control groups are not its
    to kill here, as `bench --faults` found): its shutdown hangs. A real server's does not.
    So after a minute the lab cuts the power, by ending the host's init, as a reset would."""
    hosts.ssh(KEY, relay.ip, "systemctl reboot")
    hosts.finish_reboot(relay.pid)
    lab.up(len(state.relays), deploy=False)


def certificate(ip: str, domain: str) -> bytes:
    """The relay's certificate on 993, verified against the lab's CAs for its name."""
    ctx = ssl.create_default_context(cafile=LAB["ca_cert"])
    with (
        socket.create_connection((ip, 993), timeout=30) as sock,
        ctx.wrap_socket(sock, server_hostname=domain) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    return der


def test_a_relay_upgraded_from_debian_12_to_13_carries_on(wheels: Path) -> None:  # noqa: F811
    state = lab.State.load()
    relay, peer = state.relays[0], state.relays[1]
    assert ssh(relay.ip, "cut -d. -f1 /etc/debian_version").strip() == "12"
    alice, bob = new_user(relay.ip, relay.domain), new_user(relay.ip, relay.domain)
    carol = new_user(peer.ip, peer.domain)
    for ip, user in ((relay.ip, alice), (relay.ip, bob), (peer.ip, carol)):
        imap(ip, user).logout()
    token = f"upgrade-{secrets.token_hex(6)}"
    conn = imap(relay.ip, alice)
    assert conn.xatom("SETMETADATA", f'INBOX (/private/devicetoken "{token}")')[0] == "OK"
    conn.logout()
    before = send(peer.ip, carol, alice)
    on_12 = wait_for(relay.ip, alice, before)
    key, cert = dkim_key(relay.ip), certificate(relay.ip, relay.domain)

    upgraded = hosts.ssh(KEY, relay.ip, UPGRADE, timeout=1800)
    assert upgraded.returncode == 0, (upgraded.stdout + upgraded.stderr)[-4000:]
    reboot(state, relay)
    assert ssh(relay.ip, "cut -d. -f1 /etc/debian_version").strip() == "13"
    # until the deploy, no Postfix: none of its lines can reach the journal unscrubbed
    assert ssh(relay.ip, "systemctl is-active postfix postfix@- || true").split() == [
        "inactive",
        "inactive",
    ]
    state = lab.State.load()  # reboot() saved the new pid; `lab status` tells 13 from now on
    next(r for r in state.relays if r.name == relay.name).debian = "13"
    state.save()
    deployed = cmdeploy("run", "--ssh-host", relay.ip, "--config", relay.config, wheels=wheels)
    assert deployed.returncode == 0, (deployed.stdout + deployed.stderr)[-4000:]
    assert "Debian 13" in deployed.stdout + deployed.stderr

    # Old passwords, the same mail with the same UIDs, the same DKIM key and certificate.
    on_13 = inbox(relay.ip, alice)
    assert on_13["uidvalidity"] == on_12["uidvalidity"]
    assert on_13["messages"][before] == on_12["messages"][before]
    imap(relay.ip, bob).logout()
    assert dkim_key(relay.ip) == key
    assert certificate(relay.ip, relay.domain) == cert
    # Across releases both ways; relay2 verifies the DKIM signature of Debian 13's relay.
    wait_for(peer.ip, carol, send(relay.ip, alice, carol))
    tokens = Path(LAB["push_tokens"])
    seen = len(tokens.read_text()) if tokens.exists() else 0
    wait_for(relay.ip, alice, send(peer.ip, carol, alice))
    deadline = time.monotonic() + WAIT
    while token not in (tokens.read_text() if tokens.exists() else "")[seen:]:
        assert time.monotonic() < deadline, "no push after the upgrade"
        time.sleep(1)
    # The deploy is whole: a second run changes nothing.
    again = cmdeploy("run", "--ssh-host", relay.ip, "--config", relay.config, wheels=wheels)
    assert_nothing_changed(again)
