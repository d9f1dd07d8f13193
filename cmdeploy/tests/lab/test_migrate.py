"""Moving a relay to a new server with `cmdeploy migrate` (doc/backup.md), in the lab.

relay1 (the ACME relay) moves to the lab's spare host, a fresh Debian host with nothing on
it, exactly as an operator would: `cmdeploy migrate --to`, then the DNS change it prints,
then `cmdeploy run` again for the certificate. Its users keep their passwords, mail (same
UIDs) and push token, its DKIM key is the same (relay2 still verifies its mail), and mail
relay2 sent while the relay was moving waits in relay2's queue and arrives afterwards.

Afterwards the lab is put back as it was (DNS names the old host again, which takes mail
again; the spare host is removed), so the online suite that follows runs on the lab it
expects. Runs when `CHATMAIL_LAB` is set, like the other lab checks.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labmail import (
    KEY,
    WAIT,
    core_account,
    core_receives,
    deferred_for,
    delta_chat,
    dkim_key,
    forget_cached_names,
    imap,
    new_user,
    send,
    ssh,
    wait_for,
)
from test_lab_relays import LAB, cmdeploy, wheels  # noqa: F401 (a fixture)

from cmdeploy import lab
from cmdeploy.lab import hosts
from cmdeploy.migrate import RESUME_MAIL

MAIN_CF = "/etc/postfix/main.cf"
ACME_LOG = "journalctl -u chatmail-acme --no-pager -n 30"
# relay1 retries a deferred local delivery only after an hour: a message deferred before the
# move reaches Dovecot only when the migration flushes the queue
SLOW_RETRIES = (
    f"cp -p {MAIN_CF} {MAIN_CF}.lab && postconf -e minimal_backoff_time=1h "
    "maximal_backoff_time=1h queue_run_delay=1h && postfix reload"
)
SLOW_RETRIES_UNDONE = f"[ ! -e {MAIN_CF}.lab ] || mv {MAIN_CF}.lab {MAIN_CF}"

pytestmark = [
    pytest.mark.skipif(LAB is None, reason="needs a lab: cmdeploy lab up"),
    pytest.mark.timeout(1800),
]


@pytest.fixture
def moved_back() -> Iterator[lab.State]:
    """The lab as it was afterwards, whatever happened: relay1's zone and old host, no spare."""
    state = lab.State.load()
    relay = state.relays[0]
    zone = (lab.LAB / f"{relay.name}.zone").read_text()
    try:
        yield state
    finally:
        state = lab.State.load()
        lab.serve_zone(state, relay, zone)
        resume = f"{SLOW_RETRIES_UNDONE}; postfix reload; {RESUME_MAIL}"
        hosts.ssh(KEY, relay.ip, resume, timeout=300)
        for other in state.relays[1:]:
            hosts.ssh(
                KEY,
                other.ip,
                "unbound-control -c /etc/unbound/unbound.conf " "flush_zone test; postqueue -f",
            )
        lab.remove_spare(state)


@pytest.fixture
def deltachat(tmp_path: Path) -> Iterator[Any]:
    with delta_chat(tmp_path / "dc-accounts") as dc:
        yield dc


