"""The HTTP/1.1 server plumbing of the benchmark's own apps (flaky_app.py, collector.py).

One process, asyncio.Protocol on uvloop with httptools: keep-alive, pipelining-safe (answers
are written in request order; all answers to one read go out in one write), HTTP/1.0 and
``Connection: close`` honoured, 400 and close on a parse error, reading paused while the
socket's send buffer is full. An app subclasses HttpConnection and only says what a request
gets (``answer``): one method call per request on top of the parser's callbacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar, cast

import httptools

BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class CountsConnections(Protocol):
    """The app state shared by every connection: at least the connections accepted."""

    connections: int


AppT = TypeVar("AppT", bound=CountsConnections)


class HttpConnection(asyncio.Protocol, Generic[AppT]):
    """One client connection: parse requests, answer each when its message is complete."""

    def __init__(self, app: AppT) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.out: list[bytes] = []
        self.closing = False
        self.transport: asyncio.Transport | None = None

    def answer(self, path: bytes, close: bool) -> bytes:
        """The complete response to the request just parsed (``path`` without its query
        string); ``close``: the response must say ``Connection: close``."""
        raise NotImplementedError

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.app.connections += 1

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            # Also raised for bytes after a request that closes the connection: ignored.
            if not self.closing:
                self.out.append(BAD_REQUEST)
                self.closing = True
        transport = self.transport
        if transport is None:
            return
        if self.out:
            transport.write(self.out[0] if len(self.out) == 1 else b"".join(self.out))
            self.out.clear()
        if self.closing:
            transport.close()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        if self.closing:
            return
        close = not self.parser.should_keep_alive()
        self.out.append(self.answer(self.url.split(b"?", 1)[0], close))
        if close:
            self.closing = True


async def serve(
    connection: Callable[[], asyncio.Protocol], port: int, host: str = "127.0.0.1"
) -> None:
    """Listen on ``host:port`` with a ``connection()`` per client until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(connection, host, port, backlog=4096)
    async with server:
        await server.serve_forever()
