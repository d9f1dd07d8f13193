"""The transport: mail to other relays over HTTPS first, SMTP (through Postfix) otherwise.

Routing with fakes for the peer and for Postfix; the HTTPS client against a real TLS server
on loopback; the LMTP listener as Postfix's lmtp client talks to it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chatmaild.mxclient import Answer, MxdelivClient, NoAnswer, verifies_certificate
from chatmaild.smtpfront import start_smtp_server
from chatmaild.transport import DELIVERED, NO_MXDELIV_FOR, Transport, verdict

MESSAGE = b"From: a@x.example\r\nSubject: [...]\r\n\r\nbody\r\n"


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (200, "250 OK", DELIVERED),
        (400, "523 Encryption Needed: Invalid Unencrypted Mail", "523 Encryption Needed: Inv"),
        (400, "451 4.3.0 Internal error, please try again later", "451 4.3.0 Internal error"),
        (400, "553 5.1.3 Invalid recipient address", "553 5.1.3 Invalid recipient address"),
        (413, "552 Message exceeds maximum size", "552 Message exceeds maximum size"),
        (404, "<html>not found</html>", None),  # no /mxdeliv there
        (405, "only POST", None),
        (400, "bad request", None),  # not an SMTP reply: not a relay's /mxdeliv
        (502, "<html>Bad Gateway</html>", None),  # the peer's filter is down
        (200, "<html>welcome</html>", None),
    ],
)
def test_verdict(status: int, text: str, expected: str | None) -> None:
    reply = verdict(Answer(status, text))
    assert reply == expected or (expected is not None and reply and reply.startswith(expected))


@dataclass
class FakePeers:
    """Answers by host; records who was asked."""

    answers: dict[str, Answer | NoAnswer] = field(default_factory=dict)
    posts: list[tuple[str, str, list[str]]] = field(default_factory=list)

    async def post(self, host: str, mail_from: str, rcpts: list[str], data: bytes) -> Answer:
        self.posts.append((host, mail_from, rcpts))
        answer = self.answers[host]
        if isinstance(answer, NoAnswer):
            raise answer
        return answer


@dataclass
class FakePostfix:
    reply: str = "250 2.0.0 Ok: queued as 4F2A"
    messages: list[tuple[str, list[str]]] = field(default_factory=list)

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        self.messages.append((mail_from, rcpts))
        return self.reply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def transport(
    peers: FakePeers, postfix: FakePostfix, mx: dict[str, str | None], clock: Clock
) -> Transport:
    async def resolve(domain: str) -> str | None:
        return mx[domain]

    return Transport(peers, postfix, resolve, clock)  # type: ignore[arg-type]


def deliver(t: Transport, rcpts: list[str], mail_from: str = "a@x.example") -> list[str]:
    return asyncio.run(t.deliver(mail_from, rcpts, MESSAGE)).split("\r\n")


def test_a_relay_with_mxdeliv_gets_the_message_over_https() -> None:
    peers, postfix = FakePeers({"mx.b.example": Answer(200, "250 OK")}), FakePostfix()
    t = transport(peers, postfix, {"b.example": "mx.b.example"}, Clock())
    assert deliver(t, ["u@b.example", "v@b.example"]) == [DELIVERED, DELIVERED]
    assert peers.posts == [("mx.b.example", "a@x.example", ["u@b.example", "v@b.example"])]
    assert postfix.messages == []


def test_the_peers_refusal_is_the_reply() -> None:
    answer = Answer(400, "523 Encryption Needed: Invalid Unencrypted Mail")
    peers, postfix = FakePeers({"b.example": answer}), FakePostfix()
    t = transport(peers, postfix, {"b.example": "b.example"}, Clock())
    assert deliver(t, ["u@b.example"]) == [answer.text]
    assert postfix.messages == []


def test_a_peer_without_mxdeliv_gets_smtp_and_is_remembered_for_a_while() -> None:
    peers = FakePeers({"mx.b.example": Answer(404, "not found")})
    postfix, clock = FakePostfix(), Clock()
    t = transport(peers, postfix, {"b.example": "mx.b.example"}, clock)
    assert deliver(t, ["u@b.example"]) == [postfix.reply]
    assert deliver(t, ["v@b.example"]) == [postfix.reply]
    assert len(peers.posts) == 1, "asked again although it has no /mxdeliv"
    assert postfix.messages == [("a@x.example", ["u@b.example"]), ("a@x.example", ["v@b.example"])]
    clock.now += NO_MXDELIV_FOR + 1
    peers.answers["mx.b.example"] = Answer(200, "250 OK")
    assert deliver(t, ["w@b.example"]) == [DELIVERED]


def test_an_unreachable_peer_gets_smtp_and_is_remembered() -> None:
    peers, postfix = FakePeers({"b.example": NoAnswer("ConnectionRefusedError")}), FakePostfix()
    t = transport(peers, postfix, {"b.example": "b.example"}, Clock())
    assert deliver(t, ["u@b.example"]) == [postfix.reply]
    assert deliver(t, ["v@b.example"]) == [postfix.reply]
    assert len(peers.posts) == 1


def test_a_peer_whose_filter_is_down_gets_smtp_now_and_https_again_next_time() -> None:
    peers, postfix = FakePeers({"b.example": Answer(502, "Bad Gateway")}), FakePostfix()
    t = transport(peers, postfix, {"b.example": "b.example"}, Clock())
    assert deliver(t, ["u@b.example"]) == [postfix.reply]
    assert deliver(t, ["v@b.example"]) == [postfix.reply]
    assert len(peers.posts) == 2


def test_postfix_refusing_the_hand_over_is_the_reply() -> None:
    """A temporary failure to hand over keeps the message in Postfix's queue."""
    peers = FakePeers({"b.example": Answer(404, "")})
    postfix = FakePostfix("451 4.3.0 Could not hand the message on, please try again later")
    t = transport(peers, postfix, {"b.example": "b.example"}, Clock())
    assert deliver(t, ["u@b.example"]) == [postfix.reply]


