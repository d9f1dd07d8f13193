"""Hands accepted mail back to Postfix over SMTP.

Outgoing mail with a recipient elsewhere goes to `postfix_reinject_port` (10025: header cleanup
and DKIM signing; mail for local users only Postfix queues at submission, doc/milter.md);
incoming mail to `postfix_reinject_port_incoming` (10026: on to LMTP). Postfix's own reply
is passed through to the client: a refusal there reaches the sender as it was given. A
failure without any reply (Postfix down, connection lost) becomes a 451, so the message is
retried later and never lost.

A small asyncio SMTP client (RFC 5321) with a pool of idle connections: a message costs
two round trips on an open connection, not a new connection and EHLO each time: MAIL, RCPT
and DATA go in one write, as Postfix announces PIPELINING (RFC 2920), then the message.
After a refusal in a pipelined envelope the connection is closed, not reset and reused:
with a refused recipient beside an accepted one, Postfix answers DATA with 354 and waits for
a message that must not be sent (its sender is told it was refused); and Postfix counts each
reply after the refusal (503 to RCPT and DATA after a refused MAIL) as an error of the
session, whose `smtpd_soft_error_limit` would slow every later message on it.

A pooled connection that turns out to be dead is replaced once, transparently: one that
was lost, and one Postfix closed for idleness, which it does by writing
`421 4.4.2 ... Error: timeout exceeded` first, a line read only when we use the connection
again (that 421 must not reach the client as the verdict on its message). Idle connections
are not kept longer than `IDLE_LIFETIME`, well within Postfix's `smtpd_timeout` (300 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .mimeparse import crlf_only

log = logging.getLogger("filtermail")

TIMEOUT = 60.0
MAX_IDLE = 16
# Work on a message above this size is done in a worker thread, so that the event loop keeps
# serving the other connections (for a small one the hand-over costs more than it saves).
OFF_LOOP_SIZE = 256 * 1024
IDLE_LIFETIME = 120.0  # seconds
CLOSING = 421  # "service not available, closing transmission channel"
TEMPORARY_FAILURE = "451 4.3.0 Could not hand the message on, please try again later"
# logged when the connection failed after the whole message was sent: Postfix may hold it
# already, and a resend after the 451 may then deliver it twice (at-least-once)
AFTER_END_OF_DATA = "re-injection failed after the end of DATA; Postfix may have queued it"


class ReplyError(Exception):
    """Postfix refused a step; `reply` is its reply line, to pass on. `drop`: the connection
    cannot take the next message (Postfix is closing it, or a pipelined envelope was refused)."""

    def __init__(self, reply: str, drop: bool = False) -> None:
        super().__init__(reply)
        self.reply = reply
        self.drop = drop


class BareNewline(ValueError):
    """The message has a line end other than CRLF: it must never reach Postfix's loopback
    ports, which take a bare LF as a line end (a lone `.` would end DATA early)."""


def dot_stuff(data: bytes) -> list[bytes]:
    """The DATA payload in pieces to write: a dot doubled at each line start, CRLF.CRLF at the
    end (RFC 5321 §4.5.2). Both front ends hand over CRLF-only messages; anything else raises
    `BareNewline` rather than be sent."""
    if not crlf_only(data):
        raise BareNewline("bare CR or LF in a message to re-inject")
    pieces = [data if b"\r\n." not in data else data.replace(b"\r\n.", b"\r\n..")]
    if data.startswith(b"."):
        pieces.insert(0, b".")
    if not data.endswith(b"\r\n") and data:
        pieces.append(b"\r\n")
    pieces.append(b".\r\n")
    return pieces


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()
        self.pipelining = False  # announced in the reply to EHLO
        # the current message's end of DATA was written: from here on, a connection that
        # fails may have left the message queued in Postfix (reset at each MAIL FROM)
        self.data_ended = False

    async def reply(self) -> tuple[int, str]:
        """Read one (possibly multi-line) reply: its code and its text on one line."""
        texts = []
        while True:
            # asyncio.timeout rather than wait_for, which on Python 3.11 costs a task each time
            async with asyncio.timeout(TIMEOUT):
                line = await self.reader.readline()
            if len(line) < 4 or not line[:3].isdigit():
                raise ConnectionError("malformed or missing SMTP reply")
            texts.append(line[4:].decode("utf-8", "replace").strip())
            if line[3:4] != b"-":
                return int(line[:3]), " ".join(t for t in texts if t)

    async def command(self, line: bytes | list[bytes], expect: int) -> str:
        """Send one command (or the message); its reply text. ReplyError on another code."""
        await self._write([line] if isinstance(line, bytes) else line)
        code, text = await self.reply()
        if code != expect:
            raise ReplyError(f"{code} {text}".rstrip())
        return text

    async def envelope(self, mail_from: str, rcpts: list[str]) -> None:
        """MAIL, each RCPT, then DATA, expecting its 354: in one write when Postfix announced
        PIPELINING, else one by one. ReplyError with the first refusal, as the same commands
        one by one would give it."""
        commands = [f"MAIL FROM:<{mail_from}>\r\n".encode()]
        commands += [f"RCPT TO:<{rcpt}>\r\n".encode() for rcpt in rcpts]
        commands.append(b"DATA\r\n")
        groups = [commands] if self.pipelining else [[command] for command in commands]
        for group in groups:
            await self._write(group)
            for command in group:
                code, text = await self.reply()
                if code != (354 if command == b"DATA\r\n" else 250):
                    # The first refusal is the answer. The replies still in flight after a
                    # pipelined one are not read: that connection is closed, not reused.
                    drop = self.pipelining or code == CLOSING
                    raise ReplyError(f"{code} {text}".rstrip(), drop=drop)

    async def _write(self, lines: list[bytes]) -> None:
        self.writer.writelines(lines)
        async with asyncio.timeout(TIMEOUT):
            await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class Reinjector:
    def __init__(self, host: str, port: int, hostname: str = "filtermail") -> None:
        self.host = host
        self.port = port
        self.hostname = hostname
        self._idle: list[Connection] = []

    async def _connect(self) -> Connection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), TIMEOUT
        )
        conn = Connection(reader, writer)
        code, _ = await conn.reply()
        if code != 220:
            conn.close()
            raise ConnectionError("no SMTP greeting")
        features = await conn.command(f"EHLO {self.hostname}\r\n".encode(), 250)
        conn.pipelining = "PIPELINING" in features.upper().split()
        return conn

    async def _transaction(
        self, conn: Connection, mail_from: str, rcpts: list[str], payload: list[bytes]
    ) -> None:
        conn.data_ended = False
        await conn.envelope(mail_from, rcpts)
        conn.data_ended = True
        await conn.command(payload, 250)

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        """Hand the message to Postfix; the reply line for the client."""
        # before any connection is used, so BareNewline leaves none open; a big message off
        # the event loop
        if len(data) > OFF_LOOP_SIZE:
            payload = await asyncio.to_thread(dot_stuff, data)
        else:
            payload = dot_stuff(data)
        self._drop_expired()
        for attempt in range(2):
            pooled = bool(self._idle) and attempt == 0
            try:
                conn = self._idle.pop() if pooled else await self._connect()
            except ReplyError as e:
                return e.reply
            except (OSError, TimeoutError, EOFError) as e:
                log.error("re-injection failed: %s", type(e).__name__)
                return TEMPORARY_FAILURE
            try:
                await self._transaction(conn, mail_from, rcpts, payload)
            except ReplyError as e:
                if pooled and e.reply.startswith(f"{CLOSING} "):
                    conn.close()
                    continue  # Postfix had closed the idle connection: try a fresh one
                if e.drop:
                    conn.close()
                    return e.reply
                await self._release_after_refusal(conn)
                return e.reply
            except (OSError, TimeoutError, EOFError) as e:
                conn.close()
                if conn.data_ended:
                    # Postfix may have queued it: sending it again here would hide the
                    # duplicate; the 451 lets whoever resends it know (doc/contract.md §4.1)
                    log.error("%s: %s", AFTER_END_OF_DATA, type(e).__name__)
                    return TEMPORARY_FAILURE
                if pooled:
                    continue  # Postfix closed the idle connection: try a fresh one
                log.error("re-injection failed: %s", type(e).__name__)
                return TEMPORARY_FAILURE
            self._release(conn)
            return "250 OK"
        return TEMPORARY_FAILURE

    def _release(self, conn: Connection) -> None:
        if len(self._idle) < MAX_IDLE:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def _drop_expired(self) -> None:
        oldest_kept = time.monotonic() - IDLE_LIFETIME
        for conn in [c for c in self._idle if c.idle_since < oldest_kept]:
            self._idle.remove(conn)
            conn.close()

    async def _release_after_refusal(self, conn: Connection) -> None:
        """After a refused step the transaction must be reset before the next one."""
        try:
            await conn.command(b"RSET\r\n", 250)
        except (ReplyError, OSError, TimeoutError, EOFError):
            conn.close()
            return
        self._release(conn)

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()
        self._idle.clear()
