"""Metrics scraped over HTTP from running sidecars after a known mix of requests.

Each test drives real requests through real sidecars, scrapes the Prometheus
endpoint like Prometheus would and reads the exposition with the small parser
below, so counts and label sets are checked exactly as a dashboard sees them.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastproxy import Sidecar
from fastproxy.observability.metrics import DEFAULT_MAX_SERIES
from tests.integration.conftest import (
    EchoApp,
    SidecarFactory,
    parse_responses,
    raw_exchange,
    request,
)
from tests.integration.ports import free_port
from tests.integration.test_access_log import fastproxy_process

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

HOST = "127.0.0.1"
TEST_TIMEOUT = 60.0
APP = "/v1.0/invoke/app/method"

Labels = frozenset[tuple[str, str]]


def L(**labels: str) -> Labels:  # noqa: N802 - reads like a label set
    return frozenset(labels.items())


# -- a small exposition-format parser ---------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass
class Exposition:
    """One scrape: metric families with their type, and every sample by name and labels."""

    types: dict[str, str] = field(default_factory=dict)
    samples: dict[str, dict[Labels, float]] = field(default_factory=lambda: defaultdict(dict))

    def family(self, name: str) -> dict[Labels, float]:
        return dict(self.samples.get(name, {}))

    def value(self, name: str, **labels: str) -> float:
        series = self.samples.get(name, {})
        assert L(**labels) in series, f"{name}{labels} not in {sorted(series, key=str)}"
        return series[L(**labels)]

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
        family = name
        if name not in parsed.types:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert parsed.types.get(family) == "histogram", f"{name} has no TYPE line"
        labels = _labels(label_text or "")
        value = float(raw)
        assert labels not in parsed.samples[name], f"duplicate series {line!r}"
        parsed.samples[name][labels] = value
    return parsed


async def scrape(sidecar: Sidecar, path: str = "/metrics") -> Exposition:
    assert sidecar.metrics_port is not None
    response = await request(sidecar.metrics_port, "GET", path)
    assert response.status == 200, response
    content_type = response.header("Content-Type") or ""
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    return parse_exposition(response.body.decode())


def check_histogram(exposition: Exposition, name: str, labels: Labels, count: int) -> None:
    """Buckets cumulative and ending at +Inf, +Inf equal to _count, _count equal to `count`."""
    buckets, total, observed = exposition.histogram(name, labels)
    assert buckets, f"{name} {set(labels)} has no buckets"
    assert buckets[-1][0] == math.inf
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {buckets}"
    assert buckets[-1][1] == observed == count, (name, set(labels), buckets, observed, count)
    assert total >= 0


def write_configuration(folder: Path, name: str, spec: dict[str, Any]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    document = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": name},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(document))
    return str(path)


async def sidecar_with(
    make_sidecar: SidecarFactory,
    tmp_path: Path,
    spec: dict[str, Any] | None = None,
    **settings: Any,
) -> Sidecar:
    settings.setdefault("metrics_listen_address", HOST)
    if spec is not None:
        name = f"config-{settings.get('app_id', 'app')}"
        settings["config_file"] = write_configuration(tmp_path, name, spec)
    return await make_sidecar(**settings)


async def pipelined(port: int, requests: list[bytes], batch: int = 250) -> list[int]:
    """Send requests pipelined on keep-alive connections, `batch` per connection; statuses."""
    statuses: list[int] = []
    for start in range(0, len(requests), batch):
        chunk = requests[start : start + batch]
        last = chunk[-1].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        raw = await raw_exchange(port, b"".join([*chunk[:-1], last]), timeout=20.0)
        responses = parse_responses(raw)
        assert len(responses) == len(chunk), f"{len(responses)} responses for {len(chunk)}"
        statuses.extend(response.status for response in responses)
    return statuses


def get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1")


# -- one sidecar, a known mix ------------------------------------------------------------------


async def test_a_known_mix_is_counted_exactly_with_daprs_labels(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await sidecar_with(make_sidecar, tmp_path, app_port=echo_app.port)
        responses = []
        for index in range(3):
            response = await request(sidecar.http_port, "GET", f"{APP}/orders?page={index}")
            assert response.status == 200, response
            responses.append(response)
        for _ in range(2):
            response = await request(
                sidecar.http_port, "POST", f"{APP}/pay?status=503", body=b"x" * 100
            )
            assert response.status == 503, response
            responses.append(response)
        unknown = await request(sidecar.http_port, "GET", "/v1.0/invoke/nowhere/method/x")
        assert unknown.status == 500, unknown
        assert unknown.body
        health = await request(sidecar.http_port, "GET", "/v1.0/healthz")
        assert health.status == 204, health
        responses.extend((unknown, health))

        exposition = await scrape(sidecar)
        server = {
            L(app_id="app", method="GET", path=f"{APP}/orders", status="200"): 3,
            L(app_id="app", method="POST", path=f"{APP}/pay", status="503"): 2,
            L(app_id="app", method="GET", path="/v1.0/invoke/nowhere/method/x", status="500"): 1,
            L(app_id="app", method="GET", path="/v1.0/healthz", status="204"): 1,
        }
        assert exposition.types["dapr_http_server_request_count"] == "counter"
        assert exposition.types["dapr_http_server_latency"] == "histogram"
        assert exposition.family("dapr_http_server_request_count") == server
        assert exposition.family("dapr_http_server_latency_count") == server
        for labels, count in server.items():
            check_histogram(exposition, "dapr_http_server_latency", labels, count)
        # Only what reached the app is a round trip to it, labelled with the path the
        # app was asked for, as daprd labels its app channel.
        client = {
            L(app_id="app", method="GET", path="/orders", status="200"): 3,
            L(app_id="app", method="POST", path="/pay", status="503"): 2,
        }
        assert exposition.family("dapr_http_client_completed_count") == client
        for labels, count in client.items():
            check_histogram(exposition, "dapr_http_client_roundtrip_latency", labels, count)
        # Every request the sidecar answered, by body sizes and its own time.
        app = L(app_id="app")
        check_histogram(exposition, "dapr_http_server_request_bytes", app, 7)
        assert exposition.value("dapr_http_server_request_bytes_sum", app_id="app") == 200
        # Response bodies, the sidecar's own error body included.
        check_histogram(exposition, "dapr_http_server_response_bytes", app, 7)
        assert exposition.value("dapr_http_server_response_bytes_sum", app_id="app") == sum(
            len(response.body) for response in responses
        )
        check_histogram(exposition, "fastproxy_sidecar_time_ms", app, 7)
        # No service invocation between sidecars happened.
        assert exposition.family("dapr_runtime_service_invocation_req_sent_total") == {}
        assert exposition.family("dapr_runtime_service_invocation_req_recv_total") == {}
        assert exposition.family("fastproxy_retries_total") == {}
        assert exposition.family("fastproxy_acl_denied_total") == {}
        assert exposition.value("fastproxy_metrics_series_overflow_total") == 0
        # The scrape itself is not a request to the sidecar's API.
        again = await scrape(sidecar, "/")
        assert again.family("dapr_http_server_request_count") == server


async def test_latency_buckets_come_from_the_configuration(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        spec = {"metric": {"latencyDistributionBuckets": [50, 5, 5000]}}
        sidecar = await sidecar_with(make_sidecar, tmp_path, spec, app_port=echo_app.port)
        slow = await request(sidecar.http_port, "GET", f"{APP}/slow?delay=0.1")
        assert slow.status == 200, slow
        exposition = await scrape(sidecar)
        for name, path in (
            ("dapr_http_server_latency", f"{APP}/slow"),
            ("dapr_http_client_roundtrip_latency", "/slow"),
        ):
            labels = L(app_id="app", method="GET", path=path, status="200")
            buckets, total, count = exposition.histogram(name, labels)
            # At least 100 ms: beyond the 5 and 50 ms bounds, within 5000.
            assert buckets == [(5.0, 0), (50.0, 0), (5000.0, 1), (math.inf, 1)], (name, buckets)
            assert count == 1
            assert 100 <= total < 5000


async def test_open_connections_and_pool_gauges_are_read_at_scrape_time(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await sidecar_with(make_sidecar, tmp_path, app_port=echo_app.port)
        before = await scrape(sidecar)
        assert before.value("fastproxy_open_connections") == 0
        clients = [await asyncio.open_connection(HOST, sidecar.http_port) for _ in range(3)]
        try:
            for reader, writer in clients:
                writer.write(get(f"{APP}/held"))
                await reader.readuntil(b"\r\n\r\n")
            during = await scrape(sidecar)
            assert during.value("fastproxy_open_connections") == 3
            pool = f"http://127.0.0.1:{echo_app.port}"
            assert during.value("fastproxy_upstream_pool_connections", pool=pool, state="open") >= 1
        finally:
            for _, writer in clients:
                writer.close()
        deadline = time.monotonic() + 5.0
        while (await scrape(sidecar)).value("fastproxy_open_connections") != 0:
            assert time.monotonic() < deadline, "connections still counted after closing"
            await asyncio.sleep(0.02)


# -- bounds on series --------------------------------------------------------------------------


async def test_a_flood_of_distinct_paths_keeps_series_bounded_and_totals_exact(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await sidecar_with(make_sidecar, tmp_path, app_port=echo_app.port)
        flood = 3000
        statuses = await pipelined(
            sidecar.http_port, [get(f"{APP}/flood/{index}") for index in range(flood)]
        )
        assert statuses == [200] * flood
        exposition = await scrape(sidecar)
        other = L(app_id="_other", method="_other", path="_other", status="_other")
        for name in ("dapr_http_server_request_count", "dapr_http_client_completed_count"):
            counts = exposition.family(name)
            assert len(counts) <= DEFAULT_MAX_SERIES + 1, (name, len(counts))
            assert sum(counts.values()) == flood, name
            assert counts[other] == flood - (len(counts) - 1), name
            assert all(value == 1 for labels, value in counts.items() if labels != other)
        for name in ("dapr_http_server_latency", "dapr_http_client_roundtrip_latency"):
            counts = exposition.family(f"{name}_count")
            assert len(counts) <= DEFAULT_MAX_SERIES + 1, (name, len(counts))
            assert sum(counts.values()) == flood, name
            check_histogram(exposition, name, other, int(counts[other]))
        # The overflow counter is the sum of what every metric folded into `_other`.
        folded = 0.0
        for name, kind in exposition.types.items():
            sample = f"{name}_count" if kind == "histogram" else name
            for labels, value in exposition.family(sample).items():
                if labels and all(v == "_other" for _, v in labels):
                    folded += value
        assert folded >= 4 * (flood - DEFAULT_MAX_SERIES)
        assert exposition.value("fastproxy_metrics_series_overflow_total") == folded


# -- the path label ----------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["metric", "metrics"])
async def test_low_cardinality_paths_label_by_pattern_or_blank(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path, spelling: str
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        spec = {
            spelling: {
                "http": {"increasedCardinality": False, "pathMatching": ["/orders/{orderID}"]}
            }
        }
        sidecar = await sidecar_with(make_sidecar, tmp_path, spec, app_port=echo_app.port)
        for target in (f"{APP}/orders/1", f"{APP}/orders/2?x=1", f"{APP}/other", f"{APP}/a/b"):
            response = await request(sidecar.http_port, "GET", target)
            assert response.status == 200, response
        exposition = await scrape(sidecar)
        unmatched = L(app_id="app", method="GET", path="", status="200")
        assert exposition.family("dapr_http_server_request_count") == {
            L(
                app_id="app",
                method="GET",
                path="/v1.0/invoke/{app_id}/method/orders/{orderID}",
                status="200",
            ): 2,
            unmatched: 2,
        }
        # The app leg matches the pattern against the path the app was asked for.
        assert exposition.family("dapr_http_client_completed_count") == {
            L(app_id="app", method="GET", path="/orders/{orderID}", status="200"): 2,
            unmatched: 2,
        }


async def test_excluded_verbs_blank_the_method_label(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        spec = {"metric": {"http": {"excludeVerbs": True}}}
        sidecar = await sidecar_with(make_sidecar, tmp_path, spec, app_port=echo_app.port)
        for method in ("GET", "POST", "DELETE"):
            response = await request(sidecar.http_port, method, f"{APP}/x")
            assert response.status == 200, response
        exposition = await scrape(sidecar)
        assert exposition.family("dapr_http_server_request_count") == {
            L(app_id="app", method="", path=f"{APP}/x", status="200"): 3
        }
        assert exposition.family("dapr_http_client_completed_count") == {
            L(app_id="app", method="", path="/x", status="200"): 3
        }


# -- switched off ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "spec"),
    [
        pytest.param({"enable_metrics": False}, None, id="enable-metrics-false"),
        pytest.param({}, {"metric": {"enabled": False}}, id="configuration-disabled"),
        pytest.param({"enable_metrics": False}, {"metric": {"enabled": True}}, id="flag-wins"),
    ],
)
async def test_metrics_off_means_no_listener(
    make_sidecar: SidecarFactory,
    echo_app: EchoApp,
    tmp_path: Path,
    settings: dict[str, Any],
    spec: dict[str, Any] | None,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await sidecar_with(
            make_sidecar, tmp_path, spec, app_port=echo_app.port, **settings
        )
        assert sidecar.metrics_port is None
        response = await request(sidecar.http_port, "GET", f"{APP}/still-served")
        assert response.status == 200, response


@pytest.mark.parametrize("enabled", [True, False], ids=["enable-metrics", "enable-metrics=false"])
async def test_cli_flag_decides_whether_the_metrics_port_listens(
    echo_app: EchoApp, tmp_path: Path, enabled: bool
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        port, metrics_port = free_port(), free_port()
        flag = "--enable-metrics" if enabled else "--enable-metrics=false"
        async with fastproxy_process(
            tmp_path / "proc",
            port,
            "--app-id",
            "app",
            "--app-port",
            str(echo_app.port),
            "--dapr-listen-addresses",
            HOST,
            "--dapr-internal-port",
            "0",
            "--metrics-port",
            str(metrics_port),
            "--metrics-listen-address",
            HOST,
            flag,
        ):
            response = await request(port, "GET", f"{APP}/cli")
            assert response.status == 200, response
            if not enabled:
                with pytest.raises(ConnectionRefusedError):
                    await request(metrics_port, "GET", "/metrics")
                return
            scraped = await request(metrics_port, "GET", "/metrics")
            assert scraped.status == 200, scraped
            exposition = parse_exposition(scraped.body.decode())
            assert (
                exposition.value(
                    "dapr_http_server_request_count",
                    app_id="app",
                    method="GET",
                    path=f"{APP}/cli",
                    status="200",
                )
                == 1
            )


async def test_metrics_on_by_default_serve_at_root_and_metrics(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await sidecar_with(make_sidecar, tmp_path, app_port=echo_app.port)
        assert sidecar.metrics_port is not None
        response = await request(sidecar.http_port, "GET", f"{APP}/one")
        assert response.status == 200, response
        for path in ("/", "/metrics"):
            exposition = await scrape(sidecar, path)
            assert (
                exposition.value(
                    "dapr_http_server_request_count",
                    app_id="app",
                    method="GET",
                    path=f"{APP}/one",
                    status="200",
                )
                == 1
            )


# -- two sidecars ------------------------------------------------------------------------------


async def test_service_invocation_is_counted_on_both_sides(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b = await sidecar_with(make_sidecar, tmp_path, app_id="b", app_port=echo_app.port)
        resolution = {
            "component": "static",
            "configuration": {"apps": {"b": [f"{HOST}:{b.internal_port}"]}},
        }
        a = await sidecar_with(make_sidecar, tmp_path, {"nameResolution": resolution}, app_id="a")
        for _ in range(3):
            response = await request(a.http_port, "GET", "/v1.0/invoke/b/method/ok")
            assert response.status == 200, response
        for _ in range(2):
            response = await request(a.http_port, "POST", "/v1.0/invoke/b/method/no?status=503")
            assert response.status == 503, response
        # An app no instance can be found for is never sent anything.
        for _ in range(2):
            response = await request(a.http_port, "GET", "/v1.0/invoke/zz/method/x")
            assert response.status == 500, response

        caller = await scrape(a)
        assert caller.family("dapr_runtime_service_invocation_req_sent_total") == {
            L(app_id="a", dst_app_id="b", type="unary"): 5
        }
        assert caller.family("dapr_runtime_service_invocation_res_recv_total") == {
            L(app_id="a", src_app_id="b", status="200", type="unary"): 3,
            L(app_id="a", src_app_id="b", status="503", type="unary"): 2,
        }
        for status, count in (("200", 3), ("503", 2)):
            check_histogram(
                caller,
                "dapr_runtime_service_invocation_res_recv_latency_ms",
                L(app_id="a", src_app_id="b", status=status),
                count,
            )
        assert caller.family("dapr_http_server_request_count") == {
            L(app_id="a", method="GET", path="/v1.0/invoke/b/method/ok", status="200"): 3,
            L(app_id="a", method="POST", path="/v1.0/invoke/b/method/no", status="503"): 2,
            L(app_id="a", method="GET", path="/v1.0/invoke/zz/method/x", status="500"): 2,
        }
        # Each name missed the cache once; later look-ups were answered from it.
        assert caller.family("fastproxy_resolver_cache_total") == {
            L(result="hit"): 4,
            L(result="miss"): 2,
            L(result="stale"): 0,
            L(result="negative"): 1,
            L(result="lookup"): 2,
            L(result="error"): 0,
        }
        # a has no app of its own to call, and receives nothing.
        assert caller.family("dapr_http_client_completed_count") == {}
        assert caller.family("dapr_runtime_service_invocation_req_recv_total") == {}

        callee = await scrape(b)
        assert callee.family("dapr_runtime_service_invocation_req_recv_total") == {
            L(app_id="b", src_app_id="a"): 5
        }
        assert callee.family("dapr_runtime_service_invocation_res_sent_total") == {
            L(app_id="b", dst_app_id="a", status="200"): 3,
            L(app_id="b", dst_app_id="a", status="503"): 2,
        }
        assert callee.family("dapr_runtime_service_invocation_req_sent_total") == {}
        # b's round trips to its app, labelled with the path the app was asked for.
        assert callee.family("dapr_http_client_completed_count") == {
            L(app_id="b", method="GET", path="/ok", status="200"): 3,
            L(app_id="b", method="POST", path="/no", status="503"): 2,
        }
        for labels, completed in callee.family("dapr_http_client_completed_count").items():
            check_histogram(callee, "dapr_http_client_roundtrip_latency", labels, int(completed))
        # Delivered calls are not requests to b's own HTTP API.
        assert callee.family("dapr_http_server_request_count") == {}


async def test_access_control_denials_are_counted_on_the_callee(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        # Without mTLS no caller has an identity: a global deny refuses every delivered call,
        # and the caller counted is the one the calling sidecar named (dapr-caller-app-id).
        b = await sidecar_with(
            make_sidecar,
            tmp_path,
            {"accessControl": {"defaultAction": "deny", "trustDomain": "public"}},
            app_id="b",
            app_port=echo_app.port,
        )
        resolution = {
            "component": "static",
            "configuration": {"apps": {"b": [f"{HOST}:{b.internal_port}"]}},
        }
        a = await sidecar_with(make_sidecar, tmp_path, {"nameResolution": resolution}, app_id="a")
        for _ in range(3):
            response = await request(a.http_port, "GET", "/v1.0/invoke/b/method/secret")
            assert response.status == 403, response
        assert echo_app.seen == []
        callee = await scrape(b)
        assert callee.family("fastproxy_acl_denied_total") == {L(app_id="b", src_app_id="a"): 3}
        assert callee.family("dapr_runtime_service_invocation_req_recv_total") == {
            L(app_id="b", src_app_id="a"): 3
        }
        assert callee.family("dapr_http_client_completed_count") == {}
        assert sum(callee.family("dapr_runtime_service_invocation_res_sent_total").values()) == 3
        assert {
            dict(labels)["status"]
            for labels in callee.family("dapr_runtime_service_invocation_res_sent_total")
        } == {"403"}
        caller = await scrape(a)
        assert caller.family("fastproxy_acl_denied_total") == {}
        assert caller.family("dapr_runtime_service_invocation_res_recv_total") == {
            L(app_id="a", src_app_id="b", status="403", type="unary"): 3
        }


# -- resiliency --------------------------------------------------------------------------------


def write_retry_resources(folder: Path, max_retries: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Resiliency",
        "metadata": {"name": "retries"},
        "spec": {
            "policies": {
                "retries": {
                    "quick": {"policy": "constant", "duration": "10ms", "maxRetries": max_retries}
                }
            },
            "targets": {"apps": {"app": {"retry": "quick"}}},
        },
    }
    (folder / "resiliency.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return str(folder)


async def test_a_retried_request_is_counted_in_retries_total(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        folder = write_retry_resources(tmp_path / "resources", 1)
        sidecar = await sidecar_with(
            make_sidecar, tmp_path, app_port=echo_app.port, resources_paths=(folder,)
        )
        ok = await request(sidecar.http_port, "GET", f"{APP}/fine")
        assert ok.status == 200, ok
        assert (await scrape(sidecar)).family("fastproxy_retries_total") == {}
        failing = await request(sidecar.http_port, "GET", f"{APP}/down?status=503")
        assert failing.status == 503, failing
        assert echo_app.seen == [("GET", "/fine")] + [("GET", "/down?status=503")] * 2
        exposition = await scrape(sidecar)
        assert exposition.family("fastproxy_retries_total") == {
            L(app_id="app", dst_app_id="app"): 1
        }
        # The client's request is counted once, with the status it finally got.
        assert (
            exposition.value(
                "dapr_http_server_request_count",
                app_id="app",
                method="GET",
                path=f"{APP}/down",
                status="503",
            )
            == 1
        )


async def test_retries_total_counts_every_retry_attempt(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        folder = write_retry_resources(tmp_path / "resources", 3)
        sidecar = await sidecar_with(
            make_sidecar, tmp_path, app_port=echo_app.port, resources_paths=(folder,)
        )
        failing = await request(sidecar.http_port, "GET", f"{APP}/down?status=503")
        assert failing.status == 503, failing
        assert len(echo_app.seen) == 4
        exposition = await scrape(sidecar)
        assert exposition.family("fastproxy_retries_total") == {
            L(app_id="app", dst_app_id="app"): 3
        }
        # A request that needed no retry adds nothing; another retried three times adds 3.
        ok = await request(sidecar.http_port, "GET", f"{APP}/fine")
        assert ok.status == 200, ok
        again = await request(sidecar.http_port, "GET", f"{APP}/down?status=503")
        assert again.status == 503, again
        assert len(echo_app.seen) == 9
        exposition = await scrape(sidecar)
        assert exposition.family("fastproxy_retries_total") == {
            L(app_id="app", dst_app_id="app"): 6
        }
