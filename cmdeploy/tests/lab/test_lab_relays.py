"""Checks of the deployed lab relays from this machine: redeploy, DNS, status.

They run when `CHATMAIL_LAB` holds `cmdeploy lab status --json` (scripts/test sets it after
`cmdeploy lab up`); otherwise they skip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

LAB = json.loads(os.environ["CHATMAIL_LAB"]) if os.environ.get("CHATMAIL_LAB") else None
pytestmark = pytest.mark.skipif(LAB is None, reason="needs a lab: cmdeploy lab up")


def cmdeploy(
    *args: str, netns: str | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    assert LAB is not None
    env = {
        **os.environ,
        "CMDEPLOY_SSH_KEY": LAB["ssh_key"],
        "CMDEPLOY_SSH_KNOWN_HOSTS": os.path.join(os.path.dirname(LAB["ssh_key"]), "known_hosts"),
    }
    argv = [sys.executable, "-m", "cmdeploy.cli", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def relays() -> list[dict[str, Any]]:
    return list(LAB["relays"]) if LAB else []


@pytest.mark.parametrize("relay", relays(), ids=[r["domain"] for r in relays()])
def test_second_deploy_changes_nothing(relay: dict[str, Any]) -> None:
    result = cmdeploy("run", "--config", relay["config"], "--ssh-host", relay["ip"])
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


@pytest.mark.parametrize("relay", relays(), ids=[r["domain"] for r in relays()])
def test_dns_records_are_in_place(relay: dict[str, Any]) -> None:
    assert LAB is not None
    result = cmdeploy(
        "dns", "--config", relay["config"], "--ssh-host", relay["ip"], netns=LAB["client_netns"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DNS records are in place" in result.stdout


@pytest.mark.parametrize("relay", relays(), ids=[r["domain"] for r in relays()])
def test_status_is_clean(relay: dict[str, Any]) -> None:
    result = cmdeploy("status", "--config", relay["config"], "--ssh-host", relay["ip"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not active" not in result.stdout
    ports = result.stdout.split("ports:", 1)[1].split("\n", 1)[0].split()
    assert {"25", "80", "143", "443", "465", "587", "993"} <= set(ports)
