"""Turning a bench document into the targets of issue 7, ratios and a terminal table.

Pure: everything works on the JSON-shaped document that `runner.Bench` fills. The targets:

- throughput through the full chatmail path ≥ 0.8 times the bare baseline of the same run (2 KB);
- same-relay p50 latency at most 50 ms above the bare baseline's p50;
- first-login creations ≥ 50 per second.

Where a target is missed, the process class that used the most CPU during that load is named
as the limit (on a CPU-bound 2-core machine the busiest class is the bottleneck).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import profile, stats

THROUGHPUT_TARGET = 0.8  # times bare
CREATIONS_TARGET = 50.0  # per second
# issue 12: (p50, p99) in seconds, end of DATA -> EXISTS; and none late or lost
SAME_RELAY_TARGET = (0.150, 0.400)
CROSS_RELAY_TARGET = (0.300, 0.800)
IDLE_KB_TARGET = 100  # per idle IDLE connection, all hibernated
# IMAP processes of a relay without sessions hold about 14 MB; far more is memory kept from
# earlier connections, which the idle figure (growth from that start) then leaves out
HELD_BEFORE_KB = 64 * 1024


def _get(doc: dict[str, Any], *path: str) -> Any:
    node: Any = doc
    for key in path:
        if not isinstance(node, dict) or key not in node or node[key] is None:
            return None
        node = node[key]
    return node


def best_rate(throughput: dict[str, Any] | None, key: str) -> float | None:
    value = _get(throughput or {}, "best", key, "delivered_per_s")
    return float(value) if value is not None else None


def ratios(doc: dict[str, Any]) -> dict[str, float | None]:
    """Each chatmail figure ÷ the same figure of the bare baseline."""
    result: dict[str, float | None] = {}
    for key in ("2k", "200k"):
        result[f"throughput_{key}"] = stats.ratio(
            best_rate(doc.get("throughput"), key), best_rate(_get(doc, "bare", "throughput"), key)
        )
    for q in ("p50", "p95", "p99"):
        result[f"latency_{q}"] = stats.ratio(
            _get(doc, "latency", "same_relay", q), _get(doc, "bare", "latency", q)
        )
    result["logins"] = stats.ratio(
        _get(doc, "accounts", "logins_per_s"), _get(doc, "bare", "logins_per_s")
    )
    return result


def _limit(prof: dict[str, Any] | None) -> str | None:
    return profile.top_class(prof)


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    throughput_profile = _get(doc, "throughput", "best", "2k", "profile")
    chat = best_rate(doc.get("throughput"), "2k")
    bare = best_rate(_get(doc, "bare", "throughput"), "2k")
    creations = _get(doc, "accounts", "creations_per_s")
    rows = [
        {
            "name": "throughput 2 KB",
            "target": f">= {THROUGHPUT_TARGET} x bare",
            "value": stats.ratio(chat, bare),
            "met": None if chat is None or bare is None else chat >= THROUGHPUT_TARGET * bare,
            "profile": throughput_profile,
        },
        _latency_target(doc, "latency, same relay", ["same_relay"], SAME_RELAY_TARGET),
        _latency_target(
            doc, "latency, across relays", ["cross_relay", "cross_relay_back"], CROSS_RELAY_TARGET
        ),
        {
            "name": "first-login creations",
            "target": f">= {CREATIONS_TARGET:.0f}/s",
            "value": creations,
            "met": None if creations is None else creations >= CREATIONS_TARGET,
            "profile": _get(doc, "accounts", "creation_profile"),
        },
    ]
    idle = [
        i["kb_per_connection"]
        for i in doc.get("idle") or []
        if i.get("kb_per_connection") and (i.get("imap_pss_kb_before") or 0) <= HELD_BEFORE_KB
    ]
    rows.append(
        {
            "name": "memory per idle connection",
            "target": f"<= {IDLE_KB_TARGET} KB",
            "value": max(idle, default=None),
            "met": None if not idle else max(idle) <= IDLE_KB_TARGET,
            "profile": None,
        }
    )
    for row in rows:
        prof = row.pop("profile")
        row["limited_by"] = _limit(prof) if row["met"] is False and prof else None
    return rows


def _latency_target(
    doc: dict[str, Any], name: str, runs: list[str], target: tuple[float, float]
) -> dict[str, Any]:
    """Issue 12: p50 and p99 within bounds, and no message late (> 30 s) or lost, in each run."""
    p50_max, p99_max = target
    found = [r for run in runs if (r := _get(doc, "latency", run))]
    met: bool | None = None
    if found:
        met = all(
            r.get("p50") is not None
            and r["p50"] <= p50_max
            and r.get("p99") is not None
            and r["p99"] <= p99_max
            and not r.get("late")
            and not r.get("lost")
            for r in found
        )
    return {
        "name": name,
        "target": f"p50 <= {p50_max * 1000:.0f} ms, p99 <= {p99_max * 1000:.0f} ms, 0 late/lost",
        "value": max((r.get("p99") or 0 for r in found), default=None),
        "met": met,
        "profile": _get(found[0], "profile") if found else None,
    }


def _num(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(doc: dict[str, Any]) -> str:
    """The terminal summary: every chatmail figure beside its baseline and ratio."""
    r = doc.get("ratios") or ratios(doc)
    host = _get(doc, "hosts", "relay1") or {}
    machine = doc.get("machine", {})
    lines = [
        f"cmdeploy bench: {host.get('domain', '?')} against a bare Postfix -> Dovecot, same run",
        f"machine: {machine.get('cpus')} CPUs shared by the relays, the bare host and the load "
        f"generator; kernel {machine.get('kernel')}; postfix "
        f"{_get(host, 'packages', 'postfix')}, dovecot {_get(host, 'packages', 'dovecot-core')}",
        "",
        f"{'figure':<40}{'chatmail':>11}{'bare':>11}{'ratio':>9}",
    ]

    def row(name: str, chat: str, bare: str = "-", ratio: str = "") -> None:
        lines.append(f"{name:<40}{chat:>11}{bare:>11}{ratio:>9}")

    for key, label in (("2k", "2 KB"), ("200k", "200 KB")):
        best = _get(doc, "throughput", "best", key) or {}
        bare_best = _get(doc, "bare", "throughput", "best", key) or {}
        row(
            f"throughput {label}, msg/s delivered (best)",
            _num(best.get("delivered_per_s")),
            _num(bare_best.get("delivered_per_s")),
            _ratio(r.get(f"throughput_{key}")),
        )
        if best:
            lines.append(
                f"{'':<4}at concurrency {best.get('concurrency')} (bare "
                f"{bare_best.get('concurrency', '-')}); per concurrency: "
                + ", ".join(
                    f"{x['concurrency']}: {_num(x.get('delivered_per_s'))}"
                    for x in _get(doc, "throughput", "runs", key) or []
                )
            )
    cross = _get(doc, "throughput", "cross_relay") or {}
    if cross:
        row("throughput 2 KB, relay1 -> relay2, msg/s", _num(cross.get("delivered_per_s")))
    same = _get(doc, "latency", "same_relay") or {}
    bare_lat = _get(doc, "bare", "latency") or {}
    for q in ("p50", "p95", "p99"):
        row(
            f"latency {q}, same relay, ms",
            _num(same.get(q), 1000, 0),
            _num(bare_lat.get(q), 1000, 0),
            _ratio(r.get(f"latency_{q}")),
        )
    runs = [("same relay", same)]
    for key, label in (
        ("cross_relay", "relay1 -> relay2"),
        ("cross_relay_back", "relay2 -> relay1"),
    ):
        run = _get(doc, "latency", key) or {}
        if run:
            runs.append((label, run))
            for q in ("p50", "p95", "p99"):
                row(f"latency {q}, {label}, ms", _num(run.get(q), 1000, 0))
    if same:
        lines.append(
            f"{'':<4}offered at {_get(doc, 'latency', 'fraction_of_max')} x the best 2 KB "
            "throughput of each path"
        )
        for label, run in runs:
            lines.append(
                f"{'':<4}{label}: {_num(run.get('offered_per_s'))} msg/s offered, "
                f"{run.get('count')} timed, {run.get('late', '-')} late, {run.get('lost')} lost, "
                f"machine busy {_num(_get(run, 'profile', 'machine_busy_cores'), 1, 2)} cores"
            )
    for key, label in (("same_relay", "same relay"), ("cross_relay", "relay1 -> relay2")):
        milestones = _get(doc, "hops", key, "milestones")
        if milestones:
            lines.append(
                f"{'':<4}hops, {label} (median ms after the end of DATA): "
                + ", ".join(
                    f"{name} {_num(m.get('p50_ms'), 1, 0)}" for name, m in milestones.items()
                )
            )
    acc = doc.get("accounts") or {}
    row("first-login creations/s", _num(acc.get("creations_per_s")))
    row(
        "logins of existing accounts/s",
        _num(acc.get("logins_per_s")),
        _num(_get(doc, "bare", "logins_per_s")),
        _ratio(r.get("logins")),
    )
    for idle in doc.get("idle") or []:
        row(
            f"memory per idle IDLE conn. @{idle['connections']}, KB",
            _num(idle.get("kb_per_connection")),
        )
        lines.append(
            f"{'':<4}{idle.get('hibernated', '-')} of {idle['connections']} hibernated; "
            f"Dovecot as a whole {_num(idle.get('dovecot_kb_per_connection'))} KB, container "
            f"working set {_num(idle.get('container_kb_per_connection'))} KB per connection"
        )
        held = idle.get("imap_pss_kb_before") or 0
        if held > HELD_BEFORE_KB:
            lines.append(
                f"{'':<4}note: Dovecot's IMAP processes held {held / 1024:.0f} MB before the first "
                "idle connection (imap-login keeps what earlier connections used), so the "
                "growth understates the cost; measure after Dovecot started afresh"
            )
    inotify = host.get("inotify_max_user_instances")
    if (
        inotify is not None
        and max((i["connections"] for i in doc.get("idle") or []), default=0) > inotify
    ):
        lines.append(
            f"{'':<4}note: fs.inotify.max_user_instances is {inotify} on the relay: beyond that "
            "Dovecot cannot watch a mailbox, so IDLE falls back to polling and cannot hibernate"
        )
    prof = _get(doc, "throughput", "best", "2k", "profile")
    generator = _get(doc, "throughput", "best", "2k", "load_generator_cores")
    if prof:
        shares = ", ".join(
            f"{cls} {share * 100:.0f}%"
            for cls, share in sorted(prof["share"].items(), key=lambda kv: -kv[1])
            if share >= 0.005
        )
        lines += [
            "",
            f"CPU during the best 2 KB run (relay services, {prof['source']}): {shares}; "
            f"machine busy {prof['machine_busy_cores']:.2f} of {machine.get('cpus')} cores, "
            f"load generator {_num(generator, 1, 2)}",
        ]
    lines += ["", "targets (issues 7 and 12):"]
    for t in doc.get("targets") or targets(doc):
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        limit = f"; limited by {t['limited_by']}" if t.get("limited_by") else ""
        lines.append(f"  {t['name']:<28} {t['target']:<20} {verdict}{limit}")
    return "\n".join(lines)


def finish(doc: dict[str, Any]) -> dict[str, Any]:
    doc["ratios"] = ratios(doc)
    doc["targets"] = targets(doc)
    return doc


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
