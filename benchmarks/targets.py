"""Starting the measured targets: the nginx app every row serves from, nginx as reverse
proxy, the byte relay and fastproxy, each on a free port, and stopping them all again.

The retry and observability cases start their own rows with these (retry_case.py,
obs_case.py); measure.py loads what is started here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import nginx_conf
from benchmarks.machine import find_tool
from benchmarks.probe import READY_TIMEOUT_S, BenchError, wait_ready
from benchmarks.procs import ManagedProcess, ProcessRegistry, free_port
from benchmarks.procstat import clock_ticks_per_second
from benchmarks.report import DIRECT, FASTPROXY, NGINX, RELAY

APP_ID = "bench"
INVOKE_PREFIX = f"/v1.0/invoke/{APP_ID}/method"
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

    def close(self) -> None:
        """Stop all children and delete the temp dir."""
        self.registry.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def pin(self, cpu: int) -> list[str]:
        """The taskset prefix that pins a command to ``cpu`` (none without --pin)."""
        return [self.taskset, "-c", str(cpu)] if self.taskset else []

    def start_nginx(
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
        proc, port = self.start_nginx(
            nginx_conf.UPSTREAM,
            lambda p: nginx_conf.upstream_conf(self.tmp, p, bodies, self.as_root),
            "/small",
            self.pin(0),
        )
        self.upstream, self.upstream_port = proc, port
        return Target(DIRECT, port, "", None, [nginx_conf.error_log(self.tmp, nginx_conf.UPSTREAM)])

    def start_nginx_proxy(self) -> Target:
        """nginx as reverse proxy with the sidecar's invoke-path rewrite."""
        proc, port = self.start_nginx(
            nginx_conf.PROXY,
            lambda p: nginx_conf.proxy_conf(self.tmp, p, self.upstream_port, self.as_root),
            f"{INVOKE_PREFIX}/small",
            self.pin(0),
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
        proc, port, _ = self.launch_fastproxy(FASTPROXY, self.upstream_port, [], "fastproxy.log")
        return Target(FASTPROXY, port, INVOKE_PREFIX, proc)

    def launch_fastproxy(
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
        argv = [*self.pin(0), *argv]
        proc = self.registry.start(name, argv, self.tmp, self.tmp / log_name)
        try:
            wait_ready(proc, port, "/v1.0/healthz", 204, READY_TIMEOUT_S)
        except BenchError as exc:
            raise BenchError(f"{exc}\ncommand: {' '.join(argv)}\n{proc.log_tail()}") from None
        return proc, port, metrics_port

    def start_relay(self) -> Target:
        """The bare uvloop byte relay: what the kernel and event loop cost with no HTTP work.

        It forwards bytes unchanged, so wrk asks it for the upstream's own paths.
        """
        port = free_port()
        argv = [
            *self.pin(0),
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
