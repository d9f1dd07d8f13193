"""The fault run's accounting (what counts as lost or duplicated, and why) and its readers of
the relay's maildirs and account files."""

from __future__ import annotations

import asyncio
import ctypes
import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatmaild.pwhash import hash_password
from cmdeploy.bench import faults, remote_helper
from cmdeploy.bench.faults import Attempt, Letter
from cmdeploy.bench.protocol import IMAPClient

OK, LOST_REPLY, BUSY = Attempt(250, True), Attempt(0, True), Attempt(451, False)


def letter(msgid: str, *attempts: Attempt) -> Letter:
    return Letter(msgid, "r@relay1.test", "relay1>relay1", list(attempts))


def test_an_accepted_message_missing_from_the_maildir_is_lost() -> None:
    letters = [letter("a", OK), letter("b", BUSY, OK), letter("c", OK)]
    v = faults.verdict(letters, {"a": 1, "b": 1})
    assert (v["accepted"], v["delivered"], v["lost"], v["lost_examples"]) == (3, 2, 1, ["c"])
    assert v["resent"] == 1 and v["replies"] == {"250": 3, "451": 1}


def test_a_copy_after_a_lost_reply_is_explained_and_any_other_is_not() -> None:
    resent = letter("a", LOST_REPLY, OK)  # the relay took the first try; no reply came
    unexplained = letter("b", OK)  # one try, two copies: the relay itself delivered twice
    v = faults.verdict([resent, unexplained], {"a": 2, "b": 2})
    assert v["duplicated"] == 2 and v["lost"] == 0
    assert v["duplicate_causes"] == {
        "resent after a lost reply to DATA": 1,
        "unexplained: delivered more often than the client could have caused": 1,
    }
    # a refusal before DATA cannot have left a copy behind
    assert faults.duplicate_cause(letter("c", BUSY, OK), 2).startswith("unexplained")
    # a 4xx after DATA can: the filter died after Postfix had queued the message
    deferred_after_data = Attempt(451, True)
    assert faults.duplicate_cause(letter("d", deferred_after_data, OK), 2) == (
        faults.DEFERRED_BUT_QUEUED
    )
    # a copy the client cannot have caused: Postfix's own second delivery, where the fault
    # can cut Dovecot's LMTP answer after the save; anywhere else it stays unexplained
    assert faults.duplicate_cause(letter("g", OK), 2, "dovecot") == faults.REDELIVERED
    assert faults.duplicate_cause(letter("g", OK), 2, "reboot") == faults.REDELIVERED
    assert faults.duplicate_cause(letter("g", OK), 2, "doveauth") == faults.UNEXPLAINED
    # two extra copies need two such attempts
    assert faults.duplicate_cause(letter("e", LOST_REPLY, OK), 3) == faults.UNEXPLAINED
    v = faults.verdict([letter("f", deferred_after_data, OK)], {"f": 2})
    assert v["duplicate_examples"] == [
        {"copies": 2, "stream": "relay1>relay1", "attempts": [[451, True], [250, True]]}
    ]


def test_what_the_relay_never_accepted_is_given_up_or_refused_not_lost() -> None:
    letters = [letter("a", BUSY, BUSY), letter("b", Attempt(554, True)), letter("c", LOST_REPLY)]
    v = faults.verdict(letters, {"c": 1})
    assert (v["accepted"], v["lost"], v["refused"], v["given_up"]) == (0, 0, 1, 2)
    assert v["delivered_without_250"] == 1  # the relay took "c"; its reply was lost


def test_every_fault_has_a_unique_name_and_unknown_names_are_refused() -> None:
    names = [f.name for f in faults.FAULTS]
    assert len(set(names)) == len(names) >= 9
    dovecot = faults.fault_named("dovecot")
    assert dovecot.unit == "dovecot.service" and "kill -KILL" in dovecot.command
    with pytest.raises(ValueError, match="known: filtermail"):
        faults.fault_named("nginx")


def zstd_compress(data: bytes) -> bytes:
    lib = ctypes.CDLL("libzstd.so.1")
    lib.ZSTD_compressBound.restype = ctypes.c_size_t
    lib.ZSTD_compress.restype = ctypes.c_size_t
    lib.ZSTD_compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
    lib.ZSTD_compress.argtypes += [ctypes.c_size_t, ctypes.c_int]
    bound = lib.ZSTD_compressBound(ctypes.c_size_t(len(data)))
    out = ctypes.create_string_buffer(bound)
    size = lib.ZSTD_compress(out, bound, data, len(data), 3)
    return out.raw[:size]


def maildir_file(path: Path, msgid: str, compressed: str = "", body: bytes = b"") -> None:
    data = f"From: <a@x>\r\nMessage-ID: <{msgid}>\r\n\r\nbody Message-ID: <fake>\r\n".encode()
    data += body
    path.parent.mkdir(parents=True, exist_ok=True)
    compress = {"": bytes, "gz": gzip.compress, "zstd": zstd_compress}[compressed]
    path.write_bytes(compress(data))


def run_helper(monkeypatch: pytest.MonkeyPatch, names: list[str], action, *args):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(names)))
    return action(*args)


def test_message_ids_are_read_from_compressed_and_plain_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = tmp_path / "r@relay1.test"
    maildir_file(box / "new" / "1", "one@bench", "zstd")
    maildir_file(box / "cur" / "2:2,S", "one@bench")  # a copy, plain
    maildir_file(box / "new" / "3", "two@bench", "gz")  # stored by an earlier relay
    maildir_file(box / "new" / "4", "four@bench", "zstd", body=os.urandom(300_000).hex().encode())
    (box / "new" / "5").write_bytes(b"\x1f\x8b broken")
    (box / "new" / "6").write_bytes(remote_helper.ZSTD_MAGIC + b" broken")
    maildir_file(tmp_path / "other@relay1.test" / "new" / "7", "three@bench", "zstd")
    found = run_helper(monkeypatch, ["r@relay1.test"], remote_helper.message_ids, str(tmp_path))
    assert found == {"ids": {"one@bench": 2, "two@bench": 1, "four@bench": 1}, "unreadable": 2}


