"""The relay's `/metrics` (doc/metrics.md): the exposition format, counters that move with
what a client does, and the lab's Prometheus scraping them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable

import pytest
from chatmail_online import (
    ENCRYPTION_NEEDED,
    Factory,
    Relay,
    cleartext_message,
    encrypted_message,
    message_id,
    transact,
)

from cmdeploy.online import ONLINE_ENV

COUNTS_TIMEOUT = 60.0  # services write their counts every 5 s; the lab scrapes every 5 s
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)\Z")


def fetch(relay: Relay) -> tuple[int, str, str]:
    url = f"https://{relay.domain}/metrics"
    with urllib.request.urlopen(  # noqa: S310 -- https URL built here
        url, context=relay.tls_context(), timeout=20
    ) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, for every sample line."""
    found = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            found[match.group(1)] = float(match.group(2))
    return found


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + COUNTS_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {COUNTS_TIMEOUT:.0f} s: {what}")
        time.sleep(1)


def test_the_exposition_is_valid_and_every_reading_works(relay1: Relay) -> None:
    status, content_type, text = fetch(relay1)
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    values = samples(text)
    for source in ("snapshots", "accounts", "postfix_queue", "imap", "certificate"):
        assert values.get(f'chatmail_metrics_source_ok{{source="{source}"}}') == 1, source
    days_left = (values["chatmail_tls_certificate_expiry_timestamp_seconds"] - time.time()) / 86400
    assert days_left > 1
    # counts only: no address, of the suite's accounts or any other
    assert "@" not in text
    if shutil.which("promtool"):
        done = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


CREATED = "chatmail_accounts_created_total"
LOGINS = "chatmail_logins_total"
ACCEPTED = 'chatmail_gate_accepted_total{direction="outgoing",kind="encrypted"}'
REFUSED = 'chatmail_gate_refused_total{direction="outgoing",code="523",reason="cleartext"}'


def test_counters_move_with_accounts_mail_and_refusals(
    relay1: Relay, make_account: Factory
) -> None:
    before = samples(fetch(relay1)[2])
    creds = make_account(relay1)  # created by its first login
    with creds.smtp() as conn:
        cleartext = cleartext_message(creds.addr, creds.addr, message_id(relay1))
        outcome = transact(conn, creds.addr, [creds.addr], cleartext)
        assert f"{outcome.code} {outcome.text}" == ENCRYPTION_NEEDED
        encrypted = encrypted_message(creds.addr, creds.addr, message_id(relay1))
        assert transact(conn, creds.addr, [creds.addr], encrypted).code == 250

    def moved() -> bool:
        now = samples(fetch(relay1)[2])
        return all(
            now.get(k, 0) >= before.get(k, 0) + 1 for k in (CREATED, LOGINS, ACCEPTED, REFUSED)
        )

    wait_for(moved, f"{CREATED}, {LOGINS}, {ACCEPTED} and {REFUSED} each up by one")


def prometheus() -> str:
    url = json.loads(os.environ[ONLINE_ENV]).get("prometheus")
    if not url:
        pytest.skip("no Prometheus beside these relays (the lab runs one)")
    return str(url)


def query(url: str, expression: str) -> list[dict[str, object]]:
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
    with urllib.request.urlopen(address, timeout=10) as response:  # noqa: S310 -- the lab's
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def scalar(url: str, expression: str) -> float | None:
    result = query(url, expression)
    return float(result[0]["value"][1]) if result else None  # type: ignore[index]


def test_the_labs_prometheus_scrapes_the_relay_and_sees_creations(
    relay1: Relay, make_account: Factory
) -> None:
    url = prometheus()
    wait_for(lambda: scalar(url, 'up{job="relay"}') == 1, "Prometheus scraped the relay")
    before = scalar(url, f"sum({CREATED})") or 0.0
    make_account(relay1)
    wait_for(
        lambda: (scalar(url, f"sum({CREATED})") or 0.0) >= before + 1,
        "Prometheus saw the account creation",
    )
    assert scalar(url, 'chatmail_metrics_source_ok{source="postfix_queue"}') == 1
