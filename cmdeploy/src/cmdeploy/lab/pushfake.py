"""A stand-in for the push notification service in the lab: appends each POSTed token to a
file and answers 200. Usage: python -m cmdeploy.lab.pushfake HOST PORT FILE"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            token = self.rfile.read(min(length, 8192)).decode("utf-8", "replace")
            with open(path, "a", encoding="utf-8") as f:
                f.write(token.replace("\n", " ") + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer((host, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
