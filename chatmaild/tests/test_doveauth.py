from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from chatmaild_testing import make_config
from dictclient import DictClient
from servethread import serving

from chatmaild import accounts, pwhash
from chatmaild.config import Config
from chatmaild.doveauth import AuthDict, split_passdb_key
from chatmaild.resources import Readings

PLENTY = Readings(load_1m=0.1, available_memory=8 * 2**30, free_disk=100 * 2**30)


def dovecot_escape(text: str) -> str:
    """Dovecot's %E: a backslash before `"`, `'` and `\\`."""
    return "".join("\\" + ch if ch in "\"'\\" else ch for ch in text)


def passdb_key(addr: str, password: str) -> str:
    return f'shared/passdb/{dovecot_escape(password)}"{dovecot_escape(addr)}'


def make_auth(config: Config, tmp_path: Path, readings: Readings = PLENTY) -> AuthDict:
    return AuthDict(config, nocreate_file=tmp_path / "nocreate", take_readings=lambda _: readings)


def passdb(auth: AuthDict, addr: str, password: str) -> dict[str, str] | None:
    reply = asyncio.run(auth.lookup(passdb_key(addr, password), addr))
    return None if reply is None else dict(json.loads(reply))


@pytest.mark.parametrize(
    ("password", "addr"),
    [
        ("simple", "a@x.org"),
        ('with"quote', "a@x.org"),
        ("back\\slash\\", "a@x.org"),
        ("it's", "a@x.org"),
        ('"\\"', "a@x.org"),
        ("", "a@x.org"),
    ],
)
def test_split_passdb_key_undoes_dovecot_escaping(password: str, addr: str) -> None:
    rest = passdb_key(addr, password)[len("shared/passdb/") :]
    assert split_passdb_key(rest) == (password, addr)


def test_split_passdb_key_without_separator() -> None:
    assert split_passdb_key('only\\"escaped') is None


def test_first_login_creates_then_the_hash_decides(config: Config, tmp_path: Path) -> None:
    auth = make_auth(config, tmp_path)
    addr = "newuser01@example.org"
    record = passdb(auth, addr, "first-password")
    assert record is not None
    home = config.mailboxes_path / addr
    assert record == {
        "addr": addr,
        "home": str(home),
        "uid": "vmail",
        "gid": "vmail",
        "password": (home / "password").read_text(),
    }
    assert pwhash.verify_password("first-password", record["password"])
    assert (home / "enforceE2EEincoming").exists()
    # a later lookup with another password returns the stored hash; Dovecot refuses it
    again = passdb(auth, addr, "another-password")
    assert again == record
    assert not pwhash.verify_password("another-password", again["password"])


def test_userdb(config: Config, tmp_path: Path) -> None:
    auth = make_auth(config, tmp_path)
    assert auth.userdb("newuser01@example.org") is None
    passdb(auth, "newuser01@example.org", "first-password")
    record = json.loads(auth.userdb("newuser01@example.org") or "{}")
    assert record["home"] == str(config.mailboxes_path / "newuser01@example.org")
    # an empty password file is no account
    (config.mailboxes_path / "emptypass@example.org").mkdir()
    (config.mailboxes_path / "emptypass@example.org" / "password").write_text("")
    assert auth.userdb("emptypass@example.org") is None


@pytest.mark.parametrize(
    ("addr", "password", "reason"),
    [
        ("abcdefghi@example.org", "short", "password too short"),
        ("abc@example.org", "long-enough-pw", "local part length out of bounds"),
        ("abcdefghij@example.org", "long-enough-pw", "local part length out of bounds"),
        ("abcd+efgh@example.org", "long-enough-pw", "local part has characters other than"),
        ("ABCDEFGHI@example.org", "long-enough-pw", "local part has characters other than"),
        ("abcdefghi@example.net", "long-enough-pw", None),  # foreign: not even considered
    ],
)
def test_creation_rules(
    config: Config,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    addr: str,
    password: str,
    reason: str | None,
) -> None:
    auth = make_auth(config, tmp_path)
    assert passdb(auth, addr, password) is None
    assert list(config.mailboxes_path.iterdir()) == []
    if reason:
        assert f"registration rejected: {reason}" in caplog.text


