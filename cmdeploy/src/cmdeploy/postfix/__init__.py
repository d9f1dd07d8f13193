"""Postfix on a relay: every SMTP door of the mail flow.

Peers deliver on 25 (STARTTLS mandatory), Delta Chat submits on 587 (STARTTLS) and 465
(implicit TLS) after a Dovecot SASL login. The port-25 listener hands the live SMTP dialogue to
filtermail (before-queue `smtpd_proxy_filter`, doc/contract.md §1.4), which re-injects what it
accepts into a loopback listener, on to Dovecot over LMTP. The submission listeners have
filtermail's outgoing gate as their milter (doc/milter.md): mail for local users only is queued
in that one pass, unsigned; mail with a recipient elsewhere the gate re-injects into the
loopback listener where it is DKIM-signed, and the submission's copy is dropped. Mail for
other domains goes over LMTP to filtermail's transport, which POSTs it to the peer's /mxdeliv
or hands it back on another loopback listener to Postfix's own SMTP client, with verified TLS
but for the exceptions of doc/contract.md §1.5 (doc/transport.md).

Postfix's log lines reach the journal only through chatmail-postlog (doc/contract.md §12: no
address or IP in any log line): a drop-in for the unit that runs the master binds the
scrubber's socket over journald's syslog socket in Postfix's mount namespace. Which unit that
is depends on the release: on Debian 12 the template `postfix@.service` (its instance
`postfix@-.service`; `postfix.service` only starts and stops it), on Debian 13
`postfix.service` itself (its `postfix@.service` serves only extra instances with their own
/etc/postfix-NAME, and would leave our drop-ins unused).

`postfix_files` renders every file the deploy installs; it is pure, so tests render it into a
temp directory and check it with Debian's `postconf` and `postmap`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath

from ..chatmaild import SCRUBBED_LOG_DROP_IN, UNIT_DIR, scrubbed_log_drop_in
from ..layout import Layout
from ..release import BOOKWORM, TRIXIE
from ..templates import render

CONFIG_DIR = PurePosixPath("/etc/postfix")
# Debian's compiled-in queue_directory, which main.cf leaves alone. Every Postfix daemon runs
# with it as working directory (and as root when chrooted), so sockets inside it are named
# relative to it: the same text works with and without chroot.
QUEUE_DIRECTORY = PurePosixPath("/var/spool/postfix")

# The lookup tables beside main.cf, each rendered from `<name>.j2`. All are regexp: tables,
# read as text when a process starts: none needs `postmap`; `postfix reload` picks up a change.
TABLES = ("submission_header_cleanup", "lmtp_header_cleanup", "login_map", "tls_policy")
POSTMAP_NEEDED: frozenset[str] = frozenset()

# the unit that runs the master, per release: on 12 every instance of Debian's template
# ("postfix@-.service" is the one that runs), on 13 the main unit
MASTER_UNIT = {BOOKWORM: "postfix@.service", TRIXIE: "postfix.service"}
POSTLOG_DROP_IN = f"postfix@.service.d/{SCRUBBED_LOG_DROP_IN}"
RESTART_DROP_IN = "postfix@.service.d/chatmail-restart.conf"
MASTER_PID_FILE = "/var/spool/postfix/pid/master.pid"
# the milter stages whose macros Postfix would send the gate, which reads none
# (postconf(5): milter_<stage>_macros)
MILTER_STAGES = ("connect", "helo", "mail", "rcpt", "data", "end_of_header", "end_of_data")

# at least two labels and a non-numeric last one: Postfix refuses a numeric myhostname
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
    re.IGNORECASE,
)


def postmap_needed(path: str) -> bool:
    """Whether the file at `path` must be compiled with `postmap` after it changed."""
    return PurePosixPath(path).name in POSTMAP_NEEDED


def postfix_files(
    layout: Layout,
    myhostname: str | None = None,
    config_dir: PurePosixPath = CONFIG_DIR,
    unit_dir: PurePosixPath = PurePosixPath(UNIT_DIR),
    release: str = BOOKWORM,
) -> dict[str, str]:
    """{remote path: content} of Postfix's configuration and the drop-in of its unit.

    `myhostname`: the name Postfix gives itself in its greeting, HELO and Received headers.
    By default the mail domain. An IPv4 relay has no domain: pass the reverse-pointer name of
    its address (a fact of the host, doc/contract.md §6.3); without one, Postfix takes the host's
    own name, since it refuses a numeric myhostname.
    """
    config = layout.config
    if myhostname is not None:
        myhostname = myhostname.removesuffix(".")  # as a PTR record names it
    if myhostname is not None and not _HOSTNAME_RE.match(myhostname):
        raise ValueError(f"myhostname {myhostname!r}: expected a host name such as mx.example.org")
    if myhostname is None and not config.is_ipv4:
        myhostname = config.mail_domain
    tables = {name: config_dir / name for name in TABLES}
    # IPv4 relays have no DKIM key (doc/contract.md §6.3): peers cannot look one up for an IP
    milter = None if config.is_ipv4 else f"unix:{_in_spool(layout.opendkim_socket)}"
    networks = ["127.0.0.0/8"] if config.disable_ipv6 else ["127.0.0.0/8", "[::1]/128"]
    reinject_host = _ip(config.postfix_host, "postfix_host")
    if not reinject_host.is_loopback:
        # filtermail runs on this host: it connects from the address it re-injects to
        networks.append(_network(reinject_host))
    tls = layout.tls
    main_cf = render(
        "postfix",
        "main.cf.j2",
        myhostname=myhostname,
        address_domain=config.address_domain,
        inet_protocols="ipv4" if config.disable_ipv6 else "all",
        mynetworks=" ".join(networks),
        tls_cert=tls.cert,
        tls_key=tls.key,
        tls_mode=tls.mode,
        sasl_path=_in_spool(layout.sasl_socket),
        lmtp_socket=_in_spool(layout.lmtp_socket),
        milter=milter,
        inner_message_size=config.inner_message_size_limit,
        tables=tables,
        transport=_host_port(
            _ip(config.filtermail_host, "filtermail_host"), config.filtermail_lmtp_port_transport
        ),
    )
    filtermail = _ip(config.filtermail_host, "filtermail_host")
    master_cf = render(
        "postfix",
        "master.cf.j2",
        gate_socket=layout.gate_socket,
        milter_stages=MILTER_STAGES,
        filter_incoming=_host_port(filtermail, config.filtermail_smtp_port_incoming),
        reinject=_host_port(reinject_host, config.postfix_reinject_port),
        reinject_incoming=_host_port(reinject_host, config.postfix_reinject_port_incoming),
        reinject_smtp=_host_port(reinject_host, config.postfix_reinject_port_smtp),
        max_smtp_connections=config.max_smtp_connections,
        max_message_size=config.max_message_size,
        # 0 would mean "no limit" to Postfix, not "none per IP"
        per_ip_connections=max(1, config.max_smtp_connections // 5),
        milter=milter,
        tables=tables,
    )
    files = {
        str(config_dir / "main.cf"): main_cf,
        str(config_dir / "master.cf"): master_cf,
    }
    for name, path in tables.items():
        files[str(path)] = render("postfix", f"{name}.j2")
    drop_ins = unit_dir / f"{MASTER_UNIT[release]}.d"
    files[str(drop_ins / SCRUBBED_LOG_DROP_IN)] = scrubbed_log_drop_in(
        "Postfix", "none of its daemons runs chrooted, see master.cf"
    )
    files[str(drop_ins / PurePosixPath(RESTART_DROP_IN).name)] = render(
        "postfix", "restart.conf.j2", pid_file=MASTER_PID_FILE, release=release
    )
    return files


def stale_files(release: str, unit_dir: PurePosixPath = PurePosixPath(UNIT_DIR)) -> list[str]:
    """The other release's drop-ins. On a relay upgraded from 12 to 13 they would sit on the
    template unit that no longer runs the master: harmless, but they look live."""
    return [
        str(unit_dir / f"{unit}.d" / name)
        for other, unit in MASTER_UNIT.items()
        if other != release
        for name in (SCRUBBED_LOG_DROP_IN, PurePosixPath(RESTART_DROP_IN).name)
    ]


def _in_spool(path: PurePosixPath) -> PurePosixPath:
    """A socket in Postfix's spool, named relative to the queue directory."""
    if not path.is_relative_to(QUEUE_DIRECTORY):
        raise ValueError(f"{path}: Postfix reaches only sockets below {QUEUE_DIRECTORY}")
    return path.relative_to(QUEUE_DIRECTORY)


def _ip(value: str, key: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{key} = {value!r}: Postfix needs an IP address here") from None


def _host_port(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _network(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{ip}]/128" if ip.version == 6 else f"{ip}/32"
