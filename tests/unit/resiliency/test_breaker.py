"""Circuit breakers: parsing `circuitBreakers.<name>`, and gobreaker's rules on a fake clock."""

from __future__ import annotations

import pytest

from fastproxy.config.errors import ConfigError
from fastproxy.resiliency.breaker import (
    BreakerSet,
    BreakerSpec,
    BreakerState,
    CircuitBreaker,
    default_trip,
    parse_breaker,
)
from fastproxy.resiliency.expression import Counts, compile_trip
from tests.unit.resiliency.clock import FakeClock

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
Change = tuple[str, BreakerState, BreakerState]


def spec(
    trip: str = "",
    max_requests: int = 1,
    interval: float = 0.0,
    timeout: float = 60.0,
) -> BreakerSpec:
    body: dict[str, object] = {"maxRequests": max_requests, "interval": f"{interval}s"}
    body["timeout"] = f"{timeout}s"
    if trip:
        body["trip"] = trip
    return parse_breaker("cb", body, "res 'r': circuit breaker 'cb'")


class Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.targets: list[str] = []

    def __call__(self, target: str, name: str, old: BreakerState, new: BreakerState) -> None:
        self.changes.append((name, old, new))
        self.targets.append(target)


def make(breaker_spec: BreakerSpec) -> tuple[CircuitBreaker, FakeClock, Recorder]:
    clock = FakeClock()
    recorder = Recorder()
    return CircuitBreaker("app:method", breaker_spec, clock, recorder), clock, recorder


def run(breaker: CircuitBreaker, clock: FakeClock, script: str) -> None:
    """Play `script`: words separated by spaces, each optionally repeated with "*N".

    ok / fail    a call is admitted, then reports success / failure
    refused      a call is refused
    wait:S       the clock moves S seconds
    closed / open / half-open   the state now
    """
    for word in script.split():
        action, _, times = word.partition("*")
        for _ in range(int(times or "1")):
            if action in ("ok", "fail"):
                token = breaker.allow()
                assert token is not None, f"{action!r} refused in {breaker!r}"
                breaker.record(token, success=action == "ok")
            elif action == "refused":
                assert breaker.allow() is None, f"call admitted in {breaker!r}"
            elif action.startswith("wait:"):
                clock.advance(float(action.removeprefix("wait:")))
            else:
                assert breaker.state is BreakerState(action), breaker


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        pytest.param(None, (1, 0.0, 60.0, "consecutiveFailures > 5"), id="null-body-defaults"),
        pytest.param({}, (1, 0.0, 60.0, "consecutiveFailures > 5"), id="empty-body-defaults"),
        pytest.param(
            {"maxRequests": 3, "interval": "8s", "timeout": "45s", "trip": "totalFailures > 2"},
            (3, 8.0, 45.0, "totalFailures > 2"),
            id="all-set",
        ),
        pytest.param({"maxRequests": 0}, (1, 0.0, 60.0, "consecutiveFailures > 5"), id="max0"),
        pytest.param({"timeout": "0s"}, (1, 0.0, 60.0, "consecutiveFailures > 5"), id="timeout0"),
        pytest.param({"interval": 1500}, (1, 1.5, 60.0, "consecutiveFailures > 5"), id="ms-int"),
        pytest.param({"trip": ""}, (1, 0.0, 60.0, "consecutiveFailures > 5"), id="empty-trip"),
        pytest.param({"maxRequests": "2"}, (2, 0.0, 60.0, "consecutiveFailures > 5"), id="str"),
    ],
)
def test_parse_breaker(body: object, fields: tuple[int, float, float, str]) -> None:
    parsed = parse_breaker("cb", body, "here")
    assert parsed.name == "cb"
    assert (parsed.max_requests, parsed.interval, parsed.timeout, parsed.trip_text) == fields


