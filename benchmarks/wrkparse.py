"""Parse the text wrk prints, because wrk has no machine-readable output mode.

Kept free of I/O so the unit tests can pin down every unit and error line wrk emits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# wrk formats times with units.c: base "us", then "ms", "s"; from one minute on it
# switches to "s" based units "m" and "h".
_TIME_UNITS_MS: dict[str, float] = {
    "us": 0.001,
    "ms": 1.0,
    "s": 1000.0,
    "m": 60_000.0,
    "h": 3_600_000.0,
}
# Req/Sec and counts use SI-ish metric suffixes (scale 1000).
_COUNT_UNITS: dict[str, float] = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
# Transfer uses binary suffixes (scale 1024).
_BYTE_UNITS: dict[str, float] = {
    "B": 1.0,
    "KB": 1024.0,
    "MB": 1024.0**2,
    "GB": 1024.0**3,
    "TB": 1024.0**4,
    "PB": 1024.0**5,
}

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_TIME_RE = re.compile(rf"^\s*({_NUM})\s*(us|ms|s|m|h)\s*$")
_LAT_LINE_RE = re.compile(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")
_PCT_LINE_RE = re.compile(rf"^\s*({_NUM})%\s+(\S+)\s*$")
_REQS_LINE_RE = re.compile(rf"^\s*(\d+) requests in (\S+), ({_NUM})\s*([KMGTP]?B) read\s*$")
_RPS_RE = re.compile(rf"^\s*Requests/sec:\s+({_NUM})\s*$")
_TRANSFER_RE = re.compile(rf"^\s*Transfer/sec:\s+({_NUM})\s*([KMGTP]?B)\s*$")
_NON2XX_RE = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)\s*$")
_SOCKERR_RE = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$"
)


class WrkParseError(ValueError):
    """wrk printed something we do not understand; never guess a figure."""


def parse_time_ms(text: str) -> float:
    """Convert a wrk time such as ``150.96us``, ``5.84ms`` or ``1.02s`` to milliseconds."""
    m = _TIME_RE.match(text)
    if m is None:
        raise WrkParseError(f"not a wrk time value: {text!r}")
    return float(m.group(1)) * _TIME_UNITS_MS[m.group(2)]


def parse_count(text: str) -> float:
    """Convert a wrk count such as ``210.51k`` or ``820.09`` to a plain number."""
    m = re.match(rf"^\s*({_NUM})([kMGT]?)\s*$", text)
    if m is None:
        raise WrkParseError(f"not a wrk count value: {text!r}")
    return float(m.group(1)) * _COUNT_UNITS[m.group(2)]


def parse_bytes(number: str, unit: str) -> float:
    """Convert a wrk byte amount (``64.22`` ``MB``) to bytes (wrk uses 1024-based units)."""
    if unit not in _BYTE_UNITS:
        raise WrkParseError(f"unknown byte unit: {unit!r}")
    return float(number) * _BYTE_UNITS[unit]


@dataclass(frozen=True)
class WrkResult:
    """One wrk run's figures; times in milliseconds, sizes in bytes."""

    requests: int
    duration_s: float
    rps: float
    bytes_read: float
    transfer_per_s: float
    latency_avg_ms: float
    latency_stdev_ms: float
    latency_max_ms: float
    percentiles_ms: dict[float, float] = field(default_factory=dict)
    non_2xx_3xx: int = 0
    errors_connect: int = 0
    errors_read: int = 0
    errors_write: int = 0
    errors_timeout: int = 0

    @property
    def socket_errors(self) -> int:
        """Total socket errors of all kinds."""
        return self.errors_connect + self.errors_read + self.errors_write + self.errors_timeout

    @property
    def ok(self) -> bool:
        """True when every request succeeded; benchmarks of failing proxies are meaningless."""
        return self.non_2xx_3xx == 0 and self.socket_errors == 0 and self.requests > 0

    def percentile(self, pct: float) -> float | None:
        """Latency at ``pct`` (e.g. 99.0) in ms, or None if wrk did not print it."""
        return self.percentiles_ms.get(pct)

    def error_summary(self) -> str:
        """Human-readable list of what went wrong, empty when :attr:`ok`."""
        parts: list[str] = []
        if self.requests == 0:
            parts.append("no requests completed")
        if self.non_2xx_3xx:
            parts.append(f"{self.non_2xx_3xx} non-2xx/3xx responses")
        if self.socket_errors:
            parts.append(
                f"socket errors connect={self.errors_connect} read={self.errors_read} "
                f"write={self.errors_write} timeout={self.errors_timeout}"
            )
        return ", ".join(parts)


def parse_wrk_output(text: str) -> WrkResult:
    """Parse the full stdout of ``wrk --latency``; raise WrkParseError if a key line is missing."""
    latency: tuple[float, float, float] | None = None
    percentiles: dict[float, float] = {}
    requests: int | None = None
    duration_s: float | None = None
    bytes_read: float | None = None
    rps: float | None = None
    transfer = 0.0
    non_2xx = 0
    sock = (0, 0, 0, 0)
    in_dist = False

    for line in text.splitlines():
        if line.strip() == "Latency Distribution":
            in_dist = True
            continue
        if in_dist:
            pm = _PCT_LINE_RE.match(line)
            if pm is not None:
                percentiles[float(pm.group(1))] = parse_time_ms(pm.group(2))
                continue
            in_dist = False
        if (lm := _LAT_LINE_RE.match(line)) is not None:
            latency = (
                parse_time_ms(lm.group(1)),
                parse_time_ms(lm.group(2)),
                parse_time_ms(lm.group(3)),
            )
        elif (rm := _REQS_LINE_RE.match(line)) is not None:
            requests = int(rm.group(1))
            duration_s = parse_time_ms(rm.group(2)) / 1000.0
            bytes_read = parse_bytes(rm.group(3), rm.group(4))
        elif (sm := _RPS_RE.match(line)) is not None:
            rps = float(sm.group(1))
        elif (tm := _TRANSFER_RE.match(line)) is not None:
            transfer = parse_bytes(tm.group(1), tm.group(2))
        elif (nm := _NON2XX_RE.match(line)) is not None:
            non_2xx = int(nm.group(1))
        elif (em := _SOCKERR_RE.match(line)) is not None:
            sock = (int(em.group(1)), int(em.group(2)), int(em.group(3)), int(em.group(4)))

    if requests is None or duration_s is None or bytes_read is None:
        raise WrkParseError("wrk output lacks the 'N requests in T, X read' line")
    if rps is None:
        raise WrkParseError("wrk output lacks the 'Requests/sec:' line")
    if latency is None:
        raise WrkParseError("wrk output lacks the 'Latency' thread-stats line")
    return WrkResult(
        requests=requests,
        duration_s=duration_s,
        rps=rps,
        bytes_read=bytes_read,
        transfer_per_s=transfer,
        latency_avg_ms=latency[0],
        latency_stdev_ms=latency[1],
        latency_max_ms=latency[2],
        percentiles_ms=percentiles,
        non_2xx_3xx=non_2xx,
        errors_connect=sock[0],
        errors_read=sock[1],
        errors_write=sock[2],
        errors_timeout=sock[3],
    )
