"""Facts read from a deployed relay over SSH, for `cmdeploy dns` and `cmdeploy run`'s summary
(`cmdeploy status` runs the relay's own health check instead: cmdeploy.health).

One `ssh root@<host> python3 -` per command: a small script (the relay has Debian's python3)
prints a JSON object, parsed here. `@local` runs the script on this machine instead.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

from .layout import Layout

SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]

FACTS_SCRIPT = r"""
import glob, json, subprocess

def run(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""

def addresses(family):
    found = []
    for line in run("ip", "-o", family, "addr", "show", "scope", "global").splitlines():
        fields = line.split()
        keyword = "inet6" if family == "-6" else "inet"
        if keyword in fields:
            found.append(fields[fields.index(keyword) + 1].split("/")[0])
    return found

def acme_account():
    for path in glob.glob("/etc/letsencrypt/accounts/*/directory/*/regr.json"):
        try:
            return json.load(open(path)).get("uri")
        except (OSError, ValueError):
            pass
    return None

def self_issued(cert):
    # whether the certificate names itself as issuer (self-signed, or an ACME placeholder)
    names = [run("openssl", "x509", "-noout", f"-{n}", "-in", cert).strip().partition("=")[2]
             for n in ("issuer", "subject")]
    return bool(names[0]) and names[0] == names[1]

units = UNITS
print(json.dumps({
    "ipv4": addresses("-4"),
    "ipv6": addresses("-6"),
    "dkim_public_pem": run("openssl", "rsa", "-in", DKIM_KEY, "-pubout"),
    "acme_account_uri": acme_account(),
    "active": {u: run("systemctl", "is-active", u).strip() for u in units},
    "cert_self_issued": self_issued(CERT),
}))
"""

UNITS = [
    "postfix",
    "dovecot",
    "nginx",
    "opendkim",
    "unbound",
    "coturn",
    "fcgiwrap.socket",
    "doveauth",
    "chatmail-lastlogin",
    "chatmail-metadata",
    "filtermail.socket",
    "filtermail",
    "filtermail-incoming",
    "filtermail-transport",
    "chatmail-postlog",
    "chatmail-metrics",
    "chatmail-expire.timer",
    "chatmail-health.timer",
]


class RemoteError(Exception):
    """The relay could not be reached or did not answer as expected."""


@dataclass(frozen=True)
class RelayState:
    ipv4: list[str]
    ipv6: list[str]
    dkim_public_pem: str
    acme_account_uri: str | None
    active: dict[str, str]
    cert_self_issued: bool = False


def expected_units(layout: Layout) -> list[str]:
    """The units that run on this relay: an IPv4 relay signs nothing, so has no OpenDKIM."""
    if layout.config.is_ipv4:
        return [unit for unit in UNITS if unit != "opendkim"]
    return list(UNITS)


def facts_script(layout: Layout) -> str:
    return (
        FACTS_SCRIPT.replace("UNITS", repr(expected_units(layout)))
        .replace("DKIM_KEY", repr(str(layout.dkim_key)))
        .replace("CERT", repr(str(layout.tls.cert)))
    )


def ssh_options() -> list[str]:
    """Batch-mode ssh, with the lab's key and known-hosts file when it sets them."""
    options = list(SSH_OPTIONS)
    if key := os.environ.get("CMDEPLOY_SSH_KEY"):
        options += ["-i", key]
    if known_hosts := os.environ.get("CMDEPLOY_SSH_KNOWN_HOSTS"):
        options += [
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "StrictHostKeyChecking=accept-new",
        ]
    return options


def command(host: str, script: str = "python3 -") -> list[str]:
    """`script` (a shell command line) as root on `host`, or here for `@local`."""
    if host == "@local":
        return ["sh", "-c", script]
    return ["ssh", *ssh_options(), f"root@{host}", script]


def parse_state(output: str) -> RelayState:
    try:
        data: dict[str, Any] = json.loads(output)
        return RelayState(**data)
    except (ValueError, TypeError) as e:
        raise RemoteError(f"unexpected answer from the relay ({type(e).__name__})") from None


def run_script(
    host: str, script: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`script` as root on `host`, its output captured; RemoteError if it does not end in time."""
    try:
        return subprocess.run(
            command(host, script),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{host} did not answer within {timeout:g} s") from None


def unreachable(host: str, failed: str, result: subprocess.CompletedProcess[str]) -> RemoteError:
    """The error for a failed `run_script`: what failed, and ssh's (or the script's) last line
    of stderr."""
    detail = result.stderr.strip().splitlines()[-1:] or ["no output"]
    return RemoteError(
        f"{failed}: {detail[0].rstrip('.')}. Check that "
        f"`ssh root@{host}` works without a password prompt."
    )


def read_state(layout: Layout, host: str, timeout: float = 120) -> RelayState:
    result = run_script(host, "python3 -", facts_script(layout), timeout)
    if result.returncode != 0:
        raise unreachable(host, f"cannot read the relay's state from {host}", result)
    return parse_state(result.stdout)
