"""The per-sender send rate limit of the outgoing gate (doc/contract.md §3.2).

The outgoing gate asks `RateLimiter.check` once per mail transaction, when Postfix has taken
its first recipient (doc/milter.md §1). It is a GCRA (generic cell rate algorithm) keyed by the
envelope sender: one unit every 60 / `max_user_send_per_minute` seconds (1 s at the defaults),
and up to `max_user_send_burst_size` units at once. Each transaction uses one unit, whatever
the number of recipients and whatever happens to the message afterwards. Over the limit the
reply is `450 4.7.1: Too much mail from <addr>, rate limited until ...`
(`smtpreject.too_much_mail`, built by `RateLimiter.enforce`).

The state lives in memory, per process, and is lost on restart, as on the reference relay.
Pure: the clock is a parameter, and nothing here does I/O.

Choices of our own:

- `per_minute == 0` means *no limit*: a relay where nobody can send would be useless, so 0 is
  how an operator turns the limit off (e.g. for benchmarks). Nothing is stored then.
- `burst` below 1 acts as 1; otherwise not even the first message could ever pass.
- Keys are compared ignoring case (Postfix ties MAIL FROM to the login ignoring case, so
  `A@x` and `a@x` are one sender) and stored as a 16-byte BLAKE2b digest: every entry has the
  same small size, and the table holds no address.
- Bounded memory. A key whose theoretical arrival time (TAT) is not in the future has its full
  burst again, exactly as a key never seen, so forgetting it changes nothing. Such stale keys
  are purged after every `purge_every` successful checks. On top, the table never holds more
  than `max_keys` entries: when a new sender would exceed it, stale keys are purged first and,
  if the table is still full, the tenth of the entries with the *earliest* TAT is forgotten.
  Those are the senders closest to being stale anyway, so forgetting them grants the least
  extra sending: a flood of distinct senders (which on the outgoing port means distinct
  authenticated accounts) can neither exhaust memory nor lock legitimate users out.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from operator import itemgetter
from typing import TYPE_CHECKING

from .smtpreject import too_much_mail

if TYPE_CHECKING:
    from .config import Config

__all__ = ["DEFAULT_MAX_KEYS", "DEFAULT_PURGE_EVERY", "RateLimiter", "until_text"]

# 100000 entries of a 16-byte digest and a float: roughly 15 MB at worst.
DEFAULT_MAX_KEYS = 100_000
DEFAULT_PURGE_EVERY = 1000

# Float slack when comparing times: one unit that becomes free at exactly the returned moment
# is allowed then, even after rounding in `tat + interval`.
_EPSILON = 1e-9


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.lower().encode("utf-8", "surrogatepass"), digest_size=16).digest()


class RateLimiter:
    """A GCRA limiter: `per_minute` units per minute on average, `burst` units at once.

    `check(key)` returns None when a unit was free (and uses it), or the number of seconds until
    the next unit is free (and uses nothing). Safe to call from several threads.
    """

    def __init__(
        self,
        per_minute: int,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        purge_every: int = DEFAULT_PURGE_EVERY,
    ) -> None:
        if per_minute < 0 or burst < 0:
            raise ValueError("per_minute and burst must be 0 or more")
        if max_keys < 1 or purge_every < 1:
            raise ValueError("max_keys and purge_every must be 1 or more")
        self.per_minute = per_minute
        self.burst = max(burst, 1)
        self._clock = clock
        self._max_keys = max_keys
        self._purge_every = purge_every
        # Emission interval T, and the tolerance: how far the TAT may run ahead of now.
        self._interval = 60.0 / per_minute if per_minute else 0.0
        self._tolerance = self._interval * self.burst
        self._tat: dict[bytes, float] = {}
        self._successes = 0
        self._lock = threading.Lock()

    @classmethod
    def from_config(
        cls, config: Config, clock: Callable[[], float] = time.monotonic
    ) -> RateLimiter:
        """The limiter for `max_user_send_per_minute` / `max_user_send_burst_size`."""
        return cls(config.max_user_send_per_minute, config.max_user_send_burst_size, clock)

    @property
    def unlimited(self) -> bool:
        return self.per_minute == 0

    def __len__(self) -> int:
        """How many senders are remembered (for tests and metrics)."""
        return len(self._tat)

    def check(self, key: str) -> float | None:
        """Use one unit for `key`: None if allowed, else the seconds until a unit is free."""
        if self.unlimited:
            return None
        digest = _digest(key)
        with self._lock:
            now = self._clock()
            tat = max(self._tat.get(digest, now), now)
            new_tat = tat + self._interval
            wait = new_tat - now - self._tolerance
            if wait > _EPSILON:
                return wait
            if digest not in self._tat and len(self._tat) >= self._max_keys:
                self._make_room(now)
            self._tat[digest] = new_tat
            self._successes += 1
            if self._successes >= self._purge_every:
                self._purge(now)
            return None

    def enforce(self, mail_from: str, now_wall: float) -> None:
        """`check(mail_from)`, raising the 450 `Reject` (doc/contract.md §4.1) when over the limit.

        `now_wall` is the current Unix time, for the "rate limited until" text only.
        """
        wait = self.check(mail_from)
        if wait is not None:
            raise too_much_mail(mail_from, until_text(wait, now_wall))

    def _purge(self, now: float) -> None:
        """Forget keys whose TAT is not in the future (a new dict, so memory is given back)."""
        self._tat = {k: tat for k, tat in self._tat.items() if tat > now}
        self._successes = 0

    def _make_room(self, now: float) -> None:
        self._purge(now)
        if len(self._tat) < self._max_keys:
            return
        count = max(1, self._max_keys // 10)
        for k, _ in heapq.nsmallest(count, self._tat.items(), key=itemgetter(1)):
            del self._tat[k]


def until_text(seconds_from_now: float, now_wall: float) -> str:
    """The moment `seconds_from_now` after Unix time `now_wall`, as ISO 8601 UTC.

    Rounded up to the whole second, so that the sender is never told a time before the unit is
    free: `until_text(1.2, 0)` is `1970-01-01T00:00:02Z`.
    """
    moment = math.ceil(now_wall + max(seconds_from_now, 0.0))
    return datetime.fromtimestamp(moment, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
