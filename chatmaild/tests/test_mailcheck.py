"""The filtermail verdicts (doc/encryption-gate.md) against the .eml corpus and beyond."""

from __future__ import annotations

import base64
import os
import random
import tomllib
import tracemalloc
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from chatmaild import smtpreject
from chatmaild.accounts import ENFORCE_E2EE_FILE
from chatmaild.mailcheck import (
    Reject,
    check_incoming,
    check_outgoing,
    from_address,
    is_encrypted,
    mailbox_enforces_e2ee,
    parse_message,
)
from chatmaild.mimeparse import crlf_only, parse_content_type, read_entity, split_multipart
from chatmaild.openpgp import decode_armor, is_encrypted_packet_stream

CORPUS = Path(__file__).parent / "data" / "mail"
MANIFEST = tomllib.loads((CORPUS / "verdicts.toml").read_text(encoding="utf-8"))
DEFAULTS: dict[str, Any] = MANIFEST["defaults"]
CASES: list[dict[str, Any]] = MANIFEST["case"]
ALICE = "alice@example.org"
BOB = "bob@example.org"
GNUPG_MADE = ["enc-bob", "enc-bob-carol", "enc-symmetric", "enc-symmetric-and-bob"]
GNUPG_MADE += ["enc-large-partial"]


def _always_enforces(rcpt: str) -> bool:
    return True


def _data(case: dict[str, Any]) -> bytes:
    return (CORPUS / str(case["file"])).read_bytes()


def _mailboxes(root: Path, existing: list[str], enforcing: list[str]) -> Path:
    """A mailboxes dir: an account for each valid recipient, the file for the enforcing ones."""
    for addr in existing:
        if addr and "@" in addr and "/" not in addr:
            (root / addr.lower()).mkdir(exist_ok=True)
    for addr in enforcing:
        (root / addr).mkdir(exist_ok=True)
        (root / addr / ENFORCE_E2EE_FILE).touch()
    return root


def _run(case: dict[str, Any], direction: str, tmp_path: Path) -> str | int:
    """The case's verdict in `direction`: "accept" (checking the envelope) or the reply code."""
    mail_from = case.get("mail_from", DEFAULTS["mail_from"])
    rcpts = case.get("rcpts", DEFAULTS["rcpts"])
    try:
        if direction == "outgoing":
            check_outgoing(mail_from, rcpts, _data(case))
        else:
            enforcing = case.get("enforcing", rcpts)
            mailboxes = _mailboxes(tmp_path, rcpts, enforcing)
            enforces = partial(mailbox_enforces_e2ee, mailboxes)
            envelope = check_incoming(mail_from, rcpts, _data(case), enforces).envelope_sender
            assert envelope == case.get("envelope", mail_from)
    except Reject as e:
        return e.code
    return "accept"


def _directions() -> list[Any]:
    params = []
    for case in CASES:
        for direction in ("outgoing", "incoming"):
            if direction in case:
                params.append(pytest.param(case, direction, id=f"{case['name']}-{direction}"))
    return params


@pytest.mark.parametrize(("case", "direction"), _directions())
def test_corpus_verdict(case: dict[str, Any], direction: str, tmp_path: Path) -> None:
    assert _run(case, direction, tmp_path) == case[direction], case["about"]


def test_corpus_is_complete() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names))
    files = {case["file"] for case in CASES}
    assert files == {p.name for p in CORPUS.glob("*.eml")}
    near_misses = [c for c in CASES if "accept" not in (c.get("outgoing"), c.get("incoming"))]
    assert len(near_misses) >= 50
    for path in CORPUS.glob("*.eml"):
        if "lf-only" not in path.name:  # SMTP data: CRLF throughout
            data = path.read_bytes()
            assert data.count(b"\n") == data.count(b"\r\n"), path.name


@pytest.mark.parametrize("name", GNUPG_MADE)
def test_gnupg_messages_accepted_both_ways(name: str) -> None:
    data = (CORPUS / f"{name}.eml").read_bytes()
    rcpts = [BOB, "carol@example.org"] if name == "enc-bob-carol" else [BOB]
    check_outgoing(ALICE, rcpts, data)
    assert check_incoming(ALICE, rcpts, data, _always_enforces).envelope_sender == ALICE
    msg = parse_message(data)
    assert is_encrypted(msg, outgoing=True) and is_encrypted(msg, outgoing=False)


