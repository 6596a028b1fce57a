"""Pool accounting and Endpoint naming, with an injected loop whose dials the test controls."""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from fastproxy.upstream.connection import ConnectionState, UpstreamConnection
from fastproxy.upstream.endpoint import Endpoint, endpoint_from_url
from fastproxy.upstream.pool import Pool, PoolLimits
from fastproxy.wire import Clock

ENDPOINT = Endpoint("127.0.0.1", 8080)


class Transport:
    """Just enough of a transport for an UpstreamConnection."""

    def __init__(self) -> None:
        self.aborted = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default  # plain TCP: no peer certificate

    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


class Dial:
    def __init__(self, host: str, port: int, options: dict[str, Any]) -> None:
        self.host = host
        self.port = port
        self.options = options
        self.outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.conn: UpstreamConnection | None = None

    def succeed(self) -> None:
        self.outcome.set_result(None)

    def fail(self, exc: BaseException) -> None:
        self.outcome.set_exception(exc)


class FakeLoop:
    """The loop a pool dials with: each dial waits until the test settles it."""

    def __init__(self) -> None:
        self.dials: list[Dial] = []

    def create_task(self, coro: Any) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro)

    async def create_connection(
        self, factory: Callable[[], UpstreamConnection], host: str, port: int, **options: Any
    ) -> tuple[Transport, UpstreamConnection]:
        dial = Dial(host, port, options)
        self.dials.append(dial)
        await dial.outcome
        conn = factory()
        transport = Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        dial.conn = conn
        return transport, conn


class Waiter:
    def __init__(self) -> None:
        self.attached: list[UpstreamConnection] = []
        self.failures: list[str] = []

    def attach(self, conn: UpstreamConnection) -> None:
        self.attached.append(conn)

    def connect_failed(self, reason: str) -> None:
        self.failures.append(reason)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def make_pool(**limits: Any) -> tuple[Pool, FakeLoop, Clock]:
    loop = FakeLoop()
    clock = Clock()
    clock.now = 0.0
    pool = Pool(ENDPOINT, PoolLimits(**limits), clock, loop=loop)  # type: ignore[arg-type]
    return pool, loop, clock


def open_conn(pool: Pool) -> UpstreamConnection:
    """A connection the pool counts as open, not yet released."""
    conn = UpstreamConnection(pool)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    pool.open_count += 1
    return conn


def idle_conn(pool: Pool) -> UpstreamConnection:
    conn = open_conn(pool)
    pool.release(conn)
    return conn


def aborted(conn: UpstreamConnection) -> bool:
    transport = conn.transport
    assert isinstance(transport, Transport)
    return transport.aborted


# -- acquire ----------------------------------------------------------------------


def test_acquire_returns_idle_connections_last_in_first_out() -> None:
    pool, loop, _ = make_pool()
    first, second = idle_conn(pool), idle_conn(pool)
    assert pool.acquire(Waiter()) is second
    assert pool.acquire(Waiter()) is first
    assert pool.idle_count == 0
    assert loop.dials == []


def test_acquire_skips_closed_idle_connections() -> None:
    pool, loop, _ = make_pool()
    live, dead = idle_conn(pool), idle_conn(pool)
    dead.close()
    assert pool.acquire(Waiter()) is live
    assert pool.idle_count == 0
    assert loop.dials == []


async def test_acquire_without_idle_connection_dials_and_attaches_later() -> None:
    pool, loop, _ = make_pool()
    waiter = Waiter()
    assert pool.acquire(waiter) is None
    assert pool.open_count == 1
    await settle()
    (dial,) = loop.dials
    assert (dial.host, dial.port) == ("127.0.0.1", 8080)
    assert dial.options == {"ssl": None, "server_hostname": None}
    assert waiter.attached == []
    dial.succeed()
    await settle()
    assert waiter.attached == [dial.conn]
    assert dial.conn is not None and dial.conn.is_idle
    assert pool.open_count == 1


