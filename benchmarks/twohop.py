"""Two-hop service invocation at a fixed rate: loadgen -> sidecar A -> sidecar B -> app.

Measures what a pair of fastproxy sidecars adds to latency and how much CPU each one burns at
a fixed, moderate request rate (the way Dapr's own service invocation perf test does), and
prints it beside daprd's published figures. Three targets, measured back to back with the
same open-loop load (benchmarks/loadgen.py):

- ``direct``: the upstream nginx app, ``/small``;
- ``one-hop``: sidecar B invoking its own app, ``B/v1.0/invoke/b/method/small``;
- ``two-hop``: sidecar A invoking app b through B's internal port,
  ``A/v1.0/invoke/b/method/small``.

Usage: ``make bench-twohop`` or ``benchmarks/twohop.py -h``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import http.client
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks import nginx_conf  # noqa: E402
from benchmarks.loadgen import LoadResult  # noqa: E402
from benchmarks.procs import (  # noqa: E402
    ManagedProcess,
    free_port,
    install_exit_signal_handlers,
    set_parent_death_signal,
)
from benchmarks.procstat import CpuTicks, cpu_us_per_request, read_system_cpu  # noqa: E402
from benchmarks.run import (  # noqa: E402
    FASTPROXY_PORT_FLAGS,
    READY_TIMEOUT_S,
    Bench,
    BenchError,
    find_tool,
    git_info,
    http_get,
    machine_info,
    wait_ready,
)

DIRECT = "direct"
ONE_HOP = "one-hop"
TWO_HOP = "two-hop"
TARGETS: tuple[str, ...] = (DIRECT, ONE_HOP, TWO_HOP)
SIDECARS: tuple[str, ...] = ("A", "B")
# Which sidecars each target's requests pass through (their CPU is charged to the target).
SIDECARS_OF: dict[str, tuple[str, ...]] = {DIRECT: (), ONE_HOP: ("B",), TWO_HOP: ("A", "B")}
CALLER_ID = "a"
CALLEE_ID = "b"
SIZE = "small"
INVOKE_PATH = f"/v1.0/invoke/{CALLEE_ID}/method/{SIZE}"

DEFAULT_RATE = 1000.0
DEFAULT_DURATION_S = 20.0
DEFAULT_WARMUP_S = 2.0
DEFAULT_CONNECTIONS = 16
# The callee registers in the shared sqlite registry on start; the caller may need a moment.
ROUTE_READY_TIMEOUT_S = 20.0
PER_RUN_OVERHEAD_S = 1.5  # loadgen start-up (x2), sanity check, pause
STARTUP_OVERHEAD_S = 4.0
NOISE_WARN_CORES = 0.5

# daprd's published figures for the same shape of test: two sidecars in the path, 1000 rps,
# 16 connections (Dapr v1.17 perf report, as quoted in the issue).
DAPR_VERSION = "v1.17"
DAPR_RATE = 1000.0
DAPR_CONNECTIONS = 16
DAPR_ADDED_P50_MS = 1.06
DAPR_ADDED_P99_MS = 2.90
DAPR_MCPU_PER_SIDECAR = 200.0
DAPR_US_PER_REQ = DAPR_MCPU_PER_SIDECAR * 1000.0 / DAPR_RATE  # 200 mCPU at 1000 rps
GOAL_FRACTION = 0.25


# --------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line; defaults match daprd's published test (1000 rps, 16 connections)."""
    p = argparse.ArgumentParser(
        prog="benchmarks/twohop.py",
        description="Added latency and CPU of one and two fastproxy sidecars at a fixed rate.",
    )
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="requests per second")
    p.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S, help="seconds per measured run"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=DEFAULT_WARMUP_S,
        help="seconds of the same load before each measured run (0: none)",
    )
    p.add_argument(
        "--connections", type=int, default=DEFAULT_CONNECTIONS, help="keep-alive connections"
    )
    p.add_argument(
        "--output",
        type=Path,
        default=ROOT / "benchmarks" / "results",
        help="directory for <timestamp>-<commit>-twohop.json/.md",
    )
    p.add_argument(
        "--fastproxy-bin",
        type=Path,
        default=ROOT / ".venv" / "bin" / "fastproxy",
        help="fastproxy executable (default .venv/bin/fastproxy)",
    )
    p.add_argument("--no-save", action="store_true", help="print results but write no files")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        p.error("--rate and --duration must be > 0, --warmup >= 0, --connections >= 1")
    return args


