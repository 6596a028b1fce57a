"""Unit tests for the small-c50-obs case: its rows, how they are started, figures and verdict.

The observability verdict compares CPU per request of three fastproxy set-ups, so what each
row turns on (and that the plain fastproxy turns everything off) is pinned together with
the arithmetic.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.cases import (
    ALL_CASES,
    CASE_ALIASES,
    QUICK_CASES,
    SPECIAL_CASES,
    case_targets,
    count_runs,
    estimate_seconds,
    plan_summary,
    round_plan,
    select_cases,
    settle_overhead_s,
    split_case,
)
from benchmarks.obs_case import (
    COLLECTOR_COUNTERS,
    OBS_CASE_NOTE,
    OBS_CASE_TARGETS,
    OBS_ROWS,
    OBS_SETTLE_OVERHEAD_S,
    ZIPKIN_PATH,
    ObsRow,
    check_metrics_port,
    check_obs_row,
    collector_counters,
    count_run_spans,
    obs_configuration_yaml,
    obs_parameters,
    traceparent_state,
)
from benchmarks.probe import BenchError
from benchmarks.procs import free_port
from benchmarks.report import (
    FASTPROXY,
    FASTPROXY_METRICS,
    FASTPROXY_OBS_OFF,
    FASTPROXY_TRACED,
    NGINX,
    OBS_CASE,
    OBS_COLUMNS,
    OBS_METRICS_CPU_MAX,
    OBS_ROW_SETUP,
    OBS_TARGETS,
    OBS_TRACED_CPU_MAX,
    RETRY_CASE,
    ROUNDS_COLUMN,
    Measurement,
    case_title,
    format_markdown_table,
    format_text_table,
    median_run,
    merge_rounds,
    obs_figures,
    obs_verdict,
    round_count,
    round_cpu_text,
    rounds_note,
    run_count,
    run_errors,
    spans_per_request,
    spans_total,
)
from benchmarks.run import _progress, parse_args, render_markdown
from benchmarks.targets import (
    APP_ID,
    FASTPROXY_PORT_FLAGS,
    INVOKE_PREFIX,
    METRICS_OFF_FLAG,
    Target,
    fastproxy_argv,
)
from tests.unit.benchmarks.measurements import small_c50_run
from tests.unit.benchmarks.run_docs import run_doc

ALL_TARGETS = ["direct", NGINX, "byte-relay", FASTPROXY]
# `fastproxy run --help` as far as fastproxy_argv reads it: which flags exist.
HELP_NOW = (
    "--dapr-internal-port PORT, --dapr-internal-grpc-port PORT\n"
    "--config FILE\n"
    "--enable-metrics [BOOL]  serve Prometheus metrics on --metrics-port\n"
    "--metrics-port PORT\n"
    "--metrics-listen-address ADDRESS\n"
)
HELP_OLD = "--dapr-internal-port PORT, --dapr-internal-grpc-port PORT\n--config FILE\n"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-"


def _m(
    target: str,
    cpu: float | None,
    rps: float | None = 40_000.0,
    *,
    requests: int = 120_000,
    spans: int | None = None,
    late: int | None = None,
    error: str | None = None,
    case: str = OBS_CASE,
) -> Measurement:
    return small_c50_run(
        target,
        case,
        requests=requests,
        rps=rps,
        p50_ms=1.0,
        p90_ms=2.0,
        p99_ms=4.0,
        proxy_cpu_us_per_req=cpu,
        upstream_cpu_us_per_req=5.0,
        spans_received=spans,
        spans_late=late,
        error=error,
    )


def _ports() -> Iterator[int]:
    yield from range(40_001, 40_100)


# --------------------------------------------------------------------------- cases and rows


def test_obs_case_runs_last_in_full_and_quick_runs() -> None:
    assert OBS_CASE == "small-c50-obs"
    assert ALL_CASES[-1] == OBS_CASE
    assert SPECIAL_CASES == (RETRY_CASE, OBS_CASE)
    assert QUICK_CASES[-2:] == (RETRY_CASE, OBS_CASE)
    assert split_case(OBS_CASE) == ("small", 50)


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("small-c50-obs", [OBS_CASE]),
        ("*-obs", [OBS_CASE]),
        ("obs", [OBS_CASE]),
        ("OBS", [OBS_CASE]),
        ("obs,retry", [RETRY_CASE, OBS_CASE]),
        ("small-c50-*", [RETRY_CASE, OBS_CASE]),
        ("small-c50", ["small-c50"]),
    ],
    ids=["name", "glob", "alias", "alias-upper", "both-aliases", "variant-glob", "plain-only"],
)
def test_select_cases_with_obs(spec: str, want: list[str]) -> None:
    assert select_cases(spec, quick=False) == want


def test_case_aliases_name_the_special_cases() -> None:
    assert set(CASE_ALIASES.values()) == set(SPECIAL_CASES)


def test_select_cases_rejects_unknown_alias() -> None:
    with pytest.raises(ValueError, match="or retry, obs"):
        select_cases("tracing", quick=False)


@pytest.mark.parametrize(
    ("argv", "cases"),
    [
        (["--quick"], ["small-c50", "small-c1", "64k-c50", RETRY_CASE, OBS_CASE]),
        (["--cases", "obs"], [OBS_CASE]),
    ],
    ids=["quick", "alias"],
)
def test_parse_args_includes_obs(argv: list[str], cases: list[str]) -> None:
    assert parse_args(argv).case_list == cases


@pytest.mark.parametrize(
    ("targets", "want"),
    [
        (ALL_TARGETS, list(OBS_TARGETS)),
        ([FASTPROXY], list(OBS_TARGETS)),
        ([NGINX, "direct", "byte-relay"], []),
    ],
    ids=["all", "fastproxy-only", "no-fastproxy"],
)
def test_case_targets_obs(targets: list[str], want: list[str]) -> None:
    assert case_targets(OBS_CASE, targets) == want


def test_rows_come_from_fastproxy_only() -> None:
    assert OBS_CASE_TARGETS == {FASTPROXY: OBS_TARGETS}
    assert OBS_TARGETS == (FASTPROXY_OBS_OFF, FASTPROXY_METRICS, FASTPROXY_TRACED)


@pytest.mark.parametrize(
    ("cases", "targets", "runs", "summary"),
    [
        (
            list(ALL_CASES),
            ALL_TARGETS,
            31,
            "6 cases x 4 targets + small-c50-retry x 4 + small-c50-obs x 3 = 31 runs",
        ),
        (
            ["small-c50", "small-c1", "64k-c50", RETRY_CASE, OBS_CASE],
            ALL_TARGETS,
            19,
            "3 cases x 4 targets + small-c50-retry x 4 + small-c50-obs x 3 = 19 runs",
        ),
        ([OBS_CASE], [FASTPROXY], 3, "small-c50-obs x 3 = 3 runs"),
        ([OBS_CASE], [NGINX], 0, "small-c50-obs x 0 = 0 runs"),
    ],
    ids=["all", "quick", "obs-only", "obs-without-fastproxy"],
)
def test_count_runs_and_plan_with_obs(
    cases: list[str], targets: list[str], runs: int, summary: str
) -> None:
    assert count_runs(cases, targets) == runs
    assert plan_summary(cases, targets) == summary


@pytest.mark.parametrize(
    ("cases", "targets", "want"),
    [
        ([OBS_CASE], [FASTPROXY], OBS_SETTLE_OVERHEAD_S),
        ([OBS_CASE], [NGINX], 0.0),
        (["small-c50", RETRY_CASE], ALL_TARGETS, 0.0),
    ],
    ids=["traced", "no-traced-row", "no-obs-case"],
)
def test_settle_overhead(cases: list[str], targets: list[str], want: float) -> None:
    assert settle_overhead_s(cases, targets) == want


@pytest.mark.parametrize(
    ("runs", "duration", "warmup", "extra", "want"),
    [
        (31, 10.0, 1.0, OBS_SETTLE_OVERHEAD_S, 5.0 + 31 * 11.5 + OBS_SETTLE_OVERHEAD_S),
        (19, 3.0, 1.0, OBS_SETTLE_OVERHEAD_S, 5.0 + 19 * 4.5 + OBS_SETTLE_OVERHEAD_S),
        (3, 3.0, 1.0, 0.0, 5.0 + 3 * 4.5),
    ],
    ids=["default", "quick", "no-extra"],
)
def test_estimate_with_settling(
    runs: int, duration: float, warmup: float, extra: float, want: float
) -> None:
    assert estimate_seconds(runs, duration, warmup, extra) == pytest.approx(want)


def test_row_setups_agree() -> None:
    """What run.py starts and what report.py labels each row with are the same."""
    assert set(OBS_ROWS) == set(OBS_TARGETS) == set(OBS_ROW_SETUP)
    for row, setup in OBS_ROWS.items():
        metrics, tracing = OBS_ROW_SETUP[row]
        assert metrics == ("on" if setup.metrics else "off")
        assert (tracing == "off") == (setup.sampling_rate is None)
        assert ("zipkin" in tracing) == setup.zipkin
    assert OBS_ROWS[FASTPROXY_OBS_OFF] == ObsRow(metrics=False)
    assert OBS_ROWS[FASTPROXY_METRICS].sampling_rate == "0"
    assert OBS_ROWS[FASTPROXY_TRACED].sampling_rate == "1"


# --------------------------------------------------------------------------- fastproxy flags


def _argv(
    help_text: str = HELP_NOW,
    user: tuple[str, ...] = (),
    metrics: bool = False,
    extra: tuple[str, ...] = (),
) -> tuple[list[str], int]:
    ports = _ports()
    return fastproxy_argv("fp", 8000, 3500, help_text, user, extra, metrics, lambda: next(ports))


def _value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_plain_fastproxy_has_all_observability_off() -> None:
    argv, metrics_port = _argv()
    assert argv[:12] == [
        "fp",
        "run",
        "--app-id",
        APP_ID,
        "--app-port",
        "8000",
        "--dapr-http-port",
        "3500",
        "--dapr-listen-addresses",
        "127.0.0.1",
        "--log-level",
        "warn",
    ]
    assert METRICS_OFF_FLAG == "--enable-metrics=false"
    assert METRICS_OFF_FLAG in argv
    assert "--config" not in argv
    # The metrics port still gets a free port: nothing can fall back to 9090.
    assert metrics_port == int(_value(argv, "--metrics-port") or 0) != 0


def test_metrics_row_turns_metrics_on_on_loopback_and_a_free_port() -> None:
    argv, metrics_port = _argv(metrics=True, extra=("--config", "c.yaml"))
    assert "--enable-metrics=true" in argv
    assert METRICS_OFF_FLAG not in argv
    assert _value(argv, "--metrics-listen-address") == "127.0.0.1"
    assert _value(argv, "--config") == "c.yaml"
    assert metrics_port == int(_value(argv, "--metrics-port") or 0)
    assert 40_001 <= metrics_port < 40_100


@pytest.mark.parametrize("metrics", [False, True], ids=["off", "on"])
@pytest.mark.parametrize("help_text", [HELP_NOW, HELP_OLD], ids=["now", "old"])
def test_no_row_ever_binds_9090(metrics: bool, help_text: str) -> None:
    """Every listener flag the binary knows gets a free port; metrics need one."""
    if metrics and help_text == HELP_OLD:
        with pytest.raises(BenchError, match="--enable-metrics or --metrics-port"):
            _argv(help_text, metrics=metrics)
        return
    argv, _ = _argv(help_text, metrics=metrics)
    assert "9090" not in argv
    for flag in FASTPROXY_PORT_FLAGS:
        if flag in help_text:
            assert int(_value(argv, flag) or 0) >= 40_001, flag


def test_old_binary_gets_no_metrics_flag() -> None:
    argv, metrics_port = _argv(HELP_OLD)
    assert not any(a.startswith("--enable-metrics") for a in argv)
    assert metrics_port == 0
    assert _value(argv, "--dapr-internal-grpc-port") is not None


@pytest.mark.parametrize(
    ("user", "metrics_port"),
    [
        (("--metrics-port=9999",), 0),
        (("--metrics-port", "9999"), 0),
        (("--enable-metrics",), 40_002),
        (("--log-level", "debug"), 40_002),
    ],
    ids=["port-equals", "port-separate", "enable-metrics", "unrelated"],
)
def test_user_args_win_and_come_last(user: tuple[str, ...], metrics_port: int) -> None:
    argv, port = _argv(user=user)
    assert tuple(argv[-len(user) :]) == user
    assert port == metrics_port
    assert argv.count("--metrics-port") + sum(a.startswith("--metrics-port=") for a in argv) == 1
    assert (METRICS_OFF_FLAG in argv) is (user != ("--enable-metrics",))


# --------------------------------------------------------------------------- configurations


@pytest.mark.parametrize(
    ("rate", "zipkin"),
    [("0", None), ("1", "http://127.0.0.1:9411/api/v2/spans")],
    ids=["propagation", "traced"],
)
def test_obs_configuration_yaml(rate: str, zipkin: str | None) -> None:
    doc = yaml.safe_load(obs_configuration_yaml(rate, zipkin))
    assert doc["kind"] == "Configuration"
    assert doc["apiVersion"] == "dapr.io/v1alpha1"
    tracing = doc["spec"]["tracing"]
    assert tracing["samplingRate"] == rate  # a string, as Dapr writes it
    if zipkin is None:
        assert "zipkin" not in tracing
    else:
        assert tracing["zipkin"] == {"endpointAddress": zipkin}


@pytest.mark.parametrize(
    ("rate", "zipkin", "want_rate"),
    [("0", None, 0.0), ("1", f"http://127.0.0.1:9411{ZIPKIN_PATH}", 1.0)],
    ids=["propagation", "traced"],
)
def test_obs_configuration_loads_in_fastproxy(
    tmp_path: Path, rate: str, zipkin: str | None, want_rate: float
) -> None:
    resources = pytest.importorskip("fastproxy.config.resources")
    settings = pytest.importorskip("fastproxy.observability.settings")
    path = tmp_path / "config.yaml"
    path.write_text(obs_configuration_yaml(rate, zipkin))
    spec = resources.load_resources([], str(path), APP_ID).configuration
    tracing = settings.load_observability(spec, {}).tracing
    assert tracing.enabled
    assert tracing.sampling_rate == want_rate
    assert tracing.zipkin_endpoint == zipkin
    assert tracing.exports_zipkin is (zipkin is not None)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (None, "absent"),
        (TRACEPARENT + "01", "sampled"),
        (TRACEPARENT + "00", "unsampled"),
        (" " + TRACEPARENT + "01 ", "sampled"),
        (TRACEPARENT + "02", "malformed"),
        ("00-abc-def-01", "malformed"),
        ("", "malformed"),
    ],
    ids=["absent", "sampled", "unsampled", "spaces", "other-flags", "short-ids", "empty"],
)
def test_traceparent_state(value: str | None, want: str) -> None:
    assert traceparent_state(value) == want


def test_collector_counters() -> None:
    stats = {"requests": 3, "bytes": 900, "spans": 1024, "invalid": 0, "connections": 3}
    assert collector_counters({**stats, "extra": "x"}) == stats
    assert set(COLLECTOR_COUNTERS) == set(stats)
    with pytest.raises(BenchError, match="'spans'"):
        collector_counters({**stats, "spans": None})
    with pytest.raises(BenchError, match="'invalid'"):
        collector_counters({**stats, "invalid": True})


def test_obs_case_note_names_rows_flags_and_bar() -> None:
    for needle in (*OBS_TARGETS, METRICS_OFF_FLAG, "benchmarks/collector.py", "1.10x", "1.35x"):
        assert needle in OBS_CASE_NOTE


# --------------------------------------------------------------------------- starting rows


@dataclass
class FakeSidecar:
    """What check_obs_row sees of a fastproxy: its traceparent answer, its metrics."""

    traceparent: str | None = None
    status: int = 200
    metrics_body: bytes | None = None  # None: nothing listens on the metrics port


@contextlib.contextmanager
def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _handler(body: bytes, headers: dict[str, str], status: int) -> type[Any]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def _sidecar(fake: FakeSidecar) -> Iterator[Target]:
    headers = {} if fake.traceparent is None else {"traceparent": fake.traceparent}
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(_serve(_handler(b"hello, world\n", headers, fake.status)))
        if fake.metrics_body is None:
            metrics_port = free_port()  # nothing listens on it
        else:
            metrics_port = stack.enter_context(_serve(_handler(fake.metrics_body, {}, 200)))
        yield Target(FASTPROXY_METRICS, port, INVOKE_PREFIX, None, metrics_port=metrics_port)


METRICS = (
    b"# HELP dapr_http_server_request_count x\n# TYPE dapr_http_server_request_count counter\n"
)


@pytest.mark.parametrize(
    ("row", "fake", "error"),
    [
        (FASTPROXY_OBS_OFF, FakeSidecar(), None),
        (FASTPROXY_METRICS, FakeSidecar(TRACEPARENT + "00", metrics_body=METRICS), None),
        (FASTPROXY_TRACED, FakeSidecar(TRACEPARENT + "01", metrics_body=METRICS), None),
        (FASTPROXY_OBS_OFF, FakeSidecar(TRACEPARENT + "00"), "want 200 and absent"),
        (FASTPROXY_OBS_OFF, FakeSidecar(metrics_body=METRICS), "metrics are off but port"),
        (FASTPROXY_METRICS, FakeSidecar(metrics_body=METRICS), "want 200 and unsampled"),
        (FASTPROXY_TRACED, FakeSidecar(TRACEPARENT + "00", metrics_body=METRICS), "sampled"),
        (FASTPROXY_METRICS, FakeSidecar(TRACEPARENT + "00", metrics_body=b"x"), "without Dapr"),
        (FASTPROXY_METRICS, FakeSidecar(TRACEPARENT + "00"), "GET /metrics on port"),
        (FASTPROXY_METRICS, FakeSidecar(TRACEPARENT + "00", 500, METRICS), "HTTP 500"),
    ],
    ids=[
        "off-ok",
        "metrics-ok",
        "traced-ok",
        "off-but-traced",
        "off-but-metrics",
        "metrics-without-traceparent",
        "traced-unsampled",
        "metrics-body-not-dapr",
        "metrics-port-closed",
        "proxy-error",
    ],
)
def test_check_obs_row(row: str, fake: FakeSidecar, error: str | None) -> None:
    with _sidecar(fake) as target:
        if error is None:
            check_obs_row(target, OBS_ROWS[row])
        else:
            with pytest.raises(BenchError, match=error):
                check_obs_row(target, OBS_ROWS[row])


def test_port_closed_really_is() -> None:
    """The check for a metrics port that must be closed connects to it."""
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)
        target = Target(FASTPROXY_OBS_OFF, port, INVOKE_PREFIX, None, metrics_port=port)
        with pytest.raises(BenchError, match="metrics are off"):
            check_metrics_port(target, OBS_ROWS[FASTPROXY_OBS_OFF])


# --------------------------------------------------------------------------- span figures


def _counters(requests: int, spans: int, invalid: int = 0) -> dict[str, int]:
    return {
        "requests": requests,
        "bytes": requests * 1000,
        "spans": spans,
        "invalid": invalid,
        "connections": requests,
    }


def test_count_spans_fills_the_figures() -> None:
    m = _m(FASTPROXY_TRACED, 20.0, requests=100_000)
    target = Target(FASTPROXY_TRACED, 1, INVOKE_PREFIX, None, collector_port=2)
    count_run_spans(
        m, target, _counters(10, 5_000), _counters(210, 104_800), _counters(211, 105_030)
    )
    assert (m.spans_received, m.spans_late) == (99_800, 230)
    assert (m.collector_posts, m.collector_bytes) == (200, 200_000)


@pytest.mark.parametrize(
    ("before", "after", "settled", "error"),
    [
        (_counters(1, 7), _counters(1, 7), _counters(1, 7), "received no spans"),
        (_counters(1, 7), _counters(9, 900), _counters(10, 950, 1), "1 POSTs that are no span"),
    ],
    ids=["no-spans", "invalid-body"],
)
def test_count_spans_refuses_a_row_that_exports_nothing(
    before: dict[str, int], after: dict[str, int], settled: dict[str, int], error: str
) -> None:
    m = _m(FASTPROXY_TRACED, 20.0)
    target = Target(FASTPROXY_TRACED, 1, INVOKE_PREFIX, None, collector_port=2)
    with pytest.raises(BenchError, match=error):
        count_run_spans(m, target, before, after, settled)


@pytest.mark.parametrize(
    ("spans", "late", "requests", "total", "per_request"),
    [
        (99_800, 230, 100_000, 100_030, 0.998),
        (100_000, None, 100_000, 100_000, 1.0),
        (None, None, 100_000, None, None),
        (10, 0, 0, 10, None),
    ],
    ids=["with-late", "no-late", "not-counted", "no-requests"],
)
def test_span_figures(
    spans: int | None,
    late: int | None,
    requests: int,
    total: int | None,
    per_request: float | None,
) -> None:
    m = _m(FASTPROXY_TRACED, 20.0, requests=requests, spans=spans, late=late)
    assert spans_total(m) == total
    assert spans_per_request(m) == (None if per_request is None else pytest.approx(per_request))


# --------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class VerdictCase:
    rows: list[Measurement]
    status: str
    metrics_cpu: float | None
    traced_cpu: float | None
    needles: tuple[str, ...] = ()


OFF = _m(FASTPROXY_OBS_OFF, 20.0, 40_000)
VERDICT_CASES: dict[str, VerdictCase] = {
    "pass": VerdictCase(
        [
            OFF,
            _m(FASTPROXY_METRICS, 21.0, 38_000),
            _m(FASTPROXY_TRACED, 25.0, 36_000, spans=119_800, late=230),
        ],
        "PASS",
        1.05,
        1.25,
        (
            "fastproxy-metrics CPU 21.0 us/req = 1.05x (need <= 1.10: ok), 38,000 rps = 0.95x, "
            "p50 1.000 / p99 4.000 ms",
            "fastproxy-traced CPU 25.0 us/req = 1.25x (need <= 1.35: ok), 36,000 rps = 0.90x",
            "against fastproxy-obs-off 20.0 us/req, 40,000 rps, p50 1.000 / p99 4.000 ms",
            "spans received 119,800 during the run (99.83 % of 120,000 requests) + 230 after "
            "it (the batch still queued when wrk stopped) = 120,030 (+30 against requests: "
            "no span missing",
        ),
    ),
    "at-the-bars": VerdictCase(
        [OFF, _m(FASTPROXY_METRICS, 22.0), _m(FASTPROXY_TRACED, 27.0, spans=120_000, late=0)],
        "PASS",
        1.10,
        1.35,
        ("need <= 1.10: ok", "need <= 1.35: ok", "+0 against requests"),
    ),
    "metrics-over": VerdictCase(
        [OFF, _m(FASTPROXY_METRICS, 22.2), _m(FASTPROXY_TRACED, 21.0, spans=1, late=0)],
        "FAIL",
        1.11,
        1.05,
        ("= 1.11x (need <= 1.10: NO)", "(need <= 1.35: ok)"),
    ),
    "traced-over": VerdictCase(
        [OFF, _m(FASTPROXY_METRICS, 21.0), _m(FASTPROXY_TRACED, 27.2, spans=119_000, late=0)],
        "FAIL",
        1.05,
        1.36,
        ("= 1.36x (need <= 1.35: NO)", "1,000 spans MISSING: dropped by the exporter"),
    ),
    "metrics-missing-traced-ok": VerdictCase(
        [OFF, _m(FASTPROXY_METRICS, 21.0, error="died"), _m(FASTPROXY_TRACED, 25.0)],
        "SKIPPED",
        None,
        1.25,
        ("fastproxy-metrics: no successful run", f"{FASTPROXY_TRACED} spans: not counted"),
    ),
    "metrics-missing-traced-over": VerdictCase(
        [OFF, _m(FASTPROXY_TRACED, 30.0)], "FAIL", None, 1.5, ("(need <= 1.35: NO)",)
    ),
    "traced-cpu-missing": VerdictCase(
        [OFF, _m(FASTPROXY_METRICS, 21.0), _m(FASTPROXY_TRACED, None)],
        "SKIPPED",
        1.05,
        None,
        ("fastproxy-traced: CPU figure missing",),
    ),
    "no-baseline": VerdictCase(
        [_m(FASTPROXY_METRICS, 21.0), _m(FASTPROXY_TRACED, 25.0)],
        "SKIPPED",
        None,
        None,
        (f"{OBS_CASE}: no successful run of {FASTPROXY_OBS_OFF}",),
    ),
    "baseline-errored": VerdictCase(
        [_m(FASTPROXY_OBS_OFF, 20.0, error="x"), _m(FASTPROXY_METRICS, 21.0)],
        "SKIPPED",
        None,
        None,
        ("no successful run of fastproxy-obs-off",),
    ),
    "baseline-without-cpu": VerdictCase(
        [_m(FASTPROXY_OBS_OFF, None), _m(FASTPROXY_METRICS, 21.0)],
        "SKIPPED",
        None,
        None,
        ("no CPU figure for fastproxy-obs-off",),
    ),
    "other-case-ignored": VerdictCase(
        [
            _m(FASTPROXY_OBS_OFF, 20.0, case="small-c50"),
            _m(FASTPROXY_METRICS, 21.0),
            _m(FASTPROXY_TRACED, 25.0),
        ],
        "SKIPPED",
        None,
        None,
    ),
    "nothing": VerdictCase([], "SKIPPED", None, None),
}


@pytest.mark.parametrize("name", list(VERDICT_CASES))
def test_obs_verdict(name: str) -> None:
    case = VERDICT_CASES[name]
    v = obs_verdict(case.rows)
    assert v.status == case.status, v.message
    assert v.metrics_cpu_ratio == pytest.approx(case.metrics_cpu)
    assert v.traced_cpu_ratio == pytest.approx(case.traced_cpu)
    assert v.message.startswith(f"{OBS_CASE}: ")
    for needle in case.needles:
        assert needle in v.message, v.message


def test_obs_verdict_figures() -> None:
    v = obs_verdict(VERDICT_CASES["pass"].rows)
    assert v.metrics_rps_ratio == pytest.approx(0.95)
    assert v.traced_rps_ratio == pytest.approx(0.90)
    assert (v.spans_received, v.spans_late, v.spans_requests) == (119_800, 230, 120_000)


def test_obs_verdict_bars() -> None:
    assert (OBS_METRICS_CPU_MAX, OBS_TRACED_CPU_MAX) == (1.10, 1.35)
    rows = [OFF, _m(FASTPROXY_METRICS, 23.0), _m(FASTPROXY_TRACED, 29.0)]
    assert obs_verdict(rows).status == "FAIL"
    assert obs_verdict(rows, metrics_max=1.2, traced_max=1.5).status == "PASS"


# --------------------------------------------------------------------------- tables and JSON


def test_obs_text_table() -> None:
    rows = [
        OFF,
        _m(FASTPROXY_METRICS, 21.0, 38_000),
        _m(FASTPROXY_TRACED, 25.0, 36_000, spans=119_800, late=230),
    ]
    lines = format_text_table(rows).splitlines()
    assert lines[0].split() == [w for c in OBS_COLUMNS for w in c.split()]
    assert lines[2].split() == [
        FASTPROXY_OBS_OFF,
        "off",
        "off",
        "40,000",
        "1.00",
        "1.000",
        "2.000",
        "4.000",
        "20.0",
        "1.00",
        "5.0",
        "-",
        "-",
    ]
    assert lines[3].split()[:5] == [FASTPROXY_METRICS, "on", "rate", "0", "38,000"]
    assert lines[3].split()[-5:] == ["21.0", "1.05", "5.0", "-", "-"]
    assert lines[4].split()[:6] == [FASTPROXY_TRACED, "on", "rate", "1,", "zipkin", "36,000"]
    assert lines[4].split()[-5:] == ["25.0", "1.25", "5.0", "119,800", "0.998"]


def test_obs_table_error_row() -> None:
    lines = format_text_table([OFF, _m(FASTPROXY_TRACED, 1.0, error="x")]).splitlines()
    assert lines[3].split() == [FASTPROXY_TRACED, "on", "rate", "1,", "zipkin", "ERROR"] + ["-"] * (
        len(OBS_COLUMNS) - 4
    )


def test_obs_markdown_table() -> None:
    lines = format_markdown_table([OFF, _m(FASTPROXY_METRICS, 21.0)]).splitlines()
    assert lines[0] == "| " + " | ".join(OBS_COLUMNS) + " |"
    assert lines[3].startswith(f"| {FASTPROXY_METRICS} | on | rate 0 | 40,000 | 1.00 |")


def test_obs_case_title() -> None:
    assert case_title(OFF, 3.0) == (
        f"{OBS_CASE}: 13 B body, 50 connections, 3 s; spans to benchmarks/collector.py"
    )


def test_obs_figures() -> None:
    rows = [OFF, _m(FASTPROXY_TRACED, 25.0, 30_000, spans=60_000, requests=120_000)]
    assert obs_figures(rows[1], rows) == {
        "rps_vs_off": 0.75,
        "cpu_vs_off": 1.25,
        "spans_per_request": 0.5,
    }
    failed = _m(FASTPROXY_METRICS, 1.0, error="x")
    assert obs_figures(failed, rows) == {
        "rps_vs_off": None,
        "cpu_vs_off": None,
        "spans_per_request": None,
    }


def test_markdown_has_obs_note_and_verdict() -> None:
    rows = VERDICT_CASES["pass"].rows
    v = obs_verdict(rows)
    md = render_markdown(run_doc(obs_verdict={"status": v.status, "message": v.message}), rows)
    assert f"## {OBS_CASE}: 13 B body" in md
    assert OBS_CASE_NOTE in md
    assert f"**Observability verdict: PASS** - {v.message}" in md
    assert METRICS_OFF_FLAG in md.split("## ")[0]  # the legend says how fastproxy runs
    assert "Observability verdict" not in render_markdown(run_doc(), [OFF])


# --------------------------------------------------------------------------- rounds


def _rounds(
    target: str, *cpus: float | None, errors: dict[int, str] | None = None
) -> list[Measurement]:
    """One row's runs in run order, told apart by rps (1000 x the round) and spans."""
    errors = errors or {}
    return [
        _m(target, cpu, 1000.0 * k, spans=k, late=10 * k, error=errors.get(k))
        for k, cpu in enumerate(cpus, 1)
    ]


