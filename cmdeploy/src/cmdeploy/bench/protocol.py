"""Just enough asyncio SMTP and IMAP for the load drivers of `cmdeploy bench` (issue 7).

smtplib and imaplib block a thread per connection; thousands of idle IMAP connections and a
few dozen busy senders on a 2-core machine that also runs the relays want one event loop
instead. Only what the bench needs: implicit TLS (465, 993) with the relay's domain as SNI,
AUTH PLAIN, one transaction at a time; IMAP LOGIN, SELECT, IDLE and LOGOUT. A reply the bench
does not expect raises `ProtocolError` carrying the server's words, never the password.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from .workload import dot_stuffed

NET_TIMEOUT = 30.0
_EXISTS = re.compile(rb"^\* (\d+) EXISTS")
_LITERAL = re.compile(rb"\{(\d+)\}$")  # a line announcing N bytes of literal data


class ProtocolError(Exception):
    """The server answered something else than the bench expected."""


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: an address, and the name for SNI (the relay's domain)."""

    host: str
    server_name: str
    verify: bool = False  # lab relays are self-signed

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


async def _open(
    endpoint: Endpoint, port: int, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(
            endpoint.host, port, ssl=ctx, server_hostname=endpoint.server_name, limit=1 << 20
        ),
        NET_TIMEOUT,
    )


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), 5)


