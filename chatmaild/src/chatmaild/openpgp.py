"""The OpenPGP half of the encryption gate: armor and packet walk (doc/encryption-gate.md §2.3).

filtermail never decrypts and never looks at keys. It only asks whether the body of the
`application/octet-stream` part has the shape of an encrypted OpenPGP message: ASCII armor
(RFC 4880 §6.2) around a packet stream of session-key packets (PKESK, SKESK) closed by exactly
one integrity-protected data packet (SEIPD). Everything here is pure, works on bytes, and
answers None/False for any input it does not like; it never raises.

The armor is read line by line against one grammar, so that no text can sit anywhere a reader
would skip it:

    -----BEGIN PGP MESSAGE-----
    [Version: text]          incoming only: other clients write it; any other header is refused
    (exactly one blank line)
    base64 lines             "=" padding only at the end of the last one
    [=XXXX]                  the CRC24 line: "=" and exactly four base64 characters
    -----END PGP MESSAGE-----
    (blank lines only, up to the end of the part)

- The CRC24 is not verified: a wrong checksum harms only the recipient's own client, and
  RFC 9580 makes it optional.
- base64 is decoded strictly: alphabet only, correct padding, and canonical (the decoded bytes
  must encode back to the same text), which is what a strict decoder such as Rust's does.
- Old-format packets with the indeterminate length (length type 3) are refused: such a packet
  runs "to the end of the data", so it can hide anything, and no tag-18 packet can use the old
  format anyway (old-format tags stop at 15).
- A stream of only a SEIPD (no session-key packet) passes, as "every packet before the last"
  is then vacuous. Partial lengths are taken on the SEIPD only, the one data packet here (RFC
  4880 §4.2.2.4 allows them on data packets alone), without the RFC's 512-octet minimum for
  the first chunk, which cannot carry cleartext either way.
"""

from __future__ import annotations

import binascii
import re

ARMOR_BEGIN = b"-----BEGIN PGP MESSAGE-----"
ARMOR_END = b"-----END PGP MESSAGE-----"
VERSION_HEADER = b"Version: "

TAG_PKESK = 1
TAG_SKESK = 3
TAG_SEIPD = 18
SESSION_KEY_TAGS = frozenset({TAG_PKESK, TAG_SKESK})

_CRLF = b"\r\n"
_VERSION_LINE = re.compile(rb"Version: [\x20-\x7e]+\Z")
# How much of an armor is judged in one step (see `_decode_base64_lines`).
WINDOW = 1 << 18
_CHECKSUM_LINE = re.compile(rb"=[A-Za-z0-9+/]{4}\r\n\Z")


def decode_armor(
    body: bytes, allow_version_header: bool, start: int = 0, end: int | None = None
) -> bytes | None:
    """The binary OpenPGP data inside an armored `PGP MESSAGE` in `body[start:end]`, or None if
    the armor is invalid.

    `allow_version_header` is True for incoming mail (one `Version:` header may precede the
    blank line) and False for outgoing mail (no armor header at all). The armor is read in
    place: besides the decoded data, nothing as large as the message is allocated.
    """
    end = len(body) if end is None else end
    if not body.startswith(ARMOR_BEGIN + _CRLF, start, end):
        return None
    pos = start + len(ARMOR_BEGIN) + 2
    if allow_version_header and body.startswith(VERSION_HEADER, pos, end):
        line_end = body.find(_CRLF, pos, end)
        if line_end < 0 or not _VERSION_LINE.match(body, pos, line_end):
            return None
        pos = line_end + 2
    if not body.startswith(_CRLF, pos, end):
        return None  # the one blank line after the armor headers
    region = _base64_region(body, pos + 2, end)
    if region is None:
        return None
    return _decode_base64_lines(body, *region)


