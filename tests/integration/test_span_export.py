"""Span export to a real HTTP collector on loopback: both encodings, TLS, and every failure.

The collector is an aiohttp app that records what it is sent and can be told
to answer with an error or to stall. A collector that is down, stalls or
refuses must cost dropped spans only: `submit` never blocks and never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import ipaddress
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fastproxy.observability.export import (
    OTLP_JSON_CONTENT_TYPE,
    ZIPKIN_CONTENT_TYPE,
    BatchExporter,
    ExporterState,
    encode_otlp_json,
    encode_zipkin,
)
from fastproxy.observability.spans import Span
from tests.integration.observability_fixtures import (
    HOST,
    Collector,
    closed_port,
    eventually,
    running_collector,
)
from tests.integration.ports import free_port

pytestmark = pytest.mark.asyncio


def _span(index: int) -> Span:
    return Span(
        trace_id=b"4bf92f3577b34da6a3ce929d0e0e4736",
        span_id=b"%016x" % (index + 1),
        parent_id=b"",
        kind="CLIENT",
        target_app_id="orders",
        method=b"neworder",
        verb=b"POST",
        path=b"/v1.0/invoke/orders/method/neworder",
        url=b"/v1.0/invoke/orders/method/neworder",
        status=200,
        start_ns=1_700_000_000_000_000_000 + index,
        end_ns=1_700_000_000_001_000_000 + index,
    )


def _span_id(index: int) -> str:
    """The id of `_span(index)` as the collector reads it."""
    return _span(index).span_id.decode()


def submit(exporter: BatchExporter, indices: Iterable[int]) -> list[Span]:
    """Hand `_span(i)` for each index to the exporter; the spans handed over."""
    spans = [_span(i) for i in indices]
    for span in spans:
        exporter.submit(span)
    return spans


async def until_exported(exporter: BatchExporter, count: int, timeout: float = 5.0) -> None:
    await eventually(lambda: exporter.exported == count, timeout, f"{count} spans exported")


async def until_dropped(exporter: BatchExporter, count: int, timeout: float = 5.0) -> None:
    await eventually(lambda: exporter.dropped == count, timeout, f"{count} spans dropped")


# -- the collector ---------------------------------------------------------------------------

StartCollector = Callable[..., Awaitable[Collector]]


@pytest.fixture
async def start_collector() -> AsyncIterator[StartCollector]:
    """Starts collectors answering 200; releases stalled requests and stops them at teardown."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(port: int = 0, ssl_context: ssl.SSLContext | None = None) -> Collector:
            return await stack.enter_async_context(running_collector(port, ssl_context, 200))

        yield start


@pytest.fixture
async def collector(start_collector: StartCollector) -> Collector:
    return await start_collector()


@pytest.fixture
async def make_exporter() -> AsyncIterator[Callable[..., BatchExporter]]:
    """Builds exporters (Zipkin encoding unless told otherwise); closes them all at teardown."""
    made: list[BatchExporter] = []

    def make(url: str, start: bool = True, **settings: Any) -> BatchExporter:
        settings.setdefault("encode", functools.partial(encode_zipkin, service_name="checkout"))
        settings.setdefault("content_type", ZIPKIN_CONTENT_TYPE)
        settings.setdefault("interval", 0.05)
        exporter = BatchExporter(url, **settings)
        made.append(exporter)
        if start:
            exporter.start()
        return exporter

    yield make
    for exporter in made:
        await exporter.close(deadline=0.5)


ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"


