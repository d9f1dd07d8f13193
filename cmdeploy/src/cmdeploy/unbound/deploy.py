"""The deploy step of unbound: the relay's resolver, and the relay resolving through it."""

from __future__ import annotations

from ..steps import Component, put, restart
from . import unbound_files


class Unbound(Component):
    packages = ("unbound", "dns-root-data")

    def configure(self) -> None:
        self.changed = put(unbound_files(self.layout))
        put({"/etc/resolv.conf": "# managed by cmdeploy\nnameserver 127.0.0.1\n"})

    def activate(self) -> None:
        # the root trust anchor appears at unbound's first start, which has not happened yet
        # on a fresh host: the helper Debian's unit runs puts it in place first
        check = "/usr/libexec/unbound-helper root_trust_anchor_update && unbound-checkconf"
        restart("unbound", self.changed, check=check)
