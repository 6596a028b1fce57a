"""Reading tracing, metrics, API-logging and feature settings from a Configuration spec."""

from __future__ import annotations

from typing import Any

import pytest

from fastproxy.config.errors import ConfigError
from fastproxy.observability.settings import (
    DEFAULT_LATENCY_BUCKETS,
    DEFAULT_SAMPLING_RATE,
    LoggingSettings,
    MetricSettings,
    ObservabilitySettings,
    TracingSettings,
    load_observability,
)

DAPR_BUCKETS = (
    1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 30, 40, 50, 65, 80, 100, 130, 160, 200, 250, 300,
    400, 500, 650, 800, 1000, 2000, 5000, 10000, 20000, 50000, 100000,
)  # fmt: skip


def load(spec: Any, env: dict[str, str] | None = None) -> ObservabilitySettings:
    return load_observability(spec, env or {})


def tracing(env: dict[str, str] | None = None, **fields: Any) -> TracingSettings:
    return load({"tracing": fields}, env).tracing


def otel(env: dict[str, str] | None = None, **fields: Any) -> TracingSettings:
    return tracing(env, otel=fields)


def error_for(spec: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(spec, env)
    return str(caught.value)


# --- defaults ----------------------------------------------------------------------------


def test_empty_spec_gives_every_default_and_no_warnings() -> None:
    settings = load({})
    assert settings == ObservabilitySettings()
    assert settings.tracing == TracingSettings()
    assert settings.metrics == MetricSettings()
    assert settings.logging == LoggingSettings()
    assert settings.server_timing is False
    assert settings.warnings == ()


def test_tracing_is_off_without_a_tracing_key() -> None:
    settings = load({"metric": {"enabled": True}})
    assert settings.tracing.enabled is False
    assert settings.tracing.exports_otel is False
    assert settings.tracing.exports_zipkin is False


@pytest.mark.parametrize("body", [{}, None], ids=["empty-mapping", "null"])
def test_a_tracing_key_turns_tracing_on_at_dapr_default_rate(body: Any) -> None:
    settings = load({"tracing": body})
    assert settings.tracing == TracingSettings(enabled=True)
    assert settings.tracing.sampling_rate == DEFAULT_SAMPLING_RATE == 1e-4
    assert settings.warnings == ()


def test_default_buckets_are_daprs() -> None:
    assert DAPR_BUCKETS == DEFAULT_LATENCY_BUCKETS
    assert all(isinstance(bucket, float) for bucket in DEFAULT_LATENCY_BUCKETS)


def test_spec_must_be_a_mapping() -> None:
    assert "spec must be a mapping" in error_for(["tracing"])


# --- tracing.samplingRate ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rate", "warns"),
    [
        ("1", 1.0, False),
        ("0", 0.0, False),
        ("0.5", 0.5, False),
        (".25", 0.25, False),
        ("1e-3", 0.001, False),
        (0.25, 0.25, False),
        (1, 1.0, False),
        (0, 0.0, False),
        ("", DEFAULT_SAMPLING_RATE, False),
        (None, DEFAULT_SAMPLING_RATE, False),
        ("abc", DEFAULT_SAMPLING_RATE, True),
        (" 1", DEFAULT_SAMPLING_RATE, True),
        ("1_0", DEFAULT_SAMPLING_RATE, True),
        ("nan", DEFAULT_SAMPLING_RATE, True),
        (True, DEFAULT_SAMPLING_RATE, True),
        ("2", 1.0, True),
        (7, 1.0, True),
        ("-1", 0.0, True),
        ("inf", 1.0, True),
    ],
    ids=[
        "one",
        "zero",
        "half",
        "leading-dot",
        "exponent",
        "float",
        "int-one",
        "int-zero",
        "empty",
        "null",
        "word",
        "leading-space",
        "underscore",
        "nan",
        "bool",
        "above-one-string",
        "above-one-int",
        "negative",
        "infinity",
    ],
)
def test_sampling_rate_follows_daprd(value: Any, rate: float, warns: bool) -> None:
    settings = load({"tracing": {"samplingRate": value}})
    assert settings.tracing.sampling_rate == rate
    assert settings.tracing.enabled is True
    assert bool(settings.warnings) is warns
    if warns:
        assert "samplingRate" in settings.warnings[0]


