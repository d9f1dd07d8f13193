"""The encryption gate against the independent oracle (doc/encryption-gate.md 2.1-2.4).

Three tiers: the fuzzer's CI subset (the gate accepts nothing the oracle rejects); the oracle
against the corpus; and the oracle against one hand-written hostile message per rule of
sections 2.1-2.3 (and the exceptions of 2.4), each a small change of one valid message, so
that every rule of the document is pinned by a test of its own.
"""

from __future__ import annotations

import base64
import tomllib
from typing import Any

import pytest
from gate_fuzz import Tally, gate_verdict, report, run
from gate_fuzz_openpgp import crc24
from gate_fuzz_seeds import CORPUS, DIRECTIONS, all_seeds, generated_seeds
from gate_oracle import ONCE, well_formed

ALICE, BOB = "alice@example.org", "bob@example.org"
MANIFEST = tomllib.loads((CORPUS / "verdicts.toml").read_text(encoding="utf-8"))
DEFAULTS: dict[str, Any] = MANIFEST["defaults"]
CASES: list[dict[str, Any]] = MANIFEST["case"]

# --- tier 1: the fuzzer's CI subset

CI_MUTANTS, CI_SEED = 5000, 20260101


@pytest.fixture(scope="module")
def fuzzed() -> dict[str, Tally]:
    return run(CI_MUTANTS, CI_SEED, jobs=1)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gate_accepts_no_mutant_the_oracle_rejects(
    fuzzed: dict[str, Tally], direction: str
) -> None:
    tally = fuzzed[direction]
    assert tally.total == CI_MUTANTS
    found = report({direction: tally}, all_seeds(CI_SEED), examples=10, width=300)
    assert tally.gate_only == 0, found
    assert tally.gate_errors == 0, found


def test_fuzzing_is_deterministic() -> None:
    first, second = run(300, 7), run(300, 7)
    for d in DIRECTIONS:
        assert first[d].gate_only_examples == second[d].gate_only_examples
        assert (first[d].gate_accepted, first[d].oracle_accepted) == (
            second[d].gate_accepted,
            second[d].oracle_accepted,
        )


# --- tier 2: the oracle and the corpus, the generated seeds


def _corpus(verdict: str | int) -> list[Any]:
    """(name, direction) of the corpus cases with `verdict`, every recipient enforcing."""
    out = []
    for case in CASES:
        for direction in DIRECTIONS:
            if case.get(direction) == verdict and "enforcing" not in case:
                out.append(pytest.param(case, direction, id=f"{case['name']}-{direction}"))
    return out


def _envelope(case: dict[str, Any]) -> tuple[str, list[str]]:
    return case.get("mail_from", DEFAULTS["mail_from"]), case.get("rcpts", DEFAULTS["rcpts"])


@pytest.mark.parametrize(("case", "direction"), _corpus("accept"))
def test_oracle_accepts_what_the_corpus_accepts(case: dict[str, Any], direction: str) -> None:
    data = (CORPUS / case["file"]).read_bytes()
    assert well_formed(data, direction, *_envelope(case))


@pytest.mark.parametrize(("case", "direction"), _corpus(523))
def test_oracle_rejects_what_the_corpus_finds_unencrypted(
    case: dict[str, Any], direction: str
) -> None:
    data = (CORPUS / case["file"]).read_bytes()
    assert not well_formed(data, direction, *_envelope(case))


@pytest.mark.parametrize("seed", range(3))
def test_generated_seeds_are_well_formed(seed: int) -> None:
    """The generator writes only documented shapes: the oracle accepts them."""
    for s in generated_seeds(seed):
        if s.name.startswith("gen-setup-message"):
            directions: tuple[str, ...] = ("outgoing",)
        elif s.name.startswith("gen-report"):
            directions = ("incoming",)
        elif b"-----\r\nVersion: " in s.data:
            directions = ("incoming",)
        else:
            directions = DIRECTIONS
        for direction in DIRECTIONS:
            got = well_formed(s.data, direction, s.mail_from, list(s.rcpts))
            assert got == (direction in directions), (s.name, direction)


def test_seeds_are_accepted_by_the_gate() -> None:
    for s in all_seeds(0):
        verdicts = [gate_verdict(d, s.data, s.mail_from, list(s.rcpts)) for d in DIRECTIONS]
        assert "accept" in verdicts, s.name


# --- tier 3: one hostile message per rule; first the valid messages they are made from

