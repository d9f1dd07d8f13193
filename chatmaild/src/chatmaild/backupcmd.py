"""chatmail-backup: a relay's backup archive, written to stdout or read from stdin (doc/backup.md).

Usage: chatmail-backup INI create [--dkim-dir DIR] > ARCHIVE
       chatmail-backup INI verify < ARCHIVE
       chatmail-backup INI restore [--dkim-dir DIR] [--coturn-conf FILE] [--other-domain]
                                   [--replace-accounts] [--no-services] < ARCHIVE

Run as root on the relay, by `cmdeploy backup`, `restore` and `migrate` over SSH. Progress
goes to stderr every few seconds (files and bytes so far), the outcome to stdout (restore)
or stderr (create): counts only, never an address. A refused archive is one line on stderr
and exit 1, with nothing changed; bad usage exit 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from . import backupformat as fmt
from .backup import Backup
from .backupread import Discard, read_archive
from .quota_expire import OneLineArgumentParser
from .restore import NoUnits, Restore, Systemd
from .service import load_config_or_exit

EXIT_REFUSED = 1
DKIM_DIR = Path("/etc/dkimkeys")  # cmdeploy's Layout.dkim_key lives here
COTURN_CONF = Path("/etc/turnserver.conf")
PROGRESS_EVERY = 2.0  # seconds


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="chatmail-backup", description=__doc__.splitlines()[0])
    parser.add_argument("ini", type=Path, help="path of chatmail.ini")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, what in (
        ("create", "write the archive to stdout"),
        ("verify", "check an archive from stdin, change nothing"),
        ("restore", "check an archive from stdin, then put it in place"),
    ):
        p = sub.add_parser(name, prog=f"chatmail-backup {name}", help=what)
        p.add_argument("--dkim-dir", type=Path, default=DKIM_DIR, help=f"default {DKIM_DIR}")
        if name != "restore":
            continue
        p.add_argument("--coturn-conf", type=Path, default=COTURN_CONF)
        p.add_argument(
            "--other-domain",
            action="store_true",
            help="restore an archive of another domain (keeps this relay's DKIM key, certificate)",
        )
        p.add_argument(
            "--replace-accounts",
            action="store_true",
            help="replace accounts that exist here with another password",
        )
        p.add_argument(
            "--no-services", action="store_true", help="stop, start or restart no service"
        )
    return parser


class ProgressLine:
    """`<what>: N files, X MB` on stderr, at most every PROGRESS_EVERY seconds."""

    def __init__(self, what: str, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.out = out
        self.clock = clock
        self.last = clock()

    def __call__(self, files: int, size: int) -> None:
        now = self.clock()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            self.out.write(f"{self.what}: {files} files, {megabytes(size)} so far\n")
            self.out.flush()


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def redact(text: str) -> str:
    """An error's text without addresses (a file name may hold one)."""
    return re.sub(r"[^\s/'\"]*@[^\s/'\"]*", "<account>", text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config_or_exit(args.ini)
    paths = fmt.RelayPaths.from_config(config, args.ini, args.dkim_dir)
    try:
        if args.action == "create":
            if sys.stdout.isatty():
                print("chatmail-backup: stdout is a terminal: redirect it", file=sys.stderr)
                return 2
            backup = Backup(paths, config.address_domain, config.mail_domain)
            progress = ProgressLine("backup", sys.stderr)
            counts = backup.write(sys.stdout.buffer, time.time(), progress)
            sys.stdout.flush()
            expunged = f" ({counts.expunged} expunged while reading)" if counts.expunged else ""
            if counts.changed:  # only a file written in place can shrink; none should be
                expunged += f" ({counts.changed} shrank while read: padded with NUL)"
            if counts.symlinks:  # the relay makes none: someone put them there
                expunged += (
                    f" ({counts.symlinks} symlinks skipped, never followed: "
                    f"`find {config.mailboxes_path} {config.registration_path} -type l` "
                    "shows them)"
                )
            print(
                f"backup: {counts.accounts} accounts, {counts.messages} messages{expunged}, "
                f"{counts.files} files, {megabytes(counts.bytes)}",
                file=sys.stderr,
            )
            return 0
        if args.action == "verify":
            progress = ProgressLine("verify", sys.stderr)
            header = read_archive(sys.stdin.buffer, Discard(), None, progress)
            created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(header.created))
            print(f"verified: an intact backup of {header.domain}, made {created}")
            return 0
        restore = Restore(
            paths,
            config.mail_domain,
            NoUnits() if args.no_services else Systemd(),
            coturn_conf=args.coturn_conf,
            other_domain=args.other_domain,
            replace_accounts=args.replace_accounts,
        )
        report = restore.run(sys.stdin.buffer, ProgressLine("restore", sys.stderr))
        sys.stdout.write(report.render())
        return 1 if report.failed else 0
    except fmt.ArchiveError as e:
        print(f"chatmail-backup: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as e:
        print(f"chatmail-backup: {redact(str(e))}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
