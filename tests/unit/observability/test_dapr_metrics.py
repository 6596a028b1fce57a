"""Dapr's metric set: path labels, verb labels, and the samples each record_* call produces."""

from __future__ import annotations

import pytest

from fastproxy.observability.dapr_metrics import (
    CACHE_SIZE,
    DEFAULT_LATENCY_BUCKETS_MS,
    RESILIENCY_LABELS,
    SIZE_BUCKETS,
    DaprMetrics,
    PathLabeler,
    method_label,
    normalize_path,
)
from fastproxy.observability.metrics import Counter

Labels = frozenset[tuple[str, str]]


def samples(metrics: DaprMetrics) -> dict[tuple[str, Labels], float]:
    """Every sample of the exposition, keyed by name and label set."""
    result: dict[tuple[str, Labels], float] = {}
    for line in metrics.render().decode().splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, rest = series.partition("{")
        pairs = [pair.split("=", 1) for pair in rest.rstrip("}").split('",') if pair]
        labels = frozenset((key, raw.strip('"')) for key, raw in pairs)
        result[(name, labels)] = float(value)
    return result


def only(found: dict[tuple[str, Labels], float], name: str) -> dict[Labels, float]:
    return {labels: value for (metric, labels), value in found.items() if metric == name}


def L(**labels: str) -> Labels:  # noqa: N802 - reads like a label literal
    return frozenset(labels.items())


# -- method label ----------------------------------------------------------------------------------

STANDARD = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


@pytest.mark.parametrize(
    ("method", "exclude", "expected"),
    [
        *[pytest.param(verb, False, verb, id=verb) for verb in STANDARD],
        pytest.param("PROPFIND", False, "UNKNOWN", id="webdav-verb"),
        pytest.param("get", False, "UNKNOWN", id="lower-case"),
        pytest.param("", False, "UNKNOWN", id="empty"),
        pytest.param("GET", True, "", id="excluded"),
        pytest.param("PROPFIND", True, "", id="excluded-unknown"),
    ],
)
def test_method_label(method: str, exclude: bool, expected: str) -> None:
    assert method_label(method, exclude) == expected


# -- path label ------------------------------------------------------------------------------------

ORDERS = ("/orders/{orderID}",)
ITEMS = (
    "/v1/orders/{orderID}/items/12345",
    "/v1/orders/{orderID}/items/{itemID}",
    "/v1/items/{id}",
)


