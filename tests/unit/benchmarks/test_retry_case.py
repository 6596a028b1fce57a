"""Unit tests for the small-c50-retry case: its rows, figures, verdict and configurations.

The retry verdict turns on client-visible errors parsed from wrk, and its rps cost on the
pairing of two rows, so both are pinned here together with what the case starts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from benchmarks import nginx_conf
from benchmarks.cases import (
    ALL_CASES,
    PLAIN_CASES,
    QUICK_CASES,
    case_targets,
    count_runs,
    plan_summary,
    select_cases,
    split_case,
)
from benchmarks.measure import fill_from_wrk
from benchmarks.probe import BenchError
from benchmarks.report import (
    COUNT_CONNECTION,
    COUNT_PROCESS,
    FASTPROXY,
    FASTPROXY_HEALTHY,
    FASTPROXY_RETRY,
    FASTPROXY_RETRY_SHARED,
    NGINX,
    NGINX_RETRY,
    OBS_CASE,
    RETRY_CASE,
    RETRY_COLUMNS,
    RETRY_MAX_RETRIES,
    Measurement,
    app_requests_per_request,
    case_title,
    client_errors,
    expected_per_connection_figures,
    expected_retry_figures,
    fail_every_label,
    format_markdown_table,
    format_text_table,
    retry_figures,
    retry_verdict,
)
from benchmarks.retry_case import (
    RESILIENCY_YAML,
    RETRY_CASE_NOTE,
    RETRY_CASE_TARGETS,
    RETRY_FAIL_EVERY,
    RETRY_ROW_APPS,
    app_counters,
    flaky_app_name,
)
from benchmarks.targets import APP_ID
from benchmarks.wrkparse import parse_wrk_output

# wrk's format with both error lines, as printed for a run where 503s reached the client.
WRK_WITH_ERRORS = """\
Running 3s test @ http://127.0.0.1:8080/v1.0/invoke/bench/method/small
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.29ms  400.00us   9.00ms   80.00%
    Req/Sec    34.00k     1.00k   36.00k    70.00%
  Latency Distribution
     50%    1.14ms
     75%    1.40ms
     90%    1.80ms
     99%    4.41ms
  104197 requests in 3.00s, 14.94MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 1205
