"""Loading Resiliency resources and resolving which policies apply to a call to an app."""

from __future__ import annotations

from typing import Any

import pytest

from fastproxy.config.errors import ConfigError
from fastproxy.resiliency import spec as spec_module
from fastproxy.resiliency.breaker import BreakerState
from fastproxy.resiliency.retry import BUILT_IN_SERVICE_RETRY
from fastproxy.resiliency.spec import AppPolicy, Resiliency, load_resiliency
from tests.unit.resiliency.clock import FakeClock

APP_ID = "checkout"


def doc(
    name: str = "res",
    *,
    timeouts: dict[Any, Any] | None = None,
    retries: dict[Any, Any] | None = None,
    breakers: dict[Any, Any] | None = None,
    apps: dict[Any, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    policies: dict[str, Any] = {}
    if timeouts is not None:
        policies["timeouts"] = timeouts
    if retries is not None:
        policies["retries"] = retries
    if breakers is not None:
        policies["circuitBreakers"] = breakers
    body: dict[str, Any] = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Resiliency",
        "metadata": {"name": name},
        "spec": {"policies": policies, "targets": {"apps": apps or {}}},
    }
    body.update(extra)
    return body


def load(*documents: dict[str, Any], on_change: Any = None) -> Resiliency:
    return load_resiliency(documents, APP_ID, FakeClock(), on_change)


def load_error(*documents: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(*documents)
    return str(caught.value)


ORDERS = doc(
    "orders-res",
    timeouts={"general": "5s", "none": 0},
    retries={"important": {"policy": "constant", "duration": "2s", "maxRetries": 3}},
    breakers={"simpleCB": {"trip": "consecutiveFailures > 8", "timeout": "45s"}},
    apps={
        "orders": {
            "timeout": "general",
            "retry": "important",
            "circuitBreaker": "simpleCB",
            "circuitBreakerCacheSize": 2,
        },
        "bare": None,
        "partial": {"retry": "important"},
        "untimed": {"timeout": "none"},
    },
)


# --- nothing loaded --------------------------------------------------------------------------


def test_no_documents_means_no_policies_and_the_built_in_retry() -> None:
    resiliency = load()
    assert resiliency.for_app("orders") is None
    assert resiliency.breakers("orders") is None
    assert resiliency.built_in_retry is BUILT_IN_SERVICE_RETRY
    assert resiliency.summary() == []


# --- named targets ---------------------------------------------------------------------------


def test_named_target_gets_its_named_policies() -> None:
    policy = load(ORDERS).for_app("orders")
    assert policy is not None
    assert policy.named_target
    assert policy.timeout == 5.0
    assert policy.retry is not None
    assert (policy.retry.name, policy.retry.duration, policy.retry.max_retries) == (
        "important",
        2.0,
        3,
    )
    assert policy.breaker is not None
    assert (policy.breaker.name, policy.breaker.trip_text, policy.breaker.timeout) == (
        "simpleCB",
        "consecutiveFailures > 8",
        45.0,
    )


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param("bare", AppPolicy(None, None, None, True), id="null-entry-still-named"),
        pytest.param("untimed", AppPolicy(None, None, None, True), id="zero-timeout-is-none"),
        pytest.param("orders.production", None, id="namespaced-id-is-another-key"),
        pytest.param("Orders", None, id="case-sensitive"),
        pytest.param("orders ", None, id="no-trimming"),
        pytest.param("", None, id="empty"),
    ],
)
def test_target_is_matched_exactly(target: str, expected: AppPolicy | None) -> None:
    assert load(ORDERS).for_app(target) == expected


def test_named_target_does_not_fall_back_to_defaults_for_missing_kinds() -> None:
    defaults = doc(
        "defaults",
        timeouts={"DefaultAppTimeoutPolicy": "9s"},
        breakers={"DefaultCircuitBreakerPolicy": {}},
    )
    policy = load(ORDERS, defaults).for_app("partial")
    assert policy is not None
    assert policy.retry is not None and policy.retry.name == "important"
    assert (policy.timeout, policy.breaker, policy.named_target) == (None, None, True)


