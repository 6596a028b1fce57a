"""Lifecycle: bind, serve, drain, stop; the embeddable `Sidecar` and the CLI's `run`.

The CLI and the library build the same `Config` and the same `Sidecar`, so
what one does the other does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

from fastproxy import build
from fastproxy.config import Config, Resources, load_resources
from fastproxy.context import SidecarContext
from fastproxy.discovery.model import Address, DiscoveryError
from fastproxy.downstream.protocol import DownstreamProtocol
from fastproxy.log import setup_logging
from fastproxy.observability.dapr_metrics import DaprMetrics
from fastproxy.observability.metrics_server import start_metrics_server, stop_metrics_server
from fastproxy.observability.wiring import describe
from fastproxy.wire import Clock

log = logging.getLogger("fastproxy")


class Sidecar:
    """One sidecar inside a running event loop.

    >>> async with Sidecar(app_id="orders", app_port=8080, http_port=0) as sidecar:
    ...     print(sidecar.http_port)
    """

    def __init__(self, config: Config | None = None, **settings: Any) -> None:
        base = config or Config()
        self.config = dataclasses.replace(base, **settings) if settings else base
        self.resources: Resources | None = None
        self.context: SidecarContext | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._internal_servers: list[asyncio.base_events.Server] = []
        self._metrics_server: asyncio.Server | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._stopped: asyncio.Event | None = None

    def __repr__(self) -> str:
        state = "running" if self._servers else "stopped"
        return f"<Sidecar {self.config.app_id!r} {state} ports={self.http_ports}>"

    @property
    def http_ports(self) -> list[int]:
        return _ports(self._servers)

    @property
    def http_port(self) -> int:
        """The bound public port (the real one when port 0 was asked for)."""
        ports = self.http_ports
        if not ports:
            raise RuntimeError("the sidecar is not started")
        return ports[0]

    async def start(self) -> None:
        config = self.config
        self.resources = load_resources(config.resources_paths, config.config_file, config.app_id)
        for kind in self.resources.skipped_kinds:
            log.info("resources of kind %s are not handled yet; skipped", kind)
        clock = Clock()
        self.context = SidecarContext(config, self.resources, clock)
        self._stopped = asyncio.Event()
        await self._bind()
        await self._register()
        _tune_gc()
        loop = asyncio.get_running_loop()
        self._tick_handle = loop.call_later(1.0, self._tick)
        channel = (
            f"app channel {config.app_channel_address}:{config.app_port}"
            if config.app_port is not None
            else "no app channel"
        )
        log.info(
            "fastproxy %s listening on %s port %d, internal port %d%s (%s; name resolution %s; %s)",
            config.app_id,
            ",".join(config.listen_addresses),
            self.http_port,
            self.internal_port,
            f" with mTLS as {self.context.mtls.identity}" if self.context.mtls else "",
            channel,
            self.context.name_resolution.component,
            build.describe(),
        )
        if self.context.resiliency is not None:
            for entry in self.context.resiliency.summary():
                log.info("resiliency %s: %s", entry["name"], entry["policies"])
        if self.metrics_port is not None:
            log.info(
                "metrics on http://%s:%d/metrics", config.metrics_listen_address, self.metrics_port
            )
        if self.context.observer is not None:
            log.info("observability: %s", describe(self.context.observability))

    async def _bind(self) -> None:
        ctx = self.context
        assert ctx is not None
        config = self.config
        self._servers = await _listen(
            lambda: DownstreamProtocol(ctx), config.listen_addresses, config.http_port
        )
        internal_addresses = config.internal_listen_addresses or config.listen_addresses
        try:
            self._internal_servers = await _listen(
                lambda: DownstreamProtocol(ctx, delivered=True),
                internal_addresses,
                config.internal_port,
                ctx.mtls.server_context if ctx.mtls is not None else None,
            )
            metrics = ctx.observability.metrics
            if metrics is not None:
                self._metrics_server = await _listen_metrics(
                    metrics, config.metrics_listen_address, config.metrics_port
                )
        except OSError:
            await self._close_servers()
            raise
        if ctx.observer is not None:
            ctx.observer.start()

    @property
    def metrics_port(self) -> int | None:
        """The bound metrics port; None when metrics are off."""
        server = self._metrics_server
        return None if server is None else _ports([server])[0]

    @property
    def internal_port(self) -> int:
        """The bound internal port, where other sidecars deliver calls for this app."""
        ports = _ports(self._internal_servers)
        if not ports:
            raise RuntimeError("the sidecar is not started")
        return ports[0]

    async def _register(self) -> None:
        """Write this sidecar into the embedded registry, when that is the resolver."""
        ctx = self.context
        assert ctx is not None
        registry = ctx.name_resolution.registry
        if registry is None or self.config.app_port is None:
            return
        address = Address(self.config.host_address, self.internal_port)
        try:
            await registry.register(self.config.app_id, self.config.namespace, address)
        except DiscoveryError as exc:
            log.warning(
                "could not register in %s yet (the heartbeat retries): %s", registry.path, exc
            )
        registry.start()

    def _tick(self) -> None:
        ctx = self.context
        if ctx is None:
            return
        try:
            ctx.tick()
            news = ctx.reload_certificates()
            if news is not None:
                log.log(news[0], "%s", news[1])
        finally:
            self._tick_handle = asyncio.get_running_loop().call_later(1.0, self._tick)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, then close."""
        ctx = self.context
        if ctx is None:
            return
        grace = self.config.graceful_shutdown_seconds if grace is None else grace
        ctx.draining = True
        await self._close_servers()
        for conn in list(ctx.connections):
            conn.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while ctx.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(ctx.connections):
            conn.abort()
        await ctx.close()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        await asyncio.sleep(0)
        self.context = None
        if self._stopped is not None:
            self._stopped.set()

    async def _close_servers(self) -> None:
        servers = self._servers + self._internal_servers
        self._servers, self._internal_servers = [], []
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stop_metrics_server(metrics_server), 0.5)
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 0.5)

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def __aenter__(self) -> Sidecar:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _listen_metrics(metrics: DaprMetrics, host: str, port: int) -> asyncio.Server:
    try:
        return await start_metrics_server(metrics, host, port)
    except OSError as exc:
        raise OSError(exc.errno, f"metrics listener {host}:{port}: {exc.strerror or exc}") from None


