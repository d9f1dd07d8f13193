from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from dictclient import DictClient
from servethread import serving

from chatmaild.dictserver import MAX_LINE


class FakeBackend:
    """Lookups from a dict; keys under `ok/` may be written; `boom` raises."""

    def __init__(self) -> None:
        self.values = {"shared/a": "1", "shared/tab": "x\ty"}
        self.commits: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.release = asyncio.Event()

    async def lookup(self, key: str, user: str) -> str | None:
        if key == "boom":
            raise RuntimeError("backend failure")
        if key == "slow":
            await self.release.wait()
        return self.values.get(key)

    def iterate(self, prefix: str, user: str) -> Iterator[tuple[str, str]]:
        for key in sorted(self.values):
            if key.startswith(prefix):
                yield key, self.values[key]

    def accepts(self, key: str) -> bool:
        return key.startswith("ok/")

    async def commit(self, user: str, changes: list[tuple[str, str | None]]) -> bool:
        self.commits.append((user, changes))
        return True


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def sock(tmp_path: Path, backend: FakeBackend) -> Iterator[Path]:
    path = tmp_path / "dict.socket"
    with serving(path, backend):
        yield path


def test_lookup(sock: Path) -> None:
    with DictClient(sock) as c:
        assert c.lookup("shared/a", "u@x.org") == "O1"
        assert c.lookup("shared/missing") == "N"
        assert c.lookup("shared/tab") == "Ox\x01ty"


def test_iteration_ends_with_an_empty_line(sock: Path) -> None:
    with DictClient(sock) as c:
        assert c.iterate("shared/") == ["Oshared/a\t1", "Oshared/tab\tx\x01ty"]
        assert c.iterate("nothing/") == []
        c.send("I0\t1\tshared/\t")
        assert c.readline() == "Oshared/a\t1"
        assert c.readline() == ""  # max_rows honoured, then the end
        assert c.lookup("shared/a") == "O1"  # the connection is still in step


def test_transactions_belong_to_their_connection(sock: Path, backend: FakeBackend) -> None:
    with DictClient(sock) as a, DictClient(sock) as b:
        a.send("B1\tuser-a")
        b.send("B1\tuser-b")
        a.send("S1\tok/x\t5")
        b.send("S1\tok/y\t6")
        assert b.request("C1") == "O1"
        assert backend.commits == [("user-b", [("ok/y", "6")])]
        a.send("U1\tok/z")
        assert a.request("D1") == "AO1"
        assert backend.commits[1] == ("user-a", [("ok/x", "5"), ("ok/z", None)])


def test_refused_key_fails_the_transaction(sock: Path, backend: FakeBackend) -> None:
    with DictClient(sock) as c:
        c.send("B2\tu")
        c.send("S2\tok/fine\t1")
        c.send("S2\tnot-allowed\t1")
        assert c.request("C2") == "F2"
        assert backend.commits == []
        c.send("B3\tu")
        c.send("R3")
        assert c.request("C3") == "F3"  # rolled back: no such transaction any more
        assert c.request("C9") == "F9"  # never begun


def test_bad_lines_get_protocol_answers_and_the_service_goes_on(sock: Path) -> None:
    with DictClient(sock) as c:
        c.send("Zunknown command")  # ignored, no reply
        c.send("Sx\tnot-a-txid\tv")  # ignored
        c.send("")  # an empty line is ignored too
        assert c.request("Ix\ty") == ""  # a broken iteration still ends
        assert c.lookup("boom") == "F"  # backend failure: F, not a crash
        assert c.lookup("shared/a") == "O1"


def test_overlong_line_closes_only_that_connection(sock: Path) -> None:
    with DictClient(sock) as bad, DictClient(sock) as good:
        bad.send("L" + "x" * (MAX_LINE + 10))
        with pytest.raises((ConnectionError, OSError)):
            bad.readline()
        assert good.lookup("shared/a") == "O1"


def test_a_silent_or_slow_client_does_not_hold_up_another(
    tmp_path: Path, backend: FakeBackend
) -> None:
    path = tmp_path / "dict.socket"
    with serving(path, backend) as loop:
        with DictClient(path) as slow, DictClient(path) as half, DictClient(path) as other:
            slow.send("Lslow")  # waits inside the backend
            half.file.write(b"Lshared/a")  # a line that never ends
            half.file.flush()
            assert other.lookup("shared/a") == "O1"
            loop.call_soon_threadsafe(backend.release.set)
            assert slow.readline() == "N"


def test_stale_socket_is_replaced(tmp_path: Path, backend: FakeBackend) -> None:
    path = tmp_path / "dict.socket"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    with serving(path, backend), DictClient(path) as c:
        assert c.lookup("shared/a") == "O1"
