"""chatmail-health: everything an operator checks by hand, in one run (doc/health.md).

Reads on the relay what the checks in `chatmaild.health` judge: systemd units, TCP listeners,
the certificate, DNS through the relay's own resolver, Postfix's queue, the mailboxes
filesystem, the last expiry run, the push backlog, who may create an account. What to expect
comes from the files the deploy writes: `/etc/chatmail/health.json` (units, ports,
certificate; written by every `cmdeploy run`) and `/etc/chatmail/health-dns.json` (the
zone's records; written by `cmdeploy run`'s closing step and by `cmdeploy dns`, which know
the DKIM key and addresses).

Prints the report (`--json`: one JSON object), logs each problem and warning as one line to
stderr (the journal, under the daily timer; no address in any), and exits 1 when there is a
problem. Nothing is mailed: mail to the admin would leave in cleartext, which the relay
refuses.

Usage: chatmail-health INI [--json] [--expected FILE] [--expected-dns FILE] [--nameserver IP]
                      [--nocreate-file PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver

from . import exporter, health, pushqueue, registration
from .config import Config
from .doveauth import DEFAULT_NOCREATE_FILE
from .service import load_config_or_exit, setup_logging

log = logging.getLogger("chatmail-health")

EXPECTED = Path("/etc/chatmail/health.json")
EXPECTED_DNS = Path("/etc/chatmail/health-dns.json")
VERSION_FILE = Path("/etc/chatmail-version")
EXPIRE_UNIT = "chatmail-expire"
COMMAND_TIMEOUT = 30.0
DNS_TIMEOUT = 5.0

Runner = Callable[[list[str]], "tuple[int, str] | None"]


def run(argv: list[str]) -> tuple[int, str] | None:
    """(exit status, stdout), or None when the command could not be run at all."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.returncode, done.stdout


def stdout_if_ok(result: tuple[int, str] | None) -> str | None:
    return result[1] if result is not None and result[0] == 0 else None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- readings ---------------------------------------------------------------------------------


def relay_facts(config: Config, runner: Runner) -> dict[str, Any]:
    addresses = []
    for family, keyword in (("-4", "inet"), ("-6", "inet6")):
        output = stdout_if_ok(runner(["ip", "-o", family, "addr", "show", "scope", "global"]))
        for line in (output or "").splitlines():
            fields = line.split()
            if keyword in fields and fields.index(keyword) + 1 < len(fields):
                addresses.append(fields[fields.index(keyword) + 1].split("/")[0])
    try:
        version = VERSION_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        version = ""
    return {"domain": config.mail_domain, "version": version, "addresses": addresses}


def certificate(path: str, tls_mode: str, runner: Runner, now: float) -> health.Section:
    not_after = exporter.certificate_expiry(Path(path), lambda argv: stdout_if_ok(runner(argv)))
    placeholder = False
    if tls_mode == "acme" and not_after is not None:
        # certbot's certificate names a CA as issuer; the placeholder names itself
        output = stdout_if_ok(
            runner(["openssl", "x509", "-noout", "-issuer", "-subject", "-in", path])
        )
        names = dict(line.partition("=")[::2] for line in (output or "").splitlines())
        placeholder = bool(names.get("issuer")) and names.get("issuer") == names.get("subject")
    return health.check_certificate(path, not_after, now, placeholder)


def make_lookup(nameserver: str | None, port: int = 53) -> health.Lookup:
    """Lookups through the relay's resolver (its unbound, per /etc/resolv.conf), or the one
    named; NXDOMAIN and an empty answer are "no record", anything else a failure."""
    if nameserver:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [nameserver]
        resolver.port = port
    else:
        resolver = dns.resolver.Resolver()

    def lookup(name: str, rdtype: str) -> list[Any]:
        try:
            answer = resolver.resolve(name, rdtype, raise_on_no_answer=False, lifetime=DNS_TIMEOUT)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.Timeout:
            raise health.LookupFailed(f"no answer within {DNS_TIMEOUT:g} s") from None
        except dns.exception.DNSException as e:
            raise health.LookupFailed(type(e).__name__) from None
        return list(answer.rrset) if answer.rrset is not None else []

    return lookup


def disk_use(path: Path) -> health.DiskUse | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return health.DiskUse(st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree)


