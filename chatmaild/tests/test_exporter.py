"""chatmail-metrics: its readings of the system, and its HTTP answer on a unix socket."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
from chatmaild_testing import make_config
from test_metrics import promtool_check

from chatmaild import exporter, metrics, newemail
from chatmaild.exporter import Scraper
from chatmaild.newemail import HANDED_OUT


def queue_line(queue: str) -> str:
    # the shape of `postqueue -j`: one object per message (addresses are never counted)
    return json.dumps({"queue_name": queue, "queue_id": "4A1B", "recipients": [{"address": "x"}]})


def test_postfix_queue_counts() -> None:
    lines = [queue_line("deferred")] * 3 + [queue_line("active"), "", queue_line("hold")]
    counts = exporter.postfix_queue_counts(lambda argv: "\n".join(lines) + "\n")
    assert counts == {"active": 1, "deferred": 3, "hold": 1, "incoming": 0, "maildrop": 0}


@pytest.mark.parametrize("output", [None, "not json\n", "[1]\n"])
def test_postfix_queue_unreadable(output: str | None) -> None:
    assert exporter.postfix_queue_counts(lambda argv: output) is None


def fake_proc(root: Path, tcp: list[tuple[int, str]], comms: list[str]) -> Path:
    """A /proc with net/tcp rows (local port, state) and processes of these names."""
    (root / "net").mkdir(parents=True)
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n"
    rows = [
        f"   {i}: 0100007F:{port:04X} 0100007F:D431 {state} 00000000:00000000 00:00000000 0\n"
        for i, (port, state) in enumerate(tcp)
    ]
    (root / "net" / "tcp").write_text(header + "".join(rows))
    (root / "net" / "tcp6").write_text(header)
    for pid, comm in enumerate(comms, start=100):
        (root / str(pid)).mkdir()
        (root / str(pid) / "comm").write_text(comm + "\n")
    (root / "self").mkdir()  # not a pid
    return root


def test_imap_connections_active_and_hibernated(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        # 4 established to 993, one to 143; a listener (0A) and another port do not count
        [(993, "01")] * 4 + [(143, "01"), (993, "0A"), (25, "01")],
        ["imap", "imap", "imap-login", "imap-hibernate", "dovecot"],
    )
    assert exporter.imap_connections(proc) == {"active": 2, "hibernated": 3}


def test_established_connections_on_the_real_proc() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        before = exporter.established_connections((port,))
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                # only the server's end has the local port
                assert exporter.established_connections((port,)) == 1
    assert before == 0


def test_certificate_expiry_of_a_real_certificate(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "10", "-subj", "/CN=chat.example.org"),
            *("-keyout", str(tmp_path / "key.pem"), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    expiry = exporter.certificate_expiry(cert)
    assert expiry is not None and abs(expiry - (time.time() + 10 * 86400)) < 120
    assert exporter.certificate_expiry(tmp_path / "missing.pem") is None


@pytest.fixture
def scraper(tmp_path: Path) -> Scraper:
    mailboxes = tmp_path / "mail"
    for name in ("a@example.org", "b@example.org", "pending_notifications"):
        (mailboxes / name).mkdir(parents=True)
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    registry = metrics.Registry()
    registry.counter("chatmail_accounts_created_total", "Created.").inc(2)
    metrics.write_snapshot(registry, snapshots / "doveauth.json")
    return Scraper(make_config(mailboxes), tmp_path / "missing.pem", snapshots)


def test_a_scrape_merges_the_count_of_new(scraper: Scraper) -> None:
    new_dir = scraper.metrics_dir / metrics.NEW_SUBDIR
    new_dir.mkdir()
    newemail.count(HANDED_OUT, new_dir, io.StringIO())
    text = scraper.scrape()
    assert 'chatmail_new_requests_total{outcome="handed_out"} 1\n' in text
    assert 'chatmail_metrics_source_ok{source="snapshots"} 1\n' in text
    promtool_check(text)


def test_a_scrape_merges_the_snapshots_with_the_readings(scraper: Scraper) -> None:
    text = scraper.scrape()
    assert "chatmail_accounts_created_total 2\n" in text
    assert "chatmail_accounts 2\n" in text  # directories with an @ only
    # what could not be read is said, not guessed
    assert 'chatmail_metrics_source_ok{source="certificate"} 0\n' in text
    assert "chatmail_tls_certificate_expiry_timestamp_seconds" not in text
    assert 'chatmail_metrics_source_ok{source="snapshots"} 1\n' in text
    promtool_check(text)


def http(socket_path: Path, request: bytes) -> tuple[str, str]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(socket_path))
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return head, body


def test_http_on_the_unix_socket(scraper: Scraper, tmp_path: Path) -> None:
    path = tmp_path / "exporter.socket"

    async def run() -> tuple[int, list[tuple[str, str]]]:
        stop = asyncio.Event()
        server = asyncio.create_task(exporter.serve(scraper, path, stop))
        while not path.exists():
            await asyncio.sleep(0.01)
        mode = path.stat().st_mode & 0o777
        requests = [
            b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET /other HTTP/1.1\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\n\r\n",
            b"garbage\r\n\r\n",
        ]
        answers = [await asyncio.to_thread(http, path, r) for r in requests]
        stop.set()
        await server
        return mode, answers

    mode, (ok, not_found, wrong_method, garbage) = asyncio.run(run())
    assert mode == 0o666  # nginx's workers run as another user
    assert ok[0].startswith("HTTP/1.1 200 OK\r\n")
    assert "Content-Type: text/plain; version=0.0.4; charset=utf-8" in ok[0]
    assert "chatmail_accounts 2\n" in ok[1]
    promtool_check(ok[1])
    assert not_found[0].startswith("HTTP/1.1 404 ")
    assert wrong_method[0].startswith("HTTP/1.1 405 ")
    assert garbage[0].startswith("HTTP/1.1 400 ")
