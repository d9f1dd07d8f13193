"""What every component's deploy step shares: its inputs, and the few pyinfra steps they all use.

A component (a folder of this package: its templates, the pure functions rendering them, and
its `deploy.py`) installs, configures and activates one piece of the relay. It gets a
`Target`: the relay's layout, its Debian release and the operator's `DeployInputs`; it never
reads the environment. `put` installs rendered files, `restart` keeps a unit running and
restarts it only when one of its files changed, `missing` asks whether a file exists (a fact
gathered before any change).
"""

from __future__ import annotations

import functools
import io
import secrets
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host  # type: ignore[attr-defined]  # set while a deploy runs
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File, FileContents
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from .chatmaild import JOURNAL_DEV_LOG, POSTLOG_SOCKET
from .layout import Layout
from .release import parse_os_release, release_of, supported_text

Ops = list[OperationMeta]
STAGES = ("install", "configure", "activate")
PENDING_RESTARTS = "/var/lib/chatmail/pending-restart"


@dataclass(frozen=True)
class DeployInputs:
    """What the operator's machine hands the deploy (`cmdeploy run`, cmdeploy.run)."""

    ini: Path  # the local chatmail.ini
    wheels: Path  # chatmaild and its dependencies as wheels, built on the operator's machine
    website: Path | None = None  # a built web site directory; None leaves the pages alone
    website_only: bool = False  # upload the web pages and nothing else
    version: str = ""  # the checkout's commit, written to the relay
    disable_mail: bool = False  # Postfix and Dovecot configured but stopped (doc/contract.md §10)
    stages: tuple[str, ...] = STAGES


@dataclass(frozen=True)
class Target:
    """One relay as its deploy sees it."""

    layout: Layout
    release: str  # the Debian codename (cmdeploy.release)
    inputs: DeployInputs

    @functools.cached_property
    def turn_secret(self) -> tuple[str, bool]:
        """The relay's TURN secret and whether it is new: read from the relay, or generated
        once here, so chatmail-metadata and coturn get the same value in this very run."""
        stored = host.get_fact(FileContents, path=str(self.layout.turn_secret))
        if stored and "".join(stored).strip():
            return "".join(stored).strip(), False
        return secrets.token_hex(32), True


class Component:
    """One piece of the relay; override what applies."""

    packages: tuple[str, ...] = ()

    def __init__(self, target: Target) -> None:
        self.target = target
        self.layout = target.layout
        self.release = target.release
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


def restart(
    unit: str,
    changed: Ops,
    check: str | None = None,
    force: bool = False,
    stop_first: str | None = None,
) -> None:
    """Keep `unit` enabled and running; restart it if any of `changed` changed, after
    `check` (a command that validates its configuration) succeeded.

    A change leaves a marker on the relay until the restart succeeded: a deploy that failed
    in between restarts the unit on the next run although its files no longer change.
    `force` restarts it in any case (a fact showed it needs one). `stop_first`: `unit` is the
    socket of this service, which stops before the socket's restart and starts after it, in
    one command, since systemd does not start a socket whose service already runs (one that
    made its own socket before the socket unit came)."""
    marker = f"{PENDING_RESTARTS}/{unit}"
    pending = force or not missing(marker)
    if changed:
        files.directory(name="Pending restarts", path=PENDING_RESTARTS, mode="700")
        files.file(name=f"Mark {unit} for restart", path=marker, _if=any_changed(*changed))
    if changed or pending:
        needed = None if pending else any_changed(*changed)
        if check:
            server.shell(name=f"Validate the {unit} configuration", commands=[check], _if=needed)
        if stop_first:
            server.shell(
                name=f"Restart {unit}",
                commands=[
                    f"systemctl daemon-reload && systemctl stop {stop_first}"
                    f" && systemctl restart {unit} && systemctl start {stop_first}"
                ],
                _if=needed,
            )
        else:
            systemd.service(
                name=f"Restart {unit}",
                service=unit,
                restarted=True,
                daemon_reload=True,
                _if=needed,
            )
        # decided when it runs: when planned, the marker may not exist yet
        server.shell(name=f"Restarted {unit}", commands=[f"rm -f {marker}"], _if=needed)
    systemd.service(name=f"Run {unit}", service=unit, running=True, enabled=True)


def stop(unit: str) -> None:
    """Keep `unit` configured but stopped and disabled: `--disable-mail` does so with Postfix
    and Dovecot (a migration step, doc/contract.md §10)."""
    systemd.service(name=f"Stop {unit}", service=unit, running=False, enabled=False)


def remove_stale(paths: list[str]) -> Ops:
    """Removes what a deploy for the other Debian release left (a relay upgraded in place)."""
    return [
        files.file(
            name=f"Remove {path} (left for the other Debian release)", path=path, present=False
        )
        for path in paths
        if not missing(path)
    ]


def own_socket_check(service: str, socket: str) -> str:
    """A command that prints "own socket" when `service` runs while its `socket` unit does
    not: it bound its socket itself (the release before the socket unit)."""
    both = f"systemctl is-active --quiet {service} && ! systemctl is-active --quiet {socket}"
    return f"{both} && echo own socket || true"


def runs_without_its_socket(service: str, socket: str) -> bool:
    """Whether systemd would refuse to start `socket` (its service runs already): true after
    a deploy that failed between installing the socket unit and starting it."""
    return "own socket" in (host.get_fact(Command, own_socket_check(service, socket)) or "")


def missing(path: object) -> bool:
    """Whether a file is absent on the relay (a fact gathered before any change)."""
    return host.get_fact(File, path=str(path)) is None


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
