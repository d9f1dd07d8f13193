"""chatmail-accounts: the operator's account actions on the relay (doc/accounts.md).

Usage: chatmail-accounts INI count | list [--addresses] | block ADDR | unblock ADDR |
delete ADDR [--yes] | registration [open|invite|closed|reset] [--refuse-autorelay |
--allow-autorelay] | invite [--uses N] [--expires 7d] | invite --list | invite --revoke ID

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

from . import accountsadmin, registration
from .accountsadmin import AdminError
from .config import REGISTRATION_MODES, Config
from .newemail import account_url
from .quota_expire import OneLineArgumentParser
from .service import load_config_or_exit

EXIT_REFUSED = 1
MAX_USES = 100_000


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="chatmail-accounts", description=__doc__.splitlines()[0])
    parser.add_argument("ini", help="path of chatmail.ini")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("count", prog="chatmail-accounts count", help="the number of accounts")
    p = sub.add_parser(
        "list", prog="chatmail-accounts list", help="account count and last-login histogram"
    )
    p.add_argument("--addresses", action="store_true", help="also every address (private!)")
    for name, what in (("block", "no login, no incoming mail, data kept"), ("unblock", "undo")):
        p = sub.add_parser(name, prog=f"chatmail-accounts {name}", help=what)
        p.add_argument("address")
    p = sub.add_parser(
        "delete", prog="chatmail-accounts delete", help="delete the account and all its mail"
    )
    p.add_argument("address")
    p.add_argument("--yes", action="store_true", help="do not ask first")
    p = sub.add_parser(
        "registration",
        prog="chatmail-accounts registration",
        help="show or set who may create an account",
    )
    p.add_argument("mode", nargs="?", choices=(*REGISTRATION_MODES, "reset"))
    autorelay = p.add_mutually_exclusive_group()
    autorelay.add_argument("--refuse-autorelay", dest="autorelay", action="store_const", const=True)
    autorelay.add_argument("--allow-autorelay", dest="autorelay", action="store_const", const=False)
    p = sub.add_parser(
        "invite", prog="chatmail-accounts invite", help="create, list or revoke invites"
    )
    p.add_argument("--uses", type=positive, default=1, help="accounts it creates (default 1)")
    p.add_argument("--expires", type=duration, default="7d", help="e.g. 12h, 7d, 2w (default 7d)")
    p.add_argument("--list", action="store_true", help="the invites and their uses")
    p.add_argument("--revoke", metavar="ID", help="revoke the invite with this id")
    return parser


def positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_USES:
        raise argparse.ArgumentTypeError(f"--uses takes a number from 1 to {MAX_USES}")
    return value


def duration(raw: str) -> int:
    try:
        return registration.parse_duration(raw)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
    elif action == "registration":
        stdout.write(set_registration(config, args.mode, args.autorelay))
    elif action == "invite":
        stdout.write(invite(config, args, now()))
    else:
        stdout.write(getattr(admin, action)(args.address) + "\n")
    return 0


def describe(config: Config, settings: registration.Settings) -> str:
    modes = {
        "open": "open: anyone may create an account",
        "invite": "invite: only addresses /new handed out for an invite",
        "closed": "closed: no new accounts, existing ones work",
    }
    autorelay = "refused" if settings.refuse_autorelay else "allowed"
    lines = [
        f"registration {modes[settings.mode]}",
        f"autorelay first logins (23-character password): {autorelay}",
        f"set by {settings.source}",
    ]
    if settings.source != "chatmail.ini":
        lines[-1] += (
            f" (chatmail.ini: registration = {config.registration}, "
            f"refuse_autorelay = {str(config.refuse_autorelay).lower()})"
        )
    return "".join(line + "\n" for line in lines)


def set_registration(config: Config, mode: str | None, autorelay: bool | None) -> str:
    directory = config.registration_path
    if not directory.is_dir():
        raise AdminError(f"{directory} is missing: deploy this version with `cmdeploy run`")
    said = ""
    if mode == "reset":
        cleared = registration.clear_state(directory)
        said = "run-time setting removed: chatmail.ini decides\n" if cleared else ""
        mode = None
    if mode is not None or autorelay is not None:
        registration.write_state(directory, mode, autorelay)
    settings = registration.SettingsReader(config).current()
    registration.write_public(directory, settings)
    return said + describe(config, settings)


def when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def invite(config: Config, args: argparse.Namespace, now: float) -> str:
    store = registration.InviteStore(config.registration_path)
    if not store.invites.is_dir():
        raise AdminError(f"{store.invites} is missing: deploy this version with `cmdeploy run`")
    if args.list:
        lines = []
        for inv, used in store.all():
            state = inv.refusal(used, now) or "valid"
            lines.append(
                f"{inv.id}  {used}/{inv.uses} used  expires {when(inv.expires)}  "
                f"{state.replace('_', ' ')}"
            )
        return "".join(line + "\n" for line in lines) or "no invites\n"
    if args.revoke is not None:
        if store.revoke(args.revoke.strip()):
            return f"revoked invite {args.revoke.strip()}: it creates no more accounts\n"
        shown = "".join(ch if " " < ch <= "~" else "?" for ch in args.revoke)[:40]
        return f"no invite {shown}: nothing revoked\n"
    token, inv = store.create(args.uses, args.expires, now)
    uses = "1 account" if inv.uses == 1 else f"{inv.uses} accounts"
    lines = [f"invite {inv.id}: creates {uses}, expires {when(inv.expires)}"]
    mode = registration.SettingsReader(config).current().mode
    if mode != "invite":
        lines.append(f"note: registration is {mode}; invites matter in invite mode")
    lines.append(account_url(config, token))
    if config.tls_mode == "self":
        # Delta Chat does not trust a self-signed certificate when it fetches a DCACCOUNT URL
        lines.append(
            "self-signed relay: the app cannot fetch that URL; this one, opened in a browser, "
            f"answers with a dclogin: link: https://{config.mail_domain}/new?token={token}"
        )
    return "".join(line + "\n" for line in lines)


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
