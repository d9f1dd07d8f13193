"""Write the filtermail test corpus: tests/data/mail/*.eml and tests/data/mail/verdicts.toml.

    venv/bin/python chatmaild/tests/data/make_corpus.py          # keeps GnuPG's armors
    venv/bin/python chatmaild/tests/data/make_corpus.py --fresh  # new keys; needs `gpg`

The valid PGP/MIME messages are made by real GnuPG with fresh keys in a temporary GNUPGHOME;
the near-misses are derived from them by editing armor, MIME structure or the packet stream
(re-armored with a correct CRC24, so each file breaks exactly one rule). The output is
committed, so the tests need no gpg. Run again, it takes GnuPG's armors from the committed
files, so only the files of changed cases change; with `--fresh` it replaces every encrypted
file (new keys, new session keys), which must not change a single verdict.

Everything is CRLF, as SMTP DATA is, unless a file's name says otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

OUT = Path(__file__).parent / "mail"
ALICE = "alice@example.org"  # the sender, unless a case says otherwise
BOB = "bob@example.org"  # the recipient, unless a case says otherwise
CAROL = "carol@example.org"
PEER_DAEMON = "MAILER-DAEMON@peer.example"
CRLF = "\r\n"
ACCEPT = "accept"

Verdict = str | int  # "accept" or the reply code


@dataclass
class Case:
    name: str
    file: str
    about: str
    outgoing: Verdict | None
    incoming: Verdict | None
    env: dict[str, object] = field(default_factory=dict)


FILES: dict[str, bytes] = {}
CASES: list[Case] = []


def add(
    name: str,
    data: str | bytes,
    about: str,
    outgoing: Verdict | None,
    incoming: Verdict | None,
    **env: object,
) -> None:
    """Register a new file `name`.eml and its case."""
    assert name not in FILES, name
    FILES[name] = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    CASES.append(Case(name, f"{name}.eml", about, outgoing, incoming, env))


def again(
    name: str,
    file: str,
    about: str,
    outgoing: Verdict | None,
    incoming: Verdict | None,
    **env: object,
) -> None:
    """Another case for an existing file, with a different envelope."""
    assert file in FILES, file
    CASES.append(Case(name, f"{file}.eml", about, outgoing, incoming, env))


# --- GnuPG


@contextmanager
def gnupg_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="corpus-gnupg-"))
    try:
        yield home
    finally:
        # the agent that gpg started for this home only
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def gpg(home: Path, *args: str, stdin: bytes = b"", passphrase: str = "") -> bytes:
    cmd = ["gpg", "--homedir", str(home), "--batch", "--quiet", "--pinentry-mode", "loopback"]
    cmd += ["--passphrase", passphrase, "--trust-model", "always", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, check=True).stdout


def armored(home: Path, *args: str, stdin: bytes, passphrase: str = "") -> str:
    text = gpg(home, "--armor", *args, stdin=stdin, passphrase=passphrase).decode("ascii")
    assert "Version:" not in text  # GnuPG 2.2 emits no armor headers by default
    return text.strip().replace("\n", CRLF)


# --- OpenPGP packets and armor, independent of the code under test


def crc24(data: bytes) -> bytes:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return (crc & 0xFFFFFF).to_bytes(3, "big")


def armor(data: bytes, headers: tuple[str, ...] = ()) -> str:
    text = base64.b64encode(data).decode("ascii")
    lines = ["-----BEGIN PGP MESSAGE-----", *headers, ""]
    lines += [text[i : i + 64] for i in range(0, len(text), 64)]
    lines += ["=" + base64.b64encode(crc24(data)).decode("ascii"), "-----END PGP MESSAGE-----"]
    return CRLF.join(lines)


def dearmor(text: str) -> bytes:
    lines = text.split(CRLF)
    blank = lines.index("")
    body = [line for line in lines[blank + 1 :] if not line.startswith(("=", "-----"))]
    return base64.b64decode("".join(body))


def split_packets(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, body) of each packet, partial chunks joined."""
    packets = []
    pos = 0
    while pos < len(data):
        ctb = data[pos]
        pos += 1
        if ctb & 0x40:
            tag, body = ctb & 0x3F, b""
            while True:
                first = data[pos]
                partial = 224 <= first < 255
                if first < 192:
                    n, pos = first, pos + 1
                elif first < 224:
                    n, pos = ((first - 192) << 8) + data[pos + 1] + 192, pos + 2
                elif first == 255:
                    n, pos = int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
                else:
                    n, pos = 1 << (first & 0x1F), pos + 1
                body += data[pos : pos + n]
                pos += n
                if not partial:
                    break
        else:
            tag, size = (ctb >> 2) & 0x0F, 1 << (ctb & 3)
            n = int.from_bytes(data[pos : pos + size], "big")
            body = data[pos + size : pos + size + n]
            pos += size + n
        packets.append((tag, body))
    return packets


def new_length(n: int, five: bool = False) -> bytes:
    if five or n >= 8384:
        return b"\xff" + n.to_bytes(4, "big")
    if n < 192:
        return bytes([n])
    n -= 192
    return bytes([(n >> 8) + 192, n & 0xFF])


def new_packet(tag: int, body: bytes, five: bool = False) -> bytes:
    return bytes([0xC0 | tag]) + new_length(len(body), five) + body


def old_packet(tag: int, body: bytes, length_type: int) -> bytes:
    ctb = bytes([0x80 | tag << 2 | length_type])
    if length_type == 3:
        return ctb + body
    return ctb + len(body).to_bytes(1 << length_type, "big") + body


def partial_packet(tag: int, body: bytes, exponent: int) -> bytes:
    """`body` as partial chunks of 2**exponent octets, closed by a definite length."""
    out, size = bytes([0xC0 | tag]), 1 << exponent
    while len(body) > size:
        out += bytes([224 + exponent]) + body[:size]
        body = body[size:]
    return out + new_length(len(body)) + body


# --- MIME


def message(headers: list[tuple[str, str]], body: str) -> str:
    return "".join(f"{k}: {v}{CRLF}" for k, v in headers) + CRLF + body


def part(ctype: str, body: str, *extra: tuple[str, str]) -> str:
    return message([("Content-Type", ctype), *extra], body)


def multipart(parts: list[str], boundary: str = "XbOuNdArYx") -> str:
    body = "".join(f"--{boundary}{CRLF}{p}{CRLF}" for p in parts)
    return body + f"--{boundary}--{CRLF}"


