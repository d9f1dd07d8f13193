"""The deploy step of Dovecot: its release's packages and files (doc/debian13.md), what a
deploy for the other release left removed, the chatmail_notify plugin built on the relay,
and a validated restart when any of it changed."""

from __future__ import annotations

import shlex

from pyinfra import host  # type: ignore[attr-defined]  # set while a deploy runs
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import server
from pyinfra.operations.util import any_changed

from ..steps import (
    Component,
    Target,
    logs_nowhere,
    missing,
    put,
    remove_stale,
    restart,
    stop,
)
from . import MASTER_PID_FILE, dovecot_files, dovecot_unit_files, packages, plugin, stale_files


class Dovecot(Component):
    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.packages = packages(self.release)

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
        source_path = str(self.layout.lib_dir / plugin.SOURCE)
        source = put({source_path: plugin.source()})
        stamp = put({source_path + ".built": f"built against dovecot-dev {version}\n"})
        module = plugin.MODULE_DIR / plugin.MODULE
        build = shlex.join(plugin.build_command(source_path, str(module)))
        return server.shell(
            name="Build the chatmail_notify Dovecot plugin",
            commands=[build],
            _if=None if missing(module) else any_changed(*source, *stamp),
        )

    def activate(self) -> None:
        if self.target.inputs.disable_mail:
            stop("dovecot")
            return
        restart(
            "dovecot",
            self.changed,
            check="doveconf -n >/dev/null",
            force=logs_nowhere(MASTER_PID_FILE),
        )
