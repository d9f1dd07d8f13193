"""The pyinfra deploy of a chatmail relay, run by `cmdeploy run`.

pyinfra executes this file against one host. Components come in the order of the list at
the bottom; all installs run first, then all configures, then all activates
(`CMDEPLOY_STAGES` selects stages; `CHATMAIL_WEBSITE_ONLY` uploads the web pages alone).
A service restarts only when one of its files changed, and only after its configuration
was validated (`postconf`, `doveconf -n`, `nginx -t`).
Keys and secrets are generated once, on the relay, and kept.

The host's Debian release (`cmdeploy.release`) is read from its /etc/os-release, a fact
gathered before any operation is planned, and given to every component: Debian 12 and 13
ship different Dovecot versions (packages, configuration files) and run Postfix's master in
different units (doc/debian13.md).

Inputs come from the environment: `CHATMAIL_INI` (the local ini), `CHATMAILD_WHEELS` (chatmaild and
its dependencies as wheels, built on the operator's machine), `CHATMAIL_WEBSITE` (a built web site
directory, optional), `CHATMAIL_VERSION` (the checkout's commit), `CHATMAIL_DISABLE_MAIL`.
"""

from __future__ import annotations

import functools
import io
import os
import secrets
import shlex
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from pyinfra import host  # type: ignore[attr-defined]  # set while a deploy runs
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File, FileContents
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from chatmaild.config import read_config
from chatmaild.registration import HANDED, INVITES, USES

# absolute imports: pyinfra executes this file as a script, not as part of the package
from cmdeploy import acme
from cmdeploy.chatmaild import (
    HEALTH_UNIT,
    JOURNAL_DEV_LOG,
    METRICS_TMPFILES,
    POSTLOG_SOCKET,
    POSTLOG_UNIT,
    chatmaild_files,
    services,
)
from cmdeploy.coturn import turnserver_conf
from cmdeploy.dovecot import MASTER_PID_FILE as DOVECOT_MASTER_PID_FILE
from cmdeploy.dovecot import dovecot_files, dovecot_unit_files, stale_files
from cmdeploy.dovecot import packages as dovecot_packages
from cmdeploy.dovecot import plugin as dovecot_plugin
from cmdeploy.health import expectations
from cmdeploy.journald import journald_files
from cmdeploy.layout import Layout
from cmdeploy.nginx import nginx_files
from cmdeploy.opendkim import genkey_command, opendkim_files
from cmdeploy.postfix import MASTER_PID_FILE as POSTFIX_MASTER_PID_FILE
from cmdeploy.postfix import postfix_files, postmap_needed
from cmdeploy.postfix import stale_files as postfix_stale_files
from cmdeploy.release import parse_os_release, release_of, supported_text
from cmdeploy.unbound import unbound_files

Ops = list[OperationMeta]
MAIL_UNITS = ("postfix", "dovecot")
PENDING_RESTARTS = "/var/lib/chatmail/pending-restart"
# While packages install, their services must not start with Debian's default configuration.
POLICY_RC = "/usr/sbin/policy-rc.d"
WORKER_CONNECTIONS = 2048
# Dovecot watches the mailbox of every IDLE connection with inotify, all of them as the one
# user vmail; past Debian's 128 instances per user it falls back to polling every 30 s, and
# mail reaches phones that much later.
SYSCTL_FILE = "/etc/sysctl.d/90-chatmail.conf"
SYSCTL = (
    "# managed by cmdeploy: Dovecot's IDLE connections all watch mailboxes as user vmail\n"
    "fs.inotify.max_user_instances = 65536\n"
    "fs.inotify.max_user_watches = 1048576\n"
)


def venv_matches(venv: str) -> str:
    """A command that prints "ok" when `venv` exists and was made by the host's python3."""
    version = "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'"
    found = f'[ -x {venv}/bin/python ] && [ -d {venv}/lib/python"$v" ]'
    return f"v=$({version}); {found} && echo ok || true"


def stale_log_socket(pid_file: str) -> str:
    """A command that prints "stale" when the log socket in the mount namespace of the master
    whose pid `pid_file` holds is no longer the scrubber's current one."""
    return (
        f"m=$(head -1 {pid_file} 2>/dev/null | tr -d ' '); "
        f'[ -n "$m" ] && [ -S {POSTLOG_SOCKET} ] && '
        f'[ "$(stat -Lc %i /proc/$m/root{JOURNAL_DEV_LOG} 2>/dev/null)" '
        f'!= "$(stat -c %i {POSTLOG_SOCKET})" ] && echo stale || true'
    )


