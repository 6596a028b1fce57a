"""Shared set-up for the observability tests: configuration files, sidecars, a span
collector, a strict reader of the Prometheus exposition and a `fastproxy run` process.

Nothing here is a pytest fixture by itself: test modules wrap what they need
(`running_collector`, for one) in fixtures of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from fastproxy import Sidecar
from tests.integration.conftest import (
    EchoApp,
    Response,
    SidecarFactory,
    parse_responses,
    raw_exchange,
    request,
)

HOST = "127.0.0.1"
APP = "/v1.0/invoke/app/method"
REPO = Path(__file__).resolve().parents[2]
ZIPKIN_PATH = "/api/v2/spans"
OTLP_PATH = "/v1/traces"


# -- waiting -----------------------------------------------------------------------------------


async def eventually(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll `predicate` until it holds; fail once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        await asyncio.sleep(0.01)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connections are refused."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- configuration files and sidecars ----------------------------------------------------------


def write_yaml(folder: Path, name: str, document: dict[str, Any]) -> str:
    """`document` as `folder/name.yaml`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return str(path)


def write_configuration(folder: Path, name: str, spec: dict[str, Any]) -> str:
    """A Dapr Configuration file holding `spec`; returns its path."""
    document = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": name},
        "spec": spec,
    }
    return write_yaml(folder, name, document)


def write_retry_resources(folder: Path, max_retries: int) -> str:
    """A resources folder whose Resiliency retries calls to app `app` `max_retries` times."""
    policy = {"policy": "constant", "duration": "10ms", "maxRetries": max_retries}
    document = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Resiliency",
        "metadata": {"name": "retries"},
        "spec": {
            "policies": {"retries": {"quick": policy}},
            "targets": {"apps": {"app": {"retry": "quick"}}},
        },
    }
    write_yaml(folder, "resiliency", document)
    return str(folder)


async def observed_sidecar(
    make_sidecar: SidecarFactory,
    tmp_path: Path,
    spec: dict[str, Any] | None = None,
    **settings: Any,
) -> Sidecar:
    """A sidecar with metrics on loopback and, unless `spec` is None, a Configuration."""
    settings.setdefault("metrics_listen_address", HOST)
    if spec is not None:
        name = f"config-{settings.get('app_id', 'app')}"
        settings["config_file"] = write_configuration(tmp_path, name, spec)
    return await make_sidecar(**settings)


async def caller_and_callee(
    make_sidecar: SidecarFactory,
    tmp_path: Path,
    echo_app: EchoApp,
    callee_spec: dict[str, Any] | None = None,
    caller_spec: dict[str, Any] | None = None,
) -> tuple[Sidecar, Sidecar]:
    """Sidecar `b` in front of the echo app, and sidecar `a` that finds `b` statically."""
    b = await observed_sidecar(
        make_sidecar, tmp_path, callee_spec, app_id="b", app_port=echo_app.port
    )
    resolution = {
        "component": "static",
        "configuration": {"apps": {"b": [f"{HOST}:{b.internal_port}"]}},
    }
    a = await observed_sidecar(
        make_sidecar, tmp_path, {**(caller_spec or {}), "nameResolution": resolution}, app_id="a"
    )
    return a, b


# -- requests ----------------------------------------------------------------------------------


async def fetch(
    port: int,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    status: int = 200,
) -> Response:
    """One request on its own connection, whose answer must have `status`."""
    response = await request(port, method, target, headers, body)
    assert response.status == status, response
    return response


