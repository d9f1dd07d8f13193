"""The deploy steps of the relay's certificate: `Tls` puts the first one in place (self-signed,
or a placeholder until certbot replaced it), `Acme` installs certbot's units and asks for the
certificate, or with an external certificate the path unit that reloads the services."""

from __future__ import annotations

import io

from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from .. import acme
from ..steps import Component, Ops, Target, missing


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

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.enabled = self.layout.tls.mode == "acme"
        self.external = self.layout.tls.mode == "external"
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
