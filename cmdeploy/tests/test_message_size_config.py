"""One `max_message_size` (50M here), the same number at every place that announces or
enforces it (doc/message-size.md), read back by the daemons' own config parsers.

Announced and enforced on what a client or peer sends: the public Postfix listeners (25, 587,
465: `message_size_limit`, which smtpd announces as EHLO SIZE), Dovecot's IMAP APPENDLIMIT
and `quota_max_mail_size`, the web pages. Behind them, with room for the headers and the
queue envelope the relay adds (`inner_message_size_limit`): Postfix's other listeners and
queue, filtermail's SMTP, HTTP and LMTP listeners, nginx's body limit for /mxdeliv, and
Dovecot's LMTP.
"""

from __future__ import annotations

from pathlib import Path

from test_dovecot_conf import doveconf, value
from test_dovecot_conf import render as render_dovecot
from test_postfix import needs_postfix, postconf, service_parameters
from test_postfix import render as render_postfix
from test_www import build, read_pages

from chatmaild.config import HEADER_HEADROOM, Config
from cmdeploy.layout import Layout
from cmdeploy.nginx import HTTP_CONF, nginx_files

PARAMS = {"mail_domain": "chat.example.org", "max_message_size": "50M"}
LIMIT = 52428800
INNER = LIMIT + HEADER_HEADROOM


def test_the_key_takes_50m() -> None:
    config = Config.from_params(PARAMS)
    assert config.max_message_size == LIMIT
    assert config.inner_message_size_limit == INNER


@needs_postfix
def test_postfix(tmp_path: Path) -> None:
    rendered = render_postfix(tmp_path, PARAMS)
    assert postconf(rendered.dir, "-h", "message_size_limit").strip() == str(INNER)
    # the public doors (25, 587, 465) and no other listener
    overrides = {
        name.removesuffix("/message_size_limit"): limit
        for name, limit in service_parameters(rendered.dir).items()
        if name.endswith("/message_size_limit")
    }
    assert overrides == {
        door: str(LIMIT) for door in ("smtp/inet", "submission/inet", "smtps/inet")
    }


def test_dovecot(tmp_path: Path) -> None:
    conf = render_dovecot(tmp_path, PARAMS)
    capabilities = value(conf, "imap_capability").split()
    assert f"APPENDLIMIT={LIMIT}" in capabilities
    for protocol, expected in (("imap", LIMIT), ("lmtp", INNER)):
        result = doveconf(conf, "-f", f"protocol={protocol}", "plugin")
        assert result.returncode == 0, result.stderr
        assert f"quota_max_mail_size = {expected}\n" in result.stdout, protocol


def test_nginx_mxdeliv_body() -> None:
    http = nginx_files(Layout(Config.from_params(PARAMS)))[str(HTTP_CONF)]
    mxdeliv = http[http.index("location = /mxdeliv") :]
    assert f"client_max_body_size {INNER};" in mxdeliv.split("}")[0]


def test_web_pages(tmp_path: Path) -> None:
    pages = read_pages(build(tmp_path, Config.from_params(PARAMS)))
    assert "50 MiB" in pages["index.html"] and "50 MiB" in pages["info.html"]
    assert "30 MiB" not in pages["index.html"] + pages["info.html"]
