"""Unit tests for benchmarks.collector, the span sink of the small-c50-obs case.

The case reports the spans the collector counted against the requests wrk completed, so the
count must be exact for what fastproxy's Zipkin exporter sends, on real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from benchmarks import collector
from benchmarks.collector import Collector, Connection, count_spans
from benchmarks.obs_case import COLLECTOR_COUNTERS, ZIPKIN_PATH
from benchmarks.probe import http_get
from benchmarks.procs import free_port

ZIPKIN_SPAN = (
    '{"traceId":"%032x","id":"%016x","name":"CallLocal/bench/small","kind":"CLIENT",'
    '"timestamp":1,"duration":2,"localEndpoint":{"serviceName":"bench"},'
    '"tags":{"rpc.service":"ServiceInvocation","dapr.status_code":"200"}}'
)


def _zipkin(n: int) -> bytes:
    """A Zipkin v2 body of ``n`` spans in the compact layout exporters write."""
    return ("[" + ",".join(ZIPKIN_SPAN % (i + 1, i + 1) for i in range(n)) + "]").encode()


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize(
    ("body", "want"),
    [
        (_zipkin(1), 1),
        (_zipkin(512), 512),
        (b"[]", 0),
        (b"  [ ]\n", 0),
        (json.dumps(json.loads(_zipkin(3)), indent=2).encode(), 3),  # pretty-printed
        (b'[{"id":"1","traceId":"a"},{"id":"2","traceId":"b"}]', 2),  # other key order
        # A tag named traceId: one "traceId": more than spans; parsed instead.
        (b'[{"traceId":"a","tags":{"traceId":"x"}},{"traceId":"b"}]', 2),
        (b'[{"traceId":"a","tags":{"k":"v"},"traceId":"a"}]', 1),  # a repeated key
        # A nested list of objects starting with traceId: parsed instead.
        (b'[{"traceId":"a","links":[{"traceId":"b"},{"traceId":"c"}]}]', 1),
        (b'[{"traceId":"a","note":"\\"traceId\\":"}]', 1),  # the key inside a string
        (b"[1, 2, 3]", 3),
        (b'{"traceId":"a"}', None),  # an object, not a list
        (b'[{"traceId":"a"}', None),  # truncated
        (b"", None),
        (b"\xff\xfe", None),
        (b"not json", None),
    ],
    ids=[
        "one",
        "batch",
        "empty",
        "empty-spaced",
        "pretty",
        "key-order",
        "tag-named-traceId",
        "repeated-key",
        "nested-list",
        "key-in-string",
        "numbers",
        "object",
        "truncated",
        "no-body",
        "not-utf8",
        "garbage",
    ],
)
def test_count_spans(body: bytes, want: int | None) -> None:
    assert count_spans(body) == want
    if want is not None:
        assert want == len(json.loads(body))


def test_count_spans_of_fastproxy_zipkin_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter's own encoding, error spans, parents and a dapr-* header that looks like
    the key included, takes the fast path (no json) and agrees with json."""
    export = pytest.importorskip("fastproxy.observability.export")
    spans = pytest.importorskip("fastproxy.observability.spans")
    batch = [
        spans.invoke_span(
            trace_id=b"%032x" % i,
            span_id=b"%016x" % i,
            parent_id=b"%016x" % (i + 1) if i % 2 else None,
            kind="CLIENT",
            target_app_id="bench",
            method=b"small",
            verb=b"GET",
            path=b"/v1.0/invoke/bench/method/small",
            url=b"/v1.0/invoke/bench/method/small?traceId=1",
            status=503 if i % 3 == 0 else 200,
            start_ns=1_000_000,
            end_ns=2_000_000,
            headers=[(b"dapr-traceId", b'"traceId":')],
            server_address="127.0.0.1",
            server_port=8080,
        )
        for i in range(1, 301)
    ]
    body = export.encode_zipkin(batch, "bench")
    assert body.startswith(b'[{"traceId":')
    with monkeypatch.context() as patch:
        patch.setattr(json, "loads", _no_json)  # as the collector calls it
        assert count_spans(body) == 300
        with pytest.raises(AssertionError):
            count_spans(b"[]")  # the slow path would have parsed
    assert len(json.loads(body)) == 300


def _no_json(*args: object, **kwargs: object) -> object:
    raise AssertionError("json.loads called")


# --------------------------------------------------------------------------- answers


