"""Read per-process CPU time from /proc so each proxy's cost per request can be compared.

wrk only sees throughput; CPU per request is what tells an efficient proxy from a busy one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Fields of /proc/<pid>/stat after the ")" that closes comm, counted from field 3 (state).
_UTIME_IDX = 14 - 3
_STIME_IDX = 15 - 3
_PPID_IDX = 4 - 3


class ProcStatError(ValueError):
    """The stat line is malformed; better to stop than to report a made-up CPU figure."""


@dataclass(frozen=True)
class CpuTicks:
    """User and system CPU time of one process (all its threads) in clock ticks."""

    utime: int
    stime: int

    @property
    def total(self) -> int:
        """utime + stime, the figure CPU-per-request is built from."""
        return self.utime + self.stime

    def __sub__(self, other: CpuTicks) -> CpuTicks:
        return CpuTicks(self.utime - other.utime, self.stime - other.stime)

    def __add__(self, other: CpuTicks) -> CpuTicks:
        return CpuTicks(self.utime + other.utime, self.stime + other.stime)


def _fields_after_comm(stat_line: str) -> list[str]:
    # comm may contain spaces and parentheses, so split at the *last* ")".
    end = stat_line.rfind(")")
    if end < 0 or "(" not in stat_line[:end]:
        raise ProcStatError(f"no '(comm)' in stat line: {stat_line[:80]!r}")
    return stat_line[end + 1 :].split()


def parse_stat_cpu(stat_line: str) -> CpuTicks:
    """Extract utime and stime (fields 14 and 15) from the text of /proc/<pid>/stat."""
    rest = _fields_after_comm(stat_line)
    if len(rest) <= _STIME_IDX:
        raise ProcStatError(f"stat line too short ({len(rest)} fields after comm)")
    try:
        return CpuTicks(int(rest[_UTIME_IDX]), int(rest[_STIME_IDX]))
    except ValueError as exc:
        raise ProcStatError(f"non-numeric utime/stime in stat line: {exc}") from exc


def parse_stat_ppid(stat_line: str) -> int:
    """Extract the parent pid (field 4) from the text of /proc/<pid>/stat."""
    rest = _fields_after_comm(stat_line)
    try:
        return int(rest[_PPID_IDX])
    except (IndexError, ValueError) as exc:
        raise ProcStatError(f"bad ppid in stat line: {exc}") from exc


def read_cpu_ticks(pid: int, proc: Path = Path("/proc")) -> CpuTicks:
    """CPU ticks used so far by ``pid`` (all threads included, reaped children excluded)."""
    return parse_stat_cpu((proc / str(pid) / "stat").read_text())


def children(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Direct children of ``pid``, e.g. the workers of an nginx master.

    Uses /proc/<pid>/task/*/children (CONFIG_PROC_CHILDREN) and falls back to scanning
    every process's ppid when that file is unavailable.
    """
    task_dir = proc / str(pid) / "task"
    found: set[int] = set()
    try:
        tasks = list(task_dir.iterdir())
    except FileNotFoundError:
        return []
    have_children_file = False
    for task in tasks:
        try:
            text = (task / "children").read_text()
        except (FileNotFoundError, PermissionError):
            continue
        have_children_file = True
        found.update(int(tok) for tok in text.split())
    if have_children_file:
        return sorted(found)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if parse_stat_ppid((entry / "stat").read_text()) == pid:
                found.add(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, ProcStatError):
            continue
    return sorted(found)


@dataclass(frozen=True)
class SystemCpu:
    """Machine-wide CPU time from the aggregate "cpu" line of /proc/stat, in clock ticks."""

    busy: int
    total: int

    def __sub__(self, other: SystemCpu) -> SystemCpu:
        return SystemCpu(self.busy - other.busy, self.total - other.total)


def parse_system_cpu(proc_stat_text: str) -> SystemCpu:
    """Busy and total ticks of all CPUs; idle and iowait count as not busy.

    Lets the harness notice CPU burnt by processes it did not start (a shared machine),
    which would make the figures of that run unreliable.
    """
    for line in proc_stat_text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            try:
                # user nice system idle iowait irq softirq steal; guest time is already in user.
                vals = [int(v) for v in parts[1:9]]
            except ValueError as exc:
                raise ProcStatError(f"non-numeric /proc/stat cpu line: {exc}") from exc
            if len(vals) < 5:
                raise ProcStatError(f"/proc/stat cpu line too short: {line!r}")
            total = sum(vals)
            idle = vals[3] + vals[4]
            return SystemCpu(busy=total - idle, total=total)
    raise ProcStatError("no aggregate 'cpu' line in /proc/stat")


def read_system_cpu(proc: Path = Path("/proc")) -> SystemCpu:
    """Current machine-wide CPU ticks."""
    return parse_system_cpu((proc / "stat").read_text())


def clock_ticks_per_second() -> int:
    """Kernel USER_HZ, the unit of utime/stime (100 on practically every Linux)."""
    return int(os.sysconf("SC_CLK_TCK"))


def cpu_us_per_request(delta_ticks: int, requests: int, clk_tck: int) -> float | None:
    """Microseconds of CPU per completed request, or None when no request completed.

    One tick is 1/clk_tck s (10 ms at 100 Hz), so the absolute error is up to one tick
    per sample; over a 10 s run at full load that is about 0.1 %.
    """
    if requests <= 0:
        return None
    if clk_tck <= 0:
        raise ValueError(f"clk_tck must be positive, got {clk_tck}")
    if delta_ticks < 0:
        raise ValueError(f"CPU ticks went backwards ({delta_ticks}); wrong pid?")
    return delta_ticks * 1_000_000 / clk_tck / requests
