"""`cmdeploy migrate --to NEWHOST`: move a relay to another server (doc/backup.md).

The steps, in this order, each one a function of `Hosts` so that tests run them with fakes:

1. read both hosts' facts (both reachable over SSH; the old one's records for step 6);
2. deploy the new host (`cmdeploy run`, DNS not checked: it still names the old host);
3. stop the old relay taking mail: `/etc/chatmail-nocreate`, and both encryption gates
   (filtermail for submissions, with its socket unit, filtermail-incoming for port 25 and
   /mxdeliv). Postfix's
   listeners stay open but answer every new message with a temporary error, as they do
   whenever a gate is down; nginx answers /mxdeliv with a 502. Clients and peers keep their
   mail for later, which reaches the new host once DNS names it (doc/transport.md).
   Postfix itself runs on, unchanged: it delivers what it already accepted for the relay's
   own users, which the backup then carries; then Dovecot stops (logins, so no client
   changes mail after the backup). Mail queued for other relays stays on the old host,
   whose Postfix goes on delivering it;
4. back up the old relay into the archive file (kept: it is also the fallback);
5. restore it onto the new host;
6. print the DNS records whose data differs between the hosts: what the operator changes.

A failure after step 3 prints the command that lets the old relay take mail again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # dnspython loads only for the commands that use it
    from .dns import Record

NOCREATE = "/etc/chatmail-nocreate"
# Every message enters Postfix's queue through one of these (doc/contract.md §1.4): with both
# stopped, Postfix accepts nothing new and needs no change of its own configuration. The
# outgoing gate's socket unit stops with it: a submission would start it again through its
# socket (doc/milter.md §3).
GATES = "filtermail.socket filtermail.service filtermail-incoming.service"
STOP_TAKING_MAIL = f"touch {NOCREATE} && systemctl stop {GATES} && postqueue -f"
UNREADABLE = "queue unreadable"
QUEUE = f"timeout 10 postqueue -j || echo '{UNREADABLE}'"
STOP_LOGINS = "systemctl stop dovecot"
RESUME_MAIL = f"systemctl start dovecot {GATES} && rm -f {NOCREATE}"
# Postfix hands a message to Dovecot in well under a second; a message still queued for a
# local user after this long waits for a reason (Dovecot refuses it) that waiting won't fix.
DRAIN_TIMEOUT = 120.0
DRAIN_POLL = 2.0


class MigrationError(Exception):
    """A step failed; one line."""


@dataclass
class Hosts:
    """What migrate does on a host; `cli` passes the real ones."""

    records: Callable[[str, datetime], list[Record]]  # the DNS records a host's facts make
    deploy: Callable[[str], None]  # `cmdeploy run` onto the host, without the DNS check
    run: Callable[[str, str], str]  # a shell command as root on the host; its output
    backup: Callable[[str, Path], int]  # the host's archive into a file; its size
    restore: Callable[[str, Path], str]  # the archive onto the host; the relay's report


def queued_for(postqueue_json: str, domain: str) -> int | None:
    """How many messages in Postfix's queue (`postqueue -j`, one JSON object a line) have a
    recipient in `domain`, the relay's own: mail it accepted and has not handed to Dovecot.
    A held message counts too: its recipient gets it only if the operator releases it.
    None when the queue could not be read (`QUEUE` printed `UNREADABLE`)."""
    if UNREADABLE in postqueue_json:
        return None
    count = 0
    suffix = "@" + domain.lower()
    for line in postqueue_json.splitlines():
        try:
            entry = json.loads(line)
            recipients = [str(r.get("address", "")) for r in entry.get("recipients", [])]
        except (ValueError, AttributeError, TypeError):
            continue  # not Postfix's output: nothing to count
        if any(r.lower().endswith(suffix) for r in recipients):
            count += 1
    return count


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
    domain: str  # the relay's address domain: mail for it is delivered before the backup
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

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
            say(3, f"stopping mail on {self.old} (SMTP, /mxdeliv, logins; no new accounts)")
            self.hosts.run(self.old, STOP_TAKING_MAIL)
            left = self.drain()
            if left is None:
                self.out.write(f"  {self.old}'s queue could not be read: `postqueue -p` there\n")
            elif left:
                self.out.write(
                    f"  {left} message(s) for the relay's users stay in {self.old}'s queue"
                    f" (`postqueue -p` there)\n"
                )
            self.hosts.run(self.old, STOP_LOGINS)
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

    def drain(self) -> int | None:
        """Wait until Postfix delivered what it accepted for the relay's users (the gates are
        stopped, so nothing new comes); how many are left after `DRAIN_TIMEOUT`, None if the
        queue could not be read at all."""
        deadline = self.clock() + DRAIN_TIMEOUT
        while True:
            left = queued_for(self.hosts.run(self.old, QUEUE), self.domain)
            if left == 0 or self.clock() >= deadline:
                return left
            self.sleep(DRAIN_POLL)

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