CRLF = b"\r\n"
PKESK = bytes([0x84, 4]) + b"\x03key"  # old format, 1-octet length
SKESK = bytes([0xC3, 3]) + b"\x04pw"  # new format, 1-octet length
SEIPD = bytes([0xC0 | 18, 5]) + b"\x01data"


def armor(stream: bytes, headers: bytes = b"") -> bytes:
    text = base64.b64encode(stream)
    lines = [text[i : i + 8] for i in range(0, len(text), 8)]  # several base64 lines
    crc = b"=" + base64.b64encode(crc24(stream))
    return (
        b"-----BEGIN PGP MESSAGE-----\r\n" + headers + CRLF + CRLF.join(lines) + CRLF + crc + CRLF
    ) + b"-----END PGP MESSAGE-----"


STREAM = PKESK + SEIPD
HEAD = (
    b"From: alice@example.org\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: [...]\r\n"
    b"MIME-Version: 1.0\r\n"
)
ENCRYPTED = (
    HEAD + b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
    b' boundary="B0"\r\n'
    b"\r\n"
    b"--B0\r\n"
    b"Content-Type: application/pgp-encrypted\r\n"
    b"Content-Description: PGP/MIME version identification\r\n"
    b"\r\n"
    b"Version: 1\r\n"
    b"\r\n"
    b"--B0\r\n"
    b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
    b"\r\n" + armor(STREAM) + b"\r\n"
    b"\r\n"
    b"--B0--\r\n"
)
SECURE_JOIN = (
    HEAD + b"Secure-Join: vc-request\r\n"
    b'Content-Type: multipart/mixed; boundary="B0"\r\n'
    b"\r\n"
    b"--B0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Secure-Join: vc-request\r\n"
    b"\r\n"
    b"--B0--\r\n"
)
SETUP = (
    HEAD.replace(b"Subject: [...]", b"Subject: Autocrypt Setup Message")
    + b'Content-Type: multipart/mixed; boundary="B0"\r\n\r\n--B0\r\n\r\nx\r\n--B0--\r\n'
)
REPORT = (
    HEAD.replace(b"alice@example.org", b"MAILER-DAEMON@peer.example (Mail Delivery System)")
    + b"Auto-Submitted: auto-replied\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="B0"\r\n'
    b"\r\n--B0\r\nContent-Type: text/plain\r\n\r\nbounced\r\n"
    b"--B0\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; peer.example\r\n"
    b"--B0--\r\n"
)
ARMOR_START = b"-----BEGIN PGP MESSAGE-----\r\n\r\n"
ARMOR_TEXT = armor(STREAM)
BASE64_LINES = ARMOR_TEXT.split(CRLF)[2:-2]


def changed(old: bytes, new: bytes, base: bytes = ENCRYPTED) -> bytes:
    """`base` with the first `old` replaced: `old` must be there, or the test tests nothing."""
    assert old in base, old
    return base.replace(old, new, 1)


def accepted(data: bytes, direction: str = "outgoing", rcpts: list[str] | None = None) -> bool:
    return well_formed(data, direction, ALICE, [BOB] if rcpts is None else rcpts)


@pytest.mark.parametrize(
    ("base", "directions"),
    [
        (ENCRYPTED, DIRECTIONS),
        (SECURE_JOIN, DIRECTIONS),
        (REPORT, ("incoming",)),
    ],
    ids=["encrypted", "secure-join", "report"],
)
def test_the_valid_messages_are_accepted_and_by_the_gate_too(
    base: bytes, directions: tuple[str, ...]
) -> None:
    for direction in DIRECTIONS:
        assert accepted(base, direction) == (direction in directions)
        assert gate_verdict(direction, base, ALICE, [BOB]) == (
            "accept" if direction in directions else "reject"
        )


def test_the_setup_message_is_accepted_outgoing_to_oneself() -> None:
    assert accepted(SETUP, "outgoing", [ALICE])
    assert accepted(SETUP, "outgoing", ["Alice@Example.ORG"])  # 1.2: local, lowercased
    assert gate_verdict("outgoing", SETUP, ALICE, [ALICE]) == "accept"


def without_crc(data: bytes) -> bytes:
    return CRLF.join(x for x in data.split(CRLF) if not (x.startswith(b"=") and len(x) == 5))


def in_armor(old: bytes, new: bytes) -> bytes:
    """ENCRYPTED with `old` replaced by `new` in the armor only."""
    return changed(ARMOR_TEXT, ARMOR_TEXT.replace(old, new, 1))


