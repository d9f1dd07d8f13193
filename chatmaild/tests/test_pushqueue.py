from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chatmaild.pushqueue import GIVE_UP_AFTER, Item, Notifier, PushQueue, next_due


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeEndpoint:
    """Answers each token with the next status from its script (default 200)."""

    def __init__(self, script: dict[str, list[int | None]] | None = None) -> None:
        self.script = script or {}
        self.calls: list[str] = []

    async def send(self, token: str) -> int | None:
        self.calls.append(token)
        answers = self.script.get(token, [])
        return answers.pop(0) if answers else 200


def run_due(notifier: Notifier) -> int:
    """One round: attempt everything due now, wait for the attempts; returns their number."""

    async def round_() -> int:
        tasks = notifier.dispatch_due()
        await asyncio.gather(*tasks)
        return len(tasks)

    return asyncio.run(round_())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "pending_notifications"


def make(spool: Path, clock: Clock, endpoint: FakeEndpoint, gone: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    queue = PushQueue(spool, clock)
    notifier = Notifier(queue, endpoint.send, lambda addr, token: gone.append((addr, token)))
    return queue, notifier


@pytest.mark.parametrize(
    ("level", "first_age", "expected_delay"),
    [
        (0, 0, 8),
        (1, 8, 64),
        (2, 72, 512),
        (3, 584, 4096),
        (4, 4680, None),  # no level left
        (2, GIVE_UP_AFTER - 100, None),  # the next attempt would fall after 5 h
    ],
)
def test_next_due(level: int, first_age: float, expected_delay: float | None) -> None:
    now = 50_000.0
    item = Item(now, 0, "n", "a@x.org", "t", first=now - first_age, level=level)
    due = next_due(item, now)
    assert (None if due is None else due - now) == expected_delay


def test_delivered_item_is_deleted(spool: Path, clock: Clock) -> None:
    endpoint, gone = FakeEndpoint(), []
    queue, notifier = make(spool, clock, endpoint, gone)
    item = queue.enqueue("a@x.org", "tok")
    assert (spool / item.name).read_text() == f"a@x.org\n{clock.now}\ntok\n"
    assert run_due(notifier) == 1
    assert endpoint.calls == ["tok"]
    assert list(spool.iterdir()) == [] and len(queue) == 0


def test_retry_levels_then_give_up(
    spool: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, gone = FakeEndpoint({"tok": [500, None, 503, 500, 502]}), []
    queue, notifier = make(spool, clock, endpoint, gone)
    queue.enqueue("a@x.org", "tok")
    start = clock.now
    attempts_at = []
    for delay in (0, 8, 64, 512, 4096):
        clock.now += delay
        if delay:
            # one second early nothing is due
            clock.now -= 1
            assert run_due(notifier) == 0
            clock.now += 1
        assert run_due(notifier) == 1
        attempts_at.append(clock.now - start)
    assert attempts_at == [0, 8, 72, 584, 4680]
    assert len(queue) == 0 and list(spool.iterdir()) == []  # given up after level 4
    assert "giving up" in caplog.text and "tok" not in caplog.text


def test_gone_token_is_reported_and_not_retried(spool: Path, clock: Clock) -> None:
    endpoint, gone = FakeEndpoint({"tok": [410]}), []
    queue, notifier = make(spool, clock, endpoint, gone)
    queue.enqueue("a@x.org", "tok")
    run_due(notifier)
    assert gone == [("a@x.org", "tok")]
    assert len(queue) == 0 and list(spool.iterdir()) == []


def test_due_order(spool: Path, clock: Clock) -> None:
    endpoint, gone = FakeEndpoint({"late": [500]}), []
    queue, notifier = make(spool, clock, endpoint, gone)
    queue.enqueue("a@x.org", "late")
    run_due(notifier)  # fails: due again in 8 s
    clock.now += 1
    queue.enqueue("a@x.org", "first")
    clock.now += 1
    queue.enqueue("a@x.org", "second")
    assert [i.token for i in queue.pop_due(clock.now + 100)] == ["first", "second", "late"]


def test_restart_recovers_items_and_removes_broken_ones(spool: Path, clock: Clock) -> None:
    endpoint, gone = FakeEndpoint({"t1": [500]}), []
    queue, notifier = make(spool, clock, endpoint, gone)
    queue.enqueue("a@x.org", "t1")
    run_due(notifier)  # failed once, waiting at level 1
    queue.enqueue("b@x.org", "t2")
    (spool / "deadbeef.tmp").write_text("half written")
    (spool / "0123abcd").write_text("garbage")
    (spool / "4567cdef").write_bytes(b"\xff\xfe\n")
    # the process restarts: a new queue over the same spool
    fresh, fresh_notifier = make(spool, clock, endpoint, gone)
    assert fresh.recover() == 2
    assert sorted(p.name for p in spool.iterdir()) == sorted(
        i.name for i in fresh.pop_due(clock.now + 1)
    )


def test_recovered_item_keeps_its_first_enqueue_time(spool: Path, clock: Clock) -> None:
    endpoint, gone = FakeEndpoint({"t": [500, 500]}), []
    queue, _ = make(spool, clock, endpoint, gone)
    queue.enqueue("a@x.org", "t")
    clock.now += GIVE_UP_AFTER - 5  # nearly 5 h later the relay restarts
    fresh, notifier = make(spool, clock, endpoint, gone)
    fresh.recover()
    run_due(notifier)  # attempted at once, fails; 8 s later would be past 5 h: given up
    assert len(fresh) == 0 and list(spool.iterdir()) == []


def test_network_errors_and_exceptions_are_retries(spool: Path, clock: Clock) -> None:
    gone: list[tuple[str, str]] = []

    async def broken(token: str) -> int | None:
        raise ConnectionResetError

    queue = PushQueue(spool, clock)
    notifier = Notifier(queue, broken, lambda a, t: gone.append((a, t)))
    queue.enqueue("a@x.org", "t")
    run_due(notifier)
    assert len(queue) == 1 and queue.next_due_time() == clock.now + 8


def test_level_concurrency_limits(spool: Path, clock: Clock) -> None:
    in_flight = 0
    peak = 0
    release = asyncio.Event()

    async def slow(token: str) -> int | None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return 200

    async def scenario() -> None:
        queue = PushQueue(spool, clock)
        notifier = Notifier(queue, slow, lambda a, t: None)
        for i in range(10):
            queue.enqueue("a@x.org", f"t{i}")
        tasks = notifier.dispatch_due()
        for _ in range(5):
            await asyncio.sleep(0)
        assert peak == 4  # level 0 sends at most 4 at once
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_the_queue_counts_each_outcome_and_what_is_pending(spool: Path, clock: Clock) -> None:
    endpoint = FakeEndpoint({"gone": [410], "flaky": [500], "dead": [500] * 5})
    queue, notifier = make(spool, clock, endpoint, [])
    for token in ("ok", "gone", "flaky", "dead"):
        queue.enqueue("a@x.org", token)
    pending = queue._pending
    assert pending.value() == 4
    run_due(notifier)
    assert pending.value() == 2  # ok and gone ended
    for delay in (8, 64, 512, 4096):
        clock.now += delay
        run_due(notifier)
    counts = queue.counts
    assert counts.queued.value() == 4
    assert counts.sent.value() == 2  # ok, and flaky at its second attempt
    assert counts.tokens_forgotten.value() == 1
    assert counts.retried.value() == 1 + 4  # flaky once; dead at levels 0 to 3
    assert counts.given_up.value() == 1
    assert pending.value() == 0


def test_recovered_items_are_pending(spool: Path, clock: Clock) -> None:
    queue, _ = make(spool, clock, FakeEndpoint(), [])
    queue.enqueue("a@x.org", "one")
    queue.enqueue("a@x.org", "two")
    again, _ = make(spool, clock, FakeEndpoint(), [])
    assert again.recover() == 2
    assert again._pending.value() == 2