def envelope_headers(
    subject: str = "[...]", from_: str = ALICE, to: str = BOB
) -> list[tuple[str, str]]:
    return [
        ("From", from_),
        ("To", to),
        ("Subject", subject),
        ("Date", "Thu, 01 Jan 2026 12:00:00 +0000"),
        ("Message-ID", "<corpus@example.org>"),
        ("MIME-Version", "1.0"),
    ]


def control_part(body: str = "Version: 1" + CRLF, ctype: str = "application/pgp-encrypted") -> str:
    return part(ctype, body, ("Content-Description", "PGP/MIME version identification"))


def data_part(armor_text: str, ctype: str = "application/octet-stream", *extra: str) -> str:
    headers = [("Content-Description", "OpenPGP encrypted message")]
    headers += [tuple(h.split(": ", 1)) for h in extra]  # type: ignore[misc]
    return part(f'{ctype}; name="encrypted.asc"', armor_text + CRLF, *headers)


ENCRYPTED_TYPE = 'multipart/encrypted; protocol="application/pgp-encrypted"; boundary="XbOuNdArYx"'


def encrypted(
    armor_text: str,
    *,
    parts: list[str] | None = None,
    top: str = ENCRYPTED_TYPE,
    headers: list[tuple[str, str]] | None = None,
) -> str:
    if parts is None:
        parts = [control_part(), data_part(armor_text)]
    head = (headers or envelope_headers()) + [("Content-Type", top)]
    return message(head, multipart(parts))


def cleartext(headers: list[tuple[str, str]] | None = None, text: str = "Hello!") -> str:
    head = (headers or envelope_headers()) + [("Content-Type", "text/plain; charset=utf-8")]
    return message(head, text + CRLF)


THUNDERBIRD_PREAMBLE = "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)"


def with_preamble(message_text: str, preamble: str) -> str:
    """`message_text` (from `encrypted`) with `preamble` before its first delimiter."""
    return message_text.replace(
        CRLF * 2 + "--XbOuNdArYx" + CRLF, CRLF * 2 + preamble + CRLF + "--XbOuNdArYx" + CRLF, 1
    )


# --- the catalogue

PLAINTEXT = ("Content-Type: text/plain; charset=utf-8" + CRLF + CRLF + "Hi Bob!" + CRLF).encode()


class Armorer(Protocol):
    def __call__(self, case: str, *args: str, stdin: bytes, passphrase: str = "") -> str:
        """The armor GnuPG writes with `args` for the case `case`."""


def gnupg_armorer(home: Path) -> Armorer:
    """GnuPG with fresh keys for Bob and Carol."""
    gpg(home, "--quick-gen-key", f"Bob <{BOB}>", "future-default", "default", "never")
    gpg(home, "--quick-gen-key", f"Carol <{CAROL}>", "rsa2048", "sign,encr", "never")

    def armor(case: str, *args: str, stdin: bytes, passphrase: str = "") -> str:
        return armored(home, *args, stdin=stdin, passphrase=passphrase)

    return armor


def kept_armor(case: str, *args: str, stdin: bytes, passphrase: str = "") -> str:
    """The armor GnuPG wrote last time, from the case's file: the corpus changes only where
    its cases change."""
    text = (OUT / f"{case}.eml").read_bytes().decode("ascii")
    start = text.index("-----BEGIN PGP MESSAGE-----")
    end = text.index("-----END PGP MESSAGE-----") + len("-----END PGP MESSAGE-----")
    return text[start:end]


def build_encrypted(armored: Armorer) -> str:
    """Add the GnuPG-made valid cases; return the one-recipient armor to derive from."""
    to_bob = ("--encrypt", "--recipient", BOB)
    bob = armored("enc-bob", *to_bob, stdin=PLAINTEXT)
    add("enc-bob", encrypted(bob), "GnuPG, one X25519 recipient: PKESK, SEIPD", ACCEPT, ACCEPT)
    both = armored("enc-bob-carol", *to_bob, "--recipient", CAROL, stdin=PLAINTEXT)
    add(
        "enc-bob-carol",
        encrypted(both),
        "GnuPG, two recipients (X25519, RSA): PKESK, PKESK (2-octet old format), SEIPD",
        ACCEPT,
        ACCEPT,
        rcpts=[BOB, CAROL],
    )
    sym = armored("enc-symmetric", "--symmetric", stdin=PLAINTEXT, passphrase="corpus")
    add("enc-symmetric", encrypted(sym), "GnuPG --symmetric: SKESK, SEIPD", ACCEPT, ACCEPT)
    mixed = armored(
        "enc-symmetric-and-bob", "--symmetric", *to_bob, stdin=PLAINTEXT, passphrase="corpus"
    )
    add(
        "enc-symmetric-and-bob",
        encrypted(mixed),
        "GnuPG --symmetric --encrypt: PKESK, SKESK, SEIPD",
        ACCEPT,
        ACCEPT,
    )
    # Random bytes do not compress, and from a pipe gpg does not know the size: partial lengths.
    large = armored(
        "enc-large-partial", *to_bob, "--compress-algo", "none", stdin=os.urandom(20000)
    )
    assert any(224 <= b < 255 for b in dearmor(large)[96:100]), "expected a partial length"
    add(
        "enc-large-partial",
        encrypted(large),
        "GnuPG, 20 kB: SEIPD in partial chunks",
        ACCEPT,
        ACCEPT,
    )
    add(
        "pkt-store-only",
        encrypted(armored("pkt-store-only", "--store", stdin=PLAINTEXT)),
        "GnuPG --store: one compressed packet (old format, indeterminate length), no encryption",
        523,
        523,
    )
    add(
        "pkt-signed-only",
        encrypted(armored("pkt-signed-only", "--sign", "--local-user", BOB, stdin=PLAINTEXT)),
        "GnuPG --sign: signed but not encrypted",
        523,
        523,
    )
    return bob