def armor_headers(*lines: bytes) -> bytes:
    return in_armor(ARMOR_START, ARMOR_START[:-2] + b"".join(x + CRLF for x in lines) + CRLF)


TB = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"
FIRST, CRC_LINE = BASE64_LINES[0], ARMOR_TEXT.split(CRLF)[-2]
END_LINE = b"-----END PGP MESSAGE-----\r\n"
VERSION_1 = b"\r\n\r\nVersion: 1\r\n"  # the control body, not MIME-Version: 1.0
CONTROL_TYPE = b"Content-Type: application/pgp-encrypted\r\n"
DESCRIPTION = b"Content-Description: PGP/MIME version identification\r\n"
CONTROL_PART = b"--B0\r\n" + CONTROL_TYPE + DESCRIPTION + b"\r\nVersion: 1\r\n\r\n"

# What the document allows, each a small change of ENCRYPTED (accepted in both directions).
ALLOWED = {
    "2.1 folded field": changed(b"Subject: [...]", b"Subject:\r\n [...]"),
    "2.1 folded Content-Type": changed(b'; boundary="B0"', b';\r\n\tboundary="B0"'),
    "2.1 field name in any case": changed(b"Content-Type: multipart", b"CONTENT-TYPE: multipart"),
    "2.1 type in any case": changed(b"multipart/encrypted", b"Multipart/ENCRYPTED"),
    "2.1 attribute in any case": changed(b"boundary=", b"BOUNDARY="),
    "2.1 token value": changed(b'boundary="B0"', b"boundary=B0"),
    "2.1 fields allowed twice": changed(b"To:", b"Received: x\r\nReceived: y\r\nTo:"),
    "2.1 no space after the colon": changed(b"Subject: [...]", b"Subject:[...]"),
    "2.1 8-bit field value": changed(b"Subject: [...]", b"Subject: \xc3\xa9"),
    "2.2 no protocol": changed(b' protocol="application/pgp-encrypted";', b""),
    "2.2 other parameters": changed(b'boundary="B0"', b'boundary="B0"; charset=utf-8'),
    "2.2 top 7bit": changed(b"MIME-", b"Content-Transfer-Encoding: 7bit\r\nMIME-"),
    "2.2 top 8bit": changed(b"MIME-", b"Content-Transfer-Encoding: 8bit\r\nMIME-"),
    "2.2 preamble of blank lines": changed(b"\r\n\r\n--B0\r\n", b"\r\n\r\n\r\n\r\n--B0\r\n"),
    "2.2 preamble of Thunderbird": changed(b"\r\n\r\n--B0\r\n", b"\r\n\r\n" + TB + b"--B0\r\n"),
    "2.2 epilogue of CRLFs": changed(b"--B0--\r\n", b"--B0--\r\n\r\n\r\n"),
    "2.2 no CRLF after the close delimiter": changed(b"--B0--\r\n", b"--B0--"),
    "2.2 boundary of 70": ENCRYPTED.replace(b"B0", b"B" * 70),
    "2.2 boundary with a space and specials": ENCRYPTED.replace(b"B0", b"B 0'()+_,-./:=?"),
    "2.2 part 7bit": changed(
        b"\r\n\r\nVersion", b"\r\nContent-Transfer-Encoding: 7bit\r\n\r\nVersion"
    ),
    "2.2 part disposition": changed(
        b"\r\n\r\nVersion", b"\r\nContent-Disposition: inline\r\n\r\nVersion"
    ),
    "2.2 part fields in any order": changed(CONTROL_TYPE + DESCRIPTION, DESCRIPTION + CONTROL_TYPE),
    "2.2 control body padded": changed(b"\r\nVersion: 1\r\n", b"\r\n \t\r\n Version: 1\t\r\n\r\n"),
    "2.2 CRLFs after the armor": changed(END_LINE, END_LINE + b"\r\n\r\n"),
    "2.2 nothing after the armor": changed(
        b"MESSAGE-----\r\n\r\n--B0--", b"MESSAGE-----\r\n--B0--"
    ),
    "2.3 no CRC line": without_crc(ENCRYPTED),
    "2.3 wrong CRC": in_armor(CRC_LINE, b"=AAAA"),
    "2.3 one long base64 line": in_armor(CRLF.join(BASE64_LINES), b"".join(BASE64_LINES)),
}