@pytest.mark.parametrize("value", [[1], {"a": 1}], ids=["list", "mapping"])
def test_sampling_rate_of_the_wrong_type_is_an_error(value: Any) -> None:
    assert "spec.tracing.samplingRate" in error_for({"tracing": {"samplingRate": value}})


# --- tracing.stdout and zipkin -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), (False, False), (None, False)], ids=["on", "off", "null"]
)
def test_stdout_is_kept(value: Any, expected: bool) -> None:
    assert tracing(stdout=value).stdout is expected


@pytest.mark.parametrize(
    "url",
    ["http://localhost:9411/api/v2/spans", "https://zipkin.example.com/api/v2/spans"],
    ids=["http", "https"],
)
def test_zipkin_endpoint_is_an_http_url(url: str) -> None:
    settings = tracing(zipkin={"endpointAddress": url})
    assert settings.zipkin_endpoint == url
    assert settings.exports_zipkin is True


@pytest.mark.parametrize(
    "zipkin", [None, {}, {"endpointAddress": ""}, {"endpointAddress": None}], ids=str
)
def test_no_zipkin_endpoint_means_no_zipkin_export(zipkin: Any) -> None:
    settings = tracing(zipkin=zipkin)
    assert settings.zipkin_endpoint is None
    assert settings.exports_zipkin is False


# --- tracing.otel ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "secure"),
    [
        ("localhost:4318", True),
        ("collector", True),
        ("10.0.0.7:4318", True),
        ("[::1]:4318", True),
        ("collector:4318/prefix/v1/traces", True),
        ("http://localhost:4318", False),
        ("https://otel.example.com/v1/traces", True),
        ("HTTP://localhost:4318", False),
    ],
    ids=["host-port", "host", "ipv4", "ipv6", "with-path", "http-url", "https-url", "upper-scheme"],
)
def test_otel_endpoint_is_host_port_or_http_url(endpoint: str, secure: bool) -> None:
    settings = otel(endpointAddress=endpoint, protocol="http")
    assert settings.otel_endpoint == endpoint
    assert settings.otel_protocol == "http"
    assert settings.otel_secure is secure
    assert settings.exports_otel is True


@pytest.mark.parametrize(
    ("endpoint", "is_secure", "secure"),
    [
        ("http://c:4318", True, False),
        ("https://c:4318", False, True),
        ("c:4318", False, False),
    ],
    ids=["http-scheme-beats-secure", "https-scheme-beats-insecure", "bare-uses-is-secure"],
)
def test_a_scheme_in_the_otel_endpoint_outranks_is_secure(
    endpoint: str, is_secure: bool, secure: bool
) -> None:
    settings = otel(endpointAddress=endpoint, protocol="http", isSecure=is_secure)
    assert settings.otel_secure is secure


@pytest.mark.parametrize("protocol", ["http", "HTTP", " http "], ids=["lower", "upper", "padded"])
def test_otel_protocol_http_is_accepted(protocol: str) -> None:
    assert otel(protocol=protocol).otel_protocol == "http"


def test_otel_grpc_is_refused_saying_only_http_is_supported() -> None:
    message = error_for({"tracing": {"otel": {"endpointAddress": "h:4317", "protocol": "grpc"}}})
    assert "spec.tracing.otel.protocol" in message
    assert "only protocol 'http' is supported for otel export" in message


def test_otel_without_protocol_is_not_registered_and_says_so() -> None:
    settings = load({"tracing": {"otel": {"endpointAddress": "localhost:4318"}}})
    assert settings.tracing.otel_endpoint == "localhost:4318"
    assert settings.tracing.otel_protocol is None
    assert settings.tracing.exports_otel is False
    assert len(settings.warnings) == 1
    assert "no protocol" in settings.warnings[0]
    assert "not registered" in settings.warnings[0] or "no OTLP exporter" in settings.warnings[0]


