"""The relay's health check (doc/health.md) on a deployed relay: `cmdeploy status --json`
reports a deferred queue made on purpose, and the daily unit fails when the certificate or DNS
is wrong, with the problem in the journal and no address there."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chatmail_online import (
    REPORT,
    Factory,
    Relay,
    send_encrypted,
    stopped,
    wait_until_deferred,
)
from test_online_8_registration import tool

from cmdeploy.online import ONLINE_ENV

pytestmark = pytest.mark.timeout(300)

HEALTH_UNIT = "chatmail-health.service"
EXPECTED = "/etc/chatmail/health.json"
EXPECTED_DNS = "/etc/chatmail/health-dns.json"


def cmdeploy_status(relay: Relay) -> tuple[int, dict[str, Any]]:
    """`cmdeploy status --json` from this machine, as an operator runs it; exit status, report."""
    target = json.loads(os.environ[ONLINE_ENV])
    (entry,) = [r for r in target["relays"] if r["domain"] == relay.domain]
    env = dict(os.environ)
    if key := target.get("ssh_key"):
        env["CMDEPLOY_SSH_KEY"] = key
        env["CMDEPLOY_SSH_KNOWN_HOSTS"] = str(Path(key).parent / "known_hosts")
    argv = [sys.executable, "-m", "cmdeploy.cli", "status", "--json"]
    argv += ["--config", entry["config"], "--ssh-host", relay.ip]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def run_unit(relay: Relay) -> tuple[str, str]:
    """Start the daily check now and wait for it (a oneshot); its Result and its journal lines
    of this run (the unit's runs are seconds apart at the least)."""
    since = relay.ssh("date '+%Y-%m-%d %H:%M:%S'").strip()
    relay.ssh(f"systemctl start {HEALTH_UNIT}", timeout=240, check=False)
    result = relay.ssh(f"systemctl show {HEALTH_UNIT} -p Result --value").strip()
    journal = relay.ssh(f"journalctl -u {HEALTH_UNIT} -o cat --no-pager --since '{since}'")
    return result, journal


@contextlib.contextmanager
def replaced(relay: Relay, path: str, content: str) -> Iterator[None]:
    """`path` on the relay holds `content` for a while; then the deployed file again."""
    relay.ssh(f"cp -p {path} {path}.online-test")
    try:
        relay.ssh(f"cat > {path} <<'EOF'\n{content}\nEOF")
        yield
    finally:
        relay.ssh(f"mv {path}.online-test {path}")


def test_a_freshly_deployed_relay_is_healthy(relay1: Relay) -> None:
    result, journal = run_unit(relay1)
    assert result == "success", journal


def test_status_names_the_registration_mode(relay1: Relay) -> None:
    tool(relay1, "registration", "closed")
    try:
        _, report = cmdeploy_status(relay1)
    finally:
        tool(relay1, "registration", "reset")
    assert report["registration"]["mode"] == "closed"
    assert report["registration"]["source"] == "cmdeploy registration"


def test_status_reports_the_deferred_queue_of_a_peer_refusing_for_now(
    relay1: Relay, relay2: Relay, make_account: Factory
) -> None:
    """relay2's incoming filter is down: its /mxdeliv answers 502 and its port 25 a 4xx, so
    relay1's Postfix defers the message; status groups it under relay2's domain."""
    sender, recipient = make_account(relay1), make_account(relay2)
    try:
        with stopped(relay2, "filtermail-incoming", then=relay1):
            send_encrypted(sender, recipient)
            wait_until_deferred(relay1)
            code, report = cmdeploy_status(relay1)
            result, journal = run_unit(relay1)
    finally:
        relay1.ssh("postsuper -d ALL deferred", check=False)
    groups = [g for g in report["queue"]["deferred"] if g["domain"] == relay2.address_domain]
    assert groups, report["queue"]
    assert sum(g["messages"] for g in groups) >= 1
    REPORT.append(f"status --json on relay1, deferred: {groups}")
    # the reason names the refusal, not the peer's IP nor any address
    for g in groups:
        assert "@" not in g["reason"] and relay2.ip not in g["reason"], g
    # deferred mail is a warning: it fails neither status nor the daily unit
    assert not [p for p in report["problems"] if p["section"] == "queue"]
    assert f"WARNING: queue: {relay2.address_domain}: " in journal
    assert sender.addr not in journal and recipient.addr not in journal and "@" not in journal
    assert code == (0 if not report["problems"] else 1)
    assert result == ("success" if code == 0 else "exit-code")


def test_the_daily_check_fails_its_unit_when_the_certificate_is_wrong(relay1: Relay) -> None:
    """A certificate one day from its end stands in for one whose renewal failed."""
    short = "/etc/chatmail/online-test-cert.pem"
    relay1.ssh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1"
        f" -subj /CN={relay1.domain} -keyout /dev/null -out {short} 2>/dev/null"
        f" && chmod 644 {short}"
    )
    expected = json.loads(relay1.ssh(f"cat {EXPECTED}"))
    try:
        with replaced(relay1, EXPECTED, json.dumps({**expected, "certificate": short})):
            result, journal = run_unit(relay1)
            code, report = cmdeploy_status(relay1)
    finally:
        relay1.ssh(f"rm -f {short}")
    assert result == "exit-code", journal
    assert "ERROR: certificate: expires in 0 days" in journal
    assert code == 1
    assert {"section": "certificate", "text": "expires in 0 days (renewal failing?)"} in report[
        "problems"
    ]


def test_the_daily_check_fails_its_unit_when_dns_is_wrong(relay1: Relay) -> None:
    """The relay's A record as the check expects it moved to another address: DNS now
    serves a wrong one."""
    if relay1.config.is_ipv4:
        pytest.skip("an IPv4 relay has no DNS records")
    expected = json.loads(relay1.ssh(f"cat {EXPECTED_DNS}"))
    records = [
        {**r, "value": "192.0.2.1"} if (r["type"], r["required"]) == ("A", True) else r
        for r in expected["records"]
    ]
    assert records != expected["records"], "the relay's DNS expectations hold no A record"
    with replaced(relay1, EXPECTED_DNS, json.dumps({"records": records})):
        result, journal = run_unit(relay1)
    assert result == "exit-code", journal
    assert f"ERROR: dns: required A {relay1.domain}. is wrong" in journal
