"""The deploy step of the chatmaild services: the wheels built on the operator's machine
installed into a venv on the relay, the ini, the TURN secret, the registration state, the
systemd units, and the services restarted when any of these changed."""

from __future__ import annotations

from pathlib import PurePosixPath

from pyinfra import host  # type: ignore[attr-defined]  # set while a deploy runs
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from chatmaild.registration import HANDED, INVITES, USES

from ..health import expectations
from ..steps import Component, Ops, Target, put, restart, runs_without_its_socket
from . import (
    GATE_UNIT,
    HEALTH_UNIT,
    METRICS_TMPFILES,
    POSTLOG_UNIT,
    UNIT_DIR,
    chatmaild_files,
    services,
)


def venv_matches(venv: str) -> str:
    """A command that prints "ok" when `venv` exists and was made by the host's python3."""
    version = "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'"
    found = f'[ -x {venv}/bin/python ] && [ -d {venv}/lib/python"$v" ]'
    return f"v=$({version}); {found} && echo ok || true"


class Chatmaild(Component):
    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.socket_changed: dict[str, Ops] = {}

    def configure(self) -> None:
        layout = self.layout
        inputs = self.target.inputs
        wheels = sorted(inputs.wheels.glob("*.whl"))
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
            src=str(inputs.ini),
            dest=str(layout.ini),
            mode="644",
        )
        self.registration_dirs()
        secret, new = self.target.turn_secret
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
        # systemd holds the postlog and gate sockets: a changed socket unit needs its own
        # restart (the postlog socket's restarts Postfix too, onto the new socket)
        self.socket_changed = {
            unit: [by_path[f"{UNIT_DIR}/{unit}.socket"]] for unit in (POSTLOG_UNIT, GATE_UNIT)
        }

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
        restart(f"{POSTLOG_UNIT}.socket", self.socket_changed[POSTLOG_UNIT])
        gate, gate_socket = f"{GATE_UNIT}.service", f"{GATE_UNIT}.socket"
        restart(
            gate_socket,
            self.socket_changed[GATE_UNIT],
            force=runs_without_its_socket(gate, gate_socket),
            stop_first=gate,
        )
        for service in services(self.layout):
            restart(f"{service.unit}.service", self.changed)
        systemd.service(
            name="Daily expiry timer", service="chatmail-expire.timer", running=True, enabled=True
        )
        # the services' restarts above reloaded systemd if a unit file changed
        systemd.service(
            name="Daily health check", service=f"{HEALTH_UNIT}.timer", running=True, enabled=True
        )
