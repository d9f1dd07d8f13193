"""Armor and packet walk (doc/encryption-gate.md §2.3), on hand-built byte strings."""

from __future__ import annotations

import base64
import itertools
import random

import pytest

from chatmaild import openpgp
from chatmaild.openpgp import decode_armor, is_armored_encrypted_message, is_encrypted_packet_stream

CRLF = b"\r\n"
BEGIN = b"-----BEGIN PGP MESSAGE-----"
END = b"-----END PGP MESSAGE-----"


def new(tag: int, body: bytes) -> bytes:
    """A new-format packet with the shortest definite length."""
    n = len(body)
    if n < 192:
        length = bytes([n])
    elif n < 8384:
        length = bytes([((n - 192) >> 8) + 192, (n - 192) & 0xFF])
    else:
        length = b"\xff" + n.to_bytes(4, "big")
    return bytes([0xC0 | tag]) + length + body


def new5(tag: int, body: bytes) -> bytes:
    return bytes([0xC0 | tag, 0xFF]) + len(body).to_bytes(4, "big") + body


def old(tag: int, body: bytes, length_type: int) -> bytes:
    ctb = bytes([0x80 | tag << 2 | length_type])
    if length_type == 3:
        return ctb + body
    return ctb + len(body).to_bytes(1 << length_type, "big") + body


PKESK = old(1, b"\x03" + b"k" * 93, 0)  # what GnuPG writes for an X25519 recipient
SKESK = old(3, b"\x04\x09\x03\x08" + b"s" * 9, 0)
SEIPD = new(18, b"\x01" + b"e" * 60)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(PKESK + SEIPD, True, id="pkesk-seipd"),
        pytest.param(PKESK + PKESK + SEIPD, True, id="two-pkesk"),
        pytest.param(SKESK + SEIPD, True, id="skesk-seipd"),
        pytest.param(PKESK + SKESK + SEIPD, True, id="pkesk-skesk"),
        pytest.param(SEIPD, True, id="seipd-only"),
        pytest.param(new(1, b"k" * 94) + SEIPD, True, id="new-format-pkesk"),
        pytest.param(old(1, b"k" * 300, 1) + SEIPD, True, id="old-2-octet"),
        pytest.param(old(1, b"k" * 94, 2) + SEIPD, True, id="old-4-octet"),
        pytest.param(PKESK + new(18, b"e" * 192), True, id="2-octet-192"),
        pytest.param(PKESK + new(18, b"e" * 8383), True, id="2-octet-8383"),
        pytest.param(PKESK + new(18, b"e" * 8384), True, id="5-octet-8384"),
        pytest.param(new5(1, b"k" * 94) + new5(18, b"e" * 5), True, id="5-octet-small"),
        pytest.param(PKESK + new(18, b""), True, id="empty-seipd"),
        # partial lengths: 0xE1 = 2 octets, 0xE0 = 1 octet, closed by a definite length
        pytest.param(PKESK + b"\xd2\xe1ab\x03cde", True, id="partial-one-chunk"),
        pytest.param(PKESK + b"\xd2\xe1ab\xe0c\xe2dddd\x00", True, id="partial-chain-zero-end"),
        pytest.param(
            PKESK + b"\xd2\xe9" + b"e" * 512 + b"\xc0\x00" + b"f" * 192, True, id="partial-2-octet"
        ),
        pytest.param(b"", False, id="empty"),
        pytest.param(PKESK, False, id="pkesk-only"),
        pytest.param(SEIPD + PKESK, False, id="seipd-first"),
        pytest.param(PKESK + SEIPD + SEIPD, False, id="two-seipd"),
        pytest.param(PKESK + SEIPD + b"\x00", False, id="trailing-octet"),
        pytest.param(PKESK + new(20, b"a" * 40), False, id="aead-tag20"),
        pytest.param(PKESK + new(9, b"a" * 40), False, id="sed-tag9"),
        pytest.param(PKESK + new(11, b"b\x00text") + SEIPD, False, id="literal-before"),
        pytest.param(new(10, b"PGP") + PKESK + SEIPD, False, id="marker-first"),
        pytest.param(new(0, b"") + SEIPD, False, id="reserved-tag0"),
        pytest.param(old(8, b"compressed", 3), False, id="old-indeterminate-last"),
        pytest.param(old(1, b"k" * 94 + SEIPD, 3), False, id="old-indeterminate-pkesk"),
        pytest.param(b"\x41" + PKESK[1:] + SEIPD, False, id="bit7-clear"),
        pytest.param(PKESK + b"\xd2", False, id="no-length-octet"),
        pytest.param(PKESK + b"\xd2\xc0", False, id="truncated-2-octet"),
        pytest.param(PKESK + b"\xd2\xff\x00\x00", False, id="truncated-5-octet"),
        pytest.param(PKESK + b"\xd2\xff\xff\xff\xff\xff", False, id="5-octet-4GiB"),
        pytest.param(b"\x85\x01", False, id="truncated-old-2-octet"),
        pytest.param(b"\x86\x00\x00", False, id="truncated-old-4-octet"),
        pytest.param(PKESK + b"\xd2\x05abc", False, id="body-overrun"),
        pytest.param(PKESK + SEIPD[:-1], False, id="body-one-short"),
        pytest.param(PKESK + b"\xd2\xe1ab", False, id="partial-unterminated"),
        pytest.param(PKESK + b"\xd2\xe2ab", False, id="partial-chunk-truncated"),
        pytest.param(PKESK + b"\xd2\xfe" + b"x" * 64, False, id="partial-2-to-the-30"),
        pytest.param(PKESK + b"\xd2\xe1ab\x03cd", False, id="partial-last-truncated"),
        # partial lengths are for data packets only (RFC 4880 §4.2.2.4)
        pytest.param(b"\xc1\xe0k\x01k" + SEIPD, False, id="partial-pkesk"),
        pytest.param(b"\xc3\xe0s\x01s" + SEIPD, False, id="partial-skesk"),
    ],
)
def test_packet_walk(data: bytes, expected: bool) -> None:
    assert is_encrypted_packet_stream(data) is expected


