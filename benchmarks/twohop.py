"""Two-hop service invocation at a fixed rate: loadgen -> sidecar A -> sidecar B -> app.

Measures what a pair of fastproxy sidecars adds to latency and how much CPU each one burns at
a fixed, moderate request rate (the way Dapr's own service invocation perf test does), and
prints it beside daprd's published figures. Five targets, measured back to back with the
same open-loop load (benchmarks/loadgen.py):

- ``direct``: the upstream nginx app, ``/small``;
- ``relay``: benchmarks/relay.py, a byte relay in front of the app doing no HTTP work: the
  floor, what any Python hop costs on this machine at this rate;
- ``one-hop``: sidecar B invoking its own app, ``B/v1.0/invoke/b/method/small``;
- ``two-hop``: sidecar A invoking app b through B's internal port,
  ``A/v1.0/invoke/b/method/small``;
- ``two-hop-mtls``: the same through a second pair A' -> B' that talk mTLS (certificates made
  by ``fastproxy certs`` in the temp dir; a registry of their own).

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
import socket
import ssl
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
from benchmarks.machine import find_tool, git_info, machine_info  # noqa: E402
from benchmarks.probe import READY_TIMEOUT_S, BenchError, http_get, wait_ready  # noqa: E402
from benchmarks.procs import (  # noqa: E402
    ManagedProcess,
    free_port,
    install_exit_signal_handlers,
    set_parent_death_signal,
)
from benchmarks.procstat import CpuTicks, cpu_us_per_request, read_system_cpu  # noqa: E402
from benchmarks.targets import FASTPROXY_PORT_FLAGS, Bench  # noqa: E402

DIRECT = "direct"
RELAY = "relay"
ONE_HOP = "one-hop"
TWO_HOP = "two-hop"
TWO_HOP_MTLS = "two-hop-mtls"
# The two-hop rows run back to back so that drift on the machine hits both alike.
TARGETS: tuple[str, ...] = (DIRECT, RELAY, ONE_HOP, TWO_HOP, TWO_HOP_MTLS)
# Table slots: A = the caller's sidecar, B = the hop in front of the app.
SIDECARS: tuple[str, str] = ("A", "B")
MTLS_SIDECARS: tuple[str, str] = ("A'", "B'")
RELAY_PROC = "relay"
# Which processes a target's requests pass through, as (table slot, process): their CPU is
# charged to the target. The relay stands where B stands, in front of the app.
HOPS_OF: dict[str, tuple[tuple[str, str], ...]] = {
    DIRECT: (),
    RELAY: (("B", RELAY_PROC),),
    ONE_HOP: (("B", "B"),),
    TWO_HOP: (("A", "A"), ("B", "B")),
    TWO_HOP_MTLS: (("A", "A'"), ("B", "B'")),
}
CALLER_ID = "a"
CALLEE_ID = "b"
NAMESPACE = "default"  # given to the mTLS sidecars and baked into their certificates
SIZE = "small"
INVOKE_PATH = f"/v1.0/invoke/{CALLEE_ID}/method/{SIZE}"

DEFAULT_RATE = 1000.0
DEFAULT_DURATION_S = 20.0
DEFAULT_WARMUP_S = 2.0
DEFAULT_CONNECTIONS = 16
# The callee registers in the shared sqlite registry on start; the caller may need a moment.
ROUTE_READY_TIMEOUT_S = 20.0
# Measured: 68 s for 3 targets x 22 s; 24 s for 5 targets x 4 s (with the mTLS pair).
PER_RUN_OVERHEAD_S = 0.5  # loadgen start-up (x2), sanity check, pause
STARTUP_OVERHEAD_S = 2.5  # nginx, relay, certificates, four sidecars, two route checks
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


def estimate_seconds(duration_s: float, warmup_s: float, n_targets: int = len(TARGETS)) -> float:
    """Expected wall time of the whole run, printed up front."""
    return STARTUP_OVERHEAD_S + n_targets * (duration_s + warmup_s + PER_RUN_OVERHEAD_S)


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
    """One measured loadgen run against one target, plus the CPU sampled around it.

    ``sidecar_*`` are keyed by process (A, B, A', B' and the relay), sampled for all of them
    in every run; only those in ``HOPS_OF[target]`` are the target's cost.
    """

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
    sidecars: Sequence[str] = SIDECARS,
) -> DaprComparison:
    """Ratios of the two-hop added p50/p99 and per-sidecar CPU to daprd's published figures.

    CPU is compared per request (daprd: 200 mCPU at 1000 rps = 200 us/req), so the ratio
    means the same at any rate; latency at another rate than 1000 rps is not like for like.
    ``sidecars`` names the two processes of the run (A', B' for the mTLS pair).
    """
    if two_hop is None or two_hop.load is None or two_hop.error is not None:
        return DaprComparison(
            "SKIPPED", f"no successful {two_hop.target if two_hop else 'two-hop'} run"
        )
    cpu_values = [two_hop.sidecar_us_per_req.get(s) for s in sidecars]
    known = [v for v in cpu_values if v is not None]
    worst_cpu = max(known) if len(known) == len(sidecars) else None
    p50_r = _ratio(two_hop.added_p50_ms, DAPR_ADDED_P50_MS)
    p99_r = _ratio(two_hop.added_p99_ms, DAPR_ADDED_P99_MS)
    cpu_r = _ratio(worst_cpu, DAPR_US_PER_REQ)
    like = rate == DAPR_RATE and connections == DAPR_CONNECTIONS
    if p50_r is None or p99_r is None or cpu_r is None or worst_cpu is None:
        return DaprComparison(
            "SKIPPED", f"a {two_hop.target} figure is missing", p50_r, p99_r, cpu_r, like
        )

    def part(name: str, mine: str, theirs: str, r: float) -> str:
        return f"{name} {mine} vs {theirs} = {r:.2f}x ({'ok' if r < goal else 'NO'})"

    assert two_hop.added_p50_ms is not None and two_hop.added_p99_ms is not None
    per_sidecar = " / ".join(
        f"{s} {v:.1f}" for s, v in zip(sidecars, cpu_values, strict=True) if v is not None
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
    """Formatted cells per run, in COLUMNS order; '-' where a figure does not apply.

    The A and B columns hold the processes ``HOPS_OF`` puts in those slots: A'/B' for
    two-hop-mtls, the relay under B for relay.
    """
    rows: list[list[str]] = []
    for r in runs:
        if r.load is None:
            rows.append([r.target, "ERROR", *["-"] * (len(COLUMNS) - 2)])
            continue
        lat = r.load.latency
        slots = dict(HOPS_OF.get(r.target, ()))
        procs = [slots.get(s) for s in SIDECARS]
        us = [r.sidecar_us_per_req.get(p) if p else None for p in procs]
        mc = [r.sidecar_mcpu.get(p) if p else None for p in procs]
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


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width table: first column left-aligned, the rest right-aligned."""
    all_rows = [list(header), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(all_rows[0]), sep, *(fmt(r) for r in all_rows[1:])])


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """GitHub-flavoured Markdown: first column left-aligned, the rest right-aligned."""
    head = "| " + " | ".join(header) + " |"
    align = "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"
    body = ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([head, align, *body])


