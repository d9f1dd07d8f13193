"""The real `filtermail` processes, between a milter client (Postfix's side), smtplib or
http.client and a re-injection sink."""

from __future__ import annotations

import http.client
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from dovecot_harness import free_port
from milter_client import OFFER, PASSED_ON, QUEUED, MilterClient, packet
from milter_client import send as milter_send
from socket_activation import popen_with_socket
from test_filtermail import CLEARTEXT, ENCRYPTED, LoopThread, Sink, crlf, send

from chatmaild.config import Config
from chatmaild.smtpfront import start_smtp_server

ALICE_IP, BOB = "alice@[192.0.2.1]", "bob@example.org"
# From an IP-literal domain there is no DKIM to check: no DNS is needed here
ENCRYPTED_FROM_IP = ENCRYPTED.replace(b"From: alice@example.org", f"From: {ALICE_IP}".encode())


@dataclass
class Filtermail:
    outgoing: str  # the milter socket
    incoming: int
    http: int
    sink: Sink
    logs: list[Path]


def wait_listening(where: int | str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"filtermail exited: {log.read_text()}")
        try:
            if isinstance(where, str):
                MilterClient(where, timeout=2).close()
            else:
                smtplib.SMTP("127.0.0.1", where, timeout=2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("filtermail did not listen")


def milter_listener(path: str) -> socket.socket:
    """The outgoing gate's socket as its systemd socket unit makes it: listening already."""
    listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listen.bind(path)
    listen.listen(64)
    return listen


@pytest.fixture(scope="module")
def filtermail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filtermail]:
    tmp = tmp_path_factory.mktemp("filtermail")
    (tmp / "mailboxes").mkdir()
    loop = LoopThread()
    sink = Sink()
    sink_port = loop.serve(start_smtp_server(sink, "127.0.0.1", 0, "sink", 10**8))
    ports = {name: free_port() for name in ("in", "http")}
    gate_socket = str(tmp / "gate.socket")
    ini = tmp / "chatmail.ini"
    ini.write_text(
        "[params]\nmail_domain = example.org\n"
        f"mailboxes_dir = {tmp / 'mailboxes'}\n"
        f"filtermail_smtp_port_incoming = {ports['in']}\n"
        f"filtermail_http_port_incoming = {ports['http']}\n"
        f"postfix_reinject_port = {sink_port}\n"
        f"postfix_reinject_port_incoming = {sink_port}\n"
        "max_user_send_burst_size = 3\n"
    )
    exe = str(Path(sys.executable).parent / "filtermail")
    procs, logs = [], []
    try:
        for mode, where in (("outgoing", gate_socket), ("incoming", ports["in"])):
            log = tmp / f"{mode}.log"
            logs.append(log)
            with open(log, "wb") as out:
                argv = [exe, str(ini), mode]
                if mode == "outgoing":  # its socket comes from systemd, made before it runs
                    proc = popen_with_socket(
                        milter_listener(gate_socket), argv, stdout=out, stderr=subprocess.STDOUT
                    )
                else:
                    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
            procs.append(proc)
            wait_listening(where, proc, log)
        yield Filtermail(gate_socket, ports["in"], ports["http"], sink, logs)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        loop.stop()


def test_outgoing_accepts_encrypted_byte_for_byte(filtermail: Filtermail) -> None:
    filtermail.sink.messages.clear()
    alice, carol = "alice@example.org", "carol@other.example"
    assert milter_send(filtermail.outgoing, alice, [BOB], ENCRYPTED) == QUEUED
    assert milter_send(filtermail.outgoing, alice, [carol], ENCRYPTED) == PASSED_ON
    assert filtermail.sink.messages == [(alice, [carol], crlf(ENCRYPTED))]


def test_outgoing_refuses_cleartext(filtermail: Filtermail) -> None:
    filtermail.sink.messages.clear()
    reply = milter_send(filtermail.outgoing, "alice@example.org", [BOB], CLEARTEXT)
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
    with smtplib.SMTP("127.0.0.1", filtermail.incoming, timeout=10) as smtp:
        smtp.ehlo("postfix")
        assert smtp.esmtp_features["size"] == str(expected)


def test_process_logs_hold_no_addresses(filtermail: Filtermail) -> None:
    milter_send(filtermail.outgoing, "alice@example.org", [BOB], CLEARTEXT)
    send(filtermail.incoming, ALICE_IP, ["carol@example.org"], ENCRYPTED_FROM_IP)
    for log in filtermail.logs:
        text = log.read_text()
        for needle in ("alice", "bob", "carol", "192.0.2.1", "Traceback"):
            assert needle not in text, f"{log.name} holds {needle!r}"


@pytest.mark.parametrize(
    ("params", "args", "named"),
    [
        ("filtermail_smtp_port_incoming = 99999\n", ["incoming"], "filtermail_smtp_port_incoming"),
        ("", ["outgoing"], "filtermail.socket"),
    ],
    ids=["bad-port", "no-socket-from-systemd"],
)
def test_bad_config_is_one_line(tmp_path: Path, params: str, args: list[str], named: str) -> None:
    ini = tmp_path / "chatmail.ini"
    ini.write_text(f"[params]\nmail_domain = example.org\n{params}")
    exe = str(Path(sys.executable).parent / "filtermail")
    argv = [exe, str(ini), *(a.format(tmp=tmp_path) for a in args)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode in (1, 2), result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr


def test_outgoing_answers_postfix_connections_made_before_it_ran(tmp_path: Path) -> None:
    """systemd holds the gate's socket while filtermail restarts: Postfix's smtpd that connects
    meanwhile waits in the backlog and is served, instead of tempfailing its client."""
    ini = tmp_path / "chatmail.ini"
    ini.write_text("[params]\nmail_domain = example.org\n")
    path = str(tmp_path / "gate.socket")
    listen = milter_listener(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as postfix:
        postfix.settimeout(20)
        postfix.connect(path)
        postfix.sendall(packet(b"O", OFFER))
        exe = str(Path(sys.executable).parent / "filtermail")
        proc = popen_with_socket(listen, [exe, str(ini), "outgoing"], stderr=subprocess.PIPE)
        try:
            reply = postfix.recv(5)
            assert reply[4:5] == b"O", reply  # the gate's answer to the negotiation
        finally:
            proc.terminate()
            proc.wait(10)
            assert proc.stderr is not None
            proc.stderr.close()


@pytest.mark.parametrize(
    ("passed", "named"),
    [("datagram", "not a unix SOCK_STREAM socket"), ("file", "descriptor 3 is not a socket")],
)
def test_outgoing_refuses_what_is_no_stream_socket(tmp_path: Path, passed: str, named: str) -> None:
    ini = tmp_path / "chatmail.ini"
    ini.write_text("[params]\nmail_domain = example.org\n")
    given: socket.socket | IO[bytes]
    if passed == "datagram":
        given = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        given.bind(str(tmp_path / "gate.socket"))
    else:
        given = open(ini, "rb")  # popen_with_socket closes it
    exe = str(Path(sys.executable).parent / "filtermail")
    proc = popen_with_socket(given, [exe, str(ini), "outgoing"], stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert named in stderr and "Traceback" not in stderr
