"""Offline checks of `cmdeploy bench` (issue 7): its arithmetic and the mail it generates.

No timing assertions: the figures are for people; these pin down how they are computed, and
that every generated message would pass the relay's outgoing encryption gate.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest

from chatmaild.mailcheck import check_outgoing
from chatmaild.mailshape import is_encrypted, parse_message
from chatmaild.smtpreject import Reject
from cmdeploy.bench import drivers, hops, profile, protocol, remote_helper, stats, workload
from cmdeploy.bench.hosts import BenchHost
from cmdeploy.bench.runner import Bench, Workload


@pytest.mark.parametrize("size", [2048, 200 * 1024])
def test_generated_messages_pass_the_outgoing_gate(size: int) -> None:
    body = workload.MessageBody.of_size(size)
    data = workload.message(body, "bab1c0001@_relay1.test", "bab1c0002@_relay1.test", "1@b")
    check_outgoing("bab1c0001@_relay1.test", ["bab1c0002@_relay1.test"], data)
    assert is_encrypted(parse_message(data), outgoing=True)
    assert 0.9 * size <= len(data) <= 1.1 * size


def test_from_must_be_the_sender() -> None:
    body = workload.MessageBody.of_size(2048)
    data = workload.message(body, "someone@x.test", "b@x.test", "1@b")
    with pytest.raises(Reject, match="differs"):
        check_outgoing("other@x.test", ["b@x.test"], data)


def test_local_parts_fit_the_relay_rules() -> None:
    names = {workload.local_part("abc", i, 9) for i in range(2000)}
    assert len(names) == 2000
    for name in names:
        assert len(name) == 9 and name.startswith("babc")
        assert set(name) <= set(workload.LOCAL_ALPHABET)
    assert workload.local_part("abc", 35, 9) == "babc0000z"
    with pytest.raises(ValueError):
        workload.local_part("abc", 36**5, 9)
    with pytest.raises(ValueError):
        workload.local_part("abc", 0, 5)


def test_dot_stuffing() -> None:
    assert workload.dot_stuffed(b"a\r\n.b\r\n") == b"a\r\n..b\r\n.\r\n"
    assert workload.dot_stuffed(b".x") == b"..x\r\n.\r\n"


def test_percentile_matches_the_inclusive_quantiles() -> None:
    values = [0.31, 0.5, 0.52, 0.9, 1.7, 0.44, 0.61]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert stats.percentile(values, 50) == pytest.approx(statistics.median(values))
    assert stats.percentile(values, 95) == pytest.approx(cuts[94])
    assert stats.percentile(values, 99) == pytest.approx(cuts[98])
    assert stats.percentile([], 50) is None
    assert stats.percentile([2.0], 99) == 2.0
    with pytest.raises(ValueError):
        stats.percentile(values, 101)


def test_latency_summary_and_ratios() -> None:
    summary = stats.latency_summary([1.0, 2.0, 3.0, 4.0], lost=1)
    assert summary["p50"] == 2.5 and summary["lost"] == 1 and summary["count"] == 4
    assert stats.ratio(80.0, 100.0) == 0.8
    assert stats.ratio(None, 1.0) is None and stats.ratio(1.0, 0.0) is None
    assert stats.rate(10, 2.0) == 5.0 and stats.rate(10, 0.0) is None


def test_send_budget_mirrors_the_relay_gcra() -> None:
    from chatmaild.ratelimit import RateLimiter

    now = [1000.0]
    relay = RateLimiter(60, 10, clock=lambda: now[0])
    budget = stats.SendBudget(60, 10)
    for step in range(200):
        now[0] += 0.13 * (step % 7)
        allowed = budget.available(now[0])
        for _ in range(allowed):
            assert relay.check("a@x") is None
        budget.take(now[0], allowed)
        if allowed == 0:
            assert relay.check("a@x") is not None  # the relay refuses exactly then, too
            assert budget.ready_at(now[0]) > now[0]
    assert stats.SendBudget(0, 10).available(0.0) > 1000


def test_cpu_profile_by_class() -> None:
    before = {
        "clock": 0.0,
        "busy": 10.0,
        "units": {"system-postfix.slice": 1.0, "filtermail.service": 2.0, "doveauth.service": 0},
        "processes": {},
    }
    after = {
        "clock": 10.0,
        "busy": 25.0,
        "units": {"system-postfix.slice": 4.0, "filtermail.service": 8.0, "doveauth.service": 1},
        "processes": {},
    }
    result = profile.cpu_by_class(before, after)
    assert result["source"] == "cgroup"
    assert result["cpu_seconds"]["filtermail"] == 6.0
    assert result["share"]["postfix"] == pytest.approx(0.3)
    assert result["machine_busy_cores"] == 1.5
    assert profile.top_class(result) == "filtermail"
    assert profile.process_class("filtermail") == "filtermail"
    assert profile.process_class("imap-hibernate") == "dovecot"
    assert profile.process_class("smtpd") == "postfix"
    assert profile.process_class("doveauth") == "dict services"
    assert profile.unit_class("opendkim.service") == "opendkim"


def test_hop_milestones_are_placed_in_their_sample() -> None:
    """Log lines between one sample's start and the next belong to it; times are ms after
    the end of DATA; a step not logged is None."""
    samples = [hops.Sample(10.0, 10.1, 10.15, 10.3), hops.Sample(20.0, 20.1, 20.2, None)]
    log = [
        (10.12, "filtermail.service", "filtermail: INFO: outgoing message passed the gate: 250"),
        (10.13, "postfix/qmgr", "4AB: from=<...>, size=100, nrcpt=1 (queue active)"),
        (10.2, "dovecot", "lmtp(...): Info: msgid=<...>: saved mail to INBOX"),
        (10.21, "postfix/lmtp", "4AB: to=<...>, status=sent (250 2.0.0 Saved)"),
        (20.13, "postfix/qmgr", "5CD: from=<...>, size=100, nrcpt=1 (queue active)"),
        (20.3, "postfix/lmtp", "5CD: to=<...>, status=sent (250 2.0.0 Saved)"),
    ]
    first, second = hops.milestones(samples, log, log, [10.19, 20.25], cross=False)
    assert first == {
        "submitted": 50.0,
        "gate passed": 20.0,
        "queued": 30.0,
        "file in the maildir": 90.0,
        "stored by Dovecot": 100.0,
        "delivered (Postfix)": 110.0,
        "told (EXISTS)": 200.0,
    }
    assert second["gate passed"] is None and second["told (EXISTS)"] is None
    assert second["queued"] == 30.0 and second["file in the maildir"] == 150.0
    summary = hops.summary([first, second])
    assert summary["queued"] == {"p50_ms": 30.0, "max_ms": 30.0, "seen": 2}
    assert summary["told (EXISTS)"]["seen"] == 1


# more than loopback's socket buffers hold, so the sender's transport really has to wait
BIG_ENOUGH_TO_FILL_THE_SOCKET = b"x" * 16_000_000


def test_end_of_data_is_known_before_the_client_yields() -> None:
    """The latency watcher runs whenever the sender awaits; it must find the end of DATA
    already recorded, even when the transport is slow to drain (the server here reads
    nothing until the watcher has looked)."""

    async def scenario() -> list[str]:
        events: list[str] = []
        looked = asyncio.Event()

        async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
            await looked.wait()
            received = b""
            while not received.endswith(b"\r\n.\r\n"):
                received += await reader.read(1 << 16)
            writer.write(b"250 queued\r\n")
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(server, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.set_write_buffer_limits(high=1)  # drain waits for the peer to read
        client = protocol.SMTPClient(reader, writer)

        async def watcher() -> None:
            await asyncio.sleep(0)
            while not events:
                await asyncio.sleep(0)
            events.append("watcher looked")
            looked.set()

        watching = asyncio.create_task(watcher())
        send = client.send(
            "a@x.test", "b@x.test", BIG_ENOUGH_TO_FILL_THE_SOCKET, lambda _at: events.append("end")
        )
        try:  # with the end recorded only after drain(), sender and watcher wait on each other
            await asyncio.wait_for(send, 20)
        except TimeoutError:
            events.append("deadlock")
        watching.cancel()
        writer.transport.abort()  # whatever is still buffered is of no interest
        srv.close()
        await srv.wait_closed()
        return events

    assert asyncio.run(scenario())[:2] == ["end", "watcher looked"]


def test_idle_connections_stay_with_their_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections finish opening in any order; each must come back with the account it
    logged in as, or the latency run reads one recipient's notices on another's connection."""

    class SlowFirstIMAP:
        """Logs in slower for earlier accounts, so they finish last."""

        def __init__(self) -> None:
            self.user = ""

        @classmethod
        async def connect(cls, endpoint: protocol.Endpoint, ctx: object) -> SlowFirstIMAP:
            return cls()

        async def login(self, addr: str, password: str) -> None:
            await asyncio.sleep(0.001 * (40 - int(addr[1:3])))
            self.user = addr

        async def select_inbox(self) -> int:
            return 0

        async def idle(self) -> None:
            return None

    monkeypatch.setattr(drivers, "IMAPClient", SlowFirstIMAP)
    accounts = [drivers.Account(f"a{i:02d}@x.test", "pw") for i in range(40)]
    endpoint = protocol.Endpoint("127.0.0.1", "x.test")
    opened, errors = asyncio.run(drivers.open_idle(endpoint, accounts, 20, time.monotonic() + 60))
    assert not errors.counts
    assert sorted(account.addr for account, _ in opened) == [a.addr for a in accounts]
    assert all(client.user == account.addr for account, client in opened)


