"""Offline checks of the bench's report: targets, ratios, the table, idle memory, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cmdeploy import cli
from cmdeploy.bench import profile, report


def fake_profile(busiest: str) -> dict[str, Any]:
    seconds = dict.fromkeys(profile.CLASSES, 0.1)
    seconds[busiest] = 5.0
    seconds["ssh"] = 9.0  # the bench's own sampling is never named as the limit
    total = sum(seconds.values())
    return {
        "source": "cgroup",
        "wall_seconds": 10.0,
        "cpu_seconds": seconds,
        "share": {k: v / total for k, v in seconds.items()},
        "cores": {k: v / 10 for k, v in seconds.items()},
        "machine_busy_cores": 1.9,
        "top": {},
    }


def run(concurrency: int, rate: float, busiest: str = "filtermail") -> dict[str, Any]:
    return {"concurrency": concurrency, "delivered_per_s": rate, "profile": fake_profile(busiest)}


def document() -> dict[str, Any]:
    chat_runs = [run(4, 60.0), run(16, 90.0)]
    bare_runs = [run(4, 150.0, "postfix"), run(16, 200.0, "postfix")]
    return {
        "machine": {"cpus": 2, "kernel": "6.x"},
        "hosts": {"relay1": {"domain": "_relay1.test", "packages": {"postfix": "3.7"}}},
        "throughput": {"runs": {"2k": chat_runs}, "best": {"2k": chat_runs[1]}},
        "latency": {
            "fraction_of_max": 0.5,
            "same_relay": {"p50": 0.62, "p95": 0.7, "p99": 0.8, "profile": fake_profile("dovecot")},
        },
        "accounts": {"creations_per_s": 40.0, "logins_per_s": 100.0, "creation_profile": None},
        "bare": {
            "throughput": {"runs": {"2k": bare_runs}, "best": {"2k": bare_runs[1]}},
            "latency": {"p50": 0.5, "p95": 0.55, "p99": 0.6},
            "logins_per_s": 200.0,
        },
        "idle": [{"connections": 1000, "kb_per_connection": 30.0}],
    }


def test_targets_name_the_limiting_class() -> None:
    doc = report.finish(document())
    by_name = {t["name"]: t for t in doc["targets"]}
    assert by_name["throughput 2 KB"]["met"] is False
    assert by_name["throughput 2 KB"]["value"] == pytest.approx(0.45)
    assert by_name["throughput 2 KB"]["limited_by"] == "filtermail"
    assert by_name["latency, same relay"]["met"] is False  # p50 620 ms > 150 ms
    assert by_name["latency, same relay"]["limited_by"] == "dovecot"
    assert by_name["latency, across relays"]["met"] is None  # not measured
    assert by_name["memory per idle connection"]["met"] is True
    assert by_name["first-login creations"]["met"] is False
    assert by_name["first-login creations"]["limited_by"] is None  # no profile, no guess
    assert doc["ratios"]["throughput_2k"] == pytest.approx(0.45)
    assert doc["ratios"]["logins"] == pytest.approx(0.5)
    assert doc["ratios"]["throughput_200k"] is None
    json.dumps(doc)  # the document stays JSON


def test_table_shows_figures_ratios_and_verdicts() -> None:
    text = report.table(report.finish(document()))
    assert "90.0" in text and "200.0" in text and "0.45x" in text
    assert "MISSED; limited by filtermail" in text
    assert "620" in text and "500" in text  # p50 in ms, chatmail and bare
    assert "2 CPUs shared" in text


def test_table_without_a_baseline() -> None:
    doc = document()
    del doc["bare"]
    text = report.table(report.finish(doc))
    assert "not measured" in text


def test_idle_memory_counts_only_imap_sessions() -> None:
    before = {
        "dovecot_pss_kb": 10_000,
        "dovecot_pss_kb_by_process": {"imap-login": 4000, "auth": 3000, "lmtp": 3000},
        "container_bytes": 100 * 1024 * 1024,
    }
    after = {
        "dovecot_pss_kb": 30_000,
        "dovecot_pss_kb_by_process": {"imap-login": 6000, "imap-hibernate": 18000, "auth": 6000},
        "container_bytes": 110 * 1024 * 1024,
    }
    figures = profile.idle_memory(before, after, 1000)
    assert figures["kb_per_connection"] == 20.0
    assert figures["dovecot_kb_per_connection"] == 20.0
    assert figures["container_kb_per_connection"] == pytest.approx(10.24)


def test_memory_kept_from_earlier_connections_voids_the_idle_figure() -> None:
    """A second bench on one Dovecot found 430 MB still held by imap-login and reported
    18 KB a connection; such a figure must not meet the target, and the table says why."""
    idle = {"connections": 1000, "kb_per_connection": 17.7, "hibernated": 1000}
    fresh = report.finish({"idle": [{**idle, "imap_pss_kb_before": 13_893}]})
    held = report.finish({"idle": [{**idle, "imap_pss_kb_before": 429_123}]})
    row = next(t for t in fresh["targets"] if t["name"] == "memory per idle connection")
    assert row["met"] is True
    row = next(t for t in held["targets"] if t["name"] == "memory per idle connection")
    assert row["met"] is None
    assert "held 419 MB before the first idle connection" in report.table(held)


def test_bench_without_a_lab_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cmdeploy import lab

    monkeypatch.setattr(lab, "LAB", tmp_path)
    code = cli.main(["bench", "--accounts", "2", "--idle", "0", "--no-bare"])
    err = capsys.readouterr().err
    assert code == 2
    assert "lab is not up" in err and "Traceback" not in err


def test_bench_options_are_checked() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--concurrency", "four"])
    args = cli.build_parser().parse_args(["bench", "--concurrency", "2,8", "--idle", "0"])
    assert args.concurrency == (2, 8) and args.idle == (0,)


@pytest.mark.parametrize(
    ("late", "lost", "p99", "met"),
    [(0, 0, 0.3, True), (1, 0, 0.3, False), (0, 1, 0.3, False), (0, 0, 0.5, False)],
)
def test_a_late_or_lost_message_misses_the_latency_target(
    late: int, lost: int, p99: float, met: bool
) -> None:
    """Issue 12: later than 30 s counts as a failure, not as noise."""
    doc = document()
    doc["latency"]["same_relay"] = {"p50": 0.03, "p99": p99, "late": late, "lost": lost}
    by_name = {t["name"]: t for t in report.finish(doc)["targets"]}
    assert by_name["latency, same relay"]["met"] is met
