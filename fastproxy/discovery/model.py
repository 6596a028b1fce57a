"""The vocabulary every name-resolution component shares: addresses, answers, failures.

Resolvers (registry, DNS, static) speak it, the cache stores it, and the forwarder
maps its two failures to Dapr's `ERR_DIRECT_INVOKE` in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Address:
    """One endpoint of an app's sidecar; hashable so balancers can key state on it."""

    host: str
    port: int

    def __str__(self) -> str:
        # A bare IPv6 host would make the port ambiguous, as in a URL authority.
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Resolution:
    """A resolver's answer: where the app lives and for how long the source vouches for it.

    `ttl` is the source's own figure in seconds; the cache clamps it to its floor
    and ceiling, so resolvers report it unaltered.
    """

    addresses: tuple[Address, ...]
    ttl: float


class DiscoveryError(Exception):
    """Base of the failures a lookup can end with."""


class ServiceNotFound(DiscoveryError):
    """The source answered, authoritatively, that the app does not exist.

    Kept apart from `ResolverUnavailable` because it is an answer: it is cached
    (briefly), and it must not be papered over by serving an old address.
    """


class ResolverUnavailable(DiscoveryError):
    """No answer could be had: server down, lookup timed out, registry unreadable.

    Says nothing about the app, so a previous good answer may still be served.
    """


class Resolver(Protocol):
    """Where the cache gets answers; it adds TTL handling, single-flight and timeouts."""

    async def lookup(self, app_id: str, namespace: str) -> Resolution:
        """Raise `ServiceNotFound` for an unknown app, `ResolverUnavailable` otherwise."""
        ...
