"""The online suite: behaviours of deployed relays, seen from a client.

`cmdeploy test` runs this folder with `CHATMAIL_ONLINE` holding the target description, the
JSON that `cmdeploy lab status --json` prints:
`{"relays": [{"domain", "ip", "ssh", "config"}], "client_netns", "ca_cert", "push_fake",
"ssh_key", "push_tokens"}`. Without that variable every test here is skipped, so the normal
offline `pytest` run collects this folder and stays green.

Raw protocol is spoken with imaplib/smtplib where the protocol is the point; the chat tests
drive Delta Chat core (deltachat-rpc-client with a deltachat-rpc-server process).

Every account the suite creates is registered in `Registry` and its mailbox removed over SSH
at the end of the session; the privacy test checks the relays' journals for the registered
passwords, tokens and addresses.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.utils
import http.client
import imaplib
import json
import os
import re
import secrets
import shlex
import shutil
import smtplib
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.policy import compat32
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from chatmaild.config import Config, read_config
from cmdeploy.online import ONLINE_ENV

HERE = Path(__file__).parent
REPO = HERE.parents[2]
MAIL_CORPUS = REPO / "chatmaild" / "tests" / "data" / "mail"
REMOTE_INI = "/usr/local/lib/chatmaild/chatmail.ini"
EHLO_NAME = "online-test.test"
NET_TIMEOUT = 20.0  # seconds for one network operation (connect, command, TLS handshake)
DELIVERY_TIMEOUT = 60.0  # seconds for a message to arrive

# Lines for the terminal summary (facts worth reporting that are not assertions).
REPORT: list[str] = []

# The test modules import the helpers below as `chatmail_online`: several conftest.py files
# share the module name `conftest`, so `from conftest import ...` could find another one.
sys.modules["chatmail_online"] = sys.modules[__name__]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ONLINE_ENV):
        return
    skip = pytest.mark.skip(
        reason=f"{ONLINE_ENV} is not set: the online suite runs under "
        "`cmdeploy test` against deployed relays"
    )
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("online suite report")
        for line in REPORT:
            terminalreporter.write_line(line)


# --- the target ---------------------------------------------------------------------------


@dataclass
class Target:
    """What `CHATMAIL_ONLINE` describes."""

    relays: list[Relay]
    push_tokens: Path | None


class Relay:
    """A deployed relay: its domain, address, SSH access and deployed configuration."""

    def __init__(
        self, domain: str, ip: str, ssh: str, ssh_options: list[str], ca_cert: Path | None = None
    ) -> None:
        self.domain = domain
        self.ip = ip
        self.ssh_target = ssh
        self.ssh_options = ssh_options
        # the CA bundle of a private ACME CA (the lab's), or None for the public roots
        self.ca_cert = ca_cert

    def __repr__(self) -> str:
        return f"Relay({self.domain})"

    def ssh(self, command: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run `command` as root on the relay and return its stdout."""
        argv = ["ssh", *self.ssh_options, self.ssh_target, command]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"ssh {self.ssh_target} {command!r} exited {proc.returncode}: {proc.stderr}"
            )
        return proc.stdout

    @cached_property
    def config(self) -> Config:
        """The relay's deployed chatmail.ini, as chatmaild reads it."""
        text = self.ssh(f"cat {REMOTE_INI}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "chatmail.ini"
            path.write_text(text)
            return read_config(path)

    @property
    def address_domain(self) -> str:
        return self.config.address_domain

    def mailbox_dir(self, addr: str) -> str:
        return f"{self.config.mailboxes_path}/{addr}"

    def exists(self, path: str) -> bool:
        out = self.ssh(f"test -e {shlex.quote(path)} && echo yes || echo no")
        return out.strip() == "yes"

    def tls_context(self) -> ssl.SSLContext:
        """How the app connects: certificate checks off for self-signed relays; others are
        verified, against the target's own CA when it has one."""
        if self.config.tls_mode == "self":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=str(self.ca_cert) if self.ca_cert else None)

    @property
    def certificate_checks(self) -> str:
        # Delta Chat core trusts only its built-in public roots, never a private CA
        if self.config.tls_mode == "self" or self.ca_cert:
            return "acceptInvalidCertificates"
        return "automatic"


