"""Turn raw measurements into ratios, tables and the pass/fail verdict.

Pure functions only, so the arithmetic behind the verdict is unit-tested rather than eyeballed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

DIRECT = "direct"
NGINX = "nginx-proxy"
FASTPROXY = "fastproxy"
RELAY = "byte-relay"
TARGETS: tuple[str, ...] = (DIRECT, NGINX, RELAY, FASTPROXY)

# The retry case: its own targets, in front of benchmarks/flaky_app.py rather than nginx.
RETRY_CASE = "small-c50-retry"
FASTPROXY_HEALTHY = "fastproxy-healthy"  # no policy, app never fails: the baseline
FASTPROXY_RETRY = "fastproxy-retry"  # retry policy, app fails 1 in 3 per connection
FASTPROXY_RETRY_SHARED = "fastproxy-retry-shared"  # same policy, app fails 1 in 3 overall
NGINX_RETRY = "nginx-retry"  # proxy_next_upstream http_503, app fails 1 in 3 per connection
RETRY_TARGETS: tuple[str, ...] = (
    FASTPROXY_HEALTHY,
    FASTPROXY_RETRY,
    FASTPROXY_RETRY_SHARED,
    NGINX_RETRY,
)
# flaky_app's --count: each connection counts its own requests, or one counter for all.
COUNT_CONNECTION = "connection"
COUNT_PROCESS = "process"
# The policy's maxRetries (retry_case.RESILIENCY_YAML), for the expected figures in the verdict.
RETRY_MAX_RETRIES = 3

# The observability case: the load of small-c50 through fastproxy with all observability off
# (the baseline, as the plain fastproxy target runs), with metrics on and W3C trace
# propagation (samplingRate 0), and with metrics on and every request traced and its span
# exported to benchmarks/collector.py (Zipkin).
OBS_CASE = "small-c50-obs"
FASTPROXY_OBS_OFF = "fastproxy-obs-off"
FASTPROXY_METRICS = "fastproxy-metrics"
FASTPROXY_TRACED = "fastproxy-traced"
OBS_TARGETS: tuple[str, ...] = (FASTPROXY_OBS_OFF, FASTPROXY_METRICS, FASTPROXY_TRACED)
# The issue's bar for it: CPU per request relative to fastproxy-obs-off.
OBS_METRICS_CPU_MAX = 1.10
OBS_TRACED_CPU_MAX = 1.35
# What each row turns on, for the table: (metrics, tracing).
OBS_ROW_SETUP: dict[str, tuple[str, str]] = {
    FASTPROXY_OBS_OFF: ("off", "off"),
    FASTPROXY_METRICS: ("on", "rate 0"),
    FASTPROXY_TRACED: ("on", "rate 1, zipkin"),
}

# The issue's bar, checked on the small-body, 50-connection case.
VERDICT_CASE = "small-c50"
RPS_MIN_RATIO = 0.8
CPU_MAX_RATIO = 1.3

# Rounds (run.py --rounds) of the cases whose ratios are judged: every row once per round, the
# rounds one after the other, each row reported as its median run. The machine's speed drifts
# by 10-20 % within a minute, so one run per row makes the ratios noise (the same code read
# 0.78x and 0.84x rps); rounds interleave the rows so drift hits them alike.
ROUNDS = 3
ROUNDED_CASES: tuple[str, ...] = (VERDICT_CASE, OBS_CASE)
# The column a table of rows merged from rounds gains: round_cpu_text.
ROUNDS_COLUMN = "cpu rounds"


@dataclass
class Measurement:
    """Everything recorded for one (case, target) run; None means not measured or failed."""

    case: str
    size: str
    size_bytes: int
    connections: int
    target: str
    url: str = ""
    requests: int = 0
    duration_s: float = 0.0
    rps: float | None = None
    latency_avg_ms: float | None = None
    latency_max_ms: float | None = None
    p50_ms: float | None = None
    p75_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    bytes_read: float = 0.0
    non_2xx_3xx: int = 0
    socket_errors: int = 0
    proxy_cpu_ticks: int | None = None
    proxy_cpu_us_per_req: float | None = None
    upstream_cpu_ticks: int | None = None
    upstream_cpu_us_per_req: float | None = None
    wrk_cpu_us_per_req: float | None = None
    # Machine-wide CPU during the run, in cores; "other" is what our processes do not
    # explain (other workloads, plus some kernel networking time), a noise indicator.
    system_busy_cores: float | None = None
    other_cores: float | None = None
    # Retry case only (flaky_app's /_stats around the measured run): requests the app
    # received, how many it failed on purpose, connections it accepted, its --fail-every and
    # its --count (COUNT_CONNECTION or COUNT_PROCESS; None in results from before --count).
    app_requests: int | None = None
    app_failed: int | None = None
    app_connections: int | None = None
    app_fail_every: int | None = None
    app_fail_count: str | None = None
    # Observability case, rows exporting spans only (benchmarks/collector.py's /_stats):
    # spans the collector received during the measured run, spans that arrived after it
    # (the exporter's batch still queued when wrk stopped), the POSTs and body bytes
    # received during the run, and the collector's own CPU per request.
    spans_received: int | None = None
    spans_late: int | None = None
    collector_posts: int | None = None
    collector_bytes: int | None = None
    collector_cpu_us_per_req: float | None = None
    # A row of a case measured in rounds (ROUNDED_CASES, merge_rounds): every round's proxy
    # CPU us/req and error, in run order (None for a failed round and for direct); the other
    # figures are the median run's. None when the row ran once.
    round_cpu_us_per_req: list[float | None] | None = None
    round_errors: list[str | None] | None = None
    error: str | None = None
    wrk_output: str = ""


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either side is missing or the base is zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Ratios:
    """A target's figures relative to the two baselines of the same case."""

    rps_vs_nginx: float | None
    rps_vs_direct: float | None
    cpu_vs_nginx: float | None