@pytest.mark.parametrize(
    "addr",
    [
        "../../etc@example.org",
        "a/b@example.org",
        "abc..defg@example.org",
        ".hiddenab@example.org",
        "nul\0byte1@example.org",
        "two@at@example.org",
        "@example.org",
        "",
        "noatsign",
        "tab\tname@example.org",
    ],
)
def test_hostile_addresses_never_touch_the_filesystem(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, addr: str
) -> None:
    def forbidden(*args: object) -> None:
        raise AssertionError("filesystem touched")

    monkeypatch.setattr(accounts.Mailboxes, "password_hash", forbidden)
    monkeypatch.setattr(accounts.Mailboxes, "create", forbidden)
    auth = make_auth(config, tmp_path)
    assert passdb(auth, addr, "long-enough-pw") is None
    assert auth.userdb(addr) is None


def test_refusal_order_and_existing_accounts_unaffected(config: Config, tmp_path: Path) -> None:
    auth = make_auth(config, tmp_path)
    passdb(auth, "existing1@example.org", "long-enough-pw")
    (tmp_path / "nocreate").touch()
    # the nocreate file is checked first, even before the password length
    assert auth.refusal("newcomer1@example.org", "x") == (
        "nocreate",
        f"{tmp_path / 'nocreate'} exists",
    )
    assert passdb(auth, "newcomer1@example.org", "long-enough-pw") is None
    assert passdb(auth, "existing1@example.org", "whatever") is not None


@pytest.mark.parametrize(
    ("readings", "reason"),
    [
        (Readings(9.0, 8 * 2**30, 100 * 2**30), ("load", "load too high")),
        (Readings(0.1, 100 * 2**20, 100 * 2**30), ("memory", "available memory too low")),
        (Readings(0.1, 8 * 2**30, 100 * 2**20), ("disk", "free disk space too low")),
        (Readings(None, None, None), None),  # unreadable values never block
    ],
)
def test_resource_gate(
    config: Config, tmp_path: Path, readings: Readings, reason: tuple[str, str] | None
) -> None:
    auth = make_auth(config, tmp_path, readings)
    assert auth.refusal("newcomer1@example.org", "long-enough-pw") == reason
    created = passdb(auth, "newcomer1@example.org", "long-enough-pw")
    assert (created is None) == (reason is not None)
    # an existing account logs in whatever the resources say
    make_auth(config, tmp_path, PLENTY)
    passdb(make_auth(config, tmp_path, PLENTY), "existing1@example.org", "long-enough-pw")
    assert passdb(auth, "existing1@example.org", "long-enough-pw") is not None