def test_otel_protocol_without_endpoint_exports_nothing_quietly() -> None:
    settings = load({"tracing": {"otel": {"protocol": "http"}}})
    assert settings.tracing.exports_otel is False
    assert settings.warnings == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), (True, True), (False, False)],
    ids=["default", "on", "off"],
)
def test_otel_is_secure_defaults_to_true(value: Any, expected: bool) -> None:
    assert otel(isSecure=value).otel_secure is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ()),
        ("", ()),
        ("api-key=secret", (("api-key", "secret"),)),
        ("a=1,b=2", (("a", "1"), ("b", "2"))),
        (" a = b%20c , d=e%2Cf", (("a", "b c"), ("d", "e,f"))),
        ("a=x=y", (("a", "x=y"),)),
        ("a=1,a=2", (("a", "2"),)),
        (["a=1", "b = 2"], (("a", "1"), ("b", "2"))),
        ({"a": "1", "b": 2}, (("a", "1"), ("b", "2"))),
        ({"a": "b%20c"}, (("a", "b%20c"),)),
    ],
    ids=[
        "null",
        "empty",
        "one",
        "two",
        "trimmed-and-unescaped",
        "equals-in-value",
        "last-wins",
        "list",
        "mapping",
        "mapping-is-literal",
    ],
)
def test_otel_headers(value: Any, expected: tuple[tuple[str, str], ...]) -> None:
    assert otel(headers=value).otel_headers == expected


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("novalue", "spec.tracing.otel.headers"),
        ("=v", "spec.tracing.otel.headers"),
        ("a b=c", "spec.tracing.otel.headers"),
        ("a=%zz", "spec.tracing.otel.headers"),
        ("a=x%0d%0aInjected: 1", "spec.tracing.otel.headers"),
        ("a=%ff", "spec.tracing.otel.headers"),
        (["a=b", 3], "spec.tracing.otel.headers[1]"),
        (["nothing"], "spec.tracing.otel.headers[0]"),
        ({"a": ["x"]}, "spec.tracing.otel.headers.a"),
        ({"bad name": "x"}, "spec.tracing.otel.headers"),
        ({"a": "x\ny"}, "spec.tracing.otel.headers.a"),
        (5, "spec.tracing.otel.headers"),
    ],
    ids=[
        "no-equals",
        "empty-name",
        "space-in-name",
        "bad-escape",
        "escaped-crlf",
        "not-utf8",
        "list-item-type",
        "list-item-no-equals",
        "mapping-value-type",
        "mapping-bad-name",
        "mapping-newline",
        "number",
    ],
)
def test_bad_otel_headers_name_the_field(value: Any, field: str) -> None:
    assert field in error_for({"tracing": {"otel": {"headers": value}}})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 10.0), ("5s", 5.0), ("1m30s", 90.0), ("1500ms", 1.5), (2000, 2.0), ("250", 0.25)],
    ids=["default", "go-seconds", "go-compound", "go-millis", "int-millis", "string-millis"],
)
def test_otel_timeout(value: Any, seconds: float) -> None:
    assert otel(timeout=value).otel_timeout == seconds


def test_otel_timeout_of_zero_means_the_default() -> None:
    assert otel(timeout=0).otel_timeout == 10.0