@pytest.mark.parametrize("key", ALLOWED)
def test_allowed_variant(key: str) -> None:
    assert ALLOWED[key] != ENCRYPTED
    for direction in DIRECTIONS:
        assert accepted(ALLOWED[key], direction), direction


# One hostile change per rule of 2.1-2.3, refused in both directions.
REFUSED = {
    # 2.1 the header section
    "2.1 bare CR in a field": changed(b"Subject: [...]", b"Subject: [.\r..]"),
    "2.1 bare LF in a field": changed(b"Subject: [...]", b"Subject: [.\n..]"),
    "2.1 bare LF ending a field": changed(b"Subject: [...]\r\n", b"Subject: [...]\n"),
    "2.1 NUL in a field": changed(b"Subject: [...]", b"Subject: [.\x00..]"),
    "2.1 line without a colon": changed(b"To:", b"X-Note here\r\nTo:"),
    "2.1 obsolete Name : value": changed(b"Subject: [...]", b"Subject : [...]"),
    "2.1 tab before the colon": changed(b"Subject: [...]", b"Subject\t: [...]"),
    "2.1 continuation before the first field": changed(b"From:", b" x\r\nFrom:"),
    "2.1 8-bit field name": changed(b"Subject:", b"Subj\xc3\xa9ct:"),
    "2.1 no empty line after the header": ENCRYPTED.replace(b"\r\n\r\n", CRLF, 1),
    "2.1 comment in Content-Type": changed(b"encrypted;", b"encrypted (pgp);"),
    "2.1 comment in a parameter": changed(b'boundary="B0"', b'boundary=(c)"B0"'),
    "2.1 RFC 2231 name*=": changed(b'boundary="B0"', b"boundary=\"B0\"; x*=us-ascii''y"),
    "2.1 RFC 2231 name*0=": changed(b'boundary="B0"', b'boundary="B0"; x*0="y"'),
    "2.1 RFC 2231 boundary": changed(b'boundary="B0"', b'boundary*0="B0"'),
    "2.1 backslash in a quoted string": changed(b'boundary="B0"', b'boundary="B0"; x="a\\b"'),
    "2.1 parameter named twice": changed(b'boundary="B0"', b'boundary="B0"; boundary="B0"'),
    "2.1 parameter named twice, other case": changed(
        b'boundary="B0"', b'boundary="B0"; BOUNDARY=B0'
    ),
    "2.1 unterminated quoted string": changed(b'boundary="B0"', b'boundary="B0"; x="y'),
    "2.1 value with a space": changed(b'boundary="B0"', b'boundary="B0"; x=a b'),
    "2.1 space around =": changed(b'boundary="B0"', b'boundary = "B0"'),
    "2.1 parameter without a value": changed(b'boundary="B0"', b'boundary="B0"; x'),
    "2.1 type without a subtype": changed(b"multipart/encrypted", b"multipart"),
    "2.1 part parameter named twice": changed(b'name="encrypted.asc"', b'name="a"; name="b"'),
    "2.1 part field, obsolete colon": changed(
        b"Content-Description: PGP", b"Content-Description : PGP"
    ),
    "2.1 Content-Disposition unreadable": changed(
        b"To:", b"Content-Disposition: a; b=1; b=2\r\nTo:"
    ),
    "2.1 Content-Transfer-Encoding unreadable": changed(
        b"To:", b"Content-Transfer-Encoding: 7bit (c)\r\nTo:"
    ),
    # 2.2 the PGP/MIME shape
    "2.2 multipart/mixed": changed(b"multipart/encrypted", b"multipart/mixed"),
    "2.2 multipart/signed": changed(b"multipart/encrypted", b"multipart/signed"),
    "2.2 other protocol": changed(b'"application/pgp-encrypted"', b'"application/pgp-signature"'),
    "2.2 no boundary": changed(b'; boundary="B0"', b""),
    "2.2 top base64": changed(b"MIME-", b"Content-Transfer-Encoding: base64\r\nMIME-"),
    "2.2 top binary": changed(b"MIME-", b"Content-Transfer-Encoding: binary\r\nMIME-"),
    "2.2 top quoted-printable": changed(
        b"MIME-", b"Content-Transfer-Encoding: quoted-printable\r\nMIME-"
    ),
    "2.2 preamble text": changed(b"\r\n\r\n--B0\r\n", b"\r\n\r\nThis is MIME.\r\n--B0\r\n"),
    "2.2 preamble, Thunderbird's line and more": changed(
        b"\r\n\r\n--B0\r\n", b"\r\n\r\n" + TB + b"x\r\n--B0\r\n"
    ),
    "2.2 preamble of a space": changed(b"\r\n\r\n--B0\r\n", b"\r\n\r\n \r\n--B0\r\n"),
    "2.2 epilogue text": changed(b"--B0--\r\n", b"--B0--\r\nx\r\n"),
    "2.2 text on the close delimiter line": changed(b"--B0--\r\n", b"--B0-- x\r\n"),
    "2.2 epilogue of a space": changed(b"--B0--\r\n", b"--B0--\r\n \r\n"),
    "2.2 boundary of 71": ENCRYPTED.replace(b"B0", b"B" * 71),
    "2.2 boundary ending in a space": ENCRYPTED.replace(b"B0", b"B0 "),
    "2.2 boundary not of bchars": ENCRYPTED.replace(b"B0", b"B0!"),
    "2.2 empty boundary": ENCRYPTED.replace(b"B0", b""),
    "2.2 transport padding": changed(
        b"\r\n--B0\r\nContent-Type: application/oct", b"\r\n--B0 \r\nContent-Type: application/oct"
    ),
    "2.2 tab after a delimiter": changed(
        b"--B0\r\nContent-Type: application/pgp", b"--B0\t\r\nContent-Type: application/pgp"
    ),
    "2.2 a line starting with --B in the control part": changed(
        b"Version: 1\r\n", b"Version: 1\r\n--B0x\r\n"
    ),
    "2.2 a delimiter after a bare LF": changed(VERSION_1, VERSION_1[:-2] + b"\n--B0\r\n"),
    "2.2 missing close delimiter": changed(b"--B0--\r\n", b""),
    "2.2 close delimiter first": changed(
        b"--B0\r\nContent-Type: application/oct", b"--B0--\r\nContent-Type: application/oct"
    ),
    "2.2 part with Content-ID": changed(
        b"Content-Description: PGP", b"Content-ID: <a@b>\r\nContent-Description: PGP"
    ),
    "2.2 part with MIME-Version": changed(
        b"Content-Description: PGP", b"MIME-Version: 1.0\r\nContent-Description: PGP"
    ),
    "2.2 part field twice": changed(
        b"Content-Description: PGP", b"Content-Description: x\r\nContent-Description: PGP"
    ),
    "2.2 part without fields": changed(CONTROL_PART, b"--B0\r\n\r\nVersion: 1\r\n\r\n"),
    "2.2 part 8bit": changed(
        b"\r\n\r\nVersion", b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nVersion"
    ),
    "2.2 part base64": changed(
        b"\r\n\r\nVersion", b"\r\nContent-Transfer-Encoding: base64\r\n\r\nVersion"
    ),
    "2.2 control part text/plain": changed(b"Type: application/pgp-encrypted", b"Type: text/plain"),
    "2.2 control body Version: 2": changed(VERSION_1, b"\r\n\r\nVersion: 2\r\n"),
    "2.2 control body in lowercase": changed(VERSION_1, b"\r\n\r\nversion: 1\r\n"),
    "2.2 control body without the space": changed(VERSION_1, b"\r\n\r\nVersion:1\r\n"),
    "2.2 control body with another line": changed(VERSION_1, VERSION_1 + b"x\r\n"),
    "2.2 control body with a bare LF": changed(b"\r\nVersion: 1\r\n", b"\r\n\nVersion: 1\r\n"),
    "2.2 control body empty": changed(VERSION_1, b"\r\n\r\n"),
    "2.2 data part application/pgp-encrypted": changed(
        b"application/octet-stream", b"application/pgp-encrypted"
    ),
    "2.2 data part text/plain": changed(b"application/octet-stream", b"text/plain"),
    "2.2 text before the armor": changed(b"\r\n\r\n-----BEGIN", b"\r\n\r\nx\r\n-----BEGIN"),
    "2.2 blank line before the armor": changed(b"\r\n\r\n-----BEGIN", b"\r\n\r\n\r\n-----BEGIN"),
    "2.2 text after the armor": changed(END_LINE, END_LINE + b"x\r\n"),
    "2.2 a space after the armor": changed(END_LINE, END_LINE + b" \r\n"),
    "2.2 one part only": changed(CONTROL_PART, b""),
    "2.2 a third part": changed(b"--B0--", b"--B0\r\nContent-Type: text/plain\r\n\r\nx\r\n--B0--"),
    "2.2 parts swapped": changed(CONTROL_PART, b"").replace(b"--B0--", CONTROL_PART + b"--B0--"),
    # 2.3 the armor
    "2.3 Comment header": armor_headers(b"Comment: x"),
    "2.3 Charset header": armor_headers(b"Charset: utf-8"),
    "2.3 two Version headers": armor_headers(b"Version: a", b"Version: b"),
    "2.3 Version after Comment": armor_headers(b"Comment: x", b"Version: a"),
    "2.3 Version:x": armor_headers(b"Version:x"),
    "2.3 Version without the blank line": in_armor(
        ARMOR_START, ARMOR_START[:-2] + b"Version: a\r\n"
    ),
    "2.3 no blank line": in_armor(ARMOR_START, ARMOR_START[:-2]),
    "2.3 two blank lines": in_armor(ARMOR_START, ARMOR_START + CRLF),
    "2.3 blank line with a space": in_armor(ARMOR_START, ARMOR_START[:-2] + b" \r\n"),
    "2.3 BEGIN with a trailing space": in_armor(b"MESSAGE-----\r\n\r\n", b"MESSAGE----- \r\n\r\n"),
    "2.3 END with a trailing space": in_armor(b"END PGP MESSAGE-----", b"END PGP MESSAGE----- "),
    "2.3 text on the END line": in_armor(b"END PGP MESSAGE-----", b"END PGP MESSAGE-----x"),
    "2.3 BEGIN in lowercase": in_armor(b"BEGIN PGP MESSAGE", b"begin pgp message"),
    "2.3 BEGIN PGP SIGNATURE": in_armor(b"BEGIN PGP MESSAGE", b"BEGIN PGP SIGNATURE"),
    "2.3 END PGP SIGNATURE": in_armor(b"END PGP MESSAGE", b"END PGP SIGNATURE"),
    "2.3 a character outside base64": in_armor(FIRST, FIRST[:-1] + b"*"),
    "2.3 a space in base64": in_armor(FIRST, FIRST[:4] + b" " + FIRST[4:]),
    "2.3 a base64 character missing": in_armor(FIRST, FIRST[:-1]),
    "2.3 padding in the middle": in_armor(FIRST, FIRST[:-1] + b"="),
    "2.3 padding ending an inner line": in_armor(FIRST + CRLF, FIRST + b"==" + CRLF),
    "2.3 blank line among base64": in_armor(FIRST + CRLF, FIRST + CRLF + CRLF),
    "2.3 CRC line of 3 characters": in_armor(b"\r\n=", b"\r\n=AAA\r\n="),
    "2.3 two CRC lines": in_armor(b"\r\n=", b"\r\n=AAAA\r\n="),
    "2.3 text after the CRC line": in_armor(b"\r\n-----END", b"\r\nx\r\n-----END"),
    "2.3 base64 after the CRC line": in_armor(b"\r\n-----END", b"\r\nAAAA\r\n-----END"),
    "2.3 a second armor block": changed(ARMOR_TEXT, ARMOR_TEXT + CRLF + ARMOR_TEXT),
    "2.3 no base64 at all": in_armor(CRLF.join(BASE64_LINES) + CRLF, b""),
    "2.3 armor with LF line ends": changed(ARMOR_TEXT, ARMOR_TEXT.replace(CRLF, b"\n")),
}


