"""mTLS between sidecars: SSL contexts built from the trust anchors and our certificate.

Both legs require a certificate that chains to the trust anchors; the peer's
identity is the SPIFFE id in its certificate. The listener keeps one server
context for its whole life and each handshake switches to the newest material,
so certificates rotate without rebinding or dropping open connections.

Handshakes stay rare because sidecars reuse pooled keep-alive connections; TLS 1.3
session tickets (OpenSSL's default, deliberately left on) make the reconnects
that do happen cheaper for clients that resume.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import types

from fastproxy.config.errors import ConfigError
from fastproxy.config.model import Config
from fastproxy.security.identity import SCHEME, SpiffeId, identity_from_peercert

PEM_PREFIX = "-----BEGIN"
# (Config field, what it is, flag, environment variable): for messages naming the source.
_FIELDS = (
    ("trust_anchors", "trust anchors", "--trust-anchors", "DAPR_TRUST_ANCHORS"),
    ("cert_chain", "certificate chain", "--cert-chain", "DAPR_CERT_CHAIN"),
    ("cert_key", "certificate key", "--cert-key", "DAPR_CERT_KEY"),
)
_MIN_VERSION = ssl.TLSVersion.TLSv1_2
# Messages in a handshake between our own two contexts; a few suffice for TLS 1.2 and 1.3.
_SELF_CHECK_ROUNDS = 8


@dataclass(frozen=True, slots=True)
class MtlsSource:
    """Where the material comes from: each value is PEM text or the path of a PEM file."""

    trust_anchors: str
    cert_chain: str
    cert_key: str

    @classmethod
    def from_config(cls, config: Config) -> MtlsSource | None:
        """The source when mTLS is on (all three set); None when it is off (none set)."""
        values = [getattr(config, field) for field, *_ in _FIELDS]
        missing = [
            f"{what} ({flag} / {env})"
            for value, (_, what, flag, env) in zip(values, _FIELDS, strict=True)
            if not value
        ]
        if not missing:
            return cls(*values)
        if len(missing) == len(_FIELDS) and not config.enable_mtls:
            return None
        reason = "enable_mtls is set" if len(missing) == len(_FIELDS) else "mTLS needs all three"
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(f"{reason}, but the {' and '.join(missing)} {verb} missing")

    @property
    def paths(self) -> tuple[str, ...]:
        """The values that name files (PEM text never changes, so never reloads)."""
        return tuple(value for value in self._values() if not _is_pem(value))

    def _values(self) -> tuple[str, str, str]:
        return (self.trust_anchors, self.cert_chain, self.cert_key)


@dataclass(frozen=True, slots=True)
class _Material:
    """The bytes read from a source: compared to skip rebuilding on a mere touch."""

    trust_anchors: bytes
    cert_chain: bytes
    cert_key: bytes


@dataclass(frozen=True, slots=True)
class _Built:
    server: ssl.SSLContext
    client: ssl.SSLContext
    identity: SpiffeId | None


# The files' (inode, device, size, mtime); None for a file that cannot be stat'ed.
_Signature = tuple[tuple[int, int, int, int] | None, ...]


class MtlsContexts:
    """Server and client SSLContexts for sidecar-to-sidecar TLS, reloadable in place.

    Rotation: `server_context` is the first server context built, carrying an SNI
    callback (OpenSSL runs it on every ClientHello, SNI or not) that moves the
    connection to the newest server context; trust anchors and certificate both
    come from that context, while the required client certificate and TLS >= 1.2
    are the same in all of them. Clients call `client_context()` per new
    connection. Open connections keep the material they were made with.
    """

    def __init__(self, source: MtlsSource) -> None:
        """Load the material now; raises ConfigError when it is unusable."""
        self.source = source
        self._paths = source.paths
        self._signature = _signature(self._paths)
        self._material = _read(source)
        built = _build(self._material)
        self._current = built
        self._last_error: str | None = None
        self.reloads = 0
        self.server_context = built.server
        self.server_context.sni_callback = self._select_server_context

    def __repr__(self) -> str:
        kind = "files" if self._paths else "inline"
        error = f" error={self._last_error!r}" if self._last_error else ""
        return f"<MtlsContexts {self.identity} {kind} reloads={self.reloads}{error}>"

    @property
    def identity(self) -> SpiffeId | None:
        """Our own SPIFFE id, from the URI SAN of our certificate."""
        return self._current.identity

    @property
    def last_error(self) -> str | None:
        """Why the latest reload attempt failed; None once one succeeds.

        An attempt happens at most once per change of the files, so a caller that
        logs this when `reload_if_changed()` returns False and the text differs
        from the one it logged last logs each problem once.
        """
        return self._last_error

    def client_context(self) -> ssl.SSLContext:
        """The context for a new connection to a peer sidecar.

        No host name check: peers are named by SPIFFE URIs, not DNS names; read the
        callee's id with `peer_identity` after the handshake to check who answered.
        """
        return self._current.client

    def reload_if_changed(self) -> bool:
        """Re-read the files if any changed since the last look; True if reloaded.

        Meant for a once-a-second tick: it costs a stat per file when nothing
        changed. Invalid new material leaves the current contexts in place and
        sets `last_error`. Inline PEM sources never reload.
        """
        if not self._paths:
            return False
        signature = _signature(self._paths)
        if signature == self._signature:
            return False
        # Taken before reading: a write racing the read changes it again, so the
        # next tick reads once more.
        self._signature = signature
        try:
            material = _read(self.source)
            if material == self._material:
                self._last_error = None
                return False
            built = _build(material)
        except ConfigError as exc:
            self._last_error = str(exc)
            return False
        self._material = material
        self._current = built
        self._last_error = None
        self.reloads += 1
        return True

    def _select_server_context(
        self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        current = self._current.server
        if ssl_object.context is not current:
            ssl_object.context = current


def peer_identity(ssl_object: ssl.SSLObject | None) -> SpiffeId | None:
    """The SPIFFE id of the verified peer on a TLS connection, if it names exactly one."""
    if ssl_object is None:
        return None
    try:
        cert = ssl_object.getpeercert()
    except ValueError:  # the handshake has not finished
        return None
    return identity_from_peercert(cert)


# --- reading -------------------------------------------------------------------------


def _is_pem(value: str) -> bool:
    return value.lstrip().startswith(PEM_PREFIX)


def _signature(paths: tuple[str, ...]) -> _Signature:
    out: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _read(source: MtlsSource) -> _Material:
    values = source._values()
    return _Material(
        *(_read_one(value, field) for value, field in zip(values, _FIELDS, strict=True))
    )


def _read_one(value: str, field: tuple[str, str, str, str]) -> bytes:
    if _is_pem(value):
        return value.encode("utf-8")
    try:
        with open(value, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"{_name(field)}: cannot read {value!r}: {exc.strerror}") from None


def _name(field: tuple[str, str, str, str]) -> str:
    _, what, flag, env = field
    return f"{what} ({flag} / {env})"


# --- building ------------------------------------------------------------------------


def _build(material: _Material) -> _Built:
    anchors = _certificates(material.trust_anchors, _FIELDS[0])
    chain = _certificates(material.cert_chain, _FIELDS[1])
    key = _private_key(material.cert_key)
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise ConfigError(
            f"{_name(_FIELDS[2])} does not match the first certificate of the {_name(_FIELDS[1])}"
        )
    anchors_pem = "".join(_pem(cert) for cert in anchors)
    # The ssl module loads certificates and keys from files only: private ones,
    # removed straight after loading.
    with tempfile.TemporaryDirectory(prefix="fastproxy-mtls-") as folder:
        chain_path = os.path.join(folder, "chain.pem")
        key_path = os.path.join(folder, "key.pem")
        _write_private(chain_path, "".join(_pem(cert) for cert in chain).encode("ascii"))
        _write_private(key_path, _key_pem(key))
        server = _context(True, anchors_pem, chain_path, key_path)
        client = _context(False, anchors_pem, chain_path, key_path)
    _self_check(server, client)
    return _Built(server, client, _spiffe_id(chain[0]))


def _context(server_side: bool, anchors: str, chain: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _MIN_VERSION
    if not server_side:
        context.check_hostname = False  # SPIFFE ids are URIs, checked by the caller
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cadata=anchors)
        context.load_cert_chain(chain, key)
    except ssl.SSLError as exc:
        raise ConfigError(f"unusable mTLS material: {exc.reason or exc}") from None
    return context


def _self_check(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """Handshake our two contexts with each other, in memory.

    Material a peer holding the same anchors would refuse (expired, issued by
    another CA, lacking the client or server purpose) is refused here, at load,
    with OpenSSL's own reason.
    """
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    sides = [
        ("as a server", server.wrap_bio(to_server, from_server, server_side=True)),
        ("as a client", client.wrap_bio(to_client, from_client, server_side=False)),
    ]
    pending = {role for role, _ in sides}
    for _ in range(_SELF_CHECK_ROUNDS):
        for role, ssl_object in sides:
            if role not in pending:
                continue
            try:
                ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLCertVerificationError as exc:
                # The client side verifies the server's certificate and vice versa.
                used = "server" if role == "as a client" else "client"
                raise ConfigError(
                    f"the {_name(_FIELDS[1])} does not verify against the {_name(_FIELDS[0])} "
                    f"as a {used} certificate: {exc.verify_message}"
                ) from None
            except ssl.SSLError as exc:
                raise ConfigError(
                    f"mTLS material fails a handshake {role}: {exc.reason or exc}"
                ) from None
            pending.discard(role)
        if not pending:
            return
        to_server.write(from_client.read())
        to_client.write(from_server.read())
    raise ConfigError("mTLS material: a handshake with itself did not complete")


def _certificates(data: bytes, field: tuple[str, str, str, str]) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"{_name(field)}: no PEM certificate found ({exc})") from None


def _private_key(data: bytes) -> types.PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{_name(_FIELDS[2])}: not an unencrypted PEM private key ({exc})"
        ) from None


def _spiffe_id(cert: x509.Certificate) -> SpiffeId | None:
    """The same rule as `identity_from_peercert`: exactly one spiffe:// URI SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise ConfigError(f"{_name(_FIELDS[1])}: bad extensions ({exc})") from None
    uris = [
        uri
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(SCHEME)
    ]
    return SpiffeId.parse(uris[0]) if len(uris) == 1 else None


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key_pem(key: types.PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _spki(public_key: types.PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