def test_without_dns_answer_smtp_decides() -> None:
    peers, postfix = FakePeers(), FakePostfix()
    t = transport(peers, postfix, {"b.example": None}, Clock())
    assert deliver(t, ["u@b.example"]) == [postfix.reply]
    assert peers.posts == []


def test_recipients_of_several_domains_get_one_reply_each_in_order() -> None:
    peers = FakePeers(
        {
            "b.example": Answer(200, "250 OK"),
            "c.example": Answer(400, "554 5.7.1 No valid DKIM signature found"),
        }
    )
    postfix = FakePostfix()
    mx = {"b.example": "b.example", "c.example": "c.example", "d.example": None}
    t = transport(peers, postfix, mx, Clock())
    replies = deliver(t, ["u@c.example", "u@b.example", "v@d.example", "v@c.example"])
    assert replies == [
        "554 5.7.1 No valid DKIM signature found",
        DELIVERED,
        postfix.reply,
        "554 5.7.1 No valid DKIM signature found",
    ]


@pytest.mark.parametrize(
    ("host", "verified"),
    [
        ("relay.example", True),
        ("mx1.relay.example", True),
        ("_relay.example", False),  # self-signed by design
        ("[192.0.2.1]", False),
        ("192.0.2.1", False),
    ],
)
def test_which_certificates_are_verified(host: str, verified: bool) -> None:
    assert verifies_certificate(host) is verified


# --- the HTTPS client against a real TLS server ---------------------------------------------


