"""Back-pressure on both legs: big bodies stream through with bounded buffers.

The sidecar runs in this process, so memory is checked two ways: its
transports' write buffers are sampled during each transfer (they must stay
under a small bound), and the process's peak RSS must not grow by anything
like the size of the body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import resource
import socket
import time
from typing import Any

from tests.integration.conftest import SidecarFactory
from tests.integration.rawhttp import Handler, RawUpstream, ok, read_head, read_response_head

INVOKE = "/v1.0/invoke/app/method"
MIB = 1024 * 1024
BIG = 256 * MIB
CHUNK = MIB
BUFFER_BOUND = 1 * MIB
RSS_GROWTH_BOUND = 100 * MIB


def block(i: int, base: bytes) -> bytes:
    """Chunk i of a deterministic, non-repeating stream."""
    return i.to_bytes(8, "big") + base[8:]


BASE = hashlib.shake_256(b"fastproxy flow control").digest(CHUNK)


def expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    for i in range(size // CHUNK):
        digest.update(block(i, BASE))
    return digest.hexdigest()


def max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class BufferSampler:
    """Samples the sidecar's client-side and upstream-side write buffers every few ms."""

    def __init__(self, sidecar: Any, interval: float = 0.005) -> None:
        self.sidecar = sidecar
        self.interval = interval
        self.samples = 0
        self.upstream_samples = 0
        self.max_downstream = 0
        self.max_upstream = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        context = self.sidecar.context
        if context is None:
            return
        self.samples += 1
        for conn in list(context.connections):
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                self.max_downstream = max(self.max_downstream, transport.get_write_buffer_size())
            # The upstream connection serving this client's exchange, if one is attached.
            upstream = getattr(getattr(conn, "_active", None), "_conn", None)
            up_transport = getattr(upstream, "transport", None)
            if up_transport is not None and not up_transport.is_closing():
                self.upstream_samples += 1
                self.max_upstream = max(self.max_upstream, up_transport.get_write_buffer_size())

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def __enter__(self) -> BufferSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def assert_bounded(self, *, upstream_seen: bool = False) -> None:
        assert self.samples > 10, f"only {self.samples} samples"
        if upstream_seen:
            assert self.upstream_samples > 0, "never saw the upstream connection"
        assert self.max_downstream <= BUFFER_BOUND, f"client write buffer {self.max_downstream}"
        assert self.max_upstream <= BUFFER_BOUND, f"upstream write buffer {self.max_upstream}"


# Unlike the other raw-upstream tests, a head too long for the reader
# (LimitOverrunError) counts as an upstream error here.
BENIGN = (ConnectionError, asyncio.IncompleteReadError)


