"""Daily expiry: inactive accounts, old and large mail, quota pruning."""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from pathlib import Path

import pytest

from chatmaild import expire, fsutil
from chatmaild.accounts import ENFORCE_E2EE_FILE, LOCK_FILE, log_id
from chatmaild.config import Config
from chatmaild.expire import Leftover, MailboxFacts, MailFile, Policy, Verdict, decide

DAY = 86400
HOUR = 3600
NOW = 1_750_000_000.0
BIG = 200001  # just over the large-message limit


def policy(**params: str) -> Policy:
    config = Config.from_params({"mail_domain": "example.org", **params})
    return Policy.from_config(config)


def msg(folder: str, age_days: float, size: int = 100, i: int = 0) -> MailFile:
    t = NOW - age_days * DAY
    flags = ":2,S" if folder.endswith("cur") else ""
    return MailFile(f"{folder}/{int(t)}.M{i}P1.host,S={size},W={size}{flags}", t, size)


def facts(
    *files: MailFile,
    password_age: float | None = 1,
    empty: bool = False,
    leftovers: tuple[Leftover, ...] = (),
) -> MailboxFacts:
    pw = None if password_age is None else NOW - password_age * DAY
    return MailboxFacts(pw, empty, files, leftovers)


# Defaults: delete_mails_after 20, delete_large_after 7, delete_inactive_users_after 90.
@pytest.mark.parametrize(
    ("mailbox", "remove_mailbox", "removed"),
    [
        pytest.param(facts(password_age=91), True, [], id="inactive"),
        pytest.param(facts(msg("cur", 1), password_age=91), True, [], id="inactive-with-mail"),
        pytest.param(facts(password_age=89), False, [], id="active"),
        pytest.param(facts(password_age=None, empty=True), True, [], id="no-password-empty"),
        pytest.param(facts(password_age=None), False, [], id="no-password-not-empty"),
        pytest.param(
            facts(msg("cur", 21), msg("new", 21, i=1), password_age=None),
            False,
            [0, 1],
            id="no-password-mail-still-expires",
        ),
        pytest.param(facts(msg("cur", 21), msg("cur", 19, i=1)), False, [0], id="old-mail"),
        pytest.param(facts(msg("new", 21), msg("tmp", 21, i=1)), False, [0, 1], id="new-tmp"),
        pytest.param(
            facts(msg(".DeltaChat/cur", 21), msg(".A.B/new", 21, i=1)),
            False,
            [0, 1],
            id="subfolders",
        ),
        pytest.param(facts(msg("cur", 8, BIG)), False, [0], id="large-seen"),
        pytest.param(facts(msg("cur", 6, BIG)), False, [], id="large-seen-young"),
        pytest.param(facts(msg("cur", 8, BIG - 1)), False, [], id="exactly-200000-bytes"),
        pytest.param(facts(msg("new", 8, BIG)), False, [], id="large-unseen"),
        pytest.param(facts(msg(".DeltaChat/cur", 8, BIG)), False, [0], id="large-seen-subfolder"),
    ],
)
def test_decide_rules(mailbox: MailboxFacts, remove_mailbox: bool, removed: list[int]) -> None:
    verdict = decide(mailbox, policy(), NOW)
    assert verdict.remove_mailbox == remove_mailbox
    assert sorted(verdict.remove_files) == sorted(mailbox.files[i].relpath for i in removed)


@pytest.mark.parametrize(
    ("files", "removed"),
    [
        # max_mailbox_size 1M: target 70 % = 734003 bytes (sizes from the names).
        pytest.param([(3, 300000), (2, 300000), (0.5, 300000)], [0], id="oldest-goes"),
        pytest.param([(3, 200000), (2, 200000), (1, 200000)], [], id="under-target"),
        pytest.param([(0.9, 500000), (0.5, 500000)], [], id="all-younger-than-24h"),
        pytest.param([(10, 300000), (2, 900000), (0.5, 100)], [0, 1], id="whole-folders"),
        # The 25-day message goes by age (step 3), which already brings it under target.
        pytest.param([(25, 500000), (3, 300000), (2, 300000)], [0], id="age-first"),
    ],
)
def test_decide_prunes_to_70_percent(files: list[tuple[float, int]], removed: list[int]) -> None:
    folders = ["cur", "new", ".DeltaChat/cur"]
    mailbox = facts(*(msg(folders[i % 3], age, size, i) for i, (age, size) in enumerate(files)))
    verdict = decide(mailbox, policy(max_mailbox_size="1M"), NOW)
    assert sorted(verdict.remove_files) == sorted(mailbox.files[i].relpath for i in removed)


