"""The SQLite registry on real files in tmp_path: registration, freshness, heartbeat, failures.

Rows are stamped by an injected clock so staleness is tested without waiting;
only the heartbeat tests wait, on short intervals and bounded polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import fastproxy
from fastproxy.discovery.model import Address, Resolver, ResolverUnavailable, ServiceNotFound
from fastproxy.discovery.registry import SqliteRegistry, default_registry_path

ORDERS = Address("127.0.0.1", 50002)
BILLING = Address("::1", 50003)
T0 = 1_000_000.0


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


MakeRegistry = Callable[..., SqliteRegistry]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "registry.db")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_registry(db: str, clock: FakeClock) -> AsyncIterator[MakeRegistry]:
    """Registries on the test's file and clock unless told otherwise; all stopped at the end."""
    made: list[SqliteRegistry] = []

    def make(path: str | None = None, **options: Any) -> SqliteRegistry:
        options.setdefault("clock", clock)
        registry = SqliteRegistry(db if path is None else path, **options)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.stop()


def raw(path: str) -> contextlib.closing[sqlite3.Connection]:
    """A connection behind the registry's back, in autocommit mode, closed on exit."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def rows(path: str) -> list[tuple[Any, ...]]:
    """What the file holds."""
    with raw(path) as conn:
        return conn.execute(
            "SELECT app_id, namespace, address, last_update FROM registrations ORDER BY address"
        ).fetchall()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- registration and lookup -------------------------------------------------------


async def test_register_then_lookup(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    await registry.register("orders", "default", ORDERS)
    resolver: Resolver = registry
    resolution = await resolver.lookup("orders", "default")
    assert resolution.addresses == (ORDERS,)
    assert resolution.ttl == 1.0  # a fifth of the default 5 s update interval


async def test_register_writes_before_returning(make_registry: MakeRegistry, db: str) -> None:
    await make_registry().register("billing", "prod", BILLING)
    assert rows(db) == [("billing", "prod", "[::1]:50003", T0)]


async def test_lookup_on_empty_registry_is_service_not_found(make_registry: MakeRegistry) -> None:
    with pytest.raises(ServiceNotFound, match="orders"):
        await make_registry().lookup("orders", "default")


async def test_schema_and_wal_mode(make_registry: MakeRegistry, db: str) -> None:
    await make_registry().register("orders", "default", ORDERS)
    with raw(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(registrations)")]
        indexed = [row[2] for row in conn.execute("PRAGMA index_info(registrations_by_app)")]
    assert columns == ["registration_id", "app_id", "namespace", "address", "last_update"]
    assert indexed == ["app_id", "namespace"]


async def test_two_registries_on_one_file_see_each_other(make_registry: MakeRegistry) -> None:
    orders, billing = make_registry(), make_registry()
    await orders.register("orders", "default", ORDERS)
    await billing.register("billing", "default", BILLING)
    assert (await orders.lookup("billing", "default")).addresses == (BILLING,)
    assert (await billing.lookup("orders", "default")).addresses == (ORDERS,)


async def test_one_app_on_several_sidecars_resolves_to_all(make_registry: MakeRegistry) -> None:
    addresses = [Address("10.0.0.2", 50002), Address("10.0.0.1", 50002), Address("::1", 1)]
    for address in addresses:
        await make_registry().register("orders", "default", address)
    resolution = await make_registry().lookup("orders", "default")
    assert sorted(resolution.addresses, key=str) == sorted(addresses, key=str)


async def test_same_address_twice_resolves_once(make_registry: MakeRegistry) -> None:
    # Worker processes of one sidecar share its port, each with its own row.
    await make_registry().register("orders", "default", ORDERS)
    await make_registry().register("orders", "default", ORDERS)
    assert (await make_registry().lookup("orders", "default")).addresses == (ORDERS,)


async def test_namespaces_are_kept_apart(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    await registry.register("orders", "prod", ORDERS)
    assert (await registry.lookup("orders", "prod")).addresses == (ORDERS,)
    with pytest.raises(ServiceNotFound):
        await registry.lookup("orders", "default")


async def test_register_again_replaces_this_sidecars_row(
    make_registry: MakeRegistry, db: str
) -> None:
    registry = make_registry()
    await registry.register("orders", "default", ORDERS)
    await registry.register("orders", "default", BILLING)
    assert (await registry.lookup("orders", "default")).addresses == (BILLING,)
    assert len(rows(db)) == 1


async def test_malformed_rows_are_skipped(make_registry: MakeRegistry, db: str) -> None:
    registry = make_registry()
    await registry.register("orders", "default", ORDERS)
    with raw(db) as conn:
        conn.execute(
            "INSERT INTO registrations VALUES ('junk', 'orders', 'default', 'no-port', ?)", (T0,)
        )
    assert (await registry.lookup("orders", "default")).addresses == (ORDERS,)


# -- freshness -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "resolves"),
    [(0.0, True), (9.9, True), (10.1, False), (3600.0, False), (-30.0, True)],
    ids=["fresh", "just-within-two-intervals", "just-stale", "long-dead", "clock-stepped-back"],
)
async def test_rows_older_than_two_update_intervals_do_not_resolve(
    make_registry: MakeRegistry, clock: FakeClock, age: float, resolves: bool
) -> None:
    registry = make_registry(update_interval=5.0)
    await registry.register("orders", "default", ORDERS)
    clock.now = T0 + age
    if resolves:
        assert (await registry.lookup("orders", "default")).addresses == (ORDERS,)
    else:
        with pytest.raises(ServiceNotFound):
            await registry.lookup("orders", "default")


async def test_heartbeat_renews_the_row(
    make_registry: MakeRegistry, clock: FakeClock, db: str
) -> None:
    registry = make_registry(update_interval=0.1)
    await registry.register("orders", "default", ORDERS)
    registry.start()
    clock.now = T0 + 500  # without a renewal the row is long stale now

    async def renewed() -> bool:
        return bool(rows(db)[0][3] == T0 + 500)

    await eventually(renewed)
    assert (await make_registry().lookup("orders", "default")).addresses == (ORDERS,)


async def test_heartbeat_puts_back_a_row_that_vanished(
    make_registry: MakeRegistry, db: str
) -> None:
    registry = make_registry(update_interval=0.1)
    await registry.register("orders", "default", ORDERS)
    registry.start()
    with raw(db) as conn:
        conn.execute("DELETE FROM registrations")

    async def back() -> bool:
        return len(rows(db)) == 1

    await eventually(back)


async def test_heartbeat_outlives_a_locked_file(
    make_registry: MakeRegistry, clock: FakeClock, db: str
) -> None:
    registry = make_registry(update_interval=0.1, timeout=0.05)
    await registry.register("orders", "default", ORDERS)
    registry.start()
    with raw(db) as blocker:
        blocker.execute("BEGIN IMMEDIATE")
        clock.now = T0 + 500
        await asyncio.sleep(0.3)  # several beats fail on the lock
        assert rows(db)[0][3] == T0

    async def renewed() -> bool:
        return bool(rows(db)[0][3] == T0 + 500)

    await eventually(renewed)


async def test_start_sweeps_long_dead_rows_only(
    make_registry: MakeRegistry, db: str, clock: FakeClock
) -> None:
    await make_registry().register("orders", "default", ORDERS)  # creates the file
    with raw(db) as conn:
        conn.executemany(
            "INSERT INTO registrations VALUES (?, 'old', 'default', ?, ?)",
            [("dead", "10.0.0.1:1", T0 - 7200), ("stale", "10.0.0.2:1", T0 - 60)],
        )
    make_registry(update_interval=5.0).start()

    async def swept() -> bool:
        return [row[2] for row in rows(db)] == ["10.0.0.2:1", "127.0.0.1:50002"]

    await eventually(swept)


# -- clean shutdown ------------------------------------------------------------------


async def test_stop_removes_the_row(make_registry: MakeRegistry, db: str) -> None:
    orders, other = make_registry(), make_registry()
    await orders.register("orders", "default", ORDERS)
    orders.start()
    assert (await other.lookup("orders", "default")).addresses == (ORDERS,)
    await orders.stop()
    with pytest.raises(ServiceNotFound):
        await other.lookup("orders", "default")
    assert rows(db) == []


async def test_stop_right_after_start_returns(make_registry: MakeRegistry, db: str) -> None:
    # The heartbeat's first sqlite call is then finishing as stop() cancels it:
    # a cancellation lost in that window left stop() waiting on the heartbeat.
    for delay in (0.0, 0.0005, 0.001, 0.002) * 10:
        registry = make_registry()
        await registry.register("orders", "default", ORDERS)
        registry.start()
        await asyncio.sleep(delay)
        async with asyncio.timeout(1.0):
            await registry.stop()
    assert rows(db) == []


async def test_stop_leaves_other_sidecars_rows(make_registry: MakeRegistry) -> None:
    orders, billing = make_registry(), make_registry()
    await orders.register("orders", "default", ORDERS)
    await billing.register("billing", "default", BILLING)
    await orders.stop()
    assert (await make_registry().lookup("billing", "default")).addresses == (BILLING,)


async def test_stopped_registry_refuses_and_stops_again(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    await registry.register("orders", "default", ORDERS)
    registry.start()
    await registry.stop()
    await registry.stop()
    registry.start()  # no effect once closed
    assert "state=closed" in repr(registry)
    with pytest.raises(ResolverUnavailable, match="closed"):
        await registry.lookup("orders", "default")
    with pytest.raises(ResolverUnavailable, match="closed"):
        await registry.register("orders", "default", ORDERS)


@pytest.mark.parametrize(
    ("update_interval", "timeout"),
    [(0.0, 1.0), (-1.0, 1.0), (5.0, 0.0)],
    ids=["zero-interval", "negative-interval", "zero-timeout"],
)
def test_bad_intervals_are_refused(update_interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        SqliteRegistry("r.db", update_interval=update_interval, timeout=timeout)


def test_repr_names_file_state_and_registration() -> None:
    registry = SqliteRegistry("/nonexistent/r.db")
    assert repr(registry) == "<SqliteRegistry '/nonexistent/r.db' state=open registered=->"
    registry.registered = ("orders", "prod", BILLING)
    assert repr(registry).endswith("registered=orders.prod@[::1]:50003>")


# -- failures --------------------------------------------------------------------------


async def test_corrupt_file_is_resolver_unavailable(make_registry: MakeRegistry, db: str) -> None:
    Path(db).write_bytes(b"this is not a database, just bytes\n" * 200)
    registry = make_registry()
    with pytest.raises(ResolverUnavailable, match="not a database"):
        await registry.lookup("orders", "default")
    with pytest.raises(ResolverUnavailable, match="not a database"):
        await registry.register("orders", "default", ORDERS)


async def test_repaired_file_is_used_again(make_registry: MakeRegistry, db: str) -> None:
    Path(db).write_bytes(b"garbage" * 1000)
    registry = make_registry()
    with pytest.raises(ResolverUnavailable):
        await registry.lookup("orders", "default")
    Path(db).unlink()
    await registry.register("orders", "default", ORDERS)
    assert (await registry.lookup("orders", "default")).addresses == (ORDERS,)


@pytest.mark.parametrize(
    "where", ["missing-folder", "a-directory"], ids=["missing-folder", "a-directory"]
)
async def test_unopenable_path_is_resolver_unavailable(
    make_registry: MakeRegistry, tmp_path: Path, where: str
) -> None:
    path = tmp_path / "missing" / "r.db" if where == "missing-folder" else tmp_path
    registry = make_registry(str(path))
    with pytest.raises(ResolverUnavailable, match="unable to open"):
        await registry.lookup("orders", "default")


async def test_write_locked_beyond_busy_timeout_is_unavailable_but_reads_go_on(
    make_registry: MakeRegistry, db: str
) -> None:
    registry = make_registry(timeout=0.1)
    await registry.register("orders", "default", ORDERS)
    with raw(db) as blocker:
        blocker.execute("BEGIN IMMEDIATE")
        blocker.execute("DELETE FROM registrations")  # uncommitted: invisible to readers
        started = time.monotonic()
        with pytest.raises(ResolverUnavailable, match="locked"):
            await registry.register("orders", "default", BILLING)
        assert 0.05 < time.monotonic() - started < 2.0  # waited, for the busy timeout
        assert (await registry.lookup("orders", "default")).addresses == (ORDERS,)
    await registry.register("orders", "default", BILLING)
    assert (await registry.lookup("orders", "default")).addresses == (BILLING,)


async def test_switch_to_wal_waits_out_another_writer(make_registry: MakeRegistry, db: str) -> None:
    # Switching the journal mode does not go through the busy handler: a
    # writer holding the new file fails it at once unless the registry waits.
    registry = make_registry(timeout=2.0)
    with raw(db) as blocker:
        blocker.execute("CREATE TABLE other (x)")  # a file still in rollback mode
        blocker.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.2, blocker.execute, "ROLLBACK")
        started = time.monotonic()
        await registry.register("orders", "default", ORDERS)
        assert time.monotonic() - started > 0.15
    assert (await registry.lookup("orders", "default")).addresses == (ORDERS,)


async def test_deleted_file_is_recreated_not_written_into_the_void(
    make_registry: MakeRegistry, db: str
) -> None:
    registry = make_registry()
    await registry.register("orders", "default", ORDERS)
    for suffix in ("", "-wal", "-shm"):
        Path(db + suffix).unlink(missing_ok=True)
    await registry.register("orders", "default", ORDERS)
    assert (await make_registry().lookup("orders", "default")).addresses == (ORDERS,)


# -- concurrency -------------------------------------------------------------------------


async def test_registries_writing_at_once_on_threads_do_not_fail(
    make_registry: MakeRegistry,
) -> None:
    # Each registry owns its own thread and connection: real concurrent writers.
    registries = [make_registry() for _ in range(3)]

    async def churn(index: int, registry: SqliteRegistry) -> None:
        for n in range(60):
            await registry.register(f"app{index}", "default", Address("10.0.0.1", 1000 + n))
            await registry.lookup(f"app{index}", "default")

    await asyncio.gather(*(churn(i, r) for i, r in enumerate(registries)))
    for index in range(3):
        resolution = await registries[0].lookup(f"app{index}", "default")
        assert resolution.addresses == (Address("10.0.0.1", 1059),)


WRITER = """
import asyncio, sys
from fastproxy.discovery.model import Address, ServiceNotFound
from fastproxy.discovery.registry import SqliteRegistry

