"""Development certificates: a CA, SPIFFE workload leaves, and the bundle `certs` writes."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fastproxy.config import ConfigError
from fastproxy.security.certs import create_ca, issue_workload_cert, write_bundle
from fastproxy.security.identity import SpiffeId

ORDERS = SpiffeId("public", "default", "orders")
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return create_ca("public", 365)


def _load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _policy(ca_pem: bytes, at: dt.datetime | None = None) -> PolicyBuilder:
    # Verified at the real time of the check (the suite may run long after import).
    return PolicyBuilder().store(Store([_load(ca_pem)])).time(at or dt.datetime.now(dt.UTC))


# --- the leaf --------------------------------------------------------------------------


def test_leaf_verifies_against_its_ca_as_client_and_as_server(ca: tuple[bytes, bytes]) -> None:
    cert_pem, _ = issue_workload_cert(*ca, ORDERS, 30)
    leaf = _load(cert_pem)

    client = _policy(ca[0]).build_client_verifier().verify(leaf, [])
    _policy(ca[0]).build_server_verifier(x509.DNSName("orders")).verify(leaf, [])

    assert x509.UniformResourceIdentifier(str(ORDERS)) in client.subjects
    assert client.chain[-1] == _load(ca[0])


def test_leaf_from_another_ca_does_not_verify(ca: tuple[bytes, bytes]) -> None:
    other_ca = create_ca("public", 365)
    cert_pem, _ = issue_workload_cert(*other_ca, ORDERS, 30)

    with pytest.raises(VerificationError):
        _policy(ca[0]).build_client_verifier().verify(_load(cert_pem), [])


def test_leaf_names_the_workload_and_may_only_authenticate(ca: tuple[bytes, bytes]) -> None:
    cert_pem, _ = issue_workload_cert(*ca, ORDERS, 30)
    ext = _load(cert_pem).extensions

    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(ORDERS)]
    assert san.get_values_for_type(x509.DNSName) == ["orders"]
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign


def test_ca_may_sign_leaves_only(ca: tuple[bytes, bytes]) -> None:
    ext = _load(ca[0]).extensions

    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature


def test_key_is_p256_and_matches_the_certificate(ca: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = issue_workload_cert(*ca, ORDERS, 30)
    key = serialization.load_pem_private_key(key_pem, password=None)

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == _load(cert_pem).public_key()


def test_each_leaf_gets_its_own_key_and_serial(ca: tuple[bytes, bytes]) -> None:
    first, first_key = issue_workload_cert(*ca, ORDERS, 30)
    second, second_key = issue_workload_cert(*ca, ORDERS, 30)

    assert _load(first).serial_number != _load(second).serial_number
    assert first_key != second_key


def test_non_dns_app_id_gets_no_dns_name(ca: tuple[bytes, bytes]) -> None:
    cert_pem, _ = issue_workload_cert(*ca, SpiffeId("public", "default", "orders_v2"), 30)
    san = _load(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert san.get_values_for_type(x509.DNSName) == []


# --- validity ----------------------------------------------------------------------------


def test_validity_starts_slightly_in_the_past_and_lasts_the_days(
    ca: tuple[bytes, bytes],
) -> None:
    cert = _load(issue_workload_cert(*ca, ORDERS, 30, now=NOW)[0])

    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=30)
    assert NOW - dt.timedelta(hours=1) < cert.not_valid_before_utc < NOW


def test_past_now_makes_an_expired_certificate(ca: tuple[bytes, bytes]) -> None:
    cert_pem, _ = issue_workload_cert(*ca, ORDERS, 1, now=NOW - dt.timedelta(days=10))
    cert = _load(cert_pem)

    assert cert.not_valid_after_utc < NOW
    with pytest.raises(VerificationError, match="not valid at validation time"):
        _policy(ca[0]).build_client_verifier().verify(cert, [])


def test_future_not_before_makes_a_not_yet_valid_certificate(ca: tuple[bytes, bytes]) -> None:
    start = NOW + dt.timedelta(days=1)
    cert = _load(issue_workload_cert(*ca, ORDERS, 30, not_before=start)[0])

    assert cert.not_valid_before_utc == start
    with pytest.raises(VerificationError):
        _policy(ca[0]).build_client_verifier().verify(cert, [])


def test_leaf_never_outlives_its_ca() -> None:
    short_ca = create_ca("public", 2, now=NOW)
    cert = _load(issue_workload_cert(*short_ca, ORDERS, 365, now=NOW)[0])

    assert cert.not_valid_after_utc == _load(short_ca[0]).not_valid_after_utc


def test_expired_ca_issues_nothing() -> None:
    old_ca = create_ca("public", 1, now=NOW - dt.timedelta(days=5))

    with pytest.raises(ConfigError, match="CA expires"):
        issue_workload_cert(*old_ca, ORDERS, 30, now=NOW)


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spiffe_id", "days", "fragment"),
    [
        pytest.param(SpiffeId("Public", "default", "a"), 1, "trust domain", id="uppercase-domain"),
        pytest.param(SpiffeId("", "default", "a"), 1, "trust domain", id="empty-domain"),
        pytest.param(SpiffeId("public", "", "a"), 1, "namespace", id="empty-namespace"),
        pytest.param(SpiffeId("public", "a/b", "a"), 1, "namespace", id="slash-namespace"),
        pytest.param(SpiffeId("public", "default", "a/b"), 1, "app id", id="slash-app-id"),
        pytest.param(SpiffeId("public", "default", ".."), 1, "app id", id="dot-dot-app-id"),
        pytest.param(SpiffeId("public", "default", "a.b"), 1, "app id", id="dotted-app-id"),
        pytest.param(SpiffeId("public", "default", "é"), 1, "app id", id="non-ascii-app-id"),
        pytest.param(ORDERS, 0, "days", id="zero-days"),
    ],
)
def test_bad_workload_input_is_refused(
    ca: tuple[bytes, bytes], spiffe_id: SpiffeId, days: int, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        issue_workload_cert(*ca, spiffe_id, days)


def test_mismatched_ca_key_is_refused(ca: tuple[bytes, bytes]) -> None:
    _, other_key = create_ca("public", 365)

    with pytest.raises(ConfigError, match="does not belong"):
        issue_workload_cert(ca[0], other_key, ORDERS, 30)


def test_leaf_cannot_act_as_ca(ca: tuple[bytes, bytes]) -> None:
    leaf = issue_workload_cert(*ca, ORDERS, 30)

    with pytest.raises(ConfigError, match="not a CA"):
        issue_workload_cert(*leaf, SpiffeId("public", "default", "b"), 30)


# --- write_bundle -------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bundle_writes_ca_and_one_pair_per_app_with_private_keys(tmp_path: Path) -> None:
    out = tmp_path / "certs"

    written = write_bundle(out, ["a", "b", "a"], "prod", "public", 30)

    assert written == [
        out / name for name in ("ca.pem", "ca.key", "a.pem", "a.key", "b.pem", "b.key")
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    for path in written:
        assert _mode(path) == (0o600 if path.suffix == ".key" else 0o644), path
    leaf = _load((out / "b.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://public/ns/prod/b"]
    _policy((out / "ca.pem").read_bytes()).build_client_verifier().verify(leaf, [])


def test_leaf_file_holds_only_the_leaf(tmp_path: Path) -> None:
    write_bundle(tmp_path, ["a"], "default", "public", 30)

    assert len(x509.load_pem_x509_certificates((tmp_path / "a.pem").read_bytes())) == 1


def test_bundle_reuses_the_ca_already_there(tmp_path: Path) -> None:
    write_bundle(tmp_path, ["a"], "default", "public", 30)
    ca_files = {name: (tmp_path / name).read_bytes() for name in ("ca.pem", "ca.key")}

    written = write_bundle(tmp_path, ["b"], "default", "public", 30)

    assert written == [tmp_path / "b.pem", tmp_path / "b.key"]
    assert {name: (tmp_path / name).read_bytes() for name in ca_files} == ca_files
    for app in ("a", "b"):
        leaf = _load((tmp_path / f"{app}.pem").read_bytes())
        _policy(ca_files["ca.pem"]).build_client_verifier().verify(leaf, [])


def test_bundle_reissue_replaces_the_app_pair(tmp_path: Path) -> None:
    write_bundle(tmp_path, ["a"], "default", "public", 30)
    before = (tmp_path / "a.pem").read_bytes()

    write_bundle(tmp_path, ["a"], "default", "public", 30)

    assert (tmp_path / "a.pem").read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bundle_keys_stay_private_under_a_permissive_umask(tmp_path: Path) -> None:
    (tmp_path / "a.key").write_bytes(b"old")
    (tmp_path / "a.key").chmod(0o666)

    write_bundle(tmp_path, ["a"], "default", "public", 30)

    assert _mode(tmp_path / "a.key") == 0o600


@pytest.mark.parametrize(
    ("existing", "fragment"),
    [
        pytest.param({"ca.pem": b"x"}, "ca.key does not", id="cert-without-key"),
        pytest.param({"ca.key": b"x"}, "ca.pem does not", id="key-without-cert"),
        pytest.param({"ca.pem": b"junk", "ca.key": b"junk"}, "ca.pem: ", id="garbage-ca"),
    ],
)
def test_bundle_refuses_a_broken_ca(
    tmp_path: Path, existing: dict[str, bytes], fragment: str
) -> None:
    for name, data in existing.items():
        (tmp_path / name).write_bytes(data)

    with pytest.raises(ConfigError, match=fragment):
        write_bundle(tmp_path, ["a"], "default", "public", 30)

    assert not (tmp_path / "a.pem").exists()


@pytest.mark.parametrize(
    ("app_ids", "fragment"),
    [
        pytest.param([], "at least one", id="no-apps"),
        pytest.param(["ca"], "overwrite the CA", id="app-named-ca"),
        pytest.param(["../x"], "app id", id="path-escape"),
    ],
)
def test_bundle_refuses_bad_app_ids_before_writing(
    tmp_path: Path, app_ids: list[str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        write_bundle(tmp_path / "out", app_ids, "default", "public", 30)

    assert not (tmp_path / "out").exists()
