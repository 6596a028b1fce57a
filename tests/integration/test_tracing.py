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
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from fastproxy import Sidecar
from tests.integration.conftest import (
    EchoApp,
    Response,
    SidecarFactory,
    parse_responses,
    raw_exchange,
    request,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

HOST = "127.0.0.1"
TEST_TIMEOUT = 30.0
# Spans are batched about once a second: a span is due well within this.
EXPORT_DEADLINE = 5.0

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
SAMPLED_PARENT = f"00-{TRACE}-{PARENT}-01"
UNSAMPLED_PARENT = f"00-{TRACE}-{PARENT}-00"
TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


# -- the collector ---------------------------------------------------------------------------


@dataclass
class Post:
    path: str
    content_type: str
    body: bytes


@dataclass
class Collector:
    """A Zipkin and OTLP/HTTP collector on loopback that records every POST."""

    port: int = 0
    posts: list[Post] = field(default_factory=list)

    @property
    def zipkin_url(self) -> str:
        return f"http://{HOST}:{self.port}/api/v2/spans"

    @property
    def otlp_address(self) -> str:
        return f"{HOST}:{self.port}"

    def zipkin_spans(self) -> list[dict[str, Any]]:
        spans: list[dict[str, Any]] = []
        for post in self.posts:
            if post.path == "/api/v2/spans":
                spans.extend(json.loads(post.body))
        return spans

    def otlp_spans(self) -> list[tuple[str, dict[str, Any]]]:
        """(service.name, span) for every OTLP span received."""
        out: list[tuple[str, dict[str, Any]]] = []
        for post in self.posts:
            if post.path != "/v1/traces":
                continue
            for resource_spans in json.loads(post.body)["resourceSpans"]:
                attributes = resource_spans["resource"]["attributes"]
                service = next(
                    a["value"]["stringValue"] for a in attributes if a["key"] == "service.name"
                )
                for scope_spans in resource_spans["scopeSpans"]:
                    out.extend((service, span) for span in scope_spans["spans"])
        return out

    def zipkin_trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [span for span in self.zipkin_spans() if span["traceId"] == trace_id]


async def eventually(
    predicate: Callable[[], bool], timeout: float = EXPORT_DEADLINE, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        await asyncio.sleep(0.02)


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    found = Collector()

    async def record(req: web.Request) -> web.Response:
        body = await req.read()
        found.posts.append(Post(req.path, req.headers.get("Content-Type", ""), body))
        return web.Response(status=202 if req.path == "/api/v2/spans" else 200, text="{}")

    app = web.Application()
    app.router.add_post("/api/v2/spans", record)
    app.router.add_post("/v1/traces", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    found.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield found
    await runner.cleanup()


# -- configuration and helpers ---------------------------------------------------------------


def write_configuration(folder: Path, name: str, spec: dict[str, Any]) -> str:
    """A Dapr Configuration file holding `spec`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    document = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": name},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(document))
    return str(path)


def zipkin_tracing(rate: str, collector: Collector) -> dict[str, Any]:
    return {"samplingRate": rate, "zipkin": {"endpointAddress": collector.zipkin_url}}


async def traced_sidecar(
    make_sidecar: SidecarFactory,
    tmp_path: Path,
    spec: dict[str, Any],
    *,
    app_id: str = "app",
    **settings: Any,
) -> Sidecar:
    config = write_configuration(tmp_path, f"config-{app_id}", spec)
    settings.setdefault("metrics_listen_address", HOST)
    return await make_sidecar(app_id=app_id, config_file=config, **settings)


def app_headers(response: Response, name: str) -> list[str]:
    """The values of header `name` the echo app received, as it reports them."""
    return [v for k, v in response.json()["headers"] if k.lower() == name.lower()]


def response_headers(response: Response, name: str) -> list[str]:
    return [v for k, v in response.headers if k.lower() == name.lower()]


def parse_traceparent(value: str) -> tuple[str, str, str]:
    match = TRACEPARENT_RE.fullmatch(value)
    assert match is not None, f"not a version-00 traceparent: {value!r}"
    trace_id, span_id, flags = match.groups()
    assert trace_id != "0" * 32 and span_id != "0" * 16, value
    return trace_id, span_id, flags


def single_traceparent(values: list[str]) -> tuple[str, str, str]:
    assert len(values) == 1, f"expected one traceparent, got {values!r}"
    return parse_traceparent(values[0])


async def scrape(sidecar: Sidecar) -> str:
    assert sidecar.metrics_port is not None
    response = await request(sidecar.metrics_port, "GET", "/metrics")
    assert response.status == 200, response
    return response.body.decode()


def sample_value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of the one sample of `name` carrying at least `labels`, if any."""
    found: list[float] = []
    for line in exposition.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        pairs = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', label_text))
        if all(pairs.get(k) == v for k, v in labels.items()):
            found.append(float(value))
    assert len(found) <= 1, f"{name} {labels} matches several samples: {found}"
    return found[0] if found else None


async def spans_total(sidecar: Sidecar, outcome: str) -> float | None:
    return sample_value(await scrape(sidecar), "fastproxy_spans_total", outcome=outcome)


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
    response = await request(
        port,
        "GET",
        f"/v1.0/invoke/{app_id}/method/marker",
        {"traceparent": f"00-{marker_trace}-{'e' * 16}-01"},
    )
    assert response.status == 200, response
    await eventually(
        lambda: bool(collector.zipkin_trace(marker_trace)), what="the marker span's export"
    )
    return marker_trace


# -- sampled spans across two sidecars -------------------------------------------------------


@pytest.mark.parametrize("client_sends", [True, False], ids=["client-traceparent", "new-trace"])
async def test_sampled_call_links_caller_span_callee_span_and_app_in_one_trace(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
    client_sends: bool,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        tracing = zipkin_tracing("1", collector)
        b = await traced_sidecar(
            make_sidecar, tmp_path, {"tracing": tracing}, app_id="b", app_port=echo_app.port
        )
        resolution = {
            "component": "static",
            "configuration": {"apps": {"b": [f"{HOST}:{b.internal_port}"]}},
        }
        a = await traced_sidecar(
            make_sidecar, tmp_path, {"tracing": tracing, "nameResolution": resolution}, app_id="a"
        )
        headers = {"traceparent": SAMPLED_PARENT} if client_sends else {}
        response = await request(a.http_port, "GET", "/v1.0/invoke/b/method/orders/7?x=1", headers)
        assert response.status == 200, response
        assert response.json()["path"] == "/orders/7?x=1"

        trace_id, app_parent, flags = single_traceparent(app_headers(response, "traceparent"))
        assert flags == "01"
        if client_sends:
            assert trace_id == TRACE
            assert app_parent != PARENT
        # The app sent none back, so the client gets the caller sidecar's (a's) span.
        returned_trace, returned_span, returned_flags = single_traceparent(
            response_headers(response, "traceparent")
        )
        assert (returned_trace, returned_flags) == (trace_id, "01")

        await eventually(lambda: len(collector.zipkin_trace(trace_id)) == 2, what="two spans")
        spans = {
            span["localEndpoint"]["serviceName"]: span for span in collector.zipkin_trace(trace_id)
        }
        assert set(spans) == {"a", "b"}
        caller, callee = spans["a"], spans["b"]
        assert caller["kind"] == "CLIENT"
        assert caller["name"] == "CallLocal/b/orders/7"
        if client_sends:
            assert caller["parentId"] == PARENT
        else:
            assert "parentId" not in caller
        assert callee["kind"] == "SERVER"
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
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        tracing = zipkin_tracing("1", collector)
        b = await traced_sidecar(
            make_sidecar, tmp_path, {"tracing": tracing}, app_id="b", app_port=echo_app.port
        )
        resolution = {
            "component": "static",
            "configuration": {"apps": {"b": [f"{HOST}:{b.internal_port}"]}},
        }
        a = await traced_sidecar(
            make_sidecar, tmp_path, {"tracing": tracing, "nameResolution": resolution}, app_id="a"
        )
        response = await request(
            a.http_port, "GET", "/v1.0/invoke/b/method/x", {"traceparent": SAMPLED_PARENT}
        )
        assert response.status == 200, response
        returned_trace, returned_span, _ = single_traceparent(
            response_headers(response, "traceparent")
        )
        assert returned_trace == TRACE
        _, app_parent, _ = single_traceparent(app_headers(response, "traceparent"))
        await eventually(lambda: len(collector.zipkin_trace(TRACE)) == 2, what="two spans")
        caller = next(s for s in collector.zipkin_trace(TRACE) if s["kind"] == "CLIENT")
        callee = next(s for s in collector.zipkin_trace(TRACE) if s["kind"] == "SERVER")
        assert returned_span == caller["id"]
        assert app_parent == callee["id"] != returned_span


async def test_two_hop_response_carries_the_apps_own_traceparent(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        tracing = zipkin_tracing("1", collector)
        b = await traced_sidecar(
            make_sidecar, tmp_path, {"tracing": tracing}, app_id="b", app_port=echo_app.port
        )
        resolution = {
            "component": "static",
            "configuration": {"apps": {"b": [f"{HOST}:{b.internal_port}"]}},
        }
        a = await traced_sidecar(
            make_sidecar, tmp_path, {"tracing": tracing, "nameResolution": resolution}, app_id="a"
        )
        own = f"00-{'1' * 32}-{'2' * 16}-01"
        response = await request(
            a.http_port,
            "GET",
            f"/v1.0/invoke/b/method/own?header=traceparent:{own}",
            {"traceparent": SAMPLED_PARENT},
        )
        assert response.status == 200, response
        assert response_headers(response, "traceparent") == [own]
        assert single_traceparent(app_headers(response, "traceparent"))[0] == TRACE


# -- sampling --------------------------------------------------------------------------------


async def test_rate_zero_propagates_and_returns_traceparent_but_exports_nothing(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("0", collector)},
            app_port=echo_app.port,
        )
        # No context sent: one is started, unsampled, and given to the app and the client.
        fresh = await request(sidecar.http_port, "GET", "/v1.0/invoke/app/method/fresh")
        assert fresh.status == 200, fresh
        seen = single_traceparent(app_headers(fresh, "traceparent"))
        assert seen[2] == "00"
        assert single_traceparent(response_headers(fresh, "traceparent")) == seen
        # An unsampled parent: its trace continues under a new span of the sidecar's.
        continued = await request(
            sidecar.http_port,
            "GET",
            "/v1.0/invoke/app/method/continued",
            {"traceparent": UNSAMPLED_PARENT},
        )
        assert continued.status == 200, continued
        trace_id, span_id, flags = single_traceparent(app_headers(continued, "traceparent"))
        assert (trace_id, flags) == (TRACE, "00")
        assert span_id != PARENT
        assert single_traceparent(response_headers(continued, "traceparent")) == (
            trace_id,
            span_id,
            flags,
        )
        # Only the marker (a sampled parent) was exported; the two above never will be.
        marker = await flush_marker(sidecar.http_port, collector)
        assert {span["traceId"] for span in collector.zipkin_spans()} == {marker}
        await wait_for_spans_total(sidecar, "exported", 1)
        assert await spans_total(sidecar, "dropped") == 0


async def test_rate_zero_follows_a_sampled_parent(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("0", collector)},
            app_port=echo_app.port,
        )
        response = await request(
            sidecar.http_port,
            "POST",
            "/v1.0/invoke/app/method/pay?status=201",
            {"traceparent": SAMPLED_PARENT},
            b"{}",
        )
        assert response.status == 201, response
        trace_id, span_id, flags = single_traceparent(app_headers(response, "traceparent"))
        assert (trace_id, flags) == (TRACE, "01")
        await eventually(lambda: bool(collector.zipkin_trace(TRACE)), what="the span's export")
        [span] = collector.zipkin_trace(TRACE)
        assert span["id"] == span_id
        assert span["parentId"] == PARENT
        assert span["kind"] == "CLIENT"
        assert span["name"] == "CallLocal/app/pay"
        assert span["localEndpoint"]["serviceName"] == "app"
        assert span["tags"]["dapr.status_code"] == "201"
        assert span["tags"]["http.request.method"] == "POST"


async def test_rate_one_samples_every_request_without_a_parent(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("1", collector)},
            app_port=echo_app.port,
        )
        traces = []
        for index in range(5):
            response = await request(
                sidecar.http_port, "GET", f"/v1.0/invoke/app/method/item/{index}"
            )
            assert response.status == 200, response
            trace_id, span_id, flags = single_traceparent(app_headers(response, "traceparent"))
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


def _raw_get(target: str, header_lines: list[str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *header_lines]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


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
        [f"traceparent: {SAMPLED_PARENT}", f"traceparent: 00-{'1' * 32}-{'2' * 16}-01"],
        id="repeated-different",
    ),
]


@pytest.mark.parametrize("header_lines", MALFORMED)
async def test_malformed_or_repeated_traceparent_starts_a_new_trace(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
    header_lines: list[str],
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("0", collector)},
            app_port=echo_app.port,
        )
        raw = await raw_exchange(
            sidecar.http_port,
            _raw_get(
                "/v1.0/invoke/app/method/bad", [*header_lines, "tracestate: congo=t61rcWkgMzE"]
            ),
        )
        [response] = parse_responses(raw)
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
        assert single_traceparent(response_headers(response, "traceparent")) == (
            trace_id,
            span_id,
            flags,
        )


