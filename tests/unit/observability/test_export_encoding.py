"""Span encoders (Zipkin v2 JSON, OTLP/HTTP JSON), the otel endpoint rule, exporter settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from fastproxy.observability.export import (
    BatchExporter,
    encode_otlp_json,
    encode_zipkin,
    parse_otel_endpoint,
)
from fastproxy.observability.spans import Span

Encoder = Callable[[list[Span], str], bytes]
ENCODERS = [pytest.param(encode_zipkin, id="zipkin"), pytest.param(encode_otlp_json, id="otlp")]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INVOKE_PATH = b"/v1.0/invoke/orders/method/neworder"


def _make(**overrides: Any) -> Span:
    settings: dict[str, Any] = {
        "trace_id": TRACE_ID.encode(),
        "span_id": b"00f067aa0ba902b7",
        "parent_id": b"",
        "kind": "CLIENT",
        "target_app_id": "orders",
        "method": b"neworder",
        "verb": b"POST",
        "path": INVOKE_PATH,
        "url": INVOKE_PATH + b"?x=1",
        "status": 200,
        "start_ns": 1_700_000_000_123_456_789,
        "end_ns": 1_700_000_000_125_956_789,
    }
    settings.update(overrides)
    return Span(**settings)


ROOT = _make(
    server_address="10.0.0.7",
    server_port=3000,
    headers=((b"Dapr-App-Id", b"orders"), (b"dapr-api-token", b"s3cret"), (b"accept", b"*/*")),
)
FAILED_CHILD = _make(
    span_id=b"b7ad6b7169203331",
    parent_id=b"00f067aa0ba902b7",
    kind="SERVER",
    verb=b"GET",
    url=INVOKE_PATH,
    status=503,
    start_ns=1_700_000_000_124_000_000,
    end_ns=1_700_000_000_124_000_400,  # 400 ns: below Zipkin's microsecond
)

ROOT_TAGS = {
    "dapr-app-id": "orders",
    "rpc.service": "ServiceInvocation",
    "net.peer.name": "orders",
    "dapr.protocol": "http",
    "dapr.api": "POST /v1.0/invoke/orders/method/neworder",
    "dapr.status_code": "200",
    "http.request.method": "POST",
    "url.full": "/v1.0/invoke/orders/method/neworder?x=1",
    "server.address": "10.0.0.7",
    "server.port": "3000",
}
FAILED_CHILD_TAGS = {
    "rpc.service": "ServiceInvocation",
    "net.peer.name": "orders",
    "dapr.protocol": "http",
    "dapr.api": "GET /v1.0/invoke/orders/method/neworder",
    "dapr.status_code": "503",
    "http.request.method": "GET",
    "url.full": "/v1.0/invoke/orders/method/neworder",
}


def test_zipkin_v2_document() -> None:
    body = encode_zipkin([ROOT, FAILED_CHILD], "checkout")
    assert json.loads(body) == [
        {
            "traceId": TRACE_ID,
            "id": "00f067aa0ba902b7",
            "name": "CallLocal/orders/neworder",
            "kind": "CLIENT",
            "timestamp": 1_700_000_000_123_456,
            "duration": 2500,
            "localEndpoint": {"serviceName": "checkout"},
            "tags": ROOT_TAGS,
        },
        {
            "traceId": TRACE_ID,
            "id": "b7ad6b7169203331",
            "parentId": "00f067aa0ba902b7",
            "name": "CallLocal/orders/neworder",
            "kind": "SERVER",
            "timestamp": 1_700_000_000_124_000,
            "duration": 1,
            "localEndpoint": {"serviceName": "checkout"},
            "tags": FAILED_CHILD_TAGS
            | {"otel.status_code": "ERROR", "error": "Code(503): Service Unavailable"},
        },
    ]


def test_zipkin_root_span_has_no_parent_id_key() -> None:
    (record,) = json.loads(encode_zipkin([ROOT], "checkout"))
    assert "parentId" not in record
    assert "error" not in record["tags"]


def _otlp_attributes(tags: dict[str, str]) -> list[dict[str, object]]:
    return [{"key": key, "value": {"stringValue": value}} for key, value in tags.items()]


def test_otlp_json_document() -> None:
    body = encode_otlp_json([ROOT, FAILED_CHILD], "checkout")
    assert json.loads(body) == {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "fastproxy"},
                        "spans": [
                            {
                                "traceId": TRACE_ID,
                                "spanId": "00f067aa0ba902b7",
                                "name": "CallLocal/orders/neworder",
                                "kind": 3,
                                "startTimeUnixNano": "1700000000123456789",
                                "endTimeUnixNano": "1700000000125956789",
                                "attributes": _otlp_attributes(ROOT_TAGS),
                                "status": {"code": 0},
                            },
                            {
                                "traceId": TRACE_ID,
                                "spanId": "b7ad6b7169203331",
                                "parentSpanId": "00f067aa0ba902b7",
                                "name": "CallLocal/orders/neworder",
                                "kind": 2,
                                "startTimeUnixNano": "1700000000124000000",
                                "endTimeUnixNano": "1700000000124000400",
                                "attributes": _otlp_attributes(FAILED_CHILD_TAGS),
                                "status": {"code": 2, "message": "Code(503): Service Unavailable"},
                            },
                        ],
                    }
                ],
            }
        ]
    }


# -- the encoders against the span's own view ----------------------------------------------


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _zipkin_reference(spans: list[Span], service_name: str) -> object:
    """What a Zipkin body must parse to, from the span's derived name and attributes."""
    records = []
    for span in spans:
        tags = span.attributes()
        if span.status_error:
            tags |= {"otel.status_code": "ERROR", "error": span.status_message}
        record: dict[str, object] = {"traceId": _text(span.trace_id), "id": _text(span.span_id)}
        if span.parent_id:
            record["parentId"] = _text(span.parent_id)
        record |= {
            "name": span.name,
            "kind": span.kind,
            "timestamp": span.start_ns // 1000,
            "duration": max(1, (span.end_ns - span.start_ns) // 1000),
            "localEndpoint": {"serviceName": service_name},
            "tags": tags,
        }
        records.append(record)
    return records


def _otlp_reference(spans: list[Span], service_name: str) -> object:
    """What an OTLP/JSON body must parse to, from the span's derived name and attributes."""
    records = []
    for span in spans:
        record: dict[str, object] = {
            "traceId": _text(span.trace_id),
            "spanId": _text(span.span_id),
        }
        if span.parent_id:
            record["parentSpanId"] = _text(span.parent_id)
        status: dict[str, object] = {"code": 0}
        if span.status_error:
            status = {"code": 2, "message": span.status_message}
        record |= {
            "name": span.name,
            "kind": {"SERVER": 2, "CLIENT": 3}[span.kind],
            "startTimeUnixNano": str(span.start_ns),
            "endTimeUnixNano": str(span.end_ns),
            "attributes": _otlp_attributes(span.attributes()),
            "status": status,
        }
        records.append(record)
    resource = {"attributes": _otlp_attributes({"service.name": service_name})}
    scope_spans = [{"scope": {"name": "fastproxy"}, "spans": records}]
    return {"resourceSpans": [{"resource": resource, "scopeSpans": scope_spans}]}


REFERENCES = [
    pytest.param(encode_zipkin, _zipkin_reference, id="zipkin"),
    pytest.param(encode_otlp_json, _otlp_reference, id="otlp"),
]

# Values a request or a configuration may carry that JSON must escape.
HOSTILE_BYTES = b'q"uo\te\n\\ \x00\x1f\x7f caf\xe9 \xff </script>'
HOSTILE_TEXT = 'app "\\ \n\t \x01 caf\u00e9 \u2603 \U0001f600'
HOSTILE_ASCII = 'app "\\ \n\t \x01 \x7f'

SPANS = [
    pytest.param(ROOT, id="root-with-headers-and-server"),
    pytest.param(FAILED_CHILD, id="failed-child"),
    pytest.param(_make(status=499), id="unknown-error-status"),
    pytest.param(_make(status=1000), id="status-beyond-the-table"),
    pytest.param(_make(server_address="orders.svc"), id="server-without-port"),
    pytest.param(_make(server_port=3000), id="port-without-server"),
    pytest.param(_make(start_ns=500, end_ns=2400), id="duration-truncated"),
    pytest.param(_make(start_ns=10, end_ns=5), id="clock-went-back"),
    pytest.param(_make(method=HOSTILE_BYTES), id="hostile-method"),
    pytest.param(_make(verb=b'PO"ST'), id="hostile-verb"),
    pytest.param(_make(path=HOSTILE_BYTES), id="hostile-path"),
    pytest.param(_make(url=HOSTILE_BYTES), id="hostile-url"),
    pytest.param(_make(trace_id=HOSTILE_BYTES), id="hostile-trace-id"),
    pytest.param(_make(span_id=b"\n"), id="hostile-span-id"),
    pytest.param(_make(parent_id=b'"'), id="hostile-parent-id"),
    pytest.param(_make(target_app_id=HOSTILE_TEXT), id="hostile-target"),
    pytest.param(_make(target_app_id=HOSTILE_ASCII), id="hostile-ascii-target"),
    pytest.param(_make(server_address=HOSTILE_ASCII), id="hostile-ascii-server"),
    pytest.param(_make(server_address=HOSTILE_TEXT, server_port=1), id="hostile-server"),
    pytest.param(
        _make(headers=((b"dapr-x", HOSTILE_BYTES), (b"Dapr-\xe9", b"\\"))),
        id="hostile-header",
    ),
]


@pytest.mark.parametrize(("encode", "reference"), REFERENCES)
@pytest.mark.parametrize("span", SPANS)
def test_encoders_agree_with_the_span(
    encode: Encoder, reference: Callable[[list[Span], str], object], span: Span
) -> None:
    body = encode([span], "checkout")
    assert body.isascii()
    assert json.loads(body) == reference([span], "checkout")


@pytest.mark.parametrize(("encode", "reference"), REFERENCES)
@pytest.mark.parametrize(
    "service_name",
    [
        pytest.param("checkout", id="plain"),
        pytest.param(HOSTILE_TEXT, id="hostile"),
        pytest.param(HOSTILE_ASCII, id="hostile-ascii"),
    ],
)
def test_encoders_keep_batch_order(
    encode: Encoder, reference: Callable[[list[Span], str], object], service_name: str
) -> None:
    spans = [
        _make(span_id=b"%016x" % i, parent_id=b"%016x" % (i + 1) if i % 2 else b"")
        for i in range(7)
    ]
    body = encode(spans, service_name)
    assert body.isascii()
    assert json.loads(body) == reference(spans, service_name)


@pytest.mark.parametrize(("encode", "reference"), REFERENCES)
def test_a_batch_of_changing_shapes_encodes_every_span_as_itself(
    encode: Encoder, reference: Callable[[list[Span], str], object]
) -> None:
    """What surrounds ids and times is reused only while spans keep their shape."""
    shapes = [
        {},
        {},
        {"status": 503},
        {"path": b"/v1.0/invoke/orders/method/other", "method": b"other"},
        {},
        {"server_address": "10.1.2.3", "server_port": 8080},
        {"kind": "SERVER", "target_app_id": "payments"},
        {"headers": ((b"dapr-app-id", b"orders"),)},
        {"verb": b"PUT", "url": HOSTILE_BYTES},
        {},
    ]
    spans = [
        _make(span_id=b"%016x" % (i + 1), start_ns=10**18 + i, **shape)
        for i, shape in enumerate(shapes)
    ]
    body = encode(spans, "checkout")
    assert body.isascii()
    assert json.loads(body) == reference(spans, "checkout")


@pytest.mark.parametrize("encode", ENCODERS)
def test_hostile_values_round_trip(encode: Encoder) -> None:
    span = _make(
        method=HOSTILE_BYTES,
        path=HOSTILE_BYTES,
        url=HOSTILE_BYTES,
        target_app_id=HOSTILE_TEXT,
        server_address=HOSTILE_TEXT,
        server_port=9,
        headers=((b"dapr-x", HOSTILE_BYTES),),
    )
    body = encode([span], HOSTILE_TEXT)
    assert body.isascii()
    strings = _strings(json.loads(body))
    wire_text = HOSTILE_BYTES.decode("latin-1")
    assert {wire_text, HOSTILE_TEXT, f"CallLocal/{HOSTILE_TEXT}/{wire_text}"} <= strings
    assert f"POST {wire_text}" in strings


@pytest.mark.parametrize("encode", ENCODERS)
@pytest.mark.parametrize(
    "name",
    [pytest.param(b"dapr-api-token", id="lower"), pytest.param(b"Dapr-API-Token", id="mixed")],
)
def test_api_token_never_leaves(encode: Encoder, name: bytes) -> None:
    span = _make(headers=((name, b"s3cret-token"), (b"dapr-app-id", b"orders")))
    body = encode([span], "checkout")
    assert b"s3cret-token" not in body
    assert b"dapr-api-token" not in body.lower()
    assert b"dapr-app-id" in body


@pytest.mark.parametrize("encode", ENCODERS)
def test_clean_values_are_written_as_they_are(encode: Encoder) -> None:
    body = encode([ROOT], "checkout")
    for value in (INVOKE_PATH + b"?x=1", b"POST " + INVOKE_PATH, b"CallLocal/orders/neworder"):
        assert b'"' + value + b'"' in body


def _strings(document: object) -> set[str]:
    if isinstance(document, str):
        return {document}
    if isinstance(document, dict):
        return set().union(*(_strings(v) for v in document.values()), set(document))
    if isinstance(document, list):
        return set().union(*(_strings(v) for v in document))
    return set()


def test_empty_batches() -> None:
    assert encode_zipkin([], "svc") == b"[]"
    assert json.loads(encode_otlp_json([], "svc")) == _otlp_reference([], "svc")


def test_encoding_does_not_change_the_span() -> None:
    before = repr(FAILED_CHILD), FAILED_CHILD.attributes()
    encode_zipkin([FAILED_CHILD], "checkout")
    encode_otlp_json([FAILED_CHILD], "checkout")
    assert (repr(FAILED_CHILD), FAILED_CHILD.attributes()) == before


@pytest.mark.parametrize(
    ("address", "secure", "expected"),
    [
        pytest.param("localhost:4318", False, "http://localhost:4318/v1/traces", id="insecure"),
        pytest.param("otel:4318", True, "https://otel:4318/v1/traces", id="secure"),
        pytest.param(" otel:4318 ", False, "http://otel:4318/v1/traces", id="whitespace"),
        pytest.param("otel", False, "http://otel/v1/traces", id="no-port"),
        pytest.param("[::1]:4318", False, "http://[::1]:4318/v1/traces", id="ipv6"),
        pytest.param("otel:4318/", False, "http://otel:4318/v1/traces", id="root-path"),
        pytest.param(
            "otel:4318/otlp/v1/traces", False, "http://otel:4318/otlp/v1/traces", id="explicit-path"
        ),
        pytest.param("http://otel:4318", True, "http://otel:4318/v1/traces", id="scheme-wins"),
        pytest.param("https://otel:4318", False, "https://otel:4318/v1/traces", id="https-scheme"),
        pytest.param("HTTP://otel:4318/x?y=1", True, "http://otel:4318/x?y=1", id="query-kept"),
    ],
)
def test_parse_otel_endpoint(address: str, secure: bool, expected: str) -> None:
    assert parse_otel_endpoint(address, secure) == expected


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("grpc://otel:4317", id="other-scheme"),
        pytest.param("otel:port", id="bad-port"),
        pytest.param("http://:4318", id="no-host"),
    ],
)
def test_parse_otel_endpoint_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        parse_otel_endpoint(address, False)


