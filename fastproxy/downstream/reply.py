"""What a client connection drives per request, and the replies the sidecar writes itself.

`RequestHandler` is what a request's handler offers the connection;
`LocalReply` is the handler for answers that never leave the sidecar.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fastproxy.wire import CONTINUE_100, body_size

if TYPE_CHECKING:
    from fastproxy.downstream.protocol import DownstreamProtocol
    from fastproxy.observability.observation import Observation


class RequestHandler:
    """What the connection drives for one request: an `exchange.Exchange` or a `LocalReply`.

    A base class, not a Protocol: compiled, the connection reads these flags and
    calls these methods directly rather than through attribute look-ups by name.
    """

    __slots__ = (
        "is_head",
        "keep_alive",
        "obs",
        "request_done",
        "response_done",
        "response_started",
    )

    def __init__(self, keep_alive: bool, is_head: bool) -> None:
        self.keep_alive = keep_alive
        self.is_head = is_head
        # Set by the connection when observability is on (see fastproxy.observability).
        self.obs: Observation | None = None
        self.request_done = False
        self.response_done = False
        self.response_started = False

    def start(self) -> None:
        raise NotImplementedError

    def on_body(self, body: bytes) -> None:
        raise NotImplementedError

    def on_request_complete(self) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError

    def set_client_paused(self, paused: bool) -> None:
        raise NotImplementedError


class LocalReply(RequestHandler):
    """A response the sidecar writes itself; any request body is read and dropped."""

    __slots__ = (
        "_conn",
        "_data",
        "_discard_limit",
        "_discarded",
        "_expect_continue",
        "_on_complete",
        "_sink",
    )

    def __init__(
        self,
        conn: DownstreamProtocol,
        data: bytes | None,
        keep_alive: bool,
        discard_limit: int,
        on_complete: _BodyHandler | None = None,
        expect_continue: bool = False,
    ) -> None:
        super().__init__(keep_alive, False)
        self._conn = conn
        self._data = data
        self._on_complete = on_complete
        self._sink: list[bytes] | None = [] if on_complete is not None else None
        self._discarded = 0
        self._discard_limit = discard_limit
        self._expect_continue = expect_continue

    def __repr__(self) -> str:
        return f"<LocalReply request_done={self.request_done} response_done={self.response_done}>"

    def start(self) -> None:
        if self._data is not None:
            self._send(self._data)
        elif self._expect_continue and not self.request_done:
            self._conn.write(CONTINUE_100)

    def _send(self, data: bytes) -> None:
        obs = self.obs
        if obs is not None:
            if obs.status == 0:
                obs.status = int(data[9:12])  # "HTTP/1.1 200 ...": every local answer's line
            obs.bytes_out = body_size(data)
        self.response_started = True
        self._conn.write(data)
        self.response_done = True
        self._conn.response_finished(self)
        if not self.keep_alive and not self.request_done:
            # The rest of this request is not wanted: do not wait for it.
            self._conn.linger_close()

    def on_body(self, body: bytes) -> None:
        self._discarded += len(body)
        if self._discarded > self._discard_limit:
            self.keep_alive = False
            self._sink = None
            self._conn.abort()
        elif self._sink is not None:
            self._sink.append(body)

    def on_request_complete(self) -> None:
        self.request_done = True
        if self._on_complete is not None and self._sink is not None:
            self._data = self._on_complete(b"".join(self._sink))
            self._sink = None
            if self._conn.is_active(self):
                self._send(self._data)

    def cancel(self) -> None:
        self._sink = None

    def set_client_paused(self, paused: bool) -> None:
        return None


class _BodyHandler(Protocol):
    def __call__(self, body: bytes) -> bytes: ...
