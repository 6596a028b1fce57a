"""Tracing, metrics and API-logging settings read from a Configuration's `spec`.

Pure: the spec dict and the environment go in, frozen settings come out, and every bad
field stops start-up with a ConfigError naming it. Things daprd would merely log (an
exporter it would not register, an unparsable sampling rate) become `warnings`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import SplitResult, unquote, urlsplit

from fastproxy.config.errors import ConfigError
from fastproxy.resiliency.durations import parse_duration

_WHERE: Final = "Configuration"
# daprd's rate when samplingRate is empty or unparsable (pkg/diagnostics/utils).
DEFAULT_SAMPLING_RATE: Final = 1e-4
# daprd's default OTLP export timeout (OtelSpec.Timeout, milliseconds there).
DEFAULT_OTEL_TIMEOUT: Final = 10.0
# daprd's latency histogram buckets in milliseconds (MetricSpec.GetLatencyDistribution).
DEFAULT_LATENCY_BUCKETS: Final[tuple[float, ...]] = tuple(
    float(bucket)
    for bucket in (
        1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 30, 40, 50, 65, 80, 100, 130, 160, 200, 250,
        300, 400, 500, 650, 800, 1000, 2000, 5000, 10000, 20000, 50000, 100000,
    )
)  # fmt: skip
SERVER_TIMING_FEATURE: Final = "ServerTiming"
OTLP_PROTOCOL: Final = "http"

# Environment variables daprd reads when otel.endpointAddress is empty, first one set wins.
ENV_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
ENV_PROTOCOLS: Final = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
ENV_INSECURE: Final = "OTEL_EXPORTER_OTLP_INSECURE"

# What Go's strconv.ParseFloat accepts in decimal (hex floats are not worth supporting).
_GO_FLOAT: Final = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)",
    re.IGNORECASE,
)
# RFC 9110 token characters: OpenTelemetry's rule for header names in `otel.headers`.
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """`spec.tracing`. Unlike daprd, which traces at rate 1e-4 with no Configuration at all,
    fastproxy leaves tracing off until a Configuration has a `tracing` key.

    A rate of 0 means propagation only: traceparent is still continued or started and
    returned, but nothing is sampled or exported (daprd turns its middleware off instead).
    """

    enabled: bool = False
    sampling_rate: float = DEFAULT_SAMPLING_RATE
    stdout: bool = False
    zipkin_endpoint: str | None = None
    # host[:port] as Dapr writes otel.endpointAddress, or an http(s) URL (as the OTEL_* variables
    # give it); otel_secure already reflects a scheme written in it.
    otel_endpoint: str | None = None
    # None when no protocol was given: daprd then registers no OTLP exporter.
    otel_protocol: str | None = None
    otel_secure: bool = True
    otel_headers: tuple[tuple[str, str], ...] = ()
    otel_timeout: float = DEFAULT_OTEL_TIMEOUT

    @property
    def exports_otel(self) -> bool:
        """True when spans are to be sent over OTLP/HTTP."""
        return self.enabled and self.otel_endpoint is not None and self.otel_protocol is not None

    @property
    def exports_zipkin(self) -> bool:
        return self.enabled and self.zipkin_endpoint is not None


@dataclass(frozen=True, slots=True)
class MetricSettings:
    """`spec.metric` (or `spec.metrics`); `enabled` is combined with --enable-metrics later."""

    enabled: bool = True
    latency_buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS
    # daprd still defaults to true, with a warning that the default will flip.
    increased_cardinality: bool = True
    path_matching: tuple[str, ...] = ()
    exclude_verbs: bool = False
    record_error_codes: bool = False


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """`spec.logging.apiLogging`: the Configuration's default for --enable-api-logging."""

    api_logging: bool = False
    omit_health_checks: bool = False
    obfuscate_urls: bool = False


@dataclass(frozen=True, slots=True)
class ObservabilitySettings:
    """Everything observability reads from the Configuration, plus what is worth logging."""

    tracing: TracingSettings = TracingSettings()
    metrics: MetricSettings = MetricSettings()
    logging: LoggingSettings = LoggingSettings()
    # fastproxy's own switch (a `features` entry): a Server-Timing response header.
    server_timing: bool = False
    warnings: tuple[str, ...] = ()


