"""The one place that strings a forwarded exchange together.

`Forwarder.open` turns an `Invocation` plus the parsed request into an
`Exchange`: the upstream pool, the rewritten head, the framing. The
`Exchange` then carries the body to the upstream and the response back,
with flow control on both legs, and decides about the connection at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from fastproxy.attempts import BREAKER_OPEN, TIMED_OUT, Attempts
from fastproxy.config.model import HTTPEndpoint
from fastproxy.discovery.model import Address, ResolverUnavailable, ServiceNotFound
from fastproxy.errors import ProxyError, invoke_failure
from fastproxy.resiliency.retry import BUILT_IN_SERVICE_RETRY, RetrySpec
from fastproxy.resiliency.spec import Resiliency
from fastproxy.routing import Invocation, TargetKind
from fastproxy.upstream.connection import UpstreamConnection
from fastproxy.upstream.endpoint import Endpoint, endpoint_from_url, endpoint_headers
from fastproxy.upstream.pool import Pool, PoolLimits
from fastproxy.upstream.remote import RemoteApp, RemoteApps
from fastproxy.wire import CHUNKED, COLON_SP, CRLF, LAST_CHUNK, Clock

if TYPE_CHECKING:
    from fastproxy.downstream.protocol import DownstreamProtocol

_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Request bytes kept for one replay on a fresh connection when a reused
# keep-alive connection turns out to have been closed by the upstream.
REPLAY_LIMIT: Final = 64 * 1024
# Body bytes buffered while no upstream connection is attached yet.
PENDING_HIGH_WATER: Final = 64 * 1024
MAX_URL_POOLS: Final = 256
_APP: Final = TargetKind.APP
_ENDPOINT: Final = TargetKind.ENDPOINT


class Exchange:
    """One forwarded request: client body → upstream, upstream response → client."""

    # Set from the start for a call to a known upstream; a `RemoteExchange` sets
    # it only once it has picked an instance.
    _pool: Pool

    __slots__ = (
        "_attempts",
        "_between_attempts",
        "_body_received",
        "_buffered",
        "_chunked_in",
        "_conn",
        "_discarding",
        "_downstream",
        "_head",
        "_pending",
        "_pool",
        "_replay",
        "_retried",
        "_status",
        "_target",
        "cancelled",
        "client",
        "expect_continue",
        "http10",
        "is_head",
        "keep_alive",
        "request_done",
        "request_sent",
        "resilient",
        "response_done",
        "response_started",
    )

    def __init__(
        self,
        downstream: DownstreamProtocol,
        pool: Pool | None,
        head: bytes,
        target: str,
        chunked_in: bool,
        keep_alive: bool,
        is_head: bool,
        http10: bool,
        replayable: bool,
        expect_continue: bool,
    ) -> None:
        self._downstream = downstream
        assert downstream.transport is not None
        self.client: asyncio.Transport = downstream.transport
        if pool is not None:
            self._pool = pool
        self._head = head
        self._target = target
        self._chunked_in = chunked_in
        self._conn: UpstreamConnection | None = None
        self._pending: list[bytes] | None = None
        self._buffered = 0
        self._body_received = 0
        self._replay: list[bytes] | None = [head] if replayable else None
        self._retried = False
        self.keep_alive = keep_alive
        self.is_head = is_head
        self.http10 = http10
        self.expect_continue = expect_continue
        self.cancelled = False
        self.request_done = False
        self.request_sent = False
        self.response_started = False
        self.response_done = False
        # Resiliency (see `arm`): off unless a policy applies to the target.
        self.resilient = False
        self._attempts: Attempts | None = None
        self._between_attempts = False
        self._discarding = False
        self._status = 0

    def arm(self, attempts: Attempts, retries: bool) -> None:
        """Put the exchange under a resiliency policy (before it starts).

        With retries, a request whose body has a known length is kept (up to
        REPLAY_LIMIT) so it can be sent again; a streamed body never is.
        """
        self.resilient = True
        self._attempts = attempts
        if retries and not self._chunked_in and self._replay is None:
            self._replay = [self._head]

    def __repr__(self) -> str:
        return (
            f"<Exchange {self._target} via {self._pool.name}"
            f" request_done={self.request_done} response_started={self.response_started}"
            f" response_done={self.response_done}>"
        )

    # -- driven by the downstream connection ------------------------------

    def start(self) -> None:
        if self.expect_continue and not self.request_done:
            self._downstream.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._attempts is not None and not self._attempts.begin(self._timed_out):
            self._fail(invoke_failure(self._target, BREAKER_OPEN))
            return
        conn = self._pool.acquire(self)
        if conn is None:
            if not self.cancelled and not self.request_done:
                self._pending = []
            return
        if self._pending:
            # A pipelined request whose body arrived before its turn.
            self.attach(conn)
            return
        # An idle pooled connection and nothing buffered: the common case, inline.
        self._conn = conn
        conn.attach(self, self._head)
        if self.request_done:
            self.request_sent = True

    def on_body(self, body: bytes) -> None:
        self._body_received += len(body)
        if self._chunked_in:
            parts: tuple[bytes, ...] = (b"%x\r\n" % len(body), body, CRLF)
        else:
            parts = (body,)
        replay = self._replay
        if replay is not None:
            if self._body_received > REPLAY_LIMIT:
                self._replay = None
            else:
                replay.extend(parts)
        conn = self._conn
        if conn is not None:
            conn.writelines(parts)
        elif self._pending is not None:
            self._pending.extend(parts)
            self._buffered += len(body)
            if self._buffered > PENDING_HIGH_WATER:
                self._downstream.pause_for_upstream(True)
        elif self.cancelled or self.response_started:
            return  # the upstream already answered or failed: the rest is discarded
        else:
            self._pending = list(parts)
            self._buffered = len(body)

    def on_request_complete(self) -> None:
        self.request_done = True
        if self._chunked_in:
            if self._replay is not None:
                self._replay.append(LAST_CHUNK)
            if self._conn is not None:
                self._conn.write(LAST_CHUNK)
            elif not (self.cancelled or self.response_started):
                if self._pending is None:
                    self._pending = []
                self._pending.append(LAST_CHUNK)
        if self._conn is not None:
            self.request_sent = True

    def cancel(self) -> None:
        """The client went away or broke its request: drop the upstream side."""
        self.cancelled = True
        if self._attempts is not None:
            self._attempts.cancel()
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.abandon()
        else:
            self._pool.forget(self)

    # -- driven by the pool and the upstream connection -------------------

    def attach(self, conn: UpstreamConnection) -> None:
        if self.cancelled or self.response_done or self._between_attempts or self._conn:
            # Late: a dial for an attempt that already timed out or found a connection.
            self._pool.release(conn)
            return
        self._conn = conn
        pending = self._pending
        if pending:
            self._pending = None
            conn.attach(self)
            conn.writelines([self._head, *pending])
            if self._buffered > PENDING_HIGH_WATER:
                self._downstream.pause_for_upstream(False)
            self._buffered = 0
        else:
            self._pending = None
            conn.attach(self, self._head)
        if self.request_done:
            self.request_sent = True

    def connect_failed(self, reason: str) -> None:
        if self.cancelled or self.response_done or self._between_attempts or self._conn:
            return
        if self._attempts is not None and self._attempt_failed():
            return
        self._fail(invoke_failure(self._target, reason))

    def upstream_failed(self, reason: str, got_response_bytes: bool) -> None:
        conn = self._conn
        self._conn = None
        if self.cancelled:
            return
        if self.response_started:
            if self._attempts is not None:
                self._attempts.end(False)
            self._downstream.abort()
            return
        if self._attempts is not None and self._attempt_failed():
            return
        replay = self._replay
        if (
            not got_response_bytes
            and not self._retried
            and replay is not None
            and conn is not None
            and conn.requests_served > 0
        ):
            # A reused keep-alive connection the upstream had already closed.
            self._retried = True
            self._pending = replay[1:]
            self._buffered = 0
            fresh = self._pool.acquire(self, fresh=True)
            if fresh is not None:
                self.attach(fresh)
            return
        self._fail(invoke_failure(self._target, reason))

    def upstream_paused(self, paused: bool) -> None:
        self._downstream.pause_for_upstream(paused)

    def response_finished(self, conn: UpstreamConnection, reusable: bool) -> None:
        self._conn = None
        if reusable:
            self._pool.release(conn)
        if self._attempts is not None and self._attempt_answered():
            return
        self.response_done = True
        self._downstream.response_finished(self)

    # -- resiliency (only with a policy: see `arm`) -------------------------

    def on_status(self, status: int) -> bool:
        """The upstream's status for this attempt; True: drop this answer, another follows.

        Only failures the retry policy names are dropped, and only while the
        request can be sent again whole; the last attempt's answer always
        reaches the client unchanged.
        """
        self._status = status
        attempts = self._attempts
        if attempts is None or not attempts.retries_status(status) or not self._replayable():
            return False
        if not attempts.may_retry():
            return False
        self._discarding = True
        return True

    def _replayable(self) -> bool:
        return self._replay is not None and self.request_done and not self.response_started

    def _attempt_answered(self) -> bool:
        """The attempt's response ended; True when it was dropped and a retry is due."""
        attempts = self._attempts
        assert attempts is not None
        attempts.end(200 <= self._status < 400)
        if not self._discarding:
            return False
        self._discarding = False
        self._wait_and_retry(attempts)
        return True

    def _attempt_failed(self) -> bool:
        """A transport failure ended the attempt; True when a retry is due."""
        attempts = self._attempts
        assert attempts is not None
        attempts.end(False)
        if not (self._replayable() and attempts.may_retry()):
            return False
        self._wait_and_retry(attempts)
        return True

    def _timed_out(self) -> None:
        """The attempt outlived the policy's timeout: its connection is never reused."""
        attempts = self._attempts
        if attempts is None or self.cancelled or self.response_done:
            return
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.abandon()
        elif not self._between_attempts:
            self._forget_waiting()
        self._discarding = False
        if self.response_started:
            attempts.end(False)
            self._downstream.abort()
            return
        if self._attempt_failed():
            return
        self._fail(invoke_failure(self._target, TIMED_OUT))

    def _forget_waiting(self) -> None:
        self._pool.forget(self)

    def _wait_and_retry(self, attempts: Attempts) -> None:
        self._between_attempts = True
        attempts.retry_later(self._retry_now)

    def _retry_now(self) -> None:
        attempts = self._attempts
        self._between_attempts = False
        if attempts is None or self.cancelled or self.response_done:
            return
        replay = self._replay
        assert replay is not None
        self._pending = replay[1:]
        self._buffered = 0
        if not attempts.begin(self._timed_out):
            self._fail(invoke_failure(self._target, BREAKER_OPEN))
            return
        self._next_attempt()

    def _next_attempt(self) -> None:
        conn = self._pool.acquire(self)
        if conn is not None:
            self.attach(conn)

    def set_client_paused(self, paused: bool) -> None:
        """The client stopped reading (or resumed): stop reading the upstream too."""
        if self._conn is not None:
            self._conn.set_reading_paused(paused)

    def _fail(self, error: ProxyError) -> None:
        self._pending = None
        self._replay = None
        self.response_started = True
        self._downstream.reply_error(self, error)


