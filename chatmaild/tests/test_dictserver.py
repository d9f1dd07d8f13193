from __future__ import annotations

import asyncio
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dictclient import DictClient
from servethread import serving

from chatmaild.dictserver import MAX_LINE, MAX_STAGED, MAX_TRANSACTIONS


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


def test_too_many_open_transactions_close_that_connection(
    sock: Path, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    with DictClient(sock) as leaky, DictClient(sock) as good:
        for n in range(MAX_TRANSACTIONS):
            leaky.send(f"B{n}\tsecret-user")
            leaky.send(f"S{n}\tok/secret-key\tsecret-value")
        assert leaky.request("C0") == "O0"  # at the bound, all is well
        leaky.send("B0\tsecret-user")
        leaky.send("B1\tsecret-user")  # reuses an open id: still MAX_TRANSACTIONS open
        assert leaky.lookup("shared/a") == "O1"
        leaky.send(f"B{MAX_TRANSACTIONS}\tsecret-user")
        with pytest.raises((ConnectionError, OSError)):
            leaky.readline()
        good.send("B1\tu")
        good.send("S1\tok/x\t1")
        assert good.request("C1") == "O1"
    assert caplog.text.count(f"over {MAX_TRANSACTIONS} open transactions") == 1
    assert "secret" not in caplog.text


def test_a_transaction_over_the_staged_bound_fails_and_the_connection_goes_on(
    sock: Path, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    value = "secret-value-" + "v" * 60_000
    with DictClient(sock) as c:
        c.send("B1\tu")
        c.send("S1\tok/first\t" + value)  # a transaction of its own, open meanwhile
        c.send("B2\tu")
        for n in range(MAX_STAGED // len(value) + 1):
            c.send(f"S2\tok/secret-key-{n}\t{value}")
        c.send("U2\tok/after-failing")  # ignored: the transaction failed already
        assert c.request("C2") == "F2"
        assert c.request("C1") == "O1"
        assert backend.commits == [("u", [("ok/first", value)])]
        # what the failed transaction staged is free again: the same amount fits now
        c.send("B3\tu")
        for n in range(MAX_STAGED // len(value)):
            c.send(f"S3\tok/k{n}\t{value}")
        assert c.request("C3") == "O3"
    assert caplog.text.count("dict transaction fails: over") == 1
    assert "secret" not in caplog.text


# Run a real dict service with few descriptors; once more clients wait than it can accept,
# asyncio fails each accept of a listen backlog in one go, every second.
def _few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))


def test_out_of_descriptors_the_service_logs_one_line_not_thousands(tmp_path: Path) -> None:
    ini = tmp_path / "chatmail.ini"
    ini.write_text(f"[params]\nmail_domain = example.org\nmailboxes_dir = {tmp_path}\n")
    path = tmp_path / "lastlogin.socket"
    exe = Path(sys.executable).parent / "lastlogin"
    service = subprocess.Popen(
        [str(exe), str(path), str(ini)],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_few_descriptors,  # the child only calls setrlimit before exec
    )
    assert service.stderr is not None
    clients = []
    try:
        assert "listening on" in service.stderr.readline()
        for _ in range(100):  # queued in the listen backlog of 1000: each connect succeeds
            client = socket.socket(socket.AF_UNIX)
            client.connect(str(path))
            clients.append(client)
        first = service.stderr.readline()  # asyncio's line or ours, whichever it is
        service.terminate()
        _, rest = service.communicate(timeout=60)
    finally:
        service.kill()
        service.wait()
        for client in clients:
            client.close()
    lines = [first, *rest.splitlines()]
    about_accept = [line for line in lines if "accept" in line]
    assert len(about_accept) == 1, f"{len(about_accept)} lines, the first: {first}"
    assert "cannot accept connections (Too many open files)" in about_accept[0]
    assert "Traceback" not in rest
