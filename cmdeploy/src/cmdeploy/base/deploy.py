"""The deploy step of the base system, and of the version file written last."""

from __future__ import annotations

from pyinfra.operations import apt, files, server
from pyinfra.operations.util import any_changed

from ..steps import Component, put
from . import SYSCTL, SYSCTL_FILE


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


class Version(Component):
    """The commit deployed (`/etc/chatmail-version`), once everything else is in place."""

    def configure(self) -> None:
        if version := self.target.inputs.version:
            put({str(self.layout.version_file): version + "\n"})
