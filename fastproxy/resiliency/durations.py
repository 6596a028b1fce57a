"""Durations as Dapr's Resiliency resources write them, in seconds.

A string is a Go duration ("1h2m3.5s", "500ms"); a bare integer, in YAML or as a string of
digits, is milliseconds, as daprd reads timeouts and retry/breaker intervals.
"""

from __future__ import annotations

import re
from typing import Final

from fastproxy.config.errors import ConfigError
from fastproxy.resiliency._fields import is_int, kind

# Nanoseconds per unit, as Go's time.ParseDuration knows them (both micro signs included).
_UNIT_NANOS: Final[dict[str, int]] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
# A Go time.Duration is an int64 of nanoseconds: about 292 years at most.
_MAX_NANOS: Final = 2**63 - 1
_NANOS_PER_SECOND: Final = 1_000_000_000
_MILLIS_PER_SECOND: Final = 1000

_BARE_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
# One "<number><unit>" term: digits with an optional fraction (either side may be empty,
# not both), then a unit made of anything that is not a digit or a dot.
_TERM: Final = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def parse_duration(value: object, where: str) -> float:
    """`value` in seconds; negative, malformed or out-of-range values raise ConfigError."""
    if is_int(value):
        return _from_millis(value, value, where)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: a duration must be a string such as '5s', not {kind(value)}")
    text = value.strip()
    if _BARE_INTEGER.fullmatch(text):
        return _from_millis(int(text), value, where)
    return _go_duration(text, value, where) / _NANOS_PER_SECOND


def _from_millis(millis: int, original: object, where: str) -> float:
    if millis < 0:
        raise ConfigError(f"{where}: duration {original!r} is negative")
    if millis * 1_000_000 > _MAX_NANOS:
        raise ConfigError(f"{where}: duration {original!r} is out of range")
    return millis / _MILLIS_PER_SECOND


def _go_duration(text: str, original: str, where: str) -> int:
    """Nanoseconds, by the grammar of Go's time.ParseDuration (fractions truncated as there)."""
    rest = text
    negative = rest[:1] == "-"
    if rest[:1] in ("+", "-"):
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise _malformed(original, where)
    total = 0
    while rest:
        term = _TERM.match(rest)
        if term is None:  # pragma: no cover - the pattern matches the empty string
            raise _malformed(original, where)
        whole, fraction, unit = term.group(1), term.group(2), term.group(3)
        if not whole and not fraction:
            raise _malformed(original, where)
        nanos_per_unit = _UNIT_NANOS.get(unit)
        if nanos_per_unit is None:
            problem = "is missing a unit" if not unit else f"has an unknown unit {unit!r}"
            raise ConfigError(
                f"{where}: duration {original!r} {problem} (use ns, us, ms, s, m or h)"
            )
        total += int(whole or "0") * nanos_per_unit
        if fraction:
            total += int(fraction) * nanos_per_unit // 10 ** len(fraction)
        if total > _MAX_NANOS:
            raise ConfigError(f"{where}: duration {original!r} is out of range")
        rest = rest[term.end() :]
    if negative and total > 0:
        raise ConfigError(f"{where}: duration {original!r} is negative")
    return total


def _malformed(original: str, where: str) -> ConfigError:
    return ConfigError(
        f"{where}: duration {original!r} is malformed (expected e.g. '5s', '1m30s', '500ms', "
        "or an integer number of milliseconds)"
    )
