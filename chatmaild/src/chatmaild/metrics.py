"""Counters and gauges of the chatmaild services, for Prometheus (doc/metrics.md).

Each service keeps its own `Registry` in memory and writes a snapshot of it, as JSON, to
`METRICS_DIR/<service>.json` every few seconds (`write_snapshots`). `chatmail-metrics`
(`chatmaild.exporter`) merges the snapshots with what it reads from the system at scrape time
and serves the result in the Prometheus text exposition format. Files rather than a socket
per service: a service that is down or restarting never delays a scrape, and the exporter
needs no access to any service.

Label values are always constants of the code (a direction, a reason, a reply code), never
data from a connection: no metric can hold an address, a token, an IP or a peer's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .fsutil import write_atomic

log = logging.getLogger("metrics")

METRICS_DIR = Path("/run/chatmail-metrics")
# /new runs as www-data, not vmail: its snapshot (chatmaild.newemail) is in a subdirectory
# the deploy gives to www-data
NEW_SUBDIR = "new"
SNAPSHOT_INTERVAL = 5.0  # seconds; Prometheus scrapes every 15 s or more
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    """One metric: its samples by label set."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    label_names: tuple[str, ...]
    samples: dict[Labels, float] = field(default_factory=dict)

    def _key(self, labels: Mapping[str, str]) -> Labels:
        if set(labels) != set(self.label_names):
            raise ValueError(
                f"{self.name} takes the labels {self.label_names}, got {sorted(labels)}"
            )
        return tuple((name, str(labels[name])) for name in self.label_names)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0 and self.kind == "counter":
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        self.samples[key] = self.samples.get(key, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        if self.kind != "gauge":
            raise ValueError("only a gauge is set")
        self.samples[self._key(labels)] = float(value)

    def value(self, **labels: str) -> float:
        return self.samples.get(self._key(labels), 0.0)


class Registry:
    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def _family(self, name: str, kind: str, help: str, labels: Iterable[str]) -> Family:
        label_names = tuple(labels)
        if not _NAME.match(name) or not all(_LABEL.match(n) for n in label_names):
            raise ValueError(f"not a metric or label name: {name} {label_names}")
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = Family(name, kind, help, label_names)
        elif (family.kind, family.label_names) != (kind, label_names):
            raise ValueError(f"{name} is already registered differently")
        return family

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Family:
        """A counter; its name ends in `_total`, as Prometheus expects."""
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {name}")
        family = self._family(name, "counter", help, labels)
        if not family.label_names:
            family.samples.setdefault((), 0.0)  # a counter with no labels shows from the start
        return family

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Family:
        return self._family(name, "gauge", help, labels)

    def snapshot(self) -> dict[str, object]:
        """JSON-ready: {name: {kind, help, labels, samples: [[[label values], value]]}}."""
        return {
            f.name: {
                "kind": f.kind,
                "help": f.help,
                "labels": list(f.label_names),
                "samples": [[[v for _, v in key], value] for key, value in f.samples.items()],
            }
            for f in self.families.values()
        }

    def merge_snapshot(self, snapshot: object) -> None:
        """Add a snapshot's samples to this registry (summed where the label sets meet).
        Raises ValueError for anything that is not a snapshot as `snapshot()` writes it."""
        if not isinstance(snapshot, dict):
            raise ValueError("not an object")
        for name, entry in snapshot.items():
            if not isinstance(entry, dict):
                raise ValueError(f"{name}: not an object")
            kind, help, labels, samples = (
                entry.get("kind"),
                entry.get("help"),
                entry.get("labels"),
                entry.get("samples"),
            )
            if kind not in ("counter", "gauge") or not isinstance(help, str):
                raise ValueError(f"{name}: no kind or help")
            if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
                raise ValueError(f"{name}: labels")
            if not isinstance(samples, list):
                raise ValueError(f"{name}: samples")
            family = self._family(name, kind, help, labels)
            for sample in samples:
                values, value = _sample(sample, len(labels))
                key = tuple(zip(family.label_names, values, strict=True))
                family.samples[key] = family.samples.get(key, 0.0) + value

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4), families by name."""
        lines: list[str] = []
        for name in sorted(self.families):
            family = self.families[name]
            lines.append(f"# HELP {name} {_escape_help(family.help)}")
            lines.append(f"# TYPE {name} {family.kind}")
            for key in sorted(family.samples):
                labels = ",".join(f'{n}="{_escape_label(v)}"' for n, v in key)
                selector = f"{name}{{{labels}}}" if labels else name
                lines.append(f"{selector} {_number(family.samples[key])}")
        return "\n".join(lines) + "\n" if lines else ""


def _sample(sample: object, width: int) -> tuple[list[str], float]:
    if not (isinstance(sample, list) and len(sample) == 2 and isinstance(sample[0], list)):
        raise ValueError("a sample is [[label values], value]")
    values, value = sample
    if len(values) != width or not all(isinstance(v, str) for v in values):
        raise ValueError("label values")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a sample's value is a number")
    return values, float(value)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def snapshot_path(directory: Path, service: str) -> Path:
    return directory / f"{service}.json"


def write_snapshot(registry: Registry, path: Path) -> None:
    # readable by the exporter, which runs as another user
    write_atomic(path, json.dumps(registry.snapshot()).encode(), mode=0o644)


async def write_snapshots(
    registry: Registry, path: Path, interval: float = SNAPSHOT_INTERVAL
) -> None:
    """Forever: write the registry's snapshot when it changed, and once more when cancelled
    (a service that stops leaves its last counts). A failing write is logged, never fatal."""
    written: str | None = None
    try:
        while True:
            written = _write_if_changed(registry, path, written)
            await asyncio.sleep(interval)
    finally:
        _write_if_changed(registry, path, written)


def _write_if_changed(registry: Registry, path: Path, written: str | None) -> str | None:
    text = json.dumps(registry.snapshot())
    if text == written:
        return written
    try:
        write_snapshot(registry, path)
    except OSError as e:
        log.warning("cannot write metrics snapshot %s: %s", path, e.strerror)
        return written
    return text


def read_snapshots(directory: Path, into: Registry) -> list[str]:
    """Merge every snapshot in `directory` into `into`; returns the names of broken ones."""
    broken: list[str] = []
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return broken
    for path in paths:
        try:
            into.merge_snapshot(json.loads(path.read_bytes()))
        except (OSError, ValueError) as e:
            log.warning("ignoring metrics snapshot %s: %s", path.name, e)
            broken.append(path.name)
    return broken


def start_snapshots(
    registry: Registry, directory: Path | None, service: str
) -> asyncio.Task[None] | None:
    """The snapshot task of a service, or None when it writes none (`directory` None)."""
    if directory is None:
        return None
    with contextlib.suppress(OSError):
        os.makedirs(directory, exist_ok=True)
    return asyncio.create_task(write_snapshots(registry, snapshot_path(directory, service)))
