"""The one cache in front of every resolver: app id and namespace to addresses.

Requests read it synchronously (`cached`); a miss costs one lookup shared by all
who wait for that name. It also refreshes hot names early and rides out an outage.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from fastproxy.discovery.model import (
    Address,
    Resolver,
    ResolverUnavailable,
    ServiceNotFound,
)

_Key = tuple[str, str]  # (app_id, namespace)
_NEVER = float("inf")


@dataclass(slots=True)
class CacheStats:
    """Counters for metrics and tests.

    A `None` from `cached` is not a miss: the `resolve` that follows counts it,
    so each request is counted once whichever of the two paths served it.
    """

    hits: int = 0  # fresh answers handed out
    misses: int = 0  # callers that had to wait for a lookup
    stale_served: int = 0  # expired answers handed out because the source was down
    negative_hits: int = 0  # "no such app" answered from the cache
    lookups: int = 0  # calls made to the resolver
    errors: int = 0  # lookups that ended without an answer (down, timeout)


@dataclass(slots=True)
class _Entry:
    """One name's last answer and the instants that govern it, on the cache's clock.

    Decisions take `now` as an argument, so they are pure and tested without a loop.
    A refusal (`not_found` set) has no addresses and is never served stale.
    """

    addresses: tuple[Address, ...]
    expires: float
    refresh_at: float  # from here on, a read starts a background lookup
    stale_until: float  # after this, the answer is too old to serve even in an outage
    not_found: str | None = None  # the message of an authoritative "no such app"
    failing: bool = False  # the last lookup for this name found the source down

    @classmethod
    def answer(
        cls,
        addresses: tuple[Address, ...],
        now: float,
        ttl: float,
        refresh_ahead: float,
        stale_limit: float,
    ) -> _Entry:
        expires = now + ttl
        return cls(addresses, expires, now + ttl * refresh_ahead, expires + stale_limit)

    @classmethod
    def refusal(cls, message: str, now: float, ttl: float) -> _Entry:
        expires = now + ttl
        return cls((), expires, _NEVER, expires, not_found=message)

    def is_fresh(self, now: float) -> bool:
        return now < self.expires

    def needs_refresh(self, now: float) -> bool:
        return self.not_found is None and now >= self.refresh_at

    def usable_stale(self, now: float) -> bool:
        return self.not_found is None and now < self.stale_until

    def lookup_failed(self, now: float, hold: float) -> None:
        # Pushing `refresh_at` back keeps a down server from being asked once per
        # request: the next attempt waits `hold`, however many reads come first.
        self.failing = True
        self.refresh_at = now + hold


class ResolverCache:
    """TTL cache over a `Resolver`, with single-flight lookups and stale-on-error.

    Lookups run as tasks owned by the cache, not by any caller: a caller that is
    cancelled stops waiting, while the lookup goes on for the others and still
    fills the cache. At most one lookup per name is in flight at any time, whether
    a caller or a refresh started it.
    """

    __slots__ = (
        "_clock",
        "_closed",
        "_entries",
        "_inflight",
        "_lookup_timeout",
        "_max_entries",
        "_max_ttl",
        "_min_ttl",
        "_negative_ttl",
        "_refresh_ahead",
        "_resolver",
        "_stale_limit",
        "stats",
    )

    def __init__(
        self,
        resolver: Resolver,
        clock: Callable[[], float],
        *,
        min_ttl: float = 1.0,
        max_ttl: float = 300.0,
        negative_ttl: float = 2.0,
        stale_limit: float = 300.0,
        refresh_ahead: float = 0.8,
        max_entries: int = 4096,
        lookup_timeout: float = 5.0,
    ) -> None:
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError(f"need 0 <= min_ttl <= max_ttl, got {min_ttl}, {max_ttl}")
        if negative_ttl < 0 or stale_limit < 0:
            raise ValueError("negative_ttl and stale_limit must not be negative")
        if not 0 < refresh_ahead <= 1:
            raise ValueError(f"refresh_ahead must be in (0, 1], got {refresh_ahead}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if lookup_timeout <= 0:
            raise ValueError(f"lookup_timeout must be positive, got {lookup_timeout}")
        self._resolver = resolver
        self._clock = clock
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._stale_limit = stale_limit
        self._refresh_ahead = refresh_ahead
        self._max_entries = max_entries
        self._lookup_timeout = lookup_timeout
        # Insertion order is recency order: reads move a key to the end, and
        # eviction pops from the front.
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._inflight: dict[_Key, asyncio.Task[tuple[Address, ...]]] = {}
        self._closed = False
        self.stats = CacheStats()

    def __repr__(self) -> str:
        s = self.stats
        state = " closed" if self._closed else ""
        return (
            f"<ResolverCache entries={len(self._entries)}/{self._max_entries}"
            f" inflight={len(self._inflight)} hits={s.hits} misses={s.misses}"
            f" stale_served={s.stale_served} negative_hits={s.negative_hits}"
            f" lookups={s.lookups} errors={s.errors}{state}>"
        )

    def __len__(self) -> int:
        return len(self._entries)

    # -- the per-request path ---------------------------------------------------

    def cached(self, app_id: str, namespace: str) -> tuple[Address, ...] | None:
        """Fresh addresses without an `await`, or None: then call `resolve`.

        Past `refresh_ahead` of its TTL an entry is still handed out, and one
        background lookup replaces it, so a name in steady use never expires
        under its callers.
        """
        key = (app_id, namespace)
        entry = self._entries.get(key)
        if entry is None or entry.not_found is not None:
            return None
        now = self._clock()
        if not entry.is_fresh(now):
            return None
        if entry.needs_refresh(now) and key not in self._inflight and not self._closed:
            self._start_lookup(key)
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry.addresses

    async def resolve(self, app_id: str, namespace: str) -> tuple[Address, ...]:
        """Addresses for the app, waiting at most `lookup_timeout` for the source.

        Raises `ServiceNotFound` (also from the negative cache) or
        `ResolverUnavailable` when there is neither an answer nor one young
        enough to serve stale.
        """
        found = self.cached(app_id, namespace)
        if found is not None:
            return found
        key = (app_id, namespace)
        entry = self._entries.get(key)
        if entry is not None:
            now = self._clock()
            if entry.not_found is not None and entry.is_fresh(now):
                self.stats.negative_hits += 1
                self._entries.move_to_end(key)
                # A new exception each time: a cached one would carry the
                # traceback of every earlier raise.
                raise ServiceNotFound(entry.not_found)
            if entry.failing and entry.usable_stale(now):
                # The source was down last time: don't make this caller wait for
                # it again; retry in the background when the hold has passed.
                if entry.needs_refresh(now) and key not in self._inflight and not self._closed:
                    self._start_lookup(key)
                return self._serve_stale(key, entry)
        self.stats.misses += 1
        task = self._inflight.get(key)
        if task is None:
            task = self._start_lookup(key)
        try:
            return await asyncio.shield(task)
        except ResolverUnavailable:
            entry = self._entries.get(key)
            if entry is not None and entry.usable_stale(self._clock()):
                return self._serve_stale(key, entry)
            raise
        except asyncio.CancelledError:
            # Only `close` cancels the lookup itself; if this caller was not
            # cancelled too, it is owed an error, not a cancellation.
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                raise ResolverUnavailable(f"lookup of {app_id!r} stopped: cache closed") from None
            raise

    def invalidate(self, app_id: str, namespace: str) -> None:
        """Forget a name, e.g. when every endpoint it gave has failed; the next read asks again."""
        self._entries.pop((app_id, namespace), None)

    def close(self) -> None:
        """Stop all lookups in flight; their waiters get `ResolverUnavailable`."""
        self._closed = True
        for task in list(self._inflight.values()):
            task.cancel()

    async def aclose(self) -> None:
        """`close`, then wait until the cancelled lookups have actually finished."""
        self.close()
        tasks = list(self._inflight.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- lookups ----------------------------------------------------------------

    def _serve_stale(self, key: _Key, entry: _Entry) -> tuple[Address, ...]:
        self.stats.stale_served += 1
        self._entries.move_to_end(key)
        return entry.addresses

    def _start_lookup(self, key: _Key) -> asyncio.Task[tuple[Address, ...]]:
        if self._closed:
            raise ResolverUnavailable(f"lookup of {key[0]!r} refused: cache closed")
        task = asyncio.get_running_loop().create_task(self._lookup(key))
        self._inflight[key] = task
        task.add_done_callback(partial(self._lookup_done, key))
        return task

    def _lookup_done(self, key: _Key, task: asyncio.Task[tuple[Address, ...]]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        # A background refresh has nobody awaiting it; reading the outcome here
        # keeps asyncio from reporting its failure as never retrieved.
        if not task.cancelled():
            task.exception()

    async def _lookup(self, key: _Key) -> tuple[Address, ...]:
        app_id, namespace = key
        self.stats.lookups += 1
        try:
            async with asyncio.timeout(self._lookup_timeout):
                resolution = await self._resolver.lookup(app_id, namespace)
        except ServiceNotFound as exc:
            self._refuse(key, str(exc))
            raise
        except ResolverUnavailable:
            self._failed(key)
            raise
        except TimeoutError:
            self._failed(key)
            raise ResolverUnavailable(
                f"lookup of {app_id!r} timed out after {self._lookup_timeout}s"
            ) from None
        except Exception as exc:
            # A resolver bug must end as an error response, not a crashed exchange.
            self._failed(key)
            raise ResolverUnavailable(f"lookup of {app_id!r} failed: {exc!r}") from exc
        if not resolution.addresses:
            message = f"couldn't find service: {app_id}"
            self._refuse(key, message)
            raise ServiceNotFound(message)
        ttl = min(max(resolution.ttl, self._min_ttl), self._max_ttl)
        entry = _Entry.answer(
            resolution.addresses, self._clock(), ttl, self._refresh_ahead, self._stale_limit
        )
        self._store(key, entry)
        return entry.addresses

    def _refuse(self, key: _Key, message: str) -> None:
        # An authoritative "no" replaces any old answer: that app is gone.
        self._store(key, _Entry.refusal(message, self._clock(), self._negative_ttl))

    def _failed(self, key: _Key) -> None:
        self.stats.errors += 1
        entry = self._entries.get(key)
        if entry is None:
            return
        now = self._clock()
        if entry.is_fresh(now) or entry.usable_stale(now):
            entry.lookup_failed(now, self._min_ttl)
        else:
            del self._entries[key]

    def _store(self, key: _Key, entry: _Entry) -> None:
        entries = self._entries
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > self._max_entries:
            entries.popitem(last=False)
