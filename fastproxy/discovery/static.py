"""The `static` resolver: app ids mapped to fixed addresses in the Configuration.

For fixed set-ups and tests. Also home of the `host:port` text form that the
registry stores, so both parse addresses the same way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from fastproxy.discovery.model import Address, Resolution, ServiceNotFound

DEFAULT_NAMESPACE = "default"
# Static entries never change while the sidecar runs; the cache clamps this to its ceiling.
STATIC_TTL = 86400.0

_BAD_HOST_CHARS = frozenset(" \t\r\n/\\@?#[]")


def parse_address(text: str) -> Address:
    """`host:port` (IPv6 in brackets, `[::1]:50002`) → `Address`; ValueError if malformed."""
    if text.startswith("["):
        inner, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: expected [ipv6]:port")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{text!r}: {inner!r} is not an IPv6 address") from None
        host = inner
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"{text!r}: an IPv6 host must be in brackets, as in [::1]:80")
        if not host or any(char in _BAD_HOST_CHARS for char in host):
            raise ValueError(f"{text!r}: bad host {host!r}")
    # int() would accept '+80', ' 80' and '8_0'; a port is plain digits.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: bad port {port_text!r}")
    return Address(host, int(port_text))


def parse_key(key: str, default_namespace: str = DEFAULT_NAMESPACE) -> tuple[str, str]:
    """`appid` or `appid.namespace` → (app id, namespace); a bare app id is in the default one."""
    app_id, dot, namespace = key.partition(".")
    parts = (app_id, namespace) if dot else (app_id,)
    if any(not part or "." in part or not part.isprintable() or " " in part for part in parts):
        raise ValueError(f"{key!r}: expected 'appid' or 'appid.namespace'")
    return app_id, namespace if dot else default_namespace


class StaticResolver:
    """Answers from a fixed table, validated whole at construction.

    Keys are `appid` or `appid.namespace`. A bare `appid` stands for
    `appid.<default namespace>`, so `lookup(app, ns)` answers from the key
    `app.ns`, or from the key `app` only when `ns` is the default namespace;
    an app in any other namespace must be written with its namespace. Giving
    both `app` and `app.default` is an error, since they name the same thing.
    """

    __slots__ = ("_default_namespace", "_table")

    def __init__(
        self,
        entries: Mapping[str, Sequence[str]],
        *,
        default_namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self._default_namespace = default_namespace
        table: dict[tuple[str, str], Resolution] = {}
        spelled: dict[tuple[str, str], str] = {}
        for key, values in entries.items():
            where = f"static entry {key!r}"
            # Entries come from YAML: check the shapes the type hints promise.
            if not isinstance(key, str):
                raise ValueError(f"{where}: the key must be a string")
            try:
                name = parse_key(key, default_namespace)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            if name in spelled:
                raise ValueError(f"{where}: same app as entry {spelled[name]!r}")
            # A bare string is a Sequence[str] too: it would be read letter by letter.
            if isinstance(values, str) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"{where}: expected a non-empty list of 'host:port'")
            addresses: list[Address] = []
            for value in values:
                try:
                    address = parse_address(value)
                except (ValueError, TypeError, AttributeError) as exc:
                    raise ValueError(f"{where}: {exc}") from None
                if address in addresses:
                    raise ValueError(f"{where}: {value!r} is listed twice")
                addresses.append(address)
            spelled[name] = key
            table[name] = Resolution(tuple(addresses), STATIC_TTL)
        self._table = table

    def __repr__(self) -> str:
        apps, namespace = len(self._table), self._default_namespace
        return f"<StaticResolver apps={apps} default_namespace={namespace!r}>"

    async def lookup(self, app_id: str, namespace: str) -> Resolution:
        resolution = self._table.get((app_id, namespace))
        if resolution is None:
            raise ServiceNotFound(f"app {app_id!r} in namespace {namespace!r} has no static entry")
        return resolution
