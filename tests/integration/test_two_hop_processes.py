"""Sidecar to sidecar between real `fastproxy run` processes on the sqlite default.

Three processes (A, B1, B2) share one XDG_STATE_HOME, hence one registry file,
and pick free internal ports (`--dapr-internal-port 0`); the echo apps behind
them run in the test's loop. Every process is killed when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprHttpError

from tests.integration.conftest import Response, request
from tests.integration.daprsdk import SettingsFactory, close_thread_loop, point_sdk_fixture  # noqa: F401
from tests.integration.ports import free_port
from tests.integration.test_two_hop import (
    INSTANCE_HEADER,
    EchoFactory,
    Instance,
    header_values,
    make_echo_fixture,  # noqa: F401  (provides the `make_echo` fixture)
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
SDK_CALL_TIMEOUT = 20.0
# Variables that would configure a sidecar behind the test's back.
_SIDECAR_ENV = (
    "APP_ID",
    "APP_PORT",
    "DAPR_HTTP_PORT",
    "DAPR_API_TOKEN",
    "APP_API_TOKEN",
    "NAMESPACE",
    "DAPR_HOST_IP",
)


# Times a process is started again on a new port when its free port was taken first.
PORT_RACE_RETRIES = 3


class FastproxyProcess:
    """One `python -m fastproxy run` whose output goes to a file (no pipe can fill up)."""

    def __init__(self, app_id: str, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.app_id = app_id
        self.log_path = log
        self._args = list(args)
        self._env = env
        self._log = log.open("wb")
        self._spawn()

    def _spawn(self) -> None:
        # A free port can be taken by someone else before the child binds it.
        self.http_port = free_port()
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastproxy",
                "run",
                "--app-id",
                self.app_id,
                "--dapr-http-port",
                str(self.http_port),
                "--dapr-listen-addresses",
                "127.0.0.1",
                "--dapr-internal-port",
                "0",
                "--metrics-port",
                "0",
                *self._args,
            ],
            cwd=REPO,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def __repr__(self) -> str:
        return f"<fastproxy {self.app_id} pid={self.popen.pid} port={self.http_port}>"

    @property
    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        respawns = 0
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                if "address already in use" in self.output and respawns < PORT_RACE_RETRIES:
                    respawns += 1
                    self._spawn()
                    continue
                raise AssertionError(f"{self!r} exited {self.popen.returncode}: {self.output}")
            try:
                response = await request(self.http_port, "GET", "/v1.0/healthz", timeout=1.0)
            except (OSError, AssertionError):
                await asyncio.sleep(0.05)
                continue
            if response.status == 204:
                return
        raise AssertionError(f"{self!r} not ready in {timeout}s: {self.output}")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, so its registry row stays behind."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)

    def close(self) -> None:
        self.kill()
        self._log.close()


Spawn = Callable[..., FastproxyProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Starts fastproxy processes sharing one XDG_STATE_HOME; kills them all at the end."""
    state = tmp_path / "state"
    state.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _SIDECAR_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env["XDG_STATE_HOME"] = str(state)
    procs: list[FastproxyProcess] = []

    def start(app_id: str, app_port: int | None, *args: str) -> FastproxyProcess:
        more = [*args] if app_port is None else ["--app-port", str(app_port), *args]
        log = tmp_path / f"{app_id}-{len(procs)}.log"
        proc = FastproxyProcess(app_id, more, dict(env), log)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.close()


class Mesh:
    def __init__(
        self,
        a: FastproxyProcess,
        b1: FastproxyProcess,
        b2: FastproxyProcess,
        app1: Instance,
        app2: Instance,
    ) -> None:
        self.a = a
        self.b1 = b1
        self.b2 = b2
        self.app1 = app1
        self.app2 = app2

    async def call(self, target: str, method: str = "GET", body: bytes = b"") -> Response:
        return await request(self.a.http_port, method, target, body=body, timeout=10.0)


@pytest.fixture
async def mesh(spawn: Spawn, make_echo: EchoFactory) -> Mesh:
    """A (app a), B1 and B2 (both app b), each in front of its own echo app.

    Ready once A has reached app b through each of B1 and B2: a sidecar answers
    health checks before its registry row is written.
    """
    app_a = await make_echo("a")
    app1 = await make_echo("b1")
    app2 = await make_echo("b2")
    b1 = spawn("b", app1.port)
    b2 = spawn("b", app2.port)
    a = spawn("a", app_a.port)
    for proc in (b1, b2, a):
        await proc.wait_ready()
    result = Mesh(a, b1, b2, app1, app2)
    reached: set[str | None] = set()
    statuses: list[int] = []
    async with asyncio.timeout(START_TIMEOUT):
        while reached != {"b1", "b2"}:
            response = await result.call("/v1.0/invoke/b/method/ready")
            statuses.append(response.status)
            if response.status == 200:
                reached.add(response.header(INSTANCE_HEADER))
            else:
                # Only "not registered yet" is expected here, and only early on.
                assert "couldn't find service: b" in response.body.decode(), response
                await asyncio.sleep(0.1)
    app1.seen.clear()
    app2.seen.clear()
    return result


