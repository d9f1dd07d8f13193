"""The quota on a deployed relay.

A mailbox is filled over SSH with messages Dovecot counts (Maildir files whose names carry
their size, `,S=`, as Dovecot's own do), in a folder of their own so that IMAP clients never
fetch them. The files are sparse: they cost the relay no disk. Then real mail is sent:

- crossing 75 % of the quota makes room: the oldest mail (older than a day) is deleted down to
  70 %, and the new message is delivered;
- a mailbox full of recent mail (which is never pruned) refuses delivery, and the sender gets
  a bounce that says so.
"""

from __future__ import annotations

import shlex
import time

import pytest
from chatmail_online import (
    Credentials,
    Factory,
    Relay,
    encrypted_message,
    message_id,
    parse_mail,
    transact,
    wait_for_mail,
    wait_for_message_id,
)

pytestmark = pytest.mark.timeout(240)

FILLER_FOLDER = ".QuotaFiller"
DAY = 86400


def quota_bytes(relay: Relay) -> int:
    """The limit as Dovecot applies it: `quota_rule = *:storage=<MB>M`."""
    return max(1, relay.config.max_mailbox_size // 2**20) * 2**20


def fill(relay: Relay, creds: Credentials, total: int, files: int, mtime: float) -> None:
    """`files` sparse messages of `total` bytes altogether, dated `mtime`, then a recount."""
    folder = f"{relay.mailbox_dir(creds.addr)}/{FILLER_FOLDER}"
    size = total // files
    stamp = int(mtime)
    names = " ".join(f"{stamp + i}.M{i}P1.filler,S={size},W={size}:2,S" for i in range(files))
    script = f"""set -e
mkdir -p {shlex.quote(folder)}/cur {shlex.quote(folder)}/new {shlex.quote(folder)}/tmp
cd {shlex.quote(folder)}/cur
for name in {names}; do truncate -s {size} "$name"; touch -d @{stamp} "$name"; done
chown -R vmail:vmail {shlex.quote(folder)}
doveadm quota recalc -u {shlex.quote(creds.addr)}
"""
    relay.ssh(script)


def usage(relay: Relay, creds: Credentials) -> int:
    """Bytes the quota counts for the account now (doveadm's STORAGE value is in KiB)."""
    out = relay.ssh(f"doveadm -f tab quota get -u {shlex.quote(creds.addr)}")
    for line in out.splitlines()[1:]:
        fields = line.split("\t")
        if fields[1] == "STORAGE":
            return int(fields[2]) * 1024
    raise AssertionError(f"no STORAGE line in: {out}")


def fillers_left(relay: Relay, creds: Credentials) -> int:
    folder = f"{relay.mailbox_dir(creds.addr)}/{FILLER_FOLDER}/cur"
    return int(relay.ssh(f"ls {shlex.quote(folder)} | wc -l").strip())


def send(sender: Credentials, recipient: Credentials, relay: Relay) -> str:
    msgid = message_id(relay)
    with sender.smtp() as smtp:
        data = encrypted_message(sender.addr, recipient.addr, msgid)
        assert transact(smtp, sender.addr, [recipient.addr], data).code == 250
    return msgid


def test_crossing_75_percent_prunes_the_oldest_mail(relay1: Relay, make_account: Factory) -> None:
    sender, recipient = make_account(relay1), make_account(relay1)
    limit = quota_bytes(relay1)
    files = 20
    # just below the warning threshold, three days old
    fill(relay1, recipient, limit * 3 // 4 - 256, files, time.time() - 3 * DAY)
    assert usage(relay1, recipient) > limit * 0.74  # Dovecot counts the fillers

    msgid = send(sender, recipient, relay1)
    wait_for_message_id(recipient, msgid)  # delivered: old mail gave way, nothing bounced
    deadline = time.monotonic() + 30
    while fillers_left(relay1, recipient) == files and time.monotonic() < deadline:
        time.sleep(0.5)  # the quota-warning script runs beside the delivery
    left = fillers_left(relay1, recipient)
    assert left < files, "nothing was pruned after crossing 75 %"
    target = relay1.config.max_mailbox_size * 0.7
    assert usage(relay1, recipient) <= target
    # only as much as needed went: one more filler would have stayed under the target too
    assert usage(relay1, recipient) + (limit * 3 // 4) // files > target


def test_a_full_mailbox_of_recent_mail_bounces(relay1: Relay, make_account: Factory) -> None:
    sender, recipient = make_account(relay1), make_account(relay1)
    limit = quota_bytes(relay1)
    fill(relay1, recipient, limit, 10, time.time() - 3600)  # recent: never pruned
    msgid = send(sender, recipient, relay1)
    raw = wait_for_mail(sender, lambda raw: b"multipart/report" in raw and msgid.encode() in raw)
    report = parse_mail(raw)
    assert report.get_content_type() == "multipart/report"
    text = raw.decode("utf-8", "replace").lower()
    assert "quota" in text, text[:2000]
    assert fillers_left(relay1, recipient) == 10  # recent mail is never deleted
