"""Retry policies: parsing `retries.<name>`, how many retries, which statuses, how long to wait."""

from __future__ import annotations

import dataclasses

import pytest

from fastproxy.config.errors import ConfigError
from fastproxy.resiliency.retry import (
    BUILT_IN_SERVICE_RETRY,
    MAX_ELAPSED,
    RetrySpec,
    parse_retry,
)


def parse(body: object) -> RetrySpec:
    return parse_retry("p", body, "res 'r': retry 'p'")


def never_called() -> float:
    raise AssertionError("a constant policy needs no randomness")


# --- parsing and defaults --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            None,
            RetrySpec("p", False, 5.0, 60.0, -1, None),
            id="null-body-all-defaults",
        ),
        pytest.param({}, RetrySpec("p", False, 5.0, 60.0, -1, None), id="empty-body-defaults"),
        pytest.param(
            {"policy": "constant", "duration": "2s", "maxRetries": 3},
            RetrySpec("p", False, 2.0, 60.0, 3, None),
            id="constant",
        ),
        pytest.param(
            {"policy": "exponential", "maxInterval": "15s", "maxRetries": -1},
            RetrySpec("p", True, 5.0, 15.0, -1, None),
            id="exponential-unlimited",
        ),
        pytest.param(
            {"policy": "Exponential"}, RetrySpec("p", True, 5.0, 60.0, -1, None), id="policy-case"
        ),
        pytest.param({"policy": ""}, RetrySpec("p", False, 5.0, 60.0, -1, None), id="empty-policy"),
        pytest.param({"maxRetries": 0}, RetrySpec("p", False, 5.0, 60.0, 0, None), id="zero"),
        pytest.param({"maxRetries": "4"}, RetrySpec("p", False, 5.0, 60.0, 4, None), id="str-int"),
        pytest.param(
            {"maxRetries": -7}, RetrySpec("p", False, 5.0, 60.0, -1, None), id="below-minus-one"
        ),
        pytest.param({"duration": 250}, RetrySpec("p", False, 0.25, 60.0, -1, None), id="ms-int"),
        pytest.param({"duration": ""}, RetrySpec("p", False, 5.0, 60.0, -1, None), id="empty-dur"),
        pytest.param(
            {"matching": {"httpStatusCodes": "429,500-503"}},
            RetrySpec("p", False, 5.0, 60.0, -1, frozenset({429, 500, 501, 502, 503})),
            id="matching-ranges",
        ),
        pytest.param(
            {"matching": {"gRPCStatusCodes": "1-4,8-11,13,14"}},
            RetrySpec("p", False, 5.0, 60.0, -1, None),
            id="grpc-codes-accepted-and-ignored",
        ),
        pytest.param(
            {"matching": None}, RetrySpec("p", False, 5.0, 60.0, -1, None), id="matching-null"
        ),
        pytest.param(
            {"someFutureField": 1}, RetrySpec("p", False, 5.0, 60.0, -1, None), id="unknown-field"
        ),
    ],
)
def test_parse_retry(body: object, expected: RetrySpec) -> None:
    assert parse(body) == expected


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        pytest.param("", None, id="empty-string-retries-all"),
        pytest.param("  ", None, id="blank-retries-all"),
        pytest.param("500", frozenset({500}), id="single"),
        pytest.param(503, frozenset({503}), id="yaml-int"),
        pytest.param("500-502", frozenset({500, 501, 502}), id="range"),
        pytest.param("404,404", frozenset({404}), id="duplicate"),
        pytest.param("429, 500 - 501", frozenset({429, 500, 501}), id="spaces-tolerated"),
        pytest.param("429,,500,", frozenset({429, 500}), id="empty-items-skipped"),
        pytest.param(",", frozenset(), id="only-commas-matches-nothing"),
        pytest.param("100,599", frozenset({100, 599}), id="bounds-inclusive"),
        pytest.param("200-200", frozenset({200}), id="one-code-range"),
    ],
)
def test_http_status_code_lists(codes: object, expected: frozenset[int] | None) -> None:
    assert parse({"matching": {"httpStatusCodes": codes}}).statuses == expected


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param({"policy": "linear"}, "policy must be 'constant' or 'exponential'", id="pol"),
        pytest.param({"policy": 1}, "policy must be a string", id="policy-type"),
        pytest.param({"duration": "fast"}, "duration 'fast'", id="bad-duration"),
        pytest.param({"duration": "-1s"}, "duration: duration '-1s' is negative", id="neg-dur"),
        pytest.param({"maxInterval": "1y"}, "maxInterval: duration '1y'", id="bad-max-interval"),
        pytest.param({"maxRetries": "three"}, "maxRetries must be an integer", id="retries-str"),
        pytest.param({"maxRetries": 1.5}, "maxRetries must be an integer", id="retries-float"),
        pytest.param({"maxRetries": True}, "maxRetries must be an integer", id="retries-bool"),
        pytest.param({"matching": "500"}, "matching must be a mapping", id="matching-type"),
        pytest.param([], "retry policy 'p' must be a mapping", id="body-list"),
        pytest.param({"matching": {"httpStatusCodes": "99"}}, "outside 100-599", id="below-100"),
        pytest.param({"matching": {"httpStatusCodes": "600"}}, "outside 100-599", id="above-599"),
        pytest.param(
            {"matching": {"httpStatusCodes": "500-600"}}, "code 600 is outside", id="range-end"
        ),
        pytest.param(
            {"matching": {"httpStatusCodes": "503-500"}}, "ends before it starts", id="reversed"
        ),
        pytest.param(
            {"matching": {"httpStatusCodes": "500-502-504"}}, "'500-502-504'", id="two-dashes"
        ),
        pytest.param({"matching": {"httpStatusCodes": "5xx"}}, "'5xx' is not", id="wildcard"),
        pytest.param({"matching": {"httpStatusCodes": "-500"}}, "'-500' is not", id="open-start"),
        pytest.param({"matching": {"httpStatusCodes": "500-"}}, "'500-' is not", id="open-end"),
        pytest.param(
            {"matching": {"httpStatusCodes": ["500"]}}, "must be a string", id="codes-list"
        ),
        pytest.param({"matching": {"gRPCStatusCodes": "17"}}, "outside 0-16", id="grpc-range"),
        pytest.param({"matching": {"gRPCStatusCodes": "x"}}, "'x' is not", id="grpc-garbage"),
    ],
)
def test_parse_retry_rejects(body: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(body)
    message = str(caught.value)
    assert message.startswith("res 'r': retry 'p'")
    assert fragment in message


def test_built_in_service_retry_is_constant_one_second_three_retries() -> None:
    spec = BUILT_IN_SERVICE_RETRY
    assert spec.name == "DaprBuiltInServiceRetries"
    assert (spec.exponential, spec.duration, spec.max_retries) == (False, 1.0, 3)
    assert [spec.allows(done) for done in range(5)] == [True, True, True, False, False]


# --- how many retries ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_retries", "retries_done", "allowed"),
    [
        pytest.param(-1, 0, True, id="unlimited-first"),
        pytest.param(-1, 10_000, True, id="unlimited-many"),
        pytest.param(0, 0, False, id="none-never"),
        pytest.param(3, 0, True, id="three-first"),
        pytest.param(3, 2, True, id="three-third"),
        pytest.param(3, 3, False, id="three-exhausted"),
        pytest.param(3, 4, False, id="three-past"),
    ],
)
def test_allows(max_retries: int, retries_done: int, allowed: bool) -> None:
    spec = RetrySpec("p", False, 1.0, 60.0, max_retries, None)
    assert spec.allows(retries_done) is allowed


