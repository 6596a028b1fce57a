"""The small-c50-obs case: fastproxy with its observability off, with metrics and trace
propagation, and with every request traced and exported to benchmarks/collector.py; each
row checked to be what it claims before it is measured, and the collector's span counts
read around each measured run.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.probe import (
    READY_TIMEOUT_S,
    BenchError,
    http_get,
    http_request,
    port_open,
    wait_ready,
)
from benchmarks.procs import ManagedProcess, free_port
from benchmarks.report import (
    FASTPROXY,
    FASTPROXY_METRICS,
    FASTPROXY_OBS_OFF,
    FASTPROXY_TRACED,
    OBS_CASE,
    OBS_METRICS_CPU_MAX,
    OBS_TARGETS,
    OBS_TRACED_CPU_MAX,
    Measurement,
)
from benchmarks.targets import INVOKE_PREFIX, METRICS_OFF_FLAG, Bench, StartedRows, Target


@dataclass(frozen=True)
class ObsRow:
    """What one row of the observability case turns on: Prometheus metrics (on a free
    --metrics-port), and tracing from a Configuration given with --config (None: no
    Configuration at all) whose samplingRate is ``sampling_rate``, exporting spans to
    benchmarks/collector.py over Zipkin when ``zipkin``."""

    metrics: bool
    sampling_rate: str | None = None
    zipkin: bool = False
    # The traceparent the proxy's responses must carry (traceparent_state).
    traceparent: str = "absent"


# Which of --targets bring which rows to the observability case, and what each row runs.
OBS_CASE_TARGETS: dict[str, tuple[str, ...]] = {FASTPROXY: OBS_TARGETS}
OBS_ROWS: dict[str, ObsRow] = {
    FASTPROXY_OBS_OFF: ObsRow(metrics=False),
    FASTPROXY_METRICS: ObsRow(metrics=True, sampling_rate="0", traceparent="unsampled"),
    FASTPROXY_TRACED: ObsRow(metrics=True, sampling_rate="1", zipkin=True, traceparent="sampled"),
}
ZIPKIN_PATH = "/api/v2/spans"
# fastproxy's span exporter sends what is queued at least once a second; a span count that
# has not moved for this long has settled. Waited for at most OBS_SETTLE_TIMEOUT_S.
OBS_SETTLE_QUIET_S = 1.3
OBS_SETTLE_TIMEOUT_S = 6.0
# fastproxy-traced waits for the collector's span count to settle before and after its
# measured run (see collector_settle): about this much longer than other runs.
OBS_SETTLE_OVERHEAD_S = 3.0
COLLECTOR = "collector"


def obs_configuration_yaml(sampling_rate: str, zipkin_url: str | None = None) -> str:
    """The Configuration of an observability row: tracing at ``sampling_rate`` ("0":
    propagation only), exporting to ``zipkin_url`` when given."""
    lines = [
        "apiVersion: dapr.io/v1alpha1",
        "kind: Configuration",
        "metadata:",
        "  name: bench",
        "spec:",
        "  tracing:",
        f'    samplingRate: "{sampling_rate}"',
    ]
    if zipkin_url is not None:
        lines += ["    zipkin:", f'      endpointAddress: "{zipkin_url}"']
    return "\n".join(lines) + "\n"


def traceparent_state(value: str | None) -> str:
    """A response's traceparent header as the observability rows expect it: ``absent``,
    ``sampled`` (flags 01), ``unsampled`` (flags 00) or ``malformed``."""
    if value is None:
        return "absent"
    parts = value.strip().split("-")
    if len(parts) != 4 or [len(p) for p in parts] != [2, 32, 16, 2]:
        return "malformed"
    return {"01": "sampled", "00": "unsampled"}.get(parts[3], "malformed")


COLLECTOR_COUNTERS: tuple[str, ...] = ("requests", "bytes", "spans", "invalid", "connections")


def collector_counters(stats: dict[str, Any]) -> dict[str, int]:
    """The counters of a benchmarks/collector.py /_stats answer (COLLECTOR_COUNTERS)."""
    out: dict[str, int] = {}
    for key in COLLECTOR_COUNTERS:
        value = stats.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise BenchError(f"collector /_stats has no integer {key!r}: {stats}")
        out[key] = value
    return out


def start_collector(bench: Bench) -> tuple[ManagedProcess, int]:
    """benchmarks/collector.py on a free port, pinned like the apps."""
    port = free_port()
    argv = [
        *bench.pin(0),
        sys.executable,
        str(Path(__file__).with_name("collector.py")),
        str(port),
    ]
    proc = bench.registry.start(COLLECTOR, argv, bench.tmp, bench.tmp / f"{COLLECTOR}.log")
    try:
        wait_ready(proc, port, "/_stats", 200, READY_TIMEOUT_S)  # not counted
    except BenchError as exc:
        raise BenchError(f"{exc}\n{proc.log_tail()}") from None
    return proc, port


def start_obs_targets(bench: Bench, rows: Sequence[str], configs: dict[str, str]) -> StartedRows:
    """The observability case's ``rows`` (OBS_CASE_TARGETS), each a fastproxy in front of
    the common nginx app, set up as OBS_ROWS says.

    fastproxy-obs-off: --enable-metrics=false and no Configuration, as the plain
    fastproxy target. fastproxy-metrics: metrics on (free --metrics-port, 127.0.0.1) and a
    Configuration (--config) with samplingRate "0". fastproxy-traced: the same with
    samplingRate "1" and Zipkin export to benchmarks/collector.py, started first. Each
    row is checked once started (check_obs_row). Returns the targets that started and,
    per row, why one did not; ``configs`` gets each row's Configuration (for the JSON).
    """
    targets: dict[str, Target] = {}
    errors: dict[str, str] = {}
    collector: tuple[ManagedProcess, int] | None = None
    if any(OBS_ROWS[r].zipkin for r in rows):
        try:
            collector = start_collector(bench)
        except BenchError as exc:
            for row in rows:
                if OBS_ROWS[row].zipkin:
                    errors[row] = f"could not start {COLLECTOR} for {row}: {exc}"
    for row in rows:
        if row in errors:
            continue
        try:
            targets[row] = _start_obs_row(bench, row, OBS_ROWS[row], collector, configs)
        except BenchError as exc:
            errors[row] = f"could not start {row}: {exc}"
    return targets, errors


def _start_obs_row(
    bench: Bench,
    row: str,
    setup: ObsRow,
    collector: tuple[ManagedProcess, int] | None,
    configs: dict[str, str],
) -> Target:
    extra: list[str] = []
    collector_proc, collector_port = collector if setup.zipkin and collector else (None, 0)
    if setup.sampling_rate is not None:
        zipkin = f"http://127.0.0.1:{collector_port}{ZIPKIN_PATH}" if collector_port else None
        yaml_text = obs_configuration_yaml(setup.sampling_rate, zipkin)
        path = bench.tmp / f"{row}-config.yaml"
        path.write_text(yaml_text)
        configs[row] = yaml_text
        extra = ["--config", str(path)]
    proc, port, metrics_port = bench.launch_fastproxy(
        row, bench.upstream_port, extra, f"{row}.log", setup.metrics
    )
    logs = [] if collector_proc is None else [collector_proc.log_path]
    target = Target(
        row,
        port,
        INVOKE_PREFIX,
        proc,
        logs,
        metrics_port=metrics_port,
        collector=collector_proc,
        collector_port=collector_port,
    )
    try:
        check_obs_row(target, setup)
    except BenchError as exc:
        raise BenchError(f"{exc}\n{proc.log_tail()}") from None
    return target


def check_obs_row(target: Target, setup: ObsRow) -> None:
    """Refuse to measure a row whose observability is not what it claims: responses must
    carry the traceparent the row's sampling rate gives (none without tracing), and the
    metrics port must serve Prometheus metrics with metrics on and be closed without."""
    try:
        status, headers, _ = http_request(target.port, target.path("small"))
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"GET {target.url('small')} failed: {exc}") from None
    state = traceparent_state(headers.get("traceparent"))
    if status != 200 or state != setup.traceparent:
        raise BenchError(
            f"GET {target.url('small')} -> HTTP {status}, traceparent "
            f"{headers.get('traceparent')!r} ({state}); want 200 and {setup.traceparent}"
        )
    check_metrics_port(target, setup)


def check_metrics_port(target: Target, setup: ObsRow) -> None:
    """The row's metrics port (if one was given) serves Dapr metrics with metrics on and
    accepts no connection with metrics off."""
    if not target.metrics_port:
        return
    if not setup.metrics:
        if port_open(target.metrics_port):
            raise BenchError(f"metrics are off but port {target.metrics_port} is open")
        return
    try:
        status, body = http_get(target.metrics_port, "/metrics")
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"GET /metrics on port {target.metrics_port}: {exc}") from None
    if status != 200 or b"# TYPE dapr_" not in body:
        raise BenchError(
            f"GET /metrics on port {target.metrics_port} -> HTTP {status}, "
            f"{len(body)} B without Dapr metrics"
        )


def collector_stats(target: Target) -> dict[str, int]:
    """benchmarks/collector.py's counters (GET /_stats, which it does not count)."""
    try:
        status, body = http_get(target.collector_port, "/_stats")
        stats = json.loads(body) if status == 200 else None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise BenchError(f"GET /_stats of {target.name}'s collector failed: {exc}") from None
    if not isinstance(stats, dict):
        raise BenchError(f"GET /_stats of {target.name}'s collector -> HTTP {status}")
    return collector_counters(stats)


