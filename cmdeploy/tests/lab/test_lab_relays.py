"""Checks of the deployed lab relays from the operator's seat: redeploy, DNS, status.

`cmdeploy` runs in the lab's client namespace, whose resolver is the lab DNS, as an operator's
machine on the Internet (the wheels are built out here, since that namespace has no package
index). They run when `CHATMAIL_LAB` holds `cmdeploy lab status --json` (scripts/test sets it
after `cmdeploy lab up`); otherwise they skip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cmdeploy.run import build_wheels

LAB = json.loads(os.environ["CHATMAIL_LAB"]) if os.environ.get("CHATMAIL_LAB") else None
pytestmark = pytest.mark.skipif(LAB is None, reason="needs a lab: cmdeploy lab up")


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheels(tmp_path_factory.mktemp("wheels"))


def cmdeploy(
    *args: str, wheels: Path | None = None, timeout: float = 900, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`cmdeploy ARGS` from the operator's seat; `cwd`: where it writes what it writes (an
    archive, an invite's QR code), never the checkout."""
    assert LAB is not None
    env = {
        **os.environ,
        "CMDEPLOY_SSH_KEY": LAB["ssh_key"],
        "CMDEPLOY_SSH_KNOWN_HOSTS": os.path.join(os.path.dirname(LAB["ssh_key"]), "known_hosts"),
    }
    if wheels:
        env["CMDEPLOY_WHEELS"] = str(wheels)
    argv = ["ip", "netns", "exec", LAB["client_netns"], sys.executable, "-m", "cmdeploy.cli"]
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def relays() -> list[dict[str, Any]]:
    return list(LAB["relays"]) if LAB else []


@pytest.mark.parametrize("relay", relays(), ids=[r["domain"] for r in relays()])
def test_second_deploy_changes_nothing(relay: dict[str, Any], wheels: Path) -> None:
    result = cmdeploy("run", "--config", relay["config"], "--ssh-host", relay["ip"], wheels=wheels)
    assert_nothing_changed(result)


def assert_nothing_changed(result: subprocess.CompletedProcess[str]) -> None:
    """`cmdeploy run` succeeded and changed nothing: every operation of every pass unchanged,
    and its summary says so."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # one table per pyinfra pass (packages, then the rest): nothing changed in any
    totals = re.findall(r"Grand total\s+(\d+)\s+(\S+)\s+(\S+)\s+(\d+)", output)
    assert totals, output[-3000:]
    changed_lines = [
        line for line in output.splitlines() if re.search(r"\s1\s+1\s+-\s+-\s*$", line)
    ]
    for operations, changed, errors, unchanged in totals:
        assert (changed, errors) == ("-", "-"), "\n".join(changed_lines)
        assert operations == unchanged
    # the closing summary: certificate issued, DNS complete, so nothing is left to do
    summary = output.rsplit("Summary for", 1)[1]
    assert "nothing changed" in summary and "restarted: nothing" in summary, summary
    assert "next: nothing; the relay is ready." in summary, summary


def test_dns_pointing_elsewhere_stops_the_deploy(wheels: Path) -> None:
    """One relay's config aimed at another relay's host: refused before anything changes."""
    named = [r for r in relays() if r["domain"] != r["ip"]]  # an IPv4 relay has no DNS check
    if len(named) < 2:
        pytest.skip("needs two relays with DNS names")
    first, second = named[:2]
    result = cmdeploy("run", "--config", first["config"], "--ssh-host", second["ip"], wheels=wheels)
    assert result.returncode == 2
    assert f"{first['domain']} points at {first['ip']}, but {second['ip']} has" in result.stderr
    assert "--skip-dns-check" in result.stderr and "Traceback" not in result.stderr
    assert "Grand total" not in result.stdout  # pyinfra never started


@pytest.mark.parametrize("relay", relays(), ids=[r["domain"] for r in relays()])
def test_dns_records_are_in_place(relay: dict[str, Any]) -> None:
    assert LAB is not None
    result = cmdeploy("dns", "--config", relay["config"], "--ssh-host", relay["ip"])
    assert result.returncode == 0, result.stdout + result.stderr
    if relay["domain"] == relay["ip"]:
        assert "is an IPv4 relay: it has no DNS records" in result.stdout
    else:
        assert "DNS records are in place" in result.stdout


@pytest.mark.parametrize("relay", relays(), ids=[r["domain"] for r in relays()])
def test_status_is_clean(relay: dict[str, Any]) -> None:
    """The relay's health check finds no problem on a fresh deploy; the text and the JSON form
    say the same."""
    result = cmdeploy("status", "--config", relay["config"], "--ssh-host", relay["ip"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\nno problems\n" in result.stdout
    result = cmdeploy("status", "--json", "--config", relay["config"], "--ssh-host", relay["ip"])
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == [], report["problems"]
    assert report["units"]["active"] == report["units"]["expected"]
    assert {25, 80, 143, 443, 465, 587, 993} <= set(report["listeners"]["expected"])
    assert report["listeners"]["missing"] == []
    assert report["certificate"]["placeholder"] is False  # an ACME relay got its certificate
    # `cmdeploy run`'s closing step wrote the DNS expectations (none for an IPv4 relay)
    if relay["domain"] != relay["ip"]:
        assert report["dns"]["checked"] > 0 and report["dns"]["records"] == []
