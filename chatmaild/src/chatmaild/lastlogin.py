"""lastlogin: the day of each IMAP login, for expiry of inactive accounts (doc/contract.md §2.3).

Dovecot's `last_login` plugin writes `shared/last-login/<addr>` = unix time through this dict
service (`proxy:<socket>:lastlogin`). Only the day is kept: the time is rounded down to a
multiple of 86400 and stored as the mtime of `<home>/password`, written only when the day
changes. Nothing else is stored, and lookups find nothing.

Usage: lastlogin SOCKET INI
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from . import accounts, dictserver, metrics
from .config import Config
from .service import dict_service_parser, load_config_or_exit, setup_logging

log = logging.getLogger("lastlogin")

KEY_PREFIX = "shared/last-login/"


class LastLoginDict:
    def __init__(self, config: Config, registry: metrics.Registry | None = None) -> None:
        self.domain = config.address_domain
        self.mailboxes = accounts.Mailboxes(config.mailboxes_path)
        # Dovecot's last_login plugin writes once per login: this is the count of logins
        self.logins = (registry or metrics.Registry()).counter(
            "chatmail_logins_total", "Successful IMAP logins of the relay's accounts."
        )

    async def lookup(self, key: str, user: str) -> str | None:
        return None

    def iterate(self, prefix: str, user: str) -> Iterator[tuple[str, str]]:
        return iter(())

    def accepts(self, key: str) -> bool:
        return key.startswith(KEY_PREFIX)

    async def commit(self, user: str, changes: list[tuple[str, str | None]]) -> bool:
        for key, value in changes:
            addr = key[len(KEY_PREFIX) :]
            if value is None or accounts.address_error(addr, self.domain) is not None:
                continue
            try:
                epoch = int(value)
            except ValueError:
                log.warning("last-login value is not a unix time")
                return False
            self.logins.inc()
            # A login for an account that no longer exists is not an error for the client.
            self.mailboxes.set_last_login_day(addr, epoch)
        return True


def main(argv: list[str] | None = None) -> None:
    parser = dict_service_parser("lastlogin", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    setup_logging()
    config = load_config_or_exit(args.ini)
    registry = metrics.Registry()
    dictserver.run_dict_service(
        args.socket,
        LastLoginDict(config, registry),
        lambda: metrics.start_snapshots(registry, args.metrics_dir, "lastlogin"),
    )