def build_valid_variants(bob: str) -> None:
    lines = bob.split(CRLF)  # BEGIN, "", data..., =CRC, END
    with_version = CRLF.join([lines[0], "Version: GnuPG v2", *lines[1:]])
    add(
        "enc-version-header",
        encrypted(with_version),
        "a Version armor header: refused outgoing, skipped incoming",
        523,
        ACCEPT,
    )
    no_blank_version = CRLF.join([lines[0], "Version: GnuPG v2", *lines[2:]])
    add(
        "enc-version-header-no-blank-line",
        encrypted(no_blank_version),
        "Version header directly followed by data: the armor needs its one blank line",
        523,
        523,
    )
    no_blank = CRLF.join([lines[0], *lines[2:]])
    add("enc-no-blank-line", encrypted(no_blank), "no blank line after BEGIN", 523, 523)
    blanks = CRLF.join([lines[0], "", "", "", *lines[2:]])
    add("enc-extra-blank-lines", encrypted(blanks), "three blank lines after BEGIN", 523, 523)
    trailing = bob + CRLF * 3
    add("enc-trailing-blank-lines", encrypted(trailing), "CRLFs after END", ACCEPT, ACCEPT)
    preamble = with_preamble(encrypted(bob), THUNDERBIRD_PREAMBLE)
    add(
        "enc-preamble-thunderbird",
        preamble,
        "the one preamble line Thunderbird (and other OpenPGP mailers) write",
        ACCEPT,
        ACCEPT,
    )
    add(
        "enc-preamble-epilogue",
        preamble + "epilogue" + CRLF,
        "Thunderbird's preamble, and text in the epilogue",
        523,
        523,
    )
    add(
        "enc-no-close-delimiter",
        encrypted(bob).replace("--XbOuNdArYx--" + CRLF, ""),
        "closing MIME delimiter missing: recovering the parts would be a guess",
        523,
        523,
    )
    add(
        "enc-epilogue-blank-lines",
        encrypted(bob) + CRLF * 2,
        "blank lines after the close delimiter (Delta Chat writes one)",
        ACCEPT,
        ACCEPT,
    )
    crc = lines[-2]
    wrong_crc = bob.replace(CRLF + crc + CRLF, CRLF + "=AAAA" + CRLF)
    add("enc-wrong-crc", encrypted(wrong_crc), "wrong CRC24 (not verified)", ACCEPT, ACCEPT)
    upper = encrypted(bob, top=ENCRYPTED_TYPE.replace("multipart/encrypted", "Multipart/Encrypted"))
    upper = upper.replace("application/pgp-encrypted\r\n", "Application/PGP-Encrypted\r\n")
    upper = upper.replace("application/octet-stream", "Application/Octet-Stream")
    add("enc-uppercase-types", upper, "MIME types in mixed case", ACCEPT, ACCEPT)
    padded = encrypted(
        bob, parts=[control_part(CRLF + "  Version: 1  " + CRLF * 2), data_part(bob)]
    )
    add("enc-version-1-padded", padded, "control body with blank lines and spaces", ACCEPT, ACCEPT)
    add(
        "enc-from-display-name",
        encrypted(bob, headers=envelope_headers(from_=f'"Alice Liddell" <{ALICE}>')),
        "From with a quoted display name",
        ACCEPT,
        ACCEPT,
    )
    add(
        "enc-from-uppercase",
        encrypted(bob, headers=envelope_headers(from_=ALICE.upper())),
        "From differs from MAIL FROM only in case",
        ACCEPT,
        ACCEPT,
    )
    add(
        "enc-from-folded",
        encrypted(bob, headers=envelope_headers(from_=f"Alice{CRLF} <{ALICE}>")),
        "From header folded over two lines",
        ACCEPT,
        ACCEPT,
    )
    sj_headers = [*envelope_headers(), ("Secure-Join", "vc-auth")]
    add(
        "enc-securejoin-vc-auth",
        encrypted(bob, headers=sj_headers),
        "a later Secure-Join step, encrypted",
        ACCEPT,
        ACCEPT,
    )
    again(
        "enc-bob-from-mismatch",
        "enc-bob",
        "MAIL FROM differs from From: refused outgoing, envelope <> incoming",
        500,
        ACCEPT,
        mail_from="mallory@example.org",
        envelope="",
    )
    again(
        "enc-bob-null-sender",
        "enc-bob",
        "incoming with MAIL FROM <>: accepted, envelope stays <>",
        None,
        ACCEPT,
        mail_from="",
        envelope="",
    )
    again(
        "enc-bob-srs",
        "enc-bob",
        "incoming through an SRS forwarder: envelope <>",
        None,
        ACCEPT,
        mail_from="SRS0=HHH=TT=example.org=alice@forwarder.example",
        envelope="",
    )
    add(
        "enc-lf-only",
        encrypted(bob).replace(CRLF, "\n"),
        "the whole message with LF line endings: no header section to read (SMTP never sends it)",
        500,
        500,
    )


def build_mime_near_misses(bob: str) -> None:
    text_part = part("text/plain", "Hello" + CRLF)
    cases: list[tuple[str, str, str]] = [
        ("mime-one-part", encrypted(bob, parts=[control_part()]), "only the control part"),
        ("mime-only-data-part", encrypted(bob, parts=[data_part(bob)]), "only the data part"),
        (
            "mime-three-parts",
            encrypted(bob, parts=[control_part(), data_part(bob), text_part]),
            "a third part after the two",
        ),
        (
            "mime-extra-part-first",
            encrypted(bob, parts=[text_part, control_part(), data_part(bob)]),
            "a text part before the two",
        ),
        (
            "mime-swapped-order",
            encrypted(bob, parts=[data_part(bob), control_part()]),
            "data part before control part",
        ),
        (
            "mime-multipart-mixed",
            encrypted(bob, top='multipart/mixed; boundary="XbOuNdArYx"'),
            "the two parts under multipart/mixed",
        ),
        (
            "mime-nested-multipart",
            encrypted(
                bob,
                parts=[
                    control_part(),
                    message(
                        [("Content-Type", 'multipart/mixed; boundary="inner"')],
                        multipart([data_part(bob)], "inner"),
                    ),
                ],
            ),
            "data part wrapped in a nested multipart",
        ),
        (
            "mime-no-boundary",
            encrypted(bob, top='multipart/encrypted; protocol="application/pgp-encrypted"'),
            "multipart/encrypted without a boundary parameter",
        ),
        (
            "mime-inline-pgp",
            cleartext(text=bob),
            "inline PGP: the armor in a text/plain body",
        ),
        (
            "mime-control-text-plain",
            encrypted(bob, parts=[control_part(ctype="text/plain"), data_part(bob)]),
            "control part typed text/plain",
        ),
        (
            "mime-data-text-plain",
            encrypted(bob, parts=[control_part(), data_part(bob, "text/plain")]),
            "data part typed text/plain",
        ),
        (
            "mime-data-pgp-encrypted",
            encrypted(bob, parts=[control_part(), data_part(bob, "application/pgp-encrypted")]),
            "data part typed application/pgp-encrypted",
        ),
        (
            "mime-data-base64-transfer-encoding",
            encrypted(
                bob,
                parts=[
                    control_part(),
                    part(
                        "application/octet-stream",
                        base64.encodebytes(bob.encode()).decode().replace("\n", CRLF),
                        ("Content-Transfer-Encoding", "base64"),
                    ),
                ],
            ),
            "armor sent base64-encoded: bodies are checked as transmitted",
        ),
        ("version-missing", encrypted(bob, parts=[control_part(""), data_part(bob)]), "empty"),
        (
            "version-2",
            encrypted(bob, parts=[control_part("Version: 2" + CRLF), data_part(bob)]),
            "Version: 2",
        ),
        (
            "version-lowercase",
            encrypted(bob, parts=[control_part("version: 1" + CRLF), data_part(bob)]),
            "version: 1",
        ),
        (
            "version-extra-line",
            encrypted(bob, parts=[control_part("Version: 1\r\nComment: x\r\n"), data_part(bob)]),
            "Version: 1 and another line",
        ),
        (
            "version-no-space",
            encrypted(bob, parts=[control_part("Version:1" + CRLF), data_part(bob)]),
            "Version:1",
        ),
    ]
    for name, data, about in cases:
        add(name, data, about, 523, 523)
    idna = control_part("Version: 1\udcff" + CRLF, "application/pgp-encrypted; charset=idna")
    add(
        "version-8bit-idna-charset",
        encrypted(bob, parts=[idna, data_part(bob)]),
        "an 8-bit byte in a part whose charset's codec raises: a verdict, not a crash",
        523,
        523,
    )


