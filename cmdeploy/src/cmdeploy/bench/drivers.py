"""The load drivers of `cmdeploy bench` (issue 7): logins, throughput, latency, idle clients.

All drivers run on one asyncio event loop, because this machine's two cores also run the
relays: a thread per connection would cost the relays CPU that the bench then blames on them.
Every driver is bounded by a count and a deadline and returns plain figures; the caller turns
them into rates on the relay's clock (`runner.py`).

Senders are chosen by the client-side twin of the relay's rate limit (`stats.SendBudget`), so
throughput is the relay's, not the limiter's; a sender connects, logs in, sends at most its
burst and quits, as a chat client that wakes up to send does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .faults import Attempt, Letter
from .protocol import Endpoint, IMAPClient, ProtocolError, SMTPClient
from .stats import SendBudget
from .workload import MessageBody, message

# what a connection or transaction can fail with; the drivers count it and go on
NET_ERRORS = (OSError, ProtocolError, asyncio.TimeoutError, ssl.SSLError, EOFError)


@dataclass(frozen=True)
class Account:
    addr: str
    password: str = field(repr=False)

    @property
    def local(self) -> str:
        return self.addr.split("@", 1)[0]


@dataclass
class Errors:
    """Failures by kind, with one example text each (no password ever reaches these)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, error: BaseException) -> None:
        kind = type(error).__name__
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.examples.setdefault(kind, str(error)[:300] or kind)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def first(self) -> str:
        return next(iter(self.examples.values()), "")

    def as_dict(self) -> dict[str, object]:
        return {"counts": self.counts, "examples": self.examples}


@dataclass
class LoginResult:
    ok: int
    seconds: float
    errors: Errors


async def login_all(
    endpoint: Endpoint, accounts: Sequence[Account], concurrency: int, deadline: float
) -> LoginResult:
    """IMAP connect + LOGIN + LOGOUT for each account, `concurrency` at a time.

    For accounts that do not exist yet this is the relay's first-login creation
    (doc/contract.md §2.2)."""
    ctx = endpoint.tls_context()
    queue = list(reversed(accounts))
    errors = Errors()
    ok = 0

    async def worker() -> None:
        nonlocal ok
        while queue and time.monotonic() < deadline:
            account = queue.pop()
            try:
                client = await IMAPClient.connect(endpoint, ctx)
                try:
                    await client.login(account.addr, account.password)
                finally:
                    await client.logout()
                ok += 1
            except NET_ERRORS as e:
                errors.add(e)

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return LoginResult(ok, time.monotonic() - start, errors)


async def open_and_read(endpoint: Endpoint, account: Account) -> dict[str, object]:
    """What a user's app does when it opens: log in, select the inbox, read the newest
    message whole. `ok` with the counts, or the first failure's text."""
    try:
        client = await IMAPClient.connect(endpoint, endpoint.tls_context())
        try:
            await client.login(account.addr, account.password)
            messages = await client.select_inbox()
            read = await client.read_message(messages) if messages else 0
        finally:
            await client.logout()
    except NET_ERRORS as e:
        return {"ok": False, "error": str(e)[:300] or type(e).__name__}
    return {"ok": bool(read), "messages": messages, "read_bytes": read}


class SenderPool:
    """Hands out senders that still have budget under the relay's rate limit.

    The relay charges a unit when MAIL FROM arrives, after connect, TLS and AUTH: later than
    the moment the pool hands the sender out, so the relay's schedule runs behind ours by
    that delay. Units are therefore booked `USE_DELAY` seconds late, to stay on the safe side.
    """

    USE_DELAY = 2.0

    def __init__(self, senders: Sequence[Account], per_minute: int, burst: int) -> None:
        self.senders = list(senders)
        self.burst = max(1, burst) if per_minute else 10
        self.budgets = {a.addr: SendBudget(per_minute, burst) for a in senders}
        self.busy: set[str] = set()
        self.waited = 0.0  # seconds workers spent waiting for any sender to have budget
        self._next = 0

    async def acquire(self, wanted: int) -> tuple[Account, int]:
        """A sender not in use and how many messages it may send now (1..wanted)."""
        while True:
            now = time.monotonic()
            soonest: float | None = None
            for step in range(len(self.senders)):
                account = self.senders[(self._next + step) % len(self.senders)]
                if account.addr in self.busy:
                    continue
                budget = self.budgets[account.addr]
                allowed = min(wanted, budget.available(now))
                if allowed > 0:
                    self._next = (self._next + step + 1) % len(self.senders)
                    budget.take(now + self.USE_DELAY, allowed)
                    self.busy.add(account.addr)
                    return account, allowed
                ready = budget.ready_at(now)
                soonest = ready if soonest is None else min(soonest, ready)
            pause = max(0.01, (soonest - now) if soonest is not None else 0.05)
            self.waited += pause
            await asyncio.sleep(pause)

    def release(self, account: Account, unused: int = 0) -> None:
        self.busy.discard(account.addr)
        if unused:
            budget = self.budgets[account.addr]
            budget.tat -= unused * budget.interval


