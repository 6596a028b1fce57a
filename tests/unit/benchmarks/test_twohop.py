"""Unit tests for the pure parts of benchmarks.twohop: added latency, mCPU, the comparison
with daprd's published figures, the per-hop figures against the relay floor, mTLS against
plain two-hop, and the tables.

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
    HOP_COLUMNS,
    HOPS_OF,
    MTLS_COLUMNS,
    MTLS_GROUP,
    MTLS_SIDECARS,
    ONE_HOP,
    PER_RUN_OVERHEAD_S,
    PLAIN_GROUP,
    RELAY,
    RELAY_GROUP,
    RELAY_PROC,
    STARTUP_OVERHEAD_S,
    TARGETS,
    TARGETS_OF_GROUP,
    TWO_HOP,
    TWO_HOP_MTLS,
    RunFigures,
    added_ms,
    compare_with_dapr,
    estimate_seconds,
    fill_added,
    format_hop_markdown,
    format_hop_text,
    format_markdown_table,
    format_mtls_markdown,
    format_mtls_text,
    format_text_table,
    hop_figures,
    mcpu,
    mtls_comparison,
    mtls_ratio,
    parse_args,
    render_markdown,
    table_rows,
    unstarted_group,
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


def test_estimate_counts_every_target() -> None:
    per_run = 3.0 + 1.0 + PER_RUN_OVERHEAD_S
    assert estimate_seconds(3.0, 1.0) == pytest.approx(STARTUP_OVERHEAD_S + 5 * per_run)
    assert estimate_seconds(3.0, 1.0, n_targets=3) == pytest.approx(
        STARTUP_OVERHEAD_S + 3 * per_run
    )


# --------------------------------------------------------------------------- targets


def test_targets_run_the_two_hop_rows_back_to_back() -> None:
    assert TARGETS == (DIRECT, RELAY, ONE_HOP, TWO_HOP, TWO_HOP_MTLS)
    assert TARGETS.index(TWO_HOP_MTLS) == TARGETS.index(TWO_HOP) + 1


def test_every_target_names_the_processes_in_its_path() -> None:
    assert set(HOPS_OF) == set(TARGETS)
    assert HOPS_OF[DIRECT] == ()
    assert dict(HOPS_OF[RELAY]) == {"B": RELAY_PROC}
    assert dict(HOPS_OF[TWO_HOP]) == {"A": "A", "B": "B"}
    assert dict(HOPS_OF[TWO_HOP_MTLS]) == dict(zip(("A", "B"), MTLS_SIDECARS, strict=True))


def test_every_target_but_direct_belongs_to_one_start_group() -> None:
    grouped = [t for targets in TARGETS_OF_GROUP.values() for t in targets]
    assert sorted(grouped) == sorted(t for t in TARGETS if t != DIRECT)


@pytest.mark.parametrize(
    ("target", "failed", "want"),
    [
        (TWO_HOP_MTLS, {MTLS_GROUP: "x"}, MTLS_GROUP),
        (TWO_HOP, {MTLS_GROUP: "x"}, None),
        (ONE_HOP, {PLAIN_GROUP: "x"}, PLAIN_GROUP),
        (TWO_HOP, {PLAIN_GROUP: "x", RELAY_GROUP: "y"}, PLAIN_GROUP),
        (RELAY, {RELAY_GROUP: "y"}, RELAY_GROUP),
        (DIRECT, {RELAY_GROUP: "y", PLAIN_GROUP: "x", MTLS_GROUP: "z"}, None),
        (TWO_HOP_MTLS, {}, None),
    ],
    ids=[
        "mtls-pair-failed",
        "mtls-failure-spares-plain",
        "plain-pair-failed-one-hop",
        "plain-pair-failed-two-hop",
        "relay-failed",
        "direct-never",
        "all-started",
    ],
)
def test_unstarted_group(target: str, failed: dict[str, str], want: str | None) -> None:
    assert unstarted_group(target, failed) == want


# --------------------------------------------------------------------------- new rows


def _full_set() -> list[RunFigures]:
    """direct, relay, one-hop, two-hop, two-hop-mtls, with the CPU of every process sampled."""
    idle: dict[str, float | None] = {"relay": 0.5, "A": 1.0, "B": 1.0, "A'": 1.5, "B'": 1.5}
    runs = [
        _run(DIRECT, 0.1, 0.5, idle),
        _run(RELAY, 0.15, 0.6, {**idle, "relay": 20.0}),
        _run(ONE_HOP, 0.2, 0.7, {**idle, "B": 40.0}),
        _run(TWO_HOP, 0.35, 1.2, {**idle, "A": 45.0, "B": 50.0}),
        _run(TWO_HOP_MTLS, 0.4, 1.5, {**idle, "A'": 54.0, "B'": 65.0}, rps=990.0),
    ]
    fill_added(runs)
    return runs


def test_table_rows_put_the_relay_under_b_and_the_mtls_pair_under_a_and_b() -> None:
    rows = {r[0]: dict(zip(COLUMNS, r, strict=True)) for r in table_rows(_full_set())}
    assert rows[RELAY]["A us/req"] == "-"
    assert rows[RELAY]["B us/req"] == "20.0"
    assert rows[RELAY]["B mCPU"] == "20"
    assert rows[RELAY]["+p50 ms"] == "+0.050"
    assert rows[TWO_HOP]["A us/req"] == "45.0"  # not A' (idle during two-hop)
    assert (rows[TWO_HOP_MTLS]["A us/req"], rows[TWO_HOP_MTLS]["B us/req"]) == ("54.0", "65.0")
    assert rows[TWO_HOP_MTLS]["B mCPU"] == "64"  # 65 us/req x 990 rps
    assert rows[TWO_HOP_MTLS]["rps"] == "990"
    assert rows[TWO_HOP_MTLS]["+p99 ms"] == "+1.000"


def test_hop_figures_against_the_relay_floor() -> None:
    hops = hop_figures(_full_set())
    assert [h.label for h in hops] == [
        "relay (floor)",
        "B (one-hop)",
        "A (two-hop)",
        "B (two-hop)",
        "A' (two-hop-mtls)",
        "B' (two-hop-mtls)",
    ]
    assert [h.us_per_req for h in hops] == [20.0, 40.0, 45.0, 50.0, 54.0, 65.0]
    assert [h.x_floor for h in hops] == pytest.approx([1.0, 2.0, 2.25, 2.5, 2.7, 3.25])
    assert hops[-1].mcpu == pytest.approx(65.0 * 0.99)


def test_hop_figures_put_the_floor_first_whatever_the_run_order() -> None:
    runs = _full_set()
    hops = hop_figures([runs[3], runs[1]])
    assert [h.process for h in hops] == [RELAY_PROC, "A", "B"]


def test_hop_figures_without_a_relay_run_have_no_ratio() -> None:
    runs = [r for r in _full_set() if r.target != RELAY]
    runs.append(RunFigures(RELAY, "u", error="could not start"))
    hops = hop_figures(runs)
    assert [h.label for h in hops][:1] == ["B (one-hop)"]
    assert all(h.x_floor is None for h in hops)
    assert all(h.us_per_req is not None for h in hops)


def test_hop_figures_skip_failed_runs_and_zero_floor() -> None:
    runs = _full_set()
    runs[1].sidecar_us_per_req[RELAY_PROC] = 0.0  # fewer than one tick: no meaningful ratio
    runs[4] = RunFigures(TWO_HOP_MTLS, "u", error="boom")
    hops = hop_figures(runs)
    assert TWO_HOP_MTLS not in {h.target for h in hops}
    assert all(h.x_floor is None for h in hops)


@pytest.mark.parametrize(
    ("mtls", "plain", "want"),
    [
        (120.0, 100.0, 1.2),
        (0.3, 0.25, 1.2),
        (80.0, 100.0, 0.8),
        (0.3, 0.0, None),
        (0.3, -0.02, None),
        (None, 100.0, None),
        (120.0, None, None),
    ],
    ids=["costlier", "latency", "cheaper", "plain-zero", "plain-negative", "no-mtls", "no-plain"],
)
def test_mtls_ratio(mtls: float | None, plain: float | None, want: float | None) -> None:
    got = mtls_ratio(mtls, plain)
    assert got == pytest.approx(want) if want is not None else got is None


def test_mtls_comparison_pairs_a_prime_with_a_and_b_prime_with_b() -> None:
    rows = {r.figure: r for r in mtls_comparison(_full_set())}
    assert list(rows) == ["+p50 ms", "+p99 ms", "A us/req", "B us/req", "A mCPU", "B mCPU"]
    assert (rows["+p50 ms"].plain, rows["+p50 ms"].mtls) == pytest.approx((0.25, 0.3))
    assert rows["+p50 ms"].ratio == pytest.approx(1.2)
    assert rows["+p99 ms"].ratio == pytest.approx(1.0 / 0.7)
    assert (rows["A us/req"].plain, rows["A us/req"].mtls) == (45.0, 54.0)
    assert rows["A us/req"].ratio == pytest.approx(1.2)
    assert rows["B us/req"].ratio == pytest.approx(1.3)
    assert rows["B mCPU"].mtls == pytest.approx(65.0 * 0.99)
    assert rows["B mCPU"].ratio == pytest.approx(1.3 * 0.99)


def test_mtls_comparison_without_the_mtls_run() -> None:
    runs = [*_full_set()[:4], RunFigures(TWO_HOP_MTLS, "u", error="handshake failed")]
    rows = mtls_comparison(runs)
    assert all(r.plain is not None for r in rows)
    assert all(r.mtls is None and r.ratio is None for r in rows)
    assert all(r.ratio is None for r in mtls_comparison(_full_set()[:3]))


def test_compare_with_dapr_for_the_mtls_pair_uses_a_prime_and_b_prime() -> None:
    fig = _full_set()[4]
    c = compare_with_dapr(fig, 1000.0, 16, sidecars=MTLS_SIDECARS)
    assert c.cpu_ratio == pytest.approx(65.0 / 200)
    assert "A' 54.0 / B' 65.0 us/req" in c.message
    plain_view = compare_with_dapr(fig, 1000.0, 16)  # A and B were idle in this run
    assert plain_view.cpu_ratio == pytest.approx(1.0 / 200)


def test_compare_with_dapr_skip_names_the_run() -> None:
    c = compare_with_dapr(RunFigures(TWO_HOP_MTLS, "u"), 1000.0, 16, sidecars=MTLS_SIDECARS)
    assert c.message == "no successful two-hop-mtls run"


def test_new_tables_render() -> None:
    runs = _full_set()
    hop_text = format_hop_text(hop_figures(runs)).splitlines()
    assert hop_text[0].split() == list(HOP_COLUMNS[:3]) + HOP_COLUMNS[3].split()
    assert hop_text[2].split() == ["relay", "(floor)", "20.0", "20", "1.00"]
    assert hop_text[-1].split() == ["B'", "(two-hop-mtls)", "65.0", "64", "3.25"]
    mtls_text = format_mtls_text(mtls_comparison(runs)).splitlines()
    assert mtls_text[2].split() == ["+p50", "ms", "+0.250", "+0.300", "1.20"]
    assert mtls_text[4].split() == ["A/A'", "us/req", "45.0", "54.0", "1.20"]
    assert mtls_text[7].split() == ["B/B'", "mCPU", "50", "64", "1.29"]
    for md, ncols in (
        (format_hop_markdown(hop_figures(runs)), len(HOP_COLUMNS)),
        (format_mtls_markdown(mtls_comparison(runs)), len(MTLS_COLUMNS)),
    ):
        assert all(line.count("|") == ncols + 1 for line in md.splitlines())


def _doc(start_errors: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "timestamp_utc": "2026-11-27T12:00:00+00:00",
        "git": {"commit": "abc", "dirty": False, "untracked": False},
        "machine": {
            "nproc": 2,
            "cpu_model": "cpu",
            "kernel": "k",
            "python": "3.11",
            "uvloop": "u",
            "httptools": "h",
            "nginx": "nginx/1",
        },
        "parameters": {"rate": 1000.0, "connections": 16, "duration_s": 20.0, "warmup_s": 2.0},
        "mtls": {
            "tls_version": "TLSv1.3",
            "cipher": "TLS_AES_256_GCM_SHA384",
            "peer_id": "spiffe://public/ns/default/b",
        },
        "start_errors": start_errors or {},
    }


def test_markdown_has_every_section() -> None:
    runs = _full_set()
    cmp = compare_with_dapr(runs[3], 1000.0, 16)
    cmp_mtls = compare_with_dapr(runs[4], 1000.0, 16, sidecars=MTLS_SIDECARS)
    md = render_markdown(_doc(), runs, cmp, cmp_mtls)
    assert "| two-hop-mtls | 990 |" in md
    assert "| relay (floor) | 20.0 | 20 | 1.00 |" in md
    assert "| A/A' us/req | 45.0 | 54.0 | 1.20 |" in md
    assert "TLSv1.3" in md and "`spiffe://public/ns/default/b`" in md
    assert "**Goal (< 0.25x daprd's added latency and CPU): " in md
    assert "**Goal with mTLS" in md and "A' 54.0 / B' 65.0 us/req" in md
    assert "## Errors" not in md


def test_markdown_lists_start_errors() -> None:
    runs = [*_full_set()[:4], RunFigures(TWO_HOP_MTLS, "", error="not measured")]
    md = render_markdown(
        _doc({MTLS_GROUP: "A' cannot reach app 'b'"}), runs, compare_with_dapr(None, 1000.0, 16)
    )
    assert "## Errors" in md
    assert f"- start, {MTLS_GROUP}:" in md
    assert "A' cannot reach app 'b'" in md
    assert "| two-hop-mtls | ERROR |" in md