def test_integer_app_id_keys_are_names() -> None:
    resiliency = load(doc(timeouts={"t": "1s"}, apps={123: {"timeout": "t"}}))
    assert resiliency.for_app("123") == AppPolicy(1.0, None, None, True)


# --- defaults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeouts", "retries", "breakers", "expected"),
    [
        pytest.param({}, [], [], None, id="none-defined"),
        pytest.param({"general": "1s"}, ["r"], ["cb"], None, id="only-non-default-names"),
        pytest.param(
            {"DefaultAppTimeoutPolicy": "3s", "DefaultTimeoutPolicy": "4s"},
            [],
            [],
            (3.0, None, None),
            id="app-timeout-over-generic",
        ),
        pytest.param({"DefaultTimeoutPolicy": "4s"}, [], [], (4.0, None, None), id="generic-tmo"),
        pytest.param(
            {},
            ["DefaultRetryPolicy", "DefaultAppRetryPolicy"],
            [],
            (None, "DefaultAppRetryPolicy", None),
            id="app-retry-over-generic",
        ),
        pytest.param(
            {}, ["DefaultRetryPolicy"], [], (None, "DefaultRetryPolicy", None), id="generic-retry"
        ),
        pytest.param(
            {},
            [],
            ["DefaultCircuitBreakerPolicy", "DefaultAppCircuitBreakerPolicy"],
            (None, None, "DefaultAppCircuitBreakerPolicy"),
            id="app-breaker-over-generic",
        ),
        pytest.param(
            {},
            [],
            ["DefaultCircuitBreakerPolicy"],
            (None, None, "DefaultCircuitBreakerPolicy"),
            id="generic-breaker",
        ),
        pytest.param(
            {"DefaultTimeoutPolicy": "4s"},
            ["DefaultAppRetryPolicy"],
            ["DefaultCircuitBreakerPolicy"],
            (4.0, "DefaultAppRetryPolicy", "DefaultCircuitBreakerPolicy"),
            id="each-kind-falls-back-on-its-own",
        ),
        pytest.param(
            {"DefaultTimeoutPolicy": "0"}, [], [], None, id="zero-default-timeout-is-nothing"
        ),
        pytest.param({}, ["defaultRetryPolicy"], [], None, id="default-names-are-case-sensitive"),
        pytest.param(
            {}, ["DefaultActorRetryPolicy"], [], None, id="actor-defaults-are-not-app-defaults"
        ),
    ],
)
def test_default_policies_for_unnamed_targets(
    timeouts: dict[str, str],
    retries: list[str],
    breakers: list[str],
    expected: tuple[float | None, str | None, str | None] | None,
) -> None:
    resiliency = load(
        doc(
            timeouts=timeouts,
            retries={name: {} for name in retries},
            breakers={name: {} for name in breakers},
        )
    )
    policy = resiliency.for_app("anyone")
    if expected is None:
        assert policy is None
        return
    assert policy is not None
    assert not policy.named_target
    got = (
        policy.timeout,
        None if policy.retry is None else policy.retry.name,
        None if policy.breaker is None else policy.breaker.name,
    )
    assert got == expected


def test_defaults_apply_to_every_unnamed_target_but_not_named_ones() -> None:
    resiliency = load(ORDERS, doc("defaults", retries={"DefaultRetryPolicy": {}}))
    for target in ("a", "b", "orders.production"):
        policy = resiliency.for_app(target)
        assert policy is not None and policy.retry is not None
        assert policy.retry.name == "DefaultRetryPolicy"
    named = resiliency.for_app("bare")
    assert named == AppPolicy(None, None, None, True)


