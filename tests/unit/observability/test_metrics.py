"""The Prometheus registry: exact exposition text, bucket edges, escaping and the series bound."""

from __future__ import annotations

import bisect
import itertools
import math
import random

import pytest

from fastproxy.observability.dapr_metrics import (
    DEFAULT_LATENCY_BUCKETS_MS,
    SIDECAR_TIME_BUCKETS_MS,
    SIZE_BUCKETS,
)
from fastproxy.observability.metrics import (
    OTHER,
    Counter,
    CounterFunc,
    GaugeFunc,
    Histogram,
    Metric,
    Registry,
    escape_label_value,
    format_value,
)


def text(*metrics: Metric) -> str:
    registry = Registry()
    for metric in metrics:
        registry.register(metric)
    return registry.render().decode()


# -- rendering -------------------------------------------------------------------------------------


def test_counter_renders_each_series_with_labels_in_declared_order() -> None:
    counter = Counter("requests", "Requests seen.", ("method", "path"))
    counter.labels("GET", "/a").inc()
    counter.labels("GET", "/a").inc(2)
    counter.labels("POST", "/b").inc()

    assert text(counter) == (
        "# HELP requests Requests seen.\n"
        "# TYPE requests counter\n"
        'requests{method="GET",path="/a"} 3\n'
        'requests{method="POST",path="/b"} 1\n'
    )


def test_counter_name_is_rendered_as_given_without_a_total_suffix() -> None:
    counter = Counter("dapr_http_server_request_count", "Count.", ("app_id",))
    counter.labels("app1").inc()

    lines = text(counter).splitlines()

    assert lines[1] == "# TYPE dapr_http_server_request_count counter"
    assert lines[2] == 'dapr_http_server_request_count{app_id="app1"} 1'


def test_unlabelled_metrics_show_a_zero_sample_before_anything_is_recorded() -> None:
    assert text(Counter("hits", "Hits."), Counter("misses", "Misses.")) == (
        "# HELP hits Hits.\n# TYPE hits counter\nhits 0\n"
        "# HELP misses Misses.\n# TYPE misses counter\nmisses 0\n"
    )


def test_labelled_metric_without_series_renders_only_its_header() -> None:
    assert text(Counter("c", "C.", ("a",))) == "# HELP c C.\n# TYPE c counter\n"


def test_gauge_read_at_scrape_time_renders_numbers() -> None:
    sizes = {"a": 3.0, "b": 3.5, "c": 2.5}
    gauge = GaugeFunc(
        "pool_size",
        "Connections in the pool.",
        ("endpoint",),
        lambda: [((endpoint,), size) for endpoint, size in sizes.items()],
    )

    assert text(gauge) == (
        "# HELP pool_size Connections in the pool.\n"
        "# TYPE pool_size gauge\n"
        'pool_size{endpoint="a"} 3\n'
        'pool_size{endpoint="b"} 3.5\n'
        'pool_size{endpoint="c"} 2.5\n'
    )


def test_histogram_renders_cumulative_buckets_sum_and_count() -> None:
    histogram = Histogram("latency_ms", "Latency.", ("app_id",), (1, 2.5, 5))
    child = histogram.labels("app1")
    for value in (0.5, 1, 2.5, 7):
        child.observe(value)

    assert text(histogram) == (
        "# HELP latency_ms Latency.\n"
        "# TYPE latency_ms histogram\n"
        'latency_ms_bucket{app_id="app1",le="1"} 2\n'
        'latency_ms_bucket{app_id="app1",le="2.5"} 3\n'
        'latency_ms_bucket{app_id="app1",le="5"} 3\n'
        'latency_ms_bucket{app_id="app1",le="+Inf"} 4\n'
        'latency_ms_sum{app_id="app1"} 11\n'
        'latency_ms_count{app_id="app1"} 4\n'
    )


def test_unlabelled_histogram_has_only_le_on_buckets() -> None:
    histogram = Histogram("size", "Size.", (), (0.25,))
    histogram.labels().observe(0.125)

    assert text(histogram) == (
        "# HELP size Size.\n"
        "# TYPE size histogram\n"
        'size_bucket{le="0.25"} 1\n'
        'size_bucket{le="+Inf"} 1\n'
        "size_sum 0.125\n"
        "size_count 1\n"
    )


@pytest.mark.parametrize(
    ("value", "expected_bucket"),
    [
        pytest.param(-3.0, "1", id="negative-in-first"),
        pytest.param(0.0, "1", id="zero-in-first"),
        pytest.param(1.0, "1", id="equal-to-first-bound"),
        pytest.param(1.0000001, "2.5", id="just-above-first-bound"),
        pytest.param(2.5, "2.5", id="equal-to-middle-bound"),
        pytest.param(5.0, "5", id="equal-to-last-bound"),
        pytest.param(5.0000001, "+Inf", id="above-last-bound"),
        pytest.param(math.inf, "+Inf", id="infinity"),
    ],
)
def test_value_lands_in_the_first_bucket_whose_bound_is_not_below_it(
    value: float, expected_bucket: str
) -> None:
    histogram = Histogram("h", "H.", (), (1, 2.5, 5))
    histogram.labels().observe(value)

    first = next(
        line
        for line in text(histogram).splitlines()
        if line.startswith("h_bucket") and "} 1" in line
    )
    assert first.startswith(f'h_bucket{{le="{expected_bucket}"}}')