# --- invalid tracing fields, each named ----------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"tracing": "on"}, "spec.tracing"),
        ({"tracing": {"stdout": "yes"}}, "spec.tracing.stdout"),
        ({"tracing": {"zipkin": "http://z"}}, "spec.tracing.zipkin"),
        ({"tracing": {"zipkin": {"endpointAddress": 9411}}}, "spec.tracing.zipkin.endpointAddress"),
        (
            {"tracing": {"zipkin": {"endpointAddress": "localhost:9411"}}},
            "spec.tracing.zipkin.endpointAddress",
        ),
        (
            {"tracing": {"zipkin": {"endpointAddress": "ftp://z/api/v2/spans"}}},
            "spec.tracing.zipkin.endpointAddress",
        ),
        ({"tracing": {"zipkin": {"endpointAddress": "http://"}}}, "spec.tracing.zipkin"),
        (
            {"tracing": {"zipkin": {"endpointAddress": "http://z:99999/api"}}},
            "spec.tracing.zipkin.endpointAddress",
        ),
        (
            {"tracing": {"zipkin": {"endpointAddress": "http://z/a b"}}},
            "spec.tracing.zipkin.endpointAddress",
        ),
        ({"tracing": {"otel": ["x"]}}, "spec.tracing.otel"),
        ({"tracing": {"otel": {"endpointAddress": 4318}}}, "spec.tracing.otel.endpointAddress"),
        (
            {"tracing": {"otel": {"endpointAddress": "grpc://localhost:4317"}}},
            "spec.tracing.otel.endpointAddress",
        ),
        (
            {"tracing": {"otel": {"endpointAddress": "localhost:port"}}},
            "spec.tracing.otel.endpointAddress",
        ),
        ({"tracing": {"otel": {"endpointAddress": ":4318"}}}, "spec.tracing.otel.endpointAddress"),
        (
            {"tracing": {"otel": {"endpointAddress": "http://"}}},
            "spec.tracing.otel.endpointAddress",
        ),
        (
            {"tracing": {"otel": {"endpointAddress": "local host:4318"}}},
            "spec.tracing.otel.endpointAddress",
        ),
        ({"tracing": {"otel": {"protocol": "thrift"}}}, "spec.tracing.otel.protocol"),
        ({"tracing": {"otel": {"protocol": 1}}}, "spec.tracing.otel.protocol"),
        ({"tracing": {"otel": {"isSecure": "false"}}}, "spec.tracing.otel.isSecure"),
        ({"tracing": {"otel": {"timeout": "-1s"}}}, "spec.tracing.otel.timeout"),
        ({"tracing": {"otel": {"timeout": "soon"}}}, "spec.tracing.otel.timeout"),
        ({"tracing": {"otel": {"timeout": [1]}}}, "spec.tracing.otel.timeout"),
    ],
    ids=[
        "tracing-not-mapping",
        "stdout-string",
        "zipkin-not-mapping",
        "zipkin-number",
        "zipkin-no-scheme",
        "zipkin-ftp",
        "zipkin-no-host",
        "zipkin-bad-port",
        "zipkin-space",
        "otel-not-mapping",
        "otel-endpoint-number",
        "otel-endpoint-grpc-scheme",
        "otel-endpoint-bad-port",
        "otel-endpoint-no-host",
        "otel-endpoint-scheme-only",
        "otel-endpoint-space",
        "otel-protocol-unknown",
        "otel-protocol-number",
        "otel-secure-string",
        "otel-timeout-negative",
        "otel-timeout-word",
        "otel-timeout-list",
    ],
)
def test_invalid_tracing_fields_name_the_field(spec: dict[str, Any], field: str) -> None:
    message = error_for(spec)
    assert message.startswith("Configuration: ")
    assert field in message


# --- OTLP environment fallback -----------------------------------------------------------

TRACES = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
GENERIC = "OTEL_EXPORTER_OTLP_ENDPOINT"
HTTP_ENV = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({TRACES: "traces:4318", GENERIC: "generic:4318"}, "traces:4318"),
        ({GENERIC: "generic:4318"}, "generic:4318"),
        ({TRACES: "", GENERIC: "generic:4318"}, "generic:4318"),
        ({TRACES: "  ", GENERIC: "generic:4318"}, "generic:4318"),
        ({}, None),
    ],
    ids=["traces-first", "generic", "empty-traces-skipped", "blank-traces-skipped", "neither"],
)
def test_env_fills_the_otel_endpoint_in_daprs_order(
    env: dict[str, str], endpoint: str | None
) -> None:
    assert tracing({**env, **HTTP_ENV}).otel_endpoint == endpoint


def test_configured_endpoint_wins_over_env() -> None:
    settings = otel({TRACES: "env:4318", **HTTP_ENV}, endpointAddress="yaml:4318", protocol="http")
    assert settings.otel_endpoint == "yaml:4318"


@pytest.mark.parametrize(
    ("env", "endpoint", "secure"),
    [
        ({GENERIC: "http://c:4318"}, "http://c:4318", False),
        ({GENERIC: "https://c:4318"}, "https://c:4318", True),
        ({TRACES: "https://c:4318/v1/traces"}, "https://c:4318/v1/traces", True),
        ({GENERIC: "c:4318"}, "c:4318", True),
        ({GENERIC: "c:4318", "OTEL_EXPORTER_OTLP_INSECURE": "true"}, "c:4318", False),
        ({GENERIC: "c:4318", "OTEL_EXPORTER_OTLP_INSECURE": "TRUE"}, "c:4318", False),
        ({GENERIC: "https://c", "OTEL_EXPORTER_OTLP_INSECURE": "true"}, "https://c", True),
        ({GENERIC: "c:4318", "OTEL_EXPORTER_OTLP_INSECURE": "false"}, "c:4318", True),
    ],
    ids=[
        "http-scheme",
        "https-scheme",
        "traces-url",
        "bare",
        "insecure-env",
        "insecure-env-any-case",
        "scheme-beats-insecure-env",
        "insecure-false",
    ],
)
def test_env_endpoint_scheme_and_insecure_flag(
    env: dict[str, str], endpoint: str, secure: bool
) -> None:
    settings = load({"tracing": {}}, {**env, **HTTP_ENV})
    assert settings.tracing.otel_endpoint == endpoint
    assert settings.tracing.otel_secure is secure
    assert settings.warnings == ()


