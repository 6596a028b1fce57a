"""Span encoders (Zipkin v2 JSON, OTLP/HTTP JSON), the otel endpoint rule, exporter settings."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from fastproxy.observability.export import (
    BatchExporter,
    encode_otlp_json,
    encode_zipkin,
    parse_otel_endpoint,
)
from fastproxy.observability.spans import Span

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

ROOT = Span(
    trace_id=TRACE_ID,
    span_id="00f067aa0ba902b7",
    parent_id=None,
    name="CallLocal/orders/neworder",
    kind="CLIENT",
    start_ns=1_700_000_000_123_456_789,
    end_ns=1_700_000_000_125_956_789,
    attributes={"rpc.service": "ServiceInvocation", "dapr.status_code": "200"},
)
FAILED_CHILD = Span(
    trace_id=TRACE_ID,
    span_id="b7ad6b7169203331",
    parent_id="00f067aa0ba902b7",
    name="CallLocal/orders/neworder",
    kind="SERVER",
    start_ns=1_700_000_000_124_000_000,
    end_ns=1_700_000_000_124_000_400,  # 400 ns: below Zipkin's microsecond
    attributes={"dapr.status_code": "503"},
    status_error=True,
    status_message="Code(503): Service Unavailable",
)


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
            "tags": {"rpc.service": "ServiceInvocation", "dapr.status_code": "200"},
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
            "tags": {
                "dapr.status_code": "503",
                "otel.status_code": "ERROR",
                "error": "Code(503): Service Unavailable",
            },
        },
    ]


def test_zipkin_root_span_has_no_parent_id_key() -> None:
    (record,) = json.loads(encode_zipkin([ROOT], "checkout"))
    assert "parentId" not in record
    assert "error" not in record["tags"]


def test_zipkin_encoding_does_not_change_the_span() -> None:
    encode_zipkin([FAILED_CHILD], "checkout")
    assert FAILED_CHILD.attributes == {"dapr.status_code": "503"}


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
                                "attributes": [
                                    {
                                        "key": "rpc.service",
                                        "value": {"stringValue": "ServiceInvocation"},
                                    },
                                    {"key": "dapr.status_code", "value": {"stringValue": "200"}},
                                ],
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
                                "attributes": [
                                    {"key": "dapr.status_code", "value": {"stringValue": "503"}}
                                ],
                                "status": {"code": 2, "message": "Code(503): Service Unavailable"},
                            },
                        ],
                    }
                ],
            }
        ]
    }


def _strings(document: object) -> set[str]:
    if isinstance(document, str):
        return {document}
    if isinstance(document, dict):
        return set().union(*(_strings(v) for v in document.values()), set(document))
    if isinstance(document, list):
        return set().union(*(_strings(v) for v in document))
    return set()


@pytest.mark.parametrize(
    "encode", [pytest.param(encode_zipkin, id="zipkin"), pytest.param(encode_otlp_json, id="otlp")]
)
def test_encoders_emit_ascii_json_for_any_text(encode: Callable[[list[Span], str], bytes]) -> None:
    name = 'CallLocal/orders/caf\u00e9 "quoted"\n'
    value = "\u00e9\u2603\x00,="
    span = Span(
        trace_id=TRACE_ID,
        span_id="00f067aa0ba902b7",
        parent_id=None,
        name=name,
        kind="CLIENT",
        start_ns=0,
        end_ns=1000,
        attributes={"dapr-x": value},
    )
    body = encode([span], "svc")
    assert body.isascii()
    assert {name, value} <= _strings(json.loads(body))


@pytest.mark.parametrize(
    "encode", [pytest.param(encode_zipkin, id="zipkin"), pytest.param(encode_otlp_json, id="otlp")]
)
def test_encoders_accept_an_empty_batch(encode: Callable[[list[Span], str], bytes]) -> None:
    assert json.loads(encode([], "svc")) is not None


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
