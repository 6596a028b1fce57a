"""A clock the tests move by hand, injected wherever the resiliency engine reads time."""

from __future__ import annotations


class FakeClock:
    """Callable like `time.monotonic`; starts at an arbitrary non-zero time."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
