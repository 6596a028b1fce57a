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
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import httptools

from fastproxy.observability.spans import Span

logger = logging.getLogger("fastproxy.tracing")

ZIPKIN_CONTENT_TYPE: Final = "application/json"
OTLP_JSON_CONTENT_TYPE: Final = "application/json"
OTLP_TRACES_PATH: Final = "/v1/traces"
SCOPE_NAME: Final = "fastproxy"

# OTLP enums travel as integers in OTLP/JSON.
_OTLP_KIND: Final[dict[str, int]] = {"SERVER": 2, "CLIENT": 3}
_OTLP_STATUS_UNSET: Final = 0
_OTLP_STATUS_ERROR: Final = 2

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_READ_SIZE: Final = 65536


# -- encoders --------------------------------------------------------------------------------


def _dumps(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def encode_zipkin(spans: Iterable[Span], service_name: str) -> bytes:
    """A Zipkin v2 JSON list, as POSTed to `/api/v2/spans`.

    Zipkin counts time in microseconds and rejects a zero duration, so a span
    shorter than 1 µs is reported as 1 µs. Error spans carry the `error` tag
    (Zipkin's marker) and `otel.status_code`, as OpenTelemetry's exporter writes.
    """
    endpoint = {"serviceName": service_name}
    records: list[dict[str, object]] = []
    for span in spans:
        tags = dict(span.attributes)
        if span.status_error:
            tags["otel.status_code"] = "ERROR"
            tags["error"] = span.status_message
        record: dict[str, object] = {"traceId": span.trace_id, "id": span.span_id}
        if span.parent_id is not None:
            record["parentId"] = span.parent_id
        record["name"] = span.name
        record["kind"] = span.kind
        record["timestamp"] = span.start_ns // 1000
        record["duration"] = max(1, (span.end_ns - span.start_ns) // 1000)
        record["localEndpoint"] = endpoint
        record["tags"] = tags
        records.append(record)
    return _dumps(records)


def encode_otlp_json(spans: Iterable[Span], service_name: str) -> bytes:
    """An OTLP/HTTP JSON `ExportTraceServiceRequest`, as POSTed to `/v1/traces`.

    OTLP/JSON departs from protobuf's JSON mapping on purpose: ids are hex,
    not base64; enums are integers; 64-bit times are decimal strings.
    """
    records: list[dict[str, object]] = []
    for span in spans:
        record: dict[str, object] = {"traceId": span.trace_id, "spanId": span.span_id}
        if span.parent_id is not None:
            record["parentSpanId"] = span.parent_id
        record["name"] = span.name
        record["kind"] = _OTLP_KIND[span.kind]
        record["startTimeUnixNano"] = str(span.start_ns)
        record["endTimeUnixNano"] = str(span.end_ns)
        record["attributes"] = [
            {"key": key, "value": {"stringValue": value}} for key, value in span.attributes.items()
        ]
        if span.status_error:
            record["status"] = {"code": _OTLP_STATUS_ERROR, "message": span.status_message}
        else:
            record["status"] = {"code": _OTLP_STATUS_UNSET}
        records.append(record)
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service_name}}]}
    scope_spans = [{"scope": {"name": SCOPE_NAME}, "spans": records}]
    return _dumps({"resourceSpans": [{"resource": resource, "scopeSpans": scope_spans}]})


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
    """httptools callbacks: only whether the head and the whole message have arrived."""

    __slots__ = ("complete", "head_done")

    def __init__(self) -> None:
        self.head_done = False
        self.complete = False

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_message_complete(self) -> None:
        self.complete = True


async def _read_status(reader: asyncio.StreamReader) -> int:
    """The response status, after draining the response to its end."""
    sink = _ResponseSink()
    parser = httptools.HttpResponseParser(sink)
    while not sink.complete:
        data = await reader.read(_READ_SIZE)
        if not data:
            if sink.head_done:  # a body delimited by the close
                break
            raise ConnectionError("the collector closed the connection without answering")
        parser.feed_data(data)
    status: int = parser.get_status_code()
    return status


class BatchExporter:
    """A bounded span queue and one task that POSTs it in batches.

    The task wakes every `interval` seconds, or as soon as `max_batch` spans are
    waiting, and sends everything queued in batches of at most `max_batch`. A
    failed POST drops its batch (no retry: a retry would only pile more load on
    a struggling collector) and, until one succeeds, the task no longer wakes
    early, so a dead collector sees at most one attempt per interval.

    Each batch uses a fresh connection (`Connection: close`). Batches leave at
    most about once per interval, so a handshake per batch is cheap, and a
    fresh connection never races a collector that is closing an idle one.
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
    ) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        if not interval > 0 or not timeout > 0:
            raise ValueError("interval and timeout must be positive")
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
        lines.append("Connection: close")
        self._head_prefix = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")

        self.url = url
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.interval = interval
        self.timeout = timeout
        self._host = parts.hostname
        self._port = parts.port or (443 if secure else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if secure else None
        self._encode = encode
        self._threshold = min(max_batch, max_queue)
        self._queue: deque[Span] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._state = ExporterState.NEW
        self._failing = False  # since the last failed POST, until one succeeds
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
            task = asyncio.get_running_loop().create_task(self._send_queued())
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

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self._send_queued()
            if self._state is ExporterState.CLOSED:
                return

    async def _send_queued(self) -> None:
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
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
        """One POST on its own connection, bounded as a whole by `timeout`."""
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            )
            finished = False
            try:
                writer.write(self._head_prefix + b"%d\r\n\r\n" % len(body))
                writer.write(body)
                await writer.drain()
                status = await _read_status(reader)
                finished = True
            finally:
                if finished:
                    writer.close()
                else:  # timed out or broken: nothing to say to this peer any more
                    writer.transport.abort()
            return status
