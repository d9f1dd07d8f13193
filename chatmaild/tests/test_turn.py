"""TURN credentials, checked by Debian's coturn itself."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dovecot_harness import free_port

from chatmaild import turn
from cmdeploy.coturn import DENIED_PEERS, peer_range, turnserver_conf

SECRET = b"lab-secret-0123456789"


def test_credentials_follow_the_rest_api_scheme() -> None:
    username, password = turn.credentials(b"secret", now=1_700_000_000, lifetime=100)
    assert username == "1700000100"
    # echo -n 1700000100 | openssl dgst -sha1 -hmac secret -binary | base64
    assert password == "95Ktvpi6tKwiPEf0fbFndeqoBho="


def read_as_delta_chat(value: str) -> tuple[str, int, int, str, str]:
    """The value split as Delta Chat splits it (doc/metadata.md): host, port, expiry, and the
    username and password it hands to WebRTC."""
    host, rest = value.split(":", 1)
    port, rest = rest.split(":", 1)
    timestamp, password = rest.split(":", 1)
    assert port.isdigit() and 0 < int(port) < 65536
    assert re.fullmatch(r"-?[0-9]+", timestamp)  # a signed 64-bit integer in the client
    return host, int(port), int(timestamp), timestamp, password


def test_metadata_value() -> None:
    now = 1_700_000_000
    value = turn.metadata_value("chat.example.org", b"secret", now=now)
    host, port, expiry, username, password = read_as_delta_chat(value)
    assert (host, port) == ("chat.example.org", 3478)
    # the timestamp is the expiry, not the current time: a client renews 12 hours before it,
    # so anything shorter would have it ask again at every connection
    assert expiry == now + turn.LIFETIME
    assert expiry - now > 12 * 3600
    assert (username, password) == turn.credentials(b"secret", now)


@pytest.mark.parametrize(("content", "expected"), [(b"abc\n", b"abc"), (b"\n", None)])
def test_read_secret(tmp_path: Path, content: bytes, expected: bytes | None) -> None:
    (tmp_path / "s").write_bytes(content)
    assert turn.read_secret(tmp_path / "s") == expected
    assert turn.read_secret(tmp_path / "missing") is None


@pytest.fixture(scope="module", params=[()])
def coturn(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """coturn with our configuration, denying the peers in `request.param` (none: the test
    client's peer is on loopback, which a relay denies)."""
    if shutil.which("turnserver") is None:
        if os.environ.get("CI"):
            pytest.fail("coturn is not installed (scripts/test installs it)")
        pytest.skip("needs Debian's coturn")
    port = free_port()
    conf = tmp_path_factory.mktemp("coturn") / "turnserver.conf"
    conf.write_text(
        turnserver_conf(
            port=port,
            listen_addresses=["127.0.0.1"],
            relay_addresses=["127.0.0.1"],
            min_port=50000,
            max_port=50200,
            realm="example.org",
            secret=SECRET.decode(),
            denied_peers=request.param,
        )
    )
    proc = subprocess.Popen(
        ["turnserver", "-c", str(conf), "--allow-loopback-peers"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # coturn answers a STUN binding request once it is ready
        deadline = time.monotonic() + 15
        while allocate(port, "probe", "probe") == -1 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def allocate(port: int, username: str, password: str) -> int:
    """0: an allocation and a message round trip through it; 1: allocation refused; 2: the
    peer refused (403 Forbidden IP); -1: anything else (not reachable yet)."""
    result = subprocess.run(
        [
            "turnutils_uclient",
            "-u",
            username,
            "-w",
            password,
            "-p",
            str(port),
            "-y",
            "-n",
            "1",
            "-m",
            "1",
            "-c",
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if "Cannot complete Allocation" in result.stdout + result.stderr:
        return 1
    if "Forbidden IP" in result.stdout + result.stderr:
        return 2
    if result.returncode != 0:
        return -1  # not reachable yet or another failure
    return 0


def test_coturn_accepts_our_credentials(coturn: int) -> None:
    username, password = turn.credentials(SECRET, time.time())
    assert allocate(coturn, username, password) == 0


@pytest.mark.parametrize(
    "case",
    ["wrong password", "expired", "other secret"],
)
def test_coturn_refuses_bad_credentials(coturn: int, case: str) -> None:
    now = time.time()
    if case == "wrong password":
        username, _ = turn.credentials(SECRET, now)
        password = base64.b64encode(b"x" * 20).decode()
    elif case == "expired":
        username, password = turn.credentials(SECRET, now - turn.LIFETIME - 60)
    else:
        username, password = turn.credentials(b"another-relay-secret", now)
    assert allocate(coturn, username, password) == 1


@pytest.mark.parametrize("coturn", [DENIED_PEERS], indirect=True)
def test_coturn_relays_nothing_to_denied_networks(coturn: int) -> None:
    """The relay's own list (loopback among it): the peer on 127.0.0.1 is refused, even with
    coturn's own loopback block lifted as in the fixture."""
    username, password = turn.credentials(SECRET, time.time())
    assert allocate(coturn, username, password) == 2


def test_denied_networks_are_written_as_ranges() -> None:
    assert peer_range("10.0.0.0/8") == "10.0.0.0-10.255.255.255"
    assert peer_range("fe80::/10") == "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
