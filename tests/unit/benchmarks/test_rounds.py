"""Unit tests for the rounds of small-c50 (the main verdict's case) and the option behind them.

One run per target left the verdict to the machine's drift (0.78x one run, 0.84x the next), so
how the runs are planned, merged into medians and quoted in the verdict is pinned here; the
observability case's side of the same machinery is in test_obs_case.py.
"""

from __future__ import annotations

import pytest

from benchmarks.cases import (
    ALL_CASES,
    case_rounds,
    case_targets,
    count_runs,
    plan_summary,
    round_plan,
    settle_overhead_s,
)
from benchmarks.report import (
    COLUMNS,
    DIRECT,
    FASTPROXY,
    NGINX,
    OBS_CASE,
    RELAY,
    RETRY_CASE,
    ROUNDED_CASES,
    ROUNDS,
    ROUNDS_COLUMN,
    VERDICT_CASE,
    Measurement,
    case_ratios,
    case_title,
    format_markdown_table,
    format_text_table,
    median_run,
    merge_rounds,
    round_count,
    round_cpu_text,
    rounds_note,
    run_errors,
    verdict,
)
from benchmarks.run import _progress, parse_args, render_markdown
from tests.unit.benchmarks.measurements import small_c50_run
from tests.unit.benchmarks.run_docs import run_doc

ALL_TARGETS = [DIRECT, NGINX, RELAY, FASTPROXY]


def _m(
    target: str,
    cpu: float | None,
    rps: float | None,
    *,
    p99: float = 1.25,
    error: str | None = None,
    case: str = VERDICT_CASE,
) -> Measurement:
    return small_c50_run(
        target,
        case,
        requests=300_000,
        rps=rps,
        p99_ms=p99,
        proxy_cpu_us_per_req=cpu,
        error=error,
    )


def _runs(
    target: str, cpus: tuple[float | None, ...], rpss: tuple[float, ...], errors: dict[int, str]
) -> list[Measurement]:
    """One target's runs in run order, told apart by p99 (the round, in ms)."""
    return [
        _m(target, cpu, rps, p99=float(k), error=errors.get(k))
        for k, (cpu, rps) in enumerate(zip(cpus, rpss, strict=True), 1)
    ]


# --------------------------------------------------------------------------- the option