def build_armor_near_misses(bob: str) -> None:
    lines = bob.split(CRLF)
    begin, end, data_line = lines[0], lines[-1], lines[2]
    not_pgp = base64.b64encode(b"Delta Chat is a decentralized and secure messenger app.")
    empty = CRLF.join([begin, "", "=" + base64.b64encode(crc24(b"")).decode(), end])
    variants: list[tuple[str, str, str]] = [
        ("armor-no-begin", CRLF.join(lines[1:]), "BEGIN line missing"),
        (
            "armor-begin-signature",
            bob.replace("PGP MESSAGE", "PGP SIGNATURE"),
            "BEGIN/END PGP SIGNATURE",
        ),
        ("armor-no-end", CRLF.join(lines[:-1]), "END line missing"),
        ("armor-lf-only", bob.replace(CRLF, "\n"), "armor with LF line endings"),
        ("armor-garbage-after-end", bob + CRLF + "garbage", "text after END"),
        ("armor-text-before-begin", "Here it is:" + CRLF + bob, "text before BEGIN"),
        ("armor-blank-line-before-begin", CRLF + bob, "a blank line before BEGIN"),
        (
            "armor-comment-header",
            CRLF.join([begin, "Comment: hi", *lines[1:]]),
            "a Comment armor header",
        ),
        (
            "armor-version-then-comment",
            CRLF.join([begin, "Version: x", "Comment: hi", *lines[1:]]),
            "Version and then Comment header",
        ),
        (
            "armor-comment-then-version",
            CRLF.join([begin, "Comment: hi", "Version: x", *lines[1:]]),
            "Comment and then Version header",
        ),
        (
            "armor-two-version-headers",
            CRLF.join([begin, "Version: x", "Version: y", *lines[1:]]),
            "two Version headers",
        ),
        ("armor-end-trailing-space", bob + " ", "a space after END"),
        ("armor-begin-trailing-space", bob.replace(begin, begin + " ", 1), "a space after BEGIN"),
        ("armor-lowercase-begin", bob.replace(begin, begin.lower(), 1), "BEGIN in lowercase"),
        (
            "armor-bad-base64-char",
            bob.replace(data_line, data_line[:10] + "*" + data_line[11:], 1),
            "a character outside the base64 alphabet",
        ),
        (
            "armor-space-in-base64",
            bob.replace(data_line, data_line[:10] + " " + data_line[10:], 1),
            "a space inside a base64 line",
        ),
        (
            "armor-base64-char-missing",
            bob.replace(data_line, data_line[1:], 1),
            "one base64 character dropped",
        ),
        ("armor-empty", empty, "no data between the header and the CRC"),
        (
            "armor-not-openpgp",
            CRLF.join([begin, "", not_pgp.decode(), "=AAAA", end]),
            "valid base64 that is not OpenPGP",
        ),
    ]
    for name, armor_text, about in variants:
        add(name, encrypted(armor_text), about, 523, 523)


def build_packet_variants(bob: str) -> None:
    packets = split_packets(dearmor(bob))
    (pkesk_tag, pkesk), (seipd_tag, seipd) = packets
    assert (pkesk_tag, seipd_tag) == (1, 18), packets
    good_pkesk, good_seipd = new_packet(1, pkesk), new_packet(18, seipd)
    marker = new_packet(10, b"PGP")
    valid: list[tuple[str, bytes, str]] = [
        ("pkt-new-format", good_pkesk + good_seipd, "PKESK rewritten in new format"),
        (
            "pkt-five-octet-lengths",
            new_packet(1, pkesk, five=True) + new_packet(18, seipd, five=True),
            "5-octet lengths",
        ),
        (
            "pkt-old-format-four-octet",
            old_packet(1, pkesk, 2) + good_seipd,
            "PKESK in old format with a 4-octet length",
        ),
        (
            "pkt-partial-chunks",
            good_pkesk + partial_packet(18, seipd, 4),
            "SEIPD split into 16-octet partial chunks",
        ),
        ("pkt-seipd-only", good_seipd, "SEIPD without a session-key packet (vacuous rule)"),
    ]
    for name, data, about in valid:
        add(name, encrypted(armor(data)), about, ACCEPT, ACCEPT)
    partial = good_pkesk + partial_packet(18, seipd, 4)
    invalid: list[tuple[str, bytes, str]] = [
        ("pkt-pkesk-only", good_pkesk, "no SEIPD"),
        ("pkt-seipd-then-pkesk", good_seipd + good_pkesk, "SEIPD first, PKESK last"),
        ("pkt-two-seipd", good_pkesk + good_seipd + good_seipd, "two SEIPD"),
        ("pkt-sed-tag9", good_pkesk + new_packet(9, seipd), "last packet SED (tag 9), no MDC"),
        ("pkt-aead-tag20", good_pkesk + new_packet(20, seipd), "last packet AEAD (tag 20)"),
        ("pkt-trailing-byte", good_pkesk + good_seipd + b"\x00", "a byte after SEIPD"),
        ("pkt-trailing-marker", good_pkesk + good_seipd + marker, "a marker packet after SEIPD"),
        ("pkt-marker-first", marker + good_pkesk + good_seipd, "a marker packet first"),
        (
            "pkt-literal-before-seipd",
            good_pkesk + new_packet(11, b"b\x00\x00\x00\x00\x00cleartext") + good_seipd,
            "a literal data packet (cleartext) before SEIPD",
        ),
        (
            "pkt-old-indeterminate-pkesk",
            old_packet(1, pkesk + good_seipd, 3),
            "old-format indeterminate length, swallowing the rest",
        ),
        ("pkt-truncated-seipd", good_pkesk + good_seipd[:-1], "SEIPD one octet short"),
        (
            "pkt-short-length",
            good_pkesk + new_packet(18, seipd[:-1]) + seipd[-1:],
            "SEIPD length one short, leaving a trailing octet",
        ),
        (
            "pkt-truncated-header",
            good_pkesk + bytes([0xC0 | 18, 0xFF, 0x00]),
            "data ends inside a 5-octet length",
        ),
        ("pkt-partial-truncated", partial[:-20], "data ends inside a partial chunk"),
        (
            "pkt-partial-unterminated",
            good_pkesk + bytes([0xC0 | 18, 224 + 4]) + seipd[:16],
            "data ends after a partial chunk, without a final length",
        ),
        ("pkt-no-tag-bit", b"\x41" + good_pkesk[1:] + good_seipd, "first octet without bit 7"),
        ("pkt-reserved-tag0", new_packet(0, b"x") + good_seipd, "reserved tag 0 before SEIPD"),
    ]
    for name, data, about in invalid:
        add(name, encrypted(armor(data)), about, 523, 523)


