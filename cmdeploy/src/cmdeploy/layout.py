"""Where things live on a deployed relay: one place for every path the components share.

Templates of different components must agree on sockets and files (Postfix hands mail to
Dovecot's LMTP socket, Dovecot asks doveauth's socket, ...): they all take these values from
`Layout`, never spell a path themselves. The configurable ones are in doc/config.md; the
web root is our own, so that an operator's other nginx sites stay untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from chatmaild.config import Config


@dataclass(frozen=True)
class Tls:
    """The certificate and key every TLS listener uses (the TLS mode of doc/contract.md §6.1)."""

    mode: str  # "acme", "self" or "external"
    cert: PurePosixPath
    key: PurePosixPath


@dataclass(frozen=True)
class Layout:
    config: Config

    # chatmaild: its venv, the ini it reads, the sockets of its dict services
    lib_dir: PurePosixPath = PurePosixPath("/usr/local/lib/chatmaild")
    doveauth_socket: PurePosixPath = PurePosixPath("/run/doveauth/doveauth.socket")
    lastlogin_socket: PurePosixPath = PurePosixPath("/run/chatmail-lastlogin/lastlogin.socket")
    metadata_socket: PurePosixPath = PurePosixPath("/run/chatmail-metadata/metadata.socket")
    # the outgoing gate, as the milter of Postfix's submission listeners (doc/milter.md)
    gate_socket: PurePosixPath = PurePosixPath("/run/filtermail/gate.socket")
    # the services' metrics snapshots, and the socket of the exporter nginx passes /metrics to
    metrics_dir: PurePosixPath = PurePosixPath("/run/chatmail-metrics")
    metrics_socket: PurePosixPath = PurePosixPath("/run/chatmail-metrics/exporter.socket")

    # Postfix <-> Dovecot <-> OpenDKIM, inside Postfix's chroot-able spool
    lmtp_socket: PurePosixPath = PurePosixPath("/var/spool/postfix/private/dovecot-lmtp")
    sasl_socket: PurePosixPath = PurePosixPath("/var/spool/postfix/private/auth")
    opendkim_socket: PurePosixPath = PurePosixPath("/var/spool/postfix/opendkim/opendkim.sock")
    dkim_key: PurePosixPath = PurePosixPath("/etc/dkimkeys/opendkim.private")
    dkim_selector: str = "opendkim"

    www_root: PurePosixPath = PurePosixPath("/var/www/chatmail")
    acme_webroot: PurePosixPath = PurePosixPath("/var/lib/chatmail/acme-webroot")
    turn_secret: PurePosixPath = PurePosixPath("/etc/chatmail/turn-secret")
    tls_dir: PurePosixPath = PurePosixPath("/etc/chatmail/tls")
    version_file: PurePosixPath = PurePosixPath("/etc/chatmail-version")

    @property
    def venv(self) -> PurePosixPath:
        return self.lib_dir / "venv"

    @property
    def ini(self) -> PurePosixPath:
        return self.lib_dir / "chatmail.ini"

    @property
    def mailboxes(self) -> PurePosixPath:
        return PurePosixPath(str(self.config.mailboxes_path))

    @property
    def tls(self) -> Tls:
        mode = self.config.tls_mode
        if mode == "external":
            cert, key = self.config.tls_external_cert_and_key.split()
            return Tls(mode, PurePosixPath(cert), PurePosixPath(key))
        if mode == "self":
            return Tls(
                mode,
                PurePosixPath("/etc/ssl/certs/mailserver.pem"),
                PurePosixPath("/etc/ssl/private/mailserver.key"),
            )
        # certbot's deploy hook installs each new certificate here (see cmdeploy/acme)
        return Tls(mode, self.tls_dir / "fullchain.pem", self.tls_dir / "privkey.pem")

    def bin(self, script: str) -> PurePosixPath:
        """A chatmaild console script in the relay's venv."""
        return self.venv / "bin" / script