def test_packet_walk_never_raises() -> None:
    for n in range(3):  # every string of up to two octets
        for combo in itertools.product(range(256), repeat=n):
            assert isinstance(is_encrypted_packet_stream(bytes(combo)), bool)
    rng = random.Random(18)
    for _ in range(20000):
        data = rng.randbytes(rng.randrange(1, 40))
        assert isinstance(is_encrypted_packet_stream(data), bool)


def armor(data: bytes, *headers: bytes, crc: bytes | None = b"=AAAA", eol: bytes = CRLF) -> bytes:
    """An armored message; the CRC is not checked by the code under test, so any will do."""
    text = base64.b64encode(data)
    lines = [BEGIN, *headers, b"", *(text[i : i + 64] for i in range(0, len(text), 64))]
    if crc is not None:
        lines.append(crc)
    return eol.join([*lines, END])


PAYLOAD = PKESK + new(18, b"\x01" + bytes(range(256)) * 2)  # base64 over several lines
GOOD = armor(PAYLOAD)


@pytest.mark.parametrize(
    ("body", "outgoing", "incoming"),
    [
        pytest.param(GOOD, PAYLOAD, PAYLOAD, id="valid"),
        pytest.param(GOOD + CRLF * 3, PAYLOAD, PAYLOAD, id="trailing-crlfs"),
        pytest.param(armor(PAYLOAD, b"Version: X"), None, PAYLOAD, id="version-header"),
        pytest.param(
            GOOD.replace(BEGIN + CRLF + CRLF, BEGIN + CRLF + b"Version: X" + CRLF),
            None,
            None,
            id="version-header-no-blank",
        ),
        pytest.param(armor(PAYLOAD, b"Comment: x"), None, None, id="comment-header"),
        pytest.param(armor(PAYLOAD, b"Version: X", b"Comment: y"), None, None, id="two-headers"),
        pytest.param(armor(PAYLOAD, b"Version: X", b"Version: Y"), None, None, id="two-versions"),
        pytest.param(armor(PAYLOAD, b"Version:X"), None, None, id="version-no-space"),
        pytest.param(BEGIN + CRLF + b"Version: X" + END, None, None, id="version-runs-into-end"),
        pytest.param(GOOD.replace(CRLF + CRLF, CRLF, 1), None, None, id="no-blank-line"),
        pytest.param(GOOD.replace(CRLF + CRLF, CRLF * 4, 1), None, None, id="many-blank-lines"),
        pytest.param(GOOD.replace(CRLF + CRLF, CRLF * 3, 1), None, None, id="two-blank-lines"),
        pytest.param(
            GOOD.replace(GOOD.split(CRLF)[3], CRLF + GOOD.split(CRLF)[3], 1),
            None,
            None,
            id="blank-line-among-data",
        ),
        pytest.param(armor(PAYLOAD, crc=b"=zzzz"), PAYLOAD, PAYLOAD, id="crc-not-verified"),
        pytest.param(armor(b"abc", crc=None), b"abc", b"abc", id="no-crc-no-padding"),
        pytest.param(armor(b"ab", crc=None), b"ab", b"ab", id="no-crc-padding-kept"),
        pytest.param(armor(b""), None, None, id="no-data-lines"),
        pytest.param(GOOD[len(BEGIN) + 2 :], None, None, id="no-begin"),
        pytest.param(GOOD[: -len(END)], None, None, id="no-end"),
        pytest.param(armor(PAYLOAD, eol=b"\n"), None, None, id="lf-only"),
        pytest.param(CRLF + GOOD, None, None, id="blank-before-begin"),
        pytest.param(GOOD + CRLF + b"x", None, None, id="text-after-end"),
        pytest.param(GOOD + b" ", None, None, id="space-after-end"),
        pytest.param(GOOD + b"\n", None, None, id="lf-after-end"),
        pytest.param(GOOD.replace(BEGIN, BEGIN + b" "), None, None, id="space-after-begin"),
        pytest.param(GOOD.replace(BEGIN, BEGIN.lower()), None, None, id="lowercase-begin"),
        pytest.param(GOOD.replace(b"MESSAGE", b"SIGNATURE"), None, None, id="signature"),
        pytest.param(GOOD.replace(b"\r\n", b"\r\n\n", 3), None, None, id="stray-lf-inside"),
        pytest.param(armor(PAYLOAD).replace(b"AAAA", b"AA A"), None, None, id="junk-in-crc"),
        pytest.param(armor(PAYLOAD, crc=b"=AAAA hi"), None, None, id="text-in-crc-line"),
        pytest.param(armor(PAYLOAD, crc=b"=AAAAAAAA"), None, None, id="long-crc-line"),
        pytest.param(armor(PAYLOAD, crc=b"=AAA"), None, None, id="short-crc-line"),
        pytest.param(
            GOOD.replace(END, b"hello" + CRLF + END), None, None, id="text-between-crc-and-end"
        ),
        pytest.param(GOOD + b" hello", None, None, id="text-on-end-line"),
        pytest.param(GOOD + CRLF + GOOD, None, None, id="second-block"),
        pytest.param(GOOD + CRLF + CRLF + b"x", None, None, id="text-after-blank-after-end"),
        pytest.param(
            GOOD.replace(GOOD.split(CRLF)[2], GOOD.split(CRLF)[2][:-1] + b"=", 1),
            None,
            None,
            id="padding-in-first-of-several-lines",
        ),
        pytest.param(
            armor(PAYLOAD, crc=None).replace(END, b"=AAAA" + CRLF + b"=AAAA" + CRLF + END),
            None,
            None,
            id="two-crc-lines",
        ),
        pytest.param(armor(b"\x01\x02").replace(b"AQI=", b"AQL="), None, None, id="non-canonical"),
        pytest.param(armor(b"ab").replace(b"YWI=", b"YWI"), None, None, id="padding-missing"),
        pytest.param(
            armor(b"abcd").replace(b"YWJjZA==", b"YWJjZA=" + CRLF + b"="),
            None,
            None,
            id="padding-split-over-lines",
        ),
        pytest.param(
            armor(b"a").replace(b"YQ==", b"YQ" + CRLF + b"=="), None, None, id="padding-line"
        ),
        pytest.param(armor(b"abcdef").replace(b"YWJj", b"YW*j"), None, None, id="bad-char"),
        pytest.param(armor(b"abcdef").replace(b"YWJj", b"YW Jj"), None, None, id="space"),
        pytest.param(armor(b"abcdef").replace(b"ZGVm", b"ZGVm\xc3\xa9"), None, None, id="8bit"),
        pytest.param(b"", None, None, id="empty-body"),
    ],
)
def test_decode_armor(body: bytes, outgoing: bytes | None, incoming: bytes | None) -> None:
    assert decode_armor(body, allow_version_header=False) == outgoing
    assert decode_armor(body, allow_version_header=True) == incoming


