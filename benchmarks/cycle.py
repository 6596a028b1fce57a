"""The Python cost of one proxied request, with no sockets: a guide for hot-path work.

A `DownstreamProtocol` and an `UpstreamConnection` are driven on null
transports with the bytes wrk sends and nginx answers, so the figure is the
interpreter's share of a request (parsing, routing, state, head building)
without the kernel's. It is repeatable to a few percent on an idle machine,
unlike wrk runs; `run.py` remains the measure that counts.

The cycle is measured twice: as `make bench` runs fastproxy (all observability
off), then observed, with Prometheus metrics on and W3C trace propagation
(`spec.tracing.samplingRate: "0"`: every request's traceparent is started and
returned, nothing is sampled or exported); the difference is what recording a
request's metrics and trace context costs in Python.

    python benchmarks/cycle.py [--requests N] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from fastproxy.config.model import Config, Resources  # noqa: E402
from fastproxy.context import SidecarContext  # noqa: E402
from fastproxy.downstream.protocol import DownstreamProtocol  # noqa: E402
from fastproxy.upstream.connection import UpstreamConnection  # noqa: E402
from fastproxy.wire import Clock  # noqa: E402

# What wrk sends and what the benchmark's nginx app answers, byte for byte.
REQUEST = b"GET /v1.0/invoke/bench/method/small HTTP/1.1\r\nHost: 127.0.0.1:3500\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 27 Nov 2026 12:26:14 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n"
    b"hello, world\n"
)


class NullTransport:
    """Accepts writes and counts bytes: just enough transport for the protocols."""

    def __init__(self) -> None:
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        self.bytes_written += len(data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.bytes_written += len(part)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("the benchmark cycle closed a connection")

    abort = close


# The Configuration spec of every cycle: no peers to resolve.
NO_PEERS: dict[str, Any] = {
    "nameResolution": {"component": "static", "configuration": {"apps": {}}}
}
# The observed cycle's addition: trace context propagated, nothing sampled or exported.
PROPAGATION_ONLY: dict[str, Any] = {"tracing": {"samplingRate": "0"}}


def sidecar_context(observed: bool) -> SidecarContext:
    """The context of the benchmark's sidecar: all observability off (as `make bench` runs
    the plain fastproxy), or metrics on and tracing at samplingRate 0 when ``observed``."""
    if observed:
        config = Config(app_id="bench", app_port=1, enable_metrics=True)
        resources = Resources(configuration={**NO_PEERS, **PROPAGATION_ONLY})
    else:
        config = Config(app_id="bench", app_port=1, enable_metrics=False)
        resources = Resources(configuration=dict(NO_PEERS))
    return SidecarContext(config, resources, Clock())


def build(
    observed: bool = False, client: NullTransport | None = None
) -> tuple[DownstreamProtocol, UpstreamConnection, NullTransport]:
    """A downstream protocol on ``client`` (a new NullTransport by default) and one pooled
    upstream connection, for the plain or the observed sidecar."""
    ctx = sidecar_context(observed)
    (pool,) = ctx.forwarder.pools
    upstream = UpstreamConnection(pool)
    upstream.connection_made(NullTransport())  # type: ignore[arg-type]
    pool.open_count += 1
    pool.release(upstream)
    downstream = DownstreamProtocol(ctx)
    client = client if client is not None else NullTransport()
    downstream.connection_made(client)  # type: ignore[arg-type]
    return downstream, upstream, client


def cycle(downstream: DownstreamProtocol, upstream: UpstreamConnection, n: int) -> None:
    request_received = downstream.data_received
    response_received = upstream.data_received
    for _ in range(n):
        request_received(REQUEST)
        response_received(RESPONSE)


async def measure(requests: int, profile: bool, observed: bool = False) -> float:
    """Best µs per request of 5 runs of ``requests`` cycles (0.0 with ``profile``)."""
    downstream, upstream, client = build(observed)
    cycle(downstream, upstream, 1000)  # warm caches and the route table
    expected = client.bytes_written // 1000
    gc.collect()
    gc.freeze()
    if profile:
        profiler = cProfile.Profile()
        profiler.runcall(cycle, downstream, upstream, requests)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return 0.0
    best = float("inf")
    for _ in range(5):
        before = client.bytes_written
        start = time.perf_counter()
        cycle(downstream, upstream, requests)
        best = min(best, (time.perf_counter() - start) / requests)
        if client.bytes_written - before != expected * requests:
            raise AssertionError("a request was not answered in full")
    return best * 1e6


def observed_lines(plain_us: float, observed_us: float, requests: int) -> list[str]:
    """The observed cycle's figure and its difference from the plain one, as printed."""
    diff = observed_us - plain_us
    share = f" ({diff / plain_us * 100:+.0f} %)" if plain_us > 0 else ""
    return [
        f"{observed_us:.2f} us of Python per proxied request with metrics on and trace "
        f"propagation (samplingRate 0) (best of 5 x {requests})",
        f"observability costs {diff:+.2f} us of Python per request{share}",
    ]


async def _both(requests: int, profile: bool) -> tuple[float, float]:
    if profile:
        print("--- plain cycle (all observability off)")
    plain = await measure(requests, profile)
    if profile:
        print("--- observed cycle (metrics on, samplingRate 0)")
    observed = await measure(requests, profile, observed=True)
    return plain, observed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile table of each cycle"
    )
    args = parser.parse_args()
    runner: Callable[[Coroutine[Any, Any, tuple[float, float]]], tuple[float, float]]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    us, observed_us = runner(_both(args.requests, args.profile))
    if not args.profile:
        print(f"{us:.2f} us of Python per proxied request (best of 5 x {args.requests})")
        for line in observed_lines(us, observed_us, args.requests):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
