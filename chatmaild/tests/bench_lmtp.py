"""Benchmark of Dovecot's CPU per LMTP delivery, with the relay's configuration and without parts.

Run as root: `scripts/bench-lmtp [--messages N] [--runs R] [--payload B] [--variant V ...]`.
For each variant and run it starts a fresh private relay (chatmaild/tests/dovecot_harness.py: the
relay's generated Dovecot configuration, doveauth, lastlogin, chatmail-metadata, a fake push
service), creates the accounts, warms up, then delivers N messages of about 2 KB over LMTP,
one recipient each, round-robin over the accounts, a few messages per LMTP connection as
Postfix's connection cache reuses them.

CPU is read from /proc (utime + stime, as `cmdeploy bench` profiles a lab host, see
doc/performance.md) before and after the deliveries, for every process of the Dovecot
instance (its master and all descendants) plus the master's cutime + cstime, which hold the
CPU of children that exited and were reaped in between; and for the three chatmaild
services. A process alive at both reads counts its difference; one that exits in between
counts its whole time in the master's cutime less what the first read saw. The benchmark
client and the fake push service are not counted.

Variants change the relay's configuration (settings appended after the relay's, which take
precedence, or a rewritten file); each prints CPU ms per delivery, median and spread, and
the median difference to `relay` within the same round. Rounds run the variants one after
another, so a drift of the machine's load touches all alike. The figures depend on how
much mail waits in each mailbox (`--accounts`: fewer accounts, fuller maildirs).
"""

from __future__ import annotations

import argparse
import base64
import imaplib
import json
import random
import re
import smtplib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from dovecot_harness import Relay, running_relay, wait_for
from proctable import TICK, cmdline, descends, process_table

for _command in ("SETMETADATA",):
    imaplib.Commands.setdefault(_command, ("AUTH", "SELECTED"))

PASSWORD = "bench-password-1"
SENDER = "sender@elsewhere.example"
SERVICES = ("doveauth", "lastlogin", "metadata")
LMTP_PLUGINS = "zlib quota chatmail_notify"


def lmtp_plugins(*removed: str) -> str:
    """Settings that load the relay's LMTP plugins except `removed`."""
    plugins = " ".join(p for p in LMTP_PLUGINS.split() if p not in removed)
    return f"protocol lmtp {{\n  mail_plugins = {plugins}\n}}\n"


def static_userdb(base: Path) -> None:
    """Replace the relay's userdb (doveauth over its dict socket) by a static one."""
    conf = base / "chatmail.conf"
    text = conf.read_text()
    start = text.index("userdb {")
    end = text.index("}", start) + 1
    static = (
        "userdb {\n  driver = static\n"
        f"  args = uid=vmail gid=vmail home={base / 'mailboxes'}/%u\n}}"
    )
    conf.write_text(text[:start] + static + text[end:])


# The push hook as it was until 2026-12-07: a script for Dovecot's Lua push driver, the
# baseline of the `lua-push` variant (the hook is chatmail_notify's now).
LUA_PUSH_HOOK = """
local function may_have_tokens(user)
  local file = io.open(user.home .. "/metadata.json", "r")
  if file == nil then return false end
  file:close()
  return true
end
function dovecot_lua_notify_begin_txn(user)
  return { user = user, mailboxes = {} }
end
function dovecot_lua_notify_event_message_new(ctx, event)
  if string.lower(event.from_address or "") ~= string.lower(ctx.user.username) then
    ctx.mailboxes[event.mailbox] = true
  end
end
function dovecot_lua_notify_end_txn(ctx, success)
  if not success or next(ctx.mailboxes) == nil or not may_have_tokens(ctx.user) then
    return
  end
  for name in pairs(ctx.mailboxes) do
    local mailbox = ctx.user:mailbox(name)
    mailbox:open()
    mailbox:metadata_set("/private/messagenew", "")
    mailbox:free()
  end
end
"""


def lua_push(base: Path) -> None:
    """LMTP's push hook in Lua, through Dovecot's push driver, instead of chatmail_notify."""
    script = base / "push_notification.lua"
    script.write_text(LUA_PUSH_HOOK)
    plugins = "zlib quota mail_lua notify push_notification push_notification_lua"
    with open(base / "chatmail.conf", "a") as conf:
        conf.write(
            f"protocol lmtp {{\n  mail_plugins = {plugins}\n}}\n"
            f"plugin {{\n  push_notification_driver = lua:file={script}\n}}\n"
        )


