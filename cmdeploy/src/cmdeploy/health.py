"""What `chatmail-health` on the relay expects (doc/health.md), and asking it over SSH.

Two files, because two steps know their parts:

- `/etc/chatmail/health.json` (units, ports, certificate): from the config alone, written by
  the pyinfra deploy like every other configuration file;
- `/etc/chatmail/health-dns.json` (the zone's records): needs the DKIM key and the relay's
  addresses, which exist on the relay only after the deploy made them, so `cmdeploy run`'s
  closing step and `cmdeploy dns` write it after reading them back. An IPv4 relay has none.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Any

from chatmaild.healthcmd import EXPECTED, EXPECTED_DNS

from . import remote
from .dns import Record
from .layout import Layout
from .remote import RemoteError, expected_units

# The ports the world reaches (SMTP, HTTP(S), IMAP, submission, TURN); the loopback ones come
# from the config.
PUBLIC_PORTS = (25, 80, 143, 443, 465, 587, 993, 3478)
EXIT_PROBLEMS = 1  # chatmail-health's exit status when the report holds a problem


def expected_ports(layout: Layout) -> list[int]:
    c = layout.config
    loopback = (
        c.filtermail_smtp_port_incoming,
        c.filtermail_http_port_incoming,
        c.filtermail_lmtp_port_transport,
        c.postfix_reinject_port,
        c.postfix_reinject_port_incoming,
        c.postfix_reinject_port_smtp,
    )
    return sorted({*PUBLIC_PORTS, *loopback})


def expectations(layout: Layout) -> dict[str, str]:
    """{remote path: content} of the deploy's part."""
    expected = {
        "units": expected_units(layout),
        "ports": expected_ports(layout),
        "certificate": str(layout.tls.cert),
    }
    return {str(EXPECTED): json.dumps(expected, indent=2) + "\n"}


def dns_expectations(records: Sequence[Record]) -> str:
    return (
        json.dumps(
            {
                "records": [
                    {"name": r.name, "type": r.type, "value": r.value, "required": r.required}
                    for r in records
                ]
            },
            indent=2,
        )
        + "\n"
    )


def write_dns_expectations(host: str, records: Sequence[Record]) -> None:
    """Replace the relay's DNS expectations at once (the daily check may be reading them)."""
    path = shlex.quote(str(EXPECTED_DNS))
    script = (
        f"umask 022 && mkdir -p {shlex.quote(str(EXPECTED_DNS.parent))} && "
        f"cat > {path}.new && mv {path}.new {path}"
    )
    result = remote.run_script(host, script, dns_expectations(records), timeout=60)
    if result.returncode != 0:
        raise remote.unreachable(host, f"cannot write {EXPECTED_DNS} on {host}", result)


def read_health(layout: Layout, host: str, timeout: float = 180) -> dict[str, Any]:
    """`chatmail-health --json` on the relay: its report, problems or not."""
    script = f"{layout.bin('chatmail-health')} {layout.ini} --json"
    result = remote.run_script(host, script, timeout=timeout)
    if result.returncode == 127:  # the shell's "command not found"
        raise RemoteError(
            f"chatmail-health is not installed on {host}: deploy this version with `cmdeploy run`"
        )
    if result.returncode not in (0, EXIT_PROBLEMS):
        raise remote.unreachable(host, f"cannot read the relay's health from {host}", result)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = None
    if not isinstance(report, dict) or "ok" not in report:
        raise RemoteError(f"unexpected answer from chatmail-health on {host}")
    return report
