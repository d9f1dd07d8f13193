"""The milter protocol's server side (doc/milter.md), fed bytes directly: what Postfix sends,
and what a broken or hostile peer on the milter port could send instead. The real Postfix
is in test_milter_postfix.py."""

from __future__ import annotations

import asyncio
import struct

import pytest

from chatmaild import milter, smtpreject
from chatmaild.milter import (
    REQUIRED,
    WANTED,
    MilterSession,
    ProtocolError,
    message_bytes,
    negotiate,
    packet,
    reply_code,
)
from chatmaild.smtpreject import Reject

# what Postfix 3.7 offers: version 6, all actions, all protocol flags
POSTFIX_OPTNEG = struct.pack(">III", 6, 0x1FF, 0x1FFFFF)


class Gate:
    def __init__(self, answer: str | Reject | None = None) -> None:
        self.answer = answer
        self.judged: list[tuple[str, list[str], bytes]] = []
        self.as_given: list[bool] = []
        self.senders_checked = 0

    def check_sender(self, mail_from: str) -> str:
        self.senders_checked += 1
        if mail_from == "refused@example.org":
            raise smtpreject.invalid_from_address(mail_from)
        return mail_from

    def check_recipient(self, rcpt: str) -> str:
        if rcpt.startswith("blocked"):
            raise smtpreject.recipient_blocked()
        return rcpt.lower()  # the canonical spelling, in this gate

    async def judge(
        self, mail_from: str, rcpts: list[str], message: bytes, as_given: bool
    ) -> str | None:
        self.judged.append((mail_from, rcpts, message))
        self.as_given.append(as_given)
        if isinstance(self.answer, Reject):
            raise self.answer
        return self.answer


def conversation(gate: Gate, *packets: bytes, max_size: int = 10_000) -> list[bytes]:
    """The replies of one session fed `packets` (as raw bytes), then end of input."""

    async def run() -> list[bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"".join(packets))
        reader.feed_eof()
        sent = bytearray()

        class Writer:
            def write(self, data: bytes) -> None:
                sent.extend(data)

            async def drain(self) -> None:
                pass

            def close(self) -> None:
                pass

            async def wait_closed(self) -> None:
                pass

        session = MilterSession(gate, reader, Writer(), max_size)  # type: ignore[arg-type]
        await session.run()
        replies, rest = [], bytes(sent)
        while rest:
            (length,) = struct.unpack(">I", rest[:4])
            replies.append(rest[4 : 4 + length])
            rest = rest[4 + length :]
        return replies

    return asyncio.run(run())


def envelope(sender: str = "alice@example.org", *rcpts: str) -> list[bytes]:
    return [
        packet(b"O", POSTFIX_OPTNEG),
        packet(b"D", b"Mj\0queue-id\0"),
        packet(b"M", f"<{sender}>\0SIZE=100\0".encode()),
        *(packet(b"R", f"<{rcpt}>\0".encode()) for rcpt in rcpts or ["bob@example.org"]),
    ]


def content(headers: list[tuple[bytes, bytes]], body: bytes) -> list[bytes]:
    events = [packet(b"L", name + b"\0" + value + b"\0") for name, value in headers]
    events.append(packet(b"N"))
    if body:
        events.append(packet(b"B", body))
    events.append(packet(b"E"))
    return events


HEADERS = [(b"From", b" alice@example.org"), (b"Subject", b" a\n folded one")]


def test_negotiation_asks_for_what_the_gate_needs_and_no_actions() -> None:
    [reply] = conversation(Gate(), packet(b"O", POSTFIX_OPTNEG))
    assert reply == b"O" + struct.pack(">III", 6, 0, WANTED)


def test_a_postfix_that_cannot_leave_out_the_replies_is_refused() -> None:
    old = struct.pack(">III", 2, 0x3F, 0x7F)  # protocol 2: every event gets a reply
    with pytest.raises(ProtocolError):
        negotiate(old)
    assert conversation(Gate(), packet(b"O", old)) == []
    assert REQUIRED & 0x7F == 0


