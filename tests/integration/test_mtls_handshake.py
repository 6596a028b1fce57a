"""Sidecar-to-sidecar mTLS on real loopback sockets: who is let in, and rotation.

A line server stands in for the internal listener: it is created with
`MtlsContexts.server_context` and answers each line with the SPIFFE id it
read from the client's certificate. Clients connect with `client_context()`,
or with hand-built contexts for the material `MtlsContexts` itself refuses
to load (expired, foreign, none). Certificates come from `certs.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastproxy.config import Config, ConfigError
from fastproxy.security.certs import create_ca, issue_workload_cert
from fastproxy.security.identity import SpiffeId
from fastproxy.security.tls import MtlsContexts, MtlsSource, peer_identity

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 5.0
ALICE = SpiffeId("public", "default", "alice")
BOB = SpiffeId("public", "default", "bob")
CAROL = SpiffeId("public", "default", "carol")
NOW = dt.datetime.now(dt.UTC)


# --- material --------------------------------------------------------------------------


@dataclass(frozen=True)
class Ca:
    cert: bytes
    key: bytes

    @classmethod
    def new(cls) -> Ca:
        return cls(*create_ca("public", 30))

    def issue(self, spiffe_id: SpiffeId, **validity: dt.datetime) -> tuple[bytes, bytes]:
        return issue_workload_cert(self.cert, self.key, spiffe_id, 7, **validity)


def _replace(path: Path, data: bytes) -> None:
    """Write the way cert-manager and `fastproxy certs` do: a new file renamed over the old."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_material(folder: Path, ca: Ca, spiffe_id: SpiffeId) -> MtlsSource:
    """Anchors, chain and key as files in `folder`; the source names them."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = ca.issue(spiffe_id)
    paths = {name: folder / name for name in ("ca.pem", "chain.pem", "key.pem")}
    for name, data in zip(paths, (ca.cert, cert, key), strict=True):
        _replace(paths[name], data)
    return MtlsSource(*(str(path) for path in paths.values()))


def inline(ca: Ca, spiffe_id: SpiffeId) -> MtlsSource:
    cert, key = ca.issue(spiffe_id)
    return MtlsSource(ca.cert.decode(), cert.decode(), key.decode())


def hand_built_client(
    tmp_path: Path, anchors: bytes, cert_and_key: tuple[bytes, bytes] | None
) -> ssl.SSLContext:
    """A client context for material MtlsContexts would refuse to load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=anchors.decode())
    if cert_and_key is not None:
        cert_path, key_path = tmp_path / "raw-cert.pem", tmp_path / "raw-key.pem"
        cert_path.write_bytes(cert_and_key[0])
        key_path.write_bytes(cert_and_key[1])
        context.load_cert_chain(cert_path, key_path)
    return context


# --- a line server and its clients ------------------------------------------------------------


class LineServer:
    """Answers each line with `<client's SPIFFE id> <line>` on an mTLS listener."""

    def __init__(self, contexts: MtlsContexts) -> None:
        self.contexts = contexts
        self.peers: list[SpiffeId | None] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.contexts.server_context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        async with asyncio.timeout(TIMEOUT):
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        peer = peer_identity(writer.get_extra_info("ssl_object"))
        self.peers.append(peer)
        try:
            while line := await reader.readline():
                writer.write(f"{peer} {line.decode().strip()}\n".encode())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def server_identity(self) -> SpiffeId | None:
        return peer_identity(self.writer.get_extra_info("ssl_object"))

    async def ask(self, text: str) -> str:
        async with asyncio.timeout(TIMEOUT):
            self.writer.write(text.encode() + b"\n")
            await self.writer.drain()
            return (await self.reader.readline()).decode().strip()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(TIMEOUT):
                await self.writer.wait_closed()


@pytest.fixture
async def connections() -> AsyncIterator[list[Connection]]:
    """Every connection a test opens, closed at teardown."""
    opened: list[Connection] = []
    yield opened
    for connection in opened:
        await connection.close()


@pytest.fixture
async def serve() -> AsyncIterator[list[LineServer]]:
    started: list[LineServer] = []
    yield started
    for server in started:
        await server.stop()


async def start_server(serve: list[LineServer], contexts: MtlsContexts) -> LineServer:
    server = LineServer(contexts)
    await server.start()
    serve.append(server)
    return server


async def connect(connections: list[Connection], port: int, context: ssl.SSLContext) -> Connection:
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    connection = Connection(reader, writer)
    connections.append(connection)
    return connection


