"""The deploy step of journald: its drop-in, and a restart when it changed."""

from __future__ import annotations

from ..steps import Component, put, restart
from . import journald_files


class Journald(Component):
    def configure(self) -> None:
        self.changed = put(journald_files(self.layout))

    def activate(self) -> None:
        restart("systemd-journald", self.changed)
