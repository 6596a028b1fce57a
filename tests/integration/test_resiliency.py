"""Resiliency policies on real sockets: retries, timeouts, circuit breakers, built-in retry.

Each test writes its own Resiliency resource into a resources folder, starts a
sidecar in front of a `FaultyApp` scripted to fail exactly as the test needs,
and checks what the client receives and what the app saw: how many attempts,
on which connections, with which bodies. Calls go to the sidecar's own app
(`/v1.0/invoke/app/...`) unless the test is about a second hop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import statistics
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httptools
import pytest
import yaml

from fastproxy import Sidecar
from fastproxy.config.errors import ConfigError
from tests.integration.conftest import SidecarFactory
from tests.integration.faulty_app import (
    OK,
    Action,
    FaultyApp,
    answer,
    closed_port,
    describe,
    die,
    partial,
    reset,
    stall,
)
from tests.integration.rawhttp import RawClient, connected

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

TEST_TIMEOUT = 20.0
APP = "/v1.0/invoke/app/method"
# Retry waits short enough not to slow the suite, long enough to be a real timer.
FAST_RETRY = {"policy": "constant", "duration": "10ms"}
# How late an answer the sidecar should give at once may be, and how late a timeout.
PROMPT = 0.2
MARGIN = 0.4


# -- the app, resources and sidecars ----------------------------------------------------------

AppFactory = Callable[..., Awaitable[FaultyApp]]


@pytest.fixture
async def make_app() -> AsyncIterator[AppFactory]:
    """Starts faulty apps; at teardown checks none of them choked, and stops them."""
    started: list[FaultyApp] = []

    async def make(default: Action = OK, port: int = 0) -> FaultyApp:
        app = await FaultyApp(default, port).start()
        started.append(app)
        return app

    yield make
    for app in started:
        await app.stop()
    for app in started:
        assert not app.errors, app.errors


def resiliency(
    policies: dict[str, Any],
    apps: dict[str, Any] | None = None,
    *,
    name: str = "resiliency",
    scopes: list[str] | None = None,
) -> dict[str, Any]:
    """One Resiliency document, as Dapr spells it."""
    spec: dict[str, Any] = {"policies": policies}
    if apps is not None:
        spec["targets"] = {"apps": apps}
    document: dict[str, Any] = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Resiliency",
        "metadata": {"name": name},
        "spec": spec,
    }
    if scopes is not None:
        document["scopes"] = scopes
    return document


def write_resources(folder: Path, *documents: dict[str, Any]) -> Path:
    """Each document in its own YAML file; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, document in enumerate(documents):
        path = folder / f"{number}-{document['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return folder


async def sidecar_for(
    make_sidecar: SidecarFactory,
    app: FaultyApp,
    tmp_path: Path,
    *documents: dict[str, Any],
    **settings: Any,
) -> Sidecar:
    """A sidecar for app id `app` in front of `app`, with `documents` as its resources."""
    folder = write_resources(tmp_path / "resources", *documents)
    return await make_sidecar(app_port=app.port, resources_paths=(str(folder),), **settings)


def pattern(size: int, seed: int = 0) -> bytes:
    """`size` bytes that differ all along, so a shifted or dropped block would show."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


# -- a keep-alive client that reads one response at a time ------------------------------------


class Reply:
    """One response as the client received it, raw bytes included."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.raw = b""
        self.complete = False
        self.elapsed = 0.0

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} after {self.elapsed:.3f}s {self.raw[:300]!r}>"


class _Collector:
    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.reply.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.reply.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.reply.body += body

    def on_message_complete(self) -> None:
        self.reply.complete = True


class Client(RawClient):
    """One client connection; `call` sends a request and reads exactly its response."""

    async def call(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        chunked: bool = False,
        timeout: float = 10.0,
    ) -> Reply:
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{n}: {v}" for n, v in (headers or {}).items()]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        else:
            if body or method in ("POST", "PUT"):
                lines.append(f"Content-Length: {len(body)}")
            payload = body
        started = time.monotonic()
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        reply = await self.read(timeout)
        reply.elapsed = time.monotonic() - started
        return reply

    async def read(self, timeout: float = 10.0) -> Reply:
        """One response; stops early (complete=False) if the connection ends first."""
        reply = Reply()
        collector = _Collector(reply)
        async with asyncio.timeout(timeout):
            while not reply.complete:
                try:
                    chunk = await self.reader.read(65536)
                except ConnectionError:
                    chunk = b""
                if not chunk:
                    break
                reply.raw += chunk
                collector.parser.feed_data(chunk)
        return reply

    async def closed(self, timeout: float = 2.0) -> bool:
        """Whether the sidecar closes this connection (no more bytes) within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                data = await self.reader.read(65536)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        assert not data, f"unexpected bytes on the client connection: {data[:300]!r}"
        return True


async def call(port: int, method: str, target: str, body: bytes = b"", **kw: Any) -> Reply:
    """One request on its own connection."""
    async with connected(Client, port) as client:
        return await client.call(method, target, body, **kw)


def raw_reply(status_line: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """The bytes a keep-alive client expects for an app answer passed through."""
    head = [status_line, f"Content-Length: {len(body)}"] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def assert_invoke_error(reply: Reply, ending: str, app_id: str = "app") -> None:
    assert reply.status == 500, reply
    body = reply.json()
    assert body["errorCode"] == "ERR_DIRECT_INVOKE", body
    assert body["message"].startswith(f"failed to invoke, id: {app_id}, err: "), body
    assert body["message"].endswith(ending), body


def retry_policy(max_retries: int, **extra: Any) -> dict[str, Any]:
    return {**FAST_RETRY, "maxRetries": max_retries, **extra}


def policy(
    *,
    timeout: str | None = None,
    retry: dict[str, Any] | None = None,
    target: str = "app",
    **document: Any,
) -> dict[str, Any]:
    """A Resiliency whose one target (app id `target`) has this timeout and/or retry;
    `document` goes on to `resiliency` (name, scopes)."""
    policies: dict[str, Any] = {}
    chosen: dict[str, str] = {}
    if timeout is not None:
        policies["timeouts"] = {"t": timeout}
        chosen["timeout"] = "t"
    if retry is not None:
        policies["retries"] = {"r": retry}
        chosen["retry"] = "r"
    return resiliency(policies, {target: chosen}, **document)


def constant(duration: str, max_retries: int) -> dict[str, Any]:
    return {"policy": "constant", "duration": duration, "maxRetries": max_retries}


FrontFactory = Callable[..., Awaitable[tuple[FaultyApp, Sidecar]]]


@pytest.fixture(name="front")
def front_fixture(
    make_sidecar: SidecarFactory, make_app: AppFactory, tmp_path: Path
) -> FrontFactory:
    """`await front(*documents, default=..., **settings)`: a faulty app answering
    `default` unless scripted, and a sidecar in front of it with `documents`."""

    async def make(
        *documents: dict[str, Any], default: Action = OK, **settings: Any
    ) -> tuple[FaultyApp, Sidecar]:
        app = await make_app(default)
        return app, await sidecar_for(make_sidecar, app, tmp_path, *documents, **settings)

    return make


def assert_answered(reply: Reply, method: str, target: str, body: bytes = b"") -> None:
    """The reply is the app's default 200 for this request, passed on byte for byte."""
    assert reply.raw == raw_reply("HTTP/1.1 200 OK", [], describe(method, target, body)), reply