def securejoin(step: str | None, body: str, ctype: str = "text/plain", parts: int = 1) -> str:
    head = envelope_headers() + ([("Secure-Join", step)] if step else [])
    head.append(("Content-Type", 'multipart/mixed; boundary="XbOuNdArYx"'))
    return message(head, multipart([part(ctype, body + CRLF)] * parts))


def build_securejoin() -> None:
    add(
        "securejoin-vc-request",
        securejoin("vc-request", "Secure-Join: vc-request"),
        "the opening step, contact",
        ACCEPT,
        ACCEPT,
    )
    add(
        "securejoin-vg-request",
        securejoin("vg-request", "Secure-Join: vg-request"),
        "the opening step, group",
        ACCEPT,
        ACCEPT,
    )
    add(
        "securejoin-case-and-space",
        securejoin("vc-request", CRLF + "  SECURE-JOIN: VC-Request  " + CRLF),
        "body trimmed and lowercased before comparing",
        ACCEPT,
        ACCEPT,
    )
    add(
        "securejoin-steps-differ",
        securejoin("vg-request", "secure-join: vc-request"),
        "header and body name different opening steps (each is one of the two)",
        ACCEPT,
        ACCEPT,
    )
    flat = message(
        [*envelope_headers(), ("Secure-Join", "vc-request"), ("Content-Type", "text/plain")],
        "secure-join: vc-request" + CRLF,
    )
    nested = message(
        [
            *envelope_headers(),
            ("Secure-Join", "vc-request"),
            ("Content-Type", 'multipart/mixed; boundary="outer"'),
        ],
        multipart(
            [
                message(
                    [("Content-Type", 'multipart/alternative; boundary="inner"')],
                    multipart([part("text/plain", "secure-join: vc-request" + CRLF)], "inner"),
                )
            ],
            "outer",
        ),
    )
    near: list[tuple[str, str, str]] = [
        (
            "securejoin-extra-text",
            securejoin("vc-request", "secure-join: vc-request" + CRLF + "hi"),
            "text after the step",
        ),
        (
            "securejoin-text-html",
            securejoin("vc-request", "secure-join: vc-request", "text/html"),
            "text/html",
        ),
        (
            "securejoin-two-parts",
            securejoin("vc-request", "secure-join: vc-request", parts=2),
            "two parts",
        ),
        ("securejoin-vc-auth", securejoin("vc-auth", "secure-join: vc-auth"), "a later step"),
        (
            "securejoin-body-later-step",
            securejoin("vc-request", "secure-join: vc-auth-required"),
            "header vc-request, body a later step",
        ),
        ("securejoin-not-multipart", flat, "top-level text/plain"),
        ("securejoin-no-header", securejoin(None, "secure-join: vc-request"), "no header"),
        (
            "securejoin-header-uppercase",
            securejoin("VC-REQUEST", "secure-join: vc-request"),
            "header value in uppercase",
        ),
        ("securejoin-nested", nested, "text/plain inside a nested multipart"),
    ]
    for name, data, about in near:
        add(name, data, about, 523, 523)


def autocrypt_setup(
    subject: str = "Autocrypt Setup Message", ctype: str = "multipart/mixed"
) -> str:
    setup = part("application/autocrypt-setup", "-----BEGIN PGP MESSAGE-----" + CRLF)
    head = envelope_headers(subject=subject, to=ALICE)
    head += [("Autocrypt-Setup-Message", "v1")]
    if ctype.startswith("multipart/"):
        head.append(("Content-Type", f'{ctype}; boundary="XbOuNdArYx"'))
        return message(head, multipart([part("text/plain", "Setup" + CRLF), setup]))
    return message([*head, ("Content-Type", ctype)], "Setup" + CRLF)


def build_autocrypt_setup() -> None:
    add(
        "asm-self",
        autocrypt_setup(),
        "self-sent Autocrypt Setup Message (never accepted incoming: cleartext)",
        ACCEPT,
        523,
        rcpts=[ALICE],
    )
    again(
        "asm-self-rcpt-case",
        "asm-self",
        "recipient differs from From only in case",
        ACCEPT,
        None,
        rcpts=["Alice@Example.ORG"],
    )
    again("asm-to-bob", "asm-self", "sent to someone else", 523, 523, rcpts=[BOB])
    again("asm-self-and-bob", "asm-self", "to oneself and another", 523, 523, rcpts=[ALICE, BOB])
    add(
        "asm-wrong-subject",
        autocrypt_setup(subject="Re: Autocrypt Setup Message"),
        "wrong subject",
        523,
        523,
        rcpts=[ALICE],
    )
    add(
        "asm-encoded-subject",
        autocrypt_setup(subject="=?utf-8?q?Autocrypt_Setup_Message?="),
        "RFC 2047 encoded subject: compared as transmitted",
        523,
        523,
        rcpts=[ALICE],
    )
    add(
        "asm-text-plain",
        autocrypt_setup(ctype="text/plain"),
        "text/plain, not multipart/mixed",
        523,
        523,
        rcpts=[ALICE],
    )