def test_rounds_default_and_option() -> None:
    assert ROUNDS == 3
    assert ROUNDED_CASES == (VERDICT_CASE, OBS_CASE) == ("small-c50", "small-c50-obs")
    assert parse_args([]).rounds == ROUNDS
    assert parse_args(["--rounds", "1"]).rounds == 1
    assert parse_args(["--rounds", "5", "--cases", "small-c50"]).rounds == 5


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--rounds", "-2"], ["--rounds", "x"]])
def test_rounds_option_rejects(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_obs_rounds_option_is_gone() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--obs-rounds", "2"])


# --------------------------------------------------------------------------- the plan


@pytest.mark.parametrize(
    ("case", "want"),
    [
        (VERDICT_CASE, 4),
        (OBS_CASE, 4),
        (RETRY_CASE, 1),
        ("small-c1", 1),
        ("4k-c50", 1),
        ("64k-c1", 1),
    ],
)
def test_case_rounds_for_the_judged_cases(case: str, want: int) -> None:
    assert case_rounds(case, 4) == want
    assert case_rounds(case, 1) == 1


def test_small_c50_round_plan_interleaves_targets() -> None:
    rows = case_targets(VERDICT_CASE, [DIRECT, NGINX, FASTPROXY])
    assert round_plan(rows, 3) == [
        (1, DIRECT),
        (1, NGINX),
        (1, FASTPROXY),
        (2, NGINX),
        (2, FASTPROXY),
        (2, DIRECT),
        (3, FASTPROXY),
        (3, DIRECT),
        (3, NGINX),
    ]


@pytest.mark.parametrize(
    ("cases", "targets", "rounds", "runs", "summary"),
    [
        ([VERDICT_CASE], [NGINX, FASTPROXY], 2, 4, "small-c50 x 2 x 2 rounds = 4 runs"),
        ([VERDICT_CASE], [NGINX, FASTPROXY], 1, 2, "1 cases x 2 targets = 2 runs"),
        (
            [VERDICT_CASE, "small-c1", "64k-c50"],
            ALL_TARGETS,
            3,
            20,
            "small-c50 x 4 x 3 rounds + 2 cases x 4 targets = 20 runs",
        ),
        (
            list(ALL_CASES),
            ALL_TARGETS,
            1,
            31,
            "6 cases x 4 targets + small-c50-retry x 4 + small-c50-obs x 3 = 31 runs",
        ),
        (
            ["small-c1", RETRY_CASE],
            ALL_TARGETS,
            3,
            8,
            "1 cases x 4 targets + small-c50-retry x 4 = 8 runs",
        ),
    ],
    ids=["small-c50-2-rounds", "one-round-as-before", "mixed", "all-one-round", "no-rounded-case"],
)
def test_small_c50_runs_and_plan(
    cases: list[str], targets: list[str], rounds: int, runs: int, summary: str
) -> None:
    assert count_runs(cases, targets, rounds) == runs
    assert plan_summary(cases, targets, rounds) == summary
    # fastproxy-traced settles around each of its runs; small-c50 never settles.
    traced_runs = case_rounds(OBS_CASE, rounds) if OBS_CASE in cases else 0
    assert settle_overhead_s(cases, targets, rounds) == 3.0 * traced_runs


def test_progress_names_the_round_of_small_c50() -> None:
    m = _m(NGINX, 10.0, 100_000.0)
    assert _progress(5, 12, m, 2, 3) == (
        "[5/12] small-c50  nginx-proxy  (round 2/3)    100,000 rps  p99 1.250 ms  proxy 10.0 us/req"
    )
    assert _progress(5, 12, m) == (
        "[5/12] small-c50  nginx-proxy     100,000 rps  p99 1.250 ms  proxy 10.0 us/req"
    )


# --------------------------------------------------------------------------- the median


@pytest.mark.parametrize(
    ("rpss", "errors", "chosen_round"),
    [
        ((60_000.0, 50_000.0, 40_000.0), {}, 2),
        ((58_000.0, 52_000.0, 51_000.0, 60_000.0), {}, 2),  # even: the lower middle (52,000)
        ((70_000.0, 60_000.0, 40_000.0), {1: "wrk failed"}, 3),  # two left: the lower
        ((70_000.0, 40_000.0, 60_000.0), {1: "a", 2: "b"}, 3),  # the only success
    ],
    ids=["odd", "even", "failed-skipped", "one-success"],
)
def test_median_run_by_rps_without_cpu_figure(
    rpss: tuple[float, ...], errors: dict[int, str], chosen_round: int
) -> None:
    runs = _runs(DIRECT, (None,) * len(rpss), rpss, errors)
    m = median_run(runs)
    assert m.rps == rpss[chosen_round - 1]
    assert m.p99_ms == float(chosen_round)  # taken whole: that run's latencies too
    assert m.error is None
    assert m.proxy_cpu_us_per_req is None
    assert m.round_cpu_us_per_req == [None] * len(rpss)
    assert m.round_errors == [errors.get(k) for k in range(1, len(rpss) + 1)]
    assert round_cpu_text(m) == " / ".join(
        "failed" if k in errors else "-" for k in range(1, len(rpss) + 1)
    )


def test_median_run_prefers_cpu_over_rps() -> None:
    # By rps the median would be round 1 (50,000); by CPU it is round 3 (10.0).
    runs = _runs(NGINX, (9.0, 12.0, 10.0), (50_000.0, 40_000.0, 60_000.0), {})
    assert median_run(runs).p99_ms == 3.0
    # A run without a CPU figure is no candidate while others have one.
    runs = _runs(NGINX, (None, 12.0, 10.0), (50_000.0, 40_000.0, 60_000.0), {})
    assert median_run(runs).p99_ms == 3.0  # of 10.0 and 12.0: the lower
    # Only when no successful run has one does rps decide, here among the successful ones.
    runs = _runs(NGINX, (9.0, None, None), (50_000.0, 40_000.0, 60_000.0), {1: "died"})
    assert median_run(runs).p99_ms == 2.0


def test_median_run_without_any_figure_reports_first_success() -> None:
    runs = [_m(DIRECT, None, None, p99=float(k)) for k in (1, 2, 3)]
    runs[0].error = "x"
    assert median_run(runs).p99_ms == 2.0


def _small_c50_rounds() -> list[Measurement]:
    """Three rounds of all four targets, in run order, as run.py measures them: round 1 is
    the slow one (fastproxy's alone would read 0.78x rps and 1.35x CPU), rounds 2 and 3 are
    not; fastproxy's round 3 failed, leaving 13.5 and 12.8 us/req: the median is the lower,
    round 2."""
    figures: dict[str, tuple[tuple[float | None, float], ...]] = {
        DIRECT: ((None, 150_000.0), (None, 160_000.0), (None, 155_000.0)),
        NGINX: ((10.0, 100_000.0), (9.8, 101_000.0), (10.3, 99_000.0)),
        RELAY: ((8.0, 110_000.0), (8.2, 108_000.0), (7.9, 111_000.0)),
        FASTPROXY: ((13.5, 78_000.0), (12.8, 84_000.0), (12.6, 86_000.0)),
    }
    out = []
    for k, target in round_plan(list(figures), 3):
        cpu, rps = figures[target][k - 1]
        error = "502s" if (target, k) == (FASTPROXY, 3) else None
        out.append(_m(target, cpu, rps, p99=float(k), error=error))
    return out


def test_merge_small_c50_rounds() -> None:
    merged = merge_rounds(_small_c50_rounds())
    assert [m.target for m in merged] == ALL_TARGETS
    # direct by rps (155,000: round 3); the others by CPU.
    assert [m.p99_ms for m in merged] == [3.0, 1.0, 1.0, 2.0]
    assert [m.rps for m in merged] == [155_000.0, 100_000.0, 110_000.0, 84_000.0]
    assert [m.proxy_cpu_us_per_req for m in merged] == [None, 10.0, 8.0, 12.8]
    assert merged[0].round_cpu_us_per_req == [None, None, None]
    assert merged[3].round_cpu_us_per_req == [13.5, 12.8, None]
    assert run_errors(merged[3]) == [("small-c50 fastproxy (round 3/3)", "502s")]
    assert round_count(merged) == 3
    r = case_ratios(merged)
    assert r[FASTPROXY].rps_vs_direct == pytest.approx(84_000 / 155_000)


# --------------------------------------------------------------------------- verdict


def _merged(fp_cpus: tuple[float, ...], fp_rps: tuple[float, ...]) -> list[Measurement]:
    ng = _runs(NGINX, (10.0, 9.8, 10.3), (100_000.0, 101_000.0, 99_000.0), {})
    fp = _runs(FASTPROXY, fp_cpus, fp_rps, {})
    return [median_run(ng), median_run(fp)]


def test_verdict_over_rounds_passes_on_the_median() -> None:
    rows = _merged((13.5, 12.8, 12.6), (78_000.0, 84_000.0, 86_000.0))
    v = verdict(rows)
    assert (v.status, v.rounds) == ("PASS", 3)
    assert v.rps_ratio == pytest.approx(0.84)  # fastproxy round 2 against nginx round 1
    assert v.cpu_ratio == pytest.approx(1.28)
    assert v.message == (
        "small-c50, median of 3 rounds: fastproxy 84,000 rps = 0.84x nginx-proxy 100,000 rps "
        "(need >= 0.80: ok); CPU 12.8 us/req (rounds 13.5 / 12.8 / 12.6) = 1.28x nginx-proxy "
        "10.0 us/req (rounds 10.0 / 9.8 / 10.3) (need <= 1.30: ok)"
    )
    # The slow round alone would have failed.
    assert verdict([_m(NGINX, 10.0, 100_000.0), _m(FASTPROXY, 13.5, 78_000.0)]).status == "FAIL"


def test_verdict_over_rounds_fails_on_the_median() -> None:
    v = verdict(_merged((13.0, 13.6, 14.0), (80_000.0, 79_000.0, 81_000.0)))
    assert (v.status, v.rounds) == ("FAIL", 3)
    assert v.cpu_ratio == pytest.approx(1.36)
    assert v.rps_ratio == pytest.approx(0.79)
    assert "CPU 13.6 us/req (rounds 13.0 / 13.6 / 14.0) = 1.36x" in v.message
    assert "(need >= 0.80: NO)" in v.message
    assert "(need <= 1.30: NO)" in v.message


def test_verdict_over_rounds_skipped() -> None:
    ng = median_run(_runs(NGINX, (10.0, 9.8), (1.0, 2.0), {}))
    fp = median_run(_runs(FASTPROXY, (12.0, 12.0), (1.0, 2.0), {1: "x", 2: "y"}))
    v = verdict([ng, fp])
    assert (v.status, v.rounds) == ("SKIPPED", 2)
    assert v.message == "small-c50, median of 2 rounds: no successful run of fastproxy"


def test_verdict_single_runs_say_nothing_of_rounds() -> None:
    v = verdict([_m(NGINX, 10.0, 100_000.0), _m(FASTPROXY, 12.8, 84_000.0)])
    assert v.rounds == 1
    assert v.message.startswith("small-c50: fastproxy 84,000 rps")
    assert "round" not in v.message


# --------------------------------------------------------------------------- table and markdown


def test_table_over_rounds_has_cpu_rounds_column() -> None:
    merged = merge_rounds(_small_c50_rounds())
    lines = format_text_table(merged).splitlines()
    assert lines[0].split()[-2:] == ROUNDS_COLUMN.split() == ["cpu", "rounds"]
    assert lines[2].split()[0] == DIRECT
    assert lines[2].endswith("- / - / -")
    assert lines[3].split()[7] == "10.0"  # nginx-proxy's proxy us/req: the median
    assert lines[3].endswith("10.0 / 9.8 / 10.3")
    assert lines[5].split()[:2] == [FASTPROXY, "84,000"]
    assert lines[5].endswith("13.5 / 12.8 / failed")
    md = format_markdown_table(merged).splitlines()
    assert md[0] == "| " + " | ".join((*COLUMNS, ROUNDS_COLUMN)) + " |"
    assert md[1].count("---") == len(COLUMNS) + 1
    assert md[3] == (
        "| nginx-proxy | 100,000 | 1.00 | 0.65 | 0.500 | 0.800 | 1.000 | 10.0 | 1.00 | 4.0 "
        "| 10.0 / 9.8 / 10.3 |"
    )


def test_table_single_runs_have_no_rounds_column() -> None:
    lines = format_text_table([_m(NGINX, 10.0, 100_000.0)]).splitlines()
    assert ROUNDS_COLUMN not in lines[0]
    assert lines[0].split() == [w for c in COLUMNS for w in c.split()]


def test_case_title_over_rounds() -> None:
    merged = merge_rounds(_small_c50_rounds())
    assert case_title(merged[0], 10.0) == (
        "small-c50: 13 B body, 50 connections, 10 s; median of 3 interleaved rounds"
    )
    assert case_title(_m(NGINX, 10.0, 1.0), 10.0) == "small-c50: 13 B body, 50 connections, 10 s"


def test_rounds_note() -> None:
    assert rounds_note(1) == ""
    note = rounds_note(3)
    assert note.startswith("Each row is the median of 3 interleaved rounds")
    assert "by rps for a row without that figure, i.e. direct" in note
    assert f"{ROUNDS_COLUMN}: every round's proxy us/req in run order" in note


def test_markdown_over_rounds() -> None:
    merged = merge_rounds(_small_c50_rounds())
    v = verdict(merged)
    md = render_markdown(run_doc({"status": v.status, "message": v.message}), merged)
    assert "## small-c50: 13 B body, 50 connections, 3 s; median of 3 interleaved rounds\n" in md
    assert f"| 13.5 / 12.8 / failed |\n\n{rounds_note(3)}\n" in md
    assert f"**Verdict: PASS** - {v.message}\n" in md
    assert "fastproxy 84,000 rps = 0.84x nginx-proxy 100,000 rps" in v.message
    errors = md.split("## Errors\n", 1)[1]
    assert "- small-c50 fastproxy (round 3/3):\n\n```\n502s\n```" in errors


def test_markdown_single_runs_say_nothing_of_rounds() -> None:
    rows = [_m(NGINX, 10.0, 100_000.0), _m(FASTPROXY, 12.8, 84_000.0)]
    v = verdict(rows)
    md = render_markdown(run_doc({"status": v.status, "message": v.message}), rows)
    assert "interleaved" not in md
    assert ROUNDS_COLUMN not in md
    assert "## small-c50: 13 B body, 50 connections, 3 s\n" in md


@pytest.mark.parametrize("rounds", [1, 2, 3, 4, 7])
def test_round_plan_moves_each_row_through_every_place(rounds: int) -> None:
    rows = ["a", "b", "c"]
    plan = round_plan(rows, rounds)
    by_round = [[row for k, row in plan if k == r] for r in range(1, rounds + 1)]
    assert all(sorted(order) == rows for order in by_round)
    # Over len(rows) consecutive rounds, every row runs once in every place.
    for start in range(0, rounds - len(rows) + 1):
        window = by_round[start : start + len(rows)]
        for place in range(len(rows)):
            assert sorted(order[place] for order in window) == rows
