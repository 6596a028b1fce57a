"""Unit tests for benchmarks.loadgen: the schedule, the percentile math and the result format.

The added-latency figures compare percentiles of two runs, so the rank rule and the intended
send times they are measured from are pinned here. A short loopback run against an in-test
server checks that the counting (statuses, reconnects, unfinished requests) adds up.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Callable

import pytest

from benchmarks.loadgen import (
    NS_PER_S,
    LatencySummary,
    LoadResult,
    achieved_rps,
    build_request,
    parse_target,
    percentile,
    request_count,
    run_load,
    schedule_ns,
    send_offset_ns,
    summarize_ns,
)

# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("rate", "duration", "want"),
    [
        (1000.0, 20.0, 20_000),
        (1000.0, 2.0, 2_000),
        (3.0, 1.0, 3),
        (2.5, 1.0, 3),
        (0.5, 3.0, 2),
        (1000.0, 0.0001, 1),
        (333.3, 3.0, 1000),
    ],
    ids=["default", "warmup", "small", "half-rounds-up", "slow", "at-least-one", "fractional"],
)
def test_request_count(rate: float, duration: float, want: int) -> None:
    assert request_count(rate, duration) == want


@pytest.mark.parametrize(
    ("rate", "duration"),
    [(0.0, 1.0), (-5.0, 1.0), (math.nan, 1.0), (math.inf, 1.0), (10.0, 0.0), (10.0, -1.0)],
    ids=["zero-rate", "negative-rate", "nan-rate", "inf-rate", "zero-duration", "neg-duration"],
)
def test_request_count_rejects(rate: float, duration: float) -> None:
    with pytest.raises(ValueError):
        request_count(rate, duration)


@pytest.mark.parametrize(
    ("index", "rate", "want"),
    [
        (0, 1000.0, 0),
        (1, 1000.0, 1_000_000),
        (999, 1000.0, 999_000_000),
        (1, 3.0, 333_333_333),
        (2, 3.0, 666_666_667),
        (3, 3.0, NS_PER_S),
        (1, 0.5, 2 * NS_PER_S),
        (1_000_000, 3.0, 333_333_333_333_333),
        (7, 7000.0, 1_000_000),
    ],
    ids=[
        "first",
        "second",
        "last-of-1s",
        "third-rounds-down",
        "two-thirds-rounds-up",
        "exact-second",
        "below-1rps",
        "no-drift-far-out",
        "odd-rate",
    ],
)
def test_send_offset_ns(index: int, rate: float, want: int) -> None:
    assert send_offset_ns(index, rate) == want


@pytest.mark.parametrize(
    ("index", "rate"),
    [(-1, 1000.0), (0, 0.0), (0, -1.0)],
    ids=["negative-index", "zero-rate", "negative-rate"],
)
def test_send_offset_ns_rejects(index: int, rate: float) -> None:
    with pytest.raises(ValueError):
        send_offset_ns(index, rate)


@pytest.mark.parametrize(
    ("rate", "duration", "want"),
    [
        (4.0, 1.0, [0, 250_000_000, 500_000_000, 750_000_000]),
        (1000.0, 0.003, [0, 1_000_000, 2_000_000]),
        (1.0, 0.2, [0]),
    ],
    ids=["4rps", "1000rps-3ms", "shorter-than-interval"],
)
def test_schedule_ns(rate: float, duration: float, want: list[int]) -> None:
    assert schedule_ns(rate, duration) == want


def test_schedule_is_evenly_spaced_and_spans_the_duration() -> None:
    offsets = schedule_ns(1000.0, 20.0)
    assert len(offsets) == 20_000
    gaps = {b - a for a, b in itertools.pairwise(offsets)}
    assert gaps == {1_000_000}
    assert offsets[-1] == 19_999_000_000


# --------------------------------------------------------------------------- percentiles

ONE_TO_TEN = [float(v) for v in range(1, 11)]
ONE_TO_HUNDRED = [float(v) for v in range(1, 101)]
ONE_TO_THOUSAND = [float(v) for v in range(1, 1001)]


@pytest.mark.parametrize(
    ("values", "p", "want"),
    [
        (ONE_TO_TEN, 50.0, 5.0),
        (ONE_TO_TEN, 90.0, 9.0),
        (ONE_TO_TEN, 99.0, 10.0),
        (ONE_TO_TEN, 0.0, 1.0),
        (ONE_TO_TEN, 100.0, 10.0),
        (ONE_TO_HUNDRED, 99.0, 99.0),
        (ONE_TO_HUNDRED, 99.9, 100.0),
        (ONE_TO_THOUSAND, 99.9, 999.0),
        (ONE_TO_THOUSAND, 99.0, 990.0),
        ([1.0, 2.0], 50.0, 1.0),
        ([1.0, 2.0], 50.1, 2.0),
        ([7.5], 99.9, 7.5),
        ([0.1, 0.1, 0.1, 9.0], 75.0, 0.1),
        ([0.1, 0.1, 0.1, 9.0], 76.0, 9.0),
    ],
    ids=[
        "p50-of-10",
        "p90-of-10",
        "p99-of-10-is-max",
        "p0-is-min",
        "p100-is-max",
        "p99-of-100",
        "p99.9-of-100-is-max",
        "p99.9-of-1000-no-float-creep",
        "p99-of-1000",
        "median-of-2-is-lower",
        "just-above-median-of-2",
        "single-value",
        "tail-not-reached",
        "tail-reached",
    ],
)
def test_percentile(values: list[float], p: float, want: float) -> None:
    assert percentile(values, p) == want


@pytest.mark.parametrize(
    ("values", "p"),
    [([], 50.0), ([1.0], -0.1), ([1.0], 100.1)],
    ids=["empty", "below-0", "above-100"],
)
def test_percentile_rejects(values: list[float], p: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, p)


@pytest.mark.parametrize(
    ("values_ns", "want"),
    [
        ([], LatencySummary(0, None, None, None, None, None, None, None)),
        ([2_000_000], LatencySummary(1, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0)),
        (
            [3_000_000, 1_000_000, 2_000_000, 10_000_000],
            LatencySummary(4, 4.0, 1.0, 2.0, 10.0, 10.0, 10.0, 10.0),
        ),
    ],
    ids=["empty", "single", "unsorted-input"],
)
def test_summarize_ns(values_ns: list[int], want: LatencySummary) -> None:
    assert summarize_ns(values_ns) == want


@pytest.mark.parametrize(
    ("completed", "elapsed_ns", "want"),
    [
        (1000, NS_PER_S, 1000.0),
        (20_000, 20 * NS_PER_S, 1000.0),
        (500, 2 * NS_PER_S, 250.0),
        (0, NS_PER_S, None),
        (10, 0, None),
    ],
    ids=["1s", "20s", "half-rate", "nothing-completed", "no-time"],
)
def test_achieved_rps(completed: int, elapsed_ns: int, want: float | None) -> None:
    assert achieved_rps(completed, elapsed_ns) == want


# --------------------------------------------------------------------------- URL and request


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("http://127.0.0.1:8080/small", ("127.0.0.1", 8080, "/small")),
        (
            "http://127.0.0.1:3500/v1.0/invoke/b/method/small",
            ("127.0.0.1", 3500, "/v1.0/invoke/b/method/small"),
        ),
        ("http://localhost", ("localhost", 80, "/")),
        ("http://h:1/p?a=1&b=2", ("h", 1, "/p?a=1&b=2")),
    ],
    ids=["direct", "invoke", "defaults", "query-kept"],
)
def test_parse_target(url: str, want: tuple[str, int, str]) -> None:
    assert parse_target(url) == want


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1/", "127.0.0.1:80/x", "http:///x", "ftp://h/x"],
    ids=["https", "no-scheme", "no-host", "ftp"],
)
def test_parse_target_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        parse_target(url)


def test_build_request() -> None:
    assert build_request("127.0.0.1", 80, "/small") == (
        b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:80\r\nUser-Agent: fastproxy-loadgen\r\n\r\n"
    )


def test_result_round_trips_through_json_dict() -> None:
    r = LoadResult("http://h:1/x", 1000.0, 2.0, 16, 5.0, "timerfd", scheduled=2000)
    r.completed, r.non_2xx_3xx, r.socket_errors, r.unfinished = 1990, 3, 2, 5
    r.status_counts = {"200": 1987, "503": 3}
    r.latency = summarize_ns([1_000_000, 3_000_000])
    d = r.to_dict()
    assert d["errors"] == 10
    assert d["latency"]["p99_ms"] == 3.0
    back = LoadResult.from_dict(d)
    assert back == r
    assert back.errors == 10


# --------------------------------------------------------------------------- loopback run

Handler = Callable[[int], tuple[int, bool]]  # request number -> (status, close after)


@pytest.fixture
async def http_server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[int, list[int]]]:
    """A tiny keep-alive HTTP/1.1 server; returns (port, connection counter)."""
    handler: Handler = request.param
    served = [0]
    accepted = [0]

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"GET /x HTTP/1.1\r\n")
                served[0] += 1
                status, close = handler(served[0])
                conn = b"Connection: close\r\n" if close else b""
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n".encode() + conn + b"\r\nok"
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, accepted
    server.close()
    await server.wait_closed()


def _always_ok(_n: int) -> tuple[int, bool]:
    return 200, False


def _every_fifth_fails_and_closes(n: int) -> tuple[int, bool]:
    return (503, True) if n % 5 == 0 else (200, False)


@pytest.mark.parametrize("http_server", [_always_ok], indirect=True, ids=["ok"])
async def test_run_load_counts_every_request(http_server: tuple[int, list[int]]) -> None:
    port, accepted = http_server
    r = await run_load(f"http://127.0.0.1:{port}/x", 400.0, 0.25, 4, 2.0)
    assert (r.scheduled, r.sent, r.completed, r.errors) == (100, 100, 100, 0)
    assert r.status_counts == {"200": 100}
    assert accepted[0] == 4
    assert r.latency.count == r.service.count == r.send_lag.count == 100
    assert r.latency.p50_ms is not None and r.service.p50_ms is not None
    assert r.latency.p50_ms >= r.service.p50_ms  # counted from the intended, earlier time
    assert r.achieved_rps is not None and 300 < r.achieved_rps < 500


@pytest.mark.parametrize(
    "http_server", [_every_fifth_fails_and_closes], indirect=True, ids=["5xx-close"]
)
async def test_run_load_counts_errors_and_reconnects(http_server: tuple[int, list[int]]) -> None:
    port, accepted = http_server
    r = await run_load(f"http://127.0.0.1:{port}/x", 200.0, 0.25, 2, 2.0)
    assert r.completed == r.scheduled == 50
    assert r.non_2xx_3xx == 10
    assert r.status_counts == {"200": 40, "503": 10}
    assert r.errors == 10
    # Every 503 closes its connection; all but the last (after the run) are replaced.
    assert r.reconnects == 9
    assert accepted[0] == 2 + 9


async def test_run_load_unreachable_raises() -> None:
    with pytest.raises(OSError):
        await run_load("http://127.0.0.1:1/x", 10.0, 0.1, 1, 1.0)