async def test_acquire_fresh_dials_even_with_idle_connection() -> None:
    pool, loop, _ = make_pool()
    conn = idle_conn(pool)
    assert pool.acquire(Waiter(), fresh=True) is None
    await settle()
    assert len(loop.dials) == 1
    assert pool.idle_count == 1
    assert pool.acquire(Waiter()) is conn
    pool.close()


async def test_connection_limit_queues_waiters_in_arrival_order() -> None:
    pool, loop, _ = make_pool(max_connections=1)
    first, second, third = Waiter(), Waiter(), Waiter()
    assert pool.acquire(first) is None
    assert pool.acquire(second) is None
    assert pool.acquire(third) is None
    await settle()
    assert len(loop.dials) == 1
    assert pool.open_count == 1
    assert repr(pool) == "<Pool http://127.0.0.1:8080 open=1 idle=0 waiting=2>"

    loop.dials[0].succeed()
    await settle()
    (conn,) = first.attached
    pool.release(conn)
    assert second.attached == [conn]
    assert third.attached == []
    pool.release(conn)
    assert third.attached == [conn]
    assert pool.idle_count == 0
    assert len(loop.dials) == 1


def test_forgotten_waiter_is_not_served() -> None:
    pool, _, _ = make_pool(max_connections=1)
    conn = open_conn(pool)
    gone, kept = Waiter(), Waiter()
    pool.acquire(gone)
    pool.acquire(kept)
    pool.forget(gone)
    pool.forget(gone)  # twice is harmless
    pool.release(conn)
    assert gone.attached == []
    assert kept.attached == [conn]


# -- dialing outcomes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        pytest.param(
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            "dial tcp 127.0.0.1:8080: Connection refused",
            id="refused",
        ),
        pytest.param(OSError("no route"), "dial tcp 127.0.0.1:8080: no route", id="no-strerror"),
        pytest.param(OSError(), "dial tcp 127.0.0.1:8080: OSError", id="no-detail"),
        pytest.param(
            ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] verify failed"),
            "dial tcp 127.0.0.1:8080: [SSL: CERTIFICATE_VERIFY_FAILED] verify failed",
            id="tls",
        ),
    ],
)
async def test_failed_dial_tells_waiter_and_frees_its_slot(
    error: BaseException, reason: str
) -> None:
    pool, loop, _ = make_pool()
    waiter = Waiter()
    pool.acquire(waiter)
    await settle()
    loop.dials[0].fail(error)
    await settle()
    assert waiter.failures == [reason]
    assert waiter.attached == []
    assert pool.open_count == 0


async def test_dial_past_connect_timeout_is_reported_as_io_timeout() -> None:
    pool, _, _ = make_pool(connect_timeout=0)
    waiter = Waiter()
    pool.acquire(waiter)
    await settle()
    assert waiter.failures == ["dial tcp 127.0.0.1:8080: i/o timeout"]
    assert pool.open_count == 0


async def test_close_cancels_dials_in_flight() -> None:
    pool, loop, _ = make_pool()
    waiter = Waiter()
    pool.acquire(waiter)
    await settle()
    pool.close()
    await settle()
    assert loop.dials[0].outcome.cancelled()
    assert pool.open_count == 0
    assert waiter.attached == []


# -- release --------------------------------------------------------------------------


def test_release_puts_connection_back_with_its_idle_time() -> None:
    pool, _, clock = make_pool()
    clock.now = 42.0
    conn = open_conn(pool)
    pool.release(conn)
    assert pool.idle_count == 1
    assert conn.idle_since == 42.0
    assert pool.acquire(Waiter()) is conn


def test_release_hands_connection_to_waiter_first() -> None:
    pool, loop, _ = make_pool(max_connections=1)
    conn = open_conn(pool)
    waiter = Waiter()
    assert pool.acquire(waiter) is None
    pool.release(conn)
    assert waiter.attached == [conn]
    assert pool.idle_count == 0
    assert loop.dials == []