class SMTPClient:
    """One authenticated submission connection (port 465, implicit TLS)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def login(
        cls, endpoint: Endpoint, ctx: ssl.SSLContext, addr: str, password: str, port: int = 465
    ) -> SMTPClient:
        reader, writer = await _open(endpoint, port, ctx)
        client = cls(reader, writer)
        try:
            await client.expect(220)
            await client.command(b"EHLO bench.test", 250)
            token = base64.b64encode(f"\0{addr}\0{password}".encode()).decode()
            await client.command(f"AUTH PLAIN {token}".encode(), 235, what="AUTH PLAIN")
        except BaseException:
            await _close(writer)
            raise
        return client

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), NET_TIMEOUT)
            if not line:
                raise ProtocolError("the SMTP server closed the connection")
            lines.append(line[4:].decode(errors="replace").strip())
            if line[3:4] != b"-":
                return int(line[:3]), " ".join(lines)

    async def expect(self, code: int, what: str = "") -> str:
        got, text = await self.reply()
        if got != code:
            raise ProtocolError(f"{what or 'SMTP'}: {got} {text}")
        return text

    async def command(self, line: bytes, code: int, what: str = "") -> str:
        self.writer.write(line + b"\r\n")
        return await self.expect(code, what or line.split(b" ", 1)[0].decode())

    async def send(
        self,
        mail_from: str,
        rcpt: str,
        data: bytes,
        on_end_of_data: Callable[[float], None] | None = None,
    ) -> float:
        """One transaction; returns the monotonic time at which the final `.` was written.

        That instant is "the end of DATA" of issue 7: the relay's filter, queue and delivery
        all happen after it, so latency measured from it is what a user waits for. It is
        taken, and the callback called, right after the message is handed to the transport
        and before anything is awaited: a watcher of the recipient's IDLE runs only when this
        coroutine yields, so it always knows the instant before it can read an EXISTS. (Taken
        after `drain()`, a busy event loop once let the EXISTS come first, and the message was
        wrongly counted as never told.)
        """
        self.writer.write(f"MAIL FROM:<{mail_from}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
        # Postfix offers PIPELINING; the three replies come back in order
        await self.expect(250, "MAIL FROM")
        await self.expect(250, "RCPT TO")
        await self.expect(354, "DATA")
        self.writer.write(dot_stuffed(data))
        end_of_data = time.monotonic()
        if on_end_of_data is not None:
            on_end_of_data(end_of_data)
        await self.writer.drain()
        await self.expect(250, "end of DATA")
        return end_of_data

    async def try_send(self, mail_from: str, rcpt: str, data: bytes) -> tuple[int, bool]:
        """One transaction, step by step: (the first reply that is not the expected one, or
        the 250 after DATA; 0 when none came), and whether the message was written out, so
        that a lost reply is told apart from a refusal. Never raises for the network."""
        after_data = False
        try:
            for line, expected in (
                (f"MAIL FROM:<{mail_from}>".encode(), 250),
                (f"RCPT TO:<{rcpt}>".encode(), 250),
                (b"DATA", 354),
            ):
                self.writer.write(line + b"\r\n")
                code, _ = await self.reply()
                if code != expected:
                    return code, False
            self.writer.write(dot_stuffed(data))
            after_data = True
            await self.writer.drain()
            code, _ = await self.reply()
            return code, True
        except (TimeoutError, OSError, ProtocolError, ssl.SSLError, EOFError):
            return 0, after_data

    async def quit(self) -> None:
        with contextlib.suppress(OSError, ProtocolError, asyncio.TimeoutError, ssl.SSLError):
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.reader.readline(), 5)
        await _close(self.writer)


class IMAPClient:
    """One IMAP connection (port 993, implicit TLS) that can log in, select and IDLE."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.tag = 0
        self.exists = 0
        self.idle_tag: bytes | None = None

    @classmethod
    async def connect(cls, endpoint: Endpoint, ctx: ssl.SSLContext, port: int = 993) -> IMAPClient:
        reader, writer = await _open(endpoint, port, ctx)
        client = cls(reader, writer)
        try:
            greeting = await client.line()
            if not greeting.startswith(b"* OK"):
                raise ProtocolError(f"IMAP greeting: {greeting.decode(errors='replace')}")
        except BaseException:
            await _close(writer)
            raise
        return client

    async def line(self, timeout: float | None = NET_TIMEOUT) -> bytes:
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line:
            raise ProtocolError("the IMAP server closed the connection")
        return line.rstrip(b"\r\n")

    def _note(self, line: bytes) -> None:
        match = _EXISTS.match(line)
        if match:
            self.exists = int(match.group(1))

    async def command(self, text: str, what: str) -> int:
        """Send one command and read until its tagged OK; the bytes of literals received."""
        self.tag += 1
        tag = f"b{self.tag}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        literal_bytes = 0
        while True:
            line = await self.line()
            self._note(line)
            literal = _LITERAL.search(line)
            if literal:  # a message's text follows: read it whole, it may hold any line
                size = int(literal.group(1))
                await asyncio.wait_for(self.reader.readexactly(size), NET_TIMEOUT)
                literal_bytes += size
            elif line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    reply = line[len(tag) + 1 :].decode(errors="replace")
                    raise ProtocolError(f"IMAP {what}: {reply}")
                return literal_bytes

    async def login(self, addr: str, password: str) -> None:
        # local parts and passwords of the bench are [a-zA-Z0-9]: quoting cannot break
        await self.command(f'LOGIN "{addr}" "{password}"', "LOGIN")

    async def select_inbox(self) -> int:
        await self.command("SELECT INBOX", "SELECT")
        return self.exists

    async def read_message(self, seq: int) -> int:
        """Fetch message `seq` of the selected mailbox as a client shows it; its size."""
        return await self.command(f"FETCH {seq} (BODY.PEEK[])", "FETCH")

    async def idle(self) -> None:
        self.tag += 1
        self.idle_tag = f"b{self.tag}".encode()
        self.writer.write(self.idle_tag + b" IDLE\r\n")
        while True:
            line = await self.line()
            self._note(line)
            if line.startswith(b"+"):
                return
            if line.startswith(self.idle_tag):
                raise ProtocolError(f"IMAP IDLE: {line.decode(errors='replace')}")

    async def next_exists(self) -> tuple[int, float]:
        """Wait (without timeout) for the next `* N EXISTS` during IDLE; N and when it came."""
        while True:
            line = await self.line(timeout=None)
            match = _EXISTS.match(line)
            if match:
                self.exists = int(match.group(1))
                return self.exists, time.monotonic()

    async def logout(self) -> None:
        with contextlib.suppress(OSError, ProtocolError, asyncio.TimeoutError, ssl.SSLError):
            if self.idle_tag:
                self.writer.write(b"DONE\r\n")
            self.writer.write(b"bz LOGOUT\r\n")
            await asyncio.wait_for(self.writer.drain(), 5)
            # until the server closes: a hibernated session is thawed to answer, and the
            # bench must not remove its mailbox before that (Dovecot would log an error)
            await asyncio.wait_for(self.reader.read(), 5)
        await _close(self.writer)
