"""What one request carries while observability is on: its trace context and its clocks.

An `Observation` is made per request by `Observer.begin` only when something
is watching (metrics, tracing, access log or Server-Timing); with everything
off the request path holds `None` and does no work for it. The connection
code fills in the status, sizes and instants; `Observer.finish` reads them
once the response is over.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from fastproxy.observability.tracecontext import line_span_id, line_trace_id

if TYPE_CHECKING:
    from fastproxy.upstream.pool import Pool

# Held in a module constant: compiled, calling it skips the module-dict look-up.
_perf_counter: Final = time.perf_counter

_SERVER_TIMING: Final = b"Server-Timing: sidecar;dur=%.3f, app;dur=%.3f\r\n"


class Observation:
    """One request's trace context, instants (perf_counter seconds) and outcome."""

    __slots__ = (
        "app_lines",
        "app_path",
        "bytes_in",
        "bytes_out",
        "caller",
        "client",
        "delivered",
        "head_at",
        "method",
        "parent_id",
        "path",
        "remote",
        "retries",
        "sampled",
        "sent_at",
        "server_timing",
        "started",
        "status",
        "target",
        "timed",
        "traceparent",
        "tracestate",
        "upstream",
    )

    def __init__(
        self, method: bytes, path: bytes, delivered: bool, server_timing: bool, timed: bool = True
    ) -> None:
        # Each field is set here, not by calling `reset`: compiled, a field set in
        # __init__ before `self` reaches any call is known to be always set, so the
        # request path reads it with no check for a missing value.
        self.timed = timed
        self.started = _perf_counter() if timed else 0.0
        self.method = method
        self.path = path
        self.delivered = delivered
        self.server_timing = server_timing
        self.sent_at = 0.0
        self.head_at = 0.0
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.retries = 0
        self.target = ""
        self.app_path = b""
        self.remote = False
        self.caller = ""
        self.client = ""
        self.upstream: Pool | None = None
        self.traceparent = b""
        self.parent_id = b""
        self.sampled = False
        self.tracestate = b""
        self.app_lines = b""

    def reset(
        self, method: bytes, path: bytes, delivered: bool, server_timing: bool, timed: bool = True
    ) -> None:
        """Start over for a new request: a connection reuses its last finished observation."""
        # Untimed (trace propagation alone: no metrics, log, Server-Timing or span wants
        # a duration), no clock is read at all; the instants stay 0.
        self.timed = timed
        self.started = _perf_counter() if timed else 0.0
        self.method = method
        self.path = path
        self.delivered = delivered
        self.server_timing = server_timing
        self.sent_at = 0.0
        self.head_at = 0.0
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.retries = 0
        self.target = ""
        self.app_path = b""  # the method path the app is asked for
        self.remote = False
        self.caller = ""
        self.client = ""  # the client's address, only when the access log is on
        # The pool whose connection answered; its address is read only when needed.
        self.upstream = None
        # Tracing (see Observer.begin): empty when tracing is off. The span's ids are
        # read from its traceparent header line, which the client's answer gets (unless
        # the call was delivered by another sidecar); the app gets `app_lines`: that
        # line and the tracestate line, if any.
        self.traceparent = b""
        self.parent_id = b""
        self.sampled = False
        self.tracestate = b""
        self.app_lines = b""

    @property
    def trace_id(self) -> bytes:
        """32 hex digits, or empty when tracing is off."""
        return line_trace_id(self.traceparent)

    @property
    def span_id(self) -> bytes:
        """16 hex digits, or empty when tracing is off."""
        return line_span_id(self.traceparent)

    @property
    def response_lines(self) -> bytes:
        """What every answer to the client gets: the span's traceparent line.

        On the internal listener the calling sidecar answers its client with its
        own span; only the app's own traceparent goes back to it.
        """
        return b"" if self.delivered else self.traceparent

    def __repr__(self) -> str:
        return (
            f"<Observation {self.method.decode('latin-1')} {self.path.decode('latin-1')}"
            f" status={self.status} trace={self.trace_id.decode()} sampled={self.sampled}>"
        )

    def aim(self, target: str, app_path: bytes, remote: bool) -> None:
        """The request goes to `target` for `app_path`: another app's sidecar when `remote`."""
        self.target = target
        self.app_path = app_path
        self.remote = remote

    def mark_sent(self) -> None:
        """The request head went to an upstream (the first attempt's counts)."""
        if self.sent_at == 0.0 and self.timed:
            self.sent_at = _perf_counter()

    def unanswered(self) -> None:
        """No answer came from the app (the request was refused mid-body, or its client
        left first): whatever reached the app is no round trip to count."""
        self.sent_at = 0.0

    def response_head(self, status: int, upstream: Pool, app_traceparent: bool) -> bytes:
        """The upstream's response head arrived: the lines the client's copy gains."""
        self.status = status
        self.upstream = upstream
        lines = b"" if app_traceparent else self.response_lines
        if not self.timed:
            return lines
        now = self.head_at = _perf_counter()
        if self.server_timing:
            app_s = now - self.sent_at if self.sent_at else 0.0
            own_s = now - self.started - app_s
            lines += _SERVER_TIMING % (own_s * 1000.0, app_s * 1000.0)
        return lines

    def error_head(self, status: int) -> bytes:
        """The sidecar answers with an error itself: the lines its answer gains."""
        self.status = status
        return self.response_lines + self.timing_line()

    def timing_line(self) -> bytes:
        """Server-Timing for an answer the sidecar wrote itself (when the feature is on)."""
        if not self.server_timing:
            return b""
        own_s = _perf_counter() - self.started
        return _SERVER_TIMING % (own_s * 1000.0, 0.0)

    def upstream_seconds(self) -> float:
        """From the request's first send to the response head: the app's share."""
        if self.sent_at and self.head_at:
            return self.head_at - self.sent_at
        return 0.0
