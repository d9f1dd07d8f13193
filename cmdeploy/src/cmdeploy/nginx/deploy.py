"""The deploy step of nginx: its configuration, the one line of Debian's nginx.conf we
change, the web pages, and a validated restart when any of it changed."""

from __future__ import annotations

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, systemd

from ..steps import Component, put, restart
from . import nginx_files

WORKER_CONNECTIONS = 2048


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
        website = self.target.inputs.website
        if not website:
            return None
        return files.sync(
            name="Upload the web pages",
            src=str(website),
            dest=str(self.layout.www_root),
            user="www-data",
            group="www-data",
            delete=True,
        )

    def activate(self) -> None:
        systemd.service(name="Run fcgiwrap", service="fcgiwrap.socket", running=True, enabled=True)
        restart("nginx", self.changed, check="nginx -t -q")
