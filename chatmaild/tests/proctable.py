"""The machine's processes from /proc, for the benchmarks that count CPU per process
(bench_lmtp.py, bench_postfix.py): CPU times in clock ticks, parents, command lines."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    name: str
    ppid: int
    utime: int
    stime: int
    cutime: int  # of its reaped children
    cstime: int

    @property
    def own(self) -> int:
        return self.utime + self.stime

    @property
    def reaped(self) -> int:
        return self.cutime + self.cstime


def proc_stat(pid: int) -> ProcStat | None:
    """The process's name, parent and CPU times, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]  # the name may hold spaces and ")"
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ProcStat(name, int(fields[1]), utime, stime, cutime, cstime)


def cmdline(pid: int) -> list[str]:
    """Its arguments; the list ends with "" (the terminating NUL), or is empty if it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def process_table() -> dict[int, ProcStat]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    return table


def descends(table: dict[int, ProcStat], pid: int, root: int) -> bool:
    """Whether `pid` is `root` or one of its descendants."""
    while pid > 1:
        if pid == root:
            return True
        parent = table.get(pid)
        pid = parent.ppid if parent else 0
    return False
