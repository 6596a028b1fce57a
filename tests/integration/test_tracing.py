"""Tracing end to end: W3C trace context on real sockets, spans at a real collector.

Sidecars run in the test's loop in front of the echo app, which reports every
header it received, so each test sees exactly what the app saw, what the
client got back and, at an aiohttp collector on loopback, which spans left.
Spans leave in batches about once a second: tests poll the collector against
a deadline, and prove that something was *not* exported by waiting for a
later span that must travel in the same or a later batch.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fastproxy import Sidecar
from tests.integration.conftest import EchoApp, Response, SidecarFactory, request
from tests.integration.observability_fixtures import (
    Collector,
    caller_and_callee,
    closed_port,
    eventually,
    fetch,
    observed_sidecar,
    raw_get,
    running_collector,
    scrape,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

TEST_TIMEOUT = 30.0
# Spans are batched about once a second: a span is due well within this.
EXPORT_DEADLINE = 5.0

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
SAMPLED_PARENT = f"00-{TRACE}-{PARENT}-01"
UNSAMPLED_PARENT = f"00-{TRACE}-{PARENT}-00"
OWN_TRACEPARENT = f"00-{'1' * 32}-{'2' * 16}-01"
TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")

Context = tuple[str, str, str]
Traced = Callable[..., Awaitable[Sidecar]]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    async with running_collector() as found:
        yield found


def zipkin_tracing(rate: str, collector: Collector) -> dict[str, Any]:
    return {"samplingRate": rate, "zipkin": {"endpointAddress": collector.zipkin_url}}


@pytest.fixture
def traced(
    collector: Collector, make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> Traced:
    """`await traced(rate, **settings)`: a sidecar for the echo app exporting to the collector."""

    async def start(rate: str, **settings: Any) -> Sidecar:
        spec = {"tracing": zipkin_tracing(rate, collector)}
        return await observed_sidecar(
            make_sidecar, tmp_path, spec, app_port=echo_app.port, **settings
        )

    return start


@pytest.fixture
def two_hops(
    collector: Collector, make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> Callable[[], Awaitable[Sidecar]]:
    """`await two_hops()`: sidecar `a`, calling `b` in front of the echo app, both at rate 1."""

    async def start() -> Sidecar:
        spec = {"tracing": zipkin_tracing("1", collector)}
        a, _ = await caller_and_callee(make_sidecar, tmp_path, echo_app, spec, spec)
        return a

    return start


# -- reading trace context -------------------------------------------------------------------


def app_headers(response: Response, name: str) -> list[str]:
    """The values of header `name` the echo app received, as it reports them."""
    return [v for k, v in response.json()["headers"] if k.lower() == name.lower()]


def response_headers(response: Response, name: str) -> list[str]:
    return [v for k, v in response.headers if k.lower() == name.lower()]


def parse_traceparent(value: str) -> Context:
    match = TRACEPARENT_RE.fullmatch(value)
    assert match is not None, f"not a version-00 traceparent: {value!r}"
    trace_id, span_id, flags = match.groups()
    assert trace_id != "0" * 32 and span_id != "0" * 16, value
    return trace_id, span_id, flags


def single_traceparent(values: list[str]) -> Context:
    assert len(values) == 1, f"expected one traceparent, got {values!r}"
    return parse_traceparent(values[0])


def sent_to_app(response: Response) -> Context:
    """The one traceparent the app received."""
    return single_traceparent(app_headers(response, "traceparent"))


def returned(response: Response) -> Context:
    """The one traceparent the client got back."""
    return single_traceparent(response_headers(response, "traceparent"))


def assert_continues_parent(context: Context, flags: str) -> Context:
    """`context` continues TRACE under a new span of the sidecar's, with `flags`."""
    assert (context[0], context[2]) == (TRACE, flags), context
    assert context[1] != PARENT, context
    return context


async def get(
    sidecar: Sidecar,
    target: str,
    traceparent: str | None = None,
    *,
    tracestate: str | None = None,
    status: int = 200,
) -> Response:
    """GET `target` from the sidecar with the trace context given; the answer has `status`."""
    headers = {"traceparent": traceparent, "tracestate": tracestate}
    sent = {name: value for name, value in headers.items() if value is not None}
    return await fetch(sidecar.http_port, "GET", target, sent, status=status)


# -- spans at the collector and in the metrics -----------------------------------------------


