"""Benchmark fastproxy against nginx (direct and as a reverse proxy) with wrk on loopback.

All three targets are measured in the same run on the same machine, so the ratios are
meaningful even where absolute numbers are not. Usage: ``make bench`` or ``run.py -h``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fnmatch
import http.client
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks import nginx_conf, report  # noqa: E402
from benchmarks.procs import (  # noqa: E402
    ManagedProcess,
    ProcessRegistry,
    free_port,
    install_exit_signal_handlers,
    set_parent_death_signal,
)
from benchmarks.procstat import (  # noqa: E402
    clock_ticks_per_second,
    cpu_us_per_request,
    read_system_cpu,
)
from benchmarks.report import (  # noqa: E402
    COUNT_CONNECTION,
    COUNT_PROCESS,
    DIRECT,
    FASTPROXY,
    FASTPROXY_HEALTHY,
    FASTPROXY_METRICS,
    FASTPROXY_OBS_OFF,
    FASTPROXY_RETRY,
    FASTPROXY_RETRY_SHARED,
    FASTPROXY_TRACED,
    NGINX,
    NGINX_RETRY,
    OBS_CASE,
    OBS_METRICS_CPU_MAX,
    OBS_TARGETS,
    OBS_TRACED_CPU_MAX,
    RELAY,
    RETRY_CASE,
    RETRY_MAX_RETRIES,
    RETRY_TARGETS,
    TARGETS,
    Measurement,
)
from benchmarks.wrkparse import WrkParseError, WrkResult, parse_wrk_output  # noqa: E402
from fastproxy import build  # noqa: E402

APP_ID = "bench"
INVOKE_PREFIX = f"/v1.0/invoke/{APP_ID}/method"
SIZES_ORDER: tuple[str, ...] = ("small", "4k", "64k")
CONNECTIONS_ORDER: tuple[int, ...] = (50, 1)
PLAIN_CASES: tuple[str, ...] = tuple(f"{s}-c{c}" for s in SIZES_ORDER for c in CONNECTIONS_ORDER)
# The retry case (small-c50 against benchmarks/flaky_app.py, see start_retry_targets) and
# the observability case (small-c50 through fastproxy with its observability off, with
# metrics and trace propagation, and with every request traced, see start_obs_targets) run
# last, in that order, each with its own rows: RETRY_CASE_TARGETS, OBS_CASE_TARGETS.
SPECIAL_CASES: tuple[str, ...] = (RETRY_CASE, OBS_CASE)
ALL_CASES: tuple[str, ...] = (*PLAIN_CASES, *SPECIAL_CASES)
QUICK_CASES: tuple[str, ...] = ("small-c50", "small-c1", "64k-c50", RETRY_CASE, OBS_CASE)
# Short names accepted by --cases besides the names and globs.
CASE_ALIASES: dict[str, str] = {"retry": RETRY_CASE, "obs": OBS_CASE}
_CASE_RE = re.compile(r"^(?P<size>[^-]+)-c(?P<conns>\d+)(?:-(?P<variant>[a-z]+))?$")
DEFAULT_DURATION_S = 10
QUICK_DURATION_S = 3
TARGET_ALIASES: dict[str, str] = {
    "direct": DIRECT,
    "nginx": NGINX,
    "nginx-proxy": NGINX,
    "fastproxy": FASTPROXY,
    "fp": FASTPROXY,
    "relay": RELAY,
    "byte-relay": RELAY,
}
# Metrics are on by default in fastproxy: every fastproxy row but those of the
# observability case that turn them on runs with this flag (when `run --help` lists it),
# so fastproxy is measured with all its observability off, like for like with nginx.
METRICS_OFF_FLAG = "--enable-metrics=false"
# Optional fastproxy flags that open extra listeners; given free ports when `run --help`
# lists them, so a Dapr default port already in use on the machine cannot break the run.
FASTPROXY_PORT_FLAGS: tuple[str, ...] = (
    "--dapr-grpc-port",
    "--dapr-internal-grpc-port",
    "--metrics-port",
    "--profile-port",
)
READY_TIMEOUT_S = 10.0
# Warn when this much CPU (in cores) was busy outside our processes during a run. The
# figure is approximate (tick-sampled /proc/stat vs precise per-task times; off by up to
# ~0.3 cores in the 1-connection cases), hence the generous threshold.
NOISE_WARN_CORES = 0.5
# Rough per-run overhead (process polling, sanity request, pauses) for the time estimate.
PER_RUN_OVERHEAD_S = 0.5
STARTUP_OVERHEAD_S = 5.0
# fastproxy-traced waits for the collector's span count to settle before and after its
# measured run (see Bench._collector_settle): about this much longer than other runs.
OBS_SETTLE_OVERHEAD_S = 3.0

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


class BenchError(RuntimeError):
    """A target could not be started or measured; the message says why and shows logs."""


# --------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line; --quick only shortens runs and the default case list."""
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Measure fastproxy vs nginx-proxy vs direct nginx with wrk on loopback.",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds per measured run (default {DEFAULT_DURATION_S}, {QUICK_DURATION_S} "
        "with --quick)",
    )
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each run")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION_S} s runs of only {', '.join(QUICK_CASES)}",
    )
    p.add_argument(
        "--cases",
        default=None,
        help="comma-separated case names or globs, e.g. 'small-c50,64k-*' "
        f"(all: {', '.join(ALL_CASES)}; 'retry' and 'obs' name the last two); selects from "
        "all cases even with --quick",
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated subset of direct,nginx-proxy (or nginx),byte-relay (or relay),"
        " fastproxy (or fp); fastproxy also brings the retry case's fastproxy rows and the obs "
        "case's rows, nginx-proxy the retry case's nginx-retry",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=ROOT / "benchmarks" / "results",
        help="directory for <timestamp>-<commit>.json/.md and latest.md",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="taskset wrk to CPU 1 and the servers (proxy under test and upstream) to CPU 0",
    )
    p.add_argument(
        "--strict", action="store_true", help="exit 1 unless the small-c50 verdict is PASS"
    )
    p.add_argument(
        "--fastproxy-bin",
        type=Path,
        default=ROOT / ".venv" / "bin" / "fastproxy",
        help="fastproxy executable (default .venv/bin/fastproxy)",
    )
    p.add_argument(
        "--fastproxy-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `fastproxy run` (repeatable), e.g. --fastproxy-arg=--foo",
    )
    p.add_argument("--no-save", action="store_true", help="print results but write no files")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = float(QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S)
    if args.duration <= 0 or args.warmup < 0:
        p.error("--duration must be > 0 and --warmup >= 0")
    try:
        args.case_list = select_cases(args.cases, args.quick)
        args.target_list = select_targets(args.targets)
    except ValueError as exc:
        p.error(str(exc))
    return args


