"""Unit tests for benchmarks.flaky_app, the retry case's app.

The retry case's figures (app requests per client request, errors) only mean something if
the app fails exactly every N-th request (of each connection, or of the process with
``--count process``), answers in order and never counts /_stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import pytest

from benchmarks import flaky_app, nginx_conf, report
from benchmarks.flaky_app import COUNT_CONNECTION, COUNT_PROCESS, App, Connection, Counter


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


def _conn(
    fail_every: int = 3, count: str = COUNT_CONNECTION
) -> tuple[App, Connection, FakeTransport]:
    app = App(fail_every, count)
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
@pytest.mark.parametrize("count", [COUNT_CONNECTION, COUNT_PROCESS])
def test_should_fail_every_nth(fail_every: int, want: list[bool], count: str) -> None:
    """One counter (one connection, or the process): the same pattern in both modes."""
    app = App(fail_every, count)
    counter = Counter()
    assert [app.should_fail(counter) for _ in want] == want
    assert app.requests == len(want)
    assert app.failed == sum(want)


def test_should_fail_counts_per_connection() -> None:
    app = App(3)  # the default: per connection
    a, b = Counter(), Counter()
    order = [a, a, b, a, b, b, a, a, a, b]
    got = [app.should_fail(c) for c in order]
    # a: 1 2 . 3 . . 4 5 6 .  /  b: . . 1 . 2 3 . . . 4
    assert got == [False, False, False, True, False, True, False, False, True, False]
    assert (a.requests, b.requests) == (6, 4)
    assert (app.requests, app.failed) == (10, 3)


def test_should_fail_counts_per_process() -> None:
    app = App(3, COUNT_PROCESS)
    a, b = Counter(), Counter()
    order = [a, a, b, a, b, b, a, a, a, b]
    got = [app.should_fail(c) for c in order]
    assert got == [(i + 1) % 3 == 0 for i in range(len(order))]
    assert (app.requests, app.failed) == (10, 3)


def test_should_fail_without_counter_is_one_connection() -> None:
    app = App(2)
    assert [app.should_fail() for _ in range(4)] == [False, True, False, True]
    assert not app.should_fail(Counter())  # another connection's 1st request


def test_negative_fail_every_is_rejected() -> None:
    with pytest.raises(ValueError):
        App(-1)


def test_unknown_count_is_rejected() -> None:
    with pytest.raises(ValueError):
        App(3, "thread")


def test_count_modes_match_report() -> None:
    assert (COUNT_CONNECTION, COUNT_PROCESS) == (report.COUNT_CONNECTION, report.COUNT_PROCESS)
    assert flaky_app.COUNT_MODES == (COUNT_CONNECTION, COUNT_PROCESS)


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
    assert stats == {
        "requests": 1,
        "failed": 1,
        "connections": 2,
        "fail_every": 1,
        "count": "connection",
    }
    assert app.requests == 1
    assert App(3, COUNT_PROCESS).stats()["count"] == "process"


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


def _two_connections(count: str) -> tuple[App, FakeTransport, FakeTransport]:
    """Connections 1 and 2 send 1, 2, 1, 2, 1, 2 requests' worth, one at a time."""
    app = App(3, count)
    t1, t2 = FakeTransport(), FakeTransport()
    c1, c2 = Connection(app), Connection(app)
    c1.connection_made(t1)
    c2.connection_made(t2)
    for conn in (c1, c2, c1, c2, c1, c2):
        conn.data_received(GET_SMALL)
    return app, t1, t2


def test_counter_is_shared_by_connections() -> None:
    app, t1, t2 = _two_connections(COUNT_PROCESS)
    assert _statuses(b"".join(t1.writes)) == [200, 503, 200]
    assert _statuses(b"".join(t2.writes)) == [200, 200, 503]
    assert (app.requests, app.failed, app.connections) == (6, 2, 2)


