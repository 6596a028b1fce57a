"""Open-loop, fixed-rate HTTP/1.1 load generator (what wrk2 would do, on asyncio + uvloop).

wrk sends as fast as the server answers, so it cannot show latency *at a given rate*, and a
closed loop hides stalls: while a response is late no new request is sent, so the requests that
would have waited are never measured (coordinated omission). Here request ``i`` has an intended
send time ``t0 + i / rate`` fixed in advance; it goes out on the first idle keep-alive
connection at or after that time, and its latency is counted **from the intended time**. A
stall therefore shows up in every request scheduled during it, as it would for real clients.

Pacing uses a Linux timerfd armed at each intended time (CLOCK_MONOTONIC, nanosecond
resolution), because event-loop timers only have millisecond resolution, which at 1000 rps
would add up to a millisecond of the generator's own lateness to every latency. The lateness
that remains (send lag = actual send - intended time) is reported so it can be told apart
from the server's latency.

Usage: ``python benchmarks/loadgen.py URL [--rate 1000] [--duration 10] [--connections 16]
[--json]``; or ``run_load(...)`` from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import json
import math
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import uvloop

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
DEFAULT_RATE = 1000.0
DEFAULT_DURATION_S = 10.0
DEFAULT_CONNECTIONS = 16  # as Dapr's service invocation perf test (fortio -c 16)
DEFAULT_TIMEOUT_S = 5.0
START_DELAY_NS = 20 * NS_PER_MS  # between "connections open" and the first intended send
MAX_ERROR_SAMPLES = 10
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


# --------------------------------------------------------------------------- pure parts


def request_count(rate: float, duration_s: float) -> int:
    """How many requests a run of ``duration_s`` at ``rate`` per second sends (at least 1)."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number, got {rate}")
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise ValueError(f"duration must be a positive number, got {duration_s}")
    return max(1, math.floor(rate * duration_s + 0.5))  # half up, not to even


def send_offset_ns(index: int, rate: float) -> int:
    """Intended send time of request ``index`` in ns after the start: ``index / rate``.

    Computed from the index rather than by adding up intervals, so rounding never drifts.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number, got {rate}")
    return round(index * NS_PER_S / rate)


def schedule_ns(rate: float, duration_s: float) -> list[int]:
    """Intended send offsets (ns after the start) of every request of a run, ascending."""
    return [send_offset_ns(i, rate) for i in range(request_count(rate, duration_s))]


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``p`` % of values <= it.

    ``sorted_values`` must be sorted ascending and non-empty; p=0 gives the minimum and
    p=100 the maximum. No interpolation, so the answer is always a measured value.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {p}")
    n = len(sorted_values)
    # The epsilon keeps float noise (99.9 * 1000 / 100 = 999.0000000000001) from
    # pushing the rank one place up.
    rank = math.ceil(p * n / 100 - 1e-9)
    return sorted_values[min(max(rank, 1), n) - 1]


@dataclass(frozen=True)
class LatencySummary:
    """Distribution of one per-request duration, in milliseconds."""

    count: int
    mean_ms: float | None
    min_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None


def summarize_ns(values_ns: Sequence[int]) -> LatencySummary:
    """Percentiles (nearest rank), mean, min and max of durations given in ns; Nones if empty."""
    if not values_ns:
        return LatencySummary(0, None, None, None, None, None, None, None)
    ms = sorted(v / NS_PER_MS for v in values_ns)
    p50, p90, p99, p999 = (percentile(ms, p) for p in PERCENTILES)
    return LatencySummary(
        count=len(ms),
        mean_ms=sum(ms) / len(ms),
        min_ms=ms[0],
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        p999_ms=p999,
        max_ms=ms[-1],
    )


def achieved_rps(completed: int, elapsed_ns: int) -> float | None:
    """Completed responses per second of wall time; None when nothing can be said."""
    if completed <= 0 or elapsed_ns <= 0:
        return None
    return completed * NS_PER_S / elapsed_ns


def parse_target(url: str) -> tuple[str, int, str]:
    """(host, port, path-with-query) of an http:// URL; https and other schemes are refused."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"need an http://host[:port]/path URL, got {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


