"""Real certificates, mTLS sidecar meshes and TLS clients for the mTLS and ACL tests.

Certificates come from `fastproxy.security.certs`, the same code `fastproxy certs`
runs: a development CA for trust domain "public", a second unrelated CA, and
SPIFFE workload certificates issued by either. Key generation is cheap (P-256),
but a CA is made once per test session and reused.

`Mesh` starts echo apps and sidecars that find each other through the per-test
sqlite registry (see tests/conftest.py); the sidecars carry mTLS material by
default and the callee an accessControl Configuration when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
import pytest
import yaml
from cryptography import x509

from fastproxy import Sidecar
from fastproxy.security.certs import create_ca, issue_workload_cert
from fastproxy.security.identity import SpiffeId
from tests.integration.conftest import Response, SidecarFactory, request
from tests.integration.test_two_hop import EchoFactory, Instance

TRUST_DOMAIN = "public"
NAMESPACE = "default"
DENIED_PREFIX = "access control policy has denied access to id: "

# The callee's Configuration `spec.accessControl` (dapr-api.md §4): "a" may only GET
# /allowed/*, "b" may do anything but /admin and below, nobody else gets in.
C_ACCESS_CONTROL: dict[str, Any] = {
    "defaultAction": "deny",
    "trustDomain": TRUST_DOMAIN,
    "policies": [
        {
            "appId": "a",
            "namespace": NAMESPACE,
            "trustDomain": TRUST_DOMAIN,
            "defaultAction": "deny",
            "operations": [
                {"name": "/allowed/*", "httpVerb": ["GET"], "action": "allow"},
                {"name": "/admin", "httpVerb": ["*"], "action": "deny"},
            ],
        },
        {
            "appId": "b",
            "namespace": NAMESPACE,
            "trustDomain": TRUST_DOMAIN,
            "defaultAction": "allow",
            "operations": [
                {"name": "/admin", "httpVerb": ["*"], "action": "deny"},
                {"name": "/admin/**", "httpVerb": ["*"], "action": "deny"},
            ],
        },
    ],
}


# -- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate (the trust anchor peers load) and its signing key."""

    cert_pem: bytes
    key_pem: bytes

    def issue(
        self,
        app_id: str,
        *,
        days: int = 2,
        now: dt.datetime | None = None,
        trust_domain: str = TRUST_DOMAIN,
    ) -> Workload:
        cert, key = issue_workload_cert(
            self.cert_pem,
            self.key_pem,
            SpiffeId(trust_domain, NAMESPACE, app_id),
            days,
            now=now,
        )
        return Workload(cert, key, self.cert_pem)


@dataclass(frozen=True)
class Workload:
    """One sidecar's certificate, its key, and the anchors it trusts."""

    cert_pem: bytes
    key_pem: bytes
    anchors_pem: bytes

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert_pem).serial_number

    @property
    def not_after(self) -> dt.datetime:
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc

    def trusting(self, anchors_pem: bytes) -> Workload:
        return Workload(self.cert_pem, self.key_pem, anchors_pem)

    def settings(self) -> dict[str, str]:
        """Sidecar settings with the material inline (PEM text)."""
        return {
            "trust_anchors": self.anchors_pem.decode(),
            "cert_chain": self.cert_pem.decode(),
            "cert_key": self.key_pem.decode(),
        }

    def write(self, folder: Path) -> tuple[Path, Path, Path]:
        """anchors, certificate and key files in `folder` (for ssl contexts and file sources)."""
        folder.mkdir(parents=True, exist_ok=True)
        anchors, cert, key = folder / "anchors.pem", folder / "cert.pem", folder / "key.pem"
        anchors.write_bytes(self.anchors_pem)
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return anchors, cert, key


@functools.cache
def dev_ca() -> Authority:
    """The CA every sidecar of the mesh trusts."""
    return Authority(*create_ca(TRUST_DOMAIN, days=30))