def assert_outcome(reply: Reply, app: FaultyApp, status: int, attempts: int) -> None:
    """The client got `status`, after the app had seen `attempts` requests in all."""
    assert reply.status == status, reply
    assert len(app.seen) == attempts, app.seen


def trail(app: FaultyApp, *fields: str) -> list[tuple[Any, ...]]:
    """What the app saw: one tuple of the `Seen` fields named, per request."""
    return [tuple(getattr(seen, field) for field in fields) for seen in app.seen]


# == 1. retries on failure statuses ===========================================================


async def test_retry_on_503_delivers_the_same_post_until_the_app_recovers(
    front: FrontFactory,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=retry_policy(3)))
        app.fail(2)
        body = pattern(5000, 1)
        reply = await call(sidecar.http_port, "POST", f"{APP}/orders?id=7", body)
        assert_outcome(reply, app, 200, 3)
        assert reply.body == describe("POST", "/orders?id=7", body)
        assert app.bodies == [body] * 3
        first = app.seen[0]
        for again in app.seen[1:]:
            assert (again.method, again.target, again.headers) == (
                first.method,
                first.target,
                first.headers,
            )


async def test_last_retry_passes_the_apps_own_error_response_unchanged(
    front: FrontFactory,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=retry_policy(1)))
        last_headers = [("Retry-After", "7"), ("X-Attempt", "2"), ("Content-Type", "text/x")]
        app.then(
            answer(503, b"first attempt", (("X-Attempt", "1"),)),
            answer(503, b"second attempt's own body", tuple(last_headers)),
        )
        async with connected(Client, sidecar.http_port) as client:
            reply = await client.call("POST", f"{APP}/x", b"payload")
            assert reply.raw == raw_reply(
                "HTTP/1.1 503 Service Unavailable", last_headers, b"second attempt's own body"
            )
            assert app.bodies == [b"payload", b"payload"]
            # The connection carries on with the next request's own answer.
            again = await client.call("GET", f"{APP}/next")
            assert again.status == 200, again
            assert again.body == describe("GET", "/next", b"")
        assert len(app.seen) == 3


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        pytest.param(503, False, id="503-outside-500-502"),
        pytest.param(502, True, id="502-inside"),
        pytest.param(500, True, id="500-inside"),
        pytest.param(404, False, id="404-outside"),
    ],
)
async def test_matching_http_status_codes_limit_what_is_retried(
    front: FrontFactory, status: int, retried: bool
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(
            policy(retry=retry_policy(3, matching={"httpStatusCodes": "500-502"}))
        )
        app.fail(1, status)
        reply = await call(sidecar.http_port, "POST", f"{APP}/m", b"body")
        if retried:
            assert_outcome(reply, app, 200, 2)
        else:
            assert_outcome(reply, app, status, 1)
            assert reply.body == b"failure %d" % status


async def test_exponential_retry_waits_about_half_a_second_first(front: FrontFactory) -> None:
    """Dapr's exponential back-off starts at 500 ms, spread by +-50 %."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(
            policy(retry={"policy": "exponential", "maxInterval": "1s", "maxRetries": 1})
        )
        app.fail(1)
        reply = await call(sidecar.http_port, "GET", f"{APP}/e")
        assert_outcome(reply, app, 200, 2)
        assert 0.25 <= reply.elapsed < 0.75 + MARGIN, reply


async def test_dropped_failure_framed_by_the_apps_close_is_retried_on_a_new_connection(
    front: FrontFactory,
) -> None:
    """A 503 without Content-Length ends where the app closes: read to that end, dropped."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=retry_policy(1)))
        app.then(answer(503, b"no length " * 500, eof_framed=True))
        async with connected(Client, sidecar.http_port) as client:
            assert_answered(await client.call("PUT", f"{APP}/eof", b"v"), "PUT", "/eof", b"v")
            again = await client.call("GET", f"{APP}/again")
            assert again.body == describe("GET", "/again", b"")
        assert trail(app, "conn", "target") == [(1, "/eof"), (2, "/eof"), (2, "/again")]


async def test_head_request_is_retried_like_any_other(front: FrontFactory) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=retry_policy(1)))
        app.then(answer(503, b"unavailable"), answer(200, b"twelve bytes"))
        async with connected(Client, sidecar.http_port) as client:
            await client.send(b"HEAD /v1.0/invoke/app/method/h HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await client.reader.readuntil(b"\r\n\r\n")
            assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"
            assert_answered(await client.call("GET", f"{APP}/after"), "GET", "/after")
        assert trail(app, "method", "conn") == [("HEAD", 1), ("HEAD", 1), ("GET", 1)]


async def test_client_leaving_during_the_backoff_cancels_the_retry(front: FrontFactory) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=constant("400ms", 3)))
        app.fail(1)
        client = await Client.open(sidecar.http_port)
        await client.send(b"GET /v1.0/invoke/app/method/gone HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.15)
        assert len(app.seen) == 1
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.close()  # a reset: the client is gone, not half-closed
        await asyncio.sleep(0.6)
        assert len(app.seen) == 1
        # The sidecar is fine: the next call is retried as usual.
        app.fail(1)
        reply = await call(sidecar.http_port, "GET", f"{APP}/next")
        assert_outcome(reply, app, 200, 3)


# == 2. no retry can deliver a request twice that cannot be replayed whole ===================


async def test_chunked_post_getting_503_is_not_retried(front: FrontFactory) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=retry_policy(5)))
        app.fail(3)
        body = pattern(3000, 2)
        reply = await call(sidecar.http_port, "POST", f"{APP}/stream", body, chunked=True)
        assert reply.status == 503, reply
        assert reply.body == b"failure 503"
        assert app.bodies == [body]
        assert app.seen[0].header("Transfer-Encoding") == "chunked"