def load_observability(
    spec: Mapping[str, Any], environ: Mapping[str, str]
) -> ObservabilitySettings:
    """Read the observability parts of `spec`, the raw Configuration spec (may be empty).

    `environ` stands in for the process environment, which is read only for the OTLP
    endpoint fallback daprd applies.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{_WHERE}: spec must be a mapping, not {_kind(spec)}")
    warnings: list[str] = []
    return ObservabilitySettings(
        tracing=_tracing(spec, environ, warnings),
        metrics=_metrics(spec),
        logging=_logging(spec),
        server_timing=_feature(spec, SERVER_TIMING_FEATURE),
        warnings=tuple(warnings),
    )


# --- tracing -----------------------------------------------------------------------------


def _tracing(
    spec: Mapping[str, object], environ: Mapping[str, str], warnings: list[str]
) -> TracingSettings:
    if "tracing" not in spec:
        for name in ENV_ENDPOINTS:
            if environ.get(name):
                warnings.append(
                    f"{name} is set but the Configuration has no spec.tracing: "
                    "tracing stays off (add spec.tracing to turn it on)"
                )
                break
        return TracingSettings()
    body = _section(spec.get("tracing"), "spec.tracing")
    otel = _section(body.get("otel"), "spec.tracing.otel")
    rate_given = body.get("samplingRate") not in (None, "")
    rate = _sampling_rate(body.get("samplingRate"), warnings)

    protocol = _otel_protocol(otel.get("protocol"))
    secure = _bool(otel, "isSecure", "spec.tracing.otel", default=True)
    field = "spec.tracing.otel.endpointAddress"
    endpoint = _string(otel.get("endpointAddress"), field) or None
    if endpoint is not None:
        secure = _otel_secure(endpoint, f"{_WHERE}: {field}", secure)
        if protocol is None:
            warnings.append(
                "spec.tracing.otel has an endpointAddress but no protocol: no OTLP exporter is "
                f"registered (daprd requires protocol; fastproxy supports {OTLP_PROTOCOL!r})"
            )
    else:
        endpoint, name = _env_endpoint(environ)
        if endpoint is not None:
            insecure = environ.get(ENV_INSECURE, "").strip().lower() == "true"
            secure = _otel_secure(endpoint, name, secure and not insecure)
            if not rate_given:
                rate = 1.0  # daprd samples everything when the endpoint comes from env
            if protocol is None:
                protocol = _env_protocol(environ, warnings)

    timeout = DEFAULT_OTEL_TIMEOUT
    if otel.get("timeout") is not None:
        timeout = parse_duration(otel["timeout"], f"{_WHERE}: spec.tracing.otel.timeout")
        timeout = timeout or DEFAULT_OTEL_TIMEOUT  # 0 is Go's unset
    return TracingSettings(
        enabled=True,
        sampling_rate=rate,
        stdout=_bool(body, "stdout", "spec.tracing", default=False),
        zipkin_endpoint=_zipkin_endpoint(body),
        otel_endpoint=endpoint,
        otel_protocol=protocol,
        otel_secure=secure,
        otel_headers=_otel_headers(otel.get("headers")),
        otel_timeout=timeout,
    )


def _sampling_rate(value: object, warnings: list[str]) -> float:
    """daprd's rule: a number in [0, 1] as a string; empty or unparsable means 1e-4."""
    field = "spec.tracing.samplingRate"
    if value is None or value == "":
        return DEFAULT_SAMPLING_RATE
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{_WHERE}: {field} must be a string or a number, not {_kind(value)}")
    rate = math.nan  # as unparsable
    if isinstance(value, str):
        if _GO_FLOAT.fullmatch(value):
            rate = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    if math.isnan(rate):
        warnings.append(
            f"{field} {value!r} is not a number: using {DEFAULT_SAMPLING_RATE} as daprd does"
        )
        return DEFAULT_SAMPLING_RATE
    if not 0.0 <= rate <= 1.0:
        clamped = min(max(rate, 0.0), 1.0)
        warnings.append(f"{field} {value!r} is outside [0, 1]: using {clamped:g}")
        return clamped
    return rate


def _zipkin_endpoint(tracing: Mapping[str, object]) -> str | None:
    field = "spec.tracing.zipkin.endpointAddress"
    zipkin = _section(tracing.get("zipkin"), "spec.tracing.zipkin")
    value = _string(zipkin.get("endpointAddress"), field)
    if not value:
        return None
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or _CONTROL.search(value)
        or " " in value
        or not _valid_port(parts)
    ):
        raise ConfigError(
            f"{_WHERE}: {field} must be an http(s) URL such as "
            f"'http://localhost:9411/api/v2/spans', not {value!r}"
        )
    return value