def test_insecure_env_does_not_touch_a_configured_endpoint() -> None:
    env = {"OTEL_EXPORTER_OTLP_INSECURE": "true"}
    settings = otel(env, endpointAddress="c:4318", protocol="http")
    assert settings.otel_secure is True


@pytest.mark.parametrize(
    ("rate", "expected"), [(None, 1.0), ("", 1.0), ("0.5", 0.5), ("0", 0.0)], ids=str
)
def test_env_endpoint_samples_everything_unless_a_rate_is_set(
    rate: str | None, expected: float
) -> None:
    settings = tracing({GENERIC: "c:4318", **HTTP_ENV}, samplingRate=rate)
    assert settings.sampling_rate == expected


@pytest.mark.parametrize(
    ("env", "protocol"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "http"),
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            None,
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, None),
        ({}, None),
    ],
    ids=["http-protobuf", "http-json", "traces-protocol", "traces-protocol-first", "grpc", "unset"],
)
def test_env_endpoint_protocol(env: dict[str, str], protocol: str | None) -> None:
    settings = load({"tracing": {}}, {GENERIC: "c:4318", **env})
    assert settings.tracing.otel_protocol == protocol
    assert settings.tracing.exports_otel is (protocol is not None)
    assert bool(settings.warnings) is (protocol is None)


def test_configured_protocol_is_kept_for_an_env_endpoint() -> None:
    settings = otel({GENERIC: "c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, protocol="http")
    assert settings.otel_protocol == "http"
    assert settings.exports_otel is True


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({GENERIC: "ftp://c:4318"}, GENERIC),
        ({TRACES: "http://c:port"}, TRACES),
        ({GENERIC: "c 4318"}, GENERIC),
    ],
    ids=["ftp", "bad-port", "space"],
)
def test_bad_env_endpoint_names_the_variable(env: dict[str, str], name: str) -> None:
    assert name in error_for({"tracing": {}}, env)


def test_env_endpoint_without_a_tracing_key_leaves_tracing_off_with_a_warning() -> None:
    settings = load({}, {GENERIC: "ftp://would-be-an-error", **HTTP_ENV})
    assert settings.tracing == TracingSettings()
    assert len(settings.warnings) == 1
    assert GENERIC in settings.warnings[0]
    assert "spec.tracing" in settings.warnings[0]


# --- metrics -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, MetricSettings()),
        (None, MetricSettings()),
        ({"enabled": False}, MetricSettings(enabled=False)),
        ({"enabled": True}, MetricSettings(enabled=True)),
        ({"recordErrorCodes": True}, MetricSettings(record_error_codes=True)),
        (
            {"latencyDistributionBuckets": [100, 5, 1, 5, 2.5]},
            MetricSettings(latency_buckets=(1.0, 2.5, 5.0, 100.0)),
        ),
        ({"latencyDistributionBuckets": []}, MetricSettings()),
        ({"latencyDistributionBuckets": None}, MetricSettings()),
        ({"http": {"increasedCardinality": False}}, MetricSettings(increased_cardinality=False)),
        ({"http": {"increasedCardinality": True}}, MetricSettings(increased_cardinality=True)),
        ({"http": {"excludeVerbs": True}}, MetricSettings(exclude_verbs=True)),
        (
            {"http": {"pathMatching": ["/orders/{orderID}", "/items"]}},
            MetricSettings(path_matching=("/orders/{orderID}", "/items")),
        ),
        ({"http": {"pathMatching": []}}, MetricSettings()),
        ({"rules": [{"name": "x"}]}, MetricSettings()),
    ],
    ids=[
        "empty",
        "null",
        "disabled",
        "enabled",
        "record-error-codes",
        "buckets-sorted-deduplicated",
        "buckets-empty",
        "buckets-null",
        "cardinality-off",
        "cardinality-on",
        "exclude-verbs",
        "path-matching",
        "path-matching-empty",
        "rules-ignored",
    ],
)
def test_metric_fields(body: Any, expected: MetricSettings) -> None:
    assert load({"metric": body}).metrics == expected
    assert load({"metrics": body}).metrics == expected