def test_round_plan_interleaves_rows() -> None:
    rows = list(OBS_TARGETS)
    assert round_plan(rows, 2) == [
        (1, FASTPROXY_OBS_OFF),
        (1, FASTPROXY_METRICS),
        (1, FASTPROXY_TRACED),
        (2, FASTPROXY_METRICS),
        (2, FASTPROXY_TRACED),
        (2, FASTPROXY_OBS_OFF),
    ]
    assert round_plan(["direct", NGINX], 1) == [(1, "direct"), (1, NGINX)]
    assert round_plan([], 3) == []


@pytest.mark.parametrize(
    ("cases", "targets", "rounds", "runs", "summary", "settle"),
    [
        (
            list(ALL_CASES),
            ALL_TARGETS,
            3,
            45,
            "small-c50 x 4 x 3 rounds + 5 cases x 4 targets + small-c50-retry x 4 + "
            "small-c50-obs x 3 x 3 rounds = 45 runs",
            3 * OBS_SETTLE_OVERHEAD_S,
        ),
        ([OBS_CASE], [FASTPROXY], 2, 6, "small-c50-obs x 3 x 2 rounds = 6 runs", 6.0),
        ([OBS_CASE], [FASTPROXY], 1, 3, "small-c50-obs x 3 = 3 runs", OBS_SETTLE_OVERHEAD_S),
        (
            ["small-c50", RETRY_CASE],
            ALL_TARGETS,
            3,
            16,
            "small-c50 x 4 x 3 rounds + small-c50-retry x 4 = 16 runs",
            0.0,
        ),
    ],
    ids=["all", "obs-2-rounds", "obs-1-round", "no-obs-case"],
)
def test_runs_and_estimate_count_the_rounds(
    cases: list[str],
    targets: list[str],
    rounds: int,
    runs: int,
    summary: str | None,
    settle: float,
) -> None:
    assert count_runs(cases, targets, rounds) == runs
    if summary is not None:
        assert plan_summary(cases, targets, rounds) == summary
    assert settle_overhead_s(cases, targets, rounds) == pytest.approx(settle)
    assert OBS_SETTLE_OVERHEAD_S == 3.0