@pytest.mark.parametrize(
    ("patterns", "increased", "path", "expected"),
    [
        # no pathMatching: the path itself, or nothing
        pytest.param((), True, "/v1.0/invoke/app1/method/hello", "/v1.0/invoke/app1/method/hello",
                     id="increased-keeps-path"),
        pytest.param((), True, "/v1.0/invoke/app1/method/hello?a=1&b=2",
                     "/v1.0/invoke/app1/method/hello", id="increased-drops-query"),
        pytest.param((), True, "/a/b#frag", "/a/b", id="increased-drops-fragment"),
        pytest.param((), True, "//v1.0//invoke/app1", "/v1.0/invoke/app1", id="merges-slashes"),
        pytest.param((), True, "/a%20b/c", "/a b/c", id="decodes-escapes"),
        pytest.param((), True, "/a/b/", "/a/b/", id="keeps-trailing-slash"),
        pytest.param((), True, "http://127.0.0.1:3500/x/y?z", "/x/y", id="absolute-form"),
        pytest.param((), True, "", "", id="empty"),
        pytest.param((), True, "?only=query", "", id="only-query"),
        pytest.param((), False, "/v1.0/invoke/app1/method/hello", "", id="low-cardinality-blank"),
        # patterns, low cardinality
        pytest.param(ORDERS, False, "/orders/123", "/orders/{orderID}", id="wildcard"),
        pytest.param(ORDERS, False, "/orders/123?x=1", "/orders/{orderID}", id="wildcard-query"),
        pytest.param(ORDERS, False, "//orders//123", "/orders/{orderID}", id="wildcard-slashes"),
        pytest.param(ORDERS, False, "/orders/a%2Fb", "/orders/{orderID}",
                     id="escaped-slash-is-one-segment"),
        pytest.param(ORDERS, False, "/orders/123/lines", "", id="longer-path-unmatched"),
        pytest.param(ORDERS, False, "/orders/", "", id="wildcard-needs-a-segment"),
        pytest.param(ORDERS, False, "/orders", "", id="shorter-path-unmatched"),
        pytest.param(ORDERS, False, "/v1.0/invoke/shop/method/orders/7",
                     "/v1.0/invoke/{app_id}/method/orders/{orderID}", id="invoke-variant"),
        pytest.param(ORDERS, False, "/v1.0/invoke/shop/method/orders/7?q=1",
                     "/v1.0/invoke/{app_id}/method/orders/{orderID}", id="invoke-variant-query"),
        pytest.param(ORDERS, False, "/v1.0/invoke/shop/method/basket/7", "",
                     id="invoke-variant-unmatched"),
        # patterns, increased cardinality: unmatched paths keep their own label
        pytest.param(ORDERS, True, "/orders/9", "/orders/{orderID}", id="increased-matched"),
        pytest.param(ORDERS, True, "/basket/9?x", "/basket/9", id="increased-unmatched"),
        # precedence: the most specific pattern wins
        pytest.param(ITEMS, False, "/v1/orders/1/items/12345", "/v1/orders/{orderID}/items/12345",
                     id="literal-beats-wildcard"),
        pytest.param(ITEMS, False, "/v1/orders/1/items/1111", "/v1/orders/{orderID}/items/{itemID}",
                     id="wildcard-when-literal-differs"),
        pytest.param(("/orders/{id}", "/orders/special"), False, "/orders/special",
                     "/orders/special", id="literal-registered-later-still-wins"),
        pytest.param(("/v1/", "/v1/orders/{id}"), False, "/v1/orders/3", "/v1/orders/{id}",
                     id="wildcard-beats-subtree"),
        pytest.param(("/v1/", "/v1/orders/{id}"), False, "/v1/basket", "/v1/", id="subtree"),
        pytest.param(("/v1/",), False, "/v1/a/b/c", "/v1/", id="subtree-deep"),
        pytest.param(("/v1/",), False, "/v1", "", id="subtree-not-its-root-without-slash"),
        pytest.param(("/orders/{id}", "/"), False, "/basket/1", "/", id="root-catches-all"),
        pytest.param(("/orders/{id}", "/"), True, "/basket/1", "/", id="root-beats-raw-path"),
        pytest.param(("/",), False, "/v1.0/invoke/a/method/x",
                     "/v1.0/invoke/{app_id}/method/", id="root-invoke-variant"),
        # tail wildcards and {$}
        pytest.param(("/files/{path...}",), False, "/files/a/b/c", "/files/{path...}", id="tail"),
        pytest.param(("/files/{path...}",), False, "/files/", "/files/{path...}", id="tail-empty"),
        pytest.param(("/files/{path...}",), False, "/files", "", id="tail-needs-slash"),
        pytest.param(("/files/{path...}", "/files/{name}"), False, "/files/x", "/files/{name}",
                     id="single-beats-tail"),
        pytest.param(("/files/{path...}",), False, "/v1.0/invoke/a/method/files/x/y",
                     "/v1.0/invoke/{app_id}/method/files/{path...}", id="tail-invoke-variant"),
        pytest.param(("/a/{$}", "/a/"), False, "/a/", "/a/{$}", id="end-anchor"),
        pytest.param(("/a/{$}", "/a/"), False, "/a/b", "/a/", id="end-anchor-not-below"),
        # patterns are normalised like paths
        pytest.param(("orders",), False, "/orders", "/orders", id="pattern-gains-slash"),
        pytest.param(("//orders",), False, "/orders", "/orders", id="pattern-merges-slashes"),
        pytest.param(("/a%20b",), False, "/a b", "/a%20b", id="escaped-literal"),
    ],
)  # fmt: skip
def test_path_label(patterns: tuple[str, ...], increased: bool, path: str, expected: str) -> None:
    labeler = PathLabeler(increased_cardinality=increased, path_matching=patterns)

    assert labeler.label(path) == expected
    assert labeler.label(path) == expected  # from the memo


def test_invoke_variants_are_registered_once_and_not_for_invoke_patterns() -> None:
    labeler = PathLabeler(
        path_matching=("/orders", "//orders", "orders", "/v1.0/invoke/{app}/method/x")
    )

    assert labeler.patterns == (
        "/orders",
        "/v1.0/invoke/{app_id}/method/orders",
        "/v1.0/invoke/{app}/method/x",
    )


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("/a{b}", id="partial-segment"),
        pytest.param("/{x...}/y", id="tail-not-last"),
        pytest.param("/{$}/y", id="end-not-last"),
        pytest.param("/{1x}", id="bad-name"),
        pytest.param("/{}", id="empty-name"),
    ],
)
def test_invalid_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="wildcard"):
        PathLabeler(path_matching=(pattern,))


def test_memo_stays_bounded_under_a_flood_of_distinct_paths() -> None:
    labeler = PathLabeler(cache_size=1024)

    for index in range(100_000):
        assert labeler.label(f"/v1.0/invoke/app/method/item/{index}") == (
            f"/v1.0/invoke/app/method/item/{index}"
        )
        assert labeler.cached() <= 1024

    assert labeler.label("/v1.0/invoke/app/method/item/7") == "/v1.0/invoke/app/method/item/7"


def test_normalize_path() -> None:
    assert normalize_path("x//y?z") == "/x/y"


# -- the metric set --------------------------------------------------------------------------------

