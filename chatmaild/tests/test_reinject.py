"""Re-injection's connection pool against a server that behaves as Postfix's smtpd does when
a connection idles too long: it writes `421 4.4.2 ... Error: timeout exceeded` and closes."""

from __future__ import annotations

import asyncio

import pytest

from chatmaild import reinject
from chatmaild.reinject import Reinjector

TIMEOUT_REPLY = b"421 4.4.2 relay.example Error: timeout exceeded\r\n"


class IdleClosingServer:
    """Accepts every message; closes a connection idle for `idle` seconds, with a 421."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.connections = 0
        self.messages = 0
        self.timed_out = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 relay.example ESMTP\r\n")
        in_data = False
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), self.idle)
                except TimeoutError:
                    writer.write(TIMEOUT_REPLY)
                    await writer.drain()
                    self.timed_out.set()
                    # Postfix closes at once; the client learns of it only on its next
                    # read, after it wrote its next command. Waiting for that command makes
                    # this order certain here.
                    await reader.readline()
                    return
                if not line:
                    return
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        self.messages += 1
                        writer.write(b"250 2.0.0 Ok: queued\r\n")
                    continue
                verb = line[:4].upper()
                if verb == b"DATA":
                    in_data = True
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    writer.write(b"250 ok\r\n")
        finally:
            writer.close()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 20))


MESSAGE = b"From: a@example.org\r\n\r\nbody\r\n"


def test_a_connection_postfix_closed_for_idleness_is_replaced() -> None:
    async def scenario() -> tuple[str, str, IdleClosingServer]:
        server = IdleClosingServer(idle=0.2)
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        injector = Reinjector("127.0.0.1", port)
        first = await injector.deliver("a@example.org", ["b@example.org"], MESSAGE)
        await server.timed_out.wait()  # the pooled connection got its 421 and was closed
        second = await injector.deliver("a@example.org", ["b@example.org"], MESSAGE)
        await injector.close()
        listener.close()
        return first, second, server

    first, second, server = run(scenario())
    assert (first, second) == ("250 OK", "250 OK")
    assert server.messages == 2 and server.connections == 2


def test_idle_connections_are_not_kept_past_their_lifetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reinject, "IDLE_LIFETIME", 0.0)

    async def scenario() -> IdleClosingServer:
        server = IdleClosingServer(idle=30)
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        injector = Reinjector("127.0.0.1", listener.sockets[0].getsockname()[1])
        for _ in range(2):
            assert await injector.deliver("a@example.org", ["b@example.org"], MESSAGE) == "250 OK"
        await injector.close()
        listener.close()
        return server

    assert run(scenario()).connections == 2


def test_a_421_on_a_fresh_connection_reaches_the_client() -> None:
    """Only a pooled connection is retried: Postfix's 421 on a new one is its real answer."""

    async def scenario() -> str:
        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 relay.example ESMTP\r\n")
            await reader.readline()
            writer.write(b"250 ok\r\n")
            await reader.readline()
            writer.write(b"421 4.3.2 Service shutting down\r\n")
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(refuse, "127.0.0.1", 0)
        injector = Reinjector("127.0.0.1", listener.sockets[0].getsockname()[1])
        reply = await injector.deliver("a@example.org", ["b@example.org"], MESSAGE)
        listener.close()
        return reply

    assert run(scenario()) == "421 4.3.2 Service shutting down"


