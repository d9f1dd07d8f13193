"""The chatmaild services on a relay: systemd units and the ini they read (relay-spec §1.1).

Every service runs from the venv at `layout.venv` and restarts on failure. The mail services
run as vmail and see the filesystem read-only but for the mailboxes; the dict services get
their socket directory from systemd (`RuntimeDirectory`), so a stale socket never survives a
reboot. chatmail-postlog, the scrubber of Postfix's log lines (spec §9), owns nothing: it runs
as a user of its own (`DynamicUser`) on a socket systemd holds (`chatmail-postlog.socket`),
which Postfix's unit binds over its /dev/log (see `cmdeploy.postfix`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from ..layout import Layout
from ..templates import render

UNIT_DIR = "/etc/systemd/system"
POSTLOG_UNIT = "chatmail-postlog"
# Postfix's syslog socket; a directory of its own, which systemd creates for the socket unit
POSTLOG_SOCKET = PurePosixPath("/run/chatmail-postlog/dev-log")


@dataclass(frozen=True)
class Service:
    unit: str
    description: str
    args: str
    runtime_dir: str | None = None
    restart_sec: int = 5
    template: str = "service.j2"


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
        Service(
            POSTLOG_UNIT,
            "chatmail: removes addresses and IPs from Postfix's log lines",
            str(layout.bin("chatmail-postlog")),
            # Postfix waits on a full socket while it is down: back at once
            restart_sec=1,
            template="postlog.service.j2",
        ),
    ]


def chatmaild_files(layout: Layout) -> dict[str, str]:
    """{remote path: content}: one unit per service, the postlog socket, the expiry timer."""
    files = {
        f"{UNIT_DIR}/{s.unit}.service": render(
            "chatmaild",
            s.template,
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
    files[f"{UNIT_DIR}/{POSTLOG_UNIT}.socket"] = render(
        "chatmaild", "postlog.socket.j2", socket=POSTLOG_SOCKET
    )
    return files