def collector_settle(target: Target) -> dict[str, int]:
    """The collector's counters once its span count has not moved for
    OBS_SETTLE_QUIET_S (the exporter has sent what it had queued), or after
    OBS_SETTLE_TIMEOUT_S."""
    deadline = time.monotonic() + OBS_SETTLE_TIMEOUT_S
    stats = collector_stats(target)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = collector_stats(target)
        if now["spans"] != stats["spans"]:
            since = time.monotonic()
        stats = now
        if time.monotonic() - since >= OBS_SETTLE_QUIET_S:
            break
    return stats


def count_run_spans(
    m: Measurement,
    target: Target,
    before: dict[str, int],
    after: dict[str, int],
    settled: dict[str, int],
) -> None:
    """Fill the span figures from the collector's counters just before the measured run,
    just after it and once settled after it; a row that exports spans must deliver some,
    and all of them as JSON lists."""
    m.spans_received = after["spans"] - before["spans"]
    m.spans_late = settled["spans"] - after["spans"]
    m.collector_posts = after["requests"] - before["requests"]
    m.collector_bytes = after["bytes"] - before["bytes"]
    invalid = settled["invalid"] - before["invalid"]
    if invalid:
        raise BenchError(f"{target.name}'s collector got {invalid} POSTs that are no span list")
    if m.requests and not m.spans_received + m.spans_late:
        raise BenchError(
            f"{target.name}'s collector received no spans for {m.requests:,} requests\n"
            + (target.proxy.log_tail(extra=target.extra_logs) if target.proxy else "")
        )


