"""Balancer and ejector decisions on a fake clock and seeded randomness."""

from __future__ import annotations

import random
import re
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import pytest

from fastproxy.upstream.balancer import (
    Balancer,
    Ejector,
    EndpointState,
    LeastOutstanding,
    RoundRobin,
    make_balancer,
)

EPS = ["a", "b", "c", "d", "e"]
START = 1000.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingList(Sequence[str]):
    """A list that counts element reads, to bound the work a pick does."""

    def __init__(self, items: list[str]) -> None:
        self._items = items
        self.reads = 0

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            raise NotImplementedError
        self.reads += 1
        return self._items[index]

    def __iter__(self) -> Iterator[str]:
        for item in self._items:
            self.reads += 1
            yield item


BalancerType = type[RoundRobin[str]] | type[LeastOutstanding[str]]
KINDS = [pytest.param(RoundRobin, id="roundrobin"), pytest.param(LeastOutstanding, id="p2c")]


def build(
    kind: BalancerType, seed: int = 0, jitter: float = 0.1
) -> tuple[Balancer[str], FakeClock]:
    clock = FakeClock()
    rng = random.Random(seed)
    return kind(clock, rng, Ejector(clock, rng, jitter=jitter)), clock


def picks(
    balancer: Balancer[str], endpoints: Sequence[str], count: int, exclude: Collection[str] = ()
) -> list[str]:
    out = []
    for _ in range(count):
        ep = balancer.pick(endpoints, exclude)
        assert ep is not None
        out.append(ep)
    return out


# -- round robin ----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5], ids=lambda n: f"{n}-endpoints")
def test_round_robin_visits_every_endpoint_once_per_cycle(n: int) -> None:
    rr, _ = build(RoundRobin)
    endpoints = EPS[:n]
    chosen = picks(rr, endpoints, n * 20)
    for cycle in range(20):
        assert sorted(chosen[cycle * n : (cycle + 1) * n]) == endpoints
    assert Counter(chosen) == dict.fromkeys(endpoints, 20)


