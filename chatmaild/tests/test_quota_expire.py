"""Quota expiry: parse Maildir names, prune oldest first, keep mail < 24 h."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from chatmaild import quota_expire
from chatmaild.quota_expire import Message, expire_to_target, parse_name, select_over_target

DAY = 86400
HOUR = 3600
NOW = 1_750_000_000.0
ADDR = "secretuser@example.org"


def msg_name(t: float, size: int | None, i: int = 0, flags: str | None = ":2,S") -> str:
    size_part = f",S={size},W={size + 10}" if size is not None else ""
    return f"{int(t)}.M{i}P1.host{size_part}{flags or ''}"


def put(home: Path, relpath: str, mtime: float, content: bytes = b"x") -> Path:
    path = home / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, (mtime, mtime))
    return path


def tree(home: Path) -> set[str]:
    return {p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1700000000.M123P456.host,S=1234,W=1260:2,S", (1700000000, 1234)),
        ("1700000000.M123P456.host,S=1234,W=1260", (1700000000, 1234)),  # new/: no flags yet
        ("1700000000.M123P456.host:2,S", (1700000000, None)),
        ("1700000000.M1P2.host,W=99:2,S=5", (1700000000, None)),  # S= only in the flags part
        ("dovecot-uidlist", (None, None)),
        ("x1700000000.M1P2.host,S=7", (None, 7)),
    ],
)
def test_parse_name(name: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_name(name) == expected


@pytest.mark.parametrize(
    ("relpath", "mtime", "size", "expected"),
    [
        ("cur/1700000000.M1P2.h,S=50:2,S", 5.0, 9, Message(1700000000, 50, "")),
        ("cur/1700000000.M1P2.h:2,S", 5.0, 9, Message(1700000000, 9, "")),
        ("new/garbage", 5.0, 9, Message(5.0, 9, "")),
    ],
)
def test_message_from_file_falls_back_to_stat(
    relpath: str, mtime: float, size: int, expected: Message
) -> None:
    m = quota_expire.message_from_file(relpath, mtime, size)
    assert (m.time, m.size, m.relpath) == (expected.time, expected.size, relpath)


# Each message: (age in hours, size). Expected: indices of the messages selected for deletion.
@pytest.mark.parametrize(
    ("messages", "target", "expected"),
    [
        pytest.param([(100, 10), (50, 10)], 20, [], id="at-target"),
        pytest.param([(100, 10), (50, 10)], 100, [], id="under-target"),
        pytest.param([(50, 10), (100, 10), (75, 10)], 15, [1, 2], id="oldest-first"),
        pytest.param([(100, 30), (50, 10)], 15, [0], id="one-big-enough"),
        pytest.param([(100, 5), (50, 5), (30, 5)], 0, [0, 1, 2], id="target-zero"),
        pytest.param([(23, 10), (1, 10)], 0, [], id="all-young-over-target"),
        pytest.param([(100, 10), (23.9, 10), (1, 10)], 0, [0], id="young-stop"),
        pytest.param([(24, 10), (1, 10)], 0, [0], id="exactly-24h-is-old"),
    ],
)
def test_select_over_target(
    messages: list[tuple[float, int]], target: int, expected: list[int]
) -> None:
    msgs = [Message(NOW - age * HOUR, size, f"cur/{i}") for i, (age, size) in enumerate(messages)]
    selected = select_over_target(msgs, target, NOW)
    assert [m.relpath for m in selected] == [f"cur/{i}" for i in expected]


def make_mailbox(tmp_path: Path, now: float) -> Path:
    """Messages of 300 bytes (by name) in all folders; the ages, oldest first:
    cur 10 d, .DeltaChat/cur 5 d, new 3 d, cur 2 d, .DeltaChat/new 1 h; tmp is ignored."""
    home = tmp_path / ADDR
    layout = [
        ("cur", 10 * DAY),
        (".DeltaChat/cur", 5 * DAY),
        ("new", 3 * DAY),
        ("cur", 2 * DAY),
        (".DeltaChat/new", HOUR),
    ]
    for i, (folder, age) in enumerate(layout):
        flags = ":2,S" if folder.endswith("cur") else None
        put(home, f"{folder}/{msg_name(now - age, 300, i, flags)}", now - age)
    put(home, f"tmp/{msg_name(now - 30 * DAY, 9999, 9)}", now - 30 * DAY)
    put(home, "maildirsize", now)
    put(home, "password", now)
    return home


@pytest.mark.parametrize(
    ("target", "removed_ages"),
    [
        (1500, []),  # 5 x 300 = 1500: already at target
        (1200, ["10d"]),
        (700, ["10d", "5d", "3d"]),  # 600 left
        (0, ["10d", "5d", "3d", "2d"]),  # the 1 h old message stays although over target
    ],
)
def test_expire_to_target_on_disk(tmp_path: Path, target: int, removed_ages: list[str]) -> None:
    home = make_mailbox(tmp_path, NOW)
    before = tree(home)
    age_of = {0: "10d", 1: "5d", 2: "3d", 3: "2d", 4: "1h"}
    by_age = {
        age_of[int(name.split(".M")[1].split("P")[0])]: rel
        for rel in before
        if ".M" in rel and not rel.startswith("tmp/")
        for name in [rel.rsplit("/", 1)[1]]
    }

    removed = expire_to_target(home, target, NOW)

    expected = before - {by_age[a] for a in removed_ages}
    if removed_ages:
        expected.discard("maildirsize")
    assert removed == len(removed_ages)
    assert tree(home) == expected


def test_vanished_file_is_not_an_error(tmp_path: Path) -> None:
    home = tmp_path / ADDR
    home.mkdir()
    assert quota_expire.remove_files(home, ["cur/gone"]) == 0


# --- command line --------------------------------------------------------------------------


def test_main_removes_and_logs_count_without_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    now = time.time()
    home = tmp_path / ADDR
    put(home, "maildirsize", now)
    # 1 MiB target, with 3 old messages of 600 KiB each: the two oldest go.
    for i, age in enumerate([5 * DAY, 4 * DAY, 3 * DAY]):
        put(home, f"cur/{msg_name(now - age, 600 * 1024, 20 + i)}", now - age)

    quota_expire.main(["1", str(home)])

    assert caplog.messages == ["quota-expire: removed 2 message(s)"]
    assert not (home / "maildirsize").exists()
    assert len(list((home / "cur").iterdir())) == 1
    out, err = capsys.readouterr()
    assert "secretuser" not in out + err + caplog.text


def test_main_nothing_to_do_keeps_maildirsize(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    home = make_mailbox(tmp_path, time.time())
    quota_expire.main(["100", str(home)])
    assert caplog.messages == ["quota-expire: removed 0 message(s)"]
    assert (home / "maildirsize").exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["lots", "{home}"], "number of megabytes"),
        (["-5", "{home}"], "0 or more"),
        (["nan", "{home}"], "0 or more"),
        (["10", "{missing}"], "not an existing directory"),
        (["10"], "required"),
        ([], "required"),
        (["10", "{home}", "extra"], "unrecognized"),
    ],
)
def test_main_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    home = tmp_path / ADDR
    home.mkdir()
    args = [a.format(home=home, missing=tmp_path / "nobody@example.org") for a in argv]
    with pytest.raises(SystemExit) as exc:
        quota_expire.main(args)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert needle in err
    assert "Traceback" not in err
    assert "@" not in err
