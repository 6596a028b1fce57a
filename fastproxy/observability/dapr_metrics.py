"""Dapr's metric set, with Dapr's names, labels, buckets and path-label rules.

Dashboards and alerts written for daprd keep working against fastproxy. The
`record_*` methods run once per request: each is one dict look-up that finds
every series the request touches, then integer adds. Working out labels (path
patterns, verbs, status text) happens only on a look-up miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import unquote

from fastproxy.observability.metrics import (
    DEFAULT_MAX_SERIES,
    Collect,
    Counter,
    CounterChild,
    CounterFunc,
    GaugeFunc,
    Histogram,
    HistogramChild,
    Registry,
)

# daprd's defaults (pkg/config/configuration.go, pkg/diagnostics/metrics.go).
DEFAULT_LATENCY_BUCKETS_MS: Final[tuple[float, ...]] = (
    1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 30, 40, 50, 65, 80, 100, 130, 160, 200, 250,
    300, 400, 500, 650, 800, 1000, 2000, 5000, 10000, 20000, 50000, 100000,
)  # fmt: skip
SIZE_BUCKETS: Final[tuple[float, ...]] = (
    1 << 10, 2 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20,
    64 << 20, 256 << 20, 1 << 30, 4 << 30,
)  # fmt: skip
# The sidecar's own share of a request is microseconds to a few milliseconds.
SIDECAR_TIME_BUCKETS_MS: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2,
    3, 5, 10,
)  # fmt: skip

STANDARD_METHODS: Final = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
UNKNOWN_METHOD: Final = "UNKNOWN"

# The categories daprd files its error codes under (pkg/messages/errorcodes), for the
# codes the sidecar answers with; its own framing errors count as common ones.
ERROR_CATEGORIES: Final = {
    "ERR_DIRECT_INVOKE": "service-invocation",
    "ERR_HEALTH_APPID_NOT_MATCH": "health",
}
DEFAULT_ERROR_CATEGORY: Final = "common"


def error_category(error_code: str) -> str:
    return ERROR_CATEGORIES.get(error_code, DEFAULT_ERROR_CATEGORY)


INVOKE_PATTERN_PREFIX: Final = "/v1.0/invoke/{app_id}/method"
"""daprd registers every pathMatching pattern once more behind this prefix."""

CACHE_SIZE: Final = 4096
"""Entries in each per-request look-up cache; a full cache is cleared, never grown."""

UNARY: Final = "unary"

# Dapr's resiliency metrics (pkg/diagnostics/resiliency_monitoring.go): service invocation
# policies act outbound, on targets named "app_<id>"; a breaker's state gauge has one
# series per state, 1 for the state it was last seen in.
RESILIENCY_LABELS: Final = (
    "app_id",
    "name",
    "policy",
    "namespace",
    "flow_direction",
    "target",
    "status",
)
OUTBOUND: Final = "outbound"
BREAKER_STATUSES: Final = ("closed", "half-open", "open", "unknown")
_BREAKER: Final = "circuitbreaker"


def method_label(method: str, exclude_verbs: bool) -> str:
    """The `method` label: blank when verbs are excluded, `UNKNOWN` for non-standard verbs."""
    if exclude_verbs:
        return ""
    return method if method in STANDARD_METHODS else UNKNOWN_METHOD


# -- path labels ------------------------------------------------------------------------------


def _without_query(path: str) -> str:
    for mark in ("?", "#"):
        cut = path.find(mark)
        if cut >= 0:
            path = path[:cut]
    if not path.startswith("/") and "://" in path:  # absolute form: keep only the path
        slash = path.find("/", path.find("://") + 3)
        path = path[slash:] if slash >= 0 else "/"
    return path


def _merge_slashes(path: str) -> str:
    """daprd's NormalizeHTTPPath: no empty segments, a leading slash."""
    while "//" in path:
        path = path.replace("//", "/")
    return path if path.startswith("/") else "/" + path


