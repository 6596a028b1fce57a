"""Message framing through the sidecar, on real loopback sockets.

Request bodies (Content-Length, chunked, empty) must reach the app byte for
byte; responses (Content-Length, chunked, close-delimited, HEAD, 204, 304,
interim 1xx) must reach the client correctly framed so that a keep-alive
connection stays usable; hop-by-hop headers never cross the proxy in either
direction; the app's status, headers and body come back unchanged.

Responses are read with a strict reader that knows the request method, so a
stray or missing body byte shows up as a broken next response.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from tests.integration.conftest import EchoApp, SidecarFactory
from tests.integration.rawhttp import RawClient, RawUpstream, connected, ok

INVOKE = "/v1.0/invoke/app/method"
TIMEOUT = 5.0

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
}


# -- a strict client ------------------------------------------------------------


class Resp:
    def __init__(self, status: int, version: bytes, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.version = version
        self.headers = headers
        self.body = b""
        self.framing = "none"  # none | length | chunked | close

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} repeated: {self.headers}"
        return values[0] if values else None

    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Resp {self.status} {self.framing} {self.headers} {self.body[:300]!r}>"


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> Resp:
    """One response, framed as RFC 9112 §6.3 says (HEAD, 1xx, 204, 304 have no body)."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].split(b"\r\n")
    assert all(b"\n" not in line and b"\r" not in line for line in lines), raw
    version, _, rest = lines[0].partition(b" ")
    assert version in (b"HTTP/1.1", b"HTTP/1.0"), raw
    status = int(rest[:3])
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        assert sep and name and name == name.strip(), f"bad header line {line!r}"
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    resp = Resp(status, version, headers)
    if head or status < 200 or status in (204, 304):
        return resp
    te = resp.all("transfer-encoding")
    cl = resp.all("content-length")
    if te:
        assert te == ["chunked"], f"unexpected Transfer-Encoding {te}"
        assert not cl, f"both Content-Length and chunked: {headers}"
        resp.framing = "chunked"
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line[:-2].split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        resp.body = bytes(body)
    elif cl:
        assert len(cl) == 1, f"several Content-Length: {headers}"
        resp.framing = "length"
        resp.body = await reader.readexactly(int(cl[0]))
    else:
        resp.framing = "close"
        resp.body = await reader.read()
    return resp