def test_answers_and_counters() -> None:
    c = Collector()
    ok = c.answer(b"POST", b"/api/v2/spans", _zipkin(3), close=False)
    assert ok.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert ok.endswith(b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n")
    bad = c.answer(b"POST", b"/anything", b"{}", close=True)
    assert bad.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in bad
    assert c.answer(b"GET", b"/api/v2/spans", b"", False).startswith(b"HTTP/1.1 404 ")
    assert c.answer(b"DELETE", collector.STATS_PATH, b"", False).startswith(b"HTTP/1.1 404 ")
    stats = c.answer(b"GET", collector.STATS_PATH, b"", False)
    assert stats.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: application/json\r\n" in stats
    want = {"requests": 2, "bytes": len(_zipkin(3)) + 2, "spans": 3, "invalid": 1}
    assert json.loads(stats.split(b"\r\n\r\n", 1)[1]) == {**want, "connections": 0}
    assert set(c.stats()) == set(COLLECTOR_COUNTERS)  # what run.py reads


def test_parse_args() -> None:
    assert collector.parse_args(["9411"]).port == 9411
    with pytest.raises(SystemExit):
        collector.parse_args([])


# --------------------------------------------------------------------------- real sockets


@contextlib.asynccontextmanager
async def _collector() -> AsyncIterator[tuple[Collector, int]]:
    loop = asyncio.get_running_loop()
    c = Collector()
    server = await loop.create_server(lambda: Connection(c), "127.0.0.1", 0)
    try:
        yield c, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


async def _read_responses(reader: asyncio.StreamReader, n: int) -> list[tuple[int, bytes]]:
    """``n`` Content-Length framed responses: status and body of each."""
    out: list[tuple[int, bytes]] = []
    for _ in range(n):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
        assert status is not None and length is not None, head
        out.append((int(status[1]), await asyncio.wait_for(reader.readexactly(int(length[1])), 5)))
    return out


def _post(body: bytes, close: bool = False, chunked: bool = False) -> bytes:
    head = f"POST {ZIPKIN_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    if not chunked:
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + encoded + b"0\r\n\r\n"


STATS_GET = b"GET /_stats HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_posts_of_any_size_pipelined_then_stats() -> None:
    """Keep-alive and pipelining on loopback: a 1-span POST, a ~10 MB one (Content-Length),
    the same chunked, an invalid one, then /_stats, all sent at once on one connection."""
    big = _zipkin(40_000)
    assert len(big) > 8_000_000
    async with _collector() as (c, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                _post(_zipkin(1)) + _post(big) + _post(big, chunked=True) + _post(b"[{") + STATS_GET
            )
            await writer.drain()
            answers = await _read_responses(reader, 5)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert [status for status, _ in answers] == [202, 202, 202, 400, 200]
        assert json.loads(answers[4][1]) == {
            "requests": 4,
            "bytes": 1 + len(_zipkin(1)) + 2 * len(big) + 1,
            "spans": 80_001,
            "invalid": 1,
            "connections": 1,
        }
        assert c.spans == 80_001


async def test_connection_close_is_honoured() -> None:
    async with _collector() as (c, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(_post(_zipkin(2), close=True) + _post(_zipkin(5)))
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)  # to EOF: the collector closed
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert data.startswith(b"HTTP/1.1 202 Accepted\r\n")
        assert data.count(b"HTTP/1.1") == 1
        assert (c.requests, c.spans) == (1, 2)  # the request after the close is ignored


async def test_counts_what_fastproxy_exports() -> None:
    """fastproxy's own batching exporter over loopback: every span counted, 512 a POST."""
    export = pytest.importorskip("fastproxy.observability.export")
    spans = pytest.importorskip("fastproxy.observability.spans")
    async with _collector() as (c, port):
        exporter = export.BatchExporter(
            f"http://127.0.0.1:{port}{ZIPKIN_PATH}",
            lambda batch: export.encode_zipkin(batch, "bench"),
            export.ZIPKIN_CONTENT_TYPE,
            interval=0.05,
        )
        exporter.start()
        for i in range(1, 1201):
            exporter.submit(
                spans.Span(
                    b"%032x" % i,
                    b"%016x" % i,
                    b"",
                    "CLIENT",
                    "bench",
                    b"small",
                    b"GET",
                    b"/small",
                    b"/small",
                    200,
                    1,
                    2,
                )
            )
            if i % 100 == 0:
                await asyncio.sleep(0)
        await exporter.close(deadline=5.0)
        assert (exporter.exported, exporter.dropped) == (1200, 0)
        assert c.spans == 1200
        assert c.invalid == 0
        assert c.requests >= 3  # at most 512 spans a POST
        assert c.connections == 1  # every batch on the one kept connection


def test_runs_as_a_process(tmp_path: Path) -> None:
    """`python benchmarks/collector.py PORT`, as run.py starts it."""
    port = free_port()
    script = Path(collector.__file__)
    with (tmp_path / "collector.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                status, body = http_get(port, "/_stats")
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "collector.log").read_text()
                assert time.monotonic() < deadline, "collector did not start"
                time.sleep(0.05)
        assert status == 200
        assert json.loads(body) == dict.fromkeys(COLLECTOR_COUNTERS, 0) | {"connections": 1}
    finally:
        proc.terminate()
        proc.wait(5)