async def test_span_of_a_replaced_traceparent_is_a_root(
    collector: Collector, make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("1", collector)},
            app_port=echo_app.port,
        )
        response = await request(
            sidecar.http_port,
            "GET",
            "/v1.0/invoke/app/method/bad",
            {"traceparent": f"00-{TRACE.upper()}-{PARENT}-01"},
        )
        assert response.status == 200, response
        trace_id, span_id, _ = single_traceparent(app_headers(response, "traceparent"))
        await eventually(lambda: bool(collector.zipkin_trace(trace_id)), what="the span's export")
        [span] = collector.zipkin_trace(trace_id)
        assert "parentId" not in span
        assert span["id"] == span_id
        assert {s["traceId"] for s in collector.zipkin_spans()} == {trace_id}


async def test_later_version_with_an_extra_field_is_continued(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    """The W3C forward-compatibility rule: a version above 00 may carry more fields."""
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("0", collector)},
            app_port=echo_app.port,
        )
        response = await request(
            sidecar.http_port,
            "GET",
            "/v1.0/invoke/app/method/future",
            {"traceparent": f"cc-{TRACE}-{PARENT}-01-what-the-future-holds"},
        )
        assert response.status == 200, response
        trace_id, span_id, flags = single_traceparent(app_headers(response, "traceparent"))
        assert (trace_id, flags) == (TRACE, "01")
        assert span_id != PARENT


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
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
    tracestate: str,
    forwarded: bool,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("0", collector)},
            app_port=echo_app.port,
        )
        response = await request(
            sidecar.http_port,
            "GET",
            "/v1.0/invoke/app/method/state",
            {"traceparent": UNSAMPLED_PARENT, "tracestate": tracestate},
        )
        assert response.status == 200, response
        assert single_traceparent(app_headers(response, "traceparent"))[0] == TRACE
        assert app_headers(response, "tracestate") == ([tracestate] if forwarded else [])