class Client(RawClient):
    """One keep-alive client connection."""

    async def response(self, *, head: bool = False, skip_interim: bool = False) -> Resp:
        async with asyncio.timeout(TIMEOUT):
            while True:
                resp = await read_response(self.reader, head=head)
                if not (skip_interim and resp.status < 200):
                    return resp

    async def roundtrip(self, data: bytes, *, head: bool = False) -> Resp:
        await self.send(data)
        return await self.response(head=head)

    async def at_eof(self, timeout: float = TIMEOUT) -> bytes:
        """Everything the server still sends before it closes; fails if it does not close."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    async def nothing_pending(self, wait: float = 0.2) -> None:
        """No stray bytes follow the last response."""
        try:
            async with asyncio.timeout(wait):
                extra = await self.reader.read(65536)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected bytes after the response: {extra!r}")


def client(port: int) -> AbstractAsyncContextManager[Client]:
    return connected(Client, port)


def req(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    host: bool = True,
    length: bool = True,
) -> bytes:
    lines = [f"{method} {target} {version}"]
    if host:
        lines.append("Host: 127.0.0.1")
    all_headers = list(headers or [])
    if (
        length
        and body
        and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in all_headers)
    ):
        all_headers.append(("Content-Length", str(len(body))))
    lines += [f"{k}: {v}" for k, v in all_headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def app_headers(echo: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in echo["headers"]]


def app_header_names(echo: dict[str, Any]) -> set[str]:
    return {k.lower() for k, _ in echo["headers"]}


def app_header(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def pattern(size: int) -> bytes:
    """What the echo app sends for size=N."""
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


# -- raw upstreams ----------------------------------------------------------------


async def serve_forever(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: RawUpstream,
    answer: Callable[[str, str], bytes],
) -> None:
    """Answer every request on the connection with answer(method, target)."""
    while True:
        method, target, _, _ = await upstream.read_request(reader)
        writer.write(answer(method, target))
        await writer.drain()


def echo_target(method: str, target: str) -> bytes:
    return ok(f"{method} {target}".encode())


# -- request bodies -----------------------------------------------------------------


async def test_content_length_request_body_reaches_app_byte_for_byte(
    sidecar: Any, echo_app: EchoApp
) -> None:
    body = bytes(range(256)) * 300 + b"\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("POST", f"{INVOKE}/upload", body=body))
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/upload"
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert app_header(echo, "content-length") == [str(len(body))]
    assert not echo["chunked"]
    assert not app_header(echo, "transfer-encoding")


async def test_chunked_request_body_reaches_app_byte_for_byte_and_stays_framed(
    sidecar: Any,
) -> None:
    pieces = [b"a" * 1, b"\x00\r\n" * 700, bytes(range(256)) * 40, b"0\r\n\r\n", b"z" * 5000]
    body = b"".join(pieces)
    head = req("POST", f"{INVOKE}/chunked", [("Transfer-Encoding", "chunked")])
    async with client(sidecar.http_port) as conn:
        await conn.send(head)
        for i, piece in enumerate(pieces):
            ext = b";ext=1" if i == 1 else b""
            await conn.send(b"%x%s\r\n" % (len(piece), ext) + piece + b"\r\n")
            await asyncio.sleep(0.02)
        await conn.send(b"0\r\n\r\n")
        resp = await conn.response()
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    te = app_header(echo, "transfer-encoding")
    cl = app_header(echo, "content-length")
    # Either re-chunked or with the correct length, never both, never neither.
    assert (te == ["chunked"] and not cl) or (cl == [str(len(body))] and not te), echo["headers"]


async def test_chunked_request_reaches_raw_upstream_with_one_framing_header(
    make_sidecar: SidecarFactory,
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        await serve_forever(r, w, up, echo_target)

    body = b"hello, chunked world" * 100
    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        data = req("PUT", f"{INVOKE}/c", [("Transfer-Encoding", "chunked")])
        data += b"7\r\n" + body[:7] + b"\r\n" + b"%x\r\n" % (len(body) - 7) + body[7:] + b"\r\n"
        data += b"0\r\n\r\n"
        async with client(sidecar.http_port) as conn:
            resp = await conn.roundtrip(data)
        assert resp.status == 200, resp
        assert not upstream.errors
        method, target, headers, got = upstream.requests[0]
        assert (method, target, got) == ("PUT", "/c", body)
        framing = [
            (n.lower(), v)
            for n, v in headers
            if n.lower() in ("transfer-encoding", "content-length")
        ]
        assert framing in ([("transfer-encoding", "chunked")], [("content-length", str(len(body)))])


@pytest.mark.parametrize(
    "headers, body",
    [
        ([("Content-Length", "0")], b""),
        ([("Transfer-Encoding", "chunked")], b"0\r\n\r\n"),
        ([], b""),
    ],
    ids=["content-length-0", "chunked-empty", "no-body"],
)
async def test_zero_length_request_body_reaches_app_as_empty(
    sidecar: Any, headers: list[tuple[str, str]], body: bytes
) -> None:
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("POST", f"{INVOKE}/empty", headers, length=False) + body)
        # The connection is still in sync: a second request gets its own answer.
        second = await conn.roundtrip(req("GET", f"{INVOKE}/after"))
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["body_length"] == 0
    assert app_header(echo, "content-length") in ([], ["0"])
    assert second.status == 200 and second.json()["path"] == "/after", second


# -- response bodies ----------------------------------------------------------------


async def test_content_length_response_reaches_client_with_its_length(sidecar: Any) -> None:
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("GET", f"{INVOKE}/big?size=100000"))
        second = await conn.roundtrip(req("GET", f"{INVOKE}/next"))
        await conn.nothing_pending()
    assert resp.status == 200, resp
    assert resp.framing == "length"
    assert resp.header("content-length") == "100000"
    assert resp.body == pattern(100000)
    assert second.json()["path"] == "/next"


async def test_chunked_response_reaches_client_complete(sidecar: Any) -> None:
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("GET", f"{INVOKE}/stream?size=50001&chunked=1"))
        second = await conn.roundtrip(req("GET", f"{INVOKE}/next"))
        await conn.nothing_pending()
    assert resp.status == 200, resp
    assert resp.framing in ("chunked", "length"), resp.framing
    assert resp.body == pattern(50001)
    assert second.status == 200 and second.json()["path"] == "/next"


async def _close_delimited(
    r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream
) -> None:
    _, target, _, _ = await up.read_request(r)
    w.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Target: " + target.encode() + b"\r\n\r\n"
    )
    for i in range(20):
        w.write(b"%04d:" % i + b"x" * 995)
        await w.drain()
        await asyncio.sleep(0.001)
    w.close()


CLOSE_DELIMITED_BODY = b"".join(b"%04d:" % i + b"x" * 995 for i in range(20))


async def test_close_delimited_response_is_rechunked_for_http11_client(
    make_sidecar: SidecarFactory,
) -> None:
    async with RawUpstream(_close_delimited) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            resp = await conn.roundtrip(req("GET", f"{INVOKE}/eof"))
            # The client connection outlives the upstream one.
            second = await conn.roundtrip(req("GET", f"{INVOKE}/eof2"))
        assert not upstream.errors
    assert resp.status == 200, resp
    assert resp.framing == "chunked", resp
    assert resp.body == CLOSE_DELIMITED_BODY
    assert resp.header("x-target") == "/eof"
    assert second.status == 200 and second.body == CLOSE_DELIMITED_BODY
    assert second.header("x-target") == "/eof2"


async def test_close_delimited_response_stays_close_delimited_for_http10_client(
    make_sidecar: SidecarFactory,
) -> None:
    async with RawUpstream(_close_delimited) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            await conn.send(req("GET", f"{INVOKE}/eof", version="HTTP/1.0", host=False))
            resp = await conn.response()
            assert await conn.at_eof() == b""
    assert resp.status == 200, resp
    assert resp.framing == "close", resp
    assert "transfer-encoding" not in resp.names()
    assert resp.body == CLOSE_DELIMITED_BODY
    assert (resp.header("connection") or "").lower() == "close"


async def test_http10_client_gets_content_length_response_and_close(sidecar: Any) -> None:
    async with client(sidecar.http_port) as conn:
        await conn.send(req("GET", f"{INVOKE}/old?size=3000", version="HTTP/1.0", host=False))
        resp = await conn.response()
        assert await conn.at_eof() == b""
    assert resp.status == 200, resp
    assert resp.body == pattern(3000)
    assert "transfer-encoding" not in resp.names()


async def test_http10_client_gets_chunked_app_response_without_chunked_framing(
    sidecar: Any,
) -> None:
    async with client(sidecar.http_port) as conn:
        await conn.send(
            req("GET", f"{INVOKE}/old?size=3000&chunked=1", version="HTTP/1.0", host=False)
        )
        resp = await conn.response()
        assert await conn.at_eof() == b""
    assert resp.status == 200, resp
    assert "transfer-encoding" not in resp.names(), resp
    assert resp.body == pattern(3000)


# -- HEAD, 204, 304 -------------------------------------------------------------------


async def test_head_response_keeps_content_length_has_no_body_and_connection_stays_usable(
    sidecar: Any, echo_app: EchoApp
) -> None:
    async with client(sidecar.http_port) as conn:
        head = await conn.roundtrip(req("HEAD", f"{INVOKE}/h?size=1234"), head=True)
        after = await conn.roundtrip(req("GET", f"{INVOKE}/after-head"))
        head2 = await conn.roundtrip(req("HEAD", f"{INVOKE}/h2?size=77"), head=True)
        after2 = await conn.roundtrip(req("GET", f"{INVOKE}/after-head2?size=10"))
        await conn.nothing_pending()
    assert head.status == 200, head
    assert head.header("content-length") == "1234"
    assert after.status == 200 and after.json()["path"] == "/after-head", after
    assert head2.header("content-length") == "77"
    assert after2.body == pattern(10)
    assert [m for m, _ in echo_app.seen] == ["HEAD", "GET", "HEAD", "GET"]


async def test_head_response_with_body_bytes_from_upstream_does_not_leak_to_next_request(
    make_sidecar: SidecarFactory,
) -> None:
    """An upstream that (wrongly) sends a body after a HEAD head must not poison anything."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        while True:
            method, target, _, _ = await up.read_request(r)
            if method == "HEAD":
                w.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\nHTTP/1.1 200 OK\r\nContent-Le"
                )
            else:
                w.write(echo_target(method, target))
            await w.drain()

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            head = await conn.roundtrip(req("HEAD", f"{INVOKE}/h"), head=True)
            after = await conn.roundtrip(req("GET", f"{INVOKE}/after"))
            await conn.nothing_pending()
        assert not upstream.errors
    assert head.status == 200 and head.header("content-length") == "30", head
    assert after.status == 200 and after.body == b"GET /after", after


