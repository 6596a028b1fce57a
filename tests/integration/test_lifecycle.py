"""Sidecar lifecycle: binding (port 0, IPv4 and IPv6 loopback), and draining on stop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from fastproxy import Sidecar
from tests.integration.conftest import EchoApp, SidecarFactory, parse_responses, request

pytestmark = pytest.mark.asyncio


def _ipv6_loopback_bindable() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def _connect(
    port: int, host: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(2):
        return await asyncio.open_connection(host, port)


async def _read_to_eof(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool]:
    """Everything until the peer closes; the flag says whether it closed within `timeout`."""
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except TimeoutError:
        return b"".join(chunks), False
    except ConnectionResetError:
        return b"".join(chunks), True
    return b"".join(chunks), True


async def _wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def _refused(port: int) -> bool:
    """True when a new connection is refused, or accepted and closed without an answer."""
    try:
        reader, writer = await _connect(port)
    except ConnectionRefusedError:
        return True
    try:
        writer.write(b"GET /v1.0/healthz HTTP/1.1\r\nHost: h\r\n\r\n")
        data, closed = await _read_to_eof(reader, 1.0)
        return closed and data == b""
    finally:
        writer.close()


# -- binding --------------------------------------------------------------------------------


async def test_context_manager_with_port_zero_exposes_real_port(echo_app: EchoApp) -> None:
    sidecar = Sidecar(
        app_id="app",
        app_port=echo_app.port,
        http_port=0,
        internal_port=0,
        metrics_port=0,
        listen_addresses=("127.0.0.1",),
    )
    async with sidecar as running:
        assert running is sidecar
        port = running.http_port
        assert port != 0
        assert running.http_ports == [port]
        response = await request(port, "GET", "/v1.0/invoke/app/method/up")
        assert response.status == 200, response
        assert response.json()["path"] == "/up"
    assert await _refused(port)
    with pytest.raises(RuntimeError):
        _ = sidecar.http_port


async def test_http_port_before_start_raises() -> None:
    with pytest.raises(RuntimeError):
        _ = Sidecar(app_id="app", http_port=0).http_port


async def test_listens_on_ipv4_and_ipv6_loopback_on_the_same_port(echo_app: EchoApp) -> None:
    if not _ipv6_loopback_bindable():
        pytest.skip("::1 cannot be bound on this host")
    async with Sidecar(
        app_id="app",
        app_port=echo_app.port,
        http_port=0,
        internal_port=0,
        metrics_port=0,
        listen_addresses=("127.0.0.1", "::1"),
    ) as sidecar:
        assert len(sidecar.http_ports) == 1, sidecar.http_ports
        port = sidecar.http_port
        for host in ("127.0.0.1", "::1"):
            reader, writer = await _connect(port, host)
            try:
                writer.write(
                    b"GET /v1.0/invoke/app/method/v6 HTTP/1.1\r\nHost: h\r\n"
                    b"Connection: close\r\n\r\n"
                )
                data, closed = await _read_to_eof(reader, 5)
            finally:
                writer.close()
            assert closed, host
            (response,) = parse_responses(data)
            assert response.status == 200, (host, response)
            assert response.json()["path"] == "/v6"


async def test_default_listen_addresses_include_ipv6_loopback(echo_app: EchoApp) -> None:
    if not _ipv6_loopback_bindable():
        pytest.skip("::1 cannot be bound on this host")
    async with Sidecar(
        app_id="app", app_port=echo_app.port, http_port=0, internal_port=0, metrics_port=0
    ) as sidecar:
        reader, writer = await _connect(sidecar.http_port, "::1")
        try:
            writer.write(b"GET /v1.0/healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            data, _ = await _read_to_eof(reader, 5)
        finally:
            writer.close()
        assert data.startswith(b"HTTP/1.1 204 "), data


async def test_start_on_a_taken_port_fails(make_sidecar: SidecarFactory) -> None:
    first = await make_sidecar()
    with pytest.raises(OSError):
        await make_sidecar(http_port=first.http_port)


async def test_stop_twice_is_harmless_and_wait_stopped_returns(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = await make_sidecar()
    async with asyncio.timeout(3):
        await sidecar.stop(grace=1)
        await sidecar.stop(grace=1)
        await sidecar.wait_stopped()


# -- draining ------------------------------------------------------------------------------------


async def test_stop_drains_in_flight_request_and_refuses_new_connections(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port)
    port = sidecar.http_port

    # An idle keep-alive connection that already served one request.
    idle_reader, idle_writer = await _connect(port)
    idle_writer.write(b"GET /v1.0/invoke/app/method/first HTTP/1.1\r\nHost: h\r\n\r\n")
    async with asyncio.timeout(3):
        head = await idle_reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    async with asyncio.timeout(3):
        await idle_reader.readexactly(length)

    slow = asyncio.create_task(request(port, "GET", "/v1.0/invoke/app/method/slow?delay=1"))
    await _wait_until(lambda: any(path.startswith("/slow") for _, path in echo_app.seen))

    started = time.monotonic()
    stopping = asyncio.create_task(sidecar.stop(grace=5))
    try:
        # Idle connections are closed at once, not at the end of the grace period.
        data, closed = await _read_to_eof(idle_reader, 0.8)
        assert closed and data == b"", data
        assert not slow.done()
        assert await _refused(port)
        response = await slow
        assert response.status == 200, response
        assert response.json()["path"] == "/slow?delay=1"
        async with asyncio.timeout(3):
            await stopping
    finally:
        idle_writer.close()
        if not stopping.done():
            stopping.cancel()
    assert time.monotonic() - started < 2.5


async def test_keep_alive_request_in_flight_gets_its_answer_then_close(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port)
    reader, writer = await _connect(sidecar.http_port)
    try:
        writer.write(b"GET /v1.0/invoke/app/method/slow?delay=1 HTTP/1.1\r\nHost: h\r\n\r\n")
        await _wait_until(lambda: bool(echo_app.seen))
        stopping = asyncio.create_task(sidecar.stop(grace=5))
        data, closed = await _read_to_eof(reader, 4)
        async with asyncio.timeout(3):
            await stopping
    finally:
        writer.close()
    assert closed, data
    responses = parse_responses(data)
    assert len(responses) == 1, data
    assert responses[0].status == 200
    assert responses[0].complete
    assert (responses[0].header("connection") or "").lower() == "close", responses[0]


async def test_stop_with_short_grace_aborts_slow_request(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port)
    reader, writer = await _connect(sidecar.http_port)
    try:
        writer.write(
            b"GET /v1.0/invoke/app/method/slow?delay=2.5 HTTP/1.1\r\nHost: h\r\n"
            b"Connection: close\r\n\r\n"
        )
        await _wait_until(lambda: bool(echo_app.seen))
        started = time.monotonic()
        async with asyncio.timeout(3):
            await sidecar.stop(grace=0.5)
        elapsed = time.monotonic() - started
        data, closed = await _read_to_eof(reader, 1.5)
    finally:
        writer.close()
    assert 0.4 <= elapsed < 1.5, elapsed
    assert closed, "the client connection was not closed when the grace period ended"
    assert all(not r.complete for r in parse_responses(data)), data


async def test_stop_with_zero_grace_closes_everything_at_once(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port)
    task = asyncio.create_task(
        request(sidecar.http_port, "GET", "/v1.0/invoke/app/method/s?delay=2", timeout=3)
    )
    await _wait_until(lambda: bool(echo_app.seen))
    started = time.monotonic()
    async with asyncio.timeout(2):
        await sidecar.stop(grace=0)
    assert time.monotonic() - started < 1.0
    # The client sees the connection close without an answer, long before its own timeout.
    with pytest.raises((AssertionError, ConnectionResetError)):
        async with asyncio.timeout(1):
            await task
