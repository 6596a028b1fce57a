"""Development certificates: a CA and per-app SPIFFE workload certificates.

`fastproxy certs` writes them so mTLS between sidecars takes two commands; a
production deployment brings its own CA (Dapr's Sentry, cert-manager, ...).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fastproxy.config.errors import ConfigError
from fastproxy.security.identity import SpiffeId

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_COMMON_NAME = "fastproxy development CA"
# Certificates start a little in the past so a peer whose clock lags still accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)
_KEY_MODE = 0o600
_CERT_MODE = 0o644
# SPIFFE trust domains are lowercase; ids and namespaces become URI path segments and
# file names, so they are kept to characters that need no escaping anywhere.
_TRUST_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# --- pure: PEM in, PEM out ----------------------------------------------------------


def create_ca(trust_domain: str, days: int, now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A self-signed CA (P-256) that may sign workload certificates only (pathlen 0)."""
    _check_trust_domain(trust_domain)
    _check_days(days)
    now = now or _utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue_workload_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    spiffe_id: SpiffeId,
    days: int,
    now: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A P-256 leaf naming `spiffe_id` in its URI SAN, usable as TLS client and server.

    Valid from `not_before` (default: `now` minus a little clock skew) until `now`
    plus `days`, but never past the CA's own expiry; a `now` in the past makes an
    expired certificate, a `not_before` in the future one not yet valid.
    """
    _check_spiffe_id(spiffe_id)
    _check_days(days)
    ca_cert, ca_key = load_ca(ca_cert_pem, ca_key_pem)
    now = now or _utcnow()
    start = not_before if not_before is not None else now - CLOCK_SKEW
    ca_end = _not_after(ca_cert)
    end = min(now + dt.timedelta(days=days), ca_end)
    if end <= start:
        raise ConfigError(
            f"the CA expires on {ca_end:%Y-%m-%d %H:%M} UTC, "
            "before the certificate would start; create a new CA"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    if _DNS_LABEL.fullmatch(spiffe_id.app_id):
        names.append(x509.DNSName(spiffe_id.app_id))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.app_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def load_ca(ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[x509.Certificate, _SigningKey]:
    """The CA certificate and its key, checked to be a CA and a matching pair."""
    try:
        cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError as exc:
        raise ConfigError(f"the CA certificate is not a PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the CA key is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, _SigningKey):
        raise ConfigError("the CA key must be an EC or RSA key")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ConfigError("the CA key does not belong to the CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound as exc:
        raise ConfigError(f"the CA certificate lacks an extension: {exc}") from None
    if not constraints.ca:
        raise ConfigError("the CA certificate is not a CA (basicConstraints CA=false)")
    return cert, key


# --- the bundle `fastproxy certs` writes --------------------------------------------


def write_bundle(
    out_dir: str | os.PathLike[str],
    app_ids: Iterable[str],
    namespace: str,
    trust_domain: str,
    days: int,
    now: dt.datetime | None = None,
) -> list[Path]:
    """Write a CA (unless `out_dir` holds one) and a certificate and key per app.

    Files: `ca.pem`, `ca.key`, `<app>.pem` (the leaf only: every sidecar holds the
    CA as its trust anchor, and OpenSSL completes the chain it sends from there)
    and `<app>.key`; keys are 0600. Returns the paths written, so the
    CA files are absent from the list when an existing CA was reused. Each file
    is replaced atomically, so a running sidecar never reads half of one.
    """
    ids = [SpiffeId(trust_domain, namespace, app) for app in dict.fromkeys(app_ids)]
    if not ids:
        raise ConfigError("give at least one app id")
    for spiffe_id in ids:
        _check_spiffe_id(spiffe_id)
        if spiffe_id.app_id == Path(CA_CERT).stem:
            raise ConfigError(f"app id {spiffe_id.app_id!r} would overwrite the CA files")
    _check_days(days)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror}") from None
    written: list[Path] = []
    ca_cert_pem, ca_key_pem = _existing_ca(out)
    if not ca_cert_pem:
        ca_cert_pem, ca_key_pem = create_ca(trust_domain, days, now)
        written += _write_pair(out / CA_CERT, ca_cert_pem, out / CA_KEY, ca_key_pem)
    for spiffe_id in ids:
        cert_pem, key_pem = issue_workload_cert(ca_cert_pem, ca_key_pem, spiffe_id, days, now)
        name = spiffe_id.app_id
        written += _write_pair(out / f"{name}.pem", cert_pem, out / f"{name}.key", key_pem)
    return written


def _existing_ca(out: Path) -> tuple[bytes, bytes]:
    """The CA already in `out` (checked), or two empty values when there is none."""
    cert_path, key_path = out / CA_CERT, out / CA_KEY
    present = [path for path in (cert_path, key_path) if path.exists()]
    if not present:
        return b"", b""
    if len(present) == 1:
        other = key_path if present[0] == cert_path else cert_path
        raise ConfigError(f"{present[0]} exists but {other} does not: supply both or neither")
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the CA in {out}: {exc.strerror}") from None
    try:
        load_ca(cert_pem, key_pem)
    except ConfigError as exc:
        raise ConfigError(f"{cert_path}: {exc}") from None
    return cert_pem, key_pem


def _write_pair(cert_path: Path, cert_pem: bytes, key_path: Path, key_pem: bytes) -> list[Path]:
    _write(key_path, key_pem, _KEY_MODE)
    _write(cert_path, cert_pem, _CERT_MODE)
    return [cert_path, key_path]


def _write(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)  # exact, whatever the umask
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


# --- helpers -----------------------------------------------------------------------


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _spki(public_key: object) -> bytes:
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return b""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_trust_domain(trust_domain: str) -> None:
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ConfigError(
            f"invalid trust domain {trust_domain!r}: lowercase letters, digits, '.', '-', '_'"
        )


def _check_spiffe_id(spiffe_id: SpiffeId) -> None:
    _check_trust_domain(spiffe_id.trust_domain)
    if not _NAMESPACE.fullmatch(spiffe_id.namespace):
        raise ConfigError(
            f"invalid namespace {spiffe_id.namespace!r}: letters, digits, '.', '-', '_'"
        )
    if not _SEGMENT.fullmatch(spiffe_id.app_id):
        raise ConfigError(f"invalid app id {spiffe_id.app_id!r}: letters, digits, '-', '_'")


def _check_days(days: int) -> None:
    if days < 1:
        raise ConfigError(f"invalid validity of {days} days: must be at least 1")


def _not_after(cert: x509.Certificate) -> dt.datetime:
    # cryptography 42 added the aware property and deprecated the naive one; 41 has only that.
    aware = getattr(cert, "not_valid_after_utc", None)
    if isinstance(aware, dt.datetime):
        return aware
    return cert.not_valid_after.replace(tzinfo=dt.UTC)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
