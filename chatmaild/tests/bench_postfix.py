"""Benchmark of Postfix's CPU per message on the relay's port-25 path, per Postfix process.

Run as root: `scripts/bench-postfix [--messages N] [--runs R] [--clients C] [--variant V ...]`.
Issue #13 found the relay's Postfix spending about twice the CPU of a bare Postfix -> Dovecot
host per delivered message. The relay passes each message through Postfix twice: the port-25
smtpd hands the live dialogue to `filtermail incoming` (`smtpd_proxy_filter`), which re-injects
what it accepts into a second smtpd (the `reinject_incoming` listener), and only that one
writes the queue file (cleanup -> qmgr -> lmtp -> Dovecot). This measures where that CPU goes.

For each variant and round it starts a fresh instance of chatmaild/tests/postfix_harness.py
(the relay's rendered main.cf and master.cf, the real `filtermail incoming`, the private
Dovecot of dovecot_harness.py), changed by the variant with `postconf` before Postfix starts;
creates a few accounts, warms up, then sends N small valid PGP/MIME messages (about 2 KB,
the shape of bench_filtermail.py's) from C concurrent SMTP clients, one message per
connection with STARTTLS from 127.0.0.2 (a stranger, like a peer), one recipient each, round
robin over the accounts, and waits until Postfix has logged every one `status=sent` and its
queue is empty. Anything bounced or deferred fails the run.

CPU is read from /proc (utime + stime, as `cmdeploy bench` profiles a lab host, see
doc/performance.md) before and after the N messages, for every descendant of Postfix's master
by process name (the smtpd of port 25 and the re-injection smtpd apart, told by master.cf's
`-n` service name), for filtermail, and for Dovecot (all processes under its master plus its
master's cutime + cstime) and the chatmaild services Dovecot asks. A process alive at both
reads counts its difference, one born in between its whole time.

Attribution of reaped children: Postfix's master restarts a daemon after `max_use` (100)
clients and after `max_idle` (100 s) without one; a child that exits is only visible, without
a name, in the master's cutime + cstime. So that each process keeps its name, every variant
here sets `max_use = 100000` and `max_idle = 3600s` in main.cf, for the measurement only;
the `maxuse-100` variant keeps the template's defaults and shows what the restarts cost on top
(its CPU of exited children is in the `reaped` row). Compare totals, not only rows: with
restarts, the lab's `master` row is mostly reaped smtpd and cleanup processes.

`postlogd` writes the harness's log file (the relay logs to syslog and chatmail-postlog
instead): it is shown, and left out of the Postfix total.

Rounds run the variants one after another (paired rounds, in an order rotated from round
to round), each in a fresh instance, so a drift of the machine's load touches all alike; the
table shows the median and range over the rounds, and for the totals each variant's median
difference to `relay` within a round. Other load on the machine inflates every process's CPU
time: `postfix/filtermail` and `postfix/dovecot` divide Postfix's total by the CPU of a
process whose work the variant does not change, and move less. Loopback only; every wait has
a deadline.
"""

from __future__ import annotations

import argparse
import functools
import imaplib
import json
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_filtermail import pgp_message
from dovecot_harness import Relay, can_connect_tcp, free_port, running_relay, wait_for
from postfix_harness import (
    FILTERMAIL,
    LISTEN_ADDRESS,
    PEER_ADDRESS,
    PostfixRelay,
    running_postfix,
    unverified_tls,
)
from proctable import TICK, cmdline, descends, process_table

SENDER = "x@[192.0.2.1]"  # an IP-literal domain: the gate's DKIM check does not apply
PASSWORD = "bench-postfix-password"
ATTRIBUTION = {"max_use": "100000", "max_idle": "3600s"}
MILTER = Path(__file__).parent / "bench_milter.py"
MILTER_STAGES = ("connect", "helo", "mail", "rcpt", "data", "end_of_header", "end_of_data")
SETTLE_TIMEOUT = 300.0


@dataclass
class Variant:
    name: str
    doc: str
    # main.cf settings, and master.cf -o settings as {service role: {parameter: value}};
    # a role is "smtp" (the port-25 listener), "reinject" (reinject_incoming), "cleanup" or
    # "lmtp"; value None removes the -o
    main: dict[str, str] = field(default_factory=dict)
    services: dict[str, dict[str, str | None]] = field(default_factory=dict)
    attribution: bool = True
    milter: str | None = None  # bench_milter.py beside Postfix, as smtpd_milters: "unix", "tcp"