async def test_204_from_app_has_no_body_and_connection_stays_usable(sidecar: Any) -> None:
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("POST", f"{INVOKE}/nc?status=204", body=b"x"))
        after = await conn.roundtrip(req("GET", f"{INVOKE}/after"))
        await conn.nothing_pending()
    assert resp.status == 204, resp
    assert "transfer-encoding" not in resp.names()
    assert after.status == 200 and after.json()["path"] == "/after", after


@pytest.mark.parametrize(
    "status_head",
    [
        b"HTTP/1.1 204 No Content\r\nX-Kind: nc\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nX-Kind: nm\r\n\r\n',
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 42\r\n\r\n',
    ],
    ids=["204", "304", "304-with-content-length"],
)
async def test_204_and_304_from_upstream_are_bodyless_and_connection_stays_usable(
    make_sidecar: SidecarFactory, status_head: bytes
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        while True:
            method, target, _, _ = await up.read_request(r)
            w.write(status_head if target == "/nobody" else echo_target(method, target))
            await w.drain()

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            resp = await conn.roundtrip(req("GET", f"{INVOKE}/nobody"))
            after = await conn.roundtrip(req("GET", f"{INVOKE}/after"))
            await conn.nothing_pending()
        assert not upstream.errors
    expected = int(status_head[9:12])
    assert resp.status == expected, resp
    assert "transfer-encoding" not in resp.names(), resp
    assert after.status == 200 and after.body == b"GET /after", after


# -- Expect: 100-continue ---------------------------------------------------------------


async def test_expect_100_continue_gets_interim_then_final_and_app_sees_no_expect(
    sidecar: Any,
) -> None:
    body = b"payload after continue"
    async with client(sidecar.http_port) as conn:
        await conn.send(
            req(
                "POST",
                f"{INVOKE}/expect",
                [("Expect", "100-continue"), ("Content-Length", str(len(body)))],
            )
        )
        async with asyncio.timeout(TIMEOUT):
            interim = await conn.reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await conn.send(body)
        final = await conn.response()
        await conn.nothing_pending()
    assert final.status == 200, final
    echo = final.json()
    assert echo["body"] == body.decode()
    assert "expect" not in app_header_names(echo)


# -- hop-by-hop headers ----------------------------------------------------------------


async def test_hop_by_hop_request_headers_do_not_reach_app(sidecar: Any) -> None:
    headers = [
        ("Connection", "keep-alive, X-Hop-Secret, x-other-hop"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Hop-Secret", "named in Connection"),
        ("X-Other-Hop", "also named"),
        ("X-End-To-End", "kept"),
    ]
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("GET", f"{INVOKE}/hop", headers))
    assert resp.status == 200, resp
    echo = resp.json()
    names = app_header_names(echo)
    leaked = names & (HOP_BY_HOP | {"x-hop-secret", "x-other-hop"})
    assert not leaked, f"hop-by-hop headers reached the app: {leaked}"
    assert app_header(echo, "x-end-to-end") == ["kept"]


async def test_upgrade_request_is_answered_as_plain_request_without_upgrade_headers(
    sidecar: Any,
) -> None:
    headers = [
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ]
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("GET", f"{INVOKE}/h2c", headers))
    assert resp.status == 200, resp
    names = app_header_names(resp.json())
    assert not names & {"upgrade", "http2-settings", "connection"}, names


