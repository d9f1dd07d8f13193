"""The real `filtermail` processes, between smtplib / http.client and a re-injection sink."""

from __future__ import annotations

import http.client
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dovecot_harness import free_port
from test_filtermail import CLEARTEXT, ENCRYPTED, LoopThread, Sink, crlf, send

from chatmaild.config import Config
from chatmaild.smtpfront import start_smtp_server

ALICE_IP, BOB = "alice@[192.0.2.1]", "bob@example.org"
# From an IP-literal domain there is no DKIM to check: no DNS is needed here
ENCRYPTED_FROM_IP = ENCRYPTED.replace(b"From: alice@example.org", f"From: {ALICE_IP}".encode())


@dataclass
class Filtermail:
    outgoing: int
    incoming: int
    http: int
    sink: Sink
    logs: list[Path]


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"filtermail exited: {log.read_text()}")
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("filtermail did not listen")


@pytest.fixture(scope="module")
def filtermail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filtermail]:
    tmp = tmp_path_factory.mktemp("filtermail")
    (tmp / "mailboxes").mkdir()
    loop = LoopThread()
    sink = Sink()
    sink_port = loop.serve(start_smtp_server(sink, "127.0.0.1", 0, "sink", 10**8))
    ports = {name: free_port() for name in ("out", "in", "http")}
    ini = tmp / "chatmail.ini"
    ini.write_text(
        "[params]\nmail_domain = example.org\n"
        f"mailboxes_dir = {tmp / 'mailboxes'}\n"
        f"filtermail_smtp_port = {ports['out']}\n"
        f"filtermail_smtp_port_incoming = {ports['in']}\n"
        f"filtermail_http_port_incoming = {ports['http']}\n"
        f"postfix_reinject_port = {sink_port}\n"
        f"postfix_reinject_port_local = {sink_port}\n"
        f"postfix_reinject_port_incoming = {sink_port}\n"
        "max_user_send_burst_size = 3\n"
    )
    exe = str(Path(sys.executable).parent / "filtermail")
    procs, logs = [], []
    try:
        for mode, port in (("outgoing", ports["out"]), ("incoming", ports["in"])):
            log = tmp / f"{mode}.log"
            logs.append(log)
            with open(log, "wb") as out:
                proc = subprocess.Popen([exe, str(ini), mode], stdout=out, stderr=subprocess.STDOUT)
            procs.append(proc)
            wait_listening(port, proc, log)
        yield Filtermail(ports["out"], ports["in"], ports["http"], sink, logs)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        loop.stop()


def test_outgoing_accepts_encrypted_byte_for_byte(filtermail: Filtermail) -> None:
    filtermail.sink.messages.clear()
    assert send(filtermail.outgoing, "alice@example.org", [BOB], ENCRYPTED) == (250, "OK")
    assert filtermail.sink.messages == [("alice@example.org", [BOB], crlf(ENCRYPTED))]


def test_outgoing_refuses_cleartext(filtermail: Filtermail) -> None:
    filtermail.sink.messages.clear()
    reply = send(filtermail.outgoing, "alice@example.org", [BOB], CLEARTEXT)
    assert reply == (523, "Encryption Needed: Invalid Unencrypted Mail")
    assert filtermail.sink.messages == []


def test_incoming_smtp_and_mxdeliv(filtermail: Filtermail) -> None:
    filtermail.sink.messages.clear()
    assert send(filtermail.incoming, ALICE_IP, [BOB], ENCRYPTED_FROM_IP) == (250, "OK")
    conn = http.client.HTTPConnection("127.0.0.1", filtermail.http, timeout=10)
    conn.request(
        "POST",
        "/mxdeliv",
        body=ENCRYPTED_FROM_IP,
        headers={"X-MAIL-FROM": ALICE_IP, "X-MAIL-TO": BOB},
    )
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"250 OK\n")
    conn.close()
    assert [m[:2] for m in filtermail.sink.messages] == [(ALICE_IP, [BOB]), (ALICE_IP, [BOB])]
    # a DNS-named sender without a DKIM signature is refused before any DNS lookup
    assert send(filtermail.incoming, "alice@example.org", [BOB], ENCRYPTED) == (
        554,
        "5.7.1 No DKIM signature found",
    )


def test_size_announced_to_postfix_is_the_one_enforced(filtermail: Filtermail) -> None:
    """Postfix hands the filter the sender's message (at most max_message_size, counted at the
    public listener) with its own Received line: the filter takes and announces that much
    more (doc/message-size.md)."""
    expected = Config.from_params({"mail_domain": "example.org"}).inner_message_size_limit
    for port in (filtermail.outgoing, filtermail.incoming):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo("postfix")
            assert smtp.esmtp_features["size"] == str(expected)


def test_process_logs_hold_no_addresses(filtermail: Filtermail) -> None:
    send(filtermail.outgoing, "alice@example.org", [BOB], CLEARTEXT)
    send(filtermail.incoming, ALICE_IP, ["carol@example.org"], ENCRYPTED_FROM_IP)
    for log in filtermail.logs:
        text = log.read_text()
        for needle in ("alice", "bob", "carol", "192.0.2.1", "Traceback"):
            assert needle not in text, f"{log.name} holds {needle!r}"


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    ini = tmp_path / "chatmail.ini"
    ini.write_text("[params]\nmail_domain = example.org\nfiltermail_smtp_port = 99999\n")
    exe = str(Path(sys.executable).parent / "filtermail")
    result = subprocess.run(
        [exe, str(ini), "outgoing"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "filtermail_smtp_port" in result.stderr and "Traceback" not in result.stderr