EXPECTED_METRICS = {
    "dapr_http_server_request_count": ("counter", ("app_id", "method", "path", "status")),
    "dapr_http_server_latency": ("histogram", ("app_id", "method", "path", "status")),
    "dapr_http_server_response_count": ("counter", ("app_id", "method", "path", "status")),
    "dapr_http_server_request_bytes": ("histogram", ("app_id",)),
    "dapr_http_server_response_bytes": ("histogram", ("app_id",)),
    "dapr_http_client_completed_count": ("counter", ("app_id", "method", "path", "status")),
    "dapr_http_client_roundtrip_latency": ("histogram", ("app_id", "method", "path", "status")),
    "dapr_http_client_sent_bytes": ("histogram", ("app_id", "method", "path", "status")),
    "dapr_http_client_received_bytes": ("histogram", ("app_id",)),
    "dapr_runtime_service_invocation_req_sent_total": (
        "counter",
        ("app_id", "dst_app_id", "type"),
    ),
    "dapr_runtime_service_invocation_res_recv_total": (
        "counter",
        ("app_id", "src_app_id", "status", "type"),
    ),
    "dapr_runtime_service_invocation_res_recv_latency_ms": (
        "histogram",
        ("app_id", "src_app_id", "status"),
    ),
    "dapr_runtime_service_invocation_req_recv_total": ("counter", ("app_id", "src_app_id")),
    "dapr_runtime_service_invocation_res_sent_total": (
        "counter",
        ("app_id", "dst_app_id", "status"),
    ),
    "fastproxy_sidecar_time_ms": ("histogram", ("app_id",)),
    "fastproxy_retries_total": ("counter", ("app_id", "dst_app_id")),
    "fastproxy_acl_denied_total": ("counter", ("app_id", "src_app_id")),
    "dapr_resiliency_loaded": ("counter", ("app_id", "name", "namespace")),
    "dapr_resiliency_count": ("counter", RESILIENCY_LABELS),
    "dapr_resiliency_activations_total": ("counter", RESILIENCY_LABELS),
    "dapr_resiliency_cb_state": ("gauge", RESILIENCY_LABELS),
    "fastproxy_metrics_series_overflow_total": ("counter", ()),
}


def record_everything(metrics: DaprMetrics) -> None:
    metrics.record_server(
        b"POST", b"/v1.0/invoke/app1/method/orders", 200, 2.0, 10, 20, 0.01, b"/orders", 1.0
    )
    metrics.record_app_call(b"POST", b"/orders", 200, 1.0, 10, 20)
    metrics.record_remote_call("app2", 200, 1.5)
    metrics.record_inbound("app0", 200)
    metrics.record_retry("app2")
    metrics.record_acl_denied("intruder")
    metrics.record_policy_loaded("myresiliency", "")
    metrics.policy_executed("app2", True, True, "closed")
    metrics.policy_activated("app2", "retry")


def test_every_metric_has_daprs_name_type_and_label_names() -> None:
    metrics = DaprMetrics("app1")
    record_everything(metrics)
    text = metrics.render().decode()

    types = {
        line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")
    }
    assert types == {name: kind for name, (kind, _) in EXPECTED_METRICS.items()}
    found = samples(metrics)
    for name, (kind, labelnames) in EXPECTED_METRICS.items():
        sample_name = name + "_count" if kind == "histogram" else name
        label_sets = list(only(found, sample_name))
        assert label_sets, name
        assert {key for key, _ in label_sets[0]} == set(labelnames), name


def test_record_server_counts_and_observes_every_server_series() -> None:
    metrics = DaprMetrics("app1")
    metrics.record_server(
        b"GET", b"/v1.0/invoke/app2/method/orders/1?x=y", 200, 3.0, 10, 2000, 0.02
    )
    metrics.record_server(b"GET", b"/v1.0/invoke/app2/method/orders/1?x=z", 200, 7.5, 0, 1024, 0.5)
    metrics.record_server(b"GET", b"/v1.0/invoke/app2/method/orders/1", 503, 1.0, 0, 30, 0.01)
    found = samples(metrics)
    path = "/v1.0/invoke/app2/method/orders/1"
    ok = L(app_id="app1", method="GET", path=path, status="200")
    failed = L(app_id="app1", method="GET", path=path, status="503")
    app = L(app_id="app1")

    assert only(found, "dapr_http_server_request_count") == {ok: 2, failed: 1}
    assert only(found, "dapr_http_server_latency_count") == {ok: 2, failed: 1}
    assert only(found, "dapr_http_server_latency_sum") == {ok: 10.5, failed: 1.0}
    assert found[("dapr_http_server_latency_bucket", ok | {("le", "2")})] == 0
    assert found[("dapr_http_server_latency_bucket", ok | {("le", "3")})] == 1  # 3.0 is in le=3
    assert found[("dapr_http_server_latency_bucket", ok | {("le", "8")})] == 2
    assert found[("dapr_http_server_request_bytes_count", app)] == 3
    assert found[("dapr_http_server_request_bytes_sum", app)] == 10
    assert found[("dapr_http_server_response_bytes_bucket", app | {("le", "1024")})] == 2
    assert found[("dapr_http_server_response_bytes_bucket", app | {("le", "2048")})] == 3
    assert found[("dapr_http_server_response_bytes_sum", app)] == 3054
    assert found[("fastproxy_sidecar_time_ms_bucket", app | {("le", "0.01")})] == 1
    assert found[("fastproxy_sidecar_time_ms_bucket", app | {("le", "0.02")})] == 2
    assert found[("fastproxy_sidecar_time_ms_count", app)] == 3
    # No request here reached the app.
    assert only(found, "dapr_http_client_completed_count") == {}


