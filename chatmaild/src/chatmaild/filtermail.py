"""filtermail: the encryption gate between Postfix and the world (relay-spec §4).

`filtermail INI outgoing` listens on `filtermail_smtp_port` for submissions (Postfix proxies
the live SMTP dialogue from 587/465 here), `filtermail INI incoming` on
`filtermail_smtp_port_incoming` for mail from peers (port 25) and on
`filtermail_http_port_incoming` for `/mxdeliv`. Both listen on `filtermail_host` (loopback)
only. Accepted mail is re-injected into Postfix; refusals reach the sender inside the same
SMTP transaction, so nothing is queued that would later bounce.

- outgoing: MAIL FROM sanity and rate limit, then From = MAIL FROM and only encrypted mail,
  Secure-Join requests and a self-sent Autocrypt Setup Message (§4.4);
- incoming: envelope sender replaced by `<>` when it differs from From, only encrypted mail,
  Secure-Join requests, mailer-daemon reports, or cleartext for accounts that accept it
  (§4.5), and a valid DKIM signature aligned with the From domain (§4.6).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import time
from collections.abc import Callable

from . import mailcheck, smtpreject
from .config import Config
from .dkimcheck import DkimVerifier
from .mxdeliv import start_mxdeliv_server
from .ratelimit import RateLimiter, until_text
from .reinject import Reinjector
from .service import fail, load_config_or_exit, setup_logging
from .smtpfront import start_smtp_server

log = logging.getLogger("filtermail")


class OutgoingGate:
    """Submissions of this relay's users (§4.4)."""

    def __init__(self, config: Config, reinjector: Reinjector, limiter: RateLimiter) -> None:
        self.reinjector = reinjector
        self.limiter = limiter

    def check_sender(self, mail_from: str) -> None:
        mailcheck.check_mail_from(mail_from)
        wait = self.limiter.check(mail_from.lower())
        if wait is not None:
            raise smtpreject.too_much_mail(mail_from, until_text(wait, time.time()))

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        mailcheck.check_outgoing(mail_from, rcpts, data)
        reply = await self.reinjector.deliver(mail_from, rcpts, data)
        log.info("outgoing message passed the gate: %s", reply[:3])
        return reply


class IncomingGate:
    """Mail from other relays and MTAs, by SMTP or by /mxdeliv (§4.5, §4.6)."""

    def __init__(
        self,
        config: Config,
        reinjector: Reinjector,
        verifier: DkimVerifier,
        enforces_e2ee: Callable[[str], bool] | None = None,
    ) -> None:
        self.reinjector = reinjector
        self.verifier = verifier
        self.enforces_e2ee = enforces_e2ee or functools.partial(
            mailcheck.mailbox_enforces_e2ee, config.mailboxes_path
        )

    def check_sender(self, mail_from: str) -> None:
        pass  # any sender, also the null sender <> of bounces

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        sender = mailcheck.check_incoming(mail_from, rcpts, data, self.enforces_e2ee)
        from_domain = mailcheck.from_address(mailcheck.parse_message(data)).rpartition("@")[2]
        # DNS lookups and RSA: off the event loop, so other connections keep moving
        await asyncio.to_thread(self.verifier.check, data, from_domain)
        reply = await self.reinjector.deliver(sender, rcpts, data)
        log.info("incoming message passed the gate: %s", reply[:3])
        return reply


async def serve(config: Config, mode: str) -> None:
    host, size = config.filtermail_host, config.max_message_size
    servers: list[asyncio.AbstractServer] = []
    if mode == "outgoing":
        reinjector = Reinjector(config.postfix_host, config.postfix_reinject_port)
        limiter = RateLimiter(config.max_user_send_per_minute, config.max_user_send_burst_size)
        gate_out = OutgoingGate(config, reinjector, limiter)
        servers.append(
            await start_smtp_server(gate_out, host, config.filtermail_smtp_port, "filtermail", size)
        )
    else:
        reinjector = Reinjector(config.postfix_host, config.postfix_reinject_port_incoming)
        gate_in = IncomingGate(config, reinjector, DkimVerifier())
        port = config.filtermail_smtp_port_incoming
        servers.append(await start_smtp_server(gate_in, host, port, "filtermail", size))
        http_port = config.filtermail_http_port_incoming
        servers.append(await start_mxdeliv_server(gate_in, host, http_port, size))
    log.info("filtermail %s listening", mode)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="filtermail", description=__doc__.splitlines()[0])
    parser.add_argument("ini", help="path of chatmail.ini")
    parser.add_argument("mode", choices=["outgoing", "incoming"])
    args = parser.parse_args(argv)
    setup_logging()
    config = load_config_or_exit(args.ini)
    try:
        asyncio.run(serve(config, args.mode))
    except OSError as e:
        fail(f"filtermail {args.mode}: cannot listen on {config.filtermail_host}: {e.strerror}")
    except KeyboardInterrupt:
        pass