VARIANTS = {
    v.name: v
    for v in [
        Variant("relay", "the relay as configured"),
        Variant(
            "one-pass",
            "the port-25 smtpd without smtpd_proxy_filter: straight to cleanup, no gate",
            services={"smtp": {"smtpd_proxy_filter": None}},
        ),
        Variant(
            "milter",
            "the port-25 smtpd without smtpd_proxy_filter, with the gate as a milter on a UNIX"
            " socket (bench_milter.py: chatmaild.milter and the incoming checks, no DKIM check)",
            services={"smtp": {"smtpd_proxy_filter": None}},
            milter="unix",
        ),
        Variant(
            "milter-tcp",
            "as milter, on a loopback TCP port instead of a UNIX socket",
            services={"smtp": {"smtpd_proxy_filter": None}},
            milter="tcp",
        ),
        Variant(
            "as-deployed",
            "the templates' own max_use and max_idle (restarts counted as reaped)",
            attribution=False,
        ),
        Variant(
            "maxuse-100",
            "Postfix's default max_use = 100 everywhere (restarts counted as reaped)",
            main={"max_use": "100"},
            attribution=False,
        ),
        Variant(
            "maxuse-1000",
            "max_use = 1000 everywhere (restarts counted as reaped)",
            main={"max_use": "1000"},
            attribution=False,
        ),
        Variant(
            "maxuse-1000-not-tls",
            "max_use = 1000, but 100 on the port-25 smtpd (restarts counted as reaped)",
            main={"max_use": "1000"},
            services={"smtp": {"max_use": "100"}},
            attribution=False,
        ),
        *(
            Variant(
                f"restart-each-{role}",
                f"max_use = 1 on {role}: a new process per connection, so the figure less"
                " `relay`'s is that daemon's start-up cost; divided by max_use (100) it is what"
                " the restarts cost per connection on a relay",
                services={role: {"max_use": "1"}},
            )
            for role in ("smtp", "cleanup", "lmtp")
        ),
        Variant(
            "ri-no-addrmap",
            "reinject_incoming: receive_override_options=no_address_mappings",
            services={"reinject": {"receive_override_options": "no_address_mappings"}},
        ),
        Variant(
            "ri-no-unknown-rcpt",
            "reinject_incoming: receive_override_options=no_unknown_recipient_checks",
            services={"reinject": {"receive_override_options": "no_unknown_recipient_checks"}},
        ),
        Variant(
            "ri-no-hdr-rewrite",
            "reinject_incoming: local_header_rewrite_clients= (CHANGES headers without domain)",
            services={"reinject": {"local_header_rewrite_clients": ""}},
        ),
        Variant(
            "lmtp-cache",
            "lmtp_connection_cache_destinations = static:all: LMTP connections always reused",
            # matched against the socket's path without "unix:"; a pattern that starts with
            # "/" would name a file of patterns, so here every LMTP destination matches (the
            # harness has no other: filtermail-transport is removed)
            main={"lmtp_connection_cache_destinations": "static:all"},
        ),
        Variant(
            "no-lmtp-header-checks",
            "lmtp_header_checks = (empty): the LMTP client streams the message as queued "
            "(CHANGES what is stored: Received, DKIM-Signature and Subject stay)",
            main={"lmtp_header_checks": ""},
        ),
        Variant(
            "lmtp-nocache",
            "lmtp_connection_cache_on_demand = no: one LMTP connection per delivery",
            main={"lmtp_connection_cache_on_demand": "no"},
        ),
    ]
}


# the variants run without --variant; the others on request
DEFAULT_VARIANTS = [
    "relay",
    "one-pass",
    "as-deployed",
    "maxuse-100",
    "ri-no-addrmap",
    "ri-no-hdr-rewrite",
    "lmtp-cache",
]


