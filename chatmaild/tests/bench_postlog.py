"""Benchmark of chatmail-postlog: its CPU per log line, and where that time goes.

Run: `venv/bin/python chatmaild/tests/bench_postlog.py [--lines N] [--json FILE] [--profile]`,
or with `--capture` (root, Debian's postfix and dovecot): the lines the real Postfix and
Dovecot of chatmaild/tests/postfix_harness.py log for a message from a peer over port 25 and
over /mxdeliv, and for one an account submits to another (the harness's Postfix with the
templates' submission listener added, `filtermail outgoing` as its milter, and Dovecot's SASL
socket), each shown redacted and counted by origin.

Issue #13 counts "other (mostly journald and chatmail-postlog)" among the relay's costs per
message (doc/performance.md). This feeds the real process (`python -m chatmaild.postlog`,
started with its socket on fd 3 the way systemd passes it) N syslog datagrams, as glibc
sends them, through its socket, and reads what it forwards from a fake journald socket. The
figure is the process's own CPU time (utime + stime from /proc) while it scrubs the N lines,
divided by N. With `--profile` it also runs `scrub` over the same lines under cProfile in
this process and prints the functions that took the most time.

The lines are those `--capture` shows for one message of each path (`MESSAGE_LINES`), in
the relay's log format, with the header_checks "replace" lines the relay logged before it
left a Subject of "[...]" alone and the re-injection's "connect", which its pooled
connections log only now and then: the figures before and after that change are of the same
stream. Since the outgoing gate is a milter (issue 13) a submission for a local account logs
neither a re-injection nor Postfix's "proxy-accept" line: three lines fewer, so per-line
figures compare across that change and per-message sums do not. Queue ids, pids, local
parts and session ids vary per message.
Loopback only; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import re
import secrets
import smtplib
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

# started with its socket on fd 3 the way systemd passes it, as in the process's own tests
from socket_activation import popen_with_socket

from chatmaild.postlog import redact, scrub

# (syslog identifier, priority, message) of the lines one message causes, in order;
# {qid} queue id, {qid2} the re-injected copy's, {pid} a process id, {local} a local part,
# {session} Dovecot's session id, {msgid} the Message-ID's left side.
INCOMING = [  # from a peer over port 25: the harness's trail, in the relay's log format
    ("postfix/smtpd", 22, "connect from unknown[198.51.100.{pid3}]"),
    ("postfix/smtpd", 22, "NOQUEUE: client=unknown[198.51.100.{pid3}]"),
    ("postfix/reinject_incoming/smtpd", 22, "connect from localhost[127.0.0.1]"),
    ("postfix/reinject_incoming/smtpd", 22, "{qid2}: client=localhost[127.0.0.1]"),
    ("postfix/cleanup", 22, "{qid2}: message-id=<{msgid}@other.example.net>"),
    (
        "postfix/qmgr",
        22,
        "{qid2}: from=<{local}x@other.example.net>, size=2216, nrcpt=1 (queue active)",
    ),
    (
        "postfix/smtpd",
        22,
        "proxy-accept: END-OF-MESSAGE: 250 OK; from=<{local}x@other.example.net>"
        " to=<{local}@chat.example.org> proto=ESMTP helo=<mx.other.example.net>",
    ),
    (
        "postfix/smtpd",
        22,
        "disconnect from unknown[198.51.100.{pid3}] ehlo=2 starttls=1 mail=1 rcpt=1 data=1"
        " quit=1 commands=7",
    ),
    ("postfix/lmtp", 22, "{qid2}: replace: header Subject: [...]: Subject: [...]"),
    (
        "postfix/lmtp",
        22,
        "{qid2}: to=<{local}@chat.example.org>, relay=chat.example.org[private/dovecot-lmtp],"
        " delay=0.03, delays=0.01/0.01/0.01/0.01, dsn=2.0.0, status=sent (250 2.0.0"
        " <{local}@chat.example.org> {session} Saved)",
    ),
    ("postfix/qmgr", 22, "{qid2}: removed"),
    ("dovecot", 22, "lmtp({pid}): Connect from local"),
    ("dovecot", 22, "lmtp<{session}:T1>: msgid=<{msgid}@other.example.net>: saved mail to INBOX"),
    ("dovecot", 22, "lmtp({pid}): Disconnect from local: Logged out (state=READY)"),
]
SUBMISSION = [  # a Delta Chat client sending to an account on the same relay
    ("postfix/submission/smtpd", 22, "connect from unknown[198.51.100.{pid3}]"),
    (
        "postfix/submission/smtpd",
        22,
        "NOQUEUE: client=unknown[198.51.100.{pid3}], sasl_method=PLAIN,"
        " sasl_username={local}@chat.example.org",
    ),
    (
        "postfix/cleanup",
        22,
        "{qid}: replace: header Subject: [...] from unknown[198.51.100.{pid3}];"
        " from=<{local}@chat.example.org> to=<{local}y@chat.example.org> proto=ESMTP"
        " helo=<[192.168.1.{pid3}]>: Subject: [...]",
    ),
    ("postfix/cleanup", 22, "{qid}: message-id=<{msgid}@chat.example.org>"),
    (
        "postfix/qmgr",
        22,
        "{qid}: from=<{local}@chat.example.org>, size=2470, nrcpt=1 (queue active)",
    ),
    (
        "postfix/submission/smtpd",
        22,
        "disconnect from unknown[198.51.100.{pid3}] ehlo=2 starttls=1 auth=1 mail=1 rcpt=1"
        " data=1 quit=1 commands=8",
    ),
    ("postfix/lmtp", 22, "{qid}: replace: header Subject: [...]: Subject: [...]"),
    (
        "postfix/lmtp",
        22,
        "{qid}: to=<{local}y@chat.example.org>, relay=chat.example.org[private/dovecot-lmtp],"
        " delay=0.05, delays=0.01/0.01/0.03/0, dsn=2.0.0, status=sent (250 2.0.0"
        " <{local}y@chat.example.org> {session} Saved)",
    ),
    ("postfix/qmgr", 22, "{qid}: removed"),
    ("dovecot", 22, "lmtp({pid}): Connect from local"),
    ("dovecot", 22, "lmtp<{session}:T1>: msgid=<{msgid}@chat.example.org>: saved mail to INBOX"),
    ("dovecot", 22, "lmtp({pid}): Disconnect from local: Logged out (state=READY)"),
]
MESSAGE_LINES = {"incoming": INCOMING, "submission": SUBMISSION}

SETTLE_TIMEOUT = 120.0


def datagrams(count: int, seed: int = 1) -> list[bytes]:
    """`count` syslog datagrams, messages of both paths in turn, as glibc 2.36 sends them."""
    rng = random.Random(seed)
    out: list[bytes] = []
    templates = [*INCOMING, *SUBMISSION]
    while len(out) < count:
        fields = _message_fields(rng)
        for ident, pri, text in templates:
            pid = "" if ident == "dovecot" else f"[{fields['pid']}]"
            line = f"<{pri}>Dec  6 17:09:32 {ident}{pid}: {text.format(**fields)}"
            out.append(line.encode())
    return out[:count]


def _message_fields(rng: random.Random) -> dict[str, str]:
    b64 = string.ascii_letters + string.digits + "+/"
    return {
        "qid": f"{rng.getrandbits(40):010X}",
        "qid2": f"{rng.getrandbits(40):010X}",
        "pid": str(rng.randrange(1000, 99999)),
        "pid3": str(rng.randrange(1, 255)),
        "local": "".join(rng.choices(string.ascii_lowercase + string.digits, k=9)),
        "session": "".join(rng.choices(b64, k=22)),
        "msgid": "".join(rng.choices(string.hexdigits.lower(), k=24)),
    }


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (proc(5)), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_process(lines: list[bytes]) -> dict[str, float]:
    """The real process's CPU seconds per line, fed `lines` through its socket."""
    with tempfile.TemporaryDirectory(prefix="bench-postlog-") as tmp:
        devlog, journal = Path(tmp) / "dev-log", Path(tmp) / "journal.socket"
        listen = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listen.bind(str(devlog))
        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sink.bind(str(journal))
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sink.settimeout(1.0)
        received = [0]
        done = threading.Event()

        def drain() -> None:  # the fake journald: counts entries, keeps none
            while not done.is_set():
                try:
                    sink.recv(65536)
                    received[0] += 1
                except TimeoutError:
                    continue

        command = [sys.executable, "-m", "chatmaild.postlog", "--journal-socket", str(journal)]
        process = popen_with_socket(listen, command, stderr=subprocess.DEVNULL)
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            _warm_up(process.pid, devlog, received)
            start_count, start_cpu = received[0], _cpu_seconds(process.pid)
            wall = time.monotonic()
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                for line in lines:  # blocks on a full queue, as Postfix's syslog() does
                    client.sendto(line, str(devlog))
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while received[0] - start_count < len(lines) and time.monotonic() < deadline:
                if _idle(process.pid):
                    break  # lines journald could not take were dropped: the CPU still counts
                time.sleep(0.05)
            cpu = _cpu_seconds(process.pid) - start_cpu
            wall = time.monotonic() - wall
        finally:
            done.set()
            process.terminate()
            process.wait(timeout=10)
            reader.join(timeout=5)
            sink.close()
    forwarded = received[0] - start_count
    return {
        "lines": len(lines),
        "forwarded": forwarded,
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(wall, 3),
        "cpu_us_per_line": round(cpu / len(lines) * 1e6, 2),
    }


