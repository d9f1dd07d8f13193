"""The deploy step of Postfix: its spool, its files for the host's release (the master runs
in another unit on Debian 13), its lookup tables, and a validated restart when any changed."""

from __future__ import annotations

from pyinfra import host  # type: ignore[attr-defined]  # set while a deploy runs
from pyinfra.facts.server import Command
from pyinfra.operations import files, server
from pyinfra.operations.util import any_changed

from ..steps import Component, logs_nowhere, put, remove_stale, restart, stop
from . import MASTER_PID_FILE, postfix_files, postmap_needed, stale_files


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
        self.changed = put(contents) + remove_stale(stale_files(self.release))
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
        if self.target.inputs.disable_mail:
            stop("postfix")
            return
        # any warning from postconf fails the deploy (doc/contract.md §10)
        check = 'test -z "$(postconf -n 2>&1 >/dev/null)"'
        restart("postfix", self.changed, check=check, force=logs_nowhere(MASTER_PID_FILE))
