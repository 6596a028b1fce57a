"""The ServerTiming feature: the sidecar's and the app's share of each response, on the wire.

With `spec.features: [{name: ServerTiming, enabled: true}]` every response
carries `Server-Timing: sidecar;dur=<ms>, app;dur=<ms>`; without it, none does.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fastproxy import Sidecar
from tests.integration.conftest import EchoApp, Response, SidecarFactory, request
from tests.integration.observability_fixtures import APP, fetch, observed_sidecar

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

TEST_TIMEOUT = 30.0
FEATURE_ON = {"features": [{"name": "ServerTiming", "enabled": True}]}
_ENTRY = re.compile(r"([A-Za-z][A-Za-z0-9_-]*);dur=([^,;\s]+)")

Timed = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
def timed_sidecar(make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path) -> Timed:
    """`await timed_sidecar(spec=FEATURE_ON, **settings)`: a sidecar for the echo app."""

    async def start(spec: dict[str, Any] = FEATURE_ON, **settings: Any) -> Sidecar:
        return await observed_sidecar(
            make_sidecar, tmp_path, spec, app_port=echo_app.port, **settings
        )

    return start


def timings(response: Response) -> dict[str, float]:
    """The Server-Timing entries of a response: exactly `sidecar` and `app`, each >= 0."""
    values = [v for k, v in response.headers if k.lower() == "server-timing"]
    assert len(values) == 1, f"expected one Server-Timing header: {response.headers}"
    entries = [entry.strip() for entry in values[0].split(",")]
    parsed: dict[str, float] = {}
    for entry in entries:
        match = _ENTRY.fullmatch(entry)
        assert match is not None, f"malformed Server-Timing entry {entry!r}"
        duration = float(match.group(2))
        assert math.isfinite(duration) and duration >= 0, entry
        parsed[match.group(1)] = duration
    assert list(parsed) == ["sidecar", "app"], values
    return parsed


async def timed(port: int, method: str, target: str, body: bytes = b"") -> tuple[Response, float]:
    started = time.monotonic()
    response = await request(port, method, target, body=body)
    return response, (time.monotonic() - started) * 1000.0


async def check_sidecar_only(
    sidecar: Sidecar, method: str, target: str, status: int, body: bytes = b""
) -> None:
    """An answer the sidecar wrote itself: no app time, and no more sidecar time than waited."""
    answer, wall = await timed(sidecar.http_port, method, target, body)
    assert answer.status == status, answer
    timing = timings(answer)
    assert timing["app"] == 0.0
    assert timing["sidecar"] <= wall


@pytest.mark.parametrize(
    "settings", [{}, {"enable_metrics": False}], ids=["with-metrics", "timing-alone"]
)
async def test_server_timing_splits_sidecar_and_app_time(
    timed_sidecar: Timed, settings: dict[str, Any]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await timed_sidecar(**settings)
        quick, quick_wall = await timed(sidecar.http_port, "POST", f"{APP}/quick", b"{}")
        assert quick.status == 200, quick
        quick_timing = timings(quick)
        slow, slow_wall = await timed(sidecar.http_port, "GET", f"{APP}/slow?delay=0.15")
        assert slow.status == 200, slow
        slow_timing = timings(slow)
        # The app's share holds its 150 ms wait; neither share exceeds what the client waited.
        assert slow_timing["app"] >= 150.0
        assert slow_timing["sidecar"] < 150.0
        for timing, wall in ((quick_timing, quick_wall), (slow_timing, slow_wall)):
            assert timing["sidecar"] + timing["app"] <= wall


async def test_server_timing_on_the_sidecars_own_answers(timed_sidecar: Timed) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await timed_sidecar()
        await check_sidecar_only(sidecar, "GET", "/v1.0/invoke/nowhere/method/x", 500)


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/v1.0/healthz", 204),
        ("GET", "/v1.0/healthz/outbound", 204),
        ("GET", "/v1.0/healthz?appid=other", 500),
        ("GET", "/v1.0/metadata", 200),
        ("PUT", "/v1.0/metadata/colour", 204),
    ],
    ids=["healthz", "outbound", "healthz-wrong-app", "metadata", "metadata-put"],
)
async def test_server_timing_on_local_routes(
    timed_sidecar: Timed, method: str, target: str, status: int
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await timed_sidecar()
        body = b"blue" if method == "PUT" else b""
        await check_sidecar_only(sidecar, method, target, status, body)


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"features": [{"name": "ServerTiming", "enabled": False}]},
        {"features": [{"name": "SomethingElse", "enabled": True}]},
        {
            "features": [
                {"name": "ServerTiming", "enabled": True},
                {"name": "ServerTiming", "enabled": False},
            ]
        },
    ],
    ids=["no-features", "disabled", "other-feature", "later-entry-disables"],
)
async def test_no_server_timing_without_the_feature(
    timed_sidecar: Timed, spec: dict[str, Any]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await timed_sidecar(spec)
        ok = await fetch(sidecar.http_port, "GET", f"{APP}/x")
        error = await fetch(sidecar.http_port, "GET", "/v1.0/invoke/nowhere/method/x", status=500)
        for response in (ok, error):
            assert response.header("Server-Timing") is None, response
