"""Access-log lines (text and JSON) and the writer thread that keeps them off the loop."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastproxy.observability.accesslog import (
    APP_ROUTE,
    INVOKE_ROUTE,
    METADATA_KEY_ROUTE,
    AccessLog,
    AccessRecord,
    format_json,
    format_text,
    is_health_check,
    obfuscated_path,
    rfc3339_ms,
)

RECORD = AccessRecord(
    time=1700000000.123,
    method="GET",
    path="/v1.0/invoke/orders/method/new",
    app_id="orders",
    status=200,
    bytes_in=12,
    bytes_out=345,
    upstream="127.0.0.1:3000",
    total_ms=1.5,
    upstream_ms=1.25,
    retries=0,
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    client="127.0.0.1:50412",
)
TEXT = (
    "time=2023-11-14T22:13:20.123Z method=GET path=/v1.0/invoke/orders/method/new "
    "app_id=orders status=200 bytes_in=12 bytes_out=345 upstream=127.0.0.1:3000 "
    "total_ms=1.500 upstream_ms=1.250 retries=0 trace_id=4bf92f3577b34da6a3ce929d0e0e4736 "
    "client=127.0.0.1:50412"
)
JSON = (
    '{"time":"2023-11-14T22:13:20.123Z","method":"GET","path":"/v1.0/invoke/orders/method/new",'
    '"app_id":"orders","status":200,"bytes_in":12,"bytes_out":345,"upstream":"127.0.0.1:3000",'
    '"total_ms":1.5,"upstream_ms":1.25,"retries":0,'
    '"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","client":"127.0.0.1:50412"}'
)
KEYS = [
    "time",
    "method",
    "path",
    "app_id",
    "status",
    "bytes_in",
    "bytes_out",
    "upstream",
    "total_ms",
    "upstream_ms",
    "retries",
    "trace_id",
    "client",
]
_VALUE = r'"(?:[^"\\]|\\.)*"|[^\s"=\\]+'
_PAIR = re.compile(rf"([a-z_]+)=({_VALUE})")
_LINE = re.compile(rf"[a-z_]+=(?:{_VALUE})(?: [a-z_]+=(?:{_VALUE}))*")


def record(**changes: Any) -> AccessRecord:
    return dataclasses.replace(RECORD, **changes)


def parse_text(line: str) -> dict[str, str]:
    """A strict key=value reader: the whole line must be pairs joined by single spaces."""
    assert _LINE.fullmatch(line), line
    fields: dict[str, str] = {}
    for key, raw in _PAIR.findall(line):
        assert key not in fields, f"{key} appears twice in {line!r}"
        fields[key] = ast.literal_eval(raw) if raw.startswith('"') else raw
    return fields


# --- formats -----------------------------------------------------------------------------


def test_text_line_exactly() -> None:
    assert format_text(RECORD) == TEXT
    assert list(parse_text(TEXT)) == KEYS


def test_json_line_exactly_and_parses_back() -> None:
    line = format_json(RECORD)
    assert line == JSON
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.123Z",
        "method": "GET",
        "path": "/v1.0/invoke/orders/method/new",
        "app_id": "orders",
        "status": 200,
        "bytes_in": 12,
        "bytes_out": 345,
        "upstream": "127.0.0.1:3000",
        "total_ms": 1.5,
        "upstream_ms": 1.25,
        "retries": 0,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "client": "127.0.0.1:50412",
    }
    assert list(json.loads(line)) == KEYS


def test_empty_values_are_quoted_in_text_and_kept_in_json() -> None:
    empty = record(upstream="", trace_id="")
    assert ' upstream="" ' in format_text(empty)
    assert ' trace_id="" ' in format_text(empty)
    assert parse_text(format_text(empty))["upstream"] == ""
    loaded = json.loads(format_json(empty))
    assert loaded["upstream"] == ""
    assert loaded["trace_id"] == ""


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1700000000.123, "2023-11-14T22:13:20.123Z"),
        (1700000000.0004, "2023-11-14T22:13:20.000Z"),
        (1700000000.9996, "2023-11-14T22:13:21.000Z"),
        (1709164800.5, "2024-02-29T00:00:00.500Z"),
    ],
    ids=["epoch", "millis", "rounds-down", "rounds-into-next-second", "leap-day"],
)
def test_time_is_rfc3339_utc_with_millis(epoch: float, text: str) -> None:
    assert rfc3339_ms(epoch) == text
    assert json.loads(format_json(record(time=epoch)))["time"] == text
    assert parse_text(format_text(record(time=epoch)))["time"] == text


@pytest.mark.parametrize(
    ("total", "text", "number"),
    [(0.0, "0.000", 0.0), (12.34567, "12.346", 12.346), (float("nan"), "-1.000", -1.0)],
    ids=["zero", "rounded", "nan"],
)
def test_durations_are_rounded_to_microseconds(total: float, text: str, number: float) -> None:
    line = record(total_ms=total)
    assert parse_text(format_text(line))["total_ms"] == text
    assert json.loads(format_json(line))["total_ms"] == number


HOSTILE_PATHS = [
    "/x\nstatus=500 fake=1",
    "/x\r\nGET /admin",
    '/a" status=999 injected="',
    "/a status=999",
    '/a\\" status=999',
    "/tab\there",
    "/nul\x00/esc\x1b[31mred",
    "/line\u2028sep\u2029para\x85nel\x0bvt\x0cff\x1cfs",
    "/q?a=b&c=d",
    "/caf\u00e9/\U0001f600",
    "/lone\udcffsurrogate",
]
HOSTILE_IDS = [
    "lf",
    "crlf",
    "quote",
    "space",
    "backslash-quote",
    "tab",
    "control",
    "unicode-line-breaks",
    "equals",
    "non-ascii",
    "lone-surrogate",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS, ids=HOSTILE_IDS)
def test_text_path_cannot_break_the_line_or_fake_fields(path: str) -> None:
    line = format_text(record(path=path, app_id=path))
    assert len(line.splitlines()) == 1
    assert line.isprintable()
    fields = parse_text(line)
    assert list(fields) == KEYS
    assert fields["path"] == path
    assert fields["app_id"] == path
    assert fields["status"] == "200"


@pytest.mark.parametrize("path", HOSTILE_PATHS, ids=HOSTILE_IDS)
def test_json_path_cannot_break_the_line(path: str) -> None:
    line = format_json(record(path=path))
    assert len(line.splitlines()) == 1
    assert line.isascii()
    loaded = json.loads(line)
    assert loaded["path"] == path
    assert loaded["status"] == 200


def test_plain_values_stay_unquoted() -> None:
    fields = format_text(record(client="[::1]:5000", upstream="10.0.0.1:3000"))
    assert " client=[::1]:5000" in fields
    assert " upstream=10.0.0.1:3000 " in fields


# --- the writer --------------------------------------------------------------------------


@pytest.fixture
def logs() -> Iterator[list[AccessLog]]:
    """Logs a test opens; each is closed so no writer thread outlives the test."""
    opened: list[AccessLog] = []
    yield opened
    for log in opened:
        log.close(5.0)


def open_log(logs: list[AccessLog], stream: Any, as_json: bool, max_queue: int = 8192) -> AccessLog:
    log = AccessLog(stream, as_json=as_json, max_queue=max_queue)
    logs.append(log)
    return log


@pytest.mark.parametrize(("as_json", "line"), [(False, TEXT), (True, JSON)], ids=["text", "json"])
def test_records_reach_a_real_file_in_order(
    logs: list[AccessLog], tmp_path: Path, as_json: bool, line: str
) -> None:
    target = tmp_path / "access.log"
    with target.open("w", encoding="utf-8") as stream:
        log = open_log(logs, stream, as_json)
        for retries in range(3):
            log.write(record(retries=retries))
        assert log.close(5.0) is True
    lines = target.read_text(encoding="utf-8").splitlines()
    assert lines[0] == line
    formatter = format_json if as_json else format_text
    assert lines == [formatter(record(retries=n)) for n in range(3)]
    assert log.dropped == 0


def test_close_flushes_everything_queued(logs: list[AccessLog], tmp_path: Path) -> None:
    target = tmp_path / "access.log"
    with target.open("w", encoding="utf-8") as stream:
        log = open_log(logs, stream, as_json=True, max_queue=5000)
        for number in range(5000):
            log.write(record(bytes_out=number))
        assert log.close(10.0) is True
        # Read through the same open file: nothing may be left in a buffer.
        lines = target.read_text(encoding="utf-8").splitlines()
    assert log.dropped == 0
    assert [json.loads(line)["bytes_out"] for line in lines] == list(range(5000))


class _ThreadRecordingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def write(self, text: str) -> int:
        self.threads.add(threading.current_thread().name)
        return super().write(text)


def test_stream_is_written_from_the_log_thread_not_the_caller(logs: list[AccessLog]) -> None:
    stream = _ThreadRecordingStream()
    log = open_log(logs, stream, as_json=False)
    log.write(RECORD)
    assert log.close(5.0) is True
    assert stream.getvalue() == TEXT + "\n"
    assert stream.threads
    assert threading.current_thread().name not in stream.threads


def test_write_never_blocks_on_a_stalled_pipe_and_counts_drops(logs: list[AccessLog]) -> None:
    reader_fd, writer_fd = os.pipe()
    stream = os.fdopen(writer_fd, "w", encoding="utf-8")
    max_queue = 16
    log = open_log(logs, stream, as_json=False, max_queue=max_queue)
    # 16 KiB lines: one full queue is several times what the pipe can hold.
    big = record(path="/" + "x" * 16384)
    written = 0

    def write(count: int) -> None:
        nonlocal written
        for _ in range(count):
            log.write(big)
            written += 1

    try:
        caller = threading.Thread(target=write, args=(200,))
        caller.start()
        caller.join(10.0)
        assert not caller.is_alive(), "write() blocked on a full pipe"
        time.sleep(0.3)  # the log thread fills the pipe and stalls in write()
        stalled_drops = log.dropped
        assert stalled_drops > 0

        started = time.monotonic()
        caller = threading.Thread(target=write, args=(1000,))
        caller.start()
        caller.join(10.0)
        assert not caller.is_alive(), "write() blocked on a full pipe"
        assert time.monotonic() - started < 2.0
        # At most one queue's worth can still have been accepted once the thread stalled.
        assert log.dropped - stalled_drops >= 1000 - max_queue
        assert "dropped=" in repr(log)
    finally:
        received = bytearray()
        drain = threading.Thread(target=_read_all, args=(reader_fd, received))
        drain.start()
        closed = log.close(10.0)
        stream.close()
        drain.join(10.0)
        os.close(reader_fd)
    assert closed is True
    lines = received.decode("utf-8").splitlines()
    assert all(line == format_text(big) for line in lines)
    # Every record was either written or counted as dropped.
    assert len(lines) + log.dropped == written == 1200


def _read_all(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 65536):
        into += chunk


class _GatedStream(io.StringIO):
    """Holds every write until the test opens the gate: a stream that has stalled."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.gate.wait(10.0)
        return super().write(text)


