"""Dovecot's configuration on a relay.

`dovecot_files` renders every file the deploy installs. `chatmail_conf` alone is what makes
any Dovecot a chatmail relay's: the component tests include exactly it into a private test
instance, so tests and relays run the same settings.

Each Debian release has its own Dovecot and configuration language: Debian 12 (`bookworm`)
ships Dovecot 2.3, whose templates sit in this folder; Debian 13 (`trixie`) ships 2.4, whose
templates sit in `trixie/` and are rendered from the same inputs (doc/debian13.md).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ..chatmaild import SCRUBBED_LOG_DROP_IN, UNIT_DIR, scrubbed_log_drop_in
from ..layout import Layout
from ..release import BOOKWORM, RELEASES, TRIXIE
from ..templates import render
from . import plugin

CONF_DIR = PurePosixPath("/etc/dovecot")
# imap-login processes kept ready; each serves many connections (high-performance mode)
LOGIN_PROCESSES = 4
# How Dovecot asks doveauth (doc/debian13.md): 2.3 through its dict passdb/userdb, 2.4
# through a Lua script; each release's file in the configuration directory.
AUTH_FILE = {BOOKWORM: "auth-dict.conf.ext", TRIXIE: "auth.lua"}


def _template(release: str, name: str) -> str:
    """The template's name for `render`: Dovecot 2.4's live in the release's folder."""
    if release not in RELEASES:
        raise ValueError(f"no Dovecot templates for Debian {release!r}")
    return name if release == BOOKWORM else f"{release}/{name}"


def chatmail_conf(
    layout: Layout,
    conf_dir: PurePosixPath = CONF_DIR,
    release: str = BOOKWORM,
    **overrides: object,
) -> str:
    config = layout.config
    quota_mb = max(1, config.max_mailbox_size // 2**20)
    variables: dict[str, object] = {
        "auth_dict_conf": conf_dir / AUTH_FILE[BOOKWORM],
        "auth_lua": conf_dir / AUTH_FILE[TRIXIE],
        "mailboxes_dir": layout.mailboxes,
        "metadata_socket": layout.metadata_socket,
        "lastlogin_socket": layout.lastlogin_socket,
        "admin_mail": config.privacy_mail,
        "imap_compress": config.imap_compress,
        "imap_rawlog": config.imap_rawlog,
        "quota_mb": quota_mb,
        # chatmail-quota-expire takes MB with decimals: exact for small quotas too
        "quota_target_mb": f"{config.max_mailbox_size * 0.7 / 2**20:g}",
        "max_message_size": config.max_message_size,
        "inner_message_size": config.inner_message_size_limit,
        "quota_expire": layout.bin("chatmail-quota-expire"),
    }
    variables.update(overrides)
    return render("dovecot", _template(release, "chatmail.conf.j2"), **variables)


DROP_IN_DIR = PurePosixPath(UNIT_DIR) / "dovecot.service.d"
RESTART_DROP_IN = str(DROP_IN_DIR / "chatmail-restart.conf")
# Debian's; the stale-log-socket check of the deploy looks into this process's namespace
MASTER_PID_FILE = "/run/dovecot/master.pid"


def dovecot_unit_files() -> dict[str, str]:
    """{remote path: content}: Dovecot's unit restarts it when it dies, and its log lines go
    through chatmail-postlog: its errors name accounts and maildir paths."""
    return {
        RESTART_DROP_IN: render("dovecot", "restart.conf.j2"),
        str(DROP_IN_DIR / SCRUBBED_LOG_DROP_IN): scrubbed_log_drop_in(
            "Dovecot", "every Dovecot process logs through its log process, never chrooted"
        ),
    }


def dovecot_files(
    layout: Layout, conf_dir: PurePosixPath = CONF_DIR, release: str = BOOKWORM
) -> dict[str, str]:
    """{remote path: content} of Dovecot's configuration for the Debian `release`."""
    config = layout.config
    tls = layout.tls
    files = {
        str(conf_dir / "dovecot.conf"): render(
            "dovecot",
            _template(release, "dovecot.conf.j2"),
            disable_ipv6=config.disable_ipv6,
            tls_cert=tls.cert,
            tls_key=tls.key,
            chatmail_conf=conf_dir / "chatmail.conf",
            sasl_socket=layout.sasl_socket,
            lmtp_socket=layout.lmtp_socket,
            login_processes=LOGIN_PROCESSES,
            max_imap_connections=config.max_imap_connections,
        ),
        str(conf_dir / "chatmail.conf"): chatmail_conf(layout, conf_dir, release),
    }
    auth_template = "auth-dict.conf.ext.j2" if release == BOOKWORM else "trixie/auth.lua"
    files[str(conf_dir / AUTH_FILE[release])] = render(
        "dovecot", auth_template, doveauth_socket=layout.doveauth_socket
    )
    return files


def packages(release: str) -> tuple[str, ...]:
    """Debian's packages for a relay's Dovecot on `release`, with the plugin's build tools.
    2.4 asks doveauth through its Lua driver, whose script opens the socket with lua-socket."""
    if release not in RELEASES:
        raise ValueError(f"no Dovecot packages for Debian {release!r}")
    lua = ("dovecot-auth-lua", "lua-socket") if release == TRIXIE else ()
    return ("dovecot-imapd", "dovecot-lmtpd", *lua, *plugin.BUILD_PACKAGES)


# The push hook's Lua script of earlier deploys: the hook is chatmail_notify's now (plugin.py).
RETIRED_FILES = ("push_notification.lua",)


def stale_files(release: str, conf_dir: PurePosixPath = CONF_DIR) -> list[str]:
    """Files a deploy for the other release, or an earlier deploy, left and this release's
    configuration does not name. Dovecot reads none (dovecot.conf includes chatmail.conf
    only), but a relay upgraded from 12 to 13 would keep a dict passdb that looks live to
    whoever reads /etc/dovecot; the deploy removes them."""
    other = [name for each, name in AUTH_FILE.items() if each != release]
    return [str(conf_dir / name) for name in (*other, *RETIRED_FILES)]
