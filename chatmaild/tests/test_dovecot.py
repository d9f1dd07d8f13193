"""Component tests: a real Dovecot from Debian asks doveauth and lastlogin over their sockets;
blocking and deleting accounts (doc/accounts.md) against it."""

from __future__ import annotations

import gzip
import os
import smtplib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from dovecot_harness import Relay
from imap_logins import login, plain_login, refused

from chatmaild import accounts, pwhash
from chatmaild.accountsadmin import Admin
from cmdeploy.bench import remote_helper

pytestmark = pytest.mark.dovecot


@pytest.fixture
def nocreate(relay: Relay) -> Iterator[None]:
    relay.nocreate_file.touch()
    try:
        yield
    finally:
        relay.nocreate_file.unlink()


def test_first_login_creates_account_and_maildir(relay: Relay) -> None:
    addr = "first0001@example.org"
    conn = login(relay, addr, "pass-word-1")
    typ, data = conn.select("INBOX")
    assert typ == "OK"
    conn.logout()
    home = relay.mailboxes / addr
    assert (home / "cur").is_dir() and (home / "new").is_dir()
    assert (home / "enforceE2EEincoming").exists()
    assert (home / "password").read_text().startswith("{SHA512-CRYPT}$6$")


def test_second_login_needs_the_first_password(relay: Relay) -> None:
    addr = "second001@example.org"
    login(relay, addr, "first-password").logout()
    stored = (relay.mailboxes / addr / "password").read_text()
    login(relay, addr, "first-password").logout()
    assert refused(relay, addr, "other-password")
    # a wrong password never overwrites the stored hash
    assert (relay.mailboxes / addr / "password").read_text() == stored


def test_stored_hash_is_what_doveadm_verifies(relay: Relay) -> None:
    addr = "hashcheck@example.org"
    login(relay, addr, "verify-me-123").logout()
    stored = (relay.mailboxes / addr / "password").read_text()
    ok = relay.doveadm("pw", "-t", stored, "-p", "verify-me-123")
    assert ok.returncode == 0, ok.stderr
    bad = relay.doveadm("pw", "-t", stored, "-p", "verify-me-124")
    assert bad.returncode != 0


@pytest.mark.parametrize(
    ("addr", "password"),
    [
        ("shortpw01@example.org", "admin"),  # password under password_min_length
        ("abc@example.org", "pass-word-1"),  # local part too short
        ("waytoolongname@example.org", "pass-word-1"),  # local part too long
        ("plus+part@example.org", "pass-word-1"),  # '+' not allowed
        ("foreign01@example.net", "pass-word-1"),  # not our domain
    ],
)
def test_refused_creations(relay: Relay, addr: str, password: str) -> None:
    assert refused(relay, addr, password)
    assert not (relay.mailboxes / addr).exists()


@pytest.mark.parametrize(
    "password",
    [
        pytest.param(b"toolongpw" * 60, id="540-bytes"),
        pytest.param(b"notutf8pw\xff\xfe", id="not-utf-8"),
    ],
)
def test_unusable_passwords_fail_like_wrong_ones(relay: Relay, password: bytes) -> None:
    login(relay, "unusable1@example.org", "pass-word-1").logout()
    for addr in ("unusable1@example.org", "unusable2@example.org"):
        # a plain refusal, not "[UNAVAILABLE] Temporary authentication failure"
        assert "[AUTHENTICATIONFAILED]" in plain_login(relay, addr, password)
    assert not (relay.mailboxes / "unusable2@example.org").exists()
    # Dovecot logs the key of a lookup that failed, password included: there is none
    assert password[:9].decode() not in relay.dovecot_log()


def test_addresses_are_case_insensitive(relay: Relay) -> None:
    login(relay, "MixedCase@Example.org", "pass-word-1").logout()
    assert (relay.mailboxes / "mixedcase@example.org" / "password").exists()
    login(relay, "mixedcase@example.org", "pass-word-1").logout()


def test_two_users_may_share_a_password(relay: Relay) -> None:
    login(relay, "sharepw01@example.org", "same-password").logout()
    login(relay, "sharepw02@example.org", "same-password").logout()


