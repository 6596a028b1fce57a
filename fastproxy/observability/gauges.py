"""fastproxy's own state as metrics, read at scrape time so the request path records nothing.

Connections, pools, the resolver cache, breakers and the exporters already
keep their counts; these functions only read them when Prometheus asks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from fastproxy.observability.dapr_metrics import DaprMetrics
from fastproxy.observability.metrics import CounterFunc
from fastproxy.resiliency.breaker import BreakerState

if TYPE_CHECKING:
    from fastproxy.context import SidecarContext
    from fastproxy.upstream.pool import Pool

Series = Iterable[tuple[tuple[str, ...], float]]

# Prometheus has no enum type: a breaker's state as a number, as Envoy and others do.
BREAKER_STATE_VALUES: dict[BreakerState, float] = {
    BreakerState.CLOSED: 0.0,
    BreakerState.HALF_OPEN: 1.0,
    BreakerState.OPEN: 2.0,
}


def add_gauges(ctx: SidecarContext, metrics: DaprMetrics) -> None:
    """Register fastproxy's scrape-time series on `metrics`."""

    def pools() -> list[Pool]:
        return [*ctx.forwarder.pools, *ctx.peer_pools.pools]

    def connections() -> Series:
        return [((), float(len(ctx.connections)))]

    def pool_connections() -> Series:
        out: list[tuple[tuple[str, ...], float]] = []
        for pool in pools():
            out.append(((pool.name, "open"), float(pool.open_count)))
            out.append(((pool.name, "idle"), float(pool.idle_count)))
        return out

    def pool_waiting() -> Series:
        return [((pool.name,), float(pool.waiting_count)) for pool in pools()]

    def resolver_cache() -> Series:
        stats = ctx.resolver_cache.stats
        return [
            (("hit",), float(stats.hits)),
            (("miss",), float(stats.misses)),
            (("stale",), float(stats.stale_served)),
            (("negative",), float(stats.negative_hits)),
            (("lookup",), float(stats.lookups)),
            (("error",), float(stats.errors)),
        ]

    def ejections() -> Series:
        return [((app,), float(count)) for app, count in ctx.remote_apps.ejections()]

    def pool_waits() -> Series:
        return [((pool.name,), float(pool.waits)) for pool in pools()]

    def breakers() -> Series:
        return [
            ((name,), BREAKER_STATE_VALUES[state]) for name, state in ctx.breaker_states.items()
        ]

    def spans() -> Series:
        out: list[tuple[tuple[str, ...], float]] = []
        for exporter in ctx.observability.exporters:
            out.append(((exporter.url, "exported"), float(exporter.exported)))
            out.append(((exporter.url, "dropped"), float(exporter.dropped)))
        return out

    def access_log_dropped() -> Series:
        log = ctx.observability.access_log
        return [] if log is None else [((), float(log.dropped))]

    metrics.add_gauge("fastproxy_open_connections", "Client connections open now.", (), connections)
    metrics.add_gauge(
        "fastproxy_upstream_pool_connections",
        "Upstream connections per pool, open and idle.",
        ("pool", "state"),
        pool_connections,
    )
    metrics.add_gauge(
        "fastproxy_upstream_pool_waiting",
        "Requests waiting for an upstream connection, per pool.",
        ("pool",),
        pool_waiting,
    )
    metrics.add_gauge(
        "fastproxy_circuit_breaker_state",
        "Circuit breakers that changed state: 0 closed, 1 half-open, 2 open.",
        ("breaker",),
        breakers,
    )
    registry = metrics.registry
    registry.register(
        CounterFunc(
            "fastproxy_resolver_cache_total",
            "Name resolution cache answers by kind, and the lookups behind them.",
            ("result",),
            resolver_cache,
        )
    )
    registry.register(
        CounterFunc(
            "fastproxy_ejections_total",
            "Times an instance of a remote app was taken out of rotation after a failure.",
            ("app",),
            ejections,
        )
    )
    registry.register(
        CounterFunc(
            "fastproxy_upstream_pool_waits_total",
            "Requests that had to wait for an upstream connection (pool at its limit).",
            ("pool",),
            pool_waits,
        )
    )
    registry.register(
        CounterFunc(
            "fastproxy_spans_total",
            "Sampled spans per exporter: exported, or dropped (queue full, collector down).",
            ("exporter", "outcome"),
            spans,
        )
    )
    registry.register(
        CounterFunc(
            "fastproxy_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
            (),
            access_log_dropped,
        )
    )