def report(from_: str, auto_submitted: str | None, ctype: str = "multipart/report") -> str:
    head = envelope_headers(subject="Undelivered Mail Returned to Sender", from_=from_, to=ALICE)
    if auto_submitted is not None:
        head.append(("Auto-Submitted", auto_submitted))
    if not ctype.startswith("multipart/"):
        return message([*head, ("Content-Type", ctype)], "It bounced." + CRLF)
    head.append(("Content-Type", f'{ctype}; report-type=delivery-status; boundary="XbOuNdArYx"'))
    status = "Reporting-MTA: dns; peer.example" + CRLF + CRLF + "Final-Recipient: rfc822; x@y"
    parts = [
        part("text/plain", "It bounced." + CRLF),
        part("message/delivery-status", status + CRLF + "Action: failed" + CRLF),
    ]
    return message(head, multipart(parts))


def build_reports() -> None:
    bounce = dict(mail_from="", rcpts=[ALICE], envelope="")
    daemon = f"{PEER_DAEMON} (Mail Delivery System)"
    add("report-bounce", report(daemon, "auto-replied"), "a peer's bounce", None, ACCEPT, **bounce)
    again(
        "report-bounce-outgoing",
        "report-bounce",
        "no mailer-daemon exception outgoing",
        523,
        None,
        mail_from=PEER_DAEMON,
        rcpts=[ALICE],
    )
    near: list[tuple[str, str, str]] = [
        ("report-no-auto-submitted", report(daemon, None), "no Auto-Submitted"),
        ("report-empty-auto-submitted", report(daemon, ""), "empty Auto-Submitted"),
        (
            "report-postmaster",
            report("postmaster@peer.example", "auto-replied"),
            "From local part postmaster",
        ),
        (
            "report-mailer-daemon-suffix",
            report("mailer-daemon-x@peer.example", "auto-replied"),
            "From local part mailer-daemon-x",
        ),
        ("report-text-plain", report(daemon, "auto-replied", "text/plain"), "text/plain"),
        ("report-auto-submitted-no", report(daemon, "no"), "Auto-Submitted: no (RFC 3834)"),
        (
            "report-mdn-from-daemon",
            report(daemon, "auto-replied").replace("delivery-status", "disposition-notification"),
            "a read receipt (report-type=disposition-notification), not a delivery report",
        ),
        (
            "report-one-part",
            report(daemon, "auto-replied").replace("--XbOuNdArYx\r\nContent-Type: message", "X"),
            "no message/delivery-status part",
        ),
        (
            "report-extra-part",
            report(daemon, "auto-replied").replace(
                "--XbOuNdArYx--",
                "--XbOuNdArYx\r\nContent-Type: image/png\r\n\r\nPNG\r\n--XbOuNdArYx--",
            ),
            "an image after the status: a client would show it",
        ),
        (
            "report-from-two-readings",
            report(f"{PEER_DAEMON} <mallory@peer.example>", "auto-replied"),
            "From with an address before the angle brackets",
        ),
    ]
    for name, data, about in near:
        add(name, data, about, None, 500 if "two-readings" in name else 523, **bounce)
    postfix_bounce = report(daemon, "auto-replied").replace(
        '"XbOuNdArYx"\r\n\r\n', '"XbOuNdArYx"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n'
    )
    postfix_bounce = postfix_bounce.replace(
        "--XbOuNdArYx--",
        "--XbOuNdArYx\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: x\r\n--XbOuNdArYx--",
    )
    add(
        "report-postfix-bounce",
        postfix_bounce,
        "as Postfix writes it: a preamble, and the returned header as a third part",
        None,
        ACCEPT,
        **bounce,
    )
    mdn = report(ALICE, "auto-replied").replace("delivery-status", "disposition-notification")
    add("report-unencrypted-mdn", mdn, "a cleartext read receipt from a user", 523, 523)


def build_cleartext() -> None:
    add("cleartext", cleartext(), "plain text to an account that enforces encryption", 523, 523)
    again(
        "cleartext-old-account",
        "cleartext",
        "recipient without enforceE2EEincoming (an account from before 1.6.0)",
        523,
        ACCEPT,
        enforcing=[],
    )
    again(
        "cleartext-one-of-two-enforces",
        "cleartext",
        "two recipients, one enforces",
        523,
        523,
        rcpts=[BOB, CAROL],
        enforcing=[CAROL],
    )
    for name, rcpt, about in [
        ("cleartext-rcpt-no-at", "bob", "invalid recipient without @ counts as enforcing"),
        ("cleartext-rcpt-slash", "../bob@example.org", "recipient with / counts as enforcing"),
        ("cleartext-rcpt-empty", "", "empty recipient counts as enforcing"),
    ]:
        again(name, "cleartext", about, 523, 523, rcpts=[rcpt], enforcing=[])
    for name, rcpt, about in [
        ("cleartext-rcpt-case", "Bob@Example.ORG", "other case reaches the same mailbox"),
        ("cleartext-rcpt-detail", "bob+news@example.org", "+detail reaches the same mailbox"),
    ]:
        again(name, "cleartext", about, 523, 523, rcpts=[rcpt], enforcing=[BOB])
    add(
        "cleartext-lf-only",
        cleartext().replace(CRLF, "\n"),
        "LF line endings, to an old account: no header section to read (SMTP never sends it)",
        500,
        500,
        enforcing=[],
    )


def build_malformed(bob: str) -> None:
    def without_from(extra: list[tuple[str, str]]) -> str:
        head = [h for h in envelope_headers() if h[0] != "From"] + extra
        return encrypted(bob, headers=head)

    cases: list[tuple[str, str | bytes, str]] = [
        ("from-missing", without_from([]), "no From header"),
        ("from-empty", without_from([("From", "")]), "empty From header"),
        ("from-no-address", without_from([("From", "Alice")]), "From without an address"),
        (
            "from-two-addresses",
            without_from([("From", f"{ALICE}, {BOB}")]),
            "two addresses in From",
        ),
        (
            "from-two-headers",
            without_from([("From", ALICE), ("From", BOB)]),
            "two From headers",
        ),
        ("from-two-at", without_from([("From", "alice@evil@example.org")]), "two @ in From"),
        (
            "from-two-readings",
            without_from([("From", f"{ALICE} <ceo@bank.example>")]),
            "an address before the angle brackets: parsers differ in which one is From",
        ),
        (
            "from-group",
            without_from([("From", f"alice:{ALICE};")]),
            "a group in From",
        ),
        (
            "from-8bit-latin1",
            encrypted(bob).replace(f"From: {ALICE}", f"From: Al\udce9ice <{ALICE}>"),
            "From with a non-UTF-8 byte",
        ),
        ("not-a-message", b"\x00\x01\x02 binary junk \xff\xfe" * 10, "no header fields"),
        ("empty", b"", "zero bytes"),
    ]
    for name, data, about in cases:
        add(name, data, about, 500, 500)


