"""One keep-alive connection to an upstream: writes requests, parses responses.

The response is re-framed for the client as it is parsed and spliced to the
client transport once per upstream read. A connection goes back to its pool
only when its response ended exactly at its framed end, on a connection the
upstream will keep open, after the whole request was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from typing import TYPE_CHECKING, Final, cast

from httptools import HttpParserCallbackError, HttpParserError, HttpResponseParser

from fastproxy.security.identity import SpiffeId
from fastproxy.security.tls import peer_identity
from fastproxy.wire import (
    CHUNKED,
    COLON_SP,
    CONNECTION_CLOSE,
    CONNECTION_KEEP_ALIVE,
    CRLF,
    LAST_CHUNK,
    STATUS_LINES,
    status_line,
)

if TYPE_CHECKING:
    from fastproxy.exchange import Exchange
    from fastproxy.observability.observation import Observation
    from fastproxy.upstream.pool import Pool

# How each response header is treated. Hop-by-hop fields are dropped; the
# framing fields are noted (Content-Length is still passed through as sent).
_PLAIN: Final = 0
_DROP: Final = 1
_CONTENT_LENGTH: Final = 2
_TRANSFER_ENCODING: Final = 3
_CONNECTION: Final = 4
_TRACEPARENT: Final = 5
_RESPONSE_KINDS_LOWER: Final[dict[bytes, int]] = {
    b"connection": _CONNECTION,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"upgrade": _DROP,
    b"http2-settings": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"proxy-authenticate": _DROP,
    b"proxy-authorization": _DROP,
    b"content-length": _CONTENT_LENGTH,
    b"dapr-app-id": _DROP,
    b"traceparent": _TRACEPARENT,
}
# Exact spellings seen from common servers, looked up before lower-casing a name.
_RESPONSE_KINDS_EXACT: Final[dict[bytes, int]] = {
    **{name.title(): kind for name, kind in _RESPONSE_KINDS_LOWER.items()},
    **_RESPONSE_KINDS_LOWER,
    **dict.fromkeys(
        (
            b"Server",
            b"Date",
            b"Content-Type",
            b"Cache-Control",
            b"ETag",
            b"Last-Modified",
            b"Vary",
            b"Location",
            b"Set-Cookie",
            b"Expires",
            b"Accept-Ranges",
        ),
        _PLAIN,
    ),
}
# Connection header values that name no other header, in the spellings servers use.
_PLAIN_CONNECTION_VALUES: Final = frozenset(
    {b"keep-alive", b"close", b"Keep-Alive", b"Close", b"keep-Alive", b"KEEP-ALIVE", b"CLOSE"}
)
_HEAD_END: Final = b"\r\n\r\n"
# The most response-head bytes read before the head must have ended.
MAX_RESPONSE_HEAD: Final = 1024 * 1024
# SO_LINGER on, zero seconds: closing the socket sends a reset.
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
# Request data buffered towards the upstream before reading from the client pauses.
WRITE_HIGH_WATER: Final = 64 * 1024


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    IDLE = "idle"
    ACTIVE = "active"
    CLOSED = "closed"


# Module-level aliases: reading an enum member through its class costs a lookup per use.
CONNECTING: Final = ConnectionState.CONNECTING
IDLE: Final = ConnectionState.IDLE
ACTIVE: Final = ConnectionState.ACTIVE
CLOSED: Final = ConnectionState.CLOSED


class _ExtraResponse(Exception):
    """Bytes after the end of the response: the connection is poisoned."""


class _HeadResponseDone(Exception):
    """A response to HEAD ends with its head; the parser cannot be told so."""


class UpstreamConnection:
    """One pooled connection to an upstream: writes request heads, relays answers.

    An `asyncio.Protocol` by its callbacks, not by its base (see DownstreamProtocol).
    """

    __slots__ = (
        "_app_traceparent",
        "_client_chunked",
        "_client_close",
        "_complete",
        "_content_length",
        "_discard",
        "_eof_framed",
        "_got_bytes",
        "_head_bytes",
        "_headers",
        "_informational",
        "_keep_alive",
        "_named_drops",
        "_obs",
        "_out",
        "_parser",
        "_unusual",
        "_upstream_chunked",
        "exchange",
        "idle_since",
        "peer",
        "pool",
        "requests_served",
        "state",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.state = CONNECTING
        self.exchange: Exchange | None = None
        self.idle_since = 0.0
        self.requests_served = 0
        # Who answered the TLS handshake, when the upstream is another sidecar under mTLS.
        self.peer: SpiffeId | None = None
        self._out: list[bytes] = []
        self._complete = False
        self._got_bytes = False
        self._head_bytes = 0
        self._keep_alive = False
        self._obs: Observation | None = None
        # The per-response fields are set here as `_reset_response` sets them, and the
        # parser (which is handed `self`) is made last: compiled, a field set in
        # __init__ before `self` reaches any call is known to be always set, and the
        # request path reads it with no check for a missing value.
        self._headers: list[bytes] = [b""]
        self._content_length: bytes | None = None
        self._named_drops: list[bytes] | None = None
        self._upstream_chunked = False
        self._informational = False
        self._client_chunked = False
        self._client_close = False
        self._eof_framed = False
        self._discard = False
        self._unusual = False
        self._app_traceparent = False
        self._parser = HttpResponseParser(self)

    def __repr__(self) -> str:
        return (
            f"<UpstreamConnection {self.pool.name} {self.state.value}"
            f" served={self.requests_served}>"
        )

    def _reset_response(self) -> None:
        # The head list starts with a slot for the status line. The framing
        # flags for the client are all set in on_headers_complete.
        self._headers = [b""]
        self._content_length = None
        self._named_drops = None
        self._upstream_chunked = False
        self._informational = False
        self._client_chunked = False
        self._client_close = False
        self._eof_framed = False
        self._discard = False
        self._unusual = False
        self._app_traceparent = False

    # -- asyncio protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.peer = peer_identity(ssl_object)
        self.state = IDLE

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None or self._complete:
            # An idle pooled connection must stay silent; anything else poisons it.
            self.close()
            return
        self._got_bytes = True
        if not exchange.response_started:
            # httptools buffers an unfinished head whole: bound it.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_RESPONSE_HEAD:
                self._fail(f"upstream response head exceeds {MAX_RESPONSE_HEAD} bytes")
                return
        try:
            self._parser.feed_data(data)
        except HttpParserCallbackError as exc:
            stop = exc.__context__
            if isinstance(stop, _HeadResponseDone):
                # Clean only when the head ended exactly at the end of this read.
                if not data.endswith(_HEAD_END):
                    self._keep_alive = False
                self._parser = HttpResponseParser(self)
            elif isinstance(stop, _ExtraResponse):
                self._keep_alive = False
            else:
                self._flush(exchange)
                self._fail(f"malformed response from upstream: {stop}")
                return
        except HttpParserError as exc:
            self._flush(exchange)
            self._fail(f"malformed response from upstream: {exc}")
            return
        out = self._out
        if out:
            client = exchange.client
            if not client.is_closing():
                client.write(b"".join(out))
            self._out = []
        if self._complete:
            self._finish(exchange)

    def _flush(self, exchange: Exchange) -> None:
        out = self._out
        if out:
            client = exchange.client
            if not client.is_closing():
                client.write(b"".join(out))
            self._out = []

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.pool.discard(self)
        exchange = self.exchange
        if exchange is None or self._complete:
            return
        if self._eof_framed:
            # The response was delimited by the upstream closing: that is its end.
            if self._client_chunked:
                self._out.append(LAST_CHUNK)
            self._complete = True
            self._flush(exchange)
            self._finish(exchange)
            return
        reason = "connection closed by upstream"
        if exc is not None:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.exchange = None
        exchange.upstream_failed(reason, self._got_bytes)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_paused(False)

    # -- httptools callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _ExtraResponse
        self._headers = [b""]
        self._content_length = None
        if self._unusual:
            # Only a response that set one of the rare flags needs them reset.
            self._reset_response()

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = _RESPONSE_KINDS_EXACT.get(name)
        if kind is None:
            kind = _RESPONSE_KINDS_LOWER.get(name.lower(), _PLAIN)
        if kind == _PLAIN:
            self._headers.extend((name, COLON_SP, value, CRLF))
        elif kind == _CONTENT_LENGTH:
            # Passed through as sent: llhttp has checked it is one valid length.
            self._content_length = value
            self._headers.extend((name, COLON_SP, value, CRLF))
        elif kind == _TRANSFER_ENCODING:
            # llhttp frames the body as chunked only when chunked is the last coding.
            self._unusual = True
            self._upstream_chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif kind == _CONNECTION and value not in _PLAIN_CONNECTION_VALUES:
            self._note_connection_tokens(value)
        elif kind == _TRACEPARENT:
            # The app's own trace context reaches the client instead of the sidecar's.
            self._unusual = True
            self._app_traceparent = True
            self._headers.extend((name, COLON_SP, value, CRLF))

    def _note_connection_tokens(self, value: bytes) -> None:
        for item in value.split(b","):
            token = item.strip().lower()
            if token and token not in (b"close", b"keep-alive"):
                if self._named_drops is None:
                    self._unusual = True
                    self._named_drops = []
                self._named_drops.append(token)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise HttpParserError("upstream switched protocols unasked")
            # Interim responses are consumed here; the final one follows.
            self._unusual = True
            self._informational = True
            return
        exchange = self.exchange
        assert exchange is not None
        if exchange.resilient and exchange.on_status(status):
            self._drop_response(exchange, status)
            return
        parts = self._headers
        # Trailers of a chunked body also come through on_header: keep them out.
        self._headers = []
        if self._named_drops is not None:
            parts = _without_named(parts, self._named_drops)
        # Like daprd, the status line is ours: the upstream's reason phrase is not kept.
        parts[0] = STATUS_LINES.get(status) or status_line(status)
        if self._content_length is None and not (exchange.is_head or status in {204, 304}):
            self._unusual = True
            self._eof_framed = not self._upstream_chunked
            if exchange.http10:
                self._client_close = True
            else:
                self._client_chunked = True
                parts.append(CHUNKED)
        if self._client_close or not exchange.keep_alive:
            self._unusual = True
            self._client_close = True
            parts.append(CONNECTION_CLOSE)
        elif exchange.http10:
            parts.append(CONNECTION_KEEP_ALIVE)
        obs = exchange.obs
        self._obs = obs
        if obs is not None:
            parts.append(obs.response_head(status, self.pool, self._app_traceparent))
        parts.append(CRLF)
        # The body is appended to the same list: one join per upstream read.
        self._out = parts
        exchange.response_started = True
        if exchange.is_head:
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()
            raise _HeadResponseDone

    def _drop_response(self, exchange: Exchange, status: int) -> None:
        """A failure the exchange will retry: read it to its end, send none of it."""
        self._unusual = True
        self._discard = True
        self._headers = []
        self._eof_framed = (
            self._content_length is None
            and not self._upstream_chunked
            and not (exchange.is_head or status in {204, 304})
        )
        if exchange.is_head:
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()
            raise _HeadResponseDone

    def on_body(self, body: bytes) -> None:
        if self._discard:
            return
        obs = self._obs
        if obs is not None:
            obs.bytes_out += len(body)
        if self._client_chunked:
            self._out.extend((b"%x\r\n" % len(body), body, CRLF))
        else:
            self._out.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._client_chunked:
            self._out.append(LAST_CHUNK)
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()

    # -- lifecycle --------------------------------------------------------

    def attach(self, exchange: Exchange, head: bytes | None = None) -> None:
        """Serve `exchange` next; `head` (its request head) is written at once."""
        self.exchange = exchange
        self.state = ACTIVE
        self._complete = False
        self._got_bytes = False
        self._head_bytes = 0
        if head is not None and self.transport is not None:
            self.transport.write(head)

    def _finish(self, exchange: Exchange) -> None:
        self.requests_served += 1
        if self._client_close:
            exchange.keep_alive = False
        if self._keep_alive and not self._eof_framed and exchange.request_sent:
            self.exchange = None
            self.state = IDLE
            exchange.response_finished(self, True)
        else:
            self.abandon()
            exchange.response_finished(self, False)

    def _fail(self, reason: str) -> None:
        exchange = self.exchange
        self.abandon()
        if exchange is not None:
            exchange.upstream_failed(reason, True)

    def set_reading_paused(self, paused: bool) -> None:
        transport = self.transport
        if transport is None or self.state is CLOSED:
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and self.state is ACTIVE:
            transport.write(data)

    def writelines(self, parts: list[bytes] | tuple[bytes, ...]) -> None:
        transport = self.transport
        if transport is not None and self.state is ACTIVE:
            transport.writelines(parts)

    def abandon(self, reset: bool = False) -> None:
        """Close without telling the exchange: it already knows why.

        `reset` sends a TCP reset instead of a clean close, so the upstream
        (another sidecar, say) sees the call cancelled rather than a half-close.
        """
        self.exchange = None
        if reset and self.state is not CLOSED and self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.close()

    def close(self) -> None:
        """Close without reuse; `connection_lost` reports to the pool."""
        if self.state is not CLOSED and self.transport is not None:
            self.transport.abort()
        self.state = CLOSED

    @property
    def is_idle(self) -> bool:
        return self.state is IDLE


def _without_named(headers: list[bytes], names: list[bytes]) -> list[bytes]:
    """Drop response headers that the upstream's `Connection` header named.

    `headers[0]` is the status-line slot; name, ": ", value, CRLF follow.
    """
    kept: list[bytes] = [headers[0]]
    for i in range(1, len(headers), 4):
        if headers[i].lower() not in names:
            kept.extend(headers[i : i + 4])
    return kept