@pytest.mark.parametrize(
    ("cpus", "errors", "chosen_round"),
    [
        ((14.6, 14.2, 14.9), {}, 1),
        ((15.0, 13.0, 14.0, 16.0), {}, 3),  # even: the lower middle (14.0)
        ((14.0, 14.0, 15.0), {}, 2),  # a tie, kept in run order: round 2 is the middle
        ((1.0, 14.0, 15.0, 16.0), {1: "wrk failed"}, 3),  # failed: no candidate
        ((14.0, 30.0, 15.0), {2: "died"}, 1),  # two left: the lower
        ((9.0,), {}, 1),
        ((20.0, 18.0, 30.0), {1: "a", 3: "b"}, 2),  # the only success
        ((None, 12.0, None), {}, 2),  # no CPU figure: no candidate
        ((None, None), {}, 1),  # no figure at all: the first successful run
    ],
    ids=[
        "odd",
        "even",
        "tie",
        "failed-low-skipped",
        "failed-high-skipped",
        "one-run",
        "one-success",
        "cpu-missing",
        "no-cpu-at-all",
    ],
)
def test_median_run(
    cpus: tuple[float | None, ...], errors: dict[int, str], chosen_round: int
) -> None:
    runs = _rounds(FASTPROXY_METRICS, *cpus, errors=errors)
    m = median_run(runs)
    chosen = runs[chosen_round - 1]
    # Taken whole: the figures of one run, never mixed.
    assert m.rps == chosen.rps == 1000.0 * chosen_round
    assert (m.spans_received, m.spans_late) == (chosen_round, 10 * chosen_round)
    assert m.proxy_cpu_us_per_req == chosen.proxy_cpu_us_per_req
    assert m.error is None
    assert m.round_cpu_us_per_req == [None if k in errors else cpu for k, cpu in enumerate(cpus, 1)]
    assert m.round_errors == [errors.get(k) for k in range(1, len(cpus) + 1)]
    assert runs[0].round_cpu_us_per_req is None  # the runs themselves are left alone