def test_close_gives_up_on_a_stalled_stream_and_a_later_close_finishes(
    logs: list[AccessLog],
) -> None:
    stream = _GatedStream()
    log = open_log(logs, stream, as_json=False, max_queue=2)
    log.write(record(retries=1))
    assert stream.entered.wait(5.0)  # the log thread holds record 1, stuck in write()
    log.write(record(retries=2))
    log.write(record(retries=3))  # the queue is now full
    log.write(record(retries=4))
    assert log.dropped == 1

    started = time.monotonic()
    assert log.close(0.2) is False
    assert time.monotonic() - started < 2.0
    assert repr(log).startswith("<AccessLog stopping ")
    log.write(record(retries=5))  # refused once closing has begun
    assert log.dropped == 2

    stream.gate.set()
    assert log.close(5.0) is True
    assert repr(log).startswith("<AccessLog closed ")
    lines = stream.getvalue().splitlines()
    assert [parse_text(line)["retries"] for line in lines] == ["1", "2", "3"]
    assert log.dropped == 2


def test_write_after_close_is_dropped_and_counted(logs: list[AccessLog]) -> None:
    stream = io.StringIO()
    log = open_log(logs, stream, as_json=False)
    assert log.close(5.0) is True
    log.write(RECORD)
    assert log.dropped == 1
    assert stream.getvalue() == ""
    assert log.close(1.0) is True  # closing twice is harmless


