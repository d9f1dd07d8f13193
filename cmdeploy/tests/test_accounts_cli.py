"""`cmdeploy accounts`, `registration` and `invite`: the relay's chatmail-accounts over SSH,
with SSH faked.

The fake "relay" runs the real chatmail-accounts of this checkout on a mailboxes directory in
tmp_path, so these tests see exactly what an operator sees.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from chatmaild.accounts import Mailboxes
from chatmaild.registration import InviteStore
from cmdeploy import cli, remote

ALICE = "alice0001@chat.example.org"
RELAY_BIN = "/usr/local/lib/chatmaild/venv/bin/chatmail-accounts"
RELAY_INI = "/usr/local/lib/chatmaild/chatmail.ini"


class FakeRelay:
    def __init__(self, tmp_path: Path) -> None:
        self.mailboxes = tmp_path / "mailboxes"
        self.mailboxes.mkdir()
        self.ini = tmp_path / "relay.ini"
        self.registration = tmp_path / "registration"
        InviteStore(self.registration).make_dirs()
        self.ini.write_text(
            f"[params]\nmail_domain = chat.example.org\nmailboxes_dir = {self.mailboxes}\n"
            f"registration_dir = {self.registration}\n"
        )
        self.scripts: list[str] = []

    def command(self, host: str, script: str = "python3 -") -> list[str]:
        self.scripts.append(script)
        argv = shlex.split(script)
        assert argv[:2] == [RELAY_BIN, RELAY_INI]
        # no terminal over SSH: whatever would ask there must not hang
        code = "import sys; from chatmaild.accountscmd import main; sys.exit(main())"
        return [sys.executable, "-c", code, str(self.ini), *argv[2:]]


@pytest.fixture
def relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRelay:
    fake = FakeRelay(tmp_path)
    monkeypatch.setattr(remote, "command", fake.command)
    return fake


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The operator's working directory, where `cmdeploy invite` writes its QR code."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def accounts(ini: str, *args: str) -> int:
    return cli.main(["accounts", "--config", ini, *args])


def test_block_unblock_over_ssh(
    relay: FakeRelay, ini: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Mailboxes(relay.mailboxes).create(ALICE, "pass-word-1")
    assert accounts(ini, "block", "Alice0001@chat.example.org") == 0
    assert capsys.readouterr().out.startswith(f"blocked {ALICE}: no login, no incoming mail")
    assert relay.scripts[-1] == f"{RELAY_BIN} {RELAY_INI} block Alice0001@chat.example.org"
    assert accounts(ini, "block", ALICE) == 0
    assert capsys.readouterr().out == f"{ALICE} was already blocked\n"
    assert accounts(ini, "unblock", ALICE) == 0
    assert capsys.readouterr().out.startswith(f"unblocked {ALICE}")


def test_an_address_is_one_shell_word(
    relay: FakeRelay, ini: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # the address reaches the relay's shell: quoting keeps it one argument, never a command
    assert accounts(ini, "block", "x@chat.example.org; touch /tmp/pwned") == 1
    assert relay.scripts[-1].endswith("block 'x@chat.example.org; touch /tmp/pwned'")
    err = capsys.readouterr().err
    assert err.startswith("cmdeploy: not an address of this relay") and err.count("\n") == 1


def test_list_shows_addresses_only_with_the_flag(
    relay: FakeRelay, ini: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Mailboxes(relay.mailboxes).create(ALICE, "pass-word-1")
    assert accounts(ini, "list") == 0
    out = capsys.readouterr().out
    assert out.startswith("accounts: 1 (0 blocked)\nlast login:\n") and "@" not in out
    assert accounts(ini, "list", "--addresses") == 0
    assert ALICE in capsys.readouterr().out
    assert accounts(ini, "count") == 0
    assert capsys.readouterr().out == "1 accounts (0 blocked)\n"


def test_unknown_account_is_one_line_and_exit_1(
    relay: FakeRelay, ini: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert accounts(ini, "block", ALICE) == 1
    assert capsys.readouterr().err == f"cmdeploy: no account {ALICE}\n"


def test_delete_asks_here_and_passes_yes(
    relay: FakeRelay,
    ini: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Mailboxes(relay.mailboxes).create(ALICE, "pass-word-1")
    # no terminal to ask on (a script): --yes or nothing
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    assert accounts(ini, "delete", ALICE) == 2
    assert "--yes" in capsys.readouterr().err
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert accounts(ini, "delete", ALICE) == 0
    assert capsys.readouterr().out == "nothing deleted\n"
    assert relay.scripts == [] and (relay.mailboxes / ALICE).exists()
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert accounts(ini, "delete", ALICE) == 0
    assert relay.scripts == [f"{RELAY_BIN} {RELAY_INI} delete {ALICE} --yes"]
    assert capsys.readouterr().out == f"deleted {ALICE} and all its mail\n"
    assert accounts(ini, "delete", ALICE, "--yes") == 0
    assert capsys.readouterr().out == f"no account {ALICE}: nothing deleted\n"


def test_relay_without_the_tool(
    tmp_path: Path, ini: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(remote, "command", lambda host, script="": ["sh", "-c", "exit 127"])
    assert accounts(ini, "count") == 2
    assert "deploy this version with `cmdeploy run`" in capsys.readouterr().err


def test_registration_over_ssh(
    relay: FakeRelay, ini: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["registration", "--config", ini, "invite", "--refuse-autorelay"]) == 0
    assert relay.scripts[-1] == f"{RELAY_BIN} {RELAY_INI} registration invite --refuse-autorelay"
    out = capsys.readouterr().out
    assert out.startswith("registration invite: only addresses /new handed out for an invite\n")
    assert cli.main(["registration", "--config", ini]) == 0
    assert "autorelay first logins (23-character password): refused" in capsys.readouterr().out
    assert cli.main(["registration", "--config", ini, "reset"]) == 0
    assert "registration open" in capsys.readouterr().out


def test_invite_prints_the_url_and_writes_its_qr_code(
    relay: FakeRelay, ini: str, cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["invite", "--config", ini, "--uses", "3", "--expires", "2w"]) == 0
    assert relay.scripts[-1] == f"{RELAY_BIN} {RELAY_INI} invite --uses 3 --expires 2w"
    out = capsys.readouterr().out
    [url] = [line for line in out.splitlines() if line.startswith("DCACCOUNT:https://")]
    assert url.startswith("DCACCOUNT:https://chat.example.org/new?token=")
    invite_id = out.split()[1].rstrip(":")
    png = cwd / f"invite-chat.example.org-{invite_id}.png"
    assert out.endswith(f"QR code: {png.name}\n")
    assert png.read_bytes().startswith(b"\x89PNG\r\n")
    assert cli.main(["invite", "--config", ini, "--list"]) == 0
    assert capsys.readouterr().out.startswith(f"{invite_id}  0/3 used")
    assert cli.main(["invite", "--config", ini, "--revoke", invite_id]) == 0
    assert capsys.readouterr().out.startswith(f"revoked invite {invite_id}")


def test_a_refused_invite_writes_no_qr_code(
    relay: FakeRelay, ini: str, cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["invite", "--config", ini, "--expires", "soon"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cmdeploy: ") and "duration" in err and err.count("\n") == 1
    assert list(cwd.glob("*.png")) == []


def test_no_qr_code_that_cannot_work_for_a_self_signed_relay(
    relay: FakeRelay, tmp_path: Path, cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "self.ini"
    assert cli.main(["init", "_chat.example.org", "--config", str(path)]) == 0
    relay.ini.write_text(relay.ini.read_text().replace("chat.example.org", "_chat.example.org"))
    capsys.readouterr()
    assert cli.main(["invite", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "https://_chat.example.org/new?token=" in out
    assert out.endswith(
        "no QR code: the app cannot fetch the DCACCOUNT URL from a self-signed relay\n"
    )
    assert list(cwd.glob("*.png")) == []