def estimate_seconds(duration_s: float, warmup_s: float) -> float:
    """Expected wall time of the whole run, printed up front."""
    return STARTUP_OVERHEAD_S + len(TARGETS) * (duration_s + warmup_s + PER_RUN_OVERHEAD_S)


# --------------------------------------------------------------------------- pure figures


def added_ms(value: float | None, direct: float | None) -> float | None:
    """Latency a target adds over direct, in ms; None when either is missing."""
    if value is None or direct is None:
        return None
    return value - direct


def mcpu(us_per_req: float | None, rps: float | None) -> float | None:
    """Milli-CPUs used at ``rps``: us/req x req/s = us/s; 1000 us/s = 1 mCPU."""
    if us_per_req is None or rps is None:
        return None
    return us_per_req * rps / 1000.0


@dataclass
class RunFigures:
    """One measured loadgen run against one target, plus the CPU sampled around it."""

    target: str
    url: str
    load: LoadResult | None = None
    sidecar_cpu_ticks: dict[str, int] = field(default_factory=dict)
    sidecar_us_per_req: dict[str, float | None] = field(default_factory=dict)
    sidecar_mcpu: dict[str, float | None] = field(default_factory=dict)
    app_us_per_req: float | None = None
    loadgen_us_per_req: float | None = None
    wall_s: float | None = None
    system_busy_cores: float | None = None
    other_cores: float | None = None
    added_p50_ms: float | None = None
    added_p90_ms: float | None = None
    added_p99_ms: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Measured without any failed request."""
        return self.error is None and self.load is not None and self.load.errors == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = dataclasses.asdict(self)
        d["load"] = self.load.to_dict() if self.load else None
        return d


def fill_added(runs: Sequence[RunFigures]) -> None:
    """Set added p50/p90/p99 over the direct run of the same set."""
    direct = next((r for r in runs if r.target == DIRECT and r.load), None)
    if direct is None or direct.load is None:
        return
    d = direct.load.latency
    for r in runs:
        if r.load is None:
            continue
        lat = r.load.latency
        r.added_p50_ms = added_ms(lat.p50_ms, d.p50_ms)
        r.added_p90_ms = added_ms(lat.p90_ms, d.p90_ms)
        r.added_p99_ms = added_ms(lat.p99_ms, d.p99_ms)


@dataclass(frozen=True)
class DaprComparison:
    """The two-hop figures against daprd's: ratios and whether each is under the goal."""

    status: str  # MET, NOT MET or SKIPPED
    message: str
    p50_ratio: float | None = None
    p99_ratio: float | None = None
    cpu_ratio: float | None = None  # worst sidecar, per request
    like_for_like: bool = True


def _ratio(value: float | None, base: float) -> float | None:
    return None if value is None else value / base


