"""`cmdeploy bench --faults`: no message lost when a service dies mid-load (issue 13).

Each fault is one phase with its own messages: a bounded load runs through relay1 in three
streams (relay1 → relay1, relay1 → relay2 over HTTPS and DKIM, relay2 → relay1 through
relay1's `/mxdeliv`), and once a third of it is accepted the fault hits relay1. The client
behaves as Delta Chat does: a message answered with 4xx, or with no answer at all, is sent
again (same Message-ID) until the relay says 250; a 5xx is final.

Then the maildirs are read. For every message:

- accepted: the relay said 250 to one of its attempts;
- delivered: its Message-ID is in the recipient's maildir at least once;
- duplicated: more than once, each with its cause (`duplicate_cause`): the client's own
  resends, or a relay's second hand-over as that relay's journal counted it (`HandOvers`);
- lost: accepted but not delivered — the number that must be 0. It is counted once the
  relays' queues are empty after the last phase, since mail deferred by a fault waits there
  for its retry; what arrived only then is shown as late.

Messages the relay never accepted within the phase's deadline are counted apart ("given
up"): the client still holds them, nothing the relay promised is missing.

This module is the pure part: the faults, the ledger of attempts, the verdict. The I/O is in
`runner.Bench.fault_run` and `drivers.resend_until_accepted`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# SIGKILL to the unit's main process, so that nothing gets to clean up: what is on disk is
# all there is. By pid rather than `systemctl kill`, which fails in the lab's nspawn hosts
# (their systemd cannot signal a control group) and would leave the service running.
KILL_MAIN = (
    'pid=$(systemctl show -p MainPID --value {unit}) && [ "$pid" -gt 0 ] && kill -KILL "$pid"'
)
KILL_POSTFIX_MASTER = "kill -KILL $(head -1 /var/spool/postfix/pid/master.pid)"
REBOOT = "reboot"  # the lab boots the host again (`hosts.BenchHost.reboot`)
# The mailboxes' filesystem filled to the last byte and held full for `DISK_FULL_HOLD`
# seconds (`runner.Bench.fill_disk`): meanwhile existing users must still log in and read
# their mail, and new accounts must be refused.
DISK_FULL = "disk-full"
DISK_FULL_HOLD = 60.0


@dataclass(frozen=True)
class Fault:
    name: str
    command: str  # run on relay1 as root, or REBOOT
    unit: str | None = None  # whose restarts prove the kill happened (space-separated units)


def _kill(name: str, unit: str) -> Fault:
    return Fault(name, KILL_MAIN.format(unit=unit), unit)


FAULTS = (
    _kill("filtermail", "filtermail.service"),
    _kill("filtermail-incoming", "filtermail-incoming.service"),
    _kill("filtermail-transport", "filtermail-transport.service"),
    _kill("doveauth", "doveauth.service"),
    _kill("chatmail-metadata", "chatmail-metadata.service"),
    _kill("dovecot", "dovecot.service"),
    # the unit that runs the master: Debian 12's template instance, Debian 13's main unit
    Fault("postfix-master", KILL_POSTFIX_MASTER, "postfix@-.service postfix.service"),
    _kill("opendkim", "opendkim.service"),
    Fault("disk-full", DISK_FULL),
    Fault("reboot", REBOOT),
)


def fault_named(name: str) -> Fault:
    for fault in FAULTS:
        if fault.name == name:
            return fault
    raise ValueError(f"no fault named {name!r}; known: {', '.join(f.name for f in FAULTS)}")


# --- the ledger: what the client saw ---------------------------------------------------------


@dataclass
class Attempt:
    """One try of one message: `reply` is the SMTP code, or 0 when no reply came.
    `after_data`: the message was written out (a lost reply may hide a 250)."""

    reply: int
    after_data: bool


@dataclass
class Letter:
    msgid: str
    rcpt: str
    stream: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return any(a.reply == 250 for a in self.attempts)

    @property
    def refused(self) -> bool:
        return any(500 <= a.reply < 600 for a in self.attempts)

    @property
    def unanswered_after_data(self) -> int:
        """Attempts whose end of DATA got no reply: the relay may have taken them."""
        return sum(1 for a in self.attempts if a.after_data and a.reply == 0)

    @property
    def deferred_after_data(self) -> int:
        """Attempts whose end of DATA got a 4xx: a filter that dies after handing the message
        on makes Postfix answer 4xx for a message that is already queued."""
        return sum(1 for a in self.attempts if a.after_data and 400 <= a.reply < 500)


LOST_REPLY = "resent after a lost reply to DATA"
DEFERRED_BUT_QUEUED = "resent after a 4xx to DATA for a message already queued"
# Dovecot saves a message, then answers Postfix's LMTP; a fault between the two leaves
# Postfix without the answer, so it delivers the message again after the restart.
REDELIVERED = "delivered again by Postfix: the fault fell between Dovecot's save and its reply"
# The hand-over between two relays lost its answer after the whole message was sent: the
# sender's transport lost the peer's reply, or the peer's filtermail lost its own Postfix's
# reply and answered 451. Either way the peer may hold it already, and the sender sends again.
RELAYED_AGAIN = "sent again by the sending relay: the hand-over's answer was lost after DATA"
UNEXPLAINED = "unexplained: delivered more often than the client could have caused"
# the faults that can cut an LMTP delivery between the save and the reply; for a reboot the
# relay's journal of the moment is gone with the host, so the fault itself is the evidence
INTERRUPTS_DELIVERY = frozenset({"dovecot", "reboot"})


class HandOvers:
    """How many copies each relay's journal says it may have handed over twice during a phase
    (`remote_helper.hand_overs`, per relay: "relay1", "relay2"). Each duplicate the client
    did not cause takes its extra copies from these counts, so no count explains more copies
    than it saw. A relay's journal is no evidence when lines were lost on the way to it, or
    when it logged fewer saves than the copies its maildirs hold (`stored`)."""

    def __init__(self, counts: Mapping[str, Mapping[str, int]], stored: Mapping[str, int]) -> None:
        self.left: dict[tuple[str, str], int] = {}
        for relay, c in counts.items():
            if c["dropped"] or c["saved"] < stored.get(relay, 0):
                continue
            self.left[relay, "redelivered"] = max(0, c["saved"] - c["acknowledged"])
            self.left[relay, "sent_unsure"] = c["sent_unsure"]
            self.left[relay, "queued_unsure"] = c["queued_unsure"]

    def take(self, relay: str, kind: str, copies: int) -> bool:
        if self.left.get((relay, kind), 0) < copies:
            return False
        self.left[relay, kind] -= copies
        return True


def duplicate_cause(
    letter: Letter, copies: int, fault: str = "", seen: HandOvers | None = None
) -> str:
    """Why a message is in the maildir `copies` (> 1) times. Client side: each extra copy
    needs an earlier attempt that ended after DATA without a 250, which the client then
    sent again. Relay side, from the relays' journals (`seen`): Postfix delivered it again
    after Dovecot's reply was cut (`REDELIVERED`), or the sending relay handed it to the peer
    again (`RELAYED_AGAIN`). All are at-least-once, as mail promises; Delta Chat drops a
    copy by its Message-ID."""
    extra = copies - 1
    if letter.unanswered_after_data >= extra:
        return LOST_REPLY
    by_client = letter.unanswered_after_data + letter.deferred_after_data
    if by_client >= extra:
        return DEFERRED_BUT_QUEUED
    sender, receiver = letter.stream.split(">")
    if seen is not None:
        extra -= by_client
        # first what is certain: a save Postfix never saw acknowledged is always delivered
        # again; a lost answer between relays only may have left a copy behind
        if seen.take(receiver, "redelivered", extra):
            return REDELIVERED
        if sender != receiver and (
            seen.take(sender, "sent_unsure", extra) or seen.take(receiver, "queued_unsure", extra)
        ):
            return RELAYED_AGAIN
    if fault in INTERRUPTS_DELIVERY:
        return REDELIVERED
    return UNEXPLAINED


def verdict(
    letters: list[Letter],
    copies: Mapping[str, int],
    fault: str = "",
    hand_overs: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, Any]:
    """Counts of one phase; `copies`: Message-ID -> files found in the recipients' maildirs;
    `hand_overs`: the relays' journal counts of the phase (`HandOvers`)."""
    accepted = [letter for letter in letters if letter.accepted]
    delivered = [letter for letter in accepted if copies.get(letter.msgid, 0) > 0]
    lost = [letter.msgid for letter in accepted if copies.get(letter.msgid, 0) == 0]
    seen = None
    if hand_overs is not None:
        stored: dict[str, int] = {}
        for letter in letters:
            receiver = letter.stream.split(">")[1]
            stored[receiver] = stored.get(receiver, 0) + copies.get(letter.msgid, 0)
        seen = HandOvers(hand_overs, stored)
    causes: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    duplicated = 0
    for letter in accepted:
        n = copies.get(letter.msgid, 0)
        if n > 1:
            duplicated += 1
            cause = duplicate_cause(letter, n, fault, seen)
            causes[cause] = causes.get(cause, 0) + 1
            if len(examples) < 10:
                attempts = [[a.reply, a.after_data] for a in letter.attempts]
                examples.append({"copies": n, "stream": letter.stream, "attempts": attempts})
    replies: dict[str, int] = {}
    for letter in letters:
        for attempt in letter.attempts:
            key = str(attempt.reply) if attempt.reply else "no reply"
            replies[key] = replies.get(key, 0) + 1
    # delivered without any 250 seen: the relay took it and the reply was lost, and the
    # client gave up before a retry got through
    unseen = sum(1 for letter in letters if not letter.accepted and copies.get(letter.msgid))
    return {
        "messages": len(letters),
        "accepted": len(accepted),
        "delivered": len(delivered),
        "duplicated": duplicated,
        "duplicate_causes": causes,
        "duplicate_examples": examples,
        "lost": len(lost),
        "lost_examples": lost[:5],
        "refused": sum(1 for letter in letters if letter.refused and not letter.accepted),
        "given_up": sum(1 for letter in letters if not letter.accepted and not letter.refused),
        "delivered_without_250": unseen,
        "resent": sum(1 for letter in letters if len(letter.attempts) > 1),
        "replies": replies,
    }


