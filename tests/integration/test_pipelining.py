"""Ordering: pipelined, sequential and concurrent requests each get their own answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.integration.conftest import EchoApp, SidecarFactory, parse_responses
from tests.integration.rawhttp import RawClient, exchange, get, ok

INVOKE = "/v1.0/invoke/app/method"
TIMEOUT = 10.0


def post(target: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode("latin-1") + body


def post_chunked(target: str, body: bytes) -> bytes:
    head = f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]) if p)
    return head.encode() + chunks + b"0\r\n\r\n"


async def read_all(port: int, data: bytes, *, timeout: float = TIMEOUT) -> bytes:
    """Write everything in one go, read until the server closes."""
    raw, error = await exchange(port, data, timeout=timeout)
    if error is not None:
        raise error
    return raw


class KeepAliveClient(RawClient):
    """Reads exactly one Content-Length/chunked response at a time from a kept connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.buffer = b""

    async def roundtrip(self, data: bytes) -> Any:
        await self.send(data)
        async with asyncio.timeout(TIMEOUT):
            while True:
                responses = parse_responses(self.buffer) if self.buffer else []
                if responses and responses[0].complete:
                    assert len(responses) == 1, f"unsolicited extra response: {self.buffer!r}"
                    self.buffer = b""
                    return responses[0]
                chunk = await self.reader.read(65536)
                assert chunk, f"closed by the server; pending {self.buffer!r}"
                self.buffer += chunk


async def keep_alive_client(port: int) -> KeepAliveClient:
    return await KeepAliveClient.open(port)


async def test_pipelined_mixed_requests_are_answered_in_order(
    sidecar: Any, echo_app: EchoApp
) -> None:
    body_a = b"first body \x00\xff" * 50
    body_b = b"second body" * 300
    data = b"".join(
        [
            get(f"{INVOKE}/one?n=1"),
            post(f"{INVOKE}/two", body_a),
            get("/v1.0/healthz"),
            get("/v1.0/invoke/a.b.c/method/x"),
            post_chunked(f"{INVOKE}/three", body_b),
            get("/"),
            get(f"{INVOKE}/four?size=2000"),
            get(f"{INVOKE}/five", "Connection: close\r\n"),
        ]
    )
    raw = await read_all(sidecar.http_port, data)
    responses = parse_responses(raw)
    assert [r.status for r in responses] == [200, 200, 204, 500, 200, 404, 200, 200], raw[:2000]
    assert all(r.complete for r in responses)
    first, second, health, bad_id, third, no_target, fourth, fifth = responses
    assert first.json()["path"] == "/one?n=1"
    assert second.json()["path"] == "/two"
    assert second.json()["body"] == body_a.decode("latin-1")
    assert health.body == b""
    assert "invalid app id" in json.loads(bad_id.body)["message"]
    assert third.json()["path"] == "/three"
    assert third.json()["body"] == body_b.decode()
    assert json.loads(no_target.body)["errorCode"] == "ERR_DIRECT_INVOKE"
    assert fourth.body == (b"0123456789abcdef" * 200)[:2000]
    assert fifth.json()["path"] == "/five"
    assert [p for _, p in echo_app.seen] == [
        "/one?n=1",
        "/two",
        "/three",
        "/four?size=2000",
        "/five",
    ]


async def test_pipelined_requests_behind_a_slow_one_are_answered_in_order(sidecar: Any) -> None:
    data = b"".join(
        [
            get(f"{INVOKE}/slow?delay=0.3"),
            get(f"{INVOKE}/fast1"),
            post(f"{INVOKE}/fast2", b"body two"),
            get(f"{INVOKE}/slow2?delay=0.1"),
            get(f"{INVOKE}/last", "Connection: close\r\n"),
        ]
    )
    raw = await read_all(sidecar.http_port, data)
    responses = parse_responses(raw)
    assert [r.status for r in responses] == [200] * 5, raw[:2000]
    assert [r.json()["path"] for r in responses] == [
        "/slow?delay=0.3",
        "/fast1",
        "/fast2",
        "/slow2?delay=0.1",
        "/last",
    ]
    assert responses[2].json()["body"] == "body two"


