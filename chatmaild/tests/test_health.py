"""The health checks' judgement (chatmaild.health): parsing, grouping, scrubbing, thresholds."""

from __future__ import annotations

import json
import re
from typing import Any

import dns.rdata
import dns.rdataclass
import pytest

from chatmaild import health
from chatmaild.health import (
    REASON_MAX,
    DiskUse,
    LookupFailed,
    check_certificate,
    check_disk,
    check_dns,
    check_expiry,
    check_listeners,
    check_push,
    check_queue,
    check_units,
    group_queue,
    scrub_reason,
)

NOW = 1_800_000_000.0
DAY = 86400.0


# --- delay reasons: one hostile case per rule -------------------------------------------------


def test_bracketed_peer_ips_are_removed() -> None:
    reason = "host mx.peer.example[192.0.2.5] said: 451 4.7.1 try later (in reply to RCPT TO)"
    assert scrub_reason(reason) == (
        "host mx.peer.example said: 451 4.7.1 try later (in reply to RCPT TO)"
    )


def test_an_unclosed_bracket_takes_the_rest_along() -> None:
    assert scrub_reason("host mx[2001:db8::5 said hello") == "host mx"


def test_bare_ipv4_addresses_are_removed() -> None:
    scrubbed = scrub_reason("connect to 192.0.2.5:25: Connection refused")
    assert "192.0.2.5" not in scrubbed and scrubbed == "connect to <ip>:25: Connection refused"
    # version numbers and status codes stay
    assert scrub_reason("451 4.7.1 greylisted") == "451 4.7.1 greylisted"


@pytest.mark.parametrize("ip", ["2001:db8::5", "::1", "::ffff:192.0.2.1", "FE80::A:B:c:D"])
def test_bare_ipv6_addresses_are_removed(ip: str) -> None:
    scrubbed = scrub_reason(f"connect to {ip} port 25: Network is unreachable")
    assert scrubbed == "connect to <ip> port 25: Network is unreachable", scrubbed


@pytest.mark.parametrize(
    "address",
    [
        "<alice@example.org>",
        "alice@example.org",
        '"john smith"@example.org',
        '<"odd \\" quote"@example.org>',
        "bob@[192.0.2.1]",
        "user+tag%relay@peer.example:",
    ],
)
def test_addresses_are_removed(address: str) -> None:
    scrubbed = scrub_reason(f"said: 452 4.2.2 {address} mailbox full")
    assert "@" not in scrubbed and "john" not in scrubbed and "alice" not in scrubbed
    assert "odd" not in scrubbed and "tag" not in scrubbed
    assert scrubbed.startswith("said: 452 4.2.2 <address>") and scrubbed.endswith("mailbox full")


@pytest.mark.parametrize("where", [0, REASON_MAX - 10, REASON_MAX - 1, 5000])
def test_a_long_reason_is_cut_after_scrubbing(where: int) -> None:
    """An address at the cut must not leave its first half in the report."""
    reason = "x" * where + " alice-secret-part@example.org " + "y" * 10000
    scrubbed = scrub_reason(reason)
    assert len(scrubbed) <= REASON_MAX
    assert "alice" not in scrubbed and "secret" not in scrubbed and "@" not in scrubbed


# --- the deferred queue -----------------------------------------------------------------------


def message(queue: str, arrival: float, *recipients: tuple[str, str]) -> str:
    return json.dumps(
        {
            "queue_name": queue,
            "queue_id": "4F9D1A2B3C",
            "arrival_time": int(arrival),
            "message_size": 1234,
            "sender": "sender@relay.example",
            "recipients": [{"address": a, "delay_reason": r} for a, r in recipients],
        }
    )


TLS_FAILED = "TLS handshake failed"
REFUSED = "host mx.peer.example[192.0.2.5] said: 451 4.3.0 try again (in reply to DATA)"


