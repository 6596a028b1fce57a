"""Real servers on loopback for integration tests: an echo app, sidecars, raw clients.

Every server binds port 0; every one started here is stopped at teardown. A
test fails if the loop saw an unhandled exception while it ran.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httptools
import pytest
from aiohttp import web

from fastproxy import Config, Sidecar

pytestmark = pytest.mark.asyncio


@pytest.fixture(autouse=True)
async def fail_on_loop_errors() -> Any:
    """Unhandled exceptions in callbacks would otherwise only be logged."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)
    assert not errors, f"unhandled loop exceptions: {errors}"


# -- the echo app ------------------------------------------------------------


async def _echo(request: web.Request) -> web.StreamResponse:
    """Echoes what arrived; query parameters shape the answer.

    status=N, delay=S (before answering), size=N (body of N bytes instead of
    the JSON echo), chunked=1 (stream the body in chunks), header=Name:Value
    (repeatable, added to the response).
    """
    body = await request.read()
    query = request.rel_url.query
    if "delay" in query:
        await asyncio.sleep(float(query["delay"]))
    status = int(query.get("status", "200"))
    headers = {}
    for item in query.getall("header", []):
        name, _, value = item.partition(":")
        headers[name] = value
    if "size" in query:
        payload = (b"0123456789abcdef" * (int(query["size"]) // 16 + 1))[: int(query["size"])]
    else:
        payload = json.dumps(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": [[k, v] for k, v in request.raw_headers_decoded()]
                if hasattr(request, "raw_headers_decoded")
                else [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body": body.decode("latin-1") if len(body) <= 4096 else None,
                "chunked": request.headers.get("Transfer-Encoding", "") == "chunked",
            }
        ).encode()
        headers.setdefault("Content-Type", "application/json")
    if query.get("chunked") == "1":
        response = web.StreamResponse(status=status, headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(payload), 1000):
            await response.write(payload[start : start + 1000])
        await response.write_eof()
        return response
    return web.Response(status=status, body=payload, headers=headers)


class EchoApp:
    """A running echo app: its port and the requests it has seen."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port
        self.seen: list[tuple[str, str]] = []


@pytest.fixture
async def echo_app() -> AsyncIterator[EchoApp]:
    app = web.Application(client_max_size=2**31)
    seen: list[tuple[str, str]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append((request.method, request.raw_path))
        return await handler(request)

    app.middlewares.append(record)
    app.router.add_route("*", "/{tail:.*}", _echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    echo = EchoApp(runner, port)
    echo.seen = seen
    yield echo
    await runner.cleanup()


# -- sidecars ------------------------------------------------------------------

SidecarFactory = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def make_sidecar() -> AsyncIterator[SidecarFactory]:
    """Starts in-process sidecars on free ports; stops them all at teardown."""
    started: list[Sidecar] = []

    async def make(**settings: Any) -> Sidecar:
        settings.setdefault("app_id", "app")
        settings.setdefault("http_port", 0)
        settings.setdefault("listen_addresses", ("127.0.0.1",))
        settings.setdefault("internal_port", 0)
        settings.setdefault("metrics_port", 0)
        sidecar = Sidecar(Config(), **settings)
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    yield make
    for sidecar in started:
        await sidecar.stop(grace=1.0)


@pytest.fixture
async def sidecar(make_sidecar: SidecarFactory, echo_app: EchoApp) -> Sidecar:
    """A sidecar for app id `app` whose app channel is the echo app."""
    return await make_sidecar(app_port=echo_app.port)


# -- raw HTTP clients ----------------------------------------------------------


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.complete = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


class _ResponseCollector:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.parser: httptools.HttpResponseParser | None = None
        self._current: Response | None = None

    def on_message_begin(self) -> None:
        self._current = Response()
        self.responses.append(self._current)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._current is not None
        self._current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self._current is not None and self.parser is not None
        self._current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self._current is not None
        self._current.body += body

    def on_message_complete(self) -> None:
        assert self._current is not None
        self._current.complete = True


def parse_responses(data: bytes) -> list[Response]:
    """Split a byte stream into responses (not for answers to HEAD: see head_response)."""
    collector = _ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    collector.parser = parser
    parser.feed_data(data)
    return collector.responses


async def raw_exchange(
    port: int, data: bytes, *, timeout: float = 5.0, host: str = "127.0.0.1"
) -> bytes:
    """Send bytes, half-close nothing, read until the server closes (or timeout)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    await writer.drain()
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except TimeoutError:
        pass
    finally:
        writer.close()
    return b"".join(chunks)


async def request(
    port: int,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    timeout: float = 5.0,
) -> Response:
    """One HTTP/1.1 request on its own connection (Connection: close)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    all_headers = dict(headers or {})
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in all_headers):
        all_headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    raw = await raw_exchange(port, data, timeout=timeout)
    responses = parse_responses(raw)
    assert len(responses) == 1, f"expected one response, got {raw!r}"
    return responses[0]