async def test_tracestate_lines_combine_in_order(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("0", collector)},
            app_port=echo_app.port,
        )
        raw = await raw_exchange(
            sidecar.http_port,
            _raw_get(
                "/v1.0/invoke/app/method/state",
                [f"traceparent: {UNSAMPLED_PARENT}", "tracestate: rojo=1", "tracestate: congo=2"],
            ),
        )
        [response] = parse_responses(raw)
        assert response.status == 200, response
        assert app_headers(response, "tracestate") == ["rojo=1,congo=2"]


# -- what goes back: traceparent on every response ---------------------------------------------


async def test_response_traceparent_names_the_span_the_app_saw(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("1", collector)},
            app_port=echo_app.port,
        )
        response = await request(
            sidecar.http_port,
            "GET",
            "/v1.0/invoke/app/method/x",
            {"traceparent": SAMPLED_PARENT},
        )
        assert response.status == 200, response
        [seen] = app_headers(response, "traceparent")
        assert response_headers(response, "traceparent") == [seen]
        assert seen.startswith(f"00-{TRACE}-") and seen.endswith("-01")


@pytest.mark.parametrize("sent", [True, False], ids=["client-traceparent", "no-traceparent"])
async def test_sidecar_error_response_carries_traceparent_and_an_error_span(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
    sent: bool,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("1", collector)},
            app_port=echo_app.port,
        )
        headers = {"traceparent": SAMPLED_PARENT} if sent else {}
        response = await request(sidecar.http_port, "GET", "/v1.0/invoke/nowhere/method/x", headers)
        assert response.status == 500, response
        assert response.json()["errorCode"] == "ERR_DIRECT_INVOKE"
        trace_id, span_id, flags = single_traceparent(response_headers(response, "traceparent"))
        assert flags == "01"
        if sent:
            assert trace_id == TRACE
            assert span_id != PARENT
        await eventually(lambda: bool(collector.zipkin_trace(trace_id)), what="the error span")
        [span] = collector.zipkin_trace(trace_id)
        assert span["id"] == span_id
        assert span["name"] == "CallLocal/nowhere/x"
        assert span["tags"]["dapr.status_code"] == "500"
        assert span["tags"]["otel.status_code"] == "ERROR"
        assert span["tags"]["error"] == "Code(500): Internal Server Error"


