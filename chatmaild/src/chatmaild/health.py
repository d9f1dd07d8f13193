"""The relay's health, judged from readings (doc/health.md): pure, no I/O.

`chatmail-health` (chatmaild.healthcmd) takes the readings on the relay and hands them to the
checks here; each check returns a `Section`: what it found (for the report and `--json`), the
problems (which fail the check, and the daily unit) and the warnings (shown, never failing).
Every text here may reach the journal, so none holds an address or a client's IP: delay
reasons from Postfix's queue pass through `scrub_reason` first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import dnsmatch

# The certificate is renewed 30 days before it ends (certbot's default); at 14 days left the
# renewal has failed for two weeks, and the operator still has time to act.
CERT_MIN_DAYS = 14
DISK_PROBLEM_PERCENT = 90
DISK_WARNING_PERCENT = 80
# The expiry timer fires daily; two days without a run means at least one was missed.
EXPIRY_MAX_AGE = 2 * 86400
# chatmail-metadata gives a notification up after 5 h (chatmaild.pushqueue.GIVE_UP_AFTER);
# one that waits an hour longer is one that nothing is working on.
PUSH_MAX_AGE = 6 * 3600
REASON_MAX = 160  # characters of a delay reason kept in the report


@dataclass
class Section:
    data: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def human_age(seconds: float) -> str:
    """`45 s`, `12 min`, `5 h`, `3 d`: rounded down, enough to judge at a glance."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


# --- units and listeners ----------------------------------------------------------------------


def check_units(expected: Sequence[str], is_active_output: str) -> Section:
    """`systemctl is-active UNIT...` prints one state per unit, in the order asked."""
    states = is_active_output.split()
    found = {unit: (states[i] if i < len(states) else "unknown") for i, unit in enumerate(expected)}
    down = [unit for unit, state in found.items() if state != "active"]
    return Section(
        {"active": len(expected) - len(down), "expected": len(expected), "states": found},
        [f"{unit} is {found[unit]}" for unit in down],
    )


def listening_ports(ss_output: str) -> set[int]:
    """The local ports of `ss -Hltn` lines (`LISTEN 0 100 0.0.0.0:25 0.0.0.0:*`)."""
    ports = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and ":" in fields[3]:
            port = fields[3].rpartition(":")[2]
            if port.isdigit():
                ports.add(int(port))
    return ports


def check_listeners(expected: Iterable[int], ss_output: str | None) -> Section:
    if ss_output is None:
        return Section(problems=["`ss -Hltn` could not be run"])
    ports = listening_ports(ss_output)
    missing = sorted(set(expected) - ports)
    return Section(
        {"expected": sorted(expected), "missing": missing},
        [f"nothing listens on port {port}" for port in missing],
    )


# --- certificate ------------------------------------------------------------------------------


def check_certificate(
    path: str, not_after: float | None, now: float, placeholder: bool = False
) -> Section:
    """`not_after`: the certificate's end as unix time, None when it could not be read.
    `placeholder`: an ACME relay still serves the self-signed certificate of its first deploy."""
    if not_after is None:
        return Section({"path": path}, [f"{path} cannot be read as a certificate"])
    days = (not_after - now) / 86400
    section = Section({"path": path, "days_left": int(days), "placeholder": placeholder})
    if days < 0:
        section.problems.append(f"expired {int(-days)} days ago")
    elif days < CERT_MIN_DAYS:
        section.problems.append(f"expires in {int(days)} days (renewal failing?)")
    if placeholder:
        section.problems.append(
            "still the self-signed placeholder: no ACME certificate (journalctl -u chatmail-acme)"
        )
    return section


# --- DNS --------------------------------------------------------------------------------------


class LookupFailed(Exception):
    """The resolver gave no usable answer (timeout, SERVFAIL); the text says which."""


Lookup = Callable[[str, str], list[Any]]  # (name, type) -> rdata; [] when there is none