Requests/sec:  34732.33
Transfer/sec:      4.98MB
"""


def _m(
    target: str,
    rps: float | None,
    *,
    requests: int = 100_000,
    non_2xx: int = 0,
    sock: int = 0,
    app_requests: int | None = None,
    fail_every: int | None = 3,
    fail_count: str | None = None,
    error: str | None = None,
    case: str = RETRY_CASE,
) -> Measurement:
    """A retry-case measurement; the app's --count defaults to the row's (RETRY_ROW_APPS)."""
    if fail_count is None and target in RETRY_ROW_APPS:
        fail_count = RETRY_ROW_APPS[target][1]
    return Measurement(
        case=case,
        size="small",
        size_bytes=13,
        connections=50,
        target=target,
        requests=requests,
        rps=rps,
        p50_ms=1.0,
        p99_ms=4.0,
        proxy_cpu_us_per_req=25.0,
        upstream_cpu_us_per_req=10.0,
        non_2xx_3xx=non_2xx,
        socket_errors=sock,
        app_requests=app_requests,
        app_failed=None if app_requests is None else app_requests // 3,
        app_connections=1,
        app_fail_every=fail_every,
        app_fail_count=fail_count,
        error=error,
    )


# --------------------------------------------------------------------------- cases and rows


def test_retry_case_is_in_full_and_quick_runs() -> None:
    """The retry case runs after the plain cases, before the observability case."""
    assert RETRY_CASE == "small-c50-retry"
    assert ALL_CASES[-2:] == (RETRY_CASE, OBS_CASE)
    assert ALL_CASES[:-2] == PLAIN_CASES
    assert RETRY_CASE in QUICK_CASES
    assert len(PLAIN_CASES) == 6


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("small-c50-retry", [RETRY_CASE]),
        ("*-retry", [RETRY_CASE]),
        ("small-c50", ["small-c50"]),
        ("small-*", ["small-c50", "small-c1", RETRY_CASE, OBS_CASE]),
        ("retry", [RETRY_CASE]),
    ],
    ids=["name", "glob", "plain-name-only", "small-glob", "alias"],
)
def test_select_cases_with_retry(spec: str, want: list[str]) -> None:
    assert select_cases(spec, quick=False) == want


def test_split_case_with_variant() -> None:
    assert split_case(RETRY_CASE) == ("small", 50)
    with pytest.raises(ValueError):
        split_case("small")


@pytest.mark.parametrize(
    ("targets", "want"),
    [
        (
            ["direct", NGINX, "byte-relay", FASTPROXY],
            [FASTPROXY_HEALTHY, FASTPROXY_RETRY, FASTPROXY_RETRY_SHARED, NGINX_RETRY],
        ),
        (
            [NGINX, FASTPROXY],
            [FASTPROXY_HEALTHY, FASTPROXY_RETRY, FASTPROXY_RETRY_SHARED, NGINX_RETRY],
        ),
        ([FASTPROXY], [FASTPROXY_HEALTHY, FASTPROXY_RETRY, FASTPROXY_RETRY_SHARED]),
        ([NGINX], [NGINX_RETRY]),
        (["direct", "byte-relay"], []),
    ],
    ids=["all", "two", "fastproxy-only", "nginx-only", "none"],
)
def test_case_targets_retry(targets: list[str], want: list[str]) -> None:
    assert case_targets(RETRY_CASE, targets) == want


def test_case_targets_plain_case_unchanged() -> None:
    assert case_targets("4k-c1", ["direct", FASTPROXY]) == ["direct", FASTPROXY]


def test_count_runs_and_plan() -> None:
    targets = ["direct", NGINX, "byte-relay", FASTPROXY]
    assert count_runs(ALL_CASES, targets) == 6 * 4 + 4 + 3
    assert (
        plan_summary(ALL_CASES, targets)
        == "6 cases x 4 targets + small-c50-retry x 4 + small-c50-obs x 3 = 31 runs"
    )
    assert count_runs([*PLAIN_CASES, RETRY_CASE], targets) == 6 * 4 + 4
    assert plan_summary(["small-c50"], targets) == "1 cases x 4 targets = 4 runs"
    assert plan_summary([RETRY_CASE], [FASTPROXY]) == "small-c50-retry x 3 = 3 runs"


def test_row_apps() -> None:
    """Which app each row runs in front of: one per distinct (fail_every, count)."""
    assert RETRY_ROW_APPS == {
        FASTPROXY_HEALTHY: (0, COUNT_CONNECTION),
        FASTPROXY_RETRY: (3, COUNT_CONNECTION),
        FASTPROXY_RETRY_SHARED: (3, COUNT_PROCESS),
        NGINX_RETRY: (3, COUNT_CONNECTION),
    }
    rows = {row for rows in RETRY_CASE_TARGETS.values() for row in rows}
    assert rows == set(RETRY_ROW_APPS)
    names = {flaky_app_name(*RETRY_ROW_APPS[row]) for row in rows}
    assert names == {"flaky-app-healthy", "flaky-app-per-conn", "flaky-app-shared"}


def test_app_counters() -> None:
    stats = {"requests": 9, "failed": 3, "connections": 2, "fail_every": 3, "count": "process"}
    want = {"requests": 9, "failed": 3, "connections": 2, "fail_every": 3}
    assert app_counters(stats, FASTPROXY_RETRY_SHARED, COUNT_PROCESS) == want
    assert app_counters(stats, FASTPROXY_RETRY_SHARED, None) == want
    with pytest.raises(BenchError, match="counts 'process', want 'connection'"):
        app_counters(stats, FASTPROXY_RETRY, COUNT_CONNECTION)


# --------------------------------------------------------------------------- figures


def test_client_errors_from_wrk_output() -> None:
    r = parse_wrk_output(WRK_WITH_ERRORS)
    m = _m(FASTPROXY_RETRY, r.rps, requests=r.requests)
    fill_from_wrk(m, r)
    assert (m.non_2xx_3xx, m.socket_errors) == (1205, 3)
    assert client_errors(m) == 1208
    assert m.requests == 104_197


@pytest.mark.parametrize(
    ("app_requests", "requests", "want"),
    [(150, 100, 1.5), (100, 100, 1.0), (None, 100, None), (10, 0, None)],
    ids=["retried", "healthy", "no-stats", "no-requests"],
)
def test_app_requests_per_request(
    app_requests: int | None, requests: int, want: float | None
) -> None:
    m = _m(FASTPROXY_RETRY, 1.0, requests=requests, app_requests=app_requests)
    assert app_requests_per_request(m) == want


@pytest.mark.parametrize(
    ("fail_every", "count", "want"),
    [
        (3, COUNT_CONNECTION, "1 in 3 per conn"),
        (3, COUNT_PROCESS, "1 in 3 shared"),
        (3, None, "1 in 3"),  # results from before --count
        (0, COUNT_CONNECTION, "never"),
        (0, None, "never"),
        (None, None, "-"),
    ],
    ids=["per-conn", "shared", "unknown-count", "never", "never-unknown", "none"],
)
def test_fail_every_label(fail_every: int | None, count: str | None, want: str) -> None:
    assert fail_every_label(fail_every, count) == want


def test_expected_retry_figures() -> None:
    share, per_request = expected_retry_figures(3, 3)
    assert share == pytest.approx(1 / 81)
    assert per_request == pytest.approx(1 + 1 / 3 + 1 / 9 + 1 / 27)
    assert expected_retry_figures(0, 3) == (0.0, 1.0)
    assert expected_retry_figures(2, 0) == (0.5, 1.0)


def test_expected_per_connection_figures() -> None:
    assert expected_per_connection_figures(3, 3) == (0.0, 1.5)
    assert expected_per_connection_figures(2, 1) == (0.0, 2.0)
    assert expected_per_connection_figures(3, 0) == pytest.approx((1 / 3, 1.0))
    assert expected_per_connection_figures(1, 3) == (1.0, 4.0)
    assert expected_per_connection_figures(0, 3) == (0.0, 1.0)


# --------------------------------------------------------------------------- verdict


def test_retry_verdict_pass() -> None:
    ms = [
        _m(FASTPROXY_HEALTHY, 50_000, app_requests=100_000, fail_every=0),
        _m(FASTPROXY_RETRY, 35_000, app_requests=150_000),
        _m(FASTPROXY_RETRY_SHARED, 34_000, requests=81_000, non_2xx=1_000, app_requests=120_000),
        _m(NGINX_RETRY, 25_000, non_2xx=3, app_requests=148_000),
    ]
    v = retry_verdict(ms)
    assert v.status == "PASS"
    assert v.client_errors == 0
    assert v.rps_cost == pytest.approx(0.7)
    assert v.app_ratio == pytest.approx(1.5)
    assert "rps cost of retries 0.70" in v.message
    assert "35,000 rps / fastproxy-healthy 50,000 rps" in v.message
    assert "0 client-visible errors" in v.message
    assert "need 0: ok" in v.message
    # fastproxy-retry against the per-connection pattern: no retry fails.
    assert (
        "1.500 requests per client request (if each connection fails its requests 3, 6, ... "
        "and a retry reuses the connection that failed: 0.00 % errors, 1.500 requests per "
        "request)" in v.message
    )
    # The shared-counter row: reported against the independent model, not judged.
    assert v.shared_client_errors == 1_000
    assert v.shared_error_share == pytest.approx(1_000 / 81_000)
    assert (
        "; fastproxy-retry-shared (app fails 1 in 3 shared): 1000 errors in 81,000 requests "
        "= 1.23 %, 34,000 rps, 1.481 app requests per request (if each attempt failed 1 in 3 "
        "independently: 1.23 % errors, 1.481 requests per request)" in v.message
    )
    assert "nginx-retry: 3 errors" in v.message  # nginx's errors are reported, not judged
    assert v.message.index(FASTPROXY_RETRY_SHARED) < v.message.index(NGINX_RETRY)


def test_retry_verdict_judges_only_the_per_connection_row() -> None:
    ms = [
        _m(FASTPROXY_RETRY, 35_000, app_requests=150_000),
        _m(FASTPROXY_RETRY_SHARED, 34_000, non_2xx=1_234, sock=1),
    ]
    v = retry_verdict(ms)
    assert v.status == "PASS"
    assert v.shared_client_errors == 1_235
    assert "fastproxy-retry-shared (app fails 1 in 3 shared): 1235 errors" in v.message


def test_retry_verdict_without_shared_row() -> None:
    ms = [
        _m(FASTPROXY_RETRY, 35_000, app_requests=150_000),
        _m(FASTPROXY_RETRY_SHARED, 34_000, error="fastproxy exited"),
    ]
    v = retry_verdict(ms)
    assert v.status == "PASS"
    assert (v.shared_client_errors, v.shared_error_share) == (None, None)
    assert FASTPROXY_RETRY_SHARED not in v.message


def test_retry_verdict_shared_row_alone_is_skipped() -> None:
    v = retry_verdict([_m(FASTPROXY_RETRY_SHARED, 34_000)])
    assert v.status == "SKIPPED"
    assert v.message == f"{RETRY_CASE}: no successful run of {FASTPROXY_RETRY}"


@pytest.mark.parametrize(
    ("non_2xx", "sock", "errors"),
    [(1, 0, 1), (0, 2, 2), (1205, 3, 1208)],
    ids=["503", "socket", "both"],
)
def test_retry_verdict_fail_on_any_client_error(non_2xx: int, sock: int, errors: int) -> None:
    ms = [
        _m(FASTPROXY_HEALTHY, 50_000, fail_every=0),
        _m(FASTPROXY_RETRY, 35_000, non_2xx=non_2xx, sock=sock, app_requests=148_300),
    ]
    v = retry_verdict(ms)
    assert v.status == "FAIL"
    assert v.client_errors == errors
    assert f"{errors} client-visible errors" in v.message
    assert "need 0: NO" in v.message
    assert "0.00 % errors, 1.500 requests per request" in v.message  # the per-connection model


def test_retry_verdict_old_results_use_the_independent_model() -> None:
    """A fastproxy-retry measurement without app_fail_count (saved before --count) was made
    against the process-wide counter."""
    m = _m(FASTPROXY_RETRY, 35_000, non_2xx=1_205, app_requests=148_300)
    m.app_fail_count = None
    v = retry_verdict([m])
    assert v.status == "FAIL"
    assert "(if each attempt failed 1 in 3 independently: 1.23 % errors" in v.message


def test_retry_verdict_without_healthy_baseline() -> None:
    ms = [
        _m(FASTPROXY_HEALTHY, 50_000, fail_every=0, error="boom"),
        _m(FASTPROXY_RETRY, 35_000),
    ]
    v = retry_verdict(ms)
    assert v.status == "PASS"
    assert v.rps_cost is None
    assert "rps cost of retries -" in v.message


@pytest.mark.parametrize(
    "ms",
    [
        [],
        [_m(FASTPROXY_HEALTHY, 50_000, fail_every=0)],
        [_m(FASTPROXY_RETRY, 35_000, error="fastproxy exited")],
        [_m(FASTPROXY_RETRY, 35_000, case="small-c50")],
    ],
    ids=["nothing", "no-retry-row", "retry-row-errored", "other-case"],
)
def test_retry_verdict_skipped(ms: list[Measurement]) -> None:
    v = retry_verdict(ms)
    assert v.status == "SKIPPED"
    assert v.message.startswith(f"{RETRY_CASE}:")


def test_retry_verdict_fails_without_requests() -> None:
    v = retry_verdict([_m(FASTPROXY_RETRY, 0.0, requests=0)])
    assert v.status == "FAIL"


# --------------------------------------------------------------------------- tables and JSON


def test_retry_text_table() -> None:
    ms = [
        _m(FASTPROXY_HEALTHY, 50_000, app_requests=100_000, fail_every=0),
        _m(FASTPROXY_RETRY, 35_000, non_2xx=7, sock=1, app_requests=150_000),
        _m(FASTPROXY_RETRY_SHARED, 30_000, non_2xx=370, app_requests=148_100),
        _m(NGINX_RETRY, 1, error="nginx died"),
    ]
    lines = format_text_table(ms).splitlines()
    assert lines[0].split() == [w for c in RETRY_COLUMNS for w in c.split()]
    assert lines[2].split() == [
        FASTPROXY_HEALTHY,
        "never",
        "50,000",
        "1.00",
        "1.000",
        "4.000",
        "25.0",
        "10.0",
        "0",
        "0",
        "1.000",
        "1",
    ]
    assert lines[3].split() == [
        FASTPROXY_RETRY,
        "1",
        "in",
        "3",
        "per",
        "conn",
        "35,000",
        "0.70",
        "1.000",
        "4.000",
        "25.0",
        "10.0",
        "7",
        "1",
        "1.500",
        "1",
    ]
    assert lines[4].split() == [
        FASTPROXY_RETRY_SHARED,
        "1",
        "in",
        "3",
        "shared",
        "30,000",
        "0.60",
        "1.000",
        "4.000",
        "25.0",
        "10.0",
        "370",
        "0",
        "1.481",
        "1",
    ]
    assert lines[5].split()[:7] == [NGINX_RETRY, "1", "in", "3", "per", "conn", "ERROR"]


def test_retry_markdown_table() -> None:
    ms = [_m(FASTPROXY_HEALTHY, 50_000, fail_every=0), _m(FASTPROXY_RETRY, 35_000)]
    lines = format_markdown_table(ms).splitlines()
    assert lines[0] == "| " + " | ".join(RETRY_COLUMNS) + " |"
    assert len(lines) == 4
    assert lines[3].startswith(f"| {FASTPROXY_RETRY} | 1 in 3 per conn | 35,000 | 0.70 |")
    assert lines[2].startswith(f"| {FASTPROXY_HEALTHY} | never | 50,000 | 1.00 |")


def test_plain_case_keeps_common_table() -> None:
    ms = [_m(FASTPROXY, 50_000, case="small-c50")]
    assert "rps/nginx" in format_text_table(ms).splitlines()[0]


def test_retry_case_title() -> None:
    title = case_title(_m(FASTPROXY_RETRY, 1.0), 10.0)
    assert title == f"{RETRY_CASE}: 13 B body, 50 connections, 10 s; app: benchmarks/flaky_app.py"


def test_retry_figures() -> None:
    ms = [_m(FASTPROXY_HEALTHY, 50_000, fail_every=0), _m(FASTPROXY_RETRY, 25_000, non_2xx=4)]
    assert retry_figures(ms[1], ms) == {
        "client_errors": 4,
        "rps_vs_healthy": 0.5,
        "app_requests_per_request": None,
    }
    failed = _m(NGINX_RETRY, 1, error="x")
    assert retry_figures(failed, ms) == {
        "client_errors": None,
        "rps_vs_healthy": None,
        "app_requests_per_request": None,
    }


# --------------------------------------------------------------------------- configurations


def test_resiliency_yaml() -> None:
    doc = yaml.safe_load(RESILIENCY_YAML)
    assert doc["kind"] == "Resiliency"
    policy = doc["spec"]["policies"]["retries"]["threeTimes"]
    assert policy == {
        "policy": "constant",
        "duration": "0s",
        "maxRetries": RETRY_MAX_RETRIES,
        "matching": {"httpStatusCodes": "503"},
    }
    assert doc["spec"]["targets"]["apps"] == {APP_ID: {"retry": "threeTimes"}}


def test_resiliency_yaml_loads_in_fastproxy() -> None:
    spec = pytest.importorskip("fastproxy.resiliency.spec")
    resiliency = spec.load_resiliency([yaml.safe_load(RESILIENCY_YAML)], APP_ID, time.monotonic)
    policy = resiliency.for_app(APP_ID)
    assert policy is not None
    retry = policy.retry
    assert (retry.max_retries, retry.duration, retry.exponential) == (3, 0.0, False)
    assert retry.retries_status(503)
    assert not retry.retries_status(500)


def test_retry_figures_agree() -> None:
    assert RETRY_FAIL_EVERY == 3
    assert nginx_conf.RETRY_TRIES == RETRY_MAX_RETRIES + 1


def test_retry_case_note_names_every_row_and_its_app() -> None:
    for row in RETRY_ROW_APPS:
        assert row in RETRY_CASE_NOTE
    assert "1 in 3 per connection" in RETRY_CASE_NOTE
    assert "1 in 3 shared" in RETRY_CASE_NOTE


@pytest.mark.parametrize("as_root", [True, False], ids=["root", "non-root"])
def test_retry_proxy_conf(tmp_path: Path, as_root: bool) -> None:
    conf = nginx_conf.retry_proxy_conf(tmp_path, 9001, 8124, as_root)
    assert ("user root;" in conf) is as_root
    assert conf.count("server 127.0.0.1:8124 max_fails=0;") == nginx_conf.RETRY_TRIES
    for needle in (
        "listen 127.0.0.1:9001",
        "keepalive 64;",
        r"location ~ ^/v1\.0/invoke/[^/]+/method/(.*)$ {",
        "proxy_pass http://up/$1$is_args$args;",
        'proxy_set_header Connection "";',
        "proxy_next_upstream error timeout http_503 non_idempotent;",
        f"proxy_next_upstream_tries {nginx_conf.RETRY_TRIES};",
        f"error_log {tmp_path / 'nginx-retry-error.log'} warn;",
        f"pid {tmp_path / 'nginx-retry.pid'};",
    ):
        assert needle in conf
    assert conf.count("{") == conf.count("}")


def test_retry_proxy_conf_rejects_no_tries(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        nginx_conf.retry_proxy_conf(tmp_path, 1, 2, True, tries=0)


def test_plain_proxy_conf_has_no_retry(tmp_path: Path) -> None:
    conf = nginx_conf.proxy_conf(tmp_path, 9000, 8123, as_root=True)
    assert "proxy_next_upstream" not in conf
    assert conf.count("server 127.0.0.1:8123;") == 1