def _otel_secure(address: str, source: str, default: bool) -> bool:
    """Check an OTLP address as the exporter reads it (host[:port], or an http(s) URL whose
    scheme then outranks isSecure) and say whether it is reached over TLS."""
    scheme = urlsplit(address).scheme.lower() if "://" in address else ""
    parts = urlsplit(address if scheme else f"//{address}")
    if (
        scheme not in ("", "http", "https")
        or not parts.hostname
        or _CONTROL.search(address)
        or " " in address
        or not _valid_port(parts)
    ):
        raise ConfigError(f"{source} must be host[:port] or an http(s) URL, not {address!r}")
    return scheme == "https" if scheme else default


def _otel_protocol(value: object) -> str | None:
    field = "spec.tracing.otel.protocol"
    text = _string(value, field).lower()
    if not text:
        return None
    if text == "grpc":
        raise ConfigError(
            f"{_WHERE}: {field} is 'grpc', but only protocol {OTLP_PROTOCOL!r} is supported "
            "for otel export"
        )
    if text != OTLP_PROTOCOL:
        raise ConfigError(
            f"{_WHERE}: {field} must be {OTLP_PROTOCOL!r} (the only protocol supported for "
            f"otel export), not {value!r}"
        )
    return OTLP_PROTOCOL


def _otel_headers(value: object) -> tuple[tuple[str, str], ...]:
    """Dapr's form is one string, "k1=v1,k2=v2" with URL-escaped values, as in
    OTEL_EXPORTER_OTLP_HEADERS; a list of "k=v" strings or a mapping is accepted too."""
    field = "spec.tracing.otel.headers"
    pairs: list[tuple[str, str]] = []
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        pairs = [_header_pair(item, field) for item in value.split(",")]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(
                    f"{_WHERE}: {field}[{index}] must be a 'key=value' string, not {_kind(item)}"
                )
            pairs.append(_header_pair(item, f"{field}[{index}]"))
    elif isinstance(value, Mapping):
        for key, raw in value.items():
            name = key.strip() if isinstance(key, str) else ""
            if not _HEADER_NAME.fullmatch(name):
                raise ConfigError(f"{_WHERE}: {field}: invalid header name {key!r}")
            if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                raise ConfigError(f"{_WHERE}: {field}.{name} must be a string, not {_kind(raw)}")
            pairs.append((name, _header_value(str(raw).strip(), f"{field}.{name}")))
    else:
        raise ConfigError(
            f"{_WHERE}: {field} must be a 'key=value,...' string, a list or a mapping, "
            f"not {_kind(value)}"
        )
    return tuple(dict(pairs).items())  # a repeated name keeps its last value, as in daprd


def _header_pair(item: str, field: str) -> tuple[str, str]:
    name, sep, raw = item.partition("=")
    name = name.strip()
    if not sep:
        raise ConfigError(f"{_WHERE}: {field}: {item!r} has no '=' (expected key=value)")
    if not _HEADER_NAME.fullmatch(name):
        raise ConfigError(f"{_WHERE}: {field}: invalid header name {name!r}")
    if _BAD_PERCENT.search(raw):
        raise ConfigError(f"{_WHERE}: {field}: header {name!r} has a malformed %-escape")
    try:
        decoded = unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{_WHERE}: {field}: header {name!r} is not UTF-8 once unescaped"
        ) from exc
    return name, _header_value(decoded.strip(), f"{field}: header {name!r}")


def _header_value(value: str, field: str) -> str:
    if _CONTROL.search(value.replace("\t", " ")):
        raise ConfigError(f"{_WHERE}: {field} must not contain control characters")
    return value


