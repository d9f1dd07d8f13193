"""OpenDKIM, signing the relay's outgoing mail.

The key is generated once on the relay (`opendkim-genkey`, RSA 2048) and kept across
deploys; its public half goes into the `opendkim._domainkey` TXT record.
"""

from __future__ import annotations

from ..layout import Layout
from ..templates import render

CONF = "/etc/opendkim.conf"


def opendkim_files(layout: Layout) -> dict[str, str]:
    config = layout.config
    return {
        CONF: render(
            "opendkim",
            "opendkim.conf.j2",
            domain=config.mail_domain,
            selector=layout.dkim_selector,
            key_file=layout.dkim_key,
            socket=layout.opendkim_socket,
            reinject_port=config.postfix_reinject_port,
        )
    }


def genkey_command(layout: Layout) -> list[str]:
    """Creates `<selector>.private` and `<selector>.txt` in the key directory."""
    return [
        "opendkim-genkey",
        "-b",
        "2048",
        "-s",
        layout.dkim_selector,
        "-d",
        layout.config.mail_domain,
        "-D",
        str(layout.dkim_key.parent),
    ]