def test_only_the_head_of_a_large_zstd_message_is_unpacked() -> None:
    data = b"Message-ID: <x@bench>\r\n\r\n" + os.urandom(100_000).hex().encode()
    head = remote_helper.zstd_head(zstd_compress(data))
    assert head == data[: remote_helper.HEAD_BYTES]
    assert remote_helper.zstd_head(zstd_compress(b"short")) == b"short"
    truncated = zstd_compress(data)[:2000]
    assert data.startswith(remote_helper.zstd_head(truncated))


def test_a_torn_password_file_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = hash_password("a-long-password") + "\n"
    for name, text in (("a@x", whole), ("b@x", whole[:40]), ("c@x", "")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "password").write_text(text)
    names = ["a@x", "b@x", "c@x", "missing@x"]
    found = run_helper(monkeypatch, names, remote_helper.accounts_intact, str(tmp_path))
    assert found == {"checked": 4, "intact": 1, "torn": 3}


def test_the_table_names_each_fault_and_its_duplicates() -> None:
    letters = [letter("a", LOST_REPLY, OK), letter("b", OK)]
    phase = {
        "fault": "dovecot",
        "verdict": faults.verdict(letters, {"a": 2, "b": 1}),
        "at_phase_end": faults.verdict(letters, {"a": 2}),  # b came with a retry
        "accounts": {"checked": 60, "intact": 60},
    }
    text = faults.table([phase])
    assert "dovecot" in text and "60/60 intact" in text
    row = text.splitlines()[1].split()
    assert row[:7] == ["dovecot", "2", "2", "1", "1", "0", "1"]  # accepted ... lost, resent
    assert "duplicates: 1 resent after a lost reply to DATA" in text


def full_disk_hit(**changes: object) -> dict[str, object]:
    probe = {"free": 0, "existing": {"ok": True, "read_bytes": 2400}, "created": False}
    hit: dict[str, object] = {"before": {"created": True}, "while_full": [probe, dict(probe)]}
    hit.update(changes)
    return hit


def test_a_full_disk_where_users_read_and_newcomers_are_refused_has_no_findings() -> None:
    assert faults.disk_full_findings(full_disk_hit()) == []
    phase = {"fault": "disk-full", "verdict": faults.verdict([], {}), "hit": full_disk_hit()}
    assert "disk full: users read their mail, new accounts were refused" in faults.table([phase])


@pytest.mark.parametrize(
    ("probe", "finding"),
    [
        ({"free": 4096}, "the disk was not full at a probe: 4096 bytes free"),
        ({"existing": {"ok": False, "error": "IMAP LOGIN: NO"}}, "could not read their mail"),
        ({"created": True}, "a new account was created while the disk was full"),
    ],
)
def test_each_broken_promise_of_a_full_disk_is_named(
    probe: dict[str, object], finding: str
) -> None:
    good = {"free": 0, "existing": {"ok": True}, "created": False}
    hit = full_disk_hit(while_full=[good, {**good, **probe}])
    findings = faults.disk_full_findings(hit)
    assert len(findings) == 1 and finding in findings[0]
    phase = {"fault": "disk-full", "verdict": faults.verdict([], {}), "hit": hit}
    assert finding in faults.table([phase])


def test_full_disk_probes_prove_nothing_without_a_successful_control() -> None:
    # a relay refusing every creation anyway would look like one that refuses at a full disk
    assert faults.disk_full_findings(full_disk_hit(before={"created": False})) == [
        "the control creation before the fill failed: the probes prove nothing"
    ]
    assert faults.disk_full_findings(full_disk_hit(while_full=[])) == [
        "no probe ran while the disk was full"
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_the_ballast_fills_a_real_tmpfs_to_the_last_byte_and_frees_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    try:
        (disk / "mail").mkdir()
        (disk / "mail" / "kept").write_bytes(b"x" * 100_000)
        monkeypatch.setattr(remote_helper, "SMALL_MAIL", str(disk / "mail"))
        monkeypatch.setattr(remote_helper, "BALLAST", str(disk / "ballast"))
        filled = remote_helper.disk_fill()
        assert filled["free"] == 0 and filled["ballast"] > 2_000_000
        with pytest.raises(OSError, match="No space left"):
            (disk / "mail" / "new-file").write_bytes(b"y" * 4096)
        assert remote_helper.disk_fill()["free"] == 0  # again: idempotent
        assert remote_helper.disk_free()["free"] > 2_000_000
        assert not (disk / "ballast").exists() and (disk / "mail" / "kept").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


class _Writer:
    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data


def test_a_message_text_that_looks_like_the_tagged_reply_is_read_as_text() -> None:
    async def fetch() -> tuple[int, bytes]:
        text = b"b1 OK this line is inside the message\r\n"
        reader = asyncio.StreamReader()
        reader.feed_data(b"* 1 FETCH (BODY[] {%d}\r\n" % len(text) + text + b")\r\n")
        reader.feed_data(b"b1 OK Fetch completed.\r\n")
        writer = _Writer()
        client = IMAPClient(reader, writer)  # type: ignore[arg-type]
        size = await client.read_message(1)
        return size, writer.sent

    size, sent = asyncio.run(fetch())
    assert size == len(b"b1 OK this line is inside the message\r\n")
    assert sent == b"b1 FETCH 1 (BODY.PEEK[])\r\n"