def build_request(host: str, port: int, path: str) -> bytes:
    """The one request every connection sends repeatedly (HTTP/1.1 keep-alive, no body)."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: fastproxy-loadgen\r\n\r\n"
    ).encode("ascii")


@dataclass
class LoadResult:
    """Everything one run measured; ``latency`` counts from each request's intended send time.

    ``service`` is the same but from the actual send (what a closed-loop tool would show) and
    ``send_lag`` is actual minus intended send time: the generator's own lateness plus time
    spent waiting for a free connection.
    """

    url: str
    target_rate: float
    duration_s: float
    connections: int
    timeout_s: float
    pacer: str
    scheduled: int = 0
    sent: int = 0
    completed: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0
    socket_errors: int = 0
    unfinished: int = 0
    reconnects: int = 0
    max_backlog: int = 0
    elapsed_s: float = 0.0
    achieved_rps: float | None = None
    latency: LatencySummary = field(default_factory=lambda: summarize_ns([]))
    service: LatencySummary = field(default_factory=lambda: summarize_ns([]))
    send_lag: LatencySummary = field(default_factory=lambda: summarize_ns([]))
    error_samples: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        """Requests that did not get a 2xx/3xx answer within the run."""
        return self.non_2xx_3xx + self.socket_errors + self.unfinished

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (includes ``errors``)."""
        return {**dataclasses.asdict(self), "errors": self.errors}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadResult:
        """Inverse of to_dict, for a harness reading ``--json`` output."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("latency", "service", "send_lag"):
            if key in kw:
                kw[key] = LatencySummary(**kw[key])
        return cls(**kw)


# --------------------------------------------------------------------------- pacing


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


class _TimerFd:
    """A CLOCK_MONOTONIC timerfd armed at absolute times; readable when the time has come."""

    _CLOCK_MONOTONIC = 1
    _TFD_TIMER_ABSTIME = 1

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._settime = self._libc.timerfd_settime
        self._settime.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        )
        self._settime.restype = ctypes.c_int
        create = self._libc.timerfd_create
        create.argtypes = (ctypes.c_int, ctypes.c_int)
        create.restype = ctypes.c_int
        fd = int(create(self._CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd = fd

    def arm_at(self, when_ns: int) -> None:
        """Fire once at CLOCK_MONOTONIC time ``when_ns`` (immediately if already past)."""
        when_ns = max(when_ns, 1)  # all zeros would disarm the timer
        spec = _Itimerspec()
        spec.it_value.tv_sec = when_ns // NS_PER_S
        spec.it_value.tv_nsec = when_ns % NS_PER_S
        if self._settime(self.fd, self._TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def acknowledge(self) -> None:
        """Consume the expiration count so the fd stops being readable."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        """Release the fd."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


