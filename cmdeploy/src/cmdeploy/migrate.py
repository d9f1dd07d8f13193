"""`cmdeploy migrate --to NEWHOST`: move a relay to another server (doc/backup.md).

The steps, in this order, each one a function of `Hosts` so that tests run them with fakes:

1. read both hosts' facts (both reachable over SSH; the old one's records for step 6);
2. deploy the new host (`cmdeploy run`, DNS not checked: it still names the old host);
3. stop the old relay taking mail: `/etc/chatmail-nocreate`, then Postfix (SMTP), Dovecot
   (logins, so no client changes mail after the backup) and filtermail-incoming (/mxdeliv).
   Peers get "connection refused" or a 502 and keep their mail queued for later, which
   reaches the new host once DNS names it (doc/transport.md);
4. back up the old relay into the archive file (kept: it is also the fallback);
5. restore it onto the new host;
6. print the DNS records whose data differs between the hosts: what the operator changes.

A failure after step 3 prints the command that lets the old relay take mail again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # dnspython loads only for the commands that use it
    from .dns import Record

MAIL_UNITS = "postfix dovecot filtermail-incoming"
NOCREATE = "/etc/chatmail-nocreate"
STOP_MAIL = f"touch {NOCREATE} && systemctl stop {MAIL_UNITS}"
RESUME_MAIL = f"systemctl start {MAIL_UNITS} && rm -f {NOCREATE}"


class MigrationError(Exception):
    """A step failed; one line."""


@dataclass
class Hosts:
    """What migrate does on a host; `cli` passes the real ones."""

    records: Callable[[str, datetime], list[Record]]  # the DNS records a host's facts make
    deploy: Callable[[str], None]  # `cmdeploy run` onto the host, without the DNS check
    run: Callable[[str, str], None]  # a shell command as root on the host
    backup: Callable[[str, Path], int]  # the host's archive into a file; its size
    restore: Callable[[str, Path], str]  # the archive onto the host; the relay's report


def dns_changes(old: list[Record], new: list[Record]) -> list[str]:
    """`name type: old -> new` for each record whose data differs between the hosts."""

    def by_key(records: list[Record]) -> dict[tuple[str, str], list[str]]:
        found: dict[tuple[str, str], list[str]] = {}
        for r in records:
            found.setdefault((r.name, r.type), []).append(r.value)
        return found

    before, after = by_key(old), by_key(new)
    lines = []
    for key in [*before, *(k for k in after if k not in before)]:
        was, now = before.get(key, []), after.get(key, [])
        if sorted(was) != sorted(now):
            name, rtype = key
            lines.append(
                f"{name} {rtype}: {' '.join(was) or '(none)'} -> {' '.join(now) or '(remove)'}"
            )
    return lines


@dataclass
class Migration:
    old: str
    new: str
    archive: Path
    hosts: Hosts
    out: TextIO
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def run(self) -> list[str]:
        """All steps; the DNS changes the operator must make. MigrationError on a failure."""
        say = self.say
        if self.archive.exists():  # found now, not once mail has stopped
            raise MigrationError(f"{self.archive} exists already: choose another --output")
        say(1, f"checking {self.old} and {self.new}")
        old_records = self.hosts.records(self.old, self.now)
        self.hosts.records(self.new, self.now)
        say(2, f"deploying {self.new}")
        self.hosts.deploy(self.new)
        try:
            # inside: a stop that failed half-way leaves some units stopped too
            say(3, f"stopping mail on {self.old} ({MAIL_UNITS}; no new accounts)")
            self.hosts.run(self.old, STOP_MAIL)
            say(4, f"backing up {self.old} into {self.archive}")
            size = self.hosts.backup(self.old, self.archive)
            self.out.write(f"  {size / 1e6:.1f} MB\n")
            say(5, f"restoring onto {self.new}")
            self.out.write(self.hosts.restore(self.new, self.archive))
            say(6, "comparing the DNS records of both hosts")
            changes = dns_changes(old_records, self.hosts.records(self.new, self.now))
        except BaseException as e:  # noqa: BLE001 (Ctrl-C too: say how the old relay resumes)
            what = str(e) or type(e).__name__
            raise MigrationError(
                f"{what}; {self.old} may take no mail now: `ssh root@{self.old} '{RESUME_MAIL}'` "
                "lets it again"
            ) from None
        return changes

    def say(self, step: int, what: str) -> None:
        self.out.write(f"migrate {step}/6: {what}\n")
        self.out.flush()


def advice(old: str, new: str, changes: list[str]) -> str:
    lines = ["", "Now change these DNS records:" if changes else "No DNS record differs."]
    lines += [f"  {line}" for line in changes]
    lines += [
        "",
        f"{old} takes no mail any more; peers keep theirs queued and deliver it to {new} once",
        f"DNS names it. After the old records' TTL has passed, `cmdeploy run --ssh-host {new}`",
        "again (with DNS pointing at it, an ACME certificate is issued), `cmdeploy dns`",
        f"checks the records, and {old} can be switched off.",
    ]
    return "\n".join(lines) + "\n"
