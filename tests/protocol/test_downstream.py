"""The client side of a forwarded exchange, on fake transports.

What the app receives for each client request (the rewritten head and the
re-framed body), and the order and fate of pipelined requests and refusals.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.protocol.conftest import APP_HOST, CALLER_LINES, DATE, Rig, settle

# -- requests and the heads the app must see for them ---------------------------

GET_A = b"GET /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n\r\n"
GET_B = b"GET /v1.0/invoke/me/method/b HTTP/1.1\r\nHost: localhost:3500\r\n\r\n"
GET_C = b"GET /v1.0/invoke/me/method/c HTTP/1.1\r\nHost: localhost:3500\r\n\r\n"
UP_A = b"GET /a HTTP/1.1\r\n" + APP_HOST + CALLER_LINES + b"\r\n"
UP_B = b"GET /b HTTP/1.1\r\n" + APP_HOST + CALLER_LINES + b"\r\n"
UP_C = b"GET /c HTTP/1.1\r\n" + APP_HOST + CALLER_LINES + b"\r\n"

OK_A = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
OK_B = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"
OK_C = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc"

MALFORMED = b"NOT A REQUEST\r\n\r\n"


def local_json(status_line: bytes, body: bytes, close: bool = False) -> bytes:
    """A whole sidecar-generated JSON response, as `wire.local_response` lays it out."""
    return (
        status_line
        + DATE
        + b"Content-Type: application/json\r\n"
        + b"Content-Length: %d\r\n" % len(body)
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
        + body
    )


REWRITES = [
    pytest.param(
        b"GET /v1.0/invoke/me/method/orders/7?x=1&y=%20z HTTP/1.1\r\n"
        b"Host: localhost:3500\r\nUser-Agent: t\r\nX-Custom: a\r\n\r\n",
        b"GET /orders/7?x=1&y=%20z HTTP/1.1\r\n"
        + APP_HOST
        + b"User-Agent: t\r\nX-Custom: a\r\n"
        + CALLER_LINES
        + b"\r\n",
        id="path-form-method-path-and-raw-query",
    ),
    pytest.param(
        b"PUT /orders?id=3 HTTP/1.1\r\nHost: localhost:3500\r\ndapr-app-id: me\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"PUT /orders?id=3 HTTP/1.1\r\n"
        + APP_HOST
        + b"Content-Length: 0\r\n"
        + CALLER_LINES
        + b"\r\n",
        id="header-form-app-id-dropped",
    ),
    pytest.param(
        b"GET /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n"
        b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
        b"Proxy-Authorization: Basic eDp5\r\nX-Keep: 1\r\n\r\n",
        b"GET /a HTTP/1.1\r\n" + APP_HOST + b"X-Keep: 1\r\n" + CALLER_LINES + b"\r\n",
        id="hop-by-hop-dropped",
    ),
    pytest.param(
        b"GET /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n"
        b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Keep: 1\r\n\r\n",
        b"GET /a HTTP/1.1\r\n" + APP_HOST + b"X-Keep: 1\r\n" + CALLER_LINES + b"\r\n",
        id="connection-named-header-dropped",
    ),
    pytest.param(
        b"GET /a HTTP/1.1\r\nHost: localhost:3500\r\ndapr-app-id: me\r\n"
        b"dapr-api-token: secret\r\ndapr-caller-app-id: evil\r\nDapr-Caller-Namespace: evil\r\n"
        b"dapr-callee-app-id: evil\r\nX-Keep: 1\r\n\r\n",
        b"GET /a HTTP/1.1\r\n" + APP_HOST + b"X-Keep: 1\r\n" + CALLER_LINES + b"\r\n",
        id="client-dapr-headers-replaced-by-ours",
    ),
    pytest.param(
        b"GET /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n"
        b"x-lower: v\r\nAccept: a\r\nAccept: b\r\nAuthorization: Bearer t0k\r\n\r\n",
        b"GET /a HTTP/1.1\r\n"
        + APP_HOST
        + b"x-lower: v\r\nAccept: a\r\nAccept: b\r\nAuthorization: Bearer t0k\r\n"
        + CALLER_LINES
        + b"\r\n",
        id="client-headers-kept-in-order-and-case",
    ),
    pytest.param(
        b"GET /v1.0/invoke/me/method/a HTTP/1.0\r\n\r\n",
        UP_A,
        id="http10-without-host-sent-as-http11-with-pool-host",
    ),
    pytest.param(
        b"GET http://localhost:3500/v1.0/invoke/me/method/a?q=1 HTTP/1.1\r\n"
        b"Host: localhost:3500\r\n\r\n",
        b"GET /a?q=1 HTTP/1.1\r\n" + APP_HOST + CALLER_LINES + b"\r\n",
        id="absolute-form-target",
    ),
    pytest.param(
        b"GET /v1.0/invoke/me/method/a?q=1#frag HTTP/1.1\r\nHost: localhost:3500\r\n\r\n",
        b"GET /a?q=1 HTTP/1.1\r\n" + APP_HOST + CALLER_LINES + b"\r\n",
        id="fragment-dropped",
    ),
    pytest.param(
        b"POST /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /a HTTP/1.1\r\n"
        + APP_HOST
        + b"Content-Type: text/plain\r\nContent-Length: 5\r\n"
        + CALLER_LINES
        + b"\r\nhello",
        id="content-length-and-body-forwarded",
    ),
    pytest.param(
        b"POST /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\n"
        + APP_HOST
        + CALLER_LINES
        + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        id="chunked-body-re-framed-without-extensions",
    ),
]


@pytest.mark.parametrize(("request_bytes", "upstream_bytes"), REWRITES)
async def test_request_is_forwarded_with_rewritten_head(
    rig: Rig, request_bytes: bytes, upstream_bytes: bytes
) -> None:
    rig.send(request_bytes)
    assert rig.upstream_wire.data == upstream_bytes
    assert rig.dialer.dials == []


async def test_body_arriving_in_pieces_is_forwarded_as_it_arrives(rig: Rig) -> None:
    rig.send(
        b"POST /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n"
        b"Content-Length: 6\r\n\r\nab"
    )
    assert rig.upstream_wire.take().endswith(b"\r\n\r\nab")
    rig.send(b"cd")
    assert rig.upstream_wire.take() == b"cd"
    rig.send(b"ef")
    assert rig.upstream_wire.take() == b"ef"


UP_CHUNKED_A = (
    b"POST /a HTTP/1.1\r\n"
    + APP_HOST
    + CALLER_LINES
    + b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
)


@pytest.mark.parametrize(
    "trailer",
    [
        pytest.param(b"X-Injected: 1\r\n", id="plain-field"),
        pytest.param(b"dapr-app-id: other\r\n", id="app-id-field"),
        pytest.param(b"Host: evil\r\n", id="host-field"),
    ],
)
async def test_chunked_request_trailer_is_not_a_header_of_next_pipelined_request(
    rig: Rig, trailer: bytes
) -> None:
    rig.send(
        b"POST /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n" + trailer + b"\r\n" + GET_B
    )
    rig.respond(OK_A)
    assert rig.upstream_wire.data == UP_CHUNKED_A + UP_B
    rig.respond(OK_B)
    assert rig.client.data == OK_A + OK_B


async def test_expect_continue_is_answered_and_not_forwarded(rig: Rig) -> None:
    rig.send(
        b"POST /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n"
        b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    assert rig.client.data == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert rig.upstream_wire.data == (
        b"POST /a HTTP/1.1\r\n" + APP_HOST + b"Content-Length: 2\r\n" + CALLER_LINES + b"\r\n"
    )


# -- pipelining -------------------------------------------------------------------


async def test_pipelined_request_not_written_upstream_before_first_response_completes(
    rig: Rig,
) -> None:
    rig.send(GET_A + GET_B)
    assert rig.upstream_wire.data == UP_A
    assert rig.client.calls == ["pause_reading"]

    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n")
    assert rig.upstream_wire.data == UP_A, "second head sent while the first response is open"

    rig.respond(b"a")
    assert rig.upstream_wire.data == UP_A + UP_B
    assert rig.client.data == OK_A
    assert rig.client.calls == ["pause_reading", "resume_reading"]

    rig.respond(OK_B)
    assert rig.client.data == OK_A + OK_B
    assert rig.dialer.dials == []


async def test_pipelined_responses_are_written_in_request_order(rig: Rig) -> None:
    rig.send(GET_A + GET_B + GET_C)
    for response in (OK_A, OK_B, OK_C):
        rig.respond(response)
    assert rig.client.data == OK_A + OK_B + OK_C
    assert rig.upstream_wire.data == UP_A + UP_B + UP_C
    assert not rig.client.closing
    assert rig.pool.idle_count == 1


async def test_pipelined_request_split_across_reads_still_waits_its_turn(rig: Rig) -> None:
    rig.send(GET_A + GET_B[:20])
    rig.send(GET_B[20:])
    assert rig.upstream_wire.data == UP_A
    rig.respond(OK_A)
    rig.respond(OK_B)
    assert rig.client.data == OK_A + OK_B


# -- requests the sidecar answers itself --------------------------------------------

NOT_HERE = [
    pytest.param(
        b"GET /v1.0/invoke/other/method/x HTTP/1.1\r\nHost: localhost:3500\r\n\r\n",
        b'{"errorCode":"ERR_DIRECT_INVOKE",'
        b'"message":"failed to invoke, id: other, err: couldn\'t find service: other"}',
        id="other-app-path-form",
    ),
    pytest.param(
        b"GET /x HTTP/1.1\r\nHost: localhost:3500\r\ndapr-app-id: other\r\n\r\n",
        b'{"errorCode":"ERR_DIRECT_INVOKE",'
        b'"message":"failed to invoke, id: other, err: couldn\'t find service: other"}',
        id="other-app-header-form",
    ),
    pytest.param(
        b"GET /v1.0/invoke/me.prod/method/x HTTP/1.1\r\nHost: localhost:3500\r\n\r\n",
        b'{"errorCode":"ERR_DIRECT_INVOKE",'
        b'"message":"failed to invoke, id: me.prod, err: couldn\'t find service: me.prod"}',
        id="same-app-other-namespace",
    ),
]


@pytest.mark.parametrize(("request_bytes", "body"), NOT_HERE)
async def test_request_for_another_app_gets_500_without_touching_upstream(
    rig: Rig, request_bytes: bytes, body: bytes
) -> None:
    rig.send(request_bytes)
    await rig.settle()
    assert rig.client.data == local_json(b"HTTP/1.1 500 Internal Server Error\r\n", body)
    assert rig.upstream_wire.data == b""
    assert rig.dialer.dials == []
    assert rig.pool.idle_count == 1
    assert not rig.client.closing


async def test_connection_serves_next_request_after_refusing_one(rig: Rig) -> None:
    rig.send(b"GET /v1.0/invoke/other/method/x HTTP/1.1\r\nHost: localhost:3500\r\n\r\n" + GET_A)
    await rig.settle()
    assert rig.client.take().startswith(b"HTTP/1.1 500 ")
    assert rig.upstream_wire.data == UP_A
    rig.respond(OK_A)
    assert rig.client.data == OK_A


def _malformed_reply(data: bytes) -> dict[str, str]:
    """The JSON body of a 400 that closes the connection; fails on any other shape."""
    match = re.fullmatch(
        rb"HTTP/1\.1 400 Bad Request\r\n"
        + re.escape(DATE)
        + rb"Content-Type: application/json\r\nContent-Length: (\d+)\r\n"
        rb"Connection: close\r\n\r\n(.*)",
        data,
        re.DOTALL,
    )
    assert match is not None, data
    assert int(match[1]) == len(match[2])
    body: dict[str, str] = json.loads(match[2])
    return body


async def test_malformed_request_after_good_one_answers_first_then_400_then_closes(
    rig: Rig,
) -> None:
    rig.send(GET_A + MALFORMED)
    assert rig.upstream_wire.data == UP_A
    assert rig.client.data == b"", "the 400 must wait for the first response"
    assert not rig.client.closing

    rig.respond(OK_A)
    data = rig.client.data
    assert data.startswith(OK_A)
    body = _malformed_reply(data[len(OK_A) :])
    assert body["errorCode"] == "ERR_MALFORMED_REQUEST"
    assert body["message"].startswith("malformed HTTP request: ")
    assert rig.client.closing
    assert not rig.client.aborted
    assert rig.client.late_writes == b""
    # The first exchange ended cleanly: its upstream connection is reusable.
    assert rig.pool.idle_count == 1


async def test_malformed_first_request_gets_400_and_close(rig: Rig) -> None:
    rig.send(MALFORMED + GET_A)
    assert _malformed_reply(rig.client.data)["errorCode"] == "ERR_MALFORMED_REQUEST"
    assert rig.client.closing
    assert rig.upstream_wire.data == b""


async def test_pipelined_request_broken_mid_body_is_dropped_and_answered_400(rig: Rig) -> None:
    rig.send(
        GET_A + b"POST /v1.0/invoke/me/method/b HTTP/1.1\r\nHost: localhost:3500\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\nzz\r\n"
    )
    rig.respond(OK_A)
    await settle()
    assert rig.upstream_wire.data == UP_A
    data = rig.client.data
    assert data.startswith(OK_A)
    assert _malformed_reply(data[len(OK_A) :])["errorCode"] == "ERR_MALFORMED_REQUEST"
    assert rig.client.closing
    assert rig.dialer.dials == []


async def test_input_after_malformed_request_is_ignored(rig: Rig) -> None:
    rig.send(GET_A + MALFORMED)
    rig.send(GET_B)
    rig.respond(OK_A)
    assert rig.upstream_wire.data == UP_A


async def test_client_connection_close_closes_after_response_and_keeps_upstream(
    rig: Rig,
) -> None:
    rig.send(
        b"GET /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert rig.upstream_wire.data == UP_A
    rig.respond(OK_A)
    assert rig.client.data == b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\na"
    assert rig.client.closing
    assert rig.pool.idle_count == 1


async def test_client_gone_mid_response_drops_the_upstream_connection(rig: Rig) -> None:
    rig.send(GET_A)
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    rig.client.lose()
    await settle()
    assert rig.upstream_wire.aborted
    assert rig.pool.idle_count == 0
    assert rig.pool.open_count == 0