async def test_connection_header_naming_te_like_lwp_is_accepted_and_te_dropped(
    sidecar: Any,
) -> None:
    """libwww-perl sends `Connection: TE, close` with `TE: deflate,gzip;q=0.3`."""
    headers = [("Connection", "TE, close"), ("TE", "deflate,gzip;q=0.3")]
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("GET", f"{INVOKE}/lwp", headers))
    assert resp.status == 200, resp
    assert not app_header_names(resp.json()) & {"te", "connection"}


async def test_hop_by_hop_response_headers_do_not_reach_client(
    make_sidecar: SidecarFactory,
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        while True:
            await up.read_request(r)
            body = b"hop body"
            w.write(
                b"HTTP/1.1 200 OK\r\n"
                b"Connection: keep-alive, X-Upstream-Hop\r\n"
                b"Keep-Alive: timeout=5\r\n"
                b"X-Upstream-Hop: secret\r\n"
                b"Proxy-Authenticate: Basic realm=x\r\n"
                b"Proxy-Connection: keep-alive\r\n"
                b"Trailer: X-Sum\r\n"
                b"Upgrade: foo\r\n"
                b"TE: trailers\r\n"
                b"dapr-app-id: leaked\r\n"
                b"X-Visible: yes\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            await w.drain()

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            resp = await conn.roundtrip(req("GET", f"{INVOKE}/hop"))
            after = await conn.roundtrip(req("GET", f"{INVOKE}/hop2"))
    assert resp.status == 200, resp
    leaked = resp.names() & (HOP_BY_HOP - {"connection"} | {"x-upstream-hop", "dapr-app-id"})
    assert not leaked, f"hop-by-hop response headers reached the client: {resp.headers}"
    # A Connection header of the sidecar's own is allowed, but only with its own tokens.
    for value in resp.all("connection"):
        assert value.lower() in ("keep-alive", "close"), resp.headers
    assert resp.header("x-visible") == "yes"
    assert resp.body == b"hop body"
    assert after.status == 200 and after.body == b"hop body"


async def test_dapr_app_id_header_form_is_not_forwarded_to_app(sidecar: Any) -> None:
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("GET", "/some/path?q=1", [("dapr-app-id", "app")]))
        resp2 = await conn.roundtrip(req("GET", f"{INVOKE}/x", [("Dapr-App-Id", "app")]))
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["path"] == "/some/path?q=1"
    assert "dapr-app-id" not in app_header_names(echo)
    assert "dapr-app-id" not in resp.names()
    assert resp2.status == 200, resp2
    assert "dapr-app-id" not in app_header_names(resp2.json())


async def test_dapr_app_id_is_not_forwarded_on_path_form(sidecar: Any) -> None:
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("GET", f"{INVOKE}/plain"))
    assert resp.status == 200, resp
    assert "dapr-app-id" not in app_header_names(resp.json())
    assert "dapr-app-id" not in resp.names()


