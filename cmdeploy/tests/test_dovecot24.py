"""Debian 13's Dovecot 2.4 with the deploy's 2.4 configuration and this checkout's chatmaild:
accounts come from doveauth through the Lua passdb/userdb (doc/debian13.md) and behave as on
Debian 12; LMTP delivers, the plugins load. Run from the trixie root (`trixie_root.py`)."""

from __future__ import annotations

import imaplib
import os
import shutil
import smtplib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from dovecot24_harness import Relay24, running_relay24, wait_for
from dovecot_harness import lmtp_to_each
from imap_logins import login, plain_login, refused
from trixie_root import trixie_root

from chatmaild import accounts, pwhash, registration
from chatmaild.accountsadmin import Admin

PASSWORD = "pass-word-1"


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay24]:
    root = trixie_root()
    params = "registration_dir = {base}/registration\n"
    with running_relay24(root, params) as r:
        yield r
        assert_clean_logs(r)


def assert_clean_logs(relay: Relay24) -> None:
    """After a module's tests: nothing logged as an error by Dovecot (the Lua scripts, the
    dicts, the plugins), and the services understood every request of 2.4's dict client."""
    # Dovecot logs whatever a script service writes to stderr as an error, on 2.3 too: the
    # quota warning's own INFO lines are no failure
    log = "".join(
        line
        for line in relay.dovecot_log().splitlines(keepends=True)
        if "quota-warning: Error: quota_expire: INFO:" not in line
        and line not in relay.expected_log_lines
    )
    assert "Error" not in log and "Fatal" not in log and "Panic" not in log, log
    for name in ("doveauth", "lastlogin", "metadata"):
        service_log = relay.service_log(name)
        assert "ERROR" not in service_log and "malformed" not in service_log, service_log


def test_first_login_creates_account_and_maildir(relay: Relay24) -> None:
    addr = "first0001@example.org"
    conn = login(relay, addr, PASSWORD)
    typ, _ = conn.select("INBOX")  # chatmail_notify loaded: a failed load drops the connection
    assert typ == "OK"
    conn.logout()
    home = relay.mailboxes / addr
    assert (home / "cur").is_dir() and (home / "new").is_dir()
    assert (home / "password").read_text().startswith("{SHA512-CRYPT}$6$")
    assert "created account" in relay.service_log("doveauth")


def test_second_login_needs_the_first_password(relay: Relay24) -> None:
    addr = "second001@example.org"
    login(relay, addr, "first-password").logout()
    stored = (relay.mailboxes / addr / "password").read_text()
    login(relay, addr, "first-password").logout()
    assert refused(relay, addr, "other-password")
    assert (relay.mailboxes / addr / "password").read_text() == stored


def test_an_account_made_on_debian12_logs_in(relay: Relay24) -> None:
    # This process is Debian 12's Python and libcrypt: the account is made exactly as
    # doveauth makes it there, then Dovecot 2.4 checks the password against that hash.
    addr = "bookworm1@example.org"
    stored, created = accounts.Mailboxes(relay.mailboxes).create(addr, "from-debian-12")
    assert created and stored.startswith("{SHA512-CRYPT}$6$")
    for path in [relay.mailboxes / addr, *(relay.mailboxes / addr).rglob("*")]:
        shutil.chown(path, *relay.vmail)
    login(relay, addr, "from-debian-12").logout()
    assert refused(relay, addr, "from-debian-13")
    assert (relay.mailboxes / addr / "password").read_text() == stored


@pytest.mark.parametrize(
    ("addr", "password"),
    [
        ("shortpw01@example.org", "admin"),  # password under password_min_length
        ("abc@example.org", PASSWORD),  # local part too short
        ("plus+part@example.org", PASSWORD),  # '+' not allowed
        ("foreign01@example.net", PASSWORD),  # not our domain
    ],
)
def test_refused_creations(relay: Relay24, addr: str, password: str) -> None:
    assert refused(relay, addr, password)
    assert not (relay.mailboxes / addr).exists()


