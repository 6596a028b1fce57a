"""Builds the name resolution component a Configuration asks for, as Dapr spells it.

`spec.nameResolution.component` picks it (`sqlite`, the embedded default when
nothing is configured; `dns`; `kubernetes`; `static`) and `configuration`
holds its settings. Mistakes fail start-up with the setting named.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastproxy.config.errors import ConfigError
from fastproxy.discovery.dns import DnsResolver
from fastproxy.discovery.model import Resolver
from fastproxy.discovery.registry import SqliteRegistry, default_registry_path
from fastproxy.discovery.static import StaticResolver
from fastproxy.discovery.template import NameTemplate, kubernetes_template

DEFAULT_COMPONENT = "sqlite"
BALANCERS = ("leastoutstanding", "least-outstanding", "p2c", "roundrobin", "round-robin")


@dataclass(frozen=True, slots=True)
class NameResolution:
    """The resolver, the registry this sidecar writes itself into (sqlite only), and the
    cache and balancing settings that apply whatever the component."""

    component: str
    resolver: Resolver
    registry: SqliteRegistry | None
    load_balancing: str
    min_ttl: float
    max_ttl: float


def build_name_resolution(
    configuration: Mapping[str, Any], namespace: str, internal_port: int
) -> NameResolution:
    """From a Configuration's `spec` (possibly empty) to a ready `NameResolution`."""
    section = configuration.get("nameResolution") or {}
    if not isinstance(section, Mapping):
        raise ConfigError("spec.nameResolution must be a mapping")
    component = str(section.get("component") or DEFAULT_COMPONENT).strip().lower()
    settings = section.get("configuration") or {}
    if not isinstance(settings, Mapping):
        raise ConfigError("spec.nameResolution.configuration must be a mapping")
    balancing = str(settings.get("loadBalancing", "leastoutstanding")).strip().lower()
    if balancing not in BALANCERS:
        raise ConfigError(
            f"spec.nameResolution.configuration.loadBalancing: {balancing!r} is not one of"
            f" {', '.join(BALANCERS)}"
        )
    min_ttl = _seconds(settings, "minTTL", 1.0)
    max_ttl = _seconds(settings, "maxTTL", 300.0)
    if min_ttl > max_ttl:
        raise ConfigError("spec.nameResolution.configuration: minTTL is above maxTTL")
    registry = None
    try:
        if component == "sqlite":
            try:
                path = str(settings.get("connectionString") or default_registry_path())
            except OSError as exc:
                raise ConfigError(f"the default registry file cannot be created: {exc}") from None
            registry = SqliteRegistry(
                path,
                update_interval=_seconds(settings, "updateInterval", 5.0),
                timeout=_seconds(settings, "timeout", 1.0),
            )
            resolver: Resolver = registry
        elif component == "static":
            apps = settings.get("apps") or {}
            if not isinstance(apps, Mapping):
                raise ConfigError("spec.nameResolution.configuration.apps must be a mapping")
            resolver = StaticResolver(apps, default_namespace=namespace)
        elif component in ("dns", "kubernetes"):
            resolver = _dns_resolver(component, settings, internal_port)
        else:
            raise ConfigError(
                f"spec.nameResolution.component: {component!r} is not supported"
                " (sqlite, dns, kubernetes, static)"
            )
    except ValueError as exc:
        raise ConfigError(f"spec.nameResolution ({component}): {exc}") from None
    return NameResolution(component, resolver, registry, balancing, min_ttl, max_ttl)


def _dns_resolver(component: str, settings: Mapping[str, Any], internal_port: int) -> Resolver:
    record = str(settings.get("record", "A")).upper()
    if "template" in settings:
        template = NameTemplate(
            str(settings["template"]), str(settings.get("clusterDomain", "cluster.local"))
        )
    elif component == "kubernetes":
        template = kubernetes_template(str(settings.get("clusterDomain", "cluster.local")))
    else:
        raise ConfigError("spec.nameResolution.configuration.template is required for dns")
    port: int | None = None
    if record == "A":
        port = int(settings.get("port", internal_port))
    nameservers = settings.get("nameservers") or ()
    if isinstance(nameservers, str) or not all(isinstance(n, str) for n in nameservers):
        raise ConfigError("spec.nameResolution.configuration.nameservers must list host:port")
    return DnsResolver(
        template,
        port,
        record="SRV" if record == "SRV" else "A",
        nameservers=tuple(nameservers),
        timeout=_seconds(settings, "timeout", 2.0),
    )


def _seconds(settings: Mapping[str, Any], key: str, default: float) -> float:
    """A duration in seconds: a number, or a Go-style string such as `500ms`, `5s`, `1m`."""
    value = settings.get(key, default)
    if isinstance(value, bool):
        raise ConfigError(f"spec.nameResolution.configuration.{key}: not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        factor = 1.0
        for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
            if text.endswith(suffix):
                text, factor = text[: -len(suffix)], scale
                break
        try:
            seconds = float(text) * factor
        except ValueError:
            raise ConfigError(
                f"spec.nameResolution.configuration.{key}: not a duration: {value!r}"
            ) from None
    if seconds <= 0:
        raise ConfigError(f"spec.nameResolution.configuration.{key} must be positive")
    return seconds