@pytest.mark.parametrize(
    ("n", "ejected"),
    [
        pytest.param(3, {"a"}, id="first-of-3"),
        pytest.param(3, {"b"}, id="middle-of-3"),
        pytest.param(3, {"c"}, id="last-of-3"),
        pytest.param(5, {"b", "c"}, id="adjacent-pair-of-5"),
        pytest.param(5, {"a", "c", "e"}, id="alternate-of-5"),
        pytest.param(4, {"a", "b", "c"}, id="all-but-one-of-4"),
    ],
)
def test_round_robin_skips_ejected_and_shares_their_turns_evenly(n: int, ejected: set[str]) -> None:
    rr, _ = build(RoundRobin)
    for ep in ejected:
        rr.failed(ep)
    endpoints = EPS[:n]
    eligible = [ep for ep in endpoints if ep not in ejected]
    chosen = picks(rr, endpoints, 60)
    assert Counter(chosen) == dict.fromkeys(eligible, 60 // len(eligible))


@pytest.mark.parametrize(
    ("exclude", "expected"),
    [
        pytest.param(["a"], {"b", "c"}, id="one"),
        pytest.param(("a", "c"), {"b"}, id="two-as-tuple"),
        pytest.param({"z"}, {"a", "b", "c"}, id="unknown-endpoint"),
    ],
)
def test_round_robin_honours_exclude(exclude: list[str], expected: set[str]) -> None:
    rr, _ = build(RoundRobin)
    assert set(picks(rr, EPS[:3], 30, exclude=exclude)) == expected


# -- least outstanding (P2C) --------------------------------------------------------


@pytest.mark.parametrize(
    ("loads", "favourite", "never"),
    [
        pytest.param({"a": 3, "b": 0}, "b", {"a"}, id="two-second-idle"),
        pytest.param({"a": 0, "b": 1}, "a", {"b"}, id="two-first-idle"),
        pytest.param({"a": 0, "b": 1, "c": 2, "d": 9}, "a", {"d"}, id="busiest-of-4-never"),
        pytest.param({"a": 5, "b": 5, "c": 1}, "c", set(), id="one-light-of-3"),
    ],
)
def test_p2c_prefers_the_less_loaded_of_two(
    loads: dict[str, int], favourite: str, never: set[str]
) -> None:
    p2c, _ = build(LeastOutstanding)
    for ep, load in loads.items():
        for _ in range(load):
            p2c.started(ep)
    counts = Counter(picks(p2c, list(loads), 3000))
    assert counts.most_common(1)[0][0] == favourite
    assert not never & set(counts)
    # The least loaded wins every pair it is drawn into: with n endpoints, 2/n of picks.
    assert counts[favourite] >= 3000 * min(1.0, 2 / len(loads)) * 0.9


@pytest.mark.parametrize(
    ("n", "worst_spread"),
    [
        pytest.param(2, 2, id="2-endpoints"),
        pytest.param(5, 8, id="5"),
        pytest.param(10, 8, id="10"),
    ],
)
def test_p2c_spreads_load_over_10000_requests(n: int, worst_spread: int) -> None:
    """Requests finish in arrival order with 4 per endpoint in flight, as with equal latency."""

    def simulate(
        choose: Callable[[Balancer[str], list[str]], str],
    ) -> tuple[int, float, Counter[str]]:
        balancer, _ = build(LeastOutstanding, seed=7)
        endpoints = EPS[:n] if n <= len(EPS) else [f"e{i}" for i in range(n)]
        inflight: deque[str] = deque()
        worst, total = 0, 0
        chosen: Counter[str] = Counter()
        for _ in range(10_000):
            ep = choose(balancer, endpoints)
            balancer.started(ep)
            inflight.append(ep)
            chosen[ep] += 1
            if len(inflight) > 4 * n:
                balancer.finished(inflight.popleft())
            counts = [balancer.outstanding(e) for e in endpoints]
            assert min(counts) >= 0
            spread = max(counts) - min(counts)
            worst = max(worst, spread)
            total += spread
        return worst, total / 10_000, chosen

    def p2c(balancer: Balancer[str], endpoints: list[str]) -> str:
        ep = balancer.pick(endpoints)
        assert ep is not None
        return ep

    blind = random.Random(8)
    worst, mean, chosen = simulate(p2c)
    _, blind_mean, _ = simulate(lambda _b, endpoints: blind.choice(endpoints))
    assert worst <= worst_spread
    assert mean < 0.6 * blind_mean  # load awareness, not just uniform luck
    assert len(chosen) == n
    assert max(chosen.values()) - min(chosen.values()) < 0.1 * 10_000 / n


def test_p2c_splits_ties_evenly() -> None:
    p2c, _ = build(LeastOutstanding, seed=3)
    counts = Counter(picks(p2c, ["a", "b"], 10_000))
    assert 4_700 < counts["a"] < 5_300


@pytest.mark.parametrize(
    ("n", "ejected", "exclude"),
    [
        pytest.param(5, set(), {"a"}, id="exclude-one"),
        pytest.param(5, {"b"}, set(), id="eject-one"),
        pytest.param(5, {"b", "c"}, {"a"}, id="eject-two-exclude-one"),
        pytest.param(5, {"a", "b", "c"}, set(), id="two-left"),
        pytest.param(3, {"a"}, {"b"}, id="one-left"),
    ],
)
def test_p2c_draws_uniformly_from_the_eligible(
    n: int, ejected: set[str], exclude: set[str]
) -> None:
    p2c, _ = build(LeastOutstanding, seed=5)
    for ep in ejected:
        p2c.failed(ep)
    eligible = set(EPS[:n]) - ejected - exclude
    counts = Counter(picks(p2c, EPS[:n], 6000, exclude=exclude))
    assert set(counts) == eligible
    mean = 6000 / len(eligible)
    assert all(abs(c - mean) < 0.1 * mean for c in counts.values()), counts


def test_p2c_pick_is_constant_work_on_a_large_set() -> None:
    endpoints = CountingList([f"e{i}" for i in range(1000)])
    p2c, clock = build(LeastOutstanding)
    picks(p2c, endpoints, 1000)
    assert endpoints.reads == 2 * 1000
    assert clock.reads == 0  # nothing ejected: the fast path reads no time
    for i in range(0, 1000, 100):
        p2c.failed(f"e{i}")
    for _ in range(1000):  # 1% ejected: a few draws, never a scan of the list
        endpoints.reads = 0
        assert p2c.pick(endpoints) is not None
        assert endpoints.reads <= 10


def test_round_robin_pick_is_constant_work_when_nothing_is_ejected() -> None:
    endpoints = CountingList([f"e{i}" for i in range(1000)])
    rr, clock = build(RoundRobin)
    picks(rr, endpoints, 500)
    assert endpoints.reads == 500
    assert clock.reads == 0


# -- both balancers ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("endpoints", "ejected", "exclude", "expected"),
    [
        pytest.param([], set(), (), None, id="empty"),
        pytest.param(["a"], set(), ["a"], None, id="only-one-excluded"),
        pytest.param(["a", "b"], set(), ["a", "b"], None, id="all-excluded"),
        pytest.param(["a", "b"], {"a", "b"}, ["a", "b"], None, id="all-excluded-and-ejected"),
        pytest.param(["a"], set(), (), "a", id="single"),
        pytest.param(["a"], {"a"}, (), "a", id="single-ejected-panic"),
        pytest.param(["a", "b"], {"b"}, ["a"], "b", id="excluded-and-ejected-panic"),
    ],
)
def test_pick_returns_none_only_when_no_candidate_is_left(
    kind: BalancerType,
    endpoints: list[str],
    ejected: set[str],
    exclude: list[str],
    expected: str | None,
) -> None:
    balancer, _ = build(kind)
    for ep in ejected:
        balancer.failed(ep)
    assert balancer.pick(endpoints, exclude) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_connect_failure_moves_the_request_to_another_instance(kind: BalancerType) -> None:
    balancer, clock = build(kind, jitter=0.0)
    first = balancer.pick(EPS[:3])
    assert first is not None
    balancer.failed(first)
    retry = balancer.pick(EPS[:3], exclude=(first,))
    assert retry is not None and retry != first
    assert first not in picks(balancer, EPS[:3], 50)  # ejected for the backoff
    clock.advance(1.0)
    assert first in picks(balancer, EPS[:3], 50)  # eligible again afterwards


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("failed_at", "exclude", "expected"),
    [
        pytest.param({"a": 0.0, "b": 0.3, "c": 0.6}, (), "a", id="first-ejected"),
        pytest.param({"a": 0.6, "b": 0.3, "c": 0.0}, (), "c", id="last-in-list"),
        pytest.param({"a": 0.6, "b": 0.0, "c": 0.3}, ("b",), "c", id="soonest-excluded"),
    ],
)
def test_panic_mode_picks_the_endpoint_back_soonest(
    kind: BalancerType, failed_at: dict[str, float], exclude: tuple[str, ...], expected: str
) -> None:
    balancer, clock = build(kind, jitter=0.0)
    for ep, at in sorted(failed_at.items(), key=lambda item: item[1]):
        clock.now = START + at
        balancer.failed(ep)
    assert all(balancer.ejector.is_ejected(ep) for ep in failed_at)
    assert set(picks(balancer, list(failed_at), 20, exclude=exclude)) == {expected}


