"""CPU share per process class on a benchmarked host (issue 7, "Profile").

Two samples of `remote_helper.py cpu`, before and after a load, give CPU seconds per class.
The primary source is each systemd unit's cgroup v2 `cpu.stat`: it also counts the processes
that were born and died in between (Postfix's smtpd and cleanup, Dovecot's lmtp), which a
sample of /proc alone misses. Where a host has no cgroup v2 tree of its own, the per-process
times are used instead, with each parent's reaped-children time (cutime, cstime) so that
short-lived children are still counted in their master's class. The lab's hosts are such
hosts: booted where no systemd runs, they share one cgroup tree, and relay1's `postfix`
unit would also count relay2's and the bare host's Postfix.

Pure functions; the classes are those the issue names, plus the dict services of chatmaild
(doveauth decides how fast accounts are created) and "other".
"""

from __future__ import annotations

from typing import Any

CLASSES = (
    "postfix",
    "filtermail",
    "dovecot",
    "dict services",
    "opendkim",
    "nginx",
    "other",
    "ssh",
)
# sshd runs the bench's own samples (and whatever else logs in): never "the limit"
NOT_A_LIMIT = ("other", "ssh")
# the processes that hold an IMAP session; auth and lmtp come and go with other loads
IMAP_SESSION_PROCESSES = ("imap", "imap-hibernate", "imap-login")

_DOVECOT_PROCESSES = {
    "dovecot",
    "imap",
    "imap-login",
    "imap-hibernate",
    "lmtp",
    "auth",
    "anvil",
    "log",
    "config",
    "stats",
    "dict",
    "doveadm",
    "quota-warning",
    "script",
}
_POSTFIX_PROCESSES = {
    "master",
    "smtpd",
    "smtp",
    "cleanup",
    "qmgr",
    "pickup",
    "trivial-rewrite",
    "tlsmgr",
    "lmtp-postfix",
    "bounce",
    "showq",
    "proxymap",
    "verify",
    "postscreen",
    "anvil-postfix",
    "scache",
    "postdrop",
    "sendmail",
}
_DICT_SERVICES = ("doveauth", "lastlogin", "chatmail-metadata", "metadata")


def unit_class(unit: str) -> str:
    """The class of a systemd unit or slice name (`system-postfix.slice`, `dovecot.service`)."""
    name = unit.lower()
    for needle, cls in (
        ("postfix", "postfix"),
        ("filtermail", "filtermail"),
        ("dovecot", "dovecot"),
        ("opendkim", "opendkim"),
        ("nginx", "nginx"),
    ):
        if needle in name:
            return cls
    if any(service in name for service in _DICT_SERVICES):
        return "dict services"
    if name.startswith("ssh."):
        return "ssh"
    return "other"


def process_class(name: str) -> str:
    """The class of a process name (comm, or the script name of a Python service).

    Postfix and Dovecot both have processes called `lmtp` and `anvil`; without cgroups they go
    to Dovecot, which is where the relay's LMTP delivery happens.
    """
    if "filtermail" in name:
        return "filtermail"
    if any(service in name for service in _DICT_SERVICES):
        return "dict services"
    if name in _DOVECOT_PROCESSES or name.startswith("dovecot"):
        return "dovecot"
    if name in _POSTFIX_PROCESSES:
        return "postfix"
    if name.startswith("opendkim"):
        return "opendkim"
    if name.startswith("nginx"):
        return "nginx"
    if name.startswith("sshd") or name == "-c":  # "-c": the bench's helper (python3 -c)
        return "ssh"
    return "other"


def _per_class(seconds: dict[str, float], classify: Any) -> dict[str, float]:
    totals = dict.fromkeys(CLASSES, 0.0)
    for name, value in seconds.items():
        totals[classify(name)] += value
    return totals


def cpu_by_class(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds and share per class between two samples, and how the host was busy.

    `share` is each class's part of the CPU time the host's services used; `cores` is CPU
    seconds per wall second (2.0 = both cores of this machine busy with that class).
    """
    wall = max(1e-9, after["clock"] - before["clock"])
    use_units = bool(before.get("units")) and bool(after.get("units"))
    key, classify = ("units", unit_class) if use_units else ("processes", process_class)
    start = _per_class(before[key], classify)
    end = _per_class(after[key], classify)
    # a process that ended loses its time from the per-process view; never negative
    used = {cls: max(0.0, end[cls] - start[cls]) for cls in CLASSES}
    total = sum(used.values())
    return {
        "source": "cgroup" if use_units else "proc",
        "wall_seconds": wall,
        "cpu_seconds": used,
        "share": {cls: (used[cls] / total if total else 0.0) for cls in CLASSES},
        "cores": {cls: used[cls] / wall for cls in CLASSES},
        # the machine as a whole (all hosts and the load generator share its cores)
        "machine_busy_cores": max(0.0, after["busy"] - before["busy"]) / wall,
        # what "other" and the rest consist of: the busiest units or processes
        "top": _top_consumers(before[key], after[key]),
    }


def _top_consumers(
    before: dict[str, float], after: dict[str, float], n: int = 8
) -> dict[str, float]:
    used = {k: v - before.get(k, 0.0) for k, v in after.items()}
    ranked = sorted(((v, k) for k, v in used.items() if v > 0.005), reverse=True)[:n]
    return {k: round(v, 3) for v, k in ranked}


def idle_memory(before: dict[str, Any], after: dict[str, Any], connections: int) -> dict[str, Any]:
    """Relay memory per idle connection from two `remote_helper.py memory` samples.

    The headline is the PSS growth of Dovecot's IMAP session processes (imap, imap-login,
    imap-hibernate): what the connections themselves hold. Dovecot as a whole and the
    container's working set (which includes kernel socket buffers) are kept beside it.
    """

    def imap_kb(sample: dict[str, Any]) -> int:
        by_process = sample.get("dovecot_pss_kb_by_process") or {}
        return sum(by_process.get(p, 0) for p in IMAP_SESSION_PROCESSES)

    def per(delta: float | None) -> float | None:
        return None if delta is None or not connections else delta / connections

    container = None
    if after.get("container_bytes") is not None and before.get("container_bytes") is not None:
        container = (after["container_bytes"] - before["container_bytes"]) / 1024
    return {
        "kb_per_connection": per(imap_kb(after) - imap_kb(before)),
        "imap_pss_kb_before": imap_kb(before),
        "imap_pss_kb_after": imap_kb(after),
        "dovecot_kb_per_connection": per(after["dovecot_pss_kb"] - before["dovecot_pss_kb"]),
        "container_kb_per_connection": per(container),
        "dovecot_processes": after.get("dovecot_processes", {}),
        # a hibernated session has no imap process of its own any more
        "imap_processes": (after.get("dovecot_processes") or {}).get("imap", 0),
        "hibernated": max(0, connections - (after.get("dovecot_processes") or {}).get("imap", 0)),
    }


def top_class(profile: dict[str, Any] | None, exclude: tuple[str, ...] = NOT_A_LIMIT) -> str | None:
    """The class that used the most CPU: the one that limits a CPU-bound load."""
    if not profile:
        return None
    used: dict[str, float] = {c: s for c, s in profile["cpu_seconds"].items() if c not in exclude}
    if not used or max(used.values()) <= 0:
        return None
    return max(used, key=lambda c: used[c])
