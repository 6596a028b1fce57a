"""The scrape endpoint over real loopback connections: exposition, methods, keep-alive, bounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from fastproxy.observability.dapr_metrics import DaprMetrics
from fastproxy.observability.metrics_server import (
    MAX_BURST,
    MetricsProtocol,
    MetricsServerState,
    start_metrics_server,
    stop_metrics_server,
)
from tests.integration.observability_fixtures import HOST, Exposition, L, parse_exposition

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


# -- helpers ---------------------------------------------------------------------------------------


async def read_response(
    reader: asyncio.StreamReader, head_only: bool = False
) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers["content-length"])
    body = await reader.readexactly(length)
    return int(status_line.split(" ")[1]), headers, body


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def answered_then_closed(port: int, data: bytes) -> int:
    """Write `data` on a new connection: the status of the one answer, which closes it."""
    reader, writer = await connect(port)
    writer.write(data)
    status, headers, _ = await read_response(reader)
    assert headers["connection"] == "close"
    assert await reader.read() == b""
    await close(writer)
    return status


class Served:
    def __init__(self, metrics: Any, server: asyncio.Server) -> None:
        self.metrics = metrics
        self.server = server
        self.port: int = server.sockets[0].getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"

    async def scrape(self, path: str = "/metrics") -> Exposition:
        """One GET with a fresh client: 200, the exposition's content type, and its samples."""
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == CONTENT_TYPE
            return parse_exposition(await response.text())


@contextlib.asynccontextmanager
async def serving(metrics: Any, **settings: Any) -> AsyncIterator[Served]:
    """A metrics server for `metrics` on a loopback port, stopped at the end."""
    server = await start_metrics_server(metrics, HOST, 0, **settings)
    try:
        yield Served(metrics, server)
    finally:
        await stop_metrics_server(server)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with serving(DaprMetrics("app1", max_series=100)) as running:
        yield running


def record_known_mix(metrics: DaprMetrics) -> None:
    for _ in range(3):
        metrics.record_server(
            b"POST", b"/v1.0/invoke/app2/method/orders?x=1", 200, 4.0, 10, 20, 0.02
        )
    metrics.record_server(b"GET", b"/v1.0/invoke/app2/method/orders", 500, 30.0, 0, 64, 0.05)
    metrics.record_server(b"BREW", b"/v1.0/invoke/app2/method/tea", 418, 1.0, 0, 0, 0.01)
    metrics.record_remote_call("app2", 200, 3.5)
    metrics.record_remote_call("app2", 200, 3.5)
    metrics.record_inbound("app0", 204)
    metrics.record_app_call(b"GET", b"/local", 200, 0.8, 0, 2)


# -- scraping --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/metrics", "/", "/anything/else?x=1"])
async def test_scrape_returns_the_exposition_with_exact_counts_and_labels(
    served: Served, path: str
) -> None:
    record_known_mix(served.metrics)
    exposition = await served.scrape(path)

    invoke = "/v1.0/invoke/app2/method/"
    assert exposition.family("dapr_http_server_request_count") == {
        L(app_id="app1", method="POST", path=invoke + "orders", status="200"): 3,
        L(app_id="app1", method="GET", path=invoke + "orders", status="500"): 1,
        L(app_id="app1", method="UNKNOWN", path=invoke + "tea", status="418"): 1,
    }
    assert exposition.family("dapr_http_server_latency_sum") == {
        L(app_id="app1", method="POST", path=invoke + "orders", status="200"): 12.0,
        L(app_id="app1", method="GET", path=invoke + "orders", status="500"): 30.0,
        L(app_id="app1", method="UNKNOWN", path=invoke + "tea", status="418"): 1.0,
    }
    ok = L(app_id="app1", method="POST", path=invoke + "orders", status="200")
    assert exposition.value("dapr_http_server_latency_bucket", **dict(ok), le="4") == 3
    assert exposition.value("dapr_http_server_latency_bucket", **dict(ok), le="3") == 0
    assert exposition.value("dapr_http_server_request_bytes_count", app_id="app1") == 5
    assert exposition.value("dapr_http_server_response_bytes_sum", app_id="app1") == 124
    assert exposition.family("dapr_runtime_service_invocation_req_sent_total") == {
        L(app_id="app1", dst_app_id="app2", type="unary"): 2
    }
    assert exposition.family("dapr_runtime_service_invocation_res_recv_total") == {
        L(app_id="app1", src_app_id="app2", status="200", type="unary"): 2
    }
    assert exposition.family("dapr_runtime_service_invocation_req_recv_total") == {
        L(app_id="app1", src_app_id="app0"): 1
    }
    assert exposition.family("dapr_runtime_service_invocation_res_sent_total") == {
        L(app_id="app1", dst_app_id="app0", status="204"): 1
    }
    assert exposition.family("dapr_http_client_completed_count") == {
        L(app_id="app1", method="GET", path="/local", status="200"): 1
    }
    assert exposition.family("fastproxy_metrics_series_overflow_total") == {frozenset(): 0}
    assert exposition.types["dapr_http_server_request_count"] == "counter"
    assert exposition.types["dapr_http_server_latency"] == "histogram"