def select_cases(spec: str | None, quick: bool) -> list[str]:
    """Cases to run, in canonical order; an unknown name or empty match is an error."""
    if not spec:
        return list(QUICK_CASES if quick else ALL_CASES)
    patterns = [s.strip() for s in spec.split(",") if s.strip()]
    chosen: set[str] = set()
    for pat in patterns:
        hits = fnmatch.filter(ALL_CASES, CASE_ALIASES.get(pat.lower(), pat))
        if not hits:
            raise ValueError(
                f"--cases: {pat!r} matches none of {', '.join(ALL_CASES)} "
                f"(or {', '.join(CASE_ALIASES)})"
            )
        chosen.update(hits)
    return [c for c in ALL_CASES if c in chosen]


def select_targets(spec: str) -> list[str]:
    """Targets to run, in canonical order (direct, nginx-proxy, fastproxy)."""
    chosen: set[str] = set()
    for name in (s.strip().lower() for s in spec.split(",") if s.strip()):
        if name not in TARGET_ALIASES:
            raise ValueError(f"--targets: unknown target {name!r} (use {', '.join(TARGETS)})")
        chosen.add(TARGET_ALIASES[name])
    if not chosen:
        raise ValueError("--targets: empty")
    return [t for t in TARGETS if t in chosen]


def split_case(case: str) -> tuple[str, int]:
    """'64k-c50' -> ('64k', 50); 'small-c50-retry' -> ('small', 50)."""
    m = _CASE_RE.match(case)
    if m is None:
        raise ValueError(f"not a case name: {case!r}")
    return m["size"], int(m["conns"])


def case_targets(case: str, targets: Sequence[str]) -> list[str]:
    """The rows of ``case``: the selected targets, or for the retry case the ones they bring
    (fastproxy: fastproxy-healthy, fastproxy-retry and fastproxy-retry-shared; nginx-proxy:
    nginx-retry), for the observability case those fastproxy brings (fastproxy-obs-off,
    fastproxy-metrics and fastproxy-traced)."""
    if case == RETRY_CASE:
        chosen = {row for t in targets for row in RETRY_CASE_TARGETS.get(t, ())}
        return [row for row in RETRY_TARGETS if row in chosen]
    if case == OBS_CASE:
        chosen = {row for t in targets for row in OBS_CASE_TARGETS.get(t, ())}
        return [row for row in OBS_TARGETS if row in chosen]
    return list(targets)


def count_runs(cases: Sequence[str], targets: Sequence[str]) -> int:
    """Measured runs of (case, row) pairs, for the time estimate and the progress counter."""
    return sum(len(case_targets(c, targets)) for c in cases)


def plan_summary(cases: Sequence[str], targets: Sequence[str]) -> str:
    """'6 cases x 4 targets + small-c50-retry x 4 + small-c50-obs x 3 = 31 runs', printed
    before the estimate."""
    plain = [c for c in cases if c not in SPECIAL_CASES]
    parts = [f"{len(plain)} cases x {len(targets)} targets"] if plain else []
    for case in SPECIAL_CASES:
        if case in cases:
            parts.append(f"{case} x {len(case_targets(case, targets))}")
    return f"{' + '.join(parts)} = {count_runs(cases, targets)} runs"


def settle_overhead_s(cases: Sequence[str], targets: Sequence[str]) -> float:
    """Extra seconds of the run for fastproxy-traced's settling (OBS_SETTLE_OVERHEAD_S)."""
    traced = OBS_CASE in cases and FASTPROXY_TRACED in case_targets(OBS_CASE, targets)
    return OBS_SETTLE_OVERHEAD_S if traced else 0.0


def _given(args: Sequence[str], flag: str) -> bool:
    """Whether ``flag`` is among ``args``, as ``--flag VALUE`` or ``--flag=VALUE``."""
    return any(a == flag or a.startswith(flag + "=") for a in args)


def fastproxy_argv(
    exe: str,
    app_port: int,
    http_port: int,
    help_text: str,
    user_args: Sequence[str],
    extra: Sequence[str] = (),
    metrics: bool = False,
    port: Callable[[], int] = free_port,
) -> tuple[list[str], int]:
    """`fastproxy run` for app 'bench' on ``app_port`` and its metrics port (0: none given).

    Every flag of FASTPROXY_PORT_FLAGS that ``help_text`` lists gets a free ``port()`` unless
    ``user_args`` (--fastproxy-arg, appended last) give it, so no row ever binds a default
    such as the metrics listener's 9090. Without ``metrics`` the metrics listener is turned
    off (METRICS_OFF_FLAG); with it, metrics are on, on 127.0.0.1, which needs a fastproxy
    whose `run --help` lists --enable-metrics and --metrics-port.
    """
    argv = [
        exe,
        "run",
        "--app-id",
        APP_ID,
        "--app-port",
        str(app_port),
        "--dapr-http-port",
        str(http_port),
        "--dapr-listen-addresses",
        "127.0.0.1",
        "--log-level",
        "warn",
        *extra,
    ]
    if metrics:
        missing = [f for f in ("--enable-metrics", "--metrics-port") if f not in help_text]
        if missing:
            raise BenchError(f"{exe} run --help lists no {' or '.join(missing)}: no metrics")
        argv.append("--enable-metrics=true")
        if "--metrics-listen-address" in help_text:
            argv += ["--metrics-listen-address", "127.0.0.1"]
    elif "--enable-metrics" in help_text and not _given(user_args, "--enable-metrics"):
        argv.append(METRICS_OFF_FLAG)
    metrics_port = 0
    for flag in FASTPROXY_PORT_FLAGS:
        if flag in help_text and not _given(user_args, flag):
            value = port()
            argv += [flag, str(value)]
            if flag == "--metrics-port":
                metrics_port = value
    return [*argv, *user_args], metrics_port


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