def disk_full_findings(hit: Mapping[str, Any]) -> list[str]:
    """What went wrong with the users' side of a full disk; empty when all was as promised.

    `hit` holds the probes: `before` (a new account created before the fill, the control
    that shows a probe can succeed at all) and `while_full` (each: bytes free, an existing
    user opening the app and reading, a new account's first login)."""
    findings = []
    if not hit.get("before", {}).get("created"):
        findings.append("the control creation before the fill failed: the probes prove nothing")
    probes = hit.get("while_full", [])
    if not probes:
        findings.append("no probe ran while the disk was full")
    for probe in probes:
        if probe["free"] != 0:
            findings.append(f"the disk was not full at a probe: {probe['free']} bytes free")
        if not probe["existing"]["ok"]:
            reason = probe["existing"].get("error", "no message read")
            findings.append(f"an existing user could not read their mail: {reason}")
        if probe["created"]:
            findings.append("a new account was created while the disk was full")
    return findings


def table(phases: list[dict[str, Any]]) -> str:
    """The fault run as a table: one line per fault."""
    head = (
        f"{'fault':<22}{'accepted':>9}{'delivered':>10}{'late':>6}{'dupl.':>6}{'lost':>6}"
        f"{'resent':>8}{'given up':>9}  accounts"
    )
    lines = [head]
    for phase in phases:
        v = phase["verdict"]
        # delivered only after the phase's end: waiting in a queue for a retry
        late = v["delivered"] - phase.get("at_phase_end", v)["delivered"]
        intact = phase.get("accounts", {})
        accounts = f"{intact.get('intact', '?')}/{intact.get('checked', '?')} intact"
        lines.append(
            f"{phase['fault']:<22}{v['accepted']:>9}{v['delivered']:>10}{late:>6}"
            f"{v['duplicated']:>6}{v['lost']:>6}{v['resent']:>8}{v['given_up']:>9}  {accounts}"
        )
        for cause, n in v["duplicate_causes"].items():
            lines.append(f"{'':<22}duplicates: {n} {cause}")
        if phase["fault"] == DISK_FULL:
            findings = disk_full_findings(phase.get("hit", {}))
            for finding in findings or ["users read their mail, new accounts were refused"]:
                lines.append(f"{'':<22}disk full: {finding}")
    return "\n".join(lines)
