"""The run the benchmark tests build their figures from: a 13 B body over 50 connections.

Each test file keeps its own short builder for the fields it varies; the shape of the
run, and the figures no test reads, live here once.
"""

from __future__ import annotations

from typing import Any

from benchmarks.report import Measurement


def small_c50_run(target: str, case: str, **fields: Any) -> Measurement:
    """A run of `case` for `target`; `fields` override the defaults."""
    values: dict[str, Any] = {
        "case": case,
        "size": "small",
        "size_bytes": 13,
        "connections": 50,
        "target": target,
        "p50_ms": 0.5,
        "p90_ms": 0.8,
        "p99_ms": 1.25,
        "upstream_cpu_us_per_req": 4.0,
    }
    values.update(fields)
    return Measurement(**values)
