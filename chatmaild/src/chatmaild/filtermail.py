"""filtermail: the encryption gate between Postfix and the world (doc/encryption-gate.md).

`filtermail INI outgoing` listens on `filtermail_smtp_port` for submissions (Postfix proxies
the live SMTP dialogue from 587/465 here), `filtermail INI incoming` on
`filtermail_smtp_port_incoming` for mail from peers (port 25) and on
`filtermail_http_port_incoming` for `/mxdeliv`; `filtermail INI transport` on
`filtermail_lmtp_port_transport` delivers mail to other relays (`transport`, HTTPS first).
All listen on `filtermail_host` (loopback) only. Accepted mail is re-injected into Postfix
(outgoing mail for local users only at a listener that does not DKIM-sign it, `reinject`);
refusals reach the sender inside the same SMTP transaction, so nothing is queued that would
later bounce.

Envelope addresses are taken in one spelling only, and re-injected in exactly that spelling
(`addresses`, doc §1):

- outgoing: MAIL FROM is the sender's own address, rate limited; then From = MAIL FROM and
  only encrypted mail, Secure-Join requests and a self-sent Autocrypt Setup Message (§2);
- incoming: recipients are the relay's own addresses; the envelope sender is replaced by `<>`
  when it differs from From; only encrypted mail, Secure-Join requests, mailer-daemon reports,
  or cleartext for accounts that accept it (§2), and a valid DKIM signature aligned with the
  From domain (`dkimcheck`).

A big message is judged in a worker thread, so that the event loop keeps answering the other
connections meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from . import accounts, mailcheck, metrics, smtpreject
from .addresses import AddressPolicy
from .config import Config
from .dkimcheck import DkimVerifier
from .gatemetrics import GateCounters
from .mxclient import MxdelivClient
from .mxdeliv import start_mxdeliv_server
from .ratelimit import RateLimiter, until_text
from .reinject import OFF_LOOP_SIZE, Reinjector
from .service import (
    add_metrics_argument,
    fail,
    load_config_or_exit,
    quiet_accept_errors,
    setup_logging,
)
from .smtpfront import start_smtp_server
from .transport import Transport

log = logging.getLogger("filtermail")

T = TypeVar("T")


async def _judge(data: bytes, check: Callable[[], T]) -> T:
    if len(data) > OFF_LOOP_SIZE:
        return await asyncio.to_thread(check)
    return check()


class OutgoingGate:
    """Submissions of this relay's users."""

    def __init__(
        self,
        config: Config,
        signing: Reinjector,
        local: Reinjector,
        limiter: RateLimiter,
        counters: GateCounters | None = None,
    ) -> None:
        self.addresses = AddressPolicy(config.address_domain)
        self.counters = counters or GateCounters(metrics.Registry(), "outgoing")
        # mail that leaves the relay needs a DKIM signature; mail for local users only does
        # not (LMTP delivery removes it), and signing is a sixth of the relay's CPU per message
        self.signing = signing
        self.local = local
        self.limiter = limiter
        self.mailboxes = accounts.Mailboxes(config.mailboxes_path)

    def check_sender(self, mail_from: str) -> str:
        sender = self.addresses.outgoing_sender(mail_from)
        wait = self.limiter.check(sender)
        if wait is not None:
            raise smtpreject.too_much_mail(sender, until_text(wait, time.time()))
        return sender

    def check_recipient(self, rcpt: str) -> str:
        address = self.addresses.outgoing_recipient(rcpt)
        # a local recipient is in its canonical form, the name of its account directory
        if self.addresses.local_address(address) == address and self.mailboxes.is_blocked(address):
            raise smtpreject.recipient_blocked()
        return address

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        kind = await _judge(data, lambda: mailcheck.check_outgoing(mail_from, rcpts, data))
        # rcpts are as check_recipient returned them: a local one is in its canonical form
        only_local = all(self.addresses.local_address(rcpt) == rcpt for rcpt in rcpts)
        reinjector = self.local if only_local else self.signing
        reply = await reinjector.deliver(mail_from, rcpts, data)
        log.info("outgoing message passed the gate: %s", reply[:3])
        if reply.startswith("2"):  # a 4xx of the re-injection: the client sends it again
            self.counters.accepted(kind)
        return reply