def _ssh_options(status: dict[str, Any]) -> list[str]:
    options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    key = status.get("ssh_key")
    if key:
        options += ["-i", str(key)]
        known_hosts = Path(key).parent / "known_hosts"
        if known_hosts.exists():
            options += ["-o", f"UserKnownHostsFile={known_hosts}"]
        options += ["-o", "StrictHostKeyChecking=accept-new"]
    return options


@pytest.fixture(scope="session")
def target() -> Target:
    raw = json.loads(os.environ[ONLINE_ENV])
    options = _ssh_options(raw)
    ca_cert = Path(raw["ca_cert"]) if raw.get("ca_cert") else None
    relays = [
        Relay(
            r["domain"],
            r.get("ip", r["domain"]),
            r.get("ssh", f"root@{r['domain']}"),
            options,
            ca_cert,
        )
        for r in raw["relays"]
    ]
    assert relays, f"{ONLINE_ENV} names no relay"
    tokens = raw.get("push_tokens")
    return Target(relays, Path(tokens) if tokens else None)


@pytest.fixture(scope="session")
def relays(target: Target) -> list[Relay]:
    return target.relays


@pytest.fixture(scope="session")
def relay1(relays: list[Relay]) -> Relay:
    return relays[0]


@pytest.fixture(scope="session")
def relay2(relays: list[Relay]) -> Relay:
    if len(relays) < 2:
        pytest.skip("needs a second relay")
    return relays[1]


# --- accounts -----------------------------------------------------------------------------


@dataclass
class Credentials:
    """An address and password on a relay, with the raw-protocol clients for it."""

    addr: str
    password: str
    relay: Relay

    @contextlib.contextmanager
    def imap(self) -> Iterator[imaplib.IMAP4_SSL]:
        conn = imap_connect(self.relay)
        try:
            conn.login(self.addr, self.password)
            yield conn
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                conn.logout()

    @contextlib.contextmanager
    def smtp(self) -> Iterator[smtplib.SMTP_SSL]:
        conn = smtps_connect(self.relay)
        try:
            conn.login(self.addr, self.password)
            yield conn
        finally:
            close_smtp(conn)


@dataclass
class Registry:
    """Everything secret or personal the suite used, for cleanup and the privacy check."""

    started: float = field(default_factory=time.time)
    accounts: dict[str, Credentials] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    passwords: set[str] = field(default_factory=set)

    def add(self, creds: Credentials) -> Credentials:
        self.accounts[creds.addr] = creds
        self.passwords.add(creds.password)
        return creds

    def add_address(self, addr: str, relay: Relay) -> None:
        """An address the suite named but never owned (it still gets cleaned up and checked)."""
        self.accounts.setdefault(addr, Credentials(addr, "", relay))

    def remove_all(self) -> list[str]:
        """Delete every registered mailbox on its relay; return what is left over."""
        leftovers: list[str] = []
        by_relay: dict[Relay, list[str]] = {}
        for creds in self.accounts.values():
            by_relay.setdefault(creds.relay, []).append(creds.relay.mailbox_dir(creds.addr))
        for relay, dirs in by_relay.items():
            quoted = " ".join(shlex.quote(d) for d in dirs)
            relay.ssh(f"rm -rf -- {quoted}")
            out = relay.ssh(f'for d in {quoted}; do test -e "$d" && echo "$d"; done; true')
            leftovers += out.split()
        return leftovers