def test_a_cgroup_tree_shared_with_other_hosts_is_not_used(tmp_path: Path) -> None:
    """Lab hosts share one cgroup tree; a unit's usage there is every host's, so the helper
    must notice (other namespaces' processes read as pid 0) and count per process instead."""
    own = tmp_path / "postfix.service"
    own.mkdir()
    (own / "cgroup.procs").write_text("812\n813\n")
    assert not remote_helper._holds_others(str(tmp_path))
    (own / "cgroup.procs").write_text("812\n0\n813\n")
    assert remote_helper._holds_others(str(tmp_path))


def test_the_relay_and_the_bare_host_take_turns_at_each_throughput_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The machine's speed drifts within minutes: each step runs on both hosts, in an order
    that alternates, so neither host gets all of a slow stretch."""
    bench = Bench(Workload(concurrency=(4, 16, 32)), lambda text: None)
    relay1, bare = (
        BenchHost(label, f"{label}.test", "10.0.0.1", Path("/k")) for label in ("relay1", "bare")
    )
    order: list[tuple[str, int, int]] = []

    def fake_run(host, pool, recipients, body, count, c):  # type: ignore[no-untyped-def]
        order.append((host.label, body.size, c))
        return {"delivered_per_s": 100.0 + c if host is relay1 else 200.0, "concurrency": c}

    monkeypatch.setattr(bench, "throughput_run", fake_run)
    pool = drivers.SenderPool([], 0, 10)
    relay_result, bare_result = bench.throughput_phase([(relay1, pool, []), (bare, pool, [])])
    hosts = [label for label, _, _ in order]
    assert hosts == ["relay1", "bare", "bare", "relay1"] * 3
    # each host got every size at every concurrency, and its own best
    assert [c for label, _, c in order if label == "relay1"] == [4, 16, 32] * 2
    assert relay_result["best"]["2k"]["concurrency"] == 32
    assert bare_result["best"]["200k"]["delivered_per_s"] == 200.0