class PipeliningServer:
    """Announces PIPELINING and answers only once a whole envelope, up to DATA, has arrived:
    a client that waits for each reply before its next command gets none. `refuse`: the
    reply line to RCPT for these addresses; DATA gets its 354 all the same when another
    recipient was accepted, as Postfix does. It never hangs up by itself."""

    def __init__(self, refuse: dict[str, bytes] | None = None) -> None:
        self.refuse = refuse or {}
        self.connections = 0
        self.messages: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 relay.example ESMTP\r\n")
        try:
            await reader.readline()
            writer.write(b"250-relay.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            while envelope := await self._envelope(reader, writer):
                rcpt_replies = [self._rcpt_reply(line) for line in envelope[1:-1]]
                accepted = rcpt_replies.count(b"250 ok\r\n")
                replies = [b"250 ok\r\n", *rcpt_replies]
                replies.append(b"354 go ahead\r\n" if accepted else b"554 5.5.1 none\r\n")
                writer.writelines(replies)
                if not accepted:
                    continue
                body = b""
                while (line := await reader.readline()) not in (b".\r\n", b""):
                    body += line
                if line:
                    self.messages.append(body)
                    writer.write(b"250 2.0.0 Ok: queued\r\n")
        finally:
            writer.close()

    def _rcpt_reply(self, rcpt_line: bytes) -> bytes:
        for address, reply in self.refuse.items():
            if address.encode() in rcpt_line:
                return reply
        return b"250 ok\r\n"

    @staticmethod
    async def _envelope(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[bytes]:
        lines: list[bytes] = []
        while line := await reader.readline():
            if line.upper().startswith(b"RSET"):
                writer.write(b"250 ok\r\n")
                continue
            lines.append(line)
            if line.upper().startswith(b"DATA"):
                return lines
        return []


REFUSED = b"550 5.1.1 no\r\n"


def deliver_all(server: PipeliningServer, rcpts: list[list[str]]) -> list[str]:
    async def scenario() -> list[str]:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        injector = Reinjector("127.0.0.1", listener.sockets[0].getsockname()[1])
        replies = [await injector.deliver("a@example.org", to, MESSAGE) for to in rcpts]
        await injector.close()
        listener.close()
        return replies

    return run(scenario())  # type: ignore[no-any-return]


def test_mail_rcpt_and_data_go_together_where_postfix_pipelines() -> None:
    """One round trip for the envelope instead of one per command (RFC 2920)."""
    server = PipeliningServer()
    to = ["b@example.org", "c@example.org"]
    assert deliver_all(server, [to, to]) == ["250 OK", "250 OK"]
    assert server.messages == [MESSAGE, MESSAGE] and server.connections == 1


def test_a_message_with_a_refused_recipient_is_not_sent_to_the_accepted_ones() -> None:
    """Pipelined, a refused RCPT is known only after DATA got its 354: the message must not
    follow (the client hears the refusal, and would resend to all), so the connection is
    dropped, and the next message goes on a fresh one."""
    server = PipeliningServer(refuse={"c@example.org": REFUSED})
    replies = deliver_all(server, [["b@example.org", "c@example.org"], ["b@example.org"]])
    assert replies == ["550 5.1.1 no", "250 OK"]
    assert server.messages == [MESSAGE] and server.connections == 2


def test_after_a_pipelined_refusal_the_next_message_takes_a_fresh_connection() -> None:
    """Every recipient refused: DATA is refused too and the first refusal reaches the client.
    Postfix counted the refused DATA as an error of the session as well (enough of them and
    it answers slowly, then hangs up), so the connection is not reused."""
    server = PipeliningServer(refuse={"c@example.org": REFUSED})
    replies = deliver_all(server, [["c@example.org"], ["b@example.org"]])
    assert replies == ["550 5.1.1 no", "250 OK"]
    assert server.messages == [MESSAGE] and server.connections == 2


def test_a_421_in_the_envelope_ends_the_connection_even_if_the_server_stays() -> None:
    """A 421 means the server is closing: the replies after it are not taken as answers to
    anything else, the client hears the 421, and the next message goes on a fresh connection
    (not on one left waiting for a message)."""
    server = PipeliningServer(refuse={"c@example.org": b"421 4.3.2 shutting down\r\n"})
    # a 250 (to b) and the 354 follow the 421: an RSET would take that 250 for its own reply
    replies = deliver_all(server, [["c@example.org", "b@example.org"], ["b@example.org"]])
    assert replies == ["421 4.3.2 shutting down", "250 OK"]
    assert server.messages == [MESSAGE] and server.connections == 2


class DyingServer:
    """Queues every message, then dies as a killed smtpd does: `die_after(n)` after the n-th
    message's 250 (the pooled connection is gone before the next MAIL), `die_before(n)`
    after queueing the n-th but before its reply."""

    def __init__(self, die_after: int = 0, die_before: int = 0) -> None:
        self.die_after = die_after
        self.die_before = die_before
        self.queued = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 relay.example ESMTP\r\n")
        while line := await reader.readline():
            if not line.upper().startswith(b"DATA"):
                writer.write(b"250 ok\r\n")
                continue
            writer.write(b"354 go ahead\r\n")
            while await reader.readline() != b".\r\n":
                pass
            self.queued += 1
            if self.queued == self.die_before:
                return  # closed without a reply
            writer.write(b"250 2.0.0 Ok: queued\r\n")
            if self.queued == self.die_after:
                await writer.drain()
                writer.transport.abort()
                return

    def deliver_twice(self) -> list[str]:
        async def scenario() -> list[str]:
            listener = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            injector = Reinjector("127.0.0.1", listener.sockets[0].getsockname()[1])
            replies = [
                await injector.deliver("a@example.org", ["b@example.org"], MESSAGE)
                for _ in range(2)
            ]
            await injector.close()
            listener.close()
            return replies

        return run(scenario())  # type: ignore[no-any-return]


def test_a_pooled_connection_found_dead_before_the_message_is_replaced() -> None:
    """After a message went through, the pooled connection dies without a word (Postfix
    restarted): the next message is not 'after the end of DATA' and goes on a fresh one."""
    server = DyingServer(die_after=1)
    assert server.deliver_twice() == ["250 OK", "250 OK"]
    assert server.queued == 2


def test_a_connection_lost_after_the_end_of_data_is_not_retried_behind_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Postfix may have queued a message whose reply to DATA was lost: sending it again on a
    fresh connection would deliver it twice unseen. The 451 makes the resend the sender's,
    and the log says that a duplicate may follow."""
    server = DyingServer(die_before=2)
    assert server.deliver_twice() == ["250 OK", reinject.TEMPORARY_FAILURE]
    assert server.queued == 2  # not 3: the pooled connection's message was not sent again
    assert reinject.AFTER_END_OF_DATA in caplog.text


@pytest.mark.parametrize(
    ("message", "payload"),
    [
        (b"A: b\r\n\r\nx\r\n", b"A: b\r\n\r\nx\r\n.\r\n"),
        (b".A: b\r\n\r\n.\r\n..\r\nx", b"..A: b\r\n\r\n..\r\n...\r\nx\r\n.\r\n"),
        (b"", b".\r\n"),
    ],
)
def test_dot_stuff(message: bytes, payload: bytes) -> None:
    assert b"".join(reinject.dot_stuff(message)) == payload


@pytest.mark.parametrize(
    "message", [b"A: b\r\n\r\nx\n.\nRCPT TO:<x@y>\r\n", b"A: b\r\n\r\nx\r.\r\n", b"A: b\n"]
)
def test_a_bare_newline_is_never_reinjected(message: bytes) -> None:
    """Postfix's loopback port takes a bare LF as a line end: `.` + LF would end DATA early
    and what follows would be read as commands. No such message leaves for Postfix."""
    with pytest.raises(reinject.BareNewline):
        reinject.dot_stuff(message)

    async def deliver() -> str:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(reinject.BareNewline):
                await Reinjector("127.0.0.1", port).deliver("a@b", ["c@d"], message)
            return "refused before connecting"
        finally:
            server.close()

    assert asyncio.run(deliver()) == "refused before connecting"
