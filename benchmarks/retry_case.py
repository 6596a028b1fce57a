"""The small-c50-retry case: its rows (fastproxy with and without a retry policy, nginx with
proxy_next_upstream) in front of benchmarks/flaky_app.py, which fails every N-th request on
purpose, and the app's counters read around each measured run.
"""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import nginx_conf
from benchmarks.probe import READY_TIMEOUT_S, BenchError, http_get, wait_ready
from benchmarks.procs import ManagedProcess, free_port
from benchmarks.report import (
    COUNT_CONNECTION,
    COUNT_PROCESS,
    FASTPROXY,
    FASTPROXY_HEALTHY,
    FASTPROXY_RETRY,
    FASTPROXY_RETRY_SHARED,
    NGINX,
    NGINX_RETRY,
    RETRY_CASE,
    RETRY_MAX_RETRIES,
)
from benchmarks.targets import APP_ID, INVOKE_PREFIX, Bench, StartedRows, Target

# The retry case: the app fails every RETRY_FAIL_EVERY-th request with 503 (counted per
# connection or over the whole process, RETRY_ROW_APPS), and the fastproxy-retry and
# fastproxy-retry-shared sidecars load this Resiliency resource (retry 503s up to 3 times at
# once).
RETRY_FAIL_EVERY = 3
RESILIENCY_YAML = f"""\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: bench
spec:
  policies:
    retries:
      threeTimes:
        policy: constant
        duration: 0s
        maxRetries: {RETRY_MAX_RETRIES}
        matching:
          httpStatusCodes: "503"
  targets:
    apps:
      {APP_ID}:
        retry: threeTimes
"""
# Which of --targets bring which rows to the retry case.
RETRY_CASE_TARGETS: dict[str, tuple[str, ...]] = {
    FASTPROXY: (FASTPROXY_HEALTHY, FASTPROXY_RETRY, FASTPROXY_RETRY_SHARED),
    NGINX: (NGINX_RETRY,),
}
# The flaky_app behind each row of the retry case: (--fail-every, --count). Rows with the
# same pair share one app process (measured one after the other, so /_stats differences
# stay per row).
RETRY_ROW_APPS: dict[str, tuple[int, str]] = {
    FASTPROXY_HEALTHY: (0, COUNT_CONNECTION),
    FASTPROXY_RETRY: (RETRY_FAIL_EVERY, COUNT_CONNECTION),
    FASTPROXY_RETRY_SHARED: (RETRY_FAIL_EVERY, COUNT_PROCESS),
    NGINX_RETRY: (RETRY_FAIL_EVERY, COUNT_CONNECTION),
}


def flaky_app_name(fail_every: int, count: str) -> str:
    """Process (and log) name of the retry case's app: flaky-app-healthy for one that never
    fails, else flaky-app-per-conn or flaky-app-shared after its --count."""
    if fail_every == 0:
        return "flaky-app-healthy"
    return "flaky-app-per-conn" if count == COUNT_CONNECTION else "flaky-app-shared"


def app_counters(stats: dict[str, Any], row: str, count: str | None) -> dict[str, int]:
    """The integer counters of a flaky_app's /_stats answer, after checking that its
    ``count`` is the row's (``count`` None: not checked)."""
    if count is not None and stats.get("count") != count:
        raise BenchError(f"{row}'s app counts {stats.get('count')!r}, want {count!r}: {stats}")
    return {k: v for k, v in stats.items() if isinstance(v, int) and not isinstance(v, bool)}


def start_flaky_app(
    bench: Bench, name: str, fail_every: int, count: str = COUNT_CONNECTION
) -> tuple[ManagedProcess, int]:
    """benchmarks/flaky_app.py on a free port, failing every ``fail_every``-th request
    (of each connection with ``count="connection"``, of all with ``"process"``)."""
    port = free_port()
    argv = [
        *bench.pin(0),
        sys.executable,
        str(Path(__file__).with_name("flaky_app.py")),
        str(port),
        "--fail-every",
        str(fail_every),
        "--count",
        count,
    ]
    proc = bench.registry.start(name, argv, bench.tmp, bench.tmp / f"{name}.log")
    try:
        wait_ready(proc, port, "/_stats", 200, READY_TIMEOUT_S)  # not counted by the app
    except BenchError as exc:
        raise BenchError(f"{exc}\n{proc.log_tail()}") from None
    return proc, port


def start_retry_targets(bench: Bench, rows: Sequence[str]) -> StartedRows:
    """The retry case's ``rows`` (RETRY_CASE_TARGETS), each in front of a flaky_app.

    fastproxy-healthy: plain fastproxy, app never fails (the baseline). fastproxy-retry:
    fastproxy with RESILIENCY_YAML in a --resources-path folder, app fails each
    connection's 3rd, 6th, ... request. fastproxy-retry-shared: the same fastproxy set-up,
    app fails every 3rd request over all connections (one counter). nginx-retry:
    nginx_conf.retry_proxy_conf in front of the per-connection failing app. One app is
    started per distinct RETRY_ROW_APPS pair. Returns the targets that started and, per
    row, why one did not.
    """
    targets: dict[str, Target] = {}
    errors: dict[str, str] = {}
    apps: dict[tuple[int, str], tuple[ManagedProcess, int]] = {}
    for fail_every, count in sorted({RETRY_ROW_APPS[r] for r in rows}):
        name = flaky_app_name(fail_every, count)
        try:
            apps[fail_every, count] = start_flaky_app(bench, name, fail_every, count)
        except BenchError as exc:
            for row in rows:
                if RETRY_ROW_APPS[row] == (fail_every, count):
                    errors[row] = f"could not start {name} for {row}: {exc}"
    for row in rows:
        if row in errors:
            continue
        fail_every, count = RETRY_ROW_APPS[row]
        app, app_port = apps[fail_every, count]
        try:
            targets[row] = _start_retry_row(bench, row, app, app_port, fail_every, count)
        except BenchError as exc:
            errors[row] = f"could not start {row}: {exc}"
    return targets, errors