def format_text_table(runs: Sequence[RunFigures]) -> str:
    """Fixed-width table for the terminal; numbers right-aligned."""
    return _text_table(COLUMNS, table_rows(runs))


def format_markdown_table(runs: Sequence[RunFigures]) -> str:
    """GitHub-flavoured Markdown table with the same cells as the terminal table."""
    return _markdown_table(COLUMNS, table_rows(runs))


# ----------------------------------------------------------------- per hop, against the floor


@dataclass(frozen=True)
class HopFigures:
    """CPU one process spent per request of one target, and that against the relay's."""

    target: str
    process: str
    us_per_req: float | None
    mcpu: float | None
    x_floor: float | None  # us_per_req / the relay's us_per_req

    @property
    def label(self) -> str:
        """Row name, e.g. ``A' (two-hop-mtls)``; the relay's row is the floor."""
        if self.process == RELAY_PROC:
            return "relay (floor)"
        return f"{self.process} ({self.target})"


def hop_figures(runs: Sequence[RunFigures]) -> list[HopFigures]:
    """One row per (measured target, process in its path), in run order, relay first."""
    relay = next((r for r in runs if r.target == RELAY and r.load is not None), None)
    floor = relay.sidecar_us_per_req.get(RELAY_PROC) if relay else None
    ordered = sorted(runs, key=lambda r: r.target != RELAY)  # stable: the rest keep run order
    out: list[HopFigures] = []
    for r in ordered:
        if r.load is None:
            continue
        for _slot, proc in HOPS_OF.get(r.target, ()):
            us = r.sidecar_us_per_req.get(proc)
            ratio = None if us is None or not floor else us / floor
            out.append(HopFigures(r.target, proc, us, r.sidecar_mcpu.get(proc), ratio))
    return out