def _env_endpoint(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The OTLP address the environment gives, and the variable it came from."""
    for name in ENV_ENDPOINTS:
        value = environ.get(name, "").strip()
        if value:
            return value, name
    return None, ""


def _env_protocol(environ: Mapping[str, str], warnings: list[str]) -> str | None:
    """daprd maps any http/* value to http and everything else, unset included, to grpc."""
    for name in ENV_PROTOCOLS:
        value = environ.get(name, "").strip()
        if value:
            if value.startswith("http"):
                return OTLP_PROTOCOL
            break
    warnings.append(
        "the OTLP endpoint comes from the environment but OTEL_EXPORTER_OTLP_PROTOCOL is not "
        "http/protobuf or http/json, so daprd would use grpc, which fastproxy cannot export: "
        "no OTLP exporter is registered"
    )
    return None


# --- metrics -----------------------------------------------------------------------------


def _metrics(spec: Mapping[str, object]) -> MetricSettings:
    """`metric` and `metrics` are merged field by field, `metrics` winning, as daprd does
    (Configuration.sortMetricsSpec); errors name the spelling the field came from."""
    merged: dict[str, tuple[str, object]] = {}
    for spelling in ("metric", "metrics"):
        section = f"spec.{spelling}"
        for key, value in _section(spec.get(spelling), section).items():
            if value is not None:
                merged[str(key)] = (f"{section}.{key}", value)

    def field(key: str) -> tuple[str, object]:
        return merged.get(key, (f"spec.metric.{key}", None))

    http_where, http_value = field("http")
    http = _section(http_value, http_where)
    return MetricSettings(
        enabled=_bool_value(*field("enabled"), default=True),
        latency_buckets=_buckets(*field("latencyDistributionBuckets")),
        increased_cardinality=_bool(http, "increasedCardinality", http_where, default=True),
        path_matching=_path_matching(http.get("pathMatching"), f"{http_where}.pathMatching"),
        exclude_verbs=_bool(http, "excludeVerbs", http_where, default=False),
        record_error_codes=_bool_value(*field("recordErrorCodes"), default=False),
    )


def _buckets(field: str, value: object) -> tuple[float, ...]:
    if value is None:
        return DEFAULT_LATENCY_BUCKETS
    if not isinstance(value, list):
        raise ConfigError(f"{_WHERE}: {field} must be a list of numbers, not {_kind(value)}")
    buckets: set[float] = set()
    for index, item in enumerate(value):
        bucket = _positive_number(item)
        if bucket is None:
            raise ConfigError(
                f"{_WHERE}: {field}[{index}] must be a positive number of milliseconds, "
                f"not {item!r}"
            )
        buckets.add(bucket)
    return tuple(sorted(buckets)) if buckets else DEFAULT_LATENCY_BUCKETS


def _positive_number(value: object) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _path_matching(value: object, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{_WHERE}: {field} must be a list of paths, not {_kind(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.startswith("/"):
            raise ConfigError(
                f"{_WHERE}: {field}[{index}] must be a path starting with '/', not {item!r}"
            )
    return tuple(value)


# --- logging and features ----------------------------------------------------------------


def _logging(spec: Mapping[str, object]) -> LoggingSettings:
    logging = _section(spec.get("logging"), "spec.logging")
    where = "spec.logging.apiLogging"
    api = _section(logging.get("apiLogging"), where)
    return LoggingSettings(
        api_logging=_bool(api, "enabled", where, default=False),
        omit_health_checks=_bool(api, "omitHealthChecks", where, default=False),
        obfuscate_urls=_bool(api, "obfuscateURLs", where, default=False),
    )


def _feature(spec: Mapping[str, object], wanted: str) -> bool:
    """Whether `features` turns `wanted` on; a later entry of the same name wins."""
    value = spec.get("features")
    if value is None:
        return False
    if not isinstance(value, list):
        raise ConfigError(f"{_WHERE}: spec.features must be a list, not {_kind(value)}")
    enabled = False
    for index, item in enumerate(value):
        where = f"spec.features[{index}]"
        entry = _section(item, where)
        name = entry.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{_WHERE}: {where}.name must be a string, not {_kind(name)}")
        on = _bool(entry, "enabled", where, default=False)
        if name == wanted:
            enabled = on
    return enabled


# --- field readers -----------------------------------------------------------------------


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _section(value: object, field: str) -> Mapping[str, object]:
    """A nested block; absent or null reads as empty, as Go's decoder leaves it."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{_WHERE}: {field} must be a mapping, not {_kind(value)}")
    return value


def _string(value: object, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{_WHERE}: {field} must be a string, not {_kind(value)} ({value!r})")
    return value.strip()


def _bool(body: Mapping[str, object], key: str, where: str, *, default: bool) -> bool:
    return _bool_value(f"{where}.{key}", body.get(key), default=default)


def _bool_value(field: str, value: object, *, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(
            f"{_WHERE}: {field} must be true or false, not {_kind(value)} ({value!r})"
        )
    return value


def _valid_port(parts: SplitResult) -> bool:
    """urllib checks the port only when it is read."""
    try:
        _ = parts.port
    except ValueError:
        return False
    return True
