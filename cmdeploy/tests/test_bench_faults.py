"""The fault run's accounting (what counts as lost or duplicated, and why) and its readers of
the relay's maildirs and account files."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatmaild.pwhash import hash_password
from chatmaild.reinject import AFTER_END_OF_DATA
from cmdeploy.bench import command, faults, remote_helper
from cmdeploy.bench.faults import Attempt, Letter
from cmdeploy.bench.hosts import BenchError
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


def journal_counts(saved: int = 0, acknowledged: int = 0, **kw: int) -> dict[str, int]:
    counts = {"saved": saved, "acknowledged": acknowledged, "dropped": 0}
    return {**counts, "sent_unsure": 0, "queued_unsure": 0, **kw}


def test_a_copy_the_client_did_not_cause_is_explained_only_by_the_relays_journals() -> None:
    def once(msgid: str, stream: str) -> Letter:
        return Letter(msgid, "r@x", stream, [OK])

    cross = [once("a", "relay2>relay1"), once("b", "relay2>relay1")]
    two_copies_each = {"a": 2, "b": 2}
    # relay2's transport lost relay1's answer after sending one message whole: one copy of
    # that stream is explained, a second is not
    sender_unsure = {"relay1": journal_counts(4, 4), "relay2": journal_counts(sent_unsure=1)}
    v = faults.verdict(cross, two_copies_each, "x", sender_unsure)
    assert v["duplicate_causes"] == {faults.RELAYED_AGAIN: 1, faults.UNEXPLAINED: 1}
    # relay1's filtermail lost its own Postfix's reply after DATA, twice: both explained
    receiver_unsure = {"relay1": journal_counts(4, 4, queued_unsure=2), "relay2": journal_counts()}
    v = faults.verdict(cross, two_copies_each, "x", receiver_unsure)
    assert v["duplicate_causes"] == {faults.RELAYED_AGAIN: 2}
    # the receiver's doubt says nothing about mail that stayed on the sending relay, nor the
    # sender's about another relay's mail
    v = faults.verdict([once("a", "relay1>relay1")], {"a": 2}, "x", receiver_unsure)
    assert v["duplicate_causes"] == {faults.UNEXPLAINED: 1}
    relay1_sent_unsure = {"relay1": journal_counts(4, 4, sent_unsure=5), "relay2": journal_counts()}
    v = faults.verdict(cross, two_copies_each, "x", relay1_sent_unsure)
    assert v["duplicate_causes"] == {faults.UNEXPLAINED: 2}
    # Dovecot saved one copy more than Postfix saw acknowledged: Postfix delivered it again,
    # whatever the fault, on the relay that stored it
    local = [once("a", "relay1>relay1"), once("b", "relay1>relay1")]
    cut = {"relay1": journal_counts(saved=5, acknowledged=4), "relay2": journal_counts()}
    v = faults.verdict(local, two_copies_each, "x", cut)
    assert v["duplicate_causes"] == {faults.REDELIVERED: 1, faults.UNEXPLAINED: 1}
    # an unacknowledged save is a certain copy, a lost answer between relays a possible one:
    # where both could explain a copy, the certain one does
    both = {"relay1": journal_counts(5, 4, queued_unsure=3), "relay2": journal_counts()}
    v = faults.verdict(cross, two_copies_each, "x", both)
    assert v["duplicate_causes"] == {faults.REDELIVERED: 1, faults.RELAYED_AGAIN: 1}
    # a journal that lost lines on the way, or holds fewer saves than the maildirs hold
    # copies, proves nothing
    dropped = {"relay1": journal_counts(6, 4, dropped=120), "relay2": journal_counts()}
    short = {"relay1": journal_counts(saved=3, acknowledged=1), "relay2": journal_counts()}
    for evidence in (dropped, short):
        v = faults.verdict(local, two_copies_each, "x", evidence)
        assert v["duplicate_causes"] == {faults.UNEXPLAINED: 2}


def test_the_journal_counts_come_from_the_relays_own_lines() -> None:
    lines = [
        [1.0, "dovecot", "lmtp<Xy>: msgid=<…>: saved mail to INBOX"],
        [1.0, "dovecot", "lmtp<Xz>: msgid=<…>: saved mail to INBOX"],
        [
            1.1,
            "postfix/lmtp",
            "4ZQ: to=<…@relay1.test>, relay=relay1.test[private/dovecot-lmtp]"
            ", delay=0.02, status=sent (250 2.0.0 <…@relay1.test> Xy Saved)",
        ],
        [
            1.2,
            "postfix/transport/lmtp",
            "4ZR: to=<…@relay2.test>, status=deferred (lost "
            "connection with relay1.test[private/transport] while sending end of data -- message "
            "may be sent more than once)",
        ],
        [
            1.3,
            "postfix/transport/lmtp",
            "4ZS: to=<…@relay2.test>, status=deferred (host IP[IP] "
            "said: 451 4.3.0 Could not hand the message on (in reply to end of DATA command))",
        ],
        [1.4, "filtermail-incoming.service", f"{AFTER_END_OF_DATA}: ConnectionResetError"],
        [1.5, "filtermail-incoming.service", "re-injection failed: ConnectionRefusedError"],
        # the same words from another source count for nothing
        [1.6, "postfix/qmgr", "4ZQ: status=sent saved mail to"],
    ]
    assert remote_helper.count_hand_overs(lines) == {
        "saved": 2,
        "acknowledged": 1,
        "sent_unsure": 1,
        "queued_unsure": 1,
    }
    for line, n in (
        ("Suppressed 1530 messages from chatmail-postlog.service", 1530),
        ("chatmail-postlog: dropped 140 line(s): the journal did not take them", 140),
    ):
        found = remote_helper.DROPPED.match(line)
        assert found is not None and int(found.group(1)) == n
    assert remote_helper.DROPPED.match("chatmail-postlog: scrubbing Postfix's lines") is None


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


def test_a_run_that_stops_half_way_still_writes_what_it_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class StopsAtTheSecondPhase:
        def __init__(self, *args: object) -> None:
            self.doc: dict[str, object] = {"faults": {"phases": []}}

        def fault_run(self, names: list[str], per_fault: int) -> dict[str, object]:
            self.doc["faults"]["phases"].append({"fault": names[0]})  # type: ignore[index]
            raise BenchError("relay1 did not come back from its reboot")

    monkeypatch.setattr(command, "Bench", StopsAtTheSecondPhase)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "faults.json"
    args = parser.parse_args(["--faults", "dovecot,reboot", "--json", str(out)])
    with pytest.raises(BenchError, match="did not come back"):
        command.run(args)
    doc = json.loads(out.read_text())
    assert doc["faults"]["phases"] == [{"fault": "dovecot"}]
    assert doc["stopped"] == "relay1 did not come back from its reboot"
