"""Property tests of the encryption gate (doc/encryption-gate.md §2), generated with Hypothesis.

1. Hostile bytes (random, built from mail fragments, or spliced into the .eml corpus) make the
   gate raise nothing but `Reject`, and the classifications never raise at all.
2. Random MIME trees are judged encrypted exactly when an independent oracle, written from
   §2.2, finds the one shape of strict RFC 3156 PGP/MIME.
3. Random well-formed OpenPGP packet streams are judged encrypted exactly when §2.3 says so
   (and every one of the 64 tags is tried in every position); truncation or trailing bytes
   always break a valid stream; armor around a stream changes nothing but what §2.3 says it
   changes.

The runs are derandomized (the same examples every time, no example database), so a failure in
CI reproduces locally. `--hypothesis-show-statistics` shows how the verdicts are spread.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from functools import partial
from pathlib import Path

from hypothesis import event, find, given, settings
from hypothesis import strategies as st

from chatmaild import openpgp
from chatmaild.mailcheck import (
    Reject,
    check_incoming,
    check_outgoing,
    from_address,
    is_autocrypt_setup_message,
    is_encrypted,
    is_mailer_daemon_report,
    is_securejoin_request,
    parse_message,
)

CORPUS = Path(__file__).parent / "data" / "mail"
ENC_BOB = (CORPUS / "enc-bob.eml").read_bytes()
# enc-bob first: a failing example shrinks towards the simplest valid message.
SEEDS = [ENC_BOB] + [
    p.read_bytes() for p in sorted(CORPUS.glob("*.eml")) if p.name != "enc-bob.eml"
]
ALICE = "alice@example.org"
BOB = "bob@example.org"
CRLF = b"\r\n"


def _settings(max_examples: int) -> settings:
    """Deterministic and bounded: the same examples on every run, no database, no deadline."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None)


def _always_enforces(rcpt: str) -> bool:
    return True


# --- 1. Hostile bytes never raise anything but Reject -------------------------------------

# Fragments that steer random bytes into the parser's interesting corners.
FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"From: alice@example.org\r\n",
    b'From: "A" <alice@example.org>, bob@example.org\r\n',
    b"From: =?utf-8?q?=C3=A4?= <alice@example.org>\r\n",
    b"From: MAILER-DAEMON@example.org\r\n",
    b"From: \xff\xfe@example.org\r\n",
    b"From:\r\n (comment\r\n",
    b"Subject: Autocrypt Setup Message\r\n",
    b"Secure-Join: vc-request\r\n",
    b"Auto-Submitted: auto-replied\r\n",
    b"MIME-Version: 1.0\r\n",
    b"Content-Type: multipart/encrypted; boundary=b\r\n",
    b'Content-Type: multipart/mixed; boundary="b"\r\n',
    b"Content-Type: multipart/report; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/plain; charset=idna\r\n",
    b"Content-Type: text/plain; charset*=utf-8''%FF\r\n",
    b"Content-Type: text/plain; charset*0*=x; charset*1=y\r\n",
    b'Content-Type: application/pgp-encrypted; charset="utf-32"\r\n',
    b"Content-Type: application/octet-stream; charset=unknown-8bit\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"--b\r\n",
    b"--b--\r\n",
    b"Version: 1\r\n",
    b"secure-join: vc-request\r\n",
    openpgp.ARMOR_BEGIN,
    openpgp.ARMOR_END,
    b"=ILPN\r\n",
    b"hF4DnFzN+UzYaT0SAQdA\r\n",
    b"\xc3\xa4\xff\x80\x00",
    b"=?utf-8?b?/w==?=",
    b":",
    b" ",
    b"\t",
]

mailish_bytes = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=12)), max_size=24
).map(b"".join)
hostile_bytes = st.one_of(st.binary(max_size=600), mailish_bytes)
envelope_addr = st.one_of(
    st.sampled_from([ALICE, "ALICE@Example.ORG", BOB, "", "mailer-daemon@example.org"]),
    st.text(max_size=20),
)