async def send_streamed_response(
    writer: asyncio.StreamWriter, size: int, progress: list[int]
) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    for i in range(size // CHUNK):
        writer.write(block(i, BASE))
        await writer.drain()
        progress[0] += CHUNK


def streaming_app(size: int, progress: list[int]) -> Handler:
    """An upstream that reads one request head and answers with `size` bytes of the stream."""

    async def app(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: RawUpstream
    ) -> None:
        await read_head(reader)
        await send_streamed_response(writer, size, progress)

    return app


# -- request body: client → sidecar → app ----------------------------------------------------


async def test_256_mib_request_body_streams_to_app_with_bounded_buffers(
    make_sidecar: SidecarFactory,
) -> None:
    async def hashing_app(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: RawUpstream
    ) -> None:
        _, headers = await read_head(reader)
        remaining = int(headers["content-length"])
        digest = hashlib.sha256()
        received = 0
        while remaining:
            data = await reader.read(min(remaining, CHUNK))
            if not data:
                raise ConnectionError("body cut short")
            digest.update(data)
            remaining -= len(data)
            received += len(data)
        body = json.dumps({"length": received, "sha256": digest.hexdigest()}).encode()
        writer.write(ok(body))
        await writer.drain()

    expected = expected_digest(BIG)
    rss_before = max_rss()
    async with RawUpstream(hashing_app, benign=BENIGN) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port, max_body_size=2 * BIG)
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.http_port)
        try:
            with BufferSampler(sidecar) as sampler:
                async with asyncio.timeout(60):
                    writer.write(
                        b"POST " + INVOKE.encode() + b"/upload HTTP/1.1\r\nHost: a\r\n"
                        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                        % BIG
                    )
                    for i in range(BIG // CHUNK):
                        writer.write(block(i, BASE))
                        await writer.drain()
                    status, headers = await read_response_head(reader)
                    body = await reader.readexactly(int(headers["content-length"]))
        finally:
            writer.close()
        assert not upstream.errors, upstream.errors
    assert status == 200, body
    answer = json.loads(body)
    assert answer == {"length": BIG, "sha256": expected}
    sampler.assert_bounded(upstream_seen=True)
    growth = max_rss() - rss_before
    assert growth < RSS_GROWTH_BOUND, f"peak RSS grew by {growth / MIB:.0f} MiB"


async def test_256_mib_chunked_request_body_streams_to_app_intact(
    make_sidecar: SidecarFactory,
) -> None:
    async def hashing_app(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: RawUpstream
    ) -> None:
        _, headers = await read_head(reader)
        digest = hashlib.sha256()
        received = 0
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                while size:
                    data = await reader.read(min(size, CHUNK))
                    if not data:
                        raise ConnectionError("body cut short")
                    digest.update(data)
                    size -= len(data)
                    received += len(data)
                assert await reader.readexactly(2) == b"\r\n"
        else:
            remaining = int(headers["content-length"])
            while remaining:
                data = await reader.read(min(remaining, CHUNK))
                digest.update(data)
                remaining -= len(data)
                received += len(data)
        body = json.dumps({"length": received, "sha256": digest.hexdigest()}).encode()
        writer.write(ok(body))
        await writer.drain()

    size = 64 * MIB
    expected = expected_digest(size)
    async with RawUpstream(hashing_app, benign=BENIGN) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port, max_body_size=2 * size)
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.http_port)
        try:
            with BufferSampler(sidecar) as sampler:
                async with asyncio.timeout(60):
                    writer.write(
                        b"POST " + INVOKE.encode() + b"/upload HTTP/1.1\r\nHost: a\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n"
                    )
                    for i in range(size // CHUNK):
                        writer.write(b"%x\r\n" % CHUNK + block(i, BASE) + b"\r\n")
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                    status, headers = await read_response_head(reader)
                    body = await reader.readexactly(int(headers["content-length"]))
        finally:
            writer.close()
        assert not upstream.errors, upstream.errors
    assert status == 200, body
    assert json.loads(body) == {"length": size, "sha256": expected}
    sampler.assert_bounded(upstream_seen=True)


# -- response body: app → sidecar → client -----------------------------------------------------


async def test_256_mib_response_streams_to_client_with_bounded_buffers(
    make_sidecar: SidecarFactory,
) -> None:
    progress = [0]

    expected = expected_digest(BIG)
    rss_before = max_rss()
    async with RawUpstream(streaming_app(BIG, progress), benign=BENIGN) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.http_port)
        try:
            with BufferSampler(sidecar) as sampler:
                async with asyncio.timeout(60):
                    writer.write(
                        b"GET " + INVOKE.encode() + b"/download HTTP/1.1\r\nHost: a\r\n\r\n"
                    )
                    status, headers = await read_response_head(reader)
                    assert status == 200
                    assert headers.get("content-length") == str(BIG)
                    digest = hashlib.sha256()
                    received = 0
                    while received < BIG:
                        data = await reader.read(CHUNK)
                        assert data, f"closed after {received} bytes"
                        digest.update(data)
                        received += len(data)
        finally:
            writer.close()
        assert not upstream.errors, upstream.errors
    assert received == BIG
    assert digest.hexdigest() == expected
    sampler.assert_bounded(upstream_seen=True)
    growth = max_rss() - rss_before
    assert growth < RSS_GROWTH_BOUND, f"peak RSS grew by {growth / MIB:.0f} MiB"