def test_a_failing_stream_loses_records_but_not_the_thread(logs: list[AccessLog]) -> None:
    stream = io.StringIO()
    stream.close()
    log = open_log(logs, stream, as_json=True)
    for _ in range(3):
        log.write(RECORD)
    assert log.close(5.0) is True
    assert log.dropped == 3


def test_repr_shows_state_format_and_counts(logs: list[AccessLog]) -> None:
    log = open_log(logs, io.StringIO(), as_json=True)
    assert repr(log) == "<AccessLog running format=json queued=0 dropped=0>"
    log.close(5.0)
    assert repr(log) == "<AccessLog closed format=json queued=0 dropped=0>"


def test_queue_must_hold_at_least_one_record() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        AccessLog(io.StringIO(), as_json=False, max_queue=0)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        pytest.param(b"/v1.0/invoke/orders/method/customers/alice", INVOKE_ROUTE, id="invoke"),
        pytest.param(b"/v1.0/invoke/orders.ns/method/", INVOKE_ROUTE, id="invoke-namespaced"),
        pytest.param(b"/v1.0/healthz", "/v1.0/healthz", id="healthz"),
        pytest.param(b"/v1.0/healthz/outbound", "/v1.0/healthz/outbound", id="outbound"),
        pytest.param(b"/v1.0/metadata", "/v1.0/metadata", id="metadata"),
        pytest.param(b"/v1.0/metadata/alice", METADATA_KEY_ROUTE, id="metadata-key"),
        pytest.param(b"/customers/alice", APP_ROUTE, id="app-path"),
        pytest.param(b"/v1.0/healthz/alice", APP_ROUTE, id="not-a-fixed-route"),
    ],
)
def test_obfuscated_paths_name_the_route_only(path: bytes, route: str) -> None:
    assert obfuscated_path(path) == route


@pytest.mark.parametrize(
    ("path", "health"),
    [
        (b"/v1.0/healthz", True),
        (b"/v1.0/healthz/outbound", True),
        (b"/v1.0/metadata", False),
        (b"/v1.0/invoke/app/method/healthz", False),
    ],
)
def test_health_checks_are_the_healthz_endpoints(path: bytes, health: bool) -> None:
    assert is_health_check(path) is health