@pytest.mark.parametrize("key", REFUSED)
def test_refused(key: str) -> None:
    assert REFUSED[key] != ENCRYPTED
    for direction in DIRECTIONS:
        assert not accepted(REFUSED[key], direction), direction


@pytest.mark.parametrize("name", sorted(ONCE))
def test_a_second_instance_is_ambiguous(name: bytes) -> None:
    """2.1: fields allowed once; one instance is fine, two (in any case) are not."""
    values = {
        b"content-type": b' multipart/encrypted; boundary="B0"',
        b"content-transfer-encoding": b" 7bit",
        b"content-disposition": b" inline",
        b"secure-join": b" vc-auth",
    }
    value = values.get(name, b" <a@example.org>") + CRLF
    top = ENCRYPTED.split(b"\r\n\r\n")[0].lower()
    once = ENCRYPTED if name + b":" in top else name + b":" + value + ENCRYPTED
    assert accepted(once), name
    assert not accepted(name + b":" + value + once)
    assert not accepted(name.upper() + b":" + value + once)


# The armor header and the direction (2.3): one Version line incoming only.
VERSION = changed(ARMOR_START, ARMOR_START.replace(b"\r\n\r\n", b"\r\nVersion: GnuPG v2\r\n\r\n"))


def test_version_header_incoming_only() -> None:
    assert accepted(VERSION, "incoming")
    assert not accepted(VERSION, "outgoing")


