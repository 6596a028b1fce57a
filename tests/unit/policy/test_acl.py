"""Access control: loading spec.accessControl and deciding calls as daprd's ACL does."""

from __future__ import annotations

from typing import Any

import pytest

from fastproxy.config.errors import ConfigError
from fastproxy.policy.acl import (
    DECISION_CACHE_SIZE,
    AccessControl,
    _PatternTable,
    _Policy,
    _Rule,
    denial_message,
    parse_access_control,
)
from fastproxy.security.identity import SpiffeId


def load(spec: dict[str, Any]) -> AccessControl:
    acl = parse_access_control(spec)
    assert acl is not None
    return acl


def op(name: str, action: str, *verbs: str) -> dict[str, Any]:
    """One `operations` entry; no verbs given means `httpVerb: ['*']`."""
    return {"name": name, "httpVerb": list(verbs) or ["*"], "action": action}


def policy(app_id: str = "a", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"appId": app_id, "namespace": "ns", "trustDomain": "td"}
    body.update(fields)
    return body


CALLER = SpiffeId("td", "ns", "a")


def single_policy(*operations: dict[str, Any], app_default: str | None = "deny") -> AccessControl:
    """Global deny, one policy for CALLER with `operations`: allowed means a rule said allow."""
    fields: dict[str, Any] = {"operations": list(operations)}
    if app_default is not None:
        fields["defaultAction"] = app_default
    return load({"defaultAction": "deny", "policies": [policy(**fields)]})


# --- no ACL at all ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(None, id="absent"),
        pytest.param({}, id="empty-mapping"),
        pytest.param({"trustDomain": "", "defaultAction": "", "policies": []}, id="all-empty"),
        pytest.param({"policies": None, "trustDomain": None}, id="all-null"),
        pytest.param({"somethingElse": 1}, id="only-unknown-keys"),
    ],
)
def test_spec_without_content_is_no_acl(spec: object) -> None:
    assert parse_access_control(spec) is None


# --- global default --------------------------------------------------------------------------

STRANGER = SpiffeId("td", "ns", "stranger")


@pytest.mark.parametrize(
    ("spec", "allowed"),
    [
        pytest.param({"policies": [policy()]}, False, id="no-default-with-policies-denies"),
        pytest.param({"trustDomain": "td"}, True, id="no-default-no-policies-allows"),
        pytest.param(
            {"trustDomain": "td", "policies": []}, True, id="no-default-empty-policies-allows"
        ),
        pytest.param(
            {"defaultAction": "", "policies": [policy()]}, False, id="empty-default-with-policies"
        ),
        pytest.param({"defaultAction": "allow"}, True, id="explicit-allow"),
        pytest.param({"defaultAction": "deny"}, False, id="explicit-deny"),
        pytest.param({"defaultAction": "ALLOW"}, True, id="default-action-upper-case"),
        pytest.param({"defaultAction": "Deny"}, False, id="default-action-mixed-case"),
        pytest.param(
            {"defaultAction": "allow", "policies": [policy(defaultAction="deny")]},
            True,
            id="unnamed-caller-gets-global-not-policy-default",
        ),
    ],
)
def test_global_default_applies_to_callers_no_policy_names(
    spec: dict[str, Any], allowed: bool
) -> None:
    acl = load(spec)
    assert acl.allows(STRANGER, "GET", "/x") is allowed
    assert acl.allows(None, "GET", "/x") is allowed


@pytest.mark.parametrize(
    ("global_default", "policy_default", "rule_action", "allowed"),
    [
        pytest.param("deny", "allow", "allow", False, id="global-deny-beats-allowing-policy"),
        pytest.param("allow", "deny", "deny", True, id="global-allow-beats-denying-policy"),
    ],
)
def test_caller_without_identity_gets_only_the_global_default(
    global_default: str, policy_default: str, rule_action: str, allowed: bool
) -> None:
    acl = load(
        {
            "defaultAction": global_default,
            "policies": [policy(defaultAction=policy_default, operations=[op("/x", rule_action)])],
        }
    )
    assert acl.allows(None, "GET", "/x") is allowed
    assert acl.allows(CALLER, "GET", "/x") is not allowed  # the policy itself does apply


