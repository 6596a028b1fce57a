"""The app side of a forwarded exchange, on fake transports.

How an app response is re-framed for the client, and when the pooled
connection that carried it may be used again.
"""

from __future__ import annotations

import pytest

from fastproxy.upstream.connection import ConnectionState
from tests.protocol.conftest import APP_HOST, CALLER_LINES, DATE, Rig, settle, wire

GET_11 = b"GET /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n\r\n"
GET_10 = b"GET /v1.0/invoke/me/method/a HTTP/1.0\r\n\r\n"
GET_10_KEEP_ALIVE = b"GET /v1.0/invoke/me/method/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
HEAD_11 = b"HEAD /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n\r\n"
GET_B = b"GET /v1.0/invoke/me/method/b HTTP/1.1\r\nHost: localhost:3500\r\n\r\n"
UP_B = b"GET /b HTTP/1.1\r\n" + APP_HOST + CALLER_LINES + b"\r\n"

OK_A = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
OK_B = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"
UNFRAMED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello"


# -- re-framing the response ------------------------------------------------------

# request, app response, does the app then close, bytes the client gets, client closed after
RESPONSES = [
    pytest.param(
        GET_11,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
        False,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
        False,
        id="content-length-kept",
    ),
    pytest.param(
        GET_11,
        b"HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n",
        False,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        False,
        id="status-line-is-ours",
    ),
    pytest.param(
        GET_11,
        b"HTTP/1.1 599 Odd\r\nContent-Length: 0\r\n\r\n",
        False,
        b"HTTP/1.1 599 \r\nContent-Length: 0\r\n\r\n",
        False,
        id="unknown-status-without-reason",
    ),
    pytest.param(
        GET_11,
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: X-T\r\n"
        b"Proxy-Authenticate: Basic\r\ndapr-app-id: me\r\nX-Keep: 1\r\nContent-Length: 1\r\n\r\na",
        False,
        b"HTTP/1.1 200 OK\r\nX-Keep: 1\r\nContent-Length: 1\r\n\r\na",
        False,
        id="hop-by-hop-dropped",
    ),
    pytest.param(
        GET_11,
        b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-Keep: 1\r\n"
        b"Content-Length: 1\r\n\r\na",
        False,
        b"HTTP/1.1 200 OK\r\nX-Keep: 1\r\nContent-Length: 1\r\n\r\na",
        False,
        id="connection-named-header-dropped",
    ),
    pytest.param(
        GET_11,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;a=b\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        False,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        False,
        id="chunked-re-chunked",
    ),
    pytest.param(
        GET_11,
        UNFRAMED,
        True,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        False,
        id="unframed-to-http11-client-as-chunked",
    ),
    pytest.param(
        GET_10,
        UNFRAMED,
        True,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nhello",
        True,
        id="unframed-to-http10-client-close-delimited",
    ),
    pytest.param(
        GET_10_KEEP_ALIVE,
        UNFRAMED,
        True,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nhello",
        True,
        id="unframed-to-http10-keep-alive-client-close-delimited",
    ),
    pytest.param(
        GET_10,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        False,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello",
        True,
        id="chunked-to-http10-client-close-delimited",
    ),
    pytest.param(
        GET_10_KEEP_ALIVE,
        OK_A,
        False,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\na",
        False,
        id="http10-keep-alive-client-told-keep-alive",
    ),
    pytest.param(
        GET_10,
        OK_A,
        False,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\na",
        True,
        id="http10-client-told-close",
    ),
    pytest.param(
        GET_11,
        b"HTTP/1.1 204 No Content\r\nX-Keep: 1\r\n\r\n",
        False,
        b"HTTP/1.1 204 No Content\r\nX-Keep: 1\r\n\r\n",
        False,
        id="204-not-re-framed",
    ),
    pytest.param(
        GET_11,
        b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
        False,
        b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
        False,
        id="304-not-re-framed",
    ),
    pytest.param(
        HEAD_11,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        False,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        False,
        id="head-response-length-kept-no-body",
    ),
    pytest.param(
        GET_11,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
        False,
        OK_A,
        False,
        id="interim-response-consumed",
    ),
]