def test_median_run_all_failed_reports_the_first() -> None:
    runs = _rounds(FASTPROXY_TRACED, 20.0, 21.0, 22.0, errors={1: "x", 2: "y", 3: "z"})
    m = median_run(runs)
    assert (m.error, m.rps) == ("x", 1000.0)
    assert m.round_cpu_us_per_req == [None, None, None]
    assert m.round_errors == ["x", "y", "z"]


def test_median_run_needs_a_run() -> None:
    with pytest.raises(ValueError, match="at least one run"):
        median_run([])


def test_merge_rounds_one_median_per_row_in_row_order() -> None:
    cpus = {
        FASTPROXY_OBS_OFF: (20.0, 19.0, 21.0),
        FASTPROXY_METRICS: (22.0, 21.0, 20.5),
        FASTPROXY_TRACED: (26.0, 27.0, 25.0),
    }
    runs = [_m(row, cpus[row][k - 1], 100.0 * k) for k, row in round_plan(list(OBS_TARGETS), 3)]
    merged = merge_rounds(runs)
    assert [m.target for m in merged] == list(OBS_TARGETS)
    assert [m.proxy_cpu_us_per_req for m in merged] == [20.0, 21.0, 26.0]
    assert [m.rps for m in merged] == [100.0, 200.0, 100.0]
    assert [m.round_cpu_us_per_req for m in merged] == [list(c) for c in cpus.values()]
    assert round_count(merged) == 3
    assert round_count([OFF]) == round_count([]) == 1