def test_unreadable_body_is_not_encrypted_rather_than_a_crash() -> None:
    msg = parse_message((CORPUS / "version-8bit-idna-charset.eml").read_bytes())
    assert not is_encrypted(msg, outgoing=True)
    assert not is_encrypted(msg, outgoing=False)


def test_version_header_differs_by_direction() -> None:
    msg = parse_message((CORPUS / "enc-version-header.eml").read_bytes())
    assert not is_encrypted(msg, outgoing=True)
    assert is_encrypted(msg, outgoing=False)


def _armor_of(name: str) -> bytes:
    msg = read_entity((CORPUS / f"{name}.eml").read_bytes())
    ctype = parse_content_type(msg.get("content-type"))
    assert ctype is not None
    multipart = split_multipart(msg, ctype.params["boundary"], max_parts=2)
    assert multipart is not None
    start, end = multipart.parts[1]
    return read_entity(msg.data, start, end).body()


@pytest.mark.parametrize(
    "name", sorted(c["name"] for c in CASES if c["name"].startswith(("pkt-", "armor-")))
)
def test_near_misses_fail_at_the_intended_step(name: str) -> None:
    """armor-* break the armor; pkt-* keep it valid and break only the packet stream."""
    case = next(c for c in CASES if c["name"] == name)
    decoded = decode_armor(_armor_of(name), allow_version_header=True)
    if name.startswith("armor-") and name != "armor-not-openpgp":
        assert decoded is None
    else:
        assert decoded is not None
        assert is_encrypted_packet_stream(decoded) is (case["incoming"] == "accept")


# --- replies (doc/encryption-gate.md §3)


@pytest.mark.parametrize(
    ("reject", "reply"),
    [
        (smtpreject.invalid_from_address("x@y@z"), "500 Invalid from address <x@y@z>"),
        (smtpreject.invalid_recipient("why"), "553 5.1.3 Invalid recipient address"),
        (
            smtpreject.too_much_mail(ALICE, "2026-01-01T12:00:01Z"),
            f"450 4.7.1: Too much mail from <{ALICE}>, rate limited until 2026-01-01T12:00:01Z",
        ),
        (smtpreject.message_too_large(), "552 Message exceeds maximum size"),
        (smtpreject.parse_failed("why"), "500 Failed to parse message"),
        (smtpreject.invalid_from_header("missing"), "500 Invalid FROM header: missing"),
        (smtpreject.from_mismatch(BOB, ALICE), f"500 Invalid FROM <{BOB}> for <{ALICE}>"),
        (
            smtpreject.encryption_needed("why"),
            "523 Encryption Needed: Invalid Unencrypted Mail",
        ),
        (smtpreject.no_dkim_signature(), "554 5.7.1 No DKIM signature found"),
        (smtpreject.no_valid_dkim_signature(), "554 5.7.1 No valid DKIM signature found"),
        (smtpreject.recipient_blocked(), "550 5.2.1 Mailbox disabled, not accepting messages"),
    ],
)
def test_reply_texts(reject: Reject, reply: str) -> None:
    assert reject.reply() == reply
    assert reply.startswith(f"{reject.code} ")


def test_reject_fields() -> None:
    reject = smtpreject.no_dkim_signature()
    assert (reject.code, reject.enhanced, reject.public) == (
        554,
        "5.7.1",
        "No DKIM signature found",
    )
    assert str(reject) == reject.private


def test_reply_is_one_line_of_bounded_length() -> None:
    evil = "a@b\r\n250 OK\r\n" + "x" * 2000
    for reject in [smtpreject.invalid_from_address(evil), smtpreject.from_mismatch(evil, evil)]:
        reply = reject.reply()
        assert "\r" not in reply and "\n" not in reply
        assert len(reply) < 510
        assert reply.isascii()


# --- privacy


def test_private_reasons_hold_no_address_or_subject(tmp_path: Path) -> None:
    secrets = ["alice", "bob", "carol", "mallory", "example", "mailer-daemon", "peer.example"]
    secrets += ["Autocrypt Setup", "secure-join", "Hello", "Undelivered"]
    seen = 0
    for case in CASES:
        for direction in ("outgoing", "incoming"):
            if direction not in case:
                continue
            try:
                _run_raw(case, direction, tmp_path)
            except Reject as e:
                seen += 1
                for secret in secrets:
                    assert secret.lower() not in e.private.lower(), (case["name"], e.private)
    assert seen >= 100


