"""Hostile or broken input on either side of the sidecar.

Smuggling-shaped requests must be answered 400 (JSON error body) or have the
connection closed, never be forwarded; limits (header bytes and count, body
size) and timeouts (header, keep-alive, body, write) must hold; the method
path must not escape the app; broken upstreams must cost one request, not
the connection or the next request.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from tests.integration.conftest import EchoApp, SidecarFactory, parse_responses
from tests.integration.rawhttp import RawClient, RawUpstream, connected, exchange, get, ok

INVOKE = "/v1.0/invoke/app/method"
P = INVOKE.encode() + b"/x"
TIMEOUT = 5.0


# -- helpers --------------------------------------------------------------------


async def exchange_closed(
    port: int, data: bytes, *, timeout: float = TIMEOUT
) -> tuple[bytes, bool]:
    """What came back, and whether the server closed: a reset counts, a timeout does not."""
    raw, error = await exchange(port, data, timeout=timeout)
    return raw, not isinstance(error, TimeoutError)


def error_json(body: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(body)
    assert set(document) == {"errorCode", "message"}, document
    assert isinstance(document["errorCode"], str) and document["errorCode"]
    assert isinstance(document["message"], str) and document["message"]
    return document


async def settle(echo_app: EchoApp) -> None:
    """Give anything that might have been forwarded time to reach the app."""
    await asyncio.sleep(0.2)


def assert_refused(raw: bytes, closed: bool, status: int = 400) -> dict[str, Any] | None:
    """One error response with a JSON body (or none at all), and the connection closed."""
    assert closed, f"connection left open after {raw[:300]!r}"
    if not raw:
        return None
    responses = parse_responses(raw)
    assert len(responses) == 1, f"expected one response, got {raw!r}"
    response = responses[0]
    assert response.complete, raw
    assert response.status == status, raw
    return error_json(response.body)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Client(RawClient):
    async def response(self) -> Any:
        """One response with a Content-Length or chunked body (httptools parses it)."""
        buffer = b""
        async with asyncio.timeout(TIMEOUT):
            while True:
                chunk = await self.reader.read(65536)
                assert chunk, f"connection closed; got {buffer!r}"
                buffer += chunk
                responses = parse_responses(buffer)
                if responses and responses[0].complete:
                    assert len(responses) == 1, f"more than one response: {buffer!r}"
                    return responses[0]

    async def roundtrip(self, data: bytes) -> Any:
        await self.send(data)
        return await self.response()

    async def wait_closed_by_server(self, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            try:
                return await self.reader.read()
            except ConnectionError:
                return b""


def client(port: int) -> AbstractAsyncContextManager[Client]:
    return connected(Client, port)


# -- malformed and smuggling-shaped requests ----------------------------------------------

MALFORMED: dict[str, bytes] = {
    "content-length-and-chunked": b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "chunked-and-content-length": b"POST "
    + P
    + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 30\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    "two-differing-content-length": b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "content-length-list": b"POST "
    + P
    + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "invalid-chunk-size": b"POST "
    + P
    + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": b"POST "
    + P
    + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "te-not-ending-in-chunked": b"POST "
    + P
    + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "http09-request-line": b"GET " + P + b"\r\n\r\n",
    "http09-with-bare-lf-headers": b"GET " + P + b"\nHost: a\nContent-Length: 5\n\nhello",
    "missing-host": b"GET " + P + b" HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two-host-headers": b"GET " + P + b" HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "http10-with-transfer-encoding": b"POST "
    + P
    + b" HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "transfer_encoding-underscore": b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    b"Transfer_Encoding: chunked\r\n\r\nhello",
    "content_length-underscore": b"POST "
    + P
    + b" HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\nhello",
    "obs-fold": b"GET " + P + b" HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n  two\r\n\r\n",
    "bare-lf-header-line": b"GET " + P + b" HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
    "bare-cr-in-header": b"GET " + P + b" HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
    "nul-in-header-value": b"GET " + P + b" HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "space-before-colon": b"GET " + P + b" HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello",
    "connect-authority-form": b"CONNECT app:80 HTTP/1.1\r\nHost: app:80\r\n\r\n",
    "connect-origin-form": b"CONNECT " + P + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    "connection-names-content-length": b"POST " + P + b" HTTP/1.1\r\nHost: a\r\n"
    b"Connection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
    "non-http-target": b"GET ftp://example.com/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_request_is_refused_closed_and_never_forwarded(
    make_sidecar: SidecarFactory, echo_app: EchoApp, data: bytes
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port)
    raw, closed = await exchange_closed(sidecar.http_port, data)
    await settle(echo_app)
    assert echo_app.seen == [], f"forwarded to the app: {echo_app.seen}"
    assert_refused(raw, closed, 400)


async def test_request_smuggled_behind_a_rejected_request_is_never_served(
    sidecar: Any, echo_app: EchoApp
) -> None:
    data = (
        b"POST "
        + P
        + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /v1.0/invoke/app/method/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    raw, closed = await exchange_closed(sidecar.http_port, data)
    await settle(echo_app)
    assert all("smuggled" not in path for _, path in echo_app.seen), echo_app.seen
    assert b"smuggled" not in raw
    assert_refused(raw, closed, 400)


# -- limits -------------------------------------------------------------------------


async def test_headers_over_read_buffer_size_get_431(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, read_buffer_size=1024)
    data = get(INVOKE + "/x", "X-Big: " + "a" * 2000 + "\r\n")
    raw, closed = await exchange_closed(sidecar.http_port, data)
    await settle(echo_app)
    assert echo_app.seen == []
    assert_refused(raw, closed, 431)


async def test_many_small_headers_over_read_buffer_size_get_431(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, read_buffer_size=1024)
    extra = "".join(f"X-H{i}: {'v' * 20}\r\n" for i in range(60))  # ~1.7 KiB
    raw, closed = await exchange_closed(sidecar.http_port, get(INVOKE + "/x", extra))
    await settle(echo_app)
    assert echo_app.seen == []
    assert_refused(raw, closed, 431)


async def test_request_target_over_read_buffer_size_is_refused(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, read_buffer_size=1024)
    raw, closed = await exchange_closed(sidecar.http_port, get(INVOKE + "/" + "a" * 3000))
    await settle(echo_app)
    assert echo_app.seen == []
    assert closed
    if raw:
        response = parse_responses(raw)[0]
        assert response.status in (414, 431), raw
        error_json(response.body)


async def test_endless_header_value_is_cut_off_near_read_buffer_size(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    """A header that never ends must not be buffered without bound (llhttp keeps spans open)."""
    sidecar = await make_sidecar(app_port=echo_app.port, read_buffer_size=1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.http_port)
    sent = 0
    cut = False
    try:
        writer.write(b"GET " + P + b" HTTP/1.1\r\nHost: a\r\nX-Endless: ")
        piece = b"a" * 4096
        async with asyncio.timeout(8.0):
            while sent < 4 * 1024 * 1024:
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
                await asyncio.sleep(0)
                if reader.at_eof() or writer.transport.is_closing():
                    cut = True
                    break
            if not cut:
                # Everything was accepted: the server must at least have answered by now.
                try:
                    async with asyncio.timeout(1.0):
                        data = await reader.read(65536)
                    cut = True
                except TimeoutError:
                    data = b""
            else:
                data = await reader.read(65536)
    except ConnectionError:
        cut = True
        data = b""
    finally:
        writer.close()
    assert cut and sent <= 1024 * 1024, (
        f"the sidecar accepted {sent} bytes of one header without answering"
    )
    if data:
        assert parse_responses(data)[0].status == 431, data


async def test_more_than_max_header_count_headers_get_431(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, max_header_count=20)
    extra = "".join(f"X-H{i}: v\r\n" for i in range(25))
    raw, closed = await exchange_closed(sidecar.http_port, get(INVOKE + "/x", extra))
    await settle(echo_app)
    assert echo_app.seen == []
    assert_refused(raw, closed, 431)
    # Exactly at the limit is fine (Host and Connection count).
    extra = "".join(f"X-H{i}: v\r\n" for i in range(18))
    raw, _ = await exchange_closed(
        sidecar.http_port, get(INVOKE + "/x", extra + "Connection: close\r\n")
    )
    assert parse_responses(raw)[0].status == 200, raw


async def test_default_max_header_count_is_enforced(sidecar: Any, echo_app: EchoApp) -> None:
    extra = "".join(f"X-{i}: v\r\n" for i in range(150))
    raw, closed = await exchange_closed(sidecar.http_port, get(INVOKE + "/x", extra))
    await settle(echo_app)
    assert echo_app.seen == []
    assert_refused(raw, closed, 431)


async def test_content_length_over_max_body_size_gets_413_before_reaching_app(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, max_body_size=1000)
    body = b"b" * 5000
    data = b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + body
    raw, closed = await exchange_closed(sidecar.http_port, data)
    await settle(echo_app)
    assert echo_app.seen == []
    assert_refused(raw, closed, 413)


async def test_content_length_at_max_body_size_is_accepted(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, max_body_size=1000)
    data = (
        b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n"
    )
    raw, _ = await exchange_closed(sidecar.http_port, data + b"b" * 1000)
    response = parse_responses(raw)[0]
    assert response.status == 200, raw
    assert response.json()["body_length"] == 1000


async def test_oversized_content_length_with_expect_gets_413_without_100_continue(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, max_body_size=1000)
    data = (
        b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
        b"Content-Length: 100000000\r\n\r\n"
    )
    raw, closed = await exchange_closed(sidecar.http_port, data, timeout=3.0)
    await settle(echo_app)
    assert echo_app.seen == []
    assert b"100 Continue" not in raw, raw
    assert_refused(raw, closed, 413)


@pytest.mark.parametrize(
    "head",
    [
        b"POST " + P + b" HTTP/1.1\r\nContent-Length: 100\r\n\r\n",
        b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 100\r\n\r\n",
        b"POST " + P + b" HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["missing-host", "two-hosts", "http10-chunked"],
)
async def test_refused_request_whose_body_never_comes_is_closed_promptly(
    make_sidecar: SidecarFactory, echo_app: EchoApp, head: bytes
) -> None:
    """The 400 says Connection: close; the sidecar must not wait for the unread body."""
    sidecar = await make_sidecar(app_port=echo_app.port)
    raw, closed = await exchange_closed(sidecar.http_port, head, timeout=3.0)
    await settle(echo_app)
    assert echo_app.seen == []
    assert_refused(raw, closed, 400)


async def test_chunked_body_growing_past_max_body_size_never_completes_at_app(
    make_sidecar: SidecarFactory,
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        while True:
            body = (await up.read_request(r)).body
            w.write(ok(b"got %d" % len(body)))
            await w.drain()

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port, max_body_size=1000)
        body = b"".join(b"3e8\r\n" + b"c" * 1000 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
        data = b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body
        raw, closed = await exchange_closed(sidecar.http_port, data)
        await asyncio.sleep(0.2)
        assert upstream.requests == [], (
            f"the app got a complete over-limit request: {upstream.requests}"
        )
        assert not upstream.errors
    assert closed, raw
    if raw:
        assert parse_responses(raw)[0].status == 413, raw


async def test_chunked_body_past_max_body_size_sent_slowly_never_completes_at_app(
    make_sidecar: SidecarFactory,
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        while True:
            body = (await up.read_request(r)).body
            w.write(ok(b"got %d" % len(body)))
            await w.drain()

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port, max_body_size=1000)
        async with client(sidecar.http_port) as conn:
            await conn.send(
                b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            try:
                for _ in range(5):
                    await conn.send(b"190\r\n" + b"c" * 400 + b"\r\n")
                    await asyncio.sleep(0.05)
                await conn.send(b"0\r\n\r\n")
            except ConnectionError:
                pass
            try:
                rest = await conn.wait_closed_by_server(TIMEOUT)
            except TimeoutError:
                rest = None
        await asyncio.sleep(0.2)
        assert upstream.requests == [], (
            f"the app got a complete over-limit request: {upstream.requests}"
        )
    assert rest is not None, "the connection was not closed"
    if rest:
        assert parse_responses(rest)[0].status == 413, rest


# -- timeouts -------------------------------------------------------------------------


async def test_half_request_head_is_disconnected_after_header_timeout(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, header_timeout=1.0)
    async with client(sidecar.http_port) as conn:
        await conn.send(b"GET " + P + b" HTTP/1.1\r\nHost: a\r\nX-Part")
        started = time.monotonic()
        rest = await conn.wait_closed_by_server(4.0)
        elapsed = time.monotonic() - started
    assert elapsed >= 0.5, f"closed after {elapsed:.2f}s, well before the header timeout"
    assert echo_app.seen == []
    if rest:
        assert parse_responses(rest)[0].status == 408, rest


async def test_trickled_request_head_is_disconnected_after_header_timeout_total(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    """The header timeout is a total deadline: a byte every 300 ms must not keep it alive."""
    sidecar = await make_sidecar(app_port=echo_app.port, header_timeout=1.0)
    head = b"GET " + P + b" HTTP/1.1\r\nHost: a\r\n" + b"X-Slow: " + b"s" * 200
    started = time.monotonic()
    closed_after = None
    async with client(sidecar.http_port) as conn:
        try:
            for byte in head:
                await conn.send(bytes([byte]))
                await asyncio.sleep(0.3)
                if conn.reader.at_eof() or conn.reader.exception() is not None:
                    break
                if time.monotonic() - started > 6.0:
                    break
                try:
                    async with asyncio.timeout(0.001):
                        if not await conn.reader.read(65536):
                            break
                except TimeoutError:
                    pass
        except ConnectionError:
            pass
        closed_after = time.monotonic() - started
    assert closed_after < 4.5, f"still connected after {closed_after:.1f}s of trickling"
    assert echo_app.seen == []


async def test_idle_keep_alive_connection_is_closed_after_keep_alive_timeout(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    # 2 s rather than 1 s: deadlines are checked by a 1 s tick, so the lower bound
    # below stays meaningful (not closed straight after the response).
    sidecar = await make_sidecar(app_port=echo_app.port, keep_alive_timeout=2.0)
    async with client(sidecar.http_port) as conn:
        response = await conn.roundtrip(get(INVOKE + "/ka"))
        assert response.status == 200
        started = time.monotonic()
        rest = await conn.wait_closed_by_server(5.0)
        elapsed = time.monotonic() - started
    assert rest == b""
    assert elapsed >= 0.9, f"closed after {elapsed:.2f}s"


async def test_request_body_that_stalls_is_disconnected_after_body_timeout(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, body_timeout=1.0)
    async with client(sidecar.http_port) as conn:
        await conn.send(
            b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
        )
        rest = await conn.wait_closed_by_server(4.0)
    if rest:
        assert parse_responses(rest)[0].status in (408, 500), rest


# -- method path ------------------------------------------------------------------------


@pytest.mark.parametrize("encoded", ["%23", "%3F", "%00", "%0D", "%0A", "%7F"])
async def test_forbidden_character_in_method_is_500_invalid_method(
    sidecar: Any, echo_app: EchoApp, encoded: str
) -> None:
    async with client(sidecar.http_port) as conn:
        response = await conn.roundtrip(get(f"{INVOKE}/test{encoded}stream"))
        after = await conn.roundtrip(get(f"{INVOKE}/after"))
    assert response.status == 500, response
    document = error_json(response.body)
    assert document["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "invalid method" in document["message"]
    assert after.status == 200
    assert echo_app.seen == [("GET", "/after")]


@pytest.mark.parametrize(
    "method, expected",
    [
        ("admin%2F..%2Fpublic", "/public"),
        ("../../other", "/other"),
        ("a/b/../../../../c", "/c"),
        ("%2E%2E/%2E%2E/secret", "/secret"),
        ("..%2F..%2F..%2Fv1.0%2Finvoke%2Fother%2Fmethod%2Fx", "/v1.0/invoke/other/method/x"),
        ("./x/./y", "/x/y"),
    ],
)
async def test_dot_segments_cannot_climb_out_of_the_method(
    sidecar: Any, echo_app: EchoApp, method: str, expected: str
) -> None:
    async with client(sidecar.http_port) as conn:
        response = await conn.roundtrip(get(f"{INVOKE}/{method}"))
    assert response.status == 200, response
    assert response.json()["path"] == expected
    assert echo_app.seen == [("GET", expected)]


async def test_dot_segments_in_header_form_are_cleaned(sidecar: Any, echo_app: EchoApp) -> None:
    async with client(sidecar.http_port) as conn:
        response = await conn.roundtrip(get("/admin/../public", "dapr-app-id: app\r\n"))
    assert response.status == 200, response
    assert response.json()["path"] == "/public"


async def test_dot_segments_before_method_do_not_reach_another_app(
    sidecar: Any, echo_app: EchoApp
) -> None:
    async with client(sidecar.http_port) as conn:
        response = await conn.roundtrip(get("/v1.0/invoke/other/method/../../app/method/x"))
    assert response.status == 500, response
    assert "couldn't find service" in error_json(response.body)["message"]
    assert echo_app.seen == []


# -- routing errors -----------------------------------------------------------------------


async def test_app_id_with_two_dots_is_500_invalid_app_id(sidecar: Any, echo_app: EchoApp) -> None:
    async with client(sidecar.http_port) as conn:
        response = await conn.roundtrip(get("/v1.0/invoke/a.b.c/method/x"))
    assert response.status == 500, response
    document = error_json(response.body)
    assert document["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "invalid app id" in document["message"]
    assert echo_app.seen == []


@pytest.mark.parametrize("target", ["other", "app.otherns", "app%2Fx"])
async def test_unknown_app_id_is_500_couldnt_find_service(
    sidecar: Any, echo_app: EchoApp, target: str
) -> None:
    async with client(sidecar.http_port) as conn:
        response = await conn.roundtrip(get(f"/v1.0/invoke/{target}/method/x"))
    assert response.status == 500, response
    document = error_json(response.body)
    assert document["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "couldn't find service" in document["message"] or "invalid app id" in document["message"]
    assert echo_app.seen == []


@pytest.mark.parametrize("target", ["/", "/v1.0/invoke/app", "/v1.0/invoke/app/x", "/v1.0/other"])
async def test_no_target_is_404_failed_getting_app_id(
    sidecar: Any, echo_app: EchoApp, target: str
) -> None:
    async with client(sidecar.http_port) as conn:
        response = await conn.roundtrip(get(target))
        after = await conn.roundtrip(get(f"{INVOKE}/after"))
    assert response.status == 404, response
    document = error_json(response.body)
    assert document["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "failed getting app id" in document["message"]
    assert after.status == 200
    assert echo_app.seen == [("GET", "/after")]


async def test_unreachable_app_is_500_quickly(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(app_port=closed_port())
    started = time.monotonic()
    async with client(sidecar.http_port) as conn:
        response = await conn.roundtrip(get(f"{INVOKE}/x"))
        second = await conn.roundtrip(get(f"{INVOKE}/y"))
    assert time.monotonic() - started < 2.0
    assert response.status == 500, response
    document = error_json(response.body)
    assert document["errorCode"] == "ERR_DIRECT_INVOKE"
    assert document["message"].startswith("failed to invoke, id: app, err: ")
    assert second.status == 500


# -- broken upstreams -------------------------------------------------------------------------

BROKEN_RESPONSES = {
    "garbage": b"this is not http at all\r\n\r\n",
    "bad-status-line": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"
    b"hello!!",
    "content-length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    "unasked-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\n\r\n",
}


@pytest.mark.parametrize("broken", list(BROKEN_RESPONSES.values()), ids=list(BROKEN_RESPONSES))
async def test_malformed_upstream_response_is_500_and_next_request_works(
    make_sidecar: SidecarFactory, broken: bytes
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        while True:
            target = (await up.read_request(r)).target
            if target == "/broken":
                w.write(broken)
                await w.drain()
                await asyncio.sleep(0.5)
                return
            w.write(ok(b"fine " + target.encode()))
            await w.drain()

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            response = await conn.roundtrip(get(f"{INVOKE}/broken"))
            after = await conn.roundtrip(get(f"{INVOKE}/after"))
        assert not upstream.errors
    assert response.status in (500, 502), response
    document = error_json(response.body)
    assert document["errorCode"] == "ERR_DIRECT_INVOKE"
    assert after.status == 200 and after.body == b"fine /after", after


EXTRA_AFTER_BODY = {
    "smuggled-response-same-write": (b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED", 0.0),
    "smuggled-response-later": (b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED", 0.1),
    "garbage-same-write": (b"EXTRA-GARBAGE\r\n", 0.0),
    "garbage-later": (b"EXTRA-GARBAGE\r\n", 0.1),
}


@pytest.mark.parametrize(
    "extra, delay", list(EXTRA_AFTER_BODY.values()), ids=list(EXTRA_AFTER_BODY)
)
async def test_extra_bytes_after_upstream_body_do_not_poison_next_request(
    make_sidecar: SidecarFactory, extra: bytes, delay: float
) -> None:
    served = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        nonlocal served
        while True:
            target = (await up.read_request(r)).target
            served += 1
            if served == 1:
                if delay:
                    w.write(ok(b"first"))
                    await w.drain()
                    await asyncio.sleep(delay)
                    w.write(extra)
                else:
                    w.write(ok(b"first") + extra)
            else:
                w.write(ok(b"own " + target.encode()))
            await w.drain()

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            first = await conn.roundtrip(get(f"{INVOKE}/first"))
            await asyncio.sleep(0.3)
            second = await conn.roundtrip(get(f"{INVOKE}/second"))
            third = await conn.roundtrip(get(f"{INVOKE}/third"))
        assert not upstream.errors
    assert first.status == 200 and first.body == b"first", first
    assert second.status == 200 and second.body == b"own /second", second
    assert third.status == 200 and third.body == b"own /third", third
    assert upstream.connections >= 2, "the poisoned upstream connection was reused"


async def test_upstream_closing_a_pooled_connection_is_retried_transparently(
    make_sidecar: SidecarFactory,
) -> None:
    """A keep-alive upstream connection closed while idle: the next GET must still work."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        target = (await up.read_request(r)).target
        w.write(ok(b"own " + target.encode()))
        await w.drain()
        # then close without saying so (no Connection: close)

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            first = await conn.roundtrip(get(f"{INVOKE}/one"))
            await asyncio.sleep(0.2)
            second = await conn.roundtrip(get(f"{INVOKE}/two"))
        assert not upstream.errors
    assert first.body == b"own /one"
    assert second.status == 200 and second.body == b"own /two", second


