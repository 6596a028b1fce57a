"""Choosing an instance for each request: round robin or least-outstanding (P2C).

Pure decisions over any hashable endpoint key; time and randomness are handed in.
An `Ejector` keeps failing endpoints out of rotation for a jittered, growing backoff.
"""

from __future__ import annotations

import enum
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

E = TypeVar("E", bound=Hashable)

Clock = Callable[[], float]

# Random draws P2C spends looking for each of its two eligible endpoints before it
# falls back to scanning the whole list. Even with half the endpoints ineligible,
# four draws in a row miss only one time in sixteen, so the scan stays rare.
_DRAWS = 4


class EndpointState(enum.Enum):
    HEALTHY = "healthy"  # no failure recorded since the last success
    EJECTED = "ejected"  # out of rotation until its backoff ends
    HALF_OPEN = "half-open"  # backoff over: the next pick is a trial
    PROBING = "probing"  # a trial is out; others wait for its outcome

    def __repr__(self) -> str:
        return self.name


class _Entry:
    """Failure state of one endpoint that is not HEALTHY."""

    __slots__ = ("failures", "probing", "until")

    def __init__(self, failures: int, until: float) -> None:
        self.failures = failures
        self.until = until
        self.probing = False


class Ejector(Generic[E]):
    """Passive outlier ejection, one failure at a time.

    Theory of operation. A failure (refused, reset) ejects a HEALTHY endpoint for
    `base` seconds. When that runs out the endpoint is HALF_OPEN: the first pick
    takes it as a trial and it becomes PROBING, so a burst of requests does not all
    land on an endpoint that may still be down. The trial's failure ejects it again
    for twice as long (up to `cap`); its success, or any success, forgets it.
    Failures reported while EJECTED come from requests sent before the ejection and
    do not grow the backoff. A trial that never reports back holds the endpoint for
    one more backoff period, after which another trial is allowed.

    Only endpoints with a failure on record are stored, and `retain` drops those
    no longer in the current set, so the state is bounded by the endpoint set.
    """

    __slots__ = ("_base", "_cap", "_clock", "_entries", "_factor", "_jitter", "_rng", "ejections")

    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        base: float = 1.0,
        factor: float = 2.0,
        cap: float = 30.0,
        jitter: float = 0.1,
    ) -> None:
        if not base > 0:
            raise ValueError(f"ejection base must be positive, got {base!r}")
        if not factor >= 1:
            raise ValueError(f"ejection factor must be at least 1, got {factor!r}")
        if not cap >= base:
            raise ValueError(f"ejection cap {cap!r} is below its base {base!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"ejection jitter must be in [0, 1), got {jitter!r}")
        self._clock = clock
        self._rng = rng
        self._base = base
        self._factor = factor
        self._cap = cap
        self._jitter = jitter
        # Times an endpoint was taken out of rotation, for metrics.
        self.ejections = 0
        self._entries: dict[E, _Entry] = {}

    def __len__(self) -> int:
        """How many endpoints have a failure on record (any state but HEALTHY)."""
        return len(self._entries)

    def __repr__(self) -> str:
        if not self._entries:
            return "<Ejector all healthy>"
        now = self._clock()
        shown = [
            f"{ep!r}: {self._state(entry, now).name} failures={entry.failures}"
            + (f" for {entry.until - now:.1f}s" if entry.until > now else "")
            for ep, entry in list(self._entries.items())[:4]
        ]
        if len(self._entries) > 4:
            shown.append(f"+{len(self._entries) - 4} more")
        return f"<Ejector {', '.join(shown)}>"

    # -- queries --------------------------------------------------------------

    def state(self, ep: E) -> EndpointState:
        entry = self._entries.get(ep)
        if entry is None:
            return EndpointState.HEALTHY
        return self._state(entry, self._clock())

    def is_ejected(self, ep: E) -> bool:
        """True while `ep` should not be picked (EJECTED, or PROBING by another request)."""
        return self.blocked(ep, self._clock())

    def blocked(self, ep: E, now: float) -> bool:
        """`is_ejected` with the time already read, for a balancer checking many endpoints."""
        entry = self._entries.get(ep)
        return entry is not None and now < entry.until

    def ready_at(self, ep: E) -> float:
        """When `ep` becomes eligible again; minus infinity if it already is."""
        entry = self._entries.get(ep)
        return -float("inf") if entry is None else entry.until

    def failures(self, ep: E) -> int:
        """Consecutive failures counted towards the backoff."""
        entry = self._entries.get(ep)
        return 0 if entry is None else entry.failures

    # -- events ---------------------------------------------------------------

    def failed(self, ep: E) -> None:
        """A request to `ep` failed in a way that says the endpoint is unwell."""
        now = self._clock()
        entry = self._entries.get(ep)
        if entry is None:
            self.ejections += 1
            self._entries[ep] = _Entry(1, now + self._backoff(1))
        elif entry.probing or now >= entry.until:
            self.ejections += 1
            entry.failures += 1
            entry.until = now + self._backoff(entry.failures)
            entry.probing = False
        # else: EJECTED already; a straggler's failure says nothing new.

    def succeeded(self, ep: E) -> None:
        self._entries.pop(ep, None)

    def picked(self, ep: E, now: float | None = None) -> None:
        """A balancer chose `ep`: if its backoff is over, that request is the trial."""
        entry = self._entries.get(ep)
        if entry is None:
            return
        if now is None:
            now = self._clock()
        if now >= entry.until:
            entry.probing = True
            entry.until = now + self._backoff(entry.failures)

    def retain(self, endpoints: Iterable[E]) -> None:
        """Forget endpoints that are not in the current set."""
        if not self._entries:
            return
        keep = set(endpoints)
        for ep in [ep for ep in self._entries if ep not in keep]:
            del self._entries[ep]

    # -- internals ------------------------------------------------------------

    @staticmethod
    def _state(entry: _Entry, now: float) -> EndpointState:
        if now >= entry.until:
            return EndpointState.HALF_OPEN
        return EndpointState.PROBING if entry.probing else EndpointState.EJECTED

    def _backoff(self, failures: int) -> float:
        # The cap bounds the nominal backoff; jitter then spreads it either way,
        # so endpoints ejected together at the cap do not all return together.
        nominal = self._base
        for _ in range(failures - 1):
            nominal *= self._factor
            if nominal >= self._cap:
                nominal = self._cap
                break
        if self._jitter:
            nominal *= 1.0 + self._rng.uniform(-self._jitter, self._jitter)
        return nominal


class Balancer(ABC, Generic[E]):
    """Picks an endpoint per request and keeps the counts and health that guide it.

    One balancer (and its ejector) per destination: `retain` takes that
    destination's current endpoint set. The caller reports each request with
    `started`/`finished`, and each endpoint-level failure or success with
    `failed`/`succeeded`. After a connect failure it calls `failed(ep)` and
    picks again with `ep` in `exclude`, so the retry goes to another instance.
    """

    __slots__ = ("_clock", "_outstanding", "_rng", "ejector")

    def __init__(self, clock: Clock, rng: random.Random, ejector: Ejector[E] | None = None) -> None:
        self._clock = clock
        self._rng = rng
        self.ejector: Ejector[E] = ejector if ejector is not None else Ejector(clock, rng)
        self._outstanding: dict[E, int] = {}

    def __repr__(self) -> str:
        busy = sum(self._outstanding.values())
        return (
            f"<{type(self).__name__} outstanding={busy} busy_endpoints={len(self._outstanding)}"
            f"{self._repr_extra()} {self.ejector!r}>"
        )

    def _repr_extra(self) -> str:
        return ""

    @abstractmethod
    def pick(self, endpoints: Sequence[E], exclude: Collection[E] = ()) -> E | None:
        """An endpoint from `endpoints` not in `exclude`; None only if none is left.

        Ejected endpoints are skipped unless every candidate is ejected; then the
        one whose ejection ends soonest is returned (panic mode).
        """

    def started(self, ep: E) -> None:
        out = self._outstanding
        out[ep] = out.get(ep, 0) + 1

    def finished(self, ep: E) -> None:
        out = self._outstanding
        count = out.get(ep, 0)
        if count > 1:
            out[ep] = count - 1
        elif count == 1:
            del out[ep]

    def outstanding(self, ep: E) -> int:
        return self._outstanding.get(ep, 0)

    def failed(self, ep: E) -> None:
        self.ejector.failed(ep)

    def succeeded(self, ep: E) -> None:
        self.ejector.succeeded(ep)

    def retain(self, endpoints: Iterable[E]) -> None:
        """Forget counts and failure state of endpoints that left the set.

        Requests still running on a removed endpoint finish without effect; should
        it come back before they do, their `finished` only lowers its count early.
        """
        keep = set(endpoints)
        out = self._outstanding
        for ep in [ep for ep in out if ep not in keep]:
            del out[ep]
        self.ejector.retain(keep)

    def _panic(self, endpoints: Sequence[E], exclude: Collection[E]) -> E | None:
        """Every candidate is ejected: the one back soonest, so no request is refused."""
        ready_at = self.ejector.ready_at
        best: E | None = None
        best_at = float("inf")
        for ep in endpoints:
            if ep in exclude:
                continue
            at = ready_at(ep)
            if best is None or at < best_at:
                best, best_at = ep, at
        return best


class RoundRobin(Balancer[E]):
    """Each eligible endpoint in list order, skipping ejected and excluded ones.

    The cursor moves to just past the endpoint chosen, so endpoints that are
    skipped do not hand their turn to one neighbour: the rest share it evenly.
    """

    __slots__ = ("_next",)

    def __init__(self, clock: Clock, rng: random.Random, ejector: Ejector[E] | None = None) -> None:
        super().__init__(clock, rng, ejector)
        # Start at a random offset so sidecars started together do not march in step.
        self._next = rng.randrange(1 << 16)

    def _repr_extra(self) -> str:
        return f" next={self._next}"

    def pick(self, endpoints: Sequence[E], exclude: Collection[E] = ()) -> E | None:
        n = len(endpoints)
        if n == 0:
            return None
        start = self._next % n
        ejector = self.ejector
        if not exclude and not len(ejector):
            self._next = start + 1
            return endpoints[start]
        now = self._clock()
        blocked = ejector.blocked
        for k in range(n):
            i = (start + k) % n
            ep = endpoints[i]
            if ep in exclude or blocked(ep, now):
                continue
            self._next = i + 1
            ejector.picked(ep, now)
            return ep
        return self._panic(endpoints, exclude)


class LeastOutstanding(Balancer[E]):
    """Power of two choices: of two distinct random eligible endpoints, the less busy.

    Ties go to the first of the two drawn; the draw order is itself random, so
    that is a fair coin without a further call to the generator.
    """

    __slots__ = ()

    def pick(self, endpoints: Sequence[E], exclude: Collection[E] = ()) -> E | None:
        n = len(endpoints)
        rng = self._rng
        ejector = self.ejector
        if n >= 2 and not exclude and not len(ejector):
            # int(random() * n) is uniform enough for any list this holds, and
            # several times cheaper than randrange.
            random_ = rng.random
            i = int(random_() * n)
            j = int(random_() * (n - 1))
            if j >= i:
                j += 1
            return self._lesser(endpoints[i], endpoints[j])
        if n == 0:
            return None
        now = self._clock()
        if n >= 2:
            i = self._draw(endpoints, exclude, now, -1)
            if i >= 0:
                j = self._draw(endpoints, exclude, now, i)
                if j >= 0:
                    chosen = self._lesser(endpoints[i], endpoints[j])
                    ejector.picked(chosen, now)
                    return chosen
        # Few eligible endpoints, or an unlucky run of draws: look at them all.
        blocked = ejector.blocked
        eligible = [ep for ep in endpoints if ep not in exclude and not blocked(ep, now)]
        if not eligible:
            return self._panic(endpoints, exclude)
        if len(eligible) == 1:
            chosen = eligible[0]
        else:
            a, b = rng.sample(eligible, 2)
            chosen = self._lesser(a, b)
        ejector.picked(chosen, now)
        return chosen

    def _lesser(self, a: E, b: E) -> E:
        out = self._outstanding
        return b if out.get(b, 0) < out.get(a, 0) else a

    def _draw(self, endpoints: Sequence[E], exclude: Collection[E], now: float, skip: int) -> int:
        """Index of a random eligible endpoint other than `skip`, or -1 after `_DRAWS` misses.

        Each draw is uniform over the indices, so a hit is uniform over the eligible.
        """
        n = len(endpoints)
        blocked = self.ejector.blocked
        random_ = self._rng.random
        for _ in range(_DRAWS):
            if skip < 0:
                k = int(random_() * n)
            else:
                k = int(random_() * (n - 1))
                if k >= skip:
                    k += 1
            ep = endpoints[k]
            if ep not in exclude and not blocked(ep, now):
                return k
        return -1


_POLICIES = {
    "roundrobin": "roundrobin",
    "round-robin": "roundrobin",
    "leastoutstanding": "leastoutstanding",
    "least-outstanding": "leastoutstanding",
    "p2c": "leastoutstanding",
}


def make_balancer(name: str | None, clock: Clock, rng: random.Random) -> Balancer[E]:
    """The balancer a Configuration names; least-outstanding when it names none."""
    key = (name or "").strip().lower() or "leastoutstanding"
    policy = _POLICIES.get(key)
    if policy is None:
        expected = ", ".join(_POLICIES)
        raise ValueError(f"unknown load-balancing policy {name!r}; expected one of {expected}")
    if policy == "roundrobin":
        return RoundRobin(clock, rng)
    return LeastOutstanding(clock, rng)