def _run_raw(case: dict[str, Any], direction: str, tmp_path: Path) -> None:
    mail_from = case.get("mail_from", DEFAULTS["mail_from"])
    rcpts = case.get("rcpts", DEFAULTS["rcpts"])
    if direction == "outgoing":
        check_outgoing(mail_from, rcpts, _data(case))
    else:
        check_incoming(mail_from, rcpts, _data(case), _always_enforces)


def test_subject_and_addresses_not_in_private_reason() -> None:
    data = (
        b"From: Zebediah <zebediah@hidden.example>\r\nTo: quux@hidden.example\r\n"
        b"Subject: Top secret plans\r\n\r\nThe treasure is buried under the oak.\r\n"
    )
    rcpts = ["quux@hidden.example"]
    for mail_from, direction in [
        ("zebediah@hidden.example", "outgoing"),  # cleartext: 523
        ("other@hidden.example", "outgoing"),  # From mismatch: 500
        ("other@hidden.example", "incoming"),  # cleartext: 523
    ]:
        with pytest.raises(Reject) as exc:
            if direction == "outgoing":
                check_outgoing(mail_from, rcpts, data)
            else:
                check_incoming(mail_from, rcpts, data, _always_enforces)
        for secret in ["zebediah", "quux", "hidden", "Top secret", "treasure", "oak"]:
            assert secret not in exc.value.private
            assert secret not in str(exc.value)


# --- From header


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"From: alice@example.org", ALICE),
        (b'From: "Alice, the first" <alice@example.org>', ALICE),
        (b"From: Alice\r\n <alice@example.org>", ALICE),
        (b"From: alice@example.org (Alice)", ALICE),
        (b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.org>", ALICE),
        ("From: Ålice <ålice@example.org>".encode(), "ålice@example.org"),
        # domains are ASCII (A-labels): doc/encryption-gate.md §1.1
        ("From: Ålice <ålice@exämple.org>".encode(), "Invalid FROM header: malformed address"),
        # two readings: Python's parser takes the first address, a mail client the second
        (b"From: alice@example.org <ceo@bank.example>", "Invalid FROM header: malformed address"),
        (b"From: alice@x.example:bob@y.example;", "Invalid FROM header: malformed address"),
        (b"From: undisclosed: ;", "Invalid FROM header: malformed address"),
        (b"From: a@[ ", "Invalid FROM header: malformed address"),  # crashed CPython's parser
        (b"From: a@b.example (c (nested) d)", "Invalid FROM header: malformed address"),
        (b"From: System\x7f <a@b.example>", "Invalid FROM header: malformed address"),
        (b"From: a@b.example (Mail \x13ystem)", "Invalid FROM header: malformed address"),
        (b"From: " + b"," * 80000 + b"a@x.example", "Invalid FROM header: more than one address"),
        (b'From: "Smith, J. \\"Jo\\"" <j@x.example>', "j@x.example"),
        (b"From: J. R. Smith <j@x.example>", "j@x.example"),
        (b"From: <j@x.example>", "j@x.example"),
        (b"From: alice@[192.0.2.1]", "alice@[192.0.2.1]"),
        (b"From: ", "Invalid FROM header: no address"),
        (b"To: bob@example.org", "Invalid FROM header: missing"),
        (b"From: Alice", "Invalid FROM header: malformed address"),
        (b"From: alice@example.org, bob@example.org", "Invalid FROM header: more than one address"),
        (b"From: a@x\r\nFrom: b@y", "Invalid FROM header: more than one From header"),
        (b"From: a@b@c", "Invalid FROM header: malformed address"),
        (b"From: <@example.org>", "Invalid FROM header: malformed address"),
        (b"From: <alice@>", "Invalid FROM header: malformed address"),
        (b"From: <alice smith@example.org>", "Invalid FROM header: malformed address"),
        (b"From: Al\xe9 <alice@example.org>", "Invalid FROM header: not UTF-8"),
    ],
)
def test_from_address(header: bytes, expected: str) -> None:
    msg = parse_message(header + b"\r\nSubject: x\r\n\r\nbody\r\n")
    if expected.startswith("Invalid"):
        with pytest.raises(Reject) as exc:
            from_address(msg)
        assert exc.value.reply() == f"500 {expected}"
    else:
        assert from_address(msg) == expected