def test_armored_encrypted_message() -> None:
    assert is_armored_encrypted_message(GOOD, allow_version_header=False)
    assert not is_armored_encrypted_message(armor(PKESK), allow_version_header=True)
    assert not is_armored_encrypted_message(GOOD[:-1], allow_version_header=True)


def test_decode_armor_never_raises() -> None:
    rng = random.Random(3156)
    for _ in range(5000):
        body = bytearray(GOOD)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(body))
            body[pos : pos + rng.randint(0, 3)] = rng.randbytes(rng.randint(0, 3))
        for allow in (False, True):
            result = decode_armor(bytes(body), allow)
            assert result is None or isinstance(result, bytes | bytearray)


@pytest.mark.parametrize("at", range(-3, 4))
def test_an_empty_line_at_any_window_edge_is_refused(
    monkeypatch: pytest.MonkeyPatch, at: int
) -> None:
    """The base64 lines are judged in windows; an empty line where one starts counts too."""
    data_lines = GOOD.split(CRLF)[2:-2]
    window = len(CRLF.join(data_lines[:3])) + 2 + at  # near the start of the fourth line
    monkeypatch.setattr(openpgp, "WINDOW", window)
    broken = GOOD.replace(data_lines[3], CRLF + data_lines[3], 1)
    assert decode_armor(broken, allow_version_header=False) is None
    assert decode_armor(GOOD, allow_version_header=False) == PAYLOAD
