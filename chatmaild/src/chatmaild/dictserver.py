"""A unix-socket server for Dovecot's dict protocol, generic over a backend.

Each connection is served by its own asyncio task, so a slow or silent client never delays
another; requests of one connection are answered in order, as Dovecot expects. Transactions
belong to their connection (Dovecot reuses ids such as `1` across connections). A line longer
than `MAX_LINE`, or more than `MAX_TRANSACTIONS` open at once, close that connection; a
transaction that would take the connection's staged changes past `MAX_STAGED` fails (`F` at
its commit) and the connection goes on. Backends do their quick work inline and hand slow work
(hashing, fsync) to a thread with `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from . import dictproto as dp
from .service import fail, quiet_accept_errors

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
# Dovecot's dict client keeps a transaction open for one login (lastlogin: one key) or one
# SETMETADATA command (one key per entry, small values), one or two at a time per connection:
# bounds far above that, which only a broken or hostile client reaches, keep its memory small.
MAX_TRANSACTIONS = 32  # open at once on one connection
MAX_STAGED = 256 * 1024  # characters of keys and values staged on one connection
LISTEN_BACKLOG = 1000
_WRITE_HIGH_WATER = 64 * 1024
# What a request that Dovecot waits on gets when it fails: an iteration must still end.
_FAILURE_REPLIES = {
    "L": dp.REPLY_FAIL,
    "C": dp.REPLY_FAIL,
    "D": dp.REPLY_FAIL,
    "I": dp.ITERATION_END,
}


class DictBackend(Protocol):
    async def lookup(self, key: str, user: str) -> str | None:
        """The value for `key`, or None (the protocol's "not found")."""

    def iterate(self, prefix: str, user: str) -> Iterable[tuple[str, str]]:
        """Rows (key, value) under `prefix`."""

    def accepts(self, key: str) -> bool:
        """Whether a transaction may set or unset `key`."""

    async def commit(self, user: str, changes: list[tuple[str, str | None]]) -> bool:
        """Apply (key, value) changes, value None meaning unset. True on success."""


@dataclass
class _Transaction:
    user: str
    ok: bool = True
    changes: list[tuple[str, str | None]] = field(default_factory=list)
    size: int = 0  # characters of keys and values in `changes`


class TooManyTransactions(Exception):
    """A client has more transactions open than `MAX_TRANSACTIONS`: its connection closes."""


class DictConnection:
    """The state of one client connection: its open transactions."""

    def __init__(self, backend: DictBackend) -> None:
        self.backend = backend
        self.transactions: dict[str, _Transaction] = {}
        self.staged = 0  # the sum of their sizes

    async def handle(self, line: str) -> bytes:
        """The reply bytes for one request line (empty when the request has no reply)."""
        try:
            req = dp.parse_request(line)
        except dp.ProtocolError as e:
            # Dovecot's own server logs and drops such lines; the command byte is safe to log.
            log.warning("ignoring malformed dict request %r: %s", line[:1], e)
            return _FAILURE_REPLIES.get(line[:1], b"")
        try:
            return await self._dispatch(req)
        except TooManyTransactions:
            raise
        except Exception as e:  # noqa: BLE001 (request boundary: answer F, keep serving)
            log.error("dict request %r failed: %s", line[:1], type(e).__name__)
            if isinstance(req, dp.Iterate):
                return dp.ITERATION_END
            return dp.REPLY_FAIL if isinstance(req, dp.Lookup | dp.Commit) else b""

    async def _dispatch(self, req: dp.Request) -> bytes:
        match req:
            case dp.Lookup(key, user):
                return dp.reply_lookup(await self.backend.lookup(key, user))
            case dp.Iterate(_, max_rows, prefix, user):
                rows = []
                for n, (key, value) in enumerate(self.backend.iterate(prefix, user)):
                    if max_rows and n >= max_rows:
                        break
                    rows.append(dp.reply_row(key, value))
                return b"".join(rows) + dp.ITERATION_END
            case dp.Begin(txid, user):
                self._end(txid)  # a reused id starts afresh
                if len(self.transactions) >= MAX_TRANSACTIONS:
                    raise TooManyTransactions
                self.transactions[txid] = _Transaction(user)
            case dp.Set(txid, key, value):
                self._stage(txid, key, value)
            case dp.Unset(txid, key):
                self._stage(txid, key, None)
            case dp.Rollback(txid):
                self._end(txid)
            case dp.Commit(txid, is_async):
                tx = self._end(txid)
                ok = tx is not None and tx.ok
                if tx is not None and tx.ok and tx.changes:
                    ok = await self.backend.commit(tx.user, tx.changes)
                return dp.reply_commit(ok, txid, is_async)
        return b""

    def _stage(self, txid: str, key: str, value: str | None) -> None:
        tx = self.transactions.get(txid)
        if tx is None:
            log.warning("dict request for unknown transaction")
            return
        if not tx.ok:
            return  # failed already (and logged): its changes are never applied
        if not self.backend.accepts(key):
            log.error("refusing to set an unknown dict key; transaction fails")
            self._fail(tx)
            return
        size = len(key) + len(value or "")
        if self.staged + size > MAX_STAGED:
            log.warning("dict transaction fails: over %d characters staged", MAX_STAGED)
            self._fail(tx)
            return
        tx.changes.append((key, value))
        tx.size += size
        self.staged += size

    def _fail(self, tx: _Transaction) -> None:
        """The transaction's commit will answer F: drop what it staged."""
        tx.ok = False
        tx.changes.clear()
        self.staged -= tx.size
        tx.size = 0

    def _end(self, txid: str) -> _Transaction | None:
        tx = self.transactions.pop(txid, None)
        if tx is not None:
            self.staged -= tx.size
        return tx


async def _serve_client(
    backend: DictBackend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    conn = DictConnection(backend)
    try:
        while True:
            try:
                raw = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:
                log.warning("closing dict connection: request line over %d bytes", MAX_LINE)
                return
            try:
                reply = await conn.handle(raw[:-1].decode("utf-8", "surrogateescape"))
            except TooManyTransactions:
                log.warning("closing dict connection: over %d open transactions", MAX_TRANSACTIONS)
                return
            if reply:
                writer.write(reply)
                if writer.transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
                    await writer.drain()
    except ConnectionError:
        return
    except Exception as e:  # noqa: BLE001 (connection boundary: never stop the service)
        log.error("dict connection failed: %s", type(e).__name__)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _remove_stale_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


async def serve(
    socket_path: Path,
    backend: DictBackend,
    stop: asyncio.Event,
    on_ready: Callable[[], object] = lambda: None,
    mode: int = 0o660,
) -> None:
    """Serve until `stop` is set; then close the listener and every client connection."""
    _remove_stale_socket(socket_path)
    connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = cast("asyncio.Task[Any]", asyncio.current_task())  # never None inside a task
        connections[task] = writer
        try:
            await _serve_client(backend, reader, writer)
        finally:
            connections.pop(task, None)

    server = await asyncio.start_unix_server(
        client, path=str(socket_path), limit=MAX_LINE, backlog=LISTEN_BACKLOG
    )
    os.chmod(socket_path, mode)
    log.info("listening on %s", socket_path)
    on_ready()
    async with server:
        await stop.wait()
        # Inside the block: leaving it waits (Python 3.12 and later, so Debian 13) until every
        # connection has ended, and Dovecot keeps its connections open. Closing a connection
        # ends its reader with EOF, so each client task finishes normally.
        server.close()
        for writer in list(connections.values()):
            writer.close()
        await asyncio.gather(*connections, return_exceptions=True)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()


def run_service(
    socket_path: Path,
    serve_until: Callable[[asyncio.Event], Awaitable[None]],
    snapshots: Callable[[], asyncio.Task[None] | None] = lambda: None,
) -> None:
    """Run `serve_until(stop)` until SIGTERM or SIGINT sets `stop`; beside it the task
    `snapshots()` starts (the metrics snapshots, `metrics.start_snapshots`), if any.

    A socket that cannot be created (missing directory, no permission) ends the process with
    one line naming it, not a traceback. Out of descriptors, failing accepts make one line a
    minute (`service.quiet_accept_errors`), not one per client waiting in the backlog.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        quiet_accept_errors(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = snapshots()
        try:
            await serve_until(stop)
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(main())
    except OSError as e:
        fail(f"cannot listen on {socket_path}: {e.strerror}")


def run_dict_service(
    socket_path: Path,
    backend: DictBackend,
    snapshots: Callable[[], asyncio.Task[None] | None] = lambda: None,
) -> None:
    run_service(socket_path, lambda stop: serve(socket_path, backend, stop), snapshots)
