"""Builds a sidecar's `Observer` from its flags and Configuration, or none when all is off.

Kept apart from the request path: this runs once at start, logs what was
chosen, and hands back the objects the server starts and stops.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from fastproxy.config.model import Config
from fastproxy.observability.accesslog import AccessLog
from fastproxy.observability.dapr_metrics import DaprMetrics
from fastproxy.observability.export import (
    BatchExporter,
    encode_otlp_json,
    encode_zipkin,
    parse_otel_endpoint,
)
from fastproxy.observability.observer import Observer
from fastproxy.observability.settings import ObservabilitySettings, load_observability
from fastproxy.observability.spans import Span
from fastproxy.observability.tracecontext import Sampler

log = logging.getLogger("fastproxy")


@dataclass(slots=True)
class Observability:
    """What a sidecar watches with: the observer (None when nothing is on) and its parts."""

    settings: ObservabilitySettings
    observer: Observer | None = None
    metrics: DaprMetrics | None = None
    exporters: list[BatchExporter] = field(default_factory=list)
    access_log: AccessLog | None = None


def build_observability(
    config: Config, configuration: Mapping[str, object], environ: Mapping[str, str]
) -> Observability:
    """The observer for `config` and the Configuration's spec (ConfigError when invalid)."""
    settings = load_observability(configuration, environ)
    for warning in settings.warnings:
        log.warning("%s", warning)
    built = Observability(settings)
    metric = settings.metrics
    if config.enable_metrics and metric.enabled:
        built.metrics = DaprMetrics(
            config.app_id,
            latency_buckets=metric.latency_buckets,
            increased_cardinality=metric.increased_cardinality,
            path_matching=metric.path_matching,
            exclude_verbs=metric.exclude_verbs,
            record_error_codes=metric.record_error_codes,
        )
    tracing = settings.tracing
    sampler = Sampler(tracing.sampling_rate) if tracing.enabled else None
    if tracing.enabled:
        built.exporters = _exporters(config.app_id, settings)
    if config.enable_api_logging or settings.logging.api_logging:
        built.access_log = AccessLog(sys.stdout, config.log_as_json)
    if (
        built.metrics is not None
        or sampler is not None
        or built.access_log is not None
        or settings.server_timing
    ):
        built.observer = Observer(
            config.app_id,
            sampler,
            built.metrics,
            built.exporters,
            built.access_log,
            settings.server_timing,
            settings.logging.omit_health_checks,
            settings.logging.obfuscate_urls,
        )
    return built


def _exporters(app_id: str, settings: ObservabilitySettings) -> list[BatchExporter]:
    tracing = settings.tracing
    service = app_id or "fastproxy"
    exporters: list[BatchExporter] = []
    if tracing.zipkin_endpoint:

        def zipkin(spans: list[Span]) -> bytes:
            return encode_zipkin(spans, service)

        exporters.append(BatchExporter(tracing.zipkin_endpoint, zipkin, "application/json"))
    if tracing.otel_endpoint and tracing.otel_protocol == "http":

        def otlp(spans: list[Span]) -> bytes:
            return encode_otlp_json(spans, service)

        exporters.append(
            BatchExporter(
                parse_otel_endpoint(tracing.otel_endpoint, tracing.otel_secure),
                otlp,
                "application/json",
                headers=tracing.otel_headers,
                timeout=tracing.otel_timeout,
            )
        )
    return exporters


def describe(built: Observability) -> dict[str, object]:
    """The metadata document's `observability` section."""
    tracing = built.settings.tracing
    return {
        "metrics": built.metrics is not None,
        "tracing": {
            "enabled": tracing.enabled,
            "samplingRate": tracing.sampling_rate,
            "exporters": [e.url for e in built.exporters],
        },
        "apiLogging": built.access_log is not None,
        "serverTiming": built.settings.server_timing,
    }