def _by_target(measurements: Iterable[Measurement]) -> dict[str, Measurement]:
    return {m.target: m for m in measurements if m.error is None}


def case_ratios(measurements: Sequence[Measurement]) -> dict[str, Ratios]:
    """Ratios for every target of one case, keyed by target name."""
    ok = _by_target(measurements)
    nginx = ok.get(NGINX)
    direct = ok.get(DIRECT)
    out: dict[str, Ratios] = {}
    for m in measurements:
        if m.error is not None:
            out[m.target] = Ratios(None, None, None)
            continue
        out[m.target] = Ratios(
            rps_vs_nginx=ratio(m.rps, nginx.rps if nginx else None),
            rps_vs_direct=ratio(m.rps, direct.rps if direct else None),
            cpu_vs_nginx=ratio(
                m.proxy_cpu_us_per_req, nginx.proxy_cpu_us_per_req if nginx else None
            ),
        )
    return out


@dataclass(frozen=True)
class Verdict:
    """Outcome of the issue's bar: PASS, FAIL or SKIPPED (figures missing); with ``rounds``
    > 1 both ratios are of each target's median run (median_run)."""

    status: str
    message: str
    rps_ratio: float | None = None
    cpu_ratio: float | None = None
    rounds: int = 1


def rounds_head(case: str, rounds: int) -> str:
    """A verdict message's opening: the case, and the rounds its rows are the median of."""
    return f"{case}, median of {rounds} rounds" if rounds > 1 else case


def verdict(
    measurements: Sequence[Measurement],
    case: str = VERDICT_CASE,
    rps_min: float = RPS_MIN_RATIO,
    cpu_max: float = CPU_MAX_RATIO,
) -> Verdict:
    """Check fastproxy rps >= rps_min x nginx-proxy and CPU/req <= cpu_max x nginx-proxy.

    For targets merged from rounds (merge_rounds) the message says so and gives every
    round's CPU figure of both, so a verdict near the bar can be read against the spread.
    """
    in_case = [m for m in measurements if m.case == case]
    rounds = round_count(in_case)
    head = rounds_head(case, rounds)
    ok = _by_target(in_case)
    fp = ok.get(FASTPROXY)
    ng = ok.get(NGINX)
    if fp is None or ng is None:
        missing = [t for t, m in ((FASTPROXY, fp), (NGINX, ng)) if m is None]
        return Verdict(
            "SKIPPED", f"{head}: no successful run of {', '.join(missing)}", rounds=rounds
        )
    rps_r = ratio(fp.rps, ng.rps)
    cpu_r = ratio(fp.proxy_cpu_us_per_req, ng.proxy_cpu_us_per_req)
    if rps_r is None or cpu_r is None:
        return Verdict("SKIPPED", f"{head}: rps or CPU figure missing", rps_r, cpu_r, rounds)
    rps_ok = rps_r >= rps_min
    cpu_ok = cpu_r <= cpu_max
    status = "PASS" if rps_ok and cpu_ok else "FAIL"
    msg = (
        f"{head}: fastproxy {fp.rps:,.0f} rps = {rps_r:.2f}x nginx-proxy {ng.rps:,.0f} rps "
        f"(need >= {rps_min:.2f}: {'ok' if rps_ok else 'NO'}); "
        f"CPU {fp.proxy_cpu_us_per_req:.1f} us/req{_rounds_text(fp)} = {cpu_r:.2f}x "
        f"nginx-proxy {ng.proxy_cpu_us_per_req:.1f} us/req{_rounds_text(ng)} "
        f"(need <= {cpu_max:.2f}: {'ok' if cpu_ok else 'NO'})"
    )
    return Verdict(status, msg, rps_r, cpu_r, rounds)


