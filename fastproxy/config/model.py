"""The frozen settings one sidecar runs with.

The CLI and the library build the same `Config`; resources named by
`resources_paths` are loaded once at start into `Resources`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """PEM text (already read from files or inline values) for an https endpoint."""

    root_ca: str | None = None
    certificate: str | None = None
    private_key: str | None = None


@dataclass(frozen=True, slots=True)
class HTTPEndpoint:
    """A Dapr `HTTPEndpoint` resource: a named external base URL."""

    name: str
    base_url: str
    headers: tuple[tuple[str, str], ...] = ()
    client_tls: ClientTLS | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class Resources:
    """What `--resources-path` folders and `--config` yielded."""

    http_endpoints: dict[str, HTTPEndpoint] = field(default_factory=dict)
    configuration: dict[str, Any] = field(default_factory=dict)
    # `Resiliency` documents as loaded (each with a "source" key naming its file).
    resiliency: tuple[dict[str, Any], ...] = ()
    skipped_kinds: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of one sidecar; field names follow daprd's flags."""

    app_id: str = ""
    app_port: int | None = None
    app_channel_address: str = "127.0.0.1"
    http_port: int = 3500
    listen_addresses: tuple[str, ...] = ("127.0.0.1", "::1")
    # Where other sidecars deliver calls for this app; None: the listen addresses.
    internal_port: int = 50002
    internal_listen_addresses: tuple[str, ...] | None = None
    # The address other sidecars reach this one at (daprd's DAPR_HOST_IP).
    host_address: str = "127.0.0.1"
    resources_paths: tuple[str, ...] = ()
    config_file: str | None = None
    max_body_size: int = 4 * MIB
    read_buffer_size: int = 4 * KIB
    log_level: str = "info"
    log_as_json: bool = False
    # Prometheus metrics on their own listener (daprd's flags and defaults).
    enable_metrics: bool = True
    metrics_port: int = 9090
    metrics_listen_address: str = "0.0.0.0"
    # One access log line per request (daprd's --enable-api-logging).
    enable_api_logging: bool = False
    api_token: str | None = None
    app_api_token: str | None = None
    namespace: str = "default"
    # mTLS between sidecars: PEM text or a path to a PEM file (Dapr's env names below).
    # mTLS is on when all three are set; `enable_mtls` makes their absence an error.
    trust_anchors: str | None = None  # DAPR_TRUST_ANCHORS / --trust-anchors
    cert_chain: str | None = None  # DAPR_CERT_CHAIN / --cert-chain
    cert_key: str | None = None  # DAPR_CERT_KEY / --cert-key
    enable_mtls: bool = False  # --enable-mtls (daprd's flag): require the three above
    graceful_shutdown_seconds: float = 5.0
    header_timeout: float = 10.0
    keep_alive_timeout: float = 60.0
    body_timeout: float = 30.0
    write_timeout: float = 30.0
    upstream_connect_timeout: float = 5.0
    upstream_max_connections: int = 1024
    upstream_max_idle: int = 64
    upstream_idle_timeout: float = 30.0
    max_connections: int = 10000
    max_header_count: int = 100