def with_stream(stream: bytes) -> bytes:
    return changed(ARMOR_TEXT, armor(stream))


def new_packet(tag: int, body: bytes) -> bytes:
    return bytes([0xC0 | tag, len(body)]) + body


# The packet stream (2.3): zero or more PKESK/SKESK, then one SEIPD that ends the data.
STREAMS_ALLOWED = {
    "SEIPD only": SEIPD,
    "SKESK": SKESK + SEIPD,
    "PKESK, SKESK, PKESK": PKESK + SKESK + PKESK + SEIPD,
    "old format, 2-octet length": bytes([0x85, 0, 4]) + b"\x03key" + SEIPD,
    "old format, 4-octet length": bytes([0x86, 0, 0, 0, 4]) + b"\x03key" + SEIPD,
    "new format, 2-octet length": bytes([0xC1, 192, 8]) + bytes(200) + SEIPD,
    "new format, 5-octet length": bytes([0xC1, 255, 0, 0, 0, 4]) + b"\x03key" + SEIPD,
    "SEIPD in partial chunks": PKESK + bytes([0xC0 | 18, 0xE1]) + b"ab" + bytes([0xE0]) + b"c"
    + bytes([2]) + b"de",
    "SEIPD ending in an empty chunk": bytes([0xC0 | 18, 0xE1]) + b"ab" + bytes([0]),
    "empty SEIPD": bytes([0xC0 | 18, 0]),
}  # fmt: skip
STREAMS_REFUSED = {
    "no SEIPD": PKESK,
    "SEIPD, then PKESK": SEIPD + PKESK,
    "two SEIPD": PKESK + SEIPD + SEIPD,
    "SED (tag 9)": PKESK + new_packet(9, b"data"),
    "AEAD (tag 20)": PKESK + new_packet(20, b"data"),
    "literal data before SEIPD": new_packet(11, b"b\x00\x00\x00\x00\x00x") + SEIPD,
    "marker first": new_packet(10, b"PGP") + SEIPD,
    "compressed before SEIPD": new_packet(8, b"\x00x") + SEIPD,
    "signature before SEIPD": new_packet(2, b"sig") + SEIPD,
    "reserved tag 0": new_packet(0, b"x") + SEIPD,
    "a byte after SEIPD": STREAM + b"\x00",
    "a marker after SEIPD": STREAM + new_packet(10, b"PGP"),
    "SEIPD one octet short": STREAM[:-1],
    "length one short": PKESK + bytes([0xC0 | 18, 4]) + b"\x01data",
    "inside a 5-octet length": PKESK + bytes([0xC0 | 18, 255, 0, 0]),
    "inside a 2-octet length": PKESK + bytes([0xC0 | 18, 192]),
    "inside an old-format length": bytes([0x85, 0]),
    "old format, indeterminate length": bytes([0x87]) + b"\x03key" + SEIPD,
    "no packet tag bit": bytes([0x44, 4]) + b"\x03key" + SEIPD,
    "partial chunks to the end": PKESK + bytes([0xC0 | 18, 0xE1]) + b"ab",
    "data ends in a partial chunk": PKESK + bytes([0xC0 | 18, 0xE2]) + b"ab",
    "a length beyond the data": PKESK + bytes([0xC0 | 18, 255, 255, 255, 255, 255]) + b"x",
    # STRICT reading: RFC 4880 §4.2.2.4 allows partial lengths on data packets only.
    "PKESK in partial chunks": bytes([0xC1, 0xE1]) + b"\x03k" + bytes([2]) + b"ey" + SEIPD,
}