MORE_MALFORMED: dict[str, bytes] = {
    "content-length-plus-sign": b"POST "
    + P
    + b" HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    "content-length-hex": b"POST "
    + P
    + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello",
    "chunked-twice": b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "bare-lf-in-chunk-line": b"POST "
    + P
    + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\nhello\r\n0\r\n\r\n",
    "asterisk-target": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "empty-header-name": b"GET " + P + b" HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n",
}


@pytest.mark.parametrize("data", list(MORE_MALFORMED.values()), ids=list(MORE_MALFORMED))
async def test_more_malformed_requests_are_refused_and_never_forwarded(
    make_sidecar: SidecarFactory, echo_app: EchoApp, data: bytes
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port)
    raw, closed = await exchange_closed(sidecar.http_port, data)
    await settle(echo_app)
    assert echo_app.seen == [], f"forwarded to the app: {echo_app.seen}"
    assert_refused(raw, closed, 400)


async def test_huge_chunk_extension_is_refused(make_sidecar: SidecarFactory) -> None:
    """RFC 9112 §7.1.1: chunk extensions must be limited; 1 MiB of one is refused."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        while True:
            body = (await up.read_request(r)).body
            w.write(ok(b"got %d" % len(body)))
            await w.drain()

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        data = (
            b"POST " + P + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"5;ext=" + b"e" * (1024 * 1024) + b"\r\nhello\r\n0\r\n\r\n"
        )
        try:
            raw, closed = await exchange_closed(sidecar.http_port, data)
        except ConnectionError:
            raw, closed = b"", True
        await asyncio.sleep(0.2)
        assert upstream.requests == [], "a request with a 1 MiB chunk extension was forwarded whole"
    assert closed
    if raw:
        assert parse_responses(raw)[0].status in (400, 413, 431), raw


async def test_endless_upstream_response_headers_are_cut_off(make_sidecar: SidecarFactory) -> None:
    """The upstream's response head must be bounded too (Go's transport stops at 10 MiB)."""
    sent = [0]

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        await up.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Endless: " + b"h" * 1000 + b"\r\n"
        while sent[0] < 64 * 1024 * 1024:
            w.write(line * 64)
            await w.drain()
            sent[0] += len(line) * 64

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        raw, closed = await exchange_closed(
            sidecar.http_port, get(f"{INVOKE}/x", "Connection: close\r\n"), timeout=8.0
        )
    assert closed, "the client connection was left hanging"
    assert sent[0] < 16 * 1024 * 1024, f"the sidecar read {sent[0] >> 20} MiB of response headers"
    if raw:
        response = parse_responses(raw)[0]
        assert response.status in (500, 502), raw[:300]


async def test_slow_app_response_is_not_cut_by_header_or_keep_alive_timeouts(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(
        app_port=echo_app.port, header_timeout=1.0, keep_alive_timeout=1.0, body_timeout=1.0
    )
    async with client(sidecar.http_port) as conn:
        await conn.send(
            b"POST "
            + INVOKE.encode()
            + b"/slow?delay=2.2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok"
        )
        async with asyncio.timeout(6.0):
            response = await conn.response()
    assert response.status == 200, response
    assert response.json()["body"] == "ok"


async def test_header_form_for_another_app_is_500_couldnt_find_service(
    sidecar: Any, echo_app: EchoApp
) -> None:
    async with client(sidecar.http_port) as conn:
        response = await conn.roundtrip(get("/x", "dapr-app-id: other\r\n"))
    assert response.status == 500, response
    assert "couldn't find service: other" in error_json(response.body)["message"]
    assert echo_app.seen == []