def compare_with_dapr(
    two_hop: RunFigures | None,
    rate: float,
    connections: int,
    goal: float = GOAL_FRACTION,
) -> DaprComparison:
    """Ratios of the two-hop added p50/p99 and per-sidecar CPU to daprd's published figures.

    CPU is compared per request (daprd: 200 mCPU at 1000 rps = 200 us/req), so the ratio
    means the same at any rate; latency at another rate than 1000 rps is not like for like.
    """
    if two_hop is None or two_hop.load is None or two_hop.error is not None:
        return DaprComparison("SKIPPED", "no successful two-hop run")
    cpu_values = [two_hop.sidecar_us_per_req.get(s) for s in SIDECARS]
    known = [v for v in cpu_values if v is not None]
    worst_cpu = max(known) if len(known) == len(SIDECARS) else None
    p50_r = _ratio(two_hop.added_p50_ms, DAPR_ADDED_P50_MS)
    p99_r = _ratio(two_hop.added_p99_ms, DAPR_ADDED_P99_MS)
    cpu_r = _ratio(worst_cpu, DAPR_US_PER_REQ)
    like = rate == DAPR_RATE and connections == DAPR_CONNECTIONS
    if p50_r is None or p99_r is None or cpu_r is None or worst_cpu is None:
        return DaprComparison("SKIPPED", "a two-hop figure is missing", p50_r, p99_r, cpu_r, like)

    def part(name: str, mine: str, theirs: str, r: float) -> str:
        return f"{name} {mine} vs {theirs} = {r:.2f}x ({'ok' if r < goal else 'NO'})"

    assert two_hop.added_p50_ms is not None and two_hop.added_p99_ms is not None
    per_sidecar = " / ".join(
        f"{s} {v:.1f}" for s, v in zip(SIDECARS, cpu_values, strict=True) if v is not None
    )
    parts = [
        part(
            "added p50",
            f"{two_hop.added_p50_ms:+.3f} ms",
            f"+{DAPR_ADDED_P50_MS:.2f} ms",
            p50_r,
        ),
        part(
            "added p99",
            f"{two_hop.added_p99_ms:+.3f} ms",
            f"+{DAPR_ADDED_P99_MS:.2f} ms",
            p99_r,
        ),
        part(
            "CPU per sidecar",
            f"{per_sidecar} us/req (worst = {worst_cpu * DAPR_RATE / 1000:.0f} mCPU at "
            f"{DAPR_RATE:g} rps)",
            f"~{DAPR_US_PER_REQ:.0f} us/req ({DAPR_MCPU_PER_SIDECAR:.0f} mCPU)",
            cpu_r,
        ),
    ]
    met = p50_r < goal and p99_r < goal and cpu_r < goal
    msg = "; ".join(parts)
    if not like:
        msg += (
            f" [NOTE: measured at {rate:g} rps / {connections} connections, daprd's figures "
            f"are for {DAPR_RATE:g} rps / {DAPR_CONNECTIONS}: latency is not like for like]"
        )
    return DaprComparison("MET" if met else "NOT MET", msg, p50_r, p99_r, cpu_r, like)


COLUMNS: tuple[str, ...] = (
    "target",
    "rps",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "+p50 ms",
    "+p99 ms",
    "A us/req",
    "B us/req",
    "A mCPU",
    "B mCPU",
    "lag p99",
    "errors",
)


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_rows(runs: Sequence[RunFigures]) -> list[list[str]]:
    """Formatted cells per run, in COLUMNS order; '-' where a figure does not apply."""
    rows: list[list[str]] = []
    for r in runs:
        if r.load is None:
            rows.append([r.target, "ERROR", *["-"] * (len(COLUMNS) - 2)])
            continue
        lat = r.load.latency
        involved = SIDECARS_OF.get(r.target, ())
        us = [r.sidecar_us_per_req.get(s) if s in involved else None for s in SIDECARS]
        mc = [r.sidecar_mcpu.get(s) if s in involved else None for s in SIDECARS]
        is_direct = r.target == DIRECT
        rows.append(
            [
                r.target,
                _f(r.load.achieved_rps, ",.0f"),
                _f(lat.p50_ms, ".3f"),
                _f(lat.p90_ms, ".3f"),
                _f(lat.p99_ms, ".3f"),
                "-" if is_direct else _f(r.added_p50_ms, "+.3f"),
                "-" if is_direct else _f(r.added_p99_ms, "+.3f"),
                *(_f(v, ".1f") for v in us),
                *(_f(v, ".0f") for v in mc),
                _f(r.load.send_lag.p99_ms, ".3f"),
                str(r.load.errors),
            ]
        )
    return rows


def format_text_table(runs: Sequence[RunFigures]) -> str:
    """Fixed-width table for the terminal; numbers right-aligned."""
    rows = [list(COLUMNS), *table_rows(runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(rows[0]), sep, *(fmt(r) for r in rows[1:])])


