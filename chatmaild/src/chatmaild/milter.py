"""The encryption gate inside Postfix's smtpd: the server side of the milter protocol
(doc/milter.md).

Postfix talks to a milter over one connection per SMTP session, in packets of a 4-byte
big-endian length, a command byte and its data (doc/milter.md §1). This module is the part
the gate needs and nothing more: it asks for the envelope (MAIL without a reply; the sender
is judged at the first RCPT, after Postfix's own sender restrictions, and each RCPT gets the
reply that concerns it), every header with its value exactly as queued, and the body, and it
answers once at the end of the message. It changes nothing in
the message: the gate's answer is to let Postfix queue it, to say that the gate passed it on
itself (Postfix drops its copy), or a reply line, which the client gets as is.

The pure parts (`packet` framing, `decode_*`, `message_bytes`, `reply_code`) are apart from
the I/O (`MilterSession`), so that the tests can feed them hostile bytes directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .smtpreject import Reject, message_too_large

log = logging.getLogger("filtermail")

VERSION = 6
# A header may be up to Postfix's header_size_limit (100 KiB by default) and a body chunk is
# at most 64 KiB: a longer packet is no Postfix of ours, and ends the connection.
MAX_PACKET = 256 * 1024
# Postfix keeps the connection for the whole SMTP session, idle between the client's commands
# (its smtpd_timeout is 300 s); a connection silent for longer than this is dropped.
IDLE_TIMEOUT = 600.0
READ_SIZE = 256 * 1024
# The gate's answer at the end of a message (its checks and a re-injection) must come well
# before Postfix gives up waiting (milter_content_timeout, 300 s): then the client is told a
# temporary error by us, not by Postfix while the re-injection may still succeed.
JUDGE_DEADLINE = 240.0

# commands from Postfix (doc/milter.md §1)
OPTNEG, MACRO, MAIL, RCPT, HEADER, EOH, BODY, EOM = (bytes([c]) for c in b"ODMRLNBE")
ABORT, QUIT, QUIT_NC = b"A", b"Q", b"K"
# replies to Postfix
CONTINUE, ACCEPT, DISCARD, REPLYCODE = b"c", b"a", b"d", b"y"

# what we ask for in the negotiation: no CONNECT, HELO, DATA or unknown-command events; no
# reply to MAIL (the sender is judged at the first RCPT), a header, the end of the headers or
# a body chunk; header values with their leading space. RCPT keeps its reply.
NOCONNECT, NOHELO, NOUNKNOWN, NODATA = 0x1, 0x2, 0x100, 0x200
NR_HDR, NR_MAIL, NR_EOH, NR_BODY, HDR_LEADSPC = 0x80, 0x4000, 0x40000, 0x80000, 0x100000
WANTED = NOCONNECT | NOHELO | NOUNKNOWN | NODATA | NR_HDR | NR_MAIL | NR_EOH | NR_BODY | HDR_LEADSPC
# without these the session could not work as designed: a reply to every header would be
# one round trip per header, and values without their leading space are not the queued bytes
REQUIRED = NR_HDR | NR_EOH | NR_BODY | HDR_LEADSPC

INTERNAL_ERROR = "451 4.3.0 Internal error, please try again later"


class ProtocolError(Exception):
    """Postfix (or whatever connected) broke the protocol: the connection ends, and Postfix
    answers the client with its milter_default_action (a temporary error on the relay)."""


# --- the pure part ----------------------------------------------------------------------------


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", 1 + len(data)) + command + data


def decode_optneg(data: bytes) -> tuple[int, int, int]:
    """OPTNEG's version, actions and protocol flags."""
    if len(data) < 12:
        raise ProtocolError("short option negotiation")
    version, actions, protocol = struct.unpack(">III", data[:12])
    return version, actions, protocol


def negotiate(data: bytes) -> tuple[bytes, int]:
    """Our answer to Postfix's OPTNEG (protocol 6, no actions, the flags of `WANTED` that it
    offers), and those flags."""
    version, _actions, offered = decode_optneg(data)
    if version < VERSION or offered & REQUIRED != REQUIRED:
        raise ProtocolError(f"milter protocol {version} with flags {offered:#x} not supported")
    agreed = WANTED & offered
    return packet(OPTNEG, struct.pack(">III", VERSION, 0, agreed)), agreed


def decode_strings(data: bytes) -> list[bytes]:
    """The NUL-terminated strings of MAIL, RCPT and HEADER."""
    if not data.endswith(b"\0"):
        raise ProtocolError("strings not NUL-terminated")
    return data[:-1].split(b"\0")


def decode_path(data: bytes) -> str:
    """MAIL's or RCPT's address, as the client wrote it between the angle brackets (its ESMTP
    parameters are Postfix's). Bytes that are not UTF-8 stay visible to the gate's checks."""
    strings = decode_strings(data)
    path = strings[0]
    if path.startswith(b"<") and path.endswith(b">"):
        path = path[1:-1]
    return path.decode("utf-8", "surrogateescape")