@st.composite
def spliced_corpus(draw: st.DrawFn) -> bytes:
    """A corpus message (enc-bob.eml most of all) with a few spans replaced by other bytes."""
    data = draw(st.one_of(st.just(ENC_BOB), st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(data)))
        end = draw(st.integers(start, min(len(data), start + 80)))
        replacement = draw(st.one_of(st.binary(max_size=16), st.sampled_from(FRAGMENTS)))
        data = data[:start] + replacement + data[end:]
    return data


def _classifications_never_raise(msg: Message) -> None:
    for outgoing in (True, False):
        assert isinstance(is_encrypted(msg, outgoing), bool)
    assert isinstance(is_securejoin_request(msg), bool)
    for addr in (ALICE, "MAILER-DAEMON@example.org", "", "@", "no-at"):
        assert isinstance(is_autocrypt_setup_message(msg, addr, [addr]), bool)
        assert isinstance(is_mailer_daemon_report(msg, addr), bool)


def _gate_raises_only_reject(mail_from: str, rcpts: list[str], data: bytes) -> None:
    """Every entry point on `data`: a verdict or `Reject`; anything else fails the test."""
    try:
        check_outgoing(mail_from, rcpts, data)
    except Reject as e:
        assert e.code in (500, 523)
    try:
        envelope = check_incoming(mail_from, rcpts, data, _always_enforces).envelope_sender
    except Reject as e:
        assert e.code in (500, 523)
    else:
        assert envelope in (mail_from, "")
    try:
        msg = parse_message(data)
    except Reject as e:
        assert e.code == 500
        return
    _classifications_never_raise(msg)
    try:
        addr = from_address(msg)
    except Reject as e:
        assert e.code == 500
    else:
        assert isinstance(is_mailer_daemon_report(msg, addr), bool)


def _openpgp_never_raises(data: bytes) -> None:
    for allow in (True, False):
        decoded = openpgp.decode_armor(data, allow)
        assert decoded is None or isinstance(decoded, bytes | bytearray)
        assert isinstance(openpgp.is_armored_encrypted_message(data, allow), bool)
    assert isinstance(openpgp.is_encrypted_packet_stream(data), bool)


@_settings(300)
@given(data=hostile_bytes, mail_from=envelope_addr, rcpts=st.lists(envelope_addr, max_size=3))
def test_hostile_bytes_only_reject(data: bytes, mail_from: str, rcpts: list[str]) -> None:
    _gate_raises_only_reject(mail_from, rcpts, data)
    _openpgp_never_raises(data)


@_settings(300)
@given(data=spliced_corpus())
def test_spliced_corpus_only_reject(data: bytes) -> None:
    _gate_raises_only_reject(ALICE, [BOB], data)
    _gate_raises_only_reject(ALICE, [ALICE], data)


# The armor of enc-bob.eml, and a splice point inside it.
_ARMOR_AT = ENC_BOB.index(openpgp.ARMOR_BEGIN)
_ARMOR_END_AT = ENC_BOB.index(openpgp.ARMOR_END) + len(openpgp.ARMOR_END)
BOB_ARMOR = ENC_BOB[_ARMOR_AT:_ARMOR_END_AT]
BOB_PACKETS = openpgp.decode_armor(BOB_ARMOR, allow_version_header=False) or b""


@_settings(300)
@given(
    start=st.integers(0, len(BOB_ARMOR)),
    length=st.integers(0, 40),
    replacement=st.one_of(st.binary(max_size=16), st.sampled_from(FRAGMENTS)),
    inner=st.binary(max_size=200),
)
def test_spliced_armor_never_raises(
    start: int, length: int, replacement: bytes, inner: bytes
) -> None:
    armor = BOB_ARMOR[:start] + replacement + BOB_ARMOR[start + length :]
    _openpgp_never_raises(armor)
    _openpgp_never_raises(openpgp.ARMOR_BEGIN + inner + openpgp.ARMOR_END + CRLF)
    at = start % (len(BOB_PACKETS) + 1)
    _openpgp_never_raises(BOB_PACKETS[:at] + replacement + BOB_PACKETS[at + length :])
    _openpgp_never_raises(BOB_PACKETS + inner)
    message = ENC_BOB[:_ARMOR_AT] + armor + ENC_BOB[_ARMOR_END_AT:]
    _gate_raises_only_reject(ALICE, [BOB], message)


