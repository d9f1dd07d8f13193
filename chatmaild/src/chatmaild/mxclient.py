"""The sending side of `/mxdeliv`: a message POSTed to another relay over HTTPS (doc/transport.md).

One request per message and peer: `POST https://<host>/mxdeliv` with `X-MAIL-FROM`, one
`X-MAIL-TO` per recipient and the message as the body (HTTP/1.1, Content-Length). Connections
are kept alive and pooled per host, so a burst of mail to a peer costs one TLS handshake.

TLS is verified as Postfix's SMTP client verifies it on the same relay (its policy table):
against the system's CA bundle and the host name, except for the hosts of self-signed relays
(a name whose first label starts with `_`) and IP literals, whose certificates are not
checked, only used for encryption.

`Answer` says what came back; `transport` decides what it means for the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass

TIMEOUT = 60.0
MAX_IDLE_PER_HOST = 4
IDLE_LIFETIME = 50.0  # seconds: within nginx's keepalive_timeout (75 s)
MAX_ANSWER = 64 * 1024


class NoAnswer(Exception):
    """The peer could not be reached, or did not answer in HTTP (connection, TLS, timeout)."""


@dataclass(frozen=True)
class Answer:
    status: int
    text: str  # the body, stripped: the SMTP reply line a relay's /mxdeliv answers with


def verifies_certificate(host: str) -> bool:
    """Whether the peer's certificate is checked: not for `_name` relays and IP literals."""
    return not (host.startswith("_") or host.startswith("[") or host.replace(".", "").isdigit())


def tls_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def request_head(host: str, mail_from: str, rcpts: list[str], length: int) -> bytes:
    lines = [
        "POST /mxdeliv HTTP/1.1",
        f"Host: {host}",
        f"X-MAIL-FROM: {mail_from}",
        *(f"X-MAIL-TO: {rcpt}" for rcpt in rcpts),
        "Content-Type: message/rfc822",
        f"Content-Length: {length}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float

    def close(self) -> None:
        self.writer.close()


class MxdelivClient:
    """Pooled HTTPS connections to peers' `/mxdeliv`."""

    def __init__(self, port: int = 443, timeout: float = TIMEOUT) -> None:
        self.port = port
        self.timeout = timeout
        self._idle: dict[str, list[_Connection]] = {}
        self._contexts = {True: tls_context(True), False: tls_context(False)}

    async def post(self, host: str, mail_from: str, rcpts: list[str], data: bytes) -> Answer:
        """POST the message to `host` (a name, or an IP literal `[a.b.c.d]`)."""
        head = request_head(host, mail_from, rcpts, len(data))
        for attempt in range(2):
            pooled = self._take(host) if attempt == 0 else None
            conn = pooled or await self._connect(host)
            try:
                conn.writer.writelines([head, data])
                await asyncio.wait_for(conn.writer.drain(), self.timeout)
                answer, keep = await asyncio.wait_for(_read_answer(conn.reader), self.timeout)
            except (OSError, EOFError, TimeoutError, ValueError, ssl.SSLError) as e:
                conn.close()
                if pooled is not None:
                    continue  # the peer had closed the idle connection: once more, afresh
                raise NoAnswer(type(e).__name__) from None
            if keep:
                self._give_back(host, conn)
            else:
                conn.close()
            return answer
        raise NoAnswer("no connection")

    async def _connect(self, host: str) -> _Connection:
        address = host[1:-1] if host.startswith("[") else host
        verify = verifies_certificate(host)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    address,
                    self.port,
                    ssl=self._contexts[verify],
                    server_hostname=address if verify else None,
                    limit=MAX_ANSWER,
                ),
                self.timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError, UnicodeError) as e:
            raise NoAnswer(type(e).__name__) from None
        return _Connection(reader, writer, time.monotonic())

    def _take(self, host: str) -> _Connection | None:
        idle = self._idle.get(host, [])
        oldest_kept = time.monotonic() - IDLE_LIFETIME
        while idle:
            conn = idle.pop()
            if conn.idle_since >= oldest_kept and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def _give_back(self, host: str, conn: _Connection) -> None:
        idle = self._idle.setdefault(host, [])
        if len(idle) < MAX_IDLE_PER_HOST:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
                with contextlib.suppress(Exception):
                    await conn.writer.wait_closed()
        self._idle.clear()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[Answer, bool]:
    """The response to one request, and whether the connection may be used again."""
    status_line = await reader.readuntil(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError("not an HTTP/1.x response")
    headers: dict[bytes, bytes] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = await _read_chunked(reader)
    else:
        length = int(headers.get(b"content-length", b"-1"))
        if not 0 <= length <= MAX_ANSWER:
            raise ValueError("no Content-Length within bounds")
        body = await reader.readexactly(length)
    keep = headers.get(b"connection", b"").lower() != b"close" and parts[0] == b"HTTP/1.1"
    return Answer(int(parts[1]), body.decode("utf-8", "replace").strip()), keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields
            return body
        if len(body) + size > MAX_ANSWER:
            raise ValueError("answer too long")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
