"""Benchmark of the encryption gate's SMTP front end against a pass-through proxy, in the same
run.

Run: `scripts/bench-filtermail [--seconds S] [--clients N] [--json FILE]` (needs Postfix's
`smtp-sink`, which scripts/test installs). Both servers re-inject into the same `smtp-sink`:

- filtermail: the real `filtermail INI incoming` process, the proxy filter of port 25 (the
  outgoing gate is a milter since issue 13: bench_postfix.py's `milter` variant measures that
  path); the sender is an address literal, so there is no DKIM check to make;
- baseline: an aiosmtpd handler that only re-injects (no checks), in its own process.

For 2 KB, 200 KB and 1 MB PGP/MIME messages from N clients, each message on a connection of
its own (EHLO to QUIT) as Postfix's `smtpd_proxy_filter` hands them over, it prints messages per
second and the server's CPU microseconds per message, and the ratio filtermail / baseline. The
messages are structurally valid OpenPGP (a real PKESK from the corpus and a SEIPD of random
bytes): the gate checks structure, never decrypts. Loads are bounded by time and target only
loopback.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from dovecot_harness import free_port

CORPUS = Path(__file__).parent / "data" / "mail"
SENDER, RCPT = "alice@[192.0.2.1]", "bob@example.org"


def pgp_message(size: int) -> bytes:
    """A PGP/MIME message of about `size` bytes that passes the structural checks."""
    armored = (CORPUS / "enc-bob.eml").read_bytes().split(b"-----BEGIN PGP MESSAGE-----")[1]
    lines = armored.split(b"-----END PGP MESSAGE-----")[0].strip().splitlines()
    packets = base64.b64decode(b"".join(x for x in lines if not x.startswith(b"=")))
    pkesk = packets[: 2 + packets[1]]  # the first packet: new format, one-octet length
    body_len = max(16, size * 3 // 4 - 1500)
    seipd = (
        bytes([0xC0 | 18, 0xFF]) + body_len.to_bytes(4, "big") + b"\x01" + os.urandom(body_len - 1)
    )
    text = base64.b64encode(pkesk + seipd)
    armor = b"\r\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return (
        b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: [...]\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
        b' boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n\r\n"
        b"-----BEGIN PGP MESSAGE-----\r\n\r\n" + armor + b"\r\n-----END PGP MESSAGE-----\r\n"
        b"\r\n--b1--\r\n"
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@contextmanager
def process(argv: list[str], port: int) -> Iterator[int]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def load(port: int, message: bytes, clients: int, seconds: float) -> int:
    """Messages accepted by the server at `port` in `seconds` from `clients` clients."""
    counts = [0] * clients
    deadline = time.monotonic() + seconds
    errors: list[str] = []

    def client(i: int) -> None:
        # a connection per message, EHLO to QUIT, as Postfix's smtpd_proxy_filter opens one
        while time.monotonic() < deadline:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
                refused = smtp.sendmail(SENDER, [RCPT], message)
            if refused:
                errors.append(str(refused))
                return
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"the server refused the benchmark message: {errors[0]}")
    return sum(counts)


def measure(port: int, pid: int, message: bytes, clients: int, seconds: float) -> dict[str, float]:
    load(port, message, clients, min(1.0, seconds))  # warm up
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    count = load(port, message, clients, seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    return {"msgs_per_s": count / (t1 - t0), "cpu_us_per_msg": (cpu1 - cpu0) / count * 1e6}


def serve_passthrough(port: int, sink_port: int) -> None:
    """The baseline: an aiosmtpd server whose handler only re-injects into the sink."""
    import asyncio

    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            def reinject() -> None:
                with smtplib.SMTP("127.0.0.1", sink_port, timeout=60) as smtp:
                    smtp.sendmail(envelope.mail_from, envelope.rcpt_tos, envelope.original_content)

            await asyncio.get_running_loop().run_in_executor(None, reinject)
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port, data_size_limit=10**8)
    controller.start()
    threading.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--passthrough", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.passthrough:
        serve_passthrough(*args.passthrough)
        return
    sink_port, gate_port, base_port = free_port(), free_port(), free_port()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ini = Path(tmp) / "chatmail.ini"
        ini.write_text(
            "[params]\nmail_domain = example.org\n"
            f"mailboxes_dir = {tmp}\nmax_user_send_per_minute = 0\n"
            "max_message_size = 31457280\n"
            f"filtermail_smtp_port_incoming = {gate_port}\n"
            f"filtermail_http_port_incoming = {free_port()}\n"
            f"postfix_reinject_port_incoming = {sink_port}\n"
        )
        filtermail = str(Path(sys.executable).parent / "filtermail")
        me = [sys.executable, __file__, "--passthrough", str(base_port), str(sink_port)]
        sink = ["smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{sink_port}", "1000"]
        with (
            process(sink, sink_port),
            process([filtermail, str(ini), "incoming"], gate_port) as gate_pid,
            process(me, base_port) as base_pid,
        ):
            print(
                f"# {args.clients} clients, {args.seconds:g} s per figure, {os.cpu_count()} cores"
            )
            for label, size in (("2KB", 2048), ("200KB", 200 * 1024), ("1MB", 2**20)):
                message = pgp_message(size).replace(b"alice@example.org", SENDER.encode())
                base = measure(base_port, base_pid, message, args.clients, args.seconds)
                gate = measure(gate_port, gate_pid, message, args.clients, args.seconds)
                results[label] = {
                    "baseline_msgs_per_s": round(base["msgs_per_s"], 1),
                    "filtermail_msgs_per_s": round(gate["msgs_per_s"], 1),
                    "ratio": round(gate["msgs_per_s"] / base["msgs_per_s"], 2),
                    "baseline_cpu_us_per_msg": round(base["cpu_us_per_msg"]),
                    "filtermail_cpu_us_per_msg": round(gate["cpu_us_per_msg"]),
                }
                r = results[label]
                print(
                    f"{label:>4} messages: filtermail {r['filtermail_msgs_per_s']:>7.1f}/s "
                    f"({r['filtermail_cpu_us_per_msg']} us CPU each), pass-through "
                    f"{r['baseline_msgs_per_s']:>7.1f}/s ({r['baseline_cpu_us_per_msg']} us)"
                    f"  ratio {r['ratio']:.2f}",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps({"clients": args.clients, "results": results}, indent=2))


if __name__ == "__main__":
    main()
