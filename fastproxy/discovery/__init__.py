"""Discovery: app id and namespace to the addresses of that app's sidecars.

Resolvers (registry, DNS, static) answer lookups; one `ResolverCache` in front of
them decides how long answers live and makes sure each name is asked once at a time.
"""

from __future__ import annotations

from fastproxy.discovery.cache import CacheStats, ResolverCache
from fastproxy.discovery.model import (
    Address,
    DiscoveryError,
    Resolution,
    Resolver,
    ResolverUnavailable,
    ServiceNotFound,
)

__all__ = [
    "Address",
    "CacheStats",
    "DiscoveryError",
    "Resolution",
    "Resolver",
    "ResolverCache",
    "ResolverUnavailable",
    "ServiceNotFound",
]