async def test_pipelined_requests_split_at_odd_points_are_answered_in_order(sidecar: Any) -> None:
    data = b"".join(
        [get(f"{INVOKE}/p{i}") if i % 2 else post(f"{INVOKE}/p{i}", b"b%d" % i) for i in range(10)]
    ) + get(f"{INVOKE}/end", "Connection: close\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.http_port)
    try:
        for start in range(0, len(data), 37):
            writer.write(data[start : start + 37])
            await writer.drain()
            await asyncio.sleep(0.001)
        async with asyncio.timeout(TIMEOUT):
            raw = await reader.read(-1)
    finally:
        writer.close()
    responses = parse_responses(raw)
    assert [r.json()["path"] for r in responses] == [f"/p{i}" for i in range(10)] + ["/end"]
    for i, response in enumerate(responses[:10]):
        assert response.json()["body"] == ("" if i % 2 else f"b{i}")


async def test_pipelined_request_after_a_malformed_one_is_not_served(
    sidecar: Any, echo_app: EchoApp
) -> None:
    data = (
        get(f"{INVOKE}/good")
        + b"GET /v1.0/invoke/app/method/bad HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n"
        + get(f"{INVOKE}/after-bad")
    )
    raw = await read_all(sidecar.http_port, data, timeout=5.0)
    responses = parse_responses(raw)
    # The malformed one gets a 400 or just the close (nothing after it is answered).
    assert [r.status for r in responses] in ([200], [200, 400]), raw
    assert responses[0].json()["path"] == "/good"
    assert b"after-bad" not in raw
    await asyncio.sleep(0.1)
    assert [p for _, p in echo_app.seen] == ["/good"]


async def test_connection_reused_for_100_sequential_requests_gets_each_own_answer(
    sidecar: Any,
) -> None:
    conn = await keep_alive_client(sidecar.http_port)
    try:
        for i in range(100):
            if i % 3 == 0:
                response = await conn.roundtrip(post(f"{INVOKE}/seq/{i}", b"body-%d" % i))
            elif i % 3 == 1:
                response = await conn.roundtrip(get(f"{INVOKE}/seq/{i}?chunked=1&size={i * 37}"))
            else:
                response = await conn.roundtrip(get(f"{INVOKE}/seq/{i}"))
            assert response.status == 200, (i, response)
            if i % 3 == 1:
                assert response.body == (b"0123456789abcdef" * (i * 37 // 16 + 1))[: i * 37], i
            else:
                echo = response.json()
                assert echo["path"] == f"/seq/{i}", (i, echo["path"])
                assert echo["body"] == (f"body-{i}" if i % 3 == 0 else "")
    finally:
        await conn.close()


async def test_concurrent_clients_each_get_exactly_their_own_echo(sidecar: Any) -> None:
    async def one_client(n: int) -> list[str]:
        conn = await keep_alive_client(sidecar.http_port)
        problems: list[str] = []
        try:
            for i in range(20):
                body = f"client {n} request {i} ".encode() * (1 + (n + i) % 7)
                response = await conn.roundtrip(post(f"{INVOKE}/c{n}/r{i}?n={n}", body))
                echo = response.json()
                if (
                    response.status != 200
                    or echo["path"] != f"/c{n}/r{i}?n={n}"
                    or echo["body"] != body.decode()
                ):
                    problems.append(
                        f"client {n} request {i} got {echo['path']} {echo['body'][:40]}"
                    )
        finally:
            await conn.close()
        return problems

    async with asyncio.timeout(60):
        results = await asyncio.gather(*(one_client(n) for n in range(50)))
    problems = [p for r in results for p in r]
    assert not problems, problems[:10]


async def test_concurrent_pipelining_clients_each_get_their_own_answers(sidecar: Any) -> None:
    async def one_client(n: int) -> None:
        data = b"".join(post(f"{INVOKE}/pc{n}/{i}", b"%d-%d" % (n, i)) for i in range(10))
        data += get(f"{INVOKE}/pc{n}/end", "Connection: close\r\n")
        raw = await read_all(sidecar.http_port, data)
        responses = parse_responses(raw)
        assert [r.json()["path"] for r in responses] == [f"/pc{n}/{i}" for i in range(10)] + [
            f"/pc{n}/end"
        ]
        assert [r.json()["body"] for r in responses[:10]] == [f"{n}-{i}" for i in range(10)]

    async with asyncio.timeout(60):
        await asyncio.gather(*(one_client(n) for n in range(20)))


async def test_pipelined_requests_to_a_slow_raw_upstream_keep_their_order(
    make_sidecar: SidecarFactory,
) -> None:
    """Each pipelined request is answered by the upstream out of its own delay; order must hold."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ")[1]
                delay = 0.2 if target.endswith(b"0") else 0.0
                await asyncio.sleep(delay)
                body = b"answer for " + target
                writer.write(ok(body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        sidecar = await make_sidecar(app_port=port)
        data = b"".join(get(f"{INVOKE}/r{i}") for i in range(6))
        data += get(f"{INVOKE}/r6", "Connection: close\r\n")
        raw = await read_all(sidecar.http_port, data)
        responses = parse_responses(raw)
        assert [r.body for r in responses] == [b"answer for /r%d" % i for i in range(7)]
    finally:
        server.close()
