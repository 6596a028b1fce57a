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
from benchmarks.report import (
    FASTPROXY,
    FASTPROXY_HEALTHY,
    FASTPROXY_RETRY,
    NGINX,
    NGINX_RETRY,
    RETRY_CASE,
    RETRY_COLUMNS,
    RETRY_MAX_RETRIES,
    Measurement,
    app_requests_per_request,
    case_title,
    client_errors,
    expected_retry_figures,
    fail_every_label,
    format_markdown_table,
    format_text_table,
    retry_figures,
    retry_verdict,
)
from benchmarks.run import (
    ALL_CASES,
    APP_ID,
    PLAIN_CASES,
    QUICK_CASES,
    RESILIENCY_YAML,
    RETRY_FAIL_EVERY,
    Bench,
    case_targets,
    count_runs,
    plan_summary,
    select_cases,
    split_case,
)
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
    error: str | None = None,
    case: str = RETRY_CASE,
) -> Measurement:
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
        error=error,
    )


# --------------------------------------------------------------------------- cases and rows


def test_retry_case_is_in_full_and_quick_runs() -> None:
    assert RETRY_CASE == "small-c50-retry"
    assert ALL_CASES[-1] == RETRY_CASE
    assert ALL_CASES[:-1] == PLAIN_CASES
    assert RETRY_CASE in QUICK_CASES
    assert len(PLAIN_CASES) == 6


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("small-c50-retry", [RETRY_CASE]),
        ("*-retry", [RETRY_CASE]),
        ("small-c50", ["small-c50"]),
        ("small-*", ["small-c50", "small-c1", RETRY_CASE]),
    ],
    ids=["name", "glob", "plain-name-only", "small-glob"],
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
            [FASTPROXY_HEALTHY, FASTPROXY_RETRY, NGINX_RETRY],
        ),
        ([NGINX, FASTPROXY], [FASTPROXY_HEALTHY, FASTPROXY_RETRY, NGINX_RETRY]),
        ([FASTPROXY], [FASTPROXY_HEALTHY, FASTPROXY_RETRY]),
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
    assert count_runs(ALL_CASES, targets) == 6 * 4 + 3
    assert plan_summary(ALL_CASES, targets) == "6 cases x 4 targets + small-c50-retry x 3 = 27 runs"
    assert plan_summary(["small-c50"], targets) == "1 cases x 4 targets = 4 runs"
    assert plan_summary([RETRY_CASE], [FASTPROXY]) == "small-c50-retry x 2 = 2 runs"


# --------------------------------------------------------------------------- figures


def test_client_errors_from_wrk_output() -> None:
    r = parse_wrk_output(WRK_WITH_ERRORS)
    m = _m(FASTPROXY_RETRY, r.rps, requests=r.requests)
    Bench._fill(m, r)
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
    ("fail_every", "want"), [(3, "1 in 3"), (0, "never"), (None, "-")], ids=["3", "0", "none"]
)
def test_fail_every_label(fail_every: int | None, want: str) -> None:
    assert fail_every_label(fail_every) == want


def test_expected_retry_figures() -> None:
    share, per_request = expected_retry_figures(3, 3)
    assert share == pytest.approx(1 / 81)
    assert per_request == pytest.approx(1 + 1 / 3 + 1 / 9 + 1 / 27)
    assert expected_retry_figures(0, 3) == (0.0, 1.0)
    assert expected_retry_figures(2, 0) == (0.5, 1.0)


# --------------------------------------------------------------------------- verdict


def test_retry_verdict_pass() -> None:
    ms = [
        _m(FASTPROXY_HEALTHY, 50_000, app_requests=100_000, fail_every=0),
        _m(FASTPROXY_RETRY, 35_000, app_requests=150_000),
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
    assert "1.500 requests per client request" in v.message
    assert "nginx-retry: 3 errors" in v.message  # nginx's errors are reported, not judged


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
    assert "1.23 % errors, 1.481 requests per request" in v.message  # the independent model


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
    assert lines[4].split()[:5] == [NGINX_RETRY, "1", "in", "3", "ERROR"]


def test_retry_markdown_table() -> None:
    ms = [_m(FASTPROXY_HEALTHY, 50_000, fail_every=0), _m(FASTPROXY_RETRY, 35_000)]
    lines = format_markdown_table(ms).splitlines()
    assert lines[0] == "| " + " | ".join(RETRY_COLUMNS) + " |"
    assert len(lines) == 4
    assert lines[3].startswith(f"| {FASTPROXY_RETRY} | 1 in 3 | 35,000 | 0.70 |")


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