def _warm_up(pid: int, devlog: Path, received: list[int]) -> None:
    """Until the process forwards: its start (imports) is not part of the figure."""
    deadline = time.monotonic() + 30
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        while received[0] == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("chatmail-postlog forwarded nothing")
            client.sendto(b"<22>Dec  6 17:09:32 postfix/qmgr[1]: warm-up", str(devlog))
            time.sleep(0.05)
    time.sleep(0.2)


def _idle(pid: int, interval: float = 0.3) -> bool:
    """Whether the process used no CPU for `interval` seconds."""
    before = _cpu_seconds(pid)
    time.sleep(interval)
    return _cpu_seconds(pid) == before


def measure_in_process(lines: list[bytes], repeat: int = 3) -> float:
    """The best of `repeat` runs of `scrub` over `lines` here: process CPU µs per line."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for line in lines:
            scrub(line)
        best = min(best, time.process_time() - start)
    return round(best / len(lines) * 1e6, 2)


def profile(lines: list[bytes], top: int = 20) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for line in lines:
        scrub(line)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


# Dovecot's SASL socket for the submission listener (the relay's dovecot.conf has it in
# Postfix's spool; the harness's Dovecot has none)
CAPTURED = ("port 25", "/mxdeliv", "port 25 again", "submission", "submission again")


def capture() -> dict[str, dict[str, int]]:
    """{path: {origin: lines}} of one delivered message per path, from the real daemons."""
    from postfix_harness import running_submission

    counts: dict[str, dict[str, int]] = {}
    with running_submission() as instance:
        relay, postfix, submission_port = instance.relay, instance.postfix, instance.port
        sender, rcpt = _account(postfix), _account(postfix)
        time.sleep(1)  # their login lines are not the messages'
        for path in CAPTURED:
            marks = len(postfix.log().splitlines()), len(relay.dovecot_log().splitlines())
            _send(path, postfix, submission_port, sender, rcpt)
            postfix.wait_queue_settled()
            time.sleep(1)  # Dovecot's lmtp logs its disconnect after Postfix's status=sent
            lines = [
                *(("postfix", x) for x in postfix.log().splitlines()[marks[0] :]),
                *(("dovecot", x) for x in relay.dovecot_log().splitlines()[marks[1] :]),
            ]
            counts[path] = _count_and_print(path, lines)
    return counts


def _account(postfix: Any) -> str:
    from test_postfix_gate import imap

    addr = f"g{secrets.token_hex(4)}@{postfix.domain}"
    with imap(postfix, addr):
        pass  # the first login creates the account
    return addr


def _send(path: str, postfix: Any, submission_port: int, sender: str, rcpt: str) -> None:
    """One encrypted message to `rcpt`: from a peer, or from `sender`, logged in."""
    from postfix_harness import LISTEN_ADDRESS, unverified_tls
    from test_postfix_gate import PASSWORD, SENDER, encrypted, send_mxdeliv, send_smtp

    message = encrypted(secrets.token_hex(8), rcpt)
    if path.startswith("port 25"):
        send_smtp(postfix, f"<{rcpt}>", message)
    elif path == "/mxdeliv":
        send_mxdeliv(postfix, rcpt, message)
    else:
        message = message.replace(f"From: {SENDER}".encode(), f"From: {sender}".encode())
        with smtplib.SMTP(LISTEN_ADDRESS, submission_port, timeout=30) as smtp:
            smtp.starttls(context=unverified_tls())
            smtp.login(sender, PASSWORD)
            smtp.sendmail(sender, [rcpt], message)


def _count_and_print(path: str, lines: list[tuple[str, str]]) -> dict[str, int]:
    """Each line redacted, with its origin; how many lines of each origin."""
    print(f"--- {path}")
    counts: dict[str, int] = {}
    for daemon, line in lines:
        origin, text = _origin(daemon, line)
        print(f"{origin:45} {redact(text, dovecot=daemon == 'dovecot')}")
        counts[origin] = counts.get(origin, 0) + 1
    return counts


# "Dec 06 17:09:32 host postfix/smtpd[5066]: QID: text" and "Dec 06 17:09:32 lmtp(5081): Info:
# text" (Dovecot's log_path); the origin is the program and the first word of what it says
_POSTFIX_LINE = re.compile(r"\S+ +\S+ \S+ \S+ ([^\[:]+)(?:\[\d+\])?: (?:[0-9A-F]{6,}: )?(.*)")
_DOVECOT_LINE = re.compile(r"\S+ +\S+ \S+ ([a-z-]+)[(<].*?: (?:Info|Warning|Error): (.*)")


def _origin(daemon: str, line: str) -> tuple[str, str]:
    found = (_POSTFIX_LINE if daemon == "postfix" else _DOVECOT_LINE).match(line)
    if found is None:
        return daemon, line
    program, text = found[1], found[2]
    if daemon == "dovecot":
        program = f"dovecot/{program}"
        text = text.removeprefix(text.split(": ")[0] + ": ") if "msgid=" in text else text
    word = re.split(r"[ =:]", text, maxsplit=1)[0]
    return f"{program} {word}", text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--profile", action="store_true", help="cProfile of scrub, printed")
    parser.add_argument("--capture", action="store_true", help="real daemons' lines, counted")
    args = parser.parse_args(argv)
    if args.capture:
        counts = capture()
        print(json.dumps(counts, indent=2))
        if args.json:
            args.json.write_text(json.dumps(counts))
        return
    lines = datagrams(args.lines)
    figures = {
        "lines_per_message": {name: len(t) for name, t in MESSAGE_LINES.items()},
        "process": measure_process(lines),
        "in_process_cpu_us_per_line": measure_in_process(lines),
    }
    print(json.dumps(figures, indent=2))
    if args.profile:
        print(profile(lines))
    if args.json:
        args.json.write_text(json.dumps(figures))


if __name__ == "__main__":
    main()
