"""The GCRA send limit of the outgoing gate (doc/encryption-gate.md), on a fake clock."""

from __future__ import annotations

import threading

import pytest

from chatmaild.config import Config
from chatmaild.ratelimit import RateLimiter, until_text
from chatmaild.smtpreject import Reject


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# Each step: (clock value, sender, expected result: None = allowed, a number = seconds to wait).
Step = tuple[float, str, float | None]
A = "alice@example.org"
B = "bob@example.org"


def burst(at: float, key: str, count: int) -> list[Step]:
    return [(at, key, None)] * count


SCENARIOS: dict[str, tuple[int, int, list[Step]]] = {
    "burst of 10 at once passes, the 11th is refused": (
        60,
        10,
        [*burst(0, A, 10), (0, A, 1.0)],
    ),
    "one more unit after 1 s at 60/min": (
        60,
        10,
        [*burst(0, A, 10), (0, A, 1.0), (1.0, A, None), (1.0, A, 1.0), (1.5, A, 0.5)],
    ),
    "refused attempts do not consume": (
        60,
        10,
        [*burst(0, A, 10), (0.5, A, 0.5), (0.5, A, 0.5), (0.9, A, 0.1), (1.0, A, None)],
    ),
    "senders are independent": (
        60,
        10,
        [*burst(0, A, 10), (0, A, 1.0), *burst(0, B, 10), (0, B, 1.0)],
    ),
    "sender compared ignoring case": (
        60,
        2,
        [(0, "Alice@Example.org", None), (0, "alice@example.org", None), (0, A.upper(), 1.0)],
    ),
    "partial refill after 3 s": (
        60,
        10,
        [*burst(0, A, 10), *burst(3.0, A, 3), (3.0, A, 1.0)],
    ),
    "full burst again after a long pause": (
        60,
        10,
        [*burst(0, A, 10), *burst(600.0, A, 10), (600.0, A, 1.0)],
    ),
    "6 per minute is one unit every 10 s": (
        6,
        2,
        [*burst(0, A, 2), (0, A, 10.0), (4.0, A, 6.0), (10.0, A, None), (10.0, A, 10.0)],
    ),
    "steady sending at the rate is never refused": (
        60,
        1,
        [(float(t), A, None) for t in range(20)],
    ),
    "burst 0 acts as 1": (60, 0, [(0, A, None), (0, A, 1.0), (1.0, A, None)]),
}


@pytest.mark.parametrize("per_minute,burst_size,steps", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_gcra(per_minute: int, burst_size: int, steps: list[Step]) -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute, burst_size, clock)
    for i, (at, key, expected) in enumerate(steps):
        clock.now = at
        result = limiter.check(key)
        if expected is None:
            assert result is None, f"step {i}"
        else:
            assert result == pytest.approx(expected), f"step {i}"


def test_waiting_the_returned_time_is_enough_at_odd_rates() -> None:
    clock = FakeClock(1000.0)
    limiter = RateLimiter(7, 3, clock)  # an interval of 60/7 s does not add up exactly
    for _ in range(50):
        while (wait := limiter.check(A)) is None:
            pass
        clock.now += wait
        assert limiter.check(A) is None


def test_zero_per_minute_means_unlimited() -> None:
    limiter = RateLimiter(0, 10, FakeClock())
    assert limiter.unlimited
    assert all(limiter.check(A) is None for _ in range(1000))
    assert len(limiter) == 0


@pytest.mark.parametrize("args", [(-1, 10), (60, -1)])
def test_negative_values_are_refused(args: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(*args)


def test_stale_keys_are_purged_after_successful_checks() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 10, clock, purge_every=5)
    for i in range(4):
        assert limiter.check(f"user{i}@example.org") is None
    assert len(limiter) == 4
    clock.now = 10.0  # every TAT (1.0) is now in the past
    assert limiter.check(A) is None  # the 5th success purges
    assert len(limiter) == 1


def test_a_purged_sender_starts_with_a_full_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 3, clock, purge_every=1)
    assert [limiter.check(A) for _ in range(3)] == [None, None, None]
    clock.now = 3.0  # TAT == now: stale, the burst is back
    assert limiter.check(B) is None
    assert len(limiter) == 1
    assert [limiter.check(A) for _ in range(3)] == [None, None, None]
    assert limiter.check(A) == pytest.approx(1.0)


def test_memory_cap_holds_under_100k_distinct_senders() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 10, clock, max_keys=5000)
    for _ in range(10):
        limiter.check("heavy@example.org")
    largest = 0
    for i in range(100_000):
        # a flood never locks out a new sender
        assert limiter.check(f"flood{i}@example.org") is None
        largest = max(largest, len(limiter))
    assert largest <= 5000
    # the cap forgets the entries closest to stale first: the heavy sender is still limited
    assert limiter.check("heavy@example.org") == pytest.approx(1.0)


def test_memory_cap_purges_stale_keys_before_evicting() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 10, clock, max_keys=11, purge_every=1000)
    for i in range(10):
        limiter.check(f"old{i}@example.org")
    for _ in range(10):
        limiter.check(A)  # its TAT is 10 s ahead
    assert len(limiter) == 11
    clock.now = 5.0  # the old keys are stale, A is not
    assert limiter.check(B) is None
    assert len(limiter) == 2
    # A kept its state: 5 units refilled, not a fresh burst of 10
    assert [limiter.check(A) for _ in range(5)] == [None] * 5
    assert limiter.check(A) == pytest.approx(1.0)


def test_concurrent_checks_use_each_unit_once() -> None:
    limiter = RateLimiter(60, 10, FakeClock())
    allowed: list[None] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(200):
            if limiter.check(A) is None:
                with lock:
                    allowed.append(None)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 10


def test_from_config(config: Config) -> None:
    clock = FakeClock()
    limiter = RateLimiter.from_config(config, clock)
    assert (limiter.per_minute, limiter.burst) == (60, 10)


def test_enforce_raises_the_450_reply() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 1, clock)
    now_wall = 1795654923.0  # 2026-11-26T01:02:03Z
    limiter.enforce(A, now_wall)
    with pytest.raises(Reject) as excinfo:
        limiter.enforce(A, now_wall)
    assert excinfo.value.reply() == (
        "450 4.7.1: Too much mail from <alice@example.org>, "
        "rate limited until 2026-11-26T01:02:04Z"
    )
    assert "@" not in str(excinfo.value)


@pytest.mark.parametrize(
    "seconds,now_wall,expected",
    [
        (0.0, 0.0, "1970-01-01T00:00:00Z"),
        (1.2, 0.0, "1970-01-01T00:00:02Z"),  # rounded up, never too early
        (1.0, 1795654923.0, "2026-11-26T01:02:04Z"),
        (0.25, 1795654923.5, "2026-11-26T01:02:04Z"),
        (-5.0, 1795654923.0, "2026-11-26T01:02:03Z"),
        (86400.0, 1795654923.0, "2026-11-27T01:02:03Z"),
    ],
)
def test_until_text(seconds: float, now_wall: float, expected: str) -> None:
    assert until_text(seconds, now_wall) == expected
