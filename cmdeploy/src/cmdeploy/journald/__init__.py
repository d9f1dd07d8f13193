"""journald: volatile, short-lived logs; a drop-in, so Debian's journald.conf stays."""

from __future__ import annotations

from ..layout import Layout
from ..templates import render

CONF = "/etc/systemd/journald.conf.d/chatmail.conf"


def journald_files(layout: Layout) -> dict[str, str]:
    return {CONF: render("journald", "journald.conf.j2")}
