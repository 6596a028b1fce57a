"""Dapr's service-invocation access control list (Configuration `spec.accessControl`).

Parsed once at start-up; then a pure decision the internal listener asks for every call
another sidecar delivers: may this verified caller use this verb on this method path?
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fastproxy.config.errors import ConfigError
from fastproxy.security.identity import SpiffeId

ALLOW: Final = "allow"
DENY: Final = "deny"
DEFAULT_TRUST_DOMAIN: Final = "public"
ANY_VERB: Final = "*"

# Decisions are memoised per (caller, verb, operation); the dict is emptied when full, so
# memory stays bounded whatever paths callers send. Longer operations are not memoised at
# all: a few pathological paths must not be able to pin megabytes of keys.
DECISION_CACHE_SIZE: Final = 4096
_MEMO_MAX_OPERATION: Final = 512

_ONE_SEGMENT: Final = "*"  # a whole segment "*": any one final segment
_ANY_DEPTH: Final = "**"  # a whole segment "**": any number of segments

_Decision = tuple[SpiffeId, str, str]


# --- pattern table ---------------------------------------------------------------------------
#
# Theory of operation (the same walk as Dapr's `pkg/config/acl_trie.go`, re-derived):
# a pattern is split on "/" and stored as a path of nodes, one per segment; siblings keep
# the order their patterns were listed in. A request path is walked segment by segment,
# taking at each level the FIRST child that fits, in that order, and never backtracking:
#   - a child whose text equals the segment fits;
#   - a "*" child fits only the last segment of the request (mid-pattern it fits nothing but a
#     literal "*", so "/*/b" does not match "/x/b"; "/**/b" does);
#   - a "**" child fits any segment; if it ends its pattern, it covers every deeper path too,
#     otherwise it stands for exactly one segment;
#   - a child holding "*" inside other text is a glob: each "*" matches any run of
#     characters within that one segment.
# Only the pattern is a glob: a "*" in the request path is an ordinary character.
# The walk stops at the first node that ends a pattern: "/op1" covers "/op1/x" as in Dapr.
# When the request ends on a node that ends no pattern, a "*" (or "**") child of that node
# covers it, so "/x/*" also matches "/x".
# Several patterns can match one path: the first fitting sibling at each level decides, so a
# wildcard listed before a literal sibling shadows it (list literals first). The same pattern
# listed twice keeps only its first entry, verbs and all, as Dapr does.


@dataclass(frozen=True, slots=True)
class _Rule:
    """One `operations` entry: the action (True = allow) for each verb it lists."""

    verb_allows: Mapping[str, bool]


class _Node:
    """One pattern segment; `rule` is set when some pattern ends here."""

    __slots__ = ("children", "glob", "rule", "segment")

    def __init__(self, segment: str) -> None:
        self.segment = segment
        self.glob: re.Pattern[str] | None = None
        if "*" in segment and segment not in (_ONE_SEGMENT, _ANY_DEPTH):
            parts = (re.escape(part) for part in segment.split("*"))
            self.glob = re.compile(".*".join(parts), re.DOTALL)
        self.rule: _Rule | None = None
        self.children: list[_Node] = []

    def child_for(self, segment: str, last: bool) -> _Node | None:
        """The first child, in listing order, that fits `segment` (see the theory above)."""
        for child in self.children:
            if child.segment == segment:
                return child
            if child.segment == _ONE_SEGMENT:
                if last:
                    return child
                continue
            if child.segment == _ANY_DEPTH:
                return child
            if child.glob is not None and child.glob.fullmatch(segment) is not None:
                return child
        return None


class _PatternTable:
    """The operations of one policy, keyed by lower-cased path pattern."""

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root = _Node("")

    def add(self, pattern: str, rule: _Rule) -> None:
        """Store `pattern` (starting with "/"); a pattern already present keeps its rule."""
        node = self._root
        for segment in pattern.split("/")[1:]:
            for child in node.children:
                if child.segment == segment:
                    node = child
                    break
            else:
                child = _Node(segment)
                node.children.append(child)
                node = child
        if node.rule is None:
            node.rule = rule

    def find(self, operation: str) -> _Rule | None:
        """The rule of the pattern that covers `operation` (starting with "/"), if any.

        As in Dapr, the walk stops at the first node that ends a pattern, so "/op1" also
        covers "/op1/x" (Dapr's integration test "duplicate slashes collapsed" relies on it):
        a deny on "/admin" keeps "/admin/secret" out too, as existing policies expect.
        """
        segments = operation.split("/")[1:]
        last_index = len(segments) - 1
        node = self._root
        for index, segment in enumerate(segments):
            last = index == last_index
            child = node.child_for(segment, last)
            if child is None:
                return None
            if child.rule is not None:
                return child.rule
            if last:
                tail = child.child_for(_ONE_SEGMENT, True)
                return tail.rule if tail is not None else None
            node = child
        return None


# --- the loaded spec -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Policy:
    """One `policies` entry: the rules for callers with this app id in this namespace."""

    app_id: str
    namespace: str
    trust_domain: str
    default_allows: bool | None  # None: the policy sets no defaultAction
    operations: _PatternTable
    operation_count: int


class AccessControl:
    """A loaded accessControl spec. Immutable after construction (decisions may be memoised in a
    bounded dict).

    Build it with `parse_access_control`; the constructor trusts its arguments.
    """

    __slots__ = ("_decisions", "_default_allows", "_policies", "_trust_domain")

    def __init__(
        self,
        default_allows: bool,
        trust_domain: str,
        policies: Mapping[tuple[str, str], _Policy],
    ) -> None:
        self._default_allows = default_allows
        self._trust_domain = trust_domain
        self._policies = dict(policies)
        self._decisions: dict[_Decision, bool] = {}

    def __repr__(self) -> str:
        action = ALLOW if self._default_allows else DENY
        return (
            f"<AccessControl default={action} trust_domain={self._trust_domain!r} "
            f"policies={len(self._policies)}>"
        )

    def allows(self, caller: SpiffeId | None, verb: str, operation: str) -> bool:
        """Whether `caller` may send `verb` to `operation` (a decoded path starting with "/").

        `caller` must come from a verified peer certificate; with none, only the global
        default applies, because nothing else about the caller can be trusted.
        """
        if caller is None:
            return self._default_allows
        key = (caller, verb, operation)
        known = self._decisions.get(key)
        if known is not None:
            return known
        allowed = self._decide(caller, verb, operation)
        if len(operation) <= _MEMO_MAX_OPERATION:
            if len(self._decisions) >= DECISION_CACHE_SIZE:
                self._decisions.clear()
            self._decisions[key] = allowed
        return allowed

    def _decide(self, caller: SpiffeId, verb: str, operation: str) -> bool:
        allowed = self._default_allows
        policy = self._policies.get((caller.app_id, caller.namespace))
        if policy is None or policy.trust_domain != caller.trust_domain:
            return allowed
        if policy.default_allows is not None:
            allowed = policy.default_allows
        if not operation.startswith("/"):
            operation = "/" + operation
        # The app speaks HTTP, where Dapr matches paths case-insensitively; the patterns were
        # lower-cased when loaded.
        rule = policy.operations.find(operation.lower())
        if rule is None:
            return allowed
        # Verbs compare exactly, as Dapr's do: an entry "get" never matches "GET".
        verb_allows = rule.verb_allows.get(verb)
        if verb_allows is None:
            verb_allows = rule.verb_allows.get(ANY_VERB)
        return allowed if verb_allows is None else verb_allows

    def summary(self) -> dict[str, object]:
        """The spec as `/v1.0/metadata` reports it; a policy without defaultAction shows ""."""
        return {
            "defaultAction": _action_name(self._default_allows),
            "trustDomain": self._trust_domain,
            "policies": [
                {
                    "appId": policy.app_id,
                    "namespace": policy.namespace,
                    "trustDomain": policy.trust_domain,
                    "defaultAction": (
                        "" if policy.default_allows is None else _action_name(policy.default_allows)
                    ),
                    "operations": policy.operation_count,
                }
                for policy in self._policies.values()
            ],
        }


def denial_message(caller: SpiffeId | None, operation: str, verb: str) -> str:
    """The text daprd puts in the PermissionDenied status, which callers see in the 403 body.

    The id is empty without a caller identity, leaving two spaces before "operation:", as in
    daprd. daprd prints the method as it arrived: no "/" prepended and its case kept.
    """
    identity = "" if caller is None else str(caller)
    return (
        f"access control policy has denied access to id: {identity} "
        f"operation: {operation} verb: {verb}"
    )


def _action_name(allows: bool) -> str:
    return ALLOW if allows else DENY


# --- parsing ---------------------------------------------------------------------------------


def parse_access_control(spec: object, source: str = "configuration") -> AccessControl | None:
    """`spec` is the value of Configuration `spec.accessControl` as loaded from YAML (dict or None).

    Returns None when there is no usable ACL (absent, or empty trustDomain + empty
    defaultAction + no policies): callers then allow everything, as daprd does.
    Raises ConfigError naming the bad entry (policies are numbered from 1), so a typo stops
    start-up instead of silently opening or closing the app. Unknown keys are ignored, as
    daprd ignores them. Two policies for the same appId and namespace: the later one wins,
    as in daprd.
    """
    if spec is None:
        return None
    where = f"{source}: accessControl"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a mapping, not {_kind(spec)}")
    trust_domain = _optional_string(spec, "trustDomain", where)
    default_action = _optional_action(spec, "defaultAction", where)
    raw_policies = spec.get("policies")
    if raw_policies is None:
        raw_policies = []
    if not isinstance(raw_policies, list):
        raise ConfigError(f"{where}: policies must be a list, not {_kind(raw_policies)}")
    if not trust_domain and default_action is None and not raw_policies:
        return None

    policies: dict[tuple[str, str], _Policy] = {}
    for number, raw in enumerate(raw_policies, start=1):
        policy = _parse_policy(raw, f"{where} policy #{number}")
        policies[(policy.app_id, policy.namespace)] = policy
    # No global default: with policies, deny whoever they do not name (the safe choice);
    # without, the ACL only names a trust domain and denies nobody.
    default_allows = not raw_policies if default_action is None else default_action
    return AccessControl(default_allows, trust_domain or DEFAULT_TRUST_DOMAIN, policies)


def _parse_policy(raw: object, where: str) -> _Policy:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping, not {_kind(raw)}")
    app_id = raw.get("appId")
    if isinstance(app_id, str) and app_id:
        where = f'{where} (appId "{app_id}")'
    app_id = _required_string(raw, "appId", where)
    namespace = _required_string(raw, "namespace", where)
    trust_domain = _required_string(raw, "trustDomain", where)
    default_allows = _optional_action(raw, "defaultAction", where)
    raw_operations = raw.get("operations")
    if raw_operations is None:
        raw_operations = []
    if not isinstance(raw_operations, list):
        raise ConfigError(f"{where}: operations must be a list, not {_kind(raw_operations)}")
    table = _PatternTable()
    for number, operation in enumerate(raw_operations, start=1):
        pattern, rule = _parse_operation(operation, f"{where} operation #{number}")
        table.add(pattern, rule)
    return _Policy(app_id, namespace, trust_domain, default_allows, table, len(raw_operations))


def _parse_operation(raw: object, where: str) -> tuple[str, _Rule]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping, not {_kind(raw)}")
    name = raw.get("name")
    if isinstance(name, str) and name:
        where = f'{where} ("{name}")'
    name = _required_string(raw, "name", where)
    allows = _optional_action(raw, "action", where)
    if allows is None:
        raise ConfigError(f"{where}: missing action (allow or deny)")
    verbs = raw.get("httpVerb")
    if verbs is None:
        verbs = []
    if not isinstance(verbs, list) or not all(isinstance(verb, str) for verb in verbs):
        raise ConfigError(f"{where}: httpVerb must be a list of strings, e.g. ['GET', 'POST']")
    pattern = name if name.startswith("/") else "/" + name
    return pattern.lower(), _Rule({verb: allows for verb in verbs})


def _optional_string(mapping: Mapping[object, object], key: str, where: str) -> str:
    value = mapping.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, not {_kind(value)}")
    return value


def _required_string(mapping: Mapping[object, object], key: str, where: str) -> str:
    value = _optional_string(mapping, key, where)
    if not value:
        raise ConfigError(f"{where}: missing {key}")
    return value


def _optional_action(mapping: Mapping[object, object], key: str, where: str) -> bool | None:
    """True for allow, False for deny (any case), None when absent or empty."""
    value = _optional_string(mapping, key, where)
    if not value:
        return None
    action = value.lower()
    if action not in (ALLOW, DENY):
        raise ConfigError(f"{where}: {key} must be allow or deny, not {value!r}")
    return action == ALLOW


def _kind(value: object) -> str:
    return type(value).__name__