# --- 2. MIME trees: encrypted exactly when the §2.2 oracle says so ------------------------


def _short(body: bytes) -> str:
    return repr(body) if len(body) <= 80 else f"{body[:60]!r}...<{len(body)} bytes>"


@dataclass(frozen=True, repr=False)
class Leaf:
    """A non-multipart part. `ctype` None: no Content-Type header (text/plain by default)."""

    ctype: str | None
    params: str
    body: bytes

    def __repr__(self) -> str:  # a failing example stays readable (armors are up to 27 kB)
        return f"Leaf({self.ctype!r}, {self.params!r}, {_short(self.body)})"


@dataclass(frozen=True)
class Multi:
    """A multipart part with a boundary; the boundary is assigned when rendering."""

    ctype: str
    params: str
    children: tuple[Leaf | Multi, ...]
    preamble: bytes
    epilogue: bytes


Node = Leaf | Multi

# Boundaries are `_b<n>_`, and no generated body contains `_`: a body can never contain a
# delimiter line, so the tree we render is exactly the tree a MIME parser must find.
MULTIPART_TYPES = [
    "multipart/encrypted",
    "Multipart/Encrypted",
    "MULTIPART/ENCRYPTED",
    "multipart/mixed",
    "multipart/signed",
    "multipart/alternative",
    "multipart/report",
]
LEAF_TYPES = [
    "application/pgp-encrypted",
    "Application/PGP-Encrypted",
    "application/octet-stream",
    "APPLICATION/OCTET-STREAM",
    "text/plain",
    "text/html",
    "multipart/encrypted",  # without a boundary: not multipart at all
    "multipart/mixed",
    "application/pgp-signature",
    "application/pgp-keys",
    "application/pgp-encrypted-x",
    "application/octet",
    "message/rfc822",
    "application",  # invalid: counts as text/plain
    "pgp-encrypted",
]
LEAF_PARAMS = ["", '; name="encrypted.asc"', "; charset=us-ascii", '; charset="utf-8"']
MULTI_PARAMS = ["", '; protocol="application/pgp-encrypted"', "; protocol=application/pgp-keys"]
HEADER_NAMES = ["Content-Type: ", "content-type: ", "CONTENT-TYPE:", "Content-type:\t"]

CONTROL_BODIES = [
    b"Version: 1",
    b"Version: 1\r\n",
    b"\r\nVersion: 1\r\n\r\n",
    b"  Version: 1 \t",
    b"\x0bVersion: 1\x0c",
    b"Version: 2",
    b"Version:1",
    b"version: 1",
    b"VERSION: 1",
    b"Version:  1",
    b"Version 1",
    b"Version: 1.0",
    b"Version: 10",
    b"Version: 1\r\nComment: x",
    b"Version: 1\r\n\r\nVersion: 1",
    b"",
]


def _corpus_armors() -> list[bytes]:
    """Every armored block of the corpus (valid or not), and variants doc/encryption-gate.md §2.3
    cares about."""
    pattern = re.compile(rb"(?is)-----begin pgp[^\r\n]*.*?-----end pgp[^\r\n]*-----")
    found = sorted({m.group(0) for seed in SEEDS for m in pattern.finditer(seed)})
    armors = [BOB_ARMOR] + [a for a in found if b"_" not in a and a != BOB_ARMOR]
    version = BOB_ARMOR.replace(CRLF, CRLF + b"Version: GnuPG v2" + CRLF, 1)
    return [*armors, version, BOB_ARMOR + CRLF * 3, CRLF + BOB_ARMOR, BOB_ARMOR + b" "]


