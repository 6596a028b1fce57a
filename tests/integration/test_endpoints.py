"""HTTPEndpoint resources and raw http(s):// targets: one hop to an external base URL.

Endpoints are real aiohttp servers on loopback; the https ones use a CA and
certificates made here with `cryptography`, so TLS trust and mutual TLS are
exercised for real.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import socket
import ssl
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fastproxy import Sidecar
from fastproxy.config import ConfigError
from fastproxy.upstream.endpoint import endpoint_from_url
from tests.integration.conftest import EchoApp, Response, SidecarFactory, request

pytestmark = pytest.mark.asyncio


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def header_names(echo: dict[str, Any]) -> list[str]:
    return [k.lower() for k, _ in echo["headers"]]


def assert_dapr_error(response: Response, status: int = 500) -> dict[str, Any]:
    assert response.status == status, response
    assert response.header("content-type") == "application/json", response
    body: dict[str, Any] = response.json()
    assert body["errorCode"] == "ERR_DIRECT_INVOKE", response
    return body


# -- certificates ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_pem: str
    server_cert_pem: str
    server_key_pem: str
    client_ca_pem: str
    client_cert_pem: str
    client_key_pem: str
    other_ca_pem: str


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    name: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca, ca_key = _ca("fastproxy test CA")
    server, server_key = _leaf(
        "localhost",
        ca,
        ca_key,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_ca, client_ca_key = _ca("fastproxy test client CA")
    client, client_key = _leaf("sidecar", client_ca, client_ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
    other_ca, _ = _ca("some other CA")
    return Pki(
        ca_pem=_cert_pem(ca),
        server_cert_pem=_cert_pem(server),
        server_key_pem=_key_pem(server_key),
        client_ca_pem=_cert_pem(client_ca),
        client_cert_pem=_cert_pem(client),
        client_key_pem=_key_pem(client_key),
        other_ca_pem=_cert_pem(other_ca),
    )


# -- a second echo server, optionally https ------------------------------------------------


@dataclass
class Upstream:
    port: int
    seen: list[dict[str, Any]]


async def _echo(request: web.Request, seen: list[dict[str, Any]]) -> web.Response:
    body = await request.read()
    peercert = None
    transport = request.transport
    if transport is not None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            peer = ssl_object.getpeercert()
            if peer:
                peercert = dict(x[0] for x in peer["subject"]).get("commonName")
    echo = {
        "method": request.method,
        "path": request.raw_path,
        "headers": [[k, v] for k, v in request.raw_headers_decoded()]
        if hasattr(request, "raw_headers_decoded")
        else [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body": body.decode("latin-1"),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "tls": transport is not None and transport.get_extra_info("ssl_object") is not None,
        "peer_cn": peercert,
    }
    seen.append(echo)
    status = int(request.rel_url.query.get("status", "200"))
    return web.Response(status=status, body=json.dumps(echo), content_type="application/json")


UpstreamFactory = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def make_upstream() -> AsyncIterator[UpstreamFactory]:
    runners: list[web.AppRunner] = []

    async def make(ssl_context: ssl.SSLContext | None = None) -> Upstream:
        app = web.Application()
        seen: list[dict[str, Any]] = []

        async def handler(request: web.Request) -> web.Response:
            return await _echo(request, seen)

        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return Upstream(port, seen)

    yield make
    for runner in runners:
        await runner.cleanup()


def server_tls(pki: Pki, tmp_path: Path, require_client_cert: bool = False) -> ssl.SSLContext:
    cert_file = tmp_path / "server.pem"
    key_file = tmp_path / "server.key"
    cert_file.write_text(pki.server_cert_pem)
    key_file.write_text(pki.server_key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=pki.client_ca_pem)
    return context


# -- resource files ------------------------------------------------------------------------


def _block(pem: str, indent: int) -> str:
    return "|\n" + textwrap.indent(pem, " " * indent)


def endpoint_yaml(
    name: str,
    base_url: str,
    headers: list[tuple[str, str]] | None = None,
    root_ca: str | None = None,
    certificate: str | None = None,
    private_key: str | None = None,
    scopes: list[str] | None = None,
) -> str:
    lines = [
        "apiVersion: dapr.io/v1alpha1",
        "kind: HTTPEndpoint",
        "metadata:",
        f"  name: {name}",
        "spec:",
        f"  baseUrl: {base_url}",
    ]
    if headers:
        lines.append("  headers:")
        for header, value in headers:
            lines += [f"  - name: {header}", f"    value: {json.dumps(value)}"]
    tls = [("rootCA", root_ca), ("certificate", certificate), ("privateKey", private_key)]
    if any(pem for _, pem in tls):
        lines.append("  clientTLS:")
        for key, pem in tls:
            if pem:
                lines += [f"    {key}:", f"      value: {_block(pem, 8).rstrip()}"]
    if scopes is not None:
        lines.append(f"scopes: {json.dumps(scopes)}")
    return "\n".join(lines) + "\n"


def write_resources(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


async def sidecar_with(make_sidecar: SidecarFactory, folder: Path, **settings: Any) -> Sidecar:
    return await make_sidecar(resources_paths=(str(folder),), **settings)


# -- plain http endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_path", "method_part", "app_path"),
    [
        pytest.param("", "items?x=1&x=2", "/items?x=1&x=2", id="no-prefix"),
        pytest.param("/", "items", "/items", id="slash-prefix"),
        pytest.param("/api/v2", "items/7?q=a+b", "/api/v2/items/7?q=a+b", id="prefix"),
        pytest.param("/api/v2/", "items", "/api/v2/items", id="prefix-trailing-slash"),
        pytest.param("/api", "a/../b//c/", "/api/b/c", id="prefix-method-cleaned"),
    ],
)
async def test_http_endpoint_base_url_path_prefix_is_prepended(
    make_sidecar: SidecarFactory,
    make_upstream: UpstreamFactory,
    tmp_path: Path,
    base_path: str,
    method_part: str,
    app_path: str,
) -> None:
    upstream = await make_upstream()
    folder = write_resources(
        tmp_path / "res",
        **{"ep.yaml": endpoint_yaml("ext", f"http://127.0.0.1:{upstream.port}{base_path}")},
    )
    sidecar = await sidecar_with(make_sidecar, folder)
    response = await request(
        sidecar.http_port, "POST", f"/v1.0/invoke/ext/method/{method_part}", body=b"payload"
    )
    assert response.status == 200, response
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == app_path
    assert echo["body"] == "payload"
    assert header_values(echo, "host") == [f"127.0.0.1:{upstream.port}"]


async def test_http_endpoint_reached_through_dapr_app_id_header(
    make_sidecar: SidecarFactory, make_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    upstream = await make_upstream()
    folder = write_resources(
        tmp_path / "res",
        **{"ep.yaml": endpoint_yaml("ext", f"http://127.0.0.1:{upstream.port}/base")},
    )
    sidecar = await sidecar_with(make_sidecar, folder)
    response = await request(sidecar.http_port, "GET", "/users/1?a=b", {"dapr-app-id": "ext"})
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/base/users/1?a=b"
    assert "dapr-app-id" not in header_names(echo)


async def test_http_endpoint_status_passes_through(
    make_sidecar: SidecarFactory, make_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    upstream = await make_upstream()
    folder = write_resources(
        tmp_path / "res", **{"ep.yaml": endpoint_yaml("ext", f"http://127.0.0.1:{upstream.port}")}
    )
    sidecar = await sidecar_with(make_sidecar, folder)
    response = await request(sidecar.http_port, "GET", "/v1.0/invoke/ext/method/x?status=418")
    assert response.status == 418, response


async def test_http_endpoint_spec_headers_override_client_headers(
    make_sidecar: SidecarFactory, make_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    upstream = await make_upstream()
    folder = write_resources(
        tmp_path / "res",
        **{
            "ep.yaml": endpoint_yaml(
                "ext",
                f"http://127.0.0.1:{upstream.port}",
                headers=[
                    ("X-Tenant", "endpoint"),
                    ("Authorization", "Bearer ep-secret"),
                    ("X-Number", "10"),
                ],
            )
        },
    )
    sidecar = await sidecar_with(make_sidecar, folder)
    raw_headers = {
        "x-tenant": "client",
        "X-TENANT": "client-again",
        "Authorization": "Bearer client",
        "X-Client": "kept",
    }
    response = await request(sidecar.http_port, "GET", "/v1.0/invoke/ext/method/h", raw_headers)
    assert response.status == 200, response
    echo = response.json()
    assert header_values(echo, "x-tenant") == ["endpoint"]
    assert header_values(echo, "authorization") == ["Bearer ep-secret"]
    assert header_values(echo, "x-number") == ["10"]
    assert header_values(echo, "x-client") == ["kept"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("Host", "virtual.example", id="host"),
        pytest.param("Content-Length", "1", id="content-length"),
        pytest.param("Transfer-Encoding", "chunked", id="transfer-encoding"),
    ],
)
async def test_http_endpoint_spec_headers_cannot_break_host_or_framing(
    make_sidecar: SidecarFactory,
    make_upstream: UpstreamFactory,
    tmp_path: Path,
    name: str,
    value: str,
) -> None:
    """Either the resource is refused at start, or the request still arrives intact.

    Go's client (daprd) ignores Host, Content-Length and Transfer-Encoding set as
    plain headers; copying them into the head duplicates Host or desyncs framing.
    """
    upstream = await make_upstream()
    folder = write_resources(
        tmp_path / "res",
        **{
            "ep.yaml": endpoint_yaml(
                "ext", f"http://127.0.0.1:{upstream.port}", headers=[(name, value)]
            )
        },
    )
    try:
        sidecar = await sidecar_with(make_sidecar, folder)
    except ConfigError as exc:
        assert name in str(exc), exc
        return
    response = await request(
        sidecar.http_port, "POST", "/v1.0/invoke/ext/method/x", body=b"hello world"
    )
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/x"
    assert echo["body"] == "hello world"
    assert len(header_values(echo, "host")) == 1, echo["headers"]
    assert len(upstream.seen) == 1, upstream.seen


async def test_http_endpoint_gets_no_caller_callee_or_app_token_headers(
    make_sidecar: SidecarFactory,
    make_upstream: UpstreamFactory,
    tmp_path: Path,
    echo_app: EchoApp,
) -> None:
    upstream = await make_upstream()
    folder = write_resources(
        tmp_path / "res", **{"ep.yaml": endpoint_yaml("ext", f"http://127.0.0.1:{upstream.port}")}
    )
    sidecar = await sidecar_with(
        make_sidecar, folder, app_port=echo_app.port, app_api_token="app-secret"
    )
    response = await request(
        sidecar.http_port,
        "GET",
        "/v1.0/invoke/ext/method/h",
        {"dapr-caller-app-id": "evil", "Dapr-Callee-App-Id": "evil", "dapr-api-token": "c"},
    )
    assert response.status == 200, response
    names = header_names(response.json())
    for name in (
        "dapr-caller-app-id",
        "dapr-caller-namespace",
        "dapr-callee-app-id",
        "dapr-api-token",
    ):
        assert name not in names, names
    # The same sidecar does send the app token on its app channel.
    response = await request(sidecar.http_port, "GET", "/v1.0/invoke/app/method/h")
    assert header_values(response.json(), "dapr-api-token") == ["app-secret"]


async def test_unreachable_http_endpoint_is_500(
    make_sidecar: SidecarFactory, tmp_path: Path, unused_port: int
) -> None:
    folder = write_resources(
        tmp_path / "res", **{"ep.yaml": endpoint_yaml("ext", f"http://127.0.0.1:{unused_port}")}
    )
    sidecar = await sidecar_with(make_sidecar, folder)
    response = await request(sidecar.http_port, "GET", "/v1.0/invoke/ext/method/x")
    body = assert_dapr_error(response)
    assert body["message"].startswith("failed to invoke, id: ext, err: "), body


async def test_endpoint_scoped_to_other_app_is_not_loaded(
    make_sidecar: SidecarFactory, make_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    upstream = await make_upstream()
    folder = write_resources(
        tmp_path / "res",
        **{
            "mine.yaml": endpoint_yaml("mine", f"http://127.0.0.1:{upstream.port}", scopes=["app"]),
            "theirs.yaml": endpoint_yaml(
                "theirs", f"http://127.0.0.1:{upstream.port}", scopes=["someone-else"]
            ),
        },
    )
    sidecar = await sidecar_with(make_sidecar, folder)
    assert (await request(sidecar.http_port, "GET", "/v1.0/invoke/mine/method/x")).status == 200
    response = await request(sidecar.http_port, "GET", "/v1.0/invoke/theirs/method/x")
    assert_dapr_error(response)
    assert len(upstream.seen) == 1


@pytest.mark.parametrize(
    ("base_url", "host_line"),
    [
        pytest.param(
            "https://api.example.com/v1", b"Host: api.example.com\r\n", id="https-default"
        ),
        pytest.param("http://example.com", b"Host: example.com\r\n", id="http-default"),
        pytest.param("http://example.com:8080/x", b"Host: example.com:8080\r\n", id="explicit"),
        pytest.param("http://[::1]:9000", b"Host: [::1]:9000\r\n", id="ipv6-explicit"),
    ],
)
async def test_endpoint_host_header_names_a_default_port_only_when_the_url_does(
    base_url: str, host_line: bytes
) -> None:
    """Go (daprd) and curl send `Host: api.example.com` for a URL without a port."""
    assert endpoint_from_url(base_url, None).host_header == host_line


# -- raw URL targets ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoded", [False, True], ids=["unencoded", "encoded"])
async def test_http_url_target_is_invoked_directly(
    make_sidecar: SidecarFactory,
    make_upstream: UpstreamFactory,
    echo_app: EchoApp,
    encoded: bool,
) -> None:
    upstream = await make_upstream()
    sidecar = await make_sidecar(app_port=echo_app.port, app_api_token="app-secret")
    base = f"http://127.0.0.1:{upstream.port}"
    target = quote(base, safe="") if encoded else base
    response = await request(
        sidecar.http_port, "PUT", f"/v1.0/invoke/{target}/method/a/b?x=1&x=2", {"X-C": "1"}, b"z"
    )
    assert response.status == 200, response
    echo = response.json()
    assert echo["method"] == "PUT"
    assert echo["path"] == "/a/b?x=1&x=2"
    assert echo["body"] == "z"
    assert header_values(echo, "x-c") == ["1"]
    names = header_names(echo)
    for name in ("dapr-caller-app-id", "dapr-callee-app-id", "dapr-api-token"):
        assert name not in names, names
    assert echo_app.seen == []


async def test_encoded_url_target_with_base_path(
    make_sidecar: SidecarFactory, make_upstream: UpstreamFactory
) -> None:
    upstream = await make_upstream()
    sidecar = await make_sidecar()
    target = quote(f"http://127.0.0.1:{upstream.port}/base", safe="")
    response = await request(sidecar.http_port, "GET", f"/v1.0/invoke/{target}/method/x")
    assert response.status == 200, response
    assert response.json()["path"] == "/base/x"


async def test_url_target_through_dapr_app_id_header(
    make_sidecar: SidecarFactory, make_upstream: UpstreamFactory
) -> None:
    upstream = await make_upstream()
    sidecar = await make_sidecar()
    response = await request(
        sidecar.http_port, "GET", "/p/q", {"dapr-app-id": f"http://127.0.0.1:{upstream.port}"}
    )
    assert response.status == 200, response
    assert response.json()["path"] == "/p/q"


async def test_unreachable_url_target_is_500(
    make_sidecar: SidecarFactory, unused_port: int
) -> None:
    sidecar = await make_sidecar()
    response = await request(
        sidecar.http_port, "GET", f"/v1.0/invoke/http://127.0.0.1:{unused_port}/method/x"
    )
    assert_dapr_error(response)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("http%3A%2F%2F%3A80", id="no-host"),
        pytest.param("http%3A%2F%2F127.0.0.1%3Anope", id="bad-port"),
    ],
)
async def test_malformed_url_target_is_500(make_sidecar: SidecarFactory, target: str) -> None:
    sidecar = await make_sidecar()
    response = await request(sidecar.http_port, "GET", f"/v1.0/invoke/{target}/method/x")
    assert_dapr_error(response)


# -- https endpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_https_endpoint_trusted_through_root_ca(
    make_sidecar: SidecarFactory,
    make_upstream: UpstreamFactory,
    tmp_path: Path,
    pki: Pki,
    host: str,
) -> None:
    upstream = await make_upstream(server_tls(pki, tmp_path))
    folder = write_resources(
        tmp_path / "res",
        **{
            "ep.yaml": endpoint_yaml(
                "secure", f"https://{host}:{upstream.port}/v1", root_ca=pki.ca_pem
            )
        },
    )
    sidecar = await sidecar_with(make_sidecar, folder)
    for n in range(3):  # the pooled TLS connection is reused
        response = await request(
            sidecar.http_port, "POST", f"/v1.0/invoke/secure/method/items/{n}?k=v", body=b"tls"
        )
        assert response.status == 200, response
        echo = response.json()
        assert echo["tls"] is True
        assert echo["path"] == f"/v1/items/{n}?k=v"
        assert echo["body"] == "tls"


@pytest.mark.parametrize("root_ca", [None, "other"], ids=["no-root-ca", "wrong-root-ca"])
async def test_https_endpoint_with_untrusted_certificate_is_500(
    make_sidecar: SidecarFactory,
    make_upstream: UpstreamFactory,
    tmp_path: Path,
    pki: Pki,
    root_ca: str | None,
) -> None:
    upstream = await make_upstream(server_tls(pki, tmp_path))
    folder = write_resources(
        tmp_path / "res",
        **{
            "ep.yaml": endpoint_yaml(
                "secure",
                f"https://localhost:{upstream.port}",
                root_ca=pki.other_ca_pem if root_ca else None,
            )
        },
    )
    sidecar = await sidecar_with(make_sidecar, folder)
    response = await request(sidecar.http_port, "GET", "/v1.0/invoke/secure/method/x")
    body = assert_dapr_error(response)
    assert body["message"].startswith("failed to invoke, id: secure, err: "), body
    assert "certificate" in body["message"].lower(), body
    assert upstream.seen == []


async def test_https_url_target_with_private_ca_is_500(
    make_sidecar: SidecarFactory, make_upstream: UpstreamFactory, tmp_path: Path, pki: Pki
) -> None:
    upstream = await make_upstream(server_tls(pki, tmp_path))
    sidecar = await make_sidecar()
    target = quote(f"https://localhost:{upstream.port}", safe="")
    response = await request(sidecar.http_port, "GET", f"/v1.0/invoke/{target}/method/x")
    assert_dapr_error(response)
    assert upstream.seen == []


async def test_https_endpoint_with_mutual_tls(
    make_sidecar: SidecarFactory, make_upstream: UpstreamFactory, tmp_path: Path, pki: Pki
) -> None:
    upstream = await make_upstream(server_tls(pki, tmp_path, require_client_cert=True))
    folder = write_resources(
        tmp_path / "res",
        **{
            "ep.yaml": endpoint_yaml(
                "mtls",
                f"https://localhost:{upstream.port}",
                root_ca=pki.ca_pem,
                certificate=pki.client_cert_pem,
                private_key=pki.client_key_pem,
            )
        },
    )
    sidecar = await sidecar_with(make_sidecar, folder)
    response = await request(sidecar.http_port, "GET", "/v1.0/invoke/mtls/method/hello?a=1")
    assert response.status == 200, response
    echo = response.json()
    assert echo["tls"] is True
    assert echo["peer_cn"] == "sidecar"
    assert echo["path"] == "/hello?a=1"


async def test_https_endpoint_requiring_client_cert_without_one_is_500(
    make_sidecar: SidecarFactory, make_upstream: UpstreamFactory, tmp_path: Path, pki: Pki
) -> None:
    upstream = await make_upstream(server_tls(pki, tmp_path, require_client_cert=True))
    folder = write_resources(
        tmp_path / "res",
        **{
            "ep.yaml": endpoint_yaml(
                "mtls", f"https://localhost:{upstream.port}", root_ca=pki.ca_pem
            )
        },
    )
    sidecar = await sidecar_with(make_sidecar, folder)
    response = await request(sidecar.http_port, "GET", "/v1.0/invoke/mtls/method/x")
    assert_dapr_error(response)
    assert upstream.seen == []


# -- loading resources -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: x\nspec: {}\n",
            "baseUrl",
            id="missing-base-url",
        ),
        pytest.param(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: x\n"
            "spec:\n  baseUrl: ftp://host\n",
            "baseUrl",
            id="wrong-scheme",
        ),
        pytest.param("kind: HTTPEndpoint\nmetadata: [\n", "invalid YAML", id="invalid-yaml"),
        pytest.param(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nspec:\n  baseUrl: http://h\n",
            "metadata",
            id="missing-metadata",
        ),
    ],
)
async def test_malformed_http_endpoint_file_fails_start_naming_the_file(
    make_sidecar: SidecarFactory, tmp_path: Path, text: str, fragment: str
) -> None:
    folder = write_resources(
        tmp_path / "res",
        **{"good.yaml": endpoint_yaml("good", "http://127.0.0.1:1"), "broken.yaml": text},
    )
    with pytest.raises(ConfigError) as caught:
        await sidecar_with(make_sidecar, folder)
    message = str(caught.value)
    assert str(folder / "broken.yaml") in message, message
    assert fragment in message, message


async def test_failed_start_leaves_nothing_listening(tmp_path: Path, unused_port: int) -> None:
    folder = write_resources(tmp_path / "res", **{"broken.yaml": "kind: HTTPEndpoint\n"})
    sidecar = Sidecar(
        app_id="app",
        http_port=unused_port,
        listen_addresses=("127.0.0.1",),
        resources_paths=(str(folder),),
        metrics_port=0,
    )
    with pytest.raises(ConfigError):
        await sidecar.start()
    with pytest.raises(RuntimeError):
        _ = sidecar.http_port
    with pytest.raises(ConnectionRefusedError):
        await request(unused_port, "GET", "/v1.0/healthz", timeout=1)


async def test_unknown_resource_kind_is_skipped(
    make_sidecar: SidecarFactory, make_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    upstream = await make_upstream()
    component = textwrap.dedent(
        """\
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata:
          name: statestore
        spec:
          type: state.redis
          version: v1
          metadata:
          - name: redisHost
            value: localhost:6379
        """
    )
    folder = write_resources(
        tmp_path / "res",
        **{
            "component.yaml": component,
            "ep.yaml": endpoint_yaml("ext", f"http://127.0.0.1:{upstream.port}"),
            "notes.txt": "not yaml at all: [",
        },
    )
    sidecar = await sidecar_with(make_sidecar, folder)
    assert sidecar.resources is not None
    assert "Component" in sidecar.resources.skipped_kinds
    response = await request(sidecar.http_port, "GET", "/v1.0/invoke/ext/method/ok")
    assert response.status == 200, response
    # The component's name is not an invocation target.
    response = await request(sidecar.http_port, "GET", "/v1.0/invoke/statestore/method/ok")
    assert_dapr_error(response)


async def test_multi_document_file_loads_every_endpoint(
    make_sidecar: SidecarFactory, make_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    one = await make_upstream()
    two = await make_upstream()
    text = (
        endpoint_yaml("one", f"http://127.0.0.1:{one.port}/first")
        + "---\n"
        + endpoint_yaml("two", f"http://127.0.0.1:{two.port}/second")
    )
    folder = write_resources(tmp_path / "res", **{"both.yml": text})
    sidecar = await sidecar_with(make_sidecar, folder)
    first = await request(sidecar.http_port, "GET", "/v1.0/invoke/one/method/x")
    second = await request(sidecar.http_port, "GET", "/v1.0/invoke/two/method/x")
    assert first.json()["path"] == "/first/x"
    assert second.json()["path"] == "/second/x"
    assert len(one.seen) == 1
    assert len(two.seen) == 1
