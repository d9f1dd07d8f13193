"""The phases of one `cmdeploy bench` run, in order, and the cleanup (issue 7).

1. Hosts: the lab's relays (read anew from the lab state), their deployed ini, host facts;
   one fresh IMAP login proves the relay can be reached and authenticated to.
2. The bare baseline host is started (provisioned once, cached in the lab directory).
3. Accounts: first-login creations per second, then logins of existing accounts per second.
4. Throughput, 2 KB and 200 KB, at each concurrency; delivered messages are counted in the
   recipients' maildirs on the relay and timed by their mtimes; CPU per class is sampled.
5. Latency at a fraction of the best 2 KB throughput: same relay, then relay1 → relay2.
6. The bare host gets the same throughput and latency workloads (and logins).
7. Idle IMAP IDLE connections: relay memory per connection once hibernated.

Every account is registered before its first login, and removed at the end, also after an
error or Ctrl-C (SIGINT is ignored while removing). Loads are bounded by count and deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import drivers, faults, hops, profile, stats
from .bare import BareHost
from .drivers import Account, SenderPool
from .hosts import BenchError, BenchHost, lab_relays, relay_config
from .protocol import IMAPClient, ProtocolError
from .workload import MessageBody, local_part, new_password, new_run_id

Say = Callable[[str], None]

# The fault run: accounts, load and patience per phase
FAULT_SENDERS = 40
FAULT_RECIPIENTS = 20
FAULT_CONCURRENCY = 16
FAULT_PHASE_DEADLINE = 300.0  # seconds for the load of one phase, a reboot included
# longer than the relay's first retry of deferred mail (minimal_backoff_time, queue_run_delay
# in its main.cf: 30 s) and the run of the queue after a restart
FAULT_QUIET = 90.0
# for the queues to empty after the last phase: deferred mail waits up to 30 s * 2^n
FAULT_SWEEP_DEADLINE = 1200.0


# the disk-full fault's tmpfs: this much above the free-space gate of account creation
DISK_MARGIN = 64 * 2**20


@dataclass(frozen=True)
class FaultUsers:
    """The people the disk-full fault asks about: one user with mail, and new accounts
    (the first is the control, created before the fill)."""

    reader: Account
    newcomers: list[Account]


@dataclass(frozen=True)
class Workload:
    """Every knob of a run; all of it goes into the JSON."""

    accounts: int = 300
    login_concurrency: int = 16
    concurrency: tuple[int, ...] = (4, 16, 32)
    messages: int = 1500
    large_messages: int = 150
    small_size: int = 2 * 1024
    large_size: int = 200 * 1024
    latency_fraction: float = 0.5
    latency_messages: int = 400
    hop_samples: int = 12  # single messages followed through the relays' logs (0: skip)
    idle: tuple[int, ...] = (1000, 5000)
    idle_per_account: int = 8  # below Dovecot's mail_max_userip_connections (10)
    duration: float = 120.0  # cap per load, seconds
    bare: bool = True
    keep_bare: bool = False
    idle_settle: float = 45.0  # hibernation after 30 s of IDLE, plus a margin


@dataclass
class Registry:
    """The bench's accounts per host: registered before they exist, removed at the end."""

    names: dict[str, list[str]] = field(default_factory=dict)
    hosts: dict[str, BenchHost] = field(default_factory=dict)

    def add(self, host: BenchHost, accounts: list[Account]) -> None:
        self.hosts[host.label] = host
        self.names.setdefault(host.label, []).extend(a.addr for a in accounts)

    def remove_all(self, say: Say) -> dict[str, Any]:
        outcome: dict[str, Any] = {}
        for label, names in self.names.items():
            if not names:
                continue
            try:
                result = self.hosts[label].remove_mailboxes(sorted(set(names)))
            except BenchError as e:
                outcome[label] = {"error": str(e)}
                say(f"could not remove the bench's accounts on {label}: {e}")
                continue
            outcome[label] = {"removed": result["removed"], "left": len(result["left"])}
            say(f"removed the {len(set(names))} bench accounts on {label}")
        return outcome


class AccountFactory:
    """Accounts named `b<run id><n>` with a fresh password each (or the bare host's one)."""

    def __init__(self, run_id: str, domain: str, length: int, password_length: int) -> None:
        self.run_id = run_id
        self.domain = domain
        self.length = length
        self.password_length = password_length
        self.count = 0

    def make(self, n: int, password: str | None = None) -> list[Account]:
        made = []
        for _ in range(n):
            local = local_part(self.run_id, self.count, self.length)
            self.count += 1
            made.append(Account(f"{local}@{self.domain}", password or self._password()))
        return made

    def _password(self) -> str:
        return new_password(self.password_length)


