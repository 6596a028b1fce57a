"""Turn raw measurements into ratios, tables and the pass/fail verdict.

Pure functions only, so the arithmetic behind the verdict is unit-tested rather than eyeballed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DIRECT = "direct"
NGINX = "nginx-proxy"
FASTPROXY = "fastproxy"
RELAY = "byte-relay"
TARGETS: tuple[str, ...] = (DIRECT, NGINX, RELAY, FASTPROXY)

# The bar, checked on the small-body, 50-connection case.
VERDICT_CASE = "small-c50"
RPS_MIN_RATIO = 0.8
CPU_MAX_RATIO = 1.3


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
    """Outcome of the issue's bar: PASS, FAIL or SKIPPED (figures missing)."""

    status: str
    message: str
    rps_ratio: float | None = None
    cpu_ratio: float | None = None


def verdict(
    measurements: Sequence[Measurement],
    case: str = VERDICT_CASE,
    rps_min: float = RPS_MIN_RATIO,
    cpu_max: float = CPU_MAX_RATIO,
) -> Verdict:
    """Check fastproxy rps >= rps_min x nginx-proxy and CPU/req <= cpu_max x nginx-proxy."""
    ok = _by_target(m for m in measurements if m.case == case)
    fp = ok.get(FASTPROXY)
    ng = ok.get(NGINX)
    if fp is None or ng is None:
        missing = [t for t, m in ((FASTPROXY, fp), (NGINX, ng)) if m is None]
        return Verdict("SKIPPED", f"{case}: no successful run of {', '.join(missing)}")
    rps_r = ratio(fp.rps, ng.rps)
    cpu_r = ratio(fp.proxy_cpu_us_per_req, ng.proxy_cpu_us_per_req)
    if rps_r is None or cpu_r is None:
        return Verdict("SKIPPED", f"{case}: rps or CPU figure missing", rps_r, cpu_r)
    rps_ok = rps_r >= rps_min
    cpu_ok = cpu_r <= cpu_max
    status = "PASS" if rps_ok and cpu_ok else "FAIL"
    msg = (
        f"{case}: fastproxy {fp.rps:,.0f} rps = {rps_r:.2f}x nginx-proxy {ng.rps:,.0f} rps "
        f"(need >= {rps_min:.2f}: {'ok' if rps_ok else 'NO'}); "
        f"CPU {fp.proxy_cpu_us_per_req:.1f} us/req = {cpu_r:.2f}x nginx-proxy "
        f"{ng.proxy_cpu_us_per_req:.1f} us/req (need <= {cpu_max:.2f}: {'ok' if cpu_ok else 'NO'})"
    )
    return Verdict(status, msg, rps_r, cpu_r)


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


def format_text_table(measurements: Sequence[Measurement]) -> str:
    """Fixed-width table for the terminal; numbers right-aligned."""
    rows = [list(COLUMNS), *table_rows(measurements)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(rows[0]), sep, *(fmt(r) for r in rows[1:])])


def format_markdown_table(measurements: Sequence[Measurement]) -> str:
    """GitHub-flavoured Markdown table with the same cells as the terminal table."""
    head = "| " + " | ".join(COLUMNS) + " |"
    align = "|" + "|".join([":---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"
    body = ["| " + " | ".join(r) + " |" for r in table_rows(measurements)]
    return "\n".join([head, align, *body])


def case_title(m: Measurement, duration_s: float) -> str:
    """Heading for one case, e.g. ``small-c50: 13 B body, 50 connections, 10 s``."""
    return (
        f"{m.case}: {m.size_bytes} B body, {m.connections} connection"
        f"{'s' if m.connections != 1 else ''}, {duration_s:g} s"
    )