@pytest.mark.parametrize(
    "state",
    [ConnectionState.ACTIVE, ConnectionState.CLOSED, ConnectionState.CONNECTING],
    ids=lambda state: state.value,
)
def test_release_ignores_connection_that_is_not_idle(state: ConnectionState) -> None:
    pool, _, _ = make_pool(max_connections=1)
    conn = open_conn(pool)
    waiter = Waiter()
    pool.acquire(waiter)
    conn.state = state
    pool.release(conn)
    assert waiter.attached == []
    assert pool.idle_count == 0


def test_release_beyond_max_idle_closes_connection() -> None:
    pool, _, _ = make_pool(max_idle=1)
    kept = idle_conn(pool)
    extra = idle_conn(pool)
    assert pool.idle_count == 1
    assert extra.state is ConnectionState.CLOSED
    assert aborted(extra)
    assert not aborted(kept)


def test_release_into_closed_pool_closes_connection() -> None:
    pool, _, _ = make_pool()
    conn = open_conn(pool)
    pool.close()
    pool.release(conn)
    assert pool.idle_count == 0
    assert aborted(conn)


def test_close_closes_idle_connections() -> None:
    pool, _, _ = make_pool()
    conns = [idle_conn(pool), idle_conn(pool)]
    pool.close()
    assert pool.closed
    assert pool.idle_count == 0
    assert all(aborted(conn) for conn in conns)


# -- discard --------------------------------------------------------------------------


def test_discard_of_idle_connection_forgets_it() -> None:
    pool, _, _ = make_pool()
    lost, kept = idle_conn(pool), idle_conn(pool)
    lost.connection_lost(None)
    assert pool.open_count == 1
    assert pool.idle_count == 1
    assert pool.acquire(Waiter()) is kept


def test_discard_of_active_connection_decrements_open_count() -> None:
    pool, _, _ = make_pool()
    conn = open_conn(pool)
    conn.state = ConnectionState.ACTIVE
    conn.connection_lost(None)
    assert pool.open_count == 0
    assert pool.idle_count == 0


async def test_discard_dials_for_a_waiter() -> None:
    pool, loop, _ = make_pool(max_connections=1)
    conn = open_conn(pool)
    waiter = Waiter()
    pool.acquire(waiter)
    await settle()
    assert loop.dials == []
    conn.connection_lost(None)
    assert pool.open_count == 1
    await settle()
    (dial,) = loop.dials
    dial.succeed()
    await settle()
    assert waiter.attached == [dial.conn]


async def test_discard_in_closed_pool_dials_for_no_waiter() -> None:
    pool, loop, _ = make_pool(max_connections=1)
    conn = open_conn(pool)
    pool.acquire(Waiter())
    pool.close()
    conn.connection_lost(None)
    await settle()
    assert pool.open_count == 0
    assert loop.dials == []


# -- sweep --------------------------------------------------------------------------

# idle_timeout is 30; connections went idle at 100 and 120.
SWEEPS = [
    pytest.param(125.0, [], id="both-fresh"),
    pytest.param(130.0, [], id="exactly-at-timeout-kept"),
    pytest.param(130.5, ["old"], id="old-expired"),
    pytest.param(151.0, ["old", "new"], id="both-expired"),
]


@pytest.mark.parametrize(("now", "closed"), SWEEPS)
def test_sweep_closes_connections_idle_past_timeout(now: float, closed: list[str]) -> None:
    pool, _, clock = make_pool(idle_timeout=30.0)
    clock.now = 100.0
    old = idle_conn(pool)
    clock.now = 120.0
    new = idle_conn(pool)
    pool.sweep(now)
    conns = {"old": old, "new": new}
    assert sorted(name for name, conn in conns.items() if aborted(conn)) == sorted(closed)
    assert all(
        conn.state is ConnectionState.CLOSED for name, conn in conns.items() if name in closed
    )


def test_swept_connection_leaves_idle_list_once_lost() -> None:
    pool, _, clock = make_pool(idle_timeout=30.0)
    clock.now = 100.0
    old = idle_conn(pool)
    clock.now = 120.0
    idle_conn(pool)
    pool.sweep(140.0)
    old.connection_lost(None)  # what the transport reports after the abort
    assert pool.open_count == 1
    assert pool.idle_count == 1
    assert repr(pool) == "<Pool http://127.0.0.1:8080 open=1 idle=1 waiting=0>"