def test_nocreate_file_stops_creation_but_not_logins(relay: Relay) -> None:
    login(relay, "existing1@example.org", "pass-word-1").logout()
    relay.nocreate_file.touch()
    try:
        assert refused(relay, "newcomer1@example.org", "pass-word-1")
        login(relay, "existing1@example.org", "pass-word-1").logout()
    finally:
        relay.nocreate_file.unlink()
    login(relay, "newcomer1@example.org", "pass-word-1").logout()


def test_concurrent_first_logins_create_one_account(relay: Relay) -> None:
    addr = "parallel1@example.org"

    def attempt(_: int) -> bool:
        return not refused(relay, addr, "pass-word-1")

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(attempt, range(10)))
    assert all(results)
    login(relay, addr, "pass-word-1").logout()


def test_doveadm_lists_accounts(relay: Relay) -> None:
    for addr in ("listed001@example.org", "listed002@example.org"):
        login(relay, addr, "pass-word-1").logout()
    users = relay.doveadm("user", "*")
    assert users.returncode == 0, users.stderr
    listed = set(users.stdout.split())
    assert {"listed001@example.org", "listed002@example.org"} <= listed
    assert listed == set(accounts.Mailboxes(relay.mailboxes).addresses())
    # -A iterates the same userdb for mail commands
    boxes = relay.doveadm("mailbox", "list", "-A")
    assert boxes.returncode == 0, boxes.stderr
    assert "listed002@example.org INBOX" in boxes.stdout.splitlines()


def test_userdb_lookup_answers_home(relay: Relay) -> None:
    login(relay, "homecheck@example.org", "pass-word-1").logout()
    out = relay.doveadm("user", "-f", "home", "homecheck@example.org")
    assert out.stdout.strip() == str(relay.mailboxes / "homecheck@example.org")
    missing = relay.doveadm("user", "nobody123@example.org")
    assert missing.returncode == 67  # EX_NOUSER: unknown users are not invented


def test_login_day_is_recorded(relay: Relay) -> None:
    addr = "lastlogin@example.org"
    login(relay, addr, "pass-word-1").logout()
    password = relay.mailboxes / addr / "password"
    old_day = 86400 * 100
    os.utime(password, (old_day, old_day))
    before = time.time()
    login(relay, addr, "pass-word-1").logout()
    # the plugin writes asynchronously after login: wait for the mtime to move
    deadline = time.monotonic() + 10
    while password.stat().st_mtime == old_day and time.monotonic() < deadline:
        time.sleep(0.02)
    mtime = password.stat().st_mtime
    assert mtime == before - before % 86400
    assert "Error" not in relay.dovecot_log()


def test_logs_hold_no_address_or_password(relay: Relay) -> None:
    addr, password = "privacy01@example.org", "secret-pass-7"
    login(relay, addr, password).logout()
    assert refused(relay, addr, "wrong-pass-77")
    assert refused(relay, "privacy02@example.org", "short")
    for name in ("doveauth", "lastlogin"):
        text = relay.service_log(name)
        for needle in ("privacy01", "privacy02", password, "wrong-pass-77", "127.0.0.1"):
            assert needle not in text, f"{name} log holds {needle!r}"
    assert "created account" in relay.service_log("doveauth")


def test_passwords_with_quotes_and_backslashes(relay: Relay) -> None:
    # Dovecot escapes these with %E inside the passdb key; doveauth must undo it exactly
    password = "q\"uo'te\\back\\"
    login(relay, "escaping1@example.org", password).logout()
    assert pwhash.verify_password(
        password, (relay.mailboxes / "escaping1@example.org" / "password").read_text()
    )
    assert refused(relay, "escaping1@example.org", "q\"uo'te\\back")


# --- blocked and deleted accounts (doc/accounts.md) --------------------------------------------

PASSWORD = "pass-word-1"


def admin(relay: Relay) -> Admin:
    return Admin(relay.mailboxes, "example.org", kick=lambda a: kick(relay, a))


def kick(relay: Relay, addr: str) -> bool:
    return relay.doveadm("kick", addr).returncode == 0


