"""ResolverCache: TTLs, single-flight, refresh-ahead, negative and stale answers, bounds.

Time is a fake clock the tests advance; the resolver is scripted and counts its calls.
Only the lookup timeout uses real (loop) time, kept to a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest

from fastproxy.discovery import (
    Address,
    CacheStats,
    Resolution,
    ResolverCache,
    ResolverUnavailable,
    ServiceNotFound,
)
from fastproxy.discovery.cache import _Entry

NS = "default"
OLD = (Address("10.0.0.1", 50002),)
NEW = (Address("10.0.0.2", 50002), Address("10.0.0.3", 50002))

Answer = Resolution | BaseException


class FakeClock:
    """The cache's clock: it moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeResolver:
    """Answers from a per-app script; the last scripted answer repeats.

    With `gate` set, every lookup waits on it first, which holds lookups open
    for single-flight and cancellation tests.
    """

    def __init__(self) -> None:
        self.scripts: dict[str, list[Answer]] = {}
        self.calls: list[tuple[str, str]] = []
        self.answered = 0
        self.cancelled = 0
        self.gate: asyncio.Event | None = None

    def script(self, app_id: str, *answers: Answer) -> FakeResolver:
        self.scripts[app_id] = list(answers)
        return self

    async def lookup(self, app_id: str, namespace: str) -> Resolution:
        self.calls.append((app_id, namespace))
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        self.answered += 1
        script = self.scripts.get(app_id)
        if script is None:
            return Resolution((Address(f"{app_id}.svc", 80),), 30.0)
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def make(resolver: FakeResolver, clock: FakeClock, **options: float) -> ResolverCache:
    return ResolverCache(resolver, clock, **options)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool]) -> None:
    """Let background tasks run until `condition` holds (fails rather than hang)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


# -- model ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("10.0.0.1", 80, "10.0.0.1:80"),
        ("orders.default.svc", 50002, "orders.default.svc:50002"),
        ("::1", 3500, "[::1]:3500"),
        ("fe80::1%eth0", 50002, "[fe80::1%eth0]:50002"),
    ],
    ids=["ipv4", "name", "ipv6", "ipv6-scoped"],
)
def test_address_str(host: str, port: int, text: str) -> None:
    assert str(Address(host, port)) == text


# -- entry bookkeeping (pure) ----------------------------------------------------

# An answer stored at t=100 with ttl 10, refresh_ahead 0.8, stale_limit 30:
# refresh from 108, expired from 110, servable stale until 140.
ANSWER_AT_100 = {"now": 100.0, "ttl": 10.0, "refresh_ahead": 0.8, "stale_limit": 30.0}


@pytest.mark.parametrize(
    ("now", "fresh", "refresh", "stale_ok"),
    [
        (100.0, True, False, True),
        (107.9, True, False, True),
        (108.0, True, True, True),
        (109.9, True, True, True),
        (110.0, False, True, True),
        (139.9, False, True, True),
        (140.0, False, True, False),
    ],
    ids=[
        "stored",
        "before-refresh",
        "refresh-point",
        "refresh-window",
        "expired",
        "stale-edge",
        "too-old",
    ],
)
def test_answer_entry_decisions(now: float, fresh: bool, refresh: bool, stale_ok: bool) -> None:
    entry = _Entry.answer(OLD, **ANSWER_AT_100)
    assert (entry.is_fresh(now), entry.needs_refresh(now), entry.usable_stale(now)) == (
        fresh,
        refresh,
        stale_ok,
    )


@pytest.mark.parametrize(
    ("now", "fresh"),
    [(100.0, True), (101.9, True), (102.0, False), (500.0, False)],
    ids=["stored", "within", "expired", "long-gone"],
)
def test_refusal_entry_is_never_refreshed_or_served_stale(now: float, fresh: bool) -> None:
    entry = _Entry.refusal("couldn't find service: x", now=100.0, ttl=2.0)
    assert entry.is_fresh(now) is fresh
    assert not entry.needs_refresh(now)
    assert not entry.usable_stale(now)


def test_failed_lookup_holds_the_next_refresh() -> None:
    entry = _Entry.answer(OLD, **ANSWER_AT_100)
    entry.lookup_failed(now=109.0, hold=1.0)
    assert entry.failing
    assert not entry.needs_refresh(109.5)
    assert entry.needs_refresh(110.0)


# -- construction ----------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"min_ttl": -1.0},
        {"min_ttl": 10.0, "max_ttl": 5.0},
        {"negative_ttl": -1.0},
        {"stale_limit": -1.0},
        {"refresh_ahead": 0.0},
        {"refresh_ahead": 1.5},
        {"max_entries": 0},
        {"lookup_timeout": 0.0},
    ],
    ids=[
        "min-ttl-negative",
        "floor-above-ceiling",
        "negative-ttl",
        "stale-limit",
        "refresh-zero",
        "refresh-past-ttl",
        "no-entries",
        "no-timeout",
    ],
)
def test_rejects_nonsense_settings(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        make(FakeResolver(), FakeClock(), **options)


# -- hits, misses, TTL -------------------------------------------------------------


async def test_miss_then_hit() -> None:
    resolver = FakeResolver().script("orders", Resolution(OLD, 10.0))
    cache = make(resolver, FakeClock())
    assert cache.cached("orders", NS) is None
    assert await cache.resolve("orders", NS) == OLD
    assert cache.cached("orders", NS) == OLD
    assert await cache.resolve("orders", NS) == OLD
    assert resolver.calls == [("orders", NS)]
    assert cache.stats == CacheStats(hits=2, misses=1, lookups=1)


async def test_namespaces_are_separate_names() -> None:
    resolver = FakeResolver()
    cache = make(resolver, FakeClock())
    await cache.resolve("orders", "a")
    await cache.resolve("orders", "b")
    assert resolver.calls == [("orders", "a"), ("orders", "b")]
    assert cache.cached("orders", "c") is None


@pytest.mark.parametrize(
    ("source_ttl", "effective_ttl"),
    [(0.0, 5.0), (-3.0, 5.0), (4.9, 5.0), (30.0, 30.0), (60.0, 60.0), (86400.0, 60.0)],
    ids=[
        "zero-to-floor",
        "negative-to-floor",
        "below-floor",
        "within",
        "at-ceiling",
        "above-ceiling",
    ],
)
async def test_ttl_is_clamped(source_ttl: float, effective_ttl: float) -> None:
    clock = FakeClock()
    resolver = FakeResolver().script("orders", Resolution(OLD, source_ttl))
    cache = make(resolver, clock, min_ttl=5.0, max_ttl=60.0, refresh_ahead=1.0)
    await cache.resolve("orders", NS)
    clock.advance(effective_ttl - 0.01)
    assert cache.cached("orders", NS) == OLD
    clock.advance(0.01)
    assert cache.cached("orders", NS) is None


async def test_expired_entry_is_looked_up_again_and_replaced() -> None:
    clock = FakeClock()
    resolver = FakeResolver().script("orders", Resolution(OLD, 10.0), Resolution(NEW, 10.0))
    cache = make(resolver, clock, refresh_ahead=1.0)
    assert await cache.resolve("orders", NS) == OLD
    clock.advance(10.0)
    assert cache.cached("orders", NS) is None
    assert await cache.resolve("orders", NS) == NEW
    assert len(resolver.calls) == 2
    assert cache.cached("orders", NS) == NEW


# -- refresh-ahead -------------------------------------------------------------------


async def test_refresh_ahead_starts_one_background_lookup_and_swaps_in_the_answer() -> None:
    clock = FakeClock()
    resolver = FakeResolver().script("orders", Resolution(OLD, 10.0), Resolution(NEW, 10.0))
    cache = make(resolver, clock, refresh_ahead=0.8)
    await cache.resolve("orders", NS)
    clock.advance(7.9)
    assert cache.cached("orders", NS) == OLD
    await asyncio.sleep(0)
    assert len(resolver.calls) == 1  # not yet due

    resolver.gate = asyncio.Event()
    clock.advance(0.2)
    for _ in range(5):  # many readers while the refresh is out: still one lookup
        assert cache.cached("orders", NS) == OLD
        assert await cache.resolve("orders", NS) == OLD
    await until(lambda: len(resolver.calls) == 2)
    assert len(resolver.calls) == 2
    resolver.gate.set()
    await until(lambda: cache.cached("orders", NS) == NEW)
    assert len(resolver.calls) == 2
    assert cache.stats.misses == 1


async def test_failed_refresh_keeps_the_entry_and_waits_before_asking_again() -> None:
    clock = FakeClock()
    resolver = FakeResolver().script(
        "orders", Resolution(OLD, 10.0), ResolverUnavailable("down"), Resolution(NEW, 10.0)
    )
    cache = make(resolver, clock, min_ttl=1.0, refresh_ahead=0.5)
    await cache.resolve("orders", NS)
    clock.advance(5.0)
    assert cache.cached("orders", NS) == OLD
    await until(lambda: resolver.answered == 2)
    await asyncio.sleep(0)
    assert cache.stats.errors == 1
    for _ in range(3):  # within the hold: no new lookup
        assert cache.cached("orders", NS) == OLD
    await asyncio.sleep(0)
    assert len(resolver.calls) == 2
    clock.advance(1.0)
    assert cache.cached("orders", NS) == OLD
    await until(lambda: cache.cached("orders", NS) == NEW)
    assert len(resolver.calls) == 3


async def test_failed_background_refresh_is_not_reported_to_the_loop() -> None:
    """Nobody awaits a refresh; its failure must not surface as 'never retrieved'."""
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    clock = FakeClock()
    resolver = FakeResolver().script("orders", Resolution(OLD, 10.0), ResolverUnavailable("down"))
    cache = make(resolver, clock, refresh_ahead=0.5)
    await cache.resolve("orders", NS)
    clock.advance(5.0)
    cache.cached("orders", NS)
    await until(lambda: cache.stats.errors == 1)
    await asyncio.sleep(0)
    gc.collect()
    loop.set_exception_handler(None)
    assert reported == []


# -- single-flight and cancellation ---------------------------------------------------


async def test_concurrent_misses_share_one_lookup() -> None:
    resolver = FakeResolver().script("orders", Resolution(OLD, 10.0))
    resolver.gate = asyncio.Event()
    cache = make(resolver, FakeClock())
    waiters = [asyncio.ensure_future(cache.resolve("orders", NS)) for _ in range(100)]
    await until(lambda: len(resolver.calls) == 1)
    resolver.gate.set()
    assert await asyncio.gather(*waiters) == [OLD] * 100
    assert len(resolver.calls) == 1
    assert cache.stats == CacheStats(misses=100, lookups=1)


async def test_cancelled_waiter_does_not_cancel_the_shared_lookup() -> None:
    resolver = FakeResolver().script("orders", Resolution(OLD, 10.0))
    resolver.gate = asyncio.Event()
    cache = make(resolver, FakeClock())
    leaver = asyncio.ensure_future(cache.resolve("orders", NS))
    stayer = asyncio.ensure_future(cache.resolve("orders", NS))
    await until(lambda: len(resolver.calls) == 1)
    leaver.cancel()
    await asyncio.sleep(0)
    assert leaver.cancelled()
    resolver.gate.set()
    assert await stayer == OLD
    assert resolver.cancelled == 0
    assert len(resolver.calls) == 1


async def test_lookup_outlives_all_its_waiters_and_fills_the_cache() -> None:
    resolver = FakeResolver().script("orders", Resolution(OLD, 10.0))
    resolver.gate = asyncio.Event()
    cache = make(resolver, FakeClock())
    waiter = asyncio.ensure_future(cache.resolve("orders", NS))
    await until(lambda: len(resolver.calls) == 1)
    waiter.cancel()
    await asyncio.sleep(0)
    resolver.gate.set()
    await until(lambda: cache.cached("orders", NS) is not None)
    assert cache.cached("orders", NS) == OLD
    assert resolver.cancelled == 0


# -- negative answers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (ServiceNotFound("couldn't find service: ghost"), "couldn't find service: ghost"),
        (Resolution((), 30.0), "couldn't find service: ghost"),
    ],
    ids=["resolver-says-no", "empty-answer"],
)
async def test_not_found_is_cached_for_negative_ttl(answer: Answer, message: str) -> None:
    clock = FakeClock()
    resolver = FakeResolver().script("ghost", answer, Resolution(OLD, 10.0))
    cache = make(resolver, clock, negative_ttl=2.0)
    for _ in range(2):
        with pytest.raises(ServiceNotFound, match=message):
            await cache.resolve("ghost", NS)
    assert cache.cached("ghost", NS) is None
    clock.advance(1.9)
    with pytest.raises(ServiceNotFound):
        await cache.resolve("ghost", NS)
    assert len(resolver.calls) == 1
    assert cache.stats.negative_hits == 2

    clock.advance(0.1)
    assert await cache.resolve("ghost", NS) == OLD
    assert len(resolver.calls) == 2


async def test_not_found_reaches_every_concurrent_waiter() -> None:
    resolver = FakeResolver().script("ghost", ServiceNotFound("couldn't find service: ghost"))
    resolver.gate = asyncio.Event()
    cache = make(resolver, FakeClock())
    waiters = [asyncio.ensure_future(cache.resolve("ghost", NS)) for _ in range(10)]
    await until(lambda: len(resolver.calls) == 1)
    resolver.gate.set()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(o, ServiceNotFound) for o in outcomes)
    assert len(resolver.calls) == 1


async def test_not_found_replaces_an_old_good_answer() -> None:
    clock = FakeClock()
    resolver = FakeResolver().script(
        "orders", Resolution(OLD, 10.0), ServiceNotFound("couldn't find service: orders")
    )
    cache = make(resolver, clock, refresh_ahead=1.0)
    await cache.resolve("orders", NS)
    clock.advance(10.0)
    with pytest.raises(ServiceNotFound):
        await cache.resolve("orders", NS)
    assert cache.stats.stale_served == 0


# -- outages: stale-on-error, timeout --------------------------------------------------


@pytest.mark.parametrize(
    ("past_expiry", "serves_stale"),
    [(0.0, True), (29.9, True), (30.0, False), (500.0, False)],
    ids=["just-expired", "within-stale-limit", "at-stale-limit", "long-past"],
)
async def test_outage_serves_last_good_answer_within_stale_limit(
    past_expiry: float, serves_stale: bool
) -> None:
    clock = FakeClock()
    resolver = FakeResolver().script("orders", Resolution(OLD, 10.0), ResolverUnavailable("down"))
    cache = make(resolver, clock, stale_limit=30.0, refresh_ahead=1.0)
    await cache.resolve("orders", NS)
    clock.advance(10.0 + past_expiry)
    if serves_stale:
        assert await cache.resolve("orders", NS) == OLD
        assert cache.stats.stale_served == 1
    else:
        with pytest.raises(ResolverUnavailable, match="down"):
            await cache.resolve("orders", NS)
        assert cache.stats.stale_served == 0
        assert len(cache) == 0
    assert cache.stats.errors == 1


async def test_outage_without_a_previous_answer_raises_unavailable() -> None:
    resolver = FakeResolver().script("orders", ResolverUnavailable("registry unreadable"))
    cache = make(resolver, FakeClock())
    with pytest.raises(ResolverUnavailable, match="registry unreadable"):
        await cache.resolve("orders", NS)


async def test_resolver_bug_becomes_unavailable() -> None:
    resolver = FakeResolver().script("orders", KeyError("oops"))
    cache = make(resolver, FakeClock())
    with pytest.raises(ResolverUnavailable, match="oops"):
        await cache.resolve("orders", NS)
    assert cache.stats.errors == 1


async def test_during_outage_stale_is_served_at_once_with_one_held_retry() -> None:
    clock = FakeClock()
    resolver = FakeResolver().script(
        "orders", Resolution(OLD, 10.0), ResolverUnavailable("down"), Resolution(NEW, 10.0)
    )
    cache = make(resolver, clock, min_ttl=1.0, refresh_ahead=1.0)
    await cache.resolve("orders", NS)
    clock.advance(10.0)
    assert await cache.resolve("orders", NS) == OLD  # waited for the failing lookup
    resolver.gate = asyncio.Event()
    for _ in range(3):  # within the hold: served without asking
        assert await cache.resolve("orders", NS) == OLD
    assert len(resolver.calls) == 2

    clock.advance(1.0)
    for _ in range(3):  # hold over: one retry in flight, callers don't wait for it
        assert await cache.resolve("orders", NS) == OLD
    await until(lambda: len(resolver.calls) == 3)
    await asyncio.sleep(0)
    assert len(resolver.calls) == 3
    resolver.gate.set()
    await until(lambda: cache.cached("orders", NS) == NEW)
    assert cache.stats.stale_served == 7


async def test_lookup_timeout_raises_unavailable() -> None:
    resolver = FakeResolver()
    resolver.gate = asyncio.Event()  # never set: the resolver never answers
    cache = make(resolver, FakeClock(), lookup_timeout=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ResolverUnavailable, match="timed out"):
        await cache.resolve("orders", NS)
    assert loop.time() - started < 0.5
    assert resolver.cancelled == 1
    assert cache.stats.errors == 1


async def test_lookup_timeout_falls_back_to_stale() -> None:
    clock = FakeClock()
    resolver = FakeResolver().script("orders", Resolution(OLD, 10.0))
    cache = make(resolver, clock, refresh_ahead=1.0, lookup_timeout=0.05)
    await cache.resolve("orders", NS)
    clock.advance(11.0)
    resolver.gate = asyncio.Event()
    assert await cache.resolve("orders", NS) == OLD
    assert cache.stats.stale_served == 1


# -- bounds and invalidation ----------------------------------------------------------


async def test_least_recently_used_entry_is_evicted() -> None:
    resolver = FakeResolver()
    cache = make(resolver, FakeClock(), max_entries=2)
    await cache.resolve("a", NS)
    await cache.resolve("b", NS)
    assert cache.cached("a", NS) is not None  # a is now more recent than b
    await cache.resolve("c", NS)
    assert len(cache) == 2
    assert cache.cached("b", NS) is None
    assert cache.cached("a", NS) is not None
    assert cache.cached("c", NS) is not None


async def test_invalidate_forces_a_new_lookup() -> None:
    resolver = FakeResolver().script("orders", Resolution(OLD, 10.0), Resolution(NEW, 10.0))
    cache = make(resolver, FakeClock())
    await cache.resolve("orders", NS)
    cache.invalidate("orders", NS)
    cache.invalidate("nobody", NS)  # unknown names are fine
    assert cache.cached("orders", NS) is None
    assert await cache.resolve("orders", NS) == NEW
    assert len(resolver.calls) == 2


# -- stats, repr, close -------------------------------------------------------------


async def test_stats_count_each_outcome_exactly() -> None:
    clock = FakeClock()
    resolver = (
        FakeResolver()
        .script("orders", Resolution(OLD, 10.0), ResolverUnavailable("down"))
        .script("ghost", ServiceNotFound("couldn't find service: ghost"))
    )
    cache = make(resolver, clock, refresh_ahead=1.0)
    await cache.resolve("orders", NS)  # miss, lookup
    cache.cached("orders", NS)  # hit
    await cache.resolve("orders", NS)  # hit
    with pytest.raises(ServiceNotFound):
        await cache.resolve("ghost", NS)  # miss, lookup
    with pytest.raises(ServiceNotFound):
        await cache.resolve("ghost", NS)  # negative hit
    clock.advance(10.0)
    await cache.resolve("orders", NS)  # miss, lookup, error, stale
    await cache.resolve("orders", NS)  # stale (held: no lookup)
    assert cache.stats == CacheStats(
        hits=2, misses=3, stale_served=2, negative_hits=1, lookups=3, errors=1
    )


async def test_repr_shows_size_and_counters() -> None:
    cache = make(FakeResolver(), FakeClock(), max_entries=8)
    await cache.resolve("orders", NS)
    cache.cached("orders", NS)
    assert repr(cache) == (
        "<ResolverCache entries=1/8 inflight=0 hits=1 misses=1 stale_served=0"
        " negative_hits=0 lookups=1 errors=0>"
    )
    cache.close()
    assert repr(cache).endswith(" closed>")


async def test_close_cancels_background_refresh() -> None:
    clock = FakeClock()
    resolver = FakeResolver()
    cache = make(resolver, clock, refresh_ahead=0.5, lookup_timeout=60.0)
    await cache.resolve("orders", NS)
    resolver.gate = asyncio.Event()
    clock.advance(20.0)
    cache.cached("orders", NS)
    await until(lambda: len(resolver.calls) == 2)
    await asyncio.wait_for(cache.aclose(), 1.0)
    assert resolver.cancelled == 1
    assert "inflight=0" in repr(cache)


async def test_close_releases_waiters_with_unavailable_and_refuses_new_lookups() -> None:
    resolver = FakeResolver()
    resolver.gate = asyncio.Event()
    cache = make(resolver, FakeClock(), lookup_timeout=60.0)
    waiter = asyncio.ensure_future(cache.resolve("orders", NS))
    await until(lambda: len(resolver.calls) == 1)
    cache.close()
    with pytest.raises(ResolverUnavailable, match="closed"):
        await asyncio.wait_for(waiter, 1.0)
    with pytest.raises(ResolverUnavailable, match="closed"):
        await cache.resolve("billing", NS)