def check_dns(records: Sequence[Mapping[str, Any]] | None, lookup: Lookup) -> Section:
    """Each expected record (`name`, `type`, `value`, `required`) against what `lookup`
    answers: a required one missing or wrong is a problem, a recommended one a warning.
    None: no expectations were written yet."""
    if records is None:
        return Section(
            {"checked": 0},
            warnings=["no DNS expectations yet: `cmdeploy run` or `cmdeploy dns` writes them"],
        )
    section = Section({"checked": 0, "records": []})
    for record in records:
        name, rdtype, required = record["name"], record["type"], bool(record["required"])
        try:
            found = lookup(name, rdtype)
        except LookupFailed as e:
            # one line: a resolver that fails once fails for every record after it
            section.problems.append(f"the relay's resolver failed: {e}")
            break
        section.data["checked"] += 1
        verdict = dnsmatch.compare(rdtype, record["value"], found)
        if verdict is None:
            continue
        state, shown = verdict
        level = "required" if required else "recommended"
        section.data["records"].append(
            {"name": name, "type": rdtype, "required": required, "state": state, "found": shown}
        )
        text = f"{level} {rdtype} {name} is {state}" + (f" (has {shown})" if shown else "")
        (section.problems if required else section.warnings).append(text)
    return section


# --- Postfix's queue --------------------------------------------------------------------------

# Quoted local parts may hold spaces ("john smith"@example.org); the rest of an address has
# none (RFC 5321 §4.1.2).
_QUOTED_ADDRESS = re.compile(r'<?"(?:[^"\\]|\\.)*"@\S*')
_ADDRESS = re.compile(r"\S*@\S*")
_BRACKETED = re.compile(r"\[[^\]]*\]?")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])")
# two or more colons among hex digits: IPv6 in any spelling (::1, 2001:db8::5, ::ffff:1.2.3.4)
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}")
_SPACES = re.compile(r"\s+")


def scrub_reason(reason: str) -> str:
    """A delay reason without addresses, IP addresses or bracketed parts (where Postfix puts a
    peer's IP: `host mx.peer.example[192.0.2.5] said: ...`), shortened to `REASON_MAX`.

    Everything is removed before the text is cut, so that a cut never leaves half an address.
    """
    text = _QUOTED_ADDRESS.sub("<address>", reason)
    text = _ADDRESS.sub("<address>", text)
    text = _BRACKETED.sub("", text)
    # IPv6 first: it may end in an IPv4 address (::ffff:192.0.2.1)
    text = _IPV6.sub("<ip>", text)
    text = _IPV4.sub("<ip>", text)
    text = _SPACES.sub(" ", text).strip()
    if len(text) > REASON_MAX:
        text = text[: REASON_MAX - 1].rstrip() + "…"
    return text


def recipient_domain(address: str) -> str:
    """The part after the last `@`, lowercased: what the queue is grouped by."""
    domain = address.rpartition("@")[2].strip().lower()
    return domain or "(none)"


@dataclass
class Deferred:
    domain: str
    reason: str
    messages: int
    oldest: float  # arrival time (unix) of the oldest message in the group


class QueueUnreadable(ValueError):
    """`postqueue -j` printed a line that is not a message object."""


def group_queue(postqueue_json: str) -> tuple[dict[str, int], list[Deferred]]:
    """Messages per queue, and the deferred ones grouped by recipient domain and scrubbed
    reason, largest group first. `postqueue -j` prints one JSON object per message."""
    counts: dict[str, int] = {}
    groups: dict[tuple[str, str], Deferred] = {}
    for line in postqueue_json.splitlines():
        if not line.strip():
            continue
        try:
            message = json.loads(line)
            queue = str(message["queue_name"])
            arrival = float(message.get("arrival_time", 0))
            recipients = list(message.get("recipients", []))
        except (ValueError, TypeError, KeyError) as e:
            raise QueueUnreadable(type(e).__name__) from None
        counts[queue] = counts.get(queue, 0) + 1
        if queue != "deferred":
            continue
        # a message counts once per group, however many of its recipients share it
        keys = {
            (
                recipient_domain(str(r.get("address", ""))),
                scrub_reason(str(r.get("delay_reason", ""))) or "(no reason given)",
            )
            for r in recipients
            if isinstance(r, dict)
        }
        for key in keys:
            group = groups.setdefault(key, Deferred(key[0], key[1], 0, arrival))
            group.messages += 1
            group.oldest = min(group.oldest, arrival)
    ordered = sorted(groups.values(), key=lambda g: (-g.messages, g.oldest, g.domain))
    return counts, ordered


