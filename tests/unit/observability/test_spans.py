"""The service-invocation span: the record, its name, daprd's attributes and error status."""

from __future__ import annotations

from typing import Any

import pytest

from fastproxy.observability.spans import (
    Span,
    SpanKind,
    dapr_headers,
    invoke_span,
    status_description,
)

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


def test_invoke_span_builds_the_record() -> None:
    span = _span(
        headers=[(b"Content-Type", b"application/json"), (b"dapr-app-id", b"orders")],
        server_address="10.0.0.7",
        server_port=50002,
    )
    assert span == Span(
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        parent_id=PARENT_ID,
        kind="CLIENT",
        target_app_id="orders",
        method=b"neworder",
        verb=b"POST",
        path=b"/v1.0/invoke/orders/method/neworder",
        url=b"/v1.0/invoke/orders/method/neworder?x=1",
        status=200,
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_002_500_000,
        server_address="10.0.0.7",
        server_port=50002,
        headers=((b"Content-Type", b"application/json"), (b"dapr-app-id", b"orders")),
    )


def test_invoke_span_keeps_the_callers_objects() -> None:
    """Building a span decodes and copies nothing: the work waits for the encoder."""
    path = b"/v1.0/invoke/orders/method/neworder"
    headers = ((b"dapr-app-id", b"orders"),)
    span = _span(path=path, url=path, method=b"neworder", headers=headers)
    assert span.path is path
    assert span.url is path
    assert span.headers is headers


def test_caller_span_carries_daprd_attributes() -> None:
    span = _span(
        headers=[(b"Content-Type", b"application/json"), (b"dapr-app-id", b"orders")],
        server_address="10.0.0.7",
        server_port=50002,
    )
    assert span.name == "CallLocal/orders/neworder"
    assert span.attributes() == {
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
    }
    assert (span.status_error, span.status_message) == (False, "")


@pytest.mark.parametrize(
    "kind", [pytest.param("CLIENT", id="caller"), pytest.param("SERVER", id="callee")]
)
def test_span_kind_is_kept(kind: SpanKind) -> None:
    assert _span(kind=kind).kind == kind


@pytest.mark.parametrize(
    ("parent_id", "expected"),
    [
        pytest.param(None, b"", id="none-is-root"),
        pytest.param(b"", b"", id="empty-is-root"),
        pytest.param(PARENT_ID, PARENT_ID, id="child"),
    ],
)
def test_parent_id(parent_id: bytes | None, expected: bytes) -> None:
    assert _span(parent_id=parent_id).parent_id == expected


@pytest.mark.parametrize(
    ("method", "name"),
    [
        pytest.param(b"/neworder", "CallLocal/orders/neworder", id="leading-slash-dropped"),
        pytest.param(b"//twice", "CallLocal/orders//twice", id="only-one-slash-dropped"),
        pytest.param(b"/a/b/c", "CallLocal/orders/a/b/c", id="nested"),
        pytest.param(b"neworder", "CallLocal/orders/neworder", id="no-slash"),
        pytest.param(b"/", "CallLocal/orders/", id="root"),
        pytest.param(b"caf\xe9", "CallLocal/orders/caf\u00e9", id="latin-1"),
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
        pytest.param(
            [(b"Dapr-X", b"first"), (b"dapr-x", b"second")],
            {"dapr-x": "first"},
            id="first-value-wins-any-case",
        ),
        pytest.param([(b"dapr-x", b"caf\xe9")], {"dapr-x": "caf\u00e9"}, id="latin-1-value"),
    ],
)
def test_dapr_headers_become_attributes(
    headers: list[tuple[bytes, bytes]], expected: dict[str, str]
) -> None:
    attributes = _span(headers=headers).attributes()
    from_headers = {k: v for k, v in attributes.items() if k.startswith("dapr-")}
    assert from_headers == expected


def test_dapr_headers_keep_order_and_lowercase_names() -> None:
    headers = [(b"Dapr-B", b"2"), (b"accept", b"*/*"), (b"DAPR-A", b"1"), (b"dapr-b", b"3")]
    assert dapr_headers(headers) == [(b"dapr-b", b"2"), (b"dapr-a", b"1")]


def test_api_token_appears_nowhere_in_the_span() -> None:
    span = _span(headers=[(b"Dapr-Api-Token", b"s3cret-token"), (b"dapr-app-id", b"orders")])
    outputs = [repr(span), span.name, str(span.attributes()), repr(dapr_headers(span.headers))]
    for output in outputs:
        assert "s3cret-token" not in output
        assert "dapr-api-token" not in output.lower()


def test_repr_names_the_span_and_its_trace() -> None:
    assert repr(_span(parent_id=None, status=503)) == (
        "<Span CLIENT CallLocal/orders/neworder status=503"
        " trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7 parent=->"
    )


@pytest.mark.parametrize(
    ("changed", "value"),
    [
        pytest.param("trace_id", b"0" * 32, id="trace_id"),
        pytest.param("parent_id", b"", id="parent_id"),
        pytest.param("kind", "SERVER", id="kind"),
        pytest.param("status", 500, id="status"),
        pytest.param("end_ns", 0, id="end_ns"),
        pytest.param("server_port", 1, id="server_port"),
        pytest.param("headers", ((b"dapr-x", b"1"),), id="headers"),
    ],
)
def test_spans_compare_by_every_field(changed: str, value: object) -> None:
    assert _span() == _span()
    assert _span() != _span(**{changed: value})


SHAPE_FIELDS: list[tuple[str, object]] = [
    ("kind", "SERVER"),
    ("target_app_id", "payments"),
    ("method", b"/other"),
    ("verb", b"GET"),
    ("path", b"/v1.0/invoke/orders/method/other"),
    ("url", b"/v1.0/invoke/orders/method/neworder?x=2"),
    ("status", 500),
    ("server_address", "10.0.0.8"),
    ("server_port", 1),
    ("headers", ((b"dapr-x", b"1"),)),
]


@pytest.mark.parametrize(
    ("changed", "value"), [pytest.param(name, value, id=name) for name, value in SHAPE_FIELDS]
)
def test_a_span_differing_outside_ids_and_times_has_another_shape(
    changed: str, value: object
) -> None:
    assert not _span().same_shape(_span(**{changed: value}))
    assert not _span(**{changed: value}).same_shape(_span())


def test_spans_differing_in_ids_and_times_only_share_their_shape() -> None:
    other = _span(trace_id=b"1" * 32, span_id=b"2" * 16, parent_id=b"", start_ns=5, end_ns=6)
    assert _span().same_shape(other)
    assert other.same_shape(_span())


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        pytest.param("", 0, {}, id="unknown"),
        pytest.param(
            "10.0.0.7",
            3000,
            {"server.address": "10.0.0.7", "server.port": "3000"},
            id="address-and-port",
        ),
        pytest.param("orders.svc", 0, {"server.address": "orders.svc"}, id="address-only"),
        pytest.param("", 3000, {}, id="port-without-address"),
    ],
)
def test_server_address_attributes(address: str, port: int, expected: dict[str, str]) -> None:
    attributes = _span(server_address=address, server_port=port).attributes()
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
    assert span.attributes()["dapr.status_code"] == str(status)


def test_status_description() -> None:
    assert status_description(502) == "Code(502): Bad Gateway"
