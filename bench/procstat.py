"""CPU time and resident memory of processes, read from /proc (Linux).

CPU is process time (user + system), not wall time: a figure "per CPU-second"
is work done divided by the CPU seconds the measured processes consumed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # the command name may contain spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of `pid` (plus its reaped children's with `reaped_children`)."""
    try:
        f = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = int(f[11]) + int(f[12])
    if reaped_children:
        ticks += int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its live children plus the children it reaped
    (Postgres: the postmaster and its backends)."""
    total = cpu_seconds(pid, reaped_children=True)
    for child in children_of(pid):
        total += cpu_seconds(child, reaped_children=True)
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of `pid`, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


@dataclass
class Proc:
    """A measured process: `tree` for Postgres (postmaster + backends)."""

    name: str
    pid: int
    tree: bool = False

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pid) if self.tree else cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)


class CpuMeter:
    """CPU seconds used by a set of processes between `start()` and `stop()`."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._start = {p.name: p.cpu() for p in self.procs}
        return self

    def stop(self) -> dict[str, float]:
        self.used = {p.name: max(0.0, p.cpu() - self._start[p.name]) for p in self.procs}
        return self.used

    @property
    def total(self) -> float:
        return sum(self.used.values())


def machine() -> dict[str, object]:
    """Cores, memory and CPU model of this machine."""
    info: dict[str, object] = {"cores": os.cpu_count() or 0}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def system_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def busy_share(since: tuple[int, int]) -> float:
    """Share of the machine's CPU time that was busy since `since`."""
    busy, total = system_ticks()
    return (busy - since[0]) / max(1, total - since[1])
