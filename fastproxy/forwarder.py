"""The one place that strings a forwarded exchange together.

`Forwarder.open` turns an `Invocation` plus the parsed request into an
`Exchange` (`RemoteExchange` for another app's sidecar): the upstream pool,
the rewritten head, the framing, and the resiliency policy of the target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from fastproxy.attempts import Attempts, PolicyMonitor
from fastproxy.config.model import HTTPEndpoint
from fastproxy.errors import ProxyError, invoke_failure
from fastproxy.exchange import Exchange
from fastproxy.remote_exchange import RemoteExchange
from fastproxy.resiliency.retry import BUILT_IN_SERVICE_RETRY, RetrySpec
from fastproxy.resiliency.spec import Resiliency
from fastproxy.routing import Invocation, TargetKind
from fastproxy.upstream.endpoint import Endpoint, endpoint_from_url, endpoint_headers
from fastproxy.upstream.pool import Pool, PoolLimits
from fastproxy.upstream.remote import RemoteApps
from fastproxy.wire import CHUNKED, COLON_SP, CRLF, Clock

if TYPE_CHECKING:
    from fastproxy.downstream.protocol import DownstreamProtocol

_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
MAX_URL_POOLS: Final = 256
_APP: Final = TargetKind.APP
_ENDPOINT: Final = TargetKind.ENDPOINT


class Forwarder:
    """Builds exchanges; owns the upstream pools (app channel, endpoints, URLs)."""

    __slots__ = (
        "_app_pool",
        "_endpoint_headers",
        "_endpoint_pools",
        "_make_pool",
        "_namespace",
        "_policy_monitor",
        "_remote_apps",
        "_remote_extra",
        "_resiliency",
        "_self_extra",
        "_url_pools",
        "app_id",
        "delivered_extra",
    )

    def __init__(
        self,
        app_id: str,
        namespace: str,
        app_endpoint: Endpoint | None,
        http_endpoints: Mapping[str, HTTPEndpoint],
        limits: PoolLimits,
        clock: Clock,
        app_api_token: str | None = None,
        remote_apps: RemoteApps | None = None,
        forwarded_lines: bytes = b"",
        resiliency: Resiliency | None = None,
        policy_monitor: PolicyMonitor | None = None,
    ) -> None:
        self.app_id = app_id
        self._resiliency = resiliency
        self._policy_monitor = policy_monitor
        self._namespace = namespace
        self._remote_apps = remote_apps

        def make_pool(endpoint: Endpoint) -> Pool:
            return Pool(endpoint, limits, clock)

        self._make_pool = make_pool
        self._app_pool = make_pool(app_endpoint) if app_endpoint is not None else None
        caller_lines = b"dapr-caller-app-id: %s\r\ndapr-caller-namespace: %s\r\n" % (
            app_id.encode(),
            namespace.encode(),
        )
        app_token_line = (
            b"dapr-api-token: " + app_api_token.encode() + CRLF if app_api_token else b""
        )
        callee_lines = b"dapr-callee-app-id: " + app_id.encode() + CRLF + app_token_line
        # Everything a self call adds to the head, computed once. A call that
        # another sidecar delivered keeps the caller headers that sidecar set.
        self._self_extra = caller_lines + callee_lines
        self.delivered_extra = callee_lines
        # What a call to another app's sidecar carries: who calls, and the
        # X-Forwarded-For / X-Forwarded-Host / Forwarded values of this host.
        self._remote_extra = caller_lines + forwarded_lines
        self._endpoint_pools: dict[str, Pool] = {}
        self._endpoint_headers: dict[str, tuple[bytes, frozenset[bytes]]] = {}
        for name, resource in http_endpoints.items():
            endpoint = endpoint_from_url(resource.base_url, resource)
            headers = endpoint_headers(resource)
            host = next((v for n, v in resource.headers if n.lower() == "host"), None)
            if host is not None:
                endpoint = dataclasses.replace(endpoint, host_override=host)
            self._endpoint_pools[name] = make_pool(endpoint)
            lines = b"".join(n + COLON_SP + v + CRLF for n, v in headers)
            names = frozenset(n.lower() for n, _ in headers)
            self._endpoint_headers[name] = (lines, names)
        self._url_pools: dict[tuple[str, str, int], Pool] = {}

    @property
    def pools(self) -> list[Pool]:
        pools = list(self._endpoint_pools.values()) + list(self._url_pools.values())
        if self._app_pool is not None:
            pools.append(self._app_pool)
        return pools

    def open(
        self,
        downstream: DownstreamProtocol,
        invocation: Invocation,
        method: bytes,
        query: bytes,
        headers: list[bytes],
        chunked_in: bool,
        keep_alive: bool,
        http10: bool,
        expect_continue: bool,
        delivered: bytes | None = None,
        trace_lines: bytes = b"",
    ) -> Exchange:
        """The exchange for an invocation; raises ProxyError when it cannot be made.

        `delivered` is None for a call from our own app. For a call another
        sidecar delivered to the internal listener, it holds the header lines the
        app receives about the call (`delivered_extra`, after the verified
        caller's lines under mTLS); such a call may only be for this sidecar's app.

        `headers` is the client's header block as a flat list (name, ": ",
        value, CRLF) after a free slot at index 0, which receives the request
        line; it is consumed. `trace_lines` (the request's trace context, when
        tracing is on) go after it.
        """
        kind = invocation.kind
        if kind is _APP:
            pool = self._app_pool
            if not invocation.is_self:
                if delivered is not None:
                    raise invoke_failure(
                        invocation.target, f"this sidecar serves {self.app_id!r} only"
                    )
                return self._open_remote(
                    downstream,
                    invocation,
                    method,
                    query,
                    headers,
                    chunked_in,
                    keep_alive,
                    http10,
                    expect_continue,
                    trace_lines,
                )
            if pool is None:
                raise self._no_route(invocation)
            extra = self._self_extra if delivered is None else delivered
        elif kind is _ENDPOINT:
            pool = self._endpoint_pools[invocation.target]
            extra, names = self._endpoint_headers[invocation.target]
            if names:
                headers = _without(headers, names)
        else:
            pool = self._url_pool(invocation.target)
            extra = b""
        path = pool.base_path + invocation.method if pool.base_path else invocation.method
        headers[0] = b"".join((method, b" ", path, query, pool.line_tail))
        headers.append(extra)
        if trace_lines:
            headers.append(trace_lines)
        if chunked_in:
            headers.append(CHUNKED)
        headers.append(CRLF)
        exchange = Exchange(
            downstream,
            pool,
            b"".join(headers),
            invocation.target,
            chunked_in,
            keep_alive,
            method == b"HEAD",
            http10,
            not chunked_in and method in _IDEMPOTENT,
            expect_continue,
        )
        if self._resiliency is not None:
            self._arm(exchange, invocation)
        return exchange

    def _built_in_retry(self, invocation: Invocation) -> RetrySpec | None:
        """Dapr's retry between sidecars, unless a policy names this target."""
        resiliency = self._resiliency
        if resiliency is None:
            return BUILT_IN_SERVICE_RETRY
        policy = resiliency.for_app(invocation.target)
        if policy is not None and policy.named_target:
            return None
        return resiliency.built_in_retry

    def _arm(self, exchange: Exchange, invocation: Invocation) -> None:
        """Put an exchange under the resiliency policy for its target, if any."""
        resiliency = self._resiliency
        assert resiliency is not None
        policy = resiliency.for_app(invocation.target)
        if policy is None:
            return
        breaker = None
        target = invocation.target
        if policy.breaker is not None:
            breakers = resiliency.breakers(target)
            if breakers is not None:
                # Dapr keeps one breaker per app and method.
                breaker = breakers.get(f"{target}:{invocation.method.decode()}")
        monitor = self._policy_monitor
        if monitor is not None:
            monitor.policy_executed(
                target,
                policy.timeout is not None,
                policy.retry is not None,
                "" if breaker is None else breaker.state.value,
            )
        exchange.arm(
            Attempts(policy.timeout, policy.retry, breaker, monitor, target),
            policy.retry is not None,
        )

    def _open_remote(
        self,
        downstream: DownstreamProtocol,
        invocation: Invocation,
        method: bytes,
        query: bytes,
        headers: list[bytes],
        chunked_in: bool,
        keep_alive: bool,
        http10: bool,
        expect_continue: bool,
        trace_lines: bytes,
    ) -> Exchange:
        """A call for another app: to its sidecar's internal listener, target made explicit."""
        remote_apps = self._remote_apps
        if remote_apps is None:
            raise self._no_route(invocation)
        remote = remote_apps.get(invocation.app_id, invocation.namespace)
        # The target as the client wrote it: the callee sidecar lives in the
        # namespace it was found in, so `b` means the same there, and its
        # errors name the app the way the client did.
        qualified = invocation.target.encode()
        headers[0] = b"".join(
            (
                method,
                b" /v1.0/invoke/",
                qualified,
                b"/method",
                invocation.method,
                query,
                b" HTTP/1.1\r\nHost: ",
                qualified,
                CRLF,
            )
        )
        headers.append(self._remote_extra)
        if trace_lines:
            headers.append(trace_lines)
        if chunked_in:
            headers.append(CHUNKED)
        headers.append(CRLF)
        exchange = RemoteExchange(
            downstream,
            remote,
            b"".join(headers),
            invocation.target,
            chunked_in,
            keep_alive,
            method == b"HEAD",
            http10,
            not chunked_in and method in _IDEMPOTENT,
            expect_continue,
        )
        if not chunked_in:
            exchange.built_in_retry = self._built_in_retry(invocation)
        if self._resiliency is not None:
            self._arm(exchange, invocation)
        return exchange

    def _no_route(self, invocation: Invocation) -> ProxyError:
        if not invocation.is_self:
            return invoke_failure(invocation.target, f"couldn't find service: {invocation.target}")
        return invoke_failure(
            invocation.target, "app channel is not initialized: no --app-port was given"
        )

    def _url_pool(self, target: str) -> Pool:
        try:
            endpoint = endpoint_from_url(target, None)
        except ValueError as exc:
            raise invoke_failure(target, str(exc)) from None
        key = (("https" if endpoint.tls else "http"), endpoint.host, endpoint.port)
        pool = self._url_pools.get(key)
        if pool is None:
            if len(self._url_pools) >= MAX_URL_POOLS:
                self._evict_unused_url_pools()
            pool = self._url_pools[key] = self._make_pool(endpoint)
        return pool

    def _evict_unused_url_pools(self) -> None:
        for key, pool in list(self._url_pools.items()):
            if pool.open_count == 0:
                del self._url_pools[key]
                pool.close()

    def close(self) -> None:
        for pool in self.pools:
            pool.close()


def _without(headers: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    """The header list without the named fields (index 0 is the request-line slot)."""
    kept: list[bytes] = [headers[0]]
    for i in range(1, len(headers), 4):
        if headers[i].lower() not in names:
            kept.extend(headers[i : i + 4])
    return kept