@pytest.fixture(scope="session")
def registry(relays: list[Relay]) -> Iterator[Registry]:
    reg = Registry()
    yield reg
    leftovers = reg.remove_all()
    REPORT.append(f"removed the mailboxes of {len(reg.accounts)} test addresses")
    assert not leftovers, f"mailboxes left after cleanup: {leftovers}"


def random_local(relay: Relay) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(relay.config.username_max_length))


def random_password(relay: Relay) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(relay.config.password_min_length + 6))


_NEW_LOCK = threading.Lock()
# nginx limits /new to 2 requests/s per client address with a burst of 5; the suite keeps to
# 2/s with a burst of 3, leaving room for other clients of the lab's client address.
_NEW_INTERVAL = 0.5
_NEW_TOLERANCE = 2 * _NEW_INTERVAL
_new_tat = 0.0  # theoretical arrival time of the next call (GCRA)


def _pace_new() -> None:
    global _new_tat
    with _NEW_LOCK:
        now = time.monotonic()
        tat = max(_new_tat, now)
        if tat - now > _NEW_TOLERANCE:
            time.sleep(tat - now - _NEW_TOLERANCE)
        _new_tat = tat + _NEW_INTERVAL


def post_new(
    relay: Relay, method: str = "POST", query: str = "", refusals: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """`https://<domain>/new<query>` as the app calls it (certificate checks off on
    self-signed). With `refusals`, a 4xx other than 429 is returned instead of raised.

    Calls are paced below the relay's rate limit for `/new`, and a 429 is retried for a few
    seconds, so the suite does not crowd out other clients of the same address.
    """
    url = f"https://{relay.domain}/new{query}"
    deadline = time.monotonic() + 15
    while True:
        _pace_new()
        request = urllib.request.Request(url, method=method)  # noqa: S310 -- https URL built here
        try:
            with urllib.request.urlopen(  # noqa: S310 -- https URL built here
                request, context=relay.tls_context(), timeout=NET_TIMEOUT
            ) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            if refusals and e.code != 429:
                with e:
                    return e.code, dict(e.headers), e.read()
            e.close()
            if e.code != 429 or time.monotonic() > deadline:
                raise


Factory = Callable[..., Credentials]


@pytest.fixture
def new_credentials(registry: Registry) -> Factory:
    """Fresh credentials from `/new` (the account exists only after the first login)."""

    def make(relay: Relay) -> Credentials:
        status, _headers, body = post_new(relay)
        assert status == 200, body
        data = json.loads(body)
        return registry.add(Credentials(data["email"], data["password"], relay))

    return make


@pytest.fixture
def make_account(new_credentials: Factory) -> Factory:
    """A fresh account that exists: credentials from `/new`, created by an IMAP login."""

    def make(relay: Relay) -> Credentials:
        creds = new_credentials(relay)
        with creds.imap() as conn:
            conn.select("INBOX")
        return creds

    return make


# --- raw protocol helpers -----------------------------------------------------------------


def imap_connect(relay: Relay, port: int = 993) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL(
        relay.domain, port, ssl_context=relay.tls_context(), timeout=NET_TIMEOUT
    )


def smtps_connect(relay: Relay) -> smtplib.SMTP_SSL:
    conn = smtplib.SMTP_SSL(
        relay.domain,
        465,
        local_hostname=EHLO_NAME,
        context=relay.tls_context(),
        timeout=NET_TIMEOUT,
    )
    conn.ehlo()
    return conn


def starttls_connect(relay: Relay, port: int) -> smtplib.SMTP:
    """Port 25 or 587, after STARTTLS and a second EHLO."""
    conn = smtplib.SMTP(relay.domain, port, local_hostname=EHLO_NAME, timeout=NET_TIMEOUT)
    try:
        conn.ehlo()
        conn.starttls(context=relay.tls_context())
        conn.ehlo()
    except BaseException:
        close_smtp(conn)
        raise
    return conn


def close_smtp(conn: smtplib.SMTP) -> None:
    with contextlib.suppress(smtplib.SMTPException, OSError):
        conn.quit()
    conn.close()


@dataclass
class Outcome:
    """How far a transaction got: the stage that answered last, with its reply."""

    stage: str  # "mail", "rcpt", "data" or "done"
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.code} {self.text}"


