"""The static resolver and the `host:port` parser it shares with the registry."""

from __future__ import annotations

from typing import Any

import pytest

from fastproxy.discovery.model import Address, Resolver, ServiceNotFound
from fastproxy.discovery.static import STATIC_TTL, StaticResolver, parse_address, parse_key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50002", Address("127.0.0.1", 50002)),
        ("orders.internal:80", Address("orders.internal", 80)),
        ("localhost:1", Address("localhost", 1)),
        ("h:65535", Address("h", 65535)),
        ("[::1]:50002", Address("::1", 50002)),
        ("[fe80::1%eth0]:8080", Address("fe80::1%eth0", 8080)),
        ("[2001:db8::7]:443", Address("2001:db8::7", 443)),
    ],
    ids=["ipv4", "hostname", "localhost", "max-port", "ipv6-loopback", "ipv6-zone", "ipv6"],
)
def test_parse_address_accepts(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:",
        ":80",
        "host:0",
        "host:65536",
        "host:-1",
        "host:+80",
        "host: 80",
        "host:8_0",
        "host:http",
        "::1:80",
        "[::1]",
        "[::1]80",
        "[not-ipv6]:80",
        "[127.0.0.1]:80",
        "bad host:80",
        "user@host:80",
        "host/path:80",
    ],
    ids=[
        "empty",
        "no-port",
        "empty-port",
        "empty-host",
        "port-zero",
        "port-too-big",
        "port-negative",
        "port-plus-sign",
        "port-space",
        "port-underscore",
        "port-name",
        "ipv6-unbracketed",
        "ipv6-no-port",
        "ipv6-no-colon",
        "bracketed-name",
        "bracketed-ipv4",
        "space-in-host",
        "userinfo",
        "slash",
    ],
)
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"host|port|ipv6|IPv6"):
        parse_address(text)


def test_address_text_round_trips() -> None:
    for text in ("10.0.0.1:3500", "[::1]:3500", "name:1"):
        assert str(parse_address(text)) == text


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("orders", ("orders", "default")),
        ("orders.prod", ("orders", "prod")),
        ("orders.default", ("orders", "default")),
    ],
    ids=["bare-is-default-namespace", "qualified", "qualified-default"],
)
def test_parse_key(key: str, expected: tuple[str, str]) -> None:
    assert parse_key(key) == expected


@pytest.mark.parametrize(
    "key",
    ["", ".prod", "orders.", "a.b.c", "or ders", "orders\n"],
    ids=["empty", "no-app-id", "empty-namespace", "two-dots", "space", "control-char"],
)
def test_parse_key_rejects(key: str) -> None:
    with pytest.raises(ValueError, match="appid"):
        parse_key(key)


@pytest.mark.parametrize(
    ("entries", "named"),
    [
        ({"a.b.c": ["h:1"]}, "'a.b.c'"),
        ({"orders": []}, "'orders'"),
        ({"orders": "h:1"}, "'orders'"),
        ({"orders": ["h:1", "bad"]}, "'bad'"),
        ({"orders": ["h:1", "h:1"]}, "listed twice"),
        ({"orders": [80]}, "'orders'"),
        ({"orders": 80}, "'orders'.*list"),
        ({"orders": {"h:1": 1}}, "'orders'.*list"),
        ({8080: ["h:1"]}, "8080.*string"),
        ({"ok": ["h:1"], "orders": ["[::1]"]}, "'orders'"),
        ({"orders": ["h:1"], "orders.default": ["h:2"]}, "'orders.default'.*'orders'"),
    ],
    ids=[
        "bad-key",
        "no-addresses",
        "string-not-list",
        "bad-address",
        "duplicate-address",
        "not-a-string",
        "not-a-list",
        "a-mapping",
        "key-not-a-string",
        "second-entry-bad",
        "bare-and-default-collide",
    ],
)
def test_construction_names_the_bad_entry(entries: dict[Any, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        StaticResolver(entries)


ENTRIES = {
    "orders": ["10.0.0.1:50002", "[::1]:50002"],
    "orders.prod": ["10.9.0.1:50002"],
    "billing.prod": ["10.9.0.2:50002"],
}


@pytest.mark.parametrize(
    ("app_id", "namespace", "expected"),
    [
        ("orders", "default", (Address("10.0.0.1", 50002), Address("::1", 50002))),
        ("orders", "prod", (Address("10.9.0.1", 50002),)),
        ("billing", "prod", (Address("10.9.0.2", 50002),)),
    ],
    ids=["bare-key-in-default", "qualified-wins", "qualified-only"],
)
async def test_lookup_answers_in_listed_order(
    app_id: str, namespace: str, expected: tuple[Address, ...]
) -> None:
    resolver: Resolver = StaticResolver(ENTRIES)
    resolution = await resolver.lookup(app_id, namespace)
    assert resolution.addresses == expected
    assert resolution.ttl == STATIC_TTL >= 3600


@pytest.mark.parametrize(
    ("app_id", "namespace"),
    [("billing", "default"), ("orders", "staging"), ("unknown", "default"), ("orders.prod", "")],
    ids=["qualified-key-not-in-default", "bare-key-not-in-other-namespace", "unknown", "dotted"],
)
async def test_lookup_unknown_is_service_not_found(app_id: str, namespace: str) -> None:
    with pytest.raises(ServiceNotFound, match=app_id):
        await StaticResolver(ENTRIES).lookup(app_id, namespace)


async def test_bare_key_follows_a_configured_default_namespace() -> None:
    resolver = StaticResolver({"orders": ["h:1"]}, default_namespace="team")
    assert (await resolver.lookup("orders", "team")).addresses == (Address("h", 1),)
    with pytest.raises(ServiceNotFound):
        await resolver.lookup("orders", "default")


def test_repr_counts_apps() -> None:
    assert repr(StaticResolver(ENTRIES)) == "<StaticResolver apps=3 default_namespace='default'>"