def logs_nowhere(pid_file: str) -> bool:
    """Whether a running daemon still holds a log socket that chatmail-postlog no longer
    serves (its socket unit was started anew, e.g. after failing, but the daemon was not):
    its lines would be lost until it restarts onto the current socket."""
    return "stale" in (host.get_fact(Command, stale_log_socket(pid_file)) or "")


def put(
    contents: dict[str, str], mode: str = "644", user: str = "root", group: str = "root"
) -> Ops:
    return [
        files.put(
            name=f"Install {path}",
            src=io.StringIO(text),
            dest=path,
            mode=mode,
            user=user,
            group=group,
        )
        for path, text in contents.items()
    ]


def restart(unit: str, changed: Ops, check: str | None = None, force: bool = False) -> None:
    """Keep `unit` enabled and running; restart it if any of `changed` changed, after
    `check` (a command that validates its configuration) succeeded.

    A change leaves a marker on the relay until the restart succeeded: a deploy that failed
    in between restarts the unit on the next run although its files no longer change.
    With `--disable-mail` (a migration step, doc/contract.md §10) Postfix and Dovecot stay
    configured but stopped and disabled. `force` restarts it in any case (a fact showed it
    needs one)."""
    if unit in MAIL_UNITS and os.environ.get("CHATMAIL_DISABLE_MAIL"):
        systemd.service(name=f"Stop {unit}", service=unit, running=False, enabled=False)
        return
    marker = f"{PENDING_RESTARTS}/{unit}"
    pending = force or not missing(marker)
    if changed:
        files.directory(name="Pending restarts", path=PENDING_RESTARTS, mode="700")
        files.file(name=f"Mark {unit} for restart", path=marker, _if=any_changed(*changed))
    if changed or pending:
        needed = None if pending else any_changed(*changed)
        if check:
            server.shell(name=f"Validate the {unit} configuration", commands=[check], _if=needed)
        systemd.service(
            name=f"Restart {unit}", service=unit, restarted=True, daemon_reload=True, _if=needed
        )
        # decided when it runs: when planned, the marker may not exist yet
        server.shell(name=f"Restarted {unit}", commands=[f"rm -f {marker}"], _if=needed)
    systemd.service(name=f"Run {unit}", service=unit, running=True, enabled=True)


@functools.cache
def turn_secret(layout: Layout) -> tuple[str, bool]:
    """The relay's TURN secret and whether it is new: read from the relay, or generated
    once here, so chatmail-metadata and coturn get the same value in this very run."""
    stored = host.get_fact(FileContents, path=str(layout.turn_secret))
    if stored and "".join(stored).strip():
        return "".join(stored).strip(), False
    return secrets.token_hex(32), True


def host_release() -> str:
    """The host's Debian release; pre-flight refused any other, but pyinfra may be run by
    hand: a deploy for the wrong release would break Dovecot, so it stops here."""
    lines = host.get_fact(FileContents, path="/etc/os-release") or []
    os_release = parse_os_release("\n".join(lines))
    release = release_of(os_release)
    if release is None:
        name = os_release.get("PRETTY_NAME", "an unknown system")
        raise SystemExit(f"the host runs {name}; cmdeploy deploys onto {supported_text()}")
    return release


def remove_stale(paths: list[str]) -> Ops:
    """Removes what a deploy for the other Debian release left (a relay upgraded in place)."""
    return [
        files.file(
            name=f"Remove {path} (left for the other Debian release)", path=path, present=False
        )
        for path in paths
        if not missing(path)
    ]


def missing(path: object) -> bool:
    """Whether a file is absent on the relay (a fact gathered before any change)."""
    return host.get_fact(File, path=str(path)) is None


class Component:
    """One piece of the relay; override what applies."""

    packages: tuple[str, ...] = ()

    def __init__(self, layout: Layout, release: str) -> None:
        self.layout = layout
        self.release = release
        self.changed: Ops = []

    def install(self) -> None:
        if self.packages:
            apt.packages(
                name=f"Install {', '.join(self.packages)}",
                packages=list(self.packages),
                no_recommends=True,
            )

    def configure(self) -> None:
        pass

    def activate(self) -> None:
        pass