@pytest.mark.parametrize(
    ("options", "method", "path", "expected_method", "expected_path"),
    [
        pytest.param({}, b"PUT", b"/v1.0/invoke/b/method/x", "PUT", "/v1.0/invoke/b/method/x",
                     id="defaults"),
        pytest.param({"exclude_verbs": True}, b"PUT", b"/x", "", "/x", id="verbs-excluded"),
        pytest.param({}, b"BREW", b"/x", "UNKNOWN", "/x", id="unknown-verb"),
        pytest.param({"increased_cardinality": False}, b"GET", b"/x", "GET", "",
                     id="low-cardinality"),
        pytest.param({"increased_cardinality": False, "path_matching": ["/orders/{id}"]}, b"GET",
                     b"/v1.0/invoke/shop/method/orders/5", "GET",
                     "/v1.0/invoke/{app_id}/method/orders/{id}", id="path-matching"),
    ],
)  # fmt: skip
def test_server_labels_follow_the_configuration(
    options: dict[str, object],
    method: bytes,
    path: bytes,
    expected_method: str,
    expected_path: str,
) -> None:
    metrics = DaprMetrics("app1", **options)  # type: ignore[arg-type]
    metrics.record_server(method, path, 204, 1.0, 0, 0, 0.01)

    assert only(samples(metrics), "dapr_http_server_request_count") == {
        L(app_id="app1", method=expected_method, path=expected_path, status="204"): 1
    }


def test_record_server_records_the_app_leg_under_the_apps_path() -> None:
    metrics = DaprMetrics("app1")
    api = b"/v1.0/invoke/app1/method/orders/1"
    metrics.record_server(b"GET", api + b"?x=y", 200, 5.0, 0, 10, 0.5, b"/orders/1?x=y", 4.0)
    metrics.record_server(b"GET", api + b"?x=y", 200, 3.0, 0, 10, 0.5, b"/orders/1?x=y", 2.5)
    metrics.record_server(b"GET", api, 503, 2.0, 0, 10, 0.5, b"/orders/1", 0.0)
    found = samples(metrics)
    server_ok = L(app_id="app1", method="GET", path=api.decode(), status="200")
    server_failed = L(app_id="app1", method="GET", path=api.decode(), status="503")
    app_ok = L(app_id="app1", method="GET", path="/orders/1", status="200")
    app_failed = L(app_id="app1", method="GET", path="/orders/1", status="503")

    assert only(found, "dapr_http_server_request_count") == {server_ok: 2, server_failed: 1}
    # An app round trip of 0 ms is still one.
    assert only(found, "dapr_http_client_completed_count") == {app_ok: 2, app_failed: 1}
    assert only(found, "dapr_http_client_roundtrip_latency_count") == {app_ok: 2, app_failed: 1}
    assert only(found, "dapr_http_client_roundtrip_latency_sum") == {app_ok: 6.5, app_failed: 0.0}
    assert found[("dapr_http_client_roundtrip_latency_bucket", app_ok | {("le", "2")})] == 0
    assert found[("dapr_http_client_roundtrip_latency_bucket", app_ok | {("le", "3")})] == 1
    assert found[("dapr_http_client_roundtrip_latency_bucket", app_ok | {("le", "4")})] == 2
    assert found[("dapr_http_client_roundtrip_latency_bucket", app_failed | {("le", "1")})] == 1
    # The server's latency is the whole request's, not the app's share.
    assert only(found, "dapr_http_server_latency_sum") == {server_ok: 8.0, server_failed: 2.0}


@pytest.mark.parametrize(
    "app_leg",
    [
        pytest.param((), id="default"),
        pytest.param((b"/orders", -1.0), id="negative"),
        pytest.param((b"/orders", -0.001), id="just-below-zero"),
    ],
)
def test_record_server_without_an_app_round_trip_records_no_app_leg(
    app_leg: tuple[bytes, float] | tuple[()],
) -> None:
    metrics = DaprMetrics("app1")
    metrics.record_server(
        b"GET", b"/v1.0/invoke/app1/method/orders", 500, 1.0, 0, 10, 1.0, *app_leg
    )
    found = samples(metrics)

    assert only(found, "dapr_http_server_request_count") == {
        L(app_id="app1", method="GET", path="/v1.0/invoke/app1/method/orders", status="500"): 1
    }
    assert only(found, "dapr_http_client_completed_count") == {}
    assert only(found, "dapr_http_client_roundtrip_latency_count") == {}