def test_tmp_files_do_not_count_for_quota() -> None:
    mailbox = facts(msg("tmp", 1, 10**7), msg("cur", 2, 100, 1))
    assert decide(mailbox, policy(max_mailbox_size="1M"), NOW) == Verdict()


TMP = ".password.4242.98765432101.tmp"  # fsutil.write_atomic's, from a process killed in it


def left(*names: str, hours: float) -> tuple[Leftover, ...]:
    return tuple(Leftover(name, NOW - hours * HOUR) for name in names)


KILLED_CREATION = (LOCK_FILE, ENFORCE_E2EE_FILE, TMP)


@pytest.mark.parametrize(
    ("mailbox", "remove_mailbox", "leftovers"),
    [
        pytest.param(
            facts(password_age=None, empty=True, leftovers=left(*KILLED_CREATION, hours=2)),
            True,
            [],
            id="creation-killed-hours-ago",
        ),
        pytest.param(
            facts(password_age=None, empty=True, leftovers=left(LOCK_FILE, TMP, hours=2)),
            True,
            [],
            id="killed-before-enforce-file",
        ),
        pytest.param(
            facts(
                password_age=None,
                empty=True,
                leftovers=left(LOCK_FILE, hours=0.5) + left(ENFORCE_E2EE_FILE, TMP, hours=2),
            ),
            False,
            [TMP],
            id="a-creation-within-the-hour",
        ),
        pytest.param(
            facts(password_age=None, leftovers=left(*KILLED_CREATION, hours=2)),
            False,
            [LOCK_FILE, TMP],
            id="no-password-but-mail",
        ),
        pytest.param(
            facts(leftovers=left(LOCK_FILE, TMP, ".metadata.json.1.2.tmp", hours=2)),
            False,
            [LOCK_FILE, TMP, ".metadata.json.1.2.tmp"],
            id="account-with-old-leftovers",
        ),
        pytest.param(
            facts(leftovers=left(LOCK_FILE, TMP, hours=0.9)), False, [], id="fresh-leftovers"
        ),
        pytest.param(
            facts(password_age=91, leftovers=left(LOCK_FILE, hours=0.1)),
            True,
            [],
            id="inactive-whatever-leftovers",
        ),
    ],
)
def test_decide_leftovers(
    mailbox: MailboxFacts, remove_mailbox: bool, leftovers: list[str]
) -> None:
    verdict = decide(mailbox, policy(), NOW)
    assert verdict.remove_mailbox == remove_mailbox
    assert sorted(verdict.remove_leftovers) == sorted(leftovers)


def test_days_never_make_a_fresh_leftover_old() -> None:
    killed = facts(password_age=None, empty=True, leftovers=left(*KILLED_CREATION, hours=0.5))
    assert decide(killed, policy(), NOW + 40 * DAY).remove_mailbox
    assert decide(killed, policy(), NOW + 40 * DAY, wall_now=NOW) == Verdict()


@pytest.mark.parametrize(
    ("removed_mailboxes", "removed_files", "remove", "expected"),
    [
        (1, 2, True, "Removed 1 out of 3 mailboxes and 2 out of 5 files in 1.50 seconds"),
        (0, 0, False, "Would remove 0 out of 3 mailboxes and 0 out of 5 files in 1.50 seconds"),
    ],
)
def test_summary(removed_mailboxes: int, removed_files: int, remove: bool, expected: str) -> None:
    stats = expire.Stats(3, removed_mailboxes, 5, removed_files)
    assert expire.summary(stats, remove, 1.5).startswith(expected)


# --- on disk -------------------------------------------------------------------------------

INACTIVE = "inactive1@example.org"  # last login 60 days ago: 100 days when run 40 days later
ACTIVE = "active123@example.org"  # logged in today, with mail of today
IDLE = "unchanged@example.org"  # logged in today, no mail: nothing to do
EMPTY = "halfmade1@example.org"  # a directory without password and nothing in it
ORPHAN = "nopasswd1@example.org"  # no password but mail: kept, its old mail expires


def put(path: Path, mtime: float, size: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))