def build_one_reading(bob: str) -> None:
    """Messages encrypted in shape that carry cleartext beside the ciphertext, or that another
    parser reads differently (doc/encryption-gate.md §2): all refused with 523."""
    lines = bob.split(CRLF)  # BEGIN, "", data..., =CRC, END
    crc, end = lines[-2], lines[-1]
    good = encrypted(bob)
    top = "Content-Type: " + ENCRYPTED_TYPE + CRLF
    (_, pkesk), (_, seipd) = split_packets(dearmor(bob))
    long_armor = armor(new_packet(1, pkesk) + new_packet(18, seipd + bytes(900)))
    long_lines = long_armor.split(CRLF)  # BEGIN, "", data..., =CRC, END
    add(
        "enc-long-seipd", encrypted(long_armor), "a SEIPD of 1 kB in 64-octet lines", ACCEPT, ACCEPT
    )
    control_ct = "Content-Type: application/pgp-encrypted" + CRLF
    secret = "Meet me at the old mill at midnight."
    cases: list[tuple[str, str, str]] = [
        ("shape-preamble-text", with_preamble(good, secret), "cleartext in the preamble"),
        (
            "shape-preamble-thunderbird-and-text",
            with_preamble(good, THUNDERBIRD_PREAMBLE + CRLF + secret),
            "Thunderbird's preamble line and one more",
        ),
        (
            "shape-preamble-large",
            with_preamble(good, (secret + CRLF) * 2000),
            "70 kB of cleartext in the preamble",
        ),
        ("shape-epilogue-text", good + secret + CRLF, "cleartext in the epilogue"),
        (
            "shape-close-delimiter-text",
            good.replace("--XbOuNdArYx--", "--XbOuNdArYx-- " + secret),
            "text on the close delimiter line",
        ),
        (
            "shape-delimiter-padding",
            good.replace("--XbOuNdArYx" + CRLF, "--XbOuNdArYx  " + CRLF, 1),
            "transport padding after a delimiter",
        ),
        (
            "shape-delimiter-prefix-line",
            good.replace("Version: 1" + CRLF, "Version: 1" + CRLF + "--XbOuNdArYxZ" + CRLF, 1),
            "a line starting with the delimiter inside a part",
        ),
        (
            "shape-armor-text-after-crc",
            good.replace(crc + CRLF, crc + CRLF + secret + CRLF, 1),
            "a text line between the checksum and END",
        ),
        (
            "shape-armor-crc-with-text",
            good.replace(crc + CRLF, crc + secret + CRLF, 1),
            "a checksum line of = and text",
        ),
        (
            "shape-armor-crc-long",
            good.replace(crc + CRLF, crc + "AAAA" + CRLF, 1),
            "a checksum line of eight characters",
        ),
        (
            "shape-armor-end-line-text",
            good.replace(end, end + " " + secret, 1),
            "text on the END line",
        ),
        (
            "shape-armor-second-block",
            good.replace(end + CRLF, end + CRLF + bob + CRLF, 1),
            "a whole second armor block after the first",
        ),
        (
            "shape-armor-text-after-end",
            good.replace(end + CRLF, end + CRLF + CRLF + secret + CRLF, 1),
            "a blank line, then text after END",
        ),
        (
            "shape-armor-padding-inside",
            good.replace(lines[2] + CRLF, lines[2][:-2] + "==" + CRLF, 1),
            "= padding in a base64 line that is not the last",
        ),
        (
            "shape-two-content-types",
            good.replace(top, top + "Content-Type: text/plain" + CRLF, 1),
            "a second top-level Content-Type",
        ),
        (
            "shape-two-content-types-cleartext-first",
            good.replace(top, "Content-Type: text/plain" + CRLF + top, 1),
            "text/plain first, then multipart/encrypted",
        ),
        (
            "shape-part-two-content-types",
            good.replace(control_ct, control_ct + "Content-Type: text/plain" + CRLF, 1),
            "a second Content-Type in the control part",
        ),
        (
            "shape-boundary-twice",
            good.replace('boundary="XbOuNdArYx"', 'boundary="XbOuNdArYx"; boundary="other"', 1),
            "boundary= given twice",
        ),
        (
            "shape-boundary-rfc2231",
            good.replace('boundary="XbOuNdArYx"', 'boundary="XbOuNdArYx"; boundary*0="other"', 1),
            "an RFC 2231 boundary beside the plain one",
        ),
        (
            "shape-content-type-comment",
            good.replace("multipart/encrypted;", "multipart/encrypted (x);", 1),
            "a comment in Content-Type",
        ),
        (
            "shape-obsolete-colon",
            good.replace("Content-Type: multipart", "Content-Type : multipart", 1),
            "obsolete `Content-Type :` with a space before the colon",
        ),
        (
            "shape-bare-cr-in-header",
            good.replace(
                "Subject: [...]" + CRLF, "Subject: [...]\rContent-Type: text/plain" + CRLF, 1
            ),
            "a bare CR in a header hides a second Content-Type",
        ),
        (
            "shape-nul-in-header",
            good.replace("Subject: [...]", "Subject: [.\x00..]", 1),
            "a NUL byte in a header",
        ),
        (
            "shape-line-without-colon",
            good.replace(
                "Subject: [...]" + CRLF,
                "Subject: [...]" + CRLF + "Content-Type multipart/mixed" + CRLF,
                1,
            ),
            "a header line without a colon",
        ),
        (
            "shape-two-mime-versions",
            good.replace(
                "MIME-Version: 1.0" + CRLF,
                "MIME-Version: 1.0" + CRLF + "MIME-Version: 1.0" + CRLF,
                1,
            ),
            "MIME-Version given twice",
        ),
        (
            "shape-top-base64",
            good.replace(top, top + "Content-Transfer-Encoding: base64" + CRLF, 1),
            "the multipart declared base64-encoded",
        ),
        (
            "shape-part-quoted-printable",
            good.replace(
                "Content-Description: OpenPGP encrypted message" + CRLF,
                "Content-Description: OpenPGP encrypted message"
                + CRLF
                + "Content-Transfer-Encoding: quoted-printable"
                + CRLF,
                1,
            ),
            "the data part declared quoted-printable",
        ),
        (
            "shape-part-extra-field",
            good.replace(control_ct, control_ct + "X-Note: " + secret + CRLF, 1),
            "a field other than Content-* in a part",
        ),
        (
            "shape-protocol-other",
            good.replace(
                'protocol="application/pgp-encrypted"', 'protocol="application/pkcs7-mime"', 1
            ),
            "protocol= names another protocol",
        ),
        (
            "shape-param-semicolon",
            good.replace(
                'boundary="XbOuNdArYx"', 'boundary="XbOuNdArYx"; x="a; boundary=EVIL; y=b"', 1
            ),
            "a `;` in a quoted value: some parsers split there and find a second boundary",
        ),
        (
            "shape-param-encoded-word",
            good.replace('boundary="XbOuNdArYx"', 'boundary="XbOuNdArYx"; x="=?utf-8?q?a?="', 1),
            "an RFC 2047 encoded word in a parameter value: some parsers decode it first",
        ),
        (
            "shape-long-line",
            encrypted(CRLF.join([*long_lines[:2], "".join(long_lines[2:-2]), *long_lines[-2:]])),
            "the base64 as one line of over 998 octets: Postfix would break it when it delivers",
        ),
        (
            "shape-long-header-field",
            good.replace("Subject: [...]" + CRLF, "X-Long: " + "x " * 35000 + CRLF, 1),
            "a header field of 70 kB: Postfix would cut it",
        ),
    ]
    for name, data, about in cases:
        add(name, data, about, 523, 523)
    sj = securejoin("vc-request", "Secure-Join: vc-request")
    sj_cases: list[tuple[str, str, str]] = [
        (
            "shape-securejoin-two-headers",
            sj.replace(
                "Secure-Join: vc-request" + CRLF,
                "Secure-Join: vc-request" + CRLF + "Secure-Join: vg-request" + CRLF,
                1,
            ),
            "two Secure-Join headers",
        ),
        (
            "shape-securejoin-preamble",
            sj.replace(CRLF * 2 + "--XbOuNdArYx", CRLF * 2 + secret + CRLF + "--XbOuNdArYx", 1),
            "cleartext in the preamble of a Secure-Join request",
        ),
        (
            "shape-securejoin-epilogue",
            sj + secret + CRLF,
            "cleartext in the epilogue of a Secure-Join request",
        ),
        (
            "shape-securejoin-base64-part",
            sj.replace(
                "Content-Type: text/plain" + CRLF,
                "Content-Type: text/plain" + CRLF + "Content-Transfer-Encoding: base64" + CRLF,
                1,
            ),
            "the request text declared base64",
        ),
    ]
    for name, data, about in sj_cases:
        add(name, data, about, 523, 523)


