"""The real `dapr` Python SDK (1.19) against fastproxy: what its invocations look like to the app.

The sync `DaprClient` blocks (urllib health probes, its own event loop per
call), so it runs in a worker thread against an in-process sidecar, or against
a `fastproxy run` process. The async client's constructor also probes health
synchronously, so its sidecar runs on a loop in another thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprHttpError
from dapr.conf import settings

from fastproxy import Config, Sidecar
from tests.integration.conftest import EchoApp, SidecarFactory, request
from tests.integration.daprsdk import SettingsFactory, close_thread_loop, point_sdk_fixture  # noqa: F401
from tests.integration.ports import free_port

pytestmark = pytest.mark.asyncio

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TOKEN = "sdk-secret"
SDK_CALL_TIMEOUT = 20.0


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def sdk_invoke(client: DaprClient, *args: Any, **kwargs: Any) -> Any:
    """`client.invoke_method` without leaking the event loop it makes for itself."""
    try:
        return client.invoke_method(*args, **kwargs)
    finally:
        close_thread_loop()


def _in_worker(fn: Callable[[], T]) -> T:
    try:
        return fn()
    finally:
        close_thread_loop()


async def in_thread(fn: Callable[[], T]) -> T:
    async with asyncio.timeout(SDK_CALL_TIMEOUT):
        return await asyncio.to_thread(_in_worker, fn)


def sync_invoke(**kwargs: Any) -> Any:
    """One call through a fresh sync `DaprClient` (constructor probes health twice)."""

    def call() -> Any:
        with DaprClient() as client:
            return sdk_invoke(client, **kwargs)

    return call


async def echo_of(**kwargs: Any) -> tuple[Any, dict[str, Any]]:
    response = await in_thread(sync_invoke(**kwargs))
    return response, json.loads(response.data)


@pytest.fixture
async def sdk_sidecar(
    make_sidecar: SidecarFactory, echo_app: EchoApp, point_sdk: SettingsFactory
) -> Sidecar:
    sidecar = await make_sidecar(app_port=echo_app.port)
    point_sdk(sidecar.http_port)
    return sidecar


# -- sync client against an in-process sidecar ------------------------------------------------


async def test_sdk_get_with_default_arguments(sdk_sidecar: Sidecar, echo_app: EchoApp) -> None:
    response, echo = await echo_of(app_id="app", method_name="hello")
    assert response.status_code == 200
    assert echo["method"] == "GET"
    assert echo["path"] == "/hello"
    assert echo["body_length"] == 0
    assert header_values(echo, "content-type") == ["application/json; charset=utf-8"]
    assert header_values(echo, "dapr-callee-app-id") == ["app"]
    assert echo_app.seen == [("GET", "/hello")]


@pytest.mark.parametrize("verb", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize(
    "data", [pytest.param('{"id": 1}', id="str"), pytest.param(b"\x00\x01\xff", id="bytes")]
)
async def test_sdk_verbs_with_body_reach_the_app(
    sdk_sidecar: Sidecar, verb: str, data: str | bytes
) -> None:
    response, echo = await echo_of(
        app_id="app", method_name="orders/new", data=data, http_verb=verb
    )
    assert response.status_code == 200
    expected = data.encode() if isinstance(data, str) else data
    assert echo["method"] == verb
    assert echo["path"] == "/orders/new"
    assert echo["body"] == expected.decode("latin-1")
    assert header_values(echo, "content-length") == [str(len(expected))]


async def test_sdk_lowercase_verb_goes_out_uppercase(sdk_sidecar: Sidecar) -> None:
    _, echo = await echo_of(app_id="app", method_name="x", data="a", http_verb="post")
    assert echo["method"] == "POST"


async def test_sdk_querystring_metadata_and_content_type(sdk_sidecar: Sidecar) -> None:
    response, echo = await echo_of(
        app_id="app",
        method_name="put",
        data=b"\x00\x01",
        http_verb="PUT",
        content_type="application/octet-stream",
        metadata=(("x-custom", "v1"), ("traceparent", TRACEPARENT)),
        http_querystring=(("a", "1"), ("a", "2"), ("b", "x y")),
    )
    assert response.status_code == 200
    assert echo["path"] == "/put?a=1&a=2&b=x+y"
    assert header_values(echo, "x-custom") == ["v1"]
    assert header_values(echo, "traceparent") == [TRACEPARENT]
    assert header_values(echo, "content-type") == ["application/octet-stream"]
    assert echo["body"] == "\x00\x01"


async def test_sdk_response_carries_app_status_headers_and_content_type(
    sdk_sidecar: Sidecar,
) -> None:
    response, echo = await echo_of(
        app_id="app",
        method_name="x",
        http_querystring=(("status", "201"), ("header", "X-From-App:yes")),
    )
    assert response.status_code == 201
    assert response.content_type == "application/json"
    app_headers = [v for k, v in response.get_headers() if k.lower() == "x-from-app"]
    assert app_headers == ["yes"]
    assert echo["path"] == "/x?status=201&header=X-From-App:yes"


async def test_sdk_method_with_space_and_unicode_is_encoded(sdk_sidecar: Sidecar) -> None:
    _, echo = await echo_of(app_id="app", method_name="a b/caf\u00e9")
    assert echo["path"] == "/a%20b/caf%C3%A9"


async def test_sdk_method_with_question_mark_sends_a_real_query(sdk_sidecar: Sidecar) -> None:
    _, echo = await echo_of(app_id="app", method_name="search?q=1&q=2")
    assert echo["path"] == "/search?q=1&q=2"


async def test_sdk_large_body_arrives_whole(sdk_sidecar: Sidecar) -> None:
    body = os.urandom(300 * 1024)
    response, echo = await echo_of(
        app_id="app",
        method_name="big",
        data=body,
        http_verb="POST",
        content_type="application/octet-stream",
    )
    assert response.status_code == 200
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_sdk_dapr_app_id_in_metadata_routes_by_header(sdk_sidecar: Sidecar) -> None:
    """daprd lets the header win and treats the whole invoke path as the method."""
    _, echo = await echo_of(app_id="app", method_name="hdr", metadata=(("dapr-app-id", "app"),))
    assert echo["path"] == "/v1.0/invoke/app/method/hdr"
    assert header_values(echo, "dapr-app-id") == []


async def test_sdk_with_dapr_http_endpoint_setting(
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    point_sdk: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port)
    point_sdk(free_port())  # the host/port settings are wrong on purpose
    endpoint = f"http://127.0.0.1:{sidecar.http_port}"
    settings.DAPR_HTTP_ENDPOINT = endpoint
    monkeypatch.setenv("DAPR_HTTP_ENDPOINT", endpoint)
    response, echo = await echo_of(app_id="app", method_name="via-endpoint")
    assert response.status_code == 200
    assert echo["path"] == "/via-endpoint"


async def test_sdk_with_localhost_reaches_default_listen_addresses(
    make_sidecar: SidecarFactory, echo_app: EchoApp, point_sdk: SettingsFactory
) -> None:
    """`localhost` may resolve to ::1 first; the default sidecar listens on both loopbacks."""
    sidecar = await make_sidecar(app_port=echo_app.port, listen_addresses=Config().listen_addresses)
    point_sdk(sidecar.http_port)
    settings.DAPR_RUNTIME_HOST = "localhost"
    response, echo = await echo_of(app_id="app", method_name="local")
    assert response.status_code == 200
    assert echo["path"] == "/local"


async def test_sdk_app_500_raises_dapr_http_error_500(sdk_sidecar: Sidecar) -> None:
    with pytest.raises(DaprHttpError) as caught:
        await in_thread(
            sync_invoke(app_id="app", method_name="fail", http_querystring=(("status", "500"),))
        )
    assert caught.value.status_code == 500
    # The app's body came back verbatim (the echo, not a Dapr error body).
    raw = caught.value.raw_response_bytes
    assert raw is not None
    assert json.loads(raw)["path"] == "/fail?status=500"


async def test_sdk_app_404_raises_dapr_http_error_404(sdk_sidecar: Sidecar) -> None:
    with pytest.raises(DaprHttpError) as caught:
        await in_thread(
            sync_invoke(app_id="app", method_name="missing", http_querystring=(("status", "404"),))
        )
    assert caught.value.status_code == 404


async def test_sdk_unknown_app_raises_err_direct_invoke(
    sdk_sidecar: Sidecar, echo_app: EchoApp
) -> None:
    with pytest.raises(DaprHttpError) as caught:
        await in_thread(sync_invoke(app_id="nobody", method_name="x"))
    error = caught.value
    assert error.status_code == 500
    assert error.error_code == "ERR_DIRECT_INVOKE"
    assert error.message == "failed to invoke, id: nobody, err: couldn't find service: nobody"
    assert echo_app.seen == []


async def test_sdk_invalid_app_id_raises_err_direct_invoke(sdk_sidecar: Sidecar) -> None:
    with pytest.raises(DaprHttpError) as caught:
        await in_thread(sync_invoke(app_id="a.b.c", method_name="x"))
    assert caught.value.status_code == 500
    assert caught.value.error_code == "ERR_DIRECT_INVOKE"


async def test_sdk_with_api_token_on_both_sides(
    make_sidecar: SidecarFactory, echo_app: EchoApp, point_sdk: SettingsFactory
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, api_token=TOKEN)
    point_sdk(sidecar.http_port, token=TOKEN)
    response, echo = await echo_of(app_id="app", method_name="guarded", data="x", http_verb="POST")
    assert response.status_code == 200
    assert echo["path"] == "/guarded"
    assert header_values(echo, "dapr-api-token") == []


async def test_sdk_with_wrong_api_token_gets_401(
    make_sidecar: SidecarFactory, echo_app: EchoApp, point_sdk: SettingsFactory
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, api_token=TOKEN)
    # The health probes are exempt, so the client is built; the call itself is refused.
    point_sdk(sidecar.http_port, token="wrong")
    with pytest.raises(DaprHttpError) as caught:
        await in_thread(sync_invoke(app_id="app", method_name="guarded"))
    assert caught.value.status_code == 401
    assert caught.value.raw_response_bytes == b"invalid api token\n"
    assert echo_app.seen == []


async def test_sdk_without_token_against_guarded_sidecar_gets_401(
    make_sidecar: SidecarFactory, echo_app: EchoApp, point_sdk: SettingsFactory
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, api_token=TOKEN)
    point_sdk(sidecar.http_port)
    with pytest.raises(DaprHttpError) as caught:
        await in_thread(sync_invoke(app_id="app", method_name="guarded"))
    assert caught.value.status_code == 401


async def test_sdk_client_construction_fails_fast_when_nothing_listens(
    point_sdk: SettingsFactory,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    point_sdk(port)
    settings.DAPR_HEALTH_TIMEOUT = 1
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await in_thread(sync_invoke(app_id="app", method_name="x"))
    assert time.monotonic() - started < 5


async def test_sdk_twenty_calls_through_one_client_all_succeed(sdk_sidecar: Sidecar) -> None:
    def many() -> list[int]:
        with DaprClient() as client:
            return [
                sdk_invoke(client, "app", f"n/{i}", data=str(i), http_verb="POST").status_code
                for i in range(20)
            ]

    assert await in_thread(many) == [200] * 20


# -- sync client against a `fastproxy run` process ----------------------------------------------


_SIDECAR_ENV = (
    "APP_ID",
    "APP_PORT",
    "DAPR_HTTP_PORT",
    "DAPR_API_TOKEN",
    "APP_API_TOKEN",
    "NAMESPACE",
)


@pytest.fixture
async def sidecar_process(echo_app: EchoApp, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    procs: list[subprocess.Popen[bytes]] = []

    async def start(**env: str) -> int:
        port = free_port()
        environ = {k: v for k, v in os.environ.items() if k not in _SIDECAR_ENV}
        environ.update(env)
        log = (tmp_path / f"fastproxy{len(procs)}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastproxy",
                "run",
                "--app-id",
                "app",
                "--app-port",
                str(echo_app.port),
                "--dapr-http-port",
                str(port),
                "--dapr-listen-addresses",
                "127.0.0.1",
                "--dapr-internal-port",
                "0",
                "--metrics-port",
                "0",
            ],
            cwd=REPO,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        procs.append(proc)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / f"fastproxy{len(procs) - 1}.log").read_text()
            try:
                if (await request(port, "GET", "/v1.0/healthz", timeout=1)).status:
                    return port
            except (OSError, AssertionError):
                await asyncio.sleep(0.05)
        raise AssertionError("fastproxy run did not become ready")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=5)


async def test_sdk_against_fastproxy_run_process(
    sidecar_process: Callable[..., Any], point_sdk: SettingsFactory, echo_app: EchoApp
) -> None:
    port = await sidecar_process()
    point_sdk(port)

    def calls() -> list[tuple[int, dict[str, Any]]]:
        with DaprClient() as client:
            results = []
            for verb, data in (("GET", ""), ("POST", "p"), ("PUT", b"\x01"), ("DELETE", "")):
                response = sdk_invoke(
                    client,
                    "app",
                    "proc/x",
                    data=data,
                    http_verb=verb,
                    metadata=(("traceparent", TRACEPARENT),),
                    http_querystring=(("k", "v w"),),
                )
                results.append((response.status_code, json.loads(response.data)))
            return results

    results = await in_thread(calls)
    assert [status for status, _ in results] == [200] * 4
    assert [echo["method"] for _, echo in results] == ["GET", "POST", "PUT", "DELETE"]
    assert {echo["path"] for _, echo in results} == {"/proc/x?k=v+w"}
    assert [echo["body"] for _, echo in results] == ["", "p", "\x01", ""]
    assert all(header_values(echo, "traceparent") == [TRACEPARENT] for _, echo in results)


async def test_sdk_api_token_env_on_both_sides_of_process(
    sidecar_process: Callable[..., Any], point_sdk: SettingsFactory, echo_app: EchoApp
) -> None:
    port = await sidecar_process(DAPR_API_TOKEN=TOKEN)
    point_sdk(port, token=TOKEN)
    response, echo = await echo_of(app_id="app", method_name="t")
    assert response.status_code == 200
    assert header_values(echo, "dapr-api-token") == []
    point_sdk(port, token="wrong")
    with pytest.raises(DaprHttpError) as caught:
        await in_thread(sync_invoke(app_id="app", method_name="t"))
    assert caught.value.status_code == 401
    assert [path for _, path in echo_app.seen] == ["/t"]


# -- async client ------------------------------------------------------------------------------


class ThreadedSidecar:
    """An in-process sidecar on its own loop in a thread.

    The async client's constructor probes health with blocking urllib calls,
    which would freeze a sidecar sharing the test's loop.
    """

    def __init__(self, **config: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        self.sidecar = Sidecar(Config(), **{"metrics_port": 0, **config})
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> int:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.sidecar.start(), self.loop).result(timeout=10)
        return self.sidecar.http_port

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.sidecar.stop(grace=1), self.loop).result(
                timeout=10
            )
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@pytest.fixture
async def threaded_sidecar(
    echo_app: EchoApp, point_sdk: SettingsFactory
) -> AsyncIterator[Callable[..., Any]]:
    started: list[ThreadedSidecar] = []

    async def start(**config: Any) -> int:
        config.setdefault("app_id", "app")
        config.setdefault("http_port", 0)
        config.setdefault("listen_addresses", ("127.0.0.1",))
        config.setdefault("internal_port", 0)  # never Dapr's fixed 50002: tests share the host
        config.setdefault("app_port", echo_app.port)
        threaded = ThreadedSidecar(**config)
        started.append(threaded)
        return await asyncio.to_thread(threaded.start)

    yield start
    for threaded in started:
        await asyncio.to_thread(threaded.stop)
        assert not threaded.errors, threaded.errors


async def test_async_client_invoke_method(
    threaded_sidecar: Callable[..., Any], point_sdk: SettingsFactory, echo_app: EchoApp
) -> None:
    from dapr.aio.clients import DaprClient as AsyncDaprClient

    port = await threaded_sidecar()
    point_sdk(port)
    async with asyncio.timeout(SDK_CALL_TIMEOUT):
        client = AsyncDaprClient()
        try:
            get = await client.invoke_method("app", "aio/get", http_querystring=(("q", "1"),))
            post = await client.invoke_method(
                "app",
                "aio/post",
                data=b"\x00payload",
                http_verb="POST",
                content_type="application/octet-stream",
                metadata=(("x-custom", "v1"), ("traceparent", TRACEPARENT)),
            )
            with pytest.raises(DaprHttpError) as caught:
                await client.invoke_method("nobody", "x")
        finally:
            await client.close()
    assert get.status_code == 200
    assert json.loads(get.data)["path"] == "/aio/get?q=1"
    echo = json.loads(post.data)
    assert echo["method"] == "POST"
    assert echo["path"] == "/aio/post"
    assert echo["body"] == "\x00payload"
    assert header_values(echo, "x-custom") == ["v1"]
    assert header_values(echo, "traceparent") == [TRACEPARENT]
    assert header_values(echo, "content-type") == ["application/octet-stream"]
    assert caught.value.status_code == 500
    assert caught.value.error_code == "ERR_DIRECT_INVOKE"
    assert echo_app.seen == [("GET", "/aio/get?q=1"), ("POST", "/aio/post")]


async def test_async_client_with_api_token(
    threaded_sidecar: Callable[..., Any], point_sdk: SettingsFactory
) -> None:
    from dapr.aio.clients import DaprClient as AsyncDaprClient

    port = await threaded_sidecar(api_token=TOKEN)
    point_sdk(port, token=TOKEN)
    async with asyncio.timeout(SDK_CALL_TIMEOUT):
        client = AsyncDaprClient()
        try:
            response = await client.invoke_method("app", "tok", data="x", http_verb="PUT")
            settings.DAPR_API_TOKEN = "wrong"
            with pytest.raises(DaprHttpError) as caught:
                await client.invoke_method("app", "tok")
        finally:
            await client.close()
    assert response.status_code == 200
    assert header_values(json.loads(response.data), "dapr-api-token") == []
    assert caught.value.status_code == 401