def auth_dict_per_lookup(base: Path) -> None:
    """Dovecot's auth closes its connection to doveauth after every answer, the dict client's
    default, instead of keeping it (`idle_msecs`) as the relay does."""
    conf = base / "auth-dict.conf.ext"
    text = conf.read_text()
    kept = re.search(r"^uri = proxy:idle_msecs=\d+:", text, re.MULTILINE)
    assert kept, "the auth dict's uri changed: adapt the variant"
    conf.write_text(text.replace(kept.group(0), "uri = proxy:"))


@dataclass
class Variant:
    name: str
    settings: str = ""
    edit: Callable[[Path], None] | None = None
    tokens: bool = False


VARIANTS = {
    v.name: v
    for v in [
        Variant("relay"),
        Variant("relay+tokens", tokens=True),
        Variant("no-zlib", lmtp_plugins("zlib")),
        Variant("no-quota", lmtp_plugins("quota")),
        Variant("gzip-level-1", "plugin {\n  zlib_save_level = 1\n}\n"),
        Variant("zstd", "plugin {\n  zlib_save = zstd\n  zlib_save_level = 3\n}\n"),
        Variant("no-push", lmtp_plugins("chatmail_notify")),
        Variant("static-userdb", edit=static_userdb),
        Variant("auth-dict-per-lookup", edit=auth_dict_per_lookup),
        Variant("fsync-optimized", "mail_fsync = optimized\n"),
        Variant("lua-push", edit=lua_push),
        Variant("lua-push+tokens", edit=lua_push, tokens=True),
        Variant(
            "bare-like",
            "protocol lmtp {\n  mail_plugins =\n}\n",
            edit=static_userdb,
        ),
    ]
}


def message(rcpt: str, n: int, rng: random.Random, payload: int) -> bytes:
    """About 2 KB, shaped like chatmail's traffic: an ASCII-armored OpenPGP message
    (RFC 3156, RFC 9580 §6), i.e. base64 of random bytes, which compresses little."""
    armored = base64.encodebytes(rng.randbytes(payload)).decode().replace("\n", "\r\n")
    return (
        f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: [...]\r\n"
        f"Message-ID: <bench{n}@elsewhere.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
        ' boundary="b"\r\n\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\n'
        "Version: 1\r\n\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n"
        f"-----BEGIN PGP MESSAGE-----\r\n\r\n{armored}-----END PGP MESSAGE-----\r\n\r\n--b--\r\n"
    ).encode()


def create_accounts(relay: Relay, count: int, tokens: bool) -> list[str]:
    accounts = [f"bench{i:04d}@example.org" for i in range(count)]
    for addr in accounts:
        conn = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=10)
        conn.login(addr, PASSWORD)  # creates the account
        conn.select("INBOX")  # and its maildir
        if tokens:
            typ, data = conn._simple_command(
                "SETMETADATA", "INBOX", f'(/private/devicetoken "tok-{addr.split("@")[0]}")'
            )
            assert typ == "OK", data
        conn.logout()
    return accounts


def deliver(
    relay: Relay, accounts: list[str], count: int, options: argparse.Namespace, first: int
) -> int:
    """Deliver `count` messages; the bytes delivered."""
    rng = random.Random(first)
    per_connection = options.per_connection
    delivered = 0
    n = first
    while n < first + count:
        with smtplib.LMTP(str(relay.lmtp_socket)) as lmtp:
            for _ in range(min(per_connection, first + count - n)):
                rcpt = accounts[n % len(accounts)]
                data = message(rcpt, n, rng, options.payload)
                refused = lmtp.sendmail(SENDER, [rcpt], data)
                delivered += len(data)
                assert not refused, refused
                n += 1
    return delivered


@dataclass
class CpuSnapshot:
    dovecot: int = 0
    services: dict[str, int] = field(default_factory=dict)


