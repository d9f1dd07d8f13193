"""Benchmark of account creation and login, through doveauth alone and through a real Dovecot.

Run as root: `scripts/bench-auth [--seconds S] [--clients N]`. Prints figures, each next to
a baseline measured in the same run on the same machine:

- dict level (N connections straight to the doveauth socket):
  first-login creations/s against sha512-crypt hashes/s on as many threads as cores (the
  hashing is the unavoidable part of a creation); existing-account lookups/s against the
  same dict server code answering a constant (the protocol and socket cost alone).
- Dovecot level (N concurrent IMAP clients, connect + LOGIN + LOGOUT):
  first-login creations/s and existing-account logins/s against the same Dovecot configured
  with a static passdb holding one SHA512-CRYPT hash (Dovecot alone, asking nobody).

Every load is bounded by time and targets only loopback and unix sockets made here.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from dictclient import DictClient
from dovecot_harness import Relay, can_connect_unix, running_relay, wait_for

from chatmaild import pwhash
from chatmaild.dictserver import run_dict_service

PASSWORD = "bench-password-1"
_names = itertools.count()


def fresh_address() -> str:
    # 9 characters, the default username length: "b" + 8 digits, unique in this run
    return f"b{next(_names):08d}@example.org"


def passdb_key(addr: str, password: str = PASSWORD) -> str:
    return f'shared/passdb/{password}"{addr}'


def rate(clients: int, seconds: float, op: Callable[[int], Callable[[], None]]) -> float:
    """Operations per second of `clients` threads, each repeating its op for `seconds`."""
    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    deadline = 0.0

    def worker(i: int) -> None:
        nonlocal deadline
        do = op(i)
        start.wait()
        n = 0
        while time.monotonic() < deadline:
            do()
            n += 1
        counts[i] = n

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker, i) for i in range(clients)]
        deadline = time.monotonic() + seconds
        t0 = time.monotonic()
        start.wait()
        for f in futures:
            f.result()
        elapsed = time.monotonic() - t0
    return sum(counts) / elapsed


def dict_creations(sock: Path) -> Callable[[int], Callable[[], None]]:
    def op(_: int) -> Callable[[], None]:
        client = DictClient(sock)

        def create() -> None:
            addr = fresh_address()
            reply = client.lookup(passdb_key(addr), addr)
            if not reply.startswith("O"):
                raise RuntimeError(f"creation refused: {reply[:1]}")

        return create

    return op


def dict_lookups(sock: Path, addrs: list[str]) -> Callable[[int], Callable[[], None]]:
    def op(i: int) -> Callable[[], None]:
        client = DictClient(sock)
        keys = itertools.cycle([passdb_key(a) for a in addrs[i::8] or addrs])

        def lookup() -> None:
            if not client.request(f"L{next(keys)}\t").startswith("O"):
                raise RuntimeError("lookup failed")

        return lookup

    return op


class ConstantBackend:
    """The baseline dict backend: every lookup answers the same record at once."""

    def __init__(self, record: str) -> None:
        self.record = record

    async def lookup(self, key: str, user: str) -> str | None:
        return self.record

    def iterate(self, prefix: str, user: str) -> Iterator[tuple[str, str]]:
        return iter(())

    def accepts(self, key: str) -> bool:
        return False

    async def commit(self, user: str, changes: list[tuple[str, str | None]]) -> bool:
        return False


@contextlib.contextmanager
def constant_dict_service(record: str) -> Iterator[Path]:
    """The same dict server code in its own process, answering `record` to every lookup."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "constant.socket"
        proc = subprocess.Popen([sys.executable, __file__, "--serve-constant", str(sock), record])
        try:
            wait_for(lambda: can_connect_unix(sock), what="constant dict service")
            yield sock
        finally:
            proc.terminate()
            proc.wait(10)


def hashes(_: int) -> Callable[[], None]:
    return lambda: None if pwhash.hash_password(PASSWORD) else None


def imap_logins(relay: Relay, addrs: Iterator[str]) -> Callable[[int], Callable[[], None]]:
    lock = threading.Lock()

    def op(_: int) -> Callable[[], None]:
        def login() -> None:
            with lock:
                addr = next(addrs)
            conn = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=30)
            conn.login(addr, PASSWORD)
            conn.logout()

        return login

    return op


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each figure")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--serve-constant", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_constant:
        sock, record = args.serve_constant
        run_dict_service(Path(sock), ConstantBackend(record))
        return
    n, secs = args.clients, args.seconds
    results: dict[str, float] = {}

    def report(name: str, value: float, baseline_name: str | None = None) -> None:
        results[name] = round(value, 1)
        line = f"{name:<42} {value:>10.1f}/s"
        if baseline_name:
            line += f"   {value / results[baseline_name]:>5.2f} x {baseline_name}"
        print(line, flush=True)

    print(f"# {n} clients, {secs:g} s per figure, {os.cpu_count()} cores")
    report("baseline: sha512-crypt hashes", rate(os.cpu_count() or 1, secs, hashes))
    static_users = itertools.cycle([f"s{i:08d}@example.org" for i in range(1000)])
    with running_relay(static_password_hash=pwhash.hash_password(PASSWORD)) as baseline:
        static = "baseline: dovecot static-passdb logins"
        report(static, rate(n, secs, imap_logins(baseline, static_users)))
    with running_relay() as relay:
        sock = relay.doveauth_socket
        hashing = "baseline: sha512-crypt hashes"
        report("dict: first-login creations", rate(n, secs, dict_creations(sock)), hashing)
        existing = sorted(p.name for p in relay.mailboxes.iterdir())[:2000]
        with DictClient(sock) as c:
            record = c.lookup(passdb_key(existing[0]))[1:]
        constant = "baseline: dict constant lookups"
        with constant_dict_service(record) as const_sock:
            report(constant, rate(n, secs, dict_lookups(const_sock, existing)))
        report(
            "dict: existing-account lookups", rate(n, secs, dict_lookups(sock, existing)), constant
        )
        new_addrs = (fresh_address() for _ in itertools.count())
        report(
            "dovecot: first-login creations", rate(n, secs, imap_logins(relay, new_addrs)), static
        )
        report(
            "dovecot: existing-account logins",
            rate(n, secs, imap_logins(relay, itertools.cycle(existing))),
            static,
        )
    if args.json:
        args.json.write_text(
            json.dumps({"clients": n, "seconds": secs, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