# --- scopes and kinds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "applies"),
    [
        pytest.param(None, True, id="no-scopes"),
        pytest.param([], True, id="empty-scopes"),
        pytest.param([APP_ID], True, id="listed"),
        pytest.param(["other", APP_ID], True, id="listed-among-others"),
        pytest.param(["other"], False, id="not-listed"),
        pytest.param([APP_ID.upper()], False, id="case-sensitive"),
    ],
)
def test_scopes(scopes: list[str] | None, applies: bool) -> None:
    document = doc(timeouts={"t": "1s"}, apps={"orders": {"timeout": "t"}})
    if scopes is not None:
        document["scopes"] = scopes
    resiliency = load(document)
    assert (resiliency.for_app("orders") is not None) is applies
    assert len(resiliency.summary()) == (1 if applies else 0)


def test_out_of_scope_document_is_not_checked_for_references() -> None:
    other = doc(apps={"orders": {"retry": "missing"}}, scopes=["someone-else"])
    assert load(other).for_app("orders") is None


def test_other_kinds_are_skipped() -> None:
    component = doc(timeouts={"t": "1s"}, apps={"orders": {"timeout": "t"}})
    component["kind"] = "Component"
    assert load(component).summary() == []


# --- several documents -----------------------------------------------------------------------


def test_documents_share_one_set_of_policy_names() -> None:
    targets = doc("targets", apps={"orders": {"retry": "shared", "timeout": "t"}})
    policies = doc("policies", retries={"shared": {"maxRetries": 7}}, timeouts={"t": "2s"})
    policy = load(targets, policies).for_app("orders")
    assert policy is not None and policy.retry is not None
    assert (policy.retry.max_retries, policy.timeout) == (7, 2.0)


def test_later_definition_of_a_name_wins() -> None:
    first = doc("first", timeouts={"t": "1s"}, apps={"orders": {"timeout": "t"}})
    second = doc("second", timeouts={"t": "2s"}, apps={"orders": {"timeout": "t"}, "x": {}})
    resiliency = load(first, second)
    assert resiliency.for_app("orders") == AppPolicy(2.0, None, None, True)
    assert resiliency.for_app("x") == AppPolicy(None, None, None, True)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "fragment"),
    [
        pytest.param("timeout", "timeout 'nope' is not defined (no policies.timeouts", id="tmo"),
        pytest.param("retry", "retry 'nope' is not defined (no policies.retries", id="retry"),
        pytest.param(
            "circuitBreaker",
            "circuitBreaker 'nope' is not defined (no policies.circuitBreakers",
            id="breaker",
        ),
    ],
)
def test_target_naming_an_undefined_policy_is_an_error(field: str, fragment: str) -> None:
    message = load_error(doc("mine", apps={"orders": {field: "nope"}}))
    assert message.startswith("Resiliency 'mine': targets.apps 'orders': ")
    assert fragment in message


def test_policy_of_another_kind_with_that_name_does_not_count() -> None:
    message = load_error(doc("mine", timeouts={"x": "1s"}, apps={"orders": {"retry": "x"}}))
    assert "retry 'x' is not defined" in message