# --- policy selection and precedence (the shape of Dapr's acl_test, in our own data) ---------

SHOP_SPEC: dict[str, Any] = {
    "defaultAction": "deny",
    "trustDomain": "cluster",
    "policies": [
        {
            "appId": "frontend",
            "namespace": "shop",
            "trustDomain": "public",
            "defaultAction": "allow",
            "operations": [
                op("/orders", "allow", "GET", "POST"),
                op("/admin", "deny", "*"),
            ],
        },
        {
            "appId": "billing",
            "namespace": "finance",
            "trustDomain": "corp",
            "defaultAction": "deny",
            "operations": [
                op("/invoices/v1/*", "allow", "PUT", "GET"),
                op("/pay", "allow", "POST"),
                op("/Reports", "allow", "GET"),
            ],
        },
        {
            "appId": "audit",
            "namespace": "shop",
            "trustDomain": "corp",
            "operations": [op("/logs", "allow", "POST")],
        },
        {
            "appId": "frontend",
            "namespace": "staging",
            "trustDomain": "public",
            "defaultAction": "deny",
            "operations": [op("/orders", "allow", "*")],
        },
    ],
}

FRONTEND = SpiffeId("public", "shop", "frontend")
FRONTEND_STAGING = SpiffeId("public", "staging", "frontend")
BILLING = SpiffeId("corp", "finance", "billing")
AUDIT = SpiffeId("corp", "shop", "audit")

# (id, caller, verb, operation, allowed)
# fmt: off
_SHOP_TABLE: list[tuple[str, SpiffeId, str, str, bool]] = [
    ("unknown-app-gets-global-deny", SpiffeId("public", "shop", "stranger"), "GET", "/orders",
     False),
    ("trust-domain-mismatch-gets-global", SpiffeId("other", "shop", "frontend"), "GET",
     "/orders", False),
    ("namespace-mismatch-gets-global", SpiffeId("public", "dev", "frontend"), "GET", "/orders",
     False),
    ("own-trust-domain-is-not-the-callers", SpiffeId("cluster", "shop", "frontend"), "GET",
     "/orders", False),
    ("unlisted-operation-gets-app-default-allow", FRONTEND, "GET", "/catalog", True),
    ("unlisted-operation-gets-app-default-deny", BILLING, "GET", "/catalog", False),
    ("listed-verb-allows", FRONTEND, "POST", "/orders", True),
    ("unlisted-verb-keeps-app-default-allow", FRONTEND, "DELETE", "/orders", True),
    ("unlisted-verb-keeps-app-default-deny", BILLING, "PUT", "/pay", False),
    ("star-verb-denies-get", FRONTEND, "GET", "/admin", False),
    ("star-verb-denies-any-verb", FRONTEND, "PURGE", "/admin", False),
    ("no-app-default-unlisted-verb-gets-global", AUDIT, "GET", "/logs", False),
    ("no-app-default-listed-verb-allows", AUDIT, "POST", "/logs", True),
    ("no-app-default-unlisted-operation-gets-global", AUDIT, "POST", "/other", False),
    ("operation-upper-case-matches-lower-pattern", BILLING, "POST", "/PAY", True),
    ("operation-mixed-case-matches-deny-rule", FRONTEND, "GET", "/Admin", False),
    ("pattern-upper-case-matches-lower-operation", BILLING, "GET", "/reports", True),
    ("same-app-other-namespace-own-default", FRONTEND_STAGING, "GET", "/catalog", False),
    ("same-app-other-namespace-own-rules", FRONTEND_STAGING, "DELETE", "/orders", True),
    ("star-pattern-covers-its-parent", BILLING, "GET", "/invoices/v1", True),
    ("star-pattern-covers-one-level", BILLING, "PUT", "/invoices/v1/42", True),
    ("star-pattern-not-two-levels", BILLING, "GET", "/invoices/v1/42/lines", False),
    ("star-pattern-not-other-branch", BILLING, "GET", "/invoices/v2/42", False),
]
# fmt: on


