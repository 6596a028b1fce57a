"""Unit tests for benchmarks.flaky_app, the retry case's app.

The retry case's figures (app requests per client request, errors) only mean something if
the app fails exactly every N-th request, answers in order and never counts /_stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import pytest

from benchmarks import flaky_app, nginx_conf
from benchmarks.flaky_app import App, Connection


class FakeTransport(asyncio.Transport):
    """Records writes; enough of a transport for Connection."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.reading_paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False


def _conn(fail_every: int = 3) -> tuple[App, Connection, FakeTransport]:
    app = App(fail_every)
    conn = Connection(app)
    transport = FakeTransport()
    conn.connection_made(transport)
    return app, conn, transport


def _statuses(data: bytes) -> list[int]:
    """Status codes of the responses in ``data`` (bodies never contain a status line)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


GET_SMALL = b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("fail_every", "want"),
    [
        (3, [False, False, True, False, False, True, False]),
        (1, [True, True, True]),
        (2, [False, True, False, True]),
        (0, [False] * 7),
    ],
    ids=["every-3rd", "always", "every-2nd", "never"],
)
def test_should_fail_counts_globally(fail_every: int, want: list[bool]) -> None:
    app = App(fail_every)
    assert [app.should_fail() for _ in want] == want
    assert app.requests == len(want)
    assert app.failed == sum(want)


def test_negative_fail_every_is_rejected() -> None:
    with pytest.raises(ValueError):
        App(-1)


def test_ok_answer_is_nginx_small_body() -> None:
    app = App(0)
    resp = app.answer(b"/small", close=False)
    head, body = resp.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == nginx_conf.body_for("small") == flaky_app.SMALL_BODY
    assert b"\r\nContent-Type: text/plain" in head
    assert f"\r\nContent-Length: {len(body)}".encode() in head
    assert b"\r\nConnection: keep-alive" in head


def test_fail_answer_is_503_with_short_body() -> None:
    app = App(1)
    resp = app.answer(b"/small", close=True)
    head, body = resp.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert body == flaky_app.FAIL_BODY
    assert f"\r\nContent-Length: {len(body)}".encode() in head
    assert b"\r\nConnection: close" in head


def test_unknown_path_is_404_and_counted() -> None:
    app = App(0)
    assert _statuses(app.answer(b"/4k", close=False)) == [404]
    assert app.requests == 1


def test_stats_are_not_counted_and_never_fail() -> None:
    app = App(1)  # every counted request fails
    app.connections = 2
    app.answer(b"/small", close=False)
    resp = app.answer(flaky_app.STATS_PATH, close=False)
    assert _statuses(resp) == [200]
    stats = json.loads(resp.split(b"\r\n\r\n", 1)[1])
    assert stats == {"requests": 1, "failed": 1, "connections": 2, "fail_every": 1}
    assert app.requests == 1


def test_pipelined_requests_answered_in_order_in_one_write() -> None:
    app, conn, transport = _conn(3)
    conn.data_received(GET_SMALL * 4 + b"GET /small?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(transport.writes) == 1
    assert _statuses(transport.writes[0]) == [200, 200, 503, 200, 200]
    assert app.requests == 5
    assert not transport.closed


def test_request_split_across_reads() -> None:
    _, conn, transport = _conn(0)
    conn.data_received(GET_SMALL[:7])
    assert transport.writes == []
    conn.data_received(GET_SMALL[7:])
    assert _statuses(b"".join(transport.writes)) == [200]


def test_counter_is_shared_by_connections() -> None:
    app = App(3)
    t1, t2 = FakeTransport(), FakeTransport()
    c1, c2 = Connection(app), Connection(app)
    c1.connection_made(t1)
    c2.connection_made(t2)
    c1.data_received(GET_SMALL)
    c2.data_received(GET_SMALL)
    c1.data_received(GET_SMALL)
    assert _statuses(b"".join(t1.writes)) == [200, 503]
    assert _statuses(b"".join(t2.writes)) == [200]
    assert app.connections == 2


def test_http10_closes_and_ignores_the_rest() -> None:
    app, conn, transport = _conn(0)
    conn.data_received(b"GET /small HTTP/1.0\r\n\r\n" + GET_SMALL)
    data = b"".join(transport.writes)
    assert _statuses(data) == [200]
    assert b"Connection: close" in data
    assert transport.closed
    assert app.requests == 1
    conn.data_received(GET_SMALL)  # after close: dropped
    assert _statuses(b"".join(transport.writes)) == [200]


def test_connection_close_header() -> None:
    _, conn, transport = _conn(0)
    conn.data_received(b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert transport.closed
    assert b"Connection: close" in transport.writes[0]


def test_garbage_gets_400_and_close() -> None:
    app, conn, transport = _conn(0)
    conn.data_received(b"NOT HTTP AT ALL\r\n\r\n")
    assert _statuses(b"".join(transport.writes)) == [400]
    assert transport.closed
    assert app.requests == 0


def test_back_pressure_pauses_reading() -> None:
    _, conn, transport = _conn(0)
    conn.pause_writing()
    assert transport.reading_paused
    conn.resume_writing()
    assert not transport.reading_paused


@pytest.mark.parametrize(
    ("argv", "port", "fail_every"),
    [(["8080"], 8080, 3), (["8080", "--fail-every", "0"], 8080, 0)],
    ids=["default", "healthy"],
)
def test_parse_args(argv: list[str], port: int, fail_every: int) -> None:
    args = flaky_app.parse_args(argv)
    assert (args.port, args.fail_every) == (port, fail_every)


def test_parse_args_rejects_negative() -> None:
    with pytest.raises(SystemExit):
        flaky_app.parse_args(["8080", "--fail-every", "-1"])


async def test_serves_over_a_real_socket() -> None:
    """Keep-alive and pipelining end to end on loopback, on the test's event loop."""
    loop = asyncio.get_running_loop()
    app = App(3)
    server = await loop.create_server(lambda: Connection(app), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET_SMALL * 3)
        await writer.drain()
        data = b""
        while not data.endswith(flaky_app.FAIL_BODY):
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, "server closed the connection"
            data += chunk
        assert _statuses(data) == [200, 200, 503]
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