def check_queue(postqueue_json: str | None, now: float) -> Section:
    """Deferred mail is a warning, never a problem: a peer that is down is not this relay's
    fault, and Postfix returns the mail to its sender after 2 days (maximal_queue_lifetime)."""
    if postqueue_json is None:
        return Section(problems=["`postqueue -j` failed: is Postfix running?"])
    try:
        counts, deferred = group_queue(postqueue_json)
    except QueueUnreadable as e:
        return Section(problems=[f"`postqueue -j` printed something unreadable ({e})"])
    section = Section(
        {
            "messages": counts,
            "deferred": [
                {
                    "domain": g.domain,
                    "reason": g.reason,
                    "messages": g.messages,
                    "oldest_seconds": int(max(0.0, now - g.oldest)),
                }
                for g in deferred
            ],
        }
    )
    for g in deferred:
        section.warnings.append(
            f"{g.domain}: {g.reason}, {g.messages} message{'s' * (g.messages != 1)}, "
            f"oldest {human_age(now - g.oldest)}"
        )
    return section


# --- disk, expiry, push -----------------------------------------------------------------------


@dataclass(frozen=True)
class DiskUse:
    """The fields of `os.statvfs` that matter."""

    blocks: int  # f_blocks
    blocks_free: int  # f_bfree
    blocks_available: int  # f_bavail: free for unprivileged users
    files: int  # f_files; 0 on filesystems without an inode limit
    files_free: int  # f_ffree


def used_percent(used: int, total: int) -> int | None:
    return None if total <= 0 else round(100 * used / total)


def check_disk(path: str, use: DiskUse | None) -> Section:
    if use is None:
        return Section({"path": path}, [f"{path} cannot be examined"])
    used = use.blocks - use.blocks_free
    # as df counts: the blocks only root may use are not available to vmail
    blocks = used_percent(used, used + use.blocks_available)
    inodes = used_percent(use.files - use.files_free, use.files)
    section = Section({"path": path, "blocks_used_percent": blocks, "inodes_used_percent": inodes})
    for what, percent in (("space", blocks), ("inodes", inodes)):
        if percent is None:
            continue
        if percent >= DISK_PROBLEM_PERCENT:
            section.problems.append(f"{percent} % of the disk {what} is used")
        elif percent >= DISK_WARNING_PERCENT:
            section.warnings.append(f"{percent} % of the disk {what} is used")
    return section


def systemd_properties(output: str) -> dict[str, str]:
    """`systemctl show -p A -p B` output (`A=value` lines) as a dict."""
    props = {}
    for line in output.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            props[name.strip()] = value.strip()
    return props


def unix_time(value: str | None) -> float | None:
    """A timestamp of `systemctl show --timestamp=unix` (`@1733450000`); None when unset."""
    if value and value.startswith("@") and value[1:].isdigit() and int(value[1:]) > 0:
        return float(value[1:])
    return None


def check_expiry(service: Mapping[str, str], timer: Mapping[str, str], now: float) -> Section:
    """The last run of chatmail-expire: `service` holds its unit's `Result`, `timer` its timer's
    `LastTriggerUSec` (kept across reboots, Persistent=true) and `ActiveEnterTimestamp`."""
    result = service.get("Result", "")
    last = unix_time(timer.get("LastTriggerUSec"))
    since = unix_time(timer.get("ActiveEnterTimestamp"))
    section = Section(
        {"result": result or None, "last_run_seconds": None if last is None else int(now - last)}
    )
    if result and result != "success":
        section.problems.append(f"the last expiry run failed ({result})")
    if last is not None and now - last > EXPIRY_MAX_AGE:
        section.problems.append(f"the expiry has not run for {human_age(now - last)}")
    elif last is None and since is not None and now - since > EXPIRY_MAX_AGE:
        section.problems.append(f"the expiry timer has not fired in {human_age(now - since)}")
    return section


def check_push(waiting: int | None, oldest: float | None, now: float) -> Section:
    """`waiting`: notifications in the spool (None: unreadable); `oldest`: the mtime of the
    oldest, which is when it was queued (items are written once)."""
    if waiting is None:
        return Section(problems=["the push notification spool cannot be read"])
    age = None if oldest is None else now - oldest
    section = Section({"waiting": waiting, "oldest_seconds": None if age is None else int(age)})
    if age is not None and age > PUSH_MAX_AGE:
        section.problems.append(
            f"a push notification waits for {human_age(age)}: chatmail-metadata is stuck"
        )
    return section