def test_passwords_with_quotes_and_backslashes(relay: Relay24) -> None:
    # the Lua script escapes these inside the passdb key as 2.3's %E did
    password = "q\"uo'te\\back\\"
    login(relay, "escaping1@example.org", password).logout()
    stored = (relay.mailboxes / "escaping1@example.org" / "password").read_text()
    assert pwhash.verify_password(password, stored)
    assert refused(relay, "escaping1@example.org", "q\"uo'te\\back")


@pytest.mark.parametrize(
    "password",
    [
        pytest.param(b"toolongpw" * 60, id="540-bytes"),
        pytest.param(b"notutf8pw\xff\xfe", id="not-utf-8"),
    ],
)
def test_unusable_passwords_fail_like_wrong_ones(relay: Relay24, password: bytes) -> None:
    login(relay, "unusable1@example.org", PASSWORD).logout()
    for addr in ("unusable1@example.org", "unusable2@example.org"):
        assert "[AUTHENTICATIONFAILED]" in plain_login(relay, addr, password)
    assert not (relay.mailboxes / "unusable2@example.org").exists()


def test_addresses_are_case_insensitive(relay: Relay24) -> None:
    # 2.4 lowercases the name before the script sees it (auth_username_format's default)
    login(relay, "MixedCase@Example.org", PASSWORD).logout()
    assert (relay.mailboxes / "mixedcase@example.org" / "password").exists()
    login(relay, "mixedcase@example.org", PASSWORD).logout()


def test_nocreate_file_stops_creation_but_not_logins(relay: Relay24) -> None:
    login(relay, "existing1@example.org", PASSWORD).logout()
    relay.nocreate_file.touch()
    try:
        assert refused(relay, "newcomer1@example.org", PASSWORD)
        login(relay, "existing1@example.org", PASSWORD).logout()
    finally:
        relay.nocreate_file.unlink()
    login(relay, "newcomer1@example.org", PASSWORD).logout()


def test_concurrent_first_logins_create_one_account(relay: Relay24) -> None:
    addr = "parallel1@example.org"

    def attempt(_: int) -> bool:
        return not refused(relay, addr, PASSWORD)

    created_before = relay.service_log("doveauth").count("created account")
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(attempt, range(10)))
    assert all(results)
    assert relay.service_log("doveauth").count("created account") == created_before + 1


def test_registration_modes_apply(relay: Relay24) -> None:
    directory = relay.host(relay.base / "registration")
    directory.mkdir(mode=0o755, exist_ok=True)
    registration.write_state(directory, "closed", None)
    try:
        assert refused(relay, "closed001@example.org", PASSWORD)
        login(relay, "first0001@example.org", PASSWORD).logout()  # existing accounts stay
        registration.write_state(directory, "open", True)
        assert refused(relay, "autorel01@example.org", "x" * 23)
        login(relay, "autorel02@example.org", "x" * 24).logout()
    finally:
        registration.clear_state(directory)
    login(relay, "closed001@example.org", PASSWORD).logout()


def test_a_blocked_account_gets_neither_logins_nor_mail(relay: Relay24) -> None:
    addr = "blocked01@example.org"
    login(relay, addr, PASSWORD).logout()
    admin = Admin(relay.mailboxes, "example.org", kick=lambda _: True)
    admin.block(addr)
    assert refused(relay, addr, PASSWORD)
    assert refused(relay, "Blocked01@EXAMPLE.org", PASSWORD)
    with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            lmtp.sendmail("a@elsewhere.example", [addr], b"Subject: x\r\n\r\nhello\r\n")
    admin.unblock(addr)
    login(relay, addr, PASSWORD).logout()


def test_lmtp_delivery_lands_in_the_maildir(relay: Relay24) -> None:
    addr = "delivery1@example.org"
    login(relay, addr, PASSWORD).logout()
    body = b"Subject: to Debian 13\r\n\r\nhello from LMTP\r\n"
    with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
        lmtp.sendmail("sender@elsewhere.example", [addr], body)
    [stored] = (relay.mailboxes / addr / "new").iterdir()
    assert stored.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd: mail_compress is on
    conn = login(relay, addr, PASSWORD)
    conn.select("INBOX")
    typ, data = conn.fetch("1", "(BODY[TEXT])")
    conn.logout()
    assert typ == "OK" and isinstance(data[0], tuple), data
    assert b"hello from LMTP" in data[0][1]
    # an unknown recipient is refused, not invented
    with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            lmtp.sendmail("a@elsewhere.example", ["nobody123@example.org"], body)