async def test_scrape_reads_gauges_at_scrape_time(served: Served) -> None:
    state = SimpleNamespace(open=1.0)
    served.metrics.add_gauge("fastproxy_open_connections", "Open.", (), lambda: [((), state.open)])

    async with aiohttp.ClientSession() as session:
        async with session.get(served.url + "/metrics") as response:
            first = parse_exposition(await response.text())
        state.open = 7.0
        async with session.get(served.url + "/metrics") as response:
            second = parse_exposition(await response.text())

    assert first.value("fastproxy_open_connections") == 1
    assert second.value("fastproxy_open_connections") == 7


async def test_head_answers_headers_only(served: Served) -> None:
    record_known_mix(served.metrics)

    async with aiohttp.ClientSession() as session:
        async with session.get(served.url + "/metrics") as response:
            body = await response.read()
        async with session.head(served.url + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == CONTENT_TYPE
            assert int(response.headers["Content-Length"]) == len(body)
            assert await response.read() == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_other_methods_are_refused_with_405_and_the_connection_stays(
    served: Served, method: str
) -> None:
    reader, writer = await connect(served.port)
    writer.write(
        f"{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".encode()
        + b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    )

    status, headers, _ = await read_response(reader)
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    status, headers, _ = await read_response(reader)
    assert status == 200
    await close(writer)


async def test_keep_alive_serves_two_requests_on_one_connection(served: Served) -> None:
    created = 0

    async def on_created(*_: object) -> None:
        nonlocal created
        created += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_created)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        for path in ("/metrics", "/"):
            async with session.get(served.url + path) as response:
                assert response.status == 200
                assert "Connection" not in response.headers
                await response.read()

    assert created == 1


async def test_raw_keep_alive_and_pipelining_answer_in_order(served: Served) -> None:
    reader, writer = await connect(served.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    first, _, body = await read_response(reader)
    writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    second, head_headers, _ = await read_response(reader, head_only=True)
    third, _, body_again = await read_response(reader)

    assert (first, second, third) == (200, 200, 200)
    assert int(head_headers["content-length"]) == len(body) == len(body_again)
    await close(writer)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="connection-close"
        ),
        pytest.param(b"GET / HTTP/1.0\r\n\r\n", id="http-1.0"),
    ],
)
async def test_connection_closes_when_the_client_asks(served: Served, request_bytes: bytes) -> None:
    assert await answered_then_closed(served.port, request_bytes) == 200


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", 400, id="garbage"),
        pytest.param(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400, id="bad-header"),
        pytest.param(b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 431, id="huge-head"),
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: 20000\r\n\r\n" + b"a" * 20_000, 413, id="huge-body"
        ),
        pytest.param(b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n", 405, id="connect"),
        pytest.param(
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            200,
            id="upgrade",
        ),
    ],
)
async def test_bad_requests_are_answered_then_closed(
    served: Served, request_bytes: bytes, expected: int
) -> None:
    assert await answered_then_closed(served.port, request_bytes) == expected