def build_relay(root: Path, now: float) -> None:
    """Mailboxes as they look at `now` (mail and logins of today unless said otherwise)."""
    for addr, login_age in [(INACTIVE, 60), (ACTIVE, 0), (IDLE, 0)]:
        put(root / addr / "password", now - login_age * DAY)
        put(root / addr / "enforceE2EEincoming", now - login_age * DAY, 0)
        put(root / addr / "maildirsize", now)
    put(root / INACTIVE / "cur" / f"{int(now)}.M1P1.h,S=10:2,S", now)
    for i, folder in enumerate(["cur", "new", "tmp", ".DeltaChat/cur"]):
        put(root / ACTIVE / folder / f"{int(now)}.M{i}P1.h,S=10,W=10", now)
    put(root / ACTIVE / "dovecot-uidlist", now)  # not in cur/new/tmp: never expires
    (root / EMPTY).mkdir()
    put(root / ORPHAN / "new" / f"{int(now)}.M1P1.h,S=10", now)
    put(root / ORPHAN / "dovecot.index", now)
    (root / "not-a-mailbox").mkdir()  # no '@': not looked at
    put(root / "not-a-mailbox" / "cur" / "old", now - 100 * DAY)


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()} | {
        p.name for p in root.iterdir() if p.is_dir()
    }


def after_40_days(root: Path, now: float) -> set[str]:
    kept = tree(root)
    kept -= {p for p in kept if p.startswith(INACTIVE)} | {EMPTY}
    kept -= {p for p in kept if p.startswith((ACTIVE, ORPHAN)) and "/" in p and ",S=" in p}
    kept -= {f"{ACTIVE}/maildirsize"}  # files deleted there; IDLE keeps its maildirsize
    return kept


def test_forty_days_later(tmp_path: Path) -> None:
    now = time.time()
    build_relay(tmp_path, now)
    expected = after_40_days(tmp_path, now)

    mailboxes = expire.list_mailboxes(tmp_path)
    stats = expire.expire_mailboxes(mailboxes, policy(), now + 40 * DAY, remove=True)

    assert tree(tmp_path) == expected
    assert f"{IDLE}/maildirsize" in expected and f"{ACTIVE}/dovecot-uidlist" in expected
    assert (stats.mailboxes, stats.removed_mailboxes) == (5, 2)
    assert (stats.files, stats.removed_files, stats.errors) == (5, 5, 0)


@pytest.mark.parametrize("days_later", [0, 19])
def test_nothing_expires_early(tmp_path: Path, days_later: int) -> None:
    now = time.time()
    build_relay(tmp_path, now)
    (tmp_path / EMPTY).rmdir()
    before = tree(tmp_path)
    stats = expire.expire_mailboxes(
        expire.list_mailboxes(tmp_path), policy(), now + days_later * DAY, remove=True
    )
    assert tree(tmp_path) == before
    assert (stats.removed_mailboxes, stats.removed_files) == (0, 0)


def test_dry_run_deletes_nothing_and_counts_the_same(tmp_path: Path) -> None:
    now = time.time()
    build_relay(tmp_path, now)
    before = tree(tmp_path)
    later = now + 40 * DAY
    dry = expire.expire_mailboxes(expire.list_mailboxes(tmp_path), policy(), later, remove=False)
    assert tree(tmp_path) == before
    real = expire.expire_mailboxes(expire.list_mailboxes(tmp_path), policy(), later, remove=True)
    assert dry == real


def test_maxnum_stops_after_n_mailboxes(tmp_path: Path) -> None:
    build_relay(tmp_path, time.time())
    assert len(expire.list_mailboxes(tmp_path)) == 5
    assert [p.name for p in expire.list_mailboxes(tmp_path, 2)] == sorted([ACTIVE, EMPTY])


def test_missing_mailboxes_dir_is_no_mailboxes(tmp_path: Path) -> None:
    assert expire.list_mailboxes(tmp_path / "nothing") == []


KILLED = "killed001@example.org"  # a creation killed two hours ago
KILLED_NOW = "killed002@example.org"  # the same ten minutes ago: it may still be running
HELD = "killed003@example.org"  # old leftovers, but a creation holds the lock right now
LIVE = "livelong1@example.org"  # an account with old leftovers of writes
LIVE_FRESH = "livefresh@example.org"  # an account with leftovers of this hour


def build_leftovers(root: Path, now: float) -> None:
    for addr, age in [(KILLED, 2 * HOUR), (KILLED_NOW, 600), (HELD, 2 * HOUR)]:
        for name in KILLED_CREATION:
            put(root / addr / name, now - age, 0)
    for addr, age in [(LIVE, 2 * DAY), (LIVE_FRESH, 600)]:
        put(root / addr / "password", now)
        put(root / addr / ENFORCE_E2EE_FILE, now - 3 * DAY, 0)
        for name in (LOCK_FILE, TMP, ".metadata.json.77.123.tmp"):
            put(root / addr / name, now - age, 0)
    (root / LIVE / ".Old.1.2.tmp" / "cur").mkdir(parents=True)  # a folder, not a leftover
    os.utime(root / LIVE / ".Old.1.2.tmp", (now - 2 * DAY, now - 2 * DAY))


