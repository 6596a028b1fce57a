"""One forwarded request: the client's body to the upstream, the response back.

An `Exchange` is made by `Forwarder.open` with its upstream pool and its
rewritten head. It streams the body with flow control on both legs, decides
about the connection at the end, and, under a resiliency policy, runs the
attempts (see `fastproxy.attempts`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from fastproxy.attempts import BREAKER_OPEN, TIMED_OUT, Attempts
from fastproxy.downstream.reply import RequestHandler
from fastproxy.errors import ProxyError, invoke_failure
from fastproxy.upstream.connection import UpstreamConnection
from fastproxy.upstream.pool import Pool
from fastproxy.wire import CRLF, LAST_CHUNK

if TYPE_CHECKING:
    from fastproxy.downstream.protocol import DownstreamProtocol

# Request bytes kept for one replay on a fresh connection when a reused
# keep-alive connection turns out to have been closed by the upstream, and
# for the retries of a resiliency policy.
REPLAY_LIMIT: Final = 64 * 1024
# Body bytes buffered while no upstream connection is attached yet.
PENDING_HIGH_WATER: Final = 64 * 1024


class Exchange(RequestHandler):
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
        "request_sent",
        "resilient",
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
        super().__init__(keep_alive, is_head)
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
        self.http10 = http10
        self.expect_continue = expect_continue
        self.cancelled = False
        self.request_sent = False
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
        if self.obs is not None:
            self.obs.mark_sent()
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
        if self.cancelled or self.response_done or self._between_attempts or self._conn is not None:
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
        if self.obs is not None:
            self.obs.mark_sent()

    def connect_failed(self, reason: str) -> None:
        if self.cancelled or self.response_done or self._between_attempts or self._conn is not None:
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
        replay = self._replay
        if (
            not got_response_bytes
            and not self._retried
            and replay is not None
            and conn is not None
            and conn.requests_served > 0
        ):
            # A reused keep-alive connection the upstream had already closed:
            # the same attempt goes on over a fresh one (its deadline still runs).
            self._retried = True
            self._discarding = False
            self._pending = replay[1:]
            self._buffered = 0
            fresh = self._pool.acquire(self, fresh=True)
            if fresh is not None:
                self.attach(fresh)
            return
        if self._attempts is not None and self._attempt_failed():
            return
        self._fail(invoke_failure(self._target, reason))

    def upstream_paused(self, paused: bool) -> None:
        self._downstream.pause_for_upstream(paused)

    def response_finished(self, conn: UpstreamConnection, reusable: bool) -> None:
        self._conn = None
        attempts = self._attempts
        if attempts is not None:
            attempts.end(200 <= self._status < 400)
            if self._discarding:
                # The answer was dropped: a retry is due.
                self._discarding = False
                self._retry(attempts, conn if reusable else None)
                return
        if reusable:
            self._pool.release(conn)
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
        self._discarding = (
            attempts is not None
            and attempts.retries_status(status)
            and self._replayable()
            and attempts.may_retry()
        )
        return self._discarding

    def _replayable(self) -> bool:
        return self._replay is not None and self.request_done and not self.response_started

    def _attempt_failed(self) -> bool:
        """A transport failure ended the attempt; True when a retry is due."""
        attempts = self._attempts
        assert attempts is not None
        attempts.end(False)
        # A response being dropped for a retry may die before its end: it is over.
        self._discarding = False
        if not (self._replayable() and attempts.may_retry()):
            return False
        self._retry(attempts, None)
        return True

    def _timed_out(self) -> None:
        """The attempt outlived the policy's timeout: its connection is never reused."""
        attempts = self._attempts
        if attempts is None or self.cancelled or self.response_done:
            return
        conn = self._conn
        self._conn = None
        if conn is not None:
            # A reset, not a close: a sidecar upstream must see the call cancelled
            # (a clean end of input would read as a half-close).
            conn.abandon(reset=True)
        elif not self._between_attempts:
            self._forget_waiting()
        if self.response_started:
            attempts.end(False)
            self._downstream.abort()
            return
        if self._attempt_failed():
            return
        self._fail(invoke_failure(self._target, TIMED_OUT))

    def _forget_waiting(self) -> None:
        self._pool.forget(self)

    def _retry(self, attempts: Attempts, kept: UpstreamConnection | None) -> None:
        """Send the request again after the policy's backoff.

        A retry due at once goes out on `kept`, the connection whose answer was
        just read to a clean end: it needs no dial and cannot queue behind new
        requests for a connection. A later one gives the connection back first.
        """
        delay = attempts.count_retry()
        if self.obs is not None:
            self.obs.retries += 1
        if kept is not None and delay <= 0 and self._retries_keep_connection():
            self._retry_now(kept)
            return
        if kept is not None:
            self._pool.release(kept)
        self._between_attempts = True
        attempts.call_after(delay, self._retry_later)

    def _retries_keep_connection(self) -> bool:
        return True

    def _retry_later(self) -> None:
        self._between_attempts = False
        self._retry_now(None)

    def _retry_now(self, kept: UpstreamConnection | None) -> None:
        attempts = self._attempts
        if attempts is None or self.cancelled or self.response_done:
            if kept is not None:
                self._pool.release(kept)
            return
        replay = self._replay
        assert replay is not None
        self._pending = replay[1:]
        self._buffered = 0
        if not attempts.begin(self._timed_out):
            if kept is not None:
                self._pool.release(kept)
            self._fail(invoke_failure(self._target, BREAKER_OPEN))
            return
        if kept is not None:
            self.attach(kept)
        else:
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
