"""The service-invocation span: name, kind, daprd's attributes and error status."""

from __future__ import annotations

from typing import Any

import pytest

from fastproxy.observability.spans import Span, SpanKind, invoke_span, status_description

TRACE_ID = b"4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = b"00f067aa0ba902b7"
PARENT_ID = b"b7ad6b7169203331"


def _span(**overrides: Any) -> Span:
    settings: dict[str, Any] = {
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "parent_id": PARENT_ID,
        "kind": "CLIENT",
        "target_app_id": "orders",
        "method": b"/neworder",
        "verb": b"POST",
        "path": b"/v1.0/invoke/orders/method/neworder",
        "url": b"/v1.0/invoke/orders/method/neworder?x=1",
        "status": 200,
        "start_ns": 1_700_000_000_000_000_000,
        "end_ns": 1_700_000_000_002_500_000,
    }
    settings.update(overrides)
    return invoke_span(**settings)


def test_caller_span_carries_daprd_attributes() -> None:
    span = _span(
        headers=[(b"Content-Type", b"application/json"), (b"dapr-app-id", b"orders")],
        server_address="10.0.0.7",
        server_port=50002,
    )
    assert span == Span(
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
        parent_id="b7ad6b7169203331",
        name="CallLocal/orders/neworder",
        kind="CLIENT",
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_002_500_000,
        attributes={
            "dapr-app-id": "orders",
            "rpc.service": "ServiceInvocation",
            "net.peer.name": "orders",
            "dapr.protocol": "http",
            "dapr.api": "POST /v1.0/invoke/orders/method/neworder",
            "dapr.status_code": "200",
            "http.request.method": "POST",
            "url.full": "/v1.0/invoke/orders/method/neworder?x=1",
            "server.address": "10.0.0.7",
            "server.port": "50002",
        },
        status_error=False,
        status_message="",
    )


@pytest.mark.parametrize(
    "kind", [pytest.param("CLIENT", id="caller"), pytest.param("SERVER", id="callee")]
)
def test_span_kind_is_kept(kind: SpanKind) -> None:
    assert _span(kind=kind).kind == kind


def test_text_arguments_are_accepted_as_str() -> None:
    span = _span(
        trace_id=TRACE_ID.decode(),
        span_id=SPAN_ID.decode(),
        parent_id=None,
        method="neworder",
        verb="GET",
        path="/neworder",
        url="/neworder",
        headers=[("Dapr-Caller-App-Id", "checkout")],
    )
    assert span.trace_id == TRACE_ID.decode()
    assert span.parent_id is None
    assert span.name == "CallLocal/orders/neworder"
    assert span.attributes["dapr.api"] == "GET /neworder"
    assert span.attributes["dapr-caller-app-id"] == "checkout"


@pytest.mark.parametrize(
    ("method", "name"),
    [
        pytest.param(b"/neworder", "CallLocal/orders/neworder", id="leading-slash-dropped"),
        pytest.param(b"/a/b/c", "CallLocal/orders/a/b/c", id="nested"),
        pytest.param(b"neworder", "CallLocal/orders/neworder", id="no-slash"),
        pytest.param(b"/", "CallLocal/orders/", id="root"),
    ],
)
def test_span_name(method: bytes, name: str) -> None:
    assert _span(method=method).name == name


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([], {}, id="none"),
        pytest.param(
            [(b"dapr-app-id", b"orders"), (b"x-dapr-thing", b"no"), (b"accept", b"*/*")],
            {"dapr-app-id": "orders"},
            id="only-dapr-prefix",
        ),
        pytest.param(
            [(b"Dapr-Caller-App-Id", b"checkout")],
            {"dapr-caller-app-id": "checkout"},
            id="name-lowercased",
        ),
        pytest.param(
            [(b"dapr-api-token", b"s3cret"), (b"Dapr-API-Token", b"s3cret")],
            {},
            id="api-token-never",
        ),
        pytest.param(
            [(b"dapr-x", b"first"), (b"dapr-x", b"second")],
            {"dapr-x": "first"},
            id="first-value-wins",
        ),
        pytest.param([(b"dapr-x", b"caf\xe9")], {"dapr-x": "caf\u00e9"}, id="latin-1-value"),
    ],
)
def test_dapr_headers_become_attributes(
    headers: list[tuple[bytes, bytes]], expected: dict[str, str]
) -> None:
    attributes = _span(headers=headers).attributes
    from_headers = {k: v for k, v in attributes.items() if k.startswith("dapr-")}
    assert from_headers == expected


def test_api_token_value_appears_nowhere_in_the_span() -> None:
    span = _span(headers=[(b"dapr-api-token", b"s3cret-token"), (b"dapr-app-id", b"orders")])
    assert "s3cret-token" not in repr(span)
    assert "dapr-api-token" not in span.attributes


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        pytest.param(None, None, {}, id="unknown"),
        pytest.param(
            "10.0.0.7",
            3000,
            {"server.address": "10.0.0.7", "server.port": "3000"},
            id="address-and-port",
        ),
        pytest.param("orders.svc", None, {"server.address": "orders.svc"}, id="address-only"),
        pytest.param(None, 3000, {}, id="port-without-address"),
    ],
)
def test_server_address_attributes(
    address: str | None, port: int | None, expected: dict[str, str]
) -> None:
    attributes = _span(server_address=address, server_port=port).attributes
    assert {k: v for k, v in attributes.items() if k.startswith("server.")} == expected


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        pytest.param(200, False, "", id="200"),
        pytest.param(204, False, "", id="204"),
        pytest.param(302, False, "", id="302"),
        pytest.param(399, False, "", id="399"),
        pytest.param(400, True, "Code(400): Bad Request", id="400"),
        pytest.param(403, True, "Code(403): Forbidden", id="403"),
        pytest.param(404, True, "Code(404): Not Found", id="404"),
        pytest.param(500, True, "Code(500): Internal Server Error", id="500"),
        pytest.param(503, True, "Code(503): Service Unavailable", id="503"),
        pytest.param(499, True, "Code(499): Unknown", id="unknown-4xx"),
        pytest.param(599, True, "Code(599): Unknown", id="unknown-5xx"),
    ],
)
def test_error_status_from_http_status(status: int, error: bool, message: str) -> None:
    span = _span(status=status)
    assert span.status_error is error
    assert span.status_message == message
    assert span.attributes["dapr.status_code"] == str(status)


def test_status_description() -> None:
    assert status_description(502) == "Code(502): Bad Gateway"