def _base64_region(body: bytes, start: int, end: int) -> tuple[int, int] | None:
    """Where the base64 lines lie between the blank line at `start` and the part's `end`:
    after them only the checksum line, the END line and blank lines; None if anything else."""
    while end - 2 >= start and body.startswith(_CRLF, end - 2, end):
        end -= 2  # blank lines after END
    end_line = end - len(ARMOR_END)
    if end_line - 2 < start or not body.startswith(_CRLF + ARMOR_END, end_line - 2, end):
        return None
    data_end = end_line
    before_last = body.rfind(_CRLF, start, end_line - 2)
    last_line = before_last + 2 if before_last >= 0 else start  # the line before END
    if body.startswith(b"=", last_line, end_line):
        if not _CHECKSUM_LINE.match(body, last_line, end_line):
            return None
        data_end = last_line
    return (start, data_end) if data_end > start else None


def _decode_base64_lines(body: bytes, start: int, end: int) -> bytes | None:
    """Decode the base64 lines in `body[start:end]` strictly, a window at a time.

    Every line ends in CRLF and holds base64 characters only, "=" padding only at the end of
    the last line, in the right amount, and no stray bits after the last octet: one message
    has one spelling. Judged `WINDOW` bytes at a time, so that a thread judging a 25 MB armor
    never holds the interpreter for long, and the memory needed is the decoded data alone.
    """
    if body.startswith(_CRLF, start, end) or not body.endswith(_CRLF, start, end):
        return None  # an empty first line, or a last line without CRLF
    first_padding = body.find(b"=", start, end)
    if first_padding >= 0 and (
        body[first_padding:end] not in (b"=\r\n", b"==\r\n")
        or body[first_padding - 1] == ord("\n")  # a line of padding alone
    ):
        return None
    characters = end - start - 2 * body.count(_CRLF, start, end)
    padding = 0 if first_padding < 0 else end - 2 - first_padding
    if characters % 4:
        return None
    decoded = bytearray(characters // 4 * 3 - padding)
    filled, carry, pos, last_group = 0, b"", start, b""
    while pos < end:
        stop = body.find(_CRLF, min(pos + WINDOW, end) - 2, end) + 2  # after a whole line
        window = body[pos:stop]
        if window.startswith(_CRLF) or _CRLF + _CRLF in window:
            return None  # an empty line, within the window or where it starts
        lines = window.replace(_CRLF, b"")
        if b"\r" in lines or b"\n" in lines:
            return None  # a CR or LF that is not part of a CRLF (see mimeparse.has_bare_newline)
        text = carry + lines
        usable = len(text) - len(text) % 4
        try:
            chunk = binascii.a2b_base64(text[:usable], strict_mode=True)
        except binascii.Error:
            return None  # a character outside the alphabet
        decoded[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
        carry, pos = text[usable:], stop
        if usable:
            last_group = text[usable - 4 : usable]
    # Only a padded last group can have stray bits (e.g. "QUJ=" for "AB", which is "QUI=").
    if padding and binascii.b2a_base64(decoded[-(3 - padding) :], newline=False) != last_group:
        return None
    return decoded if filled == len(decoded) else None  # a bytearray: no copy of 3/4 armor


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


def _new_format_end(data: bytes, pos: int, partial_allowed: bool) -> int | None:
    """Where a new-format packet body starting with its length at `pos` ends, None if truncated.

    Partial chunks are walked one by one; the chain must close with a definite length.
    """
    while True:
        decoded = _body_length(data, pos)
        if decoded is None:
            return None
        length, header_size, partial = decoded
        if partial and not partial_allowed:
            return None
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
    """Whether `data` is PKESK/SKESK packets followed by one SEIPD that ends the data."""
    pos = 0
    while pos < len(data):
        ctb = data[pos]
        if ctb & 0x80 == 0:
            return False  # bit 7 is always set in a packet tag
        if ctb & 0x40:
            tag = ctb & 0x3F
            end = _new_format_end(data, pos + 1, partial_allowed=tag == TAG_SEIPD)
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


def is_armored_encrypted_message(
    body: bytes, allow_version_header: bool, start: int = 0, end: int | None = None
) -> bool:
    """Both steps at once: valid armor around an encrypted packet stream."""
    data = decode_armor(body, allow_version_header, start, end)
    return data is not None and is_encrypted_packet_stream(data)
