from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from chatmaild_testing import make_config
from dictclient import DictClient
from servethread import serving

from chatmaild.appversions import bundled_path, compact
from chatmaild.config import Config
from chatmaild.dictproto import tabescape
from chatmaild.dictserver import MAX_LINE
from chatmaild.metadata import MetadataDict
from chatmaild.pushqueue import PushQueue

NOW = 1_800_000_000.0
SERVER = "shared/6c1e39d0b3a7/vendor/vendor.dovecot/pvt/server/vendor/deltachat/"
TOKEN_KEY = "priv/6c1e39d0b3a7/devicetoken"
NEW_KEY = "priv/6c1e39d0b3a7/messagenew"
USER = "someone01@example.org"


@pytest.fixture
def home(config: Config) -> Path:
    path = config.mailboxes_path / USER
    path.mkdir()
    return path


@pytest.fixture
def queue(config: Config) -> PushQueue:
    return PushQueue(config.mailboxes_path / "pending_notifications", lambda: NOW)


def serve_metadata(tmp_path: Path, config: Config, queue: PushQueue) -> Iterator[DictClient]:
    sock = tmp_path / "metadata.socket"
    with serving(sock, MetadataDict(config, queue, clock=lambda: NOW)), DictClient(sock) as c:
        yield c


@pytest.fixture
def client(tmp_path: Path, config: Config, queue: PushQueue) -> Iterator[DictClient]:
    yield from serve_metadata(tmp_path, config, queue)


def commit(c: DictClient, user: str, *sets: tuple[str, str]) -> str:
    c.send(f"B1\t{user}")
    for key, value in sets:
        c.send(f"S1\t{tabescape(key)}\t{tabescape(value)}")
    return c.request("C1")


def test_token_set_and_lookup(client: DictClient, home: Path) -> None:
    assert client.lookup(TOKEN_KEY, USER) == "O"  # no tokens: an empty value
    assert commit(client, USER, (TOKEN_KEY, "tok-a")) == "O1"
    assert commit(client, USER, (TOKEN_KEY, "tok-b")) == "O1"
    assert client.lookup(TOKEN_KEY, USER) == "Otok-a tok-b"
    assert client.lookup(TOKEN_KEY, "other0001@example.org") == "O"


def test_messagenew_queues_one_push_per_token(
    client: DictClient, home: Path, queue: PushQueue
) -> None:
    commit(client, USER, (TOKEN_KEY, "tok-a"), (TOKEN_KEY, "tok-b"))
    assert commit(client, USER, (NEW_KEY, "")) == "O1"
    items = queue.pop_due(NOW)
    assert sorted((i.addr, i.token) for i in items) == [(USER, "tok-a"), (USER, "tok-b")]
    assert len(list((home.parent / "pending_notifications").iterdir())) == 2


def test_messagenew_without_tokens_queues_nothing(
    client: DictClient, home: Path, queue: PushQueue
) -> None:
    assert commit(client, USER, (NEW_KEY, "")) == "O1"
    assert len(queue) == 0


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("irohrelay", {}, "N"),  # none runs here: none is announced
        ("irohrelay", {"iroh_relay": ""}, "N"),
        ("irohrelay", {"iroh_relay": "https://iroh.example.net"}, "Ohttps://iroh.example.net"),
        ("maxsmtprecipients", {}, "O1000"),
        ("appversions-unknown", {}, "N"),
    ],
)
def test_server_entries(
    tmp_path: Path, queue: PushQueue, name: str, params: dict[str, str], expected: str
) -> None:
    config = make_config(tmp_path, **params)
    for c in serve_metadata(tmp_path, config, queue):
        assert c.lookup(SERVER + name, USER) == expected


def test_appversions_entry(tmp_path: Path, queue: PushQueue) -> None:
    """The bundled catalogue by default; the operator's file, read anew when it changes."""
    bundled = compact(bundled_path().read_text())
    for c in serve_metadata(tmp_path, make_config(tmp_path), queue):
        assert c.lookup(SERVER + "appversions", USER) == "O" + tabescape(bundled)
    own = tmp_path / "appversions.json"
    own.write_text('{"clients": []}')
    config = make_config(tmp_path, appversions_file=str(own))
    for c in serve_metadata(tmp_path, config, queue):
        assert c.lookup(SERVER + "appversions", USER) == 'O{"clients":[]}'
        own.write_text("{")  # broken: no entry rather than a wrong one
        os.utime(own, ns=(1, 1))
        assert c.lookup(SERVER + "appversions", USER) == "N"


