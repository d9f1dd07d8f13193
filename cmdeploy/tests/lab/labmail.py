"""What the lab checks do as users and operators of lab relays: accounts from `/new`, mail
through the relays, mailboxes read over IMAP, Delta Chat core accounts, commands on the hosts
over SSH."""

from __future__ import annotations

import contextlib
import imaplib
import json
import queue
import secrets
import shutil
import smtplib
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from test_lab_relays import LAB

from cmdeploy.bench.workload import MessageBody, message
from cmdeploy.lab import hosts

KEY = Path(LAB["ssh_key"]) if LAB else Path()
WAIT = 180.0  # seconds for mail between relays (a deferred message waits for a retry)


@dataclass(frozen=True)
class User:
    addr: str
    password: str


def new_user(ip: str, domain: str) -> User:
    """Credentials from the relay's `/new`, as Delta Chat gets them; the account exists once
    it first logs in."""
    request = urllib.request.Request(f"https://{ip}/new", method="POST", headers={"Host": domain})
    with urllib.request.urlopen(request, context=tls(), timeout=30) as answer:  # noqa: S310
        data = json.loads(answer.read())
    return User(data["email"], data["password"])


def ssh(ip: str, command: str) -> str:
    result = hosts.ssh(KEY, ip, command, timeout=300)
    assert result.returncode == 0, f"{ip}: {command}: {result.stderr[-2000:]}"
    return str(result.stdout)


def tls() -> ssl.SSLContext:
    # the lab's hosts are reached by address here; what the certificate is, is not the point
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def imap(ip: str, user: User) -> imaplib.IMAP4_SSL:
    conn = imaplib.IMAP4_SSL(ip, 993, ssl_context=tls(), timeout=30)
    conn.login(user.addr, user.password)  # the first login creates the account
    return conn


def inbox(ip: str, user: User) -> dict[str, Any]:
    """UIDVALIDITY and {Message-ID: UID} of the user's INBOX on the host at `ip`."""
    conn = imap(ip, user)
    try:
        conn.select("INBOX", readonly=True)
        validity = conn.response("UIDVALIDITY")[1][0]
        _, data = conn.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    finally:
        conn.logout()
    found = {}
    for item in data:
        if isinstance(item, tuple):
            uid = item[0].split(b"UID ")[1].split()[0].decode()
            msgid = item[1].decode().split(":", 1)[1].strip()
            found[msgid] = uid
    return {"uidvalidity": validity, "messages": found}


def send(ip: str, sender: User, rcpt: User) -> str:
    """An encrypted message from `sender`, submitted at the relay at `ip`; its Message-ID."""
    msgid = f"<{secrets.token_hex(8)}@lab.test>"
    data = message(MessageBody.of_size(2048), sender.addr, rcpt.addr, msgid[1:-1])
    with smtplib.SMTP_SSL(ip, 465, context=tls(), timeout=60) as smtp:
        smtp.login(sender.addr, sender.password)
        smtp.sendmail(sender.addr, [rcpt.addr], data)
    return msgid


def wait_for(ip: str, user: User, msgid: str, flush: tuple[str, ...] = ()) -> dict[str, Any]:
    """The user's INBOX once `msgid` is in it; the relays at the addresses in `flush` try
    their queued mail again meanwhile, instead of at their next retry."""
    deadline = time.monotonic() + WAIT
    while True:
        box = inbox(ip, user)
        if msgid in box["messages"]:
            return box
        if time.monotonic() >= deadline:
            held = "".join(f"; {host} holds {queued_for(host, user)}" for host in flush)
            raise AssertionError(f"{msgid} did not reach {user.addr} at {ip}{held}")
        for host in flush:
            ssh(host, "postqueue -f")
        time.sleep(2)


def queued_for(ip: str, user: User) -> list[tuple[str, str]]:
    """What the relay at `ip` still holds for `user`: each entry's queue and delay reason."""
    held = []
    for line in ssh(ip, "postqueue -j").splitlines():
        entry = json.loads(line)
        for rcpt in entry.get("recipients", []):
            if rcpt.get("address") == user.addr:
                held.append((entry.get("queue_name", ""), rcpt.get("delay_reason", "")))
    return held


def deferred_for(ip: str, user: User) -> bool:
    """Whether the relay at `ip` holds mail for `user` in its deferred queue."""
    return any(queue == "deferred" for queue, _ in queued_for(ip, user))


def forget_cached_names(ip: str) -> None:
    """The peer's resolver forgets what it cached: what the records' TTL does in time."""
    ssh(
        ip,
        "unbound-control -c /etc/unbound/unbound.conf flush_zone test && "
        "unbound-control -c /etc/unbound/unbound.conf flush_infra all",
    )


def dkim_key(ip: str) -> str:
    """The checksum of the relay's DKIM private key."""
    return ssh(ip, "sha256sum /etc/dkimkeys/*.private | cut -d' ' -f1")


# --- Delta Chat core ------------------------------------------------------------------------


@contextlib.contextmanager
def delta_chat(accounts_dir: Path) -> Iterator[Any]:
    """Delta Chat core (deltachat-rpc-server) in the lab's client namespace, where relay names
    resolve through the lab DNS as an app's do through the Internet's: a DNS change reaches it."""
    from deltachat_rpc_client import DeltaChat, Rpc

    server = shutil.which("deltachat-rpc-server", path=str(Path(sys.executable).parent))
    assert server, "deltachat-rpc-server is not installed: pip install deltachat-rpc-server"
    netns = ["ip", "netns", "exec", str(LAB["client_netns"])]
    rpc = Rpc(accounts_dir=str(accounts_dir), rpc_server_path=[*netns, server])
    with rpc:
        yield DeltaChat(rpc)
    rpc.process.wait(timeout=30)  # close() ends the server without reaping it


def core_account(deltachat: Any, user: User, domain: str) -> Any:
    """A core account set up with `user`'s credentials against the relay named `domain`, as
    the app does after `/new`; online (its inbox idle)."""
    account = deltachat.add_account()
    account.add_or_update_transport(
        {
            "addr": user.addr,
            "password": user.password,
            "imapServer": domain,
            "imapPort": 993,
            "imapSecurity": "ssl",
            "smtpServer": domain,
            "smtpPort": 465,
            "smtpSecurity": "ssl",
            # core trusts only public roots, never the lab's private CA
            "certificateChecks": "acceptInvalidCertificates",
        }
    )
    account.start_io()
    core_event(account, "ImapInboxIdle")
    return account


def core_event(
    account: Any, kind: str, match: Callable[[dict[str, Any]], bool] | None = None
) -> dict[str, Any]:
    """The next event of `kind` (for which `match` holds) of a core account, within WAIT."""
    events = account._rpc.get_queue(account.id)
    deadline = time.monotonic() + WAIT
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = dict(events.get(timeout=remaining))
        except queue.Empty:
            break
        if event["kind"] == kind and (match is None or match(event)):
            return event
    raise AssertionError(f"no {kind} event within {WAIT:.0f} s")


def core_receives(account: Any, text: str) -> Any:
    """The snapshot of the message with `text` once it arrived at a core account."""

    def has_text(event: dict[str, Any]) -> bool:
        return bool(account.get_message_by_id(event["msgId"]).get_snapshot().text == text)

    event = core_event(account, "IncomingMsg", has_text)
    return account.get_message_by_id(event["msgId"]).get_snapshot()
