"""Registration modes against a real Dovecot (doc/accounts.md): in invite mode only what /new
handed out is created; closed mode and the autorelay switch refuse first logins."""

from __future__ import annotations

import imaplib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chatmaild_testing import dovecot_or_skip
from dovecot_harness import Relay

from chatmaild import newemail, registration
from chatmaild.config import read_config
from chatmaild.registration import InviteStore

pytestmark = pytest.mark.dovecot


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    """A relay in invite mode by chatmail.ini, its state in a directory vmail can read."""
    dovecot_or_skip()
    from dovecot_harness import running_relay

    with tempfile.TemporaryDirectory(prefix="chatmail-registration-") as directory:
        Path(directory).chmod(0o755)
        InviteStore(Path(directory)).make_dirs()
        params = f"registration = invite\nregistration_dir = {directory}\n"
        with running_relay(extra_params=params) as r:
            yield r


@pytest.fixture
def store(relay: Relay) -> Iterator[InviteStore]:
    directory = read_config(relay.ini).registration_path
    yield InviteStore(directory)
    registration.clear_state(directory)


def logs_in(relay: Relay, addr: str, password: str) -> bool:
    conn = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)
    try:
        conn.login(addr, password)
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e)
        conn.shutdown()
        return False
    conn.logout()
    return True


def handed_out(relay: Relay, store: InviteStore) -> tuple[str, str]:
    """Credentials from /new for a fresh invite, as the app gets them."""
    config = read_config(relay.ini)
    token, _ = store.create(1, 3600, time.time())
    reg = newemail.Registration(registration.SettingsReader(config).current(), store, time.time())
    answer = newemail.respond("POST", config, token=token, reg=reg)
    assert answer.status == 200, answer.body
    data = json.loads(answer.body)
    return data["email"], data["password"]


def test_invite_mode_creates_what_new_handed_out_and_nothing_else(
    relay: Relay, store: InviteStore
) -> None:
    assert not logs_in(relay, "stranger1@example.org", "pass-word-1")
    assert not (relay.mailboxes / "stranger1@example.org").exists()
    email, password = handed_out(relay, store)
    assert logs_in(relay, email, password)
    assert logs_in(relay, email, password)  # the second login: an existing account
    assert (relay.mailboxes / email / "password").exists()


def test_closed_at_run_time_keeps_existing_accounts(relay: Relay, store: InviteStore) -> None:
    email, password = handed_out(relay, store)
    other, other_password = handed_out(relay, store)
    assert logs_in(relay, email, password)
    registration.write_state(store.dir, "closed", None)
    assert not logs_in(relay, other, other_password)  # handed out, but closed now
    assert logs_in(relay, email, password)
    registration.write_state(store.dir, "invite", None)
    assert logs_in(relay, other, other_password)


def test_the_autorelay_switch_refuses_23_character_passwords(
    relay: Relay, store: InviteStore
) -> None:
    registration.write_state(store.dir, "open", True)
    assert not logs_in(relay, "autorel01@example.org", "x" * 23)
    assert logs_in(relay, "autorel02@example.org", "x" * 24)
    registration.write_state(store.dir, None, False)
    assert logs_in(relay, "autorel01@example.org", "x" * 23)


def test_refusals_log_no_address(relay: Relay, store: InviteStore) -> None:
    logs_in(relay, "stranger2@example.org", "pass-word-1")
    log = relay.service_log("doveauth")
    assert "registration rejected: registration by invite" in log
    assert "stranger2" not in log
