"""Where an upstream lives: host, port, TLS, and the Host header its requests carry.

Built once per app channel, HTTPEndpoint resource or URL target; a `Pool`
then keeps connections to it.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastproxy.config.errors import ConfigError
from fastproxy.config.model import HTTPEndpoint
from fastproxy.wire import HOP_BY_HOP


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a pool connects, and how the requests it carries name their host."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    base_path: bytes = b""
    host_override: str | None = None  # an HTTPEndpoint's own `Host` header
    port_in_host: bool = True  # False when a URL left the scheme's default port implicit

    @property
    def name(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def host_header(self) -> bytes:
        if self.host_override is not None:
            return b"Host: " + self.host_override.encode("latin-1") + b"\r\n"
        host = self.server_hostname or self.host
        if ":" in host:
            host = f"[{host}]"
        if not self.port_in_host:
            return b"Host: %s\r\n" % host.encode("idna")
        return b"Host: %s:%d\r\n" % (host.encode("idna"), self.port)


# Headers an HTTPEndpoint may not set: the sidecar owns framing and hop-by-hop fields.
_RESERVED_ENDPOINT_HEADERS = HOP_BY_HOP | {b"content-length", b"host", b"expect"}


def endpoint_headers(resource: HTTPEndpoint) -> list[tuple[bytes, bytes]]:
    """`spec.headers` as bytes; framing fields are refused, Host becomes the pool's Host."""
    headers: list[tuple[bytes, bytes]] = []
    for name, value in resource.headers:
        raw = name.encode("latin-1")
        lowered = raw.lower()
        if lowered == b"host":
            continue
        if lowered in _RESERVED_ENDPOINT_HEADERS:
            raise ConfigError(
                f"{resource.source or resource.name}: HTTPEndpoint {resource.name!r}"
                f" may not set the {name} header: the sidecar frames requests itself"
            )
        headers.append((raw, value.encode("latin-1")))
    return headers


def endpoint_from_url(url: str, resource: HTTPEndpoint | None) -> Endpoint:
    """An `Endpoint` for an http(s) base URL, with TLS set up for https."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid target url {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"invalid port in target url {url!r}") from None
    tls = None
    if parts.scheme == "https":
        tls = _client_tls_context(resource)
    base_path = parts.path.rstrip("/").encode("utf-8")
    return Endpoint(
        parts.hostname, port, tls, parts.hostname, base_path, port_in_host=parts.port is not None
    )


def _client_tls_context(resource: HTTPEndpoint | None) -> ssl.SSLContext:
    client_tls = resource.client_tls if resource is not None else None
    if client_tls is not None and client_tls.root_ca:
        context = ssl.create_default_context(cadata=client_tls.root_ca)
    else:
        context = ssl.create_default_context()
    if client_tls is not None and client_tls.certificate and client_tls.private_key:
        _load_pem_pair(context, client_tls.certificate, client_tls.private_key)
    return context


def _load_pem_pair(context: ssl.SSLContext, certificate: str, private_key: str) -> None:
    # The ssl module loads key pairs from files only; write them to private
    # temporary files that are removed straight after loading.
    with tempfile.TemporaryDirectory() as folder:
        cert_path = os.path.join(folder, "cert.pem")
        key_path = os.path.join(folder, "key.pem")
        for path, text in ((cert_path, certificate), (key_path, private_key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
        context.load_cert_chain(cert_path, key_path)
