"""ACME: the relay's certificate from Let's Encrypt (or the lab's pebble) by certbot.

The TLS modes are in doc/contract.md §6.1. Debian's certbot obtains one ECDSA P-256
certificate for `<d>`, `www.<d>` and `mta-sts.<d>` from `acme_directory_url`, answering
HTTP-01 challenges through its webroot plugin: nginx's port-80 server serves
`Layout.acme_webroot` under `/.well-known/acme-challenge/`.

Postfix, Dovecot and nginx never read certbot's files. They read the stable pair at
`Layout.tls`, which the deploy fills with a self-signed placeholder the first time. So every
service starts on a fresh host before any certificate exists, and nginx is already up to
answer the first challenge; issuing is then no special case. After each issuance or renewal
certbot runs our deploy hook, which installs the new pair there and reloads the services.

`chatmail-acme.service` is the one command that obtains or renews: the deploy starts it when
no certificate was issued yet, and its timer runs it daily (`--keep-until-expiring` makes it
a no-op while the certificate is far from expiry). When it fails (DNS not pointing at the
relay yet, port 80 unreachable), the relay keeps working on the placeholder and the deploy's
summary says the certificate is pending; the next run of the timer or the deploy retries.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ..layout import Layout
from ..templates import render

COMPONENT = "acme"
UNIT_DIR = PurePosixPath("/etc/systemd/system")
SERVICE = "chatmail-acme.service"
TIMER = "chatmail-acme.timer"
RELOAD_PATH = "tls-cert-reload.path"
LETSENCRYPT = PurePosixPath("/etc/letsencrypt")


def names(layout: Layout) -> list[str]:
    domain = layout.config.mail_domain
    return [domain, f"www.{domain}", f"mta-sts.{domain}"]


def deploy_hook(layout: Layout) -> PurePosixPath:
    return layout.lib_dir / "acme-deploy-hook"


def issued_cert(layout: Layout) -> PurePosixPath:
    """Where certbot keeps the current certificate: it exists once one was issued."""
    return LETSENCRYPT / "live" / layout.config.mail_domain / "fullchain.pem"


def certbot_command(layout: Layout) -> list[str]:
    config = layout.config
    argv = [
        "/usr/bin/certbot",
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--keep-until-expiring",
        "--server",
        config.acme_directory_url,
        "--cert-name",
        config.mail_domain,
        "--key-type",
        "ecdsa",
        "--elliptic-curve",
        "secp256r1",
        "--webroot",
        "--webroot-path",
        str(layout.acme_webroot),
        "--deploy-hook",
        str(deploy_hook(layout)),
    ]
    if config.acme_email:
        argv += ["--email", config.acme_email]
    else:
        argv.append("--register-unsafely-without-email")
    for name in names(layout):
        argv += ["--domain", name]
    return argv


def placeholder_command(layout: Layout, days: int, names: list[str]) -> str:
    """A self-signed certificate at `Layout.tls` (the `self` profile of doc/contract.md §6.1)."""
    tls = layout.tls
    san = ",".join(names)
    return (
        f"mkdir -p {tls.cert.parent} {tls.key.parent} && "
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
        f" -days {days} -subj /CN={layout.config.mail_domain}"
        f" -addext subjectAltName={san} -addext basicConstraints=critical,CA:FALSE"
        " -addext extendedKeyUsage=serverAuth,clientAuth"
        f" -keyout {tls.key} -out {tls.cert}"
    )


def external_reload_files(layout: Layout) -> dict[str, tuple[str, str]]:
    """External certificates (doc/contract.md §6.1): a path unit reloads Dovecot, nginx and
    Postfix when the operator's certificate or key changes."""
    tls = layout.tls
    path = render(COMPONENT, "tls-cert-reload.path.j2", watched=[tls.cert, tls.key])
    service = render(COMPONENT, "tls-cert-reload.service.j2")
    return {
        str(UNIT_DIR / RELOAD_PATH): (path, "644"),
        str(UNIT_DIR / "tls-cert-reload.service"): (service, "644"),
    }


def acme_files(layout: Layout) -> dict[str, tuple[str, str]]:
    """{remote path: (content, mode)}: the deploy hook, the service and its daily timer."""
    tls = layout.tls
    hook = render(COMPONENT, "deploy-hook.sh.j2", cert=tls.cert, key=tls.key)
    service = render(
        COMPONENT,
        "chatmail-acme.service.j2",
        command=" ".join(certbot_command(layout)),
        webroot=layout.acme_webroot,
    )
    timer = render(COMPONENT, "chatmail-acme.timer.j2")
    return {
        str(deploy_hook(layout)): (hook, "755"),
        str(UNIT_DIR / SERVICE): (service, "644"),
        str(UNIT_DIR / TIMER): (timer, "644"),
    }