def test_round_cpu_text() -> None:
    merged = median_run(_rounds(FASTPROXY_OBS_OFF, 14.6, 14.2, 14.94))
    assert round_cpu_text(merged) == "14.6 / 14.2 / 14.9"
    failed = median_run(_rounds(FASTPROXY_OBS_OFF, 14.6, 9.0, None, errors={2: "x"}))
    assert round_cpu_text(failed) == "14.6 / failed / -"
    assert round_cpu_text(OFF) == "-"


def test_run_errors_and_count() -> None:
    assert run_errors(OFF) == []
    assert run_count(OFF) == 1
    plain = _m(FASTPROXY_METRICS, 1.0, error="boom")
    assert run_errors(plain) == [(f"{OBS_CASE} {FASTPROXY_METRICS}", "boom")]
    merged = median_run(_rounds(FASTPROXY_METRICS, 21.0, 20.0, 22.0, errors={2: "died\nlog"}))
    assert merged.error is None
    assert run_errors(merged) == [(f"{OBS_CASE} {FASTPROXY_METRICS} (round 2/3)", "died\nlog")]
    assert run_count(merged) == 3


def _merged_rows() -> list[Measurement]:
    """Three rows of three rounds: medians 20.0, 21.0 and 25.0 us/req; fastproxy-metrics'
    round 3 failed."""
    return [
        median_run(_rounds(FASTPROXY_OBS_OFF, 20.0, 19.0, 21.0)),
        median_run(_rounds(FASTPROXY_METRICS, 22.0, 21.0, 5.0, errors={3: "metrics died"})),
        median_run(_rounds(FASTPROXY_TRACED, 24.0, 26.0, 25.0)),
    ]