ARMORS = _corpus_armors()


def _armor(index: int) -> bytes:
    return ARMORS[index]


# By index: a strategy's repr lists its elements, and some armors are large.
armors = st.integers(0, len(ARMORS) - 1).map(_armor)
TEXT_LINE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="_"),
    max_size=30,
).map(lambda s: s.encode("ascii"))
text_body = st.lists(TEXT_LINE, max_size=4).map(CRLF.join)
any_body = st.one_of(st.sampled_from(CONTROL_BODIES), armors, text_body)

leaves = st.builds(
    Leaf,
    ctype=st.one_of(st.none(), st.sampled_from(LEAF_TYPES)),
    params=st.sampled_from(LEAF_PARAMS),
    body=any_body,
)


def _multis(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.builds(
        Multi,
        ctype=st.sampled_from(MULTIPART_TYPES),
        params=st.sampled_from(MULTI_PARAMS),
        children=st.lists(children, max_size=4).map(tuple),
        preamble=st.one_of(st.just(b""), text_body),
        epilogue=st.one_of(st.just(b""), text_body),
    )


random_trees = st.recursive(leaves, _multis, max_leaves=8)


def _trimmed(body: bytes) -> bytes:
    """Trimmed as §2.2 means it: spaces, tabs and whole CRLFs at both ends."""
    if body.replace(CRLF, b"").count(b"\r") or body.replace(CRLF, b"").count(b"\n"):
        return body  # a bare CR or LF: nothing is trimmed, so it never equals `Version: 1`
    return body.strip(b" \t\r\n")


GOOD_CONTROL_BODIES = [b for b in CONTROL_BODIES if _trimmed(b) == b"Version: 1"]
GOOD_ARMORS = [a for a in ARMORS if openpgp.is_armored_encrypted_message(a, True)]
# How a part of the valid shape is changed, if at all: "keep" seven times in twelve.
CHANGES = ["keep"] * 7 + ["type", "body", "replace", "wrap", "drop"]


def _changed(draw: st.DrawFn, leaf: Leaf) -> list[Node]:
    change = draw(st.sampled_from(CHANGES))
    if change == "type":
        return [
            Leaf(draw(st.one_of(st.none(), st.sampled_from(LEAF_TYPES))), leaf.params, leaf.body)
        ]
    if change == "body":
        return [Leaf(leaf.ctype, leaf.params, draw(any_body))]
    if change == "replace":
        return [draw(random_trees)]
    if change == "wrap":
        return [Multi(draw(st.sampled_from(MULTIPART_TYPES)), "", (leaf,), b"", b"")]
    if change == "drop":
        return []
    return [leaf]


def _extra_parts(draw: st.DrawFn) -> list[Node]:
    count = draw(st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2]))
    return [draw(st.one_of(leaves, random_trees)) for _ in range(count)]


@st.composite
def near_valid_trees(draw: st.DrawFn) -> Node:
    """The shape of doc/encryption-gate.md §2.2, each piece kept or changed at random: the valid
    case and its near misses are then common, where random trees would almost never be valid."""
    leaf_params = st.sampled_from(LEAF_PARAMS)
    control = Leaf(
        draw(st.sampled_from(["application/pgp-encrypted", "Application/PGP-Encrypted"])),
        draw(leaf_params),
        draw(st.sampled_from(GOOD_CONTROL_BODIES)),
    )
    data = Leaf(
        draw(st.sampled_from(["application/octet-stream", "APPLICATION/OCTET-STREAM"])),
        draw(leaf_params),
        GOOD_ARMORS[draw(st.integers(0, len(GOOD_ARMORS) - 1))],
    )
    pair = [*_changed(draw, control), *_changed(draw, data)]
    if draw(st.integers(0, 9)) == 0:
        pair.reverse()
    children = [*_extra_parts(draw), *pair, *_extra_parts(draw)]
    top = Multi(
        draw(st.sampled_from(MULTIPART_TYPES[:3] * 3 + MULTIPART_TYPES[3:])),
        draw(st.sampled_from(MULTI_PARAMS)),
        tuple(children),
        draw(st.one_of(st.just(b""), text_body)),
        draw(st.one_of(st.just(b""), text_body)),
    )
    if draw(st.integers(0, 9)) == 0:  # the valid shape one level down
        return Multi("multipart/mixed", "", (top,), b"", b"")
    return top


