"""State shared by every connection of one sidecar: settings, router, pools, clock.

Built once at start; connections read it, never rebuild it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from fastproxy.config.model import Config, Resources
from fastproxy.discovery.cache import ResolverCache
from fastproxy.discovery.factory import build_name_resolution
from fastproxy.forwarder import Forwarder
from fastproxy.local import Metadata, local_reply, metadata_document
from fastproxy.observability.gauges import add_gauges
from fastproxy.observability.observer import Observer
from fastproxy.observability.wiring import Observability, build_observability, describe
from fastproxy.policy.acl import AccessControl, parse_access_control
from fastproxy.resiliency.breaker import BreakerState
from fastproxy.resiliency.spec import Resiliency, load_resiliency
from fastproxy.routing import LocalRoute, Router
from fastproxy.security.tls import MtlsContexts, MtlsSource
from fastproxy.upstream.endpoint import Endpoint
from fastproxy.upstream.pool import Pool, PoolLimits
from fastproxy.upstream.remote import PeerPools, RemoteApps
from fastproxy.wire import Clock

log = logging.getLogger("fastproxy")

if TYPE_CHECKING:
    from fastproxy.downstream.protocol import DownstreamProtocol
    from fastproxy.downstream.reply import LocalReply


class SidecarContext:
    __slots__ = (
        "_tls_error",
        "access_control",
        "acl_denials",
        "api_token",
        "breaker_states",
        "clock",
        "config",
        "connections",
        "draining",
        "forwarder",
        "max_header_count",
        "metadata",
        "mtls",
        "name_resolution",
        "observability",
        "observer",
        "peer_pools",
        "remote_apps",
        "resiliency",
        "resolver_cache",
        "resources",
        "router",
    )

    def __init__(self, config: Config, resources: Resources, clock: Clock) -> None:
        self.config = config
        self.resources = resources
        self.clock = clock
        self.api_token = config.api_token.encode() if config.api_token else None
        self.max_header_count = config.max_header_count
        self.connections: set[DownstreamProtocol] = set()
        self.draining = False
        # What the sidecar shows of itself; `observer` is None when all of it is off.
        self.observability: Observability = build_observability(
            config, resources.configuration, os.environ
        )
        self.observer: Observer | None = self.observability.observer
        endpoints = resources.http_endpoints
        self.router = Router(config.app_id, config.namespace, endpoints.keys())
        app_endpoint = None
        if config.app_port is not None:
            app_endpoint = Endpoint(config.app_channel_address, config.app_port)
        limits = PoolLimits(
            max_connections=config.upstream_max_connections,
            max_idle=config.upstream_max_idle,
            idle_timeout=config.upstream_idle_timeout,
            connect_timeout=config.upstream_connect_timeout,
        )
        self.name_resolution = build_name_resolution(
            resources.configuration, config.namespace, config.internal_port
        )
        self.resolver_cache = ResolverCache(
            self.name_resolution.resolver,
            time.monotonic,
            min_ttl=self.name_resolution.min_ttl,
            max_ttl=self.name_resolution.max_ttl,
        )
        # Who may call this app through the internal listener, and how callers prove it.
        self.access_control: AccessControl | None = parse_access_control(
            resources.configuration.get("accessControl")
        )
        self.acl_denials = 0
        self.breaker_states: dict[str, BreakerState] = {}
        source = MtlsSource.from_config(config)
        self.mtls = MtlsContexts(source) if source is not None else None
        self._tls_error: str | None = None
        self.peer_pools = PeerPools(
            lambda endpoint: Pool(endpoint, limits, clock),
            self.mtls.client_context() if self.mtls is not None else None,
        )
        self.resiliency: Resiliency | None = (
            load_resiliency(
                resources.resiliency, config.app_id, time.monotonic, self._breaker_changed
            )
            if resources.resiliency
            else None
        )
        self.remote_apps = RemoteApps(
            self.resolver_cache, self.peer_pools, self.name_resolution.load_balancing
        )
        self.forwarder = Forwarder(
            config.app_id,
            config.namespace,
            app_endpoint,
            endpoints,
            limits,
            clock,
            config.app_api_token,
            self.remote_apps,
            forwarded_lines(config.host_address),
            self.resiliency,
            self.observability.metrics,
        )
        self.metadata = Metadata(
            metadata_document(
                config.app_id, config.app_port, config.app_channel_address, list(endpoints)
            )
        )
        self._describe_security()
        if self.resiliency is not None:
            self.metadata.set_section("resiliency", self.resiliency.summary())
            if self.observability.metrics is not None:
                for name, namespace in self.resiliency.loaded():
                    self.observability.metrics.record_policy_loaded(name, namespace)
        self.metadata.set_section("observability", describe(self.observability))
        if self.observability.metrics is not None:
            add_gauges(self, self.observability.metrics)

    def local_reply(
        self,
        conn: DownstreamProtocol,
        route: LocalRoute,
        path: bytes,
        query: bytes,
        keep_alive: bool,
        expect_continue: bool = False,
        trace_lines: bytes = b"",
        timing_line: bytes = b"",
    ) -> LocalReply:
        return local_reply(
            self, conn, route, query, path, keep_alive, expect_continue, trace_lines, timing_line
        )

    def _describe_security(self) -> None:
        mtls: dict[str, object] = {"enabled": self.mtls is not None}
        if self.mtls is not None and self.mtls.identity is not None:
            mtls["identity"] = str(self.mtls.identity)
        self.metadata.set_section("mtls", mtls)
        acl: dict[str, object] = {"enabled": self.access_control is not None}
        if self.access_control is not None:
            acl.update(self.access_control.summary())
        acl["denied"] = self.acl_denials
        self.metadata.set_section("accessControl", acl)

    def record_denial(self, caller: str) -> None:
        """An ACL refused a call: counted, and shown in the metadata document and metrics."""
        self.acl_denials += 1
        self._describe_security()
        if self.observability.metrics is not None:
            self.observability.metrics.record_acl_denied(caller)

    def record_error_code(self, error_code: str) -> None:
        """The sidecar answered with a Dapr error body (counted when recordErrorCodes is on)."""
        if self.observability.metrics is not None:
            self.observability.metrics.record_error_code(error_code)

    def _breaker_changed(
        self, target: str, name: str, old: BreakerState, new: BreakerState
    ) -> None:
        log.warning("circuit breaker %s: %s -> %s", name, old.name.lower(), new.name.lower())
        self.breaker_states[name] = new
        if self.observability.metrics is not None:
            self.observability.metrics.policy_activated(target, "circuitbreaker", new.value)

    def reload_certificates(self) -> tuple[int, str] | None:
        """Re-read the mTLS files if they changed; (log level, line) when something happened."""
        mtls = self.mtls
        if mtls is None:
            return None
        if mtls.reload_if_changed():
            self.peer_pools.use_tls(mtls.client_context())
            self._describe_security()
            self._tls_error = None
            return logging.INFO, "reloaded the mTLS certificates"
        error = mtls.last_error
        if error is None or error == self._tls_error:
            return None
        self._tls_error = error
        return logging.WARNING, f"kept the previous mTLS certificates: {error}"

    def tick(self) -> None:
        """Once a second: refresh the clock, enforce client timeouts, age idle pools."""
        clock = self.clock
        clock.tick()
        now = clock.now
        for conn in list(self.connections):
            conn.check_timeouts(now)
        for pool in self.forwarder.pools:
            pool.sweep(now)
        for pool in self.peer_pools.pools:
            pool.sweep(now)

    async def close(self) -> None:
        """Close upstream pools and name resolution (the registry row goes too)."""
        self.forwarder.close()
        self.peer_pools.close()
        await self.resolver_cache.aclose()
        if self.observer is not None:
            await self.observer.close()
        registry = self.name_resolution.registry
        if registry is not None:
            await registry.stop()
        resolver = self.name_resolution.resolver
        close = getattr(resolver, "close", None)
        if close is not None and resolver is not registry:
            result = close()
            if asyncio.iscoroutine(result):
                await result


def forwarded_lines(host_address: str) -> bytes:
    """The X-Forwarded-For / X-Forwarded-Host / Forwarded values this sidecar appends."""
    hostname = socket.gethostname()
    node = f'"[{host_address}]"' if ":" in host_address else host_address
    return (
        f"X-Forwarded-For: {host_address}\r\n"
        f"X-Forwarded-Host: {hostname}\r\n"
        f"Forwarded: for={node};by={node};host={hostname}\r\n"
    ).encode("latin-1")