@pytest.mark.parametrize(
    "bounds",
    [
        pytest.param((1.0,), id="one-bound"),
        pytest.param((1.0, 2.0), id="two-bounds"),
        pytest.param((1.0, 2.0, 4.0), id="three-bounds"),
        pytest.param(DEFAULT_LATENCY_BUCKETS_MS, id="dapr-latency"),
        pytest.param(SIDECAR_TIME_BUCKETS_MS, id="sidecar-time"),
        pytest.param(SIZE_BUCKETS, id="sizes"),
    ],
)
def test_every_bound_and_the_values_around_it_land_where_bisect_left_puts_them(
    bounds: tuple[float, ...],
) -> None:
    values = [bounds[0] - 1.0, -math.inf, math.inf]
    for bound in bounds:
        values.extend((bound, math.nextafter(bound, -math.inf), math.nextafter(bound, math.inf)))
    for low, high in itertools.pairwise(bounds):
        values.append((low + high) / 2)
    for value in values:
        child = Histogram("h", "H.", (), bounds).labels()
        child.observe(value)

        expected = [0] * (len(bounds) + 1)
        expected[bisect.bisect_left(bounds, value)] = 1
        assert child.counts == expected, value
        assert (child.count, child.sum) == (1, value)


@pytest.mark.parametrize(
    "bounds", [(1.0, 2.0, 4.0), DEFAULT_LATENCY_BUCKETS_MS, SIDECAR_TIME_BUCKETS_MS]
)
def test_one_child_fed_runs_of_alike_and_scattered_values_counts_as_bisect_left(
    bounds: tuple[float, ...],
) -> None:
    """The bucket of the last value is tried first: it must never catch a value of another."""
    values = []
    for bound in bounds:
        values.extend((bound, math.nextafter(bound, -math.inf), math.nextafter(bound, math.inf)))
    values += [math.inf, bounds[0] - 1.0]
    shuffled = random.Random(7).sample(values, len(values))
    # Runs of one value and of neighbours, then the same values in a scattered order.
    fed = [v for v in sorted(values) for _ in range(3)] + shuffled + sorted(values, reverse=True)
    child = Histogram("h", "H.", (), bounds).labels()
    expected = [0] * (len(bounds) + 1)
    for value in fed:
        child.observe(value)
        expected[bisect.bisect_left(bounds, value)] += 1
    assert child.counts == expected
    assert child.count == len(fed)


def test_a_given_inf_bound_is_not_rendered_twice() -> None:
    histogram = Histogram("h", "H.", (), (1, math.inf))

    assert histogram.bounds == (1.0,)
    assert text(histogram).count('le="+Inf"') == 1


@pytest.mark.parametrize(
    "buckets",
    [
        pytest.param((), id="empty"),
        pytest.param((2, 1), id="decreasing"),
        pytest.param((1, 1), id="repeated"),
        pytest.param((1, math.nan), id="nan"),
        pytest.param((-math.inf, 1), id="minus-inf"),
    ],
)
def test_histogram_rejects_bad_buckets(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="buckets"):
        Histogram("h", "H.", (), buckets)


# -- text formatting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(0.0, "0", id="zero"),
        pytest.param(3.0, "3", id="whole"),
        pytest.param(-2.0, "-2", id="negative-whole"),
        pytest.param(2.5, "2.5", id="fraction"),
        pytest.param(0.005, "0.005", id="small"),
        pytest.param(1e-07, "1e-07", id="tiny"),
        pytest.param(1e20, "1e+20", id="huge"),
        pytest.param(math.inf, "+Inf", id="inf"),
        pytest.param(-math.inf, "-Inf", id="minus-inf"),
        pytest.param(math.nan, "NaN", id="nan"),
    ],
)
def test_format_value(value: float, expected: str) -> None:
    assert format_value(value) == expected


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        pytest.param("plain", "plain", id="plain"),
        pytest.param("a\\b", "a\\\\b", id="backslash"),
        pytest.param('say "hi"', 'say \\"hi\\"', id="quote"),
        pytest.param("two\nlines", "two\\nlines", id="newline"),
        pytest.param('\\"\n', '\\\\\\"\\n', id="all-three"),
    ],
)
def test_escape_label_value(raw: str, escaped: str) -> None:
    assert escape_label_value(raw) == escaped


def test_label_values_and_help_are_escaped_in_the_exposition() -> None:
    counter = Counter("c", 'Help with \\ and\nnewline and "quotes".', ("path",))
    counter.labels('/a"b\\c\nd').inc()

    assert text(counter) == (
        '# HELP c Help with \\\\ and\\nnewline and "quotes".\n'
        "# TYPE c counter\n"
        'c{path="/a\\"b\\\\c\\nd"} 1\n'
    )


