"""An exchange whose upstream is another app's sidecar, picked per attempt.

Name lookup (through the resolver cache), balancing, ejection of sidecars
that cannot be reached, the callee's identity under mTLS, and Dapr's built-in
retry between sidecars live here; the body and response handling is
`Exchange`'s.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from fastproxy.attempts import BREAKER_OPEN
from fastproxy.discovery.model import Address, ResolverUnavailable, ServiceNotFound
from fastproxy.errors import ProxyError, invoke_failure
from fastproxy.exchange import Exchange
from fastproxy.resiliency.retry import RetrySpec
from fastproxy.upstream.connection import UpstreamConnection
from fastproxy.upstream.remote import RemoteApp

if TYPE_CHECKING:
    from fastproxy.downstream.protocol import DownstreamProtocol


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
        self._builtin_retries = 0
        self._choose(self._remote.cached())

    def _retries_keep_connection(self) -> bool:
        # A retry chooses an instance again: another may answer where this one failed.
        return False

    def _timed_out(self) -> None:
        # The instance is no longer busy with this request (not a sign it is down).
        if not (self.cancelled or self.response_done):
            self._done_with_address(None)
        super()._timed_out()

    def _forget_waiting(self) -> None:
        if self._resolving is not None:
            self._resolving.cancel()
            self._resolving = None
        if self._wait is not None:
            self._wait.cancel()
            self._wait = None
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

        True when another round was scheduled; nothing of the request was sent
        in this round. The built-in retry runs inside one policy attempt (Dapr
        stacks Default* policies on top of it); a named target policy replaces it.
        """
        spec = self.built_in_retry
        if spec is None or not spec.allows(self._builtin_retries):
            return self._attempts is not None and self._attempt_failed()
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