@pytest.mark.parametrize(
    ("document", "fragments"),
    [
        pytest.param(
            doc("bad", timeouts={"slow": "forever"}),
            ["Resiliency 'bad': timeout policy 'slow': duration 'forever'"],
            id="bad-timeout",
        ),
        pytest.param(
            doc("bad", timeouts={"slow": None}),
            ["Resiliency 'bad': timeout policy 'slow': missing duration"],
            id="null-timeout",
        ),
        pytest.param(
            doc("bad", retries={"r": {"policy": "sometimes"}}),
            ["Resiliency 'bad': retry policy 'r': policy must be"],
            id="bad-retry",
        ),
        pytest.param(
            doc("bad", retries={"r": {"matching": {"httpStatusCodes": "700"}}}),
            ["Resiliency 'bad': retry policy 'r': matching: '700'"],
            id="bad-status-codes",
        ),
        pytest.param(
            doc("bad", breakers={"cb": {"trip": "requests >"}}),
            ["Resiliency 'bad': circuit breaker policy 'cb': trip 'requests >'", "column 11"],
            id="bad-trip",
        ),
        pytest.param(
            doc("bad", breakers={"cb": {"maxRequests": -2}}),
            ["Resiliency 'bad': circuit breaker policy 'cb': maxRequests"],
            id="bad-max-requests",
        ),
        pytest.param(
            doc("bad", apps={"orders": {"circuitBreakerCacheSize": -1}}),
            ["Resiliency 'bad': targets.apps 'orders': circuitBreakerCacheSize"],
            id="negative-cache-size",
        ),
        pytest.param(
            doc("bad", apps={"orders": {"retry": 5}}),
            ["Resiliency 'bad': targets.apps 'orders': retry must be a string"],
            id="policy-name-not-string",
        ),
        pytest.param(
            doc("bad", apps={"orders": ["retry"]}),
            ["targets.apps 'orders': the target must be a mapping"],
            id="target-not-mapping",
        ),
        pytest.param(
            doc("bad", timeouts={("a",): "1s"}),
            ["Resiliency 'bad': timeout policy names must be strings"],
            id="policy-name-key-not-string",
        ),
        pytest.param(doc("bad", spec=[]), ["Resiliency 'bad': spec must be a mapping"], id="spec"),
        pytest.param(
            doc("bad", scopes="checkout"),
            ["Resiliency 'bad': scopes must be a list"],
            id="scopes-not-list",
        ),
        pytest.param(
            doc("bad", timeouts={"t": "x"}, source="/etc/res/r.yaml"),
            ["/etc/res/r.yaml: Resiliency 'bad': timeout policy 't'"],
            id="source-file-named",
        ),
        pytest.param(
            doc("", timeouts={"t": "x"}),
            ["Resiliency #1: timeout policy 't'"],
            id="unnamed-resource-numbered",
        ),
    ],
)
def test_bad_fields_name_resource_and_policy(
    document: dict[str, Any], fragments: list[str]
) -> None:
    message = load_error(document)
    for fragment in fragments:
        assert fragment in message


def test_document_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="Resiliency #2: must be a mapping, not list"):
        load_resiliency([doc(), []], APP_ID, FakeClock())  # type: ignore[list-item]


# --- the built-in service retry --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "max_retries", "duration"),
    [
        pytest.param({"maxRetries": 5, "duration": "2s"}, 5, 2.0, id="more-kept"),
        pytest.param({"maxRetries": 3}, 3, 5.0, id="three-kept"),
        pytest.param({"maxRetries": 1}, 3, 5.0, id="one-raised-to-three"),
        pytest.param({"maxRetries": 0}, 3, 5.0, id="zero-raised-to-three"),
        pytest.param({"maxRetries": -1}, 3, 5.0, id="unlimited-raised-to-three-as-in-daprd"),
        pytest.param({}, 3, 5.0, id="unset-is-unlimited-so-three"),
    ],
)
def test_built_in_service_retry_override(
    body: dict[str, Any], max_retries: int, duration: float
) -> None:
    resiliency = load(doc(retries={"DaprBuiltInServiceRetries": body}))
    retry = resiliency.built_in_retry
    assert retry.name == "DaprBuiltInServiceRetries"
    assert (retry.max_retries, retry.duration) == (max_retries, duration)


def test_only_the_built_in_name_is_raised_to_three() -> None:
    resiliency = load(doc(retries={"mine": {"maxRetries": 1}}, apps={"a": {"retry": "mine"}}))
    policy = resiliency.for_app("a")
    assert policy is not None and policy.retry is not None
    assert policy.retry.max_retries == 1
    assert resiliency.built_in_retry is BUILT_IN_SERVICE_RETRY