def normalize_path(path: str) -> str:
    """The path label daprd gives with increasedCardinality: decoded, no query, no `//`."""
    path = _without_query(path)
    if not path:
        return ""
    return _merge_slashes(unquote(path))


# Segment kinds, in precedence order: a literal beats a one-segment wildcard beats a tail.
_LITERAL: Final = 0
_SINGLE: Final = 1
_TAIL: Final = 2


class PathPattern:
    """One Go ServeMux path pattern: `/orders/{id}`, `/files/{rest...}`, `/v1/`, `/a/{$}`.

    Of the patterns matching a path, the one whose segment kinds sort first wins:
    at the first segment where two differ, a literal beats `{x}` beats a tail.
    Where Go reports two patterns as conflicting, this picks the one with the
    earlier literal.
    """

    __slots__ = ("kinds", "literals", "order", "text")

    def __init__(self, text: str, order: int) -> None:
        self.text = text
        self.order = order
        kinds: list[int] = []
        literals: list[str] = []
        segments = text[1:].split("/")
        last = len(segments) - 1
        for index, segment in enumerate(segments):
            kind, literal = _LITERAL, ""
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1]
                if name == "$" and index == last:
                    literal = ""  # `/a/{$}` matches `/a/` and nothing below it
                elif name.endswith("...") and name[:-3].isidentifier() and index == last:
                    kind = _TAIL
                elif name.isidentifier():
                    kind = _SINGLE
                else:
                    raise ValueError(f"invalid wildcard {segment!r} in path pattern {text!r}")
            elif "{" in segment or "}" in segment:
                raise ValueError(f"a wildcard must be a whole segment: {text!r}")
            elif index == last and not segment:
                kind = _TAIL  # a trailing slash: the whole subtree
            else:
                literal = unquote(segment)
            kinds.append(kind)
            literals.append(literal)
        self.kinds = tuple(kinds)
        self.literals = tuple(literals)

    def matches(self, segments: list[str]) -> bool:
        """Whether the pattern matches a path split on `/` (each segment decoded)."""
        count = len(segments)
        for index, kind in enumerate(self.kinds):
            if kind == _TAIL:
                return index < count
            if index >= count:
                return False
            if kind == _SINGLE:
                if not segments[index]:
                    return False
            elif segments[index] != self.literals[index]:
                return False
        return len(self.kinds) == count

    def __repr__(self) -> str:
        return f"<PathPattern {self.text}>"


def compile_patterns(path_matching: Sequence[str]) -> list[PathPattern]:
    """The patterns daprd registers: each normalised, plus its service-invocation variant."""
    texts: list[str] = []
    for raw in path_matching:
        text = _merge_slashes(raw)
        texts.append(text)
        if not text.startswith("/v1.0/invoke/"):
            texts.append(INVOKE_PATTERN_PREFIX + text)
    unique = list(dict.fromkeys(texts))
    return [PathPattern(text, order) for order, text in enumerate(unique)]


class PathLabeler:
    """Turns a request path into the `path` label, remembering recent answers.

    A matching pathMatching pattern is the label; otherwise the normalised path
    with increasedCardinality, else "". The memo is cleared when full, so a
    flood of distinct paths costs no more memory than `cache_size` entries.
    """

    __slots__ = ("_cache", "_patterns", "cache_size", "increased_cardinality")

    def __init__(
        self,
        increased_cardinality: bool = True,
        path_matching: Sequence[str] = (),
        cache_size: int = 1024,
    ) -> None:
        self.increased_cardinality = increased_cardinality
        self.cache_size = max(1, cache_size)
        self._patterns = compile_patterns(path_matching)
        self._cache: dict[str, str] = {}

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(pattern.text for pattern in self._patterns)

    def cached(self) -> int:
        return len(self._cache)

    def label(self, path: str) -> str:
        label = self._cache.get(path)
        if label is None:
            label = self.compute(path)
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[path] = label
        return label

    def compute(self, path: str) -> str:
        """The label without the memo."""
        raw = _without_query(path)
        if not raw:
            return ""
        if self._patterns:
            segments = [unquote(segment) for segment in _merge_slashes(raw)[1:].split("/")]
            best: PathPattern | None = None
            for pattern in self._patterns:
                if pattern.matches(segments) and (
                    best is None or (pattern.kinds, pattern.order) < (best.kinds, best.order)
                ):
                    best = pattern
            if best is not None:
                return best.text
        return normalize_path(raw) if self.increased_cardinality else ""

    def __repr__(self) -> str:
        return (
            f"<PathLabeler increased_cardinality={self.increased_cardinality} "
            f"patterns={len(self._patterns)} cached={len(self._cache)}>"
        )