COLUMNS: tuple[str, ...] = (
    "target",
    "rps",
    "rps/nginx",
    "rps/direct",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "proxy us/req",
    "cpu/nginx",
    "app us/req",
)


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_rows(measurements: Sequence[Measurement]) -> list[list[str]]:
    """One row of formatted cells per target, in COLUMNS order."""
    ratios = case_ratios(measurements)
    rows: list[list[str]] = []
    for m in measurements:
        if m.error is not None:
            rows.append([m.target, "ERROR", *["-"] * (len(COLUMNS) - 2)])
            continue
        r = ratios[m.target]
        rows.append(
            [
                m.target,
                _f(m.rps, ",.0f"),
                _f(r.rps_vs_nginx, ".2f"),
                _f(r.rps_vs_direct, ".2f"),
                _f(m.p50_ms, ".3f"),
                _f(m.p90_ms, ".3f"),
                _f(m.p99_ms, ".3f"),
                _f(m.proxy_cpu_us_per_req, ".1f"),
                _f(r.cpu_vs_nginx, ".2f"),
                _f(m.upstream_cpu_us_per_req, ".1f"),
            ]
        )
    return rows


def _columns_and_rows(
    measurements: Sequence[Measurement],
) -> tuple[tuple[str, ...], list[list[str]]]:
    """The retry and observability cases have tables of their own; every other case the
    common one. Rows merged from rounds add ROUNDS_COLUMN (with_rounds_column)."""
    if measurements and all(m.case == RETRY_CASE for m in measurements):
        return RETRY_COLUMNS, retry_table_rows(measurements)
    if measurements and all(m.case == OBS_CASE for m in measurements):
        return with_rounds_column(OBS_COLUMNS, obs_table_rows(measurements), measurements)
    return with_rounds_column(COLUMNS, table_rows(measurements), measurements)


def with_rounds_column(
    columns: tuple[str, ...], rows: list[list[str]], measurements: Sequence[Measurement]
) -> tuple[tuple[str, ...], list[list[str]]]:
    """``columns`` and ``rows`` plus ROUNDS_COLUMN when the rows ran in rounds, so each row's
    median can be read against its rounds; unchanged for rows that ran once."""
    if all(m.round_cpu_us_per_req is None for m in measurements):
        return columns, rows
    cells = [[*row, round_cpu_text(m)] for row, m in zip(rows, measurements, strict=True)]
    return (*columns, ROUNDS_COLUMN), cells


def format_text_table(measurements: Sequence[Measurement]) -> str:
    """Fixed-width table for the terminal; numbers right-aligned."""
    columns, body = _columns_and_rows(measurements)
    rows = [list(columns), *body]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(rows[0]), sep, *(fmt(r) for r in rows[1:])])


def format_markdown_table(measurements: Sequence[Measurement]) -> str:
    """GitHub-flavoured Markdown table with the same cells as the terminal table."""
    columns, rows = _columns_and_rows(measurements)
    head = "| " + " | ".join(columns) + " |"
    align = "|" + "|".join([":---"] + ["---:"] * (len(columns) - 1)) + "|"
    body = ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([head, align, *body])


def case_title(m: Measurement, duration_s: float) -> str:
    """Heading for one case, e.g. ``small-c50: 13 B body, 50 connections, 10 s``."""
    title = (
        f"{m.case}: {m.size_bytes} B body, {m.connections} connection"
        f"{'s' if m.connections != 1 else ''}, {duration_s:g} s"
    )
    if m.case == RETRY_CASE:
        title += "; app: benchmarks/flaky_app.py"
    elif m.case == OBS_CASE:
        title += "; spans to benchmarks/collector.py"
    if m.round_cpu_us_per_req is not None:
        title += f"; median of {len(m.round_cpu_us_per_req)} interleaved rounds"
    return title


# --------------------------------------------------------------------------- rounds


def _median_key(runs: Sequence[Measurement]) -> Callable[[Measurement], float | None]:
    """What a row's median is taken by: proxy CPU us/req, the figure the verdicts compare
    and the steadier one; rps for a row whose successful runs have no CPU figure at all
    (direct: no proxy), whose throughput is what the other rows are read against."""
    if any(m.error is None and m.proxy_cpu_us_per_req is not None for m in runs):
        return lambda m: m.proxy_cpu_us_per_req
    return lambda m: m.rps


