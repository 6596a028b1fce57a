"""One exchange's attempts under a resiliency policy: breaker, per-attempt timeout, retries.

Dapr composes them as retry(circuit breaker(timeout(attempt))). The decisions
come from `fastproxy.resiliency` (pure); this object holds the timers and the
counts for one request, and the exchange asks it at each turn. An exchange
without a policy never creates one, so the common path pays nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Protocol

from fastproxy.resiliency.breaker import CircuitBreaker
from fastproxy.resiliency.retry import RetrySpec

# Dapr's texts for the two ways an attempt can end without an answer.
TIMED_OUT = "context deadline exceeded"
BREAKER_OPEN = "circuit breaker is open"


class PolicyMonitor(Protocol):
    """Hears when a policy acts on a call to `target` (Dapr's resiliency metrics)."""

    def policy_executed(self, target: str, timeout: bool, retry: bool, breaker: str) -> None:
        """A call is made under the target's policies (`breaker`: its state, or "")."""

    def policy_activated(self, target: str, policy: str, status: str = "") -> None:
        """A policy acted: a timeout fired, a retry is made, a breaker changed state."""


class Attempts:
    __slots__ = (
        "_breaker",
        "_generation",
        "_loop",
        "_monitor",
        "_retries",
        "_retry",
        "_target",
        "_timeout",
        "_timer",
    )

    def __init__(
        self,
        timeout: float | None,
        retry: RetrySpec | None,
        breaker: CircuitBreaker | None,
        monitor: PolicyMonitor | None = None,
        target: str = "",
    ) -> None:
        self._timeout = timeout
        self._retry = retry
        self._breaker = breaker
        self._monitor = monitor
        self._target = target
        self._generation = 0
        self._retries = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"<Attempts retries={self._retries} breaker={self._breaker!r}>"

    @property
    def retries(self) -> int:
        return self._retries

    def begin(self, on_timeout: Callable[[], None]) -> bool:
        """Start an attempt; False when the breaker refuses it (the app is not touched)."""
        breaker = self._breaker
        if breaker is not None:
            generation = breaker.allow()
            if generation is None:
                return False
            self._generation = generation
        if self._timeout is not None:
            self._timer = self._loop.call_later(self._timeout, self._timed_out, on_timeout)
        return True

    def _timed_out(self, on_timeout: Callable[[], None]) -> None:
        self._timer = None
        if self._monitor is not None:
            self._monitor.policy_activated(self._target, "timeout")
        on_timeout()

    def end(self, success: bool) -> None:
        """The attempt is over: stop its clock and tell the breaker how it went."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        if self._breaker is not None:
            self._breaker.record(self._generation, success)

    def retries_status(self, status: int) -> bool:
        """Whether this status is a failure the retry policy retries."""
        retry = self._retry
        return retry is not None and retry.retries_status(status)

    def may_retry(self) -> bool:
        """Another attempt is allowed by the policy (the caller checks it is safe)."""
        retry = self._retry
        return retry is not None and retry.allows(self._retries)

    def count_retry(self) -> float:
        """Count a retry; the seconds the policy waits before it."""
        retry = self._retry
        assert retry is not None
        self._retries += 1
        if self._monitor is not None:
            self._monitor.policy_activated(self._target, "retry")
        return retry.delay(self._retries, random.random)

    def call_after(self, delay: float, again: Callable[[], None]) -> None:
        """Run `again` after `delay` seconds (cancelled with the exchange)."""
        self._timer = self._loop.call_later(delay, again)

    def cancel(self) -> None:
        """The client went away: no timer may fire for this exchange any more."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
