"""DnsResolver against a real dnsmasq on loopback: records, TTLs, changes and outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from fastproxy.discovery.dns import DnsResolver, parse_nameserver
from fastproxy.discovery.model import (
    Address,
    Resolution,
    ResolverUnavailable,
    ServiceNotFound,
)
from fastproxy.discovery.template import NameTemplate, consul_template, kubernetes_template
from tests.integration.dnsmasq import (
    Dnsmasq,
    DnsmasqFactory,
    SrvRecord,
    dnsmasq_server_fixture,  # noqa: F401  (provides the `dnsmasq_server` fixture)
    free_port,
)

pytestmark = pytest.mark.timeout(20)

TEST_TEMPLATE = NameTemplate("{appid}.test")
PORT = 50001

ResolverFactory = Callable[..., DnsResolver]


@pytest.fixture
async def make_resolver() -> AsyncIterator[ResolverFactory]:
    made: list[DnsResolver] = []

    def make(
        server: Dnsmasq | str, template: NameTemplate = TEST_TEMPLATE, port: Any = PORT, **kw: Any
    ) -> DnsResolver:
        kw.setdefault("nameservers", [server if isinstance(server, str) else server.nameserver])
        kw.setdefault("timeout", 1.0)
        resolver = DnsResolver(template, port, **kw)
        made.append(resolver)
        return resolver

    yield make
    for resolver in made:
        await resolver.close()


def addresses(resolution: Resolution) -> set[tuple[str, int]]:
    return {(a.host, a.port) for a in resolution.addresses}


async def until(
    resolver: DnsResolver, app_id: str, expected: set[tuple[str, int]], within: float
) -> float:
    """Polls until the lookup gives `expected`; returns how long that took."""
    start = time.monotonic()
    while True:
        got = addresses(await resolver.lookup(app_id, "default"))
        if got == expected:
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"still {got}, wanted {expected}"
        await asyncio.sleep(0.05)


# -- A and AAAA -------------------------------------------------------------------


async def test_a_records_get_the_configured_port(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_host("orders.test", "127.0.0.5", "127.0.0.6"))
    resolution = await make_resolver(server).lookup("orders", "default")
    assert addresses(resolution) == {("127.0.0.5", PORT), ("127.0.0.6", PORT)}
    assert len(resolution.addresses) == 2


async def test_dual_stack_name_gives_ipv4_and_ipv6(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_host("orders.test", "127.0.0.5", "fd00::5"))
    resolution = await make_resolver(server).lookup("orders", "default")
    assert addresses(resolution) == {("127.0.0.5", PORT), ("fd00::5", PORT)}
    assert {str(a) for a in resolution.addresses} == {"127.0.0.5:50001", "[fd00::5]:50001"}


async def test_ipv6_only_name_is_found(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_host("orders.test", "fd00::7"))
    resolution = await make_resolver(server).lookup("orders", "default")
    assert resolution.addresses == (Address("fd00::7", PORT),)


async def test_ttl_is_the_smallest_record_ttl(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    def setup(s: Dnsmasq) -> None:
        s.set_host("orders.test", "127.0.0.5", ttl=30)
        s.add_host("orders.test", "fd00::5", ttl=12)
        s.set_host("v4.test", "127.0.0.6", ttl=30)

    server = await dnsmasq_server(setup, local_ttl=40)
    resolver = make_resolver(server)
    resolution = await resolver.lookup("orders", "default")
    assert addresses(resolution) == {("127.0.0.5", PORT), ("fd00::5", PORT)}
    assert resolution.ttl == 12.0
    assert (await resolver.lookup("v4", "default")).ttl == 30.0


async def test_kubernetes_template_resolves_the_dapr_service_name(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(
        lambda s: s.set_host("orders-dapr.default.svc.cluster.local", "127.0.0.21", "127.0.0.22")
    )
    resolver = make_resolver(server, kubernetes_template(), 50002)
    resolution = await resolver.lookup("orders", "default")
    assert addresses(resolution) == {("127.0.0.21", 50002), ("127.0.0.22", 50002)}
    with pytest.raises(ServiceNotFound):
        await resolver.lookup("orders", "other-namespace")


async def test_concurrent_lookups_share_one_resolver(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    def setup(s: Dnsmasq) -> None:
        for i in range(20):
            s.set_host(f"app{i}.test", f"127.0.1.{i + 1}")

    server = await dnsmasq_server(setup)
    resolver = make_resolver(server)
    results = await asyncio.gather(*(resolver.lookup(f"app{i}", "x") for i in range(20)))
    assert [r.addresses for r in results] == [
        (Address(f"127.0.1.{i + 1}", PORT),) for i in range(20)
    ]


# -- SRV --------------------------------------------------------------------------


async def test_srv_gives_hosts_and_ports_from_the_records(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    def setup(s: Dnsmasq) -> None:
        s.set_srv(
            "orders.service.consul",
            SrvRecord("orders-1.node.consul", 7001),
            SrvRecord("orders-2.node.consul", 7002),
        )
        s.set_host("orders-1.node.consul", "127.0.0.11", "fd00::11", ttl=9)
        s.set_host("orders-2.node.consul", "127.0.0.12", ttl=4)

    server = await dnsmasq_server(setup, local_ttl=20)
    resolver = make_resolver(server, consul_template(), None, record="SRV")
    resolution = await resolver.lookup("orders", "")
    assert addresses(resolution) == {
        ("127.0.0.11", 7001),
        ("fd00::11", 7001),
        ("127.0.0.12", 7002),
    }
    assert resolution.ttl == 4.0


async def test_srv_ttl_can_be_the_srv_records_own(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    def setup(s: Dnsmasq) -> None:
        s.set_srv("orders.service.consul", SrvRecord("orders-1.node.consul", 7001))
        s.set_host("orders-1.node.consul", "127.0.0.11", ttl=60)

    server = await dnsmasq_server(setup, local_ttl=5)
    resolver = make_resolver(server, consul_template(), None, record="SRV")
    assert (await resolver.lookup("orders", "")).ttl == 5.0


async def test_srv_service_proto_template_with_ip_target(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(
        lambda s: s.set_srv("_orders._tcp.test", SrvRecord("127.0.0.30", 7100))
    )
    template = NameTemplate("_{appid}._tcp.test")
    resolution = await make_resolver(server, template, None, record="SRV").lookup("orders", "")
    assert resolution.addresses == (Address("127.0.0.30", 7100),)


async def test_srv_uses_the_lowest_priority_that_resolves(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    def setup(s: Dnsmasq) -> None:
        s.set_srv(
            "orders.service.consul",
            SrvRecord("primary.node.consul", 7001, priority=1),
            SrvRecord("backup.node.consul", 7002, priority=2),
        )
        s.set_host("primary.node.consul", "127.0.0.41")
        s.set_host("backup.node.consul", "127.0.0.42")

    server = await dnsmasq_server(setup)
    resolver = make_resolver(server, consul_template(), None, record="SRV")
    assert addresses(await resolver.lookup("orders", "")) == {("127.0.0.41", 7001)}

    # The primary's name disappears: the backup takes over.
    server.remove_host("primary.node.consul")
    await server.apply()
    await until(resolver, "orders", {("127.0.0.42", 7002)}, within=3.0)


async def test_srv_without_a_target_is_not_found(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_srv("orders.service.consul"))
    resolver = make_resolver(server, consul_template(), None, record="SRV")
    with pytest.raises(ServiceNotFound):
        await resolver.lookup("orders", "")


async def test_srv_whose_targets_do_not_exist_is_not_found(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(
        lambda s: s.set_srv("orders.service.consul", SrvRecord("ghost.node.consul", 7001))
    )
    resolver = make_resolver(server, consul_template(), None, record="SRV")
    with pytest.raises(ServiceNotFound, match=r"ghost\.node\.consul"):
        await resolver.lookup("orders", "")


async def test_srv_target_that_cannot_be_looked_up_is_unavailable_not_missing(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    # One target does not exist; the other lies outside dnsmasq's domains, so its
    # queries are refused. Nothing is known about that one, which must not be
    # reported as "no such app".
    def setup(s: Dnsmasq) -> None:
        s.set_srv(
            "orders.service.consul",
            SrvRecord("ghost.node.consul", 7001, weight=10),
            SrvRecord("orders.elsewhere.example", 7002, weight=1),
        )

    server = await dnsmasq_server(setup)
    resolver = make_resolver(server, consul_template(), None, record="SRV")
    with pytest.raises(ResolverUnavailable, match=r"orders\.elsewhere\.example"):
        await resolver.lookup("orders", "")


# -- changes and TTL expiry -------------------------------------------------------------


async def test_changed_address_picked_up_once_the_ttl_expires(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_host("orders.test", "127.0.0.5"), local_ttl=1)
    resolver = make_resolver(server)
    first = await resolver.lookup("orders", "default")
    assert first.addresses == (Address("127.0.0.5", PORT),)
    assert first.ttl == 1.0

    server.set_host("orders.test", "127.0.0.6", "127.0.0.7")
    await server.apply()  # SIGHUP: dnsmasq re-reads its hosts file
    took = await until(
        resolver, "orders", {("127.0.0.6", PORT), ("127.0.0.7", PORT)}, within=first.ttl + 2.0
    )
    assert took <= first.ttl + 1.5


async def test_changed_srv_port_picked_up_once_the_ttl_expires(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    def setup(s: Dnsmasq) -> None:
        s.set_srv("orders.service.consul", SrvRecord("orders-1.node.consul", 7001))
        s.set_host("orders-1.node.consul", "127.0.0.11")

    server = await dnsmasq_server(setup, local_ttl=1)
    resolver = make_resolver(server, consul_template(), None, record="SRV")
    assert addresses(await resolver.lookup("orders", "")) == {("127.0.0.11", 7001)}

    server.set_srv("orders.service.consul", SrvRecord("orders-1.node.consul", 7009))
    await server.apply()  # SRV records live in the config: dnsmasq restarts, same port
    await until(resolver, "orders", {("127.0.0.11", 7009)}, within=3.0)


async def test_removed_name_becomes_not_found(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_host("orders.test", "127.0.0.5"), local_ttl=1)
    resolver = make_resolver(server)
    await resolver.lookup("orders", "default")
    server.remove_host("orders.test")
    await server.apply()
    deadline = time.monotonic() + 3.0
    with pytest.raises(ServiceNotFound):  # polls until the change shows
        while time.monotonic() < deadline:
            await resolver.lookup("orders", "default")
            await asyncio.sleep(0.05)


# -- not found ----------------------------------------------------------------------


async def test_nxdomain_is_service_not_found(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_host("orders.test", "127.0.0.5"))
    with pytest.raises(ServiceNotFound, match=r"nosuchapp\.test"):
        await make_resolver(server).lookup("nosuchapp", "default")


async def test_name_without_address_records_is_service_not_found(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    # The name exists (it has an SRV record) but neither A nor AAAA: NODATA twice.
    server = await dnsmasq_server(
        lambda s: s.set_srv("orders.service.consul", SrvRecord("127.0.0.30", 7100))
    )
    with pytest.raises(ServiceNotFound):
        await make_resolver(server, consul_template()).lookup("orders", "")


async def test_invalid_app_id_is_not_found_without_a_query(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_host("evil.test", "127.0.0.66"))
    resolver = make_resolver(server)
    with pytest.raises(ServiceNotFound, match="app id"):
        await resolver.lookup("x.evil", "default")
    await resolver.lookup("evil", "default")  # a query that does reach the server
    log = server.log_path.read_text()
    assert "query[A] evil.test" in log
    assert "x.evil" not in log


# -- the server unavailable ------------------------------------------------------------


async def test_refused_query_is_resolver_unavailable(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    # dnsmasq has no upstream, so it refuses names outside its local domains.
    server = await dnsmasq_server()
    resolver = make_resolver(server, NameTemplate("{appid}.elsewhere.example"))
    with pytest.raises(ResolverUnavailable, match="refused"):
        await resolver.lookup("orders", "default")


async def test_server_stopped_mid_test_is_resolver_unavailable_then_recovers(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_host("orders.test", "127.0.0.5"), local_ttl=1)
    resolver = make_resolver(server, timeout=1.0)
    assert (await resolver.lookup("orders", "default")).addresses == (Address("127.0.0.5", PORT),)

    await server.stop()
    await asyncio.sleep(1.1)  # let the answer's TTL run out, so the server must be asked
    start = time.monotonic()
    with pytest.raises(ResolverUnavailable):
        await resolver.lookup("orders", "default")
    assert time.monotonic() - start < 1.5

    await server.start()  # same port
    assert (await resolver.lookup("orders", "default")).addresses == (Address("127.0.0.5", PORT),)


async def test_silent_server_is_resolver_unavailable_within_the_timeout(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_host("orders.test", "127.0.0.5"))
    resolver = make_resolver(server, timeout=0.3, tries=1)
    server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(ResolverUnavailable):
            await resolver.lookup("orders", "default")
        elapsed = time.monotonic() - start
    finally:
        server.resume()
    assert 0.2 <= elapsed < 1.0, elapsed
    assert (await resolver.lookup("orders", "default")).addresses == (Address("127.0.0.5", PORT),)


async def test_no_server_listening_is_resolver_unavailable(
    make_resolver: ResolverFactory,
) -> None:
    resolver = make_resolver(f"127.0.0.1:{free_port()}", timeout=0.5)
    start = time.monotonic()
    with pytest.raises(ResolverUnavailable):
        await resolver.lookup("orders", "default")
    assert time.monotonic() - start < 1.5


async def test_next_name_server_answers_when_the_first_is_down(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_host("orders.test", "127.0.0.5"))
    dead = f"127.0.0.1:{free_port()}"
    resolver = make_resolver(server, nameservers=[dead, server.nameserver], timeout=0.5)
    resolution = await resolver.lookup("orders", "default")
    assert resolution.addresses == (Address("127.0.0.5", PORT),)


async def test_closed_resolver_is_unavailable(
    dnsmasq_server: DnsmasqFactory, make_resolver: ResolverFactory
) -> None:
    server = await dnsmasq_server(lambda s: s.set_host("orders.test", "127.0.0.5"))
    resolver = make_resolver(server)
    await resolver.lookup("orders", "default")
    await resolver.close()
    await resolver.close()
    assert "closed" in repr(resolver)
    with pytest.raises(ResolverUnavailable, match="closed"):
        await resolver.lookup("orders", "default")


# -- configuration (no server needed) ---------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param("10.0.0.2", ("10.0.0.2", 53), id="ipv4"),
        pytest.param("10.0.0.2:5353", ("10.0.0.2", 5353), id="ipv4-port"),
        pytest.param(" 127.0.0.1:53 ", ("127.0.0.1", 53), id="spaces"),
        pytest.param("::1", ("::1", 53), id="bare-ipv6"),
        pytest.param("fd00::1:53", ("fd00::1:53", 53), id="bare-ipv6-no-port-taken"),
        pytest.param("[::1]", ("::1", 53), id="bracketed-ipv6"),
        pytest.param("[fd00::1]:5353", ("fd00::1", 5353), id="bracketed-ipv6-port"),
    ],
)
def test_parse_nameserver(entry: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(entry) == expected


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("dns.example:53", id="hostname"),
        pytest.param("10.0.0.2:0", id="port-zero"),
        pytest.param("10.0.0.2:65536", id="port-too-big"),
        pytest.param("10.0.0.2:x", id="port-not-number"),
        pytest.param("10.0.0.2:-1", id="port-negative"),
        pytest.param("[10.0.0.2]:53", id="ipv4-in-brackets"),
        pytest.param("[::1:53", id="unclosed-bracket"),
        pytest.param("[::1]53", id="no-colon-after-bracket"),
        pytest.param("", id="empty"),
    ],
)
def test_parse_nameserver_refuses(entry: str) -> None:
    with pytest.raises(ValueError, match="name server"):
        parse_nameserver(entry)


@pytest.mark.parametrize(
    ("port", "options", "message"),
    [
        pytest.param(None, {"record": "A"}, "port", id="a-without-port"),
        pytest.param(0, {"record": "A"}, "port", id="a-port-zero"),
        pytest.param(3500, {"record": "SRV"}, "SRV records carry the port", id="srv-with-port"),
        pytest.param(3500, {"record": "MX"}, "record type", id="other-record"),
        pytest.param(3500, {"timeout": 0}, "timeout", id="zero-timeout"),
        pytest.param(3500, {"tries": 0}, "tries", id="zero-tries"),
        pytest.param(3500, {"nameservers": ["ns1.example"]}, "name server", id="hostname-ns"),
    ],
)
def test_bad_settings_refused_at_construction(
    port: int | None, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        DnsResolver(TEST_TEMPLATE, port, **options)


def test_repr_shows_mode_template_port_and_servers() -> None:
    resolver = DnsResolver(kubernetes_template(), 50002, nameservers=["10.0.0.2", "[fd00::2]:5353"])
    assert repr(resolver) == (
        "<DnsResolver A '{appid}-dapr.{namespace}.svc.{clusterDomain}' port=50002"
        " servers=10.0.0.2:53,[fd00::2]:5353 open>"
    )
