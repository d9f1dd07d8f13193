"""The chatmaild services on a relay: systemd units and the ini they read (relay-spec §1.1).

Every service runs as vmail from the venv at `layout.venv`, restarts on failure and sees the
filesystem read-only but for the mailboxes. The dict services get their socket directory
from systemd (`RuntimeDirectory`), so a stale socket never survives a reboot.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..layout import Layout
from ..templates import render

UNIT_DIR = "/etc/systemd/system"


@dataclass(frozen=True)
class Service:
    unit: str
    description: str
    args: str
    runtime_dir: str | None = None
    restart_sec: int = 5


def services(layout: Layout) -> list[Service]:
    ini = layout.ini
    return [
        Service(
            "doveauth",
            "chatmail: accounts for Dovecot, created at first login",
            f"{layout.bin('doveauth')} {layout.doveauth_socket} {ini}",
            runtime_dir=layout.doveauth_socket.parent.name,
        ),
        Service(
            "chatmail-lastlogin",
            "chatmail: records the day of each login",
            f"{layout.bin('lastlogin')} {layout.lastlogin_socket} {ini}",
            runtime_dir=layout.lastlogin_socket.parent.name,
        ),
        Service(
            "chatmail-metadata",
            "chatmail: IMAP METADATA, push notifications and TURN credentials",
            f"{layout.bin('chatmail-metadata')} {layout.metadata_socket} {ini}",
            runtime_dir=layout.metadata_socket.parent.name,
        ),
        Service(
            "filtermail",
            "chatmail: encryption gate for outgoing mail",
            f"{layout.bin('filtermail')} {ini} outgoing",
            restart_sec=2,
        ),
        Service(
            "filtermail-incoming",
            "chatmail: encryption gate for incoming mail and /mxdeliv",
            f"{layout.bin('filtermail')} {ini} incoming",
            restart_sec=2,
        ),
    ]


def chatmaild_files(layout: Layout) -> dict[str, str]:
    """{remote path: content}: one unit per service, the expiry timer, the ini."""
    files = {
        f"{UNIT_DIR}/{s.unit}.service": render(
            "chatmaild",
            "service.j2",
            description=s.description,
            exec_start=s.args,
            runtime_dir=s.runtime_dir,
            restart_sec=s.restart_sec,
            mailboxes=layout.mailboxes,
            # Dovecot must find the dict sockets when it starts
            before="dovecot.service" if s.runtime_dir else None,
        )
        for s in services(layout)
    }
    files[f"{UNIT_DIR}/chatmail-expire.service"] = render(
        "chatmaild",
        "expire.service.j2",
        exec_start=f"{layout.bin('chatmail-expire')} {layout.ini} -v --remove",
        mailboxes=layout.mailboxes,
    )
    files[f"{UNIT_DIR}/chatmail-expire.timer"] = render("chatmaild", "expire.timer.j2")
    return files