def decode_header(data: bytes) -> tuple[bytes, bytes]:
    strings = decode_strings(data)
    if len(strings) != 2:
        raise ProtocolError("a header is not a name and a value")
    return strings[0], strings[1]


def message_bytes(headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The message as Postfix queued it, from the events: each header as `name:value` (the
    value with its leading space, its folds given as a bare LF), an empty line, the body
    (lines already ending in CRLF)."""
    lines = [name + b":" + value.replace(b"\n", b"\r\n") + b"\r\n" for name, value in headers]
    return b"".join(lines) + b"\r\n" + body


def reply_code(line: str) -> bytes:
    """REPLYCODE's data for a reply line. Postfix reads a `%` in it as the start of an escape
    (`%%` is one `%`), so an address with a `%` in a refusal is doubled, not lost."""
    if len(line) < 4 or line[0] not in "45" or not line[1:3].isdigit() or line[3] != " ":
        raise ValueError(f"not a 4xx or 5xx reply line: {line!r}")
    return line.replace("%", "%%").encode("ascii", "replace") + b"\0"


# --- the gate's side -------------------------------------------------------------------------


class MilterGate(Protocol):
    def check_sender(self, mail_from: str) -> str:
        """MAIL FROM as the gate takes it; raise Reject to refuse."""

    def check_recipient(self, rcpt: str) -> str:
        """RCPT TO as the gate takes it; raise Reject to refuse."""

    async def judge(
        self, mail_from: str, rcpts: list[str], message: bytes, as_given: bool
    ) -> str | None:
        """The envelope as the checks returned it (`as_given`: each address exactly as the
        client wrote it, so as Postfix queued it). None: Postfix queues the message. A 2xx
        reply line: the gate passed the message on itself and Postfix drops its copy. A 4xx
        or 5xx line: the client's reply. Or raise Reject."""


@dataclass
class _Message:
    given_sender: str | None = None  # MAIL FROM as written, judged at the first RCPT
    mail_from: str | None = None  # as the gate took it
    sender_refused: Reject | None = None
    rcpts: list[str] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    size: int = 0
    as_given: bool = True  # no check returned another spelling than the client's


class MilterSession:
    """One connection from Postfix: one SMTP session, any number of messages."""

    def __init__(
        self,
        gate: MilterGate,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_size: int,
        on_refusal: Callable[[Reject], None] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.gate = gate
        self.reader = reader
        self.writer = writer
        self.max_size = max_size
        self.on_refusal = on_refusal
        self.idle_timeout = idle_timeout
        self.message = _Message()
        self.buffer = bytearray()
        self.negotiated = False
        self.mail_answered = True  # whether Postfix waits for an answer to MAIL
        self.handlers: dict[bytes, Callable[[bytes], Awaitable[bytes | None]]] = {
            OPTNEG: self.on_optneg,
            MACRO: self.ignore,
            MAIL: self.on_mail,
            RCPT: self.on_rcpt,
            HEADER: self.on_header,
            EOH: self.ignore,
            BODY: self.on_body,
            EOM: self.on_eom,
            ABORT: self.on_abort,
            QUIT_NC: self.on_abort,
        }

    async def read_packet(self) -> tuple[bytes, bytes] | None:
        """The next command and its data; None when Postfix closed the connection.

        Read in blocks, not packet by packet: Postfix sends a message's headers, body and end
        in one burst (none of them waits for a reply), and one read takes them all."""
        buffer = self.buffer
        while True:
            if len(buffer) >= 4:
                (length,) = struct.unpack_from(">I", buffer)
                if not 1 <= length <= MAX_PACKET:
                    raise ProtocolError(f"a packet of {length} bytes")
                if len(buffer) >= 4 + length:
                    command, data = bytes(buffer[4:5]), bytes(buffer[5 : 4 + length])
                    del buffer[: 4 + length]
                    return command, data
            async with asyncio.timeout(self.idle_timeout):
                chunk = await self.reader.read(READ_SIZE)
            if not chunk:
                if buffer:
                    raise ProtocolError("connection closed inside a packet")
                return None
            buffer += chunk

    async def run(self) -> None:
        try:
            while (received := await self.read_packet()) is not None:
                command, data = received
                if command == QUIT:
                    return
                handler = self.handlers.get(command)
                if handler is None:
                    raise ProtocolError(f"command {command!r}")
                if not self.negotiated and command != OPTNEG:
                    # the flags that spare headers their replies hold only once agreed
                    raise ProtocolError(f"command {command!r} before the negotiation")
                answer = await handler(data)
                if answer is not None:
                    self.writer.write(answer)
                    await self.writer.drain()
        except ProtocolError as e:
            log.warning("milter connection closed: %s", e)
        except TimeoutError:
            log.info("milter connection closed: idle")
        except ConnectionError:
            pass
        finally:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()

    def refuse(self, reject: Reject) -> bytes:
        if self.on_refusal is not None:
            self.on_refusal(reject)
        return packet(REPLYCODE, reply_code(reject.reply()))

    async def ignore(self, data: bytes) -> None:
        return None

    async def on_optneg(self, data: bytes) -> bytes:
        answer, agreed = negotiate(data)
        self.negotiated = True
        self.mail_answered = not agreed & NR_MAIL
        return answer

    async def on_mail(self, data: bytes) -> bytes | None:
        self.message = _Message(given_sender=decode_path(data))
        return packet(CONTINUE) if self.mail_answered else None

    async def on_rcpt(self, data: bytes) -> bytes:
        message = self.message
        if message.given_sender is None:
            raise ProtocolError("RCPT without MAIL")
        if message.mail_from is None and message.sender_refused is None:
            # Judged here, not at MAIL: Postfix's smtpd applies its own sender restrictions
            # (the sender must be the login, smtpd_delay_reject) at the first RCPT, and only
            # then asks the milter. At MAIL anybody logged in could spend another user's rate
            # limit with their address; the proxy filter was asked at the first RCPT too.
            try:
                message.mail_from = self.gate.check_sender(message.given_sender)
            except Reject as e:
                log.info("refused sender: %s", e.private)
                message.sender_refused = e
                return self.refuse(e)
            message.as_given = message.mail_from == message.given_sender
        if message.sender_refused is not None:  # the same answer, counted once
            return packet(REPLYCODE, reply_code(message.sender_refused.reply()))
        given = decode_path(data)
        try:
            rcpt = self.gate.check_recipient(given)
        except Reject as e:
            log.info("refused recipient: %s", e.private)
            return self.refuse(e)
        self.message.rcpts.append(rcpt)
        self.message.as_given &= rcpt == given
        return packet(CONTINUE)

    async def on_header(self, data: bytes) -> None:
        name, value = decode_header(data)
        self.hold(len(name) + len(value) + 3)
        if self.message.size <= self.max_size:
            self.message.headers.append((name, value))

    async def on_body(self, data: bytes) -> None:
        self.hold(len(data))
        if self.message.size <= self.max_size:
            self.message.body += data

    def hold(self, size: int) -> None:
        # past the limit nothing more is kept: the message is refused at its end
        self.message.size += size

    async def on_eom(self, data: bytes) -> bytes:
        message, self.message = self.message, _Message()
        if message.mail_from is None or not message.rcpts:
            raise ProtocolError("end of a message without MAIL and RCPT")
        if message.size > self.max_size:
            return self.refuse(message_too_large())
        data = message_bytes(message.headers, bytes(message.body))
        try:
            async with asyncio.timeout(JUDGE_DEADLINE):
                line = await self.gate.judge(
                    message.mail_from, message.rcpts, data, message.as_given
                )
        except Reject as e:
            log.info("rejected message: %s", e.private)
            return self.refuse(e)
        except Exception as e:  # noqa: BLE001 (message boundary: answer 451, keep serving)
            log.error("message failed: %s", type(e).__name__)
            return packet(REPLYCODE, reply_code(INTERNAL_ERROR))
        if line is None:
            return packet(ACCEPT)
        if line.startswith("2"):
            return packet(DISCARD)
        try:
            return packet(REPLYCODE, reply_code(line))
        except ValueError:  # a line Postfix would take as a broken milter: say it plainly
            log.error("message failed: the gate answered with no refusal line")
            return packet(REPLYCODE, reply_code(INTERNAL_ERROR))

    async def on_abort(self, data: bytes) -> None:
        self.message = _Message()


async def start_milter_server(
    gate: MilterGate,
    listen: socket.socket | str | tuple[str, int],
    max_size: int,
    on_refusal: Callable[[Reject], None] | None = None,
) -> asyncio.AbstractServer:
    """Serve the milter on a listening UNIX socket (what the relay uses: systemd makes it with
    the mode Postfix needs and passes it in, doc/milter.md §3), on a UNIX socket at a path, or
    on a TCP (host, port): the last two for tests and benchmarks."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await MilterSession(gate, reader, writer, max_size, on_refusal).run()

    if isinstance(listen, socket.socket):
        # asyncio would shorten systemd's backlog to 100: a burst of sessions while filtermail
        # restarts all wait for it. The socket is systemd's: never removed on the way out
        # (Python 3.13 would, on a clean close).
        keep: dict[str, Any] = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
        return await asyncio.start_unix_server(
            session, sock=listen, backlog=socket.SOMAXCONN, **keep
        )
    if isinstance(listen, str):
        return await asyncio.start_unix_server(session, listen)
    return await asyncio.start_server(session, *listen)