# --- enforceE2EEincoming


@pytest.mark.parametrize(
    ("rcpt", "expected"),
    [
        (BOB, True),  # has the file
        ("Bob@Example.ORG", True),  # delivered to the same mailbox
        ("bob+tag@example.org", True),
        (ALICE, False),  # an account from before 1.6.0: no file
        ("nobody@example.org", False),  # no such account: Dovecot refuses it later
        ("", True),
        ("bob", True),
        ("../bob@example.org", True),
        ("bob@example.org/..", True),
        ("..\\bob@example.org", True),
        ("bo\x00b@example.org", True),
        ("bob\r\n@example.org", True),
        ("a@b@example.org", True),
        ("+tag@example.org", True),
        ("bob@", True),
        ("x" * 300 + "@example.org", True),  # name too long: cannot tell, so fail closed
    ],
)
def test_mailbox_enforces_e2ee(tmp_path: Path, rcpt: str, expected: bool) -> None:
    (tmp_path / ALICE).mkdir()
    (tmp_path / BOB).mkdir()
    (tmp_path / BOB / ENFORCE_E2EE_FILE).touch()
    assert mailbox_enforces_e2ee(tmp_path, rcpt) is expected


def test_enforces_e2ee_asked_only_for_cleartext() -> None:
    asked: list[str] = []

    def enforces(rcpt: str) -> bool:
        asked.append(rcpt)
        return rcpt == "b@example.org"

    encrypted = (CORPUS / "enc-bob.eml").read_bytes()
    check_incoming(ALICE, ["a@example.org", "b@example.org"], encrypted, enforces)
    assert asked == []
    cleartext = (CORPUS / "cleartext.eml").read_bytes()
    rcpts = ["a@example.org", "b@example.org", "c@example.org"]
    with pytest.raises(Reject):
        check_incoming(ALICE, rcpts, cleartext, enforces)
    assert asked == ["a@example.org", "b@example.org"]


# --- robustness


def _mutations(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(len(buf) + 1)
        op = rng.randrange(5)
        if op == 0 and pos < len(buf):
            buf[pos] = rng.randrange(256)
        elif op == 1:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 2:
            buf[pos:pos] = rng.choice(
                [b"\r\n", b"\n", b"=", b"--", b"--XbOuNdArYx\r\n", b"\r\n\r\n", b"\x00", b"\xff"]
            )
        elif op == 3:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            del buf[pos:]
    return bytes(buf)


@pytest.mark.parametrize("name", ["enc-bob", "enc-large-partial", "securejoin-vc-request"])
def test_mutations_never_raise_but_reject(name: str) -> None:
    original = (CORPUS / f"{name}.eml").read_bytes()
    rng = random.Random(name)  # deterministic: a failure reproduces
    for _ in range(400):
        data = _mutations(original, rng)
        for outgoing in (True, False):
            try:
                if outgoing:
                    check_outgoing(ALICE, [BOB], data)
                else:
                    check_incoming(ALICE, [BOB], data, _always_enforces)
            except Reject as e:
                assert e.code in (500, 523)


def test_all_corpus_files_at_every_length_never_raise_but_reject() -> None:
    data = (CORPUS / "enc-bob.eml").read_bytes()
    for end in range(len(data) + 1):
        try:
            check_incoming(ALICE, [BOB], data[:end], _always_enforces)
        except Reject as e:
            assert e.code in (500, 523)


def test_deep_nesting_is_cleartext_not_a_crash() -> None:
    # each level with its own boundary: a recursive parser would nest and run out of stack
    levels = range(3000)
    head = b"From: alice@example.org\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"
    nested = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in levels
    )
    with pytest.raises(Reject) as exc:
        check_outgoing(ALICE, [BOB], head + nested)
    assert exc.value.code == 523


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"From: user@[192.0.2.1]", "user@[192.0.2.1]"),  # an IPv4 relay's address
        (b"From: Someone <user@[192.0.2.1]>", "user@[192.0.2.1]"),
        (b'From: "Doe, Jane" <jane@example.org>', "jane@example.org"),
        (b"From: jane@example.org (comment)", "jane@example.org"),
    ],
)
def test_from_address_forms(header: bytes, expected: str) -> None:
    from chatmaild.mailshape import from_address, parse_message

    assert (
        from_address(parse_message(header + b"\r\nTo: x@example.org\r\n\r\nbody\r\n")) == expected
    )


