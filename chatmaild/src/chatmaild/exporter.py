"""chatmail-metrics: the relay's Prometheus endpoint (doc/metrics.md).

Serves `GET /metrics` over HTTP on a unix socket; nginx passes `https://<mail_domain>/metrics`
to it. Each scrape merges the services' snapshots (`metrics.read_snapshots`) with what is read
from the system at that moment:

- `chatmail_accounts`: the account directories;
- `chatmail_postfix_queue_messages{queue}`: Postfix's queues, from `postqueue -j`;
- `chatmail_imap_connections{state}`: IMAP connections to Dovecot, `active` (an imap process
  serves it) and `hibernated` (the rest of the established connections to ports 143 and 993,
  which also counts the few that have not logged in yet);
- `chatmail_tls_certificate_expiry_timestamp_seconds`: when the relay's certificate ends;
- `chatmail_metrics_source_ok{source}`: 1 when that reading worked, 0 when it did not.

Nothing here is logged per scrape, and no reading keeps an address: `postqueue -j` lists
recipients, of which only the queue names are counted.

Usage: chatmail-metrics SOCKET INI --certificate PATH [--metrics-dir DIR]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

from . import accounts, dictserver, health, metrics
from .config import Config
from .service import dict_service_parser, load_config_or_exit, setup_logging

log = logging.getLogger("chatmail-metrics")

IMAP_PORTS = (143, 993)
POSTFIX_QUEUES = ("active", "deferred", "hold", "incoming", "maildrop")
COMMAND_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0
MAX_REQUEST_HEAD = 8192
_TCP_ESTABLISHED = "01"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# --- readings: each returns None when it cannot be taken -------------------------------------


def postfix_queue_counts(
    run: Callable[[list[str]], str | None] | None = None,
) -> dict[str, int] | None:
    """Messages per Postfix queue, from `postqueue -j` read as the health check reads it."""
    output = (run or _run)(["postqueue", "-j"])
    if output is None:
        return None
    try:
        found, _deferred = health.group_queue(output)
    except health.QueueUnreadable:
        return None
    return {queue: found.get(queue, 0) for queue in POSTFIX_QUEUES}


def established_connections(ports: tuple[int, ...], proc: Path = Path("/proc")) -> int | None:
    """Established TCP connections whose local port is one of `ports` (IPv4 and IPv6)."""
    total, readable = 0, False
    for name in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / name).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _TCP_ESTABLISHED:
                port = int(fields[1].rpartition(":")[2], 16)
                total += port in ports
    return total if readable else None


def processes_named(name: str, proc: Path = Path("/proc")) -> int | None:
    count = 0
    try:
        entries = list(os.scandir(proc))
    except OSError:
        return None
    for entry in entries:
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                count += (proc / entry.name / "comm").read_text().strip() == name
    return count


def imap_connections(proc: Path = Path("/proc")) -> dict[str, int] | None:
    total = established_connections(IMAP_PORTS, proc)
    active = processes_named("imap", proc)
    if total is None or active is None:
        return None
    return {"active": active, "hibernated": max(0, total - active)}


def certificate_expiry(
    path: Path, run: Callable[[list[str]], str | None] | None = None
) -> float | None:
    """The certificate's notAfter as unix time."""
    output = (run or _run)(["openssl", "x509", "-noout", "-enddate", "-in", str(path)])
    if output is None or not output.startswith("notAfter="):
        return None
    try:
        return float(ssl.cert_time_to_seconds(output.strip().partition("=")[2]))
    except ValueError:
        return None


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


# --- the scrape ------------------------------------------------------------------------------


class Scraper:
    def __init__(self, config: Config, certificate: Path, metrics_dir: Path) -> None:
        self.mailboxes = accounts.Mailboxes(config.mailboxes_path)
        self.certificate = certificate
        self.metrics_dir = metrics_dir

    def scrape(self) -> str:
        registry = metrics.Registry()
        ok = registry.gauge(
            "chatmail_metrics_source_ok",
            "1 when the exporter could take this reading at the last scrape, else 0.",
            ("source",),
        )
        broken = metrics.read_snapshots(self.metrics_dir, registry)
        broken += metrics.read_snapshots(self.metrics_dir / metrics.NEW_SUBDIR, registry)
        ok.set(0 if broken else 1, source="snapshots")

        accounts_gauge = registry.gauge("chatmail_accounts", "Accounts on the relay.")
        try:
            accounts_gauge.set(len(self.mailboxes.addresses()))
            ok.set(1, source="accounts")
        except OSError:
            ok.set(0, source="accounts")

        queues = postfix_queue_counts()
        ok.set(queues is not None, source="postfix_queue")
        if queues is not None:
            family = registry.gauge(
                "chatmail_postfix_queue_messages", "Messages in Postfix's queues.", ("queue",)
            )
            for queue, count in queues.items():
                family.set(count, queue=queue)

        imap = imap_connections()
        ok.set(imap is not None, source="imap")
        if imap is not None:
            family = registry.gauge(
                "chatmail_imap_connections",
                "IMAP connections: active (served by an imap process) and hibernated.",
                ("state",),
            )
            for state, count in imap.items():
                family.set(count, state=state)

        expiry = certificate_expiry(self.certificate)
        ok.set(expiry is not None, source="certificate")
        if expiry is not None:
            registry.gauge(
                "chatmail_tls_certificate_expiry_timestamp_seconds",
                "When the relay's TLS certificate expires, as unix time.",
            ).set(expiry)
        return registry.render()


# --- HTTP on a unix socket -------------------------------------------------------------------


def answer(status: str, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def route(request_line: bytes, scrape: Callable[[], str]) -> bytes:
    parts = request_line.decode("ascii", "replace").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return answer("400 Bad Request", "bad request\n")
    method, target = parts[0], parts[1]
    if target.partition("?")[0] != "/metrics":
        return answer("404 Not Found", "not found\n")
    if method != "GET":
        return answer("405 Method Not Allowed", "only GET\n")
    return answer("200 OK", scrape(), CONTENT_TYPE)


async def serve(scraper: Scraper, socket_path: Path, stop: asyncio.Event) -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            # readings run subprocesses and walk /proc: off the event loop
            reply = await asyncio.to_thread(route, head.split(b"\r\n", 1)[0], scraper.scrape)
            writer.write(reply)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            with contextlib.suppress(ConnectionError):
                writer.write(answer("400 Bad Request", "bad request\n"))
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    server = await asyncio.start_unix_server(client, str(socket_path), limit=MAX_REQUEST_HEAD)
    # nginx's workers connect; what it answers is public at /metrics anyway
    os.chmod(socket_path, 0o666)  # noqa: S103
    log.info("serving metrics on %s", socket_path)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = dict_service_parser("chatmail-metrics", __doc__.splitlines()[0])
    parser.add_argument(
        "--certificate", type=Path, required=True, help="the relay's TLS certificate (PEM)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    config = load_config_or_exit(args.ini)
    scraper = Scraper(config, args.certificate, args.metrics_dir or metrics.METRICS_DIR)
    dictserver.run_service(args.socket, lambda stop: serve(scraper, args.socket, stop))