# Three near misses to one random tree.
mime_trees = st.integers(0, 3).flatmap(lambda i: random_trees if i == 0 else near_valid_trees())


def _render(node: Node, boundaries: list[int]) -> tuple[bytes, bytes]:
    """The part's header lines and its body, CRLF throughout."""
    if isinstance(node, Leaf):
        assert b"_" not in node.body, "a body must not be able to hold a delimiter"
        if node.ctype is None:
            return b"Content-Description: no type\r\n", node.body
        return f"Content-Type: {node.ctype}{node.params}\r\n".encode(), node.body
    boundary = f"_b{len(boundaries)}_".encode()
    boundaries.append(len(boundaries))
    header = f'Content-Type: {node.ctype}{node.params}; boundary="{boundary.decode()}"\r\n'
    body = node.preamble + CRLF if node.preamble else b""
    for child in node.children:
        child_headers, child_body = _render(child, boundaries)
        # The CRLF before a delimiter belongs to the delimiter (RFC 2046 §5.1.1).
        body += b"--" + boundary + CRLF + child_headers + CRLF + child_body + CRLF
    body += b"--" + boundary + b"--" + CRLF + node.epilogue
    return header.encode(), body


def render_message(top: Node, header_name: str) -> bytes:
    headers, body = _render(top, [])
    headers = headers.replace(b"Content-Type: ", header_name.encode(), 1)
    envelope = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: tree\r\nMIME-Version: 1.0\r\n"
    return envelope.encode() + headers + CRLF + body


def _effective_type(leaf: Leaf) -> str:
    return "text/plain" if leaf.ctype is None else leaf.ctype.lower()


def _blank(text: bytes) -> bool:
    return text.replace(CRLF, b"") == b""


def oracle_encrypted(top: Node, outgoing: bool) -> bool:
    """§2.2, read directly: multipart/encrypted (protocol, if named, pgp-encrypted) with a
    blank preamble and epilogue, holding exactly two non-multipart parts, the first
    application/pgp-encrypted with body `Version: 1` (trimmed), the second
    application/octet-stream holding an armored encrypted OpenPGP message."""
    if not isinstance(top, Multi) or top.ctype.lower() != "multipart/encrypted":
        return False
    if "pgp-keys" in top.params or not _blank(top.preamble) or not _blank(top.epilogue):
        return False
    if len(top.children) != 2:
        return False
    control, data = top.children
    if not isinstance(control, Leaf) or not isinstance(data, Leaf):
        return False
    return (
        _effective_type(control) == "application/pgp-encrypted"
        and _trimmed(control.body) == b"Version: 1"
        and _effective_type(data) == "application/octet-stream"
        and openpgp.is_armored_encrypted_message(data.body, allow_version_header=not outgoing)
    )


def _verdict(check: Callable[[], object]) -> bool:
    try:
        check()
    except Reject as e:
        assert e.code == 523
        return False
    return True


@_settings(800)
@given(top=mime_trees, header_name=st.sampled_from(HEADER_NAMES))
def test_mime_tree_encrypted_iff_oracle(top: Node, header_name: str) -> None:
    data = render_message(top, header_name)
    msg = parse_message(data)
    for outgoing in (True, False):
        expected = oracle_encrypted(top, outgoing)
        event(f"{'outgoing' if outgoing else 'incoming'} encrypted: {expected}")
        assert is_encrypted(msg, outgoing) == expected
    assert not is_securejoin_request(msg)
    assert _verdict(lambda: check_outgoing(ALICE, [BOB], data)) == oracle_encrypted(top, True)
    accepted_incoming = _verdict(lambda: check_incoming(ALICE, [BOB], data, _always_enforces))
    assert accepted_incoming == oracle_encrypted(top, False)