def transact(conn: smtplib.SMTP, mail_from: str, rcpts: list[str], data: bytes) -> Outcome:
    """One SMTP transaction with the reply of each step, instead of smtplib's exceptions."""
    try:
        code, text = conn.mail(mail_from)
        if code != 250:
            return Outcome("mail", code, text.decode(errors="replace"))
        for rcpt in rcpts:
            code, text = conn.rcpt(rcpt)
            if code not in (250, 251):
                return Outcome("rcpt", code, text.decode(errors="replace"))
        code, text = conn.data(data)
    except smtplib.SMTPServerDisconnected as e:
        return Outcome("disconnected", 0, str(e))
    except smtplib.SMTPDataError as e:
        error = e.smtp_error
        text = error if isinstance(error, bytes) else error.encode()
        return Outcome("data", e.smtp_code, text.decode(errors="replace"))
    if code != 250:
        return Outcome("data", code, text.decode(errors="replace"))
    return Outcome("done", code, text.decode(errors="replace"))


ENCRYPTION_NEEDED = "523 Encryption Needed: Invalid Unencrypted Mail"


def mxdeliv(
    relay: Relay, method: str, headers: dict[str, str | bytes], body: bytes
) -> tuple[int, str]:
    """One request to the relay's `/mxdeliv` on 443: its status and body text."""
    conn = http.client.HTTPSConnection(
        relay.domain, 443, timeout=NET_TIMEOUT, context=relay.tls_context()
    )
    try:
        conn.request(method, "/mxdeliv", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace").strip()
    finally:
        conn.close()


def message_id(relay: Relay) -> str:
    return f"<{secrets.token_hex(12)}@{relay.address_domain}>"


def _headers(
    from_addr: str, to_addr: str, subject: str, msgid: str, extra: list[tuple[str, str]]
) -> list[str]:
    lines = [
        f"From: {from_addr}",
        f"To: {to_addr}",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate()}",
        f"Message-ID: {msgid}",
        "MIME-Version: 1.0",
    ]
    return lines + [f"{name}: {value}" for name, value in extra]