def test_a_blocked_account_cannot_log_in_in_any_spelling_until_unblocked(relay: Relay) -> None:
    addr = "blocked01@example.org"
    login(relay, addr, PASSWORD).logout()
    admin(relay).block(addr)
    assert refused(relay, addr, PASSWORD)
    assert refused(relay, "Blocked01@EXAMPLE.org", PASSWORD)
    admin(relay).unblock("BLOCKED01@example.org")
    login(relay, addr, PASSWORD).logout()  # the old password again
    assert refused(relay, addr, "another-password")


def test_blocking_closes_an_open_session(relay: Relay) -> None:
    addr = "blocked02@example.org"
    sock = socket.create_connection(("127.0.0.1", relay.imap_port), timeout=10)
    with sock, sock.makefile("rb") as f:
        f.readline()  # greeting
        sock.sendall(f"a LOGIN {addr} {PASSWORD}\r\nb SELECT INBOX\r\n".encode())
        while not f.readline().startswith(b"b OK"):
            pass
        said = admin(relay).block(addr)
        assert said.endswith("its open sessions closed")
        rest = f.read()  # until Dovecot closes the connection (the socket's 10 s timeout)
    assert b"BYE" in rest


def test_a_blocked_account_gets_no_mail_over_lmtp(relay: Relay) -> None:
    # mail already past the gate when the block came: Dovecot's userdb no longer knows it
    addr = "blocked03@example.org"
    login(relay, addr, PASSWORD).logout()
    admin(relay).block(addr)
    with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            lmtp.sendmail("a@elsewhere.example", [addr], b"Subject: x\r\n\r\nhello\r\n")
    [(code, _text)] = e.value.recipients.values()
    assert 500 <= code < 600
    assert not list((relay.mailboxes / addr).glob("**/new/*"))


def test_a_deleted_account_is_gone_and_its_name_free_again(relay: Relay) -> None:
    addr = "deleted01@example.org"
    login(relay, addr, PASSWORD).logout()
    assert admin(relay).delete(addr) == f"deleted {addr} and all its mail"
    assert not (relay.mailboxes / addr).exists()
    # deleting frees the name (doc/accounts.md: block instead to keep it unusable)
    login(relay, addr, "a-new-password").logout()


def test_no_address_reaches_the_logs(relay: Relay) -> None:
    addr = "blocked04@example.org"
    login(relay, addr, PASSWORD).logout()
    admin(relay).block(addr)
    refused(relay, addr, PASSWORD)
    assert "blocked04" not in relay.service_log("doveauth")


def test_mail_is_stored_zstd_and_older_gzip_mail_stays_readable(relay: Relay) -> None:
    # doc/contract.md §5.4: new mail is zstd-compressed; a relay that stored gzip before the
    # switch keeps serving those files, since Dovecot reads a file by its magic bytes
    addr = "stored001@example.org"
    login(relay, addr, PASSWORD).logout()
    with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
        lmtp.sendmail("a@elsewhere.example", [addr], b"Message-ID: <new@x>\r\n\r\nzstd body\r\n")
    [stored] = (relay.mailboxes / addr / "new").iterdir()
    assert stored.read_bytes().startswith(remote_helper.ZSTD_MAGIC)
    # the bench's fault run counts delivered mail by reading these files
    assert remote_helper._message_id(str(stored)) == "new@x"
    older = relay.mailboxes / addr / "new" / "1700000000.M1P1.earlier"
    older.write_bytes(gzip.compress(b"Message-ID: <old@x>\r\n\r\ngzip body\r\n"))
    os.chown(older, stored.stat().st_uid, stored.stat().st_gid)
    conn = login(relay, addr, PASSWORD)
    conn.select("INBOX")
    bodies = set()
    for seq in (b"1", b"2"):
        typ, data = conn.fetch(seq.decode(), "(BODY[TEXT])")
        assert typ == "OK" and isinstance(data[0], tuple), data
        bodies.add(data[0][1])
    conn.logout()
    assert bodies == {b"zstd body\r\n", b"gzip body\r\n"}
