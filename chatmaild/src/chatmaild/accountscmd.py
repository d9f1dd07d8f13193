"""chatmail-accounts: the operator's account actions on the relay (doc/accounts.md).

Usage: chatmail-accounts INI count | list [--addresses] | block ADDR | unblock ADDR |
delete ADDR [--yes]

Run as root on the relay, by hand or by `cmdeploy accounts` over SSH. Each action prints one
line saying what it did (or that there was nothing to do) and exits 0; an address that is not
one of the relay's, or an account that does not exist, is one line on stderr and exit 1; bad
usage exit 2. `list` prints no address unless `--addresses` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TextIO

from . import accountsadmin
from .accountsadmin import AdminError
from .config import Config
from .quota_expire import OneLineArgumentParser
from .service import load_config_or_exit

EXIT_REFUSED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="chatmail-accounts", description=__doc__.splitlines()[0])
    parser.add_argument("ini", help="path of chatmail.ini")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("count", help="the number of accounts")
    p = sub.add_parser("list", help="account count and last-login histogram")
    p.add_argument("--addresses", action="store_true", help="also every address (private!)")
    for name, what in (("block", "no login, no incoming mail, data kept"), ("unblock", "undo")):
        p = sub.add_parser(name, help=what)
        p.add_argument("address")
    p = sub.add_parser("delete", help="delete the account and all its mail")
    p.add_argument("address")
    p.add_argument("--yes", action="store_true", help="do not ask first")
    return parser


def confirm(address: str, stdin: TextIO, stdout: TextIO) -> bool:
    if not stdin.isatty():
        raise AdminError("delete asks first: give --yes when there is no terminal to ask on")
    stdout.write(f"Delete {address} and all its mail? [y/N] ")
    stdout.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


def run(
    args: argparse.Namespace,
    config: Config,
    stdout: TextIO,
    admin: accountsadmin.Admin | None = None,
    ask: Callable[[str], bool] | None = None,
    now: Callable[[], float] = time.time,
) -> int:
    admin = admin or accountsadmin.Admin(config.mailboxes_path, config.address_domain)
    action = args.action
    if action == "count":
        found = admin.accounts()
        blocked = sum(a.blocked for a in found)
        stdout.write(f"{len(found)} accounts ({blocked} blocked)\n")
    elif action == "list":
        found = admin.accounts()
        stdout.write(accountsadmin.render_summary(found, now()))
        if args.addresses:
            stdout.write(accountsadmin.render_addresses(found))
    elif action == "delete":
        address = accountsadmin.canonical_address(args.address, config.address_domain)
        asker = ask or (lambda a: confirm(a, sys.stdin, stdout))
        if not args.yes and not asker(address):
            stdout.write("nothing deleted\n")
            return 0
        stdout.write(admin.delete(address) + "\n")
    else:
        stdout.write(getattr(admin, action)(args.address) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config_or_exit(args.ini)
    try:
        return run(args, config, sys.stdout)
    except AdminError as e:
        print(f"chatmail-accounts: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as e:
        print(f"chatmail-accounts: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