# -- the series bound ------------------------------------------------------------------------------


def test_counter_folds_label_sets_past_the_bound_into_one_other_series() -> None:
    counter = Counter("c", "C.", ("path", "status"), max_series=3)
    for index in range(6):
        counter.labels(f"/p{index}", "200").inc()
    counter.labels("/p0", "200").inc()  # an existing series keeps counting on its own
    counter.labels("/p5", "200").inc(2)

    assert counter.samples() == [
        (("/p0", "200"), 2),
        (("/p1", "200"), 1),
        (("/p2", "200"), 1),
        ((OTHER, OTHER), 5),
    ]
    assert counter.series_count() == 4
    assert counter.folded() == 5
    assert sum(value for _, value in counter.samples()) == 6 + 1 + 2
    assert 'c{path="_other",status="_other"} 5\n' in text(counter)


def test_series_count_never_passes_the_bound_plus_one() -> None:
    histogram = Histogram("h", "H.", ("path",), (1,), max_series=50)
    for index in range(10_000):
        histogram.labels(f"/{index}").observe(0.5)

    assert histogram.series_count() == 51
    assert histogram.folded() == 10_000 - 50
    rendered = text(histogram)
    assert rendered.count("h_count{") == 51
    assert 'h_count{path="_other"} 9950\n' in rendered


def test_a_label_set_spelled_like_the_overflow_series_joins_it() -> None:
    counter = Counter("c", "C.", ("a",), max_series=5)
    counter.labels(OTHER).inc()

    assert counter.series_count() == 1
    assert text(counter).count('c{a="_other"}') == 1


def test_registry_reports_folded_observations_over_all_metrics() -> None:
    registry = Registry()
    counter = registry.register(Counter("c", "C.", ("a",), max_series=1))
    histogram = registry.register(Histogram("h", "H.", ("a",), (1,), max_series=1))
    registry.register(Counter("quiet", "Q.", ("a",)))
    for value in ("x", "y", "z"):
        counter.labels(value).inc()
        histogram.labels(value).observe(2)

    assert registry.folded() == 4
    assert (counter.folded(), histogram.folded()) == (2, 2)


# -- scrape-time values ----------------------------------------------------------------------------


def test_gauge_func_reads_its_series_when_rendered() -> None:
    sizes = {"10.0.0.1:80": 3, "10.0.0.2:80": 0}
    gauge = GaugeFunc(
        "fastproxy_pool_connections",
        "Connections per endpoint.",
        ("endpoint",),
        lambda: [((endpoint,), float(size)) for endpoint, size in sizes.items()],
    )

    first = text(gauge)
    sizes["10.0.0.1:80"] = 5

    assert first == (
        "# HELP fastproxy_pool_connections Connections per endpoint.\n"
        "# TYPE fastproxy_pool_connections gauge\n"
        'fastproxy_pool_connections{endpoint="10.0.0.1:80"} 3\n'
        'fastproxy_pool_connections{endpoint="10.0.0.2:80"} 0\n'
    )
    assert 'fastproxy_pool_connections{endpoint="10.0.0.1:80"} 5\n' in text(gauge)


def test_counter_func_is_typed_counter() -> None:
    counter = CounterFunc("dropped_total", "Dropped.", (), lambda: [((), 7.0)])

    assert (
        text(counter)
        == "# HELP dropped_total Dropped.\n# TYPE dropped_total counter\ndropped_total 7\n"
    )


def test_gauge_func_with_wrong_label_count_fails_the_render() -> None:
    gauge = GaugeFunc("g", "G.", ("a", "b"), lambda: [(("only",), 1.0)])

    with pytest.raises(ValueError, match="label values"):
        text(gauge)


# -- misuse ----------------------------------------------------------------------------------------


def test_registry_refuses_a_second_metric_of_the_same_name() -> None:
    registry = Registry()
    registry.register(Counter("c", "C."))

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Counter("c", "Another."))


@pytest.mark.parametrize(
    ("name", "labelnames"),
    [
        pytest.param("1bad", (), id="name-starts-with-digit"),
        pytest.param("has-dash", (), id="name-with-dash"),
        pytest.param("ok", ("le",), id="reserved-le"),
        pytest.param("ok", ("__x",), id="reserved-prefix"),
        pytest.param("ok", ("a", "a"), id="duplicate-label"),
        pytest.param("ok", ("a:b",), id="colon-in-label"),
    ],
)
def test_invalid_names_are_refused(name: str, labelnames: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"invalid|duplicate"):
        Counter(name, "H.", labelnames)


def test_wrong_number_of_label_values_is_refused() -> None:
    counter = Counter("c", "C.", ("a", "b"))

    with pytest.raises(ValueError, match="takes 2 label values"):
        counter.labels("x")


def test_repr_names_the_metric_and_its_series() -> None:
    counter = Counter("c", "C.", ("a",))
    counter.labels("x")

    assert repr(counter) == "<Counter c series=1>"
    assert repr(Registry()) == "<Registry metrics=0>"