def check_registration(mode: str, refuse_autorelay: bool, source: str, nocreate: bool) -> Section:
    """Who may create an account now (doc/accounts.md): the effective mode and where it comes
    from. The emergency switch is a warning (on purpose, but easy to forget); a state file
    that cannot be read is a problem (it closes registration, which nobody chose)."""
    section = Section(
        {
            "mode": mode,
            "refuse_autorelay": refuse_autorelay,
            "source": source,
            "nocreate": nocreate,
        }
    )
    if nocreate:
        section.warnings.append("/etc/chatmail-nocreate exists: no account is created")
    if source not in ("chatmail.ini", "cmdeploy registration"):
        section.problems.append(f"{source}: registration is closed until it is fixed")
    return section


# --- the report -------------------------------------------------------------------------------

SECTIONS = (
    "units",
    "listeners",
    "certificate",
    "dns",
    "queue",
    "disk",
    "expiry",
    "push",
    "registration",
)


def assemble(relay: Mapping[str, Any], sections: Mapping[str, Section]) -> dict[str, Any]:
    """The `--json` object: `relay` facts, each section's data, the problems and warnings."""
    report: dict[str, Any] = {"relay": dict(relay)}
    problems, warnings = [], []
    for name in SECTIONS:
        section = sections[name]
        report[name] = section.data
        problems += [{"section": name, "text": text} for text in section.problems]
        warnings += [{"section": name, "text": text} for text in section.warnings]
    report["problems"] = problems
    report["warnings"] = warnings
    report["ok"] = not problems
    return report


def render(report: Mapping[str, Any]) -> str:
    """The human form of `assemble`'s object, one screen."""
    relay = report["relay"]
    lines = [
        f"{relay.get('domain', '?')}   {relay.get('version') or 'version unknown'}",
        f"addresses:   {' '.join(relay.get('addresses', [])) or 'none'}",
    ]
    units = report["units"]
    if "expected" in units:
        lines.append(f"units:       {units['active']} of {units['expected']} active")
    listeners = report["listeners"]
    if "expected" in listeners:
        ports = " ".join(map(str, listeners["expected"]))
        missing = listeners["missing"]
        lines.append(
            f"listeners:   {ports}" + (f" (not listening: {missing})" if missing else ": all up")
        )
    cert = report["certificate"]
    if "days_left" in cert:
        lines.append(f"certificate: {cert['path']}, {cert['days_left']} days left")
    dns = report["dns"]
    off = len(dns.get("records", []))
    lines.append(
        f"dns:         {dns.get('checked', 0)} records checked"
        + (f", {off} missing or wrong" if off else "")
    )
    queue = report["queue"]
    if "messages" in queue:
        counts = ", ".join(f"{n} {q}" for q, n in sorted(queue["messages"].items()))
        lines.append(f"queue:       {counts or 'empty'}")
    disk = report["disk"]
    if "blocks_used_percent" in disk:
        inodes = disk["inodes_used_percent"]
        lines.append(
            f"disk:        {disk['blocks_used_percent']} % used"
            + ("" if inodes is None else f", inodes {inodes} % used")
            + f" ({disk['path']})"
        )
    expiry = report["expiry"]
    if expiry.get("last_run_seconds") is not None:
        lines.append(
            f"expiry:      last run {human_age(expiry['last_run_seconds'])} ago"
            + (f", {expiry['result']}" if expiry.get("result") else "")
        )
    else:
        lines.append("expiry:      no run yet")
    push = report["push"]
    if "waiting" in push:
        lines.append(f"push:        {push['waiting']} notifications waiting")
    registration = report.get("registration", {})  # a relay of an older version has none
    if "mode" in registration:
        autorelay = "refused" if registration["refuse_autorelay"] else "allowed"
        lines.append(
            f"registration: {registration['mode']} ({registration['source']}),"
            f" autorelay {autorelay}"
            + (", nocreate file present" if registration["nocreate"] else "")
        )
    for key, title in (("problems", "problems"), ("warnings", "warnings")):
        if report[key]:
            lines += ["", f"{title} ({len(report[key])}):"]
            lines += [f"  {item['section']}: {item['text']}" for item in report[key]]
    if report["ok"]:
        lines += ["", "no problems"]
    return "\n".join(lines) + "\n"