async def test_a_process_calls_b_processes(mesh: Mesh) -> None:
    async with asyncio.timeout(30):
        get = await mesh.call("/v1.0/invoke/b/method/orders/1?x=y")
        assert get.status == 200, get
        echo = get.json()
        assert echo["path"] == "/orders/1?x=y"
        assert header_values(echo, "dapr-caller-app-id") == ["a"]
        assert header_values(echo, "dapr-callee-app-id") == ["b"]
        assert header_values(echo, "X-Forwarded-For") == ["127.0.0.1"]
        post = await mesh.call("/v1.0/invoke/b/method/orders", "POST", b'{"id": 2}')
        assert post.status == 200, post
        assert post.json()["body"] == '{"id": 2}'
        missing = await mesh.call("/v1.0/invoke/nobody/method/x")
        assert missing.status == 500, missing
        assert "couldn't find service: nobody" in missing.json()["message"]
        # The way back: B1 finds a in the same registry.
        back = await request(mesh.b1.http_port, "GET", "/v1.0/invoke/a/method/back")
        assert back.status == 200, back
        assert back.header(INSTANCE_HEADER) == "a"
        assert header_values(back.json(), "dapr-caller-app-id") == ["b"]


async def test_kill_9_of_one_b_under_a_stream_of_requests_fails_over(mesh: Mesh) -> None:
    """B1 dies without deregistering: its row stays fresh for a while, yet no call fails.

    After the kill the requests are paced so the stream outlasts the dead row
    (2 x the 5 s update interval): a stale address costs a connect failure that
    moves the request to B2, then the address goes away.
    """
    failures: list[tuple[int, Response]] = []
    answered: list[str | None] = []
    async with asyncio.timeout(60):
        for i in range(300):
            if i == 100:
                assert mesh.app1.seen, "B1 got nothing before the kill"
                assert mesh.app2.seen, "B2 got nothing before the kill"
                mesh.b1.kill()
                assert mesh.b1.popen.returncode == -signal.SIGKILL
                seen_by_b1 = len(mesh.app1.seen)
            method, body = ("POST", b"n%d" % i) if i % 3 == 0 else ("GET", b"")
            response = await mesh.call(f"/v1.0/invoke/b/method/s{i}", method, body)
            if response.status != 200:
                failures.append((i, response))
            answered.append(response.header(INSTANCE_HEADER))
            if i >= 100:
                await asyncio.sleep(0.055)
    assert failures == [], failures[:5]
    assert len(mesh.app1.seen) == seen_by_b1
    assert set(answered[101:]) == {"b2"}, answered[101:]
    assert mesh.b2.popen.poll() is None and mesh.a.popen.poll() is None


async def test_both_b_killed_is_500_could_be_reached(mesh: Mesh) -> None:
    mesh.b1.kill()
    mesh.b2.kill()
    async with asyncio.timeout(30):
        started = time.monotonic()
        response = await mesh.call("/v1.0/invoke/b/method/x")
        assert time.monotonic() - started < 5.0
        assert response.status == 500, response
        body = response.json()
        assert body["errorCode"] == "ERR_DIRECT_INVOKE", body
        assert "could be reached" in body["message"], body
        health = await request(mesh.a.http_port, "GET", "/v1.0/healthz")
        assert health.status == 204


# -- the dapr Python SDK against A's port -------------------------------------------------------


async def in_thread(fn: Callable[[], T]) -> T:
    def run() -> T:
        try:
            return fn()
        finally:
            close_thread_loop()

    async with asyncio.timeout(SDK_CALL_TIMEOUT):
        return await asyncio.to_thread(run)


async def test_dapr_sdk_invokes_b_through_a_process(
    mesh: Mesh, point_sdk: Callable[[int], None]
) -> None:
    point_sdk(mesh.a.http_port)

    def calls() -> list[Any]:
        results = []
        with DaprClient() as client:
            try:
                results.append(
                    client.invoke_method(
                        "b",
                        "sdk/get",
                        http_verb="GET",
                        http_querystring=(("k", "v w"),),
                        metadata=(("x-sdk", "1"),),
                    )
                )
            finally:
                close_thread_loop()
            try:
                results.append(
                    client.invoke_method(
                        "b",
                        "sdk/post",
                        data=b'{"n": 1}\x00\xff',
                        content_type="application/octet-stream",
                        http_verb="POST",
                    )
                )
            finally:
                close_thread_loop()
        return results

    got, posted = await in_thread(calls)
    assert got.status_code == 200
    echo = json.loads(got.data)
    assert echo["method"] == "GET"
    assert echo["path"] == "/sdk/get?k=v+w"
    assert header_values(echo, "x-sdk") == ["1"]
    assert header_values(echo, "dapr-caller-app-id") == ["a"]
    assert header_values(echo, "dapr-callee-app-id") == ["b"]
    assert posted.status_code == 200
    echo = json.loads(posted.data)
    assert echo["method"] == "POST"
    assert echo["path"] == "/sdk/post"
    assert echo["body"] == b'{"n": 1}\x00\xff'.decode("latin-1")
    assert header_values(echo, "content-type") == ["application/octet-stream"]
    assert len(mesh.app1.seen) + len(mesh.app2.seen) == 2


async def test_dapr_sdk_unknown_app_through_a_process_is_err_direct_invoke(
    mesh: Mesh, point_sdk: Callable[[int], None]
) -> None:
    point_sdk(mesh.a.http_port)

    def call() -> Any:
        with DaprClient() as client:
            try:
                return client.invoke_method("nobody", "x", http_verb="GET")
            except DaprHttpError as exc:
                return exc
            finally:
                close_thread_loop()

    outcome = await in_thread(call)
    assert isinstance(outcome, DaprHttpError), outcome
    assert outcome.status_code == 500
    assert outcome.error_code == "ERR_DIRECT_INVOKE"
    assert outcome.message == "failed to invoke, id: nobody, err: couldn't find service: nobody"
