"""Raw HTTP/1.1 on loopback sockets, shared by the tests that work below any HTTP library.

The hardening, framing, flow-control and pipelining tests need an upstream
that misbehaves exactly as a test says (a hand-written asyncio server) and
clients that send bytes just as the test wrote them. Each file used to carry
its own copy of these; this is the one copy. What only one file relies on
(its own response reader, its own client methods) stays in that file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, Self, TypeVar

# -- a hand-written upstream ------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawUpstream"], Awaitable[None]]


class Request(NamedTuple):
    method: str
    target: str
    headers: list[tuple[str, str]]  # names as sent
    body: bytes


BENIGN_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
)
"""What may end a handler without counting as an error: the peer went away or sent too much."""


class RawUpstream:
    """An HTTP server written by hand, to misbehave exactly as a test needs.

    `handler(reader, writer, upstream)` runs once for each connection, which is
    closed when it returns. `connections` counts connections, `requests` the
    complete requests read by `read_request`, `errors` what handlers raised
    other than `benign` errors; `finished` is set once any handler has ended.
    """

    def __init__(
        self, handler: Handler, *, benign: tuple[type[BaseException], ...] = BENIGN_ERRORS
    ) -> None:
        self.handler = handler
        self.benign = benign
        self.port = 0
        self.connections = 0
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []
        self.finished = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except self.benign:
            pass
        except asyncio.CancelledError:
            pass  # torn down by __aexit__; a cancelled handler task would be reported
        except Exception as exc:  # surfaced by the test through .errors
            self.errors.append(exc)
        finally:
            writer.close()
            self._tasks.discard(task)
            self.finished.set()

    async def read_request(self, reader: asyncio.StreamReader) -> Request:
        """One request (Content-Length or chunked body), recorded in .requests."""
        lines = await read_head_lines(reader)
        method, target, _ = lines[0].split(" ", 2)
        headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
        names = {n.lower(): v for n, v in headers}
        body = b""
        if names.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        elif "content-length" in names:
            body = await reader.readexactly(int(names["content-length"]))
        request = Request(method, target, headers, body)
        self.requests.append(request)
        return request

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=0.5)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        try:
            async with asyncio.timeout(2.0):
                await self._server.wait_closed()
        except TimeoutError:
            pass


def ok(body: bytes, extra: bytes = b"") -> bytes:
    """A 200 with a Content-Length body; `extra` is more header lines, each ending in CRLF."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


# -- raw heads --------------------------------------------------------------------------


async def read_head_lines(reader: asyncio.StreamReader) -> list[str]:
    """A request or response head up to its blank line, as lines of text."""
    raw = await reader.readuntil(b"\r\n\r\n")
    return raw[:-4].decode("latin-1").split("\r\n")


async def read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    """A request or response head: its first line and its headers (lower-case names)."""
    lines = await read_head_lines(reader)
    headers = {n.strip().lower(): v.strip() for n, _, v in (x.partition(":") for x in lines[1:])}
    return lines[0], headers


async def read_response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    first, headers = await read_head(reader)
    return int(first.split(" ")[1]), headers


# -- raw clients ------------------------------------------------------------------------


def get(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode("latin-1")


async def exchange(port: int, data: bytes, *, timeout: float) -> tuple[bytes, Exception | None]:
    """Write everything in one go on a new connection, read until the server closes.

    Returns what came back and the ConnectionError or TimeoutError that cut
    the reading short (None if the server closed the connection).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunks: list[bytes] = []
    error: Exception | None = None
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except (ConnectionError, TimeoutError) as exc:
        error = exc
    finally:
        writer.close()
    return b"".join(chunks), error


class RawClient:
    """One client connection to 127.0.0.1 that sends bytes as given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Self:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


ClientT = TypeVar("ClientT", bound=RawClient)


@asynccontextmanager
async def connected(cls: type[ClientT], port: int) -> AsyncIterator[ClientT]:
    """A `cls` connection for the length of the block, closed after it."""
    conn = await cls.open(port)
    try:
        yield conn
    finally:
        await conn.close()