def test_leftovers_of_interrupted_writes_on_disk(tmp_path: Path) -> None:
    now = time.time()
    build_leftovers(tmp_path, now)
    before = tree(tmp_path)
    with fsutil.file_lock(tmp_path / HELD / LOCK_FILE, timeout=0):
        expire.expire_mailboxes(expire.list_mailboxes(tmp_path), policy(), now, remove=True)
        assert {p for p in before if p.startswith(HELD)} <= tree(tmp_path)
    gone = (
        {p for p in before if p.startswith(KILLED + "/")}
        | {KILLED}
        | {f"{LIVE}/{name}" for name in (LOCK_FILE, TMP, ".metadata.json.77.123.tmp")}
    )
    assert tree(tmp_path) == before - gone
    assert (tmp_path / LIVE / ".Old.1.2.tmp" / "cur").is_dir()
    # once the creation let go of its lock, its old leftovers go
    expire.expire_mailboxes(expire.list_mailboxes(tmp_path), policy(), now, remove=True)
    assert not (tmp_path / HELD).exists()
    assert (tmp_path / KILLED_NOW / LOCK_FILE).exists()


def test_leftovers_dry_run_counts_what_the_real_run_removes(tmp_path: Path) -> None:
    now = time.time()
    build_leftovers(tmp_path, now)
    (tmp_path / HELD).rename(tmp_path / "killed004@example.org")
    before = tree(tmp_path)
    mailboxes = expire.list_mailboxes(tmp_path)
    dry = expire.expire_mailboxes(mailboxes, policy(), now, remove=False)
    assert tree(tmp_path) == before
    real = expire.expire_mailboxes(mailboxes, policy(), now, remove=True)
    assert dry == real
    assert (real.removed_mailboxes, real.removed_leftovers) == (2, 3)
    assert "3 leftover(s) of interrupted writes" in expire.summary(real, True, 0.1)


# --- command line --------------------------------------------------------------------------

SUMMARY_RE = re.compile(
    r"^(Removed|Would remove) (\d+) out of (\d+) mailboxes and (\d+) out of (\d+) files "
    r"in \d+\.\d\d seconds"
)


def write_ini(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "mailboxes"
    root.mkdir()
    ini = tmp_path / "chatmail.ini"
    ini.write_text(f"[params]\nmail_domain = example.org\nmailboxes_dir = {root}\n")
    return ini, root


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[tuple[str, ...], str]:
    expire.main(argv)
    out, err = capsys.readouterr()
    assert out.count("\n") == 1
    m = SUMMARY_RE.match(out)
    assert m, out
    return m.groups(), err


@pytest.mark.parametrize(
    ("extra", "groups"),
    [
        ([], ("Would remove", "1", "5", "0", "6")),  # today: only the empty directory
        (["--days", "-40"], ("Would remove", "2", "5", "5", "5")),
        (["--days", "-40", "--maxnum", "1"], ("Would remove", "0", "1", "4", "4")),
        (["--days", "-40", "--remove"], ("Removed", "2", "5", "5", "5")),
    ],
)
def test_main_summary(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    groups: tuple[str, ...],
) -> None:
    ini, root = write_ini(tmp_path)
    build_relay(root, time.time())
    before = tree(root)
    got, _ = run_main([str(ini), *extra], capsys)
    assert got == groups
    assert (tree(root) == before) == ("--remove" not in extra)


@pytest.mark.parametrize(
    ("days", "removed_files"),
    [
        ("0", "0"),  # 19 days old: not yet
        ("-2", "1"),  # two days on it is 21 days old
        ("5", "0"),  # evaluated 5 days ago the 22-day message was 17 days old
    ],
)
def test_main_days_shifts_the_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], days: str, removed_files: str
) -> None:
    ini, root = write_ini(tmp_path)
    now = time.time()
    put(root / ACTIVE / "password", now)
    age = 22 if days == "5" else 19
    put(root / ACTIVE / "cur" / f"{int(now - age * DAY)}.M1P1.h,S=10:2,S", now - age * DAY)
    got, _ = run_main([str(ini), "--days", days], capsys)
    assert got[3] == removed_files


