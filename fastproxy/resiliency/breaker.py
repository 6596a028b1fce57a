"""Circuit breakers (Resiliency `spec.policies.circuitBreakers`) with sony/gobreaker's rules.

A breaker is a three-state machine on an injected clock; the caller asks `allow()` before an
attempt and reports the outcome with `record()`. Dapr keeps one breaker per (app, method),
so targets hold a bounded LRU of them (`BreakerSet`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from fastproxy.config.errors import ConfigError
from fastproxy.resiliency._fields import mapping_or_empty, optional_int, optional_string
from fastproxy.resiliency.durations import parse_duration
from fastproxy.resiliency.expression import Counts, Trip, compile_trip

DEFAULT_TRIP_TEXT: Final = "consecutiveFailures > 5"
DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_CACHE_SIZE: Final = 100
_MAX_REQUESTS_LIMIT: Final = 2**32 - 1  # gobreaker's MaxRequests is a uint32


def default_trip(counts: Counts) -> bool:
    """gobreaker's ReadyToTrip when none is set, and Dapr's documented default."""
    return counts.consecutive_failures > 5


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


OnChange = Callable[[str, str, BreakerState, BreakerState], None]
"""Told of each state change: (the target app, the breaker's name, old state, new state)."""


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    """One named breaker policy: the template every per-method breaker is made from."""

    name: str
    max_requests: int = 1  # admitted while half-open; that many successes close it again
    interval: float = 0.0  # closed: seconds between count resets; 0 = never reset
    timeout: float = DEFAULT_TIMEOUT  # open: seconds until half-open
    trip: Trip = default_trip  # closed: evaluated after each failure; True opens
    trip_text: str = DEFAULT_TRIP_TEXT


def parse_breaker(name: str, body: object, where: str) -> BreakerSpec:
    """A `circuitBreakers.<name>` body as parsed from YAML; ConfigError names `where`.

    Zero values mean the defaults, as in gobreaker: maxRequests 0 is 1, timeout 0 is 60 s.
    """
    fields = mapping_or_empty(body, where, f"circuit breaker {name!r}")
    max_requests = optional_int(fields, "maxRequests", where, 0)
    if not 0 <= max_requests <= _MAX_REQUESTS_LIMIT:
        raise ConfigError(f"{where}: maxRequests must be 0 or more, not {max_requests}")
    interval = _duration_field(fields, "interval", where)
    timeout = _duration_field(fields, "timeout", where)
    trip_text = optional_string(fields, "trip", where).strip()
    trip = compile_trip(trip_text, where) if trip_text else default_trip
    return BreakerSpec(
        name=name,
        max_requests=max_requests or 1,
        interval=interval,
        timeout=timeout or DEFAULT_TIMEOUT,
        trip=trip,
        trip_text=trip_text or DEFAULT_TRIP_TEXT,
    )


def _duration_field(fields: Mapping[object, object], key: str, where: str) -> float:
    value = fields.get(key)
    if value is None or value == "":
        return 0.0
    return parse_duration(value, f"{where}: {key}")


# --- the state machine -----------------------------------------------------------------------
#
# Theory of operation (gobreaker's, re-derived):
#   CLOSED     every call is admitted. A failure updates the counts, then `trip(counts)` is
#              asked; True opens the breaker. With an interval, the counts start afresh each
#              time the interval has passed (a new generation, no state change).
#   OPEN       every call is refused until `timeout` has passed since it opened; the first
#              look at the state after that finds it HALF_OPEN.
#   HALF_OPEN  the first `max_requests` calls are admitted, the rest refused. Any failure
#              reopens; `max_requests` consecutive successes close.
# Each state change starts a new generation: counts cleared, the generation number bumped,
# `on_change` told once. `allow()` hands out the generation it admitted a call in; an outcome
# reported for an older generation is dropped, so a slow call that began before the breaker
# tripped cannot close (or re-trip) it afterwards.
# Time only moves states when someone looks: `allow`, `record`, `state` and `counts` all
# first bring the breaker up to the clock.


class CircuitBreaker:
    """One breaker, for one (app, method). Not thread-safe: one event loop owns it."""

    __slots__ = (
        "_clock",
        "_counts",
        "_expiry",
        "_generation",
        "_on_change",
        "_state",
        "name",
        "spec",
        "target",
    )

    def __init__(
        self,
        name: str,
        spec: BreakerSpec,
        clock: Callable[[], float],
        on_change: OnChange | None = None,
        target: str = "",
    ) -> None:
        self.name = name
        self.target = target  # the app whose calls it guards
        self.spec = spec
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._counts = Counts()
        self._expiry: float | None = None
        self._new_generation(clock())

    def __repr__(self) -> str:
        counts = self._counts
        return (
            f"<CircuitBreaker {self.name!r} {self._state.value} generation={self._generation} "
            f"requests={counts.requests} failures={counts.total_failures} "
            f"consecutive_failures={counts.consecutive_failures} policy={self.spec.name!r}>"
        )

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose timeout has passed reads half-open)."""
        return self._current(self._clock())

    @property
    def counts(self) -> Counts:
        """A copy of the counts of the current generation, as of now."""
        self._current(self._clock())
        return dataclasses.replace(self._counts)

    @property
    def generation(self) -> int:
        return self._generation

    def allow(self) -> int | None:
        """The generation to hand back to `record`, or None when the call must not be made."""
        state = self._current(self._clock())
        if state is BreakerState.OPEN:
            return None
        if state is BreakerState.HALF_OPEN and self._counts.requests >= self.spec.max_requests:
            return None
        self._counts.requests += 1
        return self._generation

    def record(self, generation: int, success: bool) -> None:
        """The outcome of a call `allow` admitted in `generation`."""
        now = self._clock()
        state = self._current(now)
        if generation != self._generation:
            return
        counts = self._counts
        if success:
            counts.total_successes += 1
            counts.consecutive_successes += 1
            counts.consecutive_failures = 0
            if (
                state is BreakerState.HALF_OPEN
                and counts.consecutive_successes >= self.spec.max_requests
            ):
                self._set_state(BreakerState.CLOSED, now)
            return
        counts.total_failures += 1
        counts.consecutive_failures += 1
        counts.consecutive_successes = 0
        if state is BreakerState.HALF_OPEN or self.spec.trip(counts):
            self._set_state(BreakerState.OPEN, now)

    def _current(self, now: float) -> BreakerState:
        """Bring the breaker up to `now`: roll the closed window, or end the open period."""
        expiry = self._expiry
        if expiry is not None and now >= expiry:
            if self._state is BreakerState.CLOSED:
                self._new_generation(now)
            elif self._state is BreakerState.OPEN:
                self._set_state(BreakerState.HALF_OPEN, now)
        return self._state

    def _set_state(self, state: BreakerState, now: float) -> None:
        previous = self._state
        if state is previous:
            return
        self._state = state
        self._new_generation(now)
        if self._on_change is not None:
            self._on_change(self.target, self.name, previous, state)

    def _new_generation(self, now: float) -> None:
        self._generation += 1
        self._counts = Counts()
        if self._state is BreakerState.OPEN:
            self._expiry = now + self.spec.timeout
        elif self._state is BreakerState.CLOSED and self.spec.interval > 0:
            self._expiry = now + self.spec.interval
        else:
            self._expiry = None


class BreakerSet:
    """The breakers of one target, keyed "app:method", least recently used dropped past `size`.

    A dropped breaker's state is forgotten, as when Dapr's LRU evicts it.
    """

    __slots__ = ("_breakers", "_clock", "_on_change", "size", "spec", "target")

    def __init__(
        self,
        spec: BreakerSpec,
        clock: Callable[[], float],
        on_change: OnChange | None = None,
        size: int = DEFAULT_CACHE_SIZE,
        target: str = "",
    ) -> None:
        if size < 1:
            raise ValueError(f"a BreakerSet holds at least one breaker, not {size}")
        self.spec = spec
        self.size = size
        self.target = target
        self._clock = clock
        self._on_change = on_change
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()

    def __repr__(self) -> str:
        return f"<BreakerSet policy={self.spec.name!r} breakers={len(self._breakers)}/{self.size}>"

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, key: object) -> bool:
        return key in self._breakers

    def get(self, key: str) -> CircuitBreaker:
        """The breaker for `key`, made on first use and marked most recently used."""
        breaker = self._breakers.get(key)
        if breaker is not None:
            self._breakers.move_to_end(key)
            return breaker
        breaker = CircuitBreaker(key, self.spec, self._clock, self._on_change, self.target)
        self._breakers[key] = breaker
        if len(self._breakers) > self.size:
            self._breakers.popitem(last=False)
        return breaker
