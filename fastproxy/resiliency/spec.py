"""Loaded Resiliency resources: which timeout, retry and breaker apply to a call to an app.

Every document in scope is merged into one set of named policies, as daprd merges them, and
every `targets.apps` entry is resolved at load time, so a missing policy stops start-up
instead of silently doing nothing, and the per-call lookup is a dict get.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from fastproxy.config.errors import ConfigError
from fastproxy.resiliency._fields import (
    key_name,
    kind,
    mapping_or_empty,
    optional_int,
    optional_string,
)
from fastproxy.resiliency.breaker import (
    DEFAULT_CACHE_SIZE,
    BreakerSet,
    BreakerSpec,
    OnChange,
    parse_breaker,
)
from fastproxy.resiliency.durations import parse_duration
from fastproxy.resiliency.retry import (
    BUILT_IN_SERVICE_RETRIES,
    BUILT_IN_SERVICE_RETRY,
    RetrySpec,
    parse_retry,
)

_T = TypeVar("_T")

RESILIENCY_KIND: Final = "Resiliency"
# Default policies for apps, most specific first (daprd's "Default%sRetryPolicy" template
# filled with "App", then with ""). Each kind of policy falls back on its own.
DEFAULT_TIMEOUTS: Final = ("DefaultAppTimeoutPolicy", "DefaultTimeoutPolicy")
DEFAULT_RETRIES: Final = ("DefaultAppRetryPolicy", "DefaultRetryPolicy")
DEFAULT_BREAKERS: Final = ("DefaultAppCircuitBreakerPolicy", "DefaultCircuitBreakerPolicy")
# Retries daprd defines itself. They may be overridden by name, but never below 3 retries;
# the last one cannot be overridden at all (daprd ignores the attempt).
_BUILT_IN_RETRIES: Final = frozenset(
    (
        BUILT_IN_SERVICE_RETRIES,
        "DaprBuiltInActorRetries",
        "DaprBuiltInActorReminderRetries",
        "DaprBuiltInInitializationRetries",
    )
)
_PROTECTED_RETRIES: Final = frozenset(("DaprBuiltInActorNotFoundRetries",))
_BUILT_IN_MIN_RETRIES: Final = 3
# Targets without a `targets.apps` entry get their breakers from the default policy; their
# number depends on what clients send, so only this many targets keep breaker sets.
MAX_DEFAULT_TARGETS: Final = 1024


@dataclass(frozen=True, slots=True)
class AppPolicy:
    """What applies to calls to one target. A timeout of 0 in YAML means none (as in daprd)."""

    timeout: float | None
    retry: RetrySpec | None
    breaker: BreakerSpec | None
    named_target: bool  # `targets.apps` names the target: daprd then skips its built-in retry


@dataclass(frozen=True, slots=True)
class _Summary:
    name: str
    namespace: str
    timeouts: tuple[str, ...]
    retries: tuple[str, ...]
    circuit_breakers: tuple[str, ...]
    apps: tuple[str, ...]


class Resiliency:
    """The merged policies of every Resiliency resource in scope, plus the breakers' state.

    Build it with `load_resiliency`; the constructor trusts its arguments.
    """

    __slots__ = (
        "_cache_sizes",
        "_clock",
        "_default",
        "_default_sets",
        "_named",
        "_named_sets",
        "_on_breaker_change",
        "_summaries",
        "built_in_retry",
    )

    def __init__(
        self,
        named: Mapping[str, AppPolicy],
        cache_sizes: Mapping[str, int],
        default: AppPolicy | None,
        built_in_retry: RetrySpec,
        summaries: Sequence[_Summary],
        clock: Callable[[], float],
        on_breaker_change: OnChange | None = None,
    ) -> None:
        self._named = dict(named)
        self._cache_sizes = dict(cache_sizes)
        self._default = default
        self.built_in_retry = built_in_retry
        self._summaries = tuple(summaries)
        self._clock = clock
        self._on_breaker_change = on_breaker_change
        # Named targets are few (the YAML lists them) and keep their breakers for good;
        # default-policy targets are bounded by an LRU.
        self._named_sets: dict[str, BreakerSet] = {}
        self._default_sets: OrderedDict[str, BreakerSet] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"<Resiliency resources={len(self._summaries)} targets={len(self._named)} "
            f"defaults={self._default is not None} built_in_retry={self.built_in_retry.name!r}>"
        )

    def for_app(self, target: str) -> AppPolicy | None:
        """The policies for a call to `target`, the app id exactly as the client wrote it.

        A `targets.apps` entry wins whole: its empty fields do not fall back to defaults.
        Otherwise each Default* policy that exists applies; None when none does.
        """
        named = self._named.get(target)
        return named if named is not None else self._default

    def breakers(self, target: str) -> BreakerSet | None:
        """The per-method breakers of `target`, or None when no breaker policy applies."""
        named = self._named.get(target)
        if named is not None:
            if named.breaker is None:
                return None
            breakers = self._named_sets.get(target)
            if breakers is None:
                size = self._cache_sizes.get(target, DEFAULT_CACHE_SIZE)
                breakers = BreakerSet(
                    named.breaker, self._clock, self._on_breaker_change, size, target
                )
                self._named_sets[target] = breakers
            return breakers
        if self._default is None or self._default.breaker is None:
            return None
        breakers = self._default_sets.get(target)
        if breakers is not None:
            self._default_sets.move_to_end(target)
            return breakers
        breakers = BreakerSet(
            self._default.breaker, self._clock, self._on_breaker_change, target=target
        )
        self._default_sets[target] = breakers
        if len(self._default_sets) > MAX_DEFAULT_TARGETS:
            self._default_sets.popitem(last=False)
        return breakers

    def loaded(self) -> list[tuple[str, str]]:
        """(name, namespace) of every resource loaded, in load order."""
        return [(entry.name, entry.namespace) for entry in self._summaries]

    def summary(self) -> list[dict[str, object]]:
        """The loaded resources as `/v1.0/metadata` lists them, in load order."""
        return [
            {
                "name": entry.name,
                "policies": {
                    "timeouts": list(entry.timeouts),
                    "retries": list(entry.retries),
                    "circuitBreakers": list(entry.circuit_breakers),
                },
                "targets": {"apps": list(entry.apps)},
            }
            for entry in self._summaries
        ]


# --- loading ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TargetNames:
    """A `targets.apps` entry before its policy names are resolved."""

    where: str
    timeout: str
    retry: str
    circuit_breaker: str


@dataclass(slots=True)
class _Policies:
    """Named policies merged over all documents; a later definition replaces an earlier one."""

    timeouts: dict[str, float] = dataclasses.field(default_factory=dict)
    retries: dict[str, RetrySpec] = dataclasses.field(default_factory=dict)
    breakers: dict[str, BreakerSpec] = dataclasses.field(default_factory=dict)
    targets: dict[str, _TargetNames] = dataclasses.field(default_factory=dict)
    cache_sizes: dict[str, int] = dataclasses.field(default_factory=dict)


def load_resiliency(
    documents: Sequence[Mapping[str, object]],
    app_id: str,
    clock: Callable[[], float],
    on_breaker_change: OnChange | None = None,
) -> Resiliency:
    """Merge the Resiliency `documents` that apply to `app_id` (no scopes, or scopes naming it).

    Documents of another kind are skipped. A document's "source" key, when present, names
    its file in errors. Unlike daprd, which logs a bad resource and carries on without it,
    any bad field or a target naming an undefined policy raises ConfigError naming the
    resource, the target or policy, and the field.
    """
    policies = _Policies()
    policies.retries[BUILT_IN_SERVICE_RETRIES] = BUILT_IN_SERVICE_RETRY
    summaries: list[_Summary] = []
    for number, document in enumerate(documents, start=1):
        if not isinstance(document, Mapping):
            raise ConfigError(f"Resiliency #{number}: must be a mapping, not {kind(document)}")
        if document.get("kind", RESILIENCY_KIND) != RESILIENCY_KIND:
            continue
        where = _describe(document, number)
        if not _in_scope(document.get("scopes"), app_id, where):
            continue
        summaries.append(_load_document(document, where, policies))
    named = {target: _resolve(names, policies) for target, names in policies.targets.items()}
    return Resiliency(
        named=named,
        cache_sizes=policies.cache_sizes,
        default=_default_policy(policies),
        built_in_retry=policies.retries[BUILT_IN_SERVICE_RETRIES],
        summaries=summaries,
        clock=clock,
        on_breaker_change=on_breaker_change,
    )


def _describe(document: Mapping[str, object], number: int) -> str:
    name = _name_of(document)
    label = f"Resiliency {name!r}" if name else f"Resiliency #{number}"
    source = document.get("source")
    return f"{source}: {label}" if isinstance(source, str) and source else label


def _name_of(document: Mapping[str, object]) -> str:
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else ""


def _in_scope(scopes: object, app_id: str, where: str) -> bool:
    """No scopes means every app; otherwise `app_id` must be listed exactly."""
    if scopes is None:
        return True
    if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
        raise ConfigError(f"{where}: scopes must be a list of app ids")
    return not scopes or app_id in scopes


def _load_document(document: Mapping[str, object], where: str, policies: _Policies) -> _Summary:
    spec = mapping_or_empty(document.get("spec"), where, "spec")
    sections = mapping_or_empty(spec.get("policies"), where, "spec.policies")

    timeouts = mapping_or_empty(sections.get("timeouts"), where, "policies.timeouts")
    timeout_names: list[str] = []
    for key, value in timeouts.items():
        name = key_name(key, where, "timeout policy")
        policy_where = f"{where}: timeout policy {name!r}"
        if value is None:
            raise ConfigError(f"{policy_where}: missing duration")
        policies.timeouts[name] = parse_duration(value, policy_where)
        timeout_names.append(name)

    retries = mapping_or_empty(sections.get("retries"), where, "policies.retries")
    retry_names: list[str] = []
    for key, body in retries.items():
        name = key_name(key, where, "retry policy")
        retry = parse_retry(name, body, f"{where}: retry policy {name!r}")
        retry_names.append(name)
        if name in _PROTECTED_RETRIES:
            continue
        if name in _BUILT_IN_RETRIES and retry.max_retries < _BUILT_IN_MIN_RETRIES:
            retry = dataclasses.replace(retry, max_retries=_BUILT_IN_MIN_RETRIES)
        policies.retries[name] = retry

    breakers = mapping_or_empty(sections.get("circuitBreakers"), where, "policies.circuitBreakers")
    breaker_names: list[str] = []
    for key, body in breakers.items():
        name = key_name(key, where, "circuit breaker policy")
        policies.breakers[name] = parse_breaker(
            name, body, f"{where}: circuit breaker policy {name!r}"
        )
        breaker_names.append(name)

    targets = mapping_or_empty(spec.get("targets"), where, "spec.targets")
    apps = mapping_or_empty(targets.get("apps"), where, "targets.apps")
    app_names: list[str] = []
    for key, body in apps.items():
        app = key_name(key, where, "targets.apps")
        target_where = f"{where}: targets.apps {app!r}"
        fields = mapping_or_empty(body, target_where, "the target")
        policies.targets[app] = _TargetNames(
            where=target_where,
            timeout=optional_string(fields, "timeout", target_where),
            retry=optional_string(fields, "retry", target_where),
            circuit_breaker=optional_string(fields, "circuitBreaker", target_where),
        )
        size = optional_int(fields, "circuitBreakerCacheSize", target_where, 0)
        if size < 0:
            raise ConfigError(f"{target_where}: circuitBreakerCacheSize must be positive")
        policies.cache_sizes[app] = size or DEFAULT_CACHE_SIZE
        app_names.append(app)

    metadata = document.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return _Summary(
        name=_name_of(document),
        namespace=namespace if isinstance(namespace, str) else "",
        timeouts=tuple(timeout_names),
        retries=tuple(retry_names),
        circuit_breakers=tuple(breaker_names),
        apps=tuple(app_names),
    )


def _resolve(names: _TargetNames, policies: _Policies) -> AppPolicy:
    timeout = retry = breaker = None
    if names.timeout:
        timeout = _lookup(policies.timeouts, names.timeout, names.where, "timeout", "timeouts")
    if names.retry:
        retry = _lookup(policies.retries, names.retry, names.where, "retry", "retries")
    if names.circuit_breaker:
        breaker = _lookup(
            policies.breakers,
            names.circuit_breaker,
            names.where,
            "circuitBreaker",
            "circuitBreakers",
        )
    return AppPolicy(timeout or None, retry, breaker, named_target=True)


def _lookup(table: Mapping[str, _T], name: str, where: str, field: str, section: str) -> _T:
    found = table.get(name)
    if found is None:
        raise ConfigError(
            f"{where}: {field} {name!r} is not defined "
            f"(no policies.{section} entry of that name in any Resiliency in scope)"
        )
    return found


def _default_policy(policies: _Policies) -> AppPolicy | None:
    """The Default* policies that exist, each kind on its own; None if none does."""
    timeout = _first(policies.timeouts, DEFAULT_TIMEOUTS)
    retry = _first(policies.retries, DEFAULT_RETRIES)
    breaker = _first(policies.breakers, DEFAULT_BREAKERS)
    if not timeout and retry is None and breaker is None:
        return None
    return AppPolicy(timeout or None, retry, breaker, named_target=False)


def _first(table: Mapping[str, _T], names: tuple[str, ...]) -> _T | None:
    for name in names:
        found = table.get(name)
        if found is not None:
            return found
    return None
