"""`cmdeploy bench [--json FILE] [--plot DIR] ...`: options, the run, and its outputs (issue 7)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import report
from .faults import FAULTS, fault_named
from .faults import table as faults_table
from .hosts import BenchError
from .runner import Bench, Workload


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 4,16,32") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers of 0 or more")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected 1 or more")
    return value


def _faults(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    try:
        for name in names:
            fault_named(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Workload()
    p.add_argument(
        "--faults",
        nargs="?",
        const=[f.name for f in FAULTS],
        type=_faults,
        metavar="NAME,...",
        help="instead of measuring: the fault run (SIGKILL each service of relay1, reboot it) "
        "under load, counting lost and duplicated messages; optionally only the named faults",
    )
    p.add_argument(
        "--fault-messages",
        type=_positive,
        default=1200,
        help="messages per fault (default %(default)s; all faults: over 10000)",
    )
    p.add_argument("--json", type=Path, help="write every figure, the workload and host facts")
    p.add_argument("--plot", type=Path, metavar="DIR", help="write PNG charts into DIR")
    p.add_argument(
        "--accounts",
        type=_positive,
        default=d.accounts,
        help="accounts created (default %(default)s)",
    )
    p.add_argument(
        "--concurrency",
        type=_counts,
        default=d.concurrency,
        help="concurrent senders, comma-separated (default 4,16,32)",
    )
    p.add_argument(
        "--messages", type=_positive, default=d.messages, help="2 KB messages per throughput run"
    )
    p.add_argument(
        "--large-messages",
        type=_positive,
        default=d.large_messages,
        help="200 KB messages per throughput run",
    )
    p.add_argument(
        "--latency-messages",
        type=_positive,
        default=d.latency_messages,
        help="messages offered in each latency run",
    )
    p.add_argument(
        "--hop-samples",
        type=int,
        default=d.hop_samples,
        help="single messages followed hop by hop through the relays' logs (default %(default)s)",
    )
    p.add_argument(
        "--latency-fraction",
        type=float,
        default=d.latency_fraction,
        help="latency load as a fraction of the best 2 KB throughput (default %(default)s)",
    )
    p.add_argument(
        "--idle",
        type=_counts,
        default=d.idle,
        help="idle IMAP IDLE connection counts to measure memory at (default 1000,5000; 0: skip)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=d.duration,
        help="upper bound in seconds for each load (default %(default)s)",
    )
    p.add_argument(
        "--idle-settle",
        type=float,
        default=d.idle_settle,
        help="seconds to wait for hibernation before measuring idle memory (default %(default)s)",
    )
    p.add_argument("--no-bare", action="store_true", help="skip the bare baseline")
    p.add_argument("--keep-bare", action="store_true", help="leave the bare host running")


def workload_from(args: argparse.Namespace) -> Workload:
    return Workload(
        accounts=args.accounts,
        concurrency=tuple(c for c in args.concurrency if c > 0) or (1,),
        messages=args.messages,
        large_messages=args.large_messages,
        latency_messages=args.latency_messages,
        hop_samples=max(0, args.hop_samples),
        latency_fraction=min(1.0, max(0.01, args.latency_fraction)),
        idle=tuple(sorted(c for c in args.idle if c > 0)),
        duration=max(5.0, args.duration),
        idle_settle=max(0.0, args.idle_settle),
        bare=not args.no_bare,
        keep_bare=args.keep_bare,
    )


def say(text: str) -> None:
    print(f"bench: {text}", flush=True)


def _write_partial(doc: dict[str, Any], path: Path | None, why: str) -> None:
    if path is None:
        return
    report.write_json({**doc, "stopped": why}, path)
    print(f"cmdeploy bench: wrote what was measured before it stopped to {path}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """The whole command; a `BenchError` is left to the CLI, which prints it as one paragraph."""
    if args.plot is not None:
        from .plots import ensure_available

        ensure_available()
    bench = Bench(workload_from(args), say)
    try:
        if args.faults:
            doc = bench.fault_run(args.faults, args.fault_messages)
        else:
            doc = bench.run()
    except KeyboardInterrupt:
        print("cmdeploy bench: interrupted; the accounts it created were removed", file=sys.stderr)
        _write_partial(bench.doc, args.json, "interrupted")
        return 130
    except BenchError as e:
        # what the run measured before it stopped (the phases done, for a fault run) is kept
        _write_partial(bench.doc, args.json, str(e))
        raise
    if args.faults:
        print()
        print(faults_table(doc["faults"]["phases"]))
        if args.json is not None:
            report.write_json(doc, args.json)
            print(f"\nwrote {args.json}")
        lost = sum(p["verdict"]["lost"] for p in doc["faults"]["phases"])
        return 1 if lost else 0
    report.finish(doc)
    print()
    print(report.table(doc))
    if args.json is not None:
        report.write_json(doc, args.json)
        print(f"\nwrote {args.json}")
    if args.plot is not None:
        from .plots import write_plots

        for path in write_plots(doc, args.plot):
            print(f"wrote {path}")
    return 0


__all__ = ["BenchError", "add_arguments", "run"]