@pytest.mark.parametrize(
    ("caller", "verb", "operation", "allowed"),
    [pytest.param(*row, id=name) for name, *row in _SHOP_TABLE],
)
def test_decision_follows_policy_then_operation_then_verb(
    caller: SpiffeId, verb: str, operation: str, allowed: bool
) -> None:
    assert load(SHOP_SPEC).allows(caller, verb, operation) is allowed


def test_later_policy_for_same_app_and_namespace_replaces_earlier() -> None:
    acl = load(
        {
            "defaultAction": "deny",
            "policies": [policy(defaultAction="allow"), policy(defaultAction="deny")],
        }
    )
    assert acl.allows(CALLER, "GET", "/x") is False
    assert len(acl.summary()["policies"]) == 1  # type: ignore[arg-type]


# --- verbs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operations", "app_default", "verb", "allowed"),
    [
        pytest.param([op("/x", "allow", "GET")], "deny", "GET", True, id="listed-verb"),
        pytest.param([op("/x", "allow", "GET")], "deny", "POST", False, id="other-verb"),
        pytest.param([op("/x", "allow", "*")], "deny", "PURGE", True, id="star-any-verb"),
        pytest.param([op("/x", "allow", "get")], "deny", "GET", False, id="lower-case-entry"),
        pytest.param([op("/x", "allow", "Get")], "deny", "GET", False, id="mixed-case-entry"),
        pytest.param([op("/x", "allow", "GET")], "deny", "get", False, id="lower-case-request"),
        pytest.param(
            [{"name": "/x", "httpVerb": [], "action": "allow"}],
            "deny",
            "GET",
            False,
            id="empty-verb-list-keeps-app-deny",
        ),
        pytest.param(
            [{"name": "/x", "action": "deny"}],
            "allow",
            "GET",
            True,
            id="absent-verb-list-keeps-app-allow",
        ),
        pytest.param(
            [op("/x", "deny", "GET", "*")], "allow", "POST", False, id="star-next-to-verb"
        ),
        pytest.param([op("/x", "Allow", "GET")], "deny", "GET", True, id="action-any-case"),
    ],
)
def test_verb_entries_compare_exactly(
    operations: list[dict[str, Any]], app_default: str, verb: str, allowed: bool
) -> None:
    assert single_policy(*operations, app_default=app_default).allows(CALLER, verb, "/x") is (
        allowed
    )


@pytest.mark.parametrize(
    ("verb", "allowed"),
    [
        pytest.param("GET", True, id="exact-entry-wins"),
        pytest.param("POST", False, id="star-entry-otherwise"),
    ],
)
def test_exact_verb_entry_beats_star_entry(verb: str, allowed: bool) -> None:
    # One YAML entry gives all its verbs one action, and a repeated pattern keeps only its
    # first entry, so a spec cannot give "GET" and "*" different actions: build the rule
    # directly to pin the precedence the decision code implements.
    table = _PatternTable()
    table.add("/x", _Rule({"*": False, "GET": True}))
    acl = AccessControl(False, "td", {("a", "ns"): _Policy("a", "ns", "td", True, table, 1)})
    assert acl.allows(CALLER, verb, "/x") is allowed


# --- path patterns ---------------------------------------------------------------------------

