"""nginx: the relay's port 443 multiplexer, its web pages and HTTPS endpoints.

Clients and peers reach the relay's web side through nginx (doc/contract.md §1.2, §8.1):

- 443: a `stream` server reads the ALPN of the ClientHello and passes the still encrypted
  connection on: `imap` to Dovecot (993), `smtp` to Postfix (465), anything else to the
  HTTPS server on 127.0.0.1:8443.
- 127.0.0.1:8443: the web pages from `Layout.www_root`, the autoconfig XML and `mta-sts.txt`
  (answered by nginx itself, so they survive a disabled website), `/new` through fcgiwrap,
  `/mxdeliv` to filtermail's HTTP listener; `www.<d>` gets a 301 to `<d>`.
- 80: a 301 to HTTPS, except ACME HTTP-01 challenges, which certbot's webroot plugin writes
  below `Layout.acme_webroot`.

We never write `/etc/nginx/nginx.conf` and never touch an operator's other sites. Debian's
nginx.conf includes two directories that are enough:

- `modules-enabled/*.conf` at main level, before `events {}`: the only place where a `stream {}`
  block can go without editing nginx.conf. Our file sorts after the packages' `NN-mod-*.conf`,
  because the stream module must be loaded before the block and nginx refuses `load_module`
  once any block has been read. The stream module comes from `libnginx-mod-stream`.
- `conf.d/*.conf` inside `http {}`: our server blocks, matched by our names only. They do not
  claim `default_server` on port 80 (Debian's default site does), only on our loopback 8443.

A limit of that choice, caught by `nginx -t` before any reload: nginx accepts one `stream {}`
block, so an operator's own stream block conflicts with ours. And Debian's
`worker_connections 768` can only be raised in nginx.conf: the deploy edits that one line to
2048 (doc/contract.md §11.2) and nothing else there.

Privacy: each of our servers has exactly one access log, in a format without client address,
query string or user agent; it replaces Debian's http-level `access_log`. The HTTPS server only
ever sees 127.0.0.1 (no realip), so neither its error lines nor the CGI (`REMOTE_ADDR`) learn
client addresses; the servers that do see them (443 stream, port 80) log critical errors only.

Self-signed relays limit `/new` per client address (doc/contract.md §8.2). The multiplexer
then sends a PROXY protocol header to 8443 so that `limit_req` can key on
`$proxy_protocol_addr`, and IMAP and SMTP pass through two loopback hops (8993, 8465) that drop
the header again, since Dovecot and Postfix expect plain TLS. Other relays skip the hops:
without a per-client limit the address is of no use, and each hop costs nginx two more
connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from xml.sax.saxutils import escape

from chatmaild.config import Config
from chatmaild.registration import PUBLIC_FILE

from ..layout import Layout
from ..templates import render

COMPONENT = "nginx"

STREAM_CONF = PurePosixPath("/etc/nginx/modules-enabled/99-chatmail-stream.conf")
HTTP_CONF = PurePosixPath("/etc/nginx/conf.d/chatmail.conf")

# journald's syslog socket: logs stay in the volatile journal (doc/contract.md §12)
SYSLOG = "syslog:server=unix:/dev/log,nohostname"

AUTOCONFIG_PATH = "/.well-known/autoconfig/mail/config-v1.1.xml"
MTA_STS_PATH = "/.well-known/mta-sts.txt"
MTA_STS_MAX_AGE = 2419200  # 28 days (doc/contract.md §8.4)
ROBOTS_TXT = "User-agent: *\nDisallow: /\n"

# What Delta Chat is told to try (doc/contract.md §8.4): the public ports, whatever nginx
# listens on.
IMAP_SERVERS = ((993, "SSL"), (143, "STARTTLS"), (443, "SSL"))
SMTP_SERVERS = ((465, "SSL"), (587, "STARTTLS"), (443, "SSL"))


@dataclass(frozen=True)
class Sockets:
    """Where nginx listens and what it passes connections to; tests move them to free ports."""

    public_ipv4: str = ""  # "" listens on every IPv4 address
    public_ipv6: str = "[::]"  # unused when the config disables IPv6
    https: int = 443  # the ALPN multiplexer
    http: int = 80
    web: int = 8443  # the HTTPS server, on loopback
    imaps: int = 993  # Dovecot
    smtps: int = 465  # Postfix
    imap_hop: int = 8993  # self-signed relays only: drops the PROXY header before Dovecot
    smtp_hop: int = 8465  # ... and before Postfix
    fcgiwrap: str = "/run/fcgiwrap.socket"  # Debian's fcgiwrap.socket unit
    metrics: str | None = None  # chatmail-metrics; None: `Layout.metrics_socket`


def autoconfig_xml(config: Config) -> str:
    """The Mozilla autoconfig document for the relay (doc/contract.md §8.4)."""
    return render(
        COMPONENT,
        "autoconfig.xml.j2",
        domain=escape(config.mail_domain, {'"': "&quot;"}),
        incoming=IMAP_SERVERS,
        outgoing=SMTP_SERVERS,
    )


def mta_sts_txt(config: Config) -> str:
    """The MTA-STS policy (RFC 8461, doc/contract.md §8.4): TLS required to reach the relay's MX."""
    return render(COMPONENT, "mta-sts.txt.j2", mx=config.mail_domain, max_age=MTA_STS_MAX_AGE)