# -- interim responses from the upstream ------------------------------------------------------


@pytest.mark.parametrize(
    "interim",
    [
        [b"HTTP/1.1 100 Continue\r\n\r\n"],
        [b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"],
        [b"HTTP/1.1 102 Processing\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"],
    ],
    ids=["100", "103", "102+103"],
)
async def test_interim_1xx_from_upstream_is_followed_by_the_final_200(
    make_sidecar: SidecarFactory, interim: list[bytes]
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        while True:
            _, target, _, _ = await up.read_request(r)
            for part in interim:
                w.write(part)
                await w.drain()
                await asyncio.sleep(0.02)
            w.write(ok(b"final " + target.encode(), b"X-Final: 1\r\n"))
            await w.drain()

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            await conn.send(req("GET", f"{INVOKE}/one"))
            first = await conn.response(skip_interim=True)
            await conn.send(req("GET", f"{INVOKE}/two"))
            second = await conn.response(skip_interim=True)
            await conn.nothing_pending()
        assert not upstream.errors
    assert first.status == 200 and first.body == b"final /one", first
    assert first.header("x-final") == "1"
    assert "link" not in first.names(), "an interim response's headers leaked into the final one"
    assert second.status == 200 and second.body == b"final /two", second


# -- the app's answer comes back unchanged -----------------------------------------------------


@pytest.mark.parametrize("status", [201, 404, 500])
async def test_app_status_headers_and_body_come_back_unchanged(
    sidecar: Any, echo_app: EchoApp, status: int
) -> None:
    query = (
        f"status={status}&size=777&header=X-App-Header:value-{status}"
        "&header=Content-Type:text/x-test"
    )
    async with client(echo_app.port) as direct:
        expected = await direct.roundtrip(req("GET", f"/same?{query}"))
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("GET", f"{INVOKE}/same?{query}"))
        after = await conn.roundtrip(req("GET", f"{INVOKE}/after"))
    assert expected.status == status
    assert resp.status == status, resp
    assert resp.body == expected.body == pattern(777)
    assert resp.header("x-app-header") == f"value-{status}"
    assert resp.header("content-type") == expected.header("content-type") == "text/x-test"
    assert after.status == 200


@pytest.mark.parametrize("status", [201, 404, 500])
async def test_app_json_error_bodies_come_back_unchanged(sidecar: Any, status: int) -> None:
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("POST", f"{INVOKE}/err?status={status}", body=b"in"))
    assert resp.status == status, resp
    assert resp.header("content-type") == "application/json"
    echo = resp.json()
    assert echo["path"] == f"/err?status={status}"
    assert echo["body"] == "in"
    assert "errorCode" not in echo


