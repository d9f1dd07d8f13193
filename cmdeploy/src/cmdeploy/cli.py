"""The `cmdeploy` command line.

`init` writes a commented `chatmail.ini` generated from the config model and tells the
operator which DNS records to create first; `run` deploys; `dns` checks the records (or
writes a zone file); `status` runs the relay's health check (doc/health.md); `accounts`
manages accounts on the relay, `registration` and `invite` who may create one
(doc/accounts.md); `backup`, `restore` and `migrate` carry a relay's data to a file and onto
another host (doc/backup.md). Every subcommand
takes `--config` (default `$CHATMAIL_INI` or `./chatmail.ini`) and `-v`. Errors are one
clear line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from chatmaild.config import Config, ConfigError, parse_mail_domain, read_config, render_ini

from .health import write_dns_expectations
from .layout import Layout
from .remote import RelayState, RemoteError, read_state

if TYPE_CHECKING:
    from .migrate import Hosts


class UsageError(Exception):
    """Something the operator can fix; printed as one line, exit code 2."""


def default_config_path() -> Path:
    return Path(os.environ.get("CHATMAIL_INI", "chatmail.ini"))


def cmd_init(args: argparse.Namespace) -> int:
    try:
        domain = parse_mail_domain(args.domain)
    except ValueError as e:
        raise UsageError(f"mail domain {args.domain!r}: expected {e}") from None
    path: Path = args.config
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists already; use --force to overwrite it")
    path.write_text(render_ini(domain), encoding="utf-8")
    print(f"wrote {path} for mail domain {domain}")
    print()
    print(first_steps(domain))
    return 0


def first_steps(domain: str) -> str:
    """What an operator must set up before `cmdeploy run` can reach and certify the host."""
    try:
        import ipaddress

        ipaddress.IPv4Address(domain)
        return (
            f"This relay has no DNS name; its addresses will be user@[{domain}] and it uses a\n"
            f"self-signed certificate. Check that `ssh root@{domain}` works, then run\n"
            "`cmdeploy run`."
        )
    except ValueError:
        pass
    return "\n".join(
        [
            "Before deploying, create these DNS records (replace the addresses with your",
            "server's):",
            "",
            f"    {domain}.          3600 IN A     <IPv4 address>",
            f"    {domain}.          3600 IN AAAA  <IPv6 address, if it has one>",
            f"    www.{domain}.      3600 IN CNAME {domain}.",
            f"    mta-sts.{domain}.  3600 IN CNAME {domain}.",
            "",
            f"Then check that `ssh root@{domain}` logs you in without a password prompt, and",
            "run `cmdeploy run`. `cmdeploy dns` lists the remaining records after the deploy.",
        ]
    )


def cmd_run(args: argparse.Namespace) -> int:
    from .run import DeployError, run_deploy

    config = read_config(args.config)
    host = args.ssh_host or config.mail_domain
    try:
        return run_deploy(
            config,
            args.config,
            host,
            dry_run=args.dry_run,
            verbose=args.verbose,
            disable_mail=args.disable_mail,
            dns_check=not args.skip_dns_check,
            website_only=args.website_only,
        )
    except DeployError as e:
        raise UsageError(str(e)) from None


def _relay_state(args: argparse.Namespace) -> tuple[Config, RelayState]:
    config = read_config(args.config)
    host = args.ssh_host or config.mail_domain
    try:
        return config, read_state(Layout(config), host)
    except RemoteError as e:
        raise UsageError(str(e)) from None


def cmd_dns(args: argparse.Namespace) -> int:
    import dns.resolver

    from . import dns as relay_dns

    config, state = _relay_state(args)
    facts = relay_dns.facts_from_state(state)
    if args.zonefile:
        now = datetime.now(UTC)
        records = relay_dns.zone_records(config, facts, now)
        args.zonefile.write_text(relay_dns.zonefile(records), encoding="utf-8")
        print(f"wrote {len(records)} records for {config.mail_domain} to {args.zonefile}")
        return 0
    code, records = relay_dns.run_dns_check(config, facts, dns.resolver.Resolver())
    # the relay's daily check compares DNS with the records just printed
    host = args.ssh_host or config.mail_domain
    try:
        write_dns_expectations(host, records)
    except RemoteError as e:
        print(f"cmdeploy: the relay's daily DNS check keeps its old records: {e}", file=sys.stderr)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    """The relay's `chatmail-health`, as text or JSON: the daily check's very report."""
    import json

    from chatmaild.health import render

    from .health import read_health

    config = read_config(args.config)
    host = args.ssh_host or config.mail_domain
    try:
        report = read_health(Layout(config), host)
    except RemoteError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report), end="")
    return 0 if report["ok"] else 1


def _accounts_tool(
    args: argparse.Namespace, tool_args: list[str]
) -> tuple[Config, subprocess.CompletedProcess[str]]:
    """`chatmail-accounts` on the relay, its output shown as this command's."""
    from .accounts import run_tool

    config = read_config(args.config)
    host = args.ssh_host or config.mail_domain
    try:
        result = run_tool(Layout(config), host, tool_args)
    except RemoteError as e:
        raise UsageError(str(e)) from None
    sys.stdout.write(result.stdout)
    # its one-line errors, in cmdeploy's words
    sys.stderr.write(re.sub(r"^(error: )?chatmail-accounts:? ", "cmdeploy: ", result.stderr))
    return config, result