@functools.cache
def rogue_ca() -> Authority:
    """Another CA for the same trust domain name: nothing the mesh trusts chains to it."""
    return Authority(*create_ca(TRUST_DOMAIN, days=30))


@functools.cache
def workload(app_id: str) -> Workload:
    """A valid certificate from the development CA for `spiffe://public/ns/default/<app_id>`."""
    return dev_ca().issue(app_id)


def expiring_workload(app_id: str, seconds: float) -> Workload:
    """A development-CA certificate that stops being valid `seconds` from now."""
    now = dt.datetime.now(dt.UTC)
    return dev_ca().issue(app_id, days=1, now=now - dt.timedelta(days=1, seconds=-seconds))


def expired_workload(app_id: str) -> Workload:
    """A development-CA certificate that expired an hour ago."""
    now = dt.datetime.now(dt.UTC)
    return dev_ca().issue(app_id, days=1, now=now - dt.timedelta(days=1, hours=1))


def serial_of(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number


def peer_serials(sidecar: Sidecar) -> list[int]:
    """Serials of the client certificates on the sidecar's open TLS connections."""
    assert sidecar.context is not None
    serials = []
    for conn in list(sidecar.context.connections):
        transport = conn.transport
        if transport is None or transport.is_closing():
            continue
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            continue
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            serials.append(x509.load_der_x509_certificate(der).serial_number)
    return serials


# -- configuration files -----------------------------------------------------------------------


def write_access_control(folder: Path, name: str, access_control: dict[str, Any]) -> str:
    """A Dapr Configuration file whose spec holds `accessControl`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    document = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": name},
        "spec": {"accessControl": access_control},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return str(path)


# -- a mesh of sidecars ------------------------------------------------------------------------


class Mesh:
    """Echo apps and their sidecars, registered in the test's private sqlite registry."""

    def __init__(self, make_sidecar: SidecarFactory, make_echo: EchoFactory, folder: Path) -> None:
        self._make_sidecar = make_sidecar
        self._make_echo = make_echo
        self._folder = folder
        self.sidecars: dict[str, Sidecar] = {}
        self.apps: dict[str, Instance] = {}

    async def add(
        self,
        app_id: str,
        *,
        material: Workload | None = None,
        mtls: bool = True,
        access_control: dict[str, Any] | None = None,
        with_app: bool = True,
        key: str | None = None,
        **settings: Any,
    ) -> Sidecar:
        """Start app `app_id` (an echo app unless `with_app` is false) and its sidecar.

        `material` defaults to the development CA's certificate for `app_id`; `mtls`
        false runs the sidecar without any. `key` names the sidecar in `sidecars`
        (default: the app id), for two sidecars of one app id.
        """
        key = key or app_id
        if mtls:
            settings.update((material or workload(app_id)).settings())
        if access_control is not None:
            settings["config_file"] = write_access_control(
                self._folder / key, f"acl-{key}", access_control
            )
        if with_app:
            app = await self._make_echo(key)
            self.apps[key] = app
            settings["app_port"] = app.port
        sidecar = await self._make_sidecar(app_id=app_id, **settings)
        self.sidecars[key] = sidecar
        return sidecar

    async def standard(self, **callee_settings: Any) -> None:
        """Callee c (with the ACL) and callers a and b, all with mTLS."""
        await self.add("c", access_control=C_ACCESS_CONTROL, **callee_settings)
        await self.add("a")
        await self.add("b")

    def __getitem__(self, key: str) -> Sidecar:
        return self.sidecars[key]

    async def call(
        self,
        caller: str,
        method: str,
        callee: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        timeout: float = 10.0,
    ) -> Response:
        """`method /v1.0/invoke/<callee>/method<path>` on the caller's public port."""
        target = f"/v1.0/invoke/{callee}/method{path}"
        return await request(
            self.sidecars[caller].http_port, method, target, headers, body, timeout=timeout
        )


@pytest.fixture(name="mesh")
async def mesh_fixture(
    make_sidecar: SidecarFactory, make_echo: EchoFactory, tmp_path: Path
) -> AsyncIterator[Mesh]:
    """An empty mesh; its sidecars and apps stop with `make_sidecar` and `make_echo`.

    Test modules import `mesh_fixture` and request it as `mesh`.
    """
    yield Mesh(make_sidecar, make_echo, tmp_path / "mesh")


# -- assertions --------------------------------------------------------------------------------


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def assert_denied(response: Response, caller: str, verb: str) -> str:
    """A daprd-shaped ACL denial (dapr-api.md §3.2); returns its message."""
    assert response.status == 403, response
    assert (response.header("Content-Type") or "").startswith("application/json"), response
    body = response.json()
    assert set(body) == {"errorCode", "message"}, body
    assert body["errorCode"] == "ERR_DIRECT_INVOKE", body
    message: str = body["message"]
    identity = f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/{caller}" if caller else ""
    assert f"{DENIED_PREFIX}{identity} operation: " in message, message
    assert message.endswith(f" verb: {verb}"), message
    assert "PermissionDenied" in message, message
    return message


def assert_invoke_failure(response: Response) -> str:
    """A 500 ERR_DIRECT_INVOKE made by the caller's sidecar; returns its message."""
    assert response.status == 500, response
    body = response.json()
    assert body["errorCode"] == "ERR_DIRECT_INVOKE", body
    message: str = body["message"]
    return message


# -- TLS clients -------------------------------------------------------------------------------


def client_context(
    folder: Path,
    material: Workload | None,
    *,
    anchors_pem: bytes | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context trusting the development CA; with `material`, presenting its cert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=(anchors_pem or dev_ca().cert_pem).decode())
    if material is not None:
        _, cert, key = material.write(folder)
        context.load_cert_chain(cert, key)
    if max_version is not None:
        context.maximum_version = max_version
    return context


@dataclass
class TlsAttempt:
    """What a raw client got: the bytes read and the error that stopped it, if any."""

    data: bytes
    error: BaseException | None
    connected: bool

    @property
    def http_response(self) -> bool:
        return b"HTTP/1." in self.data


async def tls_attempt(
    port: int, data: bytes, context: ssl.SSLContext | None, *, timeout: float = 5.0
) -> TlsAttempt:
    """Connect (TLS when `context`), send `data`, read until the server closes or fails."""
    writer: asyncio.StreamWriter | None = None
    chunks: list[bytes] = []
    error: BaseException | None = None
    connected = False
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=context,
                server_hostname="" if context is not None else None,
            )
            connected = True
            writer.write(data)
            await writer.drain()
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
        error = exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
    return TlsAttempt(b"".join(chunks), error, connected)


