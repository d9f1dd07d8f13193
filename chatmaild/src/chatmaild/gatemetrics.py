"""The encryption gate's counts (doc/metrics.md): what it let in, and what it refused, why.

One `GateCounters` per direction. The gates count what they accept, by what let it through
(`mailcheck.Kind`); the SMTP and HTTP front ends count every `Reject` they turn into a reply,
by its code and its fixed `reason` word. Nothing about the message or its addresses is kept.
"""

from __future__ import annotations

from .metrics import Registry
from .smtpreject import Reject


class GateCounters:
    def __init__(self, registry: Registry, direction: str) -> None:
        self.direction = direction
        self._accepted = registry.counter(
            "chatmail_gate_accepted_total",
            "Messages the encryption gate let through and Postfix queued, by direction and "
            "what let them in.",
            ("direction", "kind"),
        )
        self._refused = registry.counter(
            "chatmail_gate_refused_total",
            "Commands and messages the encryption gate refused, by direction, reply code "
            "and reason.",
            ("direction", "code", "reason"),
        )

    def accepted(self, kind: str) -> None:
        self._accepted.inc(direction=self.direction, kind=kind)

    def refused(self, reject: Reject) -> None:
        self._refused.inc(direction=self.direction, code=str(reject.code), reason=reject.reason)
