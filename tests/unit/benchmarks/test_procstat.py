"""Unit tests for benchmarks.procstat: /proc/<pid>/stat parsing and CPU-per-request math.

The CPU figure decides half of the verdict, so the field offsets and unit conversion are pinned.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.procstat import (
    CpuTicks,
    ProcStatError,
    children,
    cpu_us_per_request,
    parse_stat_cpu,
    parse_stat_ppid,
    read_cpu_ticks,
)

# Shape of a real nginx worker's stat line: utime=1234 (field 14), stime=567 (field 15).
NGINX_WORKER = (
    "4242 (nginx) S 4241 4241 4241 0 -1 4194624 1375 0 0 0 1234 567 0 0 20 0 1 0 "
    "12345 11223344 1024 18446744073709551615 1 1 0 0 0 0 1073741824 0 0 0 17 1 0 0 0 0 0"
)


def _stat(comm: str, ppid: int = 1, utime: int = 10, stime: int = 20) -> str:
    return f"99 ({comm}) R {ppid} 99 99 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0 5 0 0"


@pytest.mark.parametrize(
    ("line", "want"),
    [
        (NGINX_WORKER, CpuTicks(1234, 567)),
        (_stat("python3"), CpuTicks(10, 20)),
        (_stat("my proc"), CpuTicks(10, 20)),
        (_stat("we)ird (name)"), CpuTicks(10, 20)),
        (_stat("x", utime=0, stime=0), CpuTicks(0, 0)),
        (_stat("big", utime=10**12, stime=1), CpuTicks(10**12, 1)),
    ],
    ids=["nginx-worker", "plain", "space-in-comm", "parens-in-comm", "idle", "huge"],
)
def test_parse_stat_cpu(line: str, want: CpuTicks) -> None:
    assert parse_stat_cpu(line) == want


@pytest.mark.parametrize(
    "line",
    [
        "4242 nginx S 1 2 3",
        "4242 (nginx) S 4241 4241",
        "4242 (nginx) S 4241 4241 4241 0 -1 0 0 0 0 0 abc 567 0",
        "",
    ],
    ids=["no-parens", "too-short", "non-numeric", "empty"],
)
def test_parse_stat_cpu_rejects(line: str) -> None:
    with pytest.raises(ProcStatError):
        parse_stat_cpu(line)


@pytest.mark.parametrize(
    ("line", "want"),
    [(NGINX_WORKER, 4241), (_stat("a) (b", ppid=7), 7)],
    ids=["nginx-worker", "parens-in-comm"],
)
def test_parse_stat_ppid(line: str, want: int) -> None:
    assert parse_stat_ppid(line) == want


def test_cpu_ticks_arithmetic() -> None:
    a, b = CpuTicks(100, 50), CpuTicks(30, 20)
    assert a - b == CpuTicks(70, 30)
    assert a + b == CpuTicks(130, 70)
    assert (a - b).total == 100


@pytest.mark.parametrize(
    ("delta_ticks", "requests", "clk_tck", "want"),
    [
        (100, 10_000, 100, 100.0),  # 1 s of CPU over 10k requests = 100 us each
        (1000, 1_000_000, 100, 10.0),  # 10 s of CPU over 1M requests
        (0, 5000, 100, 0.0),  # idle process
        (250, 1000, 250, 1000.0),  # CONFIG_HZ-style 250 ticks per second
        (100, 0, 100, None),  # nothing completed: no figure rather than infinity
    ],
    ids=["100us", "10us", "idle", "clk-250", "no-requests"],
)
def test_cpu_us_per_request(
    delta_ticks: int, requests: int, clk_tck: int, want: float | None
) -> None:
    got = cpu_us_per_request(delta_ticks, requests, clk_tck)
    if want is None:
        assert got is None
    else:
        assert got == pytest.approx(want)


@pytest.mark.parametrize(
    ("delta_ticks", "clk_tck"),
    [(-1, 100), (10, 0)],
    ids=["ticks-went-backwards", "zero-clk-tck"],
)
def test_cpu_us_per_request_rejects(delta_ticks: int, clk_tck: int) -> None:
    with pytest.raises(ValueError):
        cpu_us_per_request(delta_ticks, 100, clk_tck)


def _fake_proc(root: Path, pid: int, ppid: int, kids_by_task: dict[int, str] | None) -> None:
    d = root / str(pid)
    (d / "task" / str(pid)).mkdir(parents=True)
    (d / "stat").write_text(_stat("nginx", ppid=ppid, utime=pid, stime=1))
    if kids_by_task is not None:
        for tid, text in kids_by_task.items():
            (d / "task" / str(tid)).mkdir(exist_ok=True)
            (d / "task" / str(tid) / "children").write_text(text)


@pytest.mark.parametrize(
    ("with_children_files", "want"),
    [(True, [11, 12, 13]), (False, [11, 12])],
    ids=["task-children-files", "fallback-ppid-scan"],
)
def test_children(tmp_path: Path, with_children_files: bool, want: list[int]) -> None:
    # Master 10 has workers 11 and 12 (and, per its second thread's file, 13).
    _fake_proc(tmp_path, 10, 1, {10: "11 12 ", 20: "13"} if with_children_files else None)
    _fake_proc(tmp_path, 11, 10, {11: ""} if with_children_files else None)
    _fake_proc(tmp_path, 12, 10, {12: ""} if with_children_files else None)
    _fake_proc(tmp_path, 30, 1, {30: ""} if with_children_files else None)
    (tmp_path / "self").mkdir()
    assert children(10, proc=tmp_path) == want


def test_children_of_missing_pid_is_empty(tmp_path: Path) -> None:
    assert children(12345, proc=tmp_path) == []


def test_read_cpu_ticks_fake_and_live(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 42, 1, None)
    assert read_cpu_ticks(42, proc=tmp_path) == CpuTicks(42, 1)
    live = read_cpu_ticks(os.getpid())
    assert live.utime >= 0
    assert live.stime >= 0
