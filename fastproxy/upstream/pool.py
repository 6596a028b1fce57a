"""Keep-alive connections to one upstream endpoint, within limits.

`acquire` is synchronous: an idle connection is handed out without an
`await`; only a new connection costs a task. Waiters beyond the connection
limit are served in arrival order as connections come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from fastproxy.upstream.connection import IDLE, UpstreamConnection
from fastproxy.upstream.endpoint import Endpoint
from fastproxy.wire import Clock


class Waiter(Protocol):
    """An exchange waiting for a connection (`exchange.Exchange`)."""

    def attach(self, conn: UpstreamConnection) -> None: ...
    def connect_failed(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_connections: int = 1024
    max_idle: int = 64
    idle_timeout: float = 30.0
    connect_timeout: float = 5.0


class Pool:
    __slots__ = (
        "_clock",
        "_dials",
        "_idle",
        "_loop",
        "_waiters",
        "address",
        "base_path",
        "closed",
        "endpoint",
        "host",
        "host_header",
        "limits",
        "line_tail",
        "name",
        "open_count",
        "port",
        "waits",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        limits: PoolLimits,
        clock: Clock,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.limits = limits
        self.name = endpoint.name
        # The peer as spans (host, port) and access logs (host:port) name it, read on
        # the request path: kept here, where reading them costs no attribute look-up.
        host = self.host = endpoint.host
        self.port = endpoint.port
        self.address = f"[{host}]:{endpoint.port}" if ":" in host else f"{host}:{endpoint.port}"
        self.host_header = endpoint.host_header
        # What the request target starts with (an HTTPEndpoint's path), and what
        # follows it in every head this pool sends.
        self.base_path = endpoint.base_path
        self.line_tail = b" HTTP/1.1\r\n" + endpoint.host_header
        self._clock = clock
        self._loop = loop or asyncio.get_running_loop()
        self._idle: list[UpstreamConnection] = []
        self._waiters: deque[Waiter] = deque()
        self._dials: set[asyncio.Future[None]] = set()
        self.open_count = 0
        self.waits = 0  # requests that queued for a connection, for metrics
        self.closed = False

    def __repr__(self) -> str:
        return (
            f"<Pool {self.name} open={self.open_count} idle={len(self._idle)}"
            f" waiting={len(self._waiters)}>"
        )

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def waiting_count(self) -> int:
        return len(self._waiters)

    def acquire(self, waiter: Waiter, fresh: bool = False) -> UpstreamConnection | None:
        """An idle connection now, or None and `waiter.attach` / `connect_failed` later."""
        if not fresh:
            idle = self._idle
            while idle:
                conn = idle.pop()
                if conn.state is IDLE:
                    return conn
        if self.open_count < self.limits.max_connections:
            self._dial(waiter)
        else:
            self.waits += 1
            self._waiters.append(waiter)
        return None

    def forget(self, waiter: Waiter) -> None:
        """A waiter gave up (its client went away)."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def release(self, conn: UpstreamConnection) -> None:
        """A connection whose response was read to its end, clean for reuse."""
        if conn.state is not IDLE:
            return
        if self._waiters:
            self._waiters.popleft().attach(conn)
            return
        if self.closed or len(self._idle) >= self.limits.max_idle:
            conn.close()
            return
        conn.idle_since = self._clock.now
        self._idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """Called once per connection when it closes."""
        self.open_count -= 1
        # Closed while idle, by the upstream or by us (sweep, stray bytes): never reuse.
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        if self._waiters and self.open_count < self.limits.max_connections and not self.closed:
            self._dial(self._waiters.popleft())

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than the idle timeout."""
        limit = now - self.limits.idle_timeout
        stale = [c for c in self._idle if c.idle_since < limit]
        for conn in stale:
            conn.close()

    def close(self) -> None:
        self.closed = True
        for conn in list(self._idle):
            conn.close()
        self._idle.clear()
        for dial in list(self._dials):
            dial.cancel()

    # -- dialing ------------------------------------------------------------

    def _dial(self, waiter: Waiter) -> None:
        self.open_count += 1
        dial = asyncio.ensure_future(self._connect(waiter), loop=self._loop)
        self._dials.add(dial)
        dial.add_done_callback(self._dials.discard)

    async def _connect(self, waiter: Waiter) -> None:
        endpoint = self.endpoint
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                _, protocol = await self._loop.create_connection(
                    cast("Callable[[], asyncio.Protocol]", lambda: UpstreamConnection(self)),
                    endpoint.host,
                    endpoint.port,
                    ssl=endpoint.tls,
                    server_hostname=endpoint.server_hostname if endpoint.tls else None,
                )
        except asyncio.CancelledError:
            self.open_count -= 1
            raise
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.open_count -= 1
            waiter.connect_failed(_describe_dial_error(endpoint, exc))
            return
        conn = cast(UpstreamConnection, protocol)
        if self.closed:
            conn.close()
            return
        waiter.attach(conn)


def _describe_dial_error(endpoint: Endpoint, exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"dial tcp {endpoint.host}:{endpoint.port}: i/o timeout"
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"dial tcp {endpoint.host}:{endpoint.port}: {detail or type(exc).__name__}"