def test_mime_tree_generator_reaches_valid_pgp_mime() -> None:
    """The oracle is not vacuous: the generated trees include valid PGP/MIME, both ways."""
    for outgoing in (True, False):
        top = find(
            mime_trees, partial(oracle_encrypted, outgoing=outgoing), settings=_settings(2000)
        )
        assert is_encrypted(parse_message(render_message(top, HEADER_NAMES[0])), outgoing)


# --- 3. Packet streams: encrypted iff session-key packets then one SEIPD ------------------

SESSION_KEY_TAGS = (1, 3)
TAGS = [1, 3, 18, 20, 2, 11, 8, 9, 0, 4, 14, 60, 63]


@dataclass(frozen=True)
class Stream:
    tags: tuple[int, ...]
    data: bytes
    ends: tuple[int, ...]  # the packet boundaries: 0, then where each packet ends
    partial: tuple[bool, ...]  # which packets have partial lengths

    @property
    def encrypted(self) -> bool:
        """§2.3 for a well-formed stream: partial lengths only on the SEIPD."""
        partial_elsewhere = any(p for t, p in zip(self.tags, self.partial, strict=True) if t != 18)
        return oracle_stream(self.tags) and not partial_elsewhere


def _new_length(draw: st.DrawFn) -> tuple[bytes, int]:
    """A definite new-format length field and the body length it announces."""
    form = draw(st.sampled_from(["one", "two", "five"]))
    if form == "one":
        n = draw(st.integers(0, 191))
        return bytes([n]), n
    if form == "two":
        n = draw(st.integers(192, 8383))
        return bytes([((n - 192) >> 8) + 192, (n - 192) & 0xFF]), n
    n = draw(st.integers(0, 9000))
    return b"\xff" + n.to_bytes(4, "big"), n


@st.composite
def packet(draw: st.DrawFn, tag: int, last: bool) -> tuple[bytes, bool]:
    """One well-formed packet with tag `tag`, in any header format it can have; whether its
    length is partial."""
    fill = bytes([draw(st.integers(0, 255))])
    old_forms = ["old0", "old1", "old2"] + (["old3"] if last else [])
    form = draw(st.sampled_from(["new", "partial", *(old_forms if tag < 16 else [])]))
    if form == "new":
        length, n = _new_length(draw)
        return bytes([0xC0 | tag]) + length + fill * n, False
    if form == "partial":
        out = bytes([0xC0 | tag])
        for k in draw(st.lists(st.integers(0, 10), min_size=1, max_size=3)):
            out += bytes([224 + k]) + fill * (1 << k)
        length, n = _new_length(draw)
        return out + length + fill * n, True
    length_type = int(form[-1])
    ctb = bytes([0x80 | tag << 2 | length_type])
    if length_type == 3:  # indeterminate: the body runs to the end of the data
        return ctb + fill * draw(st.integers(0, 300)), False
    n = draw(st.integers(0, (0xFF, 9000, 9000)[length_type]))
    return ctb + n.to_bytes(1 << length_type, "big") + fill * n, False


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    if draw(st.booleans()):
        tags = draw(st.lists(st.sampled_from(TAGS), max_size=5))
    else:  # the valid shape, or it with one tag put in or replaced
        tags = [*draw(st.lists(st.sampled_from(SESSION_KEY_TAGS), max_size=3)), 18]
        change = draw(st.sampled_from(["none", "insert", "replace"]))
        at = draw(st.integers(0, len(tags) - (change == "replace")))
        if change == "insert":
            tags.insert(at, draw(st.sampled_from(TAGS)))
        elif change == "replace":
            tags[at] = draw(st.sampled_from(TAGS))
    data, ends, partial = b"", [0], []
    for i, tag in enumerate(tags):
        octets, is_partial = draw(packet(tag, last=i == len(tags) - 1))
        data += octets
        ends.append(len(data))
        partial.append(is_partial)
    return Stream(tuple(tags), data, tuple(ends), tuple(partial))


