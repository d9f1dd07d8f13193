"""`POST /mxdeliv`: relay-to-relay delivery over HTTPS (doc/encryption-gate.md §4).

nginx terminates TLS and forwards `/mxdeliv` to this listener on loopback. The envelope comes
in headers: an optional `X-MAIL-FROM` and one `X-MAIL-TO` per recipient; the body is the raw
message. The incoming gate takes the envelope addresses and the message exactly as from an SMTP
session: recipients in their one spelling, and a body whose lines end in CRLF (a bare LF
becomes CRLF; a bare CR is refused), so that re-injection can stuff every dot. Answers:

- 200 with the SMTP reply text (`250 OK`) when the message was accepted;
- 400 with the SMTP error text when the gate refused it (e.g. `523 Encryption Needed: ...`,
  or `553 5.1.3 Invalid recipient address` for any recipient it does not take);
- 413 with `552 Message exceeds maximum size` for a body over the limit it is given
  (`max_message_size` and room for the peer relay's headers, doc/message-size.md);
- 405 for any method but POST, 404 for any other path, 411 without Content-Length,
  400 for a request that is not HTTP/1.x, names no recipient, has a header value with CR or
  LF in it, a Content-Length that is not ASCII digits or is given twice, a Transfer-Encoding
  (nginx forwards a chunked upload with a length), or a bare CR in the body.

Every read and write has a 60 s timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from http import HTTPStatus

from .gatemetrics import GateCounters
from .metrics import Registry
from .mimeparse import crlf_only
from .reinject import OFF_LOOP_SIZE
from .smtpfront import Gate
from .smtpreject import Reject, message_too_large

log = logging.getLogger("filtermail")

TIMEOUT = 60.0
MAX_HEAD = 64 * 1024
MAX_RECIPIENTS = 1000
_ASCII_DIGITS = re.compile(r"[0-9]{1,12}\Z")
_BARE_LF = re.compile(rb"(?<!\r)\n")


class BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def parse_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    """The request line and headers, up to the blank line: (method, path, headers).

    Lines are split at CRLF only; a CR or LF left inside a line (which would end an SMTP
    command early when the value becomes a path) makes the request a 400.
    """
    lines = head.decode("latin-1").split("\r\n")
    if any("\r" in line or "\n" in line for line in lines):
        raise BadRequest(400, "CR or LF inside a header line")
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
        headers.append((name.lower(), value.strip(" \t")))  # HTTP's optional white space
    return parts[0], parts[1].split("?", 1)[0], headers


def envelope(gate: Gate, headers: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """MAIL FROM and the recipients, as the gate takes them; a refused recipient refuses all."""
    mail_from = next((v for n, v in headers if n == "x-mail-from"), "")
    rcpts = [v for n, v in headers if n == "x-mail-to"]
    if not rcpts:
        raise BadRequest(400, "501 no X-MAIL-TO recipient")
    if len(rcpts) > MAX_RECIPIENTS:
        raise BadRequest(400, "452 too many recipients")
    return gate.check_sender(mail_from), [gate.check_recipient(rcpt) for rcpt in rcpts]


def content_length(headers: list[tuple[str, str]]) -> int | None:
    """The one Content-Length in ASCII digits; None if absent. 400 for anything else, and
    for Transfer-Encoding: two ways of telling where the body ends are one too many."""
    if any(n == "transfer-encoding" for n, _v in headers):
        raise BadRequest(400, "Transfer-Encoding is not accepted")
    values = [v for n, v in headers if n == "content-length"]
    if not values:
        return None
    if len(values) > 1 or not _ASCII_DIGITS.match(values[0]):
        raise BadRequest(400, "one Content-Length in ASCII digits required")
    return int(values[0])


def smtp_line_ends(body: bytes) -> bytes:
    """The body as SMTP carries it: every line ending in CRLF. A bare LF becomes CRLF; a bare
    CR is refused, as no mail program writes one and Postfix would read it differently."""
    if crlf_only(body):
        return body
    body = _BARE_LF.sub(b"\r\n", body)
    if not crlf_only(body):
        raise BadRequest(400, "bare CR in the message")
    return body


async def handle(
    gate: Gate, reader: asyncio.StreamReader, max_size: int, counters: GateCounters | None = None
) -> tuple[int, str]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    method, path, headers = parse_head(head[:-4])
    if path != "/mxdeliv":
        return 404, "not found"
    if method != "POST":
        return 405, "only POST"
    length = content_length(headers)
    if length is None:
        return 411, "Content-Length required"
    if length > max_size:
        return _refused(413, message_too_large(), counters)
    try:
        mail_from, rcpts = envelope(gate, headers)
        data = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
        if len(data) > OFF_LOOP_SIZE:  # a big body is judged off the event loop
            data = await asyncio.to_thread(smtp_line_ends, data)
        else:
            data = smtp_line_ends(data)
        if len(data) > max_size:  # bare LFs made it longer
            return _refused(413, message_too_large(), counters)
        reply = await gate.deliver(mail_from, rcpts, data)
    except Reject as e:
        log.info("rejected /mxdeliv message: %s", e.private)
        return _refused(400, e, counters)
    return (200 if reply.startswith("2") else 400), reply


def _refused(status: int, reject: Reject, counters: GateCounters | None) -> tuple[int, str]:
    if counters is not None:
        counters.refused(reject)
    return status, reject.reply()


async def start_mxdeliv_server(
    gate: Gate,
    host: str,
    port: int,
    max_size: int,
    registry: Registry | None = None,
    counters: GateCounters | None = None,
) -> asyncio.AbstractServer:
    requests = (registry or Registry()).counter(
        "chatmail_mxdeliv_requests_total",
        "Requests to /mxdeliv from other relays, by the HTTP status of the answer.",
        ("status",),
    )

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                status, text = await handle(gate, reader, max_size, counters)
            except BadRequest as e:
                status, text = e.status, e.text
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                status, text = 400, "incomplete or oversized request"
            except Exception as e:  # noqa: BLE001 (request boundary: answer, keep serving)
                log.error("/mxdeliv request failed: %s", type(e).__name__)
                status, text = 500, "451 4.3.0 Internal error, please try again later"
            requests.inc(status=str(status))
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
