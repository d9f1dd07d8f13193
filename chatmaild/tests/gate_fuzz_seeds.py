"""The seeds of the gate fuzzer: valid messages that the mutations of gate_fuzz_*.py start from.

Test-only; part of the fuzzer of gate_fuzz.py. Two sources: the corpus messages the gate
accepts (chatmaild/tests/data/mail, verdicts.toml), and valid messages generated here, each
in a shape of doc/encryption-gate.md 2.2-2.4: PGP/MIME encrypted messages around a random
packet stream armored by gate_fuzz_openpgp.py, and the cleartext exceptions of 2.4 (Secure-Join
requests, the Autocrypt Setup Message, delivery reports). Everything is deterministic from the
run seed.
"""

from __future__ import annotations

import random
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gate_fuzz_openpgp import CRLF, armor, gen_stream
from gate_oracle import THUNDERBIRD

CORPUS = Path(__file__).parent / "data" / "mail"
DIRECTIONS = ("outgoing", "incoming")
ALICE, BOB = "alice@example.org", "bob@example.org"


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    mail_from: str = ALICE
    rcpts: tuple[str, ...] = (BOB,)


# --- seeds from the corpus


def corpus_seeds() -> list[Seed]:
    """Every corpus message accepted in a direction, with its envelope; cases that depend on
    a recipient without enforceE2EEincoming are left out (here every recipient enforces)."""
    verdicts = tomllib.loads((CORPUS / "verdicts.toml").read_text(encoding="utf-8"))
    defaults = verdicts["defaults"]
    seeds, seen = [], set()
    for case in verdicts["case"]:
        accepted = [d for d in DIRECTIONS if case.get(d) == "accept"]
        if not accepted or "enforcing" in case or case["file"] in seen:
            continue
        seen.add(case["file"])
        seed = Seed(
            case["name"],
            (CORPUS / case["file"]).read_bytes(),
            case.get("mail_from", defaults["mail_from"]),
            tuple(case.get("rcpts", defaults["rcpts"])),
        )
        seeds.append(seed)
    return seeds


# --- generated MIME messages, each in a shape of 2.2-2.4