class IncomingGate:
    """Mail from other relays and MTAs, by SMTP or by /mxdeliv."""

    def __init__(
        self,
        config: Config,
        reinjector: Reinjector,
        verifier: DkimVerifier,
        enforces_e2ee: Callable[[str], bool] | None = None,
        counters: GateCounters | None = None,
    ) -> None:
        self.addresses = AddressPolicy(config.address_domain)
        self.counters = counters or GateCounters(metrics.Registry(), "incoming")
        self.reinjector = reinjector
        self.verifier = verifier
        self.enforces_e2ee = enforces_e2ee or functools.partial(
            mailcheck.mailbox_enforces_e2ee, config.mailboxes_path
        )
        self.mailboxes = accounts.Mailboxes(config.mailboxes_path)

    def check_sender(self, mail_from: str) -> str:
        # any sender, also the null sender <> of bounces; one in another spelling becomes <>
        return self.addresses.incoming_sender(mail_from)

    def check_recipient(self, rcpt: str) -> str:
        # canonical: the one spelling that names the account directory, so no other spelling
        # of a blocked address gets past the marker
        address = self.addresses.incoming_recipient(rcpt)
        if self.mailboxes.is_blocked(address):
            raise smtpreject.recipient_blocked()
        return address

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        verdict = await _judge(
            data, lambda: mailcheck.check_incoming(mail_from, rcpts, data, self.enforces_e2ee)
        )
        # DNS lookups and RSA: off the event loop, so other connections keep moving
        await asyncio.to_thread(self.verifier.check, data, verdict.from_domain)
        reply = await self.reinjector.deliver(verdict.envelope_sender, rcpts, data)
        log.info("incoming message passed the gate: %s", reply[:3])
        if reply.startswith("2"):
            self.counters.accepted(verdict.kind)
        return reply


async def serve(config: Config, mode: str, metrics_dir: Path | None = None) -> None:
    # out of file descriptors, each refused accept would log a traceback
    quiet_accept_errors(asyncio.get_running_loop())
    # Postfix counted the sender's bytes against max_message_size; what reaches the filter
    # also carries Postfix's Received line, a peer's or our own DKIM signature
    host, size = config.filtermail_host, config.inner_message_size_limit
    registry = metrics.Registry()
    servers: list[asyncio.AbstractServer] = []
    if mode == "outgoing":
        signing = Reinjector(config.postfix_host, config.postfix_reinject_port)
        local = Reinjector(config.postfix_host, config.postfix_reinject_port_local)
        limiter = RateLimiter(config.max_user_send_per_minute, config.max_user_send_burst_size)
        counters = GateCounters(registry, "outgoing")
        gate_out = OutgoingGate(config, signing, local, limiter, counters)
        port = config.filtermail_smtp_port
        servers.append(
            await start_smtp_server(gate_out, host, port, "filtermail", size, counters=counters)
        )
    elif mode == "transport":
        fallback = Reinjector(config.postfix_host, config.postfix_reinject_port_smtp)
        transport = Transport(MxdelivClient(), fallback, registry=registry)
        port = config.filtermail_lmtp_port_transport
        servers.append(
            await start_smtp_server(transport, host, port, "filtermail", size, lmtp=True)
        )
    else:
        reinjector = Reinjector(config.postfix_host, config.postfix_reinject_port_incoming)
        counters = GateCounters(registry, "incoming")
        gate_in = IncomingGate(config, reinjector, DkimVerifier(), counters=counters)
        port = config.filtermail_smtp_port_incoming
        servers.append(
            await start_smtp_server(gate_in, host, port, "filtermail", size, counters=counters)
        )
        http_port = config.filtermail_http_port_incoming
        servers.append(
            await start_mxdeliv_server(gate_in, host, http_port, size, registry, counters)
        )
    snapshots = metrics.start_snapshots(registry, metrics_dir, f"filtermail-{mode}")
    log.info("filtermail %s listening", mode)
    try:
        await asyncio.gather(*(server.serve_forever() for server in servers))
    finally:
        if snapshots is not None:
            snapshots.cancel()
            await asyncio.gather(snapshots, return_exceptions=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="filtermail", description=__doc__.splitlines()[0])
    parser.add_argument("ini", help="path of chatmail.ini")
    parser.add_argument("mode", choices=["outgoing", "incoming", "transport"])
    add_metrics_argument(parser)
    args = parser.parse_args(argv)
    setup_logging()
    config = load_config_or_exit(args.ini)
    try:
        asyncio.run(serve(config, args.mode, args.metrics_dir))
    except OSError as e:
        fail(f"filtermail {args.mode}: cannot listen on {config.filtermail_host}: {e.strerror}")
    except KeyboardInterrupt:
        pass
