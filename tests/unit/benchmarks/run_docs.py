"""The run document `benchmarks/run.py` saves, as the markdown tests hand it to
`render_markdown`: fixed machine and parameters, the verdicts given."""

from __future__ import annotations

from typing import Any

SKIPPED_VERDICT: dict[str, Any] = {"status": "SKIPPED", "message": "small-c50: none"}


def run_doc(
    verdict: dict[str, Any] | None = None, obs_verdict: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A saved run with `verdict` (skipped unless given) and `obs_verdict` (none unless
    given)."""
    return {
        "timestamp_utc": "2026-11-27T12:00:00+00:00",
        "git": {"commit": "abc", "dirty": False, "untracked": False},
        "machine": {
            "nproc": 2,
            "cpu_model": "cpu",
            "kernel": "6",
            "python": "3.11",
            "uvloop": "0.21",
            "httptools": "0.6",
            "nginx": "nginx/1",
            "wrk": "wrk 4",
        },
        "parameters": {"duration_s": 3.0, "warmup_s": 1.0, "pin": False},
        "verdict": verdict or SKIPPED_VERDICT,
        "obs_verdict": obs_verdict,
        "start_errors": {},
    }