HOP_COLUMNS: tuple[str, ...] = ("hop", "us/req", "mCPU", "x floor")


def _hop_cells(hops: Sequence[HopFigures]) -> list[list[str]]:
    return [
        [h.label, _f(h.us_per_req, ".1f"), _f(h.mcpu, ".0f"), _f(h.x_floor, ".2f")] for h in hops
    ]


def format_hop_text(hops: Sequence[HopFigures]) -> str:
    """The per-hop CPU table for the terminal."""
    return _text_table(HOP_COLUMNS, _hop_cells(hops))


def format_hop_markdown(hops: Sequence[HopFigures]) -> str:
    """The per-hop CPU table in Markdown."""
    return _markdown_table(HOP_COLUMNS, _hop_cells(hops))


# ----------------------------------------------------------------- mTLS against plain


@dataclass(frozen=True)
class MtlsRow:
    """One figure of the plain two-hop run beside the mTLS one, and mTLS / plain."""

    figure: str
    plain: float | None
    mtls: float | None
    ratio: float | None


def mtls_ratio(mtls: float | None, plain: float | None) -> float | None:
    """mTLS / plain; None when either is missing or plain is not positive (no meaning then)."""
    if mtls is None or plain is None or plain <= 0:
        return None
    return mtls / plain


MTLS_FIGURES: tuple[str, ...] = (
    "+p50 ms",
    "+p99 ms",
    "A us/req",
    "B us/req",
    "A mCPU",
    "B mCPU",
)


def _run_figure(r: RunFigures | None, figure: str) -> float | None:
    """One of MTLS_FIGURES of a run; A/B are the processes in those slots of its target."""
    if r is None or r.load is None:
        return None
    if figure == "+p50 ms":
        return r.added_p50_ms
    if figure == "+p99 ms":
        return r.added_p99_ms
    slot, unit = figure.split(" ", 1)
    proc = dict(HOPS_OF.get(r.target, ())).get(slot)
    if proc is None:
        return None
    values = r.sidecar_us_per_req if unit == "us/req" else r.sidecar_mcpu
    return values.get(proc)


def mtls_comparison(runs: Sequence[RunFigures]) -> list[MtlsRow]:
    """The two-hop-mtls figures beside two-hop's (A'/B' against A/B), with mTLS / plain."""
    plain = next((r for r in runs if r.target == TWO_HOP), None)
    mtls = next((r for r in runs if r.target == TWO_HOP_MTLS), None)
    rows: list[MtlsRow] = []
    for figure in MTLS_FIGURES:
        p, m = _run_figure(plain, figure), _run_figure(mtls, figure)
        rows.append(MtlsRow(figure, p, m, mtls_ratio(m, p)))
    return rows


MTLS_COLUMNS: tuple[str, ...] = ("figure", TWO_HOP, TWO_HOP_MTLS, "mtls/plain")


