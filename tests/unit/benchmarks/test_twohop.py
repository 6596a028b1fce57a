"""Unit tests for the pure parts of benchmarks.twohop: added latency, mCPU, the comparison
with daprd's published figures and the table.

The goal line ("under a quarter of daprd") is computed from these, so the arithmetic and the
pass/fail boundaries are pinned rather than eyeballed.
"""

from __future__ import annotations

import pytest

from benchmarks.loadgen import LatencySummary, LoadResult
from benchmarks.twohop import (
    COLUMNS,
    DAPR_US_PER_REQ,
    DIRECT,
    ONE_HOP,
    TWO_HOP,
    RunFigures,
    added_ms,
    compare_with_dapr,
    estimate_seconds,
    fill_added,
    format_markdown_table,
    format_text_table,
    mcpu,
    parse_args,
    table_rows,
)


def _lat(p50: float, p90: float, p99: float) -> LatencySummary:
    return LatencySummary(1000, p50, p50 / 2, p50, p90, p99, p99 * 2, p99 * 3)


def _run(
    target: str,
    p50: float,
    p99: float,
    us: dict[str, float | None] | None = None,
    rps: float = 1000.0,
    errors: int = 0,
) -> RunFigures:
    load = LoadResult("http://x/", 1000.0, 20.0, 16, 5.0, "timerfd", completed=20_000)
    load.achieved_rps = rps
    load.latency = _lat(p50, (p50 + p99) / 2, p99)
    load.send_lag = _lat(0.05, 0.1, 0.2)
    load.non_2xx_3xx = errors
    fig = RunFigures(target, "http://x/", load)
    for s, v in (us or {}).items():
        fig.sidecar_us_per_req[s] = v
        fig.sidecar_mcpu[s] = mcpu(v, rps)
    return fig


@pytest.mark.parametrize(
    ("value", "direct", "want"),
    [(0.35, 0.1, 0.25), (0.1, 0.1, 0.0), (0.08, 0.1, -0.02), (None, 0.1, None), (0.3, None, None)],
    ids=["slower", "same", "faster-is-negative", "no-value", "no-direct"],
)
def test_added_ms(value: float | None, direct: float | None, want: float | None) -> None:
    got = added_ms(value, direct)
    assert got == pytest.approx(want) if want is not None else got is None


@pytest.mark.parametrize(
    ("us_per_req", "rps", "want"),
    [
        (200.0, 1000.0, 200.0),
        (50.0, 1000.0, 50.0),
        (50.0, 500.0, 25.0),
        (1000.0, 1000.0, 1000.0),
        (None, 1000.0, None),
        (50.0, None, None),
    ],
    ids=["daprd", "quarter-of-daprd", "half-rate", "one-core", "no-cpu", "no-rps"],
)
def test_mcpu(us_per_req: float | None, rps: float | None, want: float | None) -> None:
    assert mcpu(us_per_req, rps) == want


def test_daprd_cpu_per_request() -> None:
    assert DAPR_US_PER_REQ == 200.0  # 200 mCPU at 1000 rps


def test_fill_added_uses_the_direct_run() -> None:
    runs = [
        _run(DIRECT, 0.1, 0.5),
        _run(ONE_HOP, 0.2, 0.7, {"B": 40.0}),
        _run(TWO_HOP, 0.35, 1.2, {"A": 45.0, "B": 40.0}),
    ]
    fill_added(runs)
    assert runs[0].added_p50_ms == pytest.approx(0.0)
    assert (runs[1].added_p50_ms, runs[1].added_p99_ms) == pytest.approx((0.1, 0.2))
    assert (runs[2].added_p50_ms, runs[2].added_p99_ms) == pytest.approx((0.25, 0.7))
    assert runs[2].added_p90_ms == pytest.approx(0.775 - 0.3)


def test_fill_added_without_direct_leaves_none() -> None:
    runs = [_run(TWO_HOP, 0.35, 1.2)]
    fill_added(runs)
    assert runs[0].added_p50_ms is None


def _two_hop(
    added_p50: float | None, added_p99: float | None, a: float | None, b: float | None
) -> RunFigures:
    fig = _run(TWO_HOP, 0.5, 2.0, {"A": a, "B": b})
    fig.added_p50_ms, fig.added_p99_ms = added_p50, added_p99
    return fig


@pytest.mark.parametrize(
    ("fig", "status", "ratios"),
    [
        (_two_hop(0.2, 0.5, 40.0, 45.0), "MET", (0.2 / 1.06, 0.5 / 2.90, 45.0 / 200)),
        (_two_hop(0.27, 0.5, 40.0, 45.0), "NOT MET", (0.27 / 1.06, 0.5 / 2.90, 0.225)),
        (_two_hop(0.2, 0.8, 40.0, 45.0), "NOT MET", (0.2 / 1.06, 0.8 / 2.90, 0.225)),
        (_two_hop(0.2, 0.5, 40.0, 50.0), "NOT MET", (0.2 / 1.06, 0.5 / 2.90, 0.25)),
        (_two_hop(0.2, 0.5, 60.0, 10.0), "NOT MET", (0.2 / 1.06, 0.5 / 2.90, 0.3)),
        (_two_hop(-0.01, 0.1, 1.0, 1.0), "MET", (-0.01 / 1.06, 0.1 / 2.90, 0.005)),
        (_two_hop(None, 0.5, 40.0, 45.0), "SKIPPED", (None, 0.5 / 2.90, 0.225)),
        (_two_hop(0.2, 0.5, 40.0, None), "SKIPPED", (0.2 / 1.06, 0.5 / 2.90, None)),
    ],
    ids=[
        "all-under",
        "p50-over",
        "p99-over",
        "cpu-exactly-a-quarter-is-not-under",
        "worst-sidecar-counts",
        "negative-added-latency",
        "no-latency",
        "no-cpu-for-B",
    ],
)
def test_compare_with_dapr(
    fig: RunFigures, status: str, ratios: tuple[float | None, float | None, float | None]
) -> None:
    c = compare_with_dapr(fig, 1000.0, 16)
    assert c.status == status
    got = (c.p50_ratio, c.p99_ratio, c.cpu_ratio)
    for g, w in zip(got, ratios, strict=True):
        assert g == pytest.approx(w) if w is not None else g is None
    assert c.like_for_like


