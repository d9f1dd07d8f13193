"""A local stand-in for the push notification service: records every POSTed token.

The real service is never contacted in tests; the relay's `push_endpoint` points here.
`statuses` maps a token to the HTTP status to answer (default 200), e.g. 410 for "gone".
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakePushServer:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.tokens: list[str] = []
        self.statuses: dict[str, int] = {}
        self.received = threading.Condition()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/notify"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        """Block until at least `count` tokens arrived (or the timeout); returns them all."""
        with self.received:
            self.received.wait_for(lambda: len(self.tokens) >= count, timeout)
            return list(self.tokens)


@contextlib.contextmanager
def running_fake_push() -> Iterator[FakePushServer]:
    fake: FakePushServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the relay expects

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            token = self.rfile.read(length).decode()
            # recorded before answering: the relay deletes its queue item only after the answer
            with fake.received:
                fake.tokens.append(token)
                fake.received.notify_all()
            self.send_response(fake.statuses.get(token, 200))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake = FakePushServer(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