def _mtls_cells(rows: Sequence[MtlsRow]) -> list[list[str]]:
    out: list[list[str]] = []
    for row in rows:
        if row.figure.startswith("+"):
            fmt, name = "+.3f", row.figure
        else:
            fmt = ".1f" if row.figure.endswith("us/req") else ".0f"
            slot, unit = row.figure.split(" ", 1)
            name = f"{slot}/{slot}' {unit}"  # A/A' us/req: plain / mTLS process
        out.append([name, _f(row.plain, fmt), _f(row.mtls, fmt), _f(row.ratio, ".2f")])
    return out


def format_mtls_text(rows: Sequence[MtlsRow]) -> str:
    """mTLS beside plain two-hop, for the terminal."""
    return _text_table(MTLS_COLUMNS, _mtls_cells(rows))


def format_mtls_markdown(rows: Sequence[MtlsRow]) -> str:
    """mTLS beside plain two-hop, in Markdown."""
    return _markdown_table(MTLS_COLUMNS, _mtls_cells(rows))


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


@dataclass(frozen=True)
class MtlsFiles:
    """The certificates ``fastproxy certs`` wrote for the mTLS pair."""

    trust_anchors: Path
    cert_chain: dict[str, Path]  # by app id
    cert_key: dict[str, Path]


def check_mtls_listener(port: int, files: MtlsFiles, name: str) -> dict[str, Any]:
    """Prove the callee's internal port speaks mTLS only; return what the handshake showed.

    A plain HTTP request must get no HTTP answer, and a TLS handshake with the caller's
    certificate must succeed and show the callee's SPIFFE id, so the two-hop-mtls row can
    never silently measure plain HTTP.
    """
    try:
        status, _ = http_get(port, "/", timeout=2.0)
    except (OSError, http.client.HTTPException):
        pass  # what a TLS-only listener does to a plain request
    else:
        raise BenchError(f"{name}'s internal port {port} answers plain HTTP ({status}): no mTLS")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the identity is the URI SAN, checked below
    try:
        ctx.load_verify_locations(cafile=str(files.trust_anchors))
        ctx.load_cert_chain(files.cert_chain[CALLER_ID], files.cert_key[CALLER_ID])
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2.0) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            peer = tls.getpeercert() or {}
            version, cipher = tls.version(), tls.cipher()
    except (OSError, ValueError) as exc:
        raise BenchError(
            f"TLS handshake with {name}'s internal port {port} failed: {exc}"
        ) from None
    sans = peer.get("subjectAltName", ())
    uris = [str(e[1]) for e in sans if isinstance(e, tuple) and len(e) == 2 and e[0] == "URI"]
    want = f"/ns/{NAMESPACE}/{CALLEE_ID}"
    peer_id = next((u for u in uris if u.startswith("spiffe://") and u.endswith(want)), None)
    if peer_id is None:
        raise BenchError(f"{name}'s certificate names {uris or 'no URI'}, want spiffe://...{want}")
    return {
        "internal_port": port,
        "tls_version": version,
        "cipher": cipher[0] if cipher else None,
        "peer_id": peer_id,
    }


# What each group of processes serves: a group that cannot start costs only its targets.
RELAY_GROUP = "relay"
PLAIN_GROUP = "sidecars A, B"
MTLS_GROUP = "mTLS sidecars A', B'"
TARGETS_OF_GROUP: dict[str, tuple[str, ...]] = {
    RELAY_GROUP: (RELAY,),
    PLAIN_GROUP: (ONE_HOP, TWO_HOP),
    MTLS_GROUP: (TWO_HOP_MTLS,),
}


def unstarted_group(target: str, start_errors: dict[str, str]) -> str | None:
    """The group (in ``start_errors``) whose failure to start leaves ``target`` unmeasured."""
    for group, targets in TARGETS_OF_GROUP.items():
        if target in targets and group in start_errors:
            return group
    return None


# Environment that would turn mTLS on (or off) behind the harness's back.
_MTLS_ENV: tuple[str, ...] = ("DAPR_TRUST_ANCHORS", "DAPR_CERT_CHAIN", "DAPR_CERT_KEY")


