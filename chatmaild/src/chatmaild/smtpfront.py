"""The SMTP side of filtermail: the server Postfix's before-queue proxy filter talks to.

A deliberately small and strict ESMTP server (RFC 5321): HELO, EHLO, MAIL, RCPT, DATA, RSET,
NOOP and QUIT; anything else gets `500 Command not recognized`. Every line must end in CRLF:
a bare LF or a bare CR closes the connection, so no one can smuggle a second message past the
gate. Every read has a timeout, and so has each command line and the whole DATA phase (a
client trickling a byte now and then is closed all the same). A message over `max_size` gets
`552 Message exceeds maximum size` and the connection is closed. MAIL and RCPT parameters
(SIZE, BODY, ORCPT, NOTIFY, ...) are accepted and ignored.

What is accepted is the `Gate`'s decision: it may raise `Reject` at MAIL FROM, at RCPT TO
(addresses are taken in one spelling only, doc/encryption-gate.md §1) or after DATA, and
exactly one place here turns a `Reject` into the reply line. An unexpected exception becomes
`451 4.3.0` and a log line naming only the exception type.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from .gatemetrics import GateCounters
from .mimeparse import has_bare_newline
from .smtpreject import Reject, message_too_large

log = logging.getLogger("filtermail")

READ_TIMEOUT = 120.0  # Postfix's smtpd_proxy_timeout is 100 s: it gives up first
# A whole command line, however it trickles in; and the whole DATA phase: Postfix streams a
# client's message through as it arrives, and 30 MB over a slow mobile link take minutes.
COMMAND_DEADLINE = READ_TIMEOUT
DATA_DEADLINE = 1800.0
MAX_COMMAND_LINE = 2048
MAX_RECIPIENTS = 1000  # Postfix's smtpd_recipient_limit, which Postfix enforces first
READ_SIZE = 256 * 1024
# `FROM:<path>` and `TO:<path>`, parameters after a space; the path is judged by the gate.
_PATH_RE = re.compile(r"(FROM|TO):[ ]?<([^<>]*)>(?: (.*))?\Z", re.IGNORECASE | re.DOTALL)


class Gate(Protocol):
    def check_sender(self, mail_from: str) -> str:
        """MAIL FROM as the gate takes it; raise Reject to refuse."""

    def check_recipient(self, rcpt: str) -> str:
        """RCPT TO in its one spelling, as it will be re-injected; raise Reject to refuse."""

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        """Check and pass on the message; the reply line (LMTP: one per recipient, joined by
        CRLF), or raise Reject."""


@dataclass
class Envelope:
    mail_from: str | None = None
    rcpts: list[str] = field(default_factory=list)


class ConnectionClosed(Exception):
    """The connection must end: bare LF, timeout, size, or the client went away."""


def parse_path(argument: str, keyword: str) -> str | None:
    """`FROM:<addr> PARAMS` -> addr, exactly as written between the brackets; None if malformed."""
    m = _PATH_RE.match(argument)
    if not m or m.group(1).upper() != keyword:
        return None
    return m.group(2)


def _newlines_checked(buffer: bytearray, start: int) -> int | None:
    """Check `buffer[start:]` for a bare LF or CR: None if there is one, else how far the
    buffer is checked. A CR last in the buffer may yet get its LF: it is looked at again
    once more data has arrived."""
    end = len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)
    return None if has_bare_newline(buffer, start, end) else end


def unstuff(data: bytearray) -> bytearray:
    """DATA as sent -> the message: the first dot of every line that starts with one goes."""
    if data.startswith(b"."):
        del data[:1]
    if b"\r\n." in data:  # rare in chat mail; armor lines never start with a dot
        data = data.replace(b"\r\n.", b"\r\n")
    return data


class SmtpSession:
    def __init__(
        self,
        gate: Gate,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hostname: str,
        max_size: int,
        timeout: float = READ_TIMEOUT,
        counters: GateCounters | None = None,
    ) -> None:
        self.gate = gate
        self.counters = counters
        self.reader = reader
        self.writer = writer
        self.hostname = hostname
        self.max_size = max_size
        self.timeout = timeout
        self.envelope = Envelope()
        self.buffer = bytearray()

    async def reply(self, line: str) -> None:
        self.writer.write(line.encode("ascii", "replace") + b"\r\n")
        await self.writer.drain()

    async def refuse(self, reject: Reject) -> None:
        """Answer a refusal and count it."""
        if self.counters is not None:
            self.counters.refused(reject)
        await self.reply(reject.reply())

    def _deadline(self, seconds: float) -> float:
        return asyncio.get_running_loop().time() + seconds

    async def _fill(self, deadline: float) -> None:
        timeout = min(self.timeout, deadline - asyncio.get_running_loop().time())
        try:
            if timeout <= 0:
                raise TimeoutError
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps every read in a new
            # task, a few loop iterations more per command line
            async with asyncio.timeout(timeout):
                chunk = await self.reader.read(READ_SIZE)
        except TimeoutError:
            log.info("closing connection: timeout")
            raise ConnectionClosed from None
        except ConnectionError:
            raise ConnectionClosed from None
        if not chunk:
            raise ConnectionClosed
        self.buffer += chunk

    async def readline(self, limit: int) -> bytes:
        deadline = self._deadline(COMMAND_DEADLINE)
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > limit:
                await self.reply("500 Line too long")
                raise ConnectionClosed
            await self._fill(deadline)
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            log.warning("closing connection: line not ending in CRLF, or a bare CR in it")
            raise ConnectionClosed
        if len(line) > limit:
            await self.reply("500 Line too long")
            raise ConnectionClosed
        return line

    async def run(self) -> None:
        await self.reply("220 filtermail SMTP")
        with contextlib.suppress(ConnectionClosed):
            while True:
                line = await self.readline(MAX_COMMAND_LINE)
                # surrogate escapes keep bytes that are not UTF-8 visible to the gate's checks
                text = line[:-2].decode("utf-8", "surrogateescape")
                verb, _, argument = text.partition(" ")
                handler = self.handlers.get(verb.upper())
                if handler is None:
                    await self.reply("500 Command not recognized")
                    continue
                await handler(self, argument)

    async def on_helo(self, argument: str) -> None:
        self.envelope = Envelope()
        await self.reply(f"250 {self.hostname}")

    async def on_ehlo(self, argument: str) -> None:
        self.envelope = Envelope()
        features = ["8BITMIME", "SMTPUTF8", f"SIZE {self.max_size}"]
        lines = [f"250-{self.hostname}", *(f"250-{f}" for f in features[:-1])]
        await self.reply("\r\n".join([*lines, f"250 {features[-1]}"]))

    async def on_mail(self, argument: str) -> None:
        if self.envelope.mail_from is not None:
            await self.reply("503 Sender already given")
            return
        addr = parse_path(argument, "FROM")
        if addr is None:
            await self.reply("501 Syntax: MAIL FROM:<address>")
            return
        try:
            sender = self.gate.check_sender(addr)
        except Reject as e:
            log.info("refused sender: %s", e.private)
            await self.refuse(e)
            return
        self.envelope.mail_from = sender
        await self.reply("250 OK")

    async def on_rcpt(self, argument: str) -> None:
        if self.envelope.mail_from is None:
            await self.reply("503 Need MAIL before RCPT")
            return
        addr = parse_path(argument, "TO")
        if not addr:
            await self.reply("501 Syntax: RCPT TO:<address>")
            return
        if len(self.envelope.rcpts) >= MAX_RECIPIENTS:
            await self.reply("452 4.5.3 Too many recipients")
            return
        try:
            rcpt = self.gate.check_recipient(addr)
        except Reject as e:
            log.info("refused recipient: %s", e.private)
            await self.refuse(e)
            return
        self.envelope.rcpts.append(rcpt)
        await self.reply("250 OK")

    async def on_data(self, argument: str) -> None:
        envelope = self.envelope
        if envelope.mail_from is None or not envelope.rcpts:
            await self.reply("503 Need MAIL and RCPT before DATA")
            return
        await self.reply("354 End data with <CR><LF>.<CR><LF>")
        data = await self.read_data()
        self.envelope = Envelope()
        await self.reply(await self.decide(envelope.mail_from, envelope.rcpts, data))

    async def read_data(self) -> bytes:
        """The message after `354`, up to CRLF.CRLF, dot-unstuffed (RFC 5321 §4.5.2).

        Scanned in blocks rather than lines (a megabyte of armored text is ~15000 lines); each
        new block is checked for a bare LF or CR at once, which closes the connection. The
        message is cut out of the read buffer in place: a big message is held about twice,
        and only for a moment.
        """
        deadline = self._deadline(DATA_DEADLINE)
        checked = scanned = 0
        while True:
            newlines_ok = _newlines_checked(self.buffer, checked)
            if newlines_ok is None:
                log.warning("closing connection: a bare LF or CR in DATA")
                raise ConnectionClosed
            checked = newlines_ok
            if self.buffer.startswith(b".\r\n"):  # an empty message
                del self.buffer[:3]
                return b""
            end = self.buffer.find(b"\r\n.\r\n", scanned)
            if end >= 0:
                break
            if len(self.buffer) > self.max_size + 5:
                await self.refuse(message_too_large())
                raise ConnectionClosed
            scanned = max(0, len(self.buffer) - 4)
            await self._fill(deadline)
        message, self.buffer = self.buffer, self.buffer[end + 5 :]
        del message[end + 2 :]
        if len(message) > self.max_size + 2:
            await self.refuse(message_too_large())
            raise ConnectionClosed
        return bytes(unstuff(message))

    async def decide(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        """The one place where the outcome of a message becomes its reply."""
        try:
            return await self.gate.deliver(mail_from, rcpts, data)
        except Reject as e:
            log.info("rejected message: %s", e.private)
            if self.counters is not None:
                self.counters.refused(e)
            return e.reply()
        except Exception as e:  # noqa: BLE001 (message boundary: answer 451, keep serving)
            log.error("message failed: %s", type(e).__name__)
            return "451 4.3.0 Internal error, please try again later"

    async def on_rset(self, argument: str) -> None:
        self.envelope = Envelope()
        await self.reply("250 OK")

    async def on_noop(self, argument: str) -> None:
        await self.reply("250 OK")

    async def on_quit(self, argument: str) -> None:
        await self.reply("221 Bye")
        raise ConnectionClosed

    handlers: ClassVar[dict[str, Callable[[SmtpSession, str], Awaitable[None]]]] = {
        "HELO": on_helo,
        "EHLO": on_ehlo,
        "MAIL": on_mail,
        "RCPT": on_rcpt,
        "DATA": on_data,
        "RSET": on_rset,
        "NOOP": on_noop,
        "QUIT": on_quit,
    }


class LmtpSession(SmtpSession):
    """LMTP (RFC 2033), as Postfix's lmtp client speaks it to the transport: LHLO instead of
    HELO and EHLO, and after DATA one reply per recipient, in the order of RCPT. The gate's
    `deliver` returns these lines joined by CRLF; a refusal applies to every recipient."""

    async def decide(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        reply = await super().decide(mail_from, rcpts, data)
        lines = reply.split("\r\n")
        return reply if len(lines) == len(rcpts) else "\r\n".join([lines[0]] * len(rcpts))

    handlers: ClassVar[dict[str, Callable[[SmtpSession, str], Awaitable[None]]]] = {
        **{k: v for k, v in SmtpSession.handlers.items() if k not in ("HELO", "EHLO")},
        "LHLO": SmtpSession.on_ehlo,
    }


async def start_smtp_server(
    gate: Gate,
    host: str,
    port: int,
    hostname: str,
    max_size: int,
    lmtp: bool = False,
    counters: GateCounters | None = None,
) -> asyncio.AbstractServer:
    kind = LmtpSession if lmtp else SmtpSession

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await kind(gate, reader, writer, hostname, max_size, counters=counters).run()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(session, host, port)
