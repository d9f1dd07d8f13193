"""Sends one push notification: an HTTP(S) POST of the raw token to the push endpoint.

Each worker thread keeps its own keep-alive connection to the endpoint and reopens it after
any error (doc/contract.md §5.7). The endpoint is the `push_endpoint` setting: the Delta Chat
notification service on a relay, a local fake in tests and in the lab.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from .pushqueue import LEVEL_CONCURRENCY

log = logging.getLogger("push")

TIMEOUT = 60.0


class HttpPusher:
    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"push endpoint must be an http(s) URL, not {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port
        self.path = parts.path or "/"
        self.timeout = timeout
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(sum(LEVEL_CONCURRENCY), "push")

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def post(self, token: str) -> int | None:
        """The HTTP status, or None after a network error or timeout (blocking)."""
        conn = self._connection()
        try:
            conn.request(
                "POST", self.path, body=token.encode(), headers={"Connection": "keep-alive"}
            )
            response = conn.getresponse()
            response.read()
            if response.will_close:
                conn.close()
            return response.status
        except (OSError, http.client.HTTPException) as e:
            log.warning("push endpoint unreachable: %s", type(e).__name__)
            conn.close()
            self._local.conn = None
            return None

    async def send(self, token: str) -> int | None:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.post, token)
