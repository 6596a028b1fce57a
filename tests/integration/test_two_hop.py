"""Sidecar to sidecar: app A calls app B through A's sidecar and B's internal listener.

Every sidecar here runs in the test's loop on real loopback sockets, in front
of real echo apps. Sidecar A resolves `b` with the name-resolution component
of its Configuration (the embedded sqlite registry when none is configured,
or a static table), picks one of b's sidecars and delivers the call to its
internal port; sidecar B forwards it to app b.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
    _echo,
    parse_responses,
    raw_exchange,
    request,
)
from tests.integration.rawhttp import RawClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

MIB = 1024 * 1024
TEST_TIMEOUT = 30.0
INSTANCE_HEADER = "X-Echo-Instance"
FIVE_MIB = 5 * MIB


# -- echo apps that say which instance answered --------------------------------------------


class Instance(EchoApp):
    """An echo app that tags each response with its name (header X-Echo-Instance)."""

    def __init__(self, runner: web.AppRunner, port: int, name: str) -> None:
        super().__init__(runner, port)
        self.name = name
        self.stopped = False
        # Requests whose handler is still running (reading a body, or answering).
        self.in_flight = 0

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


EchoFactory = Callable[[str], Awaitable[Instance]]


@pytest.fixture(name="make_echo")
async def make_echo_fixture() -> AsyncIterator[EchoFactory]:
    """Starts named echo apps on free ports; stops them all at teardown.

    Other modules import `make_echo_fixture` and request it as `make_echo`.
    """
    started: list[Instance] = []

    async def start(name: str) -> Instance:
        app = web.Application(client_max_size=2**31)
        seen: list[tuple[str, str]] = []
        holder: list[Instance] = []

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            seen.append((request.method, request.raw_path))
            holder[0].in_flight += 1
            try:
                response: web.StreamResponse = await handler(request)
            finally:
                holder[0].in_flight -= 1
            return response

        async def tag(_request: web.Request, response: web.StreamResponse) -> None:
            response.headers[INSTANCE_HEADER] = name

        app.middlewares.append(record)
        app.on_response_prepare.append(tag)
        app.router.add_route("*", "/{tail:.*}", _echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        instance = Instance(runner, port, name)
        instance.seen = seen
        holder.append(instance)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        await instance.stop()


# -- helpers -------------------------------------------------------------------------------


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def assert_invoke_error(response: Response, *fragments: str) -> dict[str, Any]:
    assert response.status == 500, response
    body = response.json()
    assert body["errorCode"] == "ERR_DIRECT_INVOKE", body
    for fragment in fragments:
        assert fragment in body["message"], body
    return body


def write_configuration(folder: Path, name: str, name_resolution: dict[str, Any]) -> str:
    """A Dapr Configuration file whose spec holds `nameResolution`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    document = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": name},
        "spec": {"nameResolution": name_resolution},
    }
    path.write_text(yaml.safe_dump(document))
    return str(path)


def static_config(folder: Path, apps: dict[str, list[str]], *, balancing: str | None = None) -> str:
    settings: dict[str, Any] = {"apps": apps}
    if balancing is not None:
        settings["loadBalancing"] = balancing
    return write_configuration(
        folder, "static-" + "-".join(apps), {"component": "static", "configuration": settings}
    )


def internal(sidecar: Sidecar) -> str:
    return f"127.0.0.1:{sidecar.internal_port}"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode("latin-1")


def post(target: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{extra}"
    return (head + "\r\n").encode("latin-1") + body


def post_chunked(target: str, body: bytes, extra: str = "", piece: int = 64 * 1024) -> bytes:
    head = f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n{extra}\r\n"
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + piece]), body[i : i + piece])
        for i in range(0, len(body), piece)
    )
    return head.encode() + chunks + b"0\r\n\r\n"


