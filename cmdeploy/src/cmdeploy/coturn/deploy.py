"""The deploy step of coturn: its configuration with the relay's TURN secret."""

from __future__ import annotations

from ..steps import Component, put, restart
from . import turnserver_conf


class Coturn(Component):
    packages = ("coturn",)

    def configure(self) -> None:
        secret, _ = self.target.turn_secret
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