@pytest.mark.parametrize(
    ("size", "retried"),
    [
        pytest.param(64 * 1024, True, id="64KiB-retried"),
        pytest.param(64 * 1024 + 1, False, id="64KiB+1-not-retried"),
        pytest.param(1024 * 1024, False, id="1MiB-not-retried"),
    ],
)
async def test_only_bodies_up_to_64kib_are_retried(
    front: FrontFactory, size: int, retried: bool
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=retry_policy(5)))
        app.fail(1)
        body = pattern(size, 3)
        reply = await call(sidecar.http_port, "PUT", f"{APP}/big", body)
        if retried:
            assert reply.status == 200, reply
            assert reply.body == describe("PUT", "/big", body)
            assert app.bodies == [body, body]
        else:
            assert reply.status == 503, reply
            assert app.bodies == [body]


# == 3. timeouts ==============================================================================


@pytest.mark.parametrize(
    "late",
    [
        pytest.param(stall(), id="never-answers"),
        pytest.param(answer(200, b"LATE ANSWER", delay=0.8), id="answers-too-late"),
    ],
)
async def test_timeout_answers_deadline_exceeded_and_closes_the_stalled_connection(
    front: FrontFactory, late: Action
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(timeout="300ms"))
        app.then(late)
        async with connected(Client, sidecar.http_port) as client:
            reply = await client.call("POST", f"{APP}/slow", b"first")
            assert_invoke_error(reply, "context deadline exceeded")
            assert 0.3 <= reply.elapsed < 0.3 + MARGIN, reply
            await app.wait_closed(1)
            # The next request on the same client connection: its own answer, new connection.
            assert_answered(await client.call("GET", f"{APP}/next"), "GET", "/next")
            await asyncio.sleep(0.6)  # past the late answer's time: nothing else arrives
            assert_answered(await client.call("GET", f"{APP}/third"), "GET", "/third")
        assert trail(app, "conn", "target") == [(1, "/slow"), (2, "/next"), (2, "/third")]


async def test_timeout_with_retry_gets_the_next_attempts_answer(front: FrontFactory) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(timeout="300ms", retry=retry_policy(2)))
        app.then(stall())
        body = pattern(2000, 4)
        reply = await call(sidecar.http_port, "POST", f"{APP}/s", body)
        assert reply.status == 200, reply
        assert reply.body == describe("POST", "/s", body)
        assert 0.3 <= reply.elapsed < 0.3 + MARGIN, reply
        assert trail(app, "conn", "body") == [(1, body), (2, body)]
        await app.wait_closed(1)


async def test_timeout_is_per_attempt_and_every_attempt_may_time_out(front: FrontFactory) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(timeout="200ms", retry=retry_policy(2)), default=stall())
        reply = await call(sidecar.http_port, "GET", f"{APP}/never")
        assert_invoke_error(reply, "context deadline exceeded")
        # Three attempts of 200 ms each, not one deadline for the whole call.
        assert 0.6 <= reply.elapsed < 0.6 + MARGIN, reply
        assert [s.conn for s in app.seen] == [1, 2, 3]
        for conn in (1, 2, 3):
            await app.wait_closed(conn)


# == 4. connections that break ================================================================