async def test_slow_reader_pauses_the_upstream_and_completes_on_resume(
    make_sidecar: SidecarFactory,
) -> None:
    size = 128 * MIB
    progress = [0]

    expected = expected_digest(size)
    async with RawUpstream(streaming_app(size, progress), benign=BENIGN) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", sidecar.http_port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
        try:
            with BufferSampler(sidecar) as sampler:
                async with asyncio.timeout(60):
                    writer.write(b"GET " + INVOKE.encode() + b"/slow HTTP/1.1\r\nHost: a\r\n\r\n")
                    status, headers = await read_response_head(reader)
                    assert status == 200 and headers["content-length"] == str(size)
                    digest = hashlib.sha256()
                    received = 0
                    while received < 64 * 1024:
                        data = await reader.read(16 * 1024)
                        assert data
                        digest.update(data)
                        received += len(data)
                    # Stop reading for 2 s.
                    await asyncio.sleep(1.0)
                    sent_mid_pause = progress[0]
                    await asyncio.sleep(1.0)
                    sent_end_pause = progress[0]
                    while received < size:
                        data = await reader.read(CHUNK)
                        assert data, f"closed after {received} bytes"
                        digest.update(data)
                        received += len(data)
        finally:
            writer.close()
        assert not upstream.errors, upstream.errors
    assert sent_end_pause - sent_mid_pause <= MIB, (
        f"the upstream kept sending while the client was paused: "
        f"{sent_mid_pause / MIB:.0f} → {sent_end_pause / MIB:.0f} MiB"
    )
    assert sent_end_pause < size // 2, f"{sent_end_pause / MIB:.0f} MiB left the upstream"
    assert received == size and digest.hexdigest() == expected
    sampler.assert_bounded(upstream_seen=True)


async def test_client_that_never_reads_is_disconnected_after_write_timeout(
    make_sidecar: SidecarFactory,
) -> None:
    progress = [0]

    async with RawUpstream(streaming_app(1024 * MIB, progress), benign=BENIGN) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port, write_timeout=2.0)
        # Deadlines are checked by a 1 s tick that starts with the sidecar. Asking
        # just before the first tick catches a stall clock read from that tick's
        # stale time (which would cut the client up to 1 s early).
        await asyncio.sleep(0.9)
        # A small receive buffer makes the sidecar's writes back up (and pause) at once.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", sidecar.http_port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
        try:
            writer.write(b"GET " + INVOKE.encode() + b"/never-read HTTP/1.1\r\nHost: a\r\n\r\n")
            await writer.drain()
            started = time.monotonic()
            context = sidecar.context
            assert context is not None
            async with asyncio.timeout(2.0):
                while not context.connections:
                    await asyncio.sleep(0.001)
            with BufferSampler(sidecar) as sampler:
                async with asyncio.timeout(8.0):
                    while context.connections:
                        await asyncio.sleep(0.05)
            dropped_after = time.monotonic() - started
            # The upstream side is released too.
            async with asyncio.timeout(3.0):
                await upstream.finished.wait()
            # What the client can still read ends well short of the body.
            received = 0
            try:
                async with asyncio.timeout(5.0):
                    while data := await reader.read(CHUNK):
                        received += len(data)
            except ConnectionError:
                pass
        finally:
            writer.close()
    assert 1.8 <= dropped_after <= 4.5, (
        f"disconnected after {dropped_after:.2f}s (write_timeout 2 s)"
    )
    assert received < 1024 * MIB
    assert progress[0] < 512 * MIB
    sampler.assert_bounded()


async def test_slow_but_steady_reader_is_not_cut_by_write_timeout(
    make_sidecar: SidecarFactory,
) -> None:
    """write_timeout is for a client that stops reading, not for one that reads slowly.

    The client reads 128 KiB every 50 ms (~2.5 MiB/s) for ~4 s, twice the write
    timeout; the sidecar's writes stay paused for stretches while the kernel
    buffers drain, but never anywhere near 2 s without progress.
    """
    size = 10 * MIB
    progress = [0]

    expected = expected_digest(size)
    async with RawUpstream(streaming_app(size, progress), benign=BENIGN) as upstream:
        sidecar = await make_sidecar(app_port=upstream.port, write_timeout=2.0)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", sidecar.http_port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
        started = time.monotonic()
        try:
            async with asyncio.timeout(15):
                writer.write(b"GET " + INVOKE.encode() + b"/steady HTTP/1.1\r\nHost: a\r\n\r\n")
                status, _ = await read_response_head(reader)
                assert status == 200
                digest = hashlib.sha256()
                received = 0
                while received < size:
                    data = await reader.read(128 * 1024)
                    assert data, f"disconnected after {received} bytes"
                    digest.update(data)
                    received += len(data)
                    await asyncio.sleep(0.05)
        finally:
            writer.close()
        assert not upstream.errors, upstream.errors
    assert time.monotonic() - started > 3.0, "the reader was not slow enough to test anything"
    assert digest.hexdigest() == expected