async def raw_get(port: int, target: str, header_lines: list[str] | None = None) -> Response:
    """A GET written byte for byte (repeated or odd headers included); its one answer."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {HOST}", "Connection: close", *(header_lines or [])]
    raw = await raw_exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    [response] = parse_responses(raw)
    return response


# -- the span collector ------------------------------------------------------------------------


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    # The client's (host, port): the same for POSTs that came on one connection.
    peer: tuple[str, int] | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


@dataclass
class Collector:
    """A Zipkin and OTLP/HTTP collector on loopback that records every POST.

    It answers as those collectors do (404 elsewhere) unless given a `status`,
    and holds every answer back while `stall` is set, until `release`.
    """

    port: int = 0
    posts: list[Post] = field(default_factory=list)
    status: int | None = None
    stall: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://{HOST}:{self.port}{path}"

    @property
    def zipkin_url(self) -> str:
        return self.url(ZIPKIN_PATH)

    @property
    def otlp_address(self) -> str:
        return f"{HOST}:{self.port}"

    def answer_status(self, path: str) -> int:
        if self.status is not None:
            return self.status
        return {ZIPKIN_PATH: 202, OTLP_PATH: 200}.get(path, 404)

    def zipkin_spans(self) -> list[dict[str, Any]]:
        spans: list[dict[str, Any]] = []
        for post in self.posts:
            if post.path == ZIPKIN_PATH:
                spans.extend(json.loads(post.body))
        return spans

    def zipkin_span_ids(self) -> list[str]:
        """The ids of the Zipkin spans in every POST, whatever its path, in order."""
        return [span["id"] for post in self.posts for span in json.loads(post.body)]

    def zipkin_trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [span for span in self.zipkin_spans() if span["traceId"] == trace_id]

    def otlp_spans(self) -> list[tuple[str, dict[str, Any]]]:
        """(service.name, span) for every OTLP span received."""
        out: list[tuple[str, dict[str, Any]]] = []
        for post in self.posts:
            if post.path != OTLP_PATH:
                continue
            for resource_spans in json.loads(post.body)["resourceSpans"]:
                attributes = resource_spans["resource"]["attributes"]
                service = next(
                    a["value"]["stringValue"] for a in attributes if a["key"] == "service.name"
                )
                for scope_spans in resource_spans["scopeSpans"]:
                    out.extend((service, span) for span in scope_spans["spans"])
        return out


@contextlib.asynccontextmanager
async def running_collector(
    port: int = 0, ssl_context: ssl.SSLContext | None = None, status: int | None = None
) -> AsyncIterator[Collector]:
    """A collector listening on `port` (0: any); stalled answers are released at the end."""
    collector = Collector(status=status)

    async def record(req: web.Request) -> web.Response:
        body = await req.read()
        peer = req.transport.get_extra_info("peername") if req.transport else None
        collector.posts.append(Post(req.path_qs, dict(req.headers), body, peer))
        if collector.stall:
            await collector.release.wait()
        return web.Response(status=collector.answer_status(req.path), text="{}")

    app = web.Application()
    app.router.add_post("/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, port, ssl_context=ssl_context)
        await site.start()
        collector.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield collector
    finally:
        collector.release.set()
        await runner.cleanup()


# -- the Prometheus exposition -----------------------------------------------------------------

Labels = frozenset[tuple[str, str]]


def L(**labels: str) -> Labels:  # noqa: N802 - reads like a label set
    return frozenset(labels.items())


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"


@dataclass
class Exposition:
    """One scrape: metric families with their type, and every sample by name and labels."""

    types: dict[str, str] = field(default_factory=dict)
    samples: dict[str, dict[Labels, float]] = field(default_factory=lambda: defaultdict(dict))

    def family(self, name: str) -> dict[Labels, float]:
        return dict(self.samples.get(name, {}))

    def value(self, name: str, **labels: str) -> float:
        """The sample of `name` with exactly `labels`, which must be there."""
        series = self.samples.get(name, {})
        assert L(**labels) in series, f"{name}{labels} not in {sorted(series, key=str)}"
        return series[L(**labels)]

    def find(self, name: str, **labels: str) -> float | None:
        """The one sample of `name` carrying at least `labels`, if any."""
        found = [v for series, v in self.samples.get(name, {}).items() if L(**labels) <= series]
        assert len(found) <= 1, f"{name} {labels} matches several samples: {found}"
        return found[0] if found else None

    def histogram(
        self, name: str, labels: Labels
    ) -> tuple[list[tuple[float, float]], float, float]:
        """(le, cumulative count) pairs in order, then _sum and _count."""
        buckets = []
        for series, value in self.samples.get(f"{name}_bucket", {}).items():
            as_dict = dict(series)
            le = as_dict.pop("le")
            if L(**as_dict) == labels:
                buckets.append((math.inf if le == "+Inf" else float(le), value))
        buckets.sort()
        return buckets, self.samples[f"{name}_sum"][labels], self.samples[f"{name}_count"][labels]


def _labels(text: str) -> Labels:
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        assert match is not None, f"malformed labels at {text[position:]!r}"
        value = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], match.group(2))
        pairs.append((match.group(1), value))
        position = match.end()
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"repeated label name in {text!r}"
    return frozenset(pairs)


def parse_exposition(text: str) -> Exposition:
    """Prometheus text format 0.0.4, strictly: every sample must belong to a declared family."""
    parsed = Exposition()
    assert text.endswith("\n"), "the exposition must end with a newline"
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in parsed.types, f"{name} declared twice"
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}, line
            parsed.types[name] = kind
            continue
        assert line and not line.startswith("#"), f"unexpected line {line!r}"
        match = _SAMPLE.fullmatch(line)
        assert match is not None, f"malformed sample {line!r}"
        name, label_text, raw = match.groups()
        if name not in parsed.types:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert parsed.types.get(family) == "histogram", f"{name} has no TYPE line"
        labels = _labels(label_text or "")
        assert labels not in parsed.samples[name], f"duplicate series {line!r}"
        parsed.samples[name][labels] = float(raw)
    return parsed


def read_exposition(response: Response) -> Exposition:
    """A scrape's answer: 200, the exposition's content type, and a body that parses."""
    assert response.status == 200, response
    content_type = response.header("Content-Type") or ""
    assert content_type.startswith(METRICS_CONTENT_TYPE), content_type
    return parse_exposition(response.body.decode())


async def scrape(sidecar: Sidecar, path: str = "/metrics") -> Exposition:
    assert sidecar.metrics_port is not None
    return read_exposition(await request(sidecar.metrics_port, "GET", path))


def request_count(exposition: Exposition, path: str, status: str = "200") -> float:
    """dapr_http_server_request_count for GETs of `path` to app `app`."""
    return exposition.value(
        "dapr_http_server_request_count", app_id="app", method="GET", path=path, status=status
    )


def check_histogram(exposition: Exposition, name: str, labels: Labels, count: int) -> None:
    """Buckets cumulative and ending at +Inf, +Inf equal to _count, _count equal to `count`."""
    buckets, total, observed = exposition.histogram(name, labels)
    assert buckets, f"{name} {set(labels)} has no buckets"
    assert buckets[-1][0] == math.inf
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {buckets}"
    assert buckets[-1][1] == observed == count, (name, set(labels), buckets, observed, count)
    assert total >= 0


# -- `python -m fastproxy run` -----------------------------------------------------------------


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")


def app_process_args(app_port: int, metrics_port: int = 0) -> list[str]:
    """The flags for app id `app` on `app_port`, listening on loopback only."""
    return [
        *("--app-id", "app", "--app-port", str(app_port)),
        *("--dapr-listen-addresses", HOST, "--dapr-internal-port", "0"),
        *("--metrics-port", str(metrics_port)),
    ]


@contextlib.asynccontextmanager
async def fastproxy_process(folder: Path, http_port: int, *args: str) -> AsyncIterator[Process]:
    """`python -m fastproxy run ...` ready on `http_port`; stopped (SIGTERM, then kill) after."""
    folder.mkdir(parents=True, exist_ok=True)
    out_path, err_path = folder / "stdout.txt", folder / "stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "fastproxy", "run", "--dapr-http-port", str(http_port), *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    process = Process(popen, out_path, err_path)
    try:
        deadline = time.monotonic() + 15.0
        while True:
            assert popen.poll() is None, f"fastproxy exited: {process.stderr}"
            try:
                if (await request(http_port, "GET", "/v1.0/healthz", timeout=1.0)).status:
                    break
            except (OSError, AssertionError):
                pass
            assert time.monotonic() < deadline, f"fastproxy not ready: {process.stderr}"
            await asyncio.sleep(0.05)
        yield process
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(popen.wait), 10.0)
            except TimeoutError:
                popen.kill()
                popen.wait(timeout=5)