# (id, pattern, operation, matches)
# fmt: off
_PATTERN_TABLE: list[tuple[str, str, str, bool]] = [
    ("exact", "/op1", "/op1", True),
    ("exact-covers-deeper-as-dapr", "/op1", "/op1/x", True),
    ("exact-not-longer-name", "/op1", "/op10", False),
    ("exact-not-shallower", "/op1/x", "/op1", False),
    ("exact-nested", "/api/v1/add", "/api/v1/add", True),
    ("star-one-segment", "/op3/a/*", "/op3/a/b", True),
    ("star-covers-parent", "/op3/a/*", "/op3/a", True),
    ("star-not-two-segments", "/op3/a/*", "/op3/a/b/c", False),
    ("star-not-other-parent", "/op3/a/*", "/op3/b/b", False),
    ("star-empty-last-segment", "/op3/a/*", "/op3/a/", True),
    ("root-star-one-segment", "/*", "/anything", True),
    ("root-star-not-two-segments", "/*", "/a/b", False),
    ("glob-suffix", "/op7/a/b*", "/op7/a/bc", True),
    ("glob-suffix-empty-run", "/op7/a/b*", "/op7/a/b", True),
    ("glob-suffix-wrong-start", "/op7/a/b*", "/op7/a/cb", False),
    ("glob-suffix-covers-deeper-as-dapr", "/op7/a/b*", "/op7/a/bc/d", True),
    ("glob-keeps-dots", "/A*", "/ABC.a", True),
    ("glob-prefix", "/*c", "/abc", True),
    ("glob-prefix-wrong-end", "/*c", "/abd", False),
    ("glob-middle", "/a*d", "/abcd", True),
    ("glob-middle-wrong-end", "/a*d", "/abce", False),
    ("glob-middle-with-dot", "/AB*.a", "/ABC.a", True),
    ("glob-in-one-segment-covers-deeper", "/a*", "/ab/c", True),
    ("glob-dot-is-literal", "/v1.0*", "/v1x0", False),
    ("glob-mid-pattern", "/op/a*/x", "/op/abc/x", True),
    ("double-star-any-depth", "/op7/c/**", "/op7/c/d/e", True),
    ("double-star-one-deeper", "/op7/c/**", "/op7/c/d", True),
    ("double-star-covers-parent", "/op7/c/**", "/op7/c", True),
    ("double-star-not-other-branch", "/op7/c/**", "/op7/d/e", False),
    ("root-double-star-root", "/**", "/", True),
    ("root-double-star-deep", "/**", "/a/b/c/d", True),
    ("mid-double-star-one-segment", "/op1/**/a", "/op1/x/a", True),
    ("mid-double-star-not-two-segments", "/op1/**/a", "/op1/x/y/a", False),
    ("mid-star-segment-not-a-wildcard", "/*/b", "/x/b", False),
    ("mid-star-segment-matches-literal-star", "/*/b", "/*/b", True),
    ("request-star-not-wildcard", "/public", "/pub*", False),
    ("request-star-not-wildcard-in-segment", "/adminstream", "/admin*stream", False),
    ("request-star-matched-by-glob", "/a*", "/a*", True),
    ("pattern-without-leading-slash", "orders", "/orders", True),
    ("operation-without-leading-slash", "/orders", "orders", True),
    ("pattern-upper-case", "/Orders/*", "/orders/1", True),
    ("operation-upper-case", "/orders", "/ORDERS", True),
    ("root-pattern", "/", "/", True),
    ("root-pattern-not-child", "/", "/a", False),
]
# fmt: on


@pytest.mark.parametrize(
    ("pattern", "operation", "matches"),
    [pytest.param(*row, id=name) for name, *row in _PATTERN_TABLE],
)
def test_pattern_matching(pattern: str, operation: str, matches: bool) -> None:
    acl = single_policy(op(pattern, "allow"))
    assert acl.allows(CALLER, "GET", operation) is matches


@pytest.mark.parametrize(
    ("operations", "operation", "allowed"),
    [
        pytest.param(
            [op("/api/v1/*", "allow"), op("/api/v1/state", "deny")],
            "/api/v1/state",
            True,
            id="star-listed-first-shadows-literal",
        ),
        pytest.param(
            [op("/api/v1/state", "deny"), op("/api/v1/*", "allow")],
            "/api/v1/state",
            False,
            id="literal-listed-first-wins",
        ),
        pytest.param(
            [op("/api/v1/state", "deny"), op("/api/v1/*", "allow")],
            "/api/v1/other",
            True,
            id="star-after-literal-still-covers-others",
        ),
        pytest.param(
            [op("/a*", "allow"), op("/ab", "deny")],
            "/ab",
            True,
            id="glob-listed-first-shadows-literal",
        ),
        pytest.param(
            [op("/**", "deny"), op("/public", "allow")],
            "/public",
            False,
            id="double-star-listed-first-shadows-all",
        ),
        pytest.param(
            [op("/a*/x", "allow"), op("/ab/y", "allow")],
            "/ab/y",
            False,
            id="first-fit-is-final-no-backtracking",
        ),
        pytest.param(
            [op("/orders", "deny"), op("/Orders", "allow")],
            "/orders",
            False,
            id="repeated-pattern-first-entry-wins",
        ),
    ],
)
def test_sibling_patterns_first_listed_wins(
    operations: list[dict[str, Any]], operation: str, allowed: bool
) -> None:
    assert single_policy(*operations).allows(CALLER, "GET", operation) is allowed