# --------------------------------------------------------------------------- tools


def find_tool(name: str) -> str | None:
    """Locate a binary, also looking in sbin dirs that a non-login PATH may lack."""
    path = os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"]
    )
    return shutil.which(name, path=path)


def ensure_tools() -> tuple[str, str]:
    """Return (wrk, nginx) paths, installing the Debian packages when one is missing."""
    wrk, nginx = find_tool("wrk"), find_tool("nginx")
    if wrk and nginx:
        return wrk, nginx
    missing = [n for n, p in (("wrk", wrk), ("nginx", nginx)) if p is None]
    if os.geteuid() != 0:
        raise BenchError(
            f"{' and '.join(missing)} not installed and not root: apt-get install them"
        )
    print(f"installing {', '.join(missing)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    base = ["apt-get", "install", "-y", "-qq"]
    if wrk is None:
        subprocess.run([*base, "wrk"], check=True, env=env)
    if (
        nginx is None
        and subprocess.run([*base, "nginx-light"], check=False, env=env).returncode != 0
    ):
        # Debian 13 dropped nginx-light; plain nginx is the same binary for our purposes.
        subprocess.run([*base, "nginx"], check=True, env=env)
    wrk, nginx = find_tool("wrk"), find_tool("nginx")
    if not (wrk and nginx):
        raise BenchError("wrk/nginx still missing after apt-get install")
    return wrk, nginx


# --------------------------------------------------------------------------- HTTP helpers


def http_request(port: int, path: str, timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection: status, headers (names lower-cased) and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        headers = {name.lower(): value for name, value in resp.getheaders()}
        return resp.status, headers, resp.read()
    finally:
        conn.close()


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET on a fresh connection; used for readiness and response sanity checks."""
    status, _, body = http_request(port, path, timeout)
    return status, body


def port_open(port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_ready(
    proc: ManagedProcess, port: int, path: str, want_status: int, timeout_s: float
) -> None:
    """Poll until GET ``path`` answers ``want_status``; fail early if the process dies."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with code {proc.popen.returncode}")
        try:
            status, _ = http_get(port, path, timeout=1.0)
            if status == want_status:
                return
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    raise BenchError(f"{proc.name} not ready after {timeout_s:g} s on GET {path} ({last})")


# --------------------------------------------------------------------------- servers


@dataclass
class Target:
    """Something wrk can load: a port, a URL prefix and the processes whose CPU we sample."""

    name: str
    port: int
    prefix: str
    proxy: ManagedProcess | None
    extra_logs: list[Path] = field(default_factory=list)
    # The app behind it when that is not the common nginx upstream (retry case: a
    # flaky_app, whose /_stats counters are read around the run), its --fail-every and
    # its --count.
    app: ManagedProcess | None = None
    app_port: int = 0
    app_fail_every: int | None = None
    app_fail_count: str | None = None
    # Retry case: client-visible errors are the figure being measured, so they are
    # counted and reported instead of failing the run.
    count_errors: bool = False
    # Observability case: the proxy's metrics port (0: none given) and, for the row that
    # exports spans, benchmarks/collector.py and its port.
    metrics_port: int = 0
    collector: ManagedProcess | None = None
    collector_port: int = 0

    def path(self, size: str) -> str:
        """Request path for a response size, e.g. /v1.0/invoke/bench/method/4k."""
        return f"{self.prefix}/{size}"

    def url(self, size: str) -> str:
        """Full URL handed to wrk."""
        return f"http://127.0.0.1:{self.port}{self.path(size)}"


# What starting a special case's rows gives: the targets that started and, per row, why
# one did not.
StartedRows = tuple[dict[str, Target], dict[str, str]]


class Bench:
    """Owns the temp dir and every child process of one benchmark run."""

    def __init__(self, args: argparse.Namespace, wrk: str, nginx: str) -> None:
        self.args = args
        self.wrk = wrk
        self.nginx = nginx
        self.registry = ProcessRegistry()
        self.tmp = Path(tempfile.mkdtemp(prefix="fastproxy-bench-"))
        self.as_root = os.geteuid() == 0
        self.taskset = find_tool("taskset") if args.pin else None
        if args.pin and self.taskset is None:
            print("warning: --pin requested but taskset not found; not pinning", file=sys.stderr)
        if args.pin and (os.cpu_count() or 1) < 2:
            print("warning: --pin needs 2 CPUs; not pinning", file=sys.stderr)
            self.taskset = None
        self.clk_tck = clock_ticks_per_second()
        self.upstream: ManagedProcess | None = None
        self.upstream_port = 0
        self._help: str | None = None
        # The Configuration each observability row was started with (for the JSON).
        self.obs_configs: dict[str, str] = {}

    def close(self) -> None:
        """Stop all children and delete the temp dir."""
        self.registry.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _pin(self, cpu: int) -> list[str]:
        return [self.taskset, "-c", str(cpu)] if self.taskset else []

    def _start_nginx(
        self, name: str, render: Callable[[int], str], ready_path: str, pin: list[str]
    ) -> tuple[ManagedProcess, int]:
        """Start an nginx on a free port; retry on the rare port race."""
        err_log = nginx_conf.error_log(self.tmp, name)
        for attempt in range(3):
            port = free_port()
            conf = self.tmp / f"{name}.conf"
            conf.write_text(render(port))
            nginx_conf.temp_root(self.tmp, name).mkdir(exist_ok=True)
            argv = [
                *pin,
                self.nginx,
                "-p",
                str(self.tmp),
                "-e",
                str(err_log),
                "-c",
                str(conf),
            ]
            proc = self.registry.start(name, argv, self.tmp, self.tmp / f"{name}.out")
            try:
                wait_ready(proc, port, ready_path, 200, READY_TIMEOUT_S)
            except BenchError as exc:
                tail = proc.log_tail(extra=[err_log])
                proc.stop()
                if "Address already in use" in tail and attempt < 2:
                    continue
                raise BenchError(f"{exc}\n{tail}") from None
            self._wait_for_worker(proc)
            return proc, port
        raise BenchError(f"{name}: no free port after 3 attempts")

    @staticmethod
    def _wait_for_worker(proc: ManagedProcess) -> None:
        # The master answers nothing itself; make sure the worker we will sample exists.
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if len(proc.tree_pids()) >= 2:
                return
            time.sleep(0.05)
        raise BenchError(f"{proc.name}: no nginx worker process found")

    def start_upstream(self) -> Target:
        """The app every target ultimately serves from."""
        bodies = self.tmp / "bodies"
        nginx_conf.write_bodies(bodies)
        proc, port = self._start_nginx(
            nginx_conf.UPSTREAM,
            lambda p: nginx_conf.upstream_conf(self.tmp, p, bodies, self.as_root),
            "/small",
            self._pin(0),
        )
        self.upstream, self.upstream_port = proc, port
        return Target(DIRECT, port, "", None, [nginx_conf.error_log(self.tmp, nginx_conf.UPSTREAM)])

    def start_nginx_proxy(self) -> Target:
        """nginx as reverse proxy with the sidecar's invoke-path rewrite."""
        proc, port = self._start_nginx(
            nginx_conf.PROXY,
            lambda p: nginx_conf.proxy_conf(self.tmp, p, self.upstream_port, self.as_root),
            f"{INVOKE_PREFIX}/small",
            self._pin(0),
        )
        return Target(
            NGINX, port, INVOKE_PREFIX, proc, [nginx_conf.error_log(self.tmp, nginx_conf.PROXY)]
        )

    def fastproxy_help(self) -> str:
        """`fastproxy run --help`, proving the CLI exists before we try to benchmark it
        (run once, then remembered)."""
        if self._help is not None:
            return self._help
        exe = self.args.fastproxy_bin
        if not exe.exists():
            raise BenchError(f"fastproxy not found at {exe} (is the package installed?)")
        try:
            res = subprocess.run(
                [str(exe), "run", "--help"], check=False, capture_output=True, text=True, timeout=30
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"`{exe} run --help` did not finish in 30 s") from None
        if res.returncode != 0:
            raise BenchError(
                f"`{exe} run --help` failed with code {res.returncode}:\n"
                + (res.stderr or res.stdout)[-2000:]
            )
        self._help = res.stdout
        return res.stdout

    def start_fastproxy(self) -> Target:
        """fastproxy as the sidecar of app 'bench', invoking itself (one process), with all
        its observability off."""
        proc, port, _ = self._start_fastproxy(FASTPROXY, self.upstream_port, [], "fastproxy.log")
        return Target(FASTPROXY, port, INVOKE_PREFIX, proc)

    def _start_fastproxy(
        self,
        name: str,
        app_port: int,
        extra: Sequence[str],
        log_name: str,
        metrics: bool = False,
    ) -> tuple[ManagedProcess, int, int]:
        """Start one fastproxy for app 'bench' on ``app_port`` (see fastproxy_argv); return
        it, its HTTP port and its metrics port (0: none given)."""
        help_text = self.fastproxy_help()
        port = free_port()
        argv, metrics_port = fastproxy_argv(
            str(self.args.fastproxy_bin),
            app_port,
            port,
            help_text,
            self.args.fastproxy_arg,
            extra,
            metrics,
        )
        argv = [*self._pin(0), *argv]
        proc = self.registry.start(name, argv, self.tmp, self.tmp / log_name)
        try:
            wait_ready(proc, port, "/v1.0/healthz", 204, READY_TIMEOUT_S)
        except BenchError as exc:
            raise BenchError(f"{exc}\ncommand: {' '.join(argv)}\n{proc.log_tail()}") from None
        return proc, port, metrics_port

    def start_flaky_app(
        self, name: str, fail_every: int, count: str = COUNT_CONNECTION
    ) -> tuple[ManagedProcess, int]:
        """benchmarks/flaky_app.py on a free port, failing every ``fail_every``-th request
        (of each connection with ``count="connection"``, of all with ``"process"``)."""
        port = free_port()
        argv = [
            *self._pin(0),
            sys.executable,
            str(Path(__file__).with_name("flaky_app.py")),
            str(port),
            "--fail-every",
            str(fail_every),
            "--count",
            count,
        ]
        proc = self.registry.start(name, argv, self.tmp, self.tmp / f"{name}.log")
        try:
            wait_ready(proc, port, "/_stats", 200, READY_TIMEOUT_S)  # not counted by the app
        except BenchError as exc:
            raise BenchError(f"{exc}\n{proc.log_tail()}") from None
        return proc, port

    def start_retry_targets(self, rows: Sequence[str]) -> StartedRows:
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
                apps[fail_every, count] = self.start_flaky_app(name, fail_every, count)
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
                targets[row] = self._start_retry_row(row, app, app_port, fail_every, count)
            except BenchError as exc:
                errors[row] = f"could not start {row}: {exc}"
        return targets, errors

    def _start_retry_row(
        self, row: str, app: ManagedProcess, app_port: int, fail_every: int, count: str
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
            proc, port = self._start_nginx(
                nginx_conf.RETRY_PROXY,
                lambda p: nginx_conf.retry_proxy_conf(self.tmp, p, app_port, self.as_root),
                f"{INVOKE_PREFIX}/small",
                self._pin(0),
            )
            err_log = nginx_conf.error_log(self.tmp, nginx_conf.RETRY_PROXY)
            return Target(row, port, INVOKE_PREFIX, proc, [err_log, app.log_path], **common)
        extra: list[str] = []
        if row in (FASTPROXY_RETRY, FASTPROXY_RETRY_SHARED):
            resources = self.tmp / "resources-retry"
            resources.mkdir(exist_ok=True)
            (resources / "resiliency.yaml").write_text(RESILIENCY_YAML)
            extra = ["--resources-path", str(resources)]
        proc, port, _ = self._start_fastproxy(row, app_port, extra, f"{row}.log")
        return Target(row, port, INVOKE_PREFIX, proc, [app.log_path], **common)

    def start_collector(self) -> tuple[ManagedProcess, int]:
        """benchmarks/collector.py on a free port, pinned like the apps."""
        port = free_port()
        argv = [
            *self._pin(0),
            sys.executable,
            str(Path(__file__).with_name("collector.py")),
            str(port),
        ]
        proc = self.registry.start(COLLECTOR, argv, self.tmp, self.tmp / f"{COLLECTOR}.log")
        try:
            wait_ready(proc, port, "/_stats", 200, READY_TIMEOUT_S)  # not counted
        except BenchError as exc:
            raise BenchError(f"{exc}\n{proc.log_tail()}") from None
        return proc, port

    def start_obs_targets(self, rows: Sequence[str]) -> StartedRows:
        """The observability case's ``rows`` (OBS_CASE_TARGETS), each a fastproxy in front of
        the common nginx app, set up as OBS_ROWS says.

        fastproxy-obs-off: --enable-metrics=false and no Configuration, as the plain
        fastproxy target. fastproxy-metrics: metrics on (free --metrics-port, 127.0.0.1) and a
        Configuration (--config) with samplingRate "0". fastproxy-traced: the same with
        samplingRate "1" and Zipkin export to benchmarks/collector.py, started first. Each
        row is checked once started (check_obs_row). Returns the targets that started and,
        per row, why one did not.
        """
        targets: dict[str, Target] = {}
        errors: dict[str, str] = {}
        collector: tuple[ManagedProcess, int] | None = None
        if any(OBS_ROWS[r].zipkin for r in rows):
            try:
                collector = self.start_collector()
            except BenchError as exc:
                for row in rows:
                    if OBS_ROWS[row].zipkin:
                        errors[row] = f"could not start {COLLECTOR} for {row}: {exc}"
        for row in rows:
            if row in errors:
                continue
            try:
                targets[row] = self._start_obs_row(row, OBS_ROWS[row], collector)
            except BenchError as exc:
                errors[row] = f"could not start {row}: {exc}"
        return targets, errors

    def _start_obs_row(
        self, row: str, setup: ObsRow, collector: tuple[ManagedProcess, int] | None
    ) -> Target:
        extra: list[str] = []
        collector_proc, collector_port = collector if setup.zipkin and collector else (None, 0)
        if setup.sampling_rate is not None:
            zipkin = f"http://127.0.0.1:{collector_port}{ZIPKIN_PATH}" if collector_port else None
            yaml_text = obs_configuration_yaml(setup.sampling_rate, zipkin)
            path = self.tmp / f"{row}-config.yaml"
            path.write_text(yaml_text)
            self.obs_configs[row] = yaml_text
            extra = ["--config", str(path)]
        proc, port, metrics_port = self._start_fastproxy(
            row, self.upstream_port, extra, f"{row}.log", setup.metrics
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
            self.check_obs_row(target, setup)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{proc.log_tail()}") from None
        return target

    @staticmethod
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
        Bench._check_metrics_port(target, setup)

    @staticmethod
    def _check_metrics_port(target: Target, setup: ObsRow) -> None:
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

    def start_relay(self) -> Target:
        """The bare uvloop byte relay: what the kernel and event loop cost with no HTTP work.

        It forwards bytes unchanged, so wrk asks it for the upstream's own paths.
        """
        port = free_port()
        argv = [
            *self._pin(0),
            sys.executable,
            str(Path(__file__).with_name("relay.py")),
            str(port),
            str(self.upstream_port),
        ]
        proc = self.registry.start(RELAY, argv, self.tmp, self.tmp / "relay.log")
        try:
            wait_ready(proc, port, "/small", 200, READY_TIMEOUT_S)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{proc.log_tail()}") from None
        return Target(RELAY, port, "", proc)

    # ----------------------------------------------------------------------- measuring

    def _wrk(self, url: str, connections: int, duration_s: float) -> tuple[str, float]:
        """Run wrk once; return its stdout and the CPU seconds wrk itself used."""
        argv = [
            *self._pin(1),
            self.wrk,
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

    def _check_alive(self, target: Target) -> None:
        for proc in (target.proxy, target.app or self.upstream, target.collector):
            if proc is not None and not proc.alive():
                raise BenchError(
                    f"{proc.name} exited with code {proc.popen.returncode}\n"
                    + proc.log_tail(extra=target.extra_logs)
                )

    def _sanity_check(self, target: Target, size: str) -> None:
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

    def _app_stats(self, target: Target) -> dict[str, int] | None:
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

    def _collector_stats(self, target: Target) -> dict[str, int]:
        """benchmarks/collector.py's counters (GET /_stats, which it does not count)."""
        try:
            status, body = http_get(target.collector_port, "/_stats")
            stats = json.loads(body) if status == 200 else None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise BenchError(f"GET /_stats of {target.name}'s collector failed: {exc}") from None
        if not isinstance(stats, dict):
            raise BenchError(f"GET /_stats of {target.name}'s collector -> HTTP {status}")
        return collector_counters(stats)

    def _collector_settle(self, target: Target) -> dict[str, int]:
        """The collector's counters once its span count has not moved for
        OBS_SETTLE_QUIET_S (the exporter has sent what it had queued), or after
        OBS_SETTLE_TIMEOUT_S."""
        deadline = time.monotonic() + OBS_SETTLE_TIMEOUT_S
        stats = self._collector_stats(target)
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self._collector_stats(target)
            if now["spans"] != stats["spans"]:
                since = time.monotonic()
            stats = now
            if time.monotonic() - since >= OBS_SETTLE_QUIET_S:
                break
        return stats

    def measure(self, target: Target, case: str) -> Measurement:
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
        app = target.app or self.upstream
        assert app is not None
        try:
            self._check_alive(target)
            self._sanity_check(target, size)
            if self.args.warmup > 0:
                warm_out, _ = self._wrk(m.url, conns, self.args.warmup)
                warm = parse_wrk_output(warm_out)
                if not warm.ok and not (target.count_errors and warm.requests):
                    raise BenchError(f"warm-up: {warm.error_summary()}\n{warm_out}")
            stats0 = self._app_stats(target)
            # The warm-up's spans all in before counting: the run's spans are its own.
            spans0 = self._collector_settle(target) if target.collector_port else None
            sys0, t0 = read_system_cpu(), time.monotonic()
            proxy0 = target.proxy.cpu_ticks() if target.proxy else None
            up0 = app.cpu_ticks()
            col0 = target.collector.cpu_ticks() if target.collector else None
            out, wrk_cpu_s = self._wrk(m.url, conns, self.args.duration)
            col1 = target.collector.cpu_ticks() if target.collector else None
            up1 = app.cpu_ticks()
            proxy1 = target.proxy.cpu_ticks() if target.proxy else None
            sys1, t1 = read_system_cpu(), time.monotonic()
            stats1 = self._app_stats(target)
            spans1 = self._collector_stats(target) if target.collector_port else None
            m.wrk_output = out
            result = parse_wrk_output(out)
            self._fill(m, result)
            if stats0 is not None and stats1 is not None:
                m.app_requests = stats1["requests"] - stats0["requests"]
                m.app_failed = stats1["failed"] - stats0["failed"]
                m.app_connections = stats1["connections"] - stats0["connections"]
            m.upstream_cpu_ticks = (up1 - up0).total
            m.upstream_cpu_us_per_req = cpu_us_per_request(
                m.upstream_cpu_ticks, result.requests, self.clk_tck
            )
            if proxy0 is not None and proxy1 is not None:
                m.proxy_cpu_ticks = (proxy1 - proxy0).total
                m.proxy_cpu_us_per_req = cpu_us_per_request(
                    m.proxy_cpu_ticks, result.requests, self.clk_tck
                )
            collector_ticks = 0
            if col0 is not None and col1 is not None:
                collector_ticks = (col1 - col0).total
                m.collector_cpu_us_per_req = cpu_us_per_request(
                    collector_ticks, result.requests, self.clk_tck
                )
            if spans0 is not None and spans1 is not None:
                self._count_spans(m, target, spans0, spans1, self._collector_settle(target))
            if result.requests:
                m.wrk_cpu_us_per_req = wrk_cpu_s * 1e6 / result.requests
            wall = t1 - t0
            if wall > 0:
                ours_ticks = (m.proxy_cpu_ticks or 0) + m.upstream_cpu_ticks + collector_ticks
                ours_s = ours_ticks / self.clk_tck
                m.system_busy_cores = (sys1 - sys0).busy / self.clk_tck / wall
                m.other_cores = m.system_busy_cores - (ours_s + wrk_cpu_s) / wall
            if not result.ok and not (target.count_errors and result.requests):
                raise BenchError(f"{result.error_summary()}\n{out}")
            self._check_alive(target)
        except (BenchError, WrkParseError) as exc:
            m.error = str(exc)
        return m

    @staticmethod
    def _count_spans(
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

    @staticmethod
    def _fill(m: Measurement, r: WrkResult) -> None:
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


# --------------------------------------------------------------------------- metadata


def _cmd_output(argv: Sequence[str]) -> str:
    """Combined stdout+stderr of a short command ('nginx -v' prints to stderr)."""
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (res.stdout + res.stderr).strip()


def git_info() -> dict[str, Any]:
    """Commit and dirtiness, via read-only git commands that take no index lock."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*a: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", "-C", str(ROOT), *a],
                check=False,
                capture_output=True,
                text=True,
                env=env,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "--verify", "-q", "HEAD")
    status = git("status", "--porcelain") or ""
    lines = status.splitlines()
    return {
        "commit": commit,
        "short": commit[:10] if commit else "nocommit",
        # "dirty" means tracked files differ from the commit; untracked files are listed apart.
        "dirty": any(not ln.startswith("??") for ln in lines),
        "untracked": any(ln.startswith("??") for ln in lines),
    }


def machine_info(wrk: str, nginx: str) -> dict[str, Any]:
    """Facts that make figures from different runs (in)comparable."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "uvloop": version("uvloop"),
        "httptools": version("httptools"),
        "fastproxy": version("fastproxy"),
        "fastproxy_build": build.describe(),
        "nginx": _cmd_output([nginx, "-v"]),
        "wrk": _cmd_output([wrk, "-v"]).splitlines()[0],
        "clk_tck": clock_ticks_per_second(),
        "loadavg_at_start": os.getloadavg(),
    }


# --------------------------------------------------------------------------- output


def estimate_seconds(
    n_runs: int, duration_s: float, warmup_s: float, extra_s: float = 0.0
) -> float:
    """Expected wall time of a run, printed up front so nobody waits blind; ``extra_s`` for
    waits beyond the runs (settle_overhead_s)."""
    return STARTUP_OVERHEAD_S + n_runs * (duration_s + warmup_s + PER_RUN_OVERHEAD_S) + extra_s


def group_by_case(measurements: Sequence[Measurement]) -> dict[str, list[Measurement]]:
    """Measurements per case, in run order."""
    out: dict[str, list[Measurement]] = {}
    for m in measurements:
        out.setdefault(m.case, []).append(m)
    return out


def render_markdown(doc: dict[str, Any], measurements: Sequence[Measurement]) -> str:
    """The human summary saved next to the JSON and as latest.md."""
    g, mach, par, v = doc["git"], doc["machine"], doc["parameters"], doc["verdict"]
    lines = [
        f"# fastproxy benchmark {doc['timestamp_utc']}",
        "",
        f"- commit: `{g['commit'] or 'none'}`"
        f"{' (dirty)' if g['dirty'] else ''}{' (+untracked files)' if g['untracked'] else ''}",
        f"- machine: {mach['nproc']} CPUs, {mach['cpu_model']}, kernel {mach['kernel']}",
        f"- python {mach['python']}, uvloop {mach['uvloop']}, httptools {mach['httptools']}",
        f"- fastproxy build: {mach.get('fastproxy_build', 'not recorded')}",
        f"- {mach['nginx']}; {mach['wrk']}",
        f"- wrk -t1 --latency, {par['duration_s']:g} s per run after {par['warmup_s']:g} s "
        f"warm-up; pinning: {'wrk CPU 1, proxies and upstream CPU 0' if par['pin'] else 'none'}",
        "",
        "rps/nginx and rps/direct: throughput relative to nginx-proxy and to direct nginx in "
        "the same case. proxy us/req: CPU microseconds the proxy process(es) spent per request "
        "(utime+stime); cpu/nginx: that figure relative to nginx-proxy. app us/req: the same for "
        "the upstream nginx. Latencies in ms from wrk --latency. fastproxy runs with "
        f"{METRICS_OFF_FLAG} and no Configuration (all observability off, like for like with "
        f"nginx), as do the retry case's fastproxy rows; {OBS_CASE} measures it observed.",
        "",
    ]
    for ms in group_by_case(measurements).values():
        lines += [
            f"## {report.case_title(ms[0], par['duration_s'])}",
            "",
            report.format_markdown_table(ms),
            "",
        ]
        if ms[0].case == RETRY_CASE:
            lines += [RETRY_CASE_NOTE, ""]
        elif ms[0].case == OBS_CASE:
            lines += [OBS_CASE_NOTE, ""]
    lines += [f"**Verdict: {v['status']}** - {v['message']}", ""]
    rv = doc.get("retry_verdict")
    if rv is not None:
        lines += [f"**Retry verdict: {rv['status']}** - {rv['message']}", ""]
    ov = doc.get("obs_verdict")
    if ov is not None:
        lines += [f"**Observability verdict: {ov['status']}** - {ov['message']}", ""]
    start_errors: dict[str, str] = doc["start_errors"]
    errors = [m for m in measurements if m.error and m.target not in start_errors]
    if start_errors or errors:
        lines += ["## Errors", ""]
        for name, err in start_errors.items():
            lines += [f"- start error, {name}:", "", "```", err.strip(), "```", ""]
        for m in errors:
            lines += [f"- {m.case} {m.target}:", "", "```", (m.error or "").strip(), "```", ""]
    return "\n".join(lines)


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


def save(doc: dict[str, Any], markdown: str, outdir: Path) -> tuple[Path, Path]:
    """Write <stamp>-<commit>.json/.md and overwrite latest.md."""
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"{doc['timestamp_compact']}-{doc['git']['short']}"
    jpath, mpath = outdir / f"{stem}.json", outdir / f"{stem}.md"
    jpath.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    mpath.write_text(markdown)
    (outdir / "latest.md").write_text(markdown)
    return jpath, mpath


def _progress(i: int, n: int, m: Measurement) -> str:
    # The retry and observability cases' row names are longer.
    widths = {RETRY_CASE: max(map(len, RETRY_TARGETS)), OBS_CASE: max(map(len, OBS_TARGETS))}
    width = widths.get(m.case, 12)
    head = f"[{i}/{n}] {m.case:<10} {m.target:<{width}}"
    if m.error:
        return f"{head} ERROR: {m.error.splitlines()[0]}"
    cpu = f"  proxy {m.proxy_cpu_us_per_req:.1f} us/req" if m.proxy_cpu_us_per_req else ""
    p99 = f"{m.p99_ms:.3f}" if m.p99_ms is not None else "-"
    noise = ""
    if m.other_cores is not None and m.other_cores > NOISE_WARN_CORES:
        noise = f"  [noise: {m.other_cores:.2f} cores busy outside the benchmark]"
    retry = ""
    if m.case == RETRY_CASE:
        app_r = report.app_requests_per_request(m)
        retry = f"  errors {report.client_errors(m)}  app req/req {_f3(app_r)}"
    elif m.spans_received is not None:
        retry = f"  spans {m.spans_received:,} (+{m.spans_late or 0:,} after)"
    return f"{head} {m.rps or 0:>10,.0f} rps  p99 {p99} ms{cpu}{retry}{noise}"


def _f3(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    """Start servers, measure every (case, target), report and save; return exit code."""
    wrk, nginx = ensure_tools()
    started = dt.datetime.now(dt.UTC)
    n_runs = count_runs(args.case_list, args.target_list)
    est = estimate_seconds(
        n_runs, args.duration, args.warmup, settle_overhead_s(args.case_list, args.target_list)
    )
    plain = [c for c in args.case_list if c not in SPECIAL_CASES]
    retry_rows = case_targets(RETRY_CASE, args.target_list) if RETRY_CASE in args.case_list else []
    obs_rows = case_targets(OBS_CASE, args.target_list) if OBS_CASE in args.case_list else []
    print(
        f"{plan_summary(args.case_list, args.target_list)} of {args.warmup:g}+{args.duration:g}"
        f" s; estimated {est:.0f} s (~{est / 60:.1f} min)",
        flush=True,
    )
    machine = machine_info(wrk, nginx)
    for source in build.stale_extensions():
        print(f"warning: {source} changed after it was compiled", file=sys.stderr)
    bench = Bench(args, wrk, nginx)
    measurements: list[Measurement] = []
    target_errors: dict[str, str] = {}
    try:
        targets: dict[str, Target] = {}
        direct = bench.start_upstream()
        if DIRECT in args.target_list:
            targets[DIRECT] = direct
        starters: dict[str, Callable[[], Target]] = {
            NGINX: bench.start_nginx_proxy,
            RELAY: bench.start_relay,
            FASTPROXY: bench.start_fastproxy,
        }
        for name, start in starters.items():
            if name not in args.target_list:
                continue
            if not plain:
                break  # only the retry and obs cases: their rows start their own proxies
            try:
                targets[name] = start()
            except BenchError as exc:
                target_errors[name] = f"could not start {name}: {exc}"
                print(f"ERROR: {target_errors[name]}\n", file=sys.stderr, flush=True)
        special: list[tuple[list[str], Callable[[Sequence[str]], StartedRows]]] = [
            (retry_rows, bench.start_retry_targets),
            (obs_rows, bench.start_obs_targets),
        ]
        for rows, start_rows in special:
            if not rows:
                continue
            started_rows, row_errors = start_rows(rows)
            targets.update(started_rows)
            for name, err in row_errors.items():
                target_errors[name] = err
                print(f"ERROR: {err}\n", file=sys.stderr, flush=True)
        i = 0
        for case in args.case_list:
            for name in case_targets(case, args.target_list):
                i += 1
                if name in targets:
                    m = bench.measure(targets[name], case)
                else:
                    size, conns = split_case(case)
                    first_line = target_errors[name].splitlines()[0]
                    m = Measurement(case, size, nginx_conf.SIZES[size], conns, name)
                    if case == RETRY_CASE:
                        m.app_fail_every, m.app_fail_count = RETRY_ROW_APPS[name]
                    m.error = f"not measured; {first_line} (details under start errors)"
                measurements.append(m)
                print(_progress(i, n_runs, m), flush=True)
                time.sleep(0.2)  # let the previous run's connections close
    finally:
        bench.close()

    elapsed = (dt.datetime.now(dt.UTC) - started).total_seconds()
    v = report.verdict(measurements)
    rv = report.retry_verdict(measurements) if RETRY_CASE in args.case_list else None
    ov = report.obs_verdict(measurements) if OBS_CASE in args.case_list else None
    by_case = group_by_case(measurements)
    ratios = {case: report.case_ratios(ms) for case, ms in by_case.items()}
    doc: dict[str, Any] = {
        "schema": 1,
        "timestamp_utc": started.isoformat(timespec="seconds"),
        "timestamp_compact": started.strftime("%Y%m%dT%H%M%SZ"),
        "elapsed_s": round(elapsed, 1),
        "git": git_info(),
        "machine": machine,
        "parameters": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "quick": args.quick,
            "cases": args.case_list,
            "targets": args.target_list,
            "pin": bench.taskset is not None,
            "wrk_threads": 1,
            "fastproxy_bin": str(args.fastproxy_bin),
            "fastproxy_extra_args": args.fastproxy_arg,
            "argv": sys.argv[1:],
        },
        "results": [
            {
                **dataclasses.asdict(m),
                "ratios": dataclasses.asdict(ratios[m.case][m.target]),
                **(
                    {"retry": report.retry_figures(m, by_case[m.case])}
                    if m.case == RETRY_CASE
                    else {}
                ),
                **({"obs": report.obs_figures(m, by_case[m.case])} if m.case == OBS_CASE else {}),
            }
            for m in measurements
        ],
        "verdict": dataclasses.asdict(v),
        "retry_verdict": dataclasses.asdict(rv) if rv is not None else None,
        "obs_verdict": dataclasses.asdict(ov) if ov is not None else None,
        "start_errors": target_errors,
    }
    if RETRY_CASE in args.case_list:
        doc["parameters"]["retry_case"] = {
            "app_fail_every": RETRY_FAIL_EVERY,
            # Per row: the app's --fail-every and --count.
            "row_apps": {
                row: {"app_fail_every": n, "app_fail_count": c}
                for row, (n, c) in RETRY_ROW_APPS.items()
                if row in retry_rows
            },
            "resiliency_yaml": RESILIENCY_YAML,
            "nginx_retry_tries": nginx_conf.RETRY_TRIES,
        }
    if OBS_CASE in args.case_list:
        doc["parameters"]["obs_case"] = {
            # Per row: what it turns on and the Configuration it was started with (None:
            # no --config).
            "rows": {
                row: {
                    **dataclasses.asdict(OBS_ROWS[row]),
                    "configuration_yaml": bench.obs_configs.get(row),
                }
                for row in obs_rows
            },
            "metrics_off_flag": METRICS_OFF_FLAG,
            "metrics_cpu_max": OBS_METRICS_CPU_MAX,
            "traced_cpu_max": OBS_TRACED_CPU_MAX,
            "collector": "benchmarks/collector.py",
            "settle_quiet_s": OBS_SETTLE_QUIET_S,
        }
    markdown = render_markdown(doc, measurements)

    print()
    for ms in group_by_case(measurements).values():
        print(report.case_title(ms[0], args.duration))
        print(report.format_text_table(ms))
        print()
    print(f"VERDICT {v.status}: {v.message}")
    if rv is not None:
        print(f"RETRY VERDICT {rv.status}: {rv.message}")
    if ov is not None:
        print(f"OBS VERDICT {ov.status}: {ov.message}")
    print(f"elapsed {elapsed:.0f} s (estimated {est:.0f} s)")
    if not args.no_save:
        jpath, mpath = save(doc, markdown, args.output)
        print(f"saved {jpath} and {mpath} (also {args.output / 'latest.md'})")

    failed = [m for m in measurements if m.error]
    if failed:
        print(f"\n!!! {len(failed)} of {len(measurements)} runs FAILED", file=sys.stderr)
        for name, err in target_errors.items():
            print(f"--- start error, {name}:\n{err.strip()}", file=sys.stderr)
        for m in failed:
            if m.target not in target_errors:
                print(f"--- {m.case} {m.target}:\n{(m.error or '').strip()}", file=sys.stderr)
        return 1
    if args.strict and v.status != "PASS":
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; always stops every child, also on Ctrl-C and SIGTERM."""
    args = parse_args(argv)
    install_exit_signal_handlers()
    try:
        return run(args)
    except BenchError as exc:
        print(f"benchmark error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