def _big_encrypted_message(payload_size: int) -> bytes:
    """A PGP/MIME message around `payload_size` random bytes framed as PKESK + SEIPD."""
    seipd = os.urandom(payload_size)
    packets = b"\xc1\x5e" + b"k" * 94 + b"\xd2\xff" + len(seipd).to_bytes(4, "big") + seipd
    text = base64.b64encode(packets)
    lines = b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    armor = b"-----BEGIN PGP MESSAGE-----\r\n\r\n" + lines + b"\r\n-----END PGP MESSAGE-----"
    return (
        b"From: alice@example.org\r\nTo: bob@example.org\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary=B\r\n'
        b"\r\n--B\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        b"\r\n--B\r\nContent-Type: application/octet-stream\r\n\r\n" + armor + b"\r\n\r\n--B--\r\n"
    )


def test_a_big_message_costs_little_more_than_its_decoded_size() -> None:
    """The gate reads the message in place: besides the decoded packets (3/4 of the armor)
    and a few windows of the armor, nothing as large as the message is allocated, at any
    MIME level (one more copy would make it 1.75)."""
    data = _big_encrypted_message(6_000_000)
    tracemalloc.start()
    try:
        check_outgoing(ALICE, [BOB], data)
        check_incoming(ALICE, [BOB], data, _always_enforces)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.0 * len(data), f"{peak / len(data):.2f} x the message size"


@pytest.mark.parametrize("window", [1, 2, 3, 7, 1 << 18])
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", True),
        (b"a\r\nb\r\n", True),
        (b"\r\n\r\n\r\n", True),
        (b"a\r\nb", True),
        (b"a\nb\r\n", False),
        (b"a\r\nb\r", False),
        (b"a\rb\r\n", False),
        (b"\r\r\n", False),
        (b"\r\n\n", False),
        (b"\n", False),
        (b"\r", False),
    ],
)
def test_crlf_only_at_any_window(data: bytes, expected: bool, window: int) -> None:
    """Windows end after an LF, so a CRLF is never split between two of them."""
    assert crlf_only(data, window) is expected


def test_a_huge_header_section_is_refused_without_reading_it() -> None:
    """7 million tiny fields once made the gate hold 80 times the message size."""
    data = b"From: alice@example.org\r\n" + b"a:\r\n" * 1_000_000 + b"\r\nbody\r\n"
    tracemalloc.start()
    try:
        with pytest.raises(Reject) as exc:
            check_outgoing(ALICE, [BOB], data)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.value.reply() == "500 Failed to parse message"
    assert peak < len(data), f"{peak / len(data):.2f} x the message size"


@pytest.mark.parametrize("subtype", ["mixed", "encrypted"])
def test_a_million_parts_are_not_read_one_by_one(subtype: str) -> None:
    head = (CORPUS / "securejoin-vc-request.eml").read_bytes().split(b"\r\n\r\n", 1)[0]
    head = head.replace(b"multipart/mixed", b"multipart/" + subtype.encode())
    data = head + b"\r\n\r\n" + b"--XbOuNdArYx\r\n\r\n" * 1_000_000 + b"--XbOuNdArYx--\r\n"
    tracemalloc.start()
    try:
        with pytest.raises(Reject) as exc:
            check_incoming(ALICE, [BOB], data, _always_enforces)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.value.code == 523
    assert peak < len(data), f"{peak / len(data):.2f} x the message size"


def test_a_long_blank_preamble_is_blank() -> None:
    """Blank lines are allowed before the first delimiter, in any number (and judged in one
    pass: a loop cutting them off one by one took minutes for a few megabytes)."""
    data = (CORPUS / "enc-bob.eml").read_bytes()
    head, _, body = data.partition(b"\r\n\r\n")
    check_outgoing(ALICE, [BOB], head + b"\r\n\r\n" + b"\r\n" * 2_000_000 + body)