class Base(Component):
    packages = ("ca-certificates", "openssl", "python3-venv", "rsync")

    def install(self) -> None:
        apt.update(name="Update package lists", cache_time=24 * 3600)
        super().install()
        server.user(  # noqa: S604 (`shell` is the user's login shell, not a command)
            name="Create user vmail",
            user="vmail",
            home="/home/vmail",
            shell="/usr/sbin/nologin",
            system=True,
            create_home=True,
        )

    def configure(self) -> None:
        files.directory(
            name="Mailboxes directory",
            path=str(self.layout.mailboxes),
            user="vmail",
            group="vmail",
            mode="700",
        )
        put({"/etc/mailname": self.layout.config.mail_domain + "\n"})
        limits = put({SYSCTL_FILE: SYSCTL})
        # A container (the lab's hosts) cannot change the kernel's limits: its host must.
        server.shell(
            name="Apply the kernel limits",
            commands=[f"sysctl -q -p {SYSCTL_FILE} || echo 'kernel limits: read-only here'"],
            _if=any_changed(*limits),
        )


class Journald(Component):
    def configure(self) -> None:
        self.changed = put(journald_files(self.layout))

    def activate(self) -> None:
        restart("systemd-journald", self.changed)


class Unbound(Component):
    packages = ("unbound", "dns-root-data")

    def configure(self) -> None:
        self.changed = put(unbound_files(self.layout))
        put({"/etc/resolv.conf": "# managed by cmdeploy\nnameserver 127.0.0.1\n"})

    def activate(self) -> None:
        # the root trust anchor appears at unbound's first start, which has not happened yet
        # on a fresh host: the helper Debian's unit runs puts it in place first
        check = "/usr/libexec/unbound-helper root_trust_anchor_update && unbound-checkconf"
        restart("unbound", self.changed, check=check)


class Tls(Component):
    """The certificate and key every TLS listener reads (doc/contract.md §6.1): generated once for
    self-signed relays, and as a placeholder for ACME relays until certbot replaced it."""

    def configure(self) -> None:
        layout = self.layout
        tls = layout.tls
        if tls.mode == "external" or not missing(tls.cert):
            return
        domain = layout.config.mail_domain
        if layout.config.is_ipv4:
            names = [f"IP:{domain}"]
        else:
            names = [f"DNS:{n}" for n in acme.names(layout)]
        what = "Self-signed certificate" if tls.mode == "self" else "Placeholder certificate"
        server.shell(
            name=f"{what} (once)",
            commands=[acme.placeholder_command(layout, days=36500, names=names)],
        )


class Acme(Component):
    """certbot, its deploy hook and daily timer; the first certificate is requested once nginx
    answers on port 80 with the challenge webroot, hence this component comes after Nginx.
    With an external certificate: the path unit that reloads the services when it changes."""

    def __init__(self, layout: Layout, release: str) -> None:
        super().__init__(layout, release)
        self.enabled = layout.tls.mode == "acme"
        self.external = layout.tls.mode == "external"
        self.packages = ("certbot",) if self.enabled else ()

    def configure(self) -> None:
        if self.external:
            self.changed = self.put_units(acme.external_reload_files(self.layout))
        if not self.enabled:
            return
        files.directory(name="ACME challenge webroot", path=str(self.layout.acme_webroot))
        self.changed = self.put_units(acme.acme_files(self.layout))

    @staticmethod
    def put_units(contents: dict[str, tuple[str, str]]) -> Ops:
        return [
            files.put(name=f"Install {path}", src=io.StringIO(text), dest=path, mode=mode)
            for path, (text, mode) in contents.items()
        ]

    def activate(self) -> None:
        if self.external:
            systemd.daemon_reload(name="Load the reload units", _if=any_changed(*self.changed))
            systemd.service(
                name="Watch the certificate", service=acme.RELOAD_PATH, running=True, enabled=True
            )
        if not self.enabled:
            return
        systemd.daemon_reload(name="Load the ACME units", _if=any_changed(*self.changed))
        systemd.service(
            name="Daily certificate check", service=acme.TIMER, running=True, enabled=True
        )
        # Until a certificate was issued every run asks for one; after, only a changed request
        # does (renewal is the timer's). A failure leaves the relay on its placeholder: not a
        # failed deploy, but a pending certificate that the run's summary reports.
        first = missing(acme.issued_cert(self.layout))
        server.shell(
            name="Request the certificate (ACME)",
            commands=[f"systemctl start {acme.SERVICE} || true"],
            _if=None if first else any_changed(*self.changed),
        )