# --- which statuses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "status", "retried"),
    [
        pytest.param(None, 500, True, id="no-list-5xx"),
        pytest.param(None, 404, True, id="no-list-4xx"),
        pytest.param(None, 199, True, id="no-list-1xx"),
        pytest.param(None, 200, False, id="no-list-200-success"),
        pytest.param(None, 204, False, id="no-list-204-success"),
        pytest.param(None, 302, False, id="no-list-3xx-success"),
        pytest.param(None, 399, False, id="no-list-399-success"),
        pytest.param(None, 400, True, id="no-list-400"),
        pytest.param(frozenset({429, 503}), 503, True, id="listed"),
        pytest.param(frozenset({429, 503}), 500, False, id="not-listed"),
        pytest.param(frozenset({200, 302}), 200, False, id="listed-success-still-success"),
        pytest.param(frozenset(), 500, False, id="empty-list-nothing"),
    ],
)
def test_retries_status(statuses: frozenset[int] | None, status: int, retried: bool) -> None:
    spec = RetrySpec("p", False, 1.0, 60.0, 3, statuses)
    assert spec.retries_status(status) is retried


# --- how long to wait ------------------------------------------------------------------------


@pytest.mark.parametrize("retry_number", [1, 2, 10, 1000])
def test_constant_delay_is_the_duration(retry_number: int) -> None:
    spec = parse({"policy": "constant", "duration": "750ms"})
    assert spec.delay(retry_number, never_called) == 0.75