# -- the series one request touches --------------------------------------------------------------


class _AppCall:
    """The app leg's series for one (method, path, status): daprd's HTTP client metrics."""

    __slots__ = ("count", "latency", "sent_bytes")

    def __init__(
        self, count: CounterChild, latency: HistogramChild, sent_bytes: HistogramChild
    ) -> None:
        self.count = count
        self.latency = latency
        self.sent_bytes = sent_bytes


class _Exchange:
    """The series one (method, path, status) touches: the server's, and the app leg's.

    The app leg's are made on its first use: a request that never reached the app
    (an error, a call to another app) leaves no empty client series behind.
    `responses` is daprd's legacy response count, kept only with increased cardinality.
    """

    __slots__ = ("app", "count", "latency", "responses")

    def __init__(
        self, count: CounterChild, latency: HistogramChild, responses: CounterChild | None
    ) -> None:
        self.count = count
        self.latency = latency
        self.responses = responses
        self.app: _AppCall | None = None


class _RemoteCall:
    __slots__ = ("latency", "received", "sent")

    def __init__(self, sent: CounterChild, received: CounterChild, latency: HistogramChild) -> None:
        self.sent = sent
        self.received = received
        self.latency = latency


class _PolicySeries:
    """One target's resiliency series, by policy (a breaker's by state), found on first use."""

    __slots__ = ("activated", "executed", "target")

    def __init__(self, target: str) -> None:
        self.target = "app_" + target  # as daprd names a service invocation target
        self.executed: dict[str, CounterChild] = {}
        self.activated: dict[str, CounterChild] = {}


class _Inbound:
    __slots__ = ("received", "sent")

    def __init__(self, received: CounterChild, sent: CounterChild) -> None:
        self.received = received
        self.sent = sent


# -- the metric set ------------------------------------------------------------------------------


