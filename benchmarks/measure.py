"""Measuring one (case, row): a sanity request, a warm-up, then one wrk run with the CPU of
every process involved (proxy, app, collector, wrk, the rest of the machine) sampled
around it.
"""

from __future__ import annotations

import http.client
import resource
import subprocess
import time

from benchmarks import nginx_conf
from benchmarks.cases import split_case
from benchmarks.obs_case import collector_settle, collector_stats, count_run_spans
from benchmarks.probe import BenchError, http_get
from benchmarks.procs import set_parent_death_signal
from benchmarks.procstat import cpu_us_per_request, read_system_cpu
from benchmarks.report import Measurement
from benchmarks.retry_case import RETRY_FAIL_EVERY, app_stats
from benchmarks.targets import Bench, Target
from benchmarks.wrkparse import WrkParseError, WrkResult, parse_wrk_output


def run_wrk(bench: Bench, url: str, connections: int, duration_s: float) -> tuple[str, float]:
    """Run wrk once; return its stdout and the CPU seconds wrk itself used."""
    argv = [
        *bench.pin(1),
        bench.wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--latency",
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        res = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=duration_s + 30,
            preexec_fn=set_parent_death_signal,  # harness is single-threaded
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk hung (> {duration_s + 30:g} s): {' '.join(argv)}") from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise BenchError(f"wrk failed with code {res.returncode}: {res.stderr or res.stdout}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return res.stdout, cpu_s


def check_alive(bench: Bench, target: Target) -> None:
    """Fail with the logs when a process the row needs has exited."""
    for proc in (target.proxy, target.app or bench.upstream, target.collector):
        if proc is not None and not proc.alive():
            raise BenchError(
                f"{proc.name} exited with code {proc.popen.returncode}\n"
                + proc.log_tail(extra=target.extra_logs)
            )


def sanity_check(target: Target, size: str) -> None:
    """Refuse to benchmark a target that returns the wrong thing.

    A target whose errors are counted (retry case) may answer an error here too, as it
    may under load: it passes when one of RETRY_FAIL_EVERY tries is the right 200, and
    the errors are left to the measured run to count.
    """
    want = nginx_conf.body_for(size)
    tries = RETRY_FAIL_EVERY if target.count_errors else 1
    for i in range(tries):
        try:
            status, body = http_get(target.port, target.path(size))
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(f"GET {target.url(size)} failed: {exc}") from None
        if status == 200 and body == want:
            return
        if status == 200 or i == tries - 1:
            raise BenchError(
                f"GET {target.url(size)} -> HTTP {status}, {len(body)} B body "
                f"(want 200 and the {len(want)} B upstream body)"
            )


def measure(bench: Bench, target: Target, case: str) -> Measurement:
    """Warm up, then one measured wrk run with CPU sampled around it."""
    size, conns = split_case(case)
    m = Measurement(
        case=case,
        size=size,
        size_bytes=nginx_conf.SIZES[size],
        connections=conns,
        target=target.name,
        url=target.url(size),
        app_fail_every=target.app_fail_every,
        app_fail_count=target.app_fail_count,
    )
    app = target.app or bench.upstream
    assert app is not None
    try:
        check_alive(bench, target)
        sanity_check(target, size)
        if bench.args.warmup > 0:
            warm_out, _ = run_wrk(bench, m.url, conns, bench.args.warmup)
            warm = parse_wrk_output(warm_out)
            if not warm.ok and not (target.count_errors and warm.requests):
                raise BenchError(f"warm-up: {warm.error_summary()}\n{warm_out}")
        stats0 = app_stats(target)
        # The warm-up's spans all in before counting: the run's spans are its own.
        spans0 = collector_settle(target) if target.collector_port else None
        sys0, t0 = read_system_cpu(), time.monotonic()
        proxy0 = target.proxy.cpu_ticks() if target.proxy else None
        up0 = app.cpu_ticks()
        col0 = target.collector.cpu_ticks() if target.collector else None
        out, wrk_cpu_s = run_wrk(bench, m.url, conns, bench.args.duration)
        col1 = target.collector.cpu_ticks() if target.collector else None
        up1 = app.cpu_ticks()
        proxy1 = target.proxy.cpu_ticks() if target.proxy else None
        sys1, t1 = read_system_cpu(), time.monotonic()
        stats1 = app_stats(target)
        spans1 = collector_stats(target) if target.collector_port else None
        m.wrk_output = out
        result = parse_wrk_output(out)
        fill_from_wrk(m, result)
        if stats0 is not None and stats1 is not None:
            m.app_requests = stats1["requests"] - stats0["requests"]
            m.app_failed = stats1["failed"] - stats0["failed"]
            m.app_connections = stats1["connections"] - stats0["connections"]
        m.upstream_cpu_ticks = (up1 - up0).total
        m.upstream_cpu_us_per_req = cpu_us_per_request(
            m.upstream_cpu_ticks, result.requests, bench.clk_tck
        )
        if proxy0 is not None and proxy1 is not None:
            m.proxy_cpu_ticks = (proxy1 - proxy0).total
            m.proxy_cpu_us_per_req = cpu_us_per_request(
                m.proxy_cpu_ticks, result.requests, bench.clk_tck
            )
        collector_ticks = 0
        if col0 is not None and col1 is not None:
            collector_ticks = (col1 - col0).total
            m.collector_cpu_us_per_req = cpu_us_per_request(
                collector_ticks, result.requests, bench.clk_tck
            )
        if spans0 is not None and spans1 is not None:
            count_run_spans(m, target, spans0, spans1, collector_settle(target))
        if result.requests:
            m.wrk_cpu_us_per_req = wrk_cpu_s * 1e6 / result.requests
        wall = t1 - t0
        if wall > 0:
            ours_ticks = (m.proxy_cpu_ticks or 0) + m.upstream_cpu_ticks + collector_ticks
            ours_s = ours_ticks / bench.clk_tck
            m.system_busy_cores = (sys1 - sys0).busy / bench.clk_tck / wall
            m.other_cores = m.system_busy_cores - (ours_s + wrk_cpu_s) / wall
        if not result.ok and not (target.count_errors and result.requests):
            raise BenchError(f"{result.error_summary()}\n{out}")
        check_alive(bench, target)
    except (BenchError, WrkParseError) as exc:
        m.error = str(exc)
    return m


def fill_from_wrk(m: Measurement, r: WrkResult) -> None:
    """Copy what wrk reported into the row's figures."""
    m.requests = r.requests
    m.duration_s = r.duration_s
    m.rps = r.rps
    m.latency_avg_ms = r.latency_avg_ms
    m.latency_max_ms = r.latency_max_ms
    m.p50_ms = r.percentile(50.0)
    m.p75_ms = r.percentile(75.0)
    m.p90_ms = r.percentile(90.0)
    m.p99_ms = r.percentile(99.0)
    m.bytes_read = r.bytes_read
    m.non_2xx_3xx = r.non_2xx_3xx
    m.socket_errors = r.socket_errors
