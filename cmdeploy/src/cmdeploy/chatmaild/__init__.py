"""The chatmaild services on a relay: systemd units and the ini they read.

Every service runs from the venv at `layout.venv` and restarts on failure. The mail services
run as vmail and see the filesystem read-only but for the mailboxes; the dict services get
their socket directory from systemd (`RuntimeDirectory`), so a stale socket never survives a
reboot. chatmail-postlog, the scrubber of Postfix's and Dovecot's log lines
(doc/contract.md §12), owns nothing: it runs as a user of its own (`DynamicUser`) on a socket
systemd holds (`chatmail-postlog.socket`), which both daemons' units bind over their /dev/log
(`scrubbed_log_drop_in`). The outgoing gate's milter socket is systemd's too
(`filtermail.socket`): made with the owner, group and mode Postfix's smtpd needs before
filtermail runs, so filtermail is in no group of Postfix's, and held while filtermail restarts.

Each service may open as many descriptors (`LimitNOFILE`) as the connections Postfix and
Dovecot may hold to it at once, from the configured counts, plus `FD_HEADROOM`: systemd's
default soft limit of 1024 stalled a service at about 1020 open connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from chatmaild.config import Config
from chatmaild.metrics import NEW_SUBDIR
from chatmaild.registration import HANDED

from .. import health
from ..layout import Layout
from ..templates import render

UNIT_DIR = "/etc/systemd/system"
METRICS_UNIT = "chatmail-metrics"
# /run/chatmail-metrics exists from boot on, before any service that writes into it starts
METRICS_TMPFILES = "/etc/tmpfiles.d/chatmail-metrics.conf"
POSTLOG_UNIT = "chatmail-postlog"
GATE_UNIT = "filtermail"  # the outgoing gate, started by filtermail.socket
HEALTH_UNIT = "chatmail-health"
# Postfix's and Dovecot's syslog socket; a directory of its own, which systemd creates for the
# socket unit
POSTLOG_SOCKET = PurePosixPath("/run/chatmail-postlog/dev-log")
# glibc's syslog(3) writes to /dev/log, which Debian's systemd makes a symlink to this socket.
JOURNAL_DEV_LOG = PurePosixPath("/run/systemd/journal/dev-log")
# the drop-in's name in the `<unit>.service.d/` of each daemon that logs through the scrubber
SCRUBBED_LOG_DROP_IN = "chatmail-postlog.conf"


def scrubbed_log_drop_in(daemon: str, why_all: str) -> str:
    """The drop-in that binds the scrubber's socket over /dev/log in `daemon`'s unit;
    `why_all` says why every process of the daemon logs through that namespace."""
    return render(
        "chatmaild",
        "scrubbed-log.conf.j2",
        daemon=daemon,
        why_all=why_all,
        socket=POSTLOG_SOCKET,
        socket_unit=f"{POSTLOG_UNIT}.socket",
        journal_dev_log=JOURNAL_DEV_LOG,
    )


# The process's own descriptors (stdio, epoll, listeners, the resolver's and worker threads'
# sockets, files being read or written) need far less; 1024 was the whole limit before.
FD_HEADROOM = 1024
# Counts the config does not set. Postfix's default_process_limit bounds port 25 (smtpd),
# Dovecot's its LMTP and auth-worker processes; nginx has worker_connections 2048 per worker,
# half of them towards clients, so a relay with up to 8 cores (one worker each) proxies at
# most 8192 requests to /mxdeliv at once.
POSTFIX_DEFAULT_PROCESS_LIMIT = 100
DOVECOT_DEFAULT_PROCESS_LIMIT = 100
NGINX_UPSTREAM_CONNECTIONS = 8 * 2048 // 2
# Dovecot's auth workers (up to its default_process_limit) ask doveauth, each over one
# connection for passdb and one for userdb; doveadm's are few.
DOVEAUTH_CONNECTIONS = 2 * DOVECOT_DEFAULT_PROCESS_LIMIT


def open_file_limits(config: Config) -> dict[str, int]:
    """LimitNOFILE per service: its peers' connections at once, plus `FD_HEADROOM`."""
    return {
        "doveauth": DOVEAUTH_CONNECTIONS + FD_HEADROOM,
        # each imap process holds at most one connection to each dict service
        "chatmail-lastlogin": config.max_imap_connections + FD_HEADROOM,
        # ... and LMTP writes /private/messagenew through it for push notifications
        "chatmail-metadata": (
            config.max_imap_connections + DOVECOT_DEFAULT_PROCESS_LIMIT + FD_HEADROOM
        ),
        # submission (587) and smtps (465) each run max_smtp_connections sessions; each holds
        # a milter connection to filtermail, and filtermail one to the signing re-injection
        # port while it hands a message on: 2 * 2 * max_smtp_connections
        "filtermail": 4 * config.max_smtp_connections + FD_HEADROOM,
        # port 25 sessions and /mxdeliv requests, each with its re-injection connection
        "filtermail-incoming": (
            2 * (POSTFIX_DEFAULT_PROCESS_LIMIT + NGINX_UPSTREAM_CONNECTIONS) + FD_HEADROOM
        ),
        # Postfix's lmtp processes (up to its default_process_limit), each with a request to a
        # peer or a hand-over to the SMTP port at a time, and the pooled idle connections
        "filtermail-transport": 3 * POSTFIX_DEFAULT_PROCESS_LIMIT + FD_HEADROOM,
    }