async def the_span(collector: Collector, trace_id: str, what: str = "the span's export") -> Any:
    """The one span of `trace_id`, once exported."""
    await eventually(lambda: bool(collector.zipkin_trace(trace_id)), EXPORT_DEADLINE, what)
    [span] = collector.zipkin_trace(trace_id)
    return span


async def caller_and_callee_spans(
    collector: Collector, trace_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The CLIENT span of sidecar `a` and the SERVER span of `b` in `trace_id`."""
    await eventually(lambda: len(collector.zipkin_trace(trace_id)) == 2, what="two spans")
    spans = {
        span["localEndpoint"]["serviceName"]: span for span in collector.zipkin_trace(trace_id)
    }
    assert set(spans) == {"a", "b"}
    caller, callee = spans["a"], spans["b"]
    assert caller["kind"] == "CLIENT"
    assert callee["kind"] == "SERVER"
    return caller, callee


async def spans_total(sidecar: Sidecar, outcome: str) -> float | None:
    return (await scrape(sidecar)).find("fastproxy_spans_total", outcome=outcome)


async def wait_for_spans_total(sidecar: Sidecar, outcome: str, expected: float) -> None:
    """Until fastproxy_spans_total{outcome} reads `expected` (counted once a POST ends)."""
    deadline = time.monotonic() + EXPORT_DEADLINE
    while (value := await spans_total(sidecar, outcome)) != expected:
        assert time.monotonic() < deadline, f"{outcome} spans: {value}, expected {expected}"
        await asyncio.sleep(0.05)


async def flush_marker(port: int, collector: Collector, app_id: str = "app") -> str:
    """Send a request whose span must be exported (sampled parent) and wait for it.

    Spans leave one queue in order, so once the marker is at the collector every
    span finished before it has been exported too, or never will be.
    """
    marker_trace = "f" * 31 + "1"
    target = f"/v1.0/invoke/{app_id}/method/marker"
    await fetch(port, "GET", target, {"traceparent": f"00-{marker_trace}-{'e' * 16}-01"})
    await the_span(collector, marker_trace, "the marker span's export")
    return marker_trace


async def assert_only_the_marker_is_exported(sidecar: Sidecar, collector: Collector) -> None:
    """Nothing sent before a marker was exported, and nothing was dropped."""
    marker = await flush_marker(sidecar.http_port, collector)
    assert {span["traceId"] for span in collector.zipkin_spans()} == {marker}
    await wait_for_spans_total(sidecar, "exported", 1)
    assert await spans_total(sidecar, "dropped") == 0


# -- sampled spans across two sidecars -------------------------------------------------------


@pytest.mark.parametrize("client_sends", [True, False], ids=["client-traceparent", "new-trace"])
async def test_sampled_call_links_caller_span_callee_span_and_app_in_one_trace(
    collector: Collector, two_hops: Callable[[], Awaitable[Sidecar]], client_sends: bool
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        a = await two_hops()
        parent = SAMPLED_PARENT if client_sends else None
        response = await get(a, "/v1.0/invoke/b/method/orders/7?x=1", parent)
        assert response.json()["path"] == "/orders/7?x=1"

        trace_id, app_parent, flags = sent_to_app(response)
        assert flags == "01"
        if client_sends:
            assert_continues_parent((trace_id, app_parent, flags), "01")
        # The app sent none back, so the client gets the caller sidecar's (a's) span.
        returned_trace, returned_span, returned_flags = returned(response)
        assert (returned_trace, returned_flags) == (trace_id, "01")

        caller, callee = await caller_and_callee_spans(collector, trace_id)
        assert caller["name"] == "CallLocal/b/orders/7"
        if client_sends:
            assert caller["parentId"] == PARENT
        else:
            assert "parentId" not in caller
        assert callee["name"] == "CallLocal/b/orders/7"
        assert callee["parentId"] == caller["id"]
        assert returned_span == caller["id"]
        # The app behind b sees b's span as its parent.
        assert callee["id"] == app_parent
        assert caller["id"] != callee["id"]
        for span in (caller, callee):
            assert span["tags"]["dapr.status_code"] == "200"
            assert span["tags"]["net.peer.name"] == "b"
            assert span["tags"]["rpc.service"] == "ServiceInvocation"
            assert span["duration"] >= 1
            assert "error" not in span["tags"]
        # The callee's span lies within the caller's (one clock, microseconds).
        assert caller["timestamp"] <= callee["timestamp"]
        assert callee["timestamp"] + callee["duration"] <= caller["timestamp"] + caller["duration"]


async def test_two_hop_response_names_the_caller_sidecars_span_when_the_app_sent_none(
    collector: Collector, two_hops: Callable[[], Awaitable[Sidecar]]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        a = await two_hops()
        response = await get(a, "/v1.0/invoke/b/method/x", SAMPLED_PARENT)
        returned_trace, returned_span, _ = returned(response)
        assert returned_trace == TRACE
        _, app_parent, _ = sent_to_app(response)
        caller, callee = await caller_and_callee_spans(collector, TRACE)
        assert returned_span == caller["id"]
        assert app_parent == callee["id"] != returned_span


async def assert_apps_own_traceparent_wins(sidecar: Sidecar, app_id: str) -> None:
    """The app answers with a traceparent of its own: the client gets that one."""
    target = f"/v1.0/invoke/{app_id}/method/own?header=traceparent:{OWN_TRACEPARENT}"
    response = await get(sidecar, target, SAMPLED_PARENT)
    assert response_headers(response, "traceparent") == [OWN_TRACEPARENT]
    # The app still got the sidecar's span, in the client's trace.
    assert sent_to_app(response)[0] == TRACE


async def test_two_hop_response_carries_the_apps_own_traceparent(
    two_hops: Callable[[], Awaitable[Sidecar]],
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        a = await two_hops()
        await assert_apps_own_traceparent_wins(a, "b")


# -- sampling --------------------------------------------------------------------------------


async def test_rate_zero_propagates_and_returns_traceparent_but_exports_nothing(
    collector: Collector, traced: Traced
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("0")
        # No context sent: one is started, unsampled, and given to the app and the client.
        fresh = await get(sidecar, "/v1.0/invoke/app/method/fresh")
        seen = sent_to_app(fresh)
        assert seen[2] == "00"
        assert returned(fresh) == seen
        # An unsampled parent: its trace continues under a new span of the sidecar's.
        continued = await get(sidecar, "/v1.0/invoke/app/method/continued", UNSAMPLED_PARENT)
        context = assert_continues_parent(sent_to_app(continued), "00")
        assert returned(continued) == context
        # Only the marker (a sampled parent) was exported; the two above never will be.
        await assert_only_the_marker_is_exported(sidecar, collector)


async def test_rate_zero_follows_a_sampled_parent(collector: Collector, traced: Traced) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("0")
        response = await fetch(
            sidecar.http_port,
            "POST",
            "/v1.0/invoke/app/method/pay?status=201",
            {"traceparent": SAMPLED_PARENT},
            b"{}",
            status=201,
        )
        trace_id, span_id, flags = sent_to_app(response)
        assert (trace_id, flags) == (TRACE, "01")
        span = await the_span(collector, TRACE)
        assert span["id"] == span_id
        assert span["parentId"] == PARENT
        assert span["kind"] == "CLIENT"
        assert span["name"] == "CallLocal/app/pay"
        assert span["localEndpoint"]["serviceName"] == "app"
        assert span["tags"]["dapr.status_code"] == "201"
        assert span["tags"]["http.request.method"] == "POST"


async def test_rate_one_samples_every_request_without_a_parent(
    collector: Collector, traced: Traced
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("1")
        traces = []
        for index in range(5):
            response = await get(sidecar, f"/v1.0/invoke/app/method/item/{index}")
            trace_id, span_id, flags = sent_to_app(response)
            assert flags == "01"
            traces.append((trace_id, span_id))
        assert len({trace for trace, _ in traces}) == 5
        await eventually(lambda: len(collector.zipkin_spans()) == 5, what="five spans")
        exported = {(span["traceId"], span["id"]) for span in collector.zipkin_spans()}
        assert exported == set(traces)
        for span in collector.zipkin_spans():
            assert "parentId" not in span
            assert span["name"].startswith("CallLocal/app/item/")


# -- what comes in: malformed traceparent, tracestate ------------------------------------------


MALFORMED = [
    pytest.param([f"traceparent: 00-{TRACE.upper()}-{PARENT}-01"], id="uppercase-trace-id"),
    pytest.param([f"traceparent: 00-{TRACE}-{PARENT.upper()}-01"], id="uppercase-span-id"),
    pytest.param([f"traceparent: 00-{'0' * 32}-{PARENT}-01"], id="all-zero-trace-id"),
    pytest.param([f"traceparent: 00-{TRACE}-{'0' * 16}-01"], id="all-zero-span-id"),
    pytest.param([f"traceparent: ff-{TRACE}-{PARENT}-01"], id="version-ff"),
    pytest.param([f"traceparent: 00-{TRACE}-{PARENT}-01-extra"], id="version-00-extra-field"),
    pytest.param([f"traceparent: 00-{TRACE[:-1]}-{PARENT}-01"], id="short-trace-id"),
    pytest.param([f"traceparent: 00_{TRACE}_{PARENT}_01"], id="wrong-separators"),
    pytest.param([f"traceparent: 00-{TRACE[:-1]}g-{PARENT}-01"], id="non-hex"),
    pytest.param(["traceparent: nonsense"], id="garbage"),
    pytest.param(
        [f"traceparent: {SAMPLED_PARENT}", f"traceparent: {SAMPLED_PARENT}"],
        id="repeated-identical",
    ),
    pytest.param(
        [f"traceparent: {SAMPLED_PARENT}", f"traceparent: {OWN_TRACEPARENT}"],
        id="repeated-different",
    ),
]


@pytest.mark.parametrize("header_lines", MALFORMED)
async def test_malformed_or_repeated_traceparent_starts_a_new_trace(
    traced: Traced, header_lines: list[str]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("0")
        response = await raw_get(
            sidecar.http_port,
            "/v1.0/invoke/app/method/bad",
            [*header_lines, "tracestate: congo=t61rcWkgMzE"],
        )
        assert response.status == 200, response
        sent = [line.partition(": ")[2] for line in header_lines]
        seen = app_headers(response, "traceparent")
        assert not set(seen) & set(sent), "the client's traceparent was forwarded"
        trace_id, span_id, flags = single_traceparent(seen)
        assert trace_id not in {TRACE, TRACE.upper(), "1" * 32}
        # A new root at rate 0 is not sampled, whatever flags the rejected value had.
        assert flags == "00"
        # The tracestate belonged to the rejected context: it goes too.
        assert app_headers(response, "tracestate") == []
        assert returned(response) == (trace_id, span_id, flags)


async def test_span_of_a_replaced_traceparent_is_a_root(
    collector: Collector, traced: Traced
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("1")
        upper = f"00-{TRACE.upper()}-{PARENT}-01"
        response = await get(sidecar, "/v1.0/invoke/app/method/bad", upper)
        trace_id, span_id, _ = sent_to_app(response)
        span = await the_span(collector, trace_id)
        assert "parentId" not in span
        assert span["id"] == span_id
        assert {s["traceId"] for s in collector.zipkin_spans()} == {trace_id}


async def test_later_version_with_an_extra_field_is_continued(traced: Traced) -> None:
    """The W3C forward-compatibility rule: a version above 00 may carry more fields."""
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("0")
        future = f"cc-{TRACE}-{PARENT}-01-what-the-future-holds"
        response = await get(sidecar, "/v1.0/invoke/app/method/future", future)
        assert_continues_parent(sent_to_app(response), "01")


TRACESTATES = [
    pytest.param("congo=t61rcWkgMzE", True, id="one-member"),
    pytest.param("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", True, id="two-members"),
    pytest.param("tenant@vendor=opaque-value", True, id="multi-tenant-key"),
    pytest.param("Congo=t61rcWkgMzE", False, id="uppercase-key"),
    pytest.param("congo", False, id="no-equals"),
    pytest.param("congo=", False, id="empty-value"),
    pytest.param("a=1,a=2", False, id="duplicate-key"),
    pytest.param("k=" + "v" * 256, True, id="value-of-256"),
    pytest.param("k=" + "v" * 257, False, id="value-too-long"),
    pytest.param(",".join(f"k{i}=" + "v" * 40 for i in range(12)), False, id="over-512-bytes"),
]


@pytest.mark.parametrize(("tracestate", "forwarded"), TRACESTATES)
async def test_tracestate_is_forwarded_when_valid_and_dropped_when_not(
    traced: Traced, tracestate: str, forwarded: bool
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("0")
        target = "/v1.0/invoke/app/method/state"
        response = await get(sidecar, target, UNSAMPLED_PARENT, tracestate=tracestate)
        assert sent_to_app(response)[0] == TRACE
        assert app_headers(response, "tracestate") == ([tracestate] if forwarded else [])


async def test_tracestate_lines_combine_in_order(traced: Traced) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("0")
        response = await raw_get(
            sidecar.http_port,
            "/v1.0/invoke/app/method/state",
            [f"traceparent: {UNSAMPLED_PARENT}", "tracestate: rojo=1", "tracestate: congo=2"],
        )
        assert response.status == 200, response
        assert app_headers(response, "tracestate") == ["rojo=1,congo=2"]


# -- what goes back: traceparent on every response ---------------------------------------------


async def test_response_traceparent_names_the_span_the_app_saw(traced: Traced) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("1")
        response = await get(sidecar, "/v1.0/invoke/app/method/x", SAMPLED_PARENT)
        [seen] = app_headers(response, "traceparent")
        assert response_headers(response, "traceparent") == [seen]
        assert seen.startswith(f"00-{TRACE}-") and seen.endswith("-01")


@pytest.mark.parametrize("sent", [True, False], ids=["client-traceparent", "no-traceparent"])
async def test_sidecar_error_response_carries_traceparent_and_an_error_span(
    collector: Collector, traced: Traced, sent: bool
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("1")
        parent = SAMPLED_PARENT if sent else None
        response = await get(sidecar, "/v1.0/invoke/nowhere/method/x", parent, status=500)
        assert response.json()["errorCode"] == "ERR_DIRECT_INVOKE"
        trace_id, span_id, flags = returned(response)
        assert flags == "01"
        if sent:
            assert_continues_parent((trace_id, span_id, flags), "01")
        span = await the_span(collector, trace_id, "the error span")
        assert span["id"] == span_id
        assert span["name"] == "CallLocal/nowhere/x"
        assert span["tags"]["dapr.status_code"] == "500"
        assert span["tags"]["otel.status_code"] == "ERROR"
        assert span["tags"]["error"] == "Code(500): Internal Server Error"


async def test_refused_request_carries_traceparent(echo_app: EchoApp, traced: Traced) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("0", api_token="s3cret")
        target = "/v1.0/invoke/app/method/x"
        response = await get(sidecar, target, UNSAMPLED_PARENT, status=401)
        assert_continues_parent(returned(response), "00")
        assert echo_app.seen == []


async def test_apps_own_response_traceparent_wins(traced: Traced) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("1")
        await assert_apps_own_traceparent_wins(sidecar, "app")


async def test_metadata_response_carries_traceparent(collector: Collector, traced: Traced) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("1")
        response = await get(sidecar, "/v1.0/metadata", SAMPLED_PARENT)
        _, span_id, _ = assert_continues_parent(returned(response), "01")
        # The span the answer names is the one exported for the request.
        span = await the_span(collector, TRACE, "the metadata span")
        assert (span["id"], span["parentId"]) == (span_id, PARENT)
        # Without a context sent, the answer names a new sampled trace.
        fresh = await get(sidecar, "/v1.0/metadata")
        fresh_trace, _, fresh_flags = returned(fresh)
        assert fresh_trace != TRACE
        assert fresh_flags == "01"


async def test_metadata_put_response_carries_traceparent(traced: Traced) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("0")
        headers = {"traceparent": UNSAMPLED_PARENT}
        target = "/v1.0/metadata/colour"
        response = await fetch(sidecar.http_port, "PUT", target, headers, b"blue", status=204)
        assert_continues_parent(returned(response), "00")


async def test_health_checks_are_never_exported(collector: Collector, traced: Traced) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced("1")
        # Not even under a sampled parent: daprd never traces health checks.
        for target, parent, status in (
            ("/v1.0/healthz", None, 204),
            ("/v1.0/healthz/outbound", None, 204),
            ("/v1.0/healthz", SAMPLED_PARENT, 204),
            ("/v1.0/healthz/outbound", SAMPLED_PARENT, 204),
            ("/v1.0/healthz?appid=other", SAMPLED_PARENT, 500),
        ):
            response = await get(sidecar, target, parent, status=status)
            assert response_headers(response, "traceparent") == [], (target, parent)
        await assert_only_the_marker_is_exported(sidecar, collector)


# -- tracing off -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", [{}, {"metric": {"enabled": True}}], ids=["no-configuration-spec", "no-tracing-key"]
)
async def test_without_tracing_trace_headers_pass_through_untouched(
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
    spec: dict[str, Any],
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await observed_sidecar(make_sidecar, tmp_path, spec, app_port=echo_app.port)
        for traceparent, tracestate in (
            (SAMPLED_PARENT, "congo=t61rcWkgMzE"),
            (f"00-{TRACE.upper()}-{PARENT}-01", "Not A Valid=State"),
        ):
            target = "/v1.0/invoke/app/method/x"
            response = await get(sidecar, target, traceparent, tracestate=tracestate)
            assert app_headers(response, "traceparent") == [traceparent]
            assert app_headers(response, "tracestate") == [tracestate]
            assert response_headers(response, "traceparent") == []
        # Nothing is added when nothing is sent, on the way in or out.
        bare = await get(sidecar, "/v1.0/invoke/app/method/x")
        assert app_headers(bare, "traceparent") == []
        assert app_headers(bare, "tracestate") == []
        assert response_headers(bare, "traceparent") == []
        error = await get(sidecar, "/v1.0/invoke/nowhere/method/x", status=500)
        assert response_headers(error, "traceparent") == []
        assert (await scrape(sidecar)).find("fastproxy_spans_total") is None


# -- exporters -------------------------------------------------------------------------------


async def test_collector_down_costs_dropped_spans_never_slow_requests(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        down = Collector(port=closed_port())
        spec = {"tracing": zipkin_tracing("1", down)}
        sidecar = await observed_sidecar(make_sidecar, tmp_path, spec, app_port=echo_app.port)
        count = 20
        for index in range(count):
            started = time.monotonic()
            response = await request(
                sidecar.http_port, "GET", f"/v1.0/invoke/app/method/n/{index}", timeout=2.0
            )
            assert response.status == 200, response
            assert time.monotonic() - started < 0.5
            assert returned(response)[2] == "01"

        await wait_for_spans_total(sidecar, "dropped", count)
        exposition = await scrape(sidecar)
        exported = exposition.find(
            "fastproxy_spans_total", exporter=down.zipkin_url, outcome="exported"
        )
        assert exported == 0
        # The sidecar keeps serving after the failed export.
        await get(sidecar, "/v1.0/invoke/app/method/after")


async def test_otlp_http_export_carries_the_same_spans_as_zipkin(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        tracing = {
            **zipkin_tracing("1", collector),
            "otel": {
                "endpointAddress": collector.otlp_address,
                "isSecure": False,
                "protocol": "http",
            },
        }
        sidecar = await observed_sidecar(
            make_sidecar, tmp_path, {"tracing": tracing}, app_id="orders", app_port=echo_app.port
        )
        await get(sidecar, "/v1.0/invoke/orders/method/list", SAMPLED_PARENT)
        await get(sidecar, "/v1.0/invoke/orders/method/x?status=503", status=503)
        await eventually(
            lambda: len(collector.otlp_spans()) == 2 and len(collector.zipkin_spans()) == 2,
            EXPORT_DEADLINE,
            "two spans on each protocol",
        )
        otlp_posts = [post for post in collector.posts if post.path == "/v1/traces"]
        assert all(post.content_type == "application/json" for post in otlp_posts)
        zipkin = {span["id"]: span for span in collector.zipkin_spans()}
        for service, span in collector.otlp_spans():
            assert service == "orders"
            twin = zipkin[span["spanId"]]
            assert span["traceId"] == twin["traceId"]
            assert span["name"] == twin["name"]
            assert span["kind"] == 3  # SPAN_KIND_CLIENT
            assert span.get("parentSpanId") == twin.get("parentId")
            start, end = int(span["startTimeUnixNano"]), int(span["endTimeUnixNano"])
            assert 0 < end - start < 5 * 10**9
            assert abs(start // 1000 - twin["timestamp"]) <= 1
            attributes = {a["key"]: a["value"]["stringValue"] for a in span["attributes"]}
            assert attributes["dapr.status_code"] == twin["tags"]["dapr.status_code"]
        by_name = {span["name"]: span for _, span in collector.otlp_spans()}
        assert by_name["CallLocal/orders/list"]["traceId"] == TRACE
        assert by_name["CallLocal/orders/list"]["parentSpanId"] == PARENT
        assert by_name["CallLocal/orders/list"]["status"] == {"code": 0}
        assert by_name["CallLocal/orders/x"]["status"] == {
            "code": 2,
            "message": "Code(503): Service Unavailable",
        }
