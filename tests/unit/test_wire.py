"""Bytes the sidecar writes itself: status lines, local replies and Dapr-shaped errors."""

from __future__ import annotations

import json
import re

import pytest

from fastproxy.errors import (
    BadRequestError,
    BodyTooLargeError,
    HeadersTooLargeError,
    InvokeError,
    NoTargetError,
    ProxyError,
    RequestTimeoutError,
    UnauthorizedError,
    invoke_failure,
)
from fastproxy.routing import NO_APP_ID
from fastproxy.wire import Clock, error_body, error_response, local_response, status_line

DATE = b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.date_header = DATE
    return clock


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        pytest.param(200, b"", b"HTTP/1.1 200 OK\r\n", id="200"),
        pytest.param(204, b"", b"HTTP/1.1 204 No Content\r\n", id="204"),
        pytest.param(404, b"", b"HTTP/1.1 404 Not Found\r\n", id="404"),
        pytest.param(500, b"", b"HTTP/1.1 500 Internal Server Error\r\n", id="500"),
        pytest.param(401, b"", b"HTTP/1.1 401 Unauthorized\r\n", id="401"),
        pytest.param(200, b"OK", b"HTTP/1.1 200 OK\r\n", id="standard-reason-given"),
        pytest.param(200, b"Fine", b"HTTP/1.1 200 Fine\r\n", id="custom-reason"),
        pytest.param(599, b"", b"HTTP/1.1 599 \r\n", id="unknown-status-no-reason"),
        pytest.param(599, b"Odd", b"HTTP/1.1 599 Odd\r\n", id="unknown-status-with-reason"),
    ],
)
def test_status_line(status: int, reason: bytes, expected: bytes) -> None:
    assert status_line(status, reason) == expected


def test_clock_date_header_is_http_date() -> None:
    header = Clock().date_header
    assert re.fullmatch(
        rb"Date: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n", header
    ), header


def test_error_body_is_compact_dapr_json() -> None:
    assert error_body("ERR_DIRECT_INVOKE", "boom") == (
        b'{"errorCode":"ERR_DIRECT_INVOKE","message":"boom"}'
    )


def test_error_body_escapes_quotes_and_keeps_json_valid() -> None:
    body = error_body("ERR_X", 'say "hi"\n\u00e9')
    assert json.loads(body) == {"errorCode": "ERR_X", "message": 'say "hi"\n\u00e9'}


def _expected(status_line_bytes: bytes, body: bytes, content_type: bytes, close: bool) -> bytes:
    return (
        status_line_bytes
        + DATE
        + b"Content-Type: "
        + content_type
        + b"\r\n"
        + b"Content-Length: %d\r\n" % len(body)
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
        + body
    )


def test_error_response_no_target_is_404_dapr_json(clock: Clock) -> None:
    body = b'{"errorCode":"ERR_DIRECT_INVOKE","message":"' + NO_APP_ID.encode() + b'"}'
    assert error_response(clock, NoTargetError(NO_APP_ID)) == _expected(
        b"HTTP/1.1 404 Not Found\r\n", body, b"application/json", close=False
    )


def test_error_response_invoke_failure_is_500_dapr_json(clock: Clock) -> None:
    error = invoke_failure("orders", "couldn't find service: orders")
    body = (
        b'{"errorCode":"ERR_DIRECT_INVOKE",'
        b'"message":"failed to invoke, id: orders, err: couldn\'t find service: orders"}'
    )
    assert error_response(clock, error) == _expected(
        b"HTTP/1.1 500 Internal Server Error\r\n", body, b"application/json", close=False
    )


def test_error_response_unauthorized_is_401_plain_text(clock: Clock) -> None:
    assert error_response(clock, UnauthorizedError("invalid api token")) == _expected(
        b"HTTP/1.1 401 Unauthorized\r\n",
        b"invalid api token\n",
        b"text/plain; charset=utf-8",
        close=False,
    )


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        pytest.param(BadRequestError("bad"), 400, "ERR_MALFORMED_REQUEST", id="400"),
        pytest.param(RequestTimeoutError("slow"), 408, "ERR_REQUEST_TIMEOUT", id="408"),
        pytest.param(BodyTooLargeError("big"), 413, "ERR_BODY_TOO_LARGE", id="413"),
        pytest.param(HeadersTooLargeError("big"), 431, "ERR_HEADERS_TOO_LARGE", id="431"),
    ],
)
def test_error_response_for_broken_framing_closes_the_connection(
    clock: Clock, error: ProxyError, status: int, code: str
) -> None:
    data = error_response(clock, error, keep_alive=True)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"\r\nConnection: close" in head
    assert json.loads(body) == {"errorCode": code, "message": error.message}


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(NoTargetError(NO_APP_ID), id="404"),
        pytest.param(InvokeError("x"), id="500"),
        pytest.param(UnauthorizedError("invalid api token"), id="401"),
    ],
)
def test_error_response_keep_alive_false_adds_connection_close(
    clock: Clock, error: ProxyError
) -> None:
    assert b"\r\nConnection: close\r\n" not in error_response(clock, error, keep_alive=True)
    assert b"\r\nConnection: close\r\n" in error_response(clock, error, keep_alive=False)


def test_error_response_head_only_keeps_length_and_drops_body(clock: Clock) -> None:
    full = error_response(clock, NoTargetError(NO_APP_ID))
    head_only = error_response(clock, NoTargetError(NO_APP_ID), head_only=True)
    head, _, body = full.partition(b"\r\n\r\n")
    assert head_only == head + b"\r\n\r\n"
    assert b"Content-Length: %d\r\n" % len(body) in head_only


def test_local_response_204_has_no_body_headers(clock: Clock) -> None:
    assert local_response(clock, 204) == b"HTTP/1.1 204 No Content\r\n" + DATE + b"\r\n"


def test_local_response_200_json(clock: Clock) -> None:
    assert local_response(clock, 200, b'{"id":"a"}') == _expected(
        b"HTTP/1.1 200 OK\r\n", b'{"id":"a"}', b"application/json", close=False
    )


def test_local_response_empty_200_still_states_length(clock: Clock) -> None:
    data = local_response(clock, 200)
    assert b"Content-Length: 0\r\n" in data
    assert data.endswith(b"\r\n\r\n")


def test_local_response_extra_headers_and_close(clock: Clock) -> None:
    data = local_response(
        clock, 200, b"x", b"text/plain", keep_alive=False, extra_headers=b"X-A: 1\r\n"
    )
    assert data == (
        b"HTTP/1.1 200 OK\r\n" + DATE + b"Content-Type: text/plain\r\nContent-Length: 1\r\n"
        b"X-A: 1\r\nConnection: close\r\n\r\nx"
    )
