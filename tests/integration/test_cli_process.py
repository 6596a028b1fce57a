"""The `fastproxy run` command as a real process: flags, environment, signals, exit codes.

Each test starts `python -m fastproxy run ...` on a free port next to the
in-loop echo app, and kills the process in `finally` whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.integration.conftest import EchoApp, Response, request
from tests.integration.ports import free_port

pytestmark = pytest.mark.asyncio

REPO = Path(__file__).resolve().parents[2]
# daprd's own flag names that fastproxy takes (dapr/dapr cmd/daprd/options/options.go).
DAPRD_FLAGS = [
    "--app-id",
    "--app-port",
    "--app-channel-address",
    "--dapr-http-port",
    "--dapr-listen-addresses",
    "--resources-path",
    "--components-path",
    "--config",
    "--max-body-size",
    "--read-buffer-size",
    "--log-level",
    "--log-as-json",
    "--dapr-graceful-shutdown-seconds",
]
_OUR_ENV = ("APP_ID", "APP_PORT", "DAPR_HTTP_PORT", "DAPR_API_TOKEN", "APP_API_TOKEN", "NAMESPACE")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OUR_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc:
    """A `fastproxy` process whose output goes to files (no pipe can fill up)."""

    def __init__(self, args: Sequence[str], env: dict[str, str], folder: Path) -> None:
        self.out_path = folder / "stdout.txt"
        self.err_path = folder / "stderr.txt"
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "fastproxy", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
        )

    @property
    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        self._out.flush()
        return self.out_path.read_text(errors="replace")

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.popen.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"process still running after {timeout}s: {self.stderr}")
            await asyncio.sleep(0.02)
        return code

    async def wait_ready(self, port: int, timeout: float = 15.0) -> None:
        """Until GET /v1.0/healthz answers (any status: it may need a token)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"fastproxy exited with {self.popen.returncode}: {self.stderr}"
                )
            try:
                response = await request(port, "GET", "/v1.0/healthz", timeout=1.0)
            except (OSError, AssertionError):
                await asyncio.sleep(0.05)
                continue
            if response.status:
                return
        raise AssertionError(f"fastproxy not ready on port {port} in {timeout}s: {self.stderr}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        self._out.close()
        self._err.close()


Spawn = Callable[..., Proc]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Starts fastproxy processes; every one is killed at teardown."""
    procs: list[Proc] = []

    def start(args: Sequence[str], **env: str) -> Proc:
        folder = tmp_path / f"proc{len(procs)}"
        folder.mkdir()
        if args and args[0] == "run" and not any("internal" in a for a in args):
            # The default internal port (50002) may be taken: ask for a free one.
            args = [*args, "--dapr-internal-port", "0"]
        if args and args[0] == "run" and not any("metrics" in a for a in args):
            # So is the default metrics port (9090).
            args = [*args, "--metrics-port", "0"]
        proc = Proc(args, clean_env(**env), folder)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def run_args(app_id: str, http_port: int, app_port: int | None, *more: str) -> list[str]:
    args = [
        "run",
        "--app-id",
        app_id,
        "--dapr-http-port",
        str(http_port),
        "--dapr-listen-addresses",
        "127.0.0.1",
        "--dapr-internal-port",
        "0",
    ]
    if app_port is not None:
        args += ["--app-port", str(app_port)]
    return args + list(more)


def run_sync(
    args: Sequence[str], timeout: float = 20.0, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        cwd=REPO,
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
async def running(spawn: Spawn, echo_app: EchoApp) -> AsyncIterator[tuple[Proc, int]]:
    port = free_port()
    proc: Proc = spawn(run_args("app", port, echo_app.port))
    await proc.wait_ready(port)
    yield proc, port


def curl_like(
    port: int, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> asyncio.Future[Response]:
    all_headers = {"User-Agent": "curl/8.5.0", "Accept": "*/*", **(headers or {})}
    return asyncio.ensure_future(request(port, method, target, all_headers, body))


# -- serving ---------------------------------------------------------------------------------


async def test_run_process_answers_invocations(
    running: tuple[Proc, int], echo_app: EchoApp
) -> None:
    _, port = running
    response = await curl_like(
        port,
        "POST",
        "/v1.0/invoke/app/method/orders/new?x=1&x=2",
        b'{"id": 1}',
        {"Content-Type": "application/json"},
    )
    assert response.status == 200, response
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/orders/new?x=1&x=2"
    assert echo["body"] == '{"id": 1}'
    health = await request(port, "GET", "/v1.0/healthz")
    assert health.status == 204
    metadata = (await request(port, "GET", "/v1.0/metadata")).json()
    assert metadata["id"] == "app"
    assert metadata["appConnectionProperties"]["port"] == echo_app.port


async def test_run_process_accepts_single_dash_daprd_flags(spawn: Spawn, echo_app: EchoApp) -> None:
    port = free_port()
    proc: Proc = spawn(
        [
            "run",
            "-app-id",
            "dashy",
            "-app-port",
            str(echo_app.port),
            "-dapr-http-port",
            str(port),
            "-dapr-listen-addresses",
            "127.0.0.1",
            "-dapr-internal-port",
            "0",
        ]
    )
    await proc.wait_ready(port)
    response = await request(port, "GET", "/v1.0/invoke/dashy/method/x")
    assert response.status == 200, response


async def test_sigterm_drains_in_flight_request_then_exits_0(
    running: tuple[Proc, int], echo_app: EchoApp
) -> None:
    proc, port = running
    slow = curl_like(port, "GET", "/v1.0/invoke/app/method/slow?delay=1")
    async with asyncio.timeout(5):
        while not echo_app.seen:
            await asyncio.sleep(0.01)
    started = time.monotonic()
    proc.popen.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    assert proc.popen.poll() is None, "exited before the in-flight request finished"
    response = await slow
    assert response.status == 200, response
    assert response.json()["path"] == "/slow?delay=1"
    assert await proc.wait(timeout=5) == 0, proc.stderr
    assert time.monotonic() - started < 4


async def test_sigterm_when_idle_exits_0_quickly(running: tuple[Proc, int]) -> None:
    proc, _ = running
    started = time.monotonic()
    proc.popen.send_signal(signal.SIGTERM)
    assert await proc.wait(timeout=5) == 0, proc.stderr
    assert time.monotonic() - started < 2


async def test_sigint_also_stops_cleanly(running: tuple[Proc, int]) -> None:
    proc, _ = running
    proc.popen.send_signal(signal.SIGINT)
    assert await proc.wait(timeout=5) == 0, proc.stderr


async def test_graceful_shutdown_seconds_bounds_the_drain(spawn: Spawn, echo_app: EchoApp) -> None:
    port = free_port()
    proc: Proc = spawn(
        run_args("app", port, echo_app.port, "--dapr-graceful-shutdown-seconds", "0.5")
    )
    await proc.wait_ready(port)
    slow = asyncio.ensure_future(
        request(port, "GET", "/v1.0/invoke/app/method/slow?delay=3", timeout=5)
    )
    async with asyncio.timeout(5):
        while not echo_app.seen:
            await asyncio.sleep(0.01)
    started = time.monotonic()
    proc.popen.send_signal(signal.SIGTERM)
    assert await proc.wait(timeout=5) == 0, proc.stderr
    assert time.monotonic() - started < 2.0
    with pytest.raises((AssertionError, ConnectionResetError)):
        await slow  # cut off without an answer


# -- flags and environment ----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["run", "--help"], ["--help"]], ids=["run-help", "help"])
async def test_help_lists_every_daprd_flag(argv: list[str]) -> None:
    result = await asyncio.to_thread(run_sync, argv)
    assert result.returncode == 0, result.stderr
    for flag in DAPRD_FLAGS:
        assert flag in result.stdout, flag


async def test_unknown_flag_exits_2_naming_it() -> None:
    result = await asyncio.to_thread(run_sync, ["run", "--app-id", "a", "--no-such-flag", "1"])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--no-such-flag" in result.stderr
    assert "error" in result.stderr.lower()


async def test_missing_app_id_exits_2() -> None:
    result = await asyncio.to_thread(run_sync, ["run", "--dapr-http-port", str(free_port())])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--app-id" in result.stderr


async def test_invalid_port_flag_exits_2() -> None:
    result = await asyncio.to_thread(
        run_sync, ["run", "--app-id", "a", "--dapr-http-port", "70000"]
    )
    assert result.returncode == 2
    assert "70000" in result.stderr


async def test_env_vars_configure_app_id_and_ports(spawn: Spawn, echo_app: EchoApp) -> None:
    port = free_port()
    proc: Proc = spawn(
        ["run", "--dapr-listen-addresses", "127.0.0.1"],
        APP_ID="from-env",
        DAPR_HTTP_PORT=str(port),
        APP_PORT=str(echo_app.port),
    )
    await proc.wait_ready(port)
    response = await request(port, "GET", "/v1.0/invoke/from-env/method/e?v=1")
    assert response.status == 200, response
    assert response.json()["path"] == "/e?v=1"
    assert (await request(port, "GET", "/v1.0/metadata")).json()["id"] == "from-env"


async def test_flags_win_over_env_vars(spawn: Spawn, echo_app: EchoApp) -> None:
    port = free_port()
    proc: Proc = spawn(
        run_args("from-flag", port, echo_app.port),
        APP_ID="from-env",
        DAPR_HTTP_PORT=str(free_port()),
        APP_PORT="1",
    )
    await proc.wait_ready(port)
    assert (await request(port, "GET", "/v1.0/metadata")).json()["id"] == "from-flag"
    response = await request(port, "GET", "/v1.0/invoke/from-flag/method/x")
    assert response.status == 200, response


async def test_invalid_env_port_exits_2_naming_the_variable() -> None:
    result = await asyncio.to_thread(run_sync, ["run", "--app-id", "a"], DAPR_HTTP_PORT="abc")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "DAPR_HTTP_PORT" in result.stderr


async def test_dapr_api_token_env_enforces_the_token(spawn: Spawn, echo_app: EchoApp) -> None:
    port = free_port()
    proc: Proc = spawn(run_args("app", port, echo_app.port), DAPR_API_TOKEN="tok-123")
    await proc.wait_ready(port)
    denied = await request(port, "GET", "/v1.0/invoke/app/method/x")
    assert denied.status == 401, denied
    assert denied.body == b"invalid api token\n"
    wrong = await request(port, "GET", "/v1.0/invoke/app/method/x", {"dapr-api-token": "nope"})
    assert wrong.status == 401, wrong
    assert echo_app.seen == []
    allowed = await request(port, "GET", "/v1.0/invoke/app/method/x", {"dapr-api-token": "tok-123"})
    assert allowed.status == 200, allowed
    names = [k.lower() for k, _ in allowed.json()["headers"]]
    assert "dapr-api-token" not in names
    assert (await request(port, "GET", "/v1.0/healthz")).status == 204


async def test_app_api_token_env_is_sent_to_app(spawn: Spawn, echo_app: EchoApp) -> None:
    port = free_port()
    proc: Proc = spawn(run_args("app", port, echo_app.port), APP_API_TOKEN="app-tok")
    await proc.wait_ready(port)
    response = await request(port, "GET", "/v1.0/invoke/app/method/x")
    assert response.status == 200, response
    tokens = [v for k, v in response.json()["headers"] if k.lower() == "dapr-api-token"]
    assert tokens == ["app-tok"]


async def test_namespace_env_sets_caller_namespace(spawn: Spawn, echo_app: EchoApp) -> None:
    port = free_port()
    proc: Proc = spawn(run_args("app", port, echo_app.port), NAMESPACE="prod")
    await proc.wait_ready(port)
    response = await request(port, "GET", "/v1.0/invoke/app.prod/method/x")
    assert response.status == 200, response
    namespaces = [v for k, v in response.json()["headers"] if k.lower() == "dapr-caller-namespace"]
    assert namespaces == ["prod"]


# -- resources and start-up failures -------------------------------------------------------------


async def test_resources_path_endpoint_is_served(
    spawn: Spawn, echo_app: EchoApp, tmp_path: Path
) -> None:
    folder = tmp_path / "resources"
    folder.mkdir()
    (folder / "ep.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: ext\n"
        f"spec:\n  baseUrl: http://127.0.0.1:{echo_app.port}/prefix\n"
    )
    port = free_port()
    proc: Proc = spawn(run_args("caller", port, None, "--resources-path", str(folder)))
    await proc.wait_ready(port)
    response = await request(port, "GET", "/v1.0/invoke/ext/method/x")
    assert response.status == 200, response
    assert response.json()["path"] == "/prefix/x"


async def test_malformed_resource_file_exits_nonzero_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "resources"
    folder.mkdir()
    broken = folder / "broken-endpoint.yaml"
    broken.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: x\n"
        "spec:\n  baseUrl: 42\n"
    )
    result = await asyncio.to_thread(
        run_sync, run_args("app", free_port(), None, "--resources-path", str(folder))
    )
    assert result.returncode not in (0, None), (result.stdout, result.stderr)
    assert str(broken) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


async def test_missing_resources_path_exits_nonzero() -> None:
    result = await asyncio.to_thread(
        run_sync, run_args("app", free_port(), None, "--resources-path", "/no/such/folder")
    )
    assert result.returncode != 0
    assert "/no/such/folder" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


async def test_port_in_use_exits_1_with_an_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asyncio.to_thread(run_sync, run_args("app", port, None))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert str(port) in result.stderr or "in use" in result.stderr.lower(), result.stderr
