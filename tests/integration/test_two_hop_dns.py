"""Sidecar to sidecar with the `dns` (and `kubernetes`) name resolution on a real dnsmasq.

dnsmasq on loopback answers for `b.test` (A records, TTL 1 s) or
`_b._tcp.test` (SRV records carrying the internal port); sidecar A resolves b
through it and calls b's sidecar's internal listener. Records change, the
server stops, names vanish: the tests follow what A's callers see.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from fastproxy import Sidecar
from tests.integration.conftest import Response, SidecarFactory, request
from tests.integration.dnsmasq import (
    Dnsmasq,
    DnsmasqFactory,
    SrvRecord,
    dnsmasq_server_fixture,  # noqa: F401  (provides the `dnsmasq_server` fixture)
)
from tests.integration.test_two_hop import (
    INSTANCE_HEADER,
    EchoFactory,
    Instance,
    assert_invoke_error,
    header_values,
    make_echo_fixture,  # noqa: F401  (provides the `make_echo` fixture)
    write_configuration,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

TEST_TIMEOUT = 30.0
A_NAME = "b.test"
SRV_NAME = "_b._tcp.test"
SRV_TARGET = "b-node.test"


def dns_config(
    folder: Path,
    server: Dnsmasq,
    *,
    port: int | None = None,
    record: str = "A",
    template: str = "{appid}.test",
    component: str = "dns",
    **more: Any,
) -> str:
    settings: dict[str, Any] = {
        "nameservers": [server.nameserver],
        "record": record,
        "timeout": "500ms",
        **more,
    }
    if template:
        settings["template"] = template
    if port is not None:
        settings["port"] = port
    return write_configuration(
        folder, f"{component}-{record}", {"component": component, "configuration": settings}
    )


async def start_b(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, name: str, **settings: Any
) -> tuple[Sidecar, Instance]:
    app = await make_echo(name)
    sidecar = await make_sidecar(app_id="b", app_port=app.port, **settings)
    return sidecar, app


async def call(a: Sidecar, target: str = "/v1.0/invoke/b/method/x", **kw: Any) -> Response:
    return await request(a.http_port, kw.pop("method", "GET"), target, timeout=10.0, **kw)


async def until_answered_by(a: Sidecar, name: str, within: float) -> tuple[float, list[Response]]:
    """Calls b through A until instance `name` answers; every answer must be a 200.

    Returns how long it took and the responses seen on the way.
    """
    started = time.monotonic()
    seen: list[Response] = []
    while True:
        response = await call(a, "/v1.0/invoke/b/method/poll")
        seen.append(response)
        assert response.status == 200, (len(seen), response)
        if response.header(INSTANCE_HEADER) == name:
            return time.monotonic() - started, seen
        assert time.monotonic() - started < within, [r.header(INSTANCE_HEADER) for r in seen]
        await asyncio.sleep(0.05)


# -- found through DNS ------------------------------------------------------------------------


async def test_a_calls_b_found_by_a_record(
    dnsmasq_server: DnsmasqFactory,
    make_sidecar: SidecarFactory,
    make_echo: EchoFactory,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1")
        server = await dnsmasq_server(lambda s: s.set_host(A_NAME, "127.0.0.1"))
        a = await make_sidecar(
            app_id="a", config_file=dns_config(tmp_path, server, port=b.internal_port)
        )
        assert a.context is not None
        assert a.context.name_resolution.component == "dns"
        response = await call(a, "/v1.0/invoke/b/method/orders/1?q=2")
        assert response.status == 200, response
        echo = response.json()
        assert echo["path"] == "/orders/1?q=2"
        assert header_values(echo, "dapr-caller-app-id") == ["a"]
        assert header_values(echo, "dapr-callee-app-id") == ["b"]
        qualified = await call(a, "/v1.0/invoke/b.default/method/q", method="POST", body=b"x")
        assert qualified.status == 200, qualified
        assert qualified.json()["body"] == "x"
        assert app_b.seen == [("GET", "/orders/1?q=2"), ("POST", "/q")]


async def test_a_calls_b_found_by_the_kubernetes_component(
    dnsmasq_server: DnsmasqFactory,
    make_sidecar: SidecarFactory,
    make_echo: EchoFactory,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1")
        server = await dnsmasq_server(
            lambda s: s.set_host("b-dapr.default.svc.cluster.local", "127.0.0.1")
        )
        config = dns_config(
            tmp_path, server, port=b.internal_port, template="", component="kubernetes"
        )
        a = await make_sidecar(app_id="a", config_file=config)
        response = await call(a, "/v1.0/invoke/b/method/k8s")
        assert response.status == 200, response
        assert app_b.seen == [("GET", "/k8s")]
        # Another namespace is another name, which does not exist.
        other = await call(a, "/v1.0/invoke/b.other/method/k8s")
        assert_invoke_error(other, "couldn't find service: b.other")
        assert app_b.seen == [("GET", "/k8s")]


async def test_a_calls_b_found_by_srv_records_carrying_the_internal_port(
    dnsmasq_server: DnsmasqFactory,
    make_sidecar: SidecarFactory,
    make_echo: EchoFactory,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b1, app1 = await start_b(make_sidecar, make_echo, "b1")
        b2, app2 = await start_b(make_sidecar, make_echo, "b2")

        def setup(s: Dnsmasq) -> None:
            s.set_srv(
                SRV_NAME,
                SrvRecord(SRV_TARGET, b1.internal_port),
                SrvRecord(SRV_TARGET, b2.internal_port),
            )
            s.set_host(SRV_TARGET, "127.0.0.1")

        server = await dnsmasq_server(setup)
        config = dns_config(tmp_path, server, record="SRV", template="_{appid}._tcp.test")
        a = await make_sidecar(app_id="a", config_file=config)
        responses = await asyncio.gather(
            *(call(a, f"/v1.0/invoke/b/method/srv{i}?delay=0.2") for i in range(12))
        )
        assert [r.status for r in responses] == [200] * 12, responses
        answered = [r.header(INSTANCE_HEADER) for r in responses]
        assert answered.count("b1") >= 3, answered
        assert answered.count("b2") >= 3, answered
        assert len(app1.seen) + len(app2.seen) == 12


# -- records change ---------------------------------------------------------------------------


async def test_a_record_change_is_picked_up_after_the_ttl(
    dnsmasq_server: DnsmasqFactory,
    make_sidecar: SidecarFactory,
    make_echo: EchoFactory,
    tmp_path: Path,
) -> None:
    """b moves from 127.0.0.1 to 127.0.0.2 (same internal port, as A records carry none)."""
    async with asyncio.timeout(TEST_TIMEOUT):
        b1, app1 = await start_b(make_sidecar, make_echo, "b1")
        port = b1.internal_port
        b2, _ = await start_b(
            make_sidecar,
            make_echo,
            "b2",
            internal_port=port,
            internal_listen_addresses=("127.0.0.2",),
        )
        assert b2.internal_port == port
        server = await dnsmasq_server(lambda s: s.set_host(A_NAME, "127.0.0.1"))
        a = await make_sidecar(app_id="a", config_file=dns_config(tmp_path, server, port=port))
        for i in range(3):
            response = await call(a, f"/v1.0/invoke/b/method/before{i}")
            assert response.status == 200, response
            assert response.header(INSTANCE_HEADER) == "b1", response
        server.set_host(A_NAME, "127.0.0.2")
        await server.apply()
        took, _ = await until_answered_by(a, "b2", within=6.0)
        # TTL 1 s (also A's minTTL); allow for the refresh and c-ares's own countdown.
        assert took < 4.0, took
        seen_by_b1 = len(app1.seen)
        for i in range(5):
            response = await call(a, f"/v1.0/invoke/b/method/after{i}")
            assert response.status == 200, response
            assert response.header(INSTANCE_HEADER) == "b2", response
        assert len(app1.seen) == seen_by_b1
        # b1 can go now: nothing depends on it any more.
        await b1.stop(grace=1.0)
        assert (await call(a, "/v1.0/invoke/b/method/last")).status == 200


async def test_srv_record_change_to_another_port_is_picked_up_after_the_ttl(
    dnsmasq_server: DnsmasqFactory,
    make_sidecar: SidecarFactory,
    make_echo: EchoFactory,
    tmp_path: Path,
) -> None:
    """b moves to another sidecar on another port; dnsmasq restarts to load the new SRV."""
    async with asyncio.timeout(TEST_TIMEOUT):
        b1, app1 = await start_b(make_sidecar, make_echo, "b1")
        b2, _ = await start_b(make_sidecar, make_echo, "b2")

        def setup(s: Dnsmasq) -> None:
            s.set_srv(SRV_NAME, SrvRecord(SRV_TARGET, b1.internal_port))
            s.set_host(SRV_TARGET, "127.0.0.1")

        server = await dnsmasq_server(setup)
        config = dns_config(tmp_path, server, record="SRV", template="_{appid}._tcp.test")
        a = await make_sidecar(app_id="a", config_file=config)
        response = await call(a)
        assert response.status == 200, response
        assert response.header(INSTANCE_HEADER) == "b1"
        server.set_srv(SRV_NAME, SrvRecord(SRV_TARGET, b2.internal_port))
        await server.apply()
        took, _ = await until_answered_by(a, "b2", within=6.0)
        assert took < 4.0, took
        seen_by_b1 = len(app1.seen)
        for _ in range(5):
            response = await call(a)
            assert response.status == 200, response
            assert response.header(INSTANCE_HEADER) == "b2", response
        assert len(app1.seen) == seen_by_b1


async def test_removed_record_turns_into_couldnt_find_service_after_the_ttl(
    dnsmasq_server: DnsmasqFactory,
    make_sidecar: SidecarFactory,
    make_echo: EchoFactory,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, _ = await start_b(make_sidecar, make_echo, "b1")
        server = await dnsmasq_server(lambda s: s.set_host(A_NAME, "127.0.0.1"))
        config = dns_config(tmp_path, server, port=b.internal_port)
        a = await make_sidecar(app_id="a", config_file=config)
        assert (await call(a)).status == 200
        server.remove_host(A_NAME)
        await server.apply()
        started = time.monotonic()
        while True:
            response = await call(a)
            if response.status != 200:
                break
            assert time.monotonic() - started < 6.0, "b still resolves"
            await asyncio.sleep(0.05)
        assert_invoke_error(response, "couldn't find service: b")
        assert time.monotonic() - started < 4.0


# -- the name server goes away ------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["stopped", "paused"])
async def test_calls_keep_working_from_the_cache_while_dns_is_down(
    dnsmasq_server: DnsmasqFactory,
    make_sidecar: SidecarFactory,
    make_echo: EchoFactory,
    tmp_path: Path,
    outage: str,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1")
        server = await dnsmasq_server(lambda s: s.set_host(A_NAME, "127.0.0.1"))
        a = await make_sidecar(
            app_id="a", config_file=dns_config(tmp_path, server, port=b.internal_port)
        )
        assert (await call(a)).status == 200
        if outage == "stopped":
            await server.stop()
        else:
            server.pause()
        # Well past the 1 s TTL, several times over.
        started = time.monotonic()
        count = 0
        while time.monotonic() - started < 4.0:
            before = time.monotonic()
            response = await call(a, f"/v1.0/invoke/b/method/down{count}")
            assert response.status == 200, (count, response)
            # At most one lookup's time: no caller waits for a down server twice.
            assert time.monotonic() - before < 2.0
            count += 1
            await asyncio.sleep(0.05)
        assert a.context is not None
        stats = a.context.resolver_cache.stats
        assert stats.errors >= 1, stats
        assert stats.stale_served >= 1, stats
        assert len(app_b.seen) == count + 1
        # The server comes back; A goes on, and learns of changes again.
        if outage == "stopped":
            await server.start()  # same port, same records
        else:
            server.resume()
        errors = stats.errors
        await asyncio.sleep(2.5)
        assert (await call(a)).status == 200
        assert stats.errors == errors, stats


# -- not found ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app_id", "missing"),
    [
        pytest.param("nobody", "nobody", id="nxdomain"),
        pytest.param("nobody.default", "nobody.default", id="nxdomain-qualified"),
        pytest.param("b_x", "b_x", id="not-a-dns-label"),
    ],
)
async def test_unknown_name_is_500_couldnt_find_service(
    dnsmasq_server: DnsmasqFactory,
    make_sidecar: SidecarFactory,
    make_echo: EchoFactory,
    tmp_path: Path,
    app_id: str,
    missing: str,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        b, app_b = await start_b(make_sidecar, make_echo, "b1")
        server = await dnsmasq_server(lambda s: s.set_host(A_NAME, "127.0.0.1"))
        a = await make_sidecar(
            app_id="a", config_file=dns_config(tmp_path, server, port=b.internal_port)
        )
        for _ in range(2):
            started = time.monotonic()
            response = await call(a, f"/v1.0/invoke/{app_id}/method/x")
            assert time.monotonic() - started < 1.5
            body = assert_invoke_error(response, f"couldn't find service: {missing}")
            assert body["message"].startswith(f"failed to invoke, id: {missing}, err: "), body
        assert app_b.seen == []
        # b itself is still found.
        assert (await call(a)).status == 200