class Chatmaild(Component):
    def __init__(self, layout: Layout, release: str) -> None:
        super().__init__(layout, release)
        self.socket_changed: Ops = []

    def configure(self) -> None:
        layout = self.layout
        wheels = sorted(Path(os.environ["CHATMAILD_WHEELS"]).glob("*.whl"))
        remote = f"{layout.lib_dir}/wheels"
        files.directory(name="chatmaild wheel directory", path=remote, mode="755")
        uploaded = [
            files.put(name=f"Upload {w.name}", src=str(w), dest=f"{remote}/{w.name}")
            for w in wheels
        ]
        chatmaild_wheel = next(w.name for w in wheels if w.name.startswith("chatmaild-"))
        # A venv is tied to the Python that made it: after an upgrade of Debian (12's 3.11 to
        # 13's 3.13) its packages sit under the old version's lib/ and import nothing. Such a
        # venv, or none, is made anew, whatever the wheels did.
        venv_ok = host.get_fact(Command, venv_matches(str(layout.venv))) or ""
        remake = "ok" not in venv_ok
        installed = server.shell(
            name="Install chatmaild into its venv",
            commands=[
                f"rm -rf {layout.venv} && python3 -m venv {layout.venv}"
                if remake
                else f"test -x {layout.venv}/bin/python || python3 -m venv {layout.venv}",
                f"{layout.venv}/bin/pip install --quiet --no-index --find-links {remote}"
                f" --force-reinstall {remote}/{chatmaild_wheel}",
            ],
            _if=None if remake else any_changed(*uploaded),
        )
        ini = files.put(
            name="Install chatmail.ini",
            src=os.environ["CHATMAIL_INI"],
            dest=str(layout.ini),
            mode="644",
        )
        self.registration_dirs()
        secret, new = turn_secret(layout)
        if new:
            # generated once per relay, kept on it: later deploys read it back
            put({str(layout.turn_secret): secret + "\n"}, mode="640", group="vmail")
        unit_files = chatmaild_files(layout)
        units = put(unit_files)
        by_path = dict(zip(unit_files, units, strict=True))
        server.shell(
            name="Create the metrics directory",
            commands=[f"systemd-tmpfiles --create {METRICS_TMPFILES}"],
            _if=any_changed(by_path[METRICS_TMPFILES]),
        )
        # what the health check expects is read by it alone: no service restarts for it
        restarting = [op for path, op in by_path.items() if path not in expectations(layout)]
        self.changed = [*uploaded, installed, ini, *restarting]
        # systemd holds the postlog socket: a changed socket unit needs its own restart
        # (which restarts Postfix too, onto the new socket)
        self.socket_changed = [op for path, op in by_path.items() if path.endswith(".socket")]

    def registration_dirs(self) -> None:
        """The run-time registration state (chatmaild.registration, doc/accounts.md): root
        writes the mode and the invites, /new (fcgiwrap, www-data) reads the invites and
        records what it hands out, doveauth (vmail) and nginx only read; chatmail-expire
        (vmail) removes the handed-out records that are done with."""
        root = PurePosixPath(self.layout.config.registration_dir)
        owners = [
            (root, "root", "root", "755"),
            (root / INVITES, "root", "www-data", "750"),
            (root / USES, "www-data", "www-data", "755"),
            (root / HANDED, "www-data", "vmail", "770"),
        ]
        for path, user, group, mode in owners:
            files.directory(
                name=f"Registration state: {path.name}",
                path=str(path),
                user=user,
                group=group,
                mode=mode,
            )

    def activate(self) -> None:
        if self.socket_changed:
            restart(f"{POSTLOG_UNIT}.socket", self.socket_changed)
        for service in services(self.layout):
            restart(f"{service.unit}.service", self.changed)
        systemd.service(
            name="Daily expiry timer", service="chatmail-expire.timer", running=True, enabled=True
        )
        # the services' restarts above reloaded systemd if a unit file changed
        systemd.service(
            name="Daily health check", service=f"{HEALTH_UNIT}.timer", running=True, enabled=True
        )