def test_app_leg_series_appear_on_the_first_request_that_reached_the_app() -> None:
    metrics = DaprMetrics("app1")
    api = b"/v1.0/invoke/app1/method/orders"
    metrics.record_server(b"POST", api, 200, 1.0, 0, 0, 1.0)
    assert only(samples(metrics), "dapr_http_client_completed_count") == {}

    metrics.record_server(b"POST", api, 200, 3.0, 0, 0, 1.0, b"/orders", 2.0)
    metrics.record_server(b"POST", api, 200, 1.0, 0, 0, 1.0)
    found = samples(metrics)
    app_leg = L(app_id="app1", method="POST", path="/orders", status="200")

    assert only(found, "dapr_http_server_request_count") == {
        L(app_id="app1", method="POST", path="/v1.0/invoke/app1/method/orders", status="200"): 3
    }
    assert only(found, "dapr_http_client_completed_count") == {app_leg: 1}
    assert only(found, "dapr_http_client_roundtrip_latency_sum") == {app_leg: 2.0}


@pytest.mark.parametrize(
    ("options", "method", "expected_method", "expected_server", "expected_app"),
    [
        pytest.param({}, b"PUT", "PUT", "/v1.0/invoke/app1/method/orders/5", "/orders/5",
                     id="defaults"),
        pytest.param({"exclude_verbs": True}, b"PUT", "", "/v1.0/invoke/app1/method/orders/5",
                     "/orders/5", id="verbs-excluded"),
        pytest.param({}, b"BREW", "UNKNOWN", "/v1.0/invoke/app1/method/orders/5", "/orders/5",
                     id="unknown-verb"),
        pytest.param({"increased_cardinality": False}, b"GET", "GET", "", "",
                     id="low-cardinality"),
        pytest.param({"increased_cardinality": False, "path_matching": ["/orders/{id}"]}, b"GET",
                     "GET", "/v1.0/invoke/{app_id}/method/orders/{id}", "/orders/{id}",
                     id="path-matching"),
    ],
)  # fmt: skip
def test_app_leg_labels_follow_the_configuration(
    options: dict[str, object],
    method: bytes,
    expected_method: str,
    expected_server: str,
    expected_app: str,
) -> None:
    metrics = DaprMetrics("app1", **options)  # type: ignore[arg-type]
    metrics.record_server(
        method, b"/v1.0/invoke/app1/method/orders/5?q=1", 204, 2.0, 0, 0, 1.0, b"/orders/5?q=1", 1.0
    )
    found = samples(metrics)

    assert only(found, "dapr_http_server_request_count") == {
        L(app_id="app1", method=expected_method, path=expected_server, status="204"): 1
    }
    assert only(found, "dapr_http_client_completed_count") == {
        L(app_id="app1", method=expected_method, path=expected_app, status="204"): 1
    }


def test_record_app_call_records_the_app_leg() -> None:
    metrics = DaprMetrics("app1")
    metrics.record_app_call(b"POST", b"/orders?id=3", 201, 4.0, 300, 2)
    metrics.record_app_call(b"POST", b"/orders", 201, 6.0, 5000, 0)
    found = samples(metrics)
    labels = L(app_id="app1", method="POST", path="/orders", status="201")

    assert only(found, "dapr_http_client_completed_count") == {labels: 2}
    assert only(found, "dapr_http_client_roundtrip_latency_count") == {labels: 2}
    assert only(found, "dapr_http_client_roundtrip_latency_sum") == {labels: 10.0}
    assert only(found, "dapr_http_client_sent_bytes_sum") == {labels: 5300}
    assert found[("dapr_http_client_sent_bytes_bucket", labels | {("le", "1024")})] == 1
    assert found[("dapr_http_client_sent_bytes_bucket", labels | {("le", "4096")})] == 1
    assert found[("dapr_http_client_sent_bytes_bucket", labels | {("le", "16384")})] == 2
    assert only(found, "dapr_http_client_received_bytes_count") == {L(app_id="app1"): 2}
    assert only(found, "dapr_http_client_received_bytes_sum") == {L(app_id="app1"): 2}
    assert only(found, "dapr_http_server_request_count") == {}


