"""`cmdeploy backup`, `restore` and `migrate`: the relay's chatmail-backup over SSH, with SSH
faked.

Each fake "relay" runs the real chatmail-backup of this checkout on a relay's files in
tmp_path (without touching services), so the archive really streams through pipes.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shlex
import stat
import sys
import tarfile
from datetime import datetime
from pathlib import Path
from typing import TextIO

import pytest

from chatmaild.accounts import Mailboxes
from chatmaild.backupformat import MANIFEST
from chatmaild.config import Config
from chatmaild.registration import InviteStore
from cmdeploy import cli, migrate, remote
from cmdeploy.chatmaild import services
from cmdeploy.dns import Record
from cmdeploy.layout import Layout
from cmdeploy.migrate import (
    QUEUE,
    RESUME_MAIL,
    STOP_LOGINS,
    STOP_TAKING_MAIL,
    Hosts,
    Migration,
    MigrationError,
)

ALICE = "alice0001@chat.example.org"
RELAY_BIN = "/usr/local/lib/chatmaild/venv/bin/chatmail-backup"
RELAY_INI = "/usr/local/lib/chatmaild/chatmail.ini"
OLD, NEW = "old.example.net", "new.example.net"


class FakeRelay:
    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.mailboxes = root / "mailboxes"
        self.mailboxes.mkdir()
        self.registration = root / "registration"
        InviteStore(self.registration).make_dirs()
        self.dkim = root / "dkimkeys"
        self.dkim.mkdir()
        (self.dkim / "opendkim.private").write_bytes(root.name.encode())
        self.turn = root / "turn-secret"
        # as the deploy makes it (hex), and telling the two relays apart
        self.turn.write_text(root.name.encode().hex().ljust(64, "0")[:64] + "\n")
        self.ini = root / "relay.ini"
        self.ini.write_text(
            f"[params]\nmail_domain = chat.example.org\nmailboxes_dir = {self.mailboxes}\n"
            f"registration_dir = {self.registration}\nturn_secret_file = {self.turn}\n"
        )

    def argv(self, script: str) -> list[str]:
        argv = shlex.split(script)
        assert argv[:2] == [RELAY_BIN, RELAY_INI]
        assert argv[3:5] == ["--dkim-dir", "/etc/dkimkeys"]
        code = "import sys; from chatmaild.backupcmd import main; sys.exit(main())"
        local = [sys.executable, "-c", code, str(self.ini), argv[2], "--dkim-dir", str(self.dkim)]
        if argv[2] == "restore":
            local += ["--no-services"]
        return local + argv[5:]


class FakeSsh:
    def __init__(self, tmp_path: Path) -> None:
        self.relays = {
            "chat.example.org": FakeRelay(tmp_path / "relay"),
            OLD: FakeRelay(tmp_path / "old"),
            NEW: FakeRelay(tmp_path / "new"),
        }
        self.scripts: list[tuple[str, str]] = []

    def command(self, host: str, script: str = "python3 -") -> list[str]:
        self.scripts.append((host, script))
        if not script.startswith(RELAY_BIN):
            return ["true"]  # migrate's systemctl lines: recorded, not run
        return self.relays[host].argv(script)


@pytest.fixture
def ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSsh:
    fake = FakeSsh(tmp_path)
    monkeypatch.setattr(remote, "command", fake.command)
    Mailboxes(fake.relays["chat.example.org"].mailboxes).create(ALICE, "pass-word-12")
    Mailboxes(fake.relays[OLD].mailboxes).create(ALICE, "pass-word-12")
    return fake


def test_backup_then_restore_over_ssh(
    ssh: FakeSsh, ini: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "relay.tar"
    assert cli.main(["backup", "--config", ini, "--output", str(archive)]) == 0
    assert ssh.scripts == [
        ("chat.example.org", f"{RELAY_BIN} {RELAY_INI} create --dkim-dir /etc/dkimkeys")
    ]
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {archive}: ") and out.endswith("checksums verified\n")
    # it holds password hashes and the DKIM key: the operator's alone
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert not archive.with_name("relay.tar.partial").exists()
    with tarfile.open(archive) as tar:
        assert tar.getnames()[-1] == MANIFEST

    assert cli.main(["restore", str(archive), "--config", ini, "--ssh-host", NEW]) == 0
    assert ssh.scripts[-1] == (NEW, f"{RELAY_BIN} {RELAY_INI} restore --dkim-dir /etc/dkimkeys")
    assert "accounts: 1 added, 0 replaced" in capsys.readouterr().out
    assert Mailboxes(ssh.relays[NEW].mailboxes).password_hash(ALICE) is not None
    assert ssh.relays[NEW].turn.read_text() == ssh.relays["chat.example.org"].turn.read_text()
    assert cli.main(["restore", str(archive), "--config", ini, "--ssh-host", NEW]) == 0
    assert capsys.readouterr().out.startswith("restore: nothing changed")


def test_backup_never_overwrites_a_file(ssh: FakeSsh, ini: str, tmp_path: Path) -> None:
    archive = tmp_path / "relay.tar"
    archive.write_bytes(b"an older backup")
    assert cli.main(["backup", "--config", ini, "--output", str(archive)]) == 2
    assert archive.read_bytes() == b"an older backup" and ssh.scripts == []


def test_a_failed_backup_leaves_no_file(
    ini: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the relay's tool stops halfway: what came through is no backup
    monkeypatch.setattr(
        remote, "command", lambda host, script="": ["sh", "-c", "printf 'half a tar'; exit 1"]
    )
    archive = tmp_path / "relay.tar"
    assert cli.main(["backup", "--config", ini, "--output", str(archive)]) == 2
    assert "no backup written" in capsys.readouterr().err
    assert list(tmp_path.glob("relay.tar*")) == []


def test_a_relay_without_the_tool(
    ini: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(remote, "command", lambda host, script="": ["sh", "-c", "exit 127"])
    assert cli.main(["backup", "--config", ini, "--output", str(tmp_path / "x.tar")]) == 2
    assert "chatmail-backup is not installed" in capsys.readouterr().err


def test_restore_checks_the_archive_before_it_connects(
    ssh: FakeSsh, ini: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "relay.tar"
    assert cli.main(["backup", "--config", ini, "--output", str(archive)]) == 0
    ssh.scripts.clear()
    with tarfile.open(archive) as tar:
        at = tar.getmember("turn-secret").offset_data
    data = bytearray(archive.read_bytes())
    data[at] ^= 1  # the TURN secret's first byte: its manifest line has the old sum
    tampered = tmp_path / "tampered.tar"
    tampered.write_bytes(bytes(data))
    assert cli.main(["restore", str(tampered), "--config", ini]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cmdeploy: {tampered}: MANIFEST.jsonl: member ") and "@" not in err
    assert ssh.scripts == []


def test_an_archive_of_another_domain_needs_the_flag(
    ssh: FakeSsh, ini: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "relay.tar"
    assert cli.main(["backup", "--config", ini, "--output", str(archive)]) == 0
    other = tmp_path / "other.ini"
    assert cli.main(["init", "other.example.org", "--config", str(other)]) == 0
    capsys.readouterr()
    assert cli.main(["restore", str(archive), "--config", str(other), "--ssh-host", NEW]) == 2
    assert "the archive is of chat.example.org" in capsys.readouterr().err
    args = ["restore", str(archive), "--config", str(other), "--ssh-host", NEW]
    cli.main([*args, "--other-domain", "--replace-accounts"])
    flags = "restore --dkim-dir /etc/dkimkeys --other-domain --replace-accounts"
    assert ssh.scripts[-1][1].endswith(flags)


# --- migrate --------------------------------------------------------------------------------


def record(name: str, rtype: str, value: str) -> Record:
    return Record(name, rtype, value, True)


class FakeHosts:
    """Records every call; `fail` names a step that raises."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail
        self.queue: list[str] = []  # what `postqueue -j` prints, poll by poll

    def step(self, *call: str) -> None:
        self.calls.append(call)
        if call[0] == self.fail:
            raise RuntimeError(f"{call[0]} broke")

    def hosts(self) -> Hosts:
        ips = {OLD: "192.0.2.1", NEW: "192.0.2.2"}

        def records(host: str, now: datetime) -> list[Record]:
            self.step("records", host)
            d = "chat.example.org."
            return [record(d, "A", ips[host]), record(d, "MX", f"10 {d}")]

        def backup(host: str, path: Path) -> int:
            self.step("backup", host, path.name)
            return 1_000_000

        def restore(host: str, path: Path) -> str:
            self.step("restore", host, path.name)
            return "restore: 3 files added\n"

        def run(host: str, script: str) -> str:
            self.step("run", host, script)
            return self.queue.pop(0) if script == QUEUE and self.queue else ""

        return Hosts(
            records=records,
            deploy=lambda host: self.step("deploy", host),
            run=run,
            backup=backup,
            restore=restore,
        )