@pytest.mark.parametrize("kind", KINDS)
def test_panic_mode_accounts_for_longer_backoffs(kind: BalancerType) -> None:
    balancer, clock = build(kind, jitter=0.0)
    balancer.failed("a")
    clock.advance(1.0)  # a half-open; its trial fails: 2 s more
    balancer.failed("a")
    clock.advance(0.1)
    balancer.failed("b")  # b: 1 s, so back before a
    assert balancer.pick(["a", "b"]) == "b"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        pytest.param([("finished", "a")], {"a": 0}, id="finish-without-start"),
        pytest.param(
            [("started", "a"), ("finished", "a"), ("finished", "a")], {"a": 0}, id="twice"
        ),
        pytest.param(
            [("finished", "a"), ("finished", "a"), ("started", "a")], {"a": 1}, id="no-debt"
        ),
        pytest.param(
            [("started", "a"), ("started", "a"), ("started", "b"), ("finished", "a")],
            {"a": 1, "b": 1},
            id="mixed",
        ),
    ],
)
def test_outstanding_counts_never_go_negative(
    kind: BalancerType, ops: list[tuple[str, str]], expected: dict[str, int]
) -> None:
    balancer, _ = build(kind)
    for op, ep in ops:
        getattr(balancer, op)(ep)
        assert balancer.outstanding(ep) >= 0
    assert {ep: balancer.outstanding(ep) for ep in expected} == expected


@pytest.mark.parametrize("kind", KINDS)
def test_retain_forgets_removed_endpoints(kind: BalancerType) -> None:
    balancer, _ = build(kind)
    for ep in "abc":
        balancer.started(ep)
    balancer.failed("b")
    balancer.failed("c")
    balancer.retain(["a", "b"])
    assert [balancer.outstanding(ep) for ep in "abc"] == [1, 1, 0]
    assert balancer.ejector.state("b") is EndpointState.EJECTED
    assert balancer.ejector.state("c") is EndpointState.HEALTHY
    assert len(balancer.ejector) == 1
    assert "outstanding=2 busy_endpoints=2" in repr(balancer)
    balancer.finished("c")  # a request that outlived its endpoint
    assert balancer.outstanding("c") == 0