def test_turn_entry(tmp_path: Path, queue: PushQueue) -> None:
    secret_file = tmp_path / "turn-secret"
    config = make_config(tmp_path, turn_secret_file=str(secret_file))
    for c in serve_metadata(tmp_path, config, queue):
        assert c.lookup(SERVER + "turn", USER) == "N"  # no secret yet: no TURN advertised
        secret_file.write_text("s3cret\n")
        reply = c.lookup(SERVER + "turn", USER)
    host, port, username, password = reply[1:].split(":")
    assert (host, port) == ("example.org", "3478")
    assert int(username) == NOW + 5 * 86400
    expected = hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(password) == expected


def test_turn_credentials_handed_out_are_counted(tmp_path: Path, queue: PushQueue) -> None:
    secret_file = tmp_path / "turn-secret"
    config = make_config(tmp_path, turn_secret_file=str(secret_file))
    backend = MetadataDict(config, queue, clock=lambda: NOW)
    sock = tmp_path / "counting.socket"
    with serving(sock, backend), DictClient(sock) as c:
        c.lookup(SERVER + "turn", USER)  # no secret: nothing handed out
        secret_file.write_text("s3cret\n")
        c.lookup(SERVER + "turn", USER)
        c.lookup(SERVER + "turn", USER)
    assert backend.turn_issued.value() == 2


@pytest.mark.parametrize(
    "token",
    ["has space", "ctl\x01x", "tab\tx", "nl\nx", "x" * 5000, ""],
)
def test_bad_tokens_fail_the_transaction(client: DictClient, home: Path, token: str) -> None:
    assert commit(client, USER, (TOKEN_KEY, token)) == "F1"
    assert not (home / "metadata.json").exists()


@pytest.mark.parametrize(
    ("user", "key"),
    [
        ("../../etc@example.org", TOKEN_KEY),
        ("a/b@example.org", TOKEN_KEY),
        ("someone01@evil.org", TOKEN_KEY),
        ("", TOKEN_KEY),
        (USER, "priv/guid/somethingelse"),  # a key we do not store
        (USER, "shared/guid/devicetoken"),  # shared, not private
        (USER, "nonsense"),
    ],
)
def test_refused_writes_touch_nothing(
    client: DictClient, config: Config, home: Path, user: str, key: str
) -> None:
    before = sorted(
        p.relative_to(config.mailboxes_path.parent) for p in config.mailboxes_path.parent.rglob("*")
    )
    assert commit(client, user, (key, "tok-a")) == "F1"
    after = sorted(
        p.relative_to(config.mailboxes_path.parent) for p in config.mailboxes_path.parent.rglob("*")
    )
    assert after == before


def test_token_for_a_missing_account_fails(client: DictClient, config: Config) -> None:
    assert commit(client, "nobody001@example.org", (TOKEN_KEY, "tok")) == "F1"
    assert list(config.mailboxes_path.iterdir()) == []


def test_malformed_and_oversized_input(
    tmp_path: Path, config: Config, queue: PushQueue, home: Path
) -> None:
    for c in serve_metadata(tmp_path, config, queue):
        c.send("Q what is this")
        c.send("S1\tno-transaction\tx")
        assert c.lookup("noslash", USER) == "N"
        assert c.lookup(TOKEN_KEY, USER) == "O"
        c.send(f"B7\t{USER}")
        c.send(f"S7\t{TOKEN_KEY}\t" + "x" * (MAX_LINE + 1))
        with pytest.raises((ConnectionError, OSError)):
            c.readline()  # the oversized line closed this connection only
    for c in serve_metadata(tmp_path, config, queue):
        assert c.lookup(TOKEN_KEY, USER) == "O"
    assert not (home / "metadata.json").exists()
