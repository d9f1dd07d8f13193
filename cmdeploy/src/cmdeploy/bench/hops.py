"""Where a message's time goes (issue 12): its milestones, from the client and the relays' logs.

A sample is one message sent while nothing else is: the bench sends them one after another,
so every log line between the start of one sample and the start of the next belongs to it.
Times are wall-clock seconds on the relays' clock (the lab's hosts share the machine's).
Each milestone is given in milliseconds after the end of DATA; a step the logs do not show is
None. Pure functions: `cmdeploy.bench.drivers.hop_samples` sends, the runner collects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .stats import percentile

LogLine = tuple[float, str, str]  # time, source (syslog identifier or unit), text

# (milestone, host, source, text that marks it): in the order a message passes them
SAME_RELAY = (
    ("gate passed", "send", "filtermail.service", "outgoing message passed the gate"),
    ("queued", "send", "postfix/qmgr", "(queue active)"),
    ("stored by Dovecot", "receive", "dovecot", "saved mail to"),
    ("delivered (Postfix)", "receive", "postfix/lmtp", "status=sent"),
)
CROSS_RELAY = (
    ("gate passed", "send", "filtermail.service", "outgoing message passed the gate"),
    ("queued", "send", "postfix/qmgr", "(queue active)"),
    ("peer's gate passed", "receive", "filtermail-incoming.service", "passed the gate"),
    ("sent to the peer", "send", "postfix/transport/lmtp", "status=sent"),
    ("queued at the peer", "receive", "postfix/qmgr", "(queue active)"),
    ("stored by Dovecot", "receive", "dovecot", "saved mail to"),
    ("delivered (Postfix)", "receive", "postfix/lmtp", "status=sent"),
)
ORDER = (
    "submitted",
    "gate passed",
    "queued",
    "peer's gate passed",
    "sent to the peer",
    "queued at the peer",
    "file in the maildir",
    "stored by Dovecot",
    "delivered (Postfix)",
    "told (EXISTS)",
)


@dataclass(frozen=True)
class Sample:
    started: float  # before MAIL FROM
    end_of_data: float
    submitted: float | None  # the 250 after DATA
    told: float | None  # EXISTS seen by the recipient's IDLE


def _first(
    lines: Sequence[LogLine], source: str, text: str, start: float, stop: float
) -> float | None:
    for at, line_source, line in lines:
        if start <= at < stop and line_source == source and text in line:
            return at
    return None


def milestones(
    samples: Sequence[Sample],
    send_log: Sequence[LogLine],
    receive_log: Sequence[LogLine],
    files: Sequence[float],
    cross: bool,
) -> list[dict[str, float | None]]:
    """Each sample's milestones in ms after its end of DATA (None: not seen)."""
    steps = CROSS_RELAY if cross else SAME_RELAY
    out = []
    for i, sample in enumerate(samples):
        stop = samples[i + 1].started if i + 1 < len(samples) else float("inf")
        times: dict[str, float | None] = {"submitted": sample.submitted, "told": sample.told}
        for name, host, source, text in steps:
            log = send_log if host == "send" else receive_log
            times[name] = _first(log, source, text, sample.started, stop)
        times["file in the maildir"] = next((t for t in files if sample.started <= t < stop), None)
        times["told (EXISTS)"] = times.pop("told")
        out.append(
            {
                name: None
                if (at := times.get(name)) is None
                else round(1000 * (at - sample.end_of_data), 1)
                for name in ORDER
                if name in times
            }
        )
    return out


def summary(
    per_sample: Sequence[dict[str, float | None]],
) -> dict[str, dict[str, float | int | None]]:
    """Per milestone: median and maximum ms after the end of DATA, and how often it was seen."""
    names = [n for n in ORDER if any(n in s for s in per_sample)]
    result = {}
    for name in names:
        values = [v for s in per_sample if (v := s.get(name)) is not None]
        result[name] = {
            "p50_ms": percentile(values, 50),
            "max_ms": max(values) if values else None,
            "seen": len(values),
        }
    return result