def test_doveadm_lists_accounts_and_their_homes(relay: Relay24) -> None:
    for addr in ("listed001@example.org", "listed002@example.org"):
        login(relay, addr, PASSWORD).logout()
    users = relay.doveadm("user", "*")
    assert users.returncode == 0, users.stderr
    assert set(users.stdout.split()) == set(accounts.Mailboxes(relay.mailboxes).addresses())
    home = relay.doveadm("user", "-f", "home", "listed001@example.org")
    assert home.stdout.strip() == str(relay.base / "mailboxes" / "listed001@example.org")
    assert relay.doveadm("user", "nobody123@example.org").returncode == 67  # EX_NOUSER


def test_login_day_is_recorded(relay: Relay24) -> None:
    addr = "lastlogin@example.org"
    login(relay, addr, PASSWORD).logout()
    password = relay.mailboxes / addr / "password"
    old_day = 86400 * 100
    os.utime(password, (old_day, old_day))
    before = time.time()
    login(relay, addr, PASSWORD).logout()
    # the plugin writes after the login, asynchronously: wait for the mtime to move
    wait_for(lambda: password.stat().st_mtime != old_day, timeout=10, what="the login day")
    assert password.stat().st_mtime == before - before % 86400


def test_idle_hears_of_new_mail_at_once(relay: Relay24) -> None:
    # chatmail_notify works in 2.4: stock Dovecot would wait 500 ms (NOTIFY_DELAY_MSECS)
    addr = "idlecheck@example.org"
    login(relay, addr, PASSWORD).logout()
    sock = socket.create_connection(("127.0.0.1", relay.imap_port), timeout=10)
    with sock, sock.makefile("rb") as f:
        f.readline()
        sock.sendall(f"a LOGIN {addr} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
        while not f.readline().startswith(b"+ idling"):
            pass
        delays = []
        for n in range(3):
            with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
                lmtp.sendmail("a@elsewhere.example", [addr], b"Subject: x\r\n\r\nhi\r\n")
                sent = time.monotonic()
            while not f.readline().endswith(f"{n + 1} EXISTS\r\n".encode()):
                pass
            delays.append(time.monotonic() - sent)
        sock.sendall(b"DONE\r\nd LOGOUT\r\n")
    assert min(delays) < 0.3, delays


for _command in ("SETMETADATA", "GETMETADATA"):
    imaplib.Commands.setdefault(_command, ("AUTH", "SELECTED"))


def deliver(relay: Relay24, sender: str, rcpt: str, size: int = 0) -> tuple[int, bytes]:
    message = f"From: {sender}\r\nTo: {rcpt}\r\nSubject: [...]\r\n\r\n".encode()
    message += b"x" * size + b"\r\nhello\r\n"
    with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
        lmtp.mail(sender)
        lmtp.rcpt(rcpt)
        return lmtp.data(message)


def test_capabilities_after_login(relay: Relay24) -> None:
    conn = login(relay, "capable01@example.org", PASSWORD)
    typ, data = conn.capability()
    conn.logout()
    caps = set(data[0].decode().split())
    assert {"XCHATMAIL", "XDELTAPUSH", "METADATA", "APPENDLIMIT=31457280"} <= caps
    # 2.4 offers COMPRESS by default; the relay turns it off while hibernation is on
    assert "COMPRESS=DEFLATE" not in caps


def test_delivery_pushes_to_the_device_token(relay: Relay24) -> None:
    # METADATA through chatmail-metadata, then chatmail_notify's push hook on LMTP delivery
    addr = "pushed001@example.org"
    conn = login(relay, addr, PASSWORD)
    typ, data = conn._simple_command("SETMETADATA", "INBOX", '(/private/devicetoken "t24")')
    assert typ == "OK", data
    conn.logout()
    assert deliver(relay, "someone@elsewhere.example", addr)[0] == 250
    assert "t24" in relay.push.wait_for(1)
    # a message to oneself wakes no device
    pushed = len(relay.push.tokens)
    assert deliver(relay, addr, addr)[0] == 250
    assert deliver(relay, "someone@elsewhere.example", addr)[0] == 250
    assert relay.push.wait_for(pushed + 1)[pushed:] == ["t24"]


def test_one_delivery_to_several_accounts_pushes_to_each(relay: Relay24) -> None:
    # LMTP saves the message for the first recipient and copies it for the others
    addrs = [f"group24{n:02d}@example.org" for n in range(1, 3)]
    for n, addr in enumerate(addrs):
        conn = login(relay, addr, PASSWORD)
        typ, data = conn._simple_command("SETMETADATA", "INBOX", f'(/private/devicetoken "g{n}")')
        assert typ == "OK", data
        conn.logout()
    pushed = len(relay.push.tokens)
    message = b"From: someone@elsewhere.example\r\nSubject: [...]\r\n\r\nhello\r\n"
    replies = lmtp_to_each(relay.lmtp_socket, "someone@elsewhere.example", addrs, message)
    assert replies == [250, 250]
    assert sorted(relay.push.wait_for(pushed + 2)[pushed:]) == ["g0", "g1"]


QUOTA_ADDR = "quotauser@example.org"


@pytest.fixture(scope="module")
def small_relay() -> Iterator[Relay24]:
    """A second instance whose mailboxes hold 1 MiB."""
    with running_relay24(trixie_root(), "max_mailbox_size = 1M\n") as r:
        yield r
        assert_clean_logs(r)


def test_quota_warning_prunes_the_oldest_mail(small_relay: Relay24) -> None:
    relay = small_relay
    conn = login(relay, QUOTA_ADDR, PASSWORD)
    conn.select("INBOX")
    conn.logout()
    cur = relay.mailboxes / QUOTA_ADDR / "cur"
    names = []
    for days in (3, 2):
        # a message stored `days` ago, named as Dovecot names it (time and size)
        stamp = int(time.time()) - days * 86400
        names.append(f"{stamp}.M1P{days}.relay,S=300000,W=300000:2,S")
        (cur / names[-1]).write_bytes(b"y" * 300_000)
        shutil.chown(cur / names[-1], *relay.vmail)
    assert relay.doveadm("quota", "recalc", "-u", QUOTA_ADDR).returncode == 0
    # 600 kB of 1 MiB used; 250 kB more crosses 75 % and runs chatmail-quota-expire
    assert deliver(relay, "a@elsewhere.example", QUOTA_ADDR, 250_000)[0] == 250
    wait_for(lambda: not (cur / names[0]).exists(), what="the oldest message to go")
    assert (cur / names[1]).exists()  # down to 70 %: one old message is enough


def test_a_message_over_the_quota_is_refused(small_relay: Relay24) -> None:
    code, text = deliver(small_relay, "a@elsewhere.example", QUOTA_ADDR, 2_000_000)
    assert code == 552, text
    assert b"Quota exceeded" in text


def test_logins_go_on_after_doveauth_restarts(relay: Relay24) -> None:
    addr = "restart01@example.org"
    login(relay, addr, PASSWORD).logout()  # the auth worker keeps its connection to doveauth
    relay.stop_service("doveauth")
    logged = len(relay.dovecot_log())
    try:
        # as on Debian 12: a temporary failure while doveauth is away, not a refusal
        assert "[UNAVAILABLE]" in plain_login(relay, addr, PASSWORD.encode())
    finally:
        relay.start_service("doveauth")
    [error] = [line for line in relay.dovecot_log()[logged:].splitlines(True) if "Error" in line]
    assert "passdb-lua: cannot connect to doveauth" in error
    relay.expected_log_lines.append(error)
    # the kept connection is dead: the script connects again
    for _ in range(3):
        login(relay, addr, PASSWORD).logout()
