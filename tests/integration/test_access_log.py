"""The access log on real requests: one line per request on stdout, as text or JSON.

In-process sidecars write to the `sys.stdout` they found at start, which
pytest's `capfd` captures; stopping a sidecar flushes its log thread, so a
test reads every line it caused without waiting on a timer. One test runs
`python -m fastproxy run` as a process and reads the stdout it wrote.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fastproxy import Sidecar
from tests.integration.conftest import (
    EchoApp,
    Response,
    SidecarFactory,
    parse_responses,
    raw_exchange,
    request,
)
from tests.integration.observability_fixtures import (
    APP,
    app_process_args,
    fastproxy_process,
    fetch,
    observed_sidecar,
    raw_get,
    write_retry_resources,
)
from tests.integration.ports import free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

TEST_TIMEOUT = 30.0
# Every field of a line, in the order it is written: the exchange, then its timing and trace.
FIELDS = ["time", "method", "path", "app_id", "status", "bytes_in", "bytes_out", "upstream"]
FIELDS += ["total_ms", "upstream_ms", "retries", "trace_id", "client"]
FORMS = pytest.mark.parametrize("form", ["text", "json"])
INTEGERS = ("status", "bytes_in", "bytes_out", "retries")
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# -- reading lines back ------------------------------------------------------------------------

_PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]+)')
_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)")
_SIMPLE = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code in _SIMPLE:
        return _SIMPLE[code]
    assert code[0] in "xuU", f"unknown escape \\{code}"
    return chr(int(code[1:], 16))


def parse_text(line: str) -> dict[str, Any]:
    """A `key=value ...` line; the whole line must be pairs, each key once, in FIELDS order."""
    fields: dict[str, Any] = {}
    position = 0
    while position < len(line):
        if fields:
            assert line[position] == " ", f"no space before {line[position:]!r}"
            position += 1
        match = _PAIR.match(line, position)
        assert match is not None, f"not a key=value pair at {line[position:]!r}"
        key, raw = match.groups()
        assert key not in fields, f"{key} twice in {line!r}"
        fields[key] = _ESCAPE.sub(_unescape, raw[1:-1]) if raw.startswith('"') else raw
        position = match.end()
    assert list(fields) == FIELDS, line
    for key in INTEGERS:
        fields[key] = int(fields[key])
    return fields


def parse_json(line: str) -> dict[str, Any]:
    fields: dict[str, Any] = json.loads(line)
    assert list(fields) == FIELDS, line
    for key in INTEGERS:
        assert isinstance(fields[key], int), (key, line)
    return fields


PARSERS = {"text": parse_text, "json": parse_json}


def access_lines(output: str, form: str) -> list[dict[str, Any]]:
    """Every line of `output` read as an access log line of `form`."""
    return [PARSERS[form](line) for line in output.splitlines() if line]


def check_timings(fields: dict[str, Any]) -> None:
    assert TIME_RE.fullmatch(fields["time"]), fields
    total, upstream = float(fields["total_ms"]), float(fields["upstream_ms"])
    assert 0 <= upstream <= total < 10_000, fields


def traceparent_trace(response: Response) -> str:
    value = response.header("traceparent")
    assert value is not None, response
    return value.split("-")[1]


# -- sidecars ----------------------------------------------------------------------------------


@dataclass
class Logged:
    """Starts sidecars that log every request to stdout, and reads their lines back."""

    make_sidecar: SidecarFactory
    echo_app: EchoApp
    tmp_path: Path
    capfd: pytest.CaptureFixture[str]

    async def start(
        self, form: str, spec: dict[str, Any] | None = None, **settings: Any
    ) -> Sidecar:
        """A sidecar for the echo app writing lines of `form` (API logging on unless told)."""
        settings.setdefault("enable_api_logging", True)
        settings.setdefault("app_port", self.echo_app.port)
        return await observed_sidecar(
            self.make_sidecar, self.tmp_path, spec, log_as_json=form == "json", **settings
        )

    async def stop_and_read(self, sidecar: Sidecar) -> str:
        """Stop the sidecar (its log thread writes what is queued, then ends); its stdout."""
        await sidecar.stop(grace=1.0)
        return self.capfd.readouterr().out

    async def lines(self, sidecar: Sidecar, form: str) -> list[dict[str, Any]]:
        """Stop the sidecar; every line it wrote, read as an access log line of `form`."""
        return access_lines(await self.stop_and_read(sidecar), form)


@pytest.fixture
def logged(
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> Logged:
    return Logged(make_sidecar, echo_app, tmp_path, capfd)


# -- the lines ---------------------------------------------------------------------------------


@FORMS
async def test_one_line_per_request_with_the_right_fields(
    logged: Logged, echo_app: EchoApp, form: str
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        # Tracing at rate 0: every request has a trace id and nothing is exported.
        sidecar = await logged.start(form, {"tracing": {"samplingRate": "0"}})
        port = sidecar.http_port
        ok = await request(port, "GET", f"{APP}/orders?page=2")
        failed = await request(port, "POST", f"{APP}/pay?status=503", body=b"hello")
        chunked = await request(
            port,
            "PUT",
            f"{APP}/upload",
            {"Transfer-Encoding": "chunked"},
            b"4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n",
        )
        unknown = await request(port, "GET", "/v1.0/invoke/nowhere/method/x")
        health = await request(port, "GET", "/v1.0/healthz")
        assert [r.status for r in (ok, failed, chunked, unknown, health)] == [
            200,
            503,
            200,
            500,
            204,
        ]
        lines = await logged.lines(sidecar, form)

        assert [(f["method"], f["path"], f["app_id"], f["status"]) for f in lines] == [
            ("GET", f"{APP}/orders", "app", 200),
            ("POST", f"{APP}/pay", "app", 503),
            ("PUT", f"{APP}/upload", "app", 200),
            ("GET", "/v1.0/invoke/nowhere/method/x", "nowhere", 500),
            ("GET", "/v1.0/healthz", "", 204),
        ]
        upstream = f"127.0.0.1:{echo_app.port}"
        for fields in lines[:3]:
            assert fields["upstream"] == upstream
            assert float(fields["upstream_ms"]) > 0
        # The body each client got, the sidecar's own error body included.
        assert [f["bytes_out"] for f in lines] == [
            len(r.body) for r in (ok, failed, chunked, unknown, health)
        ]
        assert all(f["bytes_out"] > 0 for f in lines[:4])
        assert lines[4]["bytes_out"] == 0
        assert [f["bytes_in"] for f in lines] == [0, 5, 7, 0, 0]
        for fields in lines[3:]:
            assert fields["upstream"] == ""
            assert float(fields["upstream_ms"]) == 0
        assert [f["retries"] for f in lines] == [0] * 5
        # The trace id is the one the client got back (the health check carries none).
        assert [f["trace_id"] for f in lines[:4]] == [
            traceparent_trace(r) for r in (ok, failed, chunked, unknown)
        ]
        assert re.fullmatch(r"[0-9a-f]{32}", lines[4]["trace_id"])
        for fields in lines:
            check_timings(fields)


@FORMS
async def test_untraced_requests_log_an_empty_trace_id(logged: Logged, form: str) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await logged.start(form)
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        await fetch(sidecar.http_port, "GET", f"{APP}/x", {"traceparent": traceparent})
        [fields] = await logged.lines(sidecar, form)
        assert fields["trace_id"] == ""
        assert fields["status"] == 200


@FORMS
async def test_retries_are_logged(logged: Logged, echo_app: EchoApp, form: str) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        folder = write_retry_resources(logged.tmp_path / "resources", 2)
        sidecar = await logged.start(form, resources_paths=(folder,))
        await fetch(sidecar.http_port, "GET", f"{APP}/down?status=503", status=503)
        await fetch(sidecar.http_port, "GET", f"{APP}/up")
        assert len(echo_app.seen) == 4
        lines = await logged.lines(sidecar, form)
        assert [(f["path"], f["status"], f["retries"]) for f in lines] == [
            (f"{APP}/down", 503, 2),
            (f"{APP}/up", 200, 0),
        ]


async def test_configuration_turns_api_logging_on(logged: Logged) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        spec = {"logging": {"apiLogging": {"enabled": True}}}
        sidecar = await logged.start("json", spec, enable_api_logging=False)
        await fetch(sidecar.http_port, "DELETE", f"{APP}/item/9")
        [fields] = await logged.lines(sidecar, "json")
        assert (fields["method"], fields["path"], fields["status"]) == (
            "DELETE",
            f"{APP}/item/9",
            200,
        )


@pytest.mark.parametrize(
    ("api_logging", "expected_paths"),
    [
        pytest.param(
            {},
            ["/v1.0/healthz", f"{APP}/orders/alice", "/customers/alice"],
            id="as-sent",
        ),
        pytest.param(
            {"omitHealthChecks": True},
            [f"{APP}/orders/alice", "/customers/alice"],
            id="omit-health-checks",
        ),
        pytest.param(
            {"obfuscateURLs": True},
            ["/v1.0/healthz", "/v1.0/invoke/{id}/method/*", "*"],
            id="obfuscate-urls",
        ),
        pytest.param(
            {"omitHealthChecks": True, "obfuscateURLs": True},
            ["/v1.0/invoke/{id}/method/*", "*"],
            id="both",
        ),
    ],
)
async def test_api_logging_options_leave_out_health_checks_and_paths(
    logged: Logged, api_logging: dict[str, bool], expected_paths: list[str]
) -> None:
    """`omitHealthChecks` drops health check lines; `obfuscateURLs` logs routes, so a
    caller's path (here, a customer's name) never reaches the log."""
    async with asyncio.timeout(TEST_TIMEOUT):
        spec = {"logging": {"apiLogging": {"enabled": True, **api_logging}}}
        sidecar = await logged.start("json", spec, enable_api_logging=False)
        await fetch(sidecar.http_port, "GET", "/v1.0/healthz", status=204)
        await fetch(sidecar.http_port, "GET", f"{APP}/orders/alice")
        await fetch(sidecar.http_port, "GET", "/customers/alice", {"dapr-app-id": "app"})
        output = await logged.stop_and_read(sidecar)
        lines = access_lines(output, "json")
        assert [fields["path"] for fields in lines] == expected_paths
        assert all(
            fields["app_id"] == "app" for fields in lines if fields["path"] != "/v1.0/healthz"
        )
        if api_logging.get("obfuscateURLs"):
            assert "alice" not in output


@pytest.mark.parametrize(
    ("settings", "spec"),
    [
        pytest.param({}, None, id="default"),
        pytest.param({"enable_api_logging": False}, None, id="flag-false"),
        pytest.param({}, {"logging": {"apiLogging": {"enabled": False}}}, id="configuration-false"),
        pytest.param({"log_as_json": True}, {"tracing": {"samplingRate": "1"}}, id="json-traced"),
    ],
)
async def test_no_lines_unless_api_logging_is_on(
    logged: Logged,
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
    settings: dict[str, Any],
    spec: dict[str, Any] | None,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        # Straight from the factory: none of the logging defaults of `logged.start`.
        sidecar = await observed_sidecar(
            make_sidecar, tmp_path, spec, app_port=echo_app.port, **settings
        )
        for target in (f"{APP}/x", "/v1.0/invoke/nowhere/method/x", "/v1.0/healthz"):
            response = await request(sidecar.http_port, "GET", target)
            assert response.status in (200, 204, 500), response
        assert await logged.stop_and_read(sidecar) == ""


# -- what a client can shape cannot break a line -----------------------------------------------

SHAPED_PATHS = [
    f"{APP}/a%0Aevil",
    f"{APP}/a%0D%0Atime=2000-01-01T00:00:00.000Z%20method=GET",
    f'{APP}/q"uote=x\\y',
    f"{APP}/sp%20ace%09tab",
]


@FORMS
async def test_client_shaped_values_cannot_add_or_forge_a_line(logged: Logged, form: str) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await logged.start(form)
        statuses = []
        for path in SHAPED_PATHS:
            statuses.append((await raw_get(sidecar.http_port, path)).status)
        # An app id from a header, shaped like more fields.
        shaped_id = 'evil status=200 retries=9 "x"'
        by_header = await request(sidecar.http_port, "GET", "/shaped", {"dapr-app-id": shaped_id})
        statuses.append(by_header.status)
        output = await logged.stop_and_read(sidecar)
        assert output.count("\n") == len(statuses), output
        lines = access_lines(output, form)
        assert [f["path"] for f in lines] == [*SHAPED_PATHS, "/shaped"]
        assert [f["status"] for f in lines] == statuses
        assert [f["retries"] for f in lines] == [0] * len(statuses)
        assert lines[-1]["app_id"] in ("", shaped_id)
        assert by_header.status >= 400


# -- sizes of the sidecar's own answers --------------------------------------------------------


async def test_bytes_out_counts_the_sidecars_own_error_body(logged: Logged) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await logged.start("json")
        target = "/v1.0/invoke/nowhere/method/x"
        unknown = await fetch(sidecar.http_port, "GET", target, status=500)
        assert len(unknown.body) > 0
        [fields] = await logged.lines(sidecar, "json")
        assert fields["bytes_out"] == len(unknown.body)


async def test_bytes_out_counts_every_body_the_sidecar_writes_itself(logged: Logged) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await logged.start("json")
        port = sidecar.http_port
        # Refused while reading the head, refused when the app cannot be found, and the
        # metadata routes, with and without a body.
        no_method = await request(port, "GET", "/v1.0/invoke/app")
        unknown = await request(port, "POST", "/v1.0/invoke/nowhere/method/x", body=b"abc")
        metadata = await request(port, "GET", "/v1.0/metadata")
        stored = await request(port, "PUT", "/v1.0/metadata/colour", body=b"blue")
        responses = (no_method, unknown, metadata, stored)
        assert [r.status for r in responses] == [404, 500, 200, 204]
        for response in (no_method, unknown, metadata):
            assert response.body, response
        assert stored.body == b""
        lines = await logged.lines(sidecar, "json")

        assert [(f["method"], f["path"], f["status"]) for f in lines] == [
            ("GET", "/v1.0/invoke/app", 404),
            ("POST", "/v1.0/invoke/nowhere/method/x", 500),
            ("GET", "/v1.0/metadata", 200),
            ("PUT", "/v1.0/metadata/colour", 204),
        ]
        assert [f["bytes_out"] for f in lines] == [len(r.body) for r in responses]
        assert [f["bytes_in"] for f in lines] == [0, 3, 0, 4]


# -- requests refused before their head was whole ---------------------------------------------


async def test_requests_refused_while_reading_the_head_are_logged_without_a_route(
    logged: Logged,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await logged.start("json")
        port = sidecar.http_port
        malformed = parse_responses(
            await raw_exchange(port, b"GET /secret-x HTTP/1.1\r\nHost: a\r\nNo colon\r\n\r\n")
        )
        huge = parse_responses(
            await raw_exchange(
                port, b"GET /y HTTP/1.1\r\nHost: a\r\nX-Big: " + b"z" * 70_000 + b"\r\n\r\n"
            )
        )
        ok = await fetch(port, "GET", f"{APP}/fine")
        assert [r.status for r in (*malformed, *huge, ok)] == [400, 431, 200]
        lines = await logged.lines(sidecar, "json")

        assert [(f["method"], f["path"], f["app_id"], f["status"]) for f in lines] == [
            ("", "", "", 400),
            ("", "", "", 431),
            ("GET", f"{APP}/fine", "app", 200),
        ]
        assert [f["bytes_out"] for f in lines[:2]] == [len(malformed[0].body), len(huge[0].body)]
        assert all(f["client"].startswith("127.0.0.1:") for f in lines)
        assert all(f["trace_id"] == "" and f["upstream"] == "" for f in lines[:2])


# -- requests that never finished the ordinary way --------------------------------------------


async def reset_after(port: int, data: bytes, wait_s: float) -> None:
    """Send `data`, wait, then close with a reset: the client is gone, at once."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(wait_s)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def test_a_request_whose_client_left_first_is_logged_as_499(logged: Logged) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await logged.start("json")
        port = sidecar.http_port
        # The app holds its answer for a second; the client resets after a fifth of one.
        slow = f"GET {APP}/slow?delay=1 HTTP/1.1\r\nHost: a\r\n\r\n".encode()
        await reset_after(port, slow, 0.2)
        ok = await fetch(port, "GET", f"{APP}/fine")
        assert ok.status == 200
        await asyncio.sleep(1.2)  # the app's late answer has no one to go to
        lines = await logged.lines(sidecar, "json")

        assert [(f["method"], f["path"], f["app_id"], f["status"]) for f in lines] == [
            ("GET", f"{APP}/slow", "app", 499),
            ("GET", f"{APP}/fine", "app", 200),
        ]
        lost = lines[0]
        assert lost["bytes_out"] == 0
        assert 150 <= float(lost["total_ms"]) < 1000, lost
        assert float(lost["upstream_ms"]) == 0.0  # no answer came from the app