def test_repeated_pattern_later_entry_verbs_are_ignored() -> None:
    acl = single_policy(
        op("/orders", "allow", "GET"), op("/orders", "deny", "POST"), app_default="allow"
    )
    assert acl.allows(CALLER, "GET", "/orders") is True
    assert acl.allows(CALLER, "POST", "/orders") is True  # the deny entry never registered


# --- parse errors ----------------------------------------------------------------------------

_GOOD = policy("a")

# (id, spec, fragment the message must contain)
# fmt: off
_INVALID_TABLE: list[tuple[str, object, str]] = [
    ("spec-not-mapping", ["x"], "accessControl must be a mapping, not list"),
    ("policies-not-list", {"policies": {"appId": "a"}}, "policies must be a list, not dict"),
    ("trust-domain-not-string", {"trustDomain": 5}, "accessControl: trustDomain must be a string"),
    ("global-default-unknown", {"defaultAction": "permit"},
     "accessControl: defaultAction must be allow or deny, not 'permit'"),
    ("global-default-not-string", {"defaultAction": True},
     "accessControl: defaultAction must be a string"),
    ("policy-not-mapping", {"policies": ["a"]}, "accessControl policy #1 must be a mapping"),
    ("missing-app-id", {"policies": [_GOOD, {"namespace": "ns", "trustDomain": "td"}]},
     "accessControl policy #2: missing appId"),
    ("empty-app-id", {"policies": [policy("")]}, "accessControl policy #1: missing appId"),
    ("app-id-not-string", {"policies": [policy(123)]},  # type: ignore[arg-type]
     "accessControl policy #1: appId must be a string, not int"),
    ("missing-namespace", {"policies": [_GOOD, {"appId": "b", "trustDomain": "td"}]},
     'accessControl policy #2 (appId "b"): missing namespace'),
    ("empty-namespace", {"policies": [policy("b", namespace="")]},
     'accessControl policy #1 (appId "b"): missing namespace'),
    ("missing-trust-domain", {"policies": [{"appId": "c", "namespace": "ns"}]},
     'accessControl policy #1 (appId "c"): missing trustDomain'),
    ("policy-default-unknown", {"policies": [policy("a", defaultAction="open")]},
     "policy #1 (appId \"a\"): defaultAction must be allow or deny, not 'open'"),
    ("operations-not-list", {"policies": [policy("a", operations={"name": "/x"})]},
     'policy #1 (appId "a"): operations must be a list, not dict'),
    ("operation-not-mapping", {"policies": [policy("a", operations=["/x"])]},
     'policy #1 (appId "a") operation #1 must be a mapping, not str'),
    ("operation-missing-name",
     {"policies": [policy("a", operations=[op("/x", "allow"), {"action": "allow"}])]},
     'policy #1 (appId "a") operation #2: missing name'),
    ("operation-empty-name",
     {"policies": [policy("a", operations=[{"name": "", "action": "allow"}])]},
     'policy #1 (appId "a") operation #1: missing name'),
    ("operation-missing-action",
     {"policies": [policy("a", operations=[{"name": "/x", "httpVerb": ["GET"]}])]},
     'policy #1 (appId "a") operation #1 ("/x"): missing action'),
    ("operation-action-unknown",
     {"policies": [policy("a", operations=[op("/x", "yes")])]},
     "operation #1 (\"/x\"): action must be allow or deny, not 'yes'"),
    ("http-verb-string",
     {"policies": [policy("a", operations=[{"name": "/x", "httpVerb": "GET", "action": "allow"}])]},
     'operation #1 ("/x"): httpVerb must be a list of strings'),
    ("http-verb-not-all-strings",
     {"policies": [policy("a", operations=[{"name": "/x", "httpVerb": ["GET", 1],
                                            "action": "allow"}])]},
     'operation #1 ("/x"): httpVerb must be a list of strings'),
]
# fmt: on


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [pytest.param(*row, id=name) for name, *row in _INVALID_TABLE],
)
def test_invalid_spec_names_the_bad_entry(spec: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_access_control(spec, source="config.yaml")
    message = str(caught.value)
    assert message.startswith("config.yaml: accessControl")
    assert fragment in message


def test_unknown_keys_are_ignored() -> None:
    acl = load(
        {
            "defaultAction": "deny",
            "extra": 1,
            "policies": [policy(note="x", operations=[{**op("/x", "allow"), "comment": "y"}])],
        }
    )
    assert acl.allows(CALLER, "GET", "/x") is True


# --- denial message --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        pytest.param(
            SpiffeId("public", "default", "checkout"),
            "access control policy has denied access to id: spiffe://public/ns/default/checkout"
            " operation: /op verb: GET",
            id="with-caller",
        ),
        pytest.param(
            None,
            "access control policy has denied access to id:  operation: /op verb: GET",
            id="without-caller",
        ),
    ],
)
def test_denial_message_matches_daprd(caller: SpiffeId | None, expected: str) -> None:
    assert denial_message(caller, "/op", "GET") == expected


