"""filtermail over real sockets: the outgoing gate as a milter (a client speaking Postfix's
side, milter_client.py), the incoming gate over SMTP and /mxdeliv, and a recording re-injection
sink."""

from __future__ import annotations

import asyncio
import http.client
import logging
import smtplib
import socket
import threading
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from chatmaild_testing import make_config
from milter_client import PASSED_ON, QUEUED, MilterClient
from milter_client import send as milter_send

from chatmaild import smtpfront
from chatmaild.filtermail import IncomingGate, OutgoingGate
from chatmaild.gatemetrics import GateCounters
from chatmaild.metrics import Registry
from chatmaild.milter import start_milter_server
from chatmaild.mxdeliv import start_mxdeliv_server
from chatmaild.ratelimit import RateLimiter
from chatmaild.reinject import Reinjector
from chatmaild.smtpfront import start_smtp_server
from chatmaild.smtpreject import no_dkim_signature

MAIL = Path(__file__).parent / "data" / "mail"
ENCRYPTED = (MAIL / "enc-bob.eml").read_bytes()
CLEARTEXT = (MAIL / "cleartext.eml").read_bytes()
ALICE, BOB = "alice@example.org", "bob@example.org"
MAX_SIZE = 100_000


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass
class Sink:
    """Stands in for Postfix's re-injection port: records what it is handed."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    reply: str = "250 OK"

    def check_sender(self, mail_from: str) -> str:
        return mail_from

    def check_recipient(self, rcpt: str) -> str:
        return rcpt

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        self.messages.append((mail_from, rcpts, data))
        return self.reply


class FakeVerifier:
    """DKIM as a switch: the real verifier has its own tests with signed messages."""

    def __init__(self) -> None:
        self.signed = True
        self.domains: list[str] = []

    def check(self, data: bytes, from_domain: str) -> None:
        self.domains.append(from_domain)
        if not self.signed:
            raise no_dkim_signature()


@dataclass
class Ports:
    outgoing: str  # the outgoing gate's milter socket
    incoming: int
    http: int
    sink: Sink
    verifier: FakeVerifier
    enforcing: set[str]
    registry: Registry


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.servers: list[asyncio.AbstractServer] = []
        self.reinjectors: list[Reinjector] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def serve(self, start: Awaitable[asyncio.AbstractServer]) -> int:
        """Start a server in the loop; its port (0 for a UNIX socket)."""
        server = self.run(start)
        self.servers.append(server)
        name = server.sockets[0].getsockname()
        return int(name[1]) if isinstance(name, tuple) else 0

    def stop(self) -> None:
        async def cancel_all() -> None:
            for server in self.servers:
                server.close()
            for reinjector in self.reinjectors:
                await reinjector.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Ports]:
    config = make_config(tmp_path)
    loop = LoopThread()
    sink = Sink()
    verifier = FakeVerifier()
    enforcing = {BOB}
    # Postfix's re-injection listeners (the signing one for outgoing mail)
    sink_port = loop.serve(start_smtp_server(sink, "127.0.0.1", 0, "sink", MAX_SIZE * 2))
    reinjector = Reinjector("127.0.0.1", sink_port)
    loop.reinjectors.append(reinjector)
    registry = Registry()
    out, into = GateCounters(registry, "outgoing"), GateCounters(registry, "incoming")
    outgoing = OutgoingGate(config, reinjector, RateLimiter(60, 3), out)
    milter_socket = str(tmp_path / "gate.socket")
    incoming = IncomingGate(
        config,
        reinjector,
        verifier,  # type: ignore[arg-type]
        lambda rcpt: rcpt in enforcing,
        counters=into,
    )
    host, name = "127.0.0.1", "filtermail"
    loop.serve(start_milter_server(outgoing, milter_socket, MAX_SIZE, on_refusal=out.refused))
    ports = [
        loop.serve(start_smtp_server(incoming, host, 0, name, MAX_SIZE, counters=into)),
        loop.serve(start_mxdeliv_server(incoming, host, 0, MAX_SIZE, registry, into)),
    ]
    try:
        yield Ports(
            milter_socket,
            *ports,
            sink=sink,
            verifier=verifier,
            enforcing=enforcing,
            registry=registry,
        )
    finally:
        loop.stop()


def send(port: int, mail_from: str, rcpts: list[str], data: bytes) -> tuple[int, str]:
    """Send one message; the reply to DATA (or the first refusal) as (code, text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("client.example")
        code, text = smtp.mail(mail_from)
        if code != 250:
            return code, text.decode()
        for rcpt in rcpts:
            smtp.rcpt(rcpt)
        code, text = smtp.data(data)
        return code, text.decode()


class RawClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> str:
        return self.file.readline().decode()

    def command(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.readline()

    def closed(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- outgoing ------------------------------------------------------------------------------


def test_encrypted_mail_for_local_users_is_queued_by_postfix_in_one_pass(gate: Ports) -> None:
    assert milter_send(gate.outgoing, ALICE, [BOB], ENCRYPTED) == QUEUED
    assert gate.sink.messages == []  # nothing re-injected


def test_encrypted_mail_that_leaves_is_reinjected_unchanged_to_be_signed(gate: Ports) -> None:
    carol = "carol@other.example"
    assert milter_send(gate.outgoing, ALICE, [carol], ENCRYPTED) == PASSED_ON
    [(mail_from, rcpts, data)] = gate.sink.messages
    assert (mail_from, rcpts) == (ALICE, [carol])
    assert data == crlf(ENCRYPTED)


def test_cleartext_is_refused_and_not_reinjected(gate: Ports) -> None:
    for rcpt in (BOB, "carol@other.example"):
        assert milter_send(gate.outgoing, ALICE, [rcpt], CLEARTEXT) == (
            523,
            "Encryption Needed: Invalid Unencrypted Mail",
        )
    assert gate.sink.messages == []


def test_from_header_must_match_envelope(gate: Ports) -> None:
    code, text = milter_send(gate.outgoing, "mallory@example.org", [BOB], ENCRYPTED)
    assert (code, text) == (500, "Invalid FROM <alice@example.org> for <mallory@example.org>")


@pytest.mark.parametrize("mail_from", ["no-at-sign", "two@at@example.org", "a%b@example.org"])
def test_invalid_mail_from(gate: Ports, mail_from: str) -> None:
    """Refused at the first RCPT: only then has Postfix tied the sender to the login."""
    with MilterClient(gate.outgoing) as client:
        assert client.mail(mail_from) is None
        assert client.rcpt(BOB) == (500, f"Invalid from address <{mail_from}>")


@pytest.mark.parametrize(
    "mail_from", ['"alice"@example.org', "alice+x@example.org", "a@other.example"]
)
def test_mail_from_in_another_spelling_is_refused(gate: Ports, mail_from: str) -> None:
    """Postfix ties MAIL FROM to the login in its own reading; the gate takes one spelling."""
    with MilterClient(gate.outgoing) as client:
        assert client.mail(mail_from) is None
        reply = client.rcpt(BOB)
        assert reply is not None and reply[0] == 500 and reply[1].startswith("Invalid from")


@pytest.mark.parametrize(
    ("mail_from", "rcpts"),
    [
        ("Alice@example.org", [BOB]),
        (ALICE, ["Bob@Example.ORG"]),
        ("Alice@example.org", ["Bob@Example.ORG", "carol@other.example"]),
    ],
)
def test_mail_in_another_spelling_is_reinjected_in_the_one_spelling(
    gate: Ports, mail_from: str, rcpts: list[str]
) -> None:
    """Postfix's copy is queued in the client's spellings: the gate passes the message on in
    the canonical ones instead, even for local users only."""
    assert milter_send(gate.outgoing, mail_from, rcpts, ENCRYPTED) == PASSED_ON
    [(reinjected_from, reinjected, _data)] = gate.sink.messages
    canonical = [rcpt.lower() if "example.org" in rcpt.lower() else rcpt for rcpt in rcpts]
    assert (reinjected_from, reinjected) == (ALICE, canonical)


@pytest.mark.parametrize(
    "rcpt", ['"bob"@example.org', "bob@example.org.", "bob+x@example.org", "@x:bob@example.org"]
)
def test_other_spellings_of_a_local_recipient_are_refused_at_rcpt(gate: Ports, rcpt: str) -> None:
    with MilterClient(gate.outgoing) as client:
        assert client.mail(ALICE) is None
        assert client.rcpt(rcpt) == (553, "5.1.3 Invalid recipient address")
    with RawClient(gate.incoming) as smtp:
        assert smtp.command(f"MAIL FROM:<{ALICE}>") == "250 OK\r\n"
        assert smtp.command(f"RCPT TO:<{rcpt}>") == "553 5.1.3 Invalid recipient address\r\n"
        assert smtp.command("DATA").startswith("503 ")  # no recipient was taken


def test_incoming_takes_only_local_recipients(gate: Ports) -> None:
    with RawClient(gate.incoming) as client:
        assert client.command("MAIL FROM:<carol@other.example>") == "250 OK\r\n"
        assert client.command("RCPT TO:<dave@other.example>").startswith("553 5.1.3 ")
        assert client.command("RCPT TO:<Bob@example.org>") == "250 OK\r\n"


def test_rate_limit_after_the_burst(gate: Ports) -> None:
    for _ in range(3):  # the burst
        assert milter_send(gate.outgoing, ALICE, [BOB], ENCRYPTED)[0] == 250
    with MilterClient(gate.outgoing) as client:
        assert client.mail(ALICE) is None
        reply = client.rcpt(BOB)
        assert reply is not None and reply[0] == 450
        assert reply[1].startswith(f"4.7.1: Too much mail from <{ALICE}>, rate limited until ")
    # another sender is not affected
    assert milter_send(gate.outgoing, "bob@example.org", [ALICE], ENCRYPTED)[0] == 500  # From


def test_reinjection_refusal_is_passed_through(gate: Ports) -> None:
    gate.sink.reply = "550 5.1.1 No such user"
    assert milter_send(gate.outgoing, ALICE, ["carol@other.example"], ENCRYPTED) == (
        550,
        "5.1.1 No such user",
    )


@pytest.mark.parametrize(
    ("rcpts", "outcome"),
    [
        ([BOB], QUEUED),
        ([BOB, ALICE], QUEUED),
        (["carol@other.example"], PASSED_ON),
        # one copy leaves the relay: the whole message is signed
        ([BOB, "carol@other.example"], PASSED_ON),
        # the relay's own address in a bracketed IP form is not its domain: it leaves signed
        (["bob@[192.0.2.1]"], PASSED_ON),
    ],
)
def test_only_mail_that_leaves_the_relay_goes_to_the_signing_listener(
    gate: Ports, rcpts: list[str], outcome: tuple[int, str]
) -> None:
    assert milter_send(gate.outgoing, ALICE, rcpts, ENCRYPTED) == outcome
    assert len(gate.sink.messages) == (outcome == PASSED_ON)


def test_reinjection_down_is_a_temporary_failure(gate: Ports) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    reinjector = Reinjector("127.0.0.1", dead_port)
    reply = asyncio.run(reinjector.deliver(ALICE, [BOB], ENCRYPTED))
    assert reply.startswith("451 ")


def test_a_session_carries_several_messages_and_forgets_an_aborted_one(gate: Ports) -> None:
    """Postfix keeps one milter connection per SMTP session; RSET (abort) forgets the
    envelope so far."""
    carol = "carol@other.example"
    with MilterClient(gate.outgoing) as client:
        assert client.mail(ALICE) is None and client.rcpt(carol) is None
        client.abort()
        assert client.mail(ALICE) is None and client.rcpt(BOB) is None
        assert client.message(ENCRYPTED) == QUEUED  # for BOB only: carol was forgotten
        assert client.mail(ALICE) is None and client.rcpt(carol) is None
        assert client.message(ENCRYPTED) == PASSED_ON
    assert [rcpts for _, rcpts, _ in gate.sink.messages] == [[carol]]


def test_an_oversized_message_is_refused_at_its_end(gate: Ports) -> None:
    big = ENCRYPTED + (b"X" * 998 + b"\r\n") * (MAX_SIZE // 1000 + 5)
    assert milter_send(gate.outgoing, ALICE, ["carol@other.example"], big) == (
        552,
        "Message exceeds maximum size",
    )
    assert gate.sink.messages == []


# --- SMTP strictness -----------------------------------------------------------------------


def test_protocol_replies(gate: Ports) -> None:
    with RawClient(gate.incoming) as client:
        assert client.greeting == "220 filtermail SMTP\r\n"
        assert client.command("XYZZY") == "500 Command not recognized\r\n"
        assert client.command("RCPT TO:<bob@example.org>").startswith("503 ")
        assert client.command("DATA").startswith("503 ")
        assert client.command("MAIL FROM alice").startswith("501 ")
        assert client.command("NOOP") == "250 OK\r\n"
        assert client.command(f"MAIL FROM:<{ALICE}> SIZE=1000 BODY=8BITMIME") == "250 OK\r\n"
        assert client.command(f"RCPT TO:<{BOB}> NOTIFY=NEVER ORCPT=rfc822;{BOB}") == "250 OK\r\n"
        assert client.command("RSET") == "250 OK\r\n"
        assert client.command("DATA").startswith("503 ")
        assert client.command("QUIT") == "221 Bye\r\n"
        assert client.closed()


def test_ehlo_advertises_the_size_limit(gate: Ports) -> None:
    with smtplib.SMTP("127.0.0.1", gate.incoming, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.esmtp_features["size"] == str(MAX_SIZE)


@pytest.mark.parametrize(
    ("payload", "replies"),
    [
        (b"NOOP\n", 0),  # a bare LF command: no answer, the connection ends
        # a bare LF inside DATA ends the connection before any verdict
        (b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nX: y\n", 3),
    ],
)
def test_bare_lf_closes_the_connection(gate: Ports, payload: bytes, replies: int) -> None:
    with RawClient(gate.incoming) as client:
        client.send(payload)
        lines = []
        while line := client.readline():
            lines.append(line)
    assert len(lines) == replies  # and then EOF: closed by the server
    assert gate.sink.messages == []


@pytest.mark.parametrize(
    "payload",
    [
        b"NOOP\rRSET\r\n",  # a bare CR in a command line
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nX: y\rZ\r\n",
    ],
)
def test_bare_cr_closes_the_connection(gate: Ports, payload: bytes) -> None:
    with RawClient(gate.incoming) as client:
        client.send(payload)
        while client.readline():
            pass  # until the server closes
    assert gate.sink.messages == []


def closed_while_trickling(client: RawClient, chunk: bytes, chunks: int) -> bool:
    """Send `chunk` every 50 ms or so (well within the read timeout) until the server closes
    the connection: whether it did within `chunks` chunks."""
    client.sock.settimeout(0.05)
    for _ in range(chunks):
        try:
            client.send(chunk)
            if client.sock.recv(1) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_a_trickling_command_is_closed_at_its_deadline(
    gate: Ports, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each byte arrives well within the read timeout, but the line never ends in time."""
    monkeypatch.setattr(smtpfront, "COMMAND_DEADLINE", 0.5)
    with RawClient(gate.incoming) as client:
        assert closed_while_trickling(client, b"N", 400)  # at most 20 s


def test_a_trickling_message_is_closed_at_the_data_deadline(
    gate: Ports, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtpfront, "DATA_DEADLINE", 0.5)
    with RawClient(gate.incoming) as client:
        for line in (f"MAIL FROM:<{ALICE}>", f"RCPT TO:<{BOB}>"):
            assert client.command(line).startswith("250")
        assert client.command("DATA").startswith("354")
        assert closed_while_trickling(client, b"X-Slow: y\r\n", 400)
    assert gate.sink.messages == []


def test_oversized_data_is_552_and_closes(gate: Ports) -> None:
    with RawClient(gate.incoming) as client:
        for line in (f"MAIL FROM:<{ALICE}>", f"RCPT TO:<{BOB}>"):
            assert client.command(line).startswith("250")
        assert client.command("DATA").startswith("354")
        client.send((b"X" * 998 + b"\r\n") * (MAX_SIZE // 1000 + 5))
        assert client.readline() == "552 Message exceeds maximum size\r\n"
        assert client.closed()
        assert gate.sink.messages == []


def test_dot_stuffing_is_undone(gate: Ports) -> None:
    # a field name may start with a dot (RFC 5322 ftext): the one place an accepted message
    # can have a line starting with one
    dotted = b".X-Dot: one\r\n..X-Dots: two\r\n" + ENCRYPTED
    assert send(gate.incoming, ALICE, [BOB], dotted) == (250, "OK")
    assert gate.sink.messages[0][2] == dotted


# --- incoming ------------------------------------------------------------------------------


def test_incoming_encrypted_is_accepted_and_dkim_checked(gate: Ports) -> None:
    assert send(gate.incoming, ALICE, [BOB], ENCRYPTED) == (250, "OK")
    assert gate.verifier.domains == ["example.org"]
    assert gate.sink.messages[0][0] == ALICE


def test_incoming_sender_mismatch_becomes_null_sender(gate: Ports) -> None:
    assert send(gate.incoming, "bounces+srs@lists.example.net", [BOB], ENCRYPTED)[0] == 250
    assert gate.sink.messages[0][0] == ""


def test_incoming_cleartext_depends_on_the_recipient(gate: Ports) -> None:
    assert send(gate.incoming, ALICE, [BOB], CLEARTEXT)[0] == 523
    assert send(gate.incoming, ALICE, ["legacy01@example.org"], CLEARTEXT)[0] == 250
    assert send(gate.incoming, ALICE, ["legacy01@example.org", BOB], CLEARTEXT)[0] == 523


def test_incoming_without_dkim_is_refused(gate: Ports) -> None:
    gate.verifier.signed = False
    assert send(gate.incoming, ALICE, [BOB], ENCRYPTED) == (554, "5.7.1 No DKIM signature found")
    assert gate.sink.messages == []


# --- /mxdeliv ------------------------------------------------------------------------------


def post(
    port: int,
    body: bytes,
    headers: dict[str, str] | list[tuple[str, str]],
    method: str = "POST",
    path: str = "/mxdeliv",
) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path)
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body)
    response = conn.getresponse()
    text = response.read().decode().strip()
    conn.close()
    return response.status, text


def test_mxdeliv_accepts_and_reinjects_to_every_recipient(gate: Ports) -> None:
    headers = [("X-MAIL-FROM", ALICE), ("X-MAIL-TO", BOB), ("X-MAIL-TO", "carol@example.org")]
    assert post(gate.http, ENCRYPTED, headers) == (200, "250 OK")
    assert gate.sink.messages[0][:2] == (ALICE, [BOB, "carol@example.org"])


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "expected"),
    [
        ("GET", "/mxdeliv", b"", {"X-MAIL-TO": BOB}, (405, "only POST")),
        ("POST", "/other", ENCRYPTED, {"X-MAIL-TO": BOB}, (404, "not found")),
        (
            "POST",
            "/mxdeliv",
            ENCRYPTED,
            {"X-MAIL-FROM": ALICE},
            (400, "501 no X-MAIL-TO recipient"),
        ),
        (
            "POST",
            "/mxdeliv",
            CLEARTEXT,
            {"X-MAIL-FROM": ALICE, "X-MAIL-TO": BOB},
            (400, "523 Encryption Needed: Invalid Unencrypted Mail"),
        ),
        (
            "POST",
            "/mxdeliv",
            b"x" * (MAX_SIZE + 1),
            {"X-MAIL-TO": BOB},
            (413, "552 Message exceeds maximum size"),
        ),
    ],
)
def test_mxdeliv_answers(
    gate: Ports,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    expected: tuple[int, str],
) -> None:
    assert post(gate.http, body, headers, method, path) == expected
    assert gate.sink.messages == []


def raw_request(port: int, request: bytes) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode().strip()


def mxdeliv_request(headers: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join([b"POST /mxdeliv HTTP/1.1", b"Host: x", *headers, b"", body])


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([b"X-MAIL-TO: bob@example.org", b"Content-Length: \xc2\xb2"], 400),  # a superscript 2
        ([b"X-MAIL-TO: bob@example.org", b"Content-Length: +1"], 400),
        ([b"X-MAIL-TO: bob@example.org", b"Content-Length: 4", b"Content-Length: 4"], 400),
        ([b"X-MAIL-TO: bob@example.org", b"Content-Length: 4", b"Transfer-Encoding: chunked"], 400),
        ([b"X-MAIL-TO: bob@example.org\rRCPT TO:<bob@example.org>", b"Content-Length: 4"], 400),
        ([b"X-MAIL-TO: bob@example.org\nRCPT TO:<x@y>", b"Content-Length: 4"], 400),
        ([b"X-MAIL-FROM: a@x\rRSET", b"X-MAIL-TO: bob@example.org", b"Content-Length: 4"], 400),
        ([b"X-MAIL-TO: bob@example.org"], 411),
    ],
)
def test_mxdeliv_refuses_ambiguous_requests(
    gate: Ports, headers: list[bytes], expected: int
) -> None:
    status, _text = raw_request(gate.http, mxdeliv_request(headers, b"abcd"))
    assert status == expected
    assert gate.sink.messages == []


@pytest.mark.parametrize(
    "rcpt", ['"bob"@example.org', "bob@example.org.", "bob+x@example.org", "carol@other.example"]
)
def test_mxdeliv_recipient_in_another_spelling_refuses_the_request(gate: Ports, rcpt: str) -> None:
    headers = [("X-MAIL-FROM", ALICE), ("X-MAIL-TO", BOB), ("X-MAIL-TO", rcpt)]
    assert post(gate.http, CLEARTEXT, headers) == (400, "553 5.1.3 Invalid recipient address")
    assert gate.sink.messages == []


def test_mxdeliv_bare_lf_becomes_crlf_and_dots_are_stuffed(gate: Ports) -> None:
    """A lone `.` line ended by LF must not end DATA at Postfix's loopback port."""
    dotted = b".X-Dot: one\n" + ENCRYPTED.replace(b"\r\n", b"\n", 3)
    assert post(gate.http, dotted, {"X-MAIL-FROM": ALICE, "X-MAIL-TO": BOB}) == (200, "250 OK")
    [(_from, _rcpts, data)] = gate.sink.messages
    assert data == crlf(dotted)


def test_mxdeliv_bare_cr_is_refused(gate: Ports) -> None:
    body = ENCRYPTED.replace(b"\r\n", b"\r", 1)
    status, text = post(gate.http, body, {"X-MAIL-FROM": ALICE, "X-MAIL-TO": BOB})
    assert (status, text) == (400, "bare CR in the message")
    assert gate.sink.messages == []


def test_mxdeliv_garbage_request(gate: Ports) -> None:
    with socket.create_connection(("127.0.0.1", gate.http), timeout=10) as s:
        s.sendall(b"HELLO THERE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")


# --- privacy -------------------------------------------------------------------------------


# --- counts --------------------------------------------------------------------------------


def counts(registry: Registry, name: str) -> dict[tuple[str, ...], float]:
    return {tuple(v for _, v in k): n for k, n in registry.families[name].samples.items()}


def test_the_gate_counts_what_it_lets_in_and_what_it_refuses_by_reason(gate: Ports) -> None:
    milter_send(gate.outgoing, ALICE, [BOB], ENCRYPTED)
    milter_send(gate.outgoing, ALICE, [BOB], CLEARTEXT)
    milter_send(gate.outgoing, ALICE, ["carol@other.example"], ENCRYPTED)
    milter_send(gate.outgoing, ALICE, [BOB], ENCRYPTED)  # over the burst of 3: refused
    send(gate.incoming, ALICE, [BOB], CLEARTEXT)  # bob enforces encryption
    send(gate.incoming, ALICE, ["carol@example.org"], CLEARTEXT)  # carol does not
    post(gate.http, ENCRYPTED, {"X-MAIL-FROM": ALICE, "X-MAIL-TO": BOB})
    post(gate.http, b"x" * (MAX_SIZE + 1), {"X-MAIL-TO": BOB})
    with RawClient(gate.incoming) as client:
        client.command("HELO peer.example")
        assert client.command("RCPT TO:<x@elsewhere.example>").startswith("503")
        client.command(f"MAIL FROM:<{ALICE}>")
        assert client.command("RCPT TO:<x@elsewhere.example>").startswith("553")

    assert counts(gate.registry, "chatmail_gate_accepted_total") == {
        ("outgoing", "encrypted"): 2,
        ("incoming", "cleartext"): 1,
        ("incoming", "encrypted"): 1,
    }
    assert counts(gate.registry, "chatmail_gate_refused_total") == {
        ("outgoing", "523", "cleartext"): 1,
        ("outgoing", "450", "rate_limited"): 1,
        ("incoming", "523", "cleartext"): 1,
        ("incoming", "552", "too_large"): 1,
        ("incoming", "553", "invalid_recipient"): 1,
    }
    assert counts(gate.registry, "chatmail_mxdeliv_requests_total") == {("200",): 1, ("413",): 1}


def test_a_message_the_reinjection_defers_is_not_counted_as_let_in(gate: Ports) -> None:
    gate.sink.reply = "451 4.3.0 try again"
    assert milter_send(gate.outgoing, ALICE, ["carol@other.example"], ENCRYPTED)[0] == 451
    assert counts(gate.registry, "chatmail_gate_accepted_total") == {}
    gate.sink.reply = "250 OK"
    assert milter_send(gate.outgoing, ALICE, ["carol@other.example"], ENCRYPTED) == PASSED_ON
    assert counts(gate.registry, "chatmail_gate_accepted_total") == {("outgoing", "encrypted"): 1}


def test_an_oversized_message_is_counted_as_too_large(gate: Ports) -> None:
    with RawClient(gate.incoming) as client:
        client.command("HELO client.example")
        client.command(f"MAIL FROM:<{ALICE}>")
        client.command(f"RCPT TO:<{BOB}>")
        client.command("DATA")
        client.send(b"x" * (MAX_SIZE + 10) + b"\r\n.\r\n")
        assert client.readline() == "552 Message exceeds maximum size\r\n"
    big = ENCRYPTED + b"x" * (MAX_SIZE + 10) + b"\r\n"
    assert milter_send(gate.outgoing, ALICE, [BOB], big)[0] == 552
    refused = counts(gate.registry, "chatmail_gate_refused_total")
    assert refused == {("incoming", "552", "too_large"): 1, ("outgoing", "552", "too_large"): 1}


def test_logs_hold_no_addresses(gate: Ports, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    milter_send(gate.outgoing, ALICE, [BOB], ENCRYPTED)
    milter_send(gate.outgoing, ALICE, ["carol@other.example"], ENCRYPTED)
    milter_send(gate.outgoing, ALICE, [BOB], CLEARTEXT)
    send(gate.incoming, "someone@elsewhere.example", [BOB], CLEARTEXT)
    post(gate.http, CLEARTEXT, {"X-MAIL-FROM": ALICE, "X-MAIL-TO": BOB})
    assert "passed the gate" in caplog.text and "rejected" in caplog.text
    for needle in ("alice", "bob", "elsewhere", "Subject"):
        assert needle not in caplog.text


# --- incoming with the real DKIM verifier --------------------------------------------------


def test_incoming_gate_with_real_dkim(tmp_path: Path) -> None:
    """A signed encrypted message passes; the same message altered in transit does not."""
    import dkim  # type: ignore[import-untyped]

    from chatmaild.dkimcheck import DkimVerifier

    keys = Path(__file__).parent / "data" / "dkim"
    zone = {
        "sel._domainkey.example.org": [
            b"v=DKIM1; k=rsa; p=" + (keys / "test-a.p").read_bytes().strip()
        ]
    }
    signed_data = crlf(ENCRYPTED)
    signature = dkim.sign(
        signed_data,
        b"sel",
        b"example.org",
        (keys / "test-a.private").read_bytes(),
        include_headers=[b"from", b"to", b"subject"],
    )
    signed = signature + signed_data
    loop = LoopThread()
    sink = Sink()
    try:
        sink_port = loop.serve(start_smtp_server(sink, "127.0.0.1", 0, "sink", MAX_SIZE * 2))
        reinjector = Reinjector("127.0.0.1", sink_port)
        loop.reinjectors.append(reinjector)
        gate = IncomingGate(
            make_config(tmp_path),
            reinjector,
            DkimVerifier(resolve_txt=zone.get),
            lambda rcpt: True,
        )
        port = loop.serve(start_smtp_server(gate, "127.0.0.1", 0, "filtermail", MAX_SIZE))
        assert send(port, ALICE, [BOB], signed) == (250, "OK")
        tampered = signed.replace(b"Subject: [...]", b"Subject: [..!]")
        assert send(port, ALICE, [BOB], tampered) == (554, "5.7.1 No valid DKIM signature found")
        assert send(port, ALICE, [BOB], signed_data) == (554, "5.7.1 No DKIM signature found")
        assert [m[2] for m in sink.messages] == [signed]
    finally:
        loop.stop()


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: \xa04",  # Python's str.strip() takes these, HTTP's white space not
        b"Content-Length: 4\x1f",
    ],
)
def test_mxdeliv_strips_only_http_white_space(gate: Ports, header: bytes) -> None:
    status, _text = raw_request(
        gate.http, mxdeliv_request([b"X-MAIL-TO: bob@example.org", header], b"abcd")
    )
    assert status == 400
    assert gate.sink.messages == []


def test_mxdeliv_recipient_with_other_white_space_is_refused(gate: Ports) -> None:
    headers = [b"X-MAIL-TO: \xa0bob@example.org\x85", b"Content-Length: %d" % len(ENCRYPTED)]
    status, text = raw_request(gate.http, mxdeliv_request(headers, ENCRYPTED))
    assert (status, text) == (400, "553 5.1.3 Invalid recipient address")


# --- blocked accounts (doc/accounts.md) -------------------------------------------------------


def block(mailboxes: Path, addr: str) -> None:
    (mailboxes / addr).mkdir()
    (mailboxes / addr / "blocked").touch()


@pytest.mark.parametrize("rcpt", [BOB, "Bob@example.org", "BOB@EXAMPLE.ORG"])
def test_a_blocked_recipient_is_refused_permanently_at_rcpt(
    gate: Ports, tmp_path: Path, rcpt: str
) -> None:
    block(tmp_path, BOB)
    with MilterClient(gate.outgoing) as client:
        assert client.mail(ALICE) is None
        assert client.rcpt(rcpt) == (550, "5.2.1 Mailbox disabled, not accepting messages")
        # another recipient in the same transaction is still taken
        assert client.rcpt("carol@example.org") is None
    with RawClient(gate.incoming) as smtp:
        assert smtp.command(f"MAIL FROM:<{ALICE}>") == "250 OK\r\n"
        reply = smtp.command(f"RCPT TO:<{rcpt}>")
        assert reply == "550 5.2.1 Mailbox disabled, not accepting messages\r\n"
        assert smtp.command("RCPT TO:<carol@example.org>") == "250 OK\r\n"
    assert gate.sink.messages == []


def test_a_blocked_recipient_refuses_the_mxdeliv_request(gate: Ports, tmp_path: Path) -> None:
    block(tmp_path, BOB)
    headers = [("X-MAIL-FROM", "carol@other.example"), ("X-MAIL-TO", "Bob@example.org")]
    expected = (400, "550 5.2.1 Mailbox disabled, not accepting messages")
    assert post(gate.http, ENCRYPTED, headers) == expected
    assert gate.sink.messages == []
    (tmp_path / BOB / "blocked").unlink()  # unblocked: the same request goes through
    assert post(gate.http, ENCRYPTED, headers) == (200, "250 OK")


def test_blocking_one_account_leaves_others_and_remote_recipients(
    gate: Ports, tmp_path: Path
) -> None:
    block(tmp_path, "carol@example.org")
    rcpts = [BOB, "carol@other.example"]
    assert milter_send(gate.outgoing, ALICE, rcpts, ENCRYPTED) == PASSED_ON
    assert gate.sink.messages[0][1] == rcpts


def test_blocked_recipients_are_counted(gate: Ports, tmp_path: Path) -> None:
    block(tmp_path, BOB)
    with RawClient(gate.incoming) as client:
        client.command("MAIL FROM:<carol@other.example>")
        assert client.command(f"RCPT TO:<{BOB}>").startswith("550 ")
    refused = counts(gate.registry, "chatmail_gate_refused_total")
    assert refused[("incoming", "550", "blocked_recipient")] == 1
