"""Dapr resiliency for service invocation: timeouts, retries and circuit breakers.

Pure policy: parsed once from Resiliency resources, then asked per call. The caller owns
the clock, the sleeping and the I/O.
"""

from __future__ import annotations

from fastproxy.resiliency.breaker import (
    BreakerSet,
    BreakerSpec,
    BreakerState,
    CircuitBreaker,
    parse_breaker,
)
from fastproxy.resiliency.durations import parse_duration
from fastproxy.resiliency.expression import Counts, compile_trip
from fastproxy.resiliency.retry import BUILT_IN_SERVICE_RETRY, RetrySpec, parse_retry
from fastproxy.resiliency.spec import AppPolicy, Resiliency, load_resiliency

__all__ = [
    "BUILT_IN_SERVICE_RETRY",
    "AppPolicy",
    "BreakerSet",
    "BreakerSpec",
    "BreakerState",
    "CircuitBreaker",
    "Counts",
    "Resiliency",
    "RetrySpec",
    "compile_trip",
    "load_resiliency",
    "parse_breaker",
    "parse_duration",
    "parse_retry",
]
