"""The deploy step of OpenDKIM: the key (generated once, on the relay), its socket directory
shared with Postfix, the configuration, and a validated restart when it changed."""

from __future__ import annotations

from pyinfra.operations import files, server

from ..steps import Component, missing, put, restart
from . import genkey_command, opendkim_files


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
