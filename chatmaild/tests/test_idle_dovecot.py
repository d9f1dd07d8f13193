"""New mail reaches an IDLE client through a real Dovecot with the chatmail_notify plugin,
built and loaded as on a relay: at once while the client's imap process lives, after it went
into hibernation, and when the mail arrives during the hand-over (doc/performance.md).

How fast is for `cmdeploy bench` to say; these tests assert what happens at all: that the
notice comes, that it is not batched behind Dovecot's stock 500 ms delay, and that none is
lost at the hand-over, which stock Dovecot loses about half the time with a full mailbox.
"""

from __future__ import annotations

import contextlib
import imaplib
import select
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from chatmaild_testing import dovecot_or_skip
from dovecot_harness import Relay, running_relay, wait_for

pytestmark = pytest.mark.dovecot

ADDR, PASSWORD = "idletest1@example.org", "idle-test-password-1"
HIBERNATE_AFTER = 1  # seconds of IDLE before the connection goes to imap-hibernate
NOTICE_DEADLINE = 10.0  # seconds: a notice later than this counts as lost


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    dovecot_or_skip()
    settings = f"imap_hibernate_timeout = {HIBERNATE_AFTER}s\n"
    with running_relay(dovecot_settings=settings) as r:
        conn = imaplib.IMAP4("127.0.0.1", r.imap_port, timeout=10)
        conn.login(ADDR, PASSWORD)  # creates the account
        conn.logout()
        yield r


def deliver(relay: Relay, count: int = 1) -> None:
    with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
        for _ in range(count):
            lmtp.sendmail("a@elsewhere.example", [ADDR], b"Subject: x\r\n\r\nhello\r\n")


class IdleClient:
    """A raw IMAP connection that selects INBOX and IDLEs, reading untagged responses."""

    def __init__(self, relay: Relay) -> None:
        self.sock = socket.create_connection(("127.0.0.1", relay.imap_port), timeout=10)
        self.buffer = b""
        self.readline(10)  # greeting
        self.command(f"a LOGIN {ADDR} {PASSWORD}")
        self.command("b SELECT INBOX")

    def readline(self, timeout: float) -> bytes | None:
        """The next line, or None if none is complete within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (end := self.buffer.find(b"\r\n")) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer[: end + 2], self.buffer[end + 2 :]
        return line

    def command(self, line: str) -> list[bytes]:
        self.sock.sendall(line.encode() + b"\r\n")
        tag = line.split()[0].encode() + b" "
        replies = []
        while not (reply := self.readline(10) or b"").startswith(tag):
            assert reply, f"no answer to {line}"
            replies.append(reply)
        assert reply.startswith(tag + b"OK"), reply
        return replies

    def idle(self) -> None:
        self.sock.sendall(b"i IDLE\r\n")
        assert (self.readline(10) or b"").startswith(b"+ ")

    def exists(self, timeout: float) -> list[int]:
        """The message counts of the EXISTS responses that come within `timeout` seconds,
        stopping at the first one and at whatever arrives within 0.3 s after it."""
        counts: list[int] = []
        deadline = time.monotonic() + timeout
        while (line := self.readline(deadline - time.monotonic())) is not None:
            if line.endswith(b" EXISTS\r\n"):
                counts.append(int(line.split()[1]))
                deadline = min(deadline, time.monotonic() + 0.3)
        return counts

    def done(self) -> None:
        self.sock.sendall(b"DONE\r\n")
        while not (self.readline(10) or b"i ").startswith(b"i "):
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"z LOGOUT\r\n")
        self.sock.close()


@contextlib.contextmanager
def idle_client(relay: Relay) -> Iterator[IdleClient]:
    client = IdleClient(relay)
    try:
        yield client
    finally:
        client.close()


def imap_processes(relay: Relay) -> list[str]:
    """The names of this Dovecot instance's processes (its instance_name is in the title)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    prefix = f"chatmail-test-{relay.imap_port}/"
    return [
        line.split(prefix, 1)[1].split()[0] for line in ps.stdout.splitlines() if prefix in line
    ]


def test_live_idle_is_told_at_once_not_batched(relay: Relay) -> None:
    """Two messages 100 ms apart: stock Dovecot announces both together 500 ms after the
    first (one `EXISTS`); with chatmail_notify each gets its own notice."""
    separate = 0
    with idle_client(relay) as client:
        for _ in range(5):
            client.command("n NOOP")  # every earlier notice read
            client.idle()
            deliver(relay)
            time.sleep(0.1)  # the second message comes within stock Dovecot's delay
            deliver(relay)
            counts = client.exists(NOTICE_DEADLINE)
            assert counts, "no EXISTS for new mail"
            separate += len(counts) >= 2
            client.done()
    assert separate >= 3, f"only {separate} of 5 pairs were announced separately"


def test_hibernated_idle_is_told(relay: Relay) -> None:
    with idle_client(relay) as client:
        client.idle()
        wait_for(
            lambda: "imap" not in imap_processes(relay),
            what="the IDLE connection to go into hibernation",
        )
        assert "imap-hibernate" in imap_processes(relay)
        deliver(relay)
        assert client.exists(NOTICE_DEADLINE), "the hibernated client was not told"


def test_no_notice_is_lost_at_the_hand_over_to_hibernation(relay: Relay) -> None:
    """Deliveries around the moment the connection goes into hibernation, in small steps;
    with a full mailbox the hand-over takes long enough to be hit often."""
    deliver(relay, 2000)
    rounds = 16
    lost = []
    for i in range(rounds):
        offset = HIBERNATE_AFTER - 0.15 + 0.3 * i / rounds
        with idle_client(relay) as client:
            client.idle()
            time.sleep(offset)  # to the moment under test, not waiting for an event
            deliver(relay)
            if not client.exists(NOTICE_DEADLINE):
                lost.append(round(offset, 3))
    assert not lost, f"no EXISTS within {NOTICE_DEADLINE} s for mail delivered at {lost} s"