def push_backlog(mailboxes: Path) -> tuple[int | None, float | None]:
    """Items in the push spool and the oldest one's mtime; temporary files (`.x.tmp`) are
    items being written, not waiting ones."""
    spool = mailboxes / pushqueue.SPOOL_DIR
    try:
        entries = [e for e in os.scandir(spool) if not e.name.startswith(".")]
    except FileNotFoundError:
        return 0, None  # nothing was ever queued
    except OSError:
        return None, None
    mtimes = []
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):  # delivered in the meantime
            mtimes.append(entry.stat().st_mtime)
    return len(mtimes), min(mtimes, default=None)


def expiry(runner: Runner, now: float) -> health.Section:
    def show(unit: str, *props: str) -> dict[str, str]:
        argv = ["systemctl", "show", unit, "--timestamp=unix"]
        for prop in props:
            argv += ["-p", prop]
        return health.systemd_properties(stdout_if_ok(runner(argv)) or "")

    service = show(f"{EXPIRE_UNIT}.service", "Result")
    timer = show(f"{EXPIRE_UNIT}.timer", "LastTriggerUSec", "ActiveEnterTimestamp")
    return health.check_expiry(service, timer, now)


def gather(
    config: Config,
    expected: dict[str, Any] | None,
    expected_dns: dict[str, Any] | None,
    runner: Runner,
    lookup: health.Lookup,
    now: float,
    nocreate_file: Path = DEFAULT_NOCREATE_FILE,
) -> dict[str, Any]:
    sections: dict[str, health.Section] = {}
    if expected is None:
        # nothing to compare units, ports and certificate with: one problem says why
        sections["units"] = health.Section(problems=[f"no {EXPECTED}: run `cmdeploy run`"])
        sections["listeners"] = sections["certificate"] = health.Section()
    else:
        units = [str(u) for u in expected.get("units", [])]
        active = runner(["systemctl", "is-active", *units]) if units else None
        sections["units"] = health.check_units(units, active[1] if active else "")
        listeners = stdout_if_ok(runner(["ss", "-Hltn"]))
        sections["listeners"] = health.check_listeners(expected.get("ports", []), listeners)
        cert = str(expected.get("certificate", ""))
        sections["certificate"] = certificate(cert, config.tls_mode, runner, now)
    records = None if expected_dns is None else list(expected_dns.get("records", []))
    sections["dns"] = health.check_dns(records, lookup)
    sections["queue"] = health.check_queue(stdout_if_ok(runner(["postqueue", "-j"])), now)
    mailboxes = Path(config.mailboxes_path)
    sections["disk"] = health.check_disk(str(mailboxes), disk_use(mailboxes))
    sections["expiry"] = expiry(runner, now)
    sections["push"] = health.check_push(*push_backlog(mailboxes), now)
    settings = registration.SettingsReader(config).current()
    sections["registration"] = health.check_registration(
        settings.mode, settings.refuse_autorelay, settings.source, nocreate_file.exists()
    )
    return health.assemble(relay_facts(config, runner), sections)


# --- the command ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatmail-health", description=__doc__.splitlines()[0])
    parser.add_argument("ini", type=Path, help="path of chatmail.ini")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.add_argument("--expected", type=Path, default=EXPECTED, help=f"default {EXPECTED}")
    parser.add_argument(
        "--expected-dns", type=Path, default=EXPECTED_DNS, help=f"default {EXPECTED_DNS}"
    )
    parser.add_argument(
        "--nameserver",
        metavar="IP",
        help="ask this DNS resolver instead of the system's (/etc/resolv.conf)",
    )
    parser.add_argument("--nameserver-port", type=int, default=53, help="its port (default 53)")
    parser.add_argument(
        "--nocreate-file",
        type=Path,
        default=DEFAULT_NOCREATE_FILE,
        help=f"the emergency switch doveauth obeys (default {DEFAULT_NOCREATE_FILE})",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    config = load_config_or_exit(args.ini)
    report = gather(
        config,
        read_json(args.expected),
        read_json(args.expected_dns),
        run,
        make_lookup(args.nameserver, args.nameserver_port),
        time.time(),
        args.nocreate_file,
    )
    # the journal gets one line per finding; the texts hold no address (chatmaild.health)
    for item in report["problems"]:
        log.error("%s: %s", item["section"], item["text"])
    for item in report["warnings"]:
        log.warning("%s: %s", item["section"], item["text"])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(health.render(report), end="")
    sys.stdout.flush()
    raise SystemExit(0 if report["ok"] else 1)