@pytest.mark.parametrize("key", STREAMS_ALLOWED)
def test_packet_stream_allowed(key: str) -> None:
    data = with_stream(STREAMS_ALLOWED[key])
    assert accepted(data, "outgoing") and accepted(data, "incoming")


@pytest.mark.parametrize("key", STREAMS_REFUSED)
def test_packet_stream_refused(key: str) -> None:
    data = with_stream(STREAMS_REFUSED[key])
    assert not accepted(data, "outgoing") and not accepted(data, "incoming")


def test_canonical_base64_only() -> None:
    """2.3: strict decoding; stray bits in the last character are refused."""
    assert len(STREAM) % 3 == 1  # base64 ends in "=="
    good = ENCRYPTED
    last = next(x for x in good.split(CRLF) if x.endswith(b"=="))
    stray = last[:-3] + (b"B" if last[-3:-2] != b"B" else b"C") + b"=="
    assert accepted(good) and not accepted(changed(last, stray, good))
    # Trailing base64 that the stream does not need is refused too (a packet after SEIPD).
    assert not accepted(changed(last, last[:-2] + b"AA", good))


# --- the exceptions of 2.4


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Subject: [...]", b"Subject: a\r\nSubject: b"),  # ambiguous: no exception
        (b"Secure-Join: vc-request", b"Secure-Join: VC-REQUEST"),
        (b"Secure-Join: vc-request", b"Secure-Join: vc-auth"),
        (b"Secure-Join: vc-request\r\n", b""),
        (b"multipart/mixed", b"multipart/alternative"),
        (b"text/plain; charset=utf-8", b"text/html"),
        (b"text/plain; charset=utf-8", b"text/plain; name=x; name=y"),
        (b"charset=utf-8\r\n", b"charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"),
        (b"charset=utf-8\r\n", b"charset=utf-8\r\nContent-ID: <a@b>\r\n"),
        (b"\r\nSecure-Join: vc-request\r\n\r\n--B0--", b"\r\nsecure-join: vc-auth\r\n\r\n--B0--"),
        (b"\r\nSecure-Join: vc-request\r\n\r\n--B0--", b"\r\nSecure-Join: vc-request x\r\n--B0--"),
        (b"\r\n\r\n--B0\r\n", b"\r\n\r\nx\r\n--B0\r\n"),  # preamble
        (b"--B0--\r\n", b"--B0--\r\nx\r\n"),  # epilogue
        (b"--B0--", b"--B0\r\nContent-Type: text/plain\r\n\r\nx\r\n--B0--"),  # two parts
        (b"--B0--\r\n", b""),
    ],
)
def test_secure_join_refused(old: bytes, new: bytes) -> None:
    data = changed(old, new, SECURE_JOIN)
    assert not accepted(data, "outgoing") and not accepted(data, "incoming")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Secure-Join: vc-request\r\n\r\n--", b"  SECURE-JOIN: VG-Request \t\r\n\r\n\r\n--"),
        (b"charset=utf-8", b"charset=utf-8; format=flowed"),
        (b"charset=utf-8", b"charset=utf-8; name=x"),  # any parameter, each once (2.4)
        (b"charset=utf-8\r\n", b"charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"),
        (b"Secure-Join: vc-request\r\nContent-Type", b"Secure-Join: vg-request\r\nContent-Type"),
    ],
)
def test_secure_join_allowed(old: bytes, new: bytes) -> None:
    data = changed(old, new, SECURE_JOIN)
    assert accepted(data, "outgoing") and accepted(data, "incoming")