@pytest.mark.parametrize(
    "breaks",
    [
        pytest.param(reset(), id="reset-mid-request"),
        pytest.param(die(503, b"x" * 100, sent=10), id="dies-mid-response"),
        pytest.param(die(503, b"x" * 100, sent=0), id="dies-after-head"),
    ],
)
async def test_broken_attempt_before_any_byte_reached_the_client_is_retried(
    front: FrontFactory, breaks: Action
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=retry_policy(1)))
        app.then(breaks)
        body = pattern(1000, 5)
        async with connected(Client, sidecar.http_port) as client:
            assert_answered(await client.call("POST", f"{APP}/b", body), "POST", "/b", body)
            # Exactly one retry, and one answer for one request: nothing more follows.
            assert not await client.closed(0.3)
            assert trail(app, "conn", "target") == [(1, "/b"), (2, "/b")]
            assert_answered(await client.call("GET", f"{APP}/after"), "GET", "/after")
        assert [s.conn for s in app.seen] == [1, 2, 2]
        assert app.bodies[1] == body
        assert app.bodies[0] in (None, body)


async def assert_cut_off(client: Client, target: str, status: int, body: bytes) -> None:
    """A GET whose reply stops after `body` with `status`, and the client connection closes."""
    reply = await client.call("GET", target)
    assert reply.status == status, reply
    assert not reply.complete
    assert reply.body == body
    assert await client.closed()


# A sidecar whose target has no retry policy: none at all, or a timeout only.
WITHOUT_RETRY_POLICY = pytest.mark.parametrize(
    "documents",
    [
        pytest.param((), id="no-resiliency"),
        pytest.param((policy(timeout="5s"),), id="timeout-only"),
    ],
)