def median_run(runs: Sequence[Measurement]) -> Measurement:
    """One row's runs (its rounds, in run order) as one Measurement: the successful run whose
    proxy CPU us/req is the median (for an even count the lower middle one; by rps instead
    for a row without CPU figures, see _median_key), taken whole so that its rps, latencies
    and spans stay consistent with each other, plus every round's CPU figure and error.
    Failed runs, and runs without the figure, are no candidates; when every run failed, the
    first one is reported (and when none has a figure, the first successful one)."""
    if not runs:
        raise ValueError("median_run needs at least one run")
    key = _median_key(runs)
    keyed = sorted(
        (value, i) for i, m in enumerate(runs) if m.error is None and (value := key(m)) is not None
    )
    fallback = next((m for m in runs if m.error is None), runs[0])
    chosen = runs[keyed[(len(keyed) - 1) // 2][1]] if keyed else fallback
    return dataclasses.replace(
        chosen,
        round_cpu_us_per_req=[
            None if m.error is not None else m.proxy_cpu_us_per_req for m in runs
        ],
        round_errors=[m.error for m in runs],
    )


def merge_rounds(runs: Sequence[Measurement]) -> list[Measurement]:
    """The runs of rounds (round 1's rows, then round 2's, ...) as one median_run per
    (case, row), in the order the rows first ran."""
    by_row: dict[tuple[str, str], list[Measurement]] = {}
    for m in runs:
        by_row.setdefault((m.case, m.target), []).append(m)
    return [median_run(ms) for ms in by_row.values()]


def round_count(measurements: Iterable[Measurement]) -> int:
    """How many rounds the rows ran (1: each ran once, not in rounds)."""
    return max((len(m.round_cpu_us_per_req or ()) for m in measurements), default=0) or 1


def round_cpu_text(m: Measurement) -> str:
    """Every round's proxy us/req in run order, e.g. ``14.6 / 14.2 / failed`` (``-``: the row
    did not run in rounds)."""
    if m.round_cpu_us_per_req is None:
        return "-"
    errors = m.round_errors or [None] * len(m.round_cpu_us_per_req)
    return " / ".join(
        "failed" if err is not None else _f(cpu, ".1f")
        for cpu, err in zip(m.round_cpu_us_per_req, errors, strict=True)
    )


def run_errors(m: Measurement) -> list[tuple[str, str]]:
    """(heading, error) of each failed run behind a reported row: its own error, or for a row
    merged from rounds each failed round's, e.g. ``small-c50-obs fastproxy-traced (round
    2/3)``; a failed round counts even when the median of the others is reported."""
    head = f"{m.case} {m.target}"
    if m.round_errors is None:
        return [] if m.error is None else [(head, m.error)]
    n = len(m.round_errors)
    return [
        (f"{head} (round {k}/{n})", err)
        for k, err in enumerate(m.round_errors, 1)
        if err is not None
    ]


def run_count(m: Measurement) -> int:
    """Runs behind a reported row: its rounds, or 1."""
    return 1 if m.round_errors is None else len(m.round_errors)


def _rounds_text(m: Measurement) -> str:
    """`` (rounds 14.6 / 14.2 / 14.9)`` after a median figure; empty for a single run."""
    return "" if m.round_cpu_us_per_req is None else f" (rounds {round_cpu_text(m)})"


def rounds_note(rounds: int) -> str:
    """What a table's figures are when its rows ran in rounds (run.py --rounds), for the
    Markdown under the table; empty for one run per row."""
    if rounds <= 1:
        return ""
    return (
        f"Each row is the median of {rounds} interleaved rounds: every row ran once per round, "
        f"{rounds} times, each round starting one row further on, so the machine's drift hits "
        "all rows alike. Reported is "
        "the run whose proxy us/req is the median of its row's rounds (by rps for a row "
        "without that figure, i.e. direct; the lower middle one for an even count; failed "
        "rounds left out), taken whole: every figure of the row is that run's, and the ratios "
        f"are between the rows' median runs. {ROUNDS_COLUMN}: every round's proxy us/req in "
        "run order (failed: that round's run failed, see Errors; -: no proxy figure)."
    )


# --------------------------------------------------------------------------- retry case


def client_errors(m: Measurement) -> int:
    """What the client saw go wrong: wrk's non-2xx/3xx responses plus its socket errors."""
    return m.non_2xx_3xx + m.socket_errors


def app_requests_per_request(m: Measurement) -> float | None:
    """Requests the app received per request wrk completed (1.5 when every 3rd is retried
    once; a bit more when a retry fails again)."""
    return ratio(None if m.app_requests is None else float(m.app_requests), float(m.requests))


def fail_every_label(fail_every: int | None, count: str | None = None) -> str:
    """How often the app fails, for the table: ``1 in 3 per conn`` (each connection's 3rd,
    6th, ... request), ``1 in 3 shared`` (one counter for all connections), ``never`` or
    ``-``; plain ``1 in 3`` when the counting mode is not known."""
    if fail_every is None:
        return "-"
    if fail_every == 0:
        return "never"
    suffix = {COUNT_CONNECTION: " per conn", COUNT_PROCESS: " shared"}.get(count or "", "")
    return f"1 in {fail_every}{suffix}"


def expected_retry_figures(fail_every: int, max_retries: int) -> tuple[float, float]:
    """(share of client requests that fail every attempt, app requests per client request)
    when each attempt fails with probability 1/fail_every independently of the earlier ones.

    That is what a global every-N-th counter under many concurrent connections looks like
    to a single request: where its retry lands among the others' requests is arbitrary. With
    N = 3 and 3 retries: (1/3)^4 = 1.23 % of requests fail all 4 attempts and the app gets
    1 + 1/3 + 1/9 + 1/27 = 1.481 requests per request. (With one connection the pattern is
    strict and a retry never fails: 0 %, 1.5; see expected_per_connection_figures.)
    """
    if fail_every <= 0:
        return 0.0, 1.0
    p = 1.0 / fail_every
    return p ** (max_retries + 1), sum(p**k for k in range(max_retries + 1))


def expected_per_connection_figures(fail_every: int, max_retries: int) -> tuple[float, float]:
    """The same two figures when each connection's N-th, 2N-th, ... request fails and every
    retry goes out at once on the connection whose failure it follows (as fastproxy sends a
    retry that is due at once): the retry is that connection's next request, so with N >= 2
    it never fails. With N = 3 and any retries: 0 % errors, 3/2 = 1.500 requests per request.
    """
    if fail_every <= 0:
        return 0.0, 1.0
    if fail_every == 1:  # every attempt fails
        return 1.0, float(max_retries + 1)
    if max_retries == 0:
        return 1.0 / fail_every, 1.0
    return 0.0, fail_every / (fail_every - 1)


@dataclass(frozen=True)
class RetryVerdict:
    """The retry case's bar: PASS when fastproxy-retry shows the client no error at all.

    ``rps_cost`` is fastproxy-retry rps / fastproxy-healthy rps ("rps cost of retries"),
    ``app_ratio`` the app's received requests per client request under fastproxy-retry;
    ``shared_client_errors`` and ``shared_error_share`` the client-visible errors of
    fastproxy-retry-shared (reported against the independent-failure expectation, not judged).
    """

    status: str
    message: str
    client_errors: int | None = None
    rps_cost: float | None = None
    app_ratio: float | None = None
    shared_client_errors: int | None = None
    shared_error_share: float | None = None


def _percent(share: float | None) -> str:
    return _f(None if share is None else share * 100, ".2f")


def _expectation(m: Measurement, max_retries: int) -> str:
    """What the app's failure pattern predicts for a fastproxy row, in parentheses ("" when
    the app never fails): per connection for COUNT_CONNECTION, independent otherwise."""
    n = m.app_fail_every
    if not n:
        return ""
    if m.app_fail_count == COUNT_CONNECTION:
        share, per_request = expected_per_connection_figures(n, max_retries)
        model = (
            f"if each connection fails its requests {n}, {2 * n}, ... and a retry reuses "
            "the connection that failed"
        )
    else:
        share, per_request = expected_retry_figures(n, max_retries)
        model = f"if each attempt failed 1 in {n} independently"
    return f" ({model}: {share * 100:.2f} % errors, {per_request:.3f} requests per request)"


def retry_verdict(
    measurements: Sequence[Measurement],
    case: str = RETRY_CASE,
    max_retries: int = RETRY_MAX_RETRIES,
) -> RetryVerdict:
    """PASS iff fastproxy-retry (app failing 1 in 3 per connection) completed its run with
    0 client-visible errors.

    The message also gives the error share and app requests per request that the app's
    failure pattern predicts, and fastproxy-retry-shared's errors against what independent
    failures predict (expected_retry_figures), to tell a policy that retries as configured
    from one that does not; then nginx-retry's figures.
    """
    ok = _by_target(m for m in measurements if m.case == case)
    fp = ok.get(FASTPROXY_RETRY)
    if fp is None:
        return RetryVerdict("SKIPPED", f"{case}: no successful run of {FASTPROXY_RETRY}")
    healthy = ok.get(FASTPROXY_HEALTHY)
    errors = client_errors(fp)
    cost = ratio(fp.rps, healthy.rps if healthy else None)
    app_r = app_requests_per_request(fp)
    status = "PASS" if errors == 0 and fp.requests > 0 else "FAIL"
    if cost is not None and healthy is not None:
        cost_text = (
            f"rps cost of retries {cost:.2f} ({FASTPROXY_RETRY} {fp.rps:,.0f} rps / "
            f"{FASTPROXY_HEALTHY} {healthy.rps:,.0f} rps)"
        )
    else:
        cost_text = f"rps cost of retries - (no successful {FASTPROXY_HEALTHY} run)"
    share = ratio(float(errors), float(fp.requests))
    msg = (
        f"{case}: {FASTPROXY_RETRY} {errors} client-visible errors "
        f"({fp.non_2xx_3xx} non-2xx/3xx, {fp.socket_errors} socket) in {fp.requests:,} "
        f"requests = {_percent(share)} % "
        f"(need 0: {'ok' if status == 'PASS' else 'NO'}); {cost_text}; app received "
        f"{_f(app_r, '.3f')} requests per client request{_expectation(fp, max_retries)}"
    )
    shared = ok.get(FASTPROXY_RETRY_SHARED)
    shared_errors = shared_share = None
    if shared is not None:
        shared_errors = client_errors(shared)
        shared_share = ratio(float(shared_errors), float(shared.requests))
        msg += (
            f"; {FASTPROXY_RETRY_SHARED} (app fails "
            f"{fail_every_label(shared.app_fail_every, shared.app_fail_count)}): "
            f"{shared_errors} errors in {shared.requests:,} requests = {_percent(shared_share)} "
            f"%, {shared.rps or 0:,.0f} rps, {_f(app_requests_per_request(shared), '.3f')} app "
            f"requests per request{_expectation(shared, max_retries)}"
        )
    ng = ok.get(NGINX_RETRY)
    if ng is not None:
        msg += (
            f"; {NGINX_RETRY}: {client_errors(ng)} errors, {ng.rps or 0:,.0f} rps, "
            f"{_f(app_requests_per_request(ng), '.3f')} app requests per request"
        )
    return RetryVerdict(status, msg, errors, cost, app_r, shared_errors, shared_share)


RETRY_COLUMNS: tuple[str, ...] = (
    "target",
    "app fails",
    "rps",
    "rps/healthy",
    "p50 ms",
    "p99 ms",
    "proxy us/req",
    "app us/req",
    "non-2xx",
    "sock err",
    "app req/req",
    "app conns",
)


def retry_table_rows(measurements: Sequence[Measurement]) -> list[list[str]]:
    """One row per target of the retry case, in RETRY_COLUMNS order.

    ``app fails`` is fail_every_label; ``rps/healthy`` is relative to fastproxy-healthy (for
    fastproxy-retry: the rps cost of retries); ``app us/req`` and ``app req/req`` are per
    request the client completed.
    """
    healthy = _by_target(measurements).get(FASTPROXY_HEALTHY)
    rows: list[list[str]] = []
    for m in measurements:
        if m.error is not None:
            rows.append(
                [m.target, fail_every_label(m.app_fail_every, m.app_fail_count), "ERROR"]
                + ["-"] * (len(RETRY_COLUMNS) - 3)
            )
            continue
        rows.append(
            [
                m.target,
                fail_every_label(m.app_fail_every, m.app_fail_count),
                _f(m.rps, ",.0f"),
                _f(ratio(m.rps, healthy.rps if healthy else None), ".2f"),
                _f(m.p50_ms, ".3f"),
                _f(m.p99_ms, ".3f"),
                _f(m.proxy_cpu_us_per_req, ".1f"),
                _f(m.upstream_cpu_us_per_req, ".1f"),
                str(m.non_2xx_3xx),
                str(m.socket_errors),
                _f(app_requests_per_request(m), ".3f"),
                "-" if m.app_connections is None else str(m.app_connections),
            ]
        )
    return rows


def retry_figures(m: Measurement, measurements: Sequence[Measurement]) -> dict[str, object]:
    """The retry case's derived figures of one run, for the JSON (None for a failed run)."""
    if m.error is not None:
        return {"client_errors": None, "rps_vs_healthy": None, "app_requests_per_request": None}
    healthy = _by_target(measurements).get(FASTPROXY_HEALTHY)
    return {
        "client_errors": client_errors(m),
        "rps_vs_healthy": ratio(m.rps, healthy.rps if healthy else None),
        "app_requests_per_request": app_requests_per_request(m),
    }


# --------------------------------------------------------------------------- observability case


def spans_total(m: Measurement) -> int | None:
    """Spans the collector received for the run: during it plus the batch that arrived after
    it (None when the row exports no spans)."""
    if m.spans_received is None:
        return None
    return m.spans_received + (m.spans_late or 0)


def spans_per_request(m: Measurement) -> float | None:
    """Spans received during the run per request wrk completed (one span per request)."""
    spans = None if m.spans_received is None else float(m.spans_received)
    return ratio(spans, float(m.requests))


@dataclass(frozen=True)
class ObsVerdict:
    """The observability case's bar: PASS when CPU per request of fastproxy-metrics is at
    most OBS_METRICS_CPU_MAX and that of fastproxy-traced at most OBS_TRACED_CPU_MAX times
    fastproxy-obs-off's.

    ``*_cpu_ratio`` and ``*_rps_ratio`` are relative to fastproxy-obs-off; ``spans_received``
    (during the run), ``spans_late`` (after it) and ``spans_requests`` are fastproxy-traced's
    (reported, not judged); with ``rounds`` > 1 every figure is of a row's median run
    (median_run), the spans those of fastproxy-traced's median run alone.
    """

    status: str
    message: str
    metrics_cpu_ratio: float | None = None
    traced_cpu_ratio: float | None = None
    metrics_rps_ratio: float | None = None
    traced_rps_ratio: float | None = None
    spans_received: int | None = None
    spans_late: int | None = None
    spans_requests: int | None = None
    rounds: int = 1


def _latencies(m: Measurement) -> str:
    return f"p50 {_f(m.p50_ms, '.3f')} / p99 {_f(m.p99_ms, '.3f')} ms"


def _obs_row_text(
    m: Measurement | None, row: str, base: Measurement, cpu_r: float | None, cpu_max: float
) -> tuple[str, bool | None]:
    """One judged row's part of the message and whether it meets its bar (None: no figure)."""
    if m is None:
        return f"{row}: no successful run", None
    if cpu_r is None:
        return f"{row}: CPU figure missing", None
    ok = cpu_r <= cpu_max
    rps_r = ratio(m.rps, base.rps)
    text = (
        f"{row} CPU {m.proxy_cpu_us_per_req:.1f} us/req{_rounds_text(m)} = {cpu_r:.2f}x "
        f"(need <= {cpu_max:.2f}: {'ok' if ok else 'NO'}), {m.rps or 0:,.0f} rps = "
        f"{_f(rps_r, '.2f')}x, {_latencies(m)}"
    )
    return text, ok


def _spans_text(m: Measurement) -> str:
    """fastproxy-traced's spans against its requests, for the verdict line.

    One span per request: the spans received during the run fall short of the requests by
    the batch still queued in the exporter when wrk stopped, which arrives after the run
    (``spans_late``); the total exceeds them by the requests still in flight when wrk
    stopped (the proxy finishes them, wrk does not count them). A total below the requests
    means spans were lost (the exporter drops them when its queue is full).
    """
    if m.spans_received is None:
        return f"{FASTPROXY_TRACED} spans: not counted"
    total = spans_total(m) or 0
    diff = total - m.requests
    share = ratio(float(m.spans_received), float(m.requests))
    if diff >= 0:
        verdict = "no span missing; the surplus are requests in flight when wrk stopped"
    else:
        verdict = f"{-diff:,} spans MISSING: dropped by the exporter or lost"
    return (
        f"spans received {m.spans_received:,} during the run ({_percent(share)} % of "
        f"{m.requests:,} requests) + {m.spans_late or 0:,} after it (the batch still queued "
        f"when wrk stopped) = {total:,} ({diff:+,} against requests: {verdict})"
    )


def obs_verdict(
    measurements: Sequence[Measurement],
    case: str = OBS_CASE,
    metrics_max: float = OBS_METRICS_CPU_MAX,
    traced_max: float = OBS_TRACED_CPU_MAX,
) -> ObsVerdict:
    """Check CPU per request of fastproxy-metrics <= metrics_max and of fastproxy-traced <=
    traced_max times fastproxy-obs-off's.

    FAIL as soon as one measured ratio is over its bar; otherwise SKIPPED while a row or
    figure is missing, else PASS. The message also gives the rps ratios, p50/p99 of every
    row and fastproxy-traced's spans received against its requests; for rows merged from
    rounds (merge_rounds) it says so and gives every round's CPU figure.
    """
    in_case = [m for m in measurements if m.case == case]
    rounds = round_count(in_case)
    head = rounds_head(case, rounds)
    ok = _by_target(in_case)
    base = ok.get(FASTPROXY_OBS_OFF)
    if base is None or not base.proxy_cpu_us_per_req:
        why = "no successful run of" if base is None else "no CPU figure for"
        return ObsVerdict("SKIPPED", f"{head}: {why} {FASTPROXY_OBS_OFF}", rounds=rounds)
    metrics, traced = ok.get(FASTPROXY_METRICS), ok.get(FASTPROXY_TRACED)
    metrics_cpu = (
        ratio(metrics.proxy_cpu_us_per_req, base.proxy_cpu_us_per_req) if metrics else None
    )
    traced_cpu = ratio(traced.proxy_cpu_us_per_req, base.proxy_cpu_us_per_req) if traced else None
    metrics_text, metrics_ok = _obs_row_text(
        metrics, FASTPROXY_METRICS, base, metrics_cpu, metrics_max
    )
    traced_text, traced_ok = _obs_row_text(traced, FASTPROXY_TRACED, base, traced_cpu, traced_max)
    if metrics_ok is False or traced_ok is False:
        status = "FAIL"
    elif metrics_ok is None or traced_ok is None:
        status = "SKIPPED"
    else:
        status = "PASS"
    msg = (
        f"{head}: {metrics_text}; {traced_text}; against {FASTPROXY_OBS_OFF} "
        f"{base.proxy_cpu_us_per_req:.1f} us/req{_rounds_text(base)}, {base.rps or 0:,.0f} "
        f"rps, {_latencies(base)}"
    )
    if traced is not None:
        msg += f"; {_spans_text(traced)}"
    return ObsVerdict(
        status,
        msg,
        metrics_cpu,
        traced_cpu,
        ratio(metrics.rps, base.rps) if metrics else None,
        ratio(traced.rps, base.rps) if traced else None,
        traced.spans_received if traced else None,
        traced.spans_late if traced else None,
        traced.requests if traced else None,
        rounds,
    )


OBS_COLUMNS: tuple[str, ...] = (
    "target",
    "metrics",
    "tracing",
    "rps",
    "rps/off",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "proxy us/req",
    "cpu/off",
    "app us/req",
    "spans",
    "spans/req",
)


def obs_table_rows(measurements: Sequence[Measurement]) -> list[list[str]]:
    """One row per target of the observability case, in OBS_COLUMNS order.

    ``metrics`` and ``tracing`` are OBS_ROW_SETUP's; ``rps/off`` and ``cpu/off`` are relative
    to fastproxy-obs-off; ``spans`` are those the collector received during the run (``-``
    for rows that export none) and ``spans/req`` that per request wrk completed.
    """
    base = _by_target(measurements).get(FASTPROXY_OBS_OFF)
    rows: list[list[str]] = []
    for m in measurements:
        setup = list(OBS_ROW_SETUP.get(m.target, ("-", "-")))
        if m.error is not None:
            rows.append([m.target, *setup, "ERROR"] + ["-"] * (len(OBS_COLUMNS) - 4))
            continue
        rows.append(
            [
                m.target,
                *setup,
                _f(m.rps, ",.0f"),
                _f(ratio(m.rps, base.rps if base else None), ".2f"),
                _f(m.p50_ms, ".3f"),
                _f(m.p90_ms, ".3f"),
                _f(m.p99_ms, ".3f"),
                _f(m.proxy_cpu_us_per_req, ".1f"),
                _f(
                    ratio(m.proxy_cpu_us_per_req, base.proxy_cpu_us_per_req if base else None),
                    ".2f",
                ),
                _f(m.upstream_cpu_us_per_req, ".1f"),
                "-" if m.spans_received is None else f"{m.spans_received:,}",
                _f(spans_per_request(m), ".3f"),
            ]
        )
    return rows


def obs_figures(m: Measurement, measurements: Sequence[Measurement]) -> dict[str, object]:
    """The observability case's derived figures of one run, for the JSON (None for a failed
    run)."""
    if m.error is not None:
        return {"rps_vs_off": None, "cpu_vs_off": None, "spans_per_request": None}
    base = _by_target(measurements).get(FASTPROXY_OBS_OFF)
    return {
        "rps_vs_off": ratio(m.rps, base.rps if base else None),
        "cpu_vs_off": ratio(m.proxy_cpu_us_per_req, base.proxy_cpu_us_per_req if base else None),
        "spans_per_request": spans_per_request(m),
    }