def test_parsed_trip_is_compiled_and_default_is_consecutive_failures_over_five() -> None:
    assert parse_breaker("cb", {}, "here").trip is default_trip
    custom = parse_breaker("cb", {"trip": "totalFailures > 2"}, "here").trip
    assert custom(Counts(total_failures=3)) and not custom(Counts(total_failures=2))
    assert not default_trip(Counts(consecutive_failures=5))
    assert default_trip(Counts(consecutive_failures=6))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param({"maxRequests": -1}, "maxRequests must be 0 or more", id="negative-max"),
        pytest.param({"maxRequests": 2**32}, "maxRequests must be 0 or more", id="uint32-max"),
        pytest.param({"maxRequests": "many"}, "maxRequests must be an integer", id="max-text"),
        pytest.param({"interval": "soon"}, "interval: duration 'soon'", id="bad-interval"),
        pytest.param({"timeout": "-5s"}, "timeout: duration '-5s' is negative", id="neg-timeout"),
        pytest.param({"trip": "failures > 5"}, "unknown name 'failures'", id="bad-trip"),
        pytest.param({"trip": 5}, "trip must be a string", id="trip-number"),
        pytest.param("cb", "circuit breaker 'cb' must be a mapping", id="body-string"),
    ],
)
def test_parse_breaker_rejects(body: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_breaker("cb", body, "res 'r': circuit breaker 'cb'")
    message = str(caught.value)
    assert message.startswith("res 'r': circuit breaker 'cb': ")
    assert fragment in message


# --- the state machine -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("breaker_spec", "script"),
    [
        pytest.param(spec(), "closed fail*5 closed fail open refused", id="default-trips-on-6th"),
        pytest.param(spec(), "fail*5 ok fail*5 closed fail open", id="success-resets-streak"),
        pytest.param(spec(), "ok*100 closed", id="successes-never-trip"),
        pytest.param(
            spec("totalFailures >= 3"), "fail ok fail ok closed fail open", id="custom-total"
        ),
        pytest.param(
            spec("requests >= 4 && totalFailures > 0"),
            "fail*3 closed fail open",
            id="custom-and",
        ),
        pytest.param(
            spec("consecutiveFailures > 1 || totalFailures > 3"),
            "fail ok fail ok fail ok closed fail open",
            id="custom-or",
        ),
        pytest.param(spec("false"), "fail*50 closed", id="never-trips"),
        pytest.param(spec("true"), "fail open", id="trips-on-any-failure"),
        pytest.param(spec("true"), "ok*10 closed", id="trip-only-asked-after-a-failure"),
        pytest.param(
            spec("true", timeout=30),
            "fail open wait:29 open refused wait:1 half-open",
            id="timeout-moves-open-to-half-open",
        ),
        pytest.param(
            spec("true", timeout=30),
            "fail wait:30 ok closed ok fail open",
            id="half-open-success-closes",
        ),
        pytest.param(
            spec("true", timeout=30),
            "fail wait:30 fail open refused wait:29 refused wait:1 half-open",
            id="half-open-failure-reopens-for-a-full-timeout",
        ),
        pytest.param(
            spec("consecutiveFailures > 1", max_requests=2, timeout=10),
            "fail*2 wait:10 ok half-open ok closed",
            id="max-requests-successes-needed-to-close",
        ),
        pytest.param(
            spec("consecutiveFailures > 1", max_requests=2, timeout=10),
            "fail*2 wait:10 ok fail open",
            id="any-half-open-failure-reopens",
        ),
        pytest.param(
            spec("totalFailures > 2", interval=10),
            "fail*2 wait:10 fail*2 closed wait:9.9 fail open",
            id="interval-resets-counts-while-closed",
        ),
        pytest.param(
            spec("totalFailures > 2"),
            "fail*2 wait:100000 fail open",
            id="interval-zero-never-resets",
        ),
    ],
)
def test_state_machine(breaker_spec: BreakerSpec, script: str) -> None:
    breaker, clock, _ = make(breaker_spec)
    run(breaker, clock, script)


def test_half_open_admits_max_requests_then_refuses() -> None:
    breaker, clock, _ = make(spec("true", max_requests=3, timeout=5))
    run(breaker, clock, "fail wait:5")
    tokens = [breaker.allow() for _ in range(3)]
    assert None not in tokens
    assert breaker.allow() is None
    assert breaker.counts.requests == 3
    # A success frees no slot: gobreaker counts admissions, not calls in flight.
    assert tokens[0] is not None
    breaker.record(tokens[0], success=True)
    assert breaker.allow() is None
    assert breaker.state is HALF_OPEN


def test_open_breaker_refuses_without_counting() -> None:
    breaker, clock, _ = make(spec("true"))
    run(breaker, clock, "fail refused*5")
    assert breaker.counts == Counts()


def test_counts_follow_each_outcome() -> None:
    breaker, clock, _ = make(spec())
    run(breaker, clock, "ok ok fail ok fail fail")
    assert breaker.counts == Counts(
        requests=6,
        total_successes=3,
        total_failures=3,
        consecutive_successes=0,
        consecutive_failures=2,
    )
    token = breaker.allow()
    assert breaker.counts.requests == 7
    assert token is not None
    breaker.record(token, success=True)
    assert breaker.counts.consecutive_successes == 1
    assert breaker.counts.consecutive_failures == 0


def test_counts_is_a_copy() -> None:
    breaker, clock, _ = make(spec())
    run(breaker, clock, "fail")
    breaker.counts.consecutive_failures = 100
    assert breaker.counts.consecutive_failures == 1


def test_outcome_from_before_a_trip_is_ignored() -> None:
    breaker, clock, _ = make(spec("consecutiveFailures > 1", timeout=10))
    slow = breaker.allow()
    assert slow is not None
    run(breaker, clock, "fail*2 open")
    breaker.record(slow, success=True)
    assert breaker.state is OPEN
    # ... and after the breaker went half-open, an old failure does not reopen it.
    clock.advance(10)
    assert breaker.state is HALF_OPEN
    breaker.record(slow, success=False)
    assert breaker.state is HALF_OPEN
    run(breaker, clock, "ok closed")