@pytest.mark.parametrize(
    ("retry_number", "rand", "expected"),
    [
        # The interval is 0.5 * 1.5**(n-1), spread to [0.5, 1.5) times itself by rand.
        pytest.param(1, 0.5, 0.5, id="first-middle"),
        pytest.param(1, 0.0, 0.25, id="first-lowest"),
        pytest.param(1, 0.999, 0.25 + 0.999 * 0.5, id="first-near-highest"),
        pytest.param(2, 0.5, 0.75, id="second"),
        pytest.param(3, 0.5, 1.125, id="third"),
        pytest.param(4, 0.5, 1.6875, id="fourth"),
        pytest.param(4, 0.0, 0.84375, id="fourth-lowest"),
        pytest.param(0, 0.5, 0.5, id="zero-treated-as-first"),
    ],
)
def test_exponential_delay(retry_number: int, rand: float, expected: float) -> None:
    spec = parse({"policy": "exponential"})
    assert spec.delay(retry_number, lambda: rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("retry_number", "rand", "expected"),
    [
        # maxInterval 2s: 0.5, 0.75, 1.125, 1.6875, then 2.53 would pass 2 -> stays 2.
        pytest.param(4, 0.5, 1.6875, id="below-cap"),
        pytest.param(5, 0.5, 2.0, id="capped"),
        pytest.param(50, 0.5, 2.0, id="stays-capped"),
        pytest.param(10**9, 0.5, 2.0, id="huge-retry-number"),
        pytest.param(5, 0.0, 1.0, id="capped-lowest"),
        pytest.param(5, 0.99, 2.98, id="capped-highest-above-cap"),
    ],
)
def test_exponential_delay_is_capped_at_max_interval(
    retry_number: int, rand: float, expected: float
) -> None:
    spec = parse({"policy": "exponential", "maxInterval": "2s"})
    assert spec.delay(retry_number, lambda: rand) == pytest.approx(expected)


def test_exponential_first_interval_ignores_a_smaller_cap() -> None:
    # cenkalti/backoff starts at the initial interval and only caps from the second on.
    spec = parse({"policy": "exponential", "maxInterval": "100ms"})
    assert spec.delay(1, lambda: 0.5) == pytest.approx(0.5)
    assert spec.delay(2, lambda: 0.5) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("exponential", "elapsed", "next_delay", "gives_up"),
    [
        pytest.param(True, 0.0, 1.0, False, id="exponential-early"),
        pytest.param(True, MAX_ELAPSED - 1.0, 1.0, False, id="exponential-exactly-at-limit"),
        pytest.param(True, MAX_ELAPSED - 1.0, 1.5, True, id="exponential-past-limit"),
        pytest.param(False, MAX_ELAPSED * 10, 5.0, False, id="constant-never"),
    ],
)
def test_gives_up_after_fifteen_minutes_of_exponential_back_off(
    exponential: bool, elapsed: float, next_delay: float, gives_up: bool
) -> None:
    spec = dataclasses.replace(BUILT_IN_SERVICE_RETRY, exponential=exponential, max_retries=-1)
    assert spec.gives_up(elapsed, next_delay) is gives_up