def adapter(
    variant: Variant, milter: MilterProcess | None = None
) -> Callable[[PostfixRelay], None]:
    def adapt(postfix: PostfixRelay) -> None:
        main = dict(ATTRIBUTION) if variant.attribution else {}
        main.update(variant.main)
        if milter is not None:
            milter.start(postfix.ini)
            # on the port-25 listener only, as doc/milter.md §3 sets it: no macros, which the
            # milter does not read, and a temporary error when it does not answer
            postfix.postconf("-P", f"{postfix.smtp_service}/smtpd_milters={milter.address}")
            main.update({f"milter_{stage}_macros": "" for stage in MILTER_STAGES})
            main.update(milter_default_action="tempfail", milter_protocol="6")
        if main:
            postfix.postconf("-e", *(f"{k}={v}" for k, v in main.items()))
        names = {
            "smtp": postfix.smtp_service,
            "reinject": f"{LISTEN_ADDRESS}:{postfix.reinject_port}/inet",
            "cleanup": "cleanup/unix",
            "lmtp": "lmtp/unix",
        }
        for role, params in variant.services.items():
            for param, value in params.items():
                key = f"{names[role]}/{param}"
                if value is None:
                    postfix.postconf("-PX", key)
                else:
                    postfix.postconf("-P", f"{key}={value}")

    return adapt


def create_accounts(relay: Relay, domain: str, count: int) -> list[str]:
    accounts = [f"bench{i:04d}@{domain}" for i in range(count)]
    for addr in accounts:
        conn = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)
        conn.login(addr, PASSWORD)  # the first login creates the account
        conn.logout()
    return accounts


def message(template: bytes, rcpt: str, n: int) -> bytes:
    return template.replace(b"From: alice@example.org", f"From: {SENDER}".encode()).replace(
        b"To: bob@example.org",
        f"To: {rcpt}\r\nMessage-ID: <bench{n}@bench.test>\r\n"
        "Date: Thu, 01 Jan 2026 12:00:00 +0000".encode(),
    )


