"""A real dnsmasq on loopback for DNS resolver tests, with records the test can change.

Tests import `dnsmasq_server_fixture` explicitly and request it as `dnsmasq_server`;
every process it starts is killed at teardown. Without a dnsmasq binary the tests skip.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration import ports

HOST = "127.0.0.1"
DEFAULT_DOMAINS = ("test", "cluster.local", "consul")
_START_TIMEOUT = 5.0
_STOP_TIMEOUT = 3.0


@dataclass(frozen=True)
class SrvRecord:
    target: str
    port: int
    priority: int = 0
    weight: int = 0


def find_dnsmasq() -> str | None:
    """dnsmasq lives in /usr/sbin, which is not on every user's PATH."""
    found = shutil.which("dnsmasq")
    if found is not None:
        return found
    for candidate in ("/usr/sbin/dnsmasq", "/usr/local/sbin/dnsmasq"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """A port free on loopback for both UDP and TCP right now (DNS uses both)."""
    return ports.free_port(udp=True)


class Dnsmasq:
    """One dnsmasq process answering only from the records set here.

    Names without a TTL go to an extra hosts file, which SIGHUP re-reads (`reload`
    waits for dnsmasq to log it). Names with their own TTL (`host-record`), SRV
    records and the default TTL live in the config file, which dnsmasq only reads at
    start, so changing those makes `apply` restart the process on the same port.
    Names under `domains` that have no record get NXDOMAIN; any other name, REFUSED.
    """

    def __init__(
        self,
        directory: Path,
        *,
        executable: str,
        local_ttl: int = 1,
        domains: Iterable[str] = DEFAULT_DOMAINS,
    ) -> None:
        self.directory = directory
        self.executable = executable
        self.local_ttl = local_ttl
        self.domains = tuple(domains)
        self.port = 0
        self._hosts: dict[str, list[tuple[str, int | None]]] = {}
        self._srv: dict[str, tuple[SrvRecord, ...]] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._loaded_config = ""
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "dnsmasq.conf"
        self.hosts_path = directory / "hosts"
        self.log_path = directory / "dnsmasq.log"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Dnsmasq {self.nameserver} {state}>"

    @property
    def nameserver(self) -> str:
        """The `host:port` entry to give a resolver."""
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- records (take effect on `apply`) --------------------------------------

    def set_host(self, name: str, *addresses: str, ttl: int | None = None) -> None:
        """A and AAAA records for `name`, replacing any; `ttl` None means `local_ttl`."""
        self._hosts[name] = [(address, ttl) for address in addresses]

    def add_host(self, name: str, *addresses: str, ttl: int | None = None) -> None:
        """More addresses for `name` (so each family can have its own TTL)."""
        self._hosts.setdefault(name, []).extend((address, ttl) for address in addresses)

    def remove_host(self, name: str) -> None:
        self._hosts.pop(name, None)

    def set_srv(self, name: str, *records: SrvRecord) -> None:
        self._srv[name] = records

    def remove_srv(self, name: str) -> None:
        self._srv.pop(name, None)

    # -- process -----------------------------------------------------------------

    async def start(self) -> None:
        """Start on a fresh free port the first time, on the same port after that."""
        if self.running:
            return
        fixed = self.port != 0
        for _ in range(1 if fixed else 5):
            if not fixed:
                self.port = free_port()
            self._write_files()
            if await self._spawn():
                return
        raise RuntimeError(f"dnsmasq did not start:\n{self._log_text()}")

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        _reap(process)

    def kill(self) -> None:
        """Teardown: synchronous, certain."""
        process, self._process = self._process, None
        if process is not None:
            process.send_signal(signal.SIGKILL)
            _reap(process)

    def pause(self) -> None:
        """Keep the sockets open but answer nothing: queries time out."""
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGCONT)

    async def apply(self) -> None:
        """Make the server answer with the records set now: SIGHUP, or restart if needed."""
        if not self.running:
            self._write_files()
            return
        if self._config_text() != self._loaded_config:
            await self.stop()
            await self.start()
            return
        assert self._process is not None
        reads = self._log_text().count(f"read {self.hosts_path} ")
        self._write_files()
        self._process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + _START_TIMEOUT
        while self._log_text().count(f"read {self.hosts_path} ") <= reads:
            if time.monotonic() > deadline or not self.running:
                raise RuntimeError(f"dnsmasq did not re-read its hosts:\n{self._log_text()}")
            await asyncio.sleep(0.01)

    # -- internals -------------------------------------------------------------------

    async def _spawn(self) -> bool:
        """True once the server is up; False if it exited (port taken since we chose it)."""
        self.log_path.write_text("")
        self._loaded_config = self._config_text()
        self._process = subprocess.Popen(
            [
                self.executable,
                f"--conf-file={self.config_path}",
                "--keep-in-foreground",
                f"--log-facility={self.log_path}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        # Its listening sockets are bound before it reads the hosts file and logs that.
        while f"read {self.hosts_path} " not in self._log_text():
            if self._process.poll() is not None:
                error = self._process.stderr.read() if self._process.stderr else b""
                self._process = None
                self.log_path.write_text(self._log_text() + error.decode(errors="replace"))
                return False
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"dnsmasq did not come up:\n{self._log_text()}")
            await asyncio.sleep(0.01)
        return True

    def _write_files(self) -> None:
        self.config_path.write_text(self._config_text())
        lines = [
            f"{address} {name}\n"
            for name, entries in self._hosts.items()
            for address, ttl in entries
            if ttl is None
        ]
        self.hosts_path.write_text("".join(lines))

    def _config_text(self) -> str:
        lines = [
            f"port={self.port}",
            f"listen-address={HOST}",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            f"addn-hosts={self.hosts_path}",
            f"local-ttl={self.local_ttl}",
            f"pid-file={self.directory / 'dnsmasq.pid'}",
            f"user={pwd.getpwuid(os.geteuid()).pw_name}",  # stay who we are: it reads our files
            "log-queries",
        ]
        lines += [f"local=/{domain}/" for domain in self.domains]
        for name, entries in self._hosts.items():
            lines += [f"host-record={name},{a},{ttl}" for a, ttl in entries if ttl is not None]
        for name, records in self._srv.items():
            if not records:  # no target: the "service decidedly not available" answer
                lines.append(f"srv-host={name}")
            lines += [
                f"srv-host={name},{r.target},{r.port},{r.priority},{r.weight}" for r in records
            ]
        return "\n".join(lines) + "\n"

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=_STOP_TIMEOUT)
    if process.stderr is not None:
        process.stderr.close()


DnsmasqFactory = Callable[..., Awaitable[Dnsmasq]]


@pytest.fixture(name="dnsmasq_server")
async def dnsmasq_server_fixture(tmp_path: Path) -> AsyncIterator[DnsmasqFactory]:
    """Starts dnsmasq servers: `await dnsmasq_server(setup=callback, **options)`.

    `setup(server)` may set records before the first start; options go to `Dnsmasq`.
    """
    executable = find_dnsmasq()
    if executable is None:
        pytest.skip(
            "dnsmasq is not installed (make test installs it: apt-get install dnsmasq-base)"
        )
    started: list[Dnsmasq] = []

    async def start(setup: Callable[[Dnsmasq], Any] | None = None, **options: Any) -> Dnsmasq:
        server = Dnsmasq(tmp_path / f"dnsmasq-{len(started)}", executable=executable, **options)
        started.append(server)
        if setup is not None:
            setup(server)
        await server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()