@pytest.mark.parametrize(
    ("request_bytes", "response", "upstream_closes", "expected", "client_closed"), RESPONSES
)
async def test_client_response_is_re_framed(
    rig: Rig,
    request_bytes: bytes,
    response: bytes,
    upstream_closes: bool,
    expected: bytes,
    client_closed: bool,
) -> None:
    rig.send(request_bytes)
    rig.respond(response)
    if upstream_closes:
        rig.upstream_wire.lose()
    await settle()
    assert rig.client.data == expected
    assert rig.client.closing is client_closed
    assert rig.client.late_writes == b""


async def test_unframed_response_ends_only_when_upstream_closes(rig: Rig) -> None:
    rig.send(GET_11)
    rig.respond(UNFRAMED)
    rig.respond(b" world")
    assert not rig.client.data.endswith(b"0\r\n\r\n")
    rig.upstream_wire.lose()
    assert rig.client.data.endswith(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


async def test_chunked_response_trailer_is_not_written_into_the_body(rig: Rig) -> None:
    rig.send(GET_11)
    rig.respond(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
        b"X-Trailer: t\r\n\r\n"
    )
    assert rig.client.data == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )


# -- when the pooled connection is used again -------------------------------------


async def test_pooled_connection_returns_to_pool_only_after_complete_response(rig: Rig) -> None:
    rig.send(GET_11)
    assert rig.pool.idle_count == 0
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    assert rig.pool.idle_count == 0
    assert rig.upstream.state is ConnectionState.ACTIVE
    rig.respond(b"cd")
    assert rig.pool.idle_count == 1
    assert rig.upstream.is_idle

    rig.send(GET_B)
    assert rig.upstream_wire.data.endswith(UP_B)
    assert rig.dialer.dials == []


async def test_pooled_connection_not_reused_after_partial_response(rig: Rig) -> None:
    rig.send(GET_11)
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    rig.upstream_wire.lose()
    await settle()
    assert rig.pool.idle_count == 0
    assert rig.pool.open_count == 0
    assert rig.upstream.state is ConnectionState.CLOSED
    # The client saw a response start that can never end: only a cut connection says so.
    assert rig.client.aborted


# request, app response (one read), does the app then close
NOT_REUSABLE = [
    pytest.param(
        GET_11,
        OK_A + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        False,
        id="second-response-after-the-first",
    ),
    pytest.param(GET_11, OK_A + b"EXTRA", False, id="garbage-after-response"),
    pytest.param(
        GET_11,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",
        False,
        id="upstream-connection-close",
    ),
    pytest.param(
        GET_11, b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\na", False, id="http10-upstream"
    ),
    pytest.param(
        HEAD_11,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
        False,
        id="head-response-with-bytes-after-head",
    ),
    pytest.param(GET_11, UNFRAMED, True, id="close-delimited-response"),
]


@pytest.mark.parametrize(("request_bytes", "response", "upstream_closes"), NOT_REUSABLE)
async def test_pooled_connection_not_reused_after_suspect_response(
    rig: Rig, request_bytes: bytes, response: bytes, upstream_closes: bool
) -> None:
    rig.send(request_bytes)
    rig.respond(response)
    if upstream_closes:
        rig.upstream_wire.lose()
    await settle()
    assert rig.client.data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert not rig.client.closing
    assert rig.upstream.state is ConnectionState.CLOSED
    assert rig.upstream_wire.closing
    assert rig.pool.idle_count == 0
    assert rig.pool.open_count == 0

    before = rig.upstream_wire.data
    rig.send(GET_B)
    await settle()
    assert rig.upstream_wire.data == before
    assert rig.dialer.dials == [("127.0.0.1", 1)]
    assert wire(rig.dialer.connections[0]).data == UP_B


async def test_reused_connection_not_pooled_again_after_close_delimited_response(
    rig: Rig,
) -> None:
    rig.send(GET_11)
    rig.respond(OK_A)
    rig.send(GET_B)
    rig.respond(UNFRAMED)
    rig.upstream_wire.lose()
    await settle()
    assert rig.upstream.state is ConnectionState.CLOSED
    assert rig.pool.idle_count == 0
    assert rig.pool.open_count == 0


async def test_head_response_ending_with_its_read_leaves_connection_reusable(rig: Rig) -> None:
    rig.send(HEAD_11)
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert rig.pool.idle_count == 1
    rig.send(GET_B)
    rig.respond(OK_B)
    assert rig.client.data == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + OK_B
    assert rig.dialer.dials == []