def test_bucket_order_is_strictly_increasing() -> None:
    buckets = load({"metric": {"latencyDistributionBuckets": [3, 1, 2, 3, 1]}}).metrics
    assert buckets.latency_buckets == (1.0, 2.0, 3.0)
    assert all(isinstance(bucket, float) for bucket in buckets.latency_buckets)


def test_metrics_spelling_overrides_metric_field_by_field_as_daprd() -> None:
    settings = load(
        {
            "metric": {"enabled": False, "http": {"excludeVerbs": True}},
            "metrics": {"recordErrorCodes": True, "http": {"increasedCardinality": False}},
        }
    ).metrics
    assert settings == MetricSettings(
        enabled=False, record_error_codes=True, increased_cardinality=False, exclude_verbs=False
    )


def test_metrics_spelling_wins_a_field_set_in_both() -> None:
    spec = {"metric": {"enabled": True}, "metrics": {"enabled": False}}
    assert load(spec).metrics.enabled is False


def test_null_in_metrics_spelling_does_not_override() -> None:
    spec = {"metric": {"enabled": False}, "metrics": {"enabled": None}}
    assert load(spec).metrics.enabled is False


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"metric": "on"}, "spec.metric"),
        ({"metrics": ["on"]}, "spec.metrics"),
        ({"metric": {"enabled": "false"}}, "spec.metric.enabled"),
        ({"metrics": {"enabled": 0}}, "spec.metrics.enabled"),
        ({"metric": {"recordErrorCodes": "yes"}}, "spec.metric.recordErrorCodes"),
        (
            {"metric": {"latencyDistributionBuckets": "1,2"}},
            "spec.metric.latencyDistributionBuckets",
        ),
        ({"metric": {"latencyDistributionBuckets": [1, 0]}}, "latencyDistributionBuckets[1]"),
        ({"metric": {"latencyDistributionBuckets": [-5]}}, "latencyDistributionBuckets[0]"),
        ({"metric": {"latencyDistributionBuckets": ["5"]}}, "latencyDistributionBuckets[0]"),
        ({"metric": {"latencyDistributionBuckets": [True]}}, "latencyDistributionBuckets[0]"),
        (
            {"metric": {"latencyDistributionBuckets": [float("inf")]}},
            "latencyDistributionBuckets[0]",
        ),
        ({"metric": {"latencyDistributionBuckets": [10**400]}}, "latencyDistributionBuckets[0]"),
        (
            {"metrics": {"latencyDistributionBuckets": [0]}},
            "spec.metrics.latencyDistributionBuckets",
        ),
        ({"metric": {"http": "x"}}, "spec.metric.http"),
        ({"metric": {"http": {"increasedCardinality": "false"}}}, "http.increasedCardinality"),
        ({"metric": {"http": {"excludeVerbs": 1}}}, "spec.metric.http.excludeVerbs"),
        ({"metric": {"http": {"pathMatching": "/orders"}}}, "spec.metric.http.pathMatching"),
        ({"metric": {"http": {"pathMatching": ["orders"]}}}, "http.pathMatching[0]"),
        ({"metric": {"http": {"pathMatching": ["/a", 1]}}}, "http.pathMatching[1]"),
        ({"metrics": {"http": {"pathMatching": [""]}}}, "spec.metrics.http.pathMatching[0]"),
    ],
    ids=[
        "metric-not-mapping",
        "metrics-not-mapping",
        "enabled-string",
        "enabled-int",
        "record-error-codes-string",
        "buckets-string",
        "bucket-zero",
        "bucket-negative",
        "bucket-string",
        "bucket-bool",
        "bucket-infinite",
        "bucket-too-large",
        "bucket-under-metrics",
        "http-not-mapping",
        "cardinality-string",
        "exclude-verbs-int",
        "path-matching-string",
        "path-without-slash",
        "path-not-string",
        "path-empty-under-metrics",
    ],
)
def test_invalid_metric_fields_name_the_field(spec: dict[str, Any], field: str) -> None:
    assert field in error_for(spec)


