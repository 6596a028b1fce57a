"""Name resolution chosen from a Configuration's spec: components, settings, mistakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastproxy.config.errors import ConfigError
from fastproxy.discovery.dns import DnsResolver
from fastproxy.discovery.factory import build_name_resolution
from fastproxy.discovery.model import Address, ServiceNotFound
from fastproxy.discovery.registry import SqliteRegistry
from fastproxy.discovery.static import StaticResolver


def spec(component: str | None = None, **configuration: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"configuration": configuration}
    if component is not None:
        section["component"] = component
    return {"nameResolution": section}


def test_nothing_configured_means_the_sqlite_registry_in_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    resolution = build_name_resolution({}, "default", 50002)
    assert resolution.component == "sqlite"
    assert isinstance(resolution.resolver, SqliteRegistry)
    assert resolution.registry is resolution.resolver
    assert resolution.registry.path == str(tmp_path / "fastproxy" / "registry.db")
    assert resolution.load_balancing == "leastoutstanding"


def test_sqlite_connection_string_and_intervals(tmp_path: Path) -> None:
    path = tmp_path / "nr.db"
    resolution = build_name_resolution(
        spec("sqlite", connectionString=str(path), updateInterval="2s", timeout="500ms"),
        "default",
        50002,
    )
    assert isinstance(resolution.registry, SqliteRegistry)
    assert resolution.registry.path == str(path)
    assert resolution.registry.update_interval == 2.0
    assert resolution.registry.timeout == 0.5


async def test_static_component_answers_from_its_table() -> None:
    resolution = build_name_resolution(
        spec("static", apps={"b": ["127.0.0.1:7001"], "c.prod": ["[::1]:7002"]}), "default", 1
    )
    assert isinstance(resolution.resolver, StaticResolver)
    assert resolution.registry is None
    found = await resolution.resolver.lookup("b", "default")
    assert found.addresses == (Address("127.0.0.1", 7001),)
    assert (await resolution.resolver.lookup("c", "prod")).addresses == (Address("::1", 7002),)
    with pytest.raises(ServiceNotFound):
        await resolution.resolver.lookup("c", "default")


@pytest.mark.parametrize(
    ("component", "configuration", "record", "port", "name"),
    [
        pytest.param(
            "kubernetes", {}, "A", 50002, "orders-dapr.shop.svc.cluster.local", id="kubernetes"
        ),
        pytest.param(
            "kubernetes",
            {"clusterDomain": "corp.example"},
            "A",
            50002,
            "orders-dapr.shop.svc.corp.example",
            id="kubernetes-domain",
        ),
        pytest.param(
            "dns",
            {"template": "{appid}.svc.test", "port": 7000},
            "A",
            7000,
            "orders.svc.test",
            id="dns-a",
        ),
        pytest.param(
            "dns",
            {"template": "_{appid}._tcp.service.consul", "record": "SRV"},
            "SRV",
            None,
            "_orders._tcp.service.consul",
            id="dns-srv",
        ),
    ],
)
def test_dns_components_render_their_names(
    component: str, configuration: dict[str, Any], record: str, port: int | None, name: str
) -> None:
    resolution = build_name_resolution(spec(component, **configuration), "shop", 50002)
    resolver = resolution.resolver
    assert isinstance(resolver, DnsResolver)
    assert resolver.record == record
    assert resolver.port == port
    assert resolver.template.render("orders", "shop") == name


def test_nameservers_and_balancing_and_ttls_are_read() -> None:
    resolution = build_name_resolution(
        spec(
            "dns",
            template="{appid}.test",
            port=1,
            nameservers=["127.0.0.1:5353"],
            loadBalancing="RoundRobin",
            minTTL="2s",
            maxTTL=60,
        ),
        "default",
        1,
    )
    assert isinstance(resolution.resolver, DnsResolver)
    assert resolution.resolver.nameservers == (("127.0.0.1", 5353),)
    assert resolution.load_balancing == "roundrobin"
    assert (resolution.min_ttl, resolution.max_ttl) == (2.0, 60.0)


@pytest.mark.parametrize(
    ("configuration", "fragment"),
    [
        pytest.param(spec("mdns"), "'mdns' is not supported", id="unknown-component"),
        pytest.param(spec("dns"), "template is required", id="dns-without-template"),
        pytest.param(spec("dns", template="{appid}.x", port=0), "port", id="dns-bad-port"),
        pytest.param(spec("dns", template="{region}.x"), "region", id="bad-placeholder"),
        pytest.param(
            spec("dns", template="{appid}.x", nameservers="127.0.0.1"),
            "nameservers",
            id="nameservers-not-a-list",
        ),
        pytest.param(spec("static", apps={"b": []}), "'b'", id="static-empty-list"),
        pytest.param(spec("static", apps=["b"]), "apps must be a mapping", id="static-not-map"),
        pytest.param(spec(loadBalancing="random"), "'random'", id="unknown-balancing"),
        pytest.param(spec(minTTL="5s", maxTTL="1s"), "minTTL is above maxTTL", id="ttl-order"),
        pytest.param(spec(minTTL="soon"), "minTTL", id="ttl-not-duration"),
        pytest.param(spec(minTTL=0), "minTTL must be positive", id="ttl-zero"),
        pytest.param({"nameResolution": ["sqlite"]}, "must be a mapping", id="section-not-map"),
    ],
)
def test_mistakes_fail_start_up_naming_the_setting(
    configuration: dict[str, Any], fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match=None) as caught:
        build_name_resolution(configuration, "default", 50002)
    assert fragment in str(caught.value)