# --------------------------------------------------------------------------- the run


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight (no pipelining)."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.inflight: tuple[int, int] | None = None  # (intended ns, sent ns)
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but implement it.
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.run.on_connected(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.run.note_error(f"bad response: {exc}")
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.run.on_lost(self, exc)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = int(self.parser.get_status_code())

    def on_message_complete(self) -> None:
        now = time.monotonic_ns()
        keep_alive = bool(self.parser.should_keep_alive())
        inflight, self.inflight = self.inflight, None
        if inflight is None:
            self.run.note_error("response without a request")
            self.abort()
            return
        self.run.on_response(self, self.status, inflight[0], inflight[1], now, keep_alive)
        if not keep_alive:
            self.abort()

    def send(self, intended_ns: int, request: bytes) -> None:
        """Write the request now; remember when it was meant to go and when it went."""
        assert self.transport is not None
        self.inflight = (intended_ns, time.monotonic_ns())
        self.transport.write(request)

    def abort(self) -> None:
        """Drop the connection (connection_lost follows)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Run:
    """Schedule, dispatch and record one load run; all callbacks run on the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        request: bytes,
        result: LoadResult,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.request = request
        self.result = result
        self.offsets = schedule_ns(result.target_rate, result.duration_s)
        self.t0 = 0
        self.next_index = 0
        self.pending: deque[int] = deque()  # intended times released but not yet sent
        self.idle: deque[_Conn] = deque()
        self.conns: set[_Conn] = set()
        self.reconnecting = 0
        self.latencies: list[int] = []
        self.services: list[int] = []
        self.lags: list[int] = []
        self.last_done_ns = 0
        self.done: asyncio.Future[None] = loop.create_future()
        self.timer: _TimerFd | None = None
        self.fallback_handle: asyncio.TimerHandle | None = None

    # ---- connections

    async def connect(self) -> _Conn:
        """Open one connection (connection_made adds it to the idle pool)."""
        _, proto = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        return proto

    def on_connected(self, conn: _Conn) -> None:
        self.conns.add(conn)
        self._dispatch(conn)

    def on_lost(self, conn: _Conn, exc: Exception | None) -> None:
        self.conns.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if conn.inflight is not None:
            conn.inflight = None
            self.result.socket_errors += 1
            self.note_error(f"connection lost with a request in flight: {exc or 'closed'}")
        if not self.done.done() and self.t0:
            self.reconnecting += 1
            self.result.reconnects += 1
            self.loop.create_task(self._reconnect())
        self._check_done()

    async def _reconnect(self) -> None:
        try:
            await self.connect()
        except OSError as exc:
            self.note_error(f"reconnect failed: {exc}")
        finally:
            self.reconnecting -= 1
            self._check_done()

    # ---- pacing

    def start(self) -> None:
        """Fix t0 slightly in the future and arm the pacer for the first request."""
        self.t0 = time.monotonic_ns() + START_DELAY_NS
        try:
            self.timer = _TimerFd()
        except (OSError, AttributeError):
            self.timer = None
        if self.timer is not None:
            self.result.pacer = "timerfd"
            self.loop.add_reader(self.timer.fd, self._on_timer)
        else:
            self.result.pacer = "loop-timer (1 ms resolution)"
        self._arm()

    def _arm(self) -> None:
        when = self.t0 + self.offsets[self.next_index]
        if self.timer is not None:
            self.timer.arm_at(when)
        else:
            delay = max(0.0, (when - time.monotonic_ns()) / NS_PER_S)
            self.fallback_handle = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        if self.timer is not None:
            self.timer.acknowledge()
        now = time.monotonic_ns()
        n = len(self.offsets)
        while self.next_index < n and self.t0 + self.offsets[self.next_index] <= now:
            self._release(self.t0 + self.offsets[self.next_index])
            self.next_index += 1
        if self.next_index < n:
            self._arm()
        else:
            self.stop_pacer()
            self._check_done()

    def stop_pacer(self) -> None:
        """Stop the timer (end of schedule or of the run)."""
        if self.timer is not None:
            self.loop.remove_reader(self.timer.fd)
            self.timer.close()
            self.timer = None
        if self.fallback_handle is not None:
            self.fallback_handle.cancel()
            self.fallback_handle = None

    def _release(self, intended_ns: int) -> None:
        while self.idle:
            conn = self.idle.popleft()
            if not conn.closed:
                conn.send(intended_ns, self.request)
                self.result.sent += 1
                return
        self.pending.append(intended_ns)
        self.result.max_backlog = max(self.result.max_backlog, len(self.pending))

    def _dispatch(self, conn: _Conn) -> None:
        """Give a free connection the oldest waiting request, or park it as idle."""
        if conn.closed:
            return
        if self.pending:
            conn.send(self.pending.popleft(), self.request)
            self.result.sent += 1
        else:
            self.idle.append(conn)

    # ---- results

    def on_response(
        self,
        conn: _Conn,
        status: int,
        intended_ns: int,
        sent_ns: int,
        done_ns: int,
        keep_alive: bool,
    ) -> None:
        r = self.result
        r.completed += 1
        key = str(status)
        r.status_counts[key] = r.status_counts.get(key, 0) + 1
        if not 200 <= status < 400:
            r.non_2xx_3xx += 1
            self.note_error(f"HTTP {status}")
        self.latencies.append(done_ns - intended_ns)
        self.services.append(done_ns - sent_ns)
        self.lags.append(sent_ns - intended_ns)
        self.last_done_ns = max(self.last_done_ns, done_ns)
        if keep_alive:
            self._dispatch(conn)
        self._check_done()

    def note_error(self, message: str) -> None:
        if len(self.result.error_samples) < MAX_ERROR_SAMPLES:
            self.result.error_samples.append(message)

    def outstanding(self) -> int:
        """Requests released or scheduled that have no answer (nor a recorded failure)."""
        inflight = sum(1 for c in self.conns if c.inflight is not None)
        return (len(self.offsets) - self.next_index) + len(self.pending) + inflight

    def _check_done(self) -> None:
        if self.done.done():
            return
        if self.next_index == len(self.offsets) and self.outstanding() == 0:
            self.done.set_result(None)
        elif not self.conns and not self.reconnecting and self.t0:
            self.done.set_result(None)  # every connection is gone: nothing more can finish

    def finish(self) -> LoadResult:
        """Close everything and fill in the summary."""
        self.stop_pacer()
        r = self.result
        r.scheduled = len(self.offsets)
        r.unfinished = self.outstanding()
        for conn in list(self.conns):
            conn.inflight = None  # counted as unfinished, not as socket errors
            conn.abort()
        elapsed = (self.last_done_ns or time.monotonic_ns()) - self.t0
        r.elapsed_s = max(elapsed, 0) / NS_PER_S
        r.achieved_rps = achieved_rps(r.completed, elapsed)
        r.latency = summarize_ns(self.latencies)
        r.service = summarize_ns(self.services)
        r.send_lag = summarize_ns(self.lags)
        if r.unfinished:
            self.note_error(f"{r.unfinished} requests unanswered {r.timeout_s:g} s after the end")
        return r


async def run_load(
    url: str,
    rate: float = DEFAULT_RATE,
    duration_s: float = DEFAULT_DURATION_S,
    connections: int = DEFAULT_CONNECTIONS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> LoadResult:
    """Send GET ``url`` at ``rate``/s for ``duration_s`` over ``connections`` keep-alive
    connections; wait up to ``timeout_s`` after the last intended send for the answers.

    Raises OSError when the connections cannot be opened at all.
    """
    if connections < 1:
        raise ValueError(f"connections must be >= 1, got {connections}")
    if timeout_s <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout_s}")
    host, port, path = parse_target(url)
    loop = asyncio.get_running_loop()
    result = LoadResult(url, rate, duration_s, connections, timeout_s, pacer="")
    run = _Run(loop, host, port, build_request(host, port, path), result)
    await asyncio.gather(*(run.connect() for _ in range(connections)))
    run.start()
    deadline_s = (run.offsets[-1] + START_DELAY_NS) / NS_PER_S + timeout_s
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(run.done), deadline_s)
    return run.finish()