@WITHOUT_RETRY_POLICY
async def test_reset_without_retry_policy_is_500_and_the_connection_goes_on(
    front: FrontFactory, documents: tuple[dict[str, Any], ...]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(*documents)
        app.then(reset())
        async with connected(Client, sidecar.http_port) as client:
            reply = await client.call("POST", f"{APP}/r", b"data")
            assert reply.status == 500, reply
            assert reply.json()["errorCode"] == "ERR_DIRECT_INVOKE", reply
            again = await client.call("POST", f"{APP}/after", b"more")
            assert_answered(again, "POST", "/after", b"more")
        assert trail(app, "conn", "target") == [(1, "/r"), (2, "/after")]


@WITHOUT_RETRY_POLICY
async def test_response_dying_after_its_head_went_out_cuts_the_client_off(
    front: FrontFactory, documents: tuple[dict[str, Any], ...]
) -> None:
    """Without a retry the head is passed on at once; a body that never ends cannot be
    completed, so the client connection is closed rather than left waiting or reused."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(*documents)
        app.then(answer(200, b"warm"), die(503, b"y" * 100, sent=10))
        async with connected(Client, sidecar.http_port) as client:
            assert (await client.call("GET", f"{APP}/warm")).body == b"warm"
            await assert_cut_off(client, f"{APP}/dies", 503, b"y" * 10)
        assert_answered(await call(sidecar.http_port, "GET", f"{APP}/after"), "GET", "/after")
        assert trail(app, "conn", "target") == [(1, "/warm"), (1, "/dies"), (2, "/after")]


async def test_pooled_connection_not_reused_after_partial_response(front: FrontFactory) -> None:
    """A 503 that stops mid-body and stalls: the timeout ends it, the retry goes to a new
    connection, and the stalled one is closed for good (the app counts connections)."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(timeout="300ms", retry=retry_policy(1)))
        app.then(answer(200, b"warm"), partial(503, b"z" * 100, sent=40))
        async with connected(Client, sidecar.http_port) as client:
            assert (await client.call("GET", f"{APP}/warm")).body == b"warm"
            assert_answered(await client.call("GET", f"{APP}/p"), "GET", "/p")
            await app.wait_closed(1)
            for n in range(3):
                more = await client.call("GET", f"{APP}/more{n}")
                assert more.body == describe("GET", f"/more{n}", b"")
        assert [s.conn for s in app.seen] == [1, 1, 2, 2, 2, 2]
        assert app.connections == 2


async def test_partial_response_passed_on_then_timed_out_closes_both_sides(
    front: FrontFactory,
) -> None:
    """The head reached the client, so the attempt cannot be retried: the client's
    connection is cut, and the upstream connection that stalled mid-body is not pooled."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(timeout="300ms", retry=retry_policy(1)))
        app.then(partial(200, b"w" * 100, sent=30))
        async with connected(Client, sidecar.http_port) as client:
            await assert_cut_off(client, f"{APP}/p", 200, b"w" * 30)
        await app.wait_closed(1)
        after = await call(sidecar.http_port, "GET", f"{APP}/after")
        assert after.body == describe("GET", "/after", b"")
        assert trail(app, "conn", "target") == [(1, "/p"), (2, "/after")]


async def test_dropped_failure_is_read_to_its_end_and_its_connection_reused(
    front: FrontFactory,
) -> None:
    """A 503 the sidecar will retry, whose body arrives in two parts: none of it reaches
    the client, and the connection it came on serves the retry."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=retry_policy(1)))
        app.then(partial(503, b"BAD!" * 1000, sent=1000, rest_after=0.1))
        async with connected(Client, sidecar.http_port) as client:
            assert_answered(await client.call("POST", f"{APP}/d", b"abc"), "POST", "/d", b"abc")
            assert not await client.closed(0.2)
        assert trail(app, "conn", "body") == [(1, b"abc"), (1, b"abc")]


@pytest.mark.parametrize(
    ("duration", "order"),
    [
        ("0s", [b"first", b"first", b"second"]),
        ("100ms", [b"first", b"second", b"first"]),
    ],
    ids=["at-once-keeps-the-connection", "after-a-wait-gives-it-back"],
)
async def test_retry_at_once_goes_out_on_the_connection_that_answered(
    front: FrontFactory, duration: str, order: list[bytes]
) -> None:
    """With one upstream connection allowed and a second request waiting for it, a retry
    due at once is sent on the connection whose dropped 503 was just read (ahead of the
    waiting request); a retry after a backoff gives the connection to the waiter first."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=constant(duration, 1)), upstream_max_connections=1)
        app.then(answer(503, b"busy", delay=0.3))
        first = asyncio.create_task(call(sidecar.http_port, "POST", f"{APP}/r", b"first"))
        await asyncio.sleep(0.1)
        second = await call(sidecar.http_port, "POST", f"{APP}/r", b"second")
        assert second.status == 200, second
        assert (await first).raw.endswith(describe("POST", "/r", b"first"))
        assert [s.body for s in app.seen] == order
        assert {s.conn for s in app.seen} == {1}


async def test_timeout_still_applies_when_a_stale_pooled_connection_is_replayed(
    front: FrontFactory,
) -> None:
    """A GET on a pooled connection the app drops unanswered is sent again on a fresh one
    (fastproxy's own replay of a stale keep-alive connection); that attempt is bounded by
    the timeout like any other."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(timeout="300ms"))
        app.then(answer(200, b"warm"), reset(), stall())
        async with connected(Client, sidecar.http_port) as client:
            assert (await client.call("GET", f"{APP}/warm")).body == b"warm"
            try:
                reply = await client.call("GET", f"{APP}/replayed", timeout=3.0)
            except TimeoutError:
                pytest.fail("no answer 3 s after a 300 ms timeout: the replay has no deadline")
            assert_invoke_error(reply, "context deadline exceeded")
            assert reply.elapsed < 0.3 + MARGIN, reply
        assert trail(app, "conn", "target") == [
            (1, "/warm"),
            (1, "/replayed"),
            (2, "/replayed"),
        ]


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
async def test_app_refusing_connections_is_retried_until_it_listens(
    make_sidecar: SidecarFactory, make_app: AppFactory, tmp_path: Path, retry: bool
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        port = closed_port()
        documents = [policy(retry=constant("200ms", 5))] if retry else []
        folder = write_resources(tmp_path / "resources", *documents)
        sidecar = await make_sidecar(app_port=port, resources_paths=(str(folder),))

        async def listen_later() -> FaultyApp:
            await asyncio.sleep(0.3)
            return await make_app(port=port)

        later = asyncio.create_task(listen_later())
        try:
            reply = await call(sidecar.http_port, "POST", f"{APP}/up", b"b")
        finally:
            app = await later
        if retry:
            assert reply.body == describe("POST", "/up", b"b"), reply
            assert 0.3 <= reply.elapsed < 0.4 + MARGIN, reply
            assert app.bodies == [b"b"]
        else:
            assert_invoke_error(reply, "")
            assert f"err: dial tcp 127.0.0.1:{port}: " in reply.json()["message"], reply
            assert reply.elapsed < PROMPT, reply
            assert app.seen == []


# == 5. circuit breakers ======================================================================

BREAKER = {"trip": "consecutiveFailures >= 2", "timeout": "1s", "maxRequests": 1}


def breaker_resiliency(**target: str) -> dict[str, Any]:
    return resiliency(
        {
            "timeouts": {"short": "200ms"},
            "retries": {"many": retry_policy(5)},
            "circuitBreakers": {"cb": BREAKER},
        },
        {"app": {"circuitBreaker": "cb", **target}},
    )


async def assert_open(port: int, target: str) -> None:
    reply = await call(port, "GET", target)
    assert_invoke_error(reply, "circuit breaker is open")
    assert reply.elapsed < PROMPT, reply


async def trip(port: int, target: str) -> None:
    """Two GETs the app fails (scripted with `fail`): the breaker's trip condition."""
    for _ in range(2):
        reply = await call(port, "GET", target)
        assert (reply.status, reply.body) == (503, b"failure 503"), reply


async def test_breaker_opens_after_two_failures_then_a_probe_closes_it(
    front: FrontFactory,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(breaker_resiliency())
        port = sidecar.http_port
        app.fail(2)
        await trip(port, f"{APP}/a")
        opened = time.monotonic()
        for _ in range(3):
            await assert_open(port, f"{APP}/a")
        assert len(app.seen) == 2  # the app was not touched
        # Breakers are per method: /b is fine all along.
        other = await call(port, "GET", f"{APP}/b")
        assert other.body == describe("GET", "/b", b""), other
        await asyncio.sleep(1.05 - (time.monotonic() - opened))
        probe = await call(port, "GET", f"{APP}/a")
        assert probe.body == describe("GET", "/a", b""), probe
        for _ in range(3):  # closed again: every call reaches the app
            assert (await call(port, "GET", f"{APP}/a")).status == 200
        assert [s.target for s in app.seen] == ["/a", "/a", "/b"] + ["/a"] * 4


async def test_failed_half_open_probe_opens_the_breaker_again(front: FrontFactory) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(breaker_resiliency())
        port = sidecar.http_port
        app.fail(3)
        await trip(port, f"{APP}/a")
        await assert_open(port, f"{APP}/a")
        await asyncio.sleep(1.05)
        probe = await call(port, "GET", f"{APP}/a")
        assert probe.status == 503, probe  # the probe reached the app, and failed
        await assert_open(port, f"{APP}/a")
        assert len(app.seen) == 3


async def test_timeouts_count_as_breaker_failures(front: FrontFactory) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(breaker_resiliency(timeout="short"))
        app.then(stall(), stall())
        for _ in range(2):
            assert_invoke_error(
                await call(sidecar.http_port, "GET", f"{APP}/t"), "context deadline exceeded"
            )
        await assert_open(sidecar.http_port, f"{APP}/t")
        assert len(app.seen) == 2
        for conn in (1, 2):
            await app.wait_closed(conn)


async def test_retries_stop_once_the_breaker_opens(front: FrontFactory) -> None:
    """retry(breaker(attempt)): the second failure trips the breaker, and an open breaker
    is a permanent error, so the third attempt never reaches the app."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(breaker_resiliency(retry="many"), default=answer(503, b"down"))
        reply = await call(sidecar.http_port, "POST", f"{APP}/r", b"x")
        assert_invoke_error(reply, "circuit breaker is open")
        assert app.bodies == [b"x", b"x"]
        await assert_open(sidecar.http_port, f"{APP}/r")
        assert len(app.seen) == 2


async def test_redirect_is_a_success_for_the_breaker(front: FrontFactory) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(breaker_resiliency())
        app.then(answer(503), answer(302, b"", (("Location", "/x"),)), answer(503))
        statuses = [(await call(sidecar.http_port, "GET", f"{APP}/a")).status for _ in range(4)]
        # 503, 302 (resets consecutive failures), 503, then the app's 200: never open.
        assert statuses == [503, 302, 503, 200]
        assert len(app.seen) == 4


async def test_half_open_breaker_lets_one_probe_through_at_a_time(front: FrontFactory) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(breaker_resiliency())
        port = sidecar.http_port
        app.fail(2)
        await trip(port, f"{APP}/a")
        await asyncio.sleep(1.05)
        app.then(answer(200, b"probe", delay=0.4))
        probe = asyncio.create_task(call(port, "GET", f"{APP}/a"))
        await asyncio.sleep(0.1)
        await assert_open(port, f"{APP}/a")  # maxRequests 1: the probe is the only one
        assert (await probe).body == b"probe"
        assert (await call(port, "GET", f"{APP}/a")).status == 200
        assert len(app.seen) == 4


# == 6. which policy applies ==================================================================


@pytest.mark.parametrize("name", ["DefaultAppRetryPolicy", "DefaultRetryPolicy"])
async def test_default_retry_policy_applies_to_an_app_without_a_named_target(
    front: FrontFactory, name: str
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(resiliency({"retries": {name: retry_policy(2)}}))
        app.fail(2)
        reply = await call(sidecar.http_port, "POST", f"{APP}/d", b"q")
        assert reply.body == describe("POST", "/d", b"q"), reply
        assert app.bodies == [b"q"] * 3


@pytest.mark.parametrize(
    ("target", "attempts"),
    [
        pytest.param({"retry": "once"}, 2, id="named-retry"),
        pytest.param({"timeout": "long"}, 1, id="named-without-retry"),
    ],
)
async def test_named_target_policy_wins_over_the_defaults(
    front: FrontFactory, target: dict[str, str], attempts: int
) -> None:
    """A `targets.apps` entry applies whole: fields it leaves out do not come from Default*."""
    async with asyncio.timeout(TEST_TIMEOUT):
        policies = {
            "timeouts": {"long": "5s"},
            "retries": {"DefaultAppRetryPolicy": retry_policy(5), "once": retry_policy(1)},
        }
        app, sidecar = await front(resiliency(policies, {"app": target}))
        app.fail(4)
        reply = await call(sidecar.http_port, "GET", f"{APP}/n")
        assert_outcome(reply, app, 503, attempts)


@pytest.mark.parametrize(
    ("scopes", "applies"),
    [
        pytest.param(["other"], False, id="scoped-to-another-app"),
        pytest.param(["other", "app"], True, id="scoped-to-this-app"),
        pytest.param([], True, id="empty-scopes"),
    ],
)
async def test_scopes_decide_whether_a_resiliency_applies(
    front: FrontFactory, scopes: list[str], applies: bool
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=retry_policy(1), scopes=scopes))
        app.fail(1)
        reply = await call(sidecar.http_port, "GET", f"{APP}/s")
        assert_outcome(reply, app, 200 if applies else 503, 2 if applies else 1)


async def test_target_is_keyed_by_the_app_id_as_the_client_wrote_it(
    front: FrontFactory,
) -> None:
    """As in daprd, a policy for `app` does not cover calls written `app.default`."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app, sidecar = await front(policy(retry=retry_policy(1)))
        app.fail(1)
        reply = await call(sidecar.http_port, "GET", "/v1.0/invoke/app.default/method/q")
        assert_outcome(reply, app, 503, 1)
        app.fail(1)
        reply = await call(sidecar.http_port, "GET", "/v1.0/invoke/app/method/q")
        assert_outcome(reply, app, 200, 3)


# == 7. two instances of b, one of them slow ==================================================

INSTANCE = "X-Instance"
B = "/v1.0/invoke/b/method"


def configuration(name_resolution: dict[str, Any], name: str = "config") -> dict[str, Any]:
    return {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": name},
        "spec": {"nameResolution": name_resolution},
    }


def instance(name: str, delay: float = 0.0) -> Action:
    return answer(200, name.encode(), ((INSTANCE, name),), delay=delay)


async def two_instances(
    make_sidecar: SidecarFactory, make_app: AppFactory, slow: float
) -> tuple[FaultyApp, FaultyApp]:
    """Apps b1 (answers after `slow` s) and b2 (at once), each behind its own sidecar for
    app id "b", both registered in the sqlite registry."""
    b1 = await make_app(instance("b1", slow))
    b2 = await make_app(instance("b2"))
    for app in (b1, b2):
        await make_sidecar(app_id="b", app_port=app.port)
    return b1, b2


async def sidecar_a(
    make_sidecar: SidecarFactory, tmp_path: Path, *documents: dict[str, Any]
) -> Sidecar:
    """The calling sidecar, app id "a" (no app of its own), with `documents` as resources."""
    folder = write_resources(tmp_path / "a", *documents)
    return await make_sidecar(app_id="a", resources_paths=(str(folder),))


def b_within_250ms(max_retries: int) -> dict[str, Any]:
    """A's policy for b: 250 ms an attempt, `max_retries` retries."""
    return policy(target="b", timeout="250ms", retry=retry_policy(max_retries))


@pytest.mark.parametrize(
    ("balancing", "max_retries"),
    [
        pytest.param("roundrobin", 1, id="roundrobin"),
        pytest.param("leastoutstanding", 20, id="p2c"),
    ],
)
async def test_slow_instance_costs_a_timeout_never_a_client_error(
    make_sidecar: SidecarFactory,
    make_app: AppFactory,
    tmp_path: Path,
    balancing: str,
    max_retries: int,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b1, b2 = await two_instances(make_sidecar, make_app, slow=2.0)
        a = await sidecar_a(
            make_sidecar,
            tmp_path,
            configuration({"component": "sqlite", "configuration": {"loadBalancing": balancing}}),
            b_within_250ms(max_retries),
        )
        replies = [await call(a.http_port, "POST", f"{B}/n{i}", b"%d" % i) for i in range(12)]
        assert [(r.status, r.body) for r in replies] == [(200, b"b2")] * 12, replies
        # Round robin: every call lands on b2 at once or after one 250 ms attempt at b1.
        # Random picks (p2c) may meet b1 several times in a row, each time less likely:
        # twelve in a row (1 in 4096) is the bound.
        worst = 0.25 + MARGIN if balancing == "roundrobin" else 12 * 0.26
        assert max(r.elapsed for r in replies) < worst, replies
        assert statistics.median(r.elapsed for r in replies) < 0.25 + MARGIN, replies
        assert b1.seen, "the slow instance was never tried"
        assert sorted(s.body for s in b2.seen) == sorted(b"%d" % i for i in range(12))


async def test_timeout_at_a_cancels_the_attempt_at_b(
    make_sidecar: SidecarFactory, make_app: AppFactory, tmp_path: Path
) -> None:
    """When A gives up on an attempt, the work it started at B stops too: B closes its
    connection to its app (daprd cancels the call's context across the hop), so a
    stalled app cannot pile up connections at B, one per caller timeout."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app_b = await make_app(stall())
        await make_sidecar(app_id="b", app_port=app_b.port)
        a = await sidecar_a(make_sidecar, tmp_path, policy(target="b", timeout="250ms"))
        reply = await call(a.http_port, "GET", f"{B}/stuck")
        assert_invoke_error(reply, "context deadline exceeded", "b")
        assert [s.target for s in app_b.seen] == ["/stuck"]
        await app_b.wait_closed(1, 1.0)


async def test_instance_whose_attempt_timed_out_is_not_busy_for_ever(
    make_sidecar: SidecarFactory, make_app: AppFactory, tmp_path: Path
) -> None:
    """Least-outstanding counts attempts in flight per instance; an attempt ended by the
    timeout must stop counting, or the instance is never picked again once it is fast."""
    async with asyncio.timeout(TEST_TIMEOUT):
        b1, _ = await two_instances(make_sidecar, make_app, slow=2.0)
        a = await sidecar_a(make_sidecar, tmp_path, b_within_250ms(20))
        for i in range(30):
            assert (await call(a.http_port, "GET", f"{B}/w{i}")).body == b"b2"
            if b1.seen:
                break
        assert b1.seen, "b1 was never tried"
        b1.default = instance("b1")  # b1 is fast from now on
        tried = len(b1.seen)
        answered = [(await call(a.http_port, "GET", f"{B}/f{i}")).body for i in range(30)]
        assert set(answered) == {b"b1", b"b2"}, answered
        assert len(b1.seen) > tried


# == 8. Dapr's built-in retry between sidecars ================================================


async def b_comes_up_later(
    make_sidecar: SidecarFactory, app: FaultyApp, port: int, after: float
) -> Sidecar:
    await asyncio.sleep(after)
    return await make_sidecar(app_id="b", app_port=app.port, internal_port=port)


def static_b(port: int) -> dict[str, Any]:
    """A Configuration whose static name resolution puts b's only sidecar at `port`."""
    return configuration(
        {"component": "static", "configuration": {"apps": {"b": [f"127.0.0.1:{port}"]}}}
    )


def assert_b_unreachable(reply: Reply) -> None:
    assert_invoke_error(reply, "", "b")
    assert "no instance of b could be reached" in reply.json()["message"], reply


def built_in(max_retries: int) -> tuple[dict[str, Any], ...]:
    """An override of Dapr's built-in service retries: every 200 ms, `max_retries` times."""
    return (resiliency({"retries": {"DaprBuiltInServiceRetries": constant("200ms", max_retries)}}),)


@pytest.mark.parametrize(
    ("documents", "outcome"),
    [
        pytest.param((), "after-1s", id="no-resiliency"),
        pytest.param(
            (policy(target="c", retry=retry_policy(1)),), "after-1s", id="policy-for-another-target"
        ),
        pytest.param(
            (resiliency({"timeouts": {"DefaultAppTimeoutPolicy": "5s"}}),),
            "after-1s",
            id="default-timeout-policy",
        ),
        pytest.param(
            (resiliency({"retries": {"DefaultAppRetryPolicy": retry_policy(0)}}),),
            "after-1s",
            id="default-retry-policy-no-retries",
        ),
        pytest.param(built_in(5), "sooner", id="built-in-overridden"),
        pytest.param(built_in(0), "sooner", id="built-in-overridden-never-below-3"),
        pytest.param(
            (policy(target="b", retry=retry_policy(0)),), "fails-fast", id="named-target-no-retries"
        ),
        pytest.param(
            (policy(target="b", timeout="5s"),), "fails-fast", id="named-target-timeout-only"
        ),
    ],
)
async def test_built_in_retry_waits_for_a_sidecar_that_comes_up(
    make_sidecar: SidecarFactory,
    make_app: AppFactory,
    tmp_path: Path,
    documents: tuple[dict[str, Any], ...],
    outcome: str,
) -> None:
    """b's only sidecar refuses connections for its first 0.5 s: 1 s x 3 built-in retries
    reach it on the second attempt, unless a `targets.apps.b` policy turns them off."""
    async with asyncio.timeout(TEST_TIMEOUT):
        app_b = await make_app(instance("b"))
        port = closed_port()
        a = await sidecar_a(make_sidecar, tmp_path, static_b(port), *documents)
        coming = asyncio.create_task(b_comes_up_later(make_sidecar, app_b, port, 0.5))
        try:
            reply = await call(a.http_port, "POST", f"{B}/late", b"hello")
        finally:
            await coming
        if outcome == "fails-fast":
            assert_b_unreachable(reply)
            assert reply.elapsed < PROMPT, reply
            assert app_b.seen == []
            return
        assert (reply.status, reply.body) == (200, b"b"), reply
        if outcome == "after-1s":
            assert 0.95 <= reply.elapsed < 1.0 + MARGIN, reply
        else:  # retries every 200 ms: the fourth attempt, the first after b came up
            assert 0.55 <= reply.elapsed < 0.6 + MARGIN, reply
        assert app_b.bodies == [b"hello"]


async def test_built_in_retry_gives_up_after_three_retries(
    make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        a = await sidecar_a(make_sidecar, tmp_path, static_b(closed_port()))
        reply = await call(a.http_port, "GET", f"{B}/never")
        assert_b_unreachable(reply)
        assert 3.0 <= reply.elapsed < 3.0 + MARGIN, reply


# == 9. what the sidecar says about its resiliency, and what stops it ========================


async def test_metadata_lists_the_resiliency_resources_in_scope(front: FrontFactory) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        mine = resiliency(
            {
                "timeouts": {"fast": "1s", "slow": "10s"},
                "retries": {"few": retry_policy(2)},
                "circuitBreakers": {"cb": BREAKER},
            },
            {"app": {"timeout": "fast", "retry": "few", "circuitBreaker": "cb"}, "b": {}},
            name="mine",
        )
        theirs = resiliency({"timeouts": {"x": "1s"}}, name="theirs", scopes=["other"])
        _, sidecar = await front(mine, theirs)
        reply = await call(sidecar.http_port, "GET", "/v1.0/metadata")
        assert reply.status == 200, reply
        assert reply.json()["resiliency"] == [
            {
                "name": "mine",
                "policies": {
                    "timeouts": ["fast", "slow"],
                    "retries": ["few"],
                    "circuitBreakers": ["cb"],
                },
                "targets": {"apps": ["app", "b"]},
            }
        ]


async def test_metadata_has_no_resiliency_section_without_resources(
    front: FrontFactory,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        _, sidecar = await front()
        reply = await call(sidecar.http_port, "GET", "/v1.0/metadata")
        assert "resiliency" not in reply.json(), reply


@pytest.mark.parametrize(
    ("policies", "target", "fragments"),
    [
        pytest.param(
            {"circuitBreakers": {"cb": {"trip": "consecutiveFailures >>> 2"}}},
            {"circuitBreaker": "cb"},
            ["circuit breaker policy 'cb'", "trip 'consecutiveFailures >>> 2'"],
            id="bad-trip-expression",
        ),
        pytest.param(
            {"circuitBreakers": {"cb": {"trip": "nonsense > 2"}}},
            {"circuitBreaker": "cb"},
            ["circuit breaker policy 'cb'", "unknown name 'nonsense'"],
            id="unknown-trip-variable",
        ),
        pytest.param(
            {"retries": {"r": retry_policy(1)}},
            {"retry": "nope"},
            ["targets.apps 'app'", "'nope' is not defined"],
            id="undefined-retry",
        ),
        pytest.param(
            {"timeouts": {"t": "1s"}},
            {"timeout": "missing"},
            ["targets.apps 'app'", "'missing' is not defined"],
            id="undefined-timeout",
        ),
        pytest.param(
            {"timeouts": {"t": "five seconds"}},
            {},
            ["timeout policy 't'", "duration 'five seconds' is malformed"],
            id="bad-duration",
        ),
        pytest.param(
            {"retries": {"r": retry_policy(1, matching={"httpStatusCodes": "500-700"})}},
            {},
            ["retry policy 'r'", "code 700 is outside 100-599"],
            id="status-code-out-of-range",
        ),
    ],
)
async def test_malformed_resiliency_stops_start_up_naming_the_resource(
    make_sidecar: SidecarFactory,
    make_app: AppFactory,
    tmp_path: Path,
    policies: dict[str, Any],
    target: dict[str, str],
    fragments: list[str],
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        app = await make_app()
        document = resiliency(policies, {"app": target}, name="broken")
        with pytest.raises(ConfigError) as info:
            await sidecar_for(make_sidecar, app, tmp_path, document)
        message = str(info.value)
        assert str(tmp_path / "resources" / "0-broken.yaml") in message, message
        assert "Resiliency 'broken'" in message, message
        for fragment in fragments:
            assert fragment in message, message
        assert app.seen == []