class OpenDkim(Component):
    packages = ("opendkim", "opendkim-tools")

    def configure(self) -> None:
        layout = self.layout
        key = layout.dkim_key
        if missing(key):
            server.shell(
                name="DKIM key (once)",
                commands=[
                    f"mkdir -p {key.parent}",
                    " ".join(genkey_command(layout)),
                    f"chown -R opendkim:opendkim {key.parent}",
                ],
            )
        files.directory(
            name="OpenDKIM socket directory",
            path=str(layout.opendkim_socket.parent),
            user="opendkim",
            group="postfix",
            mode="750",
        )
        server.user(
            name="postfix may use the DKIM socket",
            user="postfix",
            groups=["opendkim"],
            append=True,
            # its home is Postfix's spool, which must stay root's ("not owned by root")
            ensure_home=False,
        )
        self.changed = put(opendkim_files(layout))

    def activate(self) -> None:
        if not self.layout.config.is_ipv4:  # IPv4 relays sign nothing (doc/contract.md §6.3)
            restart("opendkim", self.changed, check="opendkim -n")


class Dovecot(Component):
    def __init__(self, layout: Layout, release: str) -> None:
        super().__init__(layout, release)
        self.packages = dovecot_packages(release)

    def configure(self) -> None:
        conf = dovecot_files(self.layout, release=self.release)
        self.changed = put(conf) + put(dovecot_unit_files())
        self.changed += remove_stale(stale_files(self.release))
        self.changed.append(self.build_plugin())

    def build_plugin(self) -> OperationMeta:
        """chatmail_notify, compiled here against the installed Dovecot: again whenever its
        source or Dovecot's version changes (a module of another ABI would not load)."""
        installed = host.get_fact(DebPackages) or {}
        version = ",".join(sorted(installed.get("dovecot-dev", [])))
        source_path = str(self.layout.lib_dir / dovecot_plugin.SOURCE)
        source = put({source_path: dovecot_plugin.source()})
        stamp = put({source_path + ".built": f"built against dovecot-dev {version}\n"})
        module = dovecot_plugin.MODULE_DIR / dovecot_plugin.MODULE
        build = shlex.join(dovecot_plugin.build_command(source_path, str(module)))
        return server.shell(
            name="Build the chatmail_notify Dovecot plugin",
            commands=[build],
            _if=None if missing(module) else any_changed(*source, *stamp),
        )

    def activate(self) -> None:
        restart(
            "dovecot",
            self.changed,
            check="doveconf -n >/dev/null",
            force=logs_nowhere(DOVECOT_MASTER_PID_FILE),
        )


class Postfix(Component):
    packages = ("postfix",)

    def configure(self) -> None:
        # Postfix refuses a spool not owned by root (earlier deploys chowned it by mistake)
        files.directory(
            name="Postfix spool", path="/var/spool/postfix", user="root", group="root", mode="755"
        )
        # Dovecot's SASL and LMTP sockets live here, and Dovecot starts before Postfix: Debian
        # 13's package leaves the directory to Postfix's first start (12's makes it at once).
        files.directory(
            name="Postfix's private sockets",
            path="/var/spool/postfix/private",
            user="postfix",
            group="root",
            mode="700",
        )
        contents = postfix_files(self.layout, myhostname=self.reverse_name(), release=self.release)
        self.changed = put(contents) + remove_stale(postfix_stale_files(self.release))
        maps = [path for path in contents if postmap_needed(path)]
        if maps:
            server.shell(
                name="Postfix lookup tables",
                commands=[f"postmap {path}" for path in maps],
                _if=any_changed(*self.changed),
            )

    def reverse_name(self) -> str | None:
        """An IPv4 relay's name for itself (doc/contract.md §6.3): the PTR name of its
        address as the relay's resolver sees it; None (the host's own name) when there is none."""
        config = self.layout.config
        if not config.is_ipv4:
            return None
        answer = host.get_fact(Command, f"getent hosts {config.mail_domain} || true") or ""
        fields = answer.split()
        if len(fields) >= 2 and fields[1] != config.mail_domain:
            return str(fields[1])
        return None

    def activate(self) -> None:
        # any warning from postconf fails the deploy (doc/contract.md §10)
        check = 'test -z "$(postconf -n 2>&1 >/dev/null)"'
        restart("postfix", self.changed, check=check, force=logs_nowhere(POSTFIX_MASTER_PID_FILE))


