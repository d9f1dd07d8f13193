from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from dictclient import DictClient
from servethread import serving

from chatmaild import accounts
from chatmaild.config import Config
from chatmaild.lastlogin import LastLoginDict

DAY = 86400
LOGIN = 1_700_000_123  # 2023-11-14 22:15:23 UTC
LOGIN_DAY = LOGIN - LOGIN % DAY


def make_account(config: Config, addr: str) -> Path:
    home = config.mailboxes_path / addr
    home.mkdir()
    (home / "password").write_text("{SHA512-CRYPT}$6$x$y")
    os.utime(home / "password", (5, 5))
    return home / "password"


def commit(sock: Path, *sets: tuple[str, str]) -> str:
    with DictClient(sock) as c:
        c.send("B1\tuser")
        for key, value in sets:
            c.send(f"S1\t{key}\t{value}")
        return c.request("C1")


@pytest.fixture
def sock(tmp_path: Path, config: Config) -> Iterator[Path]:
    path = tmp_path / "lastlogin.socket"
    with serving(path, LastLoginDict(config)):
        yield path


def test_login_day_becomes_password_mtime(config: Config, sock: Path) -> None:
    password = make_account(config, "someone01@example.org")
    assert commit(sock, ("shared/last-login/someone01@example.org", str(LOGIN))) == "O1"
    assert password.stat().st_mtime == LOGIN_DAY
    assert password.read_text() == "{SHA512-CRYPT}$6$x$y"  # content untouched


def test_same_day_writes_nothing(
    config: Config, sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = make_account(config, "someone01@example.org")
    os.utime(password, (LOGIN_DAY, LOGIN_DAY))
    calls: list[object] = []
    monkeypatch.setattr(accounts.os, "utime", lambda *a, **k: calls.append(a))
    assert commit(sock, ("shared/last-login/someone01@example.org", str(LOGIN + 60))) == "O1"
    assert calls == []


def test_unknown_account_is_not_created(config: Config, sock: Path) -> None:
    assert commit(sock, ("shared/last-login/gone00001@example.org", str(LOGIN))) == "O1"
    assert list(config.mailboxes_path.iterdir()) == []


@pytest.mark.parametrize(
    "sets",
    [
        [("shared/other-key/someone01@example.org", str(LOGIN))],  # a key we do not store
        [("shared/last-login/someone01@example.org", "yesterday")],  # not a unix time
    ],
)
def test_bad_writes_fail_the_transaction(
    config: Config, sock: Path, sets: list[tuple[str, str]]
) -> None:
    password = make_account(config, "someone01@example.org")
    assert commit(sock, *sets) == "F1"
    assert password.stat().st_mtime == 5


@pytest.mark.parametrize("addr", ["../../etc/x@example.org", "a@b@example.org", "x@other.org"])
def test_hostile_addresses_are_ignored(config: Config, sock: Path, addr: str) -> None:
    assert commit(sock, (f"shared/last-login/{addr}", str(LOGIN))) == "O1"
    assert list(config.mailboxes_path.iterdir()) == []


def test_lookups_find_nothing(sock: Path) -> None:
    with DictClient(sock) as c:
        assert c.lookup("shared/last-login/someone01@example.org") == "N"
        assert c.iterate("shared/") == []


def test_each_login_of_an_account_is_counted(config: Config, tmp_path: Path) -> None:
    make_account(config, "someone01@example.org")
    backend = LastLoginDict(config)
    path = tmp_path / "counting.socket"
    with serving(path, backend):
        for _ in range(3):  # the same day thrice: written once, counted thrice
            assert commit(path, ("shared/last-login/someone01@example.org", str(LOGIN))) == "O1"
        commit(path, ("shared/last-login/x@other.org", str(LOGIN)))  # not ours: not counted
    assert backend.logins.value() == 3