class TwoHopBench:
    """Owns the app, the relay and both sidecar pairs (through targets.Bench's process registry)."""

    def __init__(self, args: argparse.Namespace, nginx: str) -> None:
        self.args = args
        bench_args = argparse.Namespace(
            pin=False, fastproxy_bin=args.fastproxy_bin, fastproxy_arg=[]
        )
        self.bench = Bench(bench_args, "", nginx)
        # One XDG_STATE_HOME (so one sqlite registry) per pair: both pairs use app ids a and
        # b, and A must never resolve b to B' (nor A' to B).
        self.state_dir = self.bench.tmp / "state"
        self.state_dir_mtls = self.bench.tmp / "state-mtls"
        self.certs_dir = self.bench.tmp / "certs"
        for d in (self.state_dir, self.state_dir_mtls):
            d.mkdir()
        self.hops: dict[str, ManagedProcess] = {}  # relay, A, B, A', B' once ready
        self.endpoints: dict[str, Endpoint] = {}
        self.start_errors: dict[str, str] = {}  # group -> why it could not start
        self.mtls_info: dict[str, Any] | None = None  # what the TLS check of B' saw
        self.env = find_tool("env") or "/usr/bin/env"

    def close(self) -> None:
        """Stop every child and remove the temp dir."""
        self.bench.close()

    def _start_sidecar(
        self,
        name: str,
        app_id: str,
        app_port: int | None,
        state_dir: Path,
        mtls: MtlsFiles | None = None,
        internal_port: int = 0,
    ) -> tuple[int, ManagedProcess]:
        """Start one fastproxy with its registry under ``state_dir``; return its HTTP port."""
        help_text = self.bench.fastproxy_help()
        port = free_port()
        unset = [arg for var in _MTLS_ENV for arg in ("-u", var)]
        argv = [
            # env(1) execs fastproxy, so the pid (and process group) we track is fastproxy's.
            self.env,
            *unset,  # mTLS is on exactly where the flags below say so
            f"NAMESPACE={NAMESPACE}",
            f"XDG_STATE_HOME={state_dir}",
            str(self.args.fastproxy_bin),
            "run",
            "--app-id",
            app_id,
            *(["--app-port", str(app_port)] if app_port is not None else []),
            "--dapr-http-port",
            str(port),
            "--dapr-internal-port",
            str(internal_port),
            "--dapr-listen-addresses",
            "127.0.0.1",
            "--log-level",
            "warn",
        ]
        for flag in FASTPROXY_PORT_FLAGS:
            # The internal port is set above; other optional listeners get free ports.
            if flag in help_text and flag != "--dapr-internal-grpc-port":
                argv += [flag, str(free_port())]
        if mtls is not None:
            if "--enable-mtls" not in help_text:
                raise BenchError(f"{self.args.fastproxy_bin} has no --enable-mtls flag")
            argv += [
                "--enable-mtls",  # refuse to start rather than fall back to plain HTTP
                "--trust-anchors",
                str(mtls.trust_anchors),
                "--cert-chain",
                str(mtls.cert_chain[app_id]),
                "--cert-key",
                str(mtls.cert_key[app_id]),
            ]
        log = self.bench.tmp / f"sidecar-{name.replace(chr(39), '-mtls')}.log"
        proc = self.bench.registry.start(f"sidecar {name}", argv, self.bench.tmp, log)
        try:
            wait_ready(proc, port, "/v1.0/healthz", 204, READY_TIMEOUT_S)
        except BenchError as exc:
            proc.stop()
            raise BenchError(f"{exc}\ncommand: {' '.join(argv)}\n{proc.log_tail()}") from None
        return port, proc

    def _start_pair(
        self, names: tuple[str, str], state_dir: Path, mtls: MtlsFiles | None
    ) -> tuple[int, int]:
        """Callee then caller sidecar; wait until the caller reaches b. Return (port A, B).

        On failure the pair is stopped again, so it burns no CPU during the other runs.
        """
        name_a, name_b = names
        internal_b = free_port() if mtls is not None else 0  # known, to check it speaks TLS
        started: dict[str, ManagedProcess] = {}
        try:
            port_b, started[name_b] = self._start_sidecar(
                name_b, CALLEE_ID, self.bench.upstream_port, state_dir, mtls, internal_b
            )
            port_a, started[name_a] = self._start_sidecar(name_a, CALLER_ID, None, state_dir, mtls)
            try:
                wait_ready(started[name_a], port_a, INVOKE_PATH, 200, ROUTE_READY_TIMEOUT_S)
            except BenchError as exc:
                logs = "\n".join(p.log_tail() for p in started.values())
                raise BenchError(
                    f"{name_a} cannot reach app {CALLEE_ID!r}: {exc}\n{logs}"
                ) from None
            if mtls is not None:
                self.mtls_info = check_mtls_listener(internal_b, mtls, name_b)
        except BenchError:
            for proc in started.values():
                proc.stop()
            raise
        self.hops.update(started)
        return port_a, port_b

    def _make_certs(self) -> MtlsFiles:
        """A CA and certificates for a and b, by ``fastproxy certs`` into the temp dir."""
        argv = [
            str(self.args.fastproxy_bin),
            "certs",
            "--out",
            str(self.certs_dir),
            "--app-id",
            f"{CALLER_ID},{CALLEE_ID}",
            "--namespace",
            NAMESPACE,
            "--days",
            "1",
        ]
        try:
            res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"`{' '.join(argv)}` did not finish in 30 s") from None
        if res.returncode != 0:
            raise BenchError(
                f"`{' '.join(argv)}` failed with code {res.returncode}:\n"
                + (res.stderr or res.stdout)[-2000:]
            )
        ids = (CALLER_ID, CALLEE_ID)
        files = MtlsFiles(
            self.certs_dir / "ca.pem",
            {i: self.certs_dir / f"{i}.pem" for i in ids},
            {i: self.certs_dir / f"{i}.key" for i in ids},
        )
        wanted = [files.trust_anchors, *files.cert_chain.values(), *files.cert_key.values()]
        missing = [p.name for p in wanted if not p.is_file()]
        if missing:
            raise BenchError(f"`fastproxy certs` did not write {', '.join(missing)}")
        return files

    def _start_relay(self) -> None:
        relay = self.bench.start_relay()
        assert relay.proxy is not None
        self.hops[RELAY_PROC] = relay.proxy
        self.endpoints[RELAY] = Endpoint(RELAY, relay.port, f"/{SIZE}")

    def _start_plain(self) -> None:
        port_a, port_b = self._start_pair(SIDECARS, self.state_dir, None)
        self.endpoints[ONE_HOP] = Endpoint(ONE_HOP, port_b, INVOKE_PATH)
        self.endpoints[TWO_HOP] = Endpoint(TWO_HOP, port_a, INVOKE_PATH)

    def _start_mtls(self) -> None:
        files = self._make_certs()
        port_a, _ = self._start_pair(MTLS_SIDECARS, self.state_dir_mtls, files)
        self.endpoints[TWO_HOP_MTLS] = Endpoint(TWO_HOP_MTLS, port_a, INVOKE_PATH)

    def start(self) -> None:
        """Upstream nginx (its failure is fatal), then the relay and each sidecar pair.

        A relay or pair that cannot start is recorded in ``start_errors``; the other
        targets are still measured.
        """
        direct = self.bench.start_upstream()
        self.endpoints[DIRECT] = Endpoint(DIRECT, direct.port, f"/{SIZE}")
        groups = (
            (RELAY_GROUP, self._start_relay),
            (PLAIN_GROUP, self._start_plain),
            (MTLS_GROUP, self._start_mtls),
        )
        for group, starter in groups:
            try:
                starter()
            except BenchError as exc:
                self.start_errors[group] = str(exc)
                print(f"ERROR: could not start {group}: {exc}\n", file=sys.stderr, flush=True)

    # ----------------------------------------------------------------------- measuring

    def _check_alive(self) -> None:
        procs = [*self.hops.values(), self.bench.upstream]
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
        """Warm up, then one measured run with CPU of every hop and the app sampled around it."""
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
            side0 = {n: p.cpu_ticks() for n, p in self.hops.items()}
            app0 = upstream.cpu_ticks()
            load, gen_cpu_s = self._loadgen(ep.url, self.args.duration)
            app1 = upstream.cpu_ticks()
            side1 = {n: p.cpu_ticks() for n, p in self.hops.items()}
            sys1, t1 = read_system_cpu(), time.monotonic()
            fig.load = load
            n = load.completed
            deltas: dict[str, CpuTicks] = {s: side1[s] - side0[s] for s in self.hops}
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
    head = f"[{i}/{n}] {r.target:<12}"
    if r.load is None:
        return f"{head} ERROR: {(r.error or '').splitlines()[0]}"
    lat = r.load.latency
    cpu = "".join(
        f"  {p} {r.sidecar_us_per_req.get(p) or 0:.1f} us/req" for _, p in HOPS_OF[r.target]
    )
    noise = ""
    if r.other_cores is not None and r.other_cores > NOISE_WARN_CORES:
        noise = f"  [noise: {r.other_cores:.2f} cores busy outside the benchmark]"
    err = f"  {r.load.errors} ERRORS" if r.load.errors else ""
    return (
        f"{head} {r.load.achieved_rps or 0:>7,.0f} rps  p50 {_f(lat.p50_ms, '.3f')}  "
        f"p99 {_f(lat.p99_ms, '.3f')} ms{cpu}{err}{noise}"
    )