async def main(path, name, other):
    registry = SqliteRegistry(path)
    print("ready", flush=True)
    sys.stdin.readline()
    for n in range(150):
        await registry.register(name, "default", Address("127.0.0.1", 20000 + n))
        try:
            await registry.lookup(other, "default")
        except ServiceNotFound:
            pass  # the other process may not have registered yet
    # Exit without stop(): the row stays for the parent to find.

asyncio.run(main(*sys.argv[1:]))
"""


def kill_if_running(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()


def test_processes_writing_at_once_on_a_new_file_do_not_fail(db: str) -> None:
    # They start together on a file that does not exist yet, so opening it,
    # switching it to WAL and creating the schema race as well as the writes.
    root = str(Path(fastproxy.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    names = ["p0", "p1", "p2"]
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", WRITER, db, name, names[index - 1]],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
            for index, name in enumerate(names)
        ]
        for proc in procs:
            stack.callback(kill_if_running, proc)  # runs before Popen's own exit waits
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
    assert sorted((app_id, address) for app_id, _, address, _ in rows(db)) == [
        (name, "127.0.0.1:20149") for name in names
    ]


# -- the default location -------------------------------------------------------------


def test_default_path_under_xdg_state_home(tmp_path: Path) -> None:
    path = default_registry_path({"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": "/nowhere"})
    assert path == str(tmp_path / "state" / "fastproxy" / "registry.db")
    assert stat.S_IMODE(os.stat(Path(path).parent).st_mode) == 0o700


@pytest.mark.parametrize("xdg", [None, "", "relative/state"], ids=["unset", "empty", "relative"])
def test_default_path_falls_back_to_home(tmp_path: Path, xdg: str | None) -> None:
    env = {"HOME": str(tmp_path)} | ({} if xdg is None else {"XDG_STATE_HOME": xdg})
    path = default_registry_path(env)
    assert path == str(tmp_path / ".local" / "state" / "fastproxy" / "registry.db")
    assert stat.S_IMODE(os.stat(Path(path).parent).st_mode) == 0o700


async def test_two_sidecars_find_each_other_with_zero_configuration(tmp_path: Path) -> None:
    path = default_registry_path({"XDG_STATE_HOME": str(tmp_path)})
    orders, billing = SqliteRegistry(path), SqliteRegistry(path)
    try:
        await orders.register("orders", "default", ORDERS)
        await billing.register("billing", "default", BILLING)
        assert (await billing.lookup("orders", "default")).addresses == (ORDERS,)
        assert (await orders.lookup("billing", "default")).addresses == (BILLING,)
    finally:
        await orders.stop()
        await billing.stop()
