"""The cases and rows of a run: their names, what --cases and --targets select, which rows
each case brings, and how long the whole run will take.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from benchmarks.obs_case import OBS_CASE_TARGETS, OBS_SETTLE_OVERHEAD_S
from benchmarks.report import (
    DIRECT,
    FASTPROXY,
    FASTPROXY_TRACED,
    NGINX,
    OBS_CASE,
    OBS_TARGETS,
    RELAY,
    RETRY_CASE,
    RETRY_TARGETS,
    ROUNDED_CASES,
    TARGETS,
)
from benchmarks.retry_case import RETRY_CASE_TARGETS

SIZES_ORDER: tuple[str, ...] = ("small", "4k", "64k")
CONNECTIONS_ORDER: tuple[int, ...] = (50, 1)
PLAIN_CASES: tuple[str, ...] = tuple(f"{s}-c{c}" for s in SIZES_ORDER for c in CONNECTIONS_ORDER)
# The retry case (small-c50 against benchmarks/flaky_app.py, see retry_case.py) and the
# observability case (small-c50 through fastproxy with its observability off, with metrics
# and trace propagation, and with every request traced, see obs_case.py) run
# last, in that order, each with its own rows: RETRY_CASE_TARGETS, OBS_CASE_TARGETS.
SPECIAL_CASES: tuple[str, ...] = (RETRY_CASE, OBS_CASE)
ALL_CASES: tuple[str, ...] = (*PLAIN_CASES, *SPECIAL_CASES)
QUICK_CASES: tuple[str, ...] = ("small-c50", "small-c1", "64k-c50", RETRY_CASE, OBS_CASE)
# Short names accepted by --cases besides the names and globs.
CASE_ALIASES: dict[str, str] = {"retry": RETRY_CASE, "obs": OBS_CASE}
_CASE_RE = re.compile(r"^(?P<size>[^-]+)-c(?P<conns>\d+)(?:-(?P<variant>[a-z]+))?$")
TARGET_ALIASES: dict[str, str] = {
    "direct": DIRECT,
    "nginx": NGINX,
    "nginx-proxy": NGINX,
    "fastproxy": FASTPROXY,
    "fp": FASTPROXY,
    "relay": RELAY,
    "byte-relay": RELAY,
}
# Rough per-run overhead (process polling, sanity request, pauses) for the time estimate.
PER_RUN_OVERHEAD_S = 0.5
STARTUP_OVERHEAD_S = 5.0


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


def case_rounds(case: str, rounds: int) -> int:
    """How many times each row of ``case`` runs: ``rounds`` (--rounds) for ROUNDED_CASES,
    whose ratios are judged and which one run per row leaves to the machine's drift; once
    for every other case."""
    return rounds if case in ROUNDED_CASES else 1


def round_plan(rows: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(round, row) in the order they run: every row once per round, so drift between runs
    hits all rows alike rather than the one measured last. Each round starts one row further
    on (round 2 with the second row, ...), so no row always runs right after the same one."""
    n = len(rows)
    return [(k, rows[(k - 1 + i) % n]) for k in range(1, rounds + 1) for i in range(n)]


def count_runs(cases: Sequence[str], targets: Sequence[str], rounds: int = 1) -> int:
    """Measured runs of (case, row) pairs, each row of ROUNDED_CASES ``rounds`` times, for
    the time estimate and the progress counter."""
    return sum(len(case_targets(c, targets)) * case_rounds(c, rounds) for c in cases)


def _case_part(case: str, targets: Sequence[str], rounds: int) -> str:
    """One case of plan_summary, e.g. 'small-c50-obs x 3 x 3 rounds' (rows x rounds)."""
    n = case_rounds(case, rounds)
    return f"{case} x {len(case_targets(case, targets))}" + (f" x {n} rounds" if n > 1 else "")


def plan_summary(cases: Sequence[str], targets: Sequence[str], rounds: int = 1) -> str:
    """'small-c50 x 4 x 3 rounds + 5 cases x 4 targets + small-c50-retry x 4 + small-c50-obs
    x 3 x 3 rounds = 45 runs', printed before the estimate: the cases run in rounds by name,
    the other plain cases as a count."""
    plain = [c for c in cases if c not in SPECIAL_CASES]
    rounded = [c for c in plain if case_rounds(c, rounds) > 1]
    single = [c for c in plain if c not in rounded]
    parts = [_case_part(c, targets, rounds) for c in rounded]
    if single:
        parts.append(f"{len(single)} cases x {len(targets)} targets")
    parts += [_case_part(c, targets, rounds) for c in SPECIAL_CASES if c in cases]
    return f"{' + '.join(parts)} = {count_runs(cases, targets, rounds)} runs"


def settle_overhead_s(cases: Sequence[str], targets: Sequence[str], rounds: int = 1) -> float:
    """Extra seconds of the run for fastproxy-traced's settling (OBS_SETTLE_OVERHEAD_S per
    run: it settles around each of its runs, one per round)."""
    traced = OBS_CASE in cases and FASTPROXY_TRACED in case_targets(OBS_CASE, targets)
    return OBS_SETTLE_OVERHEAD_S * case_rounds(OBS_CASE, rounds) if traced else 0.0


def estimate_seconds(
    n_runs: int, duration_s: float, warmup_s: float, extra_s: float = 0.0
) -> float:
    """Expected wall time of a run, printed up front so nobody waits blind; ``extra_s`` for
    waits beyond the runs (settle_overhead_s)."""
    return STARTUP_OVERHEAD_S + n_runs * (duration_s + warmup_s + PER_RUN_OVERHEAD_S) + extra_s