@pytest.mark.parametrize(
    ("fig", "why"),
    [(None, "no successful"), (RunFigures(TWO_HOP, "u"), "no successful")],
    ids=["no-run", "failed-run"],
)
def test_compare_with_dapr_skips_without_a_run(fig: RunFigures | None, why: str) -> None:
    c = compare_with_dapr(fig, 1000.0, 16)
    assert c.status == "SKIPPED"
    assert why in c.message


@pytest.mark.parametrize(
    ("rate", "connections", "like"),
    [(1000.0, 16, True), (500.0, 16, False), (1000.0, 4, False)],
    ids=["same-as-daprd", "other-rate", "other-connections"],
)
def test_compare_with_dapr_flags_other_test_shapes(
    rate: float, connections: int, like: bool
) -> None:
    c = compare_with_dapr(_two_hop(0.2, 0.5, 40.0, 45.0), rate, connections)
    assert c.like_for_like is like
    assert ("not like for like" in c.message) is not like


def test_compare_message_names_every_figure() -> None:
    c = compare_with_dapr(_two_hop(0.2, 0.5, 40.0, 45.0), 1000.0, 16)
    assert "added p50 +0.200 ms vs +1.06 ms = 0.19x (ok)" in c.message
    assert "added p99 +0.500 ms vs +2.90 ms = 0.17x (ok)" in c.message
    assert "A 40.0 / B 45.0 us/req (worst = 45 mCPU at 1000 rps)" in c.message
    assert "= 0.23x (ok)" in c.message


def test_table_rows_show_only_the_sidecars_in_the_path() -> None:
    runs = [
        _run(DIRECT, 0.1, 0.5, {"A": 0.1, "B": 0.2}),
        _run(ONE_HOP, 0.2, 0.7, {"A": 0.3, "B": 40.0}),
        _run(TWO_HOP, 0.35, 1.2, {"A": 45.0, "B": 41.0}, errors=2),
    ]
    fill_added(runs)
    rows = {r[0]: dict(zip(COLUMNS, r, strict=True)) for r in table_rows(runs)}
    assert rows[DIRECT]["A us/req"] == rows[DIRECT]["B us/req"] == "-"
    assert rows[DIRECT]["+p50 ms"] == "-"
    assert rows[ONE_HOP]["A us/req"] == "-"
    assert rows[ONE_HOP]["B us/req"] == "40.0"
    assert rows[ONE_HOP]["+p99 ms"] == "+0.200"
    assert rows[TWO_HOP]["A mCPU"] == "45"
    assert rows[TWO_HOP]["B mCPU"] == "41"
    assert rows[TWO_HOP]["+p50 ms"] == "+0.250"
    assert rows[TWO_HOP]["rps"] == "1,000"
    assert rows[TWO_HOP]["errors"] == "2"
    assert rows[TWO_HOP]["lag p99"] == "0.200"


def test_tables_render_every_run() -> None:
    runs = [_run(DIRECT, 0.1, 0.5), RunFigures(TWO_HOP, "u", error="boom")]
    text = format_text_table(runs).splitlines()
    assert text[0].split()[0] == "target"
    assert text[3].split()[:2] == [TWO_HOP, "ERROR"]
    md = format_markdown_table(runs).splitlines()
    assert len(md) == 4
    assert all(line.count("|") == len(COLUMNS) + 1 for line in md)


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        ([], (1000.0, 20.0, 2.0, 16, False)),
        (
            ["--rate", "500", "--duration", "5", "--connections", "4", "--no-save"],
            (500.0, 5.0, 2.0, 4, True),
        ),
        (["--warmup", "0"], (1000.0, 20.0, 0.0, 16, False)),
    ],
    ids=["defaults-match-daprd-test", "overrides", "no-warmup"],
)
def test_parse_args(argv: list[str], want: tuple[float, float, float, int, bool]) -> None:
    a = parse_args(argv)
    assert (a.rate, a.duration, a.warmup, a.connections, a.no_save) == want


@pytest.mark.parametrize(
    "argv",
    [["--rate", "0"], ["--duration", "-1"], ["--warmup", "-1"], ["--connections", "0"]],
    ids=["zero-rate", "negative-duration", "negative-warmup", "no-connections"],
)
def test_parse_args_rejects(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_default_run_stays_under_two_minutes() -> None:
    assert estimate_seconds(20.0, 2.0) < 120