def test_each_connection_counts_its_own() -> None:
    app, t1, t2 = _two_connections(COUNT_CONNECTION)
    assert _statuses(b"".join(t1.writes)) == [200, 200, 503]
    assert _statuses(b"".join(t2.writes)) == [200, 200, 503]
    assert (app.requests, app.failed, app.connections) == (6, 2, 2)


def test_new_connection_starts_its_count_afresh() -> None:
    app, conn, transport = _conn(3)
    conn.data_received(GET_SMALL * 2)
    assert _statuses(b"".join(transport.writes)) == [200, 200]
    conn.connection_lost(None)
    t2 = FakeTransport()
    c2 = Connection(app)
    c2.connection_made(t2)
    c2.data_received(GET_SMALL * 3)
    assert _statuses(b"".join(t2.writes)) == [200, 200, 503]
    assert app.requests == 5


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
    ("argv", "port", "fail_every", "count"),
    [
        (["8080"], 8080, 3, "connection"),
        (["8080", "--fail-every", "0"], 8080, 0, "connection"),
        (["8080", "--count", "process"], 8080, 3, "process"),
        (["8080", "--count", "connection", "--fail-every", "2"], 8080, 2, "connection"),
    ],
    ids=["default", "healthy", "process", "connection"],
)
def test_parse_args(argv: list[str], port: int, fail_every: int, count: str) -> None:
    args = flaky_app.parse_args(argv)
    assert (args.port, args.fail_every, args.count) == (port, fail_every, count)


@pytest.mark.parametrize(
    "argv",
    [["8080", "--fail-every", "-1"], ["8080", "--count", "thread"]],
    ids=["negative", "unknown-count"],
)
def test_parse_args_rejects(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        flaky_app.parse_args(argv)


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


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes
) -> tuple[int, bytes]:
    """One GET on an open connection: its status and body (Content-Length framed)."""
    writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
    assert length is not None, head
    body = await asyncio.wait_for(reader.readexactly(int(length[1])), 5)
    return _statuses(head)[0], body


@pytest.mark.parametrize(
    ("count", "want_a", "want_b"),
    [
        # Each connection fails its own 3rd and 6th request.
        ("connection", [200, 200, 503, 200, 200, 503], [200, 200, 503, 200, 200, 503]),
        # One counter: the process's 3rd, 6th, 9th, 12th request (a's 2nd and 5th, b's 3rd
        # and 6th), whichever connection sent it.
        ("process", [200, 503, 200, 200, 503, 200], [200, 200, 503, 200, 200, 503]),
    ],
)
async def test_two_real_connections(count: str, want_a: list[int], want_b: list[int]) -> None:
    """Two raw loopback connections sending alternately, one request at a time (a: 1st,
    b: 2nd, a: 3rd, ... over the process); /_stats on a third connection sums them."""
    loop = asyncio.get_running_loop()
    app = App(3, count)
    server = await loop.create_server(lambda: Connection(app), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    writers: list[asyncio.StreamWriter] = []
    try:
        ra, wa = await asyncio.open_connection("127.0.0.1", port)
        writers.append(wa)
        rb, wb = await asyncio.open_connection("127.0.0.1", port)
        writers.append(wb)
        got_a: list[int] = []
        got_b: list[int] = []
        for _ in range(6):
            status, body = await _exchange(ra, wa, b"/small")
            assert body == (flaky_app.SMALL_BODY if status == 200 else flaky_app.FAIL_BODY)
            got_a.append(status)
            got_b.append((await _exchange(rb, wb, b"/small"))[0])
        assert (got_a, got_b) == (want_a, want_b)

        rs, ws = await asyncio.open_connection("127.0.0.1", port)
        writers.append(ws)
        status, body = await _exchange(rs, ws, flaky_app.STATS_PATH)
        assert status == 200
        assert json.loads(body) == {
            "requests": 12,
            "failed": 4,
            "connections": 3,
            "fail_every": 3,
            "count": count,
        }
        # /_stats is not counted: a's next request is still its 7th (the process's 13th).
        assert (await _exchange(ra, wa, b"/small"))[0] == 200
        assert app.requests == 13
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