def test_limits_come_from_config(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    config = make_config(
        tmp_path / "m", username_min_length="3", username_max_length="20", password_min_length="4"
    )
    auth = make_auth(config, tmp_path)
    assert passdb(auth, "abc@example.org", "four") is not None
    assert passdb(auth, "a-twenty-char-name-x@example.org", "four") is not None
    assert passdb(auth, "ab@example.org", "four") is None


def test_ipv4_relay_addresses(tmp_path: Path) -> None:
    config = Config.from_params({"mail_domain": "192.0.2.10", "mailboxes_dir": str(tmp_path)})
    auth = make_auth(config, tmp_path)
    assert passdb(auth, "abcdefghi@[192.0.2.10]", "long-enough-pw") is not None
    assert passdb(auth, "abcdefghi@192.0.2.10", "long-enough-pw") is None


def test_iteration_lists_accounts(config: Config, tmp_path: Path) -> None:
    auth = make_auth(config, tmp_path)
    for addr in ("iterate01@example.org", "iterate02@example.org"):
        passdb(auth, addr, "long-enough-pw")
    (config.mailboxes_path / "pending_notifications").mkdir()  # not an account
    rows = list(auth.iterate("shared/userdb/", ""))
    assert rows == [
        ("shared/userdb/iterate01@example.org", ""),
        ("shared/userdb/iterate02@example.org", ""),
    ]
    assert list(auth.iterate("shared/passdb/", "")) == []


def test_100_simultaneous_first_logins_make_one_account(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    addr = "racecar01@example.org"
    sock = tmp_path / "auth.socket"
    replies: list[str] = []
    barrier = threading.Barrier(100)

    def first_login(n: int) -> None:
        with DictClient(sock) as c:
            barrier.wait()
            replies.append(c.lookup(passdb_key(addr, f"password-{n:03d}"), addr))

    with serving(sock, make_auth(config, tmp_path)):
        threads = [threading.Thread(target=first_login, args=(n,)) for n in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(replies) == 100
    hashes = {json.loads(r[1:])["password"] for r in replies}
    stored = (config.mailboxes_path / addr / "password").read_text()
    assert hashes == {stored}
    assert caplog.text.count("created account") == 1
    # no temporary file left behind
    assert sorted(p.name for p in (config.mailboxes_path / addr).iterdir()) == [
        "enforceE2EEincoming",
        "password",
        "password.lock",
    ]


def test_logs_hold_no_credentials(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = make_auth(config, tmp_path)
    passdb(auth, "loggedusr@example.org", "secret-password")
    passdb(auth, "loggedusr@example.org", "wrong-password")
    passdb(auth, "refuseduser@example.org", "short")
    for needle in ("loggedusr", "refuseduser", "secret-password", "wrong-password"):
        assert needle not in caplog.text


def raw_passdb_line(addr: str, password: bytes) -> bytes:
    """The lookup line Dovecot sends: %E-escaped bytes as they came, tab-escaped for the dict."""
    escaped = b"".join(b"\\" + bytes([b]) if b in b"\"'\\" else bytes([b]) for b in password)
    key = b"shared/passdb/" + escaped + b'"' + addr.encode()
    return b"L" + key.replace(b"\0", b"\x010") + b"\t" + addr.encode() + b"\n"


# libcrypt hashes at most 511 bytes; Dovecot sends passwords as they came, UTF-8 or not.
UNUSABLE_PASSWORDS = [
    pytest.param(b"secretpw" * 64, id="512-bytes"),
    pytest.param(b"secretpw" * 100, id="800-bytes"),
    pytest.param("\u00e9".encode() * 300, id="300-characters-600-bytes"),
    pytest.param(b"secret\xff\xfepassword", id="not-utf-8"),
    pytest.param(b"secret\xc3password", id="cut-utf-8-sequence"),
    pytest.param(b"secretpw\0more-secret", id="nul"),
]


@pytest.mark.parametrize("password", UNUSABLE_PASSWORDS)
def test_unusable_passwords_are_refused_not_failed(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture, password: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = make_auth(config, tmp_path)
    assert passdb(auth, "existing1@example.org", "long-enough-pw") is not None
    with serving(tmp_path / "auth.socket", auth), DictClient(tmp_path / "auth.socket") as c:
        for addr in ("existing1@example.org", "newcomer1@example.org"):
            c.file.write(raw_passdb_line(addr, password))
            c.file.flush()
            # "not found": Dovecot refuses the login; F would be a temporary failure
            assert c.readline() == "N"
    assert [p.name for p in config.mailboxes_path.iterdir()] == ["existing1@example.org"]
    assert caplog.text.count("login refused: password") == 2
    for needle in (b"secret", "\u00e9".encode() * 2):
        assert needle not in caplog.text.encode()


def test_the_longest_usable_password_creates_and_logs_in(config: Config, tmp_path: Path) -> None:
    auth = make_auth(config, tmp_path)
    password = "\u00e9" * 255 + "x"  # 511 bytes
    record = passdb(auth, "longpass1@example.org", password)
    assert record is not None and pwhash.verify_password(password, record["password"])
    assert passdb(auth, "longpass1@example.org", password) == record


@pytest.mark.parametrize("program", ["doveauth", "lastlogin"])
@pytest.mark.parametrize(
    ("ini_text", "words"),
    [
        ("[params]\nmail_domain = example.org\nmax_mailbox_size = 500X\n", "max_mailbox_size"),
        ("[params]\nusername_min_length = 3\n", "mail_domain"),
        (None, "readable file"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, program: str, ini_text: str | None, words: str
) -> None:
    ini = tmp_path / "chatmail.ini"
    if ini_text is not None:
        ini.write_text(ini_text)
    exe = Path(sys.executable).parent / program
    result = subprocess.run(
        [str(exe), str(tmp_path / "x.socket"), str(ini)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert words in result.stderr and str(ini) in result.stderr


def test_unusable_socket_path_is_one_line(tmp_path: Path) -> None:
    ini = tmp_path / "chatmail.ini"
    ini.write_text(f"[params]\nmail_domain = example.org\nmailboxes_dir = {tmp_path}\n")
    sock = tmp_path / "missing-dir" / "doveauth.socket"
    exe = Path(sys.executable).parent / "doveauth"
    result = subprocess.run(
        [str(exe), str(sock), str(ini)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot listen on {sock}" in result.stderr


def test_creations_and_refusals_are_counted_by_reason(config: Config, tmp_path: Path) -> None:
    auth = make_auth(config, tmp_path)
    passdb(auth, "newcomer1@example.org", "long-enough-pw")
    passdb(auth, "newcomer1@example.org", "long-enough-pw")  # logs in: not created again
    passdb(auth, "newcomer2@example.org", "short")  # invalid
    (tmp_path / "nocreate").touch()
    passdb(auth, "newcomer3@example.org", "long-enough-pw")
    low_disk = make_auth(config, tmp_path / "other", Readings(0.1, 8 * 2**30, 1))
    passdb(low_disk, "newcomer4@example.org", "long-enough-pw")
    assert auth.created.value() == 1
    refused = {key[0][1]: n for key, n in auth.refused.samples.items()}
    assert refused == {"invalid": 1, "nocreate": 1}
    assert {key[0][1]: n for key, n in low_disk.refused.samples.items()} == {"disk": 1}


# --- blocked accounts (doc/accounts.md) -------------------------------------------------------


def test_a_blocked_account_cannot_log_in_and_unblocked_uses_its_old_password(
    config: Config, tmp_path: Path
) -> None:
    auth = make_auth(config, tmp_path)
    addr = "blockme01@example.org"
    record = passdb(auth, addr, "first-password")  # created, and its record cached
    marker = config.mailboxes_path / addr / accounts.BLOCKED_FILE
    marker.touch()
    assert passdb(auth, addr, "first-password") is None
    assert auth.userdb(addr) is None  # LMTP finds no such user: no delivery either
    assert auth.blocked.value() == 1
    # not created again with another password while blocked, and the hash is unchanged
    assert passdb(auth, addr, "other-password") is None
    assert auth.created.value() == 1
    marker.unlink()
    assert passdb(auth, addr, "first-password") == record


def test_a_blocked_address_without_password_is_not_created(config: Config, tmp_path: Path) -> None:
    # a half-deleted or damaged account directory that still holds the marker
    auth = make_auth(config, tmp_path)
    addr = "blockme02@example.org"
    (config.mailboxes_path / addr).mkdir()
    (config.mailboxes_path / addr / accounts.BLOCKED_FILE).touch()
    assert passdb(auth, addr, "first-password") is None
    assert not (config.mailboxes_path / addr / "password").exists()
    assert auth.created.value() == 0