def _ports(servers: list[asyncio.base_events.Server]) -> list[int]:
    ports: list[int] = []
    for server in servers:
        for sock in server.sockets:
            port = sock.getsockname()[1]
            if port not in ports:
                ports.append(port)
    return ports


async def _listen(
    factory: Callable[[], object],
    addresses: tuple[str, ...],
    port: int,
    tls: ssl.SSLContext | None = None,
) -> list[asyncio.base_events.Server]:
    """One server per address, all on the same port (the first bound one when 0).

    `factory` makes protocols that are asyncio protocols by their callbacks, not by
    their base (see DownstreamProtocol), hence the cast for the loop's signature.
    """
    loop = asyncio.get_running_loop()
    servers: list[asyncio.base_events.Server] = []
    errors: list[str] = []
    for address in addresses:
        try:
            server = await loop.create_server(
                cast("Callable[[], asyncio.Protocol]", factory),
                host=address,
                port=port,
                reuse_address=True,
                backlog=4096,
                ssl=tls,
            )
        except OSError as exc:
            if _is_unavailable_address(address, exc):
                errors.append(f"{address}: {exc.strerror}")
                continue
            for started in servers:
                started.close()
            raise
        for sock in server.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        servers.append(server)
        if port == 0:
            port = server.sockets[0].getsockname()[1]
    if not servers:
        raise OSError(f"could not listen on any address: {'; '.join(errors)}")
    for error in errors:
        log.warning("not listening on %s", error)
    return servers


def _tune_gc() -> None:
    """Keep the cyclic collector off the hot path.

    Start-up objects (modules, config, tables) never die: freezing them keeps
    every later collection from walking them again. Exchanges form no cycles
    once finished, so young collections can be rare.
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 20_000), gen1, gen2)


def _is_unavailable_address(address: str, exc: OSError) -> bool:
    """IPv6 loopback missing on a host is not fatal when another address is bound."""
    return address in ("::1", "::") and exc.errno in (99, 97, -9, -2)


async def serve(config: Config) -> int:
    sidecar = Sidecar(config)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    # Before starting: the listeners answer as soon as they are bound.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    await sidecar.start()
    await stop_requested.wait()
    log.info("shutting down: draining for up to %ss", config.graceful_shutdown_seconds)
    await sidecar.stop()
    return 0


def install_uvloop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(config: Config) -> int:
    """Blocking entry point of `fastproxy run`."""
    setup_logging(config.log_level, config.log_as_json)
    for source in build.stale_extensions():
        log.warning("%s changed after it was compiled; the old build runs (make install)", source)
    install_uvloop()
    try:
        return asyncio.run(serve(config))
    except OSError as exc:
        log.error("fastproxy: %s", exc)
        return 1