def pattern(size: int, seed: int = 0) -> bytes:
    """`size` bytes that differ all along (a shifted or dropped block would show)."""
    block = hashlib.sha256(b"%d" % seed).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(block + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


class TwoHop:
    """Sidecar A (app a) and the echo apps behind b's sidecars."""

    def __init__(self, a: Sidecar, app_a: Instance) -> None:
        self.a = a
        self.app_a = app_a
        self.apps_b: list[Instance] = []

    @property
    def port(self) -> int:
        return self.a.http_port

    async def call(
        self,
        target: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        timeout: float = 10.0,
    ) -> Response:
        return await request(self.port, method, target, headers, body, timeout=timeout)


async def start_b(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, name: str, **settings: Any
) -> tuple[Sidecar, Instance]:
    app = await make_echo(name)
    sidecar = await make_sidecar(app_id="b", app_port=app.port, **settings)
    return sidecar, app


# -- A to B on each component -----------------------------------------------------------------


async def test_a_calls_b_on_the_zero_config_sqlite_default(
    make_sidecar: SidecarFactory, make_echo: EchoFactory
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1")
        app_a = await make_echo("a")
        a = await make_sidecar(app_id="a", app_port=app_a.port)
        assert a.context is not None
        assert a.context.name_resolution.component == "sqlite"
        response = await request(a.http_port, "GET", "/v1.0/invoke/b/method/orders/7?x=1")
        assert response.status == 200, response
        assert response.header(INSTANCE_HEADER) == "b1"
        assert response.json()["path"] == "/orders/7?x=1"
        assert app_b.seen == [("GET", "/orders/7?x=1")]
        assert app_a.seen == []
        # And back: b's sidecar finds a in the same registry.
        back = await request(b.http_port, "POST", "/v1.0/invoke/a/method/reply", body=b"hi")
        assert back.status == 200, back
        assert back.header(INSTANCE_HEADER) == "a"
        assert back.json()["body"] == "hi"
        assert header_values(back.json(), "dapr-caller-app-id") == ["b"]
        assert header_values(back.json(), "dapr-callee-app-id") == ["a"]


async def test_a_calls_b_on_static(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1")
        config = static_config(tmp_path, {"b": [internal(b)]})
        a = await make_sidecar(app_id="a", config_file=config)
        assert a.context is not None
        assert a.context.name_resolution.component == "static"
        for target in ("/v1.0/invoke/b/method/s", "/v1.0/invoke/b.default/method/s"):
            response = await request(a.http_port, "GET", target)
            assert response.status == 200, response
            assert response.json()["path"] == "/s"
        # The header form routes the same way.
        by_header = await request(a.http_port, "GET", "/s2", {"dapr-app-id": "b"})
        assert by_header.status == 200, by_header
        assert by_header.json()["path"] == "/s2"
        assert app_b.seen == [("GET", "/s"), ("GET", "/s"), ("GET", "/s2")]


async def test_a_calls_b_with_a_resources_folder_configuration(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1")
        folder = tmp_path / "resources"
        static_config(folder, {"b": [internal(b)]})
        a = await make_sidecar(app_id="a", resources_paths=(str(folder),))
        response = await request(a.http_port, "GET", "/v1.0/invoke/b/method/r")
        assert response.status == 200, response
        assert app_b.seen == [("GET", "/r")]


# -- headers ----------------------------------------------------------------------------------


async def test_b_app_sees_caller_callee_and_forwarded_headers_once(
    make_sidecar: SidecarFactory, make_echo: EchoFactory
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await start_b(make_sidecar, make_echo, "b1")
        a = await make_sidecar(app_id="a")
        response = await request(
            a.http_port,
            "GET",
            "/v1.0/invoke/b/method/who",
            {
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "X-Mine": "1",
            },
        )
        assert response.status == 200, response
        echo = response.json()
        host = socket.gethostname()
        assert header_values(echo, "dapr-caller-app-id") == ["a"]
        assert header_values(echo, "dapr-caller-namespace") == ["default"]
        assert header_values(echo, "dapr-callee-app-id") == ["b"]
        assert header_values(echo, "X-Forwarded-For") == ["127.0.0.1"]
        assert header_values(echo, "X-Forwarded-Host") == [host]
        assert header_values(echo, "Forwarded") == [f"for=127.0.0.1;by=127.0.0.1;host={host}"]
        assert header_values(echo, "traceparent") == [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ]
        assert header_values(echo, "X-Mine") == ["1"]
        assert len(header_values(echo, "Host")) == 1
        assert header_values(echo, "dapr-api-token") == []


@pytest.mark.parametrize(
    "spoofed",
    [
        pytest.param(
            {
                "dapr-caller-app-id": "evil",
                "dapr-caller-namespace": "evil",
                "dapr-callee-app-id": "evil",
            },
            id="lowercase",
        ),
        pytest.param(
            {
                "Dapr-Caller-App-Id": "evil",
                "DAPR-CALLER-NAMESPACE": "evil",
                "Dapr-Callee-App-ID": "evil",
            },
            id="mixed-case",
        ),
    ],
)
async def test_client_supplied_caller_headers_on_a_never_reach_b_app(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, spoofed: dict[str, str]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await start_b(make_sidecar, make_echo, "b1")
        a = await make_sidecar(app_id="a")
        response = await request(a.http_port, "GET", "/v1.0/invoke/b/method/who", spoofed)
        assert response.status == 200, response
        echo = response.json()
        assert header_values(echo, "dapr-caller-app-id") == ["a"]
        assert header_values(echo, "dapr-caller-namespace") == ["default"]
        assert header_values(echo, "dapr-callee-app-id") == ["b"]
        assert "evil" not in [v for _, v in echo["headers"]]


async def test_client_supplied_forwarded_headers_are_kept_and_a_adds_its_own(
    make_sidecar: SidecarFactory, make_echo: EchoFactory
) -> None:
    """X-Forwarded-For from the client is its own business: A appends, never replaces."""
    async with asyncio.timeout(TEST_TIMEOUT):
        await start_b(make_sidecar, make_echo, "b1")
        a = await make_sidecar(app_id="a")
        response = await request(
            a.http_port, "GET", "/v1.0/invoke/b/method/who", {"X-Forwarded-For": "10.9.8.7"}
        )
        assert response.status == 200, response
        values = header_values(response.json(), "X-Forwarded-For")
        assert "10.9.8.7" in values
        assert "127.0.0.1" in values


# -- B's internal listener only serves b ------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        pytest.param("/v1.0/invoke/c/method/x", {}, id="other-app"),
        pytest.param("/v1.0/invoke/c.default/method/x", {}, id="other-app-qualified"),
        pytest.param("/v1.0/invoke/b.other/method/x", {}, id="same-id-other-namespace"),
        pytest.param("/x", {"dapr-app-id": "c"}, id="header-form"),
    ],
)
async def test_b_internal_listener_refuses_calls_for_other_apps(
    make_sidecar: SidecarFactory,
    make_echo: EchoFactory,
    target: str,
    headers: dict[str, str],
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1")
        c_app = await make_echo("c")
        # A real c next door: the refusal must not be a relay to it.
        await make_sidecar(app_id="c", app_port=c_app.port)
        response = await request(b.internal_port, "GET", target, headers)
        assert_invoke_error(response, "serves 'b' only")
        assert app_b.seen == []
        assert c_app.seen == []
        # The listener is still fine for b.
        ok = await request(b.internal_port, "GET", "/v1.0/invoke/b.default/method/y")
        assert ok.status == 200, ok
        assert app_b.seen == [("GET", "/y")]


async def test_misrouted_call_is_refused_by_b_and_relayed_by_a(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, tmp_path: Path
) -> None:
    """A static table that puts app c at b's sidecar: B refuses, A's client sees B's 500."""
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1")
        config = static_config(tmp_path, {"c": [internal(b)]})
        a = await make_sidecar(app_id="a", config_file=config)
        response = await request(a.http_port, "POST", "/v1.0/invoke/c/method/x", body=b"data")
        assert_invoke_error(response, "serves 'b' only")
        assert app_b.seen == []


# -- what crosses two hops intact ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method_part", "app_path"),
    [
        pytest.param(
            "orders/42/items?a=1&b=%20x&c=%2F&a=2",
            "/orders/42/items?a=1&b=%20x&c=%2F&a=2",
            id="query",
        ),
        pytest.param("?only=query", "/?only=query", id="empty-method-query"),
        pytest.param("admin%2F..%2Fpublic", "/public", id="encoded-traversal"),
        pytest.param("../../etc", "/etc", id="traversal-stops-at-root"),
        pytest.param("a//b/./c/", "/a/b/c", id="cleaned"),
        pytest.param("a%20b", "/a%20b", id="encoded-space"),
        pytest.param("a%2520b", "/a%2520b", id="double-encoded-stays"),
        pytest.param("test%2Astream", "/test*stream", id="star"),
        pytest.param("caf%C3%A9?q=%C3%A9", "/caf%C3%A9?q=%C3%A9", id="utf8"),
        pytest.param("x#frag", "/x", id="fragment-dropped"),
    ],
)
async def test_query_and_normalised_method_path_cross_two_hops(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, method_part: str, app_path: str
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1")
        a = await make_sidecar(app_id="a")
        target = f"/v1.0/invoke/b/method/{method_part}"
        two_hops = await request(a.http_port, "GET", target)
        assert two_hops.status == 200, two_hops
        assert two_hops.json()["path"] == app_path
        # Exactly what one hop (b's own public API) gives.
        one_hop = await request(b.http_port, "GET", target)
        assert one_hop.status == 200, one_hop
        assert one_hop.json()["path"] == app_path
        assert app_b.seen == [("GET", app_path), ("GET", app_path)]


async def test_forbidden_method_character_is_refused_by_a_and_never_reaches_b(
    make_sidecar: SidecarFactory, make_echo: EchoFactory
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        _, app_b = await start_b(make_sidecar, make_echo, "b1")
        a = await make_sidecar(app_id="a")
        response = await request(a.http_port, "GET", "/v1.0/invoke/b/method/x%23y")
        assert_invoke_error(response, "invalid method")
        assert app_b.seen == []


@pytest.fixture
async def big_two_hop(make_sidecar: SidecarFactory, make_echo: EchoFactory) -> TwoHop:
    """A and one b, both accepting bodies well above 5 MiB."""
    _, app_b = await start_b(make_sidecar, make_echo, "b1", max_body_size=16 * MIB)
    app_a = await make_echo("a")
    a = await make_sidecar(app_id="a", app_port=app_a.port, max_body_size=16 * MIB)
    pair = TwoHop(a, app_a)
    pair.apps_b.append(app_b)
    return pair


async def test_5mib_content_length_body_crosses_two_hops(big_two_hop: TwoHop) -> None:
    body = pattern(FIVE_MIB, 1)
    async with asyncio.timeout(TEST_TIMEOUT):
        raw = await raw_exchange(
            big_two_hop.port,
            post("/v1.0/invoke/b/method/upload?kind=cl", body, "Connection: close\r\n"),
            timeout=20,
        )
    responses = parse_responses(raw)
    assert len(responses) == 1, raw[:500]
    response = responses[0]
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/upload?kind=cl"
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echo["chunked"] is False
    assert header_values(echo, "Content-Length") == [str(len(body))]


async def test_5mib_chunked_body_crosses_two_hops(big_two_hop: TwoHop) -> None:
    body = pattern(FIVE_MIB, 2)
    async with asyncio.timeout(TEST_TIMEOUT):
        raw = await raw_exchange(
            big_two_hop.port,
            post_chunked(
                "/v1.0/invoke/b/method/upload?kind=chunked", body, "Connection: close\r\n"
            ),
            timeout=20,
        )
    responses = parse_responses(raw)
    assert len(responses) == 1, raw[:500]
    response = responses[0]
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/upload?kind=chunked"
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echo["chunked"] is True


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_large_response_crosses_two_hops(big_two_hop: TwoHop, chunked: bool) -> None:
    size = 8 * MIB + 13
    target = f"/v1.0/invoke/b/method/download?size={size}" + ("&chunked=1" if chunked else "")
    async with asyncio.timeout(TEST_TIMEOUT):
        response = await big_two_hop.call(target, timeout=20)
    assert response.status == 200, response
    assert response.complete
    expected = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    assert len(response.body) == size
    assert response.body == expected
    assert response.header(INSTANCE_HEADER) == "b1"


async def test_pipelined_requests_across_two_hops_are_answered_in_order(
    big_two_hop: TwoHop,
) -> None:
    invoke = "/v1.0/invoke/b/method"
    body_one = pattern(3000, 3)
    body_two = pattern(200_000, 4)
    data = b"".join(
        [
            get(f"{invoke}/slow?delay=0.3"),
            post(f"{invoke}/one", body_one),
            get("/v1.0/healthz"),
            get("/v1.0/invoke/nobody/method/x"),
            post_chunked(f"{invoke}/two", body_two),
            get(f"{invoke}/big?size=300000"),
            get(f"{invoke}/slow2?delay=0.1"),
            get(f"{invoke}/last", "Connection: close\r\n"),
        ]
    )
    async with asyncio.timeout(TEST_TIMEOUT):
        raw = await raw_exchange(big_two_hop.port, data, timeout=15)
    responses = parse_responses(raw)
    assert [r.status for r in responses] == [200, 200, 204, 500, 200, 200, 200, 200], raw[:3000]
    assert all(r.complete for r in responses)
    slow, one, _health, nobody, two, big, slow2, last = responses
    assert slow.json()["path"] == "/slow?delay=0.3"
    assert one.json()["path"] == "/one"
    assert one.json()["body_sha256"] == hashlib.sha256(body_one).hexdigest()
    assert "couldn't find service: nobody" in json.loads(nobody.body)["message"]
    assert two.json()["path"] == "/two"
    assert two.json()["body_sha256"] == hashlib.sha256(body_two).hexdigest()
    assert big.body == (b"0123456789abcdef" * 20000)[:300000]
    assert slow2.json()["path"] == "/slow2?delay=0.1"
    assert last.json()["path"] == "/last"
    assert [p for _, p in big_two_hop.apps_b[0].seen] == [
        "/slow?delay=0.3",
        "/one",
        "/two",
        "/big?size=300000",
        "/slow2?delay=0.1",
        "/last",
    ]


async def test_keep_alive_client_sends_many_requests_across_two_hops(
    big_two_hop: TwoHop,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await RawClient.open(big_two_hop.port)
        try:
            buffer = b""
            for i in range(50):
                if i % 2:
                    await client.send(post(f"/v1.0/invoke/b/method/k{i}", b"n%d" % i))
                else:
                    await client.send(get(f"/v1.0/invoke/b/method/k{i}?i={i}"))
                while True:
                    parsed = parse_responses(buffer) if buffer else []
                    if parsed and parsed[0].complete:
                        break
                    chunk = await client.reader.read(65536)
                    assert chunk, f"closed after {i} requests: {buffer!r}"
                    buffer += chunk
                assert len(parsed) == 1, buffer
                echo = parsed[0].json()
                assert parsed[0].status == 200, parsed[0]
                assert echo["path"] == (f"/k{i}" if i % 2 else f"/k{i}?i={i}")
                assert echo["body"] == (f"n{i}" if i % 2 else "")
                buffer = b""
        finally:
            await client.close()


async def test_head_and_204_cross_two_hops_without_a_body(big_two_hop: TwoHop) -> None:
    invoke = "/v1.0/invoke/b/method"
    data = (
        f"HEAD {invoke}/h?size=1234 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        f"GET {invoke}/nc?status=204 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        f"HEAD /v1.0/invoke/nobody/method/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        f"GET {invoke}/after?size=10 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    ).encode()
    async with asyncio.timeout(TEST_TIMEOUT):
        raw = await raw_exchange(big_two_hop.port, data, timeout=10)
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, raw
    assert head.startswith(b"HTTP/1.1 200 "), raw
    assert b"\r\ncontent-length: 1234" in head.lower(), head
    # The 204 must come next: nothing of a HEAD body in between.
    no_content, sep, rest = rest.partition(b"\r\n\r\n")
    assert sep, raw
    assert no_content.startswith(b"HTTP/1.1 204 "), raw
    assert b"content-length: " not in no_content.lower() or b"content-length: 0" in (
        no_content.lower()
    ), no_content
    failed_head, sep, rest = rest.partition(b"\r\n\r\n")
    assert sep, raw
    assert failed_head.startswith(b"HTTP/1.1 500 "), raw
    responses = parse_responses(rest)
    assert len(responses) == 1, rest
    assert responses[0].status == 200, responses[0]
    assert responses[0].body == b"0123456789"
    assert big_two_hop.apps_b[0].seen == [
        ("HEAD", "/h?size=1234"),
        ("GET", "/nc?status=204"),
        ("GET", "/after?size=10"),
    ]


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("component", ["sqlite", "static"])
async def test_unknown_app_is_500_couldnt_find_service_quickly(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, tmp_path: Path, component: str
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1")
        settings: dict[str, Any] = {"app_id": "a"}
        if component == "static":
            settings["config_file"] = static_config(tmp_path, {"b": [internal(b)]})
        a = await make_sidecar(**settings)
        for _ in range(2):  # the second answer may come from the negative cache
            started = time.monotonic()
            response = await request(a.http_port, "GET", "/v1.0/invoke/nobody/method/x")
            elapsed = time.monotonic() - started
            body = assert_invoke_error(response, "couldn't find service: nobody")
            assert body["message"].startswith("failed to invoke, id: nobody"), body
            assert elapsed < 1.0, elapsed
        assert app_b.seen == []


async def test_b_app_down_gives_a_client_the_500_b_answered(
    make_sidecar: SidecarFactory, make_echo: EchoFactory
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b = await make_sidecar(app_id="b", app_port=closed_port())
        a = await make_sidecar(app_id="a")
        started = time.monotonic()
        response = await request(a.http_port, "GET", "/v1.0/invoke/b/method/x")
        assert time.monotonic() - started < 3.0
        body = assert_invoke_error(response, "id: b")
        # B's own answer, passed on: B dialled its app and failed (one hop says the same).
        direct = await request(b.http_port, "GET", "/v1.0/invoke/b/method/x")
        reason = assert_invoke_error(direct)["message"].partition(", err: ")[2]
        assert reason.startswith("dial tcp 127.0.0.1:"), direct
        assert body["message"].endswith(", err: " + reason), body
        # A does not count B as unreachable: the next call still goes there.
        again = await request(a.http_port, "GET", "/v1.0/invoke/b/method/x")
        assert_invoke_error(again, "id: b")
        assert "could be reached" not in again.json()["message"]


async def test_b_app_answering_errors_is_relayed_as_is(
    make_sidecar: SidecarFactory, make_echo: EchoFactory
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await start_b(make_sidecar, make_echo, "b1")
        a = await make_sidecar(app_id="a")
        response = await request(
            a.http_port, "GET", "/v1.0/invoke/b/method/x?status=503&header=Retry-After:7"
        )
        assert response.status == 503, response
        assert response.header("Retry-After") == "7"
        assert response.header(INSTANCE_HEADER) == "b1"


# -- two instances of b -------------------------------------------------------------------------


async def test_round_robin_alternates_between_two_instances(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b1, _ = await start_b(make_sidecar, make_echo, "b1")
        b2, _ = await start_b(make_sidecar, make_echo, "b2")
        config = static_config(
            tmp_path, {"b": [internal(b1), internal(b2)]}, balancing="roundrobin"
        )
        a = await make_sidecar(app_id="a", config_file=config)
        answered: list[str | None] = []
        for i in range(12):
            response = await request(a.http_port, "GET", f"/v1.0/invoke/b/method/rr{i}")
            assert response.status == 200, response
            answered.append(response.header(INSTANCE_HEADER))
        assert set(answered) == {"b1", "b2"}, answered
        assert all(x != y for x, y in itertools.pairwise(answered)), answered


@pytest.mark.parametrize("component", ["sqlite", "static"])
async def test_least_outstanding_uses_both_instances(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, tmp_path: Path, component: str
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b1, app1 = await start_b(make_sidecar, make_echo, "b1")
        b2, app2 = await start_b(make_sidecar, make_echo, "b2")
        if component == "static":
            config = static_config(
                tmp_path, {"b": [internal(b1), internal(b2)]}, balancing="leastoutstanding"
            )
            a = await make_sidecar(app_id="a", config_file=config)
        else:
            a = await make_sidecar(app_id="a")  # least-outstanding is the default
        responses = await asyncio.gather(
            *(
                request(a.http_port, "GET", f"/v1.0/invoke/b/method/lo{i}?delay=0.3")
                for i in range(20)
            )
        )
        assert [r.status for r in responses] == [200] * 20, responses
        answered = [r.header(INSTANCE_HEADER) for r in responses]
        assert answered.count("b1") >= 5, answered
        assert answered.count("b2") >= 5, answered
        assert len(app1.seen) + len(app2.seen) == 20


@pytest.mark.parametrize("component", ["sqlite", "static"])
@pytest.mark.parametrize("balancing", ["roundrobin", "leastoutstanding"])
async def test_stopped_instance_fails_over_without_client_errors(
    make_sidecar: SidecarFactory,
    make_echo: EchoFactory,
    tmp_path: Path,
    component: str,
    balancing: str,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b1, app1 = await start_b(make_sidecar, make_echo, "b1")
        b2, app2 = await start_b(make_sidecar, make_echo, "b2")
        if component == "static":
            config = static_config(
                tmp_path, {"b": [internal(b1), internal(b2)]}, balancing=balancing
            )
        else:
            config = write_configuration(
                tmp_path,
                "sqlite",
                {"component": "sqlite", "configuration": {"loadBalancing": balancing}},
            )
        a = await make_sidecar(app_id="a", config_file=config)
        # Warm up: both instances in use, A holds keep-alive connections to both.
        warm = await asyncio.gather(
            *(
                request(a.http_port, "GET", f"/v1.0/invoke/b/method/w{i}?delay=0.1")
                for i in range(8)
            )
        )
        assert [r.status for r in warm] == [200] * 8
        assert app1.seen and app2.seen
        await b1.stop(grace=1.0)
        seen_before = len(app1.seen)
        statuses: list[int] = []
        for i in range(40):
            method, body = ("POST", b"p%d" % i) if i % 2 else ("GET", b"")
            response = await request(a.http_port, method, f"/v1.0/invoke/b/method/f{i}", body=body)
            assert response.status == 200, (i, response)
            assert response.header(INSTANCE_HEADER) == "b2", response
            statuses.append(response.status)
        assert len(app1.seen) == seen_before
        assert statuses == [200] * 40


async def test_both_instances_stopped_is_500_could_be_reached(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b1, _ = await start_b(make_sidecar, make_echo, "b1")
        b2, _ = await start_b(make_sidecar, make_echo, "b2")
        config = static_config(tmp_path, {"b": [internal(b1), internal(b2)]})
        a = await make_sidecar(app_id="a", config_file=config)
        assert (await request(a.http_port, "GET", "/v1.0/invoke/b/method/x")).status == 200
        await b1.stop(grace=1.0)
        await b2.stop(grace=1.0)
        for method in ("GET", "POST"):
            started = time.monotonic()
            response = await request(
                a.http_port, method, "/v1.0/invoke/b/method/x", body=b"z", timeout=10.0
            )
            # Dapr's built-in retry between sidecars: 3 more rounds, 1 s apart.
            assert 2.5 < time.monotonic() - started < 6.0
            assert_invoke_error(response, "could be reached")
        # Answered by a sidecar that stays usable.
        health = await request(a.http_port, "GET", "/v1.0/healthz")
        assert health.status == 204


async def test_instance_coming_back_is_used_again(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, tmp_path: Path
) -> None:
    """An ejected instance is tried again once its backoff ends and then serves again."""
    async with asyncio.timeout(TEST_TIMEOUT):
        b1, app1 = await start_b(make_sidecar, make_echo, "b1")
        port1 = b1.internal_port
        b2, _ = await start_b(make_sidecar, make_echo, "b2")
        config = static_config(
            tmp_path, {"b": [internal(b1), internal(b2)]}, balancing="roundrobin"
        )
        a = await make_sidecar(app_id="a", config_file=config)
        await b1.stop(grace=1.0)
        for i in range(4):
            response = await request(a.http_port, "GET", f"/v1.0/invoke/b/method/d{i}")
            assert response.status == 200, response
        # b1 comes back on the same internal port.
        await make_sidecar(app_id="b", app_port=app1.port, internal_port=port1)
        deadline = time.monotonic() + 10
        while not any(path.startswith("/back") for _, path in app1.seen):
            assert time.monotonic() < deadline, "b1 never used again"
            response = await request(a.http_port, "GET", "/v1.0/invoke/b/method/back")
            assert response.status == 200, response
            await asyncio.sleep(0.1)


class Blackhole:
    """A loopback port whose accept queue is full: connects hang (SYNs are dropped)."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._filler = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
        probe = socket.socket()
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", self.port))
        except TimeoutError:
            pass
        else:
            self.close()
            pytest.fail("could not make a port whose connects hang")
        finally:
            probe.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._filler.close()
        self._listener.close()


@pytest.fixture
def blackhole() -> Any:
    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.close()


async def timed_call(
    port: int, target: str, client_timeout: float, *, reset: bool = False
) -> tuple[float, Response | None]:
    """(seconds, response), or (seconds, None) when the client gave up and hung up first."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get(target, "Connection: close\r\n"))
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(client_timeout):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        except TimeoutError:
            if reset:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return time.monotonic() - started, None
    finally:
        writer.close()
    responses = parse_responses(b"".join(chunks))
    assert len(responses) == 1, chunks
    return time.monotonic() - started, responses[0]


async def test_unresponsive_instance_costs_one_connect_timeout_then_is_ejected(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, tmp_path: Path, blackhole: Blackhole
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b2, app2 = await start_b(make_sidecar, make_echo, "b2")
        config = static_config(
            tmp_path, {"b": [blackhole.address, internal(b2)]}, balancing="roundrobin"
        )
        a = await make_sidecar(app_id="a", config_file=config, upstream_connect_timeout=0.5)
        slow = 0
        for i in range(12):
            took, response = await timed_call(a.http_port, f"/v1.0/invoke/b/method/u{i}", 5.0)
            assert response is not None and response.status == 200, response
            assert response.header(INSTANCE_HEADER) == "b2", response
            if took >= 0.45:
                slow += 1
        # At most the first pick and one trial after the backoff wait for the dial.
        assert slow <= 2, slow
        assert len(app2.seen) == 12


@pytest.mark.parametrize("hang_up", ["close", "reset"])
async def test_blackholed_instance_is_ejected_even_when_clients_give_up_first(
    make_sidecar: SidecarFactory,
    make_echo: EchoFactory,
    tmp_path: Path,
    blackhole: Blackhole,
    hang_up: str,
) -> None:
    """Clients whose timeout is below the connect timeout must not keep a dead instance in use.

    Each client waits 0.3 s, then hangs up (FIN, or RST as a client with
    unread data or SO_LINGER 0 does); the connect timeout is 0.5 s. The dial's
    failure says the instance is unreachable whether or not the client that
    caused it is still there: from then on requests go to b2, but for a trial
    when a backoff ends.
    """
    async with asyncio.timeout(TEST_TIMEOUT):
        b2, _ = await start_b(make_sidecar, make_echo, "b2")
        config = static_config(
            tmp_path, {"b": [blackhole.address, internal(b2)]}, balancing="roundrobin"
        )
        a = await make_sidecar(app_id="a", config_file=config, upstream_connect_timeout=0.5)
        outcomes: list[int | None] = []
        started = time.monotonic()
        while time.monotonic() - started < 3.0:
            _, response = await timed_call(
                a.http_port, "/v1.0/invoke/b/method/g", 0.3, reset=hang_up == "reset"
            )
            outcomes.append(None if response is None else response.status)
        late = outcomes[len(outcomes) // 2 :]
        assert late.count(None) <= 2, (
            f"{late.count(None)} of the last {len(late)} calls went unanswered"
            f" (first calls: {outcomes[:12]})"
        )


async def test_5mib_bodies_fail_over_from_dead_instances_intact(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, tmp_path: Path
) -> None:
    """Nothing is sent before a connection exists, so even big bodies move whole."""
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1", max_body_size=16 * MIB)
        dead = [f"127.0.0.1:{closed_port()}" for _ in range(5)]
        config = static_config(tmp_path, {"b": [*dead, internal(b)]}, balancing="roundrobin")
        for n, chunked in enumerate((False, True, False, True)):
            # A fresh A each time: its first pick is most likely a dead instance.
            a = await make_sidecar(app_id="a", config_file=config, max_body_size=16 * MIB)
            body = pattern(FIVE_MIB, 10 + n)
            target = f"/v1.0/invoke/b/method/fo{n}"
            data = (
                post_chunked(target, body, "Connection: close\r\n")
                if chunked
                else post(target, body, "Connection: close\r\n")
            )
            raw = await raw_exchange(a.http_port, data, timeout=20)
            responses = parse_responses(raw)
            assert len(responses) == 1, raw[:500]
            assert responses[0].status == 200, responses[0]
            echo = responses[0].json()
            assert echo["path"] == f"/fo{n}"
            assert echo["chunked"] is chunked
            assert echo["body_length"] == len(body)
            assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
            await a.stop(grace=1.0)
        assert len(app_b.seen) == 4


# -- more traffic shapes ------------------------------------------------------------------------


async def test_expect_100_continue_across_two_hops(big_two_hop: TwoHop) -> None:
    body = pattern(100_000, 5)
    async with asyncio.timeout(TEST_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", big_two_hop.port)
        try:
            writer.write(
                (
                    "POST /v1.0/invoke/b/method/cont HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
            )
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 "), interim
            writer.write(body)
            raw = await reader.read(-1)
        finally:
            writer.close()
    responses = parse_responses(raw)
    assert len(responses) == 1, raw[:500]
    assert responses[0].status == 200, responses[0]
    echo = responses[0].json()
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header_values(echo, "Expect") == []


async def test_many_concurrent_clients_each_get_their_own_answer_across_two_hops(
    big_two_hop: TwoHop,
) -> None:
    async def one(n: int) -> None:
        body = b"client-%d-" % n * (n % 7 + 1)
        response = await big_two_hop.call(
            f"/v1.0/invoke/b/method/c{n}?n={n}", "POST", body=body, timeout=15
        )
        assert response.status == 200, response
        echo = response.json()
        assert echo["path"] == f"/c{n}?n={n}"
        assert echo["body"] == body.decode()

    async with asyncio.timeout(TEST_TIMEOUT):
        await asyncio.gather(*(one(n) for n in range(150)))
    assert len(big_two_hop.apps_b[0].seen) == 150


async def test_slow_reading_client_gets_a_large_response_whole(big_two_hop: TwoHop) -> None:
    """Back-pressure across both hops: a client that stops reading loses nothing."""
    size = 24 * MIB
    async with asyncio.timeout(TEST_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", big_two_hop.port)
        try:
            writer.write(get(f"/v1.0/invoke/b/method/huge?size={size}", "Connection: close\r\n"))
            first = await reader.read(1024)
            assert first.startswith(b"HTTP/1.1 200 "), first
            await asyncio.sleep(1.0)  # not reading: both hops must hold back
            rest = await reader.read(-1)
        finally:
            writer.close()
    responses = parse_responses(first + rest)
    assert len(responses) == 1
    assert responses[0].complete
    assert len(responses[0].body) == size
    assert responses[0].body == (b"0123456789abcdef" * (size // 16 + 1))[:size]


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_client_leaving_mid_body_releases_b_and_its_app(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, how: str
) -> None:
    """A request whose client left mid-body can never complete: both hops drop it at once.

    B's app must not be left holding the truncated request (until a body
    timeout, 30 s by default; 5 s here to bound the test), and the connection
    from A to B that carried half a body must never be used again.
    """
    async with asyncio.timeout(TEST_TIMEOUT):
        _, app_b = await start_b(make_sidecar, make_echo, "b1", body_timeout=5.0)
        a = await make_sidecar(app_id="a", body_timeout=5.0)
        # Warm: A holds a kept-alive connection to B.
        assert (await request(a.http_port, "GET", "/v1.0/invoke/b/method/warm")).status == 200
        for n in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", a.http_port)
            writer.write(
                b"POST /v1.0/invoke/b/method/cut HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 1000000\r\n\r\n" + b"x" * 300_000
            )
            await writer.drain()
            deadline = time.monotonic() + 5
            while app_b.in_flight == 0:
                assert time.monotonic() < deadline, "the request never reached app b"
                await asyncio.sleep(0.01)
            if how == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            del reader
            cut_at = time.monotonic()
            while app_b.in_flight:
                assert time.monotonic() - cut_at < 2.0, (
                    f"app b still holds the truncated request {time.monotonic() - cut_at:.1f}s"
                    " after A's client left"
                )
                await asyncio.sleep(0.02)
            for i in range(5):
                method, body = ("POST", b"after-%d-%d" % (n, i)) if i % 2 else ("GET", b"")
                response = await request(
                    a.http_port, method, f"/v1.0/invoke/b/method/after{n}{i}", body=body
                )
                assert response.status == 200, response
                echo = response.json()
                assert echo["path"] == f"/after{n}{i}"
                assert echo["body"] == body.decode()


async def test_call_to_b_in_another_namespace_on_sqlite(
    make_sidecar: SidecarFactory, make_echo: EchoFactory
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        _, app_b = await start_b(make_sidecar, make_echo, "b-prod", namespace="prod")
        a = await make_sidecar(app_id="a")
        response = await request(a.http_port, "GET", "/v1.0/invoke/b.prod/method/ns")
        assert response.status == 200, response
        echo = response.json()
        assert header_values(echo, "dapr-caller-app-id") == ["a"]
        assert header_values(echo, "dapr-caller-namespace") == ["default"]
        assert header_values(echo, "dapr-callee-app-id") == ["b"]
        # Plain `b` is b in A's own namespace, which does not exist.
        missing = await request(a.http_port, "GET", "/v1.0/invoke/b/method/ns")
        assert_invoke_error(missing, "couldn't find service: b")
        assert app_b.seen == [("GET", "/ns")]


# -- tokens -------------------------------------------------------------------------------------


async def test_api_token_of_a_is_not_needed_on_b_internal_port(
    make_sidecar: SidecarFactory, make_echo: EchoFactory
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(
            make_sidecar, make_echo, "b1", api_token="token-b", app_api_token="app-token-b"
        )
        a = await make_sidecar(app_id="a", api_token="token-a")
        # A's public API wants A's token; nothing reaches b without it.
        denied = await request(a.http_port, "GET", "/v1.0/invoke/b/method/x")
        assert denied.status == 401, denied
        wrong = await request(
            a.http_port, "GET", "/v1.0/invoke/b/method/x", {"dapr-api-token": "token-b"}
        )
        assert wrong.status == 401, wrong
        assert app_b.seen == []
        # With it, the call crosses B's internal port, which asks for no token.
        allowed = await request(
            a.http_port, "GET", "/v1.0/invoke/b/method/x", {"dapr-api-token": "token-a"}
        )
        assert allowed.status == 200, allowed
        echo = allowed.json()
        # App b sees b's app token, never A's API token.
        assert header_values(echo, "dapr-api-token") == ["app-token-b"]
        assert "token-a" not in [v for _, v in echo["headers"]]
        # Directly: B's internal port asks for no token, B's public port does.
        internal_call = await request(b.internal_port, "GET", "/v1.0/invoke/b/method/y")
        assert internal_call.status == 200, internal_call
        public_call = await request(b.http_port, "GET", "/v1.0/invoke/b/method/z")
        assert public_call.status == 401, public_call
        assert [p for _, p in app_b.seen] == ["/x", "/y"]
