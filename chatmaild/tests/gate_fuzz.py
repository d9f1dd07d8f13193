"""A mutation fuzzer of the encryption gate, judged by the independent oracle of gate_oracle.py.

Seeds are the corpus messages the gate accepts (chatmaild/tests/data/mail, verdicts.toml)
and valid messages generated here: random packet streams framed as PKESK/SKESK + SEIPD,
armored with base64 and a CRC24 line, in the varied shapes doc/encryption-gate.md 2.2-2.4
allows. Each mutant is a seed with one to four mutations aimed at the rules of 2.1-2.4,
given to the gate and to the oracle in both directions. The property is one-directional: a
mutant the gate accepts and the oracle rejects is the bug class; the other way round only
informs (the gate may refuse for reasons the oracle does not model, such as From: parsing).

Everything is deterministic from one seed integer: mutant `i` of run seed `s` is the same
whatever the number of processes. CLI: `scripts/fuzz-gate --help`; test_gate_fuzz.py runs a
small subset in CI.

The fuzzer is split by concern, each module beside this one: gate_fuzz_openpgp.py (packets
and armor), gate_fuzz_seeds.py (the seeds), gate_fuzz_mutations.py (the mutation registry and
the generic mutations) with gate_fuzz_headers.py, gate_fuzz_multipart.py and
gate_fuzz_armor.py (the mutations aimed at 2.1-2.4). This module runs them: mutants, verdicts
of the gate and the oracle, tallies per direction, and the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

# The mutation modules register their mutations in MUTATIONS when imported.
import gate_fuzz_armor  # noqa: F401
import gate_fuzz_headers  # noqa: F401
import gate_fuzz_multipart  # noqa: F401
from gate_fuzz_mutations import MUTATIONS
from gate_fuzz_seeds import DIRECTIONS, Seed, all_seeds
from gate_oracle import well_formed

from chatmaild.mailcheck import check_incoming, check_outgoing
from chatmaild.smtpreject import Reject

# --- running: mutants, verdicts, tallies


def make_mutant(
    seeds: Sequence[Seed], run_seed: int, index: int
) -> tuple[Seed, bytes, tuple[str, ...]]:
    """Mutant `index` of run `run_seed`: a seed and one to four mutations, all from one RNG."""
    rng = random.Random(run_seed * 1_000_000_007 + index)
    seed = seeds[rng.randrange(len(seeds))]
    pool = [s.data for s in seeds]
    names = tuple(rng.choices(sorted(MUTATIONS), k=rng.choice((1, 1, 1, 1, 2, 2, 3, 4))))
    data = seed.data
    for name in names:
        data = MUTATIONS[name](rng, data, pool)
    return seed, data, names


def gate_verdict(direction: str, data: bytes, mail_from: str, rcpts: list[str]) -> str:
    """ "accept", "reject", or the type of an exception other than Reject (a crash)."""
    try:
        if direction == "outgoing":
            check_outgoing(mail_from, rcpts, data)
        else:
            check_incoming(mail_from, rcpts, data, lambda rcpt: True)
    except Reject:
        return "reject"
    except Exception as exc:  # the gate crashing is a finding, not the fuzzer's end
        return type(exc).__name__
    return "accept"


@dataclass(frozen=True)
class Example:
    index: int
    seed: str
    mutations: tuple[str, ...]
    data: bytes
    note: str = ""


@dataclass
class Tally:
    """The counts of one direction; examples are kept for distinct mutation lists."""

    keep: int = 20
    total: int = 0
    gate_accepted: int = 0
    oracle_accepted: int = 0
    gate_only: int = 0  # the gate accepts, the oracle rejects: the bug class
    oracle_only: int = 0  # the oracle accepts, the gate rejects: informational
    gate_errors: int = 0
    gate_only_examples: list[Example] = field(default_factory=list)
    oracle_only_examples: list[Example] = field(default_factory=list)
    error_examples: list[Example] = field(default_factory=list)
    gate_only_mutations: Counter[str] = field(default_factory=Counter)

    def _keep(self, examples: list[Example], example: Example) -> None:
        if len(examples) < self.keep and all(e.mutations != example.mutations for e in examples):
            examples.append(example)

    def record(self, example: Example, gate: str, oracle: bool) -> None:
        self.total += 1
        self.gate_accepted += gate == "accept"
        self.oracle_accepted += oracle
        if gate not in ("accept", "reject"):
            self.gate_errors += 1
            self._keep(self.error_examples, dataclasses.replace(example, note=gate))
        if gate == "accept" and not oracle:
            self.gate_only += 1
            self.gate_only_mutations.update(set(example.mutations))
            self._keep(self.gate_only_examples, example)
        if gate != "accept" and oracle:
            self.oracle_only += 1
            self._keep(self.oracle_only_examples, example)

    def merge(self, other: Tally) -> None:
        for name in ("total", "gate_accepted", "oracle_accepted", "gate_only", "oracle_only"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.gate_errors += other.gate_errors
        self.gate_only_mutations.update(other.gate_only_mutations)
        for mine, theirs in (
            (self.gate_only_examples, other.gate_only_examples),
            (self.oracle_only_examples, other.oracle_only_examples),
            (self.error_examples, other.error_examples),
        ):
            for example in theirs:
                self._keep(mine, example)


def run_range(run_seed: int, start: int, stop: int, keep: int = 20) -> dict[str, Tally]:
    """Mutants `start` to `stop` (exclusive) of run `run_seed`, judged in both directions."""
    seeds = all_seeds(run_seed)
    tallies = {d: Tally(keep) for d in DIRECTIONS}
    for index in range(start, stop):
        seed, data, names = make_mutant(seeds, run_seed, index)
        example = Example(index, seed.name, names, data)
        for direction in DIRECTIONS:
            gate = gate_verdict(direction, data, seed.mail_from, list(seed.rcpts))
            oracle = well_formed(data, direction, seed.mail_from, list(seed.rcpts))
            tallies[direction].record(example, gate, oracle)
    return tallies


CHUNK = 500  # fixed, so that the examples kept do not depend on the number of processes


def _run_chunk(job: tuple[int, int, int, int]) -> dict[str, Tally]:
    return run_range(*job)


def run(mutants: int, seed: int = 0, jobs: int = 1, keep: int = 20) -> dict[str, Tally]:
    """Run `mutants` mutants of run seed `seed` on `jobs` processes; tallies per direction."""
    chunks = [(seed, a, min(a + CHUNK, mutants), keep) for a in range(0, mutants, CHUNK)]
    tallies = {d: Tally(keep) for d in DIRECTIONS}
    if jobs <= 1:
        results = map(_run_chunk, chunks)
        for result in results:
            for d in DIRECTIONS:
                tallies[d].merge(result[d])
        return tallies
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for result in pool.imap(_run_chunk, chunks):  # in order: deterministic examples
            for d in DIRECTIONS:
                tallies[d].merge(result[d])
    return tallies


# --- the command line


def show(data: bytes, seed: bytes, width: int) -> str:
    """The mutant as a Python bytes literal, cut to `width` around its first difference."""
    same = next((i for i, (a, b) in enumerate(zip(data, seed, strict=False)) if a != b), None)
    if same is None:
        same = min(len(data), len(seed))
    start = max(0, same - width // 3)
    text = repr(data[start : start + width])
    return ("…" if start else "") + text + ("…" if start + width < len(data) else "")


def report(tallies: dict[str, Tally], seeds: Sequence[Seed], examples: int, width: int) -> str:
    by_name = {s.name: s.data for s in seeds}
    out = [
        f"{'direction':10} {'mutants':>8} {'gate-accepted':>14} {'oracle-accepted':>16}"
        f" {'gate-only (bug)':>16} {'oracle-only':>12} {'gate-errors':>12}"
    ]
    for d, t in tallies.items():
        out.append(
            f"{d:10} {t.total:>8} {t.gate_accepted:>14} {t.oracle_accepted:>16}"
            f" {t.gate_only:>16} {t.oracle_only:>12} {t.gate_errors:>12}"
        )
    for d, t in tallies.items():
        for title, found in (
            ("accepted by the gate, rejected by the oracle", t.gate_only_examples),
            ("gate errors (exceptions other than Reject)", t.error_examples),
        ):
            if not found:
                continue
            out.append(f"\n{d}: {title}")
            if found is t.gate_only_examples:
                common = ", ".join(f"{n} {c}" for n, c in t.gate_only_mutations.most_common(12))
                out.append(f"  mutations involved: {common}")
            for e in found[:examples]:
                note = f" [{e.note}]" if e.note else ""
                out.append(f"  #{e.index} seed {e.seed}, {' + '.join(e.mutations)}{note}:")
                out.append("    " + show(e.data, by_name[e.seed], width))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=int, default=1_000_000, help="how many (default 1e6)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--examples", type=int, default=5, help="examples shown per direction")
    parser.add_argument("--width", type=int, default=240, help="bytes shown per example")
    parser.add_argument("--replay", type=int, metavar="I", help="print mutant I in full, stop")
    args = parser.parse_args(argv)
    seeds = all_seeds(args.seed)
    if args.replay is not None:
        seed, data, names = make_mutant(seeds, args.seed, args.replay)
        print(f"# seed {seed.name}, {' + '.join(names)}; {seed.mail_from} -> {list(seed.rcpts)}")
        for d in DIRECTIONS:
            gate = gate_verdict(d, data, seed.mail_from, list(seed.rcpts))
            oracle = well_formed(data, d, seed.mail_from, list(seed.rcpts))
            print(f"# {d}: gate {gate}, oracle {'accept' if oracle else 'reject'}")
        print(repr(data))
        return 0
    began = time.monotonic()
    tallies = run(args.mutants, args.seed, args.jobs)
    took = time.monotonic() - began
    print(
        f"gate fuzz: {args.mutants} mutants of {len(seeds)} seeds, run seed {args.seed},"
        f" {len(MUTATIONS)} mutations, {args.jobs} processes, {took:.1f} s"
    )
    print(report(tallies, seeds, args.examples, args.width))
    return 1 if any(t.gate_only for t in tallies.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