def test_deferred_mail_is_grouped_by_domain_and_scrubbed_reason() -> None:
    output = "\n".join(
        [
            message("deferred", NOW - 7200, ("a@peer.example", TLS_FAILED)),
            message("deferred", NOW - 60, ("b@Peer.Example", TLS_FAILED)),
            # two recipients of one message in one group: the message counts once
            message(
                "deferred", NOW - 30, ("c@peer.example", TLS_FAILED), ("d@peer.example", TLS_FAILED)
            ),
            message(
                "deferred", NOW - 300, ("e@other.example", REFUSED), ("f@peer.example", TLS_FAILED)
            ),
            message("active", NOW, ("g@peer.example", "")),
            "",
        ]
    )
    counts, groups = group_queue(output)
    assert counts == {"deferred": 4, "active": 1}
    assert [(g.domain, g.reason, g.messages, g.oldest) for g in groups] == [
        ("peer.example", TLS_FAILED, 4, NOW - 7200),
        (
            "other.example",
            "host mx.peer.example said: 451 4.3.0 try again (in reply to DATA)",
            1,
            NOW - 300,
        ),
    ]
    section = check_queue(output, NOW)
    assert section.problems == []  # other relays' outages do not fail this one
    assert section.warnings[0] == "peer.example: TLS handshake failed, 4 messages, oldest 2 h"
    assert section.data["deferred"][0]["oldest_seconds"] == 7200
    assert "@" not in json.dumps(section.data) + "".join(section.warnings)
    assert "192.0.2.5" not in json.dumps(section.data)


def test_an_unreadable_queue_is_a_problem() -> None:
    assert check_queue(None, NOW).problems == ["`postqueue -j` failed: is Postfix running?"]
    garbled = check_queue('{"queue_name": "deferred"}\nnot json\n', NOW)
    assert garbled.problems and "unreadable" in garbled.problems[0]
    assert check_queue("", NOW).data == {"messages": {}, "deferred": []}


# --- units, listeners, certificate ------------------------------------------------------------


def test_units_not_active_are_problems() -> None:
    section = check_units(["postfix", "dovecot", "nginx"], "active\nfailed\n")
    assert section.problems == ["dovecot is failed", "nginx is unknown"]
    assert section.data["active"] == 1


SS = """\
LISTEN 0      100          0.0.0.0:25        0.0.0.0:*
LISTEN 0      511             [::]:443          [::]:*
LISTEN 0      4096               *:993             *:*
LISTEN 0      100    127.0.0.1:10025     0.0.0.0:*
"""


def test_listeners_missing_are_problems() -> None:
    assert health.listening_ports(SS) == {25, 443, 993, 10025}
    section = check_listeners([25, 443, 465, 993], SS)
    assert section.problems == ["nothing listens on port 465"]
    assert check_listeners([25], None).problems


@pytest.mark.parametrize(
    ("days", "problem"),
    [
        (60, None),
        (14.5, None),
        (13.9, "expires in 13 days (renewal failing?)"),
        (-2.5, "expired 2 days ago"),
    ],
)
def test_certificate_days_left(days: float, problem: str | None) -> None:
    section = check_certificate("/c.pem", NOW + days * DAY, NOW)
    assert section.problems == ([problem] if problem else [])


def test_unreadable_certificate_and_acme_placeholder_are_problems() -> None:
    assert check_certificate("/c.pem", None, NOW).problems == [
        "/c.pem cannot be read as a certificate"
    ]
    placeholder = check_certificate("/c.pem", NOW + 3650 * DAY, NOW, placeholder=True)
    assert "placeholder" in placeholder.problems[0]


# --- DNS --------------------------------------------------------------------------------------

RECORDS = [
    {"name": "chat.example.org.", "type": "A", "value": "192.0.2.10", "required": True},
    {"name": "chat.example.org.", "type": "MX", "value": "10 chat.example.org.", "required": True},
    {
        "name": "_dmarc.chat.example.org.",
        "type": "TXT",
        "value": '"v=DMARC1;p=reject"',
        "required": False,
    },
]


def rdata(rdtype: str, text: str) -> Any:
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)


def test_dns_required_wrong_is_a_problem_recommended_missing_a_warning() -> None:
    served = {
        ("chat.example.org.", "A"): [rdata("A", "192.0.2.99")],
        ("chat.example.org.", "MX"): [rdata("MX", "10 chat.example.org.")],
    }
    section = check_dns(RECORDS, lambda name, rdtype: served.get((name, rdtype), []))
    assert section.problems == ["required A chat.example.org. is wrong (has 192.0.2.99)"]
    assert section.warnings == ["recommended TXT _dmarc.chat.example.org. is missing"]
    assert section.data["checked"] == 3


def test_dns_all_in_place_and_no_records_for_an_ipv4_relay() -> None:
    served = {
        ("chat.example.org.", "A"): [rdata("A", "192.0.2.10")],
        ("chat.example.org.", "MX"): [rdata("MX", "10 CHAT.example.org.")],
        ("_dmarc.chat.example.org.", "TXT"): [rdata("TXT", '"v=DMARC1; p=reject;"')],
    }
    section = check_dns(RECORDS, lambda name, rdtype: served[(name, rdtype)])
    assert (section.problems, section.warnings) == ([], [])
    assert check_dns([], lambda n, t: []).problems == []


