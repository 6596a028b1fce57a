"""DNS name templates: how an app id and namespace become the name a DNS resolver asks for.

Pure and checked early: a template is validated once at construction, and every value
put into it must be a single DNS label, so an app id can never add or reshape labels.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

# Letters, digits and inner hyphens (RFC 1123); what an app id or namespace may be.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Literal parts of a template may also use underscores, for `_service._proto` names.
_TEMPLATE_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_MAX_NAME = 253

PLACEHOLDERS = frozenset({"appid", "namespace", "clusterDomain"})
DEFAULT_CLUSTER_DOMAIN = "cluster.local"


def is_dns_label(value: str) -> bool:
    """True for one hostname label: 1-63 letters, digits or inner hyphens."""
    return _LABEL.fullmatch(value) is not None


def _check_name(name: str, what: str, label_pattern: re.Pattern[str] = _TEMPLATE_LABEL) -> None:
    """Raise ValueError unless `name` is a dotted DNS name (an optional final dot allowed)."""
    bare = name.removesuffix(".")
    if not bare or len(bare) > _MAX_NAME:
        raise ValueError(f"{what} {name!r}: a DNS name is 1 to {_MAX_NAME} characters")
    for label in bare.split("."):
        if label_pattern.fullmatch(label) is None:
            raise ValueError(f"{what} {name!r}: {label!r} is not a valid DNS label")


def _parse(text: str) -> frozenset[str]:
    """The placeholders `text` uses; ValueError for unknown ones or any format syntax."""
    used: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"name template {text!r}: {exc}") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name == "port":
            raise ValueError(
                f"name template {text!r}: {{port}} cannot appear in a DNS name; "
                "the port comes from the resolver's settings or the SRV record"
            )
        if name not in PLACEHOLDERS:
            raise ValueError(
                f"name template {text!r}: unknown placeholder {{{name}}}; "
                f"known: {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}"
            )
        if spec or conversion:
            raise ValueError(f"name template {text!r}: {{{name}}} takes no format spec")
        used.add(name)
    if "appid" not in used:
        raise ValueError(f"name template {text!r}: must contain {{appid}}")
    return frozenset(used)


@dataclass(frozen=True, slots=True)
class NameTemplate:
    """A validated name pattern such as `{appid}-dapr.{namespace}.svc.{clusterDomain}`.

    `{clusterDomain}` is fixed per template (it is deployment configuration, not
    per-request), so it is bound here rather than passed to `render`.
    """

    text: str
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    placeholders: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name(self.cluster_domain, "cluster domain", _LABEL)
        object.__setattr__(self, "placeholders", _parse(self.text))
        # The literal parts must form a valid name too; try it with the shortest values.
        _check_name(self._fill("a", "a"), f"name template {self.text!r} gives")

    @property
    def uses_namespace(self) -> bool:
        return "namespace" in self.placeholders

    def render(self, app_id: str, namespace: str) -> str:
        """The DNS name for `app_id` in `namespace`; ValueError if either is not one label.

        The namespace is only checked when the template uses it: standalone mode has
        an empty namespace, and a template without `{namespace}` must still work there.
        """
        if not is_dns_label(app_id):
            raise ValueError(f"app id {app_id!r} is not a valid DNS label")
        if self.uses_namespace and not is_dns_label(namespace):
            raise ValueError(f"namespace {namespace!r} is not a valid DNS label")
        name = self._fill(app_id, namespace)
        _check_name(name, f"app id {app_id!r} gives")
        return name

    def _fill(self, app_id: str, namespace: str) -> str:
        return self.text.format(
            appid=app_id, namespace=namespace, clusterDomain=self.cluster_domain
        )


def kubernetes_template(cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> NameTemplate:
    """The name Dapr's kubernetes resolver looks up: the app's `-dapr` headless service."""
    return NameTemplate("{appid}-dapr.{namespace}.svc.{clusterDomain}", cluster_domain)


def consul_template() -> NameTemplate:
    """Consul's DNS interface name for a service; query it for SRV to get the ports."""
    return NameTemplate("{appid}.service.consul")