def send(postfix: PostfixRelay, accounts: list[str], first: int, count: int, options) -> None:
    """`count` messages over `options.clients` concurrent peers, one per connection."""
    template = pgp_message(options.size)
    lock = threading.Lock()
    todo = iter(range(first, first + count))
    errors: list[str] = []

    def client() -> None:
        while not errors:
            with lock:
                n = next(todo, None)
            if n is None:
                return
            rcpt = accounts[n % len(accounts)]
            try:
                with smtplib.SMTP(
                    LISTEN_ADDRESS,
                    postfix.smtp_port,
                    timeout=60,
                    source_address=(PEER_ADDRESS, 0),
                ) as smtp:
                    smtp.ehlo("peer.example")
                    smtp.starttls(context=unverified_tls())
                    smtp.ehlo("peer.example")
                    refused = smtp.sendmail(SENDER, [rcpt], message(template, rcpt, n))
                if refused:
                    errors.append(str(refused))
            except (OSError, smtplib.SMTPException) as e:
                errors.append(f"message {n}: {e!r}")

    threads = [threading.Thread(target=client) for _ in range(options.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"sending failed: {errors[:3]}")


def wait_delivered(postfix: PostfixRelay, total: int) -> None:
    def done() -> bool:
        log = postfix.log()
        if " status=bounced " in log or " status=deferred " in log:
            bad = [x for x in log.splitlines() if "status=bounced" in x or "status=deferred" in x]
            raise RuntimeError(f"not delivered: {bad[:3]}")
        return log.count(" status=sent ") >= total and not postfix.moving_queue_files()

    wait_for(done, SETTLE_TIMEOUT, f"{total} deliveries")


@dataclass
class Snapshot:
    # pid: (row name, utime + stime)
    postfix: dict[int, tuple[str, int]] = field(default_factory=dict)
    master_own: int = 0
    master_reaped: int = 0
    others: dict[str, int] = field(default_factory=dict)  # filtermail, dovecot, services


def snapshot(postfix: PostfixRelay, relay: Relay) -> Snapshot:
    table = process_table()
    pf_master = int((postfix.queue_dir / "pid" / "master.pid").read_text().split()[0])
    dc_master = int((relay.base / "run" / "master.pid").read_text())
    smtpd_rows = {
        postfix.smtp_service.split("/")[0]: "smtpd port 25",
        f"{LISTEN_ADDRESS}:{postfix.reinject_port}": "smtpd reinject",
    }
    snap = Snapshot(others={"filtermail": 0, "milter": 0, "dovecot": 0, "chatmaild services": 0})
    lib = str(relay.base)
    for pid, stat in table.items():
        if pid == pf_master:
            snap.master_own, snap.master_reaped = stat.own, stat.reaped
        elif descends(table, pid, pf_master):
            name = stat.name
            if name == "smtpd":
                args = cmdline(pid)
                service = args[args.index("-n") + 1] if "-n" in args else "?"
                name = smtpd_rows.get(service, f"smtpd {service}")
            snap.postfix[pid] = (name, stat.own)
        elif pid == dc_master:
            snap.others["dovecot"] += stat.own + stat.reaped
        elif descends(table, pid, dc_master):
            snap.others["dovecot"] += stat.own
        else:
            args = cmdline(pid)
            if str(FILTERMAIL) in args and str(postfix.ini) in args:
                snap.others["filtermail"] += stat.own + stat.reaped
            elif str(MILTER) in args:
                snap.others["milter"] += stat.own + stat.reaped
            elif any(lib in a for a in args) and "chatmaild" in " ".join(args):
                snap.others["chatmaild services"] += stat.own + stat.reaped
    return snap


@dataclass
class Result:
    ms: dict[str, float]  # row: CPU ms per message
    started: dict[str, int]  # row: processes started during the measurement
    lmtp_connections: int
    wall_s: float
    messages: int


def difference(before: Snapshot, after: Snapshot, messages: int) -> tuple[dict, dict]:
    per = 1000 / TICK / messages
    ms: dict[str, float] = {}
    started: dict[str, int] = {}
    for pid, (name, cpu) in after.postfix.items():
        old = before.postfix.get(pid)
        ms[name] = ms.get(name, 0.0) + (cpu - (old[1] if old else 0)) * per
        if old is None:
            started[name] = started.get(name, 0) + 1
    # what the processes that exited used after `before`: in the master's cutime + cstime
    exited_before = sum(cpu for pid, (_, cpu) in before.postfix.items() if pid not in after.postfix)
    ms["master"] = (after.master_own - before.master_own) * per
    ms["reaped"] = (after.master_reaped - before.master_reaped - exited_before) * per
    ms["POSTFIX TOTAL"] = sum(v for k, v in ms.items() if k != "postlogd")
    for name, cpu in after.others.items():
        ms[name] = (cpu - before.others.get(name, 0)) * per
    return ms, started


def wait_lmtp_sessions_ended(relay: Relay) -> int:
    """Wait until every LMTP session Dovecot logged as begun has ended (it ends one after
    Postfix logged `status=sent`, or when Postfix's connection cache lets it go), so that
    its CPU falls inside the window it belongs to; the sessions begun so far."""

    def count() -> tuple[int, int]:
        log = relay.dovecot_log()
        return log.count("Connect from local"), log.count("Disconnect from local")

    wait_for(lambda: len(set(count())) == 1, SETTLE_TIMEOUT, "Dovecot's LMTP sessions to end")
    return count()[0]


@dataclass
class MilterProcess:
    """bench_milter.py on a UNIX socket (or a loopback port), started once the instance's INI
    exists."""

    listen: str  # a socket path, or a port number
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """As Postfix's smtpd_milters names it."""
        return f"inet:127.0.0.1:{self.listen}" if self.listen.isdigit() else f"unix:{self.listen}"

    def start(self, ini: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(MILTER), str(ini), self.listen])
        if self.listen.isdigit():
            ready = functools.partial(can_connect_tcp, int(self.listen))
        else:
            ready = functools.partial(os.path.exists, self.listen)
        wait_for(ready, 10, "the bench milter")


@contextmanager
def running_milter(wanted: str | None) -> Iterator[MilterProcess | None]:
    """A milter for the variant to start ("unix" or "tcp"; None: none), stopped at the end."""
    if wanted is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-milter-") as tmp:
        Path(tmp).chmod(0o755)
        listen = str(free_port()) if wanted == "tcp" else f"{tmp}/milter.sock"
        milter = MilterProcess(listen)
        try:
            yield milter
        finally:
            if milter.proc is not None:
                milter.proc.terminate()
                milter.proc.wait(timeout=10)


def run_once(variant: Variant, options: argparse.Namespace) -> Result:
    with (
        running_milter(variant.milter) as milter,
        running_relay() as relay,
        running_postfix(relay, adapt=adapter(variant, milter)) as postfix,
    ):
        accounts = create_accounts(relay, postfix.domain, options.accounts)
        warm = options.warmup
        send(postfix, accounts, 0, warm, options)
        wait_delivered(postfix, warm)
        lmtp0 = wait_lmtp_sessions_ended(relay)
        before = snapshot(postfix, relay)
        start = time.monotonic()
        send(postfix, accounts, warm, options.messages, options)
        wait_delivered(postfix, warm + options.messages)
        wall = time.monotonic() - start
        lmtp = wait_lmtp_sessions_ended(relay) - lmtp0
        after = snapshot(postfix, relay)
    ms, started = difference(before, after, options.messages)
    return Result(ms, started, lmtp, wall, options.messages)