def nginx_string(text: str) -> str:
    """`text` as one single-quoted nginx token that yields exactly `text` in a `return`."""
    if "$" in text:
        # nginx expands variables in `return` text and has no escape for `$`
        raise ValueError("nginx cannot return text containing '$'")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _listen(address: str, port: int) -> str:
    return f"{address}:{port}" if address else str(port)


def _public_listen(config: Config, sockets: Sockets, port: int) -> list[str]:
    listen = [_listen(sockets.public_ipv4, port)]
    if not config.disable_ipv6:
        listen.append(_listen(sockets.public_ipv6, port))
    return listen


def _loopback(port: int) -> str:
    return f"127.0.0.1:{port}"


def nginx_files(
    layout: Layout,
    sockets: Sockets | None = None,
    log: str = SYSLOG,
) -> dict[str, str]:
    """Our nginx files, `{absolute path on the relay: content}`; `log` is the nginx log target.

    The certificate always exists when nginx starts: before the first ACME certificate, the
    deploy puts a placeholder at the same path (see `cmdeploy.acme`)."""
    sockets = sockets or Sockets()
    config = layout.config
    domain = config.mail_domain
    tls = layout.tls
    # Per-client limits need the client's address, which only the PROXY header carries.
    client_address_hop = tls.mode == "self"
    # An address has no sub-domains, and MTA-STS needs a DNS name.
    has_names = not config.is_ipv4
    www_name = f"www.{domain}" if has_names else None
    web_names = [domain, f"mta-sts.{domain}"] if has_names else [domain]
    http_names = [domain, f"www.{domain}", f"mta-sts.{domain}"] if has_names else [domain]

    if client_address_hop:
        imap_upstream, smtp_upstream = _loopback(sockets.imap_hop), _loopback(sockets.smtp_hop)
    else:
        imap_upstream, smtp_upstream = _loopback(sockets.imaps), _loopback(sockets.smtps)
    stream = render(
        COMPONENT,
        "stream.conf.j2",
        public_listen=_public_listen(config, sockets, sockets.https),
        imap_upstream=imap_upstream,
        smtp_upstream=smtp_upstream,
        web_upstream=_loopback(sockets.web),
        client_address_hop=client_address_hop,
        imap_hop=_loopback(sockets.imap_hop),
        smtp_hop=_loopback(sockets.smtp_hop),
        imaps=_loopback(sockets.imaps),
        smtps=_loopback(sockets.smtps),
        log=log,
    )
    http = render(
        COMPONENT,
        "chatmail.conf.j2",
        domain=domain,
        web_listen=_loopback(sockets.web),
        web_names=web_names,
        www_name=www_name,
        http_listen=_public_listen(config, sockets, sockets.http),
        http_names=http_names,
        client_address_hop=client_address_hop,
        rate_limit_new=tls.mode == "self",
        cert=tls.cert,
        key=tls.key,
        log=log,
        www_root=layout.www_root,
        acme_webroot=layout.acme_webroot if tls.mode == "acme" else None,
        robots_txt=nginx_string(ROBOTS_TXT),
        autoconfig_path=AUTOCONFIG_PATH,
        autoconfig_xml=nginx_string(autoconfig_xml(config)),
        mta_sts_path=MTA_STS_PATH,
        mta_sts_txt=nginx_string(mta_sts_txt(config)) if has_names else None,
        newemail=layout.bin("chatmail-newemail"),
        ini=layout.ini,
        fcgiwrap=sockets.fcgiwrap,
        mxdeliv_upstream=_loopback(config.filtermail_http_port_incoming),
        mxdeliv_body_size=config.inner_message_size_limit,
        metrics_socket=sockets.metrics or layout.metrics_socket,
        registration_public=PurePosixPath(config.registration_dir) / PUBLIC_FILE,
    )
    return {str(STREAM_CONF): stream, str(HTTP_CONF): http}