def test_obs_verdict_over_rounds() -> None:
    v = obs_verdict(_merged_rows())
    assert v.status == "PASS", v.message
    assert v.rounds == 3
    # metrics: 21.0 of the two that ran (the lower middle), not 5.0 of the failed one
    assert v.metrics_cpu_ratio == pytest.approx(21.0 / 20.0)
    assert v.traced_cpu_ratio == pytest.approx(25.0 / 20.0)
    # traced's median run is round 3: its spans, its requests
    assert (v.spans_received, v.spans_late, v.spans_requests) == (3, 30, 120_000)
    assert v.message.startswith(f"{OBS_CASE}, median of 3 rounds: {FASTPROXY_METRICS} CPU ")
    for needle in (
        "fastproxy-metrics CPU 21.0 us/req (rounds 22.0 / 21.0 / failed) = 1.05x "
        "(need <= 1.10: ok), 2,000 rps = 2.00x",
        "fastproxy-traced CPU 25.0 us/req (rounds 24.0 / 26.0 / 25.0) = 1.25x",
        "against fastproxy-obs-off 20.0 us/req (rounds 20.0 / 19.0 / 21.0), 1,000 rps",
        "spans received 3 during the run",
    ):
        assert needle in v.message, v.message


def test_obs_verdict_single_runs_say_nothing_of_rounds() -> None:
    v = obs_verdict(VERDICT_CASES["pass"].rows)
    assert v.rounds == 1
    assert "round" not in v.message


