"""Retry policies (Resiliency `spec.policies.retries`): when to try again, and how long to wait.

Pure decisions: the caller counts its retries, supplies the random number for jitter and does
the sleeping. The delays follow the back-off Dapr uses (cenkalti/backoff via dapr/kit/retry).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from fastproxy.config.errors import ConfigError
from fastproxy.resiliency._fields import (
    is_int,
    kind,
    mapping_or_empty,
    optional_int,
    optional_string,
)
from fastproxy.resiliency.durations import parse_duration

BUILT_IN_SERVICE_RETRIES: Final = "DaprBuiltInServiceRetries"
UNLIMITED: Final = -1

DEFAULT_DURATION: Final = 5.0
DEFAULT_MAX_INTERVAL: Final = 60.0
# Exponential back-off constants; Dapr's YAML cannot change them.
INITIAL_INTERVAL: Final = 0.5
MULTIPLIER: Final = 1.5
RANDOMIZATION_FACTOR: Final = 0.5
MAX_ELAPSED: Final = 15 * 60.0  # exponential retries stop once this much time has passed

HTTP_CODES: Final = (100, 599)
GRPC_CODES: Final = (0, 16)
# Past this many growth steps 1.5**n exceeds any max interval a Duration can hold.
_MAX_GROWTH_STEPS: Final = 128


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """One named retry policy, ready to decide."""

    name: str
    exponential: bool
    duration: float  # constant policy: the wait before every retry
    max_interval: float  # exponential policy: the cap on the growing interval
    max_retries: int  # UNLIMITED (-1) = no limit, 0 = never retry
    statuses: frozenset[int] | None  # None = every failure is retried

    def allows(self, retries_done: int) -> bool:
        """Whether another retry may follow `retries_done` retries already made."""
        return self.max_retries < 0 or retries_done < self.max_retries

    def delay(self, retry_number: int, rand: Callable[[], float]) -> float:
        """Seconds to wait before retry `retry_number` (1 = the first retry).

        Exponential: the interval starts at 0.5 s and grows 1.5 times per retry; once the next
        step would reach `max_interval` it stays there. The wait is that interval spread by
        ±50 % with `rand()` in [0, 1) (0.5 gives the interval itself), as cenkalti/backoff
        does, so a wait may exceed `max_interval` by half.
        """
        if not self.exponential:
            return self.duration
        steps = max(retry_number, 1) - 1
        interval = INITIAL_INTERVAL
        if steps:
            grown = INITIAL_INTERVAL * MULTIPLIER ** min(steps, _MAX_GROWTH_STEPS)
            interval = min(grown, self.max_interval)
        spread = RANDOMIZATION_FACTOR * interval
        return interval - spread + rand() * 2 * spread

    def gives_up(self, elapsed: float, next_delay: float) -> bool:
        """Whether an exponential policy stops here: `elapsed` seconds since the first attempt
        plus the next wait would pass 15 minutes (Dapr's fixed MaxElapsedTime). Constant
        policies are bounded by `max_retries` only."""
        return self.exponential and elapsed + next_delay > MAX_ELAPSED

    def retries_status(self, status: int) -> bool:
        """Whether an app response with `status` is a failure this policy retries.

        Statuses 200-399 are successes; any other is a failure, retried when `matching`
        lists it or when the policy has no list.
        """
        if 200 <= status <= 399:
            return False
        return self.statuses is None or status in self.statuses


BUILT_IN_SERVICE_RETRY: Final = RetrySpec(
    name=BUILT_IN_SERVICE_RETRIES,
    exponential=False,
    duration=1.0,
    max_interval=DEFAULT_MAX_INTERVAL,
    max_retries=3,
    statuses=None,
)


def parse_retry(name: str, body: object, where: str) -> RetrySpec:
    """A `retries.<name>` body as parsed from YAML; ConfigError names `where` and the field.

    Unknown fields are ignored, as daprd ignores them. A negative maxRetries means unlimited,
    as in dapr/kit.
    """
    fields = mapping_or_empty(body, where, f"retry policy {name!r}")
    policy = optional_string(fields, "policy", where).strip().lower() or "constant"
    if policy not in ("constant", "exponential"):
        raise ConfigError(
            f"{where}: policy must be 'constant' or 'exponential', not {fields.get('policy')!r}"
        )
    duration = _duration_field(fields, "duration", DEFAULT_DURATION, where)
    max_interval = _duration_field(fields, "maxInterval", DEFAULT_MAX_INTERVAL, where)
    max_retries = optional_int(fields, "maxRetries", where, UNLIMITED)
    matching = mapping_or_empty(fields.get("matching"), where, "matching")
    statuses = parse_codes(matching.get("httpStatusCodes"), HTTP_CODES, f"{where}: matching")
    # Checked so a typo fails as it does in daprd, but unused: fastproxy's hops are HTTP.
    parse_codes(matching.get("gRPCStatusCodes"), GRPC_CODES, f"{where}: matching")
    return RetrySpec(
        name=name,
        exponential=policy == "exponential",
        duration=duration,
        max_interval=max_interval,
        max_retries=max(max_retries, UNLIMITED),
        statuses=statuses,
    )


def parse_codes(value: object, valid: tuple[int, int], where: str) -> frozenset[int] | None:
    """A matching list such as "429,500-599"; None when absent or empty (retry every failure).

    Empty items are skipped, so a list of only commas matches nothing, as in daprd. Spaces
    around items are tolerated.
    """
    if value is None:
        return None
    if is_int(value):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(
            f"{where}: status codes must be a string like '429,500-599', not {kind(value)}"
        )
    if not value.strip():
        return None
    low, high = valid
    codes: set[int] = set()
    for raw_item in value.split(","):
        item = raw_item.strip()
        if not item:
            continue
        bounds = [part.strip() for part in item.split("-")]
        if len(bounds) > 2 or not all(part.isascii() and part.isdigit() for part in bounds):
            raise ConfigError(f"{where}: {item!r} is not a status code or a range like 500-599")
        start, end = int(bounds[0]), int(bounds[-1])
        for code in (start, end):
            if not low <= code <= high:
                raise ConfigError(f"{where}: {item!r}: code {code} is outside {low}-{high}")
        if end < start:
            raise ConfigError(f"{where}: {item!r}: the range ends before it starts")
        codes.update(range(start, end + 1))
    return frozenset(codes)


def _duration_field(fields: Mapping[object, object], key: str, default: float, where: str) -> float:
    value = fields.get(key)
    if value is None or value == "":
        return default
    return parse_duration(value, f"{where}: {key}")
