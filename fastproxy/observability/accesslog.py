"""The access log: one line per request, written off the event loop.

The loop only hands a record to a bounded queue; a daemon thread formats and writes it,
so a slow or stalled stream (a full pipe, a paused terminal) costs dropped lines, never
loop latency. Every record is either written or counted in `dropped`.
"""

from __future__ import annotations

import enum
import json
import math
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TextIO

# Most records a write may take in one go, so a long backlog still flushes regularly.
_BATCH: Final = 256
# A value needs quotes when it is empty or holds anything but visible ASCII, or a
# character a key=value reader would split on (logfmt's rule).
_NEEDS_QUOTES: Final = re.compile(r'[^\x21-\x7e]|["=\\]')
_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


@dataclass(slots=True)
class AccessRecord:
    """One finished request, as the exchange saw it."""

    time: float  # epoch seconds when the request arrived
    method: str
    path: str
    app_id: str  # the target app
    status: int
    bytes_in: int
    bytes_out: int
    upstream: str  # the address dialled, "" when none was
    total_ms: float
    upstream_ms: float
    retries: int
    trace_id: str  # "" when the request is not traced
    client: str  # the downstream peer address


# What `obfuscateURLs` logs instead of a path: the route, never what a caller wrote into it
# (app ids, method paths, metadata keys), which may be personal data.
INVOKE_ROUTE: Final = "/v1.0/invoke/{id}/method/*"
METADATA_KEY_ROUTE: Final = "/v1.0/metadata/{key}"
APP_ROUTE: Final = "*"  # an app's own path, routed by the dapr-app-id header
_FIXED_ROUTES: Final = frozenset({b"/v1.0/healthz", b"/v1.0/healthz/outbound", b"/v1.0/metadata"})
_INVOKE_PREFIX: Final = b"/v1.0/invoke/"
_METADATA_KEY_PREFIX: Final = b"/v1.0/metadata/"
_HEALTH_PREFIX: Final = b"/v1.0/healthz"


def obfuscated_path(path: bytes) -> str:
    """The route of `path` as `spec.logging.apiLogging.obfuscateURLs` logs it."""
    if path.startswith(_INVOKE_PREFIX):
        return INVOKE_ROUTE
    if path in _FIXED_ROUTES:
        return path.decode("ascii")
    if path.startswith(_METADATA_KEY_PREFIX):
        return METADATA_KEY_ROUTE
    return APP_ROUTE


def is_health_check(path: bytes) -> bool:
    """A call `spec.logging.apiLogging.omitHealthChecks` leaves out of the log."""
    return path.startswith(_HEALTH_PREFIX)


def rfc3339_ms(epoch: float) -> str:
    """UTC with milliseconds, the form daprd's JSON logs use."""
    seconds, millis = divmod(round(epoch * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def format_text(record: AccessRecord) -> str:
    """`key=value` pairs on one line; any value a client could shape is quoted and escaped,
    so a path can neither break the line nor pass for another field."""
    return (
        f"time={rfc3339_ms(record.time)}"
        f" method={_text(record.method)}"
        f" path={_text(record.path)}"
        f" app_id={_text(record.app_id)}"
        f" status={record.status}"
        f" bytes_in={record.bytes_in}"
        f" bytes_out={record.bytes_out}"
        f" upstream={_text(record.upstream)}"
        f" total_ms={_ms(record.total_ms)}"
        f" upstream_ms={_ms(record.upstream_ms)}"
        f" retries={record.retries}"
        f" trace_id={_text(record.trace_id)}"
        f" client={_text(record.client)}"
    )


def format_json(record: AccessRecord) -> str:
    """One JSON object; json escapes control characters and, ASCII-only, line separators."""
    return json.dumps(
        {
            "time": rfc3339_ms(record.time),
            "method": record.method,
            "path": record.path,
            "app_id": record.app_id,
            "status": record.status,
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
            "upstream": record.upstream,
            "total_ms": _ms_number(record.total_ms),
            "upstream_ms": _ms_number(record.upstream_ms),
            "retries": record.retries,
            "trace_id": record.trace_id,
            "client": record.client,
        },
        ensure_ascii=True,
        allow_nan=False,
        separators=(",", ":"),
    )


def _text(value: str) -> str:
    if value and _NEEDS_QUOTES.search(value) is None:
        return value
    return '"' + "".join(_escape(char) for char in value) + '"'


def _escape(char: str) -> str:
    escaped = _ESCAPES.get(char)
    if escaped is not None:
        return escaped
    if char.isprintable():
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _ms(value: float) -> str:
    return f"{_ms_number(value):.3f}"


def _ms_number(value: float) -> float:
    """Rounded to microseconds; a NaN or infinity (a clock bug) must not break the line."""
    return round(value, 3) if math.isfinite(value) else -1.0


class _State(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"  # refusing records; the stop marker did not fit in the queue yet
    CLOSED = "closed"  # the stop marker is queued behind the last record


class AccessLog:
    """Writes `AccessRecord`s to `stream` from a daemon thread.

    `write` runs on the event loop and never waits: when `max_queue` records are already
    waiting, the record is dropped and counted. Records the stream refuses are counted too.
    """

    __slots__ = ("_dropped_full", "_failed", "_format", "_queue", "_state", "_thread", "stream")

    def __init__(self, stream: TextIO, as_json: bool, max_queue: int = 8192) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {max_queue}")
        self.stream = stream
        self._format: Callable[[AccessRecord], str] = format_json if as_json else format_text
        # None is the stop marker close() queues.
        self._queue: queue.Queue[AccessRecord | None] = queue.Queue(max_queue)
        self._state = _State.RUNNING
        # Each counter has one writer: the loop thread, or the log thread.
        self._dropped_full = 0
        self._failed = 0
        self._thread = threading.Thread(target=self._run, name="fastproxy-access-log", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        kind = "json" if self._format is format_json else "text"
        return (
            f"<AccessLog {self._state.value} format={kind} "
            f"queued={self._queue.qsize()} dropped={self.dropped}>"
        )

    @property
    def dropped(self) -> int:
        """Records that were not written: queue full, log closed, or the stream failed."""
        return self._dropped_full + self._failed

    def write(self, record: AccessRecord) -> None:
        """Queue `record` for the log thread, or drop it if the queue is full."""
        if self._state is not _State.RUNNING:
            self._dropped_full += 1
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._dropped_full += 1

    def close(self, timeout: float) -> bool:
        """Stop taking records, write the ones queued, and join the thread.

        True when everything queued was written within `timeout` seconds; a stream that
        stays blocked leaves the daemon thread behind rather than holding up shutdown.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._state is not _State.CLOSED:
            self._state = _State.STOPPING
            try:
                self._queue.put(None, timeout=max(timeout, 0.0))
            except queue.Full:
                return False  # a later close() tries again
            self._state = _State.CLOSED
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            return False
        # Only a write from another thread racing close() can leave a record behind.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return True
            self._dropped_full += 1

    # --- the log thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            batch: list[AccessRecord] = []
            while record is not None:
                batch.append(record)
                if len(batch) == _BATCH:
                    break
                try:
                    record = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            if record is None:  # close() queued the stop marker
                return

    def _write(self, batch: list[AccessRecord]) -> None:
        try:
            self.stream.write("\n".join([self._format(record) for record in batch]) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # closed or broken stream: lose the batch, keep going
            self._failed += len(batch)