async def refusal(connections: list[Connection], port: int, context: ssl.SSLContext) -> str:
    """How an exchange that must not happen failed: the error text, or "eof".

    With TLS 1.3 a client finishes its half of the handshake before the server has
    checked the client's certificate, so the server's refusal shows on the first
    read; the listener drops the connection without flushing its alert, so the
    client mostly sees an end of file rather than the reason.
    """
    try:
        connection = await connect(connections, port, context)
        answer = await connection.ask("hello")
    except (ssl.SSLError, ConnectionError) as exc:
        return f"{type(exc).__name__}: {exc}"
    assert answer == "", f"the exchange went through: {answer!r}"
    return "eof"


async def assert_refused_then_still_serving(
    connections: list[Connection], server: LineServer, ca: Ca, context: ssl.SSLContext
) -> None:
    """The refused client never reached the handler, and the listener still lets a good
    client in: the refusal was about the client's material, not a broken server."""
    failure = await refusal(connections, server.port, context)
    assert server.peers == [], failure

    good = MtlsContexts(inline(ca, CAROL)).client_context()
    connection = await connect(connections, server.port, good)
    assert await connection.ask("ok") == f"{CAROL} ok"
    assert server.peers == [CAROL]


# --- who is let in --------------------------------------------------------------------------


async def test_handshake_names_both_sides(
    serve: list[LineServer], connections: list[Connection]
) -> None:
    ca = Ca.new()
    server = await start_server(serve, MtlsContexts(inline(ca, BOB)))
    client = MtlsContexts(inline(ca, ALICE))

    connection = await connect(connections, server.port, client.client_context())

    assert await connection.ask("hi") == f"{ALICE} hi"
    assert server.peers == [ALICE]
    assert connection.server_identity == BOB
    ssl_object = connection.writer.get_extra_info("ssl_object")
    assert ssl_object.version() in {"TLSv1.2", "TLSv1.3"}


async def test_many_clients_on_one_listener(
    serve: list[LineServer], connections: list[Connection]
) -> None:
    ca = Ca.new()
    server = await start_server(serve, MtlsContexts(inline(ca, BOB)))
    clients = {spiffe_id: MtlsContexts(inline(ca, spiffe_id)) for spiffe_id in (ALICE, CAROL)}

    for spiffe_id, contexts in clients.items():
        connection = await connect(connections, server.port, contexts.client_context())
        assert await connection.ask("x") == f"{spiffe_id} x"

    assert server.peers == [ALICE, CAROL]


async def test_client_certificate_from_another_ca_is_refused(
    serve: list[LineServer], connections: list[Connection], tmp_path: Path
) -> None:
    ca, other = Ca.new(), Ca.new()
    server = await start_server(serve, MtlsContexts(inline(ca, BOB)))
    # It trusts the server's CA, but its own certificate comes from elsewhere.
    client = hand_built_client(tmp_path, ca.cert, other.issue(ALICE))

    await assert_refused_then_still_serving(connections, server, ca, client)


async def test_expired_client_certificate_is_refused(
    serve: list[LineServer], connections: list[Connection], tmp_path: Path
) -> None:
    ca = Ca.new()
    server = await start_server(serve, MtlsContexts(inline(ca, BOB)))
    expired = ca.issue(ALICE, now=NOW - dt.timedelta(days=30))
    client = hand_built_client(tmp_path, ca.cert, expired)

    await assert_refused_then_still_serving(connections, server, ca, client)


async def test_client_without_certificate_is_refused(
    serve: list[LineServer], connections: list[Connection], tmp_path: Path
) -> None:
    ca = Ca.new()
    server = await start_server(serve, MtlsContexts(inline(ca, BOB)))
    client = hand_built_client(tmp_path, ca.cert, None)

    await assert_refused_then_still_serving(connections, server, ca, client)


async def test_server_certificate_from_another_ca_is_refused_by_the_client(
    serve: list[LineServer], connections: list[Connection]
) -> None:
    ca, other = Ca.new(), Ca.new()
    server = await start_server(serve, MtlsContexts(inline(other, BOB)))
    client = MtlsContexts(inline(ca, ALICE))

    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await connect(connections, server.port, client.client_context())

    assert server.peers == []