class DaprMetrics:
    """Every metric fastproxy exposes, and the hot-path calls that record them."""

    __slots__ = (
        "_acl_denied",
        "_app_cache",
        "_breaker_seen",
        "_client_count",
        "_client_latency",
        "_client_received_bytes",
        "_client_sent_bytes",
        "_error_codes",
        "_inbound_cache",
        "_last_method",
        "_last_path",
        "_last_series",
        "_last_status",
        "_policy_cache",
        "_remote_cache",
        "_req_recv",
        "_req_sent",
        "_request_bytes",
        "_res_recv",
        "_res_recv_latency",
        "_res_sent",
        "_resiliency_activations",
        "_resiliency_count",
        "_resiliency_loaded",
        "_resiliency_name",
        "_resiliency_namespace",
        "_response_bytes",
        "_retries",
        "_server_cache",
        "_server_count",
        "_server_latency",
        "_server_responses",
        "_sidecar_time",
        "app_id",
        "enabled",
        "exclude_verbs",
        "labeler",
        "registry",
    )

    def __init__(
        self,
        app_id: str,
        enabled: bool = True,
        latency_buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS_MS,
        increased_cardinality: bool = True,
        path_matching: Sequence[str] = (),
        exclude_verbs: bool = False,
        max_series: int = DEFAULT_MAX_SERIES,
        record_error_codes: bool = False,
    ) -> None:
        self.app_id = app_id
        self.enabled = enabled
        self.exclude_verbs = exclude_verbs
        self.labeler = PathLabeler(increased_cardinality, path_matching)
        self.registry = registry = Registry()

        def counter(name: str, help: str, labelnames: Sequence[str]) -> Counter:
            return registry.register(Counter(name, help, labelnames, max_series))

        def histogram(
            name: str, help: str, labelnames: Sequence[str], buckets: Sequence[float]
        ) -> Histogram:
            return registry.register(Histogram(name, help, labelnames, buckets, max_series))

        http = ("app_id", "method", "path", "status")
        latency = tuple(latency_buckets)

        self._server_count = counter(
            "dapr_http_server_request_count",
            "Number of HTTP requests started in server.",
            http,
        )
        self._server_latency = histogram(
            "dapr_http_server_latency",
            "HTTP request end to end latency in server.",
            http,
            latency,
        )
        # daprd's legacy count of responses, the same count as the latency's; only kept
        # with the full paths (spec.metric.http.increasedCardinality, on by default).
        self._server_responses: Counter | None = None
        if increased_cardinality:
            self._server_responses = counter(
                "dapr_http_server_response_count",
                "Number of HTTP responses the server sent.",
                http,
            )
        self._request_bytes = histogram(
            "dapr_http_server_request_bytes",
            "HTTP request body size if set as ContentLength (uncompressed) in server.",
            ("app_id",),
            SIZE_BUCKETS,
        ).labels(app_id)
        self._response_bytes = histogram(
            "dapr_http_server_response_bytes",
            "HTTP response body size (uncompressed) in server.",
            ("app_id",),
            SIZE_BUCKETS,
        ).labels(app_id)
        self._client_count = counter(
            "dapr_http_client_completed_count",
            "Count of completed requests",
            http,
        )
        self._client_latency = histogram(
            "dapr_http_client_roundtrip_latency",
            "Time between first byte of request headers sent to last byte of response "
            "received, or terminal error",
            http,
            latency,
        )
        self._client_sent_bytes = histogram(
            "dapr_http_client_sent_bytes",
            "Size of the request bodies sent to the app, headers left out.",
            http,
            SIZE_BUCKETS,
        )
        self._client_received_bytes = histogram(
            "dapr_http_client_received_bytes",
            "Size of the response bodies received from the app, error answers included and "
            "headers left out.",
            ("app_id",),
            SIZE_BUCKETS,
        ).labels(app_id)
        self._req_sent = counter(
            "dapr_runtime_service_invocation_req_sent_total",
            "The number of requests sent via service invocation.",
            ("app_id", "dst_app_id", "type"),
        )
        self._res_recv = counter(
            "dapr_runtime_service_invocation_res_recv_total",
            "The number of responses received via service invocation.",
            ("app_id", "src_app_id", "status", "type"),
        )
        self._res_recv_latency = histogram(
            "dapr_runtime_service_invocation_res_recv_latency_ms",
            "The latency of service invocation response.",
            ("app_id", "src_app_id", "status"),
            latency,
        )
        self._req_recv = counter(
            "dapr_runtime_service_invocation_req_recv_total",
            "The number of requests received via service invocation.",
            ("app_id", "src_app_id"),
        )
        self._res_sent = counter(
            "dapr_runtime_service_invocation_res_sent_total",
            "The number of responses sent via service invocation.",
            ("app_id", "dst_app_id", "status"),
        )
        self._sidecar_time = histogram(
            "fastproxy_sidecar_time_ms",
            "Time the sidecar itself spent on a request, apart from the upstream's.",
            ("app_id",),
            SIDECAR_TIME_BUCKETS_MS,
        ).labels(app_id)
        self._retries = counter(
            "fastproxy_retries_total",
            "Attempts made again under a resiliency retry policy.",
            ("app_id", "dst_app_id"),
        )
        self._acl_denied = counter(
            "fastproxy_acl_denied_total",
            "Requests refused by the access control policy.",
            ("app_id", "src_app_id"),
        )
        # spec.metric.recordErrorCodes: as in daprd, the metric exists only when asked for.
        self._error_codes: Counter | None = None
        if record_error_codes:
            self._error_codes = counter(
                "dapr_error_code_total",
                "Total number of times an error with a specific error code was encountered.",
                ("app_id", "error_code", "category"),
            )
        self._resiliency_loaded = counter(
            "dapr_resiliency_loaded",
            "Number of resiliency policies loaded.",
            ("app_id", "name", "namespace"),
        )
        self._resiliency_count = counter(
            "dapr_resiliency_count",
            "Number of times a resiliency policyKey has been applied to a building block.",
            RESILIENCY_LABELS,
        )
        self._resiliency_activations = counter(
            "dapr_resiliency_activations_total",
            "Number of times a resiliency policyKey has been activated in a building block "
            "after a failure or after a state change.",
            RESILIENCY_LABELS,
        )
        # daprd labels every policy with the last Resiliency resource it loaded.
        self._resiliency_name = ""
        self._resiliency_namespace = ""
        # The state each target's breaker was last seen in, bounded like a metric's series.
        self._breaker_seen: dict[str, str] = {}
        self._policy_cache: dict[str, _PolicySeries] = {}
        self._server_cache: dict[tuple[bytes, bytes, int], _Exchange] = {}
        # The (method, path, status) of the last request recorded, and its series: a
        # sidecar mostly sees the same request again, and three compares cost less than
        # building, hashing and looking up a key.
        self._last_method = b""
        self._last_path = b""
        self._last_status = 0
        self._last_series: _Exchange | None = None
        self._app_cache: dict[tuple[bytes, bytes, int], _AppCall] = {}
        self._remote_cache: dict[tuple[str, int], _RemoteCall] = {}
        self._inbound_cache: dict[tuple[str, int], _Inbound] = {}
        # Last, as they hand out `self`: compiled, every field set before is known to
        # be always set, so the hot path reads them with no check for a missing value.
        registry.register(
            GaugeFunc(
                "dapr_resiliency_cb_state",
                "A resiliency policy's current CircuitBreakerState state. 0 is closed, 1 is "
                "half-open, 2 is open, and -1 is unknown.",
                RESILIENCY_LABELS,
                self._breaker_states,
            )
        )
        registry.register(
            CounterFunc(
                "fastproxy_metrics_series_overflow_total",
                "Observations recorded in an _other series because a metric reached its "
                "series bound.",
                (),
                self._overflow,
            )
        )

    def _breaker_states(self) -> list[tuple[tuple[str, ...], float]]:
        prefix = (self.app_id, self._resiliency_name, _BREAKER, self._resiliency_namespace)
        return [
            ((*prefix, OUTBOUND, target, status), 1.0 if status == seen else 0.0)
            for target, seen in self._breaker_seen.items()
            for status in BREAKER_STATUSES
        ]

    def _overflow(self) -> list[tuple[tuple[str, ...], float]]:
        return [((), float(self.registry.folded()))]

    def add_gauge(self, name: str, help: str, labelnames: Sequence[str], collect: Collect) -> None:
        """A gauge read from its owner at scrape time (pools, breakers, caches, ...)."""
        self.registry.register(GaugeFunc(name, help, labelnames, collect))

    def render(self) -> bytes:
        return self.registry.render()

    # -- hot path --------------------------------------------------------------------------------

    def record_server(
        self,
        method: bytes,
        path: bytes,
        status: int,
        latency_ms: float,
        request_bytes: int,
        response_bytes: int,
        sidecar_ms: float,
        app_path: bytes = b"",
        app_ms: float = -1.0,
    ) -> None:
        """One request answered on the sidecar's HTTP API (`path` as it arrived), and,
        when `app_ms` is not negative, its round trip to the sidecar's own app at `app_path`.

        One dict look-up serves every series of the request (none when it is the same
        request as the last one); labels are only worked out (and bytes decoded) the
        first time a (method, path, status) is seen.
        """
        if not self.enabled:
            return
        series = self._last_series
        if (
            series is None
            or status != self._last_status
            or path != self._last_path
            or method != self._last_method
        ):
            key = (method, path, status)
            series = self._server_cache.get(key)
            if series is None:
                series = self._server_series(key)
            self._last_series = series
            self._last_method = method
            self._last_path = path
            self._last_status = status
        series.count.value += 1
        responses = series.responses
        if responses is not None:
            responses.value += 1
        series.latency.observe(latency_ms)
        self._request_bytes.observe(request_bytes)
        self._response_bytes.observe(response_bytes)
        self._sidecar_time.observe(sidecar_ms)
        if app_ms >= 0.0:
            # The app was sent the request's body and answered with the response's.
            app = series.app
            if app is None:
                app = series.app = self._app_series(method, app_path, status)
            app.count.value += 1
            app.latency.observe(app_ms)
            app.sent_bytes.observe(request_bytes)
            self._client_received_bytes.observe(response_bytes)

    def record_app_call(
        self,
        method: bytes,
        path: bytes,
        status: int,
        latency_ms: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        """A round trip to the sidecar's own app outside the HTTP API (a delivered call)."""
        if not self.enabled:
            return
        key = (method, path, status)
        app = self._app_cache.get(key)
        if app is None:
            app = self._app_series(method, path, status)
            if len(self._app_cache) >= CACHE_SIZE:
                self._app_cache.clear()
            self._app_cache[key] = app
        app.count.value += 1
        app.latency.observe(latency_ms)
        app.sent_bytes.observe(request_bytes)
        self._client_received_bytes.observe(response_bytes)

    def record_remote_call(self, dst_app_id: str, status: int, latency_ms: float) -> None:
        """Caller side of service invocation: a request sent to another sidecar, and its answer."""
        if not self.enabled:
            return
        key = (dst_app_id, status)
        series = self._remote_cache.get(key)
        if series is None:
            series = self._remote_series(key)
        series.sent.value += 1
        series.received.value += 1
        series.latency.observe(latency_ms)

    def record_inbound(self, src_app_id: str, status: int) -> None:
        """Callee side: a request from another sidecar, and the answer sent back."""
        if not self.enabled:
            return
        key = (src_app_id, status)
        series = self._inbound_cache.get(key)
        if series is None:
            series = self._inbound_series(key)
        series.received.value += 1
        series.sent.value += 1

    def record_retry(self, dst_app_id: str, retries: int = 1) -> None:
        if self.enabled:
            self._retries.labels(self.app_id, dst_app_id).value += retries

    def record_acl_denied(self, src_app_id: str) -> None:
        if self.enabled:
            self._acl_denied.labels(self.app_id, src_app_id).value += 1

    def record_error_code(self, error_code: str) -> None:
        """The sidecar answered with a Dapr error body carrying `error_code`."""
        counter = self._error_codes
        if counter is not None and self.enabled and error_code:
            counter.labels(self.app_id, error_code, error_category(error_code)).value += 1

    # -- resiliency (only for calls under a policy) --------------------------------------------

    def record_policy_loaded(self, name: str, namespace: str) -> None:
        """A Resiliency resource was loaded; the last one names every policy's series."""
        self._resiliency_name = name
        self._resiliency_namespace = namespace
        if self.enabled:
            self._resiliency_loaded.labels(self.app_id, name, namespace).value += 1

    def policy_executed(self, target: str, timeout: bool, retry: bool, breaker: str) -> None:
        """A call to `target` is made under its policies; `breaker` is its breaker's state."""
        if not self.enabled:
            return
        series = self._policies_of(target)
        count = self._resiliency_count
        if timeout:
            self._policy_cell(count, series.executed, series.target, "timeout", "").value += 1
        if retry:
            self._policy_cell(count, series.executed, series.target, "retry", "").value += 1
        if breaker:
            cell = self._policy_cell(count, series.executed, series.target, _BREAKER, breaker)
            cell.value += 1
            seen = self._breaker_seen
            if series.target in seen or len(seen) < count.max_series:
                seen[series.target] = breaker

    def policy_activated(self, target: str, policy: str, status: str = "") -> None:
        """A policy acted on a call to `target` (for a breaker: the state it changed to)."""
        if self.enabled:
            series = self._policies_of(target)
            cell = self._policy_cell(
                self._resiliency_activations, series.activated, series.target, policy, status
            )
            cell.value += 1

    def _policies_of(self, target: str) -> _PolicySeries:
        series = self._policy_cache.get(target)
        if series is None:
            if len(self._policy_cache) >= CACHE_SIZE:
                self._policy_cache.clear()
            series = self._policy_cache[target] = _PolicySeries(target)
        return series

    def _policy_cell(
        self,
        counter: Counter,
        cells: dict[str, CounterChild],
        target: str,
        policy: str,
        status: str,
    ) -> CounterChild:
        """The series of `policy` on `target`: looked up once, then held in `cells`."""
        key = status or policy  # a breaker's series differ by state; states are not policies
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = counter.labels(
                self.app_id,
                self._resiliency_name,
                policy,
                self._resiliency_namespace,
                OUTBOUND,
                target,
                status,
            )
        return cell

    # -- look-up misses --------------------------------------------------------------------------

    def _http_labels(self, method: bytes, path: bytes, status: int) -> tuple[str, str, str, str]:
        return (
            self.app_id,
            method_label(method.decode("latin-1"), self.exclude_verbs),
            self.labeler.label(path.decode("latin-1")),
            str(status),
        )

    def _server_series(self, key: tuple[bytes, bytes, int]) -> _Exchange:
        labels = self._http_labels(*key)
        responses = self._server_responses
        series = _Exchange(
            self._server_count.labels(*labels),
            self._server_latency.labels(*labels),
            None if responses is None else responses.labels(*labels),
        )
        if len(self._server_cache) >= CACHE_SIZE:
            self._server_cache.clear()
        self._server_cache[key] = series
        return series

    def _app_series(self, method: bytes, path: bytes, status: int) -> _AppCall:
        labels = self._http_labels(method, path, status)
        return _AppCall(
            self._client_count.labels(*labels),
            self._client_latency.labels(*labels),
            self._client_sent_bytes.labels(*labels),
        )

    def _remote_series(self, key: tuple[str, int]) -> _RemoteCall:
        dst_app_id, status = key
        status_text = str(status)
        series = _RemoteCall(
            self._req_sent.labels(self.app_id, dst_app_id, UNARY),
            self._res_recv.labels(self.app_id, dst_app_id, status_text, UNARY),
            self._res_recv_latency.labels(self.app_id, dst_app_id, status_text),
        )
        if len(self._remote_cache) >= CACHE_SIZE:
            self._remote_cache.clear()
        self._remote_cache[key] = series
        return series

    def _inbound_series(self, key: tuple[str, int]) -> _Inbound:
        src_app_id, status = key
        series = _Inbound(
            self._req_recv.labels(self.app_id, src_app_id),
            self._res_sent.labels(self.app_id, src_app_id, str(status)),
        )
        if len(self._inbound_cache) >= CACHE_SIZE:
            self._inbound_cache.clear()
        self._inbound_cache[key] = series
        return series

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"<DaprMetrics app_id={self.app_id!r} {state} folded={self.registry.folded()}>"
