"""Which requests get their clocks read: only those whose duration something records."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from fastproxy.observability.accesslog import AccessLog
from fastproxy.observability.dapr_metrics import DaprMetrics
from fastproxy.observability.export import BatchExporter
from fastproxy.observability.observation import Observation
from fastproxy.observability.observer import Observer
from fastproxy.observability.spans import Span
from fastproxy.observability.tracecontext import Sampler
from fastproxy.upstream.endpoint import Endpoint
from fastproxy.upstream.pool import Pool, PoolLimits
from fastproxy.wire import Clock

PATH = b"/v1.0/invoke/app2/method/orders"
SAMPLED_PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def exporter() -> BatchExporter:
    """Never started: `submit` only queues, which is what these tests read."""

    def encode(spans: list[Span]) -> bytes:
        return b""

    return BatchExporter("http://127.0.0.1:9/api/v2/spans", encode, "application/json")


def answered(obs: Observation) -> bytes:
    """Drive an observation through a forwarded exchange; the lines the client's answer gains.

    (The pool is only named in the observation: it never dials.)
    """
    obs.aim("app2", b"/orders", True)
    obs.mark_sent()
    loop = asyncio.new_event_loop()
    try:
        pool = Pool(Endpoint("127.0.0.1", 8080), PoolLimits(), Clock(), loop)
    finally:
        loop.close()
    return obs.response_head(200, pool, False)


@pytest.mark.parametrize(
    ("rate", "parent"),
    [(0.0, None), (1.0, None), (0.0, SAMPLED_PARENT)],
    ids=["rate-0", "rate-1-sampled-but-no-exporter", "sampled-parent-no-exporter"],
)
def test_propagation_alone_reads_no_clock(rate: float, parent: bytes | None) -> None:
    observer = Observer("app1", Sampler(rate), None)
    obs = observer.begin(b"GET", PATH, parent, None, False)
    lines = answered(obs)

    assert not obs.timed
    assert (obs.started, obs.sent_at, obs.head_at) == (0.0, 0.0, 0.0)
    # The trace context still travels both ways.
    assert lines == obs.traceparent
    assert obs.app_lines == obs.traceparent
    assert obs.traceparent.startswith(b"traceparent: 00-")
    observer.finish(obs)  # nothing to record, and nothing fails


def test_metrics_time_every_request() -> None:
    metrics = DaprMetrics("app1")
    observer = Observer("app1", Sampler(0.0), metrics)
    obs = observer.begin(b"GET", PATH, None, None, False)
    answered(obs)

    assert obs.timed
    assert 0.0 < obs.started <= obs.sent_at <= obs.head_at
    observer.finish(obs)
    text = metrics.render().decode()
    assert 'dapr_http_server_request_count{app_id="app1",method="GET"' in text
    assert 'fastproxy_sidecar_time_ms_count{app_id="app1"} 1' in text


def test_only_sampled_requests_are_timed_for_an_exporter() -> None:
    export = exporter()
    observer = Observer("app1", Sampler(0.0), None, [export])

    unsampled = observer.begin(b"GET", PATH, None, None, False)
    sampled = observer.begin(b"GET", PATH, SAMPLED_PARENT, None, False)
    answered(unsampled)
    answered(sampled)
    observer.finish(unsampled)
    observer.finish(sampled)

    assert (unsampled.timed, sampled.timed) == (False, True)
    assert export.queued == 1
    assert sampled.started > 0.0


def test_server_timing_times_every_request() -> None:
    observer = Observer("app1", Sampler(0.0), None, server_timing=True)
    obs = observer.begin(b"GET", PATH, None, None, False)
    lines = answered(obs)

    assert obs.timed
    assert lines.startswith(obs.traceparent + b"Server-Timing: sidecar;dur=")


def test_the_access_log_times_every_request() -> None:
    stream = io.StringIO()
    access_log = AccessLog(stream, as_json=True)
    observer = Observer("app1", Sampler(0.0), None, access_log=access_log)
    obs = observer.begin(b"GET", PATH, None, None, False)
    answered(obs)
    observer.finish(obs)
    access_log.close(2.0)

    assert obs.timed
    (record,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert record["status"] == 200
    assert record["total_ms"] >= record["upstream_ms"] >= 0.0
    assert record["trace_id"] == obs.trace_id.decode()


def test_a_spare_observation_starts_over_for_the_next_request() -> None:
    metrics = DaprMetrics("app1")
    observer = Observer("app1", Sampler(0.0), metrics)
    first = observer.begin(b"POST", PATH, SAMPLED_PARENT, b"k=v", False)
    answered(first)
    first.bytes_in, first.bytes_out, first.retries = 10, 20, 2
    observer.finish(first)
    first_trace = first.trace_id

    second = observer.begin(b"GET", b"/v1.0/healthz", None, None, False, first)

    assert second is first
    assert (second.method, second.path, second.status, second.upstream) == (
        b"GET",
        b"/v1.0/healthz",
        0,
        None,
    )
    assert (second.bytes_in, second.bytes_out, second.retries) == (0, 0, 0)
    assert (second.target, second.app_path, second.remote) == ("", b"", False)
    assert (second.sent_at, second.head_at) == (0.0, 0.0)
    # A new root trace: nothing of the first request's context is left.
    assert (second.parent_id, second.tracestate, second.sampled) == (b"", b"", False)
    assert second.app_lines == second.traceparent
    assert first_trace == SAMPLED_PARENT[3:35]
    assert second.trace_id != first_trace
