"""chatmail-metadata: the dict behind Dovecot's IMAP METADATA (RFC 5464), and the push sender.

Dovecot reaches it as `mail_attribute_dict = proxy:<socket>:metadata`. Keys start with
`priv/<mailbox guid>/` (private entries of the user named in the request) or
`shared/<guid>/` (shared and server entries); the GUID carries no meaning here.

| entry                                       | op     | behaviour                              |
|---------------------------------------------|--------|----------------------------------------|
| `/private/devicetoken` (INBOX)              | set    | adds or refreshes a device token       |
|                                             | lookup | the valid tokens, space-separated      |
| `/private/messagenew` (set by the Lua hook) | set    | queues one push per valid token        |
| server `/shared/vendor/deltachat/irohrelay` | lookup | `iroh_relay`; nothing if it is empty   |
| server `/shared/vendor/deltachat/turn`      | lookup | `<domain>:3478:<expiry>:<password>`    |
| server `.../deltachat/maxsmtprecipients`    | lookup | `1000`                                 |
| server `.../deltachat/appversions`          | lookup | the catalogue, one line (appversions)  |

Anything else: lookups find nothing, writes fail the transaction. No log line holds an
address or a token. What Delta Chat makes of the server entries: doc/metadata.md.

Usage: chatmail-metadata SOCKET INI
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import accounts, dictserver, metrics, turn
from .appversions import AppVersions, bundled_path
from .config import Config
from .pushhttp import HttpPusher
from .pushqueue import SPOOL_DIR, Notifier, PushQueue
from .service import dict_service_parser, load_config_or_exit, setup_logging
from .tokens import TokenStore, token_error

log = logging.getLogger("metadata")

SERVER_PREFIX = "vendor/vendor.dovecot/pvt/server/vendor/deltachat/"
MAX_SMTP_RECIPIENTS = "1000"  # Postfix's smtpd_recipient_limit on a relay


def split_key(key: str) -> tuple[str, str] | None:
    """`priv/<guid>/<name>` -> ("priv", name); likewise for `shared/`. None if malformed."""
    scope, _, rest = key.partition("/")
    _guid, sep, name = rest.partition("/")
    if scope not in ("priv", "shared") or not sep or not name:
        return None
    return scope, name


class MetadataDict:
    def __init__(
        self,
        config: Config,
        queue: PushQueue,
        clock: Callable[[], float] = time.time,
        registry: metrics.Registry | None = None,
    ) -> None:
        self.config = config
        self.turn_issued = (registry or metrics.Registry()).counter(
            "chatmail_turn_credentials_issued_total",
            "TURN credentials handed out in IMAP METADATA.",
        )
        self.domain = config.address_domain
        self.tokens = TokenStore(config.mailboxes_path)
        self.queue = queue
        self.clock = clock
        self.appversions = AppVersions(
            Path(config.appversions_file) if config.appversions_file else bundled_path()
        )

    def _account(self, user: str) -> str | None:
        return None if accounts.address_error(user, self.domain) else user

    async def lookup(self, key: str, user: str) -> str | None:
        parsed = split_key(key)
        if parsed is None:
            return None
        scope, name = parsed
        if scope == "priv" and name == "devicetoken":
            addr = self._account(user)
            return None if addr is None else " ".join(self.tokens.valid_tokens(addr, self.clock()))
        if scope == "shared" and name.startswith(SERVER_PREFIX):
            return self.server_entry(name[len(SERVER_PREFIX) :])
        return None

    def server_entry(self, name: str) -> str | None:
        if name == "irohrelay":
            # only one that is configured: this relay runs none itself
            return self.config.iroh_relay or None
        if name == "turn":
            secret = turn.read_secret(Path(self.config.turn_secret_file))
            if secret is None:
                log.warning("no TURN secret in turn_secret_file; not advertising TURN")
                return None
            self.turn_issued.inc()
            return turn.metadata_value(self.config.mail_domain, secret, self.clock())
        if name == "maxsmtprecipients":
            return MAX_SMTP_RECIPIENTS
        if name == "appversions":
            return self.appversions.value()
        return None

    def iterate(self, prefix: str, user: str) -> Iterator[tuple[str, str]]:
        return iter(())

    def accepts(self, key: str) -> bool:
        parsed = split_key(key)
        return (
            parsed is not None
            and parsed[0] == "priv"
            and parsed[1]
            in (
                "devicetoken",
                "messagenew",
            )
        )

    async def commit(self, user: str, changes: list[tuple[str, str | None]]) -> bool:
        addr = self._account(user)
        if addr is None:
            log.warning("metadata write for a user outside this relay")
            return False
        for key, value in changes:
            name = split_key(key)[1]  # type: ignore[index]  # accepts() checked the shape
            if name == "devicetoken":
                if value is None:
                    continue  # a client may unset; tokens expire on their own
                reason = token_error(value)
                if reason is not None:
                    log.warning("refusing device token: %s", reason)
                    return False
                if not self.tokens.add(addr, value, self.clock()):
                    return False
            elif name == "messagenew":
                for token in self.tokens.valid_tokens(addr, self.clock()):
                    self.queue.enqueue(addr, token)
        return True

    def token_gone(self, addr: str, token: str) -> None:
        self.tokens.remove(addr, token, self.clock())


async def serve(
    config: Config, socket_path: Path, stop: asyncio.Event, registry: metrics.Registry
) -> None:
    queue = PushQueue(config.mailboxes_path / SPOOL_DIR, registry=registry)
    recovered = queue.recover()
    if recovered:
        log.info("re-queued %d pending push notifications", recovered)
    backend = MetadataDict(config, queue, registry=registry)
    notifier = Notifier(queue, HttpPusher(config.push_endpoint).send, backend.token_gone)
    pushing = asyncio.create_task(notifier.run())
    try:
        await dictserver.serve(socket_path, backend, stop)
    finally:
        pushing.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = dict_service_parser("chatmail-metadata", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    setup_logging()
    config = load_config_or_exit(args.ini)
    registry = metrics.Registry()
    dictserver.run_service(
        args.socket,
        lambda stop: serve(config, args.socket, stop, registry),
        lambda: metrics.start_snapshots(registry, args.metrics_dir, "metadata"),
    )