class RemoteExchange(Exchange):
    """An exchange whose upstream is another app's sidecar, chosen per attempt.

    The sidecar is picked when the exchange starts (after a name lookup when
    the cache has no answer yet); a sidecar that cannot be reached is ejected
    and the next one tried, as long as nothing of the request was sent.
    """

    __slots__ = (
        "_abandoned_dial",
        "_address",
        "_builtin_retries",
        "_chosen",
        "_last_error",
        "_remote",
        "_resolving",
        "_tried",
        "_wait",
        "built_in_retry",
    )

    def __init__(
        self,
        downstream: DownstreamProtocol,
        remote: RemoteApp,
        head: bytes,
        target: str,
        chunked_in: bool,
        keep_alive: bool,
        is_head: bool,
        http10: bool,
        replayable: bool,
        expect_continue: bool,
    ) -> None:
        # The pool is only known once a sidecar is picked (see _choose).
        super().__init__(
            downstream,
            None,
            head,
            target,
            chunked_in,
            keep_alive,
            is_head,
            http10,
            replayable,
            expect_continue,
        )
        self._remote = remote
        self._address: Address | None = None
        self._tried: list[Address] = []
        self._resolving: asyncio.Future[None] | None = None
        self._abandoned_dial: Address | None = None
        self._chosen = False
        self._last_error = ""
        # Dapr's built-in retry when no sidecar of the app can be reached (set by
        # the forwarder; None for streamed bodies and targets a named policy covers).
        self.built_in_retry: RetrySpec | None = None
        self._builtin_retries = 0
        self._wait: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return (
            f"<RemoteExchange {self._target} at {self._address} tried={len(self._tried)}"
            f" request_done={self.request_done} response_done={self.response_done}>"
        )

    def start(self) -> None:
        if self.expect_continue and not self.request_done:
            self._downstream.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._pending is None and not self.request_done:
            self._pending = []
        if self._attempts is not None and not self._attempts.begin(self._timed_out):
            self._fail(invoke_failure(self._target, BREAKER_OPEN))
            return
        self._choose(self._remote.cached())

    def _next_attempt(self) -> None:
        self._tried = []
        self._choose(self._remote.cached())

    def _forget_waiting(self) -> None:
        if self._resolving is not None:
            self._resolving.cancel()
            self._resolving = None
        if self._chosen:
            self._pool.forget(self)

    def _choose(self, addresses: tuple[Address, ...] | None) -> None:
        if self.cancelled or self.response_started:
            return
        if addresses is None:
            self._resolving = asyncio.ensure_future(self._resolve())
            return
        address = self._remote.pick(addresses, self._tried)
        if address is None:
            self._remote.forget()
            if self._retry_unreachable():
                return
            reason = f"no instance of {self._target} could be reached"
            if self._last_error:
                reason += f" (last error: {self._last_error})"
            self._fail(invoke_failure(self._target, reason))
            return
        self._address = address
        self._pool = self._remote.pool(address)
        self._chosen = True
        self._remote.started(address)
        conn = self._pool.acquire(self)
        if conn is not None:
            self.attach(conn)

    def _retry_unreachable(self) -> bool:
        """Every instance refused: wait, look the app up again and retry, as daprd does.

        True when another round was scheduled (by the policy, or else by the
        built-in retry); nothing of the request was sent in this round.
        """
        if self._attempts is not None:
            return self._attempt_failed()
        spec = self.built_in_retry
        if spec is None or not spec.allows(self._builtin_retries):
            return False
        self._builtin_retries += 1
        delay = spec.delay(self._builtin_retries, random.random)
        self._wait = asyncio.get_running_loop().call_later(delay, self._after_wait)
        return True

    def _after_wait(self) -> None:
        self._wait = None
        if self.cancelled or self.response_started:
            return
        self._tried = []
        self._choose(self._remote.cached())

    async def _resolve(self) -> None:
        try:
            addresses = await self._remote.resolve()
        except ServiceNotFound:
            self._fail(invoke_failure(self._target, f"couldn't find service: {self._target}"))
            return
        except ResolverUnavailable as exc:
            self._fail(invoke_failure(self._target, f"name resolution failed: {exc}"))
            return
        self._choose(addresses)

    def _done_with_address(self, ok: bool | None) -> None:
        address = self._address
        if address is not None:
            self._address = None
            self._remote.finished(address, ok)

    def attach(self, conn: UpstreamConnection) -> None:
        # Under mTLS the callee must prove it is the app we meant: a registry or
        # DNS answer pointing elsewhere must not receive the call.
        if conn.pool.endpoint.tls is not None and not self._remote.is_served_by(conn.peer):
            conn.close()
            self.connect_failed(
                f"the sidecar at {conn.pool.name} is {conn.peer or 'not identified'},"
                f" not {self._remote.app_id} in namespace {self._remote.namespace}"
            )
            return
        super().attach(conn)

    def connect_failed(self, reason: str) -> None:
        if self.cancelled or self.response_done:
            # The client is gone, but the dial still says the instance is unreachable.
            if self._abandoned_dial is not None:
                self._remote.unreachable(self._abandoned_dial)
                self._abandoned_dial = None
            return
        if self._between_attempts or self._conn is not None:
            return  # a dial for an attempt that is already over
        # Nothing was sent: another instance may take the request.
        if self._address is not None:
            self._tried.append(self._address)
        self._done_with_address(False)
        self._last_error = reason
        self._choose(self._remote.cached())

    def upstream_failed(self, reason: str, got_response_bytes: bool) -> None:
        self._done_with_address(False)
        super().upstream_failed(reason, got_response_bytes)

    def response_finished(self, conn: UpstreamConnection, reusable: bool) -> None:
        self._done_with_address(True)
        super().response_finished(conn, reusable)

    def cancel(self) -> None:
        if self._resolving is not None:
            self._resolving.cancel()
        if self._wait is not None:
            self._wait.cancel()
            self._wait = None
        if self._conn is None:
            self._abandoned_dial = self._address
        self._done_with_address(None)
        if not self._chosen:
            self.cancelled = True
            if self._attempts is not None:
                self._attempts.cancel()
            return
        super().cancel()

    def _fail(self, error: ProxyError) -> None:
        self._done_with_address(False)
        super()._fail(error)