# --- logging -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        (None, LoggingSettings()),
        ({}, LoggingSettings()),
        ({"enabled": True}, LoggingSettings(api_logging=True)),
        ({"omitHealthChecks": True}, LoggingSettings(omit_health_checks=True)),
        ({"obfuscateURLs": True}, LoggingSettings(obfuscate_urls=True)),
        (
            {"enabled": True, "omitHealthChecks": True, "obfuscateURLs": True},
            LoggingSettings(api_logging=True, omit_health_checks=True, obfuscate_urls=True),
        ),
    ],
    ids=["null", "empty", "enabled", "omit-health-checks", "obfuscate-urls", "all"],
)
def test_api_logging_fields(api: Any, expected: LoggingSettings) -> None:
    assert load({"logging": {"apiLogging": api}}).logging == expected


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"logging": []}, "spec.logging"),
        ({"logging": {"apiLogging": True}}, "spec.logging.apiLogging"),
        ({"logging": {"apiLogging": {"enabled": "true"}}}, "spec.logging.apiLogging.enabled"),
        (
            {"logging": {"apiLogging": {"omitHealthChecks": 1}}},
            "spec.logging.apiLogging.omitHealthChecks",
        ),
        (
            {"logging": {"apiLogging": {"obfuscateURLs": "no"}}},
            "spec.logging.apiLogging.obfuscateURLs",
        ),
    ],
    ids=["logging-list", "api-logging-bool", "enabled", "omit-health-checks", "obfuscate-urls"],
)
def test_invalid_logging_fields_name_the_field(spec: dict[str, Any], field: str) -> None:
    assert field in error_for(spec)


# --- features ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (None, False),
        ([], False),
        ([{"name": "ServerTiming", "enabled": True}], True),
        ([{"name": "ServerTiming", "enabled": False}], False),
        ([{"name": "ServerTiming"}], False),
        ([{"name": "servertiming", "enabled": True}], False),
        ([{"name": "HotReload", "enabled": True}], False),
        (
            [{"name": "ServerTiming", "enabled": True}, {"name": "ServerTiming", "enabled": False}],
            False,
        ),
        (
            [{"name": "ServerTiming", "enabled": False}, {"name": "ServerTiming", "enabled": True}],
            True,
        ),
    ],
    ids=[
        "null",
        "empty",
        "on",
        "off",
        "enabled-missing",
        "name-is-case-sensitive",
        "other-feature",
        "later-off-wins",
        "later-on-wins",
    ],
)
def test_server_timing_feature(features: Any, expected: bool) -> None:
    assert load({"features": features}).server_timing is expected


@pytest.mark.parametrize(
    ("features", "field"),
    [
        ("ServerTiming", "spec.features"),
        (["ServerTiming"], "spec.features[0]"),
        ([{"enabled": True}], "spec.features[0].name"),
        ([{"name": "A"}, {"name": "ServerTiming", "enabled": "yes"}], "spec.features[1].enabled"),
    ],
    ids=["not-a-list", "entry-not-mapping", "name-missing", "enabled-string"],
)
def test_invalid_features_name_the_field(features: Any, field: str) -> None:
    assert field in error_for({"features": features})


# --- everything together -----------------------------------------------------------------


def test_a_full_configuration() -> None:
    spec = {
        "tracing": {
            "samplingRate": "0.25",
            "stdout": True,
            "zipkin": {"endpointAddress": "http://zipkin:9411/api/v2/spans"},
            "otel": {
                "endpointAddress": "otel:4318",
                "protocol": "http",
                "isSecure": False,
                "headers": "x-api-key=k1",
                "timeout": "3s",
            },
        },
        "metric": {"enabled": False, "latencyDistributionBuckets": [1, 10]},
        "logging": {"apiLogging": {"enabled": True, "obfuscateURLs": True}},
        "features": [{"name": "ServerTiming", "enabled": True}],
        "accessControl": {"defaultAction": "deny"},
    }
    assert load(spec, {GENERIC: "ignored:4318"}) == ObservabilitySettings(
        tracing=TracingSettings(
            enabled=True,
            sampling_rate=0.25,
            stdout=True,
            zipkin_endpoint="http://zipkin:9411/api/v2/spans",
            otel_endpoint="otel:4318",
            otel_protocol="http",
            otel_secure=False,
            otel_headers=(("x-api-key", "k1"),),
            otel_timeout=3.0,
        ),
        metrics=MetricSettings(enabled=False, latency_buckets=(1.0, 10.0)),
        logging=LoggingSettings(api_logging=True, obfuscate_urls=True),
        server_timing=True,
    )