# -- truncated upstream bodies ----------------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"p" * 500,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n"
        + b"p" * 256
        + b"\r\n80\r\nppp",
    ],
    ids=["content-length", "chunked"],
)
async def test_truncated_upstream_body_is_not_presented_as_complete(
    make_sidecar: SidecarFactory, partial: bytes
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        await up.read_request(r)
        w.write(partial)
        await w.drain()
        await asyncio.sleep(0.05)
        w.close()

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            await conn.send(req("GET", f"{INVOKE}/cut"))
            async with asyncio.timeout(TIMEOUT):
                try:
                    resp = await read_response(conn.reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    resp = None  # the client connection was cut: correct
    assert resp is None, f"a truncated body was framed as complete: {resp}"


async def test_query_string_is_forwarded_verbatim(sidecar: Any) -> None:
    query = "?a=%2F%20x&b=c+d&&e=%E2%82%AC&f=/?g"
    async with client(sidecar.http_port) as conn:
        resp = await conn.roundtrip(req("GET", f"{INVOKE}/q{query}"))
    assert resp.status == 200, resp
    assert resp.json()["path"] == "/q" + query


# -- early answers, upstream closes, HTTP/1.0 keep-alive -------------------------------------------


async def test_upstream_answering_before_reading_the_body_keeps_client_connection_in_sync(
    make_sidecar: SidecarFactory,
) -> None:
    """The app answers 413 on the head alone; the rest of the client's body must be dropped."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        target = head.split(b" ")[1]
        if target == b"/early":
            w.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 5\r\n"
                b"Connection: close\r\n\r\nearly"
            )
            await w.drain()
            return
        # Anything else: read the declared body and echo the target.
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await r.readexactly(length)
        w.write(ok(b"own " + target))
        await w.drain()

    body = b"B" * (512 * 1024)
    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            await conn.send(req("POST", f"{INVOKE}/early", [("Content-Length", str(len(body)))]))
            first = await conn.response()
            await conn.send(body)
            second = await conn.roundtrip(req("POST", f"{INVOKE}/next", body=b"small"))
            await conn.nothing_pending()
        assert not upstream.errors
    assert first.status == 413 and first.body == b"early", first
    assert second.status == 200 and second.body == b"own /next", second


@pytest.mark.parametrize("close_kind", ["connection-close-header", "silent-close"])
async def test_upstream_that_closes_after_each_response_does_not_break_the_next_request(
    make_sidecar: SidecarFactory, close_kind: str
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: RawUpstream) -> None:
        method, target, _, _ = await up.read_request(r)
        extra = b"Connection: close\r\n" if close_kind == "connection-close-header" else b""
        w.write(ok(f"{method} {target}".encode(), extra))
        await w.drain()
        w.close()

    async with RawUpstream(handler) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            answers = []
            for i in range(4):
                answers.append(await conn.roundtrip(req("GET", f"{INVOKE}/n{i}")))
                await asyncio.sleep(0.05)
        assert not upstream.errors
    assert [a.body for a in answers] == [f"GET /n{i}".encode() for i in range(4)]
    assert all((a.header("connection") or "keep-alive").lower() != "close" for a in answers)


async def test_http10_keep_alive_client_gets_keep_alive_and_can_reuse_connection(
    sidecar: Any,
) -> None:
    async with client(sidecar.http_port) as conn:
        first = await conn.roundtrip(
            req(
                "GET",
                f"{INVOKE}/ka1?size=100",
                [("Connection", "keep-alive")],
                version="HTTP/1.0",
                host=False,
            )
        )
        second = await conn.roundtrip(
            req(
                "GET",
                f"{INVOKE}/ka2",
                [("Connection", "keep-alive")],
                version="HTTP/1.0",
                host=False,
            )
        )
    assert first.status == 200 and first.body == pattern(100), first
    assert first.framing == "length"
    assert (first.header("connection") or "").lower() == "keep-alive"
    assert second.json()["path"] == "/ka2"


async def test_http10_keep_alive_client_with_close_delimited_upstream_gets_close(
    make_sidecar: SidecarFactory,
) -> None:
    async with RawUpstream(_close_delimited) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        async with client(sidecar.http_port) as conn:
            await conn.send(
                req(
                    "GET",
                    f"{INVOKE}/eof",
                    [("Connection", "keep-alive")],
                    version="HTTP/1.0",
                    host=False,
                )
            )
            resp = await conn.response()
            assert await conn.at_eof() == b""
    assert resp.body == CLOSE_DELIMITED_BODY
    assert (resp.header("connection") or "").lower() == "close"