def test_obs_verdict_over_rounds_skipped() -> None:
    rows = [median_run(_rounds(FASTPROXY_OBS_OFF, 1.0, 2.0, errors={1: "x", 2: "y"}))]
    v = obs_verdict(rows)
    assert (v.status, v.rounds) == ("SKIPPED", 2)
    assert v.message == f"{OBS_CASE}, median of 2 rounds: no successful run of {FASTPROXY_OBS_OFF}"


def test_obs_tables_over_rounds() -> None:
    rows = _merged_rows()
    lines = format_text_table(rows).splitlines()
    assert lines[0].split()[-2:] == ROUNDS_COLUMN.split() == ["cpu", "rounds"]
    assert lines[2].endswith("20.0 / 19.0 / 21.0")
    assert lines[2].split()[8] == "20.0"  # proxy us/req: the median
    assert lines[3].endswith("22.0 / 21.0 / failed")
    md = format_markdown_table(rows).splitlines()
    assert md[0] == "| " + " | ".join((*OBS_COLUMNS, ROUNDS_COLUMN)) + " |"
    assert md[4].endswith("| 25.0 | 1.25 | 5.0 | 3 | 0.000 | 24.0 / 26.0 / 25.0 |")
    # An all-failed row still shows its rounds.
    failed = median_run(_rounds(FASTPROXY_TRACED, 1.0, 2.0, errors={1: "x", 2: "y"}))
    err_line = format_text_table([rows[0], failed]).splitlines()[3]
    assert err_line.split()[5] == "ERROR"
    assert err_line.endswith("failed / failed")


