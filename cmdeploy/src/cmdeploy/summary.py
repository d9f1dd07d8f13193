"""The closing summary of `cmdeploy run`: what changed, what restarted, what is left to do.

pyinfra ends each pass with a table of operations (`Operation  Hosts  Success  Error  No
Change`, where "Success" counts hosts it changed). Our operations have names that say what
they do (`Install <path>`, `Restart <unit>`), so the table is enough to tell the operator what
happened. What is left is read from the relay afterwards: a certificate still pending, DNS
records still missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

OPERATION = re.compile(
    r"^\s{4}(?P<name>\S.*?)\s{2,}(?P<hosts>\d+)\s+(?P<changed>\d+|-)\s+(?P<errors>\d+|-)"
    r"\s+(?P<unchanged>\d+|-)\s*$"
)


@dataclass
class Outcome:
    """What a deploy did, from pyinfra's tables (one per pass)."""

    changed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    operations: int = 0

    @property
    def restarted(self) -> list[str]:
        return [n.removeprefix("Restart ") for n in self.changed if n.startswith("Restart ")]

    @property
    def files(self) -> list[str]:
        return [n.removeprefix("Install ") for n in self.changed if n.startswith("Install /")]


def parse_outcome(lines: Iterable[str]) -> Outcome:
    outcome = Outcome()
    for line in lines:
        m = OPERATION.match(line.rstrip("\n"))
        if not m or m["name"] in ("Operation", "Grand total"):
            continue
        outcome.operations += 1
        if m["errors"] != "-":
            outcome.failed.append(m["name"])
        elif m["changed"] != "-":
            outcome.changed.append(m["name"])
    return outcome


@dataclass
class Left:
    """What the relay still lacks after a deploy."""

    certificate_pending: bool
    dns_missing: int | None  # required records missing or wrong; None: DNS not checked
    not_running: list[str]  # units that are not active


def summary(domain: str, outcome: Outcome, left: Left, system: str = "") -> str:
    """A few lines for the end of `cmdeploy run`; `system` names the host's release."""
    lines = [f"Summary for {domain} on {system}:" if system else f"Summary for {domain}:"]
    if not outcome.changed:
        lines.append(f"  nothing changed ({outcome.operations} operations checked)")
    else:
        other = len(outcome.changed) - len(outcome.files)
        lines.append(f"  changed: {len(outcome.files)} files, {other} other operations")
        for path in outcome.files[:12]:
            lines.append(f"    {path}")
        if len(outcome.files) > 12:
            lines.append(f"    ... and {len(outcome.files) - 12} more files")
    lines.append(f"  restarted: {', '.join(outcome.restarted) or 'nothing'}")
    todo = []
    if left.not_running:
        todo.append(
            f"not running: {', '.join(left.not_running)}; on the relay, `journalctl -u <unit>` "
            "says why."
        )
    if left.certificate_pending:
        todo.append(
            "the TLS certificate is pending: the relay runs on a self-signed placeholder "
            "until the ACME CA issues one. Check that DNS points at the relay and port 80 is "
            "reachable from the Internet; the relay retries daily, or run `cmdeploy run` again "
            "(on the relay: `journalctl -u chatmail-acme`)."
        )
    if left.dns_missing:
        todo.append(
            f"{left.dns_missing} required DNS record(s) missing or wrong: `cmdeploy dns` lists "
            "them (or writes a zone file with --zonefile)."
        )
    elif left.dns_missing is None:
        todo.append("check the DNS records with `cmdeploy dns`.")
    if todo:
        lines.append("  next:")
        lines += [f"    - {item}" for item in todo]
    else:
        lines.append("  next: nothing; the relay is ready.")
    return "\n".join(lines)