@dataclass(frozen=True)
class Address:
    host: str
    port: int


@pytest.mark.parametrize("kind", [RoundRobin, LeastOutstanding], ids=["roundrobin", "p2c"])
def test_balancers_take_any_hashable_endpoint(
    kind: type[RoundRobin[Address]] | type[LeastOutstanding[Address]],
) -> None:
    clock = FakeClock()
    balancer = kind(clock, random.Random(0))
    endpoints = [Address("10.0.0.1", 80), Address("10.0.0.2", 80)]
    balancer.failed(Address("10.0.0.1", 80))
    assert balancer.pick(endpoints) == Address("10.0.0.2", 80)
    assert "Address(host='10.0.0.1', port=80): EJECTED" in repr(balancer)


# -- ejector ------------------------------------------------------------------------


def fail_in_a_row(ejector: Ejector[str], clock: FakeClock, times: int) -> float:
    """Fail `a` `times` times, each after the previous backoff ran out; the last backoff."""
    for i in range(times):
        if i:
            clock.now = ejector.ready_at("a")
            assert ejector.state("a") is EndpointState.HALF_OPEN
        ejector.failed("a")
    return ejector.ready_at("a") - clock.now


@pytest.mark.parametrize(
    ("times", "backoff"),
    [
        pytest.param(1, 1.0, id="1st-1s"),
        pytest.param(2, 2.0, id="2nd-2s"),
        pytest.param(3, 4.0, id="3rd-4s"),
        pytest.param(5, 16.0, id="5th-16s"),
        pytest.param(6, 30.0, id="6th-capped"),
        pytest.param(40, 30.0, id="40th-capped"),
        pytest.param(5000, 30.0, id="5000th-capped"),
    ],
)
def test_backoff_doubles_per_consecutive_failure_up_to_the_cap(times: int, backoff: float) -> None:
    clock = FakeClock()
    ejector: Ejector[str] = Ejector(clock, random.Random(0), jitter=0.0)
    assert fail_in_a_row(ejector, clock, times) == pytest.approx(backoff)
    assert ejector.failures("a") == times
    assert ejector.is_ejected("a")
    clock.advance(backoff - 0.001)
    assert ejector.is_ejected("a")
    clock.advance(0.001)
    assert not ejector.is_ejected("a")


@pytest.mark.parametrize(
    ("times", "nominal"),
    [
        pytest.param(1, 1.0, id="base"),
        pytest.param(3, 4.0, id="4s"),
        pytest.param(9, 30.0, id="cap"),
    ],
)
def test_jitter_spreads_backoff_within_ten_percent(times: int, nominal: float) -> None:
    backoffs = []
    for seed in range(200):
        clock = FakeClock()
        backoffs.append(fail_in_a_row(Ejector(clock, random.Random(seed)), clock, times))
    assert all(0.9 * nominal <= b <= 1.1 * nominal for b in backoffs)
    assert min(backoffs) < 0.93 * nominal and max(backoffs) > 1.07 * nominal


def test_failures_while_ejected_do_not_grow_the_backoff() -> None:
    clock = FakeClock()
    ejector: Ejector[str] = Ejector(clock, random.Random(0), jitter=0.0)
    ejector.failed("a")
    clock.advance(0.5)
    for _ in range(10):  # requests sent before the ejection, failing late
        ejector.failed("a")
    assert ejector.failures("a") == 1
    assert ejector.ready_at("a") == START + 1.0


@pytest.mark.parametrize(
    ("outcome", "state", "failures", "next_backoff"),
    [
        pytest.param("failed", EndpointState.EJECTED, 2, 4.0, id="trial-fails-doubles"),
        pytest.param("succeeded", EndpointState.HEALTHY, 0, 1.0, id="trial-succeeds-resets"),
        pytest.param(None, EndpointState.PROBING, 1, 2.0, id="trial-unreported"),
    ],
)
def test_half_open_endpoint_gets_one_trial(
    outcome: str | None, state: EndpointState, failures: int, next_backoff: float
) -> None:
    p2c, clock = build(LeastOutstanding, jitter=0.0)
    p2c.started("b")  # so the idle `a` wins every pair it is in
    p2c.failed("a")
    clock.advance(1.0)
    assert p2c.ejector.state("a") is EndpointState.HALF_OPEN
    assert p2c.pick(["a", "b"]) == "a"
    assert p2c.ejector.state("a") is EndpointState.PROBING
    assert picks(p2c, ["a", "b"], 20) == ["b"] * 20  # the trial is the only one
    if outcome is not None:
        getattr(p2c, outcome)("a")
    assert p2c.ejector.state("a") is state
    assert p2c.ejector.failures("a") == failures
    if state is EndpointState.PROBING:
        clock.advance(1.0)  # the trial never reported: another one is allowed
        assert p2c.ejector.state("a") is EndpointState.HALF_OPEN
        assert p2c.pick(["a", "b"]) == "a"
    else:
        clock.advance(4.0)
    p2c.failed("a")
    assert p2c.ejector.ready_at("a") - clock.now == pytest.approx(next_backoff)