def test_outcome_from_an_earlier_interval_window_is_ignored() -> None:
    breaker, clock, changes = make(spec("totalFailures > 0", interval=10))
    started = breaker.allow()
    assert started is not None
    clock.advance(10)
    breaker.record(started, success=False)
    assert breaker.state is CLOSED
    assert breaker.counts == Counts()
    assert changes.changes == []  # a window roll is a new generation, not a state change


def test_every_state_change_bumps_the_generation_and_is_reported_once() -> None:
    breaker, clock, recorder = make(spec("true", timeout=10))
    first = breaker.generation
    run(breaker, clock, "fail")
    after_open = breaker.generation
    run(breaker, clock, "open open refused wait:10 half-open half-open")
    after_half_open = breaker.generation
    run(breaker, clock, "ok closed closed")
    assert first < after_open < after_half_open < breaker.generation
    assert recorder.changes == [
        ("app:method", CLOSED, OPEN),
        ("app:method", OPEN, HALF_OPEN),
        ("app:method", HALF_OPEN, CLOSED),
    ]


def test_state_change_resets_counts() -> None:
    breaker, clock, _ = make(spec("consecutiveFailures > 2", timeout=1))
    run(breaker, clock, "ok fail*3 open")
    assert breaker.counts == Counts()
    run(breaker, clock, "wait:1 ok closed")
    assert breaker.counts == Counts()


def test_no_on_change_is_fine() -> None:
    breaker = CircuitBreaker("x", spec("true"), FakeClock())
    token = breaker.allow()
    assert token is not None
    breaker.record(token, success=False)
    assert breaker.state is OPEN


def test_repr_names_breaker_state_and_counts() -> None:
    breaker, clock, _ = make(spec())
    run(breaker, clock, "fail*2")
    text = repr(breaker)
    assert text.startswith("<CircuitBreaker 'app:method' closed generation=")
    assert "requests=2 failures=2 consecutive_failures=2 policy='cb'" in text
    run(breaker, clock, "fail*4")
    assert "<CircuitBreaker 'app:method' open " in repr(breaker)


def test_trip_expression_reads_counts_including_the_failure() -> None:
    seen: list[Counts] = []
    real = compile_trip("totalFailures > 1", "cb")

    def trip(counts: Counts) -> bool:
        seen.append(Counts(**{name: getattr(counts, name) for name in Counts.__slots__}))
        return real(counts)

    breaker, clock, _ = make(BreakerSpec("cb", trip=trip, trip_text="totalFailures > 1"))
    run(breaker, clock, "ok fail closed fail open")
    assert seen == [Counts(2, 1, 1, 0, 1), Counts(3, 1, 2, 0, 2)]


# --- per-method sets -------------------------------------------------------------------------


def test_breaker_set_gives_one_breaker_per_key() -> None:
    clock = FakeClock()
    recorder = Recorder()
    breakers = BreakerSet(spec("true"), clock, recorder, size=10, target="app")
    first = breakers.get("app:a")
    assert breakers.get("app:a") is first
    assert breakers.get("app:b") is not first
    assert first.name == "app:a"
    token = first.allow()
    assert token is not None
    first.record(token, success=False)
    assert breakers.get("app:a").state is OPEN
    assert breakers.get("app:b").state is CLOSED
    assert recorder.changes == [("app:a", CLOSED, OPEN)]
    # The change names the set's target as given, never as parsed from a key.
    assert recorder.targets == ["app"]
    assert first.target == "app"


def test_breaker_set_evicts_least_recently_used() -> None:
    breakers = BreakerSet(spec(), FakeClock(), size=3)
    a = breakers.get("a")
    breakers.get("b")
    breakers.get("c")
    assert breakers.get("a") is a  # now most recent: "b" is the oldest
    breakers.get("d")
    assert len(breakers) == 3
    assert "b" not in breakers
    assert all(key in breakers for key in ("a", "c", "d"))
    assert breakers.get("a") is a
    breakers.get("e")
    assert "c" not in breakers


def test_evicted_breaker_comes_back_fresh() -> None:
    breakers = BreakerSet(spec("true"), FakeClock(), size=1)
    tripped = breakers.get("a")
    token = tripped.allow()
    assert token is not None
    tripped.record(token, success=False)
    breakers.get("b")
    again = breakers.get("a")
    assert again is not tripped
    assert again.state is CLOSED


def test_breaker_set_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one"):
        BreakerSet(spec(), FakeClock(), size=0)


def test_breaker_set_repr() -> None:
    breakers = BreakerSet(spec(), FakeClock(), size=5)
    breakers.get("x")
    assert repr(breakers) == "<BreakerSet policy='cb' breakers=1/5>"
