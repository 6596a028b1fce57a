"""Unit tests for benchmarks.report: ratios, the PASS/FAIL verdict and table rendering.

The verdict is what people will quote, so its boundaries and missing-data cases are pinned.
"""

from __future__ import annotations

import pytest

from benchmarks.report import (
    COLUMNS,
    DIRECT,
    FASTPROXY,
    NGINX,
    Measurement,
    case_ratios,
    case_title,
    format_markdown_table,
    format_text_table,
    ratio,
    verdict,
)
from tests.unit.benchmarks.measurements import small_c50_run


def _m(
    target: str,
    rps: float | None,
    cpu: float | None,
    case: str = "small-c50",
    error: str | None = None,
) -> Measurement:
    return small_c50_run(target, case, rps=rps, proxy_cpu_us_per_req=cpu, error=error)


@pytest.mark.parametrize(
    ("num", "den", "want"),
    [
        (10.0, 5.0, 2.0),
        (4.0, 5.0, 0.8),
        (0.0, 5.0, 0.0),
        (None, 5.0, None),
        (5.0, None, None),
        (5.0, 0.0, None),
    ],
    ids=["double", "fraction", "zero-numerator", "no-numerator", "no-base", "zero-base"],
)
def test_ratio(num: float | None, den: float | None, want: float | None) -> None:
    assert ratio(num, den) == want


def test_case_ratios() -> None:
    ms = [_m(DIRECT, 200_000, None), _m(NGINX, 100_000, 10.0), _m(FASTPROXY, 90_000, 12.0)]
    r = case_ratios(ms)
    assert r[DIRECT].rps_vs_direct == 1.0
    assert r[DIRECT].rps_vs_nginx == pytest.approx(2.0)
    assert r[DIRECT].cpu_vs_nginx is None  # direct has no proxy
    assert r[NGINX].rps_vs_nginx == 1.0
    assert r[NGINX].cpu_vs_nginx == 1.0
    assert r[FASTPROXY].rps_vs_nginx == pytest.approx(0.9)
    assert r[FASTPROXY].rps_vs_direct == pytest.approx(0.45)
    assert r[FASTPROXY].cpu_vs_nginx == pytest.approx(1.2)


def test_case_ratios_ignore_failed_baseline() -> None:
    ms = [_m(NGINX, 100_000, 10.0, error="boom"), _m(FASTPROXY, 90_000, 12.0)]
    r = case_ratios(ms)
    assert r[FASTPROXY].rps_vs_nginx is None
    assert r[FASTPROXY].cpu_vs_nginx is None
    assert r[NGINX].rps_vs_nginx is None


@pytest.mark.parametrize(
    ("ms", "status", "rps_ratio", "cpu_ratio"),
    [
        ([_m(NGINX, 100_000, 10.0), _m(FASTPROXY, 95_000, 11.0)], "PASS", 0.95, 1.1),
        ([_m(NGINX, 100_000, 10.0), _m(FASTPROXY, 80_000, 13.0)], "PASS", 0.8, 1.3),
        ([_m(NGINX, 100_000, 10.0), _m(FASTPROXY, 79_999, 10.0)], "FAIL", 0.79999, 1.0),
        ([_m(NGINX, 100_000, 10.0), _m(FASTPROXY, 120_000, 13.1)], "FAIL", 1.2, 1.31),
        ([_m(NGINX, 100_000, 10.0), _m(FASTPROXY, 50_000, 30.0)], "FAIL", 0.5, 3.0),
        ([_m(NGINX, 100_000, 10.0)], "SKIPPED", None, None),
        (
            [_m(NGINX, 100_000, 10.0), _m(FASTPROXY, 95_000, 11.0, error="502s")],
            "SKIPPED",
            None,
            None,
        ),
        ([_m(NGINX, 100_000, 10.0), _m(FASTPROXY, 95_000, None)], "SKIPPED", 0.95, None),
        (
            [_m(NGINX, 100_000, 10.0, "4k-c50"), _m(FASTPROXY, 95_000, 11.0, "4k-c50")],
            "SKIPPED",
            None,
            None,
        ),
    ],
    ids=[
        "pass",
        "pass-exactly-at-bar",
        "fail-rps",
        "fail-cpu",
        "fail-both",
        "skip-no-fastproxy",
        "skip-fastproxy-errored",
        "skip-no-cpu-figure",
        "skip-other-case-only",
    ],
)
def test_verdict(
    ms: list[Measurement], status: str, rps_ratio: float | None, cpu_ratio: float | None
) -> None:
    v = verdict(ms)
    assert v.status == status
    assert v.rps_ratio == (None if rps_ratio is None else pytest.approx(rps_ratio))
    assert v.cpu_ratio == (None if cpu_ratio is None else pytest.approx(cpu_ratio))
    assert v.message.startswith("small-c50:")


def test_verdict_message_has_numbers() -> None:
    v = verdict([_m(NGINX, 100_000, 10.0), _m(FASTPROXY, 79_000, 14.0)])
    assert "79,000 rps" in v.message
    assert "0.79x" in v.message
    assert "1.40x" in v.message
    assert "NO" in v.message


def test_text_table() -> None:
    ms = [_m(DIRECT, 200_000, None), _m(NGINX, 100_000, 10.0), _m(FASTPROXY, 1, 1, error="x")]
    lines = format_text_table(ms).splitlines()
    assert lines[0].split() == [w for c in COLUMNS for w in c.split()]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split()[:4] == ["direct", "200,000", "2.00", "1.00"]
    assert lines[3].split() == [
        "nginx-proxy",
        "100,000",
        "1.00",
        "0.50",
        "0.500",
        "0.800",
        "1.250",
        "10.0",
        "1.00",
        "4.0",
    ]
    assert lines[4].split()[:2] == ["fastproxy", "ERROR"]
    # Right-aligned numbers: every line is equally long except for trailing blanks.
    assert len({len(ln) for ln in lines[:4]}) == 1


def test_markdown_table() -> None:
    md = format_markdown_table([_m(NGINX, 100_000, 10.0)]).splitlines()
    assert len(md) == 3
    assert md[1].count("---") == len(COLUMNS)
    assert md[2].startswith("| nginx-proxy | 100,000 |")


@pytest.mark.parametrize(
    ("conns", "want"),
    [
        (50, "small-c50: 13 B body, 50 connections, 10 s"),
        (1, "small-c50: 13 B body, 1 connection, 3 s"),
    ],
    ids=["plural", "singular"],
)
def test_case_title(conns: int, want: str) -> None:
    m = _m(NGINX, 1.0, 1.0)
    m.connections = conns
    assert case_title(m, 10.0 if conns == 50 else 3.0) == want
