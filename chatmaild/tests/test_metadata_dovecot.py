"""Component tests: METADATA, capabilities and push through a real Dovecot and its Lua hook."""

from __future__ import annotations

import imaplib
import json
import os
import smtplib
import time
from collections.abc import Iterator

import pytest
from chatmaild_testing import dovecot_or_skip
from dovecot_harness import Relay, lmtp_to_each, running_relay, wait_for

from chatmaild import turn
from chatmaild.appversions import bundled_path, check, compact
from chatmaild.pushqueue import SPOOL_DIR
from chatmaild.tokens import METADATA_FILE

pytestmark = pytest.mark.dovecot

for _command in ("SETMETADATA", "GETMETADATA"):
    imaplib.Commands.setdefault(_command, ("AUTH", "SELECTED"))

PASSWORD = "pass-word-1"


@pytest.fixture
def imap(relay: Relay) -> Iterator[imaplib.IMAP4]:
    conn = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)
    yield conn
    conn.shutdown()


def logged_in(relay: Relay, addr: str) -> imaplib.IMAP4:
    conn = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)
    conn.login(addr, PASSWORD)
    return conn


def set_token(conn: imaplib.IMAP4, token: str) -> None:
    typ, data = conn._simple_command("SETMETADATA", "INBOX", f'(/private/devicetoken "{token}")')
    assert typ == "OK", data


def get_metadata(conn: imaplib.IMAP4, mailbox: str, entry: str) -> str | None:
    """The value of one METADATA entry (RFC 5464): None for NIL."""
    typ, data = conn._simple_command("GETMETADATA", mailbox, entry)
    assert typ == "OK", data
    _, untagged = conn._untagged_response(typ, data, "METADATA")
    for item in untagged:
        if isinstance(item, tuple):  # a literal: (b'INBOX (/entry {4}', b'1111')
            return item[1].decode()
        if isinstance(item, bytes) and entry in item.decode():
            value = item.decode().split(entry, 1)[1].strip().removesuffix(")").strip()
            return None if value == "NIL" else value.strip('"')
    raise AssertionError(f"no METADATA response for {entry}")


def deliver(relay: Relay, sender: str, rcpt: str, from_header: str | None = None) -> None:
    """LMTP delivery of a small message; its From is `from_header` if given ("" for none),
    else `sender`."""
    header = sender if from_header is None else from_header
    from_line = f"From: {header}\r\n" if header else ""
    message = (f"{from_line}To: {rcpt}\r\nSubject: [...]\r\n\r\nhello\r\n").encode()
    with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
        lmtp.sendmail(sender, [rcpt], message)


def test_capabilities_before_and_after_login(relay: Relay, imap: imaplib.IMAP4) -> None:
    assert {"XCHATMAIL", "XDELTAPUSH"} <= set(imap.capabilities)
    imap.login("capable01@example.org", PASSWORD)
    typ, data = imap.capability()
    caps = set(data[0].decode().split())
    assert {"XCHATMAIL", "XDELTAPUSH", "METADATA"} <= caps


def test_device_tokens_round_trip_and_coexist(relay: Relay) -> None:
    conn = logged_in(relay, "tokens001@example.org")
    assert get_metadata(conn, "INBOX", "/private/devicetoken") in (None, "")
    set_token(conn, "1111")
    assert get_metadata(conn, "INBOX", "/private/devicetoken") == "1111"
    set_token(conn, "2222")
    set_token(conn, "1111")  # a refresh, not a duplicate
    assert get_metadata(conn, "INBOX", "/private/devicetoken") == "1111 2222"
    conn.logout()
    stored = json.loads((relay.mailboxes / "tokens001@example.org" / "metadata.json").read_text())
    assert set(stored["devicetoken"]) == {"1111", "2222"}


def test_bad_tokens_are_refused(relay: Relay) -> None:
    conn = logged_in(relay, "badtoken1@example.org")
    typ, data = conn._simple_command("SETMETADATA", "INBOX", '(/private/devicetoken "a b")')
    assert typ == "NO"
    conn.logout()
    assert not (relay.mailboxes / "badtoken1@example.org" / "metadata.json").exists()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("/shared/vendor/deltachat/irohrelay", None),  # no iroh_relay configured
        ("/shared/vendor/deltachat/maxsmtprecipients", "1000"),
        ("/shared/admin", "mailto:privacy@example.org"),
        ("/shared/vendor/deltachat/nonsense", None),
    ],
)
def test_server_metadata(relay: Relay, entry: str, expected: str | None) -> None:
    conn = logged_in(relay, "servermd1@example.org")
    assert get_metadata(conn, '""', entry) == expected
    conn.logout()