def test_setup_message_refused() -> None:
    assert not accepted(SETUP, "incoming", [ALICE])
    assert not accepted(SETUP, "outgoing", [BOB])
    assert not accepted(SETUP, "outgoing", [ALICE, BOB])
    assert not accepted(changed(b"Setup Message", b"setup message", SETUP), "outgoing", [ALICE])
    assert not accepted(changed(b"multipart/mixed", b"text/plain", SETUP), "outgoing", [ALICE])
    assert not accepted(changed(b"Subject", b"To: x\r\nSubject", SETUP), "outgoing", [ALICE])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Auto-Submitted: auto-replied", b"Auto-Submitted: "),
        (b"Auto-Submitted: auto-replied\r\n", b""),
        (b"MAILER-DAEMON@", b"postmaster@"),
        (b"MAILER-DAEMON@", b"mailer-daemon-x@"),
        (b"MAILER-DAEMON@peer.example (Mail Delivery System)", b"a@b, MAILER-DAEMON@peer"),
        (b"multipart/report", b"text/plain"),
        (b"Subject", b"Auto-Submitted: no\r\nSubject"),  # ambiguous
    ],
)
def test_delivery_report_refused(old: bytes, new: bytes) -> None:
    data = changed(old, new, REPORT)
    assert not accepted(data, "incoming")