async def test_refused_request_carries_traceparent(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("0", collector)},
            app_port=echo_app.port,
            api_token="s3cret",
        )
        response = await request(
            sidecar.http_port,
            "GET",
            "/v1.0/invoke/app/method/x",
            {"traceparent": UNSAMPLED_PARENT},
        )
        assert response.status == 401, response
        trace_id, span_id, flags = single_traceparent(response_headers(response, "traceparent"))
        assert (trace_id, flags) == (TRACE, "00")
        assert span_id != PARENT
        assert echo_app.seen == []


async def test_apps_own_response_traceparent_wins(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("1", collector)},
            app_port=echo_app.port,
        )
        own = f"00-{'1' * 32}-{'2' * 16}-01"
        response = await request(
            sidecar.http_port,
            "GET",
            f"/v1.0/invoke/app/method/own?header=traceparent:{own}",
            {"traceparent": SAMPLED_PARENT},
        )
        assert response.status == 200, response
        assert response_headers(response, "traceparent") == [own]
        # The app still got the sidecar's span, in the client's trace.
        assert single_traceparent(app_headers(response, "traceparent"))[0] == TRACE


async def test_metadata_response_carries_traceparent(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("1", collector)},
            app_port=echo_app.port,
        )
        response = await request(
            sidecar.http_port, "GET", "/v1.0/metadata", {"traceparent": SAMPLED_PARENT}
        )
        assert response.status == 200, response
        trace_id, span_id, flags = single_traceparent(response_headers(response, "traceparent"))
        assert (trace_id, flags) == (TRACE, "01")
        assert span_id != PARENT
        # The span the answer names is the one exported for the request.
        await eventually(lambda: bool(collector.zipkin_trace(TRACE)), what="the metadata span")
        [span] = collector.zipkin_trace(TRACE)
        assert (span["id"], span["parentId"]) == (span_id, PARENT)
        # Without a context sent, the answer names a new sampled trace.
        fresh = await request(sidecar.http_port, "GET", "/v1.0/metadata")
        assert fresh.status == 200, fresh
        fresh_trace, _, fresh_flags = single_traceparent(response_headers(fresh, "traceparent"))
        assert fresh_trace != TRACE
        assert fresh_flags == "01"


