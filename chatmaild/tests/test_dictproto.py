from __future__ import annotations

import pytest

from chatmaild import dictproto as dp


@pytest.mark.parametrize(
    ("line", "request_"),
    [
        ("H2\t2\t0\tuser\tauth", dp.Hello()),
        ("Lshared/userdb/a@b.org\ta@b.org", dp.Lookup("shared/userdb/a@b.org", "a@b.org")),
        ("Lshared/userdb/a@b.org", dp.Lookup("shared/userdb/a@b.org", "")),  # before 2.3.17
        ("I0\t0\tshared/userdb/", dp.Iterate(0, 0, "shared/userdb/", "")),
        ("I1\t5\tshared/userdb/\tu", dp.Iterate(1, 5, "shared/userdb/", "u")),
        ("B1\tu@b.org", dp.Begin("1", "u@b.org")),
        (
            "S1\tshared/last-login/u@b.org\t1700000000",
            dp.Set("1", "shared/last-login/u@b.org", "1700000000"),
        ),
        ("U7\tpriv/x", dp.Unset("7", "priv/x")),
        ("C1", dp.Commit("1", is_async=False)),
        ("D12", dp.Commit("12", is_async=True)),
        ("R3", dp.Rollback("3")),
        # tab-escaped values: \x01t is TAB, \x01n is LF, \x011 is \x01 itself
        ("S1\tk\ta\x01tb\x01nc\x011", dp.Set("1", "k", "a\tb\nc\x01")),
        ("Lpass\x01rword\tu", dp.Lookup("pass\rword", "u")),
    ],
)
def test_parse(line: str, request_: dp.Request) -> None:
    assert dp.parse_request(line) == request_


@pytest.mark.parametrize(
    "line",
    ["", "Z", "Ix\t0\tp", "I0", "S1\tkey", "Sx\tk\tv", "Cabc", "B", "U1"],
)
def test_malformed(line: str) -> None:
    with pytest.raises(dp.ProtocolError):
        dp.parse_request(line)


@pytest.mark.parametrize("value", ["plain", "tab\there", "nl\nx", "cr\rx", "\x01", "nul\0x", ""])
def test_escape_round_trip(value: str) -> None:
    escaped = dp.tabescape(value)
    assert "\t" not in escaped and "\n" not in escaped
    assert dp.tabunescape(escaped) == value


def test_replies() -> None:
    assert dp.reply_lookup(None) == b"N\n"
    assert dp.reply_lookup('{"a": 1}') == b'O{"a": 1}\n'
    assert dp.reply_lookup("a\tb") == b"Oa\x01tb\n"
    assert dp.reply_row("shared/userdb/a@b.org", "") == b"Oshared/userdb/a@b.org\t\n"
    assert dp.reply_commit(True, "1", is_async=False) == b"O1\n"
    assert dp.reply_commit(False, "4", is_async=False) == b"F4\n"
    assert dp.reply_commit(True, "2", is_async=True) == b"AO2\n"
