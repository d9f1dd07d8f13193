"""Checks before `cmdeploy run` touches a host (relay-spec §9, port check).

One SSH command reads the host's OS release and its listening TCP sockets. The deploy goes
ahead only on Debian 12, and only if every port the relay needs is free or held by the
daemon that will serve it (a second run finds its own daemons there). Each problem is one
clear paragraph; nothing is changed on the host.
"""

from __future__ import annotations

import re
import subprocess

from .remote import ssh_options

# port -> the process names that may hold it (those the deploy itself starts)
EXPECTED_OWNERS: dict[int, frozenset[str]] = {
    # Postfix's master hands the listening socket to its smtpd children
    **dict.fromkeys((25, 465, 587, 10025, 10026), frozenset({"master", "smtpd"})),
    **dict.fromkeys((143, 993), frozenset({"dovecot", "imap-login"})),
    **dict.fromkeys((80, 443, 8443, 8465, 8993), frozenset({"nginx"})),
    53: frozenset({"unbound"}),
    3478: frozenset({"turnserver"}),
    **dict.fromkeys((10080, 10081, 10082), frozenset({"filtermail", "python3"})),
}

# Ports the relay's daemons bind on loopback only: a socket elsewhere does not collide.
LOOPBACK_ONLY = frozenset({53, 8443, 8465, 8993, 10025, 10026, 10080, 10081, 10082})

PROBE = "cat /etc/os-release; echo '--- sockets'; ss -Hltnp"


class PreflightError(Exception):
    """The host is not fit for the deploy; the message says why and what to do."""


def parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    return values


def parse_listeners(text: str) -> list[tuple[str, int, set[str]]]:
    """`ss -Hltnp` lines -> (address, port, names of the processes listening)."""
    listeners = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        address, _, port_text = fields[3].rpartition(":")
        if not port_text.isdigit():
            continue
        names = set(re.findall(r'\("([^"]+)"', line)) or {"unknown"}
        listeners.append((address.strip("[]").split("%")[0], int(port_text), names))
    return listeners


def collides(port: int, address: str) -> bool:
    """Whether a socket on `address` takes `port` from the relay's own listener."""
    if port in LOOPBACK_ONLY:  # the relay binds these on 127.0.0.1 only
        return address in ("127.0.0.1", "0.0.0.0", "*", "::", "::1")  # noqa: S104
    return True


def problems(
    os_release: dict[str, str], listeners: list[tuple[str, int, set[str]]], host: str
) -> list[str]:
    found = []
    if os_release.get("ID") != "debian" or os_release.get("VERSION_ID") != "12":
        name = os_release.get("PRETTY_NAME", "an unknown system")
        found.append(
            f"{host} runs {name}, but a chatmail relay is deployed onto Debian 12 (bookworm) "
            "only. Install Debian 12 on the server, then run `cmdeploy run` again."
        )
    for address, port, owners in sorted(listeners, key=lambda item: item[1]):
        allowed = EXPECTED_OWNERS.get(port)
        if allowed is not None and not owners <= allowed and collides(port, address):
            found.append(
                f"port {port} on {host} is held by {', '.join(sorted(owners))}, but the relay "
                f"needs it for {', '.join(sorted(allowed))}. Stop and disable that service "
                "(or move it to another port), then run `cmdeploy run` again."
            )
    return found


def probe_command(host: str) -> list[str]:
    if host == "@local":
        return ["sh", "-c", PROBE]
    return ["ssh", *ssh_options(), f"root@{host}", PROBE]


def check_target(host: str, timeout: float = 60) -> None:
    try:
        result = subprocess.run(
            probe_command(host), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise PreflightError(f"{host} did not answer over SSH within {timeout:g} s.") from None
    if result.returncode != 0 or "--- sockets" not in result.stdout:
        detail = (result.stderr.strip().splitlines() or ["no answer"])[-1].rstrip(".")
        raise PreflightError(
            f"cannot reach {host} over SSH as root: {detail}. Check that `ssh root@{host}` "
            "logs in with a key and without a password prompt, then run `cmdeploy run` again."
        )
    release, _, sockets = result.stdout.partition("--- sockets")
    found = problems(parse_os_release(release), parse_listeners(sockets), host)
    if found:
        raise PreflightError("\n\n".join(found))