def test_an_accepted_message_is_judged_as_queued_and_accepted() -> None:
    gate = Gate()
    replies = conversation(gate, *envelope(), *content(HEADERS, b"line\r\n"), packet(b"Q"))
    assert replies[1:] == [b"c", b"a"]  # RCPT, end of message (MAIL gets no answer)
    assert gate.judged == [
        (
            "alice@example.org",
            ["bob@example.org"],
            b"From: alice@example.org\r\nSubject: a\r\n folded one\r\n\r\nline\r\n",
        )
    ]


@pytest.mark.parametrize(
    ("rcpts", "as_given"),
    [(["bob@example.org"], True), (["bob@example.org", "Carol@example.org"], False)],
)
def test_the_gate_is_told_whether_postfix_queued_the_spellings_it_took(
    rcpts: list[str], as_given: bool
) -> None:
    """Postfix queues the client's spelling; the gate may need to pass the message on in its
    own (doc/milter.md §6)."""
    gate = Gate()
    conversation(gate, *envelope("alice@example.org", *rcpts), *content(HEADERS, b""))
    assert gate.judged[0][1] == [rcpt.lower() for rcpt in rcpts]
    assert gate.as_given == [as_given]


def test_the_gates_refusals_are_its_reply_lines() -> None:
    gate = Gate(smtpreject.encryption_needed("test"))
    replies = conversation(
        gate,
        *envelope("alice@example.org", "blocked@example.org", "bob@example.org"),
        *content(HEADERS, b"x\r\n"),
    )
    assert replies[1] == b"y" + smtpreject.recipient_blocked().reply().encode() + b"\0"
    assert replies[2] == b"c"
    assert replies[3] == b"y" + smtpreject.encryption_needed("x").reply().encode() + b"\0"
    assert gate.judged[0][1] == ["bob@example.org"]  # only the recipient it took


def test_a_refused_sender_is_answered_at_each_rcpt_and_judged_once() -> None:
    """At MAIL Postfix has not yet checked the sender against the login (its sender
    restrictions wait for RCPT): the gate judges the sender at the first RCPT."""
    gate = Gate()
    replies = conversation(gate, *envelope("refused@example.org", "bob@x.org", "carol@x.org"))
    expected = smtpreject.invalid_from_address("refused@example.org").reply()
    assert replies[1:] == [b"y" + expected.encode() + b"\0"] * 2
    assert gate.senders_checked == 1


def test_mail_is_answered_when_postfix_cannot_leave_it_out() -> None:
    offer = struct.pack(">III", 6, 0x1FF, 0x1FFFFF & ~milter.NR_MAIL)
    replies = conversation(Gate(), packet(b"O", offer), *envelope()[2:], *content(HEADERS, b""))
    assert replies[1:] == [b"c", b"c", b"a"]  # MAIL, RCPT, end of message


def test_a_message_the_gate_passed_on_itself_is_discarded_a_temporary_error_returned() -> None:
    passed = conversation(Gate("250 2.0.0 Ok"), *envelope(), *content(HEADERS, b""))
    assert passed[-1] == b"d"
    failed = conversation(Gate("451 4.3.0 later"), *envelope(), *content(HEADERS, b""))
    assert failed[-1] == b"y451 4.3.0 later\0"
    # a line that is no reply at all would read to Postfix as a broken milter
    garbled = conversation(Gate("ok, sent"), *envelope(), *content(HEADERS, b""))
    assert garbled[-1] == b"y" + milter.INTERNAL_ERROR.encode() + b"\0"