OBS_CASE_NOTE = (
    f"{OBS_CASE}: wrk -c50 on /small through fastproxy to the same nginx app as small-c50. "
    f"{FASTPROXY_OBS_OFF}: {METRICS_OFF_FLAG}, no Configuration (all observability off, as "
    f"the plain fastproxy target). {FASTPROXY_METRICS}: Prometheus metrics on (a free "
    "--metrics-port on 127.0.0.1) and a Configuration (--config) with tracing samplingRate "
    '"0": every request\'s traceparent is started or continued and returned, nothing is '
    f'sampled or exported. {FASTPROXY_TRACED}: metrics on and samplingRate "1": every request '
    "is traced and its span exported over Zipkin (JSON v2 POSTs, batches of up to 512, at "
    "least once a second) to benchmarks/collector.py (uvloop + httptools, own process, "
    "counts spans, answers 202). rps/off and cpu/off: relative to "
    f"{FASTPROXY_OBS_OFF}. spans: spans the collector received during the measured run "
    "(those still queued in the exporter when wrk stopped arrive after it and are counted "
    "in the verdict line); spans/req: that per request wrk completed (one span per request). "
    f"Bar: proxy us/req of {FASTPROXY_METRICS} <= {OBS_METRICS_CPU_MAX:.2f}x and of "
    f"{FASTPROXY_TRACED} <= {OBS_TRACED_CPU_MAX:.2f}x {FASTPROXY_OBS_OFF}'s."
)


def obs_parameters(rows: Sequence[str], configs: dict[str, str], rounds: int = 1) -> dict[str, Any]:
    """The observability case's set-up, for the JSON's parameters (``rows``: those that ran;
    ``configs``: as start_obs_targets filled it; ``rounds``: --rounds)."""
    return {
        "rounds": rounds,
        # Per row: what it turns on and the Configuration it was started with (None:
        # no --config).
        "rows": {
            row: {
                **dataclasses.asdict(OBS_ROWS[row]),
                "configuration_yaml": configs.get(row),
            }
            for row in rows
        },
        "metrics_off_flag": METRICS_OFF_FLAG,
        "metrics_cpu_max": OBS_METRICS_CPU_MAX,
        "traced_cpu_max": OBS_TRACED_CPU_MAX,
        "collector": "benchmarks/collector.py",
        "settle_quiet_s": OBS_SETTLE_QUIET_S,
    }