@dataclass
class HttpsPeer:
    """A TLS server that answers /mxdeliv requests, keeping connections alive."""

    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n250 OK\n"
    close_after_answer: bool = False


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    tmp = tmp_path_factory.mktemp("tls")
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    paths = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run([*command.split(), *subject, *paths], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


@asynccontextmanager
async def https_peer(ctx: ssl.SSLContext) -> AsyncIterator[HttpsPeer]:
    peer = HttpsPeer(0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                peer.requests.append(head + await reader.readexactly(length))
                writer.write(peer.answer)
                await writer.drain()
                if peer.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    peer.port = server.sockets[0].getsockname()[1]
    try:
        yield peer
    finally:
        server.close()


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


def test_posts_keep_one_connection_alive(certificate: ssl.SSLContext) -> None:
    async def go() -> None:
        async with https_peer(certificate) as peer:
            client = MxdelivClient(port=peer.port)
            for i in range(3):
                answer = await client.post("[127.0.0.1]", "", [f"u{i}@b.example"], MESSAGE)
                assert answer == Answer(200, "250 OK")
            await client.close()
        assert peer.connections == 1
        head = peer.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
        assert head[0] == b"POST /mxdeliv HTTP/1.1"
        assert b"X-MAIL-FROM: " in head and b"X-MAIL-TO: u0@b.example" in head
        assert peer.requests[0].endswith(MESSAGE)

    run(go)


def test_a_connection_the_peer_closed_is_replaced(certificate: ssl.SSLContext) -> None:
    async def go() -> None:
        async with https_peer(certificate) as peer:
            peer.close_after_answer = True
            client = MxdelivClient(port=peer.port)
            for _ in range(2):
                answer = await client.post("[127.0.0.1]", "a@x.example", ["u@b.example"], MESSAGE)
                assert answer.status == 200
            await client.close()
        assert peer.connections == 2

    run(go)


def test_a_certificate_that_does_not_verify_is_no_answer(certificate: ssl.SSLContext) -> None:
    """A host with a DNS name gets its certificate checked: a self-signed one fails."""

    async def go() -> None:
        async with https_peer(certificate) as peer:
            client = MxdelivClient(port=peer.port)
            with pytest.raises(NoAnswer):
                await client.post("localhost", "a@x.example", ["u@b.example"], MESSAGE)
            await client.close()

    run(go)


def test_a_closed_port_is_no_answer() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go() -> None:
        with pytest.raises(NoAnswer):
            await MxdelivClient(port=port).post("[127.0.0.1]", "", ["u@b.example"], MESSAGE)

    run(go)


# --- the LMTP listener -----------------------------------------------------------------------


def test_lmtp_gives_one_reply_per_recipient(tmp_path: Path) -> None:
    peers = FakePeers({"b.example": Answer(200, "250 OK"), "c.example": Answer(404, "")})
    postfix = FakePostfix()
    t = transport(peers, postfix, {"b.example": "b.example", "c.example": "c.example"}, Clock())

    async def go() -> list[bytes]:
        server = await start_smtp_server(t, "127.0.0.1", 0, "filtermail", 10**6, lmtp=True)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [await reader.readline()]
        for command in [b"LHLO postfix", b"MAIL FROM:<a@x.example> SIZE=100"]:
            writer.write(command + b"\r\n")
            while (line := await reader.readline())[3:4] == b"-":
                pass
            lines.append(line)
        for rcpt in (b"u@b.example", b"u@c.example", b"bad address@c.example"):
            writer.write(b"RCPT TO:<" + rcpt + b">\r\n")
            lines.append(await reader.readline())
        writer.write(b"DATA\r\n")
        lines.append(await reader.readline())
        writer.write(MESSAGE + b".\r\n")
        lines += [await reader.readline(), await reader.readline()]
        writer.close()
        server.close()
        return lines

    lines = asyncio.run(go())
    assert lines[1].startswith(b"250") and lines[2].startswith(b"250")
    assert lines[3:6] == [b"250 OK\r\n", b"250 OK\r\n", b"553 5.1.3 Invalid recipient address\r\n"]
    assert lines[6].startswith(b"354")
    assert lines[7:] == [DELIVERED.encode() + b"\r\n", postfix.reply.encode() + b"\r\n"]


def test_deliveries_are_counted_by_route_and_result() -> None:
    peers = FakePeers(
        {
            "b.example": Answer(200, "250 OK"),
            "c.example": Answer(400, "450 4.2.0 Try again later"),
            "d.example": Answer(404, "not found"),
            "e.example": NoAnswer("ConnectionRefusedError"),
        }
    )
    mx: dict[str, str | None] = {d: d for d in ("b.example", "c.example", "d.example", "e.example")}
    t = transport(peers, FakePostfix(), mx, Clock())
    deliver(t, ["u@b.example", "v@b.example", "u@c.example", "u@d.example", "u@e.example"])
    deliveries = {
        tuple(v for _, v in k): n for k, n in t.deliveries.samples.items()
    }  # one per recipient domain, not per recipient
    assert deliveries == {
        ("https", "delivered"): 1,
        ("https", "deferred"): 1,
        ("smtp", "queued"): 2,
    }
    failures = {k[0][1]: n for k, n in t.https_failures.samples.items()}
    assert failures == {"not_mxdeliv": 1, "unreachable": 1}