def test_obs_case_title_over_rounds() -> None:
    assert case_title(_merged_rows()[0], 10.0) == (
        f"{OBS_CASE}: 13 B body, 50 connections, 10 s; spans to benchmarks/collector.py; "
        "median of 3 interleaved rounds"
    )


def test_obs_parameters_record_the_rounds() -> None:
    assert obs_parameters([], {}, 3)["rounds"] == 3
    assert obs_parameters([], {})["rounds"] == 1


def test_markdown_over_rounds() -> None:
    rows = _merged_rows()
    v = obs_verdict(rows)
    md = render_markdown(run_doc(obs_verdict={"status": v.status, "message": v.message}), rows)
    assert f"## {OBS_CASE}: 13 B body, 50 connections, 3 s; spans to " in md
    assert "; median of 3 interleaved rounds\n" in md
    assert f"{OBS_CASE_NOTE}\n\n{rounds_note(3)}\n" in md
    assert "| 21.0 | 1.05 | 5.0 | 2 | 0.000 | 22.0 / 21.0 / failed |" in md
    assert f"**Observability verdict: PASS** - {OBS_CASE}, median of 3 rounds: " in md
    # The failed round is reported although its row's median stands.
    errors = md.split("## Errors\n", 1)[1]
    assert f"- {OBS_CASE} {FASTPROXY_METRICS} (round 3/3):\n\n```\nmetrics died\n```" in errors


def test_markdown_single_runs_say_nothing_of_rounds() -> None:
    md = render_markdown(run_doc(), VERDICT_CASES["pass"].rows)
    assert "interleaved" not in md
    assert ROUNDS_COLUMN not in md
    assert "## Errors" not in md


def test_progress_names_the_round() -> None:
    m = _m(FASTPROXY_OBS_OFF, 14.6, 40_000)
    assert _progress(4, 9, m, 2, 3).startswith(
        "[4/9] small-c50-obs fastproxy-obs-off (round 2/3)     40,000 rps  p99 4.000 ms"
    )
    assert "round" not in _progress(4, 9, m)
    failed = _m(FASTPROXY_TRACED, None, error="died\nmore")
    assert _progress(9, 9, failed, 3, 3) == (
        "[9/9] small-c50-obs fastproxy-traced  (round 3/3) ERROR: died"
    )
