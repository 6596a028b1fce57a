"""A real HTTP/1.1 app on loopback whose every answer a test scripts: the faulty app.

Resiliency tests need an upstream that fails on cue, once or N times, and then
recovers: answer some status, stall, reset the connection mid-request, or die
mid-response. Each request takes the next scripted `Action` (or the default one
once the script is used up) and is recorded with the connection it came on, so a
test can count attempts, compare bodies and tell a reused connection from a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import Literal, Self

Kind = Literal["answer", "stall", "reset", "die", "partial"]


@dataclass(frozen=True, slots=True)
class Action:
    """What the app does with one request (build it with the functions below)."""

    kind: Kind
    status: int = 200
    body: bytes | None = None  # None: describe the request (see `describe`)
    headers: tuple[tuple[str, str], ...] = ()
    delay: float | None = 0.0  # seconds before answering; None (stall): never
    sent: int = 0  # die, partial: how many body bytes go out at first
    rest_after: float | None = None  # partial: seconds until the rest; None: never
    eof_framed: bool = False  # answer: no Content-Length; the body ends when the app closes


def answer(
    status: int = 200,
    body: bytes | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    delay: float = 0.0,
    *,
    eof_framed: bool = False,
) -> Action:
    """Answer `status` after `delay` seconds: a Content-Length body, or with `eof_framed`
    a body that ends where the app closes the connection."""
    return Action("answer", status, body, headers, delay, eof_framed=eof_framed)


def stall() -> Action:
    """Never answer; keep the connection open until the peer closes it."""
    return Action("stall", delay=None)


def reset() -> Action:
    """Read the request head, then reset the connection (RST) without answering."""
    return Action("reset")


def die(status: int = 200, body: bytes = b"0123456789" * 10, sent: int = 10) -> Action:
    """Send the head and `sent` of `len(body)` body bytes, then close the connection."""
    assert 0 <= sent < len(body)
    return Action("die", status, body, sent=sent)


def partial(
    status: int = 200,
    body: bytes = b"0123456789" * 10,
    sent: int = 10,
    rest_after: float | None = None,
) -> Action:
    """Send the head and `sent` body bytes; the rest after `rest_after` s, or never (stall)."""
    assert 0 <= sent < len(body)
    return Action("partial", status, body, sent=sent, rest_after=rest_after)


OK = answer()


def describe(method: str, target: str, body: bytes) -> bytes:
    """The default answer's body: which request it answers."""
    return f"{method} {target} len={len(body)}".encode()


@dataclass(frozen=True, slots=True)
class Seen:
    conn: int  # the connection it came on, numbered from 1 in accept order
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None  # None: the connection was reset before the body was read

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


class FaultyApp:
    """The app; `async with FaultyApp() as app:` or `await app.start()` / `await app.stop()`.

    `then(*actions)` queues actions for the next requests, in order; `default` answers
    the rest and may be changed at any time. `seen` lists every request whose head was
    read, `connections` counts accepted connections, and `closed_by_peer` holds the
    numbers of connections the other side closed (FIN or RST). `errors` collects what
    the app itself could not cope with (bytes arriving while it stalls, bad framing).
    """

    def __init__(self, default: Action = OK, port: int = 0) -> None:
        self.default = default
        self.script: deque[Action] = deque()
        self.port = port  # 0: any free port, known once started
        self.seen: list[Seen] = []
        self.connections = 0
        self.closed_by_peer: set[int] = set()
        self.errors: list[BaseException] = []  # what went wrong in the app itself
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    def __repr__(self) -> str:
        return (
            f"<FaultyApp :{self.port} connections={self.connections} requests={len(self.seen)}"
            f" scripted={len(self.script)} default={self.default.kind}>"
        )

    def then(self, *actions: Action) -> Self:
        self.script.extend(actions)
        return self

    def fail(self, times: int, status: int = 503) -> Self:
        """Answer `status` to the next `times` requests, then recover."""
        return self.then(*[answer(status, b"failure %d" % status)] * times)

    @property
    def bodies(self) -> list[bytes | None]:
        return [seen.body for seen in self.seen]

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_closed(self, conn: int, timeout: float = 2.0) -> None:
        """Until the peer has closed connection `conn`; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while conn not in self.closed_by_peer:
                await asyncio.sleep(0.01)

    # -- one connection ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        self.connections += 1
        conn = self.connections
        try:
            while await self._one_request(conn, reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_peer.add(conn)
        except asyncio.CancelledError:
            pass  # stopped by `stop`
        except Exception as exc:  # reported through .errors
            self.errors.append(exc)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _one_request(
        self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False when the connection is over."""
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                self.closed_by_peer.add(conn)  # a clean end between requests
                return False
            raise
        lines = raw[:-4].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = tuple((n.strip(), v.strip()) for n, _, v in (x.partition(":") for x in lines[1:]))
        action = self.script.popleft() if self.script else self.default
        if action.kind == "reset":
            self.seen.append(Seen(conn, method, target, headers, None))
            _reset(writer)
            return False
        body = await _read_body(reader, {n.lower(): v for n, v in headers})
        self.seen.append(Seen(conn, method, target, headers, body))
        waits = action.delay is None or action.delay > 0
        if waits and await _peer_closes(reader, action.delay):
            self.closed_by_peer.add(conn)
            return False
        content = action.body if action.body is not None else describe(method, target, body)
        close = action.eof_framed or any(
            n.lower() == "connection" and v.lower() == "close" for n, v in headers
        )
        head = [f"HTTP/1.1 {action.status} Scripted"]
        if not action.eof_framed:
            head.append(f"Content-Length: {len(content)}")
        head += [f"{n}: {v}" for n, v in action.headers]
        if close:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if method == "HEAD":
            content = b""  # the head says how long the body would be; none follows
        if action.kind in ("die", "partial"):
            writer.write(data + content[: action.sent])
            await writer.drain()
            if action.kind == "die":
                writer.close()
                return False
            if await _peer_closes(reader, action.rest_after):
                self.closed_by_peer.add(conn)
                return False
            data, content = b"", content[action.sent :]
        writer.write(data + content)
        await writer.drain()
        return not close


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailers
        return b"".join(parts)
    return await reader.readexactly(int(headers.get("content-length", "0")))


async def _peer_closes(reader: asyncio.StreamReader, seconds: float | None) -> bool:
    """Wait `seconds` (None: for ever); True as soon as the peer closes the connection."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionError:
                    return True
                if not chunk:
                    return True
                raise ValueError(f"bytes arrived while a request was pending: {chunk[:100]!r}")
    except TimeoutError:
        return False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), not FIN: the peer sees ECONNRESET."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connects are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