def snapshot(relay: Relay) -> CpuSnapshot:
    master = int((relay.base / "run" / "master.pid").read_text())
    table = process_table()
    snap = CpuSnapshot()
    lib = str(relay.base / "lib")
    for pid, stat in table.items():
        if descends(table, pid, master):
            snap.dovecot += stat.own + (stat.reaped if pid == master else 0)
        elif lib in (line := " ".join(cmdline(pid))):
            name = next(s for s in SERVICES if f"chatmaild.{s} " in line or f".{s} import" in line)
            snap.services[name] = stat.own + stat.reaped
    return snap


@dataclass
class Result:
    dovecot_ms: float
    services_ms: dict[str, float]
    wall_s: float
    stored_ratio: float  # bytes in the maildirs / bytes delivered: what compression saved


def run_once(variant: Variant, options: argparse.Namespace) -> Result:
    accounts, messages = options.accounts, options.messages
    with running_relay(dovecot_settings=variant.settings, edit_config=variant.edit) as relay:
        addrs = create_accounts(relay, accounts, variant.tokens)
        delivered = deliver(relay, addrs, 2 * accounts, options, first=0)  # warm-up
        settle(relay, variant, 2 * accounts)
        before = snapshot(relay)
        start = time.monotonic()
        delivered += deliver(relay, addrs, messages, options, first=2 * accounts)
        wall = time.monotonic() - start
        settle(relay, variant, 2 * accounts + messages)
        after = snapshot(relay)
        errors = [line for line in relay.dovecot_log().splitlines() if "Error" in line]
        if errors:
            raise RuntimeError(f"{variant.name}: Dovecot logged errors: {errors[:3]}")
        stored = sum(stored_bytes(relay.mailboxes / addr) for addr in addrs)
    per = 1000 / TICK / messages
    return Result(
        (after.dovecot - before.dovecot) * per,
        {s: (after.services[s] - before.services.get(s, 0)) * per for s in after.services},
        wall,
        stored / delivered,
    )


def stored_bytes(home: Path) -> int:
    return sum(f.stat().st_size for d in ("new", "cur") for f in (home / d).iterdir())


def settle(relay: Relay, variant: Variant, delivered: int) -> None:
    """Let asynchronous work of the deliveries finish inside the measured window (the
    pushes that chatmail-metadata sends after the LMTP reply)."""
    if variant.tokens:
        wait_for(lambda: len(relay.push.tokens) >= delivered, timeout=120, what="pushes")
    time.sleep(1.0)


def paired_difference(results: list[Result], relay: list[Result] | None) -> str:
    """Median of (variant - relay) within each round: the machine's load drifts between
    rounds (other work on the same cores inflates CPU times), less within one."""
    if not relay:
        return "      "
    diffs = [r.dovecot_ms - base.dovecot_ms for r, base in zip(results, relay, strict=False)]
    return f"{statistics.median(diffs):+6.2f}"


def line(name: str, results: list[Result], relay: list[Result] | None) -> str:
    services = {s: statistics.median(r.services_ms.get(s, 0.0) for r in results) for s in SERVICES}
    return (
        f"{name:25} {len(results):4}  {summary([r.dovecot_ms for r in results]):28}  "
        + f"{paired_difference(results, relay)}    "
        + " ".join(f"{s}={v:.3f}" for s, v in services.items())
        + f"  wall={statistics.median(r.wall_s for r in results):.1f}s"
        + f"  stored/delivered={statistics.median(r.stored_ratio for r in results):.2f}"
    )


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.3f} [{min(values):.3f}-{max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--per-connection", type=int, default=10)
    # bytes of OpenPGP data; armored in a PGP/MIME message, 1300 make about 2 KB
    parser.add_argument("--payload", type=int, default=1300)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    names = args.variant or list(VARIANTS)
    results: dict[str, list[Result]] = {name: [] for name in names}
    # runs interleaved: a drift of the machine's load spreads over all variants alike
    for run in range(args.runs):
        for name in names:
            result = run_once(VARIANTS[name], args)
            results[name].append(result)
            print(f"run {run + 1} {name}: {result.dovecot_ms:.3f} ms", file=sys.stderr)
    print("variant                   runs  dovecot ms/msg med [min-max]  vs relay  services ms/msg")
    for name in names:
        print(line(name, results[name], results.get("relay")), flush=True)
    if args.json:
        raw = {name: [r.__dict__ for r in rs] for name, rs in results.items()}
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
