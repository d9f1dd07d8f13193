from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatmaild.tokens import (
    MAX_TOKENS,
    TOKEN_LIFETIME,
    TokenStore,
    parse,
    token_error,
    valid,
    with_token,
)

NOW = 1_800_000_000.0
DAY = 86400


@pytest.mark.parametrize(
    ("age", "is_valid"),
    [
        (0, True),
        (89 * DAY, True),
        (TOKEN_LIFETIME - 1, True),
        (TOKEN_LIFETIME, False),  # exactly 90 days old: expired
        (91 * DAY, False),
        (-60, True),  # up to 60 s in the future: clock skew between processes
        (-61, False),
    ],
)
def test_validity(age: float, is_valid: bool) -> None:
    assert ("t" in valid({"t": NOW - age}, NOW)) is is_valid


def test_refresh_and_multiple_devices() -> None:
    tokens = with_token({}, "a", NOW - 80 * DAY)
    tokens = with_token(tokens, "b", NOW - DAY)
    tokens = with_token(tokens, "a", NOW)  # refreshed: lives another 90 days
    assert tokens == {"a": NOW, "b": NOW - DAY}
    later = NOW + 89.5 * DAY
    assert set(valid(tokens, later)) == {"a"}


def test_adding_prunes_expired_tokens() -> None:
    tokens = {"old": NOW - 100 * DAY, "fresh": NOW - DAY}
    assert with_token(tokens, "new", NOW) == {"fresh": NOW - DAY, "new": NOW}


def test_token_count_is_bounded() -> None:
    tokens: dict[str, float] = {}
    for i in range(MAX_TOKENS + 5):
        tokens = with_token(tokens, f"t{i}", NOW + i / 100)
    assert len(tokens) == MAX_TOKENS
    assert "t0" not in tokens and f"t{MAX_TOKENS + 4}" in tokens


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"devicetoken": {"a": 5.0}}', {"a": 5.0}),
        (b'{"devicetoken": ["a", "b"]}', {"a": NOW, "b": NOW}),  # old list format
        (b'{"devicetoken": {"a": "x", "b": 3}}', {"b": 3.0}),
        (b"not json", {}),
        (b"[1, 2]", {}),
        (b"\xff\xfe", {}),
        (b'{"devicetoken": 7}', {}),
    ],
)
def test_parse(raw: bytes, expected: dict[str, float]) -> None:
    assert parse(raw, NOW) == expected


@pytest.mark.parametrize(
    ("token", "ok"),
    [
        ("abc123+/=", True),
        ("", False),
        ("has space", False),
        ("tab\there", False),
        ("nl\nthere", False),
        ("nul\0", False),
        ("ümlaut", False),
        ("x" * 5000, False),
    ],
)
def test_token_error(token: str, ok: bool) -> None:
    assert (token_error(token) is None) is ok


def test_store_round_trip(tmp_path: Path) -> None:
    (tmp_path / "a@x.org").mkdir()
    store = TokenStore(tmp_path)
    assert store.add("a@x.org", "t1", NOW)
    assert store.add("a@x.org", "t2", NOW + 1)
    assert store.valid_tokens("a@x.org", NOW + 2) == ["t1", "t2"]
    data = json.loads((tmp_path / "a@x.org" / "metadata.json").read_text())
    assert data == {"devicetoken": {"t1": NOW, "t2": NOW + 1}}
    store.remove("a@x.org", "t1", NOW + 3)
    assert store.valid_tokens("a@x.org", NOW + 3) == ["t2"]


def test_store_never_creates_accounts(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    assert not store.add("nobody@x.org", "t1", NOW)
    assert list(tmp_path.iterdir()) == []
    assert store.valid_tokens("nobody@x.org", NOW) == []