def format_markdown_table(runs: Sequence[RunFigures]) -> str:
    """GitHub-flavoured Markdown table with the same cells as the terminal table."""
    head = "| " + " | ".join(COLUMNS) + " |"
    align = "|" + "|".join([":---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"
    body = ["| " + " | ".join(r) + " |" for r in table_rows(runs)]
    return "\n".join([head, align, *body])


def dapr_line() -> str:
    """daprd's figures as one line, printed above the comparison."""
    return (
        f"daprd {DAPR_VERSION} (published; 2 sidecars, {DAPR_RATE:g} rps, {DAPR_CONNECTIONS} "
        f"connections): +{DAPR_ADDED_P50_MS:.2f} ms p50, +{DAPR_ADDED_P99_MS:.2f} ms p99, "
        f"~{DAPR_MCPU_PER_SIDECAR:.0f} mCPU per sidecar"
    )


# --------------------------------------------------------------------------- servers


def ensure_nginx() -> str:
    """Path of nginx, installing it with apt-get when missing (root only)."""
    nginx = find_tool("nginx")
    if nginx:
        return nginx
    if os.geteuid() != 0:
        raise BenchError("nginx not installed and not root: apt-get install nginx-light")
    print("installing nginx with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    base = ["apt-get", "install", "-y", "-qq"]
    if subprocess.run([*base, "nginx-light"], check=False, env=env).returncode != 0:
        subprocess.run([*base, "nginx"], check=True, env=env)
    nginx = find_tool("nginx")
    if not nginx:
        raise BenchError("nginx still missing after apt-get install")
    return nginx


@dataclass
class Endpoint:
    """A URL the load generator is pointed at."""

    target: str
    port: int
    path: str

    @property
    def url(self) -> str:
        """Full URL for loadgen."""
        return f"http://127.0.0.1:{self.port}{self.path}"


class TwoHopBench:
    """Owns the upstream app and both sidecars (through run.Bench's process registry)."""

    def __init__(self, args: argparse.Namespace, nginx: str) -> None:
        self.args = args
        bench_args = argparse.Namespace(
            pin=False, fastproxy_bin=args.fastproxy_bin, fastproxy_arg=[]
        )
        self.bench = Bench(bench_args, "", nginx)
        self.state_dir = self.bench.tmp / "state"  # XDG_STATE_HOME shared by A and B
        self.state_dir.mkdir()
        self.sidecars: dict[str, ManagedProcess] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.env = find_tool("env") or "/usr/bin/env"

    def close(self) -> None:
        """Stop every child and remove the temp dir."""
        self.bench.close()

    def _start_sidecar(self, name: str, app_id: str, app_port: int | None) -> int:
        """Start one fastproxy; its registry lives under the shared XDG_STATE_HOME."""
        help_text = self.bench.fastproxy_help()
        port = free_port()
        argv = [
            # env(1) execs fastproxy, so the pid (and process group) we track is fastproxy's.
            self.env,
            f"XDG_STATE_HOME={self.state_dir}",
            str(self.args.fastproxy_bin),
            "run",
            "--app-id",
            app_id,
            *(["--app-port", str(app_port)] if app_port is not None else []),
            "--dapr-http-port",
            str(port),
            "--dapr-internal-port",
            "0",
            "--dapr-listen-addresses",
            "127.0.0.1",
            "--log-level",
            "warn",
        ]
        for flag in FASTPROXY_PORT_FLAGS:
            # The internal port is set above; other optional listeners get free ports.
            if flag in help_text and flag != "--dapr-internal-grpc-port":
                argv += [flag, str(free_port())]
        log = self.bench.tmp / f"sidecar-{name}.log"
        proc = self.bench.registry.start(f"sidecar {name}", argv, self.bench.tmp, log)
        try:
            wait_ready(proc, port, "/v1.0/healthz", 204, READY_TIMEOUT_S)
        except BenchError as exc:
            raise BenchError(f"{exc}\ncommand: {' '.join(argv)}\n{proc.log_tail()}") from None
        self.sidecars[name] = proc
        return port

    def start(self) -> None:
        """Upstream nginx, then callee B, then caller A; wait until A can reach b."""
        direct = self.bench.start_upstream()
        self.endpoints[DIRECT] = Endpoint(DIRECT, direct.port, f"/{SIZE}")
        port_b = self._start_sidecar("B", CALLEE_ID, self.bench.upstream_port)
        self.endpoints[ONE_HOP] = Endpoint(ONE_HOP, port_b, INVOKE_PATH)
        port_a = self._start_sidecar("A", CALLER_ID, None)
        self.endpoints[TWO_HOP] = Endpoint(TWO_HOP, port_a, INVOKE_PATH)
        try:
            wait_ready(self.sidecars["A"], port_a, INVOKE_PATH, 200, ROUTE_READY_TIMEOUT_S)
        except BenchError as exc:
            logs = "\n".join(p.log_tail() for p in self.sidecars.values())
            raise BenchError(f"A cannot reach app {CALLEE_ID!r}: {exc}\n{logs}") from None

    # ----------------------------------------------------------------------- measuring

    def _check_alive(self) -> None:
        procs = [*self.sidecars.values(), self.bench.upstream]
        for proc in procs:
            if proc is not None and not proc.alive():
                raise BenchError(
                    f"{proc.name} exited with code {proc.popen.returncode}\n{proc.log_tail()}"
                )

    def _sanity_check(self, ep: Endpoint) -> None:
        want = nginx_conf.body_for(SIZE)
        try:
            status, body = http_get(ep.port, ep.path)
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(f"GET {ep.url} failed: {exc}") from None
        if status != 200 or body != want:
            raise BenchError(
                f"GET {ep.url} -> HTTP {status}, {len(body)} B body "
                f"(want 200 and the {len(want)} B upstream body)"
            )

    def _loadgen(self, url: str, duration_s: float) -> tuple[LoadResult, float]:
        """Run loadgen.py in its own process; return its result and the CPU seconds it used."""
        argv = [
            sys.executable,
            str(Path(__file__).with_name("loadgen.py")),
            url,
            "--rate",
            f"{self.args.rate:g}",
            "--duration",
            f"{duration_s:g}",
            "--connections",
            str(self.args.connections),
            "--json",
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
            raise BenchError(f"loadgen hung (> {duration_s + 30:g} s): {url}") from None
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # Exit code 1 only means some requests failed; the JSON says which.
        if res.returncode not in (0, 1):
            raise BenchError(f"loadgen failed with code {res.returncode}: {res.stderr.strip()}")
        try:
            result = LoadResult.from_dict(json.loads(res.stdout))
        except (ValueError, TypeError) as exc:
            raise BenchError(f"loadgen output unreadable ({exc}):\n{res.stdout[-2000:]}") from None
        cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return result, cpu_s

    def measure(self, target: str) -> RunFigures:
        """Warm up, then one measured run with CPU of A, B and the app sampled around it."""
        ep = self.endpoints[target]
        fig = RunFigures(target, ep.url)
        upstream = self.bench.upstream
        assert upstream is not None
        clk = self.bench.clk_tck
        try:
            self._check_alive()
            self._sanity_check(ep)
            if self.args.warmup > 0:
                warm, _ = self._loadgen(ep.url, self.args.warmup)
                if warm.errors:
                    raise BenchError(f"warm-up: {warm.errors} errors: {warm.error_samples}")
            sys0, t0 = read_system_cpu(), time.monotonic()
            side0 = {n: p.cpu_ticks() for n, p in self.sidecars.items()}
            app0 = upstream.cpu_ticks()
            load, gen_cpu_s = self._loadgen(ep.url, self.args.duration)
            app1 = upstream.cpu_ticks()
            side1 = {n: p.cpu_ticks() for n, p in self.sidecars.items()}
            sys1, t1 = read_system_cpu(), time.monotonic()
            fig.load = load
            n = load.completed
            deltas: dict[str, CpuTicks] = {s: side1[s] - side0[s] for s in self.sidecars}
            for s, d in deltas.items():
                fig.sidecar_cpu_ticks[s] = d.total
                fig.sidecar_us_per_req[s] = cpu_us_per_request(d.total, n, clk)
                fig.sidecar_mcpu[s] = mcpu(fig.sidecar_us_per_req[s], load.achieved_rps)
            app_ticks = (app1 - app0).total
            fig.app_us_per_req = cpu_us_per_request(app_ticks, n, clk)
            if n:
                fig.loadgen_us_per_req = gen_cpu_s * 1e6 / n
            wall = t1 - t0
            fig.wall_s = wall
            if wall > 0:
                ours_s = (sum(d.total for d in deltas.values()) + app_ticks) / clk + gen_cpu_s
                fig.system_busy_cores = (sys1 - sys0).busy / clk / wall
                fig.other_cores = fig.system_busy_cores - ours_s / wall
            if load.errors:
                fig.error = (
                    f"{load.errors} failed requests (non-2xx/3xx {load.non_2xx_3xx}, socket "
                    f"{load.socket_errors}, unfinished {load.unfinished}): {load.error_samples}"
                )
            self._check_alive()
        except BenchError as exc:
            fig.error = str(exc)
        return fig


# --------------------------------------------------------------------------- output


def _progress(i: int, n: int, r: RunFigures) -> str:
    head = f"[{i}/{n}] {r.target:<8}"
    if r.load is None:
        return f"{head} ERROR: {(r.error or '').splitlines()[0]}"
    lat = r.load.latency
    cpu = "".join(
        f"  {s} {r.sidecar_us_per_req.get(s) or 0:.1f} us/req" for s in SIDECARS_OF[r.target]
    )
    noise = ""
    if r.other_cores is not None and r.other_cores > NOISE_WARN_CORES:
        noise = f"  [noise: {r.other_cores:.2f} cores busy outside the benchmark]"
    err = f"  {r.load.errors} ERRORS" if r.load.errors else ""
    return (
        f"{head} {r.load.achieved_rps or 0:>7,.0f} rps  p50 {_f(lat.p50_ms, '.3f')}  "
        f"p99 {_f(lat.p99_ms, '.3f')} ms{cpu}{err}{noise}"
    )


def render_markdown(doc: dict[str, Any], runs: Sequence[RunFigures], cmp: DaprComparison) -> str:
    """The human summary saved next to the JSON."""
    g, mach, par = doc["git"], doc["machine"], doc["parameters"]
    lines = [
        f"# fastproxy two-hop benchmark {doc['timestamp_utc']}",
        "",
        f"- commit: `{g['commit'] or 'none'}`"
        f"{' (dirty)' if g['dirty'] else ''}{' (+untracked files)' if g['untracked'] else ''}",
        f"- machine: {mach['nproc']} CPUs, {mach['cpu_model']}, kernel {mach['kernel']}",
        f"- python {mach['python']}, uvloop {mach['uvloop']}, httptools {mach['httptools']}; "
        f"{mach['nginx']}",
        f"- fastproxy build: {mach.get('fastproxy_build', 'not recorded')}",
        f"- loadgen: open loop, {par['rate']:g} rps, {par['connections']} connections, "
        f"{par['duration_s']:g} s per run after {par['warmup_s']:g} s warm-up; "
        f"GET of the {nginx_conf.SIZES[SIZE]} B `/{SIZE}` body",
        "",
        "Latencies in ms from each request's intended send time; +p50/+p99: over direct. "
        "A/B us/req: CPU microseconds sidecar A (caller) / B (callee) spent per request; "
        "mCPU: the same at the achieved rate. lag p99: the load generator's own send lateness.",
        "",
        format_markdown_table(runs),
        "",
        dapr_line(),
        "",
        f"**Goal (< {GOAL_FRACTION:g}x daprd's added latency and CPU): {cmp.status}** - "
        f"{cmp.message}",
        "",
    ]
    failed = [r for r in runs if r.error]
    if failed or doc.get("start_error"):
        lines += ["## Errors", ""]
        if doc.get("start_error"):
            lines += ["- start:", "", "```", doc["start_error"].strip(), "```", ""]
        for r in failed:
            lines += [f"- {r.target}:", "", "```", (r.error or "").strip(), "```", ""]
    return "\n".join(lines)


def save(doc: dict[str, Any], markdown: str, outdir: Path) -> tuple[Path, Path]:
    """Write <stamp>-<commit>-twohop.json/.md and overwrite latest-twohop.md."""
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"{doc['timestamp_compact']}-{doc['git']['short']}-twohop"
    jpath, mpath = outdir / f"{stem}.json", outdir / f"{stem}.md"
    jpath.write_text(json.dumps(doc, indent=2) + "\n")
    mpath.write_text(markdown)
    (outdir / "latest-twohop.md").write_text(markdown)
    return jpath, mpath


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    """Start app and sidecars, measure the three targets, report and save; return exit code."""
    nginx = ensure_nginx()
    started = dt.datetime.now(dt.UTC)
    est = estimate_seconds(args.duration, args.warmup)
    print(
        f"{len(TARGETS)} targets x ({args.warmup:g} s warm-up + {args.duration:g} s) at "
        f"{args.rate:g} rps, {args.connections} connections; estimated {est:.0f} s",
        flush=True,
    )
    machine = machine_info(find_tool("wrk") or "wrk", nginx)
    machine.pop("wrk", None)
    bench = TwoHopBench(args, nginx)
    runs: list[RunFigures] = []
    start_error: str | None = None
    try:
        try:
            bench.start()
        except BenchError as exc:
            start_error = str(exc)
            print(f"ERROR: could not start: {exc}", file=sys.stderr, flush=True)
        if start_error is None:
            for i, target in enumerate(TARGETS, 1):
                r = bench.measure(target)
                runs.append(r)
                print(_progress(i, len(TARGETS), r), flush=True)
                time.sleep(0.2)  # let the previous run's connections close
    finally:
        bench.close()

    elapsed = (dt.datetime.now(dt.UTC) - started).total_seconds()
    fill_added(runs)
    two_hop = next((r for r in runs if r.target == TWO_HOP), None)
    cmp = compare_with_dapr(two_hop, args.rate, args.connections)
    doc: dict[str, Any] = {
        "schema": 1,
        "benchmark": "twohop",
        "timestamp_utc": started.isoformat(timespec="seconds"),
        "timestamp_compact": started.strftime("%Y%m%dT%H%M%SZ"),
        "elapsed_s": round(elapsed, 1),
        "git": git_info(),
        "machine": machine,
        "parameters": {
            "rate": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "path": INVOKE_PATH,
            "fastproxy_bin": str(args.fastproxy_bin),
            "argv": sys.argv[1:],
        },
        "dapr_reference": {
            "version": DAPR_VERSION,
            "rate": DAPR_RATE,
            "connections": DAPR_CONNECTIONS,
            "added_p50_ms": DAPR_ADDED_P50_MS,
            "added_p99_ms": DAPR_ADDED_P99_MS,
            "mcpu_per_sidecar": DAPR_MCPU_PER_SIDECAR,
            "us_per_req_per_sidecar": DAPR_US_PER_REQ,
        },
        "results": [r.to_dict() for r in runs],
        "comparison": dataclasses.asdict(cmp),
        "start_error": start_error,
    }
    markdown = render_markdown(doc, runs, cmp)

    print()
    if runs:
        print(
            f"two-hop: loadgen -> A -> B -> app, {args.rate:g} rps, {args.connections} "
            f"connections, {args.duration:g} s per target"
        )
        print(format_text_table(runs))
        print()
    print(dapr_line())
    print(f"GOAL (< {GOAL_FRACTION:g}x daprd) {cmp.status}: {cmp.message}")
    print(f"elapsed {elapsed:.0f} s (estimated {est:.0f} s)")
    if not args.no_save:
        jpath, mpath = save(doc, markdown, args.output)
        print(f"saved {jpath} and {mpath}")

    failed = [r for r in runs if r.error]
    if start_error or failed:
        print(f"\n!!! {len(failed) + bool(start_error)} FAILURES", file=sys.stderr)
        if start_error:
            print(f"--- start:\n{start_error.strip()}", file=sys.stderr)
        for r in failed:
            print(f"--- {r.target}:\n{(r.error or '').strip()}", file=sys.stderr)
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