class Forwarder:
    """Builds exchanges; owns the upstream pools (app channel, endpoints, URLs)."""

    __slots__ = (
        "_app_pool",
        "_endpoint_headers",
        "_endpoint_pools",
        "_make_pool",
        "_namespace",
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
    ) -> None:
        self.app_id = app_id
        self._resiliency = resiliency
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
    ) -> Exchange:
        """The exchange for an invocation; raises ProxyError when it cannot be made.

        `delivered` is None for a call from our own app. For a call another
        sidecar delivered to the internal listener, it holds the header lines the
        app receives about the call (`delivered_extra`, after the verified
        caller's lines under mTLS); such a call may only be for this sidecar's app.

        `headers` is the client's header block as a flat list (name, ": ",
        value, CRLF) after a free slot at index 0, which receives the request
        line; it is consumed.
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
        endpoint = pool.endpoint
        path = endpoint.base_path + invocation.method if endpoint.base_path else invocation.method
        headers[0] = b"".join((method, b" ", path, query, pool.line_tail))
        headers.append(extra)
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
        if policy.breaker is not None:
            breakers = resiliency.breakers(invocation.target)
            if breakers is not None:
                # Dapr keeps one breaker per app and method.
                breaker = breakers.get(f"{invocation.target}:{invocation.method.decode()}")
        exchange.arm(Attempts(policy.timeout, policy.retry, breaker), policy.retry is not None)

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