BCHARS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=? "
TOKEN_CHARS = re.compile(rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")


def gen_boundary(rng: random.Random) -> tuple[bytes, bytes]:
    """A boundary and its parameter value (quoted or a token). No leading "-": a boundary of
    dashes would make "-----BEGIN" a delimiter-like line (2.2)."""
    size = rng.choice((1, 2, 10, 16, 32, 69, 70, rng.randrange(1, 71)))
    chars = bytes(rng.choice(BCHARS) for _ in range(size)).replace(b" ", b"_")
    if rng.random() < 0.3 and size > 2:  # a space inside, not at the end
        chars = chars[:1] + b" " + chars[2:]
    chars = chars.lstrip(b"-") or b"b"
    quoted = TOKEN_CHARS.fullmatch(chars) is None or rng.random() < 0.5
    return chars, (b'"' + chars + b'"' if quoted else chars)


def gen_headers(rng: random.Random, from_: bytes = ALICE.encode()) -> list[bytes]:
    displays = (b"", b"Alice ", b'"Alice Liddell" ', b"")
    sender = from_ if rng.random() < 0.5 else rng.choice(displays) + b"<" + from_ + b">"
    lines = [
        b"From: " + sender,
        b"To: " + BOB.encode(),
        b"Subject: " + rng.choice((b"[...]", b"Hi", b"=?utf-8?q?x?=")),
        b"Date: Thu, 01 Jan 2026 12:00:00 +0000",
        b"Message-ID: <gen" + str(rng.randrange(10**6)).encode() + b"@example.org>",
    ]
    extras = [
        b"MIME-Version: 1.0",
        b"Chat-Version: 1.0",
        b"Received: from a by b;\r\n\tThu, 01 Jan 2026 12:00:00 +0000",
        b"Received: from c by d; Thu, 01 Jan 2026 12:00:00 +0000",
        b"Autocrypt: addr=alice@example.org; prefer-encrypt=mutual;\r\n keydata=AAAA",
        b"X-Mailer: gate_fuzz",
    ]
    lines += [x for x in extras if rng.random() < 0.5]
    rng.shuffle(lines)
    return lines


def ows(rng: random.Random) -> bytes:
    return rng.choice((b"", b"", b" ", b"\t", b"  "))


def gen_content_type(rng: random.Random, ctype: bytes, params: list[bytes]) -> bytes:
    """`Content-Type: ctype; params` with random case of the type, order and spacing."""
    ctype = rng.choice((ctype, ctype.upper(), ctype.title()))
    params = list(params)
    rng.shuffle(params)
    value = ctype + b"".join(
        ows(rng) + b";" + rng.choice((b" ", b"", b"\r\n ")) + p for p in params
    )
    return b"Content-Type: " + value


def gen_part(
    rng: random.Random, ctype: bytes, params: list[bytes], body: bytes, encodings: Sequence[bytes]
) -> bytes:
    """A part with the fields 2.2 allows, each at most once, in random order and case."""
    fields = [gen_content_type(rng, ctype, params)]
    if rng.random() < 0.5:
        fields.append(b"Content-Description: " + rng.choice((b"PGP/MIME", b"x y", b"\xc3\xa9")))
    if rng.random() < 0.3:
        fields.append(
            b"Content-Disposition: " + rng.choice((b"inline", b'attachment; filename="a"'))
        )
    if rng.random() < 0.4:
        fields.append(b"Content-Transfer-Encoding: " + rng.choice(encodings))
    rng.shuffle(fields)
    case = rng.randrange(3)
    for i, line in enumerate(fields):
        name, value = line.split(b":", 1)
        fields[i] = (name.lower(), name.upper(), name)[case] + b":" + value
    return CRLF.join(fields) + CRLF + CRLF + body


def gen_multipart(
    rng: random.Random, boundary: bytes, parts: list[bytes], preamble: bytes
) -> bytes:
    body = preamble + b"".join(b"--" + boundary + CRLF + p + CRLF for p in parts)
    return body + b"--" + boundary + b"--" + CRLF * rng.choice((0, 1, 1, 2))


def gen_encrypted(rng: random.Random, incoming: bool) -> bytes:
    boundary, value = gen_boundary(rng)
    params = [b"boundary=" + value]
    if rng.random() < 0.7:
        params.append(b'protocol="application/pgp-encrypted"')
    if rng.random() < 0.2:
        params.append(b"charset=utf-8")
    head = gen_headers(rng)
    head.append(gen_content_type(rng, b"multipart/encrypted", params))
    if rng.random() < 0.3:
        head.append(b"Content-Transfer-Encoding: " + rng.choice((b"7bit", b"8bit")))
    pad = [b" ", b"\t", CRLF, b""]
    version = b"".join(rng.choices(pad, k=rng.randrange(3))) + b"Version: 1"
    version += b"".join(rng.choices(pad, k=rng.randrange(3))) + rng.choice((CRLF, b""))
    armored = armor(rng, gen_stream(rng), version=incoming and rng.random() < 0.5)
    name = [b'name="encrypted.asc"'] if rng.random() < 0.5 else []
    parts = [
        gen_part(rng, b"application/pgp-encrypted", [], version, [b"7bit"]),
        gen_part(
            rng, b"application/octet-stream", name, armored + CRLF * rng.randrange(3), [b"7bit"]
        ),
    ]
    preamble = rng.choice((b"", CRLF, CRLF * 2, THUNDERBIRD))
    return CRLF.join(head) + CRLF + CRLF + gen_multipart(rng, boundary, parts, preamble)


def gen_securejoin(rng: random.Random) -> bytes:
    boundary, value = gen_boundary(rng)
    head = [*gen_headers(rng), b"Secure-Join: " + rng.choice((b"vc-request", b"vg-request"))]
    head.append(gen_content_type(rng, b"multipart/mixed", [b"boundary=" + value]))
    step = rng.choice((b"Secure-Join: vc-request", b"secure-join: VG-REQUEST"))
    text = rng.choice((b"", CRLF, b"  ")) + step + rng.choice((b"", CRLF, b" \t" + CRLF))
    params = [p for p in (b"charset=utf-8", b"format=flowed") if rng.random() < 0.4]
    part = gen_part(rng, b"text/plain", params, text, [b"7bit", b"8bit"])
    return (
        CRLF.join(head)
        + CRLF
        + CRLF
        + gen_multipart(rng, boundary, [part], CRLF * rng.randrange(2))
    )


def gen_setup_message(rng: random.Random) -> bytes:
    boundary, value = gen_boundary(rng)
    head = [h for h in gen_headers(rng) if not h.startswith(b"Subject")]
    head += [b"Subject: Autocrypt Setup Message", b"Autocrypt-Setup-Message: v1"]
    head.append(gen_content_type(rng, b"multipart/mixed", [b"boundary=" + value]))
    parts = [
        b"Content-Type: text/plain\r\n\r\nSetup",
        b"Content-Type: application/autocrypt-setup\r\n\r\n" + armor(rng, rng.randbytes(40)),
    ]
    return CRLF.join(head) + CRLF + CRLF + gen_multipart(rng, boundary, parts, b"")


def gen_report(rng: random.Random) -> bytes:
    boundary, value = gen_boundary(rng)
    daemon = rng.choice((b"MAILER-DAEMON", b"mailer-daemon", b"Mailer-Daemon"))
    sender = rng.choice((b"%s@peer.example (Mail Delivery System)", b"System <%s@peer.example>"))
    head = [h for h in gen_headers(rng) if not h.startswith(b"From")]
    head += [b"From: " + sender.replace(b"%s", daemon), b"Auto-Submitted: auto-replied"]
    params = [b"report-type=delivery-status", b"boundary=" + value]
    head.append(gen_content_type(rng, b"multipart/report", params))
    parts = [
        b"Content-Type: text/plain\r\n\r\nIt bounced.",
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; peer.example",
    ]
    return CRLF.join(head) + CRLF + CRLF + gen_multipart(rng, boundary, parts, b"")


def generated_seeds(seed: int, count: int = 40) -> list[Seed]:
    """`count` valid messages from run seed `seed`: three of each cleartext exception of 2.4,
    the rest encrypted (2.2), every third of those with a Version armor header (incoming)."""
    rng = random.Random(f"generated-{seed}")
    seeds = []
    for i in range(3):
        rcpt = rng.choice((ALICE, ALICE.upper()))  # 1.2: the same local address
        seeds += [
            Seed(f"gen-securejoin-{i}", gen_securejoin(rng)),
            Seed(f"gen-setup-message-{i}", gen_setup_message(rng), rcpts=(rcpt,)),
            Seed(f"gen-report-{i}", gen_report(rng)),
        ]
    for i in range(count - len(seeds)):
        incoming = i % 3 == 2
        name = f"gen-encrypted-{i}" + ("-incoming" if incoming else "")
        seeds.append(Seed(name, gen_encrypted(rng, incoming)))
    return seeds


_SEEDS: dict[int, list[Seed]] = {}


def all_seeds(seed: int) -> list[Seed]:
    if seed not in _SEEDS:
        _SEEDS[seed] = corpus_seeds() + generated_seeds(seed)
    return _SEEDS[seed]
