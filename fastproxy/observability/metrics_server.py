"""The Prometheus scrape endpoint: a small HTTP/1.1 server kept apart from the proxy's listeners.

daprd mounts its exporter at `/`, so every path answers, `/metrics` included.
Its connections share nothing with the proxy's but the event loop, so each is
held to a bounded request size, a bounded pipelining burst and an idle
timeout, and a failure while rendering becomes a 500 on that connection only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from email.utils import formatdate
from typing import Final, Protocol, cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)

log = logging.getLogger("fastproxy.metrics")

CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
# Head and body of one request; a scrape is a few hundred bytes.
MAX_REQUEST_BYTES: Final = 16 * 1024
# Requests answered from one read; more would let a client queue up renders.
MAX_BURST: Final = 8
# A connection that completes no request for this long is closed.
IDLE_TIMEOUT_SECONDS: Final = 120.0

_REASONS: Final[dict[int, bytes]] = {
    200: b"OK",
    400: b"Bad Request",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
}
_RENDER: Final = 200


class Renderable(Protocol):
    def render(self) -> bytes: ...


class _TooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _response(status: int, body: bytes, keep_alive: bool, head_only: bool) -> bytes:
    """One response, head and body in a single buffer."""
    lines = [
        b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
        b"Content-Type: " + (CONTENT_TYPE if status == 200 else b"text/plain; charset=utf-8"),
        b"Content-Length: %d" % len(body),
        b"Date: " + formatdate(usegmt=True).encode("ascii"),
    ]
    if status == 405:
        lines.append(b"Allow: GET, HEAD")
    if not keep_alive:
        lines.append(b"Connection: close")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head if head_only else head + body


class MetricsServerState:
    """What all connections of one metrics server share."""

    __slots__ = ("connections", "idle_timeout", "metrics", "server")

    def __init__(self, metrics: Renderable, idle_timeout: float) -> None:
        self.metrics = metrics
        self.idle_timeout = idle_timeout
        self.server: asyncio.Server | None = None
        self.connections: set[MetricsProtocol] = set()

    def serving(self) -> bool:
        return self.server is None or self.server.is_serving()


class MetricsProtocol(asyncio.Protocol):
    """One scrape connection; its own httptools callback target."""

    __slots__ = (
        "_burst",
        "_closing",
        "_idle",
        "_parser",
        "_paused",
        "_pending",
        "_request_size",
        "_state",
        "_transport",
    )

    def __init__(self, state: MetricsServerState) -> None:
        # -- per server
        self._state = state
        # -- per connection
        self._transport: asyncio.Transport | None = None
        self._parser = HttpRequestParser(self)
        self._pending: deque[tuple[int, bool, bool]] = deque()  # status, keep-alive, HEAD
        self._paused = False
        self._closing = False
        self._idle: asyncio.TimerHandle | None = None
        self._burst = 0
        # -- per request
        self._request_size = 0

    # -- connection events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._state.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._pending.clear()
        self._closing = True
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._burst = 0
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            # CONNECT or an Upgrade: answered as a plain request, then the connection ends.
            if self._pending:
                status, _, head_only = self._pending.pop()
                self._pending.append((status, False, head_only))
            self._closing = True
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            status = cause.status if isinstance(cause, _TooLarge) else 400
            self._fail(status)
        except HttpParserError:
            self._fail(400)
        self._flush()

    def eof_received(self) -> bool:
        if self._pending:
            self._closing = True
            return True  # keep the write side open until the answers are out
        return False

    def pause_writing(self) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
        self._flush()

    # -- parser callbacks

    def on_message_begin(self) -> None:
        self._request_size = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 431)

    def on_body(self, body: bytes) -> None:
        self._count(len(body), 413)

    def on_message_complete(self) -> None:
        if self._closing:
            return
        self._burst += 1
        method = self._parser.get_method()
        keep_alive = (
            self._parser.should_keep_alive() and self._burst < MAX_BURST and self._state.serving()
        )
        status = _RENDER if method in (b"GET", b"HEAD") else 405
        self._pending.append((status, keep_alive, method == b"HEAD"))
        if not keep_alive:
            self._closing = True

    # -- answering

    def _count(self, size: int, status: int) -> None:
        self._request_size += size
        if self._request_size > MAX_REQUEST_BYTES:
            raise _TooLarge(status)

    def _fail(self, status: int) -> None:
        self._pending.append((status, False, False))
        self._closing = True

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        while self._pending and not self._paused:
            status, keep_alive, head_only = self._pending.popleft()
            transport.write(self._answer(status, keep_alive, head_only))
            self._arm_idle_timer()
            if not keep_alive:
                self._pending.clear()
                transport.close()
                return
        if self._closing and not self._pending:
            transport.close()

    def _answer(self, status: int, keep_alive: bool, head_only: bool) -> bytes:
        if status != _RENDER:
            body = _REASONS[status] + b"\n"
            return _response(status, body, keep_alive, head_only)
        try:
            body = self._state.metrics.render()
        except Exception:
            log.exception("rendering metrics failed")
            return _response(500, b"Internal Server Error\n", keep_alive, head_only)
        return _response(200, body, keep_alive, head_only)

    def _arm_idle_timer(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self._state.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open" if self._transport else "closed"
        return f"<MetricsProtocol {state} pending={len(self._pending)}>"


_STATES: Final[dict[asyncio.Server, MetricsServerState]] = {}


async def start_metrics_server(
    metrics: Renderable,
    host: str,
    port: int,
    *,
    idle_timeout: float = IDLE_TIMEOUT_SECONDS,
) -> asyncio.Server:
    """Listen for scrapes on host:port (0 picks a free port); stop with `stop_metrics_server`."""
    loop = asyncio.get_running_loop()
    state = MetricsServerState(metrics, idle_timeout)
    server = await loop.create_server(lambda: MetricsProtocol(state), host, port)
    state.server = server
    _STATES[server] = state
    return server


async def stop_metrics_server(server: asyncio.Server) -> None:
    """Stop listening and close the open scrape connections (kept alive ones included)."""
    server.close()
    state = _STATES.pop(server, None)
    if state is not None:
        for connection in list(state.connections):
            connection.close()
    await server.wait_closed()