@dataclass(frozen=True)
class Service:
    unit: str
    description: str
    args: str
    runtime_dir: str | None = None
    restart_sec: int = 5
    template: str = "service.j2"
    open_files: int | None = None  # LimitNOFILE; None: systemd's default
    groups: str | None = None  # SupplementaryGroups
    socket: str | None = None  # the socket unit that passes it its listening socket
    before: str | None = None  # a unit that must find this one's socket when it starts
    netlink: bool = False  # may open AF_NETLINK sockets


def services(layout: Layout) -> list[Service]:
    ini = layout.ini
    limits = open_file_limits(layout.config)
    snapshots = f"--metrics-dir {layout.metrics_dir}"
    return [
        Service(
            "doveauth",
            "chatmail: accounts for Dovecot, created at first login",
            f"{layout.bin('doveauth')} {layout.doveauth_socket} {ini} {snapshots}",
            runtime_dir=layout.doveauth_socket.parent.name,
            before="dovecot.service",  # Dovecot's dict clients connect when it starts
            open_files=limits["doveauth"],
        ),
        Service(
            "chatmail-lastlogin",
            "chatmail: records the day of each login",
            f"{layout.bin('lastlogin')} {layout.lastlogin_socket} {ini} {snapshots}",
            runtime_dir=layout.lastlogin_socket.parent.name,
            before="dovecot.service",  # Dovecot's dict clients connect when it starts
            open_files=limits["chatmail-lastlogin"],
        ),
        Service(
            "chatmail-metadata",
            "chatmail: IMAP METADATA, push notifications and TURN credentials",
            f"{layout.bin('chatmail-metadata')} {layout.metadata_socket} {ini} {snapshots}",
            runtime_dir=layout.metadata_socket.parent.name,
            before="dovecot.service",  # Dovecot's dict clients connect when it starts
            open_files=limits["chatmail-metadata"],
        ),
        Service(
            GATE_UNIT,
            "chatmail: encryption gate for outgoing mail",
            f"{layout.bin('filtermail')} {ini} outgoing {snapshots}",
            restart_sec=2,
            open_files=limits["filtermail"],
            socket=f"{GATE_UNIT}.socket",
        ),
        Service(
            "filtermail-incoming",
            "chatmail: encryption gate for incoming mail and /mxdeliv",
            f"{layout.bin('filtermail')} {ini} incoming {snapshots}",
            restart_sec=2,
            open_files=limits["filtermail-incoming"],
        ),
        Service(
            "filtermail-transport",
            "chatmail: delivers mail to other relays, over HTTPS first",
            f"{layout.bin('filtermail')} {ini} transport {snapshots}",
            restart_sec=2,
            open_files=limits["filtermail-transport"],
        ),
        Service(
            METRICS_UNIT,
            "chatmail: the Prometheus metrics nginx serves at /metrics",
            f"{layout.bin('chatmail-metrics')} {layout.metrics_socket} {ini}"
            f" --certificate {layout.tls.cert} {snapshots}",
            # `postqueue -j` needs the group its setgid bit would give (NoNewPrivileges), and
            # netlink: it lists the host's interfaces (getifaddrs) before anything else
            groups="postdrop",
            netlink=True,
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
    """{remote path: content}: one unit per service, the postlog and gate sockets, the expiry and
    health timers, and what the health check expects."""
    files = {
        f"{UNIT_DIR}/{s.unit}.service": render(
            "chatmaild",
            s.template,
            description=s.description,
            exec_start=s.args,
            runtime_dir=s.runtime_dir,
            restart_sec=s.restart_sec,
            open_files=s.open_files,
            groups=s.groups,
            netlink=s.netlink,
            mailboxes=layout.mailboxes,
            metrics_dir=layout.metrics_dir,
            before=s.before,
            socket=s.socket,
        )
        for s in services(layout)
    }
    files[f"{UNIT_DIR}/chatmail-expire.service"] = render(
        "chatmaild",
        "expire.service.j2",
        exec_start=f"{layout.bin('chatmail-expire')} {layout.ini} -v --remove",
        mailboxes=layout.mailboxes,
        handed=PurePosixPath(layout.config.registration_dir) / HANDED,
    )
    files[f"{UNIT_DIR}/chatmail-expire.timer"] = render("chatmaild", "expire.timer.j2")
    files[f"{UNIT_DIR}/{HEALTH_UNIT}.service"] = render(
        "chatmaild",
        "health.service.j2",
        exec_start=f"{layout.bin('chatmail-health')} {layout.ini}",
    )
    files[f"{UNIT_DIR}/{HEALTH_UNIT}.timer"] = render("chatmaild", "health.timer.j2")
    files.update(health.expectations(layout))
    files[f"{UNIT_DIR}/{POSTLOG_UNIT}.socket"] = render(
        "chatmaild", "postlog.socket.j2", socket=POSTLOG_SOCKET
    )
    files[f"{UNIT_DIR}/{GATE_UNIT}.socket"] = render(
        "chatmaild", "gate.socket.j2", socket=layout.gate_socket
    )
    files[METRICS_TMPFILES] = render(
        "chatmaild",
        "metrics-tmpfiles.conf.j2",
        metrics_dir=layout.metrics_dir,
        new_metrics_dir=layout.metrics_dir / NEW_SUBDIR,
    )
    return files
