"""unbound, the relay's own resolver (issue: DNSSEC-validating; optional forwarders).

Debian's unbound.conf includes `/etc/unbound/unbound.conf.d/*.conf`, which also carries the
root trust anchor; ours is one more file there, so the operator's other files stay.
"""

from __future__ import annotations

from ..layout import Layout
from ..templates import render

CONF = "/etc/unbound/unbound.conf.d/chatmail.conf"


def unbound_files(layout: Layout) -> dict[str, str]:
    config = layout.config
    return {
        CONF: render(
            "unbound",
            "unbound.conf.j2",
            disable_ipv6=config.disable_ipv6,
            forwarders=config.dns_forwarders.split(),
        )
    }
