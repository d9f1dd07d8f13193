"""`POST /mxdeliv`: relay-to-relay delivery over HTTPS (relay-spec §4.7).

nginx terminates TLS and forwards `/mxdeliv` to this listener on loopback. The envelope comes
in headers: an optional `X-MAIL-FROM` and one `X-MAIL-TO` per recipient; the body is the raw
message. The incoming gate's checks apply exactly as for SMTP. Answers:

- 200 with the SMTP reply text (`250 OK`) when the message was accepted;
- 400 with the SMTP error text when the gate refused it (e.g. `523 Encryption Needed: ...`);
- 413 with `552 Message exceeds maximum size` for a body over `max_message_size`;
- 405 for any method but POST, 404 for any other path, 411 without Content-Length,
  400 for a request that is not HTTP/1.x or names no recipient.

Every read and write has a 60 s timeout. Only Content-Length bodies are accepted: nginx
buffers a chunked upload and forwards it with a length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus

from .smtpfront import Gate
from .smtpreject import Reject

log = logging.getLogger("filtermail")

TIMEOUT = 60.0
MAX_HEAD = 64 * 1024
MAX_RECIPIENTS = 1000


class BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def parse_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    """The request line and headers, up to the blank line: (method, path, headers)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "not an HTTP/1.x request")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header line")
        headers.append((name.lower(), value.strip()))
    return parts[0], parts[1].split("?", 1)[0], headers


def envelope(headers: list[tuple[str, str]]) -> tuple[str, list[str]]:
    mail_from = next((v for n, v in headers if n == "x-mail-from"), "")
    rcpts = [v for n, v in headers if n == "x-mail-to"]
    if not rcpts:
        raise BadRequest(400, "501 no X-MAIL-TO recipient")
    if len(rcpts) > MAX_RECIPIENTS:
        raise BadRequest(400, "452 too many recipients")
    return mail_from, rcpts


async def handle(gate: Gate, reader: asyncio.StreamReader, max_size: int) -> tuple[int, str]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    method, path, headers = parse_head(head[:-4])
    if path != "/mxdeliv":
        return 404, "not found"
    if method != "POST":
        return 405, "only POST"
    length_text = next((v for n, v in headers if n == "content-length"), None)
    if length_text is None or not length_text.isdigit():
        return 411, "Content-Length required"
    length = int(length_text)
    if length > max_size:
        return 413, "552 Message exceeds maximum size"
    mail_from, rcpts = envelope(headers)
    data = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    try:
        reply = await gate.deliver(mail_from, rcpts, data)
    except Reject as e:
        log.info("rejected /mxdeliv message: %s", e.private)
        return 400, e.reply()
    return (200 if reply.startswith("2") else 400), reply


async def start_mxdeliv_server(
    gate: Gate, host: str, port: int, max_size: int
) -> asyncio.AbstractServer:
    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                status, text = await handle(gate, reader, max_size)
            except BadRequest as e:
                status, text = e.status, e.text
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                status, text = 400, "incomplete or oversized request"
            except Exception as e:  # noqa: BLE001 (request boundary: answer, keep serving)
                log.error("/mxdeliv request failed: %s", type(e).__name__)
                status, text = 500, "451 4.3.0 Internal error, please try again later"
            body = (text + "\n").encode("utf-8", "replace")
            writer.write(
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await asyncio.wait_for(writer.drain(), TIMEOUT)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(connection, host, port, limit=MAX_HEAD)
