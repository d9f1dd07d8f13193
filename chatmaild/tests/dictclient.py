"""A minimal blocking client of the dict protocol, speaking like Dovecot's `proxy:` dict."""

from __future__ import annotations

import socket
from pathlib import Path


class DictClient:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self.send("H2\t2\t0\t\tauth")

    def send(self, line: str) -> None:
        self.file.write(line.encode() + b"\n")
        self.file.flush()

    def readline(self) -> str:
        raw = self.file.readline()
        if not raw:
            raise ConnectionError("server closed the connection")
        return raw.decode().rstrip("\n")

    def request(self, line: str) -> str:
        self.send(line)
        return self.readline()

    def lookup(self, key: str, user: str = "") -> str:
        return self.request(f"L{key}\t{user}")

    def iterate(self, prefix: str, user: str = "") -> list[str]:
        self.send(f"I0\t0\t{prefix}\t{user}")
        rows = []
        while (line := self.readline()) != "":
            rows.append(line)
        return rows

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> DictClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