HOP_TITLE = "CPU per hop; floor = the byte relay, no HTTP work; x floor = us/req / the relay's"
MTLS_TITLE = "mTLS (A' -> B') against plain (A -> B) two-hop; mtls/plain = mTLS / plain"


def goal_line(cmp: DaprComparison, label: str = "") -> str:
    """The goal against daprd, for the terminal; ``label`` names the run when not plain."""
    return f"GOAL{label} (< {GOAL_FRACTION:g}x daprd) {cmp.status}: {cmp.message}"


def render_markdown(
    doc: dict[str, Any],
    runs: Sequence[RunFigures],
    cmp: DaprComparison,
    cmp_mtls: DaprComparison | None = None,
) -> str:
    """The human summary saved next to the JSON."""
    g, mach, par = doc["git"], doc["machine"], doc["parameters"]
    mtls = doc.get("mtls")
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
    ]
    if mtls:
        lines.append(
            f"- mTLS pair A' -> B': {mtls['tls_version']}, {mtls['cipher']}, B' presents "
            f"`{mtls['peer_id']}` (development certificates from `fastproxy certs`)"
        )
    lines += [
        "",
        "Latencies in ms from each request's intended send time; +p50/+p99: over direct. "
        "A/B us/req: CPU microseconds sidecar A (caller) / B (callee) spent per request "
        "(two-hop-mtls: A' / B'; relay: the relay, under B); mCPU: the same at the achieved "
        "rate. lag p99: the load generator's own send lateness.",
        "",
        format_markdown_table(runs),
        "",
        f"{HOP_TITLE}:",
        "",
        format_hop_markdown(hop_figures(runs)),
        "",
        f"{MTLS_TITLE}:",
        "",
        format_mtls_markdown(mtls_comparison(runs)),
        "",
        dapr_line(),
        "",
        f"**Goal (< {GOAL_FRACTION:g}x daprd's added latency and CPU): {cmp.status}** - "
        f"{cmp.message}",
        "",
    ]
    if cmp_mtls is not None:
        lines += [
            f"**Goal with mTLS (two-hop-mtls; daprd's sidecars talk mTLS too): "
            f"{cmp_mtls.status}** - {cmp_mtls.message}",
            "",
        ]
    failed = [r for r in runs if r.error]
    start_errors: dict[str, str] = doc.get("start_errors") or {}
    if failed or start_errors:
        lines += ["## Errors", ""]
        for group, err in start_errors.items():
            lines += [f"- start, {group}:", "", "```", err.strip(), "```", ""]
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
    """Start app, relay and sidecars, measure every target, report and save; return exit code."""
    nginx = ensure_nginx()
    started = dt.datetime.now(dt.UTC)
    est = estimate_seconds(args.duration, args.warmup)
    print(
        f"{len(TARGETS)} targets ({', '.join(TARGETS)}) x ({args.warmup:g} s warm-up + "
        f"{args.duration:g} s) at {args.rate:g} rps, {args.connections} connections; "
        f"estimated {est:.0f} s (~{est / 60:.1f} min)",
        flush=True,
    )
    machine = machine_info(find_tool("wrk") or "wrk", nginx)
    machine.pop("wrk", None)
    bench = TwoHopBench(args, nginx)
    runs: list[RunFigures] = []
    start_errors: dict[str, str] = {}
    try:
        try:
            bench.start()
        except BenchError as exc:
            start_errors["upstream"] = str(exc)
            print(f"ERROR: could not start: {exc}", file=sys.stderr, flush=True)
        start_errors.update(bench.start_errors)
        if "upstream" not in start_errors:
            for i, target in enumerate(TARGETS, 1):
                group = unstarted_group(target, start_errors)
                if group is None:
                    r = bench.measure(target)
                else:
                    r = RunFigures(target, "", error=f"not measured: could not start {group}")
                runs.append(r)
                print(_progress(i, len(TARGETS), r), flush=True)
                time.sleep(0.2)  # let the previous run's connections close
    finally:
        bench.close()

    elapsed = (dt.datetime.now(dt.UTC) - started).total_seconds()
    fill_added(runs)
    two_hop = next((r for r in runs if r.target == TWO_HOP), None)
    two_hop_mtls = next((r for r in runs if r.target == TWO_HOP_MTLS), None)
    cmp = compare_with_dapr(two_hop, args.rate, args.connections)
    cmp_mtls = compare_with_dapr(two_hop_mtls, args.rate, args.connections, sidecars=MTLS_SIDECARS)
    hops = hop_figures(runs)
    mtls_rows = mtls_comparison(runs)
    doc: dict[str, Any] = {
        "schema": 2,
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
            "targets": list(TARGETS),
            "hops_of": {t: dict(h) for t, h in HOPS_OF.items()},
            "namespace": NAMESPACE,
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
        "mtls": bench.mtls_info,
        "results": [r.to_dict() for r in runs],
        "hops": [{**dataclasses.asdict(h), "label": h.label} for h in hops],
        "mtls_vs_plain": [dataclasses.asdict(m) for m in mtls_rows],
        "comparison": dataclasses.asdict(cmp),
        "comparison_mtls": dataclasses.asdict(cmp_mtls),
        "start_errors": start_errors,
    }
    markdown = render_markdown(doc, runs, cmp, cmp_mtls)

    print()
    if runs:
        print(
            f"two-hop: loadgen -> [relay | B | A -> B | A' -mTLS-> B'] -> app, {args.rate:g} "
            f"rps, {args.connections} connections, {args.duration:g} s per target"
        )
        print(format_text_table(runs))
        print()
        print(HOP_TITLE)
        print(format_hop_text(hops))
        print()
        print(MTLS_TITLE)
        print(format_mtls_text(mtls_rows))
        print()
    print(dapr_line())
    print(goal_line(cmp))
    print(goal_line(cmp_mtls, " with mTLS"))
    print(f"elapsed {elapsed:.0f} s (estimated {est:.0f} s)")
    if not args.no_save:
        jpath, mpath = save(doc, markdown, args.output)
        print(f"saved {jpath} and {mpath}")

    failed = [r for r in runs if r.error]
    if start_errors or failed:
        print(f"\n!!! {len(failed) + len(start_errors)} FAILURES", file=sys.stderr)
        for group, err in start_errors.items():
            print(f"--- start, {group}:\n{err.strip()}", file=sys.stderr)
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