def test_swept_connections_do_not_count_against_max_idle() -> None:
    pool, _, clock = make_pool(idle_timeout=30.0, max_idle=2)
    clock.now = 0.0
    swept = idle_conn(pool)
    clock.now = 20.0
    reused = idle_conn(pool)
    pool.sweep(40.0)
    swept.connection_lost(None)
    assert pool.acquire(Waiter()) is reused
    dialed = open_conn(pool)
    pool.release(reused)
    pool.release(dialed)
    # Two live connections, max_idle two: both stay.
    assert reused.is_idle
    assert dialed.is_idle


# -- naming --------------------------------------------------------------------------


def test_pool_repr_counts_open_idle_and_waiting() -> None:
    pool, _, _ = make_pool(max_connections=2)
    idle_conn(pool)
    open_conn(pool)
    pool.acquire(Waiter(), fresh=True)
    assert repr(pool) == "<Pool http://127.0.0.1:8080 open=2 idle=1 waiting=1>"


TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

ENDPOINTS = [
    pytest.param(
        Endpoint("127.0.0.1", 8080), "http://127.0.0.1:8080", b"Host: 127.0.0.1:8080\r\n", id="ipv4"
    ),
    pytest.param(Endpoint("::1", 8080), "http://[::1]:8080", b"Host: [::1]:8080\r\n", id="ipv6"),
    pytest.param(
        Endpoint("::1", 80, port_in_host=False),
        "http://[::1]:80",
        b"Host: [::1]\r\n",
        id="ipv6-default-port",
    ),
    pytest.param(
        Endpoint("10.0.0.1", 443, TLS, "api.example.com", port_in_host=False),
        "https://10.0.0.1:443",
        b"Host: api.example.com\r\n",
        id="tls-server-name-default-port",
    ),
    pytest.param(
        Endpoint("10.0.0.1", 8443, TLS, "api.example.com"),
        "https://10.0.0.1:8443",
        b"Host: api.example.com:8443\r\n",
        id="tls-server-name-explicit-port",
    ),
    pytest.param(
        Endpoint("b\u00fccher.example", 80, port_in_host=False),
        "http://b\u00fccher.example:80",
        b"Host: xn--bcher-kva.example\r\n",
        id="idna-host",
    ),
    pytest.param(
        Endpoint("127.0.0.1", 9000, host_override="svc.internal"),
        "http://127.0.0.1:9000",
        b"Host: svc.internal\r\n",
        id="host-override",
    ),
    pytest.param(
        endpoint_from_url("http://example.com/api", None),
        "http://example.com:80",
        b"Host: example.com\r\n",
        id="url-http-default-port",
    ),
    pytest.param(
        endpoint_from_url("http://example.com:80/api", None),
        "http://example.com:80",
        b"Host: example.com:80\r\n",
        id="url-http-explicit-default-port",
    ),
    pytest.param(
        endpoint_from_url("http://[::1]:8080", None),
        "http://[::1]:8080",
        b"Host: [::1]:8080\r\n",
        id="url-ipv6",
    ),
]


@pytest.mark.parametrize(("endpoint", "name", "host_header"), ENDPOINTS)
def test_endpoint_name_and_host_header(endpoint: Endpoint, name: str, host_header: bytes) -> None:
    assert endpoint.name == name
    assert endpoint.host_header == host_header


def test_https_url_endpoint_uses_default_port_443() -> None:
    endpoint = endpoint_from_url("https://example.com", None)
    assert endpoint.port == 443
    assert endpoint.tls is not None
    assert endpoint.name == "https://example.com:443"
    assert endpoint.host_header == b"Host: example.com\r\n"


def test_pool_request_line_tail_carries_host() -> None:
    pool, _, _ = make_pool()
    assert pool.line_tail == b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    assert pool.name == "http://127.0.0.1:8080"