ROW_ORDER = [
    "smtpd port 25",
    "smtpd reinject",
    "cleanup",
    "trivial-rewrite",
    "qmgr",
    "lmtp",
    "master",
    "reaped",
    "anvil",
    "tlsmgr",
    "proxymap",
    "scache",
    "POSTFIX TOTAL",
    "postlogd",
    "filtermail",
    "milter",
    "dovecot",
    "chatmaild services",
    "postfix/dovecot",
    "postfix/filtermail",
]


# rows shown with their median paired difference to `relay`
PAIRED = ("POSTFIX TOTAL", "postfix/dovecot", "postfix/filtermail")


def value(result: Result, row: str) -> float:
    """A row of one run. `postfix/dovecot` and `postfix/filtermail`: Postfix's CPU over that
    of a process whose work per message the variant does not change (Dovecot's, but with
    lmtp-cache; filtermail's, but with one-pass, where it is idle): less moved than either
    figure alone by other load on the machine, which inflates every process's CPU time."""
    if row in ("postfix/dovecot", "postfix/filtermail"):
        other = result.ms.get(row.split("/")[1], 0.0)
        return result.ms["POSTFIX TOTAL"] / other if other else float("nan")
    return result.ms.get(row, 0.0)


def table(names: list[str], results: dict[str, list[Result]]) -> str:
    rows = list(ROW_ORDER)
    for rs in results.values():
        for r in rs:
            rows += [k for k in r.ms if k not in rows]
    out = ["CPU ms per message, median [min-max] over rounds; (Δ) median paired difference"]
    width = 26
    out.append(f"{'':20}" + "".join(f"{n:>{width}}" for n in names))
    for row in rows:
        cells = []
        for name in names:
            values = [value(r, row) for r in results[name]]
            cell = f"{statistics.median(values):.3f} [{min(values):.2f}-{max(values):.2f}]"
            if name != "relay" and results.get("relay") and row in PAIRED:
                diffs = [
                    value(r, row) - value(b, row)
                    for r, b in zip(results[name], results["relay"], strict=False)
                ]
                cell = f"({statistics.median(diffs):+.2f}) " + cell
            cells.append(f"{cell:>{width}}")
        out.append(f"{row:20}" + "".join(cells))
    for label, get in (
        ("lmtp conns/msg", lambda r: r.lmtp_connections / r.messages),
        ("wall s", lambda r: r.wall_s),
    ):
        cells = []
        for name in names:
            values = [get(r) for r in results[name]]
            cells.append(f"{statistics.median(values):>{width}.2f}")
        out.append(f"{label:20}" + "".join(cells))
    started = []
    for name in names:
        last = results[name][-1].started
        started.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(last.items())))
    out.append("processes started during the last round: " + "; ".join(started))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048, help="message size, bytes")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--report", type=Path, help="only print the table of a --json file")
    args = parser.parse_args()
    if args.report:
        raw = json.loads(args.report.read_text())
        loaded = {n: [Result(**{"messages": 1000, **r}) for r in rs] for n, rs in raw.items() if rs}
        print(table(list(loaded), loaded))
        return
    names = args.variant or DEFAULT_VARIANTS
    for name in names:
        print(f"{name}: {VARIANTS[name].doc}", file=sys.stderr)
    results: dict[str, list[Result]] = {name: [] for name in names}
    for run in range(args.runs):  # paired rounds: every variant once per round
        for name in names[run % len(names) :] + names[: run % len(names)]:  # rotated
            result = run_once(VARIANTS[name], args)
            results[name].append(result)
            print(
                f"round {run + 1} {name}: postfix {result.ms['POSTFIX TOTAL']:.3f} ms/msg,"
                f" {result.wall_s:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            if args.json:
                raw = {n: [r.__dict__ for r in rs] for n, rs in results.items()}
                args.json.write_text(json.dumps(raw, indent=1))
    print(table(names, results))


if __name__ == "__main__":
    main()