def test_success_after_escalation_starts_again_from_the_base() -> None:
    clock = FakeClock()
    ejector: Ejector[str] = Ejector(clock, random.Random(0), jitter=0.0)
    assert fail_in_a_row(ejector, clock, 4) == 8.0
    ejector.succeeded("a")
    assert ejector.state("a") is EndpointState.HEALTHY
    assert not ejector.is_ejected("a")
    assert len(ejector) == 0
    assert fail_in_a_row(ejector, clock, 1) == 1.0


def test_ejector_retain_bounds_its_state() -> None:
    clock = FakeClock()
    ejector: Ejector[str] = Ejector(clock, random.Random(0))
    for i in range(100):
        ejector.failed(f"e{i}")
    ejector.retain(f"e{i}" for i in range(95, 105))
    assert len(ejector) == 5
    assert ejector.is_ejected("e99") and not ejector.is_ejected("e0")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"base": 0.0}, "base must be positive", id="zero-base"),
        pytest.param({"factor": 0.5}, "factor must be at least 1", id="shrinking"),
        pytest.param({"cap": 0.5}, "cap 0.5 is below its base 1.0", id="cap-below-base"),
        pytest.param({"jitter": 1.0}, "jitter must be in", id="full-jitter"),
        pytest.param({"jitter": -0.1}, "jitter must be in", id="negative-jitter"),
    ],
)
def test_ejector_rejects_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Ejector(FakeClock(), random.Random(0), **kwargs)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param([], "<Ejector all healthy>", id="healthy"),
        pytest.param([("failed", 0.0)], "<Ejector 'a': EJECTED failures=1 for 1.0s>", id="ejected"),
        pytest.param(
            [("failed", 0.0), ("picked", 1.5)],
            "<Ejector 'a': PROBING failures=1 for 1.0s>",
            id="probing",
        ),
        pytest.param(
            [("failed", 0.0), ("advance", 1.0)],
            "<Ejector 'a': HALF_OPEN failures=1>",
            id="half-open",
        ),
    ],
)
def test_ejector_repr_shows_each_endpoint_state(
    setup: list[tuple[str, float]], expected: str
) -> None:
    clock = FakeClock()
    ejector: Ejector[str] = Ejector(clock, random.Random(0), jitter=0.0)
    for op, at in setup:
        clock.advance(at)
        if op != "advance":
            getattr(ejector, op)("a")
    assert repr(ejector) == expected


def test_ejector_repr_stays_short_with_many_endpoints() -> None:
    ejector: Ejector[str] = Ejector(FakeClock(), random.Random(0))
    for i in range(50):
        ejector.failed(f"e{i}")
    assert repr(ejector).count("EJECTED") == 4
    assert repr(ejector).endswith("+46 more>")


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        pytest.param("roundrobin", RoundRobin, id="roundrobin"),
        pytest.param("round-robin", RoundRobin, id="round-robin"),
        pytest.param("RoundRobin", RoundRobin, id="camel-case"),
        pytest.param("ROUND-ROBIN", RoundRobin, id="upper-case"),
        pytest.param("leastoutstanding", LeastOutstanding, id="leastoutstanding"),
        pytest.param("least-outstanding", LeastOutstanding, id="least-outstanding"),
        pytest.param("Least-Outstanding", LeastOutstanding, id="title-case"),
        pytest.param("p2c", LeastOutstanding, id="p2c"),
        pytest.param(" P2C ", LeastOutstanding, id="padded"),
        pytest.param("", LeastOutstanding, id="empty-default"),
        pytest.param(None, LeastOutstanding, id="unset-default"),
    ],
)
def test_make_balancer_accepts_policy_names(name: str | None, kind: BalancerType) -> None:
    balancer: Balancer[str] = make_balancer(name, FakeClock(), random.Random(0))
    assert type(balancer) is kind


@pytest.mark.parametrize(
    "name", ["random", "least_conn", "round robin", "p3c", "roundrobin2"], ids=str
)
def test_make_balancer_names_the_bad_value(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        make_balancer(name, FakeClock(), random.Random(0))