def test_appversions_through_dovecot(relay: Relay) -> None:
    """The bundled catalogue reaches the client whole: one line of JSON (doc/metadata.md)."""
    conn = logged_in(relay, "appvers01@example.org")
    value = get_metadata(conn, '""', "/shared/vendor/deltachat/appversions")
    conn.logout()
    assert value == compact(bundled_path().read_text())
    check(json.loads(value))


def test_turn_credentials_in_server_metadata(relay: Relay) -> None:
    conn = logged_in(relay, "turnuser1@example.org")
    value = get_metadata(conn, '""', "/shared/vendor/deltachat/turn")
    conn.logout()
    assert value is not None
    host, port, username, password = value.split(":")
    assert (host, port) == ("example.org", "3478")
    # the expiry Delta Chat reads (doc/metadata.md): LIFETIME from now by the real clock
    assert abs(int(username) - (time.time() + turn.LIFETIME)) < 60
    secret = relay.turn_secret_file.read_bytes().strip()
    assert (username, password) == turn.credentials(secret, int(username) - turn.LIFETIME)


def test_new_mail_pushes_to_every_device(relay: Relay) -> None:
    conn = logged_in(relay, "pushed001@example.org")
    set_token(conn, "device-a-pushed001")
    set_token(conn, "device-b-pushed001")
    conn.logout()
    before = len(relay.push.tokens)
    deliver(relay, "someone@elsewhere.example", "pushed001@example.org")
    received = relay.push.wait_for(before + 2)
    assert sorted(received[before:]) == ["device-a-pushed001", "device-b-pushed001"]
    wait_for(lambda: not any((relay.mailboxes / SPOOL_DIR).iterdir()), what="empty queue")


def test_mail_to_oneself_pushes_nothing(relay: Relay) -> None:
    addr = "selfsend1@example.org"
    conn = logged_in(relay, addr)
    set_token(conn, "device-selfsend1")
    conn.logout()
    deliver(relay, addr, addr)
    # the hook writes synchronously before LMTP answers: a push would be queued or sent now
    spool = relay.mailboxes / SPOOL_DIR
    assert "device-selfsend1" not in relay.push.tokens
    assert not spool.exists() or not any(spool.iterdir())
    # and the same account does get a push for mail from someone else
    before = len(relay.push.tokens)
    deliver(relay, "other@elsewhere.example", addr)
    assert relay.push.wait_for(before + 1)[before:] == ["device-selfsend1"]


def test_only_mail_from_someone_else_wakes_the_devices(relay: Relay) -> None:
    """The push hook reads the From address as Dovecot's push driver did: the first address,
    local part and domain in any case, without the display name."""
    addr = "selfcase1@example.org"
    conn = logged_in(relay, addr)
    set_token(conn, "device-selfcase1")
    conn.logout()
    spool = relay.mailboxes / SPOOL_DIR
    for own in ('"Me" <SelfCase1@EXAMPLE.org>', "selfcase1@example.org (me)"):
        deliver(relay, "bounce@elsewhere.example", addr, from_header=own)
        # written before LMTP answers: a push would be queued or sent by now
        assert "device-selfcase1" not in relay.push.tokens, own
        assert not spool.exists() or not any(spool.iterdir()), own
    for other in ("", "someone@elsewhere.example, selfcase1@example.org", f"{addr}.evil.example"):
        before = len(relay.push.tokens)
        deliver(relay, "bounce@elsewhere.example", addr, from_header=other)
        assert relay.push.wait_for(before + 1)[before:] == ["device-selfcase1"], other


def test_one_delivery_to_several_accounts_pushes_to_each(relay: Relay) -> None:
    """Postfix hands a group message to Dovecot once, with all its local recipients; LMTP
    saves it for the first and copies it for the others (no second save): each is woken."""
    addrs = [f"group000{n}@example.org" for n in range(1, 4)]
    for addr in addrs:
        conn = logged_in(relay, addr)
        set_token(conn, f"device-{addr.split('@')[0]}")
        conn.logout()
    before = len(relay.push.tokens)
    message = b"From: someone@elsewhere.example\r\nSubject: [...]\r\n\r\nhello\r\n"
    replies = lmtp_to_each(relay.lmtp_socket, "someone@elsewhere.example", addrs, message)
    assert replies == [250] * len(addrs)
    received = relay.push.wait_for(before + len(addrs))[before:]
    assert sorted(received) == [f"device-{a.split('@')[0]}" for a in addrs]