@pytest.mark.parametrize(
    ("url", "settings"),
    [
        pytest.param("ftp://collector/x", {}, id="scheme"),
        pytest.param("collector:9411", {}, id="no-scheme"),
        pytest.param("http://collector/a b", {}, id="space-in-path"),
        pytest.param("http://collector/x", {"max_queue": 0}, id="queue-0"),
        pytest.param("http://collector/x", {"max_batch": 0}, id="batch-0"),
        pytest.param("http://collector/x", {"interval": 0.0}, id="interval-0"),
        pytest.param("http://collector/x", {"timeout": -1.0}, id="timeout-negative"),
        pytest.param("http://collector/x", {"reuse_idle": -1.0}, id="reuse-idle-negative"),
        pytest.param("http://collector/x", {"headers": [("bad name", "v")]}, id="header-name"),
        pytest.param("http://collector/x", {"headers": [("x", "a\r\nb: c")]}, id="header-crlf"),
    ],
)
def test_exporter_rejects_bad_settings(url: str, settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BatchExporter(url, lambda spans: b"", "application/json", **settings)  # type: ignore[arg-type]


def test_exporter_counts_overflow_without_a_loop() -> None:
    exporter = BatchExporter(
        "http://collector/x", lambda spans: b"", "application/json", max_queue=3
    )
    for _ in range(5):
        exporter.submit(ROOT)
    assert (exporter.queued, exporter.dropped, exporter.exported) == (3, 2, 0)
    assert repr(exporter) == (
        "<BatchExporter new http://collector/x queued=3 exported=0 dropped=2>"
    )
