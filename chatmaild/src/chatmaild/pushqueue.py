"""The persistent queue of push notifications.

Every valid device token of a recipient becomes one item: a file in
`<mailboxes>/pending_notifications/` named by a random UUID (hex), holding three lines:
address, unix time of the first enqueue, token. It is written atomically and deleted when
the item ends (delivered, token gone, or given up). At start every item found is queued again
at level 0; temporary files and unparsable items are deleted.

Retry levels 0-4: an item at level n is attempted 8**n seconds after reaching it (level 0 at
once), so 0, 8, 64, 512 and 4096 s. HTTP 200 ends an item; 410 ends it and forgets the token;
anything else (another status, a timeout, a network error) moves it one level up. It is
given up when no level is left or its next attempt would fall more than 5 h after the first
enqueue. Levels have their own concurrency (4 at level 0, 2 above), so retries never starve
fresh pushes.

Time is a parameter (`clock`); `Notifier.dispatch_due` does one round without waiting, so
tests step through hours of retries instantly.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import fsutil, metrics

log = logging.getLogger("push")

SPOOL_DIR = "pending_notifications"
RETRY_DELAYS = (0, 8, 64, 512, 4096)  # seconds after reaching level 0..4
GIVE_UP_AFTER = 5 * 3600
LEVEL_CONCURRENCY = (4, 2, 2, 2, 2)


@dataclass(order=True)
class Item:
    due: float
    seq: int
    name: str = field(compare=False)
    addr: str = field(compare=False)
    token: str = field(compare=False)
    first: float = field(compare=False)
    level: int = field(default=0, compare=False)


def next_due(item: Item, now: float) -> float | None:
    """When the item's next attempt is due after a failure now, or None to give up."""
    level = item.level + 1
    if level >= len(RETRY_DELAYS):
        return None
    due = now + RETRY_DELAYS[level]
    return None if due > item.first + GIVE_UP_AFTER else due


def parse_item(text: str) -> tuple[str, float, str] | None:
    lines = text.split("\n")
    if len(lines) < 3 or not lines[0] or not lines[2]:
        return None
    try:
        first = float(lines[1])
    except ValueError:
        return None
    return lines[0], first, lines[2]


class PushQueue:
    """The items, on disk and in a heap ordered by due time."""

    def __init__(
        self,
        spool: Path,
        clock: Callable[[], float] = time.time,
        registry: metrics.Registry | None = None,
    ) -> None:
        self.spool = spool
        self.clock = clock
        self._heap: list[Item] = []
        self._seq = itertools.count()
        self.added = asyncio.Event()
        registry = registry or metrics.Registry()
        self.counts = PushCounters(registry)
        self._pending = registry.gauge(
            "chatmail_push_pending", "Push notifications waiting in the queue or being sent."
        )
        self._pending_count = 0
        self._pending.set(0)

    def _count_pending(self, change: int) -> None:
        self._pending_count += change
        self._pending.set(self._pending_count)

    def __len__(self) -> int:
        return len(self._heap)

    def _schedule(self, item: Item) -> None:
        heapq.heappush(self._heap, item)
        self.added.set()

    def enqueue(self, addr: str, token: str) -> Item:
        now = self.clock()
        name = uuid.uuid4().hex
        self.spool.mkdir(mode=0o700, exist_ok=True)
        fsutil.write_atomic(self.spool / name, f"{addr}\n{now}\n{token}\n".encode())
        item = Item(now, next(self._seq), name, addr, token, now)
        self._schedule(item)
        self.counts.queued.inc()
        self._count_pending(+1)
        return item

    def recover(self) -> int:
        """Queue again every item left on disk; delete temporary and unparsable files."""
        now = self.clock()
        count = 0
        try:
            entries = list(os.scandir(self.spool))
        except FileNotFoundError:
            return 0
        for entry in entries:
            path = Path(entry.path)
            try:
                parsed = None if entry.name.endswith(".tmp") else parse_item(path.read_text())
            except (OSError, UnicodeDecodeError):
                parsed = None
            if parsed is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            addr, first, token = parsed
            self._schedule(Item(now, next(self._seq), entry.name, addr, token, first))
            count += 1
        self._count_pending(count)
        return count

    def next_due_time(self) -> float | None:
        return self._heap[0].due if self._heap else None

    def pop_due(self, now: float) -> list[Item]:
        due = []
        while self._heap and self._heap[0].due <= now:
            due.append(heapq.heappop(self._heap))
        return due

    def finish(self, item: Item) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.spool / item.name).unlink()
        self._count_pending(-1)

    def failed(self, item: Item) -> bool:
        """Reschedule after a failed attempt; False (and the file deleted) when given up."""
        due = next_due(item, self.clock())
        if due is None:
            log.error("giving up a push notification after %d attempts", item.level + 1)
            self.finish(item)
            self.counts.given_up.inc()
            return False
        self.counts.retried.inc()
        item.level += 1
        item.due = due
        item.seq = next(self._seq)
        self._schedule(item)
        return True


class PushCounters:
    def __init__(self, registry: metrics.Registry) -> None:
        self.queued = registry.counter(
            "chatmail_push_queued_total", "Push notifications queued (one per device token)."
        )
        self.sent = registry.counter(
            "chatmail_push_sent_total", "Push notifications the push service accepted."
        )
        self.retried = registry.counter(
            "chatmail_push_retried_total", "Failed push attempts that will be tried again."
        )
        self.given_up = registry.counter(
            "chatmail_push_given_up_total", "Push notifications given up after their retries."
        )
        self.tokens_forgotten = registry.counter(
            "chatmail_push_tokens_forgotten_total",
            "Device tokens forgotten because the push service answered 410 Gone.",
        )


# The push endpoint's answer: an HTTP status, or None for a timeout or network error.
Send = Callable[[str], Awaitable[int | None]]


class Notifier:
    """Runs the queue: attempts due items with the per-level concurrency."""

    def __init__(
        self, queue: PushQueue, send: Send, token_gone: Callable[[str, str], None]
    ) -> None:
        self.queue = queue
        self.send = send
        self.token_gone = token_gone
        self._slots = [asyncio.Semaphore(n) for n in LEVEL_CONCURRENCY]

    async def attempt(self, item: Item) -> None:
        async with self._slots[item.level]:
            try:
                status = await self.send(item.token)
            except Exception as e:  # noqa: BLE001 (a failed attempt is a retry, never a crash)
                log.warning("push attempt failed: %s", type(e).__name__)
                status = None
        if status == 200:
            self.queue.finish(item)
            self.queue.counts.sent.inc()
        elif status == 410:
            self.token_gone(item.addr, item.token)
            self.queue.finish(item)
            self.queue.counts.tokens_forgotten.inc()
        else:
            if status is not None:
                log.warning("push endpoint answered HTTP %d; will retry", status)
            self.queue.failed(item)

    def dispatch_due(self) -> list[asyncio.Task[None]]:
        """Start an attempt for every item due now; returns their tasks."""
        items = self.queue.pop_due(self.queue.clock())
        return [asyncio.create_task(self.attempt(item)) for item in items]

    async def run(self) -> None:
        """Forever: dispatch what is due, then sleep until the next due time or a new item."""
        running: set[asyncio.Task[None]] = set()
        while True:
            self.queue.added.clear()
            for task in self.dispatch_due():
                running.add(task)
                task.add_done_callback(running.discard)
            due = self.queue.next_due_time()
            timeout = None if due is None else max(0.0, due - self.queue.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.added.wait(), timeout)
