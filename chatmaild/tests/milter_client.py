"""Postfix's side of the milter protocol (doc/milter.md §1), as far as the gate's tests need
it: what the submission listeners' smtpd and cleanup send the outgoing gate for a message,
over its UNIX socket. test_milter_postfix.py checks the same gate with the real Postfix."""

from __future__ import annotations

import socket
import struct

# what Postfix 3.7 offers: protocol 6, every action, every protocol flag
OFFER = struct.pack(">III", 6, 0x1FF, 0x1FFFFF)
NR_MAIL = 0x4000
QUEUED = (250, "queued")  # the gate accepted the message: Postfix queues its own copy
PASSED_ON = (250, "passed on")  # the gate re-injected it: Postfix drops its copy


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", 1 + len(data)) + command + data


def header_events(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The message as cleanup hands it to a milter: each header's name and value (the value
    with its leading space, a fold as a bare LF), and the body."""
    head, _, body = message.partition(b"\r\n\r\n")
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\n" + line)
        else:
            name, _, value = line.partition(b":")
            headers.append((name, value))
    return headers, body


def parse_reply(reply: bytes) -> tuple[int, str] | None:
    """None for "continue"; (code, text) for a reply line, QUEUED or PASSED_ON."""
    command, data = reply[:1], reply[1:]
    if command == b"c":
        return None
    if command == b"a":
        return QUEUED
    if command == b"d":
        return PASSED_ON
    if command == b"y":
        code, _, text = data.rstrip(b"\0").decode().replace("%%", "%").partition(" ")
        return int(code), text
    raise AssertionError(f"unexpected milter reply {reply!r}")


class MilterClient:
    def __init__(self, path: str, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
            negotiated = self.ask(b"O", OFFER)
            # the protocol flags the gate agreed to: whether MAIL gets an answer
            self.mail_answered = not struct.unpack(">III", negotiated[1:13])[2] & NR_MAIL
        except OSError:
            self.sock.close()
            raise

    def ask(self, command: bytes, data: bytes = b"") -> bytes:
        """Send a command and read its reply packet (b"" if the gate closed the connection)."""
        self.sock.sendall(packet(command, data))
        head = self._read(4)
        if len(head) < 4:
            return b""
        (length,) = struct.unpack(">I", head)
        return self._read(length)

    def tell(self, command: bytes, data: bytes = b"") -> None:
        """Send a command that gets no reply."""
        self.sock.sendall(packet(command, data))

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def mail(self, address: str) -> tuple[int, str] | None:
        """None: Postfix goes on (the gate judges the sender at the first RCPT)."""
        if not self.mail_answered:
            self.tell(b"M", f"<{address}>\0".encode())
            return None
        return parse_reply(self.ask(b"M", f"<{address}>\0".encode()))

    def rcpt(self, address: str) -> tuple[int, str] | None:
        return parse_reply(self.ask(b"R", f"<{address}>\0".encode()))

    def message(self, data: bytes) -> tuple[int, str]:
        headers, body = header_events(data)
        for name, value in headers:
            self.tell(b"L", name + b"\0" + value + b"\0")
        self.tell(b"N")
        for start in range(0, len(body), 65535):
            self.tell(b"B", body[start : start + 65535])
        reply = parse_reply(self.ask(b"E"))
        assert reply is not None, "the end of a message got 'continue'"
        return reply

    def abort(self) -> None:
        self.tell(b"A")

    def close(self) -> None:
        try:
            self.tell(b"Q")
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send(path: str, mail_from: str, rcpts: list[str], data: bytes) -> tuple[int, str]:
    """One message through the gate as Postfix passes it: the client's reply, as (code, text)
    for a refusal, QUEUED or PASSED_ON. Refused recipients are left out, as Postfix leaves
    them; if none is left, the last refusal."""
    with MilterClient(path) as client:
        refused = client.mail(mail_from)
        if refused is not None:
            return refused
        taken, last_refusal = 0, None
        for rcpt in rcpts:
            reply = client.rcpt(rcpt)
            if reply is None:
                taken += 1
            else:
                last_refusal = reply
        if not taken:
            return last_refusal or (554, "no recipients")
        return client.message(data)