def oracle_stream(tags: tuple[int, ...]) -> bool:
    """§2.3 for a stream of definite lengths: session-key packets, then SEIPD at the end."""
    return bool(tags) and tags[-1] == 18 and all(t in SESSION_KEY_TAGS for t in tags[:-1])


@_settings(400)
@given(stream=streams(), cut=st.integers(1, 10_000), trailer=st.binary(min_size=1, max_size=8))
def test_packet_stream_encrypted_iff_oracle(stream: Stream, cut: int, trailer: bytes) -> None:
    expected = stream.encrypted
    event(f"stream encrypted: {expected}")
    assert openpgp.is_encrypted_packet_stream(stream.data) == expected
    if not expected:
        return
    # Any truncation breaks a valid stream: near each packet boundary, and one at random.
    cuts = {len(stream.data) - min(cut, len(stream.data))}
    for end in stream.ends:
        cuts.update(p for p in range(end - 2, end + 3) if 0 <= p < len(stream.data))
    for prefix in sorted(cuts):
        assert not openpgp.is_encrypted_packet_stream(stream.data[:prefix]), prefix
    # So do trailing bytes: the SEIPD no longer ends the data.
    assert not openpgp.is_encrypted_packet_stream(stream.data + trailer)


def test_every_tag_in_every_position() -> None:
    """All 64 tags (old format too, where a tag fits), alone, before, among and after the
    valid shape: the sampled tags above cannot cover every tag everywhere."""
    for tag in range(64):
        for tags in ((tag,), (tag, 18), (1, tag, 18), (3, 1, tag, 18), (1, 18, tag), (tag, tag)):
            new_format = b"".join(bytes([0xC0 | t, 1, 0x2A]) for t in tags)
            assert openpgp.is_encrypted_packet_stream(new_format) == oracle_stream(tags), tags
            if tag < 16:
                mixed = b"".join(
                    bytes([0x80 | t << 2, 1, 0x2A]) if t == tag else bytes([0xC0 | t, 1, 0x2A])
                    for t in tags
                )
                assert openpgp.is_encrypted_packet_stream(mixed) == oracle_stream(tags), tags


def _crc24(data: bytes) -> int:
    """The armor checksum of RFC 4880 §6.1."""
    crc = 0xB704CE
    for octet in data:
        crc ^= octet << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


@_settings(150)
@given(
    stream=streams(),
    width=st.sampled_from([64, 76, 4, 1000]),
    version=st.booleans(),
    blank=st.booleans(),
    crc=st.booleans(),
    trailing=st.integers(0, 3),
)
def test_armored_stream_judged_like_stream(
    stream: Stream, width: int, version: bool, blank: bool, crc: bool, trailing: int
) -> None:
    text = base64.b64encode(stream.data)
    lines = [text[i : i + width] for i in range(0, len(text), width)]
    if crc:
        lines.append(b"=" + base64.b64encode(_crc24(stream.data).to_bytes(3, "big")))
    armor = openpgp.ARMOR_BEGIN + CRLF
    armor += b"Version: GnuPG v2\r\n" if version else b""
    armor += CRLF if blank else b""
    armor += b"".join(line + CRLF for line in lines) + openpgp.ARMOR_END + CRLF * trailing
    for allow in (True, False):
        # §2.3: the blank line is required, the checksum line optional, the Version header
        # allowed incoming only; the base64 padding is part of the data either way.
        expected = stream.encrypted and (allow or not version) and blank
        assert openpgp.is_armored_encrypted_message(armor, allow) == expected
