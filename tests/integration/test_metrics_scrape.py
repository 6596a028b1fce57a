"""Metrics scraped over HTTP from running sidecars after a known mix of requests.

Each test drives real requests through real sidecars, scrapes the Prometheus
endpoint like Prometheus would and reads the exposition with the strict parser
in observability_fixtures, so counts and label sets are checked exactly as a
dashboard sees them.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from fastproxy import Sidecar
from fastproxy.observability.metrics import DEFAULT_MAX_SERIES
from tests.integration.conftest import (
    EchoApp,
    SidecarFactory,
    parse_responses,
    raw_exchange,
    request,
)
from tests.integration.observability_fixtures import (
    APP,
    HOST,
    L,
    app_process_args,
    caller_and_callee,
    check_histogram,
    fastproxy_process,
    fetch,
    observed_sidecar,
    read_exposition,
    request_count,
    scrape,
    write_retry_resources,
    write_yaml,
)
from tests.integration.ports import free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

TEST_TIMEOUT = 60.0


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
        sidecar = await observed_sidecar(make_sidecar, tmp_path, app_port=echo_app.port)
        responses = []
        port = sidecar.http_port
        for index in range(3):
            responses.append(await fetch(port, "GET", f"{APP}/orders?page={index}"))
        for _ in range(2):
            body = b"x" * 100
            responses.append(
                await fetch(port, "POST", f"{APP}/pay?status=503", body=body, status=503)
            )
        unknown = await fetch(port, "GET", "/v1.0/invoke/nowhere/method/x", status=500)
        assert unknown.body
        health = await fetch(port, "GET", "/v1.0/healthz", status=204)
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
            check_histogram(exposition, "dapr_http_client_sent_bytes", labels, count)
        # The bodies the app was sent (two of 100 bytes) and answered with.
        assert exposition.family("dapr_http_client_sent_bytes_sum") == {
            L(app_id="app", method="GET", path="/orders", status="200"): 0,
            L(app_id="app", method="POST", path="/pay", status="503"): 200,
        }
        check_histogram(exposition, "dapr_http_client_received_bytes", L(app_id="app"), 5)
        assert exposition.value("dapr_http_client_received_bytes_sum", app_id="app") == sum(
            len(response.body) for response in responses[:5]
        )
        # daprd's legacy response count (increasedCardinality is on by default).
        assert exposition.family("dapr_http_server_response_count") == server
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


async def test_requests_that_never_finished_the_ordinary_way_are_counted_once(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await observed_sidecar(
            make_sidecar, tmp_path, app_port=echo_app.port, max_body_size=1000
        )
        port = sidecar.http_port
        # A client that resets while the app holds its answer (for a second).
        _, writer = await asyncio.open_connection(HOST, port)
        writer.write(get(f"{APP}/slow?delay=1"))
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.close()
        # A chunked body that outgrows --max-body-size is refused mid-body.
        head = f"POST {APP}/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"258\r\n" + b"x" * 600 + b"\r\n"
        raw = await raw_exchange(port, head.encode() + chunk + chunk + b"0\r\n\r\n")
        assert [r.status for r in parse_responses(raw)] == [413]
        await asyncio.sleep(1.2)  # the app's late answer to the reset client goes nowhere

        exposition = await scrape(sidecar)
        server = {
            L(app_id="app", method="GET", path=f"{APP}/slow", status="499"): 1,
            L(app_id="app", method="POST", path=f"{APP}/upload", status="413"): 1,
        }
        assert exposition.family("dapr_http_server_request_count") == server
        for labels, count in server.items():
            check_histogram(exposition, "dapr_http_server_latency", labels, count)
        # Neither got an answer from the app: no round trip to it is counted.
        assert exposition.family("dapr_http_client_completed_count") == {}
        check_histogram(exposition, "fastproxy_sidecar_time_ms", L(app_id="app"), 2)


async def test_latency_buckets_come_from_the_configuration(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        spec = {"metric": {"latencyDistributionBuckets": [50, 5, 5000]}}
        sidecar = await observed_sidecar(make_sidecar, tmp_path, spec, app_port=echo_app.port)
        await fetch(sidecar.http_port, "GET", f"{APP}/slow?delay=0.1")
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


async def test_error_codes_are_counted_by_code_and_category_when_asked_for(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        spec = {"metric": {"recordErrorCodes": True}}
        sidecar = await observed_sidecar(make_sidecar, tmp_path, spec, app_port=echo_app.port)
        port = sidecar.http_port
        for _ in range(2):
            await fetch(port, "GET", "/v1.0/invoke/nowhere/method/x", status=500)
        await fetch(port, "GET", "/v1.0/healthz?appid=someone-else", status=500)
        malformed = await raw_exchange(port, b"GET /x HTTP/1.1\r\nHost: a\r\nHost b\r\n\r\n")
        assert [r.status for r in parse_responses(malformed)] == [400]
        # The app's own failures are its business: no sidecar error code.
        await fetch(port, "GET", f"{APP}/fail?status=503", status=503)
        await fetch(port, "GET", f"{APP}/ok")

        exposition = await scrape(sidecar)
        assert exposition.types["dapr_error_code_total"] == "counter"
        assert exposition.family("dapr_error_code_total") == {
            L(app_id="app", error_code="ERR_DIRECT_INVOKE", category="service-invocation"): 2,
            L(app_id="app", error_code="ERR_HEALTH_APPID_NOT_MATCH", category="health"): 1,
            L(app_id="app", error_code="ERR_MALFORMED_REQUEST", category="common"): 1,
        }


async def test_error_codes_are_not_a_metric_by_default(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await observed_sidecar(make_sidecar, tmp_path, app_port=echo_app.port)
        await fetch(sidecar.http_port, "GET", "/v1.0/invoke/nowhere/method/x", status=500)
        exposition = await scrape(sidecar)
        assert "dapr_error_code_total" not in exposition.types
        # The request itself is still counted as any other.
        assert request_count(exposition, "/v1.0/invoke/nowhere/method/x", "500") == 1


async def test_open_connections_and_pool_gauges_are_read_at_scrape_time(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await observed_sidecar(make_sidecar, tmp_path, app_port=echo_app.port)
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
        sidecar = await observed_sidecar(make_sidecar, tmp_path, app_port=echo_app.port)
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
        sidecar = await observed_sidecar(make_sidecar, tmp_path, spec, app_port=echo_app.port)
        for target in (f"{APP}/orders/1", f"{APP}/orders/2?x=1", f"{APP}/other", f"{APP}/a/b"):
            await fetch(sidecar.http_port, "GET", target)
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
        sidecar = await observed_sidecar(make_sidecar, tmp_path, spec, app_port=echo_app.port)
        for method in ("GET", "POST", "DELETE"):
            await fetch(sidecar.http_port, method, f"{APP}/x")
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
        sidecar = await observed_sidecar(
            make_sidecar, tmp_path, spec, app_port=echo_app.port, **settings
        )
        assert sidecar.metrics_port is None
        await fetch(sidecar.http_port, "GET", f"{APP}/still-served")


@pytest.mark.parametrize("enabled", [True, False], ids=["enable-metrics", "enable-metrics=false"])
async def test_cli_flag_decides_whether_the_metrics_port_listens(
    echo_app: EchoApp, tmp_path: Path, enabled: bool
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        port, metrics_port = free_port(), free_port()
        flag = "--enable-metrics" if enabled else "--enable-metrics=false"
        args = app_process_args(echo_app.port, metrics_port)
        async with fastproxy_process(
            tmp_path / "proc", port, *args, "--metrics-listen-address", HOST, flag
        ):
            await fetch(port, "GET", f"{APP}/cli")
            if not enabled:
                with pytest.raises(ConnectionRefusedError):
                    await request(metrics_port, "GET", "/metrics")
                return
            exposition = read_exposition(await request(metrics_port, "GET", "/metrics"))
            assert request_count(exposition, f"{APP}/cli") == 1


async def test_metrics_on_by_default_serve_at_root_and_metrics(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await observed_sidecar(make_sidecar, tmp_path, app_port=echo_app.port)
        assert sidecar.metrics_port is not None
        await fetch(sidecar.http_port, "GET", f"{APP}/one")
        for path in ("/", "/metrics"):
            assert request_count(await scrape(sidecar, path), f"{APP}/one") == 1


# -- two sidecars ------------------------------------------------------------------------------


async def test_service_invocation_is_counted_on_both_sides(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        a, b = await caller_and_callee(make_sidecar, tmp_path, echo_app)
        answers = []
        for _ in range(3):
            answers.append(await fetch(a.http_port, "GET", "/v1.0/invoke/b/method/ok"))
        for _ in range(2):
            answers.append(
                await fetch(
                    a.http_port,
                    "POST",
                    "/v1.0/invoke/b/method/no?status=503",
                    body=b"y" * 50,
                    status=503,
                )
            )
        # An app no instance can be found for is never sent anything.
        for _ in range(2):
            await fetch(a.http_port, "GET", "/v1.0/invoke/zz/method/x", status=500)

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
            check_histogram(callee, "dapr_http_client_sent_bytes", labels, int(completed))
        # The bodies b's app was sent (two of 50 bytes) and answered with.
        assert callee.family("dapr_http_client_sent_bytes_sum") == {
            L(app_id="b", method="GET", path="/ok", status="200"): 0,
            L(app_id="b", method="POST", path="/no", status="503"): 100,
        }
        check_histogram(callee, "dapr_http_client_received_bytes", L(app_id="b"), 5)
        assert callee.value("dapr_http_client_received_bytes_sum", app_id="b") == sum(
            len(answer.body) for answer in answers
        )
        # Delivered calls are not requests to b's own HTTP API.
        assert callee.family("dapr_http_server_request_count") == {}


async def test_access_control_denials_are_counted_on_the_callee(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        # Without mTLS no caller has an identity: a global deny refuses every delivered call,
        # and the caller counted is the one the calling sidecar named (dapr-caller-app-id).
        deny = {"accessControl": {"defaultAction": "deny", "trustDomain": "public"}}
        a, b = await caller_and_callee(make_sidecar, tmp_path, echo_app, deny)
        for _ in range(3):
            await fetch(a.http_port, "GET", "/v1.0/invoke/b/method/secret", status=403)
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


RETRIED = L(app_id="app", dst_app_id="app")


async def retrying_sidecar(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path, max_retries: int
) -> Sidecar:
    """A sidecar whose calls to its app are retried `max_retries` times."""
    folder = write_retry_resources(tmp_path / "resources", max_retries)
    return await observed_sidecar(
        make_sidecar, tmp_path, app_port=echo_app.port, resources_paths=(folder,)
    )


async def test_a_retried_request_is_counted_in_retries_total(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await retrying_sidecar(make_sidecar, echo_app, tmp_path, 1)
        await fetch(sidecar.http_port, "GET", f"{APP}/fine")
        assert (await scrape(sidecar)).family("fastproxy_retries_total") == {}
        await fetch(sidecar.http_port, "GET", f"{APP}/down?status=503", status=503)
        assert echo_app.seen == [("GET", "/fine")] + [("GET", "/down?status=503")] * 2
        exposition = await scrape(sidecar)
        assert exposition.family("fastproxy_retries_total") == {RETRIED: 1}
        # The client's request is counted once, with the status it finally got.
        assert request_count(exposition, f"{APP}/down", "503") == 1


async def test_retries_total_counts_every_retry_attempt(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await retrying_sidecar(make_sidecar, echo_app, tmp_path, 3)
        await fetch(sidecar.http_port, "GET", f"{APP}/down?status=503", status=503)
        assert len(echo_app.seen) == 4
        exposition = await scrape(sidecar)
        assert exposition.family("fastproxy_retries_total") == {RETRIED: 3}
        # A request that needed no retry adds nothing; another retried three times adds 3.
        await fetch(sidecar.http_port, "GET", f"{APP}/fine")
        await fetch(sidecar.http_port, "GET", f"{APP}/down?status=503", status=503)
        assert len(echo_app.seen) == 9
        exposition = await scrape(sidecar)
        assert exposition.family("fastproxy_retries_total") == {RETRIED: 6}


def resiliency_series(policy: str, status: str = "", name: str = "retries") -> frozenset[Any]:
    return L(
        app_id="app",
        name=name,
        policy=policy,
        namespace="",
        flow_direction="outbound",
        target="app_app",
        status=status,
    )


async def test_dapr_resiliency_metrics_count_executions_and_every_retry(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        sidecar = await retrying_sidecar(make_sidecar, echo_app, tmp_path, 3)
        exposition = await scrape(sidecar)
        assert exposition.family("dapr_resiliency_loaded") == {
            L(app_id="app", name="retries", namespace=""): 1
        }
        assert exposition.family("dapr_resiliency_count") == {}
        await fetch(sidecar.http_port, "GET", f"{APP}/down?status=503", status=503)
        await fetch(sidecar.http_port, "GET", f"{APP}/fine")
        await fetch(sidecar.http_port, "GET", f"{APP}/down?status=503", status=503)
        exposition = await scrape(sidecar)
        # Every call made under the retry policy counts; every retry activates it.
        assert exposition.family("dapr_resiliency_count") == {resiliency_series("retry"): 3}
        assert exposition.family("dapr_resiliency_activations_total") == {
            resiliency_series("retry"): 6
        }
        assert exposition.family("dapr_resiliency_cb_state") == {}


async def test_dapr_resiliency_metrics_see_timeouts_and_the_breaker_open(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Path
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        document = {
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "Resiliency",
            "metadata": {"name": "guard"},
            "spec": {
                "policies": {
                    "timeouts": {"short": "100ms"},
                    "circuitBreakers": {
                        "cb": {"trip": "consecutiveFailures >= 2", "timeout": "30s"}
                    },
                },
                "targets": {"apps": {"app": {"timeout": "short", "circuitBreaker": "cb"}}},
            },
        }
        folder = tmp_path / "resources"
        write_yaml(folder, "resiliency", document)
        sidecar = await observed_sidecar(
            make_sidecar, tmp_path, app_port=echo_app.port, resources_paths=(str(folder),)
        )
        for _ in range(2):  # two timeouts trip the breaker
            await fetch(sidecar.http_port, "GET", f"{APP}/slow?delay=1", status=500)
        await fetch(sidecar.http_port, "GET", f"{APP}/slow?delay=1", status=500)  # refused
        assert len(echo_app.seen) == 2
        exposition = await scrape(sidecar)
        assert exposition.family("dapr_resiliency_count") == {
            resiliency_series("timeout", name="guard"): 3,
            resiliency_series("circuitbreaker", "closed", "guard"): 2,
            resiliency_series("circuitbreaker", "open", "guard"): 1,
        }
        assert exposition.family("dapr_resiliency_activations_total") == {
            resiliency_series("timeout", name="guard"): 2,
            resiliency_series("circuitbreaker", "open", "guard"): 1,
        }
        assert exposition.family("dapr_resiliency_cb_state") == {
            resiliency_series("circuitbreaker", status, "guard"): float(status == "open")
            for status in ("closed", "half-open", "open", "unknown")
        }