def build_deltachat() -> None:
    """Real mail of Delta Chat core 2.65, as delivered by a lab relay (../deltachat/)."""
    source = OUT.parent / "deltachat"
    envelope = {"mail_from": "z99hewv2z@_relay2.test", "rcpts": ["1k33ag36z@relay1.test"]}
    for name, about in [
        ("encrypted-text", "a 1:1 text message"),
        (
            "securejoin-vc-request",
            "the Secure-Join request, symmetrically encrypted with the QR secret",
        ),
    ]:
        add(
            f"deltachat-{name}",
            (source / f"{name}.eml").read_bytes(),
            f"Delta Chat core 2.65: {about}",
            ACCEPT,
            ACCEPT,
            **envelope,
        )


GITATTRIBUTES = """\
# SMTP data is CRLF (a few files are deliberately LF-only or binary): git must not convert.
*.eml -text
"""


def toml_value(value: object) -> str:
    return json.dumps(value)  # JSON strings, numbers and arrays of them are valid TOML


def manifest() -> str:
    out = [
        "# The filtermail corpus: which verdict each message gets (doc/encryption-gate.md §2).",
        "# Generated by ../make_corpus.py; edit that, not this.",
        "#",
        '# outgoing / incoming: "accept" or the reply code; a missing key means not tested.',
        "# mail_from, rcpts: the envelope (defaults below); enforcing: the recipients whose",
        "# mailbox has enforceE2EEincoming (default: every recipient, as for accounts since",
        "# 1.6.0); envelope: the sender check_incoming returns (default: mail_from).",
        "",
        "[defaults]",
        f"mail_from = {toml_value(ALICE)}",
        f"rcpts = {toml_value([BOB])}",
    ]
    for case in CASES:
        out += [
            "",
            "[[case]]",
            f"name = {toml_value(case.name)}",
            f"file = {toml_value(case.file)}",
        ]
        out.append(f"about = {toml_value(case.about)}")
        for key, value in [("outgoing", case.outgoing), ("incoming", case.incoming)]:
            if value is not None:
                out.append(f"{key} = {toml_value(value)}")
        out += [f"{key} = {toml_value(value)}" for key, value in case.env.items()]
    return "\n".join(out) + "\n"


def main() -> None:
    if "--fresh" in sys.argv[1:] or not (OUT / "enc-bob.eml").exists():
        with gnupg_home() as home:
            bob = build_encrypted(gnupg_armorer(home))
    else:
        bob = build_encrypted(kept_armor)
    build_valid_variants(bob)
    build_mime_near_misses(bob)
    build_armor_near_misses(bob)
    build_packet_variants(bob)
    build_securejoin()
    build_autocrypt_setup()
    build_reports()
    build_cleartext()
    build_malformed(bob)
    build_one_reading(bob)
    build_deltachat()
    if OUT.exists():
        for old in OUT.glob("*.eml"):
            old.unlink()
    OUT.mkdir(exist_ok=True)
    for name, data in FILES.items():
        (OUT / f"{name}.eml").write_bytes(data)
    (OUT / "verdicts.toml").write_text(manifest(), encoding="utf-8")
    (OUT / ".gitattributes").write_text(GITATTRIBUTES, encoding="utf-8")
    print(f"{len(FILES)} files, {len(CASES)} cases in {OUT}")


if __name__ == "__main__":
    main()
