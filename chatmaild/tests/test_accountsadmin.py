"""The operator's account actions: chatmail-accounts count, list, block, unblock, delete."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from chatmaild import accountscmd
from chatmaild.accounts import BLOCKED_FILE, Mailboxes
from chatmaild.accountsadmin import (
    DAY,
    Admin,
    AdminError,
    canonical_address,
    login_histogram,
)
from chatmaild.config import Config

NOW = 1_800_000_000.0 - 1_800_000_000.0 % DAY + 3600  # 01:00 UTC on some day
ALICE = "alice0001@example.org"


class Kicks(list[str]):
    def __call__(self, addr: str) -> bool:
        self.append(addr)
        return True


@pytest.fixture
def admin(config: Config) -> Admin:
    return Admin(config.mailboxes_path, config.address_domain, kick=Kicks())


def create(config: Config, addr: str, login_day: float | None = None) -> None:
    Mailboxes(config.mailboxes_path).create(addr, "pass-word-1")
    if login_day is not None:
        os.utime(config.mailboxes_path / addr / "password", (login_day, login_day))


@pytest.mark.parametrize("text", [ALICE, "Alice0001@Example.ORG", " ALICE0001@example.org\n"])
def test_other_spellings_name_the_one_account(text: str) -> None:
    assert canonical_address(text, "example.org") == ALICE


@pytest.mark.parametrize(
    "text",
    [
        "../alice0001@example.org",
        "../../etc@example.org",
        "a/b@example.org",
        '"alice0001"@example.org',
        "alice0001@example.org.",
        "alice0001@other.org",
        "alice0001@example.org@example.org",
        "alice0001",
        "",
        "\u212alice@example.org",  # the Kelvin sign folds to "k"
        "alice\x00@example.org",
    ],
)
def test_anything_else_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(AdminError) as e:
        canonical_address(text, "example.org")
    assert "\n" not in str(e.value) and "\x00" not in str(e.value)


def test_ipv4_relay_addresses() -> None:
    assert canonical_address("Bob12345@[192.0.2.1]", "[192.0.2.1]") == "bob12345@[192.0.2.1]"


def test_login_histogram_buckets() -> None:
    days = [NOW, NOW - 3600, NOW - DAY, NOW - 6 * DAY, NOW - 7 * DAY, NOW - 100 * DAY, None]
    assert login_histogram(days, NOW) == [
        ("today", 2),
        ("1-6 days ago", 2),
        ("7-29 days ago", 1),
        ("30-89 days ago", 0),
        ("90+ days ago", 1),
    ]


def test_block_is_idempotent_and_covers_every_spelling(config: Config, admin: Admin) -> None:
    create(config, ALICE)
    said = admin.block("Alice0001@Example.org")
    closed = ", its open sessions closed"
    assert said == f"blocked {ALICE}: no login, no incoming mail, data kept{closed}"
    assert admin.kick == [ALICE]  # type: ignore[comparison-overlap]
    assert (config.mailboxes_path / ALICE / BLOCKED_FILE).exists()
    assert admin.block(ALICE) == f"{ALICE} was already blocked"
    assert Mailboxes(config.mailboxes_path).is_blocked(ALICE)
    # data kept
    assert (config.mailboxes_path / ALICE / "password").read_text().startswith("{SHA512")
    assert admin.unblock("ALICE0001@EXAMPLE.ORG").startswith(f"unblocked {ALICE}")
    assert admin.unblock(ALICE) == f"{ALICE} was not blocked"
    assert not Mailboxes(config.mailboxes_path).is_blocked(ALICE)


def test_block_of_no_account_creates_nothing(config: Config, admin: Admin) -> None:
    with pytest.raises(AdminError, match=f"no account {ALICE}"):
        admin.block(ALICE)
    assert not (config.mailboxes_path / ALICE).exists()


def test_path_tricks_touch_nothing_outside(tmp_path: Path, config: Config, admin: Admin) -> None:
    outside = config.mailboxes_path.parent / "victim@example.org"
    outside.mkdir()
    (outside / "password").write_text("{SHA512-CRYPT}x")
    for text in ("../victim@example.org", "..%2fvictim@example.org", "./../victim@example.org"):
        with pytest.raises(AdminError):
            admin.delete(text)
        with pytest.raises(AdminError):
            admin.block(text)
    assert sorted(p.name for p in outside.iterdir()) == ["password"]


def test_delete_is_idempotent(config: Config, admin: Admin) -> None:
    create(config, ALICE)
    (config.mailboxes_path / ALICE / "new").mkdir()
    (config.mailboxes_path / ALICE / "new" / "1.msg").write_text("x")
    assert admin.delete("Alice0001@example.org") == f"deleted {ALICE} and all its mail"
    assert not (config.mailboxes_path / ALICE).exists()
    assert admin.delete(ALICE) == f"no account {ALICE}: nothing deleted"


def test_blocked_account_can_be_deleted(config: Config, admin: Admin) -> None:
    create(config, ALICE)
    admin.block(ALICE)
    assert admin.delete(ALICE) == f"deleted {ALICE} and all its mail"


# --- the command ---------------------------------------------------------------------------------


def run(config: Config, argv: list[str], admin: Admin, **kw: object) -> tuple[int, str]:
    args = accountscmd.build_parser().parse_args(["ini", *argv])
    out = io.StringIO()
    code = accountscmd.run(args, config, out, admin=admin, now=lambda: NOW, **kw)  # type: ignore[arg-type]
    return code, out.getvalue()


def test_list_shows_no_address_without_the_flag(config: Config, admin: Admin) -> None:
    create(config, ALICE, NOW)
    create(config, "bob000001@example.org", NOW - 40 * DAY)
    admin.block("bob000001@example.org")
    code, out = run(config, ["list"], admin)
    assert code == 0
    assert "@" not in out
    assert out.splitlines()[:2] == ["accounts: 2 (1 blocked)", "last login:"]
    assert "  today                  1" in out and "  30-89 days ago         1" in out
    code, out = run(config, ["list", "--addresses"], admin)
    assert f"{ALICE}  " in out
    assert "bob000001@example.org  " in out and out.rstrip().endswith("blocked")
    assert run(config, ["count"], admin) == (0, "2 accounts (1 blocked)\n")


def test_foreign_directories_are_not_accounts(config: Config, admin: Admin) -> None:
    create(config, ALICE)
    (config.mailboxes_path / "x@other.org").mkdir()
    (config.mailboxes_path / "no-at-sign").mkdir()
    assert run(config, ["count"], admin)[1] == "1 accounts (0 blocked)\n"


def test_delete_asks_first(config: Config, admin: Admin) -> None:
    create(config, ALICE)
    asked: list[str] = []

    def no(addr: str) -> bool:
        asked.append(addr)
        return False

    assert run(config, ["delete", "Alice0001@example.org"], admin, ask=no) == (
        0,
        "nothing deleted\n",
    )
    assert asked == [ALICE] and (config.mailboxes_path / ALICE).exists()
    assert run(config, ["delete", ALICE, "--yes"], admin, ask=no)[1] == (
        f"deleted {ALICE} and all its mail\n"
    )
    assert asked == [ALICE]


def test_delete_without_a_terminal_needs_yes() -> None:
    # a "y" piped in is no answer: a script must say --yes
    with pytest.raises(AdminError, match="--yes"):
        accountscmd.confirm(ALICE, io.StringIO("y\n"), io.StringIO())


def test_main_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mailboxes = tmp_path / "mb"
    mailboxes.mkdir()
    ini = tmp_path / "chatmail.ini"
    ini.write_text(f"[params]\nmail_domain = example.org\nmailboxes_dir = {mailboxes}\n")
    assert accountscmd.main([str(ini), "block", "../x@example.org"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("chatmail-accounts: not an address")
    assert accountscmd.main([str(ini), "unblock", ALICE]) == 1
    assert capsys.readouterr().err == f"chatmail-accounts: no account {ALICE}\n"
    with pytest.raises(SystemExit) as e:
        accountscmd.main([str(ini), "frobnicate"])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