def test_contexts_require_tls_1_2_and_a_verified_peer() -> None:
    contexts = MtlsContexts(inline(Ca.new(), BOB))
    client = contexts.client_context()

    for context in (contexts.server_context, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_REQUIRED
    assert not client.check_hostname


def test_session_tickets_stay_enabled() -> None:
    contexts = MtlsContexts(inline(Ca.new(), BOB))

    assert not contexts.server_context.options & ssl.OP_NO_TICKET
    assert contexts.server_context.num_tickets > 0


# --- rotation ------------------------------------------------------------------------------


async def test_server_rotation_serves_new_certificate_to_new_connections_only(
    serve: list[LineServer], connections: list[Connection], tmp_path: Path
) -> None:
    ca = Ca.new()
    server_contexts = MtlsContexts(write_material(tmp_path / "bob", ca, BOB))
    server = await start_server(serve, server_contexts)
    client = MtlsContexts(inline(ca, ALICE))
    before = await connect(connections, server.port, client.client_context())
    assert await before.ask("1") == f"{ALICE} 1"
    listener = server.contexts.server_context

    write_material(tmp_path / "bob", ca, CAROL)
    assert server_contexts.reload_if_changed()

    after = await connect(connections, server.port, client.client_context())
    assert after.server_identity == CAROL
    assert await after.ask("2") == f"{ALICE} 2"
    assert before.server_identity == BOB
    assert await before.ask("3") == f"{ALICE} 3"
    assert server_contexts.identity == CAROL
    assert server.contexts.server_context is listener
    assert server_contexts.last_error is None


async def test_client_rotation_presents_new_certificate_on_new_connections(
    serve: list[LineServer], connections: list[Connection], tmp_path: Path
) -> None:
    ca = Ca.new()
    server = await start_server(serve, MtlsContexts(inline(ca, BOB)))
    client = MtlsContexts(write_material(tmp_path / "alice", ca, ALICE))
    before = await connect(connections, server.port, client.client_context())
    assert await before.ask("1") == f"{ALICE} 1"

    write_material(tmp_path / "alice", ca, CAROL)
    assert client.reload_if_changed()
    after = await connect(connections, server.port, client.client_context())

    assert await after.ask("2") == f"{CAROL} 2"
    assert await before.ask("3") == f"{ALICE} 3"
    assert server.peers == [ALICE, CAROL]
    assert client.identity == CAROL


async def test_rotation_to_a_new_ca_moves_the_trust_anchors_too(
    serve: list[LineServer], connections: list[Connection], tmp_path: Path
) -> None:
    old, new = Ca.new(), Ca.new()
    server_contexts = MtlsContexts(write_material(tmp_path / "bob", old, BOB))
    server = await start_server(serve, server_contexts)
    old_client = MtlsContexts(inline(old, ALICE))
    new_client = MtlsContexts(inline(new, CAROL))
    failure = await refusal(connections, server.port, new_client.client_context())
    assert server.peers == [], failure

    write_material(tmp_path / "bob", new, BOB)
    assert server_contexts.reload_if_changed()

    connection = await connect(connections, server.port, new_client.client_context())
    assert await connection.ask("x") == f"{CAROL} x"
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(connections, server.port, old_client.client_context())
    assert server.peers == [CAROL]


@pytest.mark.parametrize(
    ("file", "data", "fragment"),
    [
        pytest.param("chain.pem", b"not a certificate", "certificate chain", id="garbage-chain"),
        pytest.param("key.pem", b"", "certificate key", id="empty-key"),
        pytest.param("ca.pem", b"-----BEGIN CERTIFICATE-----\n", "trust anchors", id="cut-ca"),
    ],
)
async def test_invalid_new_material_keeps_serving_the_old(
    serve: list[LineServer],
    connections: list[Connection],
    tmp_path: Path,
    file: str,
    data: bytes,
    fragment: str,
) -> None:
    ca = Ca.new()
    server_contexts = MtlsContexts(write_material(tmp_path / "bob", ca, BOB))
    server = await start_server(serve, server_contexts)
    client = MtlsContexts(inline(ca, ALICE))

    _replace(tmp_path / "bob" / file, data)
    assert not server_contexts.reload_if_changed()
    error = server_contexts.last_error

    assert error is not None and fragment in error, error
    assert server_contexts.identity == BOB
    connection = await connect(connections, server.port, client.client_context())
    assert connection.server_identity == BOB
    assert await connection.ask("x") == f"{ALICE} x"
    # No change since: no second attempt, the error stays for the caller to log once.
    assert not server_contexts.reload_if_changed()
    assert server_contexts.last_error == error

    write_material(tmp_path / "bob", ca, CAROL)
    assert server_contexts.reload_if_changed()
    assert server_contexts.last_error is None
    assert (await connect(connections, server.port, client.client_context())).server_identity == (
        CAROL
    )


async def test_key_not_matching_the_new_certificate_keeps_the_old(tmp_path: Path) -> None:
    ca = Ca.new()
    source = write_material(tmp_path, ca, BOB)
    contexts = MtlsContexts(source)

    _replace(Path(source.cert_chain), ca.issue(CAROL)[0])  # the key file is still bob's

    assert not contexts.reload_if_changed()
    assert contexts.last_error is not None and "does not match" in contexts.last_error
    assert contexts.identity == BOB


def test_expired_new_certificate_is_not_loaded(tmp_path: Path) -> None:
    ca = Ca.new()
    source = write_material(tmp_path, ca, BOB)
    contexts = MtlsContexts(source)

    cert, key = ca.issue(CAROL, now=NOW - dt.timedelta(days=30))
    _replace(Path(source.cert_key), key)
    _replace(Path(source.cert_chain), cert)

    assert not contexts.reload_if_changed()
    assert contexts.last_error is not None and "expired" in contexts.last_error
    assert contexts.identity == BOB


def test_unchanged_or_touched_files_do_not_reload(tmp_path: Path) -> None:
    source = write_material(tmp_path, Ca.new(), BOB)
    contexts = MtlsContexts(source)
    client = contexts.client_context()

    assert not contexts.reload_if_changed()
    _replace(Path(source.cert_chain), Path(source.cert_chain).read_bytes())
    assert not contexts.reload_if_changed()

    assert contexts.client_context() is client
    assert contexts.reloads == 0


def test_deleted_then_restored_files(tmp_path: Path) -> None:
    ca = Ca.new()
    source = write_material(tmp_path, ca, BOB)
    contexts = MtlsContexts(source)

    Path(source.cert_key).unlink()
    assert not contexts.reload_if_changed()
    assert contexts.last_error is not None and "cannot read" in contexts.last_error

    write_material(tmp_path, ca, CAROL)
    assert contexts.reload_if_changed()
    assert contexts.identity == CAROL
    assert contexts.reloads == 1


def test_inline_pem_never_reloads() -> None:
    contexts = MtlsContexts(inline(Ca.new(), BOB))

    assert not contexts.reload_if_changed()
    assert "inline" in repr(contexts)


# --- loading ----------------------------------------------------------------------------


def test_identity_is_read_from_our_certificate(tmp_path: Path) -> None:
    contexts = MtlsContexts(write_material(tmp_path, Ca.new(), BOB))

    assert contexts.identity == BOB
    assert repr(contexts).startswith(f"<MtlsContexts {BOB} files reloads=0")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        pytest.param({"cert_key": "/nonexistent/key.pem"}, "cannot read", id="missing-file"),
        pytest.param({"trust_anchors": "-----BEGIN junk"}, "trust anchors", id="bad-anchors"),
        pytest.param({"cert_chain": "-----BEGIN junk"}, "certificate chain", id="bad-chain"),
        pytest.param({"cert_key": "-----BEGIN junk"}, "certificate key", id="bad-key"),
        pytest.param({"trust_anchors": "OTHER"}, "unable to get local issuer", id="foreign-ca"),
        pytest.param({"cert_chain": "EXPIRED"}, "certificate has expired", id="expired"),
        pytest.param({"cert_key": "OTHER_KEY"}, "does not match", id="key-mismatch"),
    ],
)
def test_unusable_material_is_a_config_error(change: dict[str, str], fragment: str) -> None:
    ca, other = Ca.new(), Ca.new()
    expired_cert, expired_key = ca.issue(BOB, now=NOW - dt.timedelta(days=30))
    values = {
        "OTHER": other.cert.decode(),
        "EXPIRED": expired_cert.decode(),
        "OTHER_KEY": ca.issue(BOB)[1].decode(),
    }
    good = inline(ca, BOB)
    if change.get("cert_chain") == "EXPIRED":
        good = MtlsSource(good.trust_anchors, good.cert_chain, expired_key.decode())
    fields = {
        "trust_anchors": good.trust_anchors,
        "cert_chain": good.cert_chain,
        "cert_key": good.cert_key,
    }
    fields.update({name: values.get(value, value) for name, value in change.items()})

    with pytest.raises(ConfigError, match=fragment):
        MtlsContexts(MtlsSource(**fields))


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param({}, None, id="off"),
        pytest.param(
            {"trust_anchors": "a", "cert_chain": "c", "cert_key": "k"},
            MtlsSource("a", "c", "k"),
            id="on",
        ),
        pytest.param(
            {"trust_anchors": "a", "cert_chain": "c", "cert_key": "k", "enable_mtls": True},
            MtlsSource("a", "c", "k"),
            id="enabled-and-on",
        ),
    ],
)
def test_source_from_config(settings: dict[str, object], expected: MtlsSource | None) -> None:
    assert MtlsSource.from_config(Config(**settings)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        pytest.param({"enable_mtls": True}, "enable_mtls is set", id="enabled-without"),
        pytest.param({"trust_anchors": "a", "cert_chain": "c"}, "certificate key", id="partial"),
    ],
)
def test_source_from_incomplete_config_is_an_error(
    settings: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        MtlsSource.from_config(Config(**settings))  # type: ignore[arg-type]