def test_target_may_name_the_built_in_retry_without_defining_it() -> None:
    policy = load(doc(apps={"a": {"retry": "DaprBuiltInServiceRetries"}})).for_app("a")
    assert policy is not None
    assert policy.retry is BUILT_IN_SERVICE_RETRY


# --- breakers --------------------------------------------------------------------------------


def test_named_target_breakers_use_its_cache_size_and_last() -> None:
    resiliency = load(ORDERS)
    breakers = resiliency.breakers("orders")
    assert breakers is not None
    assert breakers.size == 2
    assert breakers.spec.name == "simpleCB"
    assert resiliency.breakers("orders") is breakers
    assert resiliency.breakers("partial") is None
    assert resiliency.breakers("stranger") is None


def test_default_breaker_gives_each_unnamed_target_its_own_set() -> None:
    resiliency = load(doc(breakers={"DefaultAppCircuitBreakerPolicy": {}}))
    first = resiliency.breakers("a")
    assert first is not None
    assert first.size == 100
    assert resiliency.breakers("a") is first
    assert resiliency.breakers("b") is not first


def test_default_breaker_sets_are_bounded_but_named_ones_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(spec_module, "MAX_DEFAULT_TARGETS", 2)
    resiliency = load(ORDERS, doc("d", breakers={"DefaultCircuitBreakerPolicy": {}}))
    named = resiliency.breakers("orders")
    a = resiliency.breakers("a")
    b = resiliency.breakers("b")
    assert resiliency.breakers("a") is a  # refreshed: "b" is now the oldest
    resiliency.breakers("c")  # evicts "b"
    assert resiliency.breakers("a") is a
    assert resiliency.breakers("orders") is named
    b_again = resiliency.breakers("b")
    assert b_again is not None and b_again is not b


def test_breakers_run_on_the_injected_clock_and_report_changes() -> None:
    clock = FakeClock()
    changes: list[tuple[str, str, BreakerState, BreakerState]] = []
    document = doc(
        breakers={"cb": {"trip": "consecutiveFailures > 0", "timeout": "10s"}},
        apps={"orders": {"circuitBreaker": "cb"}},
    )
    resiliency = load_resiliency(
        [document],
        APP_ID,
        clock,
        lambda target, name, old, new: changes.append((target, name, old, new)),
    )
    breakers = resiliency.breakers("orders")
    assert breakers is not None
    breaker = breakers.get("orders:checkout")
    token = breaker.allow()
    assert token is not None
    breaker.record(token, success=False)
    clock.advance(10)
    assert breaker.state is BreakerState.HALF_OPEN
    assert changes == [
        ("orders", "orders:checkout", BreakerState.CLOSED, BreakerState.OPEN),
        ("orders", "orders:checkout", BreakerState.OPEN, BreakerState.HALF_OPEN),
    ]


# --- summary ---------------------------------------------------------------------------------


def test_summary_lists_each_resource_in_scope() -> None:
    second = doc("second", retries={"DaprBuiltInServiceRetries": {}})
    hidden = doc("hidden", scopes=["other"])
    assert load(ORDERS, hidden, second).summary() == [
        {
            "name": "orders-res",
            "policies": {
                "timeouts": ["general", "none"],
                "retries": ["important"],
                "circuitBreakers": ["simpleCB"],
            },
            "targets": {"apps": ["orders", "bare", "partial", "untimed"]},
        },
        {
            "name": "second",
            "policies": {
                "timeouts": [],
                "retries": ["DaprBuiltInServiceRetries"],
                "circuitBreakers": [],
            },
            "targets": {"apps": []},
        },
    ]


def test_summary_is_a_fresh_copy() -> None:
    resiliency = load(ORDERS)
    resiliency.summary()[0]["name"] = "changed"
    assert resiliency.summary()[0]["name"] == "orders-res"


def test_repr() -> None:
    assert repr(load(ORDERS)) == (
        "<Resiliency resources=1 targets=4 defaults=False "
        "built_in_retry='DaprBuiltInServiceRetries'>"
    )