# --- summary ---------------------------------------------------------------------------------


def test_summary_reports_defaults_and_policies() -> None:
    assert load(SHOP_SPEC).summary() == {
        "defaultAction": "deny",
        "trustDomain": "cluster",
        "policies": [
            {"appId": "frontend", "namespace": "shop", "trustDomain": "public",
             "defaultAction": "allow", "operations": 2},
            {"appId": "billing", "namespace": "finance", "trustDomain": "corp",
             "defaultAction": "deny", "operations": 3},
            {"appId": "audit", "namespace": "shop", "trustDomain": "corp",
             "defaultAction": "", "operations": 1},
            {"appId": "frontend", "namespace": "staging", "trustDomain": "public",
             "defaultAction": "deny", "operations": 1},
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "default_action", "trust_domain"),
    [
        pytest.param({"defaultAction": "ALLOW"}, "allow", "public", id="trust-domain-defaults"),
        pytest.param({"policies": [_GOOD]}, "deny", "public", id="implicit-deny-shown"),
        pytest.param({"trustDomain": "corp"}, "allow", "corp", id="implicit-allow-shown"),
    ],
)
def test_summary_shows_effective_global_values(
    spec: dict[str, Any], default_action: str, trust_domain: str
) -> None:
    summary = load(spec).summary()
    assert summary["defaultAction"] == default_action
    assert summary["trustDomain"] == trust_domain


# --- memoisation -----------------------------------------------------------------------------


def test_repeated_decision_gives_same_answer() -> None:
    acl = load(SHOP_SPEC)
    for name, caller, verb, operation, allowed in _SHOP_TABLE:
        for _ in range(3):
            assert acl.allows(caller, verb, operation) is allowed, name


def test_memoised_decision_is_per_caller() -> None:
    acl = load(SHOP_SPEC)
    assert acl.allows(FRONTEND, "GET", "/catalog") is True
    assert acl.allows(BILLING, "GET", "/catalog") is False
    assert acl.allows(FRONTEND, "GET", "/catalog") is True


def test_more_distinct_calls_than_the_bound_keep_answers_and_bound() -> None:
    acl = single_policy(op("/items/*", "allow"))
    calls = [(f"/items/{i}", True) for i in range(DECISION_CACHE_SIZE + 10)]
    calls += [(f"/other/{i}", False) for i in range(DECISION_CACHE_SIZE + 10)]
    for _ in range(2):
        for operation, allowed in calls:
            assert acl.allows(CALLER, "GET", operation) is allowed, operation
            assert len(acl._decisions) <= DECISION_CACHE_SIZE


def test_long_operations_are_decided_but_not_memoised() -> None:
    acl = single_policy(op("/items/*", "allow"))
    long_allowed = "/items/" + "x" * 5000
    long_denied = "/other/" + "x" * 5000
    for _ in range(2):
        assert acl.allows(CALLER, "GET", long_allowed) is True
        assert acl.allows(CALLER, "GET", long_denied) is False
    assert acl._decisions == {}