def _run_accounts_tool(args: argparse.Namespace, tool_args: list[str]) -> int:
    return _accounts_tool(args, tool_args)[1].returncode


def cmd_accounts(args: argparse.Namespace) -> int:
    action = args.accounts_command
    tool_args = [action]
    if action == "list" and args.addresses:
        tool_args.append("--addresses")
    if action in ("block", "unblock", "delete"):
        tool_args.append(args.address)
    if action == "delete":
        if not args.yes:
            if not sys.stdin.isatty():
                raise UsageError("delete asks first: give --yes when there is no terminal")
            answer = input(f"Delete the account {args.address} and all its mail? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 0
        tool_args.append("--yes")
    return _run_accounts_tool(args, tool_args)


def cmd_registration(args: argparse.Namespace) -> int:
    tool_args = ["registration"]
    if args.mode:
        tool_args.append(args.mode)
    if args.autorelay is not None:
        tool_args.append("--refuse-autorelay" if args.autorelay else "--allow-autorelay")
    return _run_accounts_tool(args, tool_args)


def cmd_invite(args: argparse.Namespace) -> int:
    from .accounts import invite_from_output, write_invite_qr

    if args.list:
        return _run_accounts_tool(args, ["invite", "--list"])
    if args.revoke is not None:
        return _run_accounts_tool(args, ["invite", "--revoke", args.revoke])
    tool_args = ["invite", "--uses", str(args.uses), "--expires", args.expires]
    config, result = _accounts_tool(args, tool_args)
    invite = invite_from_output(result.stdout) if result.returncode == 0 else None
    if invite is None:
        return result.returncode or 2
    invite_id, url = invite
    if config.tls_mode == "self":
        print("no QR code: the app cannot fetch the DCACCOUNT URL from a self-signed relay")
        return 0
    qr = args.qr or Path(f"invite-{config.mail_domain}-{invite_id}.png")
    write_invite_qr(url, qr)
    print(f"QR code: {qr}")
    return 0


def default_archive(domain: str) -> Path:
    return Path(f"chatmail-backup-{domain}-{datetime.now(UTC):%Y%m%d-%H%M%S}.tar")


def cmd_backup(args: argparse.Namespace) -> int:
    """The relay's archive, streamed here over SSH and checked (doc/backup.md)."""
    from .backup import backup_to

    config = read_config(args.config)
    host = args.ssh_host or config.mail_domain
    path = args.output or default_archive(config.mail_domain)
    try:
        size = backup_to(Layout(config), host, path)
    except RemoteError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {path}: {size / 1e6:.1f} MB, manifest and checksums verified")
    return 0


def restore_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--other-domain"] if args.other_domain else []
    return flags + (["--replace-accounts"] if args.replace_accounts else [])


def cmd_restore(args: argparse.Namespace) -> int:
    """An archive onto the relay: checked here, sent over SSH, checked and applied there."""
    from .backup import check, send

    config = read_config(args.config)
    host = args.ssh_host or config.mail_domain
    if not args.archive.is_file():
        raise UsageError(f"{args.archive}: no such file")
    try:
        check(args.archive, None if args.other_domain else config.mail_domain)
        result = send(Layout(config), host, args.archive, restore_flags(args))
    except RemoteError as e:
        raise UsageError(str(e)) from None
    sys.stdout.write(result.stdout)
    return result.returncode


def migration_hosts(args: argparse.Namespace, config: Config) -> Hosts:
    """The real steps of `cmdeploy migrate` (cmdeploy.migrate.Hosts)."""
    from . import dns as relay_dns
    from .backup import backup_to, send
    from .migrate import Hosts, MigrationError
    from .remote import run_script, unreachable
    from .run import DeployError, run_deploy

    layout = Layout(config)

    def records(host: str, now: datetime) -> list[relay_dns.Record]:
        facts = relay_dns.facts_from_state(read_state(layout, host))
        return relay_dns.zone_records(config, facts, now)

    def deploy(host: str) -> None:
        try:
            code = run_deploy(config, args.config, host, dns_check=False)
        except DeployError as e:
            raise MigrationError(str(e)) from None
        if code != 0:
            raise MigrationError(f"cmdeploy run onto {host} failed")

    def run(host: str, script: str) -> str:
        # a unit's stop may take systemd's whole stop timeout (90 s) before it kills
        result = run_script(host, script, timeout=300)
        if result.returncode != 0:
            raise unreachable(host, f"`{script}` failed on {host}", result)
        return result.stdout

    def restore(host: str, path: Path) -> str:
        result = send(layout, host, path, restore_flags(args))
        if result.returncode != 0:
            raise MigrationError(f"the restore onto {host} failed (exit {result.returncode})")
        return result.stdout

    return Hosts(
        records=records,
        deploy=deploy,
        run=run,
        backup=lambda host, path: backup_to(layout, host, path),
        restore=restore,
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    """Backup, deploy and restore onto NEWHOST; the old relay stops taking mail meanwhile."""
    from .migrate import Migration, MigrationError, advice

    config = read_config(args.config)
    old = args.ssh_host or config.mail_domain
    if args.to == old:
        raise UsageError("--to names the relay's own host: migrate moves it to another")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("migrate asks first: give --yes when there is no terminal")
        answer = input(f"Stop mail on {old} and move the relay to {args.to}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done")
            return 0
    hosts = migration_hosts(args, config)
    archive = args.output or default_archive(config.mail_domain)
    try:
        changes = Migration(old, args.to, archive, hosts, sys.stdout, config.address_domain).run()
    except (MigrationError, RemoteError) as e:
        raise UsageError(str(e)) from None
    print(advice(old, args.to, changes), end="")
    return 0


def cmd_webdev(args: argparse.Namespace) -> int:
    """Build the pages into www/build, open them, rebuild on every change until Ctrl-C."""
    import threading

    from .run import WWW_SOURCE
    from .www import WebsiteError, open_browser, watch_and_rebuild

    config = read_config(args.config)
    dest = WWW_SOURCE.parent / "build"
    opened = threading.Event()

    def built(paths: list[Path]) -> None:
        print(f"built {len(paths)} files into {dest}", flush=True)
        if not opened.is_set():
            opened.set()
            if not open_browser(dest / "index.html"):
                print(f"no display here: open {dest / 'index.html'} in a browser", flush=True)

    def failed(error: WebsiteError) -> None:
        print(f"cmdeploy webdev: {error}", file=sys.stderr, flush=True)

    try:
        watch_and_rebuild(config, WWW_SOURCE, dest, on_build=built, on_error=failed)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    import json

    from . import lab

    try:
        if args.lab_command == "up":
            releases = lab.releases_of(args.debian, args.relays) if args.debian else None
            state = lab.up(args.relays, deploy=not args.no_deploy, debian=releases)
            for relay in lab.status(state)["relays"]:  # type: ignore[attr-defined]
                print(
                    f"{relay['domain']}: https://{relay['ip']}/ (in the lab: "
                    f"`cmdeploy lab exec -- curl -k https://{relay['domain']}/`), "
                    f"ssh: `cmdeploy lab shell {relay['domain']}`"
                )
            return 0
        if args.lab_command == "down":
            lab.down()
            return 0
        state = lab.State.load()
        if not state.relays:
            raise UsageError("the lab is not up: run `cmdeploy lab up` first")
        if args.lab_command == "status":
            info = lab.status(state)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                for relay in info["relays"]:  # type: ignore[attr-defined]
                    print(
                        f"{relay['domain']:<16} {relay['ip']:<14} Debian {relay['debian']:<3}"
                        f" {relay['config']}"
                    )
                print(
                    f"dns {info['dns']}, client namespace {info['client_netns']}, "
                    f"push fake {info['push_fake']}"
                )
            return 0
        if args.lab_command == "exec":
            command = [c for c in args.command if c != "--"]
            netns = lab.CLIENT_NETNS
            # the operator's seat: `cmdeploy status --config ...` reaches the relays over SSH
            env = {**os.environ, **lab.ssh_env()}
            argv = ["ip", "netns", "exec", netns, *command]
            return subprocess.run(argv, env=env, check=False).returncode
        relay = next((r for r in state.relays if args.host in (r.name, r.domain, r.ip)), None)
        if relay is None:
            raise UsageError(f"no lab relay named {args.host!r}")
        env = lab.ssh_env()
        ssh = [
            "ssh",
            "-i",
            env["CMDEPLOY_SSH_KEY"],
            "-o",
            f"UserKnownHostsFile={env['CMDEPLOY_SSH_KNOWN_HOSTS']}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            f"root@{relay.ip}",
        ]
        return subprocess.run(ssh, check=False).returncode
    except (lab.LabError, lab.hosts.HostError, lab.net.NetError, lab.services.ServiceError) as e:
        raise UsageError(str(e)) from None


def cmd_test(args: argparse.Namespace) -> int:
    """The online suite: against the lab's relays when the lab is up, else the configured one."""
    from . import lab
    from .online import run_online_tests

    state = lab.State.load() if (lab.LAB / "state.json").exists() else None
    if state and state.relays and not args.ssh_host:
        status = lab.status(state)
    else:
        config = read_config(args.config)
        host = args.ssh_host or config.mail_domain
        status = {
            "relays": [
                {
                    "domain": config.mail_domain,
                    "ip": host,
                    "ssh": f"root@{host}",
                    "config": str(args.config.resolve()),
                }
            ],
            "client_netns": None,
        }
    pytest_args = [a for a in args.pytest_args if a != "--"]
    return run_online_tests(status, pytest_args)


def cmd_bench(args: argparse.Namespace) -> int:
    """Throughput, latency and capacity of the lab relays beside a bare baseline (issue 7)."""
    from .bench import command
    from .bench.hosts import BenchError

    try:
        return command.run(args)
    except BenchError as e:
        raise UsageError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmdeploy", description="Set up and check a chatmail relay."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=default_config_path(),
        help="path of chatmail.ini (default: $CHATMAIL_INI or ./chatmail.ini)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="say more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[common], help="write a new chatmail.ini")
    p.add_argument("domain", help="the relay's mail domain, e.g. chat.example.org")
    p.add_argument("--force", action="store_true", help="overwrite an existing config")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", parents=[common], help="deploy the relay onto its server")
    p.add_argument("--ssh-host", help="host to deploy to (default: mail_domain; @local: here)")
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    p.add_argument("--disable-mail", action="store_true", help="install, but stop mail services")
    p.add_argument(
        "--skip-dns-check", action="store_true", help="deploy although DNS does not look ready"
    )
    p.add_argument("--website-only", action="store_true", help="upload the web pages, nothing else")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("dns", parents=[common], help="check the DNS records, or write a zone")
    p.add_argument("--ssh-host", help="relay to read the DKIM key from (default: mail_domain)")
    p.add_argument("--zonefile", type=Path, help="write the records as a zone file instead")
    p.set_defaults(func=cmd_dns)

    p = sub.add_parser("status", parents=[common], help="the relay's health check, as it runs")
    p.add_argument("--ssh-host", help="relay to ask (default: mail_domain)")
    p.add_argument("--json", action="store_true", help="machine-readable, for monitoring")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("accounts", parents=[common], help="count, list, block or delete accounts")
    p.add_argument("--ssh-host", help="relay to ask (default: mail_domain)")
    accsub = p.add_subparsers(dest="accounts_command", required=True, metavar="ACTION")
    accsub.add_parser("count", help="the number of accounts")
    ls = accsub.add_parser("list", help="account count and last-login histogram")
    ls.add_argument("--addresses", action="store_true", help="also print every address")
    for name, what in (
        ("block", "no login, no incoming mail (refused permanently), data kept"),
        ("unblock", "let a blocked account log in and receive mail again"),
        ("delete", "delete the account and all its mail (asks first)"),
    ):
        action = accsub.add_parser(name, help=what)
        action.add_argument("address")
        if name == "delete":
            action.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    p.set_defaults(func=cmd_accounts)

    p = sub.add_parser("registration", parents=[common], help="show or set who may register")
    p.add_argument("--ssh-host", help="relay to ask (default: mail_domain)")
    p.add_argument(
        "mode",
        nargs="?",
        choices=("open", "invite", "closed", "reset"),
        help="open, invite, closed; reset: back to chatmail.ini's setting",
    )
    autorelay = p.add_mutually_exclusive_group()
    autorelay.add_argument(
        "--refuse-autorelay",
        dest="autorelay",
        action="store_const",
        const=True,
        help="refuse first logins with a 23-character password (autorelay), in any mode",
    )
    autorelay.add_argument("--allow-autorelay", dest="autorelay", action="store_const", const=False)
    p.set_defaults(func=cmd_registration)

    p = sub.add_parser("invite", parents=[common], help="create, list or revoke invites")
    p.add_argument("--ssh-host", help="relay to ask (default: mail_domain)")
    p.add_argument("--uses", type=int, default=1, help="accounts it creates (default 1)")
    p.add_argument("--expires", default="7d", help="lifetime: 12h, 7d, 2w... (default 7d)")
    p.add_argument("--qr", type=Path, help="where to write the QR code PNG")
    p.add_argument("--list", action="store_true", help="the invites and their uses")
    p.add_argument("--revoke", metavar="ID", help="revoke the invite with this id")
    p.set_defaults(func=cmd_invite)

    p = sub.add_parser("backup", parents=[common], help="the relay's data as one archive file")
    p.add_argument("--ssh-host", help="relay to back up (default: mail_domain)")
    p.add_argument("--output", type=Path, help="archive to write (default: dated name here)")
    p.set_defaults(func=cmd_backup)

    restore_options = argparse.ArgumentParser(add_help=False)
    restore_options.add_argument(
        "--other-domain",
        action="store_true",
        help="restore an archive of another mail domain (keeps the DKIM key, certificate)",
    )
    restore_options.add_argument(
        "--replace-accounts",
        action="store_true",
        help="replace accounts that exist on the relay with another password",
    )
    p = sub.add_parser(
        "restore", parents=[common, restore_options], help="put an archive onto a relay"
    )
    p.add_argument("archive", type=Path, help="file written by `cmdeploy backup`")
    p.add_argument("--ssh-host", help="relay to restore onto (default: mail_domain)")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser(
        "migrate", parents=[common, restore_options], help="move the relay to another host"
    )
    p.add_argument("--to", required=True, metavar="NEWHOST", help="the host to move to")
    p.add_argument("--ssh-host", help="the relay's current host (default: mail_domain)")
    p.add_argument("--output", type=Path, help="where to keep the archive")
    p.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("webdev", parents=[common], help="build the web pages, rebuild on change")
    p.set_defaults(func=cmd_webdev)

    p = sub.add_parser("test", parents=[common], help="the online test suite against relays")
    p.add_argument("--ssh-host", help="test this relay instead of the lab's")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: passed on to pytest")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("bench", parents=[common], help="throughput, latency, capacity vs bare")
    from .bench.command import add_arguments as add_bench_arguments

    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("lab", parents=[common], help="relays in local Debian hosts, for tests")
    labsub = p.add_subparsers(dest="lab_command", required=True, metavar="LAB_COMMAND")
    up = labsub.add_parser("up", help="create the lab and deploy its relays")
    up.add_argument("--relays", type=int, default=2, help="number of relays (default 2)")
    up.add_argument("--no-deploy", action="store_true", help="boot the hosts, do not deploy")
    up.add_argument(
        "--debian",
        metavar="RELEASES",
        help="the relays' Debian: 12 (default) or 13, or one per relay in order, e.g. 12,13",
    )
    st = labsub.add_parser("status", help="what the lab holds")
    st.add_argument("--json", action="store_true", help="machine-readable")
    ex = labsub.add_parser("exec", help="run a command in the lab's client namespace")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    sh = labsub.add_parser("shell", help="a root shell on a lab relay")
    sh.add_argument("host", help="relay name, domain or address")
    labsub.add_parser("down", help="remove everything the lab created")
    p.set_defaults(func=cmd_lab)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UsageError, ConfigError) as e:
        print(f"cmdeploy: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"cmdeploy: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