def test_a_relay_moves_to_a_new_host_and_its_users_carry_on(
    moved_back: lab.State,
    deltachat: Any,
    wheels: Path,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    state = moved_back
    old, peer = state.relays[0], state.relays[1]
    assert old.domain == "relay1.test" and peer.domain.startswith("_")
    alice, bob = new_user(old.ip, old.domain), new_user(old.ip, old.domain)
    carol = new_user(peer.ip, peer.domain)
    for ip, user in ((old.ip, alice), (old.ip, bob), (peer.ip, carol)):
        imap(ip, user).logout()
    token = f"migrate-{secrets.token_hex(6)}"
    conn = imap(old.ip, alice)
    typ, _ = conn.xatom("SETMETADATA", f'INBOX (/private/devicetoken "{token}")')
    conn.logout()
    assert typ == "OK"
    before = send(peer.ip, carol, alice)
    on_old = wait_for(old.ip, alice, before)
    # Delta Chat apps set up against the old host (erin) and relay2 (dave), chatting.
    erin = core_account(deltachat, new_user(old.ip, old.domain), old.domain)
    dave = core_account(deltachat, new_user(peer.ip, peer.domain), peer.domain)
    erin.create_chat(dave).send_text("before the move")
    core_receives(dave, "before the move")
    dave.create_chat(erin).send_text("a reply before the move")
    core_receives(erin, "a reply before the move")
    # Mail relay1 accepted but has not yet handed to Dovecot: the move must deliver it first.
    ssh(old.ip, f"{SLOW_RETRIES} && systemctl stop dovecot")
    accepted = send(peer.ip, carol, alice)
    deadline = time.monotonic() + WAIT
    while not deferred_for(old.ip, alice):
        assert time.monotonic() < deadline, "relay1 did not keep the message for later"
        if deferred_for(peer.ip, alice):
            ssh(peer.ip, "postqueue -f")
        time.sleep(1)
    ssh(old.ip, "systemctl start dovecot")
    old_key = dkim_key(old.ip)
    made = cmdeploy(
        "invite", "--uses", "3", "--ssh-host", old.ip, "--config", old.config, cwd=tmp_path
    )
    assert made.returncode == 0, made.stdout + made.stderr
    invites = cmdeploy("invite", "--list", "--ssh-host", old.ip, "--config", old.config).stdout
    assert "No invites" not in invites

    new_ip = lab.boot_spare(state, old.debian)  # a move to a server of the same release
    config = old.config
    result = cmdeploy(
        "migrate", "--to", new_ip, "--ssh-host", old.ip, "--config", config, "--yes",
        wheels=wheels, timeout=1500, cwd=tmp_path,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert f"{old.domain}. A: {old.ip} -> {new_ip}" in out or f"A: {old.ip} -> {new_ip}" in out
    # While DNS still names the old host, which takes no mail: relay2 keeps its mail queued.
    during = send(peer.ip, carol, alice)
    deadline = time.monotonic() + WAIT
    while not deferred_for(peer.ip, alice):
        assert time.monotonic() < deadline, "relay2 did not keep the message for later"
        time.sleep(1)

    # The DNS change the migration printed, then `cmdeploy run` again for the certificate.
    zone = lab.LAB / "migrated.zone"
    result = cmdeploy(
        "dns", "--ssh-host", new_ip, "--zonefile", str(zone), "--config", config, wheels=wheels
    )
    assert zone.exists(), (result.stdout + result.stderr)[-2000:]
    lab.serve_zone(state, old, zone.read_text())
    forget_cached_names(peer.ip)
    result = cmdeploy("run", "--ssh-host", new_ip, "--config", config, wheels=wheels)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    # peers verify the certificate: on the placeholder, relay2 would keep its mail queued
    assert "certificate is pending" not in out, out[-4000:] + ssh(new_ip, ACME_LOG)

    # Same passwords, same mail with the same UIDs: a client carries on without a new setup.
    # relay2 holds it, or the new host if it arrived while the run above restarted services
    try:
        on_new = wait_for(new_ip, alice, during, flush=(peer.ip, new_ip))
    except AssertionError as e:
        raise AssertionError(f"{e}\n{what_the_peer_sees(peer.ip, new_ip, old.domain)}") from None
    assert on_new["uidvalidity"] == on_old["uidvalidity"]
    assert on_new["messages"][before] == on_old["messages"][before]
    assert accepted in on_new["messages"], "mail relay1 had accepted stayed behind"
    assert not deferred_for(old.ip, alice)
    imap(new_ip, bob).logout()
    # The same DKIM key: relay2 verifies mail from the new host against the old DNS record.
    assert dkim_key(new_ip) == old_key
    reply = send(new_ip, alice, carol)
    wait_for(peer.ip, carol, reply)
    # The push token came along: mail for alice on the new host notifies her device.
    tokens = Path(LAB["push_tokens"])
    seen = tokens.read_text() if tokens.exists() else ""
    send(peer.ip, carol, alice)
    deadline = time.monotonic() + WAIT
    while (tokens.read_text() if tokens.exists() else "")[len(seen) :].count(token) == 0:
        assert time.monotonic() < deadline, "no push for the migrated token"
        time.sleep(1)
    # The apps carry on without a new setup: erin's reconnects to the name, now the new host
    # (`maybe_network` is what an app calls when the network changes).
    deltachat.rpc.maybe_network()
    dave.create_chat(erin).send_text("after the move")
    assert core_receives(erin, "after the move").show_padlock
    erin.create_chat(dave).send_text("from the new host")
    assert core_receives(dave, "from the new host").show_padlock
    # The invites came along.
    listed = cmdeploy("invite", "--list", "--ssh-host", new_ip, "--config", config).stdout
    assert listed == invites
    # No new accounts on the old host any more; it is left as the fallback.
    assert "chatmail-nocreate" in ssh(old.ip, "ls /etc")
    status = json.loads(cmdeploy("status", "--ssh-host", new_ip, "--config", config,
                                 "--json").stdout or "{}")  # fmt: skip
    assert status, "cmdeploy status --json printed nothing for the new host"


def test_the_lab_is_back_as_it_was() -> None:
    """relay1's old host takes mail again and DNS names it (for the online suite)."""
    state = lab.State.load()
    relay = state.relays[0]
    assert lab.SPARE not in state.pids
    zone = (lab.LAB / f"{relay.name}.zone").read_text()
    assert re.search(rf"IN A\s+{re.escape(relay.ip)}\n", zone), zone
    states = ssh(relay.ip, "systemctl is-active postfix dovecot filtermail filtermail-incoming")
    assert states.split() == ["active"] * 4
    assert "nocreate" not in ssh(relay.ip, "ls /etc")
    # Postfix with its own configuration again (the check's slower retries undone)
    assert "1h" not in ssh(relay.ip, "postconf -h minimal_backoff_time")
    assert os.path.exists(lab.LAB / "state.json")


def what_the_peer_sees(peer: str, new: str, domain: str) -> str:
    """Why the peer may still keep its mail: the name it resolves, the certificate it is
    shown on port 25 and its verdict, its SMTP client's last lines, and the new host's ACME
    log."""
    shown = (
        f"openssl s_client -starttls smtp -connect {new}:25 -servername {domain} "
        "-CAfile /etc/ssl/certs/ca-certificates.crt </dev/null 2>&1 "
        "| grep -E 'subject=|issuer=|Verify return|Reused|New,' | head -5"
    )
    return "\n".join([
        f"the peer resolves {domain} to: " + ssh(peer, f"getent hosts {domain} || true"),
        "the peer is shown on port 25:\n" + ssh(peer, shown),
        "the peer's SMTP client:\n" + ssh(peer, "journalctl -t postfix/smtp -n 12 --no-pager"),
        "the new host's certificate: " + ssh(
            new, "openssl x509 -noout -subject -issuer -in /etc/chatmail/tls/fullchain.pem"
        ),
        "the new host's Postfix: " + ssh(new, "ps -o pid,lstart,cmd -C smtpd,master | head -8"),
        ssh(new, ACME_LOG),
    ])  # fmt: skip