async def read_post_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The body of the POST whose `head` was just read (framed by Content-Length)."""
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "fastproxy.tracing" and r.levelno == logging.WARNING
    ]


# -- delivery --------------------------------------------------------------------------------


async def test_zipkin_batch_reaches_the_collector(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    exporter = make_exporter(
        collector.url("/api/v2/spans"), headers=[("X-Tenant", "blue"), ("Authorization", "k")]
    )
    spans = submit(exporter, range(3))
    await until_exported(exporter, 3)

    (received,) = collector.posts
    assert received.path == "/api/v2/spans"
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["Content-Length"] == str(len(received.body))
    assert received.headers["X-Tenant"] == "blue"
    assert received.headers["Authorization"] == "k"
    assert received.headers["Host"] == f"{HOST}:{collector.port}"
    assert received.body == encode_zipkin(spans, "checkout")
    assert [r["id"] for r in json.loads(received.body)] == [s.span_id.decode() for s in spans]
    assert (exporter.exported, exporter.dropped, exporter.queued) == (3, 0, 0)


async def test_otlp_batch_reaches_the_collector(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    exporter = make_exporter(
        collector.url("/v1/traces"),
        encode=functools.partial(encode_otlp_json, service_name="checkout"),
        content_type=OTLP_JSON_CONTENT_TYPE,
    )
    spans = submit(exporter, range(2))
    await until_exported(exporter, 2)

    (received,) = collector.posts
    assert received.path == "/v1/traces"
    assert received.headers["Content-Type"] == "application/json"
    assert received.body == encode_otlp_json(spans, "checkout")
    document = json.loads(received.body)
    (resource_spans,) = document["resourceSpans"]
    (scope_spans,) = resource_spans["scopeSpans"]
    assert [s["spanId"] for s in scope_spans["spans"]] == [s.span_id.decode() for s in spans]
    assert exporter.dropped == 0


async def test_exporter_keeps_exporting_batch_after_batch(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    exporter = make_exporter(collector.url("/api/v2/spans"))
    for round_ in range(3):
        exporter.submit(_span(round_))
        await until_exported(exporter, round_ + 1)
    assert len(collector.posts) == 3
    assert collector.zipkin_span_ids() == [_span_id(i) for i in range(3)]


async def test_a_full_batch_leaves_before_the_interval(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    exporter = make_exporter(collector.url("/api/v2/spans"), interval=60.0, max_batch=4)
    submit(exporter, range(3))
    await asyncio.sleep(0.2)
    assert collector.posts == []  # below max_batch the interval rules
    exporter.submit(_span(3))
    await until_exported(exporter, 4, 2.0)
    assert len(collector.posts) == 1


async def test_batches_hold_at_most_max_batch_spans(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    exporter = make_exporter(collector.url("/x"), start=False, interval=0.5, max_batch=4)
    submit(exporter, range(10))
    exporter.start()
    await until_exported(exporter, 8, 0.4)  # full batches leave at once
    await asyncio.sleep(0.1)
    assert exporter.queued == 2  # a partial one waits for the interval
    await until_exported(exporter, 10, 2.0)
    assert [len(json.loads(r.body)) for r in collector.posts] == [4, 4, 2]
    assert collector.zipkin_span_ids() == [_span_id(i) for i in range(10)]


async def test_spans_queued_during_a_post_wait_for_a_full_batch(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    """A busy sidecar sends full batches, not one small batch after every round trip."""
    collector.stall = True
    exporter = make_exporter(collector.url("/x"), interval=60.0, max_batch=4)
    submit(exporter, range(4))
    await eventually(lambda: len(collector.posts) == 1)
    submit(exporter, range(4, 7))  # arrive while the first POST is out
    collector.stall = False
    collector.release.set()
    await until_exported(exporter, 4)
    await asyncio.sleep(0.3)
    assert len(collector.posts) == 1
    assert exporter.queued == 3
    submit(exporter, range(7, 8))
    await until_exported(exporter, 8)
    assert [len(json.loads(r.body)) for r in collector.posts] == [4, 4]


async def test_batches_share_one_kept_connection(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    exporter = make_exporter(collector.url("/api/v2/spans"), max_batch=2)
    for round_ in range(3):
        submit(exporter, range(2 * round_, 2 * round_ + 2))
        await until_exported(exporter, 2 * round_ + 2)
    assert exporter.connections == 1
    assert len({post.peer for post in collector.posts}) == 1
    assert all("Connection" not in post.headers for post in collector.posts)


async def test_a_connection_idle_too_long_is_replaced(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    exporter = make_exporter(collector.url("/api/v2/spans"), max_batch=1, reuse_idle=0.3)
    submit(exporter, range(2))
    await until_exported(exporter, 2)
    await asyncio.sleep(0.4)
    submit(exporter, range(2, 3))
    await until_exported(exporter, 3)
    assert exporter.connections == 2
    first, second, third = (post.peer for post in collector.posts)
    assert first == second != third


async def test_a_kept_connection_the_collector_closed_while_idle_is_replaced(
    make_exporter: Callable[..., BatchExporter],
) -> None:
    """The collector answers, keeps the connection open, then closes it while idle: the
    next batch finds it closed, and goes again on a fresh connection."""
    peers: list[tuple[str, int]] = []
    handlers: list[asyncio.Task[Any]] = []

    async def answer_then_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        await read_post_body(reader, await reader.readuntil(b"\r\n\r\n"))
        peers.append(writer.get_extra_info("peername"))
        writer.write(ACCEPTED)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()  # idle close, as collectors do, after one answer per connection
        await writer.wait_closed()

    server = await asyncio.start_server(answer_then_hang_up, HOST, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        exporter = make_exporter(f"http://{HOST}:{port}/api/v2/spans", max_batch=1)
        submit(exporter, range(1))
        await until_exported(exporter, 1)
        await asyncio.sleep(0.3)  # the collector has closed the kept connection by now
        submit(exporter, range(1, 2))
        await until_exported(exporter, 2)
        assert (exporter.dropped, exporter.connections) == (0, 2)
        assert len(set(peers)) == 2
        await asyncio.gather(*handlers)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_kept_connection_that_fails_unanswered_is_tried_once_more_fresh(
    make_exporter: Callable[..., BatchExporter],
) -> None:
    """The race a kept connection can lose: the collector closes it as the next batch
    arrives, unanswered. That batch goes again, once, on a fresh connection."""
    served: list[int] = []  # per connection accepted, the requests it answered
    handlers: list[asyncio.Task[Any]] = []

    async def answer_once_per_first_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        index = len(served)
        served.append(0)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if index == 0 and served[0] == 1:
                    return  # the second request on the first connection: hang up
                await read_post_body(reader, head)
                writer.write(ACCEPTED)
                await writer.drain()
                served[index] += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the exporter closed its kept connection
        finally:
            writer.close()

    server = await asyncio.start_server(answer_once_per_first_connection, HOST, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        exporter = make_exporter(f"http://{HOST}:{port}/api/v2/spans", max_batch=1)
        submit(exporter, range(1))
        await until_exported(exporter, 1)
        submit(exporter, range(1, 2))
        await until_exported(exporter, 2)
        assert (exporter.dropped, exporter.connections) == (0, 2)
        assert served == [1, 1]
        await exporter.close()
        await asyncio.gather(*handlers)
    finally:
        server.close()
        await server.wait_closed()


def _self_signed(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A certificate for 127.0.0.1 (IP SAN), its key, and the PEM clients trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert_pem


@pytest.fixture
async def tls_collector(tmp_path: Path, start_collector: StartCollector) -> tuple[Collector, bytes]:
    cert_path, key_path, cert_pem = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    collector = await start_collector(ssl_context=server_context)
    return collector, cert_pem


async def test_https_collector_with_a_trusted_certificate(
    tls_collector: tuple[Collector, bytes], make_exporter: Callable[..., BatchExporter]
) -> None:
    collector, cert_pem = tls_collector
    client_context = ssl.create_default_context(cadata=cert_pem.decode())
    exporter = make_exporter(collector.url("/api/v2/spans", "https"), ssl_context=client_context)
    exporter.submit(_span(0))
    await until_exported(exporter, 1)
    assert collector.zipkin_span_ids() == [_span_id(0)]


async def test_https_collector_with_an_untrusted_certificate_gets_nothing(
    tls_collector: tuple[Collector, bytes],
    make_exporter: Callable[..., BatchExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector, _ = tls_collector
    exporter = make_exporter(collector.url("/api/v2/spans", "https"))  # system trust store
    exporter.submit(_span(0))
    await until_dropped(exporter, 1)
    assert collector.posts == []
    assert exporter.exported == 0
    (warning,) = _warnings(caplog)
    assert "SSL" in warning.getMessage() or "certificate" in warning.getMessage()


# -- failures ------------------------------------------------------------------------------


async def test_collector_down_drops_spans_without_blocking_submit(
    make_exporter: Callable[..., BatchExporter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastproxy.tracing")
    exporter = make_exporter(f"http://{HOST}:{closed_port()}/api/v2/spans")
    started = time.perf_counter()
    submit(exporter, range(5))
    assert time.perf_counter() - started < 0.05
    await until_dropped(exporter, 5)
    submit(exporter, range(5))
    await until_dropped(exporter, 10)

    assert exporter.exported == 0
    assert exporter.state is ExporterState.RUNNING
    (warning,) = _warnings(caplog)  # one per failure streak, not one per batch
    assert "5 spans dropped" in warning.getMessage()


async def test_export_resumes_when_the_collector_comes_back(
    start_collector: StartCollector,
    make_exporter: Callable[..., BatchExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fastproxy.tracing")
    port = free_port()
    exporter = make_exporter(f"http://{HOST}:{port}/api/v2/spans")
    exporter.submit(_span(0))
    await until_dropped(exporter, 1)

    collector = await start_collector(port=port)
    exporter.submit(_span(1))
    await until_exported(exporter, 1)
    assert collector.zipkin_span_ids() == [_span_id(1)]
    assert len(_warnings(caplog)) == 1
    assert any("works again" in r.getMessage() for r in caplog.records)

    exporter.submit(_span(2))  # a new failure streak would warn again
    await until_exported(exporter, 2)
    assert len(_warnings(caplog)) == 1


async def test_stalled_collector_costs_one_batch_after_the_timeout(
    collector: Collector,
    make_exporter: Callable[..., BatchExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector.stall = True
    exporter = make_exporter(collector.url("/api/v2/spans"), timeout=0.3)
    started = time.monotonic()
    submit(exporter, range(5))
    await eventually(lambda: len(collector.posts) == 1)

    # While the POST hangs, submitting stays immediate and only queues.
    submit_started = time.perf_counter()
    submit(exporter, range(1000))
    assert time.perf_counter() - submit_started < 0.1
    assert exporter.queued == 1000

    await eventually(lambda: exporter.dropped >= 5)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.3
    assert exporter.dropped == 5
    assert exporter.exported == 0
    (warning,) = _warnings(caplog)
    assert "no answer within 0.3s" in warning.getMessage()


async def test_collector_error_status_drops_the_batch(
    collector: Collector,
    make_exporter: Callable[..., BatchExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector.status = 503
    exporter = make_exporter(collector.url("/api/v2/spans"))
    submit(exporter, range(3))
    await until_dropped(exporter, 3)
    assert len(collector.posts) == 1
    assert exporter.exported == 0
    (warning,) = _warnings(caplog)
    assert "HTTP 503" in warning.getMessage()


async def test_failing_collector_sees_one_attempt_per_interval(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    collector.status = 500
    exporter = make_exporter(collector.url("/x"), interval=0.6, max_batch=2)
    submit(exporter, range(2))  # a full batch: sent at once, and refused
    await until_dropped(exporter, 2, 0.4)
    submit(exporter, range(2, 6))  # full batches again, but no early retry while failing
    await asyncio.sleep(0.3)
    assert len(collector.posts) == 1
    assert exporter.queued == 4
    await eventually(lambda: len(collector.posts) == 2, timeout=2.0)


async def test_collector_closing_without_an_answer_drops_the_batch(
    make_exporter: Callable[..., BatchExporter],
) -> None:
    requests: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(hang_up, HOST, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        exporter = make_exporter(f"http://{HOST}:{port}/api/v2/spans")
        submit(exporter, range(2))
        await until_dropped(exporter, 2)
        assert exporter.exported == 0
        (head,) = requests
        assert head.startswith(b"POST /api/v2/spans HTTP/1.1\r\n")
    finally:
        server.close()
        await server.wait_closed()


async def test_queue_overflow_counts_every_dropped_span(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    exporter = make_exporter(collector.url("/x"), start=False, max_queue=10, max_batch=100)
    submit(exporter, range(25))
    assert (exporter.queued, exporter.dropped) == (10, 15)

    await exporter.close()
    assert (exporter.exported, exporter.dropped, exporter.queued) == (10, 15, 0)
    assert collector.zipkin_span_ids() == [_span_id(i) for i in range(10)]


async def test_close_flushes_what_is_queued(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    exporter = make_exporter(collector.url("/x"), interval=60.0)
    submit(exporter, range(7))
    await asyncio.sleep(0.05)
    assert collector.posts == []

    await exporter.close()
    assert collector.zipkin_span_ids() == [_span_id(i) for i in range(7)]
    assert (exporter.exported, exporter.dropped) == (7, 0)
    assert exporter.state is ExporterState.CLOSED

    exporter.submit(_span(7))  # too late: counted, not kept
    assert (exporter.queued, exporter.dropped) == (0, 1)
    await exporter.close()  # idempotent


async def test_close_gives_up_at_its_deadline(
    collector: Collector, make_exporter: Callable[..., BatchExporter]
) -> None:
    collector.stall = True
    exporter = make_exporter(collector.url("/x"), interval=60.0, timeout=30.0, max_batch=2)
    submit(exporter, range(5))
    await eventually(lambda: len(collector.posts) == 1)

    started = time.monotonic()
    await exporter.close(deadline=0.3)
    assert 0.25 <= time.monotonic() - started < 1.0
    assert (exporter.exported, exporter.dropped, exporter.queued) == (0, 5, 0)
    assert exporter.state is ExporterState.CLOSED
    assert repr(exporter) == (
        f"<BatchExporter closed {collector.url('/x')} queued=0 exported=0 dropped=5>"
    )
