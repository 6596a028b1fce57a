"""Fakes for socket-free protocol tests: recording transports, a dialer, one sidecar rig.

A `Rig` is a `DownstreamProtocol` on a fake client transport, in a real
`SidecarContext` whose app pool holds one idle `UpstreamConnection` on its
own fake transport. Tests feed bytes to either protocol and assert on the
bytes each fake transport was asked to write. Closing a fake transport
reports `connection_lost` on the next loop iteration, as a real one does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from fastproxy.config.model import Config, Resources
from fastproxy.context import SidecarContext
from fastproxy.downstream.protocol import DownstreamProtocol
from fastproxy.upstream.connection import UpstreamConnection
from fastproxy.wire import Clock

DATE = b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
# The app pool's Host line and what a self call adds to every forwarded head.
APP_HOST = b"Host: 127.0.0.1:1\r\n"
CALLER_LINES = (
    b"dapr-caller-app-id: me\r\ndapr-caller-namespace: default\r\ndapr-callee-app-id: me\r\n"
)


class FakeTransport:
    """Records what a protocol asks of its transport."""

    def __init__(self, protocol: asyncio.BaseProtocol | None = None) -> None:
        self.protocol = protocol
        self.written = bytearray()
        self.late_writes = bytearray()  # written after close/abort: should stay empty
        self.calls: list[str] = []
        self.closing = False
        self.aborted = False
        self.lost = False
        self.reading = True
        self.eof_written = False
        self.high_water: int | None = None

    def __repr__(self) -> str:
        return (
            f"<FakeTransport closing={self.closing} aborted={self.aborted} reading={self.reading}>"
        )

    @property
    def data(self) -> bytes:
        return bytes(self.written)

    def take(self) -> bytes:
        """What was written since the last take."""
        data = bytes(self.written)
        self.written.clear()
        return data

    def write(self, data: bytes) -> None:
        (self.late_writes if self.closing else self.written).extend(data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # a plain connection: no TLS, no peer certificate

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")
        self.reading = False

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.calls.append("write_eof")
        self.eof_written = True

    def close(self) -> None:
        self.calls.append("close")
        self._shut()

    def abort(self) -> None:
        self.calls.append("abort")
        self.aborted = True
        self._shut()

    def _shut(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.lose)

    def lose(self, exc: Exception | None = None) -> None:
        """The peer or the kernel ended the connection: report it once."""
        self.closing = True
        if self.lost:
            return
        self.lost = True
        if self.protocol is not None:
            self.protocol.connection_lost(exc)


def wire(conn: UpstreamConnection) -> FakeTransport:
    """The fake transport under an upstream connection."""
    transport = conn.transport
    assert isinstance(transport, FakeTransport)
    return transport


class FakeDialer:
    """Stands in for the event loop a pool dials with: connections are fakes."""

    def __init__(self) -> None:
        self.dials: list[tuple[str, int]] = []
        self.connections: list[UpstreamConnection] = []
        self.error: OSError | None = None

    def create_task(self, coro: Any) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro)

    async def create_connection(
        self, factory: Callable[[], UpstreamConnection], host: str, port: int, **_: Any
    ) -> tuple[FakeTransport, UpstreamConnection]:
        self.dials.append((host, port))
        if self.error is not None:
            raise self.error
        conn = factory()
        transport = FakeTransport(conn)
        conn.connection_made(transport)  # type: ignore[arg-type]
        self.connections.append(conn)
        return transport, conn


async def settle() -> None:
    """Let scheduled callbacks (connection_lost, dials) run."""
    for _ in range(5):
        await asyncio.sleep(0)


class Rig:
    """One client connection to a sidecar for app `me`, with one idle pooled upstream."""

    def __init__(self) -> None:
        clock = Clock()
        clock.date_header = DATE
        self.clock = clock
        # Name resolution from an empty static table: answers without any I/O.
        no_peers = {"nameResolution": {"component": "static", "configuration": {"apps": {}}}}
        self.ctx = SidecarContext(
            Config(app_id="me", app_port=1), Resources(configuration=no_peers), clock
        )
        (self.pool,) = self.ctx.forwarder.pools
        self.dialer = FakeDialer()
        # The one reach into the pool: its dials go to the fake dialer.
        self.pool._loop = self.dialer  # type: ignore[assignment]
        self.downstream = DownstreamProtocol(self.ctx)
        self.client = FakeTransport(self.downstream)
        self.downstream.connection_made(self.client)  # type: ignore[arg-type]
        self.upstream = self.seed()

    @property
    def upstream_wire(self) -> FakeTransport:
        return wire(self.upstream)

    def seed(self) -> UpstreamConnection:
        """One more open, idle connection in the app pool."""
        conn = UpstreamConnection(self.pool)
        conn.connection_made(FakeTransport(conn))  # type: ignore[arg-type]
        self.pool.open_count += 1
        self.pool.release(conn)
        return conn

    def send(self, data: bytes) -> None:
        self.downstream.data_received(data)

    async def settle(self) -> None:
        """Let scheduled work run (a name lookup answers on a later loop turn)."""
        for _ in range(10):
            await asyncio.sleep(0)

    def respond(self, data: bytes, conn: UpstreamConnection | None = None) -> None:
        (conn or self.upstream).data_received(data)


@pytest.fixture(autouse=True)
async def fail_on_loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Exceptions in scheduled callbacks would otherwise only be logged."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)
    assert not errors, f"unhandled loop exceptions: {errors}"


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = Rig()
    yield rig
    await settle()
