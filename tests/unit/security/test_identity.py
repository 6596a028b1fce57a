"""SPIFFE ids: parsing the URI and reading the one id a verified peer certificate names."""

from __future__ import annotations

from typing import Any

import pytest

from fastproxy.security.identity import SpiffeId, identity_from_peercert

ORDERS = SpiffeId("public", "default", "orders")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        pytest.param("spiffe://public/ns/default/orders", ORDERS, id="valid"),
        pytest.param(
            "spiffe://example.org/ns/prod/cart",
            SpiffeId("example.org", "prod", "cart"),
            id="dotted-trust-domain",
        ),
        pytest.param("https://public/ns/default/orders", None, id="wrong-scheme"),
        pytest.param("SPIFFE://public/ns/default/orders", None, id="uppercase-scheme"),
        pytest.param("spiffe:/public/ns/default/orders", None, id="one-slash"),
        pytest.param("spiffe://public/default/orders", None, id="missing-ns-segment"),
        pytest.param("spiffe://public/namespace/default/orders", None, id="ns-misspelt"),
        pytest.param("spiffe://public/ns/default/orders/extra", None, id="extra-segment"),
        pytest.param("spiffe://public/ns/default/orders/", None, id="trailing-slash"),
        pytest.param("spiffe://public/ns/default", None, id="missing-app-id"),
        pytest.param("spiffe:///ns/default/orders", None, id="empty-trust-domain"),
        pytest.param("spiffe://public/ns//orders", None, id="empty-namespace"),
        pytest.param("spiffe://public/ns/default/", None, id="empty-app-id"),
        pytest.param("spiffe://", None, id="scheme-only"),
        pytest.param("", None, id="empty"),
    ],
)
def test_spiffe_id_parse(uri: str, expected: SpiffeId | None) -> None:
    assert SpiffeId.parse(uri) == expected


def test_spiffe_id_str_round_trips() -> None:
    assert str(ORDERS) == "spiffe://public/ns/default/orders"
    assert SpiffeId.parse(str(ORDERS)) == ORDERS


def _cert(*sans: tuple[str, str]) -> dict[str, Any]:
    """The shape `SSLObject.getpeercert()` returns, reduced to what matters here."""
    return {"subject": ((("commonName", "orders"),),), "subjectAltName": sans}


@pytest.mark.parametrize(
    ("cert", "expected"),
    [
        pytest.param(None, None, id="no-certificate"),
        pytest.param({}, None, id="empty-certificate"),
        pytest.param({"subject": ((("commonName", "orders"),),)}, None, id="no-san"),
        pytest.param(_cert(("URI", str(ORDERS))), ORDERS, id="one-uri"),
        pytest.param(_cert(("DNS", "orders"), ("URI", str(ORDERS))), ORDERS, id="uri-beside-dns"),
        pytest.param(
            _cert(("URI", "https://orders.example"), ("URI", str(ORDERS))),
            ORDERS,
            id="non-spiffe-uri-ignored",
        ),
        pytest.param(
            _cert(("URI", str(ORDERS)), ("URI", "spiffe://public/ns/default/cart")),
            None,
            id="two-spiffe-uris-ambiguous",
        ),
        pytest.param(_cert(("DNS", "orders")), None, id="dns-only"),
        pytest.param(_cert(("URI", "spiffe://public/orders")), None, id="malformed-spiffe-uri"),
        pytest.param(_cert(("email", str(ORDERS))), None, id="spiffe-text-in-other-kind"),
    ],
)
def test_identity_from_peercert(cert: dict[str, Any] | None, expected: SpiffeId | None) -> None:
    assert identity_from_peercert(cert) == expected
