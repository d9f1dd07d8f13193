"""The OpenPGP half of the encryption gate: armor and packet walk (relay-spec §4.2, steps 3-4).

filtermail never decrypts and never looks at keys. It only asks whether the body of the
`application/octet-stream` part has the shape of an encrypted OpenPGP message: ASCII armor
around a packet stream of session-key packets (PKESK, SKESK) closed by exactly one
integrity-protected data packet (SEIPD). Everything here is pure, works on bytes, and answers
None/False for any input it does not like; it never raises.

Choices where §4.2 is silent, each the stricter reading:

- Armor headers: only a single `Version: ` line, directly after the BEGIN line, is an armor
  header we know (refused outgoing, skipped incoming). Any other header line (`Comment:`,
  `Charset:`, a second `Version:`) is not base64 and so fails the strict decode in both
  directions, as it does in the reference (a strict base64 decoder).
- The blank line that RFC 4880 puts after the armor headers is optional, because "leading blank
  lines are dropped" (zero or more), which matches the reference.
- The CRC24 is cut off, not verified: a wrong checksum harms only the recipient's own client.
  Without any `=` nothing is cut (RFC 9580 makes the checksum optional).
- base64 is decoded strictly: alphabet only, correct padding, and canonical (the decoded bytes
  must encode back to the same text), which is what a strict decoder such as Rust's does.
- Old-format packets with the indeterminate length (length type 3) are refused: such a packet
  runs "to the end of the data", so it can hide anything, and no tag-18 packet can use the old
  format anyway (old-format tags stop at 15).
- A stream of only a SEIPD (no session-key packet) passes, as the spec's "every packet before
  the last" is then vacuous; partial lengths are walked for any tag, without the RFC's 512-octet
  minimum for the first chunk. Neither can carry cleartext.
"""

from __future__ import annotations

import binascii

ARMOR_BEGIN = b"-----BEGIN PGP MESSAGE-----\r\n"
ARMOR_END = b"-----END PGP MESSAGE-----"
VERSION_HEADER = b"Version: "

TAG_PKESK = 1
TAG_SKESK = 3
TAG_SEIPD = 18
SESSION_KEY_TAGS = frozenset({TAG_PKESK, TAG_SKESK})

_CRLF = b"\r\n"


def decode_armor(body: bytes, allow_version_header: bool) -> bytes | None:
    """The binary OpenPGP data inside an armored `PGP MESSAGE`, or None if the armor is invalid.

    `allow_version_header` is True for incoming mail (the header is skipped) and False for
    outgoing mail (the header makes the message count as not encrypted), spec §4.2 step 3.
    """
    if not body.startswith(ARMOR_BEGIN):
        return None
    inner = body[len(ARMOR_BEGIN) :]
    while inner.endswith(_CRLF):
        inner = inner[: -len(_CRLF)]
    if not inner.endswith(ARMOR_END):
        return None
    inner = inner[: -len(ARMOR_END)]

    if inner.startswith(VERSION_HEADER):
        if not allow_version_header:
            return None
        _header_line, crlf, inner = inner.partition(_CRLF)
        if not crlf:  # the header line runs into END: there is no data at all
            return None
    while inner.startswith(_CRLF):
        inner = inner[len(_CRLF) :]

    equals_at = inner.rfind(b"=")
    if equals_at >= 0:
        inner = inner[:equals_at]  # the CRC24 line "=XXXX" and whatever follows it
    text = inner.replace(b"\r", b"").replace(b"\n", b"")
    return _strict_base64(text)


def _strict_base64(text: bytes) -> bytes | None:
    try:
        data = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return None
    # Canonical form only: refuses stray bits after the last full octet (e.g. "QUJ="), so
    # that one message has one spelling.
    if binascii.b2a_base64(data, newline=False) != text:
        return None
    return data


def _body_length(data: bytes, pos: int) -> tuple[int, int, bool] | None:
    """Decode a new-format length at `pos`: (length, header size, is partial), None if truncated.

    RFC 4880 §4.2.2: one octet below 192, two octets from 192 to 223, 255 and four octets, or
    one octet from 224 to 254 for a partial chunk of 2**(octet & 0x1F) octets.
    """
    if pos >= len(data):
        return None
    first = data[pos]
    if first < 192:
        return first, 1, False
    if first < 224:
        if pos + 1 >= len(data):
            return None
        return ((first - 192) << 8) + data[pos + 1] + 192, 2, False
    if first == 255:
        if pos + 5 > len(data):
            return None
        return int.from_bytes(data[pos + 1 : pos + 5], "big"), 5, False
    return 1 << (first & 0x1F), 1, True


def _new_format_end(data: bytes, pos: int) -> int | None:
    """Where a new-format packet body starting with its length at `pos` ends, None if truncated.

    Partial chunks are walked one by one; the chain must close with a definite length.
    """
    while True:
        decoded = _body_length(data, pos)
        if decoded is None:
            return None
        length, header_size, partial = decoded
        pos += header_size + length
        if pos > len(data):
            return None
        if not partial:
            return pos


def _old_format_end(data: bytes, pos: int, length_type: int) -> int | None:
    """Where an old-format body ends (RFC 4880 §4.2.1); None if truncated or indeterminate."""
    if length_type == 3:
        return None  # indeterminate length: refused, see the module docstring
    size = 1 << length_type  # length types 0, 1, 2 use 1, 2, 4 octets
    if pos + size > len(data):
        return None
    end = pos + size + int.from_bytes(data[pos : pos + size], "big")
    return end if end <= len(data) else None


def is_encrypted_packet_stream(data: bytes) -> bool:
    """Whether `data` is PKESK/SKESK packets followed by one SEIPD that ends the data (§4.2.4)."""
    pos = 0
    while pos < len(data):
        ctb = data[pos]
        if ctb & 0x80 == 0:
            return False  # bit 7 is always set in a packet tag
        if ctb & 0x40:
            tag = ctb & 0x3F
            end = _new_format_end(data, pos + 1)
        else:
            tag = (ctb >> 2) & 0x0F
            end = _old_format_end(data, pos + 1, ctb & 0x03)
        if end is None:
            return False
        if end == len(data):
            return tag == TAG_SEIPD
        if tag not in SESSION_KEY_TAGS:
            return False
        pos = end
    return False  # empty data


def is_armored_encrypted_message(body: bytes, allow_version_header: bool) -> bool:
    """Both steps at once: valid armor around an encrypted packet stream."""
    data = decode_armor(body, allow_version_header)
    return data is not None and is_encrypted_packet_stream(data)