def raise_fd_limit() -> int:
    """Thousands of idle connections need as many descriptors; take what the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_deliveries(
    host: BenchHost,
    names: list[str],
    since: float,
    known: set[str],
    expected: int,
    quiet: float = 20.0,
) -> list[float]:
    """Times of the files that were not `known` before the run, until `expected` arrived or
    nothing new came for `quiet` seconds."""
    last_count, last_change = -1, time.monotonic()
    while True:
        files = host.deliveries(names, since)
        times = sorted(t for key, t in files.items() if key not in known)
        if len(times) >= expected:
            return times
        if len(times) != last_count:
            last_count, last_change = len(times), time.monotonic()
        elif time.monotonic() - last_change > quiet:
            return times
        time.sleep(1.0)


class Bench:
    def __init__(self, workload: Workload, say: Say) -> None:
        self.w = workload
        self.say = say
        self.registry = Registry()
        self.run_id = new_run_id()
        self.doc: dict[str, Any] = {
            "schema": "cmdeploy-bench/1",
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": sys.argv,
            "workload": asdict(workload),
            "machine": {
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "note": "the relays, the bare host and the load generator share these CPUs",
            },
            "hosts": {},
        }

    # --- setup -------------------------------------------------------------------------------

    def discover(self) -> tuple[BenchHost, BenchHost | None]:
        relays = lab_relays()
        if not relays:
            raise BenchError(
                "the lab is not up, so there is no relay to measure: run `cmdeploy lab up` "
                "first (the bench targets only lab hosts)."
            )
        for relay in relays[:2]:
            config = relay_config(relay)
            relay.mailboxes = str(config.mailboxes_path)
            relay.read_facts()
            self.doc["hosts"][relay.label] = {
                "domain": relay.domain,
                "ip": relay.ip,
                **relay.facts,
                "limits": {
                    "max_user_send_per_minute": config.max_user_send_per_minute,
                    "max_user_send_burst_size": config.max_user_send_burst_size,
                },
            }
            relay.config = config
        return relays[0], (relays[1] if len(relays) > 1 else None)

    def factory(self, host: BenchHost) -> AccountFactory:
        config = host.chatmail_config()
        return AccountFactory(
            self.run_id, host.domain, config.username_max_length, config.password_min_length + 4
        )

    def create(
        self, host: BenchHost, accounts: list[Account], concurrency: int
    ) -> drivers.LoginResult:
        """First logins (registered for removal before they are tried)."""
        self.registry.add(host, accounts)
        deadline = time.monotonic() + self.w.duration
        return asyncio.run(drivers.login_all(host.endpoint, accounts, concurrency, deadline))

    def wait_for_load(self, host: BenchHost, timeout: float = 150.0) -> float:
        """Until the host's 1-minute load is below doveauth's creation limit (creation
        pauses above `max_load_1m`); the load average is the machine's,
        so the bench's own earlier loads count. Returns the load it saw last."""
        limit = 0.8 * host.chatmail_config().max_load_1m
        deadline = time.monotonic() + timeout
        load = host.load_1m()
        if load > limit:
            self.say(
                f"  waiting for the load on {host.label} ({load:.1f}) to fall below {limit:.1f}"
            )
        while load > limit and time.monotonic() < deadline:
            time.sleep(5)
            load = host.load_1m()
        return load

    def prepare_accounts(self, host: BenchHost, accounts: list[Account]) -> dict[str, Any]:
        """Accounts the later phases need, created now (not timed), retried once when the
        relay's load gate refused some."""
        if not accounts:
            return {"host": host.label, "requested": 0, "ok": 0}
        self.wait_for_load(host)
        made = self.create(host, accounts, self.w.login_concurrency)
        ok, errors = made.ok, made.errors
        if made.errors.total:
            self.wait_for_load(host)
            retry = self.create(host, accounts, self.w.login_concurrency)  # logins are harmless
            ok, errors = retry.ok, retry.errors
        if errors.total:
            self.say(
                f"  {errors.total} of {len(accounts)} failed on {host.label}: {errors.first()}"
            )
        return {"host": host.label, "requested": len(accounts), "ok": ok, **errors.as_dict()}

    def preflight(self, host: BenchHost, factory: AccountFactory) -> None:
        probe = factory.make(1)
        result = self.create(host, probe, 1)
        if result.ok != 1:
            raise BenchError(
                f"cannot log in to {host.label} ({host.domain}) over IMAPS at {host.ip}:993: "
                f"{result.errors.first() or 'no answer'}. Check that the relay is deployed "
                "and running (`cmdeploy lab status`, `cmdeploy status`)."
            )

    # --- phases ------------------------------------------------------------------------------

    def accounts_phase(self, relay: BenchHost, accounts: list[Account]) -> dict[str, Any]:
        self.say(f"creating {len(accounts)} accounts by their first login on {relay.label}")
        before = relay.cpu_sample()
        created = self.create(relay, accounts, self.w.login_concurrency)
        creation_profile = profile.cpu_by_class(before, relay.cpu_sample())
        if created.ok == 0:
            raise BenchError(
                f"no account could be created on {relay.label}: {created.errors.first()}"
            )
        self.say("logging in to the existing accounts")
        deadline = time.monotonic() + self.w.duration
        logins = asyncio.run(
            drivers.login_all(relay.endpoint, accounts, self.w.login_concurrency, deadline)
        )
        return {
            "concurrency": self.w.login_concurrency,
            "created": created.ok,
            "creations_per_s": stats.rate(created.ok, created.seconds),
            "creation_errors": created.errors.as_dict(),
            "logins": logins.ok,
            "logins_per_s": stats.rate(logins.ok, logins.seconds),
            "login_errors": logins.errors.as_dict(),
            "creation_profile": creation_profile,
        }

    def throughput_run(
        self,
        host: BenchHost,
        pool: SenderPool,
        recipients: list[Account],
        body: MessageBody,
        messages: int,
        concurrency: int,
        receive: BenchHost | None = None,
    ) -> dict[str, Any]:
        """Submitted on `host`, counted in the recipients' maildirs on `receive` (default:
        the same host)."""
        receive = receive or host
        names = [a.addr for a in recipients]
        # files of earlier loads that arrived within the last seconds are known, not counted
        since = receive.to_host_clock(time.time()) - 5.0
        known = set(receive.deliveries(names, since))
        cpu_before = host.cpu_sample()
        gen_before = own_cpu()
        deadline = time.monotonic() + self.w.duration
        sent = asyncio.run(
            drivers.throughput(
                host.endpoint,
                pool,
                recipients,
                body,
                messages,
                concurrency,
                deadline,
                batch=max(1, pool.burst),
            )
        )
        gen_cpu = own_cpu() - gen_before
        times = wait_deliveries(receive, names, since, known, sent.accepted)
        cpu = profile.cpu_by_class(cpu_before, host.cpu_sample())
        first = receive.to_host_clock(sent.started_wall)
        span = stats.delivery_span(first, times)
        span = max(span or 0.0, sent.seconds) or None
        delivered = len(times)
        result: dict[str, Any] = {
            "size": body.size,
            "concurrency": concurrency,
            "messages": messages,
            "accepted": sent.accepted,
            "delivered": delivered,
            "seconds": span,
            "delivered_per_s": stats.rate(delivered, span),
            "accepted_per_s": stats.rate(sent.accepted, sent.seconds),
            "sender_wait_s": round(sent.sender_wait, 3),
            "logins": sent.logins,
            "errors": sent.errors.as_dict(),
            "load_generator_cores": gen_cpu / sent.seconds if sent.seconds > 0 else None,
            "profile": cpu,
            # for the throughput-over-time chart: seconds after the first submission
            "delivery_offsets": [round(t - first, 3) for t in times],
        }
        path = host.label if receive is host else f"{host.label} -> {receive.label}"
        self.say(
            f"  {path} {body.size // 1024} KB x{concurrency}: {sent.accepted} accepted, "
            f"{delivered} delivered, {fmt(result['delivered_per_s'])} msg/s, "
            f"{sent.logins} logins"
        )
        return result

    def throughput_phase(
        self, targets: list[tuple[BenchHost, SenderPool, list[Account]]]
    ) -> list[dict[str, Any]]:
        """Every size and concurrency on each target (host, senders, recipients) in turn, the
        order rotated from one step to the next: this machine's speed drifts by a quarter
        within minutes (doc/performance.md), and a drift then touches the relay and the bare
        host alike instead of whichever ran in that stretch. One result per target."""
        runs: list[dict[str, list[dict[str, Any]]]] = [{} for _ in targets]
        step = 0
        for size, count in (
            (self.w.small_size, self.w.messages),
            (self.w.large_size, self.w.large_messages),
        ):
            body = MessageBody.of_size(size)
            key = size_key(size)
            for c in self.w.concurrency:
                for i in rotated(range(len(targets)), step):
                    host, pool, recipients = targets[i]
                    result = self.throughput_run(host, pool, recipients, body, count, c)
                    runs[i].setdefault(key, []).append(result)
                step += 1
        return [{"runs": r, "best": {k: best_run(v) for k, v in r.items()}} for r in runs]

    def latency_run(
        self,
        label: str,
        send: BenchHost,
        idle_host: BenchHost,
        pool: SenderPool,
        idle_accounts: list[Account],
        spare: list[Account],
        rate: float,
        workers: int,
    ) -> dict[str, Any]:
        body = MessageBody.of_size(self.w.small_size)
        deadline = time.monotonic() + self.w.duration
        cpu_before = send.cpu_sample()
        try:
            result = asyncio.run(
                drivers.latency(
                    send.endpoint,
                    idle_host.endpoint,
                    pool,
                    idle_accounts,
                    spare,
                    body,
                    rate,
                    self.w.latency_messages,
                    workers,
                    deadline,
                )
            )
        except ProtocolError as e:
            raise BenchError(f"latency {label}: {e}") from None
        cpu = profile.cpu_by_class(cpu_before, send.cpu_sample())
        summary: dict[str, Any] = {**stats.latency_summary(result.latencies, result.lost)}
        # Told after more than 30 s, or not told at all though the message is in the maildir:
        # late. Not in the maildir: lost.
        never_told = sum(
            1
            for mailbox, sent_wall in result.unseen
            if idle_host.deliveries([mailbox], idle_host.to_host_clock(sent_wall))
        )
        told_late = sum(1 for x in result.latencies if x > stats.LATE)
        late = told_late + never_told
        summary["late"], summary["lost"] = late, len(result.unseen) - never_told
        summary["late_told_after_s"] = sorted(
            round(x, 1) for x in result.latencies if x > stats.LATE
        )
        self.say(
            f"  latency {label} at {rate:.1f} msg/s: p50 {ms(summary['p50'])}, "
            f"p95 {ms(summary['p95'])}, p99 {ms(summary['p99'])} ({summary['count']} timed, "
            f"{late} late, {summary['lost']} lost; machine busy "
            f"{cpu['machine_busy_cores']:.2f} cores)"
        )
        return {
            **summary,
            "offered_per_s": rate,
            "achieved_per_s": result.achieved_rate,
            "untimed": result.untimed,
            "idle_recipients": len(idle_accounts),
            "errors": result.errors.as_dict(),
            "samples": [round(x, 4) for x in result.latencies],
            "profile": cpu,
        }

    def hops_run(
        self, label: str, send: BenchHost, receive: BenchHost, sender: Account, recipient: Account
    ) -> dict[str, Any]:
        """Where the time of single messages goes, hop by hop (issue 12)."""
        body = MessageBody.of_size(self.w.small_size)
        since = time.time() - 1
        try:
            samples = asyncio.run(
                drivers.hop_samples(
                    send.endpoint, receive.endpoint, sender, recipient, body, self.w.hop_samples
                )
            )
        except ProtocolError as e:
            raise BenchError(f"hops {label}: {e}") from None
        send_log = send.journal(send.to_host_clock(since))
        receive_log = send_log if receive is send else receive.journal(receive.to_host_clock(since))
        files = sorted(receive.deliveries([recipient.addr], receive.to_host_clock(since)).values())
        cross = receive is not send
        per_sample = hops.milestones(
            [
                hops.Sample(
                    send.to_host_clock(x.started),
                    send.to_host_clock(x.end_of_data),
                    None if x.submitted is None else send.to_host_clock(x.submitted),
                    None if x.told is None else send.to_host_clock(x.told),
                )
                for x in samples
            ],
            send_log,
            receive_log,
            files,
            cross,
        )
        result = hops.summary(per_sample)
        self.say(
            f"  hops {label} (ms after the end of DATA, median of {len(samples)}): "
            + ", ".join(f"{k} {fmt(v['p50_ms'], 0)}" for k, v in result.items())
        )
        return {"milestones": result, "samples": per_sample}

    def idle_phase(self, relay: BenchHost, accounts: list[Account]) -> list[dict[str, Any]]:
        if not self.w.idle:
            return []
        slots = [a for _ in range(self.w.idle_per_account) for a in accounts]
        return asyncio.run(self._idle_steps(relay, slots))

    async def _idle_steps(self, relay: BenchHost, slots: list[Account]) -> list[dict[str, Any]]:
        results = []
        clients: list[IMAPClient] = []
        errors = drivers.Errors()
        loop = asyncio.get_running_loop()
        before = await loop.run_in_executor(None, relay.memory_sample)
        try:
            for step in sorted(self.w.idle):
                want = step - len(clients)
                if want <= 0:
                    continue
                self.say(f"  opening IDLE connections up to {step} on {relay.label}")
                deadline = time.monotonic() + self.w.duration
                opened, errs = await drivers.open_idle(
                    relay.endpoint, slots[len(clients) : step], 50, deadline
                )
                clients += [client for _, client in opened]
                for kind, n in errs.counts.items():
                    errors.counts[kind] = errors.counts.get(kind, 0) + n
                    errors.examples.setdefault(kind, errs.examples[kind])
                # let Dovecot move idle sessions into imap-hibernate before measuring
                await asyncio.sleep(self.w.idle_settle)
                after = await loop.run_in_executor(None, relay.memory_sample)
                n = len(clients)
                figures = profile.idle_memory(before, after, n)
                results.append(
                    {"connections": n, "requested": step, **figures, "errors": errors.as_dict()}
                )
                self.say(
                    f"  {n} idle connections: {fmt(figures['kb_per_connection'])} KB each "
                    f"(PSS of Dovecot's imap processes), processes {after['dovecot_processes']}"
                )
        finally:
            await drivers.close_all(clients)
        return results

    # --- the whole run -----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        fd_limit = raise_fd_limit()
        self.doc["machine"]["fd_limit"] = fd_limit
        bare_host: BareHost | None = None
        try:
            relay1, relay2 = self.discover()
            f1 = self.factory(relay1)
            self.preflight(relay1, f1)
            bare = None
            if self.w.bare:
                bare_host = BareHost(self.say)
                bare = bare_host.start()
                bare.read_facts()
                self.doc["hosts"]["bare"] = {"domain": bare.domain, "ip": bare.ip, **bare.facts}
            self.measure(relay1, relay2, f1, bare, bare_host)
        finally:
            with sigint_ignored():
                self.say("cleaning up")
                self.doc["cleanup"] = self.registry.remove_all(self.say)
                if bare_host is not None and not self.w.keep_bare:
                    bare_host.stop()
                    self.say("stopped the bare baseline host")
        self.doc["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        return self.doc

    # --- the fault run (issue 13) ------------------------------------------------------------

    def fault_run(self, names: list[str], per_fault: int) -> dict[str, Any]:
        """Each fault in turn during its own load; see `faults` for what is counted."""
        raise_fd_limit()
        phases: list[dict[str, Any]] = []
        self.doc["faults"] = {"per_fault": per_fault, "phases": phases}
        try:
            relay1, relay2 = self.discover()
            if relay2 is None:
                raise BenchError("the fault run needs two lab relays: `cmdeploy lab up`")
            f1, f2 = self.factory(relay1), self.factory(relay2)
            self.preflight(relay1, f1)
            senders1, recipients1 = f1.make(FAULT_SENDERS), f1.make(FAULT_RECIPIENTS)
            senders2, recipients2 = f2.make(FAULT_SENDERS // 2), f2.make(FAULT_RECIPIENTS)
            self.say("creating the fault run's accounts")
            for host, accounts in (
                (relay1, senders1 + recipients1),
                (relay2, senders2 + recipients2),
            ):
                self.prepare_accounts(host, accounts)
            c1, c2 = relay1.chatmail_config(), relay2.chatmail_config()
            pool1 = SenderPool(senders1, c1.max_user_send_per_minute, c1.max_user_send_burst_size)
            pool2 = SenderPool(senders2, c2.max_user_send_per_minute, c2.max_user_send_burst_size)
            body = MessageBody.of_size(self.w.small_size)
            all_letters: list[dict[str, list[faults.Letter]]] = []
            for name in names:
                fault = faults.fault_named(name)
                self.say(f"fault {fault.name}: {per_fault} messages, relay1 hit mid-load")
                letters = self.fault_letters(fault, per_fault, recipients1, recipients2)
                all_letters.append(letters)
                users = FaultUsers(recipients1[0], f1.make(1 + 2))
                self.registry.add(relay1, users.newcomers)
                phase = self.fault_phase(fault, relay1, relay2, pool1, pool2, body, letters, users)
                phase["accounts"] = relay1.accounts_intact([a.addr for a in senders1 + recipients1])
                phases.append(phase)
                v = phase["verdict"]
                self.say(
                    f"  accepted {v['accepted']}, delivered {v['delivered']} by the phase's end,"
                    f" duplicated {v['duplicated']}, resent {v['resent']}"
                )
            # What a phase's end did not see may still be in a queue, waiting for its next
            # retry (the waits double after each failure): the verdict is taken once both
            # relays' queues are empty, or the sweep's deadline passed.
            self.say("waiting for the relays' queues to empty, then counting again")
            self.doc["faults"]["queues_empty_after_s"] = self.wait_for_empty_queues(
                (relay1, relay2)
            )
            for phase, letters in zip(phases, all_letters, strict=True):
                everything = [x for stream in letters.values() for x in stream]
                phase["verdict"] = faults.verdict(
                    everything,
                    self.count_letters(relay1, relay2, letters),
                    phase["fault"],
                    phase["hand_overs"],
                )
        finally:
            with sigint_ignored():
                self.say("cleaning up")
                self.doc["cleanup"] = self.registry.remove_all(self.say)
        self.doc["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        return self.doc

    def fault_letters(
        self, fault: faults.Fault, n: int, recipients1: list[Account], recipients2: list[Account]
    ) -> dict[str, list[faults.Letter]]:
        streams = {
            "relay1>relay1": recipients1,
            "relay1>relay2": recipients2,
            "relay2>relay1": recipients1,
        }
        letters: dict[str, list[faults.Letter]] = {}
        for k, (stream, rcpts) in enumerate(streams.items()):
            count = n // len(streams) + (1 if k < n % len(streams) else 0)
            letters[stream] = [
                faults.Letter(
                    f"{self.run_id}.{fault.name}.{k}.{i}@bench", rcpts[i % len(rcpts)].addr, stream
                )
                for i in range(count)
            ]
        return letters

    def fault_phase(
        self,
        fault: faults.Fault,
        relay1: BenchHost,
        relay2: BenchHost,
        pool1: SenderPool,
        pool2: SenderPool,
        body: MessageBody,
        letters: dict[str, list[faults.Letter]],
        users: FaultUsers,
    ) -> dict[str, Any]:
        everything = [letter for stream in letters.values() for letter in stream]
        hit: dict[str, Any] = {}

        async def strike() -> None:
            # once a third of the phase is accepted: the relay is busy with all three streams
            while sum(letter.accepted for letter in everything) < len(everything) // 3:
                await asyncio.sleep(0.05)
            hit["at_accepted"] = sum(letter.accepted for letter in everything)
            started = time.monotonic()
            try:
                if fault.command == faults.REBOOT:
                    seconds, power_cut = await asyncio.to_thread(relay1.reboot)
                    hit["reboot_seconds"], hit["power_cut"] = round(seconds, 1), power_cut
                    if power_cut:
                        self.say(
                            "  its shutdown hung after the services stopped: the lab cut the power"
                        )
                elif fault.command == faults.DISK_FULL:
                    hit.update(await self.fill_disk(relay1, users))
                else:
                    await asyncio.to_thread(relay1.ssh, fault.command)
            except BenchError as e:
                hit["error"] = str(e)
                self.say(f"  the fault could not be made: {e}")
            hit["seconds"] = round(time.monotonic() - started, 1)

        async def load() -> list[drivers.Errors]:
            deadline = time.monotonic() + FAULT_PHASE_DEADLINE
            striking = asyncio.create_task(strike())
            try:
                return list(
                    await asyncio.gather(
                        drivers.resend_until_accepted(
                            relay1.endpoint,
                            pool1,
                            letters["relay1>relay1"] + letters["relay1>relay2"],
                            body,
                            FAULT_CONCURRENCY,
                            deadline,
                        ),
                        drivers.resend_until_accepted(
                            relay2.endpoint, pool2, letters["relay2>relay1"], body, 4, deadline
                        ),
                    )
                )
            finally:
                # The strike ends by itself once a third is accepted; if the load gave up
                # before that, the fault never happened and the phase says so. A strike
                # under way is waited for: a full disk is held beyond the load's end.
                if not striking.done() and "at_accepted" not in hit:
                    striking.cancel()
                await asyncio.gather(striking, return_exceptions=True)

        restarts_before = self.restarts(relay1, fault)
        started, started_wall = time.monotonic(), time.time()
        try:
            if fault.command == faults.DISK_FULL:
                # room for the phase's mail and above doveauth's free-space gate, so that the
                # control creation before the fill can succeed
                margin = relay1.chatmail_config().min_free_disk_space + DISK_MARGIN
                hit["disk"] = relay1.helper("disk_small", relay1.mailboxes, str(margin))
            errors = asyncio.run(load())
            load_seconds = time.monotonic() - started
            copies = self.wait_for_letters(relay1, relay2, letters)
        finally:
            if fault.command == faults.DISK_FULL:
                # never leave the ballast or the tmpfs behind, even after a setup that failed
                # half-way: later phases (a reboot would empty a tmpfs) and the relay's users
                # need the real disk
                with sigint_ignored():
                    try:
                        relay1.helper("disk_free")
                    finally:
                        hit["restored"] = relay1.helper("disk_restore", relay1.mailboxes)
        # each relay's journal of the phase: what it may have handed over twice
        hand_overs = {
            h.label: h.helper("hand_overs", f"{h.to_host_clock(started_wall):.6f}")
            for h in (relay1, relay2)
        }
        at_end = faults.verdict(everything, copies, fault.name, hand_overs)
        if fault.unit is not None:
            # systemd counts the restarts a death caused: the proof that the kill happened
            hit["restarts"] = self.restarts(relay1, fault) - restarts_before
        return {
            "fault": fault.name,
            "command": fault.command,
            "hit": hit,
            "load_seconds": round(load_seconds, 1),
            "delivery_wait_seconds": round(time.monotonic() - started - load_seconds, 1),
            "connect_errors": [e.as_dict() for e in errors],
            "hand_overs": hand_overs,
            # at the phase's end; the run replaces it after the queues emptied (`fault_run`)
            "verdict": at_end,
            "at_phase_end": at_end,
            "queues": {h.label: h.helper("queue") for h in (relay1, relay2)},
        }

    async def fill_disk(self, relay: BenchHost, users: FaultUsers) -> dict[str, Any]:
        """Fill the mailboxes' tmpfs and hold it full while the load goes on; probe what
        users see at the start and the end of the hold, then free it (`faults.DISK_FULL`)."""
        control, *probes = users.newcomers
        found: dict[str, Any] = {"before": await self.first_login(relay, control)}
        found["filled"] = await asyncio.to_thread(relay.helper, "disk_fill")
        found["while_full"] = []
        for i, newcomer in enumerate(probes):
            if i:
                await asyncio.sleep(faults.DISK_FULL_HOLD)  # the fault is a duration
            # what Dovecot removed since (temporary files) would be room again
            filled = await asyncio.to_thread(relay.helper, "disk_fill")
            found["while_full"].append(
                {
                    "free": filled["free"],
                    "existing": await drivers.open_and_read(relay.endpoint, users.reader),
                    **await self.first_login(relay, newcomer),
                    # mail Postfix holds for a retry instead of bouncing it
                    "queued": (await asyncio.to_thread(relay.helper, "queue"))["messages"],
                }
            )
        found["freed"] = await asyncio.to_thread(relay.helper, "disk_free")
        return found

    @staticmethod
    async def first_login(relay: BenchHost, account: Account) -> dict[str, Any]:
        """A new account's first login: created, or the relay's answer (no address in it)."""
        result = await drivers.login_all(relay.endpoint, [account], 1, time.monotonic() + 60)
        return {"created": result.ok == 1, "reply": result.errors.first()}

    @staticmethod
    def restarts(relay: BenchHost, fault: faults.Fault) -> int:
        if fault.unit is None:
            return 0
        out = relay.ssh(f"systemctl show -p NRestarts --value {fault.unit}")
        return sum(int(line) for line in out.split() if line.isdigit())

    @staticmethod
    def count_letters(
        relay1: BenchHost, relay2: BenchHost, letters: dict[str, list[faults.Letter]]
    ) -> dict[str, int]:
        on1 = sorted({x.rcpt for s in ("relay1>relay1", "relay2>relay1") for x in letters[s]})
        on2 = sorted({x.rcpt for x in letters["relay1>relay2"]})
        return {**relay1.message_ids(on1), **relay2.message_ids(on2)}

    def wait_for_empty_queues(self, hosts: tuple[BenchHost, ...]) -> float | None:
        """Seconds until no relay holds mail; None if some is still queued at the deadline."""
        started = time.monotonic()
        while time.monotonic() - started < FAULT_SWEEP_DEADLINE:
            if not any(sum(h.helper("queue")["messages"].values()) for h in hosts):
                return round(time.monotonic() - started, 1)
            time.sleep(5.0)
        return None

    def wait_for_letters(
        self, relay1: BenchHost, relay2: BenchHost, letters: dict[str, list[faults.Letter]]
    ) -> dict[str, int]:
        """Read the recipients' maildirs until every accepted letter is there, or nothing new
        came for `FAULT_QUIET` seconds (which is longer than Postfix's retry of deferred mail)."""
        wanted = {x.msgid for stream in letters.values() for x in stream if x.accepted}
        last, last_change = -1, time.monotonic()
        while True:
            copies = self.count_letters(relay1, relay2, letters)
            found = sum(1 for msgid in wanted if copies.get(msgid))
            if found >= len(wanted):
                return copies
            if found != last:
                last, last_change = found, time.monotonic()
            elif time.monotonic() - last_change > FAULT_QUIET:
                return copies
            time.sleep(2.0)

    def measure(
        self,
        relay1: BenchHost,
        relay2: BenchHost | None,
        f1: AccountFactory,
        bare: BenchHost | None,
        bare_host: BareHost | None,
    ) -> None:
        w = self.w
        config = relay1.chatmail_config()
        accounts = f1.make(w.accounts)
        self.doc["accounts"] = self.accounts_phase(relay1, accounts)
        # Every other account now, while the machine is calm: doveauth refuses creation above
        # its load limit, and the throughput phases push this 2-core machine's load past it.
        n_idle = max(1, min(64, len(accounts) // 3))
        needed = math.ceil(max(w.idle, default=0) / w.idle_per_account)
        idle_accounts = accounts[:needed] + f1.make(max(0, needed - len(accounts)))
        remote = self.factory(relay2).make(n_idle + 8) if relay2 is not None else []
        self.say("creating the accounts of the latency and idle phases")
        prepared = [self.prepare_accounts(relay1, idle_accounts[len(accounts) :])]
        if relay2 is not None:
            prepared.append(self.prepare_accounts(relay2, remote))
        self.doc["accounts"]["prepared"] = prepared

        pool = SenderPool(
            accounts, config.max_user_send_per_minute, config.max_user_send_burst_size
        )
        targets = [(relay1, pool, accounts)]
        bare_accounts: list[Account] = []
        bare_pool: SenderPool | None = None
        if bare is not None and bare_host is not None:
            bare_accounts, bare_logins = self.bare_accounts(bare, bare_host.password, len(accounts))
            self.doc["bare"] = {"logins_per_s": bare_logins}
            # no rate limit on the bare stack
            bare_pool = SenderPool(bare_accounts, 0, 10)
            targets.append((bare, bare_pool, bare_accounts))
        if len(targets) > 1:
            self.say("throughput through the full chatmail path and the bare one, in turn")
        else:
            self.say("throughput through the full chatmail path")
        throughputs = self.throughput_phase(targets)
        self.doc["throughput"] = throughputs[0]
        if len(throughputs) > 1:
            self.doc["bare"]["throughput"] = throughputs[1]

        best = self.doc["throughput"]["best"].get(size_key(w.small_size)) or {}
        max_rate = best.get("delivered_per_s") or 1.0
        rate = max(0.5, w.latency_fraction * max_rate)
        workers = best.get("concurrency") or max(w.concurrency)
        self.doc["latency"] = {
            "fraction_of_max": w.latency_fraction,
            "max_per_s": max_rate,
            "definition": "end of SMTP DATA (final dot written) -> IMAP IDLE sees EXISTS",
        }
        self.say("latency")
        self.doc["latency"]["same_relay"] = self.latency_run(
            "same relay", relay1, relay1, pool, accounts[:n_idle], accounts[n_idle:], rate, workers
        )
        if relay2 is not None:
            # Across relays a message costs both relays' work, which in the lab share the same
            # cores: its latency is offered at the same fraction of its own path's throughput.
            # This run also gives each recipient its first mail, whose delivery creates the
            # mailbox's index and quota files (the same-relay recipients had the throughput
            # runs' mail).
            self.say("throughput across relays")
            cross = self.throughput_run(
                relay1,
                pool,
                remote[:n_idle],
                MessageBody.of_size(w.small_size),
                w.messages,
                workers,
                receive=relay2,
            )
            self.doc["throughput"]["cross_relay"] = cross
            cross_rate = max(0.5, w.latency_fraction * (cross["delivered_per_s"] or 1.0))
            self.doc["latency"]["cross_relay"] = self.latency_run(
                f"{relay1.label} -> {relay2.label}",
                relay1,
                relay2,
                pool,
                remote[:n_idle],
                remote[n_idle:],
                cross_rate,
                workers,
            )
            config2 = relay2.chatmail_config()
            pool2 = SenderPool(
                remote, config2.max_user_send_per_minute, config2.max_user_send_burst_size
            )
            self.doc["latency"]["cross_relay_back"] = self.latency_run(
                f"{relay2.label} -> {relay1.label}",
                relay2,
                relay1,
                pool2,
                accounts[:n_idle],
                accounts[n_idle:],
                cross_rate,
                workers,
            )
        if w.hop_samples:
            self.say("where the time goes")
            self.doc["hops"] = {
                "same_relay": self.hops_run("same relay", relay1, relay1, accounts[-1], accounts[0])
            }
            if relay2 is not None:
                self.doc["hops"]["cross_relay"] = self.hops_run(
                    f"{relay1.label} -> {relay2.label}", relay1, relay2, accounts[-2], remote[0]
                )

        if bare is not None and bare_pool is not None:
            self.say("the bare baseline's latency")
            n_bare = max(1, min(64, len(bare_accounts) // 3))
            self.doc["bare"]["latency"] = self.latency_run(
                "bare",
                bare,
                bare,
                bare_pool,
                bare_accounts[:n_bare],
                bare_accounts[n_bare:] or bare_accounts,
                rate,
                workers,
            )

        self.say("idle IMAP connections")
        self.doc["idle"] = self.idle_phase(relay1, idle_accounts)

    def bare_accounts(
        self, bare: BenchHost, password: str, n: int
    ) -> tuple[list[Account], float | None]:
        """The bare host's accounts (one static password), and its logins per second."""
        factory = AccountFactory(self.run_id, bare.domain, 9, len(password))
        accounts = factory.make(n, password=password)
        self.registry.add(bare, accounts)
        self.say("the bare baseline: logins")
        deadline = time.monotonic() + self.w.duration
        logins = asyncio.run(
            drivers.login_all(bare.endpoint, accounts, self.w.login_concurrency, deadline)
        )
        if logins.ok == 0:
            raise BenchError(f"cannot log in to the bare baseline host: {logins.errors.first()}")
        return accounts, stats.rate(logins.ok, logins.seconds)


def rotated(items: range, by: int) -> list[int]:
    """`items` starting at position `by` (modulo their number), wrapping around."""
    k = by % len(items) if len(items) else 0
    return [*items[k:], *items[:k]]


def size_key(size: int) -> str:
    return f"{round(size / 1024)}k"


def best_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    measured = [r for r in runs if r.get("delivered_per_s")]
    return max(measured, key=lambda r: r["delivered_per_s"]) if measured else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"
