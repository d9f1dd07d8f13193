"""Free loopback ports for the daemons the tests start (nginx, NSD, pebble)."""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 for TCP and UDP and on ::1 for TCP (nginx binds both
    addresses; NSD and pebble's DNS both protocols), never one handed out before in this run:
    the probe closes at once, so the kernel may offer its port again, and a fixture that
    takes several would start two listeners on one port."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            if port in _HANDED_OUT:
                continue
            try:
                with (
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
                    socket.socket(socket.AF_INET6) as v6,
                ):
                    udp.bind(("127.0.0.1", port))
                    v6.bind(("::1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
