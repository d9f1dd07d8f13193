"""Offline checks of `cmdeploy bench` (issue 7): its arithmetic and the mail it generates.

No timing assertions: the figures are for people; these pin down how they are computed, and
that every generated message would pass the relay's outgoing encryption gate.
"""

from __future__ import annotations

import statistics

import pytest

from chatmaild.mailcheck import check_outgoing
from chatmaild.mailshape import is_encrypted, parse_message
from chatmaild.smtpreject import Reject
from cmdeploy.bench import profile, stats, workload


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
