"""The sidecar's eyes: one object that starts each request's observation and records its end.

`Observer` exists only when something is on (metrics, tracing, the access log
or Server-Timing); the connection asks it once per request to `begin` (trace
context, clocks) and to `finish` (metrics, the sampled span, the log line).
Everything slow — span export, log formatting — happens off the loop's path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

from fastproxy.observability.accesslog import (
    AccessLog,
    AccessRecord,
    is_health_check,
    obfuscated_path,
)
from fastproxy.observability.dapr_metrics import DaprMetrics
from fastproxy.observability.export import BatchExporter
from fastproxy.observability.observation import Observation
from fastproxy.observability.spans import invoke_span
from fastproxy.observability.tracecontext import (
    IdSource,
    Sampler,
    parse_traceparent,
    sampled_line,
    traceparent_line,
    valid_tracestate,
)

_HEALTHZ: Final = b"/v1.0/healthz"
# Held in module constants: compiled, calling them skips the module-dict look-up.
_perf_counter: Final = time.perf_counter
_time: Final = time.time
_time_ns: Final = time.time_ns


class Observer:
    """What one sidecar watches; built once at start from its settings."""

    __slots__ = (
        "_access_log",
        "_exporters",
        "_exports",
        "_ids",
        "_metrics",
        "_obfuscate_urls",
        "_omit_health_checks",
        "_sampler",
        "_server_timing",
        "_times_every_request",
        "app_id",
        "logs_access",
        "tracing",
    )

    def __init__(
        self,
        app_id: str,
        sampler: Sampler | None,
        metrics: DaprMetrics | None,
        exporters: Sequence[BatchExporter] = (),
        access_log: AccessLog | None = None,
        server_timing: bool = False,
        omit_health_checks: bool = False,
        obfuscate_urls: bool = False,
    ) -> None:
        self.app_id = app_id
        # With a sampler, the trace context is continued or started for every request
        # (a rate of 0 only propagates it); spans go to the exporters when sampled.
        self.tracing = sampler is not None
        self._sampler = sampler
        self._ids = IdSource()
        self._metrics = metrics
        self._exporters = tuple(exporters)
        self._access_log = access_log
        self.logs_access = access_log is not None
        # spec.logging.apiLogging: health checks left out, routes logged instead of paths.
        self._omit_health_checks = omit_health_checks
        self._obfuscate_urls = obfuscate_urls
        self._server_timing = server_timing
        # Whether a request's clocks are read even when it is not sampled: trace
        # propagation alone needs no clock.
        self._exports = bool(self._exporters)
        self._times_every_request = (
            (metrics is not None and metrics.enabled) or access_log is not None or server_timing
        )

    def __repr__(self) -> str:
        return (
            f"<Observer tracing={self._sampler!r} metrics={self._metrics is not None}"
            f" exporters={len(self._exporters)} access_log={self._access_log is not None}"
            f" server_timing={self._server_timing}>"
        )

    # -- per request ----------------------------------------------------------

    def begin(
        self,
        method: bytes,
        path: bytes,
        traceparent: bytes | None,
        tracestate: bytes | None,
        delivered: bool,
        spare: Observation | None = None,
    ) -> Observation:
        """A request's head was read: its clocks start, its trace context is decided.

        `spare`, an observation its connection is done with, is reused rather than a
        new one made: fewer allocations, and less code run per request.
        """
        sampler = self._sampler
        if sampler is None:
            return self._observation(method, path, delivered, self._times_every_request, spare)
        # Health checks are never traced, as in daprd.
        parsed = parse_traceparent(traceparent) if traceparent else None
        parent_id = kept_tracestate = b""
        if parsed is None:
            # Absent or malformed: a new trace, never the client's bytes.
            line = self._ids.new_root_line()
            sampled = sampler.sampled_root(line) and not path.startswith(_HEALTHZ)
            if sampled:
                line = sampled_line(line)
        else:
            trace_id, parent_id, parent_sampled = parsed
            sampled = sampler.sampled(trace_id, parent_sampled) and not path.startswith(_HEALTHZ)
            line = traceparent_line(trace_id, self._ids.new_span(), sampled)
            if tracestate and valid_tracestate(tracestate):
                kept_tracestate = tracestate
        obs = self._observation(
            method, path, delivered, self._times_every_request or (sampled and self._exports), spare
        )
        obs.traceparent = line
        obs.sampled = sampled
        obs.parent_id = parent_id
        if kept_tracestate:
            obs.tracestate = kept_tracestate
            obs.app_lines = line + b"tracestate: %b\r\n" % kept_tracestate
        else:
            obs.app_lines = line
        return obs

    def _observation(
        self, method: bytes, path: bytes, delivered: bool, timed: bool, spare: Observation | None
    ) -> Observation:
        if spare is None:
            return Observation(method, path, delivered, self._server_timing, timed)
        spare.reset(method, path, delivered, self._server_timing, timed)
        return spare

    def finish(self, obs: Observation) -> None:
        """The response is over: metrics, the span if sampled, the access log line."""
        if not obs.timed:
            return  # nothing wants to hear of it (see `begin`)
        total_s = _perf_counter() - obs.started
        upstream_s = obs.upstream_seconds()
        metrics = self._metrics
        if metrics is not None:
            self._record(metrics, obs, total_s, upstream_s)
        if obs.sampled and self._exporters:
            self._export(obs, total_s)
        access_log = self._access_log
        if access_log is not None and not (self._omit_health_checks and is_health_check(obs.path)):
            access_log.write(
                AccessRecord(
                    time=_time() - total_s,
                    method=obs.method.decode("latin-1"),
                    path=(
                        obfuscated_path(obs.path)
                        if self._obfuscate_urls
                        else obs.path.decode("latin-1")
                    ),
                    app_id=obs.target,
                    status=obs.status,
                    bytes_in=obs.bytes_in,
                    bytes_out=obs.bytes_out,
                    upstream="" if obs.upstream is None else obs.upstream.address,
                    total_ms=total_s * 1000.0,
                    upstream_ms=upstream_s * 1000.0,
                    retries=obs.retries,
                    trace_id=obs.trace_id.decode(),
                    client=obs.client,
                )
            )

    def rejected(self, status: int, bytes_out: int, client: str) -> None:
        """A request refused before its head was whole (malformed, too large, too slow).

        It has no route and no trace; only the access log hears of it, with an empty
        method and path, so a flood of garbage is visible where requests are.
        """
        access_log = self._access_log
        if access_log is not None:
            access_log.write(
                AccessRecord(
                    time=_time(),
                    method="",
                    path="",
                    app_id="",
                    status=status,
                    bytes_in=0,
                    bytes_out=bytes_out,
                    upstream="",
                    total_ms=0.0,
                    upstream_ms=0.0,
                    retries=0,
                    trace_id="",
                    client=client,
                )
            )

    def _record(
        self, metrics: DaprMetrics, obs: Observation, total_s: float, upstream_s: float
    ) -> None:
        status = obs.status
        upstream_ms = upstream_s * 1000.0
        reached_app = obs.sent_at != 0.0
        if obs.delivered:
            # The internal listener: a call another sidecar delivered for our app.
            metrics.record_inbound(obs.caller, status)
            if reached_app:
                metrics.record_app_call(
                    obs.method, obs.app_path, status, upstream_ms, obs.bytes_in, obs.bytes_out
                )
        else:
            total_ms = total_s * 1000.0
            remote = obs.remote
            metrics.record_server(
                obs.method,
                obs.path,
                status,
                total_ms,
                obs.bytes_in,
                obs.bytes_out,
                total_ms - upstream_ms,
                obs.app_path,
                upstream_ms if reached_app and not remote else -1.0,
            )
            if remote and reached_app:
                metrics.record_remote_call(obs.target, status, upstream_ms)
        if obs.retries:
            metrics.record_retry(obs.target, obs.retries)

    def _export(self, obs: Observation, total_s: float) -> None:
        end_ns = _time_ns()
        pool = obs.upstream
        span = invoke_span(
            trace_id=obs.trace_id,
            span_id=obs.span_id,
            parent_id=obs.parent_id,
            kind="SERVER" if obs.delivered else "CLIENT",
            target_app_id=obs.target or self.app_id,
            method=obs.app_path or obs.path,
            verb=obs.method,
            path=obs.path,
            url=obs.path,
            status=obs.status,
            start_ns=end_ns - int(total_s * 1e9),
            end_ns=end_ns,
            server_address="" if pool is None else pool.host,
            server_port=0 if pool is None else pool.port,
            headers=(),
        )
        for exporter in self._exporters:
            exporter.submit(span)

    # -- the sidecar's life -----------------------------------------------------

    def start(self) -> None:
        for exporter in self._exporters:
            exporter.start()

    async def close(self) -> None:
        for exporter in self._exporters:
            await exporter.close()
        if self._access_log is not None:
            self._access_log.close(2.0)
