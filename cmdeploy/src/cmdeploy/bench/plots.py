"""PNG charts of a bench document (issue 7, `--plot DIR`): what an operator would rather see.

- `latency.png`: the distribution of end-of-DATA → IDLE latencies (same relay, relay1 →
  relay2, bare) as cumulative curves, with p50/p95/p99 marked;
- `throughput.png`: delivered messages per second against the number of concurrent
  senders, chatmail and bare, 2 KB and 200 KB.

matplotlib is optional (`pip install 'cmdeploy[bench]'`); without it `--plot` stops before the
run starts, with that hint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .hosts import BenchError


def ensure_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib: install it with `venv/bin/pip install 'cmdeploy[bench]'` "
            "(scripts/initenv.sh does), or leave --plot out."
        ) from None


def _series(doc: dict[str, Any]) -> list[tuple[str, list[float]]]:
    latency = doc.get("latency") or {}
    found = [
        ("chatmail, same relay", (latency.get("same_relay") or {}).get("samples") or []),
        ("chatmail, relay1 -> relay2", (latency.get("cross_relay") or {}).get("samples") or []),
        ("bare Postfix -> Dovecot", ((doc.get("bare") or {}).get("latency") or {}).get("samples")),
    ]
    return [(name, sorted(s)) for name, s in found if s]


def write_plots(doc: dict[str, Any], directory: Path) -> list[Path]:
    ensure_available()
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, samples in _series(doc):
        ms = [s * 1000 for s in samples]
        fractions = [(i + 1) / len(ms) for i in range(len(ms))]
        ax.step(ms, fractions, where="post", label=f"{name} (n={len(ms)})")
    for q in (0.5, 0.95, 0.99):
        ax.axhline(q, color="grey", linewidth=0.5, linestyle=":")
    rate = ((doc.get("latency") or {}).get("same_relay") or {}).get("offered_per_s")
    ax.set_title(
        "End of DATA -> IMAP IDLE sees the message"
        + (f" (offered {rate:.0f} msg/s)" if rate else "")
    )
    ax.set_xlabel("latency, ms")
    ax.set_ylabel("fraction of messages")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    path = directory / "latency.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, throughput in (
        ("chatmail", doc.get("throughput")),
        ("bare", (doc.get("bare") or {}).get("throughput")),
    ):
        for key, size in (("2k", "2 KB"), ("200k", "200 KB")):
            runs = ((throughput or {}).get("runs") or {}).get(key) or []
            points = [
                (r["concurrency"], r["delivered_per_s"]) for r in runs if r["delivered_per_s"]
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                style = "-" if label == "chatmail" else "--"
                ax.plot(xs, ys, style, marker="o", label=f"{label}, {size}")
    ax.set_xscale("log", base=2)
    ax.set_title("Delivered messages per second vs concurrent senders")
    ax.set_xlabel("concurrent senders (TLS submission)")
    ax.set_ylabel("delivered msg/s")
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = directory / "throughput.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written