def test_record_remote_call_records_the_caller_side() -> None:
    metrics = DaprMetrics("app1")
    metrics.record_remote_call("app2", 200, 2.0)
    metrics.record_remote_call("app2", 200, 4.0)
    metrics.record_remote_call("app3", 500, 9.0)
    found = samples(metrics)

    assert only(found, "dapr_runtime_service_invocation_req_sent_total") == {
        L(app_id="app1", dst_app_id="app2", type="unary"): 2,
        L(app_id="app1", dst_app_id="app3", type="unary"): 1,
    }
    assert only(found, "dapr_runtime_service_invocation_res_recv_total") == {
        L(app_id="app1", src_app_id="app2", status="200", type="unary"): 2,
        L(app_id="app1", src_app_id="app3", status="500", type="unary"): 1,
    }
    assert only(found, "dapr_runtime_service_invocation_res_recv_latency_ms_sum") == {
        L(app_id="app1", src_app_id="app2", status="200"): 6.0,
        L(app_id="app1", src_app_id="app3", status="500"): 9.0,
    }


def test_record_inbound_records_the_callee_side() -> None:
    metrics = DaprMetrics("app2")
    metrics.record_inbound("app1", 200)
    metrics.record_inbound("app1", 404)
    found = samples(metrics)

    assert only(found, "dapr_runtime_service_invocation_req_recv_total") == {
        L(app_id="app2", src_app_id="app1"): 2
    }
    assert only(found, "dapr_runtime_service_invocation_res_sent_total") == {
        L(app_id="app2", dst_app_id="app1", status="200"): 1,
        L(app_id="app2", dst_app_id="app1", status="404"): 1,
    }


def test_retries_and_acl_denials_are_counted() -> None:
    metrics = DaprMetrics("app1")
    metrics.record_retry("app2")
    metrics.record_retry("app2")
    metrics.record_acl_denied("app9")
    found = samples(metrics)

    assert only(found, "fastproxy_retries_total") == {L(app_id="app1", dst_app_id="app2"): 2}
    assert only(found, "fastproxy_acl_denied_total") == {L(app_id="app1", src_app_id="app9"): 1}


def test_record_retry_adds_every_retry_attempt() -> None:
    metrics = DaprMetrics("app1")
    metrics.record_retry("app2", 3)
    metrics.record_retry("app2")
    metrics.record_retry("app3", retries=2)
    found = samples(metrics)

    assert only(found, "fastproxy_retries_total") == {
        L(app_id="app1", dst_app_id="app2"): 4,
        L(app_id="app1", dst_app_id="app3"): 2,
    }


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("ERR_DIRECT_INVOKE", "service-invocation"),
        ("ERR_HEALTH_APPID_NOT_MATCH", "health"),
        ("ERR_BODY_TOO_LARGE", "common"),
        ("ERR_MALFORMED_REQUEST", "common"),
        ("ERR_HEADERS_TOO_LARGE", "common"),
    ],
)
def test_error_codes_are_counted_with_daprs_category(code: str, category: str) -> None:
    metrics = DaprMetrics("app1", record_error_codes=True)
    metrics.record_error_code(code)
    metrics.record_error_code(code)
    assert only(samples(metrics), "dapr_error_code_total") == {
        L(app_id="app1", error_code=code, category=category): 2
    }


def test_an_answer_without_an_error_code_is_not_counted() -> None:
    metrics = DaprMetrics("app1", record_error_codes=True)
    metrics.record_error_code("")  # a 401 for a bad API token carries no code
    assert only(samples(metrics), "dapr_error_code_total") == {}
    assert "# TYPE dapr_error_code_total counter" in metrics.render().decode()


def test_error_codes_are_left_out_unless_asked_for() -> None:
    metrics = DaprMetrics("app1")
    metrics.record_error_code("ERR_DIRECT_INVOKE")
    assert "dapr_error_code_total" not in metrics.render().decode()


def test_disabled_metrics_record_nothing() -> None:
    metrics = DaprMetrics("app1", enabled=False)
    record_everything(metrics)
    found = samples(metrics)

    assert {name for name, _ in found if not name.endswith(("_bucket", "_sum", "_count"))} == {
        "fastproxy_metrics_series_overflow_total"
    }
    assert found[("dapr_http_server_request_bytes_count", L(app_id="app1"))] == 0
    assert found[("fastproxy_sidecar_time_ms_count", L(app_id="app1"))] == 0


def test_distinct_paths_past_the_bound_fold_into_other_and_are_counted() -> None:
    metrics = DaprMetrics("app1", max_series=2)
    for index in range(5):
        metrics.record_server(b"GET", b"/p/%d" % index, 200, 1.0, 0, 0, 0.01)
    metrics.record_server(b"GET", b"/p/0", 200, 1.0, 0, 0, 0.01)
    found = samples(metrics)
    other = L(app_id="_other", method="_other", path="_other", status="_other")

    assert only(found, "dapr_http_server_request_count") == {
        L(app_id="app1", method="GET", path="/p/0", status="200"): 2,
        L(app_id="app1", method="GET", path="/p/1", status="200"): 1,
        other: 3,
    }
    assert found[("dapr_http_server_latency_count", other)] == 3
    assert found[("dapr_http_server_response_count", other)] == 3
    # three folded requests, each in the count, the latency histogram and the response count
    assert only(found, "fastproxy_metrics_series_overflow_total") == {frozenset(): 9}