async def test_pooled_connection_not_reused_when_response_precedes_request_body(
    rig: Rig,
) -> None:
    rig.send(
        b"POST /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: localhost:3500\r\n"
        b"Content-Length: 4\r\n\r\nab"
    )
    rig.respond(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
    assert rig.upstream.state is ConnectionState.CLOSED
    assert rig.pool.idle_count == 0
    # The rest of the body is read and dropped; the client may go on.
    rig.send(b"cd")
    rig.send(GET_B)
    await settle()
    assert not rig.upstream_wire.data.endswith(b"cd")
    assert rig.dialer.dials == [("127.0.0.1", 1)]
    assert rig.client.data == b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\n\r\n"


STRAY = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"


async def test_idle_pooled_connection_that_receives_bytes_is_closed(rig: Rig) -> None:
    rig.respond(STRAY)
    assert rig.upstream.state is ConnectionState.CLOSED
    assert rig.upstream_wire.aborted
    await settle()
    assert rig.pool.open_count == 0

    rig.send(GET_B)
    await settle()
    assert rig.upstream_wire.data == b""
    assert rig.dialer.dials == [("127.0.0.1", 1)]


async def test_idle_pooled_connection_closed_for_stray_bytes_leaves_idle_list(rig: Rig) -> None:
    rig.respond(STRAY)
    await settle()
    assert rig.pool.idle_count == 0
    assert repr(rig.pool) == "<Pool http://127.0.0.1:1 open=0 idle=0 waiting=0>"


async def test_idle_pooled_connection_closed_by_app_leaves_pool(rig: Rig) -> None:
    rig.upstream_wire.lose()
    assert rig.pool.open_count == 0
    assert rig.pool.idle_count == 0


# -- failures -----------------------------------------------------------------------


async def test_app_closing_before_answering_gets_500_and_keeps_client(rig: Rig) -> None:
    rig.send(GET_11)
    rig.upstream_wire.lose()
    body = (
        b'{"errorCode":"ERR_DIRECT_INVOKE",'
        b'"message":"failed to invoke, id: me, err: connection closed by upstream"}'
    )
    assert rig.client.data == (
        b"HTTP/1.1 500 Internal Server Error\r\n"
        + DATE
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    assert not rig.client.closing
    assert rig.dialer.dials == []


async def test_reused_connection_closed_before_answering_replays_on_fresh_one(rig: Rig) -> None:
    rig.send(GET_11)
    rig.respond(OK_A)
    rig.send(GET_B)
    rig.upstream_wire.lose()
    await settle()
    assert rig.dialer.dials == [("127.0.0.1", 1)]
    (fresh,) = rig.dialer.connections
    assert wire(fresh).data == UP_B
    rig.respond(OK_B, fresh)
    assert rig.client.data == OK_A + OK_B


async def test_malformed_app_response_gets_500(rig: Rig) -> None:
    rig.send(GET_11)
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\na")
    assert rig.client.data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"malformed response from upstream" in rig.client.data
    assert rig.upstream.state is ConnectionState.CLOSED


# -- flow control and repr ----------------------------------------------------------


async def test_slow_client_pauses_reading_from_app(rig: Rig) -> None:
    rig.send(GET_11)
    rig.downstream.pause_writing()
    assert rig.upstream_wire.calls == ["pause_reading"]
    rig.downstream.resume_writing()
    assert rig.upstream_wire.calls == ["pause_reading", "resume_reading"]


async def test_slow_app_pauses_reading_from_client(rig: Rig) -> None:
    rig.send(b"POST /v1.0/invoke/me/method/a HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n")
    rig.upstream.pause_writing()
    assert rig.client.calls == ["pause_reading"]
    rig.upstream.resume_writing()
    assert rig.client.calls == ["pause_reading", "resume_reading"]


async def test_upstream_connection_repr_names_pool_state_and_count(rig: Rig) -> None:
    assert repr(rig.upstream) == "<UpstreamConnection http://127.0.0.1:1 idle served=0>"
    rig.send(GET_11)
    assert repr(rig.upstream) == "<UpstreamConnection http://127.0.0.1:1 active served=0>"
    rig.respond(OK_A)
    assert repr(rig.upstream) == "<UpstreamConnection http://127.0.0.1:1 idle served=1>"