def test_main_with_days_never_removes_fresh_leftovers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini, root = write_ini(tmp_path)
    build_leftovers(root, time.time())
    fresh = {p for p in tree(root) if p.startswith((KILLED_NOW, LIVE_FRESH))}
    run_main([str(ini), "--days", "-40", "--remove"], capsys)
    assert fresh <= tree(root)
    assert not (root / KILLED).exists()


def test_main_output_names_no_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ini, root = write_ini(tmp_path)
    build_relay(root, time.time() - 40 * DAY)
    _, err = run_main([str(ini), "-v", "--remove"], capsys)
    logged = caplog.text + err
    assert log_id(ACTIVE) in logged  # the per-mailbox lines are there, under a keyed hash
    for addr in (INACTIVE, ACTIVE, EMPTY, ORPHAN):
        assert addr.split("@")[0] not in logged
        assert addr.split("@")[0] not in capsys.readouterr().out


def test_main_removes_the_handed_out_records_that_are_done_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini, root = write_ini(tmp_path)
    handed = tmp_path / "reg" / "handed"
    handed.mkdir(parents=True)
    ini.write_text(ini.read_text() + f"registration_dir = {tmp_path / 'reg'}\n")
    now = time.time()
    put(root / ACTIVE / "password", now)
    put(handed / ACTIVE, now)  # its account exists: doveauth needs it no more
    put(handed / INACTIVE, now - 31 * DAY)  # nobody logged in with it for a month
    put(handed / EMPTY, now - 29 * DAY)  # may still be used
    outside = tmp_path / "outside"
    put(outside, now - 40 * DAY)
    (handed / ORPHAN).symlink_to(outside)  # nothing /new writes: not touched
    run_main([str(ini)], capsys)
    assert {p.name for p in handed.iterdir()} == {ACTIVE, INACTIVE, EMPTY, ORPHAN}
    expire.main([str(ini), "--remove"])
    out = capsys.readouterr().out
    assert "and 2 handed-out record(s) no longer needed" in out
    assert {p.name for p in handed.iterdir()} == {EMPTY, ORPHAN}
    assert outside.exists()
    for addr in (ACTIVE, INACTIVE):
        assert addr.split("@")[0] not in out


@pytest.mark.parametrize(
    "argv",
    [
        ["{ini}", "--maxnum", "0"],
        ["{ini}", "--days", "soon"],
        ["{ini}", "--frobnicate"],
        ["{tmp}/missing.ini"],
    ],
)
def test_main_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    ini, _ = write_ini(tmp_path)
    with pytest.raises(SystemExit) as exc:
        expire.main([a.format(ini=ini, tmp=tmp_path) for a in argv])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1


def test_main_failing_mailbox_is_counted_and_fails(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ini, root = write_ini(tmp_path)
    build_relay(root, time.time())
    real_scan = expire.scan_mailbox

    def scan(home: Path) -> MailboxFacts:
        if home.name == ACTIVE:
            raise PermissionError(errno.EACCES, "Permission denied", str(home))
        return real_scan(home)

    monkeypatch.setattr(expire, "scan_mailbox", scan)
    with pytest.raises(SystemExit) as exc:
        expire.main([str(ini), "--remove"])
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert out.startswith("Removed 1 out of 5 mailboxes") and "1 mailbox(es) had errors" in out
    assert "Permission denied" in caplog.text
    assert "active123" not in out + err + caplog.text
    assert (root / ACTIVE / "password").exists()  # the others were still processed
    assert not (root / EMPTY).exists()


def test_a_blocked_account_is_never_removed_as_inactive() -> None:
    # it cannot log in, so it always looks inactive; removing it would free its address
    blocked = MailboxFacts(NOW - 91 * DAY, False, (msg("cur", 21),), (), blocked=True)
    verdict = decide(blocked, policy(), NOW)
    assert not verdict.remove_mailbox
    assert verdict.remove_files == (msg("cur", 21).relpath,)  # its old mail still expires


def test_the_blocked_marker_is_read_from_disk(tmp_path: Path) -> None:
    put(tmp_path / INACTIVE / "password", NOW - 91 * DAY)
    put(tmp_path / INACTIVE / "blocked", NOW - 91 * DAY, 0)
    assert expire.scan_mailbox(tmp_path / INACTIVE).blocked
    stats = expire.expire_mailboxes(expire.list_mailboxes(tmp_path), policy(), NOW, remove=True)
    assert stats.removed_mailboxes == 0 and (tmp_path / INACTIVE / "password").exists()
