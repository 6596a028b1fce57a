"""The `sqlite` resolver: sidecars on one machine find each other through a shared file.

Each sidecar keeps a row `{app id, namespace, host:internal port}` fresh on a
heartbeat and deletes it on clean shutdown; a lookup reads the fresh rows.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from fastproxy.discovery.model import Address, Resolution, ResolverUnavailable, ServiceNotFound
from fastproxy.discovery.static import parse_address

log = logging.getLogger("fastproxy.discovery")

T = TypeVar("T")

# Rows this old belong to sidecars that died without deregistering; they no
# longer resolve after 2 x update_interval, and are deleted on start.
CLEANUP_HORIZON = 3600.0

# One statement each, run in autocommit mode: every write is its own short
# transaction, so no lock is held across an await or between statements.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS registrations ("
    " registration_id TEXT PRIMARY KEY,"
    " app_id TEXT NOT NULL,"
    " namespace TEXT NOT NULL,"
    " address TEXT NOT NULL,"
    " last_update REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS registrations_by_app ON registrations (app_id, namespace)",
)
_UPSERT = (
    "INSERT OR REPLACE INTO registrations"
    " (registration_id, app_id, namespace, address, last_update) VALUES (?, ?, ?, ?, ?)"
)
_RENEW = "UPDATE registrations SET last_update = ? WHERE registration_id = ?"
_DELETE = "DELETE FROM registrations WHERE registration_id = ?"
_SWEEP = "DELETE FROM registrations WHERE last_update < ?"
_SELECT = (
    "SELECT DISTINCT address FROM registrations"
    " WHERE app_id = ? AND namespace = ? AND last_update >= ? ORDER BY address"
)


def default_registry_path(env: Mapping[str, str] | None = None) -> str:
    """The per-user registry file: `$XDG_STATE_HOME/fastproxy/registry.db`.

    Falls back to `~/.local/state` when XDG_STATE_HOME is unset or relative
    (the XDG spec says to ignore relative values). Creates the folder, 0700:
    only this user's sidecars should be able to register or read addresses.
    """
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):
        home = env.get("HOME") or str(Path.home())
        state = os.path.join(home, ".local", "state")
    folder = Path(state) / "fastproxy"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return str(folder / "registry.db")


class RegistryState(enum.Enum):
    OPEN = "open"  # lookups and writes work; no heartbeat
    RUNNING = "running"  # the heartbeat keeps this sidecar's row fresh
    CLOSED = "closed"  # row deleted, connection closed


class SqliteRegistry:
    """One sidecar's handle on the shared registry file.

    All sqlite work happens on one thread owned by the registry, holding the
    one connection: the loop never blocks on the file, and the writes of this
    sidecar happen in the order they were asked for (a heartbeat queued
    before `stop` cannot resurrect the row `stop` deletes). Between processes,
    WAL lets readers go on while a writer commits, and the busy timeout
    (`timeout`) bounds how long a write waits for another sidecar's.

    Rows count as alive for 2 x `update_interval`; the heartbeat renews every
    `update_interval / 2`, so a row survives three missed heartbeats. `clock`
    (epoch seconds) stamps rows and judges their age: sidecars sharing a file
    share a machine, hence a wall clock.
    """

    def __init__(
        self,
        path: str,
        *,
        update_interval: float = 5.0,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if update_interval <= 0 or timeout <= 0:
            raise ValueError("update_interval and timeout must be positive")
        self.path = path
        self.update_interval = update_interval
        self.timeout = timeout
        self.max_age = 2 * update_interval
        # How long a caller may reuse an answer: a new sidecar becomes visible
        # and a stopped one disappears within this, well inside max_age.
        self.ttl = update_interval / 5
        self.clock = clock
        self.registration_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.registered: tuple[str, str, Address] | None = None
        self.state = RegistryState.OPEN
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastproxy-registry")
        # Touched only on the executor thread: the connection and the identity
        # (device, inode) of the file it was opened on.
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        if self.registered is None:
            who = "-"
        else:
            app_id, namespace, address = self.registered
            who = f"{app_id}.{namespace}@{address}"
        return f"<SqliteRegistry {self.path!r} state={self.state.value} registered={who}>"

    # -- the Resolver protocol ----------------------------------------------------

    async def lookup(self, app_id: str, namespace: str) -> Resolution:
        """The addresses of `app_id` whose rows are fresh, in a stable order."""
        if self.state is RegistryState.CLOSED:
            raise ResolverUnavailable(f"registry {self.path}: closed")
        oldest = self.clock() - self.max_age
        rows = await self._run(self._select, app_id, namespace, oldest)
        addresses: list[Address] = []
        for text in rows:
            try:
                addresses.append(parse_address(text))
            except ValueError:
                log.debug("registry %s: skipping malformed address %r", self.path, text)
        if not addresses:
            raise ServiceNotFound(f"app {app_id!r} in namespace {namespace!r} is not registered")
        return Resolution(tuple(addresses), self.ttl)

    # -- this sidecar's registration ----------------------------------------------

    async def register(self, app_id: str, namespace: str, address: Address) -> None:
        """Write (or overwrite) this sidecar's row; returns once it is committed.

        If the write fails the registration is still remembered, so a running
        heartbeat keeps trying to make it.
        """
        if self.state is RegistryState.CLOSED:
            raise ResolverUnavailable(f"registry {self.path}: closed")
        self.registered = (app_id, namespace, address)
        await self._run(self._upsert, self.registered, self.clock())

    def start(self) -> None:
        """Sweep long-dead rows, then keep this sidecar's row fresh. Needs a running loop."""
        if self.state is not RegistryState.OPEN:
            return
        self.state = RegistryState.RUNNING
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._beat(), name=f"registry-heartbeat-{self.registration_id}"
        )

    async def stop(self) -> None:
        """Clean shutdown: stop the heartbeat, delete this sidecar's row, close the file."""
        if self.state is RegistryState.CLOSED:
            return
        self.state = RegistryState.CLOSED
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            # Not `await task`: a cancellation of stop() itself must propagate.
            # Bounded, and the loop checks the state, should a cancel be lost.
            done, _ = await asyncio.wait([task], timeout=self.timeout + 1.0)
            if done and not task.cancelled() and (error := task.exception()) is not None:
                log.error("registry %s: heartbeat crashed", self.path, exc_info=error)
        try:
            if self.registered is not None:
                await self._run(self._delete)
        except ResolverUnavailable as exc:
            # The row will stop resolving on its own after max_age.
            log.warning("registry %s: could not delete registration: %s", self.path, exc)
        try:
            await self._run(self._close)
        except ResolverUnavailable as exc:
            log.debug("registry %s: close failed: %s", self.path, exc)
        finally:
            self._executor.shutdown(wait=False)

    async def _beat(self) -> None:
        try:
            await self._run(self._sweep, self.clock() - max(CLEANUP_HORIZON, 10 * self.max_age))
        except ResolverUnavailable as exc:
            log.warning("registry %s: cleanup failed: %s", self.path, exc)
        while True:
            await asyncio.sleep(self.update_interval / 2)
            if self.state is not RegistryState.RUNNING:
                return
            if self.registered is None:
                continue
            try:
                await self._run(self._renew, self.registered, self.clock())
            except ResolverUnavailable as exc:
                # Keep beating: a locked or briefly unreadable file may recover
                # before the row goes stale.
                log.warning("registry %s: heartbeat failed: %s", self.path, exc)

    # -- running sqlite off the loop ------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            # The busy timeout should fire first; this bounds a thread stuck in
            # I/O. Not wait_for: on 3.11 it can swallow a cancellation that
            # arrives as the work completes, and stop() would wait forever.
            async with asyncio.timeout(self.timeout + 1.0):
                return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise ResolverUnavailable(f"registry {self.path}: {exc}") from exc
        except TimeoutError:
            raise ResolverUnavailable(f"registry {self.path}: no answer in time") from None

    # Everything below runs on the executor thread only.

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path.startswith("file:") or self.path == ":memory:":
            return None
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            # A connection to a file that was deleted or replaced would go on
            # writing where no other sidecar looks: reopen by path instead.
            if self._file_identity() == self._identity:
                return self._conn
            self._close()
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            isolation_level=None,
            uri=self.path.startswith("file:"),
        )
        try:
            self._use_wal(conn)
            # Registrations are rebuilt by the next heartbeat; no fsync per write.
            conn.execute("PRAGMA synchronous = NORMAL")
            for statement in _SCHEMA:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._identity = self._file_identity()
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL takes an exclusive lock without going
        # through the busy handler: a second sidecar opening the same new file
        # at that moment gets SQLITE_BUSY at once. Wait for it here instead.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(0.005)

    def _with_connection(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return work(self._connection())
        except sqlite3.OperationalError:
            raise  # locked, busy, cannot open: the connection itself is fine
        except sqlite3.DatabaseError:
            # Not a database (any more): reopen next time, it may be repaired.
            self._close()
            raise

    def _select(self, app_id: str, namespace: str, oldest: float) -> list[str]:
        def work(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(_SELECT, (app_id, namespace, oldest)).fetchall()
            return [str(row[0]) for row in rows]

        return self._with_connection(work)

    def _row(self, registered: tuple[str, str, Address], now: float) -> tuple[object, ...]:
        app_id, namespace, address = registered
        return (self.registration_id, app_id, namespace, str(address), now)

    def _upsert(self, registered: tuple[str, str, Address], now: float) -> None:
        self._with_connection(lambda conn: conn.execute(_UPSERT, self._row(registered, now)))

    def _renew(self, registered: tuple[str, str, Address], now: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            # Re-insert when the row is gone (swept by another sidecar after a
            # suspend, or the file was replaced): the heartbeat also repairs.
            if conn.execute(_RENEW, (now, self.registration_id)).rowcount == 0:
                conn.execute(_UPSERT, self._row(registered, now))

        self._with_connection(work)

    def _delete(self) -> None:
        self._with_connection(lambda conn: conn.execute(_DELETE, (self.registration_id,)))

    def _sweep(self, before: float) -> None:
        self._with_connection(lambda conn: conn.execute(_SWEEP, (before,)))

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
