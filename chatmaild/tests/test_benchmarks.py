"""The benchmark scripts run on a tiny workload and print well-formed figures.

No timing is asserted: the figures are for people (see the notes of each run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent


def run_bench(script: str, tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(HERE / script), "--seconds", "0.3", "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(out.read_text()))


def needs_root_and(*programs: str) -> pytest.MarkDecorator:
    """Skip without root or one of `programs`, except in CI, where they must be there."""
    missing = os.geteuid() != 0 or any(shutil.which(p) is None for p in programs)
    reason = "needs root and " + " and ".join(programs)
    return pytest.mark.skipif(missing and not os.environ.get("CI"), reason=reason)


@pytest.mark.skipif(
    shutil.which("smtp-sink") is None and not os.environ.get("CI"), reason="needs postfix"
)
def test_filtermail_benchmark(tmp_path: Path) -> None:
    figures = run_bench("bench_filtermail.py", tmp_path, "--clients", "2")
    results = figures["results"]
    assert isinstance(results, dict) and set(results) == {"2KB", "200KB", "1MB"}
    for row in results.values():
        assert row["filtermail_msgs_per_s"] > 0 and row["baseline_msgs_per_s"] > 0
        assert row["ratio"] > 0


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root")
def test_auth_benchmark(tmp_path: Path) -> None:
    figures = run_bench("bench_auth.py", tmp_path, "--clients", "2")
    results = figures["results"]
    assert isinstance(results, dict)
    assert results["dict: first-login creations"] > 0
    assert results["dovecot: existing-account logins"] > 0


def run_postlog_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """bench_postlog.py's JSON figures and what it printed."""
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(HERE / "bench_postlog.py"), "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(out.read_text())), result.stdout


def test_postlog_benchmark(tmp_path: Path) -> None:
    figures, _printed = run_postlog_bench(tmp_path, "--lines", "300")
    assert figures["lines_per_message"] == {"incoming": 14, "submission": 12}
    assert figures["process"]["lines"] == 300 and figures["process"]["cpu_seconds"] >= 0
    assert figures["in_process_cpu_us_per_line"] > 0


@pytest.mark.dovecot
def test_postlog_capture_counts_the_real_daemons_lines(tmp_path: Path) -> None:
    from postfix_harness import postfix_or_skip

    postfix_or_skip()  # root and Postfix: skipped without, failed in CI
    if shutil.which("dovecot") is None and not os.environ.get("CI"):
        pytest.skip("needs Debian's dovecot-imapd (scripts/test installs it)")
    counts, printed = run_postlog_bench(tmp_path, "--capture")
    for path in ("port 25", "/mxdeliv", "submission"):
        assert counts[path]["postfix/lmtp to"] == 1
        assert counts[path]["dovecot/lmtp saved"] == 1
        # Subject is "[...]" already: header_checks leave it alone and log nothing
        assert not any("replace" in origin for origin in counts[path])
    assert "postfix/smtpd connect" not in counts["/mxdeliv"]
    # one pass: the submission listener queues the message itself (doc/milter.md)
    assert counts["submission"]["postfix/submission/smtpd client"] == 1
    assert not any("reinject" in origin for origin in counts["submission"])
    # what the peer's message printed went through `redact`: no address is left whole
    assert not re.search(r"[a-z0-9]@example\.org", printed)


@needs_root_and("dovecot")
def test_lmtp_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    argv = [sys.executable, str(HERE / "bench_lmtp.py"), "--messages", "20", "--runs", "1"]
    argv += ["--accounts", "2", "--variant", "relay", "--variant", "lua-push"]
    result = subprocess.run(
        [*argv, "--json", str(out)], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert set(figures) == {"relay", "lua-push"}
    for runs in figures.values():
        assert len(runs) == 1 and runs[0]["dovecot_ms"] > 0
        assert set(runs[0]["services_ms"]) == {"doveauth", "lastlogin", "metadata"}


@needs_root_and("postfix", "dovecot")
def test_postfix_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    argv = [sys.executable, str(HERE / "bench_postfix.py"), "--messages", "200", "--runs", "1"]
    argv += ["--warmup", "2", "--accounts", "2", "--variant", "relay", "--variant", "one-pass"]
    result = subprocess.run(
        [*argv, "--json", str(out)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert set(figures) == {"relay", "one-pass"}
    [relay], [one_pass] = figures["relay"], figures["one-pass"]
    # the re-injection smtpd works only when the gate is in front of Postfix
    assert relay["ms"]["POSTFIX TOTAL"] > 0 and one_pass["ms"]["POSTFIX TOTAL"] > 0
    assert relay["ms"].get("smtpd reinject", 0) > 0
    assert one_pass["ms"].get("smtpd reinject", 0) == 0
    assert "smtpd port 25" in result.stdout
