"""The arithmetic of the bench (issue 7): percentiles, rates, ratios, and the send budget.

Pure functions and one small clock-driven class; the unit tests pin them down.

- Percentiles interpolate linearly between the two nearest ranks (the "linear" method of
  numpy and of Python's `statistics.quantiles(method="inclusive")`), so p50 of an even sample
  is the mean of the two middle values.
- A ratio is chatmail ÷ bare; it is None when either side is missing or the baseline is 0.
- `SendBudget` mirrors the relay's per-sender GCRA rate limit (doc/encryption-gate.md) on the
  client side, so the bench picks senders that still have budget and measures throughput,
  not the rate limiter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LATE = 30.0  # seconds: a chat message told later than this is late (issue 12), not noise


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (0..100) of `values`; None for an empty sample."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Sequence[float], lost: int = 0) -> dict[str, float | int | None]:
    """Count, p50/p95/p99, min, max and mean of latencies in seconds, and how many got lost."""
    return {
        "count": len(seconds),
        "lost": lost,
        "p50": percentile(seconds, 50),
        "p95": percentile(seconds, 95),
        "p99": percentile(seconds, 99),
        "min": min(seconds) if seconds else None,
        "max": max(seconds) if seconds else None,
        "mean": sum(seconds) / len(seconds) if seconds else None,
    }


def rate(count: int, seconds: float | None) -> float | None:
    """Events per second, None when no time passed."""
    if seconds is None or seconds <= 0:
        return None
    return count / seconds


def ratio(value: float | None, baseline: float | None) -> float | None:
    """`value / baseline`, None where it means nothing."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def delivery_span(first_submission: float, delivery_times: Sequence[float]) -> float | None:
    """Seconds from the first submission to the last delivery, both on the relay's clock.

    Maildir mtimes can be whole seconds on some file systems; a span shorter than the time
    the submissions took is impossible, so the caller passes the larger of the two.
    """
    if not delivery_times:
        return None
    return max(delivery_times) - first_submission


@dataclass
class SendBudget:
    """The client-side twin of the relay's GCRA per sender: one unit every `interval` seconds,
    up to `burst` at once. `per_minute == 0` means the relay does not limit
    (doc/contract.md §3.2)."""

    per_minute: int
    burst: int
    tat: float = 0.0  # theoretical arrival time of the next unit

    @property
    def interval(self) -> float:
        return 60.0 / self.per_minute if self.per_minute else 0.0

    def available(self, now: float) -> int:
        """How many messages may be sent at `now` without being refused."""
        if not self.per_minute:
            return 1_000_000
        burst = max(1, self.burst)
        # the relay allows a unit when tat - now <= (burst - 1) * interval
        slack = (burst - 1) * self.interval - (max(self.tat, now) - now)
        if slack < -1e-9:
            return 0
        return min(burst, int(slack / self.interval + 1e-9) + 1)

    def take(self, now: float, count: int = 1) -> None:
        if self.per_minute:
            self.tat = max(self.tat, now) + count * self.interval

    def ready_at(self, now: float) -> float:
        """The earliest moment at which one more message may be sent."""
        if not self.per_minute or self.available(now):
            return now
        return self.tat - (max(1, self.burst) - 1) * self.interval