async def test_a_parse_error_after_a_good_request_answers_both_in_order(served: Served) -> None:
    reader, writer = await connect(served.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBROKEN\r\n\r\n")

    first, _, _ = await read_response(reader)
    second, headers, _ = await read_response(reader)

    assert (first, second) == (200, 400)
    assert headers["connection"] == "close"
    assert await reader.read() == b""
    await close(writer)


async def test_a_long_pipelined_burst_is_cut_after_the_bound(served: Served) -> None:
    reader, writer = await connect(served.port)
    writer.write(GET * (MAX_BURST * 4))

    answers = []
    while not reader.at_eof():
        try:
            answers.append(await read_response(reader))
        except asyncio.IncompleteReadError:
            break

    # MAX_BURST per read of the socket; the 900 bytes normally arrive in one read
    assert MAX_BURST <= len(answers) < MAX_BURST * 4
    assert all(status == 200 for status, _, _ in answers)
    assert answers[-1][1]["connection"] == "close"
    await close(writer)


async def test_render_failure_is_a_500_on_that_connection_only() -> None:
    class Broken:
        def render(self) -> bytes:
            raise RuntimeError("collector broke")

    async with serving(Broken()) as broken:
        reader, writer = await connect(broken.port)
        writer.write(GET * 2)
        first, _, body = await read_response(reader)
        second, _, _ = await read_response(reader)
        assert (first, second) == (500, 500)
        assert body == b"Internal Server Error\n"
        await close(writer)


async def test_idle_connections_are_closed() -> None:
    async with serving(DaprMetrics("app1"), idle_timeout=0.1) as idle:
        reader, writer = await connect(idle.port)
        writer.write(GET)
        status, _, _ = await read_response(reader)
        assert status == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await close(writer)


async def test_stopping_closes_kept_alive_connections() -> None:
    server = await start_metrics_server(DaprMetrics("app1"), HOST, 0)
    reader, writer = await connect(server.sockets[0].getsockname()[1])
    writer.write(GET)
    await read_response(reader)

    await stop_metrics_server(server)

    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert not server.is_serving()
    await close(writer)


async def test_a_flood_of_distinct_paths_keeps_series_at_the_bound(served: Served) -> None:
    for index in range(10_000):
        served.metrics.record_server(
            b"GET", b"/flood/%d?q=%d" % (index, index), 200, 1.0, 0, 0, 0.01
        )

    exposition = await served.scrape()

    counts = exposition.family("dapr_http_server_request_count")
    other = L(app_id="_other", method="_other", path="_other", status="_other")
    assert len(counts) == 101
    assert counts[other] == 10_000 - 100
    assert sum(counts.values()) == 10_000
    assert len(exposition.family("dapr_http_server_latency_count")) == 101
    assert len(exposition.family("dapr_http_server_response_count")) == 101
    # Each folded request lands in _other in the count, the latency and the response count.
    assert exposition.family("fastproxy_metrics_series_overflow_total") == {frozenset(): 3 * 9_900}


# -- flow control, on a fake transport ---------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True


async def test_answers_wait_while_the_client_is_not_reading() -> None:
    protocol = MetricsProtocol(MetricsServerState(DaprMetrics("app1"), 60.0))
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]

    protocol.pause_writing()
    protocol.data_received(b"GET / HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\n")
    assert (transport.written, transport.reading) == ([], False)
    assert protocol.eof_received() is True  # answers still owed: keep the transport

    protocol.resume_writing()

    assert [data.split(b"\r\n", 1)[0] for data in transport.written] == [b"HTTP/1.1 200 OK"] * 2
    assert transport.written[0].endswith(b"\n") and transport.written[1].endswith(b"\r\n\r\n")
    assert transport.closed
    protocol.connection_lost(None)
    assert repr(protocol) == "<MetricsProtocol closing pending=0>"