def encrypted_message(
    from_addr: str,
    to_addr: str,
    msgid: str,
    subject: str = "[...]",
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    """A PGP/MIME message of the shape the gate accepts (the armor is from the test corpus)."""
    template = (MAIL_CORPUS / "enc-bob.eml").read_bytes()
    head, _, body = template.partition(b"\r\n\r\n")
    content_type = [line for line in head.split(b"\r\n") if line.startswith(b"Content-Type:")]
    lines = _headers(from_addr, to_addr, subject, msgid, extra or [])
    return "\r\n".join(lines).encode() + b"\r\n" + content_type[0] + b"\r\n\r\n" + body


def cleartext_message(
    from_addr: str, to_addr: str, msgid: str, extra: list[tuple[str, str]] | None = None
) -> bytes:
    lines = _headers(from_addr, to_addr, "[...]", msgid, extra or [])
    lines.append("Content-Type: text/plain; charset=utf-8")
    return ("\r\n".join(lines) + "\r\n\r\nHello, in the clear.\r\n").encode()


def send_encrypted(sender: Credentials, recipient: Credentials) -> str:
    """An encrypted message from `sender` to `recipient` through `sender`'s relay; its id."""
    msgid = message_id(sender.relay)
    data = encrypted_message(sender.addr, recipient.addr, msgid)
    with sender.smtp() as conn:
        outcome = transact(conn, sender.addr, [recipient.addr], data)
    assert (outcome.stage, outcome.code) == ("done", 250), outcome
    return msgid


def wait_until_deferred(relay: Relay) -> None:
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while '"deferred"' not in relay.ssh("postqueue -j", check=False):
        assert time.monotonic() < deadline, f"{relay.domain} did not keep the message queued"
        time.sleep(0.5)


@contextlib.contextmanager
def stopped(relay: Relay, unit: str, then: Relay) -> Iterator[None]:
    """`unit` stopped on `relay`; afterwards started again, and `then`'s transport restarted,
    so that it forgets what it learnt about the peer meanwhile."""
    relay.ssh(f"systemctl stop {unit}")
    try:
        yield
    finally:
        relay.ssh(f"systemctl start {unit}")
        then.ssh("systemctl restart filtermail-transport")


def parse_mail(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=compat32)


def wait_for_mail(
    creds: Credentials, match: Callable[[bytes], bool], timeout: float = DELIVERY_TIMEOUT
) -> bytes:
    """Poll the INBOX of `creds` until a message for which `match` is true arrives."""
    deadline = time.monotonic() + timeout
    seen = 0
    with creds.imap() as conn:
        while True:
            typ, data = conn.select("INBOX", readonly=True)
            assert typ == "OK", data
            count = int(data[0] or 0)
            for num in range(seen + 1, count + 1):
                typ, fetched = conn.fetch(str(num), "(BODY.PEEK[])")
                assert typ == "OK", fetched
                item = fetched[0]
                if isinstance(item, tuple) and match(item[1]):
                    return item[1]
            seen = count
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching message for {creds.addr} within {timeout} s")
            time.sleep(0.2)


def wait_for_message_id(creds: Credentials, msgid: str, timeout: float = DELIVERY_TIMEOUT) -> bytes:
    return wait_for_mail(creds, lambda raw: msgid.encode() in raw, timeout)


_IMAP_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[()]|\{\d+\}|[^\s()]+')


def _imap_tokens(text: bytes) -> list[bytes | None]:
    """Atoms and strings of an IMAP response, without parentheses or literal markers;
    NIL as None."""
    tokens: list[bytes | None] = []
    for token in _IMAP_TOKEN.findall(text):
        if token in (b"(", b")") or token.startswith(b"{"):
            continue
        if token.startswith(b'"'):
            tokens.append(re.sub(rb"\\(.)", rb"\1", token[1:-1]))
        else:
            tokens.append(None if token.upper() == b"NIL" else token)
    return tokens


def imap_metadata(conn: imaplib.IMAP4, mailbox: str, *entries: str) -> dict[str, str]:
    """GETMETADATA (RFC 5464): entry -> value, for the entries that have a value."""
    typ, data = conn.xatom("GETMETADATA", mailbox, "(" + " ".join(entries) + ")")
    assert typ == "OK", data
    _name, items = conn.response("METADATA")
    tokens: list[bytes | None] = []
    for item in items or []:
        if isinstance(item, tuple):  # (text ending in a literal marker {n}, the literal)
            tokens += _imap_tokens(item[0])
            tokens.append(item[1])
        elif item:
            tokens += _imap_tokens(item)
    # mailbox, then entry/value pairs (one response per GETMETADATA here)
    pairs = tokens[1:]
    values: dict[str, str] = {}
    for key, value in zip(pairs[0::2], pairs[1::2], strict=True):
        assert key is not None, tokens
        if value is not None:
            values[key.decode()] = value.decode()
    return values


def imap_set_metadata(conn: imaplib.IMAP4, mailbox: str, entry: str, value: str) -> None:
    typ, data = conn.xatom("SETMETADATA", mailbox, f'({entry} "{value}")')
    assert typ == "OK", data


def wait_for_file_line(path: Path, needle: str, timeout: float = DELIVERY_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} did not appear in {path} within {timeout} s")
        time.sleep(0.2)


# --- Delta Chat core ------------------------------------------------------------------------


class ChatClients:
    """Delta Chat core accounts in one deltachat-rpc-server process."""

    def __init__(self, deltachat: Any, new_credentials: Factory) -> None:
        self.deltachat = deltachat
        self.rpc = deltachat.rpc
        self.new_credentials = new_credentials
        self.addresses: dict[int, str] = {}

    def online(self, account: Any, creds: Credentials) -> Any:
        self.addresses[account.id] = creds.addr
        account.start_io()
        self.wait_event(account, "ImapInboxIdle")
        return account

    def new_account(self, relay: Relay) -> Any:
        """Configured like the app after `/new`: add_or_update_transport, then online."""
        return self.account_with(relay, self.new_credentials(relay))

    def account_with(self, relay: Relay, creds: Credentials) -> Any:
        """An account configured with credentials the test got from `/new` itself."""
        account = self.deltachat.add_account()
        account.add_or_update_transport(
            {
                "addr": creds.addr,
                "password": creds.password,
                "imapServer": relay.domain,
                "imapPort": 993,
                "imapSecurity": "ssl",
                "smtpServer": relay.domain,
                "smtpPort": 465,
                "smtpSecurity": "ssl",
                "certificateChecks": relay.certificate_checks,
            }
        )
        return self.online(account, creds)

    def new_account_from_qr(self, relay: Relay, qr: str, creds: Credentials) -> Any:
        account = self.deltachat.add_account()
        account.add_transport_from_qr(qr)
        return self.online(account, creds)

    def addr(self, account: Any) -> str:
        return self.addresses[account.id]

    def wait_event(
        self,
        account: Any,
        kind: str,
        match: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = DELIVERY_TIMEOUT,
    ) -> dict[str, Any]:
        """The next event of `kind` (for which `match` holds) of `account`, within `timeout`."""
        import queue

        events = self.rpc.get_queue(account.id)
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                event = events.get(timeout=remaining)
            except queue.Empty:
                break
            if event["kind"] == "Error":
                seen.append(f"Error: {event.get('msg')}")
            if event["kind"] == kind and (match is None or match(event)):
                return dict(event)
        raise AssertionError(
            f"no {kind} event for {self.addresses.get(account.id)} within {timeout} s; "
            f"errors seen: {seen}"
        )

    def wait_incoming(self, account: Any, text: str, timeout: float = DELIVERY_TIMEOUT) -> Any:
        """The snapshot of the next incoming message with `text`."""
        found: list[Any] = []

        def has_text(event: dict[str, Any]) -> bool:
            snapshot = account.get_message_by_id(event["msgId"]).get_snapshot()
            if snapshot.text == text:
                found.append(snapshot)
                return True
            return False

        self.wait_event(account, "IncomingMsg", has_text, timeout)
        return found[0]


def _rpc_server_path() -> str:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which("deltachat-rpc-server", path=search)
    if path is None:
        pytest.fail("deltachat-rpc-server is not installed: pip install deltachat-rpc-server")
    return path


@pytest.fixture
def chat_clients(tmp_path: Path, new_credentials: Factory) -> Iterator[ChatClients]:
    try:
        from deltachat_rpc_client import DeltaChat, Rpc
    except ImportError:
        pytest.fail("deltachat-rpc-client is not installed: pip install deltachat-rpc-client")
    rpc = Rpc(accounts_dir=str(tmp_path / "dc-accounts"), rpc_server_path=_rpc_server_path())
    with rpc:
        yield ChatClients(DeltaChat(rpc), new_credentials)
    # Rpc.close() ends the server but does not reap it; reap it and close the pipes.
    rpc.process.wait(timeout=30)
    for pipe in (rpc.process.stdin, rpc.process.stdout, rpc.process.stderr):
        if pipe is not None:
            pipe.close()


@pytest.fixture(scope="session")
def deltachat_version() -> str:
    proc = subprocess.run(
        [_rpc_server_path(), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return (proc.stdout + proc.stderr).strip()
