"""The resource gate for account creation.

Creation pauses while the machine is overloaded, short of memory, or short of disk on the
mailboxes filesystem. A value that cannot be read is skipped rather than blocking sign-ups.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def read_load_1m() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def read_available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def read_free_disk(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True)
class ResourceLimits:
    max_load_1m: float
    min_available_memory: int
    min_free_disk_space: int


@dataclass(frozen=True)
class Readings:
    load_1m: float | None
    available_memory: int | None
    free_disk: int | None


def take_readings(mailboxes: Path) -> Readings:
    return Readings(read_load_1m(), read_available_memory(), read_free_disk(mailboxes))


# What `shortage` answers
LOAD_TOO_HIGH = "load too high"
MEMORY_TOO_LOW = "available memory too low"
DISK_TOO_LOW = "free disk space too low"


def shortage(readings: Readings, limits: ResourceLimits) -> str | None:
    """Which limit the readings break, or None. Unreadable values (None) never block."""
    if readings.load_1m is not None and readings.load_1m > limits.max_load_1m:
        return LOAD_TOO_HIGH
    if (
        readings.available_memory is not None
        and readings.available_memory < limits.min_available_memory
    ):
        return MEMORY_TOO_LOW
    if readings.free_disk is not None and readings.free_disk < limits.min_free_disk_space:
        return DISK_TOO_LOW
    return None