def test_series_stay_bounded_under_a_flood_of_distinct_paths() -> None:
    metrics = DaprMetrics("app1", max_series=100)
    for index in range(10_000):
        metrics.record_server(b"GET", b"/flood/%d" % index, 200, 1.0, 0, 0, 0.01)

    counter = metrics.registry.get("dapr_http_server_request_count")
    assert isinstance(counter, Counter)
    assert counter.series_count() == 101
    assert sum(value for _, value in counter.samples()) == 10_000
    assert metrics.labeler.cached() <= metrics.labeler.cache_size


def test_custom_latency_buckets_are_used_for_every_latency_histogram() -> None:
    metrics = DaprMetrics("app1", latency_buckets=(1, 10, 100))
    record_everything(metrics)
    text = metrics.render().decode()

    for name in (
        "dapr_http_server_latency",
        "dapr_http_client_roundtrip_latency",
        "dapr_runtime_service_invocation_res_recv_latency_ms",
    ):
        bounds = [
            line.split('le="')[1].split('"')[0]
            for line in text.splitlines()
            if line.startswith(name + "_bucket")
        ]
        assert bounds == ["1", "10", "100", "+Inf"], name


def test_default_buckets_are_daprs() -> None:
    assert DEFAULT_LATENCY_BUCKETS_MS[:8] == (1, 2, 3, 4, 5, 6, 8, 10)
    assert DEFAULT_LATENCY_BUCKETS_MS[-1] == 100_000
    assert len(DEFAULT_LATENCY_BUCKETS_MS) == 34
    assert SIZE_BUCKETS == (
        1024, 2048, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
        268435456, 1073741824, 4294967296,
    )  # fmt: skip


def test_added_gauges_are_read_at_scrape_time() -> None:
    metrics = DaprMetrics("app1")
    open_connections = [3.0]
    metrics.add_gauge(
        "fastproxy_open_connections",
        "Open client connections.",
        ("listener",),
        lambda: [(("http",), open_connections[0])],
    )
    open_connections[0] = 4.0

    text = metrics.render().decode()

    assert (
        "# HELP fastproxy_open_connections Open client connections.\n"
        "# TYPE fastproxy_open_connections gauge\n"
        'fastproxy_open_connections{listener="http"} 4\n'
    ) in text
    with pytest.raises(ValueError, match="already registered"):
        metrics.add_gauge("fastproxy_open_connections", "Again.", (), list)


def test_repr() -> None:
    assert repr(DaprMetrics("app1")) == "<DaprMetrics app_id='app1' enabled folded=0>"
    assert repr(PathLabeler(path_matching=("/a",))) == (
        "<PathLabeler increased_cardinality=True patterns=2 cached=0>"
    )


# -- resiliency --------------------------------------------------------------------------------


def policy(name: str, policy: str, target: str, status: str = "", namespace: str = "") -> Labels:
    return L(
        app_id="app1",
        name=name,
        policy=policy,
        namespace=namespace,
        flow_direction="outbound",
        target=target,
        status=status,
    )


def test_resiliency_series_are_labelled_with_the_last_resource_loaded() -> None:
    metrics = DaprMetrics("app1")
    metrics.record_policy_loaded("first", "")
    metrics.record_policy_loaded("second", "prod")
    for _ in range(3):
        metrics.policy_executed("app2", True, True, "closed")
    metrics.policy_executed("app3", False, True, "")
    metrics.policy_activated("app2", "retry")
    metrics.policy_activated("app2", "retry")
    metrics.policy_activated("app2", "timeout")
    metrics.policy_activated("app2", "circuitbreaker", "open")
    found = samples(metrics)

    assert only(found, "dapr_resiliency_loaded") == {
        L(app_id="app1", name="first", namespace=""): 1,
        L(app_id="app1", name="second", namespace="prod"): 1,
    }
    assert only(found, "dapr_resiliency_count") == {
        policy("second", "timeout", "app_app2", namespace="prod"): 3,
        policy("second", "retry", "app_app2", namespace="prod"): 3,
        policy("second", "circuitbreaker", "app_app2", "closed", "prod"): 3,
        policy("second", "retry", "app_app3", namespace="prod"): 1,
    }
    assert only(found, "dapr_resiliency_activations_total") == {
        policy("second", "retry", "app_app2", namespace="prod"): 2,
        policy("second", "timeout", "app_app2", namespace="prod"): 1,
        policy("second", "circuitbreaker", "app_app2", "open", "prod"): 1,
    }