def test_a_crash_of_the_gate_is_a_temporary_error_and_the_session_goes_on() -> None:
    class Crashing(Gate):
        async def judge(
            self, mail_from: str, rcpts: list[str], message: bytes, as_given: bool
        ) -> str | None:
            raise RuntimeError("bug")

    replies = conversation(
        Crashing(), *envelope(), *content(HEADERS, b""), *envelope()[2:], *content(HEADERS, b"")
    )
    internal = b"y" + milter.INTERNAL_ERROR.encode() + b"\0"
    assert replies[1:] == [b"c", internal, b"c", internal]


def test_a_gate_that_takes_too_long_is_a_temporary_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answered before Postfix stops waiting (milter_content_timeout), so that the client is
    told to try again by the gate's own word."""

    class Stuck(Gate):
        async def judge(
            self, mail_from: str, rcpts: list[str], message: bytes, as_given: bool
        ) -> str | None:
            await asyncio.sleep(3600)
            return None

    monkeypatch.setattr(milter, "JUDGE_DEADLINE", 0.05)
    replies = conversation(Stuck(), *envelope(), *content(HEADERS, b""))
    assert replies[-1] == b"y" + milter.INTERNAL_ERROR.encode() + b"\0"


def test_a_message_over_the_size_is_refused_at_its_end_and_not_held() -> None:
    gate = Gate()
    replies = conversation(gate, *envelope(), *content(HEADERS, b"x" * 60_000), max_size=50_000)
    assert replies[-1] == b"y" + smtpreject.message_too_large().reply().encode() + b"\0"
    assert gate.judged == []


def test_abort_forgets_the_envelope() -> None:
    gate = Gate()
    replies = conversation(
        gate,
        *envelope("alice@example.org", "first@example.org"),
        packet(b"A"),
        packet(b"M", b"<carol@example.org>\0"),
        packet(b"R", b"<second@example.org>\0"),
        *content(HEADERS, b""),
    )
    assert replies[-1] == b"a"
    assert gate.judged[0][:2] == ("carol@example.org", ["second@example.org"])


NEGOTIATED = packet(b"O", POSTFIX_OPTNEG)


@pytest.mark.parametrize(
    "hostile",
    [
        struct.pack(">I", 0),  # a packet without a command
        NEGOTIATED + struct.pack(">I", milter.MAX_PACKET + 1) + b"B",  # longer than Postfix's
        NEGOTIATED + packet(b"Z", b"what"),  # a command we never asked for
        packet(b"O", b"short"),
        NEGOTIATED + packet(b"M", b"<no-nul>"),
        NEGOTIATED + packet(b"L", b"name-only\0"),
        NEGOTIATED + packet(b"E"),  # the end of a message that never began
        packet(b"M", b"<alice@example.org>\0"),  # before any negotiation
        NEGOTIATED + struct.pack(">I", 100) + b"B" + b"cut off",
    ],
    ids=[
        "empty",
        "oversized",
        "unknown",
        "short-optneg",
        "no-nul",
        "header",
        "eom",
        "not-negotiated",
        "cut",
    ],  # fmt: skip
)
def test_a_broken_peer_loses_its_connection_and_nothing_else(hostile: bytes) -> None:
    gate = Gate()
    replies = conversation(gate, hostile, *envelope()[2:], *content(HEADERS, b""))
    assert gate.judged == []  # nothing after the broken packet was read
    assert len(replies) <= 1  # at most the negotiation's answer


def test_message_bytes_puts_back_folds_and_the_empty_line() -> None:
    headers = [(b"A", b" 1\n\t2"), (b"B", b"tight"), (b"A", b" again")]
    assert message_bytes(headers, b"") == b"A: 1\r\n\t2\r\nB:tight\r\nA: again\r\n\r\n"


def test_reply_code_doubles_percent_signs_and_takes_only_refusals() -> None:
    assert reply_code("550 5.1.1 <a%b@c>") == b"550 5.1.1 <a%%b@c>\0"
    for line in ("250 ok", "5xx bad", "550", "550-multi"):
        with pytest.raises(ValueError):
            reply_code(line)