def run_load_sync(
    url: str,
    rate: float = DEFAULT_RATE,
    duration_s: float = DEFAULT_DURATION_S,
    connections: int = DEFAULT_CONNECTIONS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> LoadResult:
    """run_load on a fresh uvloop event loop."""
    result: LoadResult = uvloop.run(run_load(url, rate, duration_s, connections, timeout_s))
    return result


# --------------------------------------------------------------------------- CLI


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_text(r: LoadResult) -> str:
    """Human summary of one run."""
    lat, svc, lag = r.latency, r.service, r.send_lag
    rps = "-" if r.achieved_rps is None else f"{r.achieved_rps:,.1f}"
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r.status_counts.items())) or "none"
    lines = [
        f"{r.url}: {r.target_rate:g} rps target for {r.duration_s:g} s on "
        f"{r.connections} connections (pacer: {r.pacer})",
        f"  requests: {r.scheduled} scheduled, {r.sent} sent, {r.completed} completed; "
        f"achieved {rps} rps over {r.elapsed_s:.2f} s",
        f"  errors: {r.errors} (non-2xx/3xx {r.non_2xx_3xx}, socket {r.socket_errors}, "
        f"unfinished {r.unfinished}); statuses {statuses}; reconnects {r.reconnects}",
        f"  latency from intended send (ms): p50 {_ms(lat.p50_ms)}  p90 {_ms(lat.p90_ms)}  "
        f"p99 {_ms(lat.p99_ms)}  p99.9 {_ms(lat.p999_ms)}  max {_ms(lat.max_ms)}",
        f"  service time from actual send (ms): p50 {_ms(svc.p50_ms)}  p99 {_ms(svc.p99_ms)}  "
        f"max {_ms(svc.max_ms)}",
        f"  send lag (ms): p50 {_ms(lag.p50_ms)}  p99 {_ms(lag.p99_ms)}  max {_ms(lag.max_ms)}; "
        f"max backlog {r.max_backlog} requests waiting for a connection",
    ]
    lines += [f"  error: {e}" for e in r.error_samples]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line of the standalone generator."""
    p = argparse.ArgumentParser(
        prog="benchmarks/loadgen.py",
        description="Open-loop fixed-rate HTTP/1.1 GET load; latency from the intended send time.",
    )
    p.add_argument("url", help="http://host:port/path")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="requests per second")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds of sending")
    p.add_argument(
        "--connections", type=int, default=DEFAULT_CONNECTIONS, help="keep-alive connections"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for answers after the last intended send",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.connections < 1 or args.timeout <= 0:
        p.error("--rate, --duration and --timeout must be > 0 and --connections >= 1")
    try:
        parse_target(args.url)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run once; exit 1 if any request failed, 2 if the target could not be reached."""
    args = parse_args(argv)
    try:
        r = run_load_sync(args.url, args.rate, args.duration, args.connections, args.timeout)
    except OSError as exc:
        print(f"loadgen: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(r.to_dict(), indent=2) if args.json else format_text(r))
    return 1 if r.errors else 0


if __name__ == "__main__":
    sys.exit(main())