def test_a_failing_resolver_is_one_problem_and_no_expectations_a_warning() -> None:
    asked = []

    def failing(name: str, rdtype: str) -> list[Any]:
        asked.append(name)
        raise LookupFailed("no answer within 5 s")

    section = check_dns(RECORDS, failing)
    assert section.problems == ["the relay's resolver failed: no answer within 5 s"]
    assert len(asked) == 1
    assert check_dns(None, failing).warnings and not check_dns(None, failing).problems


# --- disk, expiry, push -----------------------------------------------------------------------


def disk(used_percent: int, inodes_percent: int) -> DiskUse:
    return DiskUse(
        1000, 1000 - used_percent * 10, 1000 - used_percent * 10, 100, 100 - inodes_percent
    )


def test_disk_thresholds() -> None:
    assert check_disk("/m", disk(50, 10)).problems == []
    assert check_disk("/m", disk(85, 10)).warnings == ["85 % of the disk space is used"]
    assert check_disk("/m", disk(50, 95)).problems == ["95 % of the disk inodes is used"]
    # a filesystem without an inode limit reports no inode use
    assert check_disk("/m", DiskUse(1000, 500, 500, 0, 0)).data["inodes_used_percent"] is None
    assert check_disk("/m", None).problems == ["/m cannot be examined"]


def test_disk_counts_root_reserved_blocks_as_unavailable() -> None:
    # 950 of 1000 blocks free, but only 50 of them for vmail: 50 used of 100 usable
    assert check_disk("/m", DiskUse(1000, 950, 50, 0, 0)).data["blocks_used_percent"] == 50


def timer(last: float | None, since: float | None) -> dict[str, str]:
    return {
        "LastTriggerUSec": f"@{int(last)}" if last else "",
        "ActiveEnterTimestamp": f"@{int(since)}" if since else "",
    }


def test_expiry_ran_recently_is_fine() -> None:
    section = check_expiry({"Result": "success"}, timer(NOW - DAY, NOW - 9 * DAY), NOW)
    assert section.problems == [] and section.data["last_run_seconds"] == DAY


def test_a_failed_expiry_run_is_a_problem() -> None:
    section = check_expiry({"Result": "exit-code"}, timer(NOW - DAY, NOW - 9 * DAY), NOW)
    assert section.problems == ["the last expiry run failed (exit-code)"]


def test_an_expiry_that_stopped_running_is_a_problem() -> None:
    section = check_expiry({"Result": "success"}, timer(NOW - 3 * DAY, NOW - 9 * DAY), NOW)
    assert section.problems == ["the expiry has not run for 3 d"]


def test_an_expiry_timer_that_never_fired_fails_only_on_an_older_relay() -> None:
    assert check_expiry({"Result": "success"}, timer(None, NOW - DAY), NOW).problems == []
    old = check_expiry({"Result": "success"}, timer(None, NOW - 3 * DAY), NOW)
    assert old.problems == ["the expiry timer has not fired in 3 d"]


def test_push_backlog_older_than_the_give_up_time_is_a_problem() -> None:
    from chatmaild import pushqueue

    assert health.PUSH_MAX_AGE > pushqueue.GIVE_UP_AFTER
    assert check_push(3, NOW - pushqueue.GIVE_UP_AFTER, NOW).problems == []
    stuck = check_push(3, NOW - 7 * 3600, NOW)
    assert stuck.problems == ["a push notification waits for 7 h: chatmail-metadata is stuck"]
    assert check_push(None, None, NOW).problems
    assert check_push(0, None, NOW).data == {"waiting": 0, "oldest_seconds": None}


# --- the report -------------------------------------------------------------------------------


def test_the_report_lists_problems_and_warnings_by_section() -> None:
    sections = {name: health.Section() for name in health.SECTIONS}
    sections["certificate"] = check_certificate("/c.pem", NOW + 5 * DAY, NOW)
    sections["queue"] = check_queue(
        message("deferred", NOW - 60, ("a@peer.example", TLS_FAILED)), NOW
    )
    report = health.assemble({"domain": "chat.example.org", "version": "abc"}, sections)
    assert report["ok"] is False
    assert report["problems"] == [
        {"section": "certificate", "text": "expires in 5 days (renewal failing?)"}
    ]
    assert report["warnings"][0]["section"] == "queue"
    text = health.render(report)
    assert text.startswith("chat.example.org   abc\n")
    assert "certificate: /c.pem, 5 days left" in text
    assert re.search(r"problems \(1\):\n  certificate: expires in 5 days", text)
    assert "queue: peer.example: TLS handshake failed, 1 message, oldest 1 min" in text
