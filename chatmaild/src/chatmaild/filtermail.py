"""filtermail: the encryption gate between Postfix and the world (doc/encryption-gate.md).

`filtermail INI outgoing` is the milter of Postfix's submission listeners (587/465,
doc/milter.md) on the UNIX socket its systemd socket unit passes, `filtermail INI incoming` on
`filtermail_smtp_port_incoming` for mail from peers (port 25) and on
`filtermail_http_port_incoming` for `/mxdeliv`; `filtermail INI transport` on
`filtermail_lmtp_port_transport` delivers mail to other relays (`transport`, HTTPS first).
The ports are on `filtermail_host` (loopback) only. Outgoing mail for local users only is
queued by Postfix itself once the gate accepted it; outgoing mail with a recipient elsewhere is
re-injected at the listener that DKIM-signs it (`reinject`), and Postfix drops its own copy;
accepted incoming mail is re-injected. Refusals reach the sender inside the same SMTP
transaction, so nothing is queued that would later bounce.

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
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from . import accounts, mailcheck, metrics, smtpreject
from .addresses import AddressPolicy
from .config import Config
from .dkimcheck import DkimVerifier
from .gatemetrics import GateCounters
from .milter import start_milter_server
from .mxclient import MxdelivClient
from .mxdeliv import start_mxdeliv_server
from .ratelimit import RateLimiter, until_text
from .reinject import OFF_LOOP_SIZE, Reinjector
from .service import (
    NoSocket,
    add_metrics_argument,
    fail,
    load_config_or_exit,
    quiet_accept_errors,
    setup_logging,
    systemd_socket,
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
    """Submissions of this relay's users, as the milter of Postfix's submission listeners."""

    def __init__(
        self,
        config: Config,
        signing: Reinjector,
        limiter: RateLimiter,
        counters: GateCounters | None = None,
    ) -> None:
        self.addresses = AddressPolicy(config.address_domain)
        self.counters = counters or GateCounters(metrics.Registry(), "outgoing")
        # mail that leaves the relay needs a DKIM signature: the gate passes it on to the
        # listener that signs it. Mail for local users only does not (LMTP delivery removes
        # it), and signing is a sixth of the relay's CPU per message: Postfix queues that
        # itself, in the one pass through its smtpd.
        self.signing = signing
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

    async def judge(
        self, mail_from: str, rcpts: list[str], message: bytes, as_given: bool
    ) -> str | None:
        kind = await _judge(message, lambda: mailcheck.check_outgoing(mail_from, rcpts, message))
        # rcpts are as check_recipient returned them: a local one is in its canonical form.
        # Postfix's copy is queued under the client's spellings: taken as it is only when
        # those are the canonical ones, else re-injected in them (addresses, doc §1)
        if as_given and all(self.addresses.local_address(rcpt) == rcpt for rcpt in rcpts):
            log.info("outgoing message passed the gate: queued")
            self.counters.accepted(kind)
            return None
        reply = await self.signing.deliver(mail_from, rcpts, message)
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


async def serve(
    config: Config,
    mode: str,
    metrics_dir: Path | None = None,
    milter_socket: socket.socket | None = None,
) -> None:
    # out of file descriptors, each refused accept would log a traceback
    quiet_accept_errors(asyncio.get_running_loop())
    # Postfix counted the sender's bytes against max_message_size; what reaches the filter
    # also carries Postfix's Received line, a peer's or our own DKIM signature
    host, size = config.filtermail_host, config.inner_message_size_limit
    registry = metrics.Registry()
    servers: list[asyncio.AbstractServer] = []
    if mode == "outgoing":
        signing = Reinjector(config.postfix_host, config.postfix_reinject_port)
        limiter = RateLimiter(config.max_user_send_per_minute, config.max_user_send_burst_size)
        counters = GateCounters(registry, "outgoing")
        gate_out = OutgoingGate(config, signing, limiter, counters)
        if milter_socket is None:
            raise ValueError("the outgoing gate serves Postfix on a UNIX socket")
        servers.append(
            await start_milter_server(gate_out, milter_socket, size, on_refusal=counters.refused)
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
    milter_socket = None
    if args.mode == "outgoing":
        try:
            milter_socket = systemd_socket(socket.SOCK_STREAM)
        except NoSocket as e:
            fail(f"filtermail outgoing: {e}; it is started by filtermail.socket")
    where = "the milter's socket" if milter_socket is not None else config.filtermail_host
    try:
        asyncio.run(serve(config, args.mode, args.metrics_dir, milter_socket))
    except OSError as e:
        fail(f"filtermail {args.mode}: cannot listen on {where}: {e.strerror}")
    except KeyboardInterrupt:
        pass
