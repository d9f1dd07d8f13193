"""The metrics registry, its snapshots and the exposition format (checked by promtool)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from chatmaild import metrics
from chatmaild.metrics import Registry


def promtool_check(text: str) -> None:
    """`promtool check metrics` accepts the exposition (lint problems fail it too)."""
    if shutil.which("promtool") is None:
        pytest.skip("needs promtool (Debian's prometheus package)")
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def example() -> Registry:
    registry = Registry()
    refused = registry.counter(
        "chatmail_gate_refused_total", "Refused, by reason.", ("direction", "reason")
    )
    refused.inc(direction="outgoing", reason="cleartext")
    refused.inc(2, direction="incoming", reason="no_dkim")
    registry.counter("chatmail_accounts_created_total", "Accounts created.")
    registry.gauge("chatmail_push_pending", "Waiting.").set(3)
    return registry


def test_exposition_format() -> None:
    text = example().render()
    assert (
        text
        == (
            "# HELP chatmail_accounts_created_total Accounts created.\n"
            "# TYPE chatmail_accounts_created_total counter\n"
            "chatmail_accounts_created_total 0\n"  # a counter without labels shows from the start
            "# HELP chatmail_gate_refused_total Refused, by reason.\n"
            "# TYPE chatmail_gate_refused_total counter\n"
            'chatmail_gate_refused_total{direction="incoming",reason="no_dkim"} 2\n'
            'chatmail_gate_refused_total{direction="outgoing",reason="cleartext"} 1\n'
            "# HELP chatmail_push_pending Waiting.\n"
            "# TYPE chatmail_push_pending gauge\n"
            "chatmail_push_pending 3\n"
        )
    )
    promtool_check(text)


def test_label_values_and_help_are_escaped() -> None:
    registry = Registry()
    family = registry.gauge("chatmail_x", 'Help with \\ and\na newline "quoted".', ("what",))
    family.set(0.5, what='a "b" \\ c\nd')
    text = registry.render()
    assert '# HELP chatmail_x Help with \\\\ and\\na newline "quoted".\n' in text
    assert 'chatmail_x{what="a \\"b\\" \\\\ c\\nd"} 0.5\n' in text
    promtool_check(text)


@pytest.mark.parametrize(
    "bad",
    [
        lambda r: r.counter("chatmail_no_suffix", "x"),  # a counter's name ends in _total
        lambda r: r.gauge("chatmail-dash", "x"),
        lambda r: r.gauge("chatmail_x", "x", ("bad-label",)),
        lambda r: r.counter("chatmail_x_total", "x").inc(-1),  # a counter only goes up
        lambda r: r.counter("chatmail_x_total", "x").set(1),
        lambda r: r.counter("chatmail_x_total", "x", ("a",)).inc(b="1"),  # wrong label
        # one name, two shapes
        lambda r: (r.gauge("chatmail_y", "x"), r.gauge("chatmail_y", "x", ("a",))),
    ],
)
def test_misuse_is_refused_at_once(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        bad(Registry())


def test_snapshots_of_several_services_merge_into_one_exposition(tmp_path: Path) -> None:
    out, into = Registry(), Registry()
    for registry, direction in ((out, "outgoing"), (into, "incoming")):
        registry.counter("chatmail_gate_refused_total", "Refused.", ("direction",)).inc(
            direction=direction
        )
    # the same label set from two processes is summed, never shown twice
    out.counter("chatmail_shared_total", "Shared.").inc(2)
    into.counter("chatmail_shared_total", "Shared.").inc(3)
    metrics.write_snapshot(out, metrics.snapshot_path(tmp_path, "filtermail-outgoing"))
    metrics.write_snapshot(into, metrics.snapshot_path(tmp_path, "filtermail-incoming"))
    merged = Registry()
    assert metrics.read_snapshots(tmp_path, merged) == []
    text = merged.render()
    assert text.count("# TYPE chatmail_gate_refused_total counter") == 1
    assert 'chatmail_gate_refused_total{direction="incoming"} 1\n' in text
    assert 'chatmail_gate_refused_total{direction="outgoing"} 1\n' in text
    assert "chatmail_shared_total 5\n" in text
    promtool_check(text)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"chatmail_x": {"kind": "summary", "help": "", "labels": [], "samples": []}}',
        b'{"chatmail_x": {"kind": "gauge", "help": "", "labels": ["a"], "samples": [[[], 1]]}}',
        b'{"chatmail_x": {"kind": "gauge", "help": "", "labels": [], "samples": [[[], "1"]]}}',
        b'{"chatmail_x": {"kind": "gauge", "help": "", "labels": [], "samples": [[[], true]]}}',
    ],
)
def test_a_broken_snapshot_is_named_and_the_others_still_count(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "broken.json").write_bytes(content)
    metrics.write_snapshot(example(), tmp_path / "good.json")
    merged = Registry()
    assert metrics.read_snapshots(tmp_path, merged) == ["broken.json"]
    assert merged.families["chatmail_push_pending"].value() == 3


def test_the_snapshot_task_writes_at_start_and_when_cancelled(tmp_path: Path) -> None:
    registry = example()
    path = metrics.snapshot_path(tmp_path / "dir", "doveauth")

    async def run() -> None:
        task = metrics.start_snapshots(registry, tmp_path / "dir", "doveauth")
        assert task is not None
        await asyncio.sleep(0)  # the task's first step writes the snapshot
        assert json.loads(path.read_text()) == registry.snapshot()
        registry.families["chatmail_push_pending"].set(7)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    # the last counts are on disk when the service stops
    assert json.loads(path.read_text())["chatmail_push_pending"]["samples"] == [[[], 7.0]]


def test_no_directory_no_snapshots() -> None:
    async def run() -> None:
        assert metrics.start_snapshots(Registry(), None, "doveauth") is None

    asyncio.run(run())


def test_an_unwritable_directory_is_one_warning_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    written = metrics._write_if_changed(example(), tmp_path / "file" / "x.json", None)
    assert written is None
    assert "cannot write metrics snapshot" in caplog.text