def test_the_breaker_state_gauge_marks_the_state_last_seen_per_target() -> None:
    metrics = DaprMetrics("app1")
    metrics.record_policy_loaded("res", "")
    metrics.policy_executed("app2", False, False, "closed")
    metrics.policy_executed("app2", False, False, "open")
    metrics.policy_executed("app3", False, False, "half-open")
    metrics.policy_executed("app4", False, True, "")  # no breaker: no gauge

    gauge = only(samples(metrics), "dapr_resiliency_cb_state")
    expected = {}
    for target, seen in (("app_app2", "open"), ("app_app3", "half-open")):
        for status in ("closed", "half-open", "open", "unknown"):
            expected[policy("res", "circuitbreaker", target, status)] = float(status == seen)
    assert gauge == expected


def test_the_breaker_state_gauge_is_bounded_by_the_series_bound() -> None:
    metrics = DaprMetrics("app1", max_series=3)
    for index in range(10):
        metrics.policy_executed(f"app{index}", False, False, "closed")
    targets = {
        dict(labels)["target"] for labels in only(samples(metrics), "dapr_resiliency_cb_state")
    }
    assert targets == {"app_app0", "app_app1", "app_app2"}


def test_nothing_is_recorded_while_metrics_are_disabled() -> None:
    metrics = DaprMetrics("app1", enabled=False)
    metrics.record_policy_loaded("res", "")
    metrics.policy_executed("app2", True, True, "closed")
    metrics.policy_activated("app2", "retry")
    found = samples(metrics)
    for name in (
        "dapr_resiliency_loaded",
        "dapr_resiliency_count",
        "dapr_resiliency_activations_total",
        "dapr_resiliency_cb_state",
    ):
        assert only(found, name) == {}, name


def test_resiliency_counts_stay_exact_across_the_series_cache_being_cleared() -> None:
    metrics = DaprMetrics("app1", max_series=2 * CACHE_SIZE)
    metrics.record_policy_loaded("res", "")
    metrics.policy_executed("app0", False, True, "")
    metrics.policy_activated("app0", "retry")
    for index in range(1, CACHE_SIZE + 1):  # one more target than the cache holds
        metrics.policy_executed(f"app{index}", False, True, "")
    metrics.policy_executed("app0", False, True, "")
    metrics.policy_activated("app0", "retry")
    found = samples(metrics)

    assert found[("dapr_resiliency_count", policy("res", "retry", "app_app0"))] == 2
    assert found[("dapr_resiliency_activations_total", policy("res", "retry", "app_app0"))] == 2
    assert len(only(found, "dapr_resiliency_count")) == CACHE_SIZE + 1


def test_the_app_leg_records_the_bodies_sent_to_the_app_and_received_from_it() -> None:
    metrics = DaprMetrics("app1")
    api = b"/v1.0/invoke/app1/method/orders"
    metrics.record_server(b"POST", api, 201, 2.0, 3000, 40, 0.5, b"/orders", 1.5)
    metrics.record_server(b"POST", api, 201, 2.0, 100, 60, 0.5, b"/orders", 1.5)
    # Answered by the sidecar itself: nothing went to the app, nothing came back.
    metrics.record_server(b"POST", api, 500, 2.0, 7, 90, 0.5)
    found = samples(metrics)
    app_leg = L(app_id="app1", method="POST", path="/orders", status="201")

    assert only(found, "dapr_http_client_sent_bytes_count") == {app_leg: 2}
    assert only(found, "dapr_http_client_sent_bytes_sum") == {app_leg: 3100}
    assert found[("dapr_http_client_sent_bytes_bucket", app_leg | {("le", "1024")})] == 1
    assert found[("dapr_http_client_sent_bytes_bucket", app_leg | {("le", "4096")})] == 2
    assert only(found, "dapr_http_client_received_bytes_count") == {L(app_id="app1"): 2}
    assert only(found, "dapr_http_client_received_bytes_sum") == {L(app_id="app1"): 100}
    # The server's own body sizes count every request.
    assert only(found, "dapr_http_server_request_bytes_sum") == {L(app_id="app1"): 3107}


def test_the_legacy_response_count_follows_increased_cardinality() -> None:
    api = b"/v1.0/invoke/app1/method/orders"
    full = DaprMetrics("app1")
    for status in (200, 200, 503):
        full.record_server(b"GET", api, status, 1.0, 0, 0, 0.1)
    low = DaprMetrics("app1", increased_cardinality=False)
    low.record_server(b"GET", api, 200, 1.0, 0, 0, 0.1)

    found = samples(full)
    assert only(found, "dapr_http_server_response_count") == only(
        found, "dapr_http_server_request_count"
    )
    assert only(found, "dapr_http_server_response_count") == {
        L(app_id="app1", method="GET", path=api.decode(), status="200"): 2,
        L(app_id="app1", method="GET", path=api.decode(), status="503"): 1,
    }
    assert "dapr_http_server_response_count" not in low.render().decode()
    assert only(samples(low), "dapr_http_server_request_count") == {
        L(app_id="app1", method="GET", path="", status="200"): 1
    }