def migration(fake: FakeHosts, archive: Path, out: TextIO | None = None) -> Migration:
    """A migration of chat.example.org whose clock moves only when it sleeps."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return Migration(
        OLD,
        NEW,
        archive,
        fake.hosts(),
        out or io.StringIO(),
        "chat.example.org",
        clock=lambda: now[0],
        sleep=sleep,
    )


def queue_line(*recipients: str, queue: str = "deferred") -> str:
    entry = {"queue_name": queue, "recipients": [{"address": r} for r in recipients]}
    return json.dumps(entry) + "\n"


def test_migrate_stops_mail_before_the_backup_and_names_the_dns_changes(tmp_path: Path) -> None:
    fake = FakeHosts()
    out = io.StringIO()
    changes = migration(fake, tmp_path / "a.tar", out).run()
    assert fake.calls == [
        ("records", OLD),
        ("records", NEW),
        ("deploy", NEW),
        ("run", OLD, STOP_TAKING_MAIL),
        ("run", OLD, QUEUE),
        ("run", OLD, STOP_LOGINS),
        ("backup", OLD, "a.tar"),
        ("restore", NEW, "a.tar"),
        ("records", NEW),
    ]
    assert changes == ["chat.example.org. A: 192.0.2.1 -> 192.0.2.2"]
    assert "migrate 6/6" in out.getvalue()


def test_mail_accepted_for_local_users_is_delivered_before_the_backup(tmp_path: Path) -> None:
    fake = FakeHosts()
    local = queue_line("bob0001@chat.example.org")
    fake.queue = [
        local + queue_line("carol@peer.example"),
        queue_line("CAROL@PEER.EXAMPLE", "Alice0001@Chat.Example.Org", queue="active"),
        queue_line("carol@peer.example"),  # only mail for other relays left: it stays
    ]
    out = io.StringIO()
    migration(fake, tmp_path / "a.tar", out).run()
    runs = [call[2] for call in fake.calls if call[0] == "run"]
    assert runs == [STOP_TAKING_MAIL, QUEUE, QUEUE, QUEUE, STOP_LOGINS]
    assert fake.calls.index(("run", OLD, STOP_LOGINS)) < fake.calls.index(("backup", OLD, "a.tar"))
    assert "stay in" not in out.getvalue()


def test_mail_that_does_not_drain_is_reported_and_the_move_goes_on(tmp_path: Path) -> None:
    fake = FakeHosts()
    stuck = queue_line("bob0001@chat.example.org") + queue_line("al@chat.example.org", queue="hold")
    fake.queue = [stuck] * 1000
    out = io.StringIO()
    migration(fake, tmp_path / "a.tar", out).run()
    polls = [call for call in fake.calls if call[2:] == (QUEUE,)]
    assert len(polls) == int(migrate.DRAIN_TIMEOUT / migrate.DRAIN_POLL) + 1
    assert f"2 message(s) for the relay's users stay in {OLD}'s queue" in out.getvalue()
    assert "bob0001" not in out.getvalue()
    assert ("backup", OLD, "a.tar") in fake.calls


@pytest.mark.parametrize(
    "output",
    [
        "",
        "not json\n",
        "[1, 2]\n",
        '{"recipients": 5}\n',
        '{"recipients": [{"address": "x@chat.example.org.evil"}]}\n',
        '{"recipients": [{"address": "x@evilchat.example.org"}]}\n',
    ],
)
def test_only_mail_for_the_relays_own_domain_counts(output: str) -> None:
    assert migrate.queued_for(output, "chat.example.org") == 0


def test_a_queue_that_cannot_be_read_is_said_and_the_move_goes_on(tmp_path: Path) -> None:
    fake = FakeHosts()
    fake.queue = [migrate.UNREADABLE + "\n"] * 1000  # postqueue -j hung: `timeout` ended it
    out = io.StringIO()
    migration(fake, tmp_path / "a.tar", out).run()
    assert f"{OLD}'s queue could not be read" in out.getvalue()
    assert ("backup", OLD, "a.tar") in fake.calls


def test_a_failure_after_mail_stopped_says_how_to_resume(tmp_path: Path) -> None:
    fake = FakeHosts(fail="restore")
    with pytest.raises(MigrationError) as failed:
        migration(fake, tmp_path / "a.tar").run()
    assert "restore broke" in str(failed.value) and RESUME_MAIL in str(failed.value)


def test_a_stop_that_failed_half_way_says_how_to_resume(tmp_path: Path) -> None:
    # `systemctl stop` may have stopped some units before it failed or timed out
    fake = FakeHosts(fail="run")
    with pytest.raises(MigrationError) as failed:
        migration(fake, tmp_path / "a.tar").run()
    assert "run broke" in str(failed.value) and RESUME_MAIL in str(failed.value)


def test_an_interrupted_migration_says_how_to_resume(tmp_path: Path) -> None:
    fake = FakeHosts()
    hosts = fake.hosts()

    def interrupted(host: str, path: Path) -> int:
        raise KeyboardInterrupt

    hosts.backup = interrupted
    with pytest.raises(MigrationError) as failed:
        Migration(OLD, NEW, tmp_path / "a.tar", hosts, io.StringIO(), "chat.example.org").run()
    assert "KeyboardInterrupt" in str(failed.value) and RESUME_MAIL in str(failed.value)


def test_an_existing_archive_stops_the_migration_before_anything(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(b"kept")
    fake = FakeHosts()
    with pytest.raises(MigrationError, match="exists already"):
        migration(fake, tmp_path / "a.tar").run()
    assert fake.calls == [] and (tmp_path / "a.tar").read_bytes() == b"kept"


def test_a_failed_deploy_leaves_the_old_relay_running(tmp_path: Path) -> None:
    fake = FakeHosts(fail="deploy")
    with pytest.raises(RuntimeError):
        migration(fake, tmp_path / "a.tar").run()
    assert ("run", OLD, STOP_TAKING_MAIL) not in fake.calls


def test_dns_changes_list_only_what_differs() -> None:
    d = "chat.example.org."
    old = [record(d, "A", "192.0.2.1"), record(d, "MX", f"10 {d}")]
    new = [record(d, "A", "192.0.2.2"), record(d, "AAAA", "2001:db8::2"), old[1]]
    assert migrate.dns_changes(old, new) == [
        f"{d} A: 192.0.2.1 -> 192.0.2.2",
        f"{d} AAAA: (none) -> 2001:db8::2",
    ]
    assert migrate.dns_changes(new, old)[-1] == f"{d} AAAA: 2001:db8::2 -> (remove)"


def test_migrate_cli_asks_first_and_refuses_its_own_host(
    ini: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeHosts()
    monkeypatch.setattr(cli, "migration_hosts", lambda args, config: fake.hosts())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    assert cli.main(["migrate", "--config", ini, "--to", NEW, "--ssh-host", OLD]) == 2
    assert "--yes" in capsys.readouterr().err and fake.calls == []
    assert cli.main(["migrate", "--config", ini, "--to", OLD, "--ssh-host", OLD, "--yes"]) == 2
    assert "--to names the relay's own host" in capsys.readouterr().err


def test_migrate_moves_the_accounts_through_the_real_backup_and_restore(
    ssh: FakeSsh,
    ini: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cmdeploy import run

    deployed: list[str] = []

    def deploy(config: object, ini: Path, host: str, **options: object) -> int:
        assert options == {"dns_check": False}  # DNS still names the old host
        deployed.append(host)
        return 0

    monkeypatch.setattr(run, "run_deploy", deploy)
    states = {
        OLD: remote.RelayState(["192.0.2.1"], [], "", None, {}),
        NEW: remote.RelayState(["192.0.2.2"], [], "", None, {}),
    }
    monkeypatch.setattr(cli, "read_state", lambda layout, host: states[host])
    archive = tmp_path / "moved.tar"
    argv = ["migrate", "--config", ini, "--ssh-host", OLD, "--to", NEW, "--yes"]
    assert cli.main([*argv, "--output", str(archive)]) == 0
    out = capsys.readouterr().out
    assert deployed == [NEW] and (OLD, STOP_TAKING_MAIL) in ssh.scripts
    assert Mailboxes(ssh.relays[NEW].mailboxes).password_hash(ALICE) == Mailboxes(
        ssh.relays[OLD].mailboxes
    ).password_hash(ALICE)
    assert "chat.example.org. A: 192.0.2.1 -> 192.0.2.2" in out
    assert archive.exists()


def test_a_relay_that_refuses_early_ends_the_upload(
    ssh: FakeSsh, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ini = str(tmp_path / "chatmail.ini")
    assert cli.main(["init", "chat.example.org", "--config", ini]) == 0
    home = ssh.relays["chat.example.org"].mailboxes / ALICE
    (home / "cur").mkdir()
    (home / "cur" / "1700000000.M1P1.relay:2,S").write_bytes(os.urandom(4 << 20))
    archive = tmp_path / "relay.tar"
    assert cli.main(["backup", "--config", ini, "--output", str(archive)]) == 0
    # the relay stops reading at once: another restore holds its lock
    fd = os.open(ssh.relays[NEW].mailboxes, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert cli.main(["restore", str(archive), "--config", ini, "--ssh-host", NEW]) == 1
    finally:
        os.close(fd)
    assert "another restore is running on this relay" in capfd.readouterr().err


def test_taking_no_mail_stops_the_gates_sockets_too() -> None:
    """A connection to a socket systemd holds starts its service again: stopping the outgoing
    gate alone would let the next submission start it (doc/milter.md §3)."""
    stopped = STOP_TAKING_MAIL.split("systemctl stop ", 1)[1].split(" &&")[0].split()
    assert {"filtermail.service", "filtermail-incoming.service"} <= set(stopped)
    layout = Layout(Config.from_params({"mail_domain": "chat.example.org"}))
    sockets = [s.socket for s in services(layout) if f"{s.unit}.service" in stopped]
    assert sockets and all(socket is None or socket in stopped for socket in sockets)
    assert "filtermail.socket" in stopped
    # and resuming starts what taking no mail stopped
    assert all(unit in RESUME_MAIL.split() for unit in stopped)
