"""Another app's sidecars: where they are (resolver cache), which one next (balancer),
and one keep-alive pool per sidecar.

A `RemoteApp` is shared by every exchange that targets the same app id and
namespace, so balancing and ejection see all of them.
"""

from __future__ import annotations

import dataclasses
import random
import ssl
import time
from collections.abc import Callable, Collection

from fastproxy.discovery.cache import ResolverCache
from fastproxy.discovery.model import Address
from fastproxy.security.identity import SpiffeId
from fastproxy.upstream.balancer import Balancer, make_balancer
from fastproxy.upstream.endpoint import Endpoint
from fastproxy.upstream.pool import Pool

# Pools to other sidecars kept at most; unused ones are closed beyond this.
MAX_PEER_POOLS = 1024
# Remote apps tracked at most (each holds balancer state).
MAX_REMOTE_APPS = 4096


class RemoteApp:
    __slots__ = ("_balancer", "_cache", "_peers", "app_id", "namespace")

    def __init__(
        self,
        app_id: str,
        namespace: str,
        cache: ResolverCache,
        balancer: Balancer[Address],
        peers: PeerPools,
    ) -> None:
        self.app_id = app_id
        self.namespace = namespace
        self._cache = cache
        self._balancer = balancer
        self._peers = peers

    def __repr__(self) -> str:
        return f"<RemoteApp {self.app_id}.{self.namespace} {self._balancer!r}>"

    @property
    def ejections(self) -> int:
        return self._balancer.ejector.ejections

    def is_served_by(self, peer: SpiffeId | None) -> bool:
        """Whether a sidecar with this verified identity serves this app."""
        return peer is not None and peer.app_id == self.app_id and peer.namespace == self.namespace

    def cached(self) -> tuple[Address, ...] | None:
        """The app's sidecars if the cache knows them now (no await)."""
        return self._cache.cached(self.app_id, self.namespace)

    async def resolve(self) -> tuple[Address, ...]:
        """Ask the resolver (one shared lookup); raises the discovery errors."""
        addresses = await self._cache.resolve(self.app_id, self.namespace)
        self._balancer.retain(addresses)
        return addresses

    def pick(self, addresses: tuple[Address, ...], tried: Collection[Address]) -> Address | None:
        """The next sidecar to try, never one already tried for this request."""
        return self._balancer.pick(addresses, tried)

    def pool(self, address: Address) -> Pool:
        return self._peers.pool(address)

    def forget(self) -> None:
        """Every sidecar failed: the next request asks the resolver again."""
        self._cache.invalidate(self.app_id, self.namespace)

    def unreachable(self, address: Address) -> None:
        """A dial to `address` failed after its request was abandoned."""
        self._balancer.failed(address)

    def started(self, address: Address) -> None:
        self._balancer.started(address)

    def finished(self, address: Address, ok: bool | None) -> None:
        """One attempt at `address` is over: it answered (True), failed (False),
        or was abandoned by the client (None: says nothing about the sidecar)."""
        self._balancer.finished(address)
        if ok is True:
            self._balancer.succeeded(address)
        elif ok is False:
            self._balancer.failed(address)


class PeerPools:
    """One pool per sidecar address, shared by every app that lives there.

    With mTLS on, every connection to another sidecar is TLS with our client
    certificate; `use_tls` swaps the context for connections dialed from then on
    (a rotated certificate), while open ones carry on.
    """

    __slots__ = ("_make_pool", "_pools", "_tls")

    def __init__(
        self, make_pool: Callable[[Endpoint], Pool], tls: ssl.SSLContext | None = None
    ) -> None:
        self._make_pool = make_pool
        self._pools: dict[Address, Pool] = {}
        self._tls = tls

    def pool(self, address: Address) -> Pool:
        pool = self._pools.get(address)
        if pool is None:
            if len(self._pools) >= MAX_PEER_POOLS:
                self._close_unused()
            endpoint = Endpoint(address.host, address.port, tls=self._tls)
            pool = self._pools[address] = self._make_pool(endpoint)
        return pool

    def use_tls(self, tls: ssl.SSLContext) -> None:
        """New connections to every sidecar use `tls` from now on."""
        self._tls = tls
        for pool in self._pools.values():
            pool.endpoint = dataclasses.replace(pool.endpoint, tls=tls)

    def _close_unused(self) -> None:
        for address, pool in list(self._pools.items()):
            if pool.open_count == 0:
                del self._pools[address]
                pool.close()

    @property
    def pools(self) -> list[Pool]:
        return list(self._pools.values())

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


class RemoteApps:
    """The `RemoteApp` for each (app id, namespace), created on first use."""

    __slots__ = ("_apps", "_balancing", "_cache", "_peers", "_rng")

    def __init__(
        self, cache: ResolverCache, peers: PeerPools, balancing: str, seed: int | None = None
    ) -> None:
        self._cache = cache
        self._peers = peers
        self._balancing = balancing
        self._rng = random.Random(seed)
        self._apps: dict[tuple[str, str], RemoteApp] = {}

    def ejections(self) -> list[tuple[str, int]]:
        """Per remote app (`app.namespace`): times one of its instances was ejected."""
        return [(f"{a}.{ns}", app.ejections) for (a, ns), app in self._apps.items()]

    def get(self, app_id: str, namespace: str) -> RemoteApp:
        key = (app_id, namespace)
        app = self._apps.get(key)
        if app is None:
            if len(self._apps) >= MAX_REMOTE_APPS:
                self._apps.clear()
            balancer: Balancer[Address] = make_balancer(self._balancing, time.monotonic, self._rng)
            app = self._apps[key] = RemoteApp(app_id, namespace, self._cache, balancer, self._peers)
        return app