async def test_a_request_refused_mid_body_is_logged_with_its_refusal(logged: Logged) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await logged.start("json", {"tracing": {"samplingRate": "0"}}, max_body_size=1000)
        port = sidecar.http_port
        head = (
            f"POST {APP}/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunk = b"258\r\n" + b"x" * 600 + b"\r\n"
        [refused] = parse_responses(await raw_exchange(port, head + chunk + chunk + b"0\r\n\r\n"))
        assert refused.status == 413
        # A Dapr error body, closing the connection, with the request's trace context.
        error = json.loads(refused.body)
        assert error["errorCode"] == "ERR_BODY_TOO_LARGE", error
        assert "--max-body-size of 1000 bytes" in error["message"], error
        assert refused.header("connection") == "close", refused
        lines = await logged.lines(sidecar, "json")

        [fields] = lines
        assert (fields["method"], fields["path"], fields["status"]) == (
            "POST",
            f"{APP}/upload",
            413,
        )
        assert fields["bytes_out"] == len(refused.body)
        # The refusal is the request's answer: it carries the request's trace.
        assert fields["trace_id"] == traceparent_trace(refused)


# -- as a process ------------------------------------------------------------------------------


async def test_process_writes_json_lines_to_stdout(echo_app: EchoApp, tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        port = free_port()
        args = app_process_args(echo_app.port)
        async with fastproxy_process(
            tmp_path / "proc", port, *args, "--enable-api-logging", "--log-as-json"
        ) as process:
            ok = await fetch(port, "POST", f"{APP}/orders", body=b"12345678")
            missing = await fetch(port, "GET", "/v1.0/invoke/nowhere/method/x", status=500)
        assert process.popen.returncode == 0, process.stderr
        lines = access_lines(process.stdout, "json")
        # The readiness probes come first.
        probes = [f for f in lines if f["path"] == "/v1.0/healthz"]
        calls = [f for f in lines if f["path"] != "/v1.0/healthz"]
        assert probes and all(f["status"] == 204 for f in probes)
        assert [
            (f["method"], f["path"], f["app_id"], f["status"], f["bytes_in"]) for f in calls
        ] == [
            ("POST", f"{APP}/orders", "app", 200, 8),
            ("GET", "/v1.0/invoke/nowhere/method/x", "nowhere", 500, 0),
        ]
        assert calls[0]["upstream"] == f"127.0.0.1:{echo_app.port}"
        assert calls[0]["bytes_out"] == len(ok.body)
        assert calls[1]["bytes_out"] == len(missing.body) > 0