class Nginx(Component):
    packages = ("nginx", "libnginx-mod-stream", "fcgiwrap")

    def configure(self) -> None:
        self.changed = put(nginx_files(self.layout))
        # The one line of Debian's nginx.conf we change (doc/contract.md §11.2): 768
        # connections would serve only ~380 clients through the 443 multiplexer (two each).
        self.changed.append(
            files.line(
                name="nginx worker_connections",
                path="/etc/nginx/nginx.conf",
                # grep and sed basic regular expressions: no `+`, no `\s`
                line=r"^[[:space:]]*worker_connections[[:space:]][[:space:]]*[0-9][0-9]*;",
                replace=f"\tworker_connections {WORKER_CONNECTIONS};",
            )
        )
        if uploaded := self.upload_website():
            self.changed.append(uploaded)

    def upload_website(self) -> OperationMeta | None:
        website = os.environ.get("CHATMAIL_WEBSITE")
        if not website:
            return None
        return files.sync(
            name="Upload the web pages",
            src=website,
            dest=str(self.layout.www_root),
            user="www-data",
            group="www-data",
            delete=True,
        )

    def activate(self) -> None:
        systemd.service(name="Run fcgiwrap", service="fcgiwrap.socket", running=True, enabled=True)
        restart("nginx", self.changed, check="nginx -t -q")


class Coturn(Component):
    packages = ("coturn",)

    def configure(self) -> None:
        secret, _ = turn_secret(self.layout)
        conf = turnserver_conf(
            port=3478,
            realm=self.layout.config.mail_domain,
            secret=secret,
            listen_addresses=[],
            relay_addresses=[],
        )
        self.changed = put({"/etc/turnserver.conf": conf}, mode="640", group="turnserver")

    def activate(self) -> None:
        restart("coturn", self.changed)


class Version(Component):
    def configure(self) -> None:
        version = os.environ.get("CHATMAIL_VERSION", "")
        if version:
            put({str(self.layout.version_file): version + "\n"})


# The relay, in deploy order: what a later component needs is already in place.
COMPONENTS: list[Callable[[Layout, str], Component]] = [
    Base,
    Journald,
    Unbound,
    Tls,
    Chatmaild,
    OpenDkim,
    Dovecot,
    Postfix,
    Nginx,
    Acme,
    Coturn,
    Version,
]


def deploy() -> None:
    config = read_config(os.environ["CHATMAIL_INI"])
    layout = Layout(config)
    if os.environ.get("CHATMAIL_WEBSITE_ONLY"):
        # nginx serves the pages as they change on disk: no reload needed
        Nginx(layout, host_release()).upload_website()
        return
    stages = os.environ.get("CMDEPLOY_STAGES", "install,configure,activate").split(",")
    release = host_release()
    components = [make(layout, release) for make in COMPONENTS]
    installed = host.get_fact(DebPackages) or {}
    new_packages = [p for c in components for p in c.packages if p not in installed]
    leftover = host.get_fact(FileContents, path=POLICY_RC) or []
    if "cmdeploy" in "".join(leftover) and not new_packages:
        # an interrupted earlier deploy left its hold in place: lift it
        files.file(name="Let services start again", path=POLICY_RC, present=False)
    for stage in ("install", "configure", "activate"):
        if stage not in stages:
            continue
        if stage == "install" and new_packages:
            hold = files.put(
                name="Hold services back while installing",
                src=io.StringIO("#!/bin/sh\n# cmdeploy, while installing packages\nexit 101\n"),
                dest=POLICY_RC,
                mode="755",
            )
        for component in components:
            getattr(component, stage)()
        if stage == "install" and new_packages:
            # decided when it runs: the file did not exist yet when the deploy was planned
            server.shell(
                name="Let services start again",
                commands=[f"rm -f {POLICY_RC}"],
                _if=hold.did_change,
            )


deploy()