async def test_metadata_put_response_carries_traceparent(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("0", collector)},
            app_port=echo_app.port,
        )
        response = await request(
            sidecar.http_port,
            "PUT",
            "/v1.0/metadata/colour",
            {"traceparent": UNSAMPLED_PARENT},
            b"blue",
        )
        assert response.status == 204, response
        trace_id, span_id, flags = single_traceparent(response_headers(response, "traceparent"))
        assert (trace_id, flags) == (TRACE, "00")
        assert span_id != PARENT


async def test_health_checks_are_never_exported(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("1", collector)},
            app_port=echo_app.port,
        )
        # Not even under a sampled parent: daprd never traces health checks.
        for target, headers, status in (
            ("/v1.0/healthz", {}, 204),
            ("/v1.0/healthz/outbound", {}, 204),
            ("/v1.0/healthz", {"traceparent": SAMPLED_PARENT}, 204),
            ("/v1.0/healthz/outbound", {"traceparent": SAMPLED_PARENT}, 204),
            ("/v1.0/healthz?appid=other", {"traceparent": SAMPLED_PARENT}, 500),
        ):
            response = await request(sidecar.http_port, "GET", target, headers)
            assert response.status == status, response
            assert response_headers(response, "traceparent") == [], (target, headers)
        marker = await flush_marker(sidecar.http_port, collector)
        assert {span["traceId"] for span in collector.zipkin_spans()} == {marker}
        await wait_for_spans_total(sidecar, "exported", 1)
        assert await spans_total(sidecar, "dropped") == 0


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
        sidecar = await traced_sidecar(make_sidecar, tmp_path, spec, app_port=echo_app.port)
        for traceparent, tracestate in (
            (SAMPLED_PARENT, "congo=t61rcWkgMzE"),
            (f"00-{TRACE.upper()}-{PARENT}-01", "Not A Valid=State"),
        ):
            response = await request(
                sidecar.http_port,
                "GET",
                "/v1.0/invoke/app/method/x",
                {"traceparent": traceparent, "tracestate": tracestate},
            )
            assert response.status == 200, response
            assert app_headers(response, "traceparent") == [traceparent]
            assert app_headers(response, "tracestate") == [tracestate]
            assert response_headers(response, "traceparent") == []
        # Nothing is added when nothing is sent, on the way in or out.
        bare = await request(sidecar.http_port, "GET", "/v1.0/invoke/app/method/x")
        assert bare.status == 200, bare
        assert app_headers(bare, "traceparent") == []
        assert app_headers(bare, "tracestate") == []
        assert response_headers(bare, "traceparent") == []
        error = await request(sidecar.http_port, "GET", "/v1.0/invoke/nowhere/method/x")
        assert error.status == 500, error
        assert response_headers(error, "traceparent") == []
        exposition = await scrape(sidecar)
        assert sample_value(exposition, "fastproxy_spans_total") is None


