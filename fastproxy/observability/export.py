"""Span export off the request path: Zipkin v2 and OTLP/HTTP JSON encoders, and a batcher.

A request only appends its finished span to a bounded queue; one background
task POSTs batches to the collector. A collector that is down, slow or
refusing costs dropped spans, counted and logged once, never a blocked request.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import httptools

from fastproxy.observability.spans import Span, dapr_headers, status_description

logger = logging.getLogger("fastproxy.tracing")

ZIPKIN_CONTENT_TYPE: Final = "application/json"
OTLP_JSON_CONTENT_TYPE: Final = "application/json"
OTLP_TRACES_PATH: Final = "/v1/traces"
SCOPE_NAME: Final = "fastproxy"

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_READ_SIZE: Final = 65536


# -- encoders --------------------------------------------------------------------------------
#
# A span is one `%` of a byte template, written out where it is used: mypyc compiles a
# literal template into a single concatenation. What surrounds a span's ids and times is
# worked out once for a run of spans of the same shape (one endpoint answering alike),
# which is what a busy sidecar's batch mostly holds. Only a value holding a byte that JSON
# must escape (a quote, a backslash, a control byte, non-ASCII) goes through `json.dumps`.
# Wire bytes read as latin-1, so the JSON carries the text `Span.attributes` reports.
# The body is joined once: a batch is hundreds of kilobytes, and every extra copy is a
# fresh large allocation that costs page faults.

# Every byte to itself, except those a JSON string must escape, which become spaces:
# a value is safe as it is when it translates to itself. (A translation table without
# deletions is one pass with no set-up, and returns its input when nothing changed.)
_UNSAFE_TO_SPACE: Final = bytes(
    c if 0x20 <= c < 0x7F and c not in (0x22, 0x5C) else 0x20 for c in range(256)
)

_ZIPKIN_KIND: Final[dict[str, bytes]] = {"CLIENT": b"CLIENT", "SERVER": b"SERVER"}
_OTLP_KIND: Final[dict[str, bytes]] = {"SERVER": b"2", "CLIENT": b"3"}  # OTLP enums are ints
_OTLP_STATUS_UNSET: Final = b'{"code":0}'


def _json_bytes(value: bytes) -> bytes:
    """Wire bytes (latin-1) as the inside of a JSON string: themselves, unless unsafe."""
    if value.translate(_UNSAFE_TO_SPACE) == value:
        return value
    return json.dumps(value.decode("latin-1")).encode("ascii")[1:-1]


def _json_str(value: str) -> bytes:
    """Text as the inside of a JSON string, in ASCII."""
    if value.isascii():
        raw = value.encode("ascii")
        if raw.translate(_UNSAFE_TO_SPACE) == raw:
            return raw
    return json.dumps(value).encode("ascii")[1:-1]


def _zipkin_error(status: int) -> bytes:
    return b',"otel.status_code":"ERROR","error":"%s"' % _json_str(status_description(status))


def _otlp_error(status: int) -> bytes:
    return b'{"code":2,"message":"%s"}' % _json_str(status_description(status))


_ERROR_STATUSES: Final = range(400, 1000)
_ZIPKIN_ERRORS: Final = {status: _zipkin_error(status) for status in _ERROR_STATUSES}
_OTLP_ERRORS: Final = {status: _otlp_error(status) for status in _ERROR_STATUSES}


def _json_ids(span: Span) -> tuple[bytes, bytes, bytes]:
    """The span's trace, span and parent ids as the inside of JSON strings: as they are
    (lowercase hex, whenever fastproxy made or checked them), unless unsafe."""
    trace_id = span.trace_id
    span_id = span.span_id
    parent_id = span.parent_id
    joined = trace_id + span_id + parent_id
    if joined.translate(_UNSAFE_TO_SPACE) == joined:
        return trace_id, span_id, parent_id
    return _json_bytes(trace_id), _json_bytes(span_id), _json_bytes(parent_id)


class _Shapes:
    """The text around ids and times (see `_zipkin_shape`), kept for the last span's shape:
    a run of like spans in a batch gets it worked out once."""

    __slots__ = ("_last", "_make", "_texts")

    def __init__(self, make: Callable[[Span], tuple[bytes, bytes]]) -> None:
        self._make = make
        self._last: Span | None = None
        self._texts = (b"", b"")

    def of(self, span: Span) -> tuple[bytes, bytes]:
        last = self._last
        if last is None or not span.same_shape(last):
            self._texts = self._make(span)
            self._last = span
        return self._texts


def _zipkin_shape(span: Span, endpoint: bytes) -> tuple[bytes, bytes]:
    """The JSON of a Zipkin span around its ids and times: what comes between the ids
    and the timestamp, and what follows the duration. Spans of the same shape (see
    `Span.same_shape`) share it, so a batch of like requests works it out once."""
    target = _json_str(span.target_app_id)
    verb = _json_bytes(span.verb)
    server = b""
    if span.server_address:
        address = _json_str(span.server_address)
        if span.server_port:
            server = b',"server.address":"%s","server.port":"%d"' % (address, span.server_port)
        else:
            server = b',"server.address":"%s"' % address
    status = span.status
    error = b""
    if status >= 400:
        error = _ZIPKIN_ERRORS.get(status) or _zipkin_error(status)
    head = b',"name":"CallLocal/%s/%s","kind":"%s","timestamp":' % (
        target,
        _json_bytes(span.method),
        _ZIPKIN_KIND[span.kind],
    )
    tail = (
        b',"localEndpoint":%s,"tags":{%s"rpc.service":"ServiceInvocation",'
        b'"net.peer.name":"%s","dapr.protocol":"http","dapr.api":"%s %s",'
        b'"dapr.status_code":"%d","http.request.method":"%s","url.full":"%s"%s%s}}'
        % (
            endpoint,
            _zipkin_header_tags(span) if span.headers else b"",
            target,
            verb,
            _json_bytes(span.path),
            status,
            verb,
            _json_bytes(span.url),
            server,
            error,
        )
    )
    return head, tail


def encode_zipkin(spans: Iterable[Span], service_name: str) -> bytes:
    """A Zipkin v2 JSON list, as POSTed to `/api/v2/spans`.

    Zipkin counts time in microseconds and rejects a zero duration, so a span
    shorter than 1 µs is reported as 1 µs. Error spans carry the `error` tag
    (Zipkin's marker) and `otel.status_code`, as OpenTelemetry's exporter writes.
    """
    endpoint = b'{"serviceName":"%s"}' % _json_str(service_name)
    shapes = _Shapes(lambda span: _zipkin_shape(span, endpoint))
    records = [b"["]
    comma = b""
    for span in spans:
        head, tail = shapes.of(span)
        trace_id, span_id, parent_id = _json_ids(span)
        parent = b',"parentId":"%s"' % parent_id if parent_id else b""
        records.append(
            b'%s{"traceId":"%s","id":"%s"%s%s%d,"duration":%d%s'
            % (
                comma,
                trace_id,
                span_id,
                parent,
                head,
                span.start_ns // 1000,
                max(1, (span.end_ns - span.start_ns) // 1000),
                tail,
            )
        )
        comma = b","
    records.append(b"]")
    return b"".join(records)


def _zipkin_header_tags(span: Span) -> bytes:
    return b"".join(
        b'"%s":"%s",' % (_json_bytes(name), _json_bytes(value))
        for name, value in dapr_headers(span.headers)
    )


def _otlp_shape(span: Span) -> tuple[bytes, bytes]:
    """The JSON of an OTLP span around its ids and times: what comes between the ids and
    the start time's digits, and what follows the end time's (see `_zipkin_shape`)."""
    target = _json_str(span.target_app_id)
    verb = _json_bytes(span.verb)
    server = b""
    if span.server_address:
        address = _json_str(span.server_address)
        if span.server_port:
            server = (
                b',{"key":"server.address","value":{"stringValue":"%s"}}'
                b',{"key":"server.port","value":{"stringValue":"%d"}}' % (address, span.server_port)
            )
        else:
            server = b',{"key":"server.address","value":{"stringValue":"%s"}}' % address
    status = span.status
    state = _OTLP_STATUS_UNSET
    if status >= 400:
        state = _OTLP_ERRORS.get(status) or _otlp_error(status)
    head = b',"name":"CallLocal/%s/%s","kind":%s,"startTimeUnixNano":"' % (
        target,
        _json_bytes(span.method),
        _OTLP_KIND[span.kind],
    )
    tail = (
        b'","attributes":[%s'
        b'{"key":"rpc.service","value":{"stringValue":"ServiceInvocation"}},'
        b'{"key":"net.peer.name","value":{"stringValue":"%s"}},'
        b'{"key":"dapr.protocol","value":{"stringValue":"http"}},'
        b'{"key":"dapr.api","value":{"stringValue":"%s %s"}},'
        b'{"key":"dapr.status_code","value":{"stringValue":"%d"}},'
        b'{"key":"http.request.method","value":{"stringValue":"%s"}},'
        b'{"key":"url.full","value":{"stringValue":"%s"}}%s],"status":%s}'
        % (
            _otlp_header_attributes(span) if span.headers else b"",
            target,
            verb,
            _json_bytes(span.path),
            status,
            verb,
            _json_bytes(span.url),
            server,
            state,
        )
    )
    return head, tail


def encode_otlp_json(spans: Iterable[Span], service_name: str) -> bytes:
    """An OTLP/HTTP JSON `ExportTraceServiceRequest`, as POSTed to `/v1/traces`.

    OTLP/JSON departs from protobuf's JSON mapping on purpose: ids are hex,
    not base64; enums are integers; 64-bit times are decimal strings.
    """
    records = [
        b'{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name",'
        b'"value":{"stringValue":"%s"}}]},"scopeSpans":[{"scope":{"name":"%s"},"spans":['
        % (_json_str(service_name), _json_str(SCOPE_NAME))
    ]
    shapes = _Shapes(_otlp_shape)
    comma = b""
    for span in spans:
        head, tail = shapes.of(span)
        trace_id, span_id, parent_id = _json_ids(span)
        parent = b',"parentSpanId":"%s"' % parent_id if parent_id else b""
        records.append(
            b'%s{"traceId":"%s","spanId":"%s"%s%s%d","endTimeUnixNano":"%d%s'
            % (comma, trace_id, span_id, parent, head, span.start_ns, span.end_ns, tail)
        )
        comma = b","
    records.append(b"]}]}]}")
    return b"".join(records)


def _otlp_header_attributes(span: Span) -> bytes:
    return b"".join(
        b'{"key":"%s","value":{"stringValue":"%s"}},' % (_json_bytes(name), _json_bytes(value))
        for name, value in dapr_headers(span.headers)
    )


def parse_otel_endpoint(address: str, is_secure: bool) -> str:
    """The OTLP/HTTP traces URL for daprd's `otel.endpointAddress`.

    daprd takes `host:port` and picks the scheme from `isSecure`; an address
    that already names a scheme keeps it. Without a path the standard
    `/v1/traces` is used; an explicit path is kept (collectors behind a prefix).
    """
    text = address.strip()
    if not text:
        raise ValueError("the otel endpoint address is empty")
    if "://" not in text:
        text = ("https://" if is_secure else "http://") + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) otel endpoint address: {address!r}")
    _ = parts.port  # raises ValueError on a malformed port
    path = parts.path if parts.path not in ("", "/") else OTLP_TRACES_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


# -- the batching exporter ---------------------------------------------------------------------


class ExporterState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class _ResponseSink:
    """httptools callbacks: whether the head and the whole message have arrived, and
    whether the connection may be kept (read at the end, before the parser resets)."""

    __slots__ = ("complete", "head_done", "keep_alive", "parser")

    def __init__(self) -> None:
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_message_complete(self) -> None:
        self.complete = True
        if self.parser is not None:
            self.keep_alive = self.parser.should_keep_alive()


NO_ANSWER: Final = 0
"""The status `_read_answer` gives when the connection ended before any byte of an
answer: the collector may never have read the request, which may be sent again."""


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """The response's status (NO_ANSWER if none began), after draining it to its end,
    and whether the connection may carry another request (the answer was framed and
    did not ask to close)."""
    sink = _ResponseSink()
    parser = sink.parser = httptools.HttpResponseParser(sink)
    received = False
    while not sink.complete:
        try:
            data = await reader.read(_READ_SIZE)
        except ConnectionError:
            if not received:
                return NO_ANSWER, False
            raise
        if not data:
            if sink.head_done:  # a body delimited by the close
                return parser.get_status_code(), False
            if not received:
                return NO_ANSWER, False
            raise ConnectionError("the collector closed the connection mid-answer")
        received = True
        parser.feed_data(data)
    status: int = parser.get_status_code()
    return status, sink.keep_alive


class BatchExporter:
    """A bounded span queue and one task that POSTs it in batches.

    The task sends a batch as soon as `max_batch` spans are waiting, and every
    `interval` seconds what was queued by then, in batches of at most `max_batch`.
    Spans that arrive while a POST is out wait for the next full batch or the next
    interval, so a busy sidecar sends full batches rather than one small batch per
    round trip. A failed POST drops its batch (no retry: a retry would only pile
    more load on a struggling collector) and, until one succeeds, the task no longer
    wakes early, so a dead collector sees at most one attempt per interval.

    Batches share one keep-alive connection. One left idle for `reuse_idle` seconds
    or more is closed and replaced, since collectors close idle connections; if a
    reused one still ends before any answer (the collector closed it first), the
    batch is sent once more on a fresh connection.
    """

    def __init__(
        self,
        url: str,
        encode: Callable[[list[Span]], bytes],
        content_type: str,
        headers: Sequence[tuple[str, str]] = (),
        max_queue: int = 2048,
        max_batch: int = 512,
        interval: float = 1.0,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        reuse_idle: float = 4.0,
    ) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        if not interval > 0 or not timeout > 0:
            raise ValueError("interval and timeout must be positive")
        if not reuse_idle >= 0:
            raise ValueError("reuse_idle must not be negative")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the span exporter needs an http:// or https:// URL, not {url!r}")
        secure = parts.scheme == "https"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c in target for c in " \r\n"):
            raise ValueError(f"malformed exporter URL: {url!r}")
        lines = [
            f"POST {target} HTTP/1.1",
            f"Host: {parts.netloc.rpartition('@')[2]}",
            "User-Agent: fastproxy",
            f"Content-Type: {content_type}",
        ]
        for name, value in headers:
            if not _TOKEN.match(name) or "\r" in value or "\n" in value:
                raise ValueError(f"invalid exporter header: {name!r}")
            lines.append(f"{name}: {value}")
        self._head_prefix = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")

        self.url = url
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.interval = interval
        self.timeout = timeout
        self.reuse_idle = reuse_idle
        self._host = parts.hostname
        self._port = parts.port or (443 if secure else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if secure else None
        self._encode = encode
        self._threshold = min(max_batch, max_queue)
        self._queue: list[Span] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._state = ExporterState.NEW
        self._failing = False  # since the last failed POST, until one succeeds
        # The keep-alive connection to the collector, and when it last answered.
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._idle_since = 0.0
        self.connections = 0  # opened so far
        self.exported = 0
        self.dropped = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def state(self) -> ExporterState:
        return self._state

    def __repr__(self) -> str:
        return (
            f"<BatchExporter {self._state.value} {self.url} queued={len(self._queue)}"
            f" exported={self.exported} dropped={self.dropped}>"
        )

    def submit(self, span: Span) -> None:
        """Queue a finished span; O(1), never blocks, never raises. A full queue drops it."""
        queue = self._queue
        if len(queue) >= self.max_queue or self._state is ExporterState.CLOSED:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) == self._threshold and not self._failing:
            self._wake.set()

    def start(self) -> None:
        """Start the export task on the running loop."""
        if self._state is not ExporterState.NEW:
            raise RuntimeError(f"{self!r} was already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="span-export")
        self._state = ExporterState.RUNNING

    async def close(self, deadline: float = 2.0) -> None:
        """Send what is queued within `deadline` seconds, then stop; the rest is dropped."""
        if self._state is ExporterState.CLOSED:
            return
        self._state = ExporterState.CLOSED
        self._wake.set()
        task = self._task
        if task is None:  # never started: one last flush of what was submitted
            task = asyncio.get_running_loop().create_task(self._send_queued(everything=True))
            self._task = task
        try:
            await asyncio.wait({task}, timeout=deadline)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved, so never reported as unhandled
            self.dropped += len(self._queue)
            self._queue.clear()
            self._disconnect()

    async def _run(self) -> None:
        while True:
            interval_over = False
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                interval_over = True
            self._wake.clear()
            closing = self._state is ExporterState.CLOSED
            await self._send_queued(everything=interval_over or closing)
            if closing:
                return

    async def _send_queued(self, everything: bool) -> None:
        """Full batches; with `everything`, also what was queued when the send began."""
        queue = self._queue
        due = len(queue) if everything else 0
        while queue and (due > 0 or len(queue) >= self.max_batch):
            size = min(len(queue), self.max_batch)
            batch = queue[:size]
            del queue[:size]
            due -= size
            if not await self._export(batch):
                # A wake-up queued during the failed POST would retry at once.
                if self._state is not ExporterState.CLOSED:
                    self._wake.clear()
                return

    async def _export(self, batch: list[Span]) -> bool:
        """POST one batch; False (batch dropped) when it did not get a 2xx in time."""
        try:
            status = await self._post(self._encode(batch))
        except asyncio.CancelledError:
            self.dropped += len(batch)
            raise
        except TimeoutError:
            self._failed(len(batch), f"no answer within {self.timeout:g}s")
            return False
        except Exception as exc:  # the task must outlive any collector or encoder fault
            self._failed(len(batch), f"{type(exc).__name__}: {exc}")
            return False
        if not 200 <= status < 300:
            self._failed(len(batch), f"HTTP {status}")
            return False
        self.exported += len(batch)
        if self._failing:
            self._failing = False
            logger.info("span export to %s works again", self.url)
        return True

    def _failed(self, count: int, reason: str) -> None:
        self.dropped += count
        if not self._failing:
            self._failing = True
            logger.warning(
                "span export to %s failed (%s): %d spans dropped;"
                " further failures are not logged until an export succeeds",
                self.url,
                reason,
                count,
            )

    async def _post(self, body: bytes) -> int:
        """One POST, bounded as a whole by `timeout`: on the kept connection when there is
        one fit to reuse, again on a fresh one if that one turns out to be closed."""
        request = (self._head_prefix + b"%d\r\n\r\n" % len(body), body)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            reader, writer = self._reader, self._writer
            if reader is not None and writer is not None:
                if (
                    loop.time() - self._idle_since < self.reuse_idle
                    and not writer.is_closing()
                    and not reader.at_eof()
                ):
                    self._reader = self._writer = None
                    status = await self._exchange(reader, writer, request)
                    if status != NO_ANSWER:
                        return status
                    # Closed by the collector while idle: once more, on a fresh connection.
                else:
                    self._disconnect()
            reader, writer = await self._connect()
            status = await self._exchange(reader, writer, request)
            if status == NO_ANSWER:
                raise ConnectionError("the collector closed the connection without answering")
            return status

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        connection = await asyncio.open_connection(
            self._host,
            self._port,
            ssl=self._ssl,
            server_hostname=self._host if self._ssl is not None else None,
        )
        self.connections += 1
        return connection

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: tuple[bytes, bytes],
    ) -> int:
        """Send `request` and read the answer's status (NO_ANSWER when the connection
        ended first); keep the connection when it may carry the next batch, close it
        otherwise."""
        answered = reusable = False
        try:
            try:
                writer.writelines(request)
                await writer.drain()
            except ConnectionError:
                return NO_ANSWER
            status, reusable = await _read_answer(reader)
            answered = status != NO_ANSWER
            return status
        finally:
            if reusable:
                self._reader = reader
                self._writer = writer
                self._idle_since = asyncio.get_running_loop().time()
            elif answered:
                writer.close()
            else:  # timed out or broken: nothing to say to this peer any more
                writer.transport.abort()

    def _disconnect(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.transport.abort()
        self._reader = self._writer = None