@dataclass
class Sent:
    """One accepted message: when its DATA ended and when the relay said 250 (monotonic)."""

    end_of_data: float
    accepted: float
    rcpt: str


@dataclass
class SendResult:
    sent: list[Sent]
    errors: Errors
    started_wall: float  # time.time() when the first connection was opened
    started_mono: float
    seconds: float  # until the last 250
    sender_wait: float
    # SMTP logins it took: each costs the relay a password verification, so the messages a
    # connection carries (bounded by the rate limit's burst) weigh on its CPU per message
    logins: int = 0

    @property
    def accepted(self) -> int:
        return len(self.sent)


async def throughput(
    endpoint: Endpoint,
    pool: SenderPool,
    recipients: Sequence[Account],
    body: MessageBody,
    messages: int,
    concurrency: int,
    deadline: float,
    batch: int,
) -> SendResult:
    """`concurrency` senders submit `messages` messages as fast as the relay takes them."""
    ctx = endpoint.tls_context()
    errors = Errors()
    sent: list[Sent] = []
    remaining = messages
    counter = logins = 0

    async def worker() -> None:
        nonlocal remaining, counter, logins
        while remaining > 0 and time.monotonic() < deadline:
            sender, allowed = await pool.acquire(min(batch, remaining))
            if remaining <= 0:
                pool.release(sender, allowed)
                return
            allowed = min(allowed, remaining)
            remaining -= allowed
            done = 0
            try:
                client = await SMTPClient.login(endpoint, ctx, sender.addr, sender.password)
                logins += 1
                try:
                    for _ in range(allowed):
                        rcpt = recipients[counter % len(recipients)].addr
                        counter += 1
                        data = message(body, sender.addr, rcpt, f"{counter}.{sender.local}@bench")
                        end_of_data = await client.send(sender.addr, rcpt, data)
                        sent.append(Sent(end_of_data, time.monotonic(), rcpt))
                        done += 1
                finally:
                    await client.quit()
            except NET_ERRORS as e:
                errors.add(e)
            finally:
                # budget the relay did not see is given back; the failed one is not
                pool.release(sender, max(0, allowed - done - 1))

    started_wall, started_mono = time.time(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    last = max((s.accepted for s in sent), default=time.monotonic())
    return SendResult(
        sent, errors, started_wall, started_mono, last - started_mono, pool.waited, logins
    )


async def resend_until_accepted(
    endpoint: Endpoint,
    pool: SenderPool,
    letters: Sequence[Letter],
    body: MessageBody,
    concurrency: int,
    deadline: float,
    retry_pause: float = 1.0,
) -> Errors:
    """Send every letter until the relay answers 250 (or 5xx, which is final), as a chat
    client does: a 4xx or no answer sends it again after `retry_pause`, with the same
    Message-ID, from whichever sender has budget. Each attempt goes into `letter.attempts`.
    Returns the failures to connect or log in (not attempts of any message)."""
    ctx = endpoint.tls_context()
    queue: list[Letter] = list(reversed(letters))
    open_letters = len(letters)
    errors = Errors()
    loop = asyncio.get_running_loop()

    def retry(letter: Letter) -> None:
        loop.call_later(retry_pause, queue.append, letter)

    async def worker() -> None:
        nonlocal open_letters
        while open_letters > 0 and time.monotonic() < deadline:
            if not queue:
                await asyncio.sleep(0.1)  # retries come back after their pause
                continue
            sender, allowed = await pool.acquire(min(pool.burst, len(queue)))
            batch = [queue.pop() for _ in range(min(allowed, len(queue)))]
            if not batch:  # other workers took them meanwhile
                pool.release(sender, allowed)
                continue
            used = 0
            try:
                client = await SMTPClient.login(endpoint, ctx, sender.addr, sender.password)
            except NET_ERRORS as e:
                errors.add(e)
                for letter in batch:
                    retry(letter)
                pool.release(sender, allowed)
                await asyncio.sleep(retry_pause)
                continue
            try:
                for i, letter in enumerate(batch):
                    data = message(body, sender.addr, letter.rcpt, letter.msgid)
                    reply, after_data = await client.try_send(sender.addr, letter.rcpt, data)
                    used += 1
                    letter.attempts.append(Attempt(reply, after_data))
                    if reply == 250 or 500 <= reply < 600:
                        open_letters -= 1
                        continue
                    # 4xx or no answer: this one again later, the rest on a new connection
                    for later in [letter, *batch[i + 1 :]]:
                        retry(later)
                    break
            finally:
                await client.quit()
                pool.release(sender, max(0, allowed - used))

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return errors


@dataclass
class IdleRecipient:
    """A recipient in IMAP IDLE with at most one timed message on its way."""

    account: Account
    client: IMAPClient
    sent_at: float | None = None
    sent_wall: float | None = None  # the same moment on the wall clock (to look for the file)
    in_flight: bool = False
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class LatencyResult:
    latencies: list[float]  # end of DATA -> EXISTS seen in IDLE, seconds
    lost: int  # timed messages whose EXISTS did not come within the settle time
    # those messages: (recipient's mailbox, end of DATA on the wall clock), so the runner can
    # tell late (in the maildir, no EXISTS in time) from lost (not there)
    unseen: list[tuple[str, float]]
    offered_rate: float
    achieved_rate: float
    untimed: int  # messages that went to recipients not in IDLE (all idle ones were busy)
    errors: Errors


async def open_idle(
    endpoint: Endpoint, accounts: Sequence[Account], concurrency: int, deadline: float
) -> tuple[list[tuple[Account, IMAPClient]], Errors]:
    """One IDLE connection per account entry (an account may appear several times), each
    with its account: connections complete in any order, and a recipient's notices must be
    read on its own connection."""
    ctx = endpoint.tls_context()
    opened: list[tuple[Account, IMAPClient]] = []
    errors = Errors()
    queue = list(reversed(accounts))

    async def worker() -> None:
        while queue and time.monotonic() < deadline:
            account = queue.pop()
            try:
                client = await IMAPClient.connect(endpoint, ctx)
            except NET_ERRORS as e:
                errors.add(e)
                continue
            try:
                await client.login(account.addr, account.password)
                await client.select_inbox()
                await client.idle()
                opened.append((account, client))
            except NET_ERRORS as e:
                errors.add(e)
                await client.logout()

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return opened, errors


async def close_all(clients: Sequence[IMAPClient], concurrency: int = 200) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def close(client: IMAPClient) -> None:
        async with semaphore:
            await client.logout()

    await asyncio.gather(*(close(c) for c in clients))


async def latency(
    send_endpoint: Endpoint,
    idle_endpoint: Endpoint,
    pool: SenderPool,
    idle_accounts: Sequence[Account],
    spare_recipients: Sequence[Account],
    body: MessageBody,
    rate: float,
    count: int,
    workers: int,
    deadline: float,
    settle: float = 90.0,
    on_progress: Callable[[int], None] | None = None,
) -> LatencyResult:
    """Offer `count` messages at `rate` per second (open loop); time those to IDLE recipients.

    After the last message, the ones on their way get `settle` seconds more: a notice later
    than LATE (30 s) is timed too, and counted late by the runner.

    Each IDLE recipient has at most one timed message in flight, so every EXISTS belongs to
    exactly one message. When all of them are busy the message goes to a spare recipient:
    it still loads the relay but is not timed (`untimed`).
    """
    opened, errors = await open_idle(idle_endpoint, idle_accounts, 20, deadline)
    # paired as opened: zipping the accounts with the connections in the order they finished
    # opening watched one recipient's mail on another's connection (late, never told)
    waiting = [IdleRecipient(account, client) for account, client in opened]
    clients = [client for _, client in opened]
    if not waiting:
        raise ProtocolError(f"no IDLE connection could be opened: {errors.first()}")
    latencies: list[float] = []
    free = list(waiting)
    ctx = send_endpoint.tls_context()
    untimed = 0
    dispatched = 0
    spare_counter = 0

    async def watch(recipient: IdleRecipient) -> None:
        while True:
            try:
                _n, seen_at = await recipient.client.next_exists()
            except NET_ERRORS as e:
                errors.add(e)
                return
            if recipient.in_flight and recipient.sent_at is not None:
                latencies.append(seen_at - recipient.sent_at)
                recipient.in_flight = False
                recipient.sent_at = None
                free.append(recipient)
                recipient.arrived.set()

    watchers = [asyncio.create_task(watch(r)) for r in waiting]
    jobs: asyncio.Queue[int] = asyncio.Queue()
    start = time.monotonic()

    async def dispatcher() -> None:
        for i in range(count):
            due = start + i / rate
            if due > deadline:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            jobs.put_nowait(i)
        for _ in range(workers):
            jobs.put_nowait(-1)

    async def worker() -> None:
        nonlocal untimed, dispatched, spare_counter
        client: SMTPClient | None = None
        sender: Account | None = None
        left = 0
        try:
            while True:
                job = await jobs.get()
                if job < 0:
                    return
                if client is None or left == 0:
                    if client is not None and sender is not None:
                        await client.quit()
                        pool.release(sender)
                        client = None
                    sender, left = await pool.acquire(10)
                    try:
                        client = await SMTPClient.login(
                            send_endpoint, ctx, sender.addr, sender.password
                        )
                    except NET_ERRORS as e:
                        errors.add(e)
                        pool.release(sender, left)
                        client, left = None, 0
                        continue
                target = free.pop() if free else None
                if target is not None:
                    target.in_flight = True
                    rcpt = target.account.addr
                else:
                    untimed += 1
                    spare_counter += 1
                    rcpt = spare_recipients[spare_counter % len(spare_recipients)].addr
                left -= 1
                assert sender is not None
                data = message(body, sender.addr, rcpt, f"l{job}.{sender.local}@bench")

                def started(at: float, target: IdleRecipient | None = target) -> None:
                    if target is not None:
                        target.sent_at = at
                        target.sent_wall = time.time()

                try:
                    await client.send(sender.addr, rcpt, data, started)
                except NET_ERRORS as e:
                    errors.add(e)
                    if target is not None:
                        target.in_flight = False
                        target.sent_at = None
                        free.append(target)
                    with contextlib.suppress(*NET_ERRORS):
                        await client.quit()
                    client, left = None, 0
                    continue
                dispatched += 1
                if on_progress:
                    on_progress(dispatched)
        finally:
            if client is not None:
                await client.quit()
            if sender is not None:
                pool.release(sender)

    await asyncio.gather(dispatcher(), *(worker() for _ in range(workers)))
    sending_time = time.monotonic() - start
    # wait for the timed messages still on their way, within `settle` seconds
    settle_end = time.monotonic() + settle
    for recipient in waiting:
        while recipient.in_flight and time.monotonic() < settle_end:
            recipient.arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(recipient.arrived.wait(), settle_end - time.monotonic())
    unseen = [(r.account.addr, r.sent_wall or 0.0) for r in waiting if r.in_flight]
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    await close_all(clients)
    return LatencyResult(
        latencies,
        len(unseen),
        unseen,
        rate,
        dispatched / sending_time if sending_time > 0 else 0.0,
        untimed,
        errors,
    )


@dataclass
class HopSample:
    started: float  # wall clock, before MAIL FROM
    end_of_data: float  # wall clock
    submitted: float | None  # wall clock of the 250 after DATA
    told: float | None  # wall clock of the EXISTS


async def hop_samples(
    send_endpoint: Endpoint,
    idle_endpoint: Endpoint,
    sender: Account,
    recipient: Account,
    body: MessageBody,
    count: int,
    gap: float = 0.5,
    wait: float = 30.0,
) -> list[HopSample]:
    """`count` messages one after another, each told to the recipient's IDLE before the next
    leaves (`gap` seconds later, so the relays' log lines of one stay apart from the next)."""
    imap = await IMAPClient.connect(idle_endpoint, idle_endpoint.tls_context())
    smtp = await SMTPClient.login(
        send_endpoint, send_endpoint.tls_context(), sender.addr, sender.password
    )
    samples: list[HopSample] = []
    try:
        await imap.login(recipient.addr, recipient.password)
        await imap.select_inbox()
        await imap.idle()
        for i in range(count):
            started = time.time()
            data = message(body, sender.addr, recipient.addr, f"h{i}.{sender.local}@bench")
            sent = await smtp.send(sender.addr, recipient.addr, data)  # monotonic
            submitted = time.time()
            end_of_data = submitted - (time.monotonic() - sent)
            try:
                await asyncio.wait_for(imap.next_exists(), wait)
                told: float | None = time.time()
            except TimeoutError:
                told = None
            samples.append(HopSample(started, end_of_data, submitted, told))
            await asyncio.sleep(gap)
    finally:
        await smtp.quit()
        await imap.logout()
    return samples
