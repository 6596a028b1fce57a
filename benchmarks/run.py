"""Benchmark fastproxy against nginx (direct and as a reverse proxy) with wrk on loopback.

All three targets are measured in the same run on the same machine, so the ratios are
meaningful even where absolute numbers are not. Usage: ``make bench`` or ``run.py -h``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks import nginx_conf, report  # noqa: E402
from benchmarks.cases import (  # noqa: E402
    ALL_CASES,
    QUICK_CASES,
    SPECIAL_CASES,
    case_rounds,
    case_targets,
    count_runs,
    estimate_seconds,
    plan_summary,
    round_plan,
    select_cases,
    select_targets,
    settle_overhead_s,
    split_case,
)
from benchmarks.machine import ensure_tools, git_info, machine_info  # noqa: E402
from benchmarks.measure import measure  # noqa: E402
from benchmarks.obs_case import (  # noqa: E402
    OBS_CASE_NOTE,
    obs_parameters,
    start_obs_targets,
)
from benchmarks.probe import BenchError  # noqa: E402
from benchmarks.procs import install_exit_signal_handlers  # noqa: E402
from benchmarks.report import (  # noqa: E402
    DIRECT,
    FASTPROXY,
    NGINX,
    OBS_CASE,
    OBS_TARGETS,
    RELAY,
    RETRY_CASE,
    RETRY_TARGETS,
    ROUNDED_CASES,
    ROUNDS,
    TARGETS,
    Measurement,
    merge_rounds,
    round_count,
    run_count,
    run_errors,
)
from benchmarks.retry_case import (  # noqa: E402
    RETRY_CASE_NOTE,
    RETRY_ROW_APPS,
    retry_parameters,
    start_retry_targets,
)
from benchmarks.targets import METRICS_OFF_FLAG, Bench, StartedRows, Target  # noqa: E402
from fastproxy import build  # noqa: E402

DEFAULT_DURATION_S = 10
QUICK_DURATION_S = 3
# Warn when this much CPU (in cores) was busy outside our processes during a run. The
# figure is approximate (tick-sampled /proc/stat vs precise per-task times; off by up to
# ~0.3 cores in the 1-connection cases), hence the generous threshold.
NOISE_WARN_CORES = 0.5


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
    p.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        metavar="N",
        help=f"measure the rows of {' and '.join(ROUNDED_CASES)} in N interleaved rounds and "
        f"report each row's median run (default {ROUNDS}; 1: each row once)",
    )
    p.add_argument("--no-save", action="store_true", help="print results but write no files")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = float(QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S)
    if args.duration <= 0 or args.warmup < 0:
        p.error("--duration must be > 0 and --warmup >= 0")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    try:
        args.case_list = select_cases(args.cases, args.quick)
        args.target_list = select_targets(args.targets)
    except ValueError as exc:
        p.error(str(exc))
    return args


# --------------------------------------------------------------------------- output


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
        rounds_note = report.rounds_note(round_count(ms))
        if rounds_note:
            lines += [rounds_note, ""]
    lines += [f"**Verdict: {v['status']}** - {v['message']}", ""]
    rv = doc.get("retry_verdict")
    if rv is not None:
        lines += [f"**Retry verdict: {rv['status']}** - {rv['message']}", ""]
    ov = doc.get("obs_verdict")
    if ov is not None:
        lines += [f"**Observability verdict: {ov['status']}** - {ov['message']}", ""]
    start_errors: dict[str, str] = doc["start_errors"]
    errors = [e for m in measurements if m.target not in start_errors for e in run_errors(m)]
    if start_errors or errors:
        lines += ["## Errors", ""]
        for name, err in start_errors.items():
            lines += [f"- start error, {name}:", "", "```", err.strip(), "```", ""]
        for head, err in errors:
            lines += [f"- {head}:", "", "```", err.strip(), "```", ""]
    return "\n".join(lines)


def save(doc: dict[str, Any], markdown: str, outdir: Path) -> tuple[Path, Path]:
    """Write <stamp>-<commit>.json/.md and overwrite latest.md."""
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"{doc['timestamp_compact']}-{doc['git']['short']}"
    jpath, mpath = outdir / f"{stem}.json", outdir / f"{stem}.md"
    jpath.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    mpath.write_text(markdown)
    (outdir / "latest.md").write_text(markdown)
    return jpath, mpath


def _progress(i: int, n: int, m: Measurement, rnd: int = 1, rounds: int = 1) -> str:
    # The retry and observability cases' row names are longer.
    widths = {RETRY_CASE: max(map(len, RETRY_TARGETS)), OBS_CASE: max(map(len, OBS_TARGETS))}
    width = widths.get(m.case, 12)
    head = f"[{i}/{n}] {m.case:<10} {m.target:<{width}}"
    if rounds > 1:
        head += f" (round {rnd}/{rounds})"
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


def _not_measured(case: str, name: str, start_error: str) -> Measurement:
    """The failed Measurement of a row that could not start."""
    size, conns = split_case(case)
    m = Measurement(case, size, nginx_conf.SIZES[size], conns, name)
    if case == RETRY_CASE:
        m.app_fail_every, m.app_fail_count = RETRY_ROW_APPS[name]
    m.error = f"not measured; {start_error.splitlines()[0]} (details under start errors)"
    return m


def _f3(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    """Start servers, measure every (case, target), report and save; return exit code."""
    wrk, nginx = ensure_tools()
    started = dt.datetime.now(dt.UTC)
    n_runs = count_runs(args.case_list, args.target_list, args.rounds)
    settle_s = settle_overhead_s(args.case_list, args.target_list, args.rounds)
    est = estimate_seconds(n_runs, args.duration, args.warmup, settle_s)
    plain = [c for c in args.case_list if c not in SPECIAL_CASES]
    retry_rows = case_targets(RETRY_CASE, args.target_list) if RETRY_CASE in args.case_list else []
    obs_rows = case_targets(OBS_CASE, args.target_list) if OBS_CASE in args.case_list else []
    print(
        f"{plan_summary(args.case_list, args.target_list, args.rounds)} of "
        f"{args.warmup:g}+{args.duration:g} s; estimated {est:.0f} s (~{est / 60:.1f} min)",
        flush=True,
    )
    machine = machine_info(wrk, nginx)
    for source in build.stale_extensions():
        print(f"warning: {source} changed after it was compiled", file=sys.stderr)
    bench = Bench(args, wrk, nginx)
    # The Configuration each observability row was started with (for the JSON).
    obs_configs: dict[str, str] = {}
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
            (retry_rows, lambda rows: start_retry_targets(bench, rows)),
            (obs_rows, lambda rows: start_obs_targets(bench, rows, obs_configs)),
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
            rounds = case_rounds(case, args.rounds)
            runs: list[Measurement] = []
            for rnd, name in round_plan(case_targets(case, args.target_list), rounds):
                i += 1
                if name in targets:
                    m = measure(bench, targets[name], case)
                else:
                    m = _not_measured(case, name, target_errors[name])
                runs.append(m)
                print(_progress(i, n_runs, m, rnd, rounds), flush=True)
                time.sleep(0.2)  # let the previous run's connections close
            measurements += merge_rounds(runs) if rounds > 1 else runs
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
            # Every row of these cases ran this many times, reported as its median run.
            "rounds": args.rounds,
            "rounded_cases": list(ROUNDED_CASES),
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
        doc["parameters"]["retry_case"] = retry_parameters(retry_rows)
    if OBS_CASE in args.case_list:
        doc["parameters"]["obs_case"] = obs_parameters(obs_rows, obs_configs, args.rounds)
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

    # Every run counts, also a failed round behind a row reported from its other rounds.
    failed = [(m.target, e) for m in measurements for e in run_errors(m)]
    if failed:
        n_done = sum(run_count(m) for m in measurements)
        print(f"\n!!! {len(failed)} of {n_done} runs FAILED", file=sys.stderr)
        for name, err in target_errors.items():
            print(f"--- start error, {name}:\n{err.strip()}", file=sys.stderr)
        for target, (head, err) in failed:
            if target not in target_errors:
                print(f"--- {head}:\n{err.strip()}", file=sys.stderr)
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