def test_each_recipient_of_one_delivery_is_judged_on_its_own(relay: Relay) -> None:
    """The same delivery, sent by its first recipient and copied to the others: the sender's
    own copy and an account without a token wake nothing, a member with a token is woken."""
    sender, tokenless, member = (
        f"{n}@example.org" for n in ("grpself01", "grpnotok1", "grpmbr001")
    )
    for addr in (sender, tokenless, member):
        conn = logged_in(relay, addr)
        if addr != tokenless:
            set_token(conn, f"device-{addr.split('@')[0]}")
        conn.logout()
    before = len(relay.push.tokens)
    message = f"From: {sender}\r\nSubject: [...]\r\n\r\nhello\r\n".encode()
    replies = lmtp_to_each(relay.lmtp_socket, sender, [sender, tokenless, member], message)
    assert replies == [250, 250, 250]
    assert relay.push.wait_for(before + 1)[before:] == ["device-grpmbr001"]
    # the hook wrote before LMTP answered: a push for the sender would be queued or sent now
    assert "device-grpself01" not in relay.push.tokens
    assert "Cannot set attribute" not in relay.dovecot_log()


def test_the_push_hook_does_not_rescan_the_mailbox(relay: Relay) -> None:
    """The hook only opens the mailbox to write its entry: a sync on every delivery would
    reread new/, whose size grows with the mail not yet fetched (doc/performance.md). A file
    put into new/ behind Dovecot's back shows it: a sync would give it a UID."""
    addr = "norescan1@example.org"
    conn = logged_in(relay, addr)
    set_token(conn, "device-norescan1")
    conn.select("INBOX")  # creates the maildir
    conn.logout()
    unseen = "1700000000.M1P1.elsewhere,S=17"
    path = relay.mailboxes / addr / "new" / unseen
    path.write_bytes(b"Subject: x\r\n\r\nx\r\n")
    os.chown(path, path.parent.stat().st_uid, path.parent.stat().st_gid)
    before = len(relay.push.tokens)
    deliver(relay, "someone@elsewhere.example", addr)
    assert relay.push.wait_for(before + 1)[before:] == ["device-norescan1"]
    assert unseen not in (relay.mailboxes / addr / "dovecot-uidlist").read_text()


def test_the_push_hook_asks_nothing_for_an_account_without_tokens() -> None:
    """Without a device token there is no device to wake (doc/contract.md §5.7): the hook
    neither opens the mailbox nor writes to chatmail-metadata. Here the metadata dict is out
    of reach, so any write the hook tries shows in Dovecot's log as an error."""
    dovecot_or_skip()
    unreachable = "mail_attribute_dict = proxy:/nonexistent/metadata.socket:metadata\n"
    with running_relay(dovecot_settings=unreachable) as relay:
        for addr in ("notokens1@example.org", "hastoken1@example.org"):
            logged_in(relay, addr).logout()  # creates the account
        tokens = relay.mailboxes / "hastoken1@example.org" / METADATA_FILE
        tokens.write_text("{}")
        os.chown(tokens, tokens.parent.stat().st_uid, tokens.parent.stat().st_gid)
        deliver(relay, "someone@elsewhere.example", "notokens1@example.org")
        assert "rror" not in relay.dovecot_log()
        # the same relay's hook does write for an account that has a token file
        deliver(relay, "someone@elsewhere.example", "hastoken1@example.org")
        wait_for(lambda: "Cannot set attribute" in relay.dovecot_log(), what="the hook's write")


def test_gone_token_is_forgotten(relay: Relay) -> None:
    addr = "goneaway1@example.org"
    conn = logged_in(relay, addr)
    set_token(conn, "device-gone")
    set_token(conn, "device-alive")
    relay.push.statuses["device-gone"] = 410
    before = len(relay.push.tokens)
    deliver(relay, "someone@elsewhere.example", addr)
    assert len(relay.push.wait_for(before + 2)) == before + 2
    wait_for(
        lambda: get_metadata(conn, "INBOX", "/private/devicetoken") == "device-alive",
        what="the gone token to be forgotten",
    )
    conn.logout()


def test_metadata_logs_hold_no_addresses_or_tokens(relay: Relay) -> None:
    addr = "logcheck1@example.org"
    conn = logged_in(relay, addr)
    set_token(conn, "device-logcheck")
    relay.push.statuses["device-logcheck"] = 500  # a failure gets logged: without the token
    conn.logout()
    before = len(relay.push.tokens)
    deliver(relay, "someone@elsewhere.example", addr)
    relay.push.wait_for(before + 1)
    wait_for(lambda: "HTTP 500" in relay.service_log("metadata"), what="the failure logged")
    log = relay.service_log("metadata")
    for needle in ("logcheck1", "device-logcheck", "elsewhere"):
        assert needle not in log  # ...without saying whose or which
    # the Lua hook and the dict wiring ran cleanly; the one expected error is the bad token
    errors = [
        line
        for line in relay.dovecot_log().splitlines()
        if " Error" in line and "Dict private transaction commit failed" not in line
    ]
    assert errors == []
