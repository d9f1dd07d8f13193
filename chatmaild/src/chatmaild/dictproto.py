"""Dovecot's dict protocol, as Dovecot 2.3's `proxy:` dict client speaks it.

Pure codec, no I/O: `parse_request` turns one request line into a typed request, the
`reply_*` functions build reply lines. One request per line, fields separated by TAB, the
first character is the command. Field values are tab-escaped the way Dovecot's
`str_tabescape` does it: \\x01 followed by `0`, `1`, `t`, `r` or `n` stands for NUL, \\x01,
TAB, CR or LF.

Replies: a lookup gets `O<value>` or `N` (not found) or `F` (failure); an iteration gets one
`O<key>TAB<value>` line per row and then one empty line; a commit gets the result character
followed by the transaction id, as Dovecot's own dict server answers (`A` in front for the
asynchronous commit `D`). Begin, set, unset, rollback and hello get no reply.
"""

from __future__ import annotations

from dataclasses import dataclass

_ESCAPES = {"0": "\0", "1": "\x01", "t": "\t", "r": "\r", "n": "\n"}
_UNESCAPES = {"\x01": "\x011", "\0": "\x010", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}


def tabunescape(field: str) -> str:
    if "\x01" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        ch = field[i]
        if ch == "\x01" and i + 1 < len(field):
            out.append(_ESCAPES.get(field[i + 1], field[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def tabescape(value: str) -> str:
    if not any(ch in value for ch in _UNESCAPES):
        return value
    return "".join(_UNESCAPES.get(ch, ch) for ch in value)


class ProtocolError(ValueError):
    """A request line that does not follow the protocol."""


@dataclass(frozen=True, slots=True)
class Hello:
    pass


@dataclass(frozen=True, slots=True)
class Lookup:
    key: str
    user: str


@dataclass(frozen=True, slots=True)
class Iterate:
    flags: int
    max_rows: int
    prefix: str
    user: str


@dataclass(frozen=True, slots=True)
class Begin:
    txid: str
    user: str


@dataclass(frozen=True, slots=True)
class Set:
    txid: str
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Unset:
    txid: str
    key: str


@dataclass(frozen=True, slots=True)
class Commit:
    txid: str
    is_async: bool


@dataclass(frozen=True, slots=True)
class Rollback:
    txid: str


Request = Hello | Lookup | Iterate | Begin | Set | Unset | Commit | Rollback


def _fields(rest: str, at_least: int) -> list[str]:
    parts = [tabunescape(p) for p in rest.split("\t")]
    if len(parts) < at_least:
        raise ProtocolError(f"expected {at_least} fields")
    return parts


def _txid(text: str) -> str:
    if not text.isdigit():
        raise ProtocolError("transaction id is not a number")
    return text


def parse_request(line: str) -> Request:
    """Parse one line (without its LF). Raises ProtocolError for anything malformed."""
    if not line:
        raise ProtocolError("empty line")
    cmd, rest = line[0], line[1:]
    if cmd == "H":
        return Hello()
    if cmd == "L":
        # Dovecot before 2.3.17 sends no user field.
        parts = _fields(rest, 1)
        return Lookup(parts[0], parts[1] if len(parts) > 1 else "")
    if cmd == "I":
        parts = _fields(rest, 3)
        try:
            flags, max_rows = int(parts[0]), int(parts[1])
        except ValueError:
            raise ProtocolError("iterate flags or row limit is not a number") from None
        return Iterate(flags, max_rows, parts[2], parts[3] if len(parts) > 3 else "")
    if cmd == "B":
        parts = _fields(rest, 1)
        return Begin(_txid(parts[0]), parts[1] if len(parts) > 1 else "")
    if cmd == "S":
        parts = _fields(rest, 3)
        return Set(_txid(parts[0]), parts[1], parts[2])
    if cmd == "U":
        parts = _fields(rest, 2)
        return Unset(_txid(parts[0]), parts[1])
    if cmd in ("C", "D"):
        return Commit(_txid(_fields(rest, 1)[0]), is_async=cmd == "D")
    if cmd == "R":
        return Rollback(_txid(_fields(rest, 1)[0]))
    raise ProtocolError("unknown command")


def reply_lookup(value: str | None) -> bytes:
    return b"N\n" if value is None else f"O{tabescape(value)}\n".encode()


REPLY_FAIL = b"F\n"
ITERATION_END = b"\n"


def reply_row(key: str, value: str) -> bytes:
    return f"O{tabescape(key)}\t{tabescape(value)}\n".encode()


def reply_commit(ok: bool, txid: str, is_async: bool) -> bytes:
    return f"{'A' if is_async else ''}{'O' if ok else 'F'}{txid}\n".encode()
