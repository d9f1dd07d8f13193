"""Mail between relays takes HTTPS first (doc/transport.md): the path shows in relay1's
transport log; a peer without /mxdeliv gets SMTP; a peer that refuses for now keeps the
message in relay1's queue until it takes it, and so does a transport of relay1's that is
down."""

from __future__ import annotations

import time

import pytest
from chatmail_online import (
    DELIVERY_TIMEOUT,
    REPORT,
    Factory,
    Relay,
    send_encrypted,
    stopped,
    wait_for_message_id,
    wait_until_deferred,
)

pytestmark = pytest.mark.timeout(300)

VIA_HTTPS = "answered over HTTPS: 250"
VIA_SMTP = "handed to Postfix for SMTP: 250"


def transport_log(relay: Relay, since: str) -> str:
    return relay.ssh(f"journalctl -u filtermail-transport -o cat --since '{since}' --no-pager")


def relay_time(relay: Relay) -> str:
    return relay.ssh("date '+%Y-%m-%d %H:%M:%S'").strip()


def wait_for_log(relay: Relay, since: str, needle: str) -> str:
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while needle not in (log := transport_log(relay, since)):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {needle!r} in {relay.domain}'s transport log:\n{log}")
        time.sleep(0.2)
    return log


def test_mail_to_another_relay_goes_over_https(
    relay1: Relay, relay2: Relay, make_account: Factory
) -> None:
    sender, recipient = make_account(relay1), make_account(relay2)
    since = relay_time(relay1)
    started = time.monotonic()
    wait_for_message_id(recipient, send_encrypted(sender, recipient))
    REPORT.append(f"relay1 -> relay2 over HTTPS: {time.monotonic() - started:.2f} s")
    log = wait_for_log(relay1, since, VIA_HTTPS)
    assert VIA_SMTP not in log


def test_a_peer_without_mxdeliv_gets_smtp(
    relay1: Relay, relay2: Relay, make_account: Factory
) -> None:
    """relay2's web server is down: no /mxdeliv there, but its port 25 takes the mail."""
    sender, recipient = make_account(relay1), make_account(relay2)
    with stopped(relay2, "nginx", then=relay1):
        since = relay_time(relay1)
        msgid = send_encrypted(sender, recipient)
        wait_for_log(relay1, since, VIA_SMTP)
    wait_for_message_id(recipient, msgid)


def test_a_peer_refusing_for_now_gets_the_message_later(
    relay1: Relay, relay2: Relay, make_account: Factory
) -> None:
    """relay2's incoming filter is down: /mxdeliv answers 502 and port 25 a 4xx; relay1 keeps
    the message queued, and delivers it once relay2 takes mail again."""
    sender, recipient = make_account(relay1), make_account(relay2)
    with stopped(relay2, "filtermail-incoming", then=relay1):
        msgid = send_encrypted(sender, recipient)
        wait_until_deferred(relay1)
    relay1.ssh("postqueue -f")  # instead of waiting for Postfix's next retry (minutes)
    wait_for_message_id(recipient, msgid)


def test_a_transport_that_is_down_loses_nothing(
    relay1: Relay, relay2: Relay, make_account: Factory
) -> None:
    """relay1's own transport is down: Postfix cannot hand the message over, keeps it queued,
    and delivers it once the transport is back."""
    sender, recipient = make_account(relay1), make_account(relay2)
    with stopped(relay1, "filtermail-transport", then=relay1):
        msgid = send_encrypted(sender, recipient)
        wait_until_deferred(relay1)
    relay1.ssh("postqueue -f")
    wait_for_message_id(recipient, msgid)