def _start_retry_row(
    bench: Bench, row: str, app: ManagedProcess, app_port: int, fail_every: int, count: str
) -> Target:
    common: dict[str, Any] = {
        "app": app,
        "app_port": app_port,
        "app_fail_every": fail_every,
        "app_fail_count": count,
        # Client-visible errors are the figure measured wherever the app fails.
        "count_errors": fail_every != 0,
    }
    if row == NGINX_RETRY:
        proc, port = bench.start_nginx(
            nginx_conf.RETRY_PROXY,
            lambda p: nginx_conf.retry_proxy_conf(bench.tmp, p, app_port, bench.as_root),
            f"{INVOKE_PREFIX}/small",
            bench.pin(0),
        )
        err_log = nginx_conf.error_log(bench.tmp, nginx_conf.RETRY_PROXY)
        return Target(row, port, INVOKE_PREFIX, proc, [err_log, app.log_path], **common)
    extra: list[str] = []
    if row in (FASTPROXY_RETRY, FASTPROXY_RETRY_SHARED):
        resources = bench.tmp / "resources-retry"
        resources.mkdir(exist_ok=True)
        (resources / "resiliency.yaml").write_text(RESILIENCY_YAML)
        extra = ["--resources-path", str(resources)]
    proc, port, _ = bench.launch_fastproxy(row, app_port, extra, f"{row}.log")
    return Target(row, port, INVOKE_PREFIX, proc, [app.log_path], **common)


def app_stats(target: Target) -> dict[str, int] | None:
    """flaky_app's counters (GET /_stats, which it does not count), or None for nginx.

    Also checks that the app counts the way the row says (its ``count``).
    """
    if not target.app_port:
        return None
    try:
        status, body = http_get(target.app_port, "/_stats")
        stats = json.loads(body) if status == 200 else None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise BenchError(f"GET /_stats of {target.name}'s app failed: {exc}") from None
    if not isinstance(stats, dict):
        raise BenchError(f"GET /_stats of {target.name}'s app -> HTTP {status}: {body!r}")
    return app_counters(stats, target.name, target.app_fail_count)


RETRY_CASE_NOTE = (
    f"{RETRY_CASE}: wrk -c50 on /small through each proxy to benchmarks/flaky_app.py "
    f"(uvloop + httptools). {FASTPROXY_HEALTHY}: plain fastproxy, app never fails. "
    f"{FASTPROXY_RETRY}: fastproxy with a Resiliency retry policy (constant, 0s, maxRetries 3, "
    f"on 503), app fails 1 in {RETRY_FAIL_EVERY} per connection (each connection's "
    f"{RETRY_FAIL_EVERY}rd, {2 * RETRY_FAIL_EVERY}th, ... request gets a 503). "
    f"{FASTPROXY_RETRY_SHARED}: the same fastproxy, app fails 1 in {RETRY_FAIL_EVERY} shared "
    "(one counter over all connections, so each attempt fails 1 in 3 independently of its "
    f"earlier ones). {NGINX_RETRY}: nginx with proxy_next_upstream error timeout http_503 "
    f"non_idempotent, proxy_next_upstream_tries {nginx_conf.RETRY_TRIES}, app failing 1 in "
    f"{RETRY_FAIL_EVERY} per connection. rps/healthy: rps relative to {FASTPROXY_HEALTHY} "
    f"(for {FASTPROXY_RETRY}: the rps cost of retries). non-2xx and sock err: what the client "
    "saw fail (wrk). app req/req: requests the app received per request the client completed "
    f"(1.5 if no retry ever fails, as {FASTPROXY_RETRY} should show: a retry due at once goes "
    "out on the connection whose failure it follows; 1.481, with 1.23 % of requests failing "
    f"all 4 attempts, if each attempt fails 1 in 3 at random, as {FASTPROXY_RETRY_SHARED} "
    "should show); app conns: connections the app accepted during the run. us/req figures are "
    "per client request."
)


def retry_parameters(rows: Sequence[str]) -> dict[str, Any]:
    """The retry case's set-up, for the JSON's parameters (``rows``: those that ran)."""
    return {
        "app_fail_every": RETRY_FAIL_EVERY,
        # Per row: the app's --fail-every and --count.
        "row_apps": {
            row: {"app_fail_every": n, "app_fail_count": c}
            for row, (n, c) in RETRY_ROW_APPS.items()
            if row in rows
        },
        "resiliency_yaml": RESILIENCY_YAML,
        "nginx_retry_tries": nginx_conf.RETRY_TRIES,
    }