class _Collector:
    def __init__(self) -> None:
        self.response = Response()
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.response.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.response.body += body

    def on_message_complete(self) -> None:
        self.response.complete = True


async def read_response(reader: asyncio.StreamReader, *, timeout: float = 10.0) -> Response:
    """Exactly one response from a keep-alive connection (not an answer to HEAD)."""
    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    collector.parser = parser
    async with asyncio.timeout(timeout):
        while not collector.response.complete:
            chunk = await reader.read(65536)
            if not chunk:
                raise AssertionError(f"connection closed mid-response: {collector.response}")
            parser.feed_data(chunk)
    return collector.response


class KeepAliveClient:
    """One client connection (plain or TLS) for several requests in turn."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext | None = None) -> KeepAliveClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="" if context is not None else None
        )
        return cls(reader, writer)

    async def send(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()
        return await read_response(self.reader)

    @property
    def closed_by_peer(self) -> bool:
        return self.reader.at_eof()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def keep_alive_client(
    port: int, context: ssl.SSLContext | None = None
) -> AsyncIterator[KeepAliveClient]:
    client = await KeepAliveClient.open(port, context)
    try:
        yield client
    finally:
        await client.close()


def echo_of(response: Response) -> dict[str, Any]:
    """The echo app's report in a 200 response."""
    assert response.status == 200, response
    echo: dict[str, Any] = json.loads(response.body)
    return echo