# -- exporters -------------------------------------------------------------------------------


async def test_collector_down_costs_dropped_spans_never_slow_requests(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        down = Collector(port=_closed_port())
        sidecar = await traced_sidecar(
            make_sidecar,
            tmp_path,
            {"tracing": zipkin_tracing("1", down)},
            app_port=echo_app.port,
        )
        count = 20
        for index in range(count):
            started = time.monotonic()
            response = await request(
                sidecar.http_port, "GET", f"/v1.0/invoke/app/method/n/{index}", timeout=2.0
            )
            assert response.status == 200, response
            assert time.monotonic() - started < 0.5
            assert single_traceparent(response_headers(response, "traceparent"))[2] == "01"

        await wait_for_spans_total(sidecar, "dropped", count)
        exposition = await scrape(sidecar)
        exported = sample_value(
            exposition, "fastproxy_spans_total", exporter=down.zipkin_url, outcome="exported"
        )
        assert exported == 0
        # The sidecar keeps serving after the failed export.
        after = await request(sidecar.http_port, "GET", "/v1.0/invoke/app/method/after")
        assert after.status == 200, after


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def test_otlp_http_export_carries_the_same_spans_as_zipkin(
    collector: Collector,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        tracing = {
            "samplingRate": "1",
            "zipkin": {"endpointAddress": collector.zipkin_url},
            "otel": {
                "endpointAddress": collector.otlp_address,
                "isSecure": False,
                "protocol": "http",
            },
        }
        sidecar = await traced_sidecar(
            make_sidecar, tmp_path, {"tracing": tracing}, app_id="orders", app_port=echo_app.port
        )
        ok = await request(
            sidecar.http_port,
            "GET",
            "/v1.0/invoke/orders/method/list",
            {"traceparent": SAMPLED_PARENT},
        )
        assert ok.status == 200, ok
        failed = await request(sidecar.http_port, "GET", "/v1.0/invoke/orders/method/x?status=503")
        assert failed.status == 503, failed
        await eventually(
            lambda: len(collector.otlp_spans()) == 2 and len(collector.zipkin_spans()) == 2,
            what="two spans on each protocol",
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
