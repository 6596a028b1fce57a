"""Routing: the invoke URL forms, the header forms, local routes and the token exemption."""

from __future__ import annotations

import base64

import pytest

from fastproxy.errors import InvokeError, NoTargetError
from fastproxy.routing import (
    NO_APP_ID,
    Invocation,
    LocalRoute,
    Router,
    TargetKind,
    basic_auth_app_id,
    local_route,
    token_exempt,
)

APP = TargetKind.APP
ENDPOINT = TargetKind.ENDPOINT
URL = TargetKind.URL


def make_router(cache_size: int = 4096) -> Router:
    return Router("app", "default", ("ext", "my-endpoint"), cache_size=cache_size)


# (id, path, kind, target, app_id, namespace, is_self, method)
_S = "default"
# fmt: off
_PATH_TABLE: list[tuple[str, bytes, TargetKind, str, str, str, bool, bytes]] = [
    ("self", b"/v1.0/invoke/app/method/hello", APP, "app", "app", _S, True, b"/hello"),
    ("nested-method", b"/v1.0/invoke/app/method/api/v1/add", APP, "app", "app", _S, True,
     b"/api/v1/add"),
    ("repeated-slashes", b"/v1.0////invoke//app/method//foo", APP, "app", "app", _S, True,
     b"/foo"),
    ("leading-double-slash", b"//v1.0/invoke/app/method/x", APP, "app", "app", _S, True, b"/x"),
    ("empty-method-with-slash", b"/v1.0/invoke/app/method/", APP, "app", "app", _S, True, b"/"),
    ("empty-method-without-slash", b"/v1.0/invoke/app/method", APP, "app", "app", _S, True,
     b"/"),
    ("first-method-segment-splits", b"/v1.0/invoke/app/method/a/method/b", APP, "app", "app",
     _S, True, b"/a/method/b"),
    ("method-normalised", b"/v1.0/invoke/app/method/admin%2F..%2Fpublic", APP, "app", "app",
     _S, True, b"/public"),
    ("own-namespace-is-self", b"/v1.0/invoke/app.default/method/x", APP, "app.default", "app",
     _S, True, b"/x"),
    ("same-id-other-namespace", b"/v1.0/invoke/app.prod/method/x", APP, "app.prod", "app",
     "prod", False, b"/x"),
    ("other-app", b"/v1.0/invoke/orders/method/x", APP, "orders", "orders", _S, False, b"/x"),
    ("other-app-other-namespace", b"/v1.0/invoke/orders.prod/method/x", APP, "orders.prod",
     "orders", "prod", False, b"/x"),
    ("underscore-and-dash-in-id", b"/v1.0/invoke/my_app-2/method/x", APP, "my_app-2",
     "my_app-2", _S, False, b"/x"),
    ("http-endpoint", b"/v1.0/invoke/ext/method/y", ENDPOINT, "ext", "ext", "", False, b"/y"),
    ("http-endpoint-nested", b"/v1.0/invoke/my-endpoint/method/a/b/", ENDPOINT, "my-endpoint",
     "my-endpoint", "", False, b"/a/b"),
    ("encoded-http-url", b"/v1.0/invoke/http%3A%2F%2F127.0.0.1%3A8080/method/x", URL,
     "http://127.0.0.1:8080", "", "", False, b"/x"),
    ("encoded-http-url-lowercase-hex", b"/v1.0/invoke/http%3a%2f%2f127.0.0.1%3a8080/method/x",
     URL, "http://127.0.0.1:8080", "", "", False, b"/x"),
    ("unencoded-http-url", b"/v1.0/invoke/http://127.0.0.1:8080/method/x", URL,
     "http://127.0.0.1:8080", "", "", False, b"/x"),
    ("encoded-https-url", b"/v1.0/invoke/https%3A%2F%2Fexample.com/method/a/b", URL,
     "https://example.com", "", "", False, b"/a/b"),
    ("unencoded-https-url", b"/v1.0/invoke/https://example.com/method/a", URL,
     "https://example.com", "", "", False, b"/a"),
    ("encoded-url-with-base-path", b"/v1.0/invoke/http%3A%2F%2Fhost%3A80%2Fbase/method/x", URL,
     "http://host:80/base", "", "", False, b"/x"),
]
# fmt: on
PATH_FORMS = [pytest.param(*row, id=name) for name, *row in _PATH_TABLE]


@pytest.mark.parametrize(
    ("path", "kind", "target", "app_id", "namespace", "is_self", "method"), PATH_FORMS
)
def test_route_path_resolves_invoke_url_forms(
    path: bytes,
    kind: TargetKind,
    target: str,
    app_id: str,
    namespace: str,
    is_self: bool,
    method: bytes,
) -> None:
    assert make_router().route_path(path) == Invocation(
        kind, target, app_id, namespace, is_self, method
    )


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(b"/v1.0/invoke/app", id="no-method-segment"),
        pytest.param(b"/v1.0/invoke/app/", id="no-method-segment-trailing-slash"),
        pytest.param(b"/v1.0/invoke/app/methodx/y", id="method-prefix-is-not-method"),
        pytest.param(b"/v1.0/invoke//method/x", id="empty-target"),
        pytest.param(b"/v1.0/invoke/", id="nothing-after-invoke"),
        pytest.param(b"/", id="root"),
        pytest.param(b"/orders/1", id="not-an-invoke-path"),
        pytest.param(b"/v1.0/state/store", id="other-dapr-api"),
        pytest.param(b"/v2.0/invoke/app/method/x", id="other-api-version"),
        pytest.param(b"/v1.0/invokes/app/method/x", id="invoke-prefix-is-not-invoke"),
    ],
)
def test_route_path_without_target_is_404_no_app_id(path: bytes) -> None:
    with pytest.raises(NoTargetError) as caught:
        make_router().route_path(path)
    assert caught.value.status == 404
    assert caught.value.error_code == "ERR_DIRECT_INVOKE"
    assert caught.value.message == NO_APP_ID


@pytest.mark.parametrize(
    ("path", "shown_id"),
    [
        pytest.param(b"/v1.0/invoke/a.b.c/method/x", "a.b.c", id="two-dots"),
        pytest.param(b"/v1.0/invoke/a..b/method/x", "a..b", id="empty-namespace-between-dots"),
        pytest.param(b"/v1.0/invoke/app./method/x", "app.", id="trailing-dot"),
        pytest.param(b"/v1.0/invoke/.app/method/x", ".app", id="leading-dot"),
        pytest.param(b"/v1.0/invoke/bad%20id/method/x", "bad id", id="space-in-id"),
    ],
)
def test_route_path_invalid_app_id_is_500(path: bytes, shown_id: str) -> None:
    with pytest.raises(InvokeError) as caught:
        make_router().route_path(path)
    assert caught.value.status == 500
    assert caught.value.error_code == "ERR_DIRECT_INVOKE"
    assert caught.value.message == (
        f"failed to invoke, id: {shown_id}, err: invalid app id {shown_id}"
    )


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(b"/v1.0/invoke/app/method/test%23stream", id="hash"),
        pytest.param(b"/v1.0/invoke/app/method/test%3Fstream", id="question-mark"),
        pytest.param(b"/v1.0/invoke/app/method/test%00stream", id="nul"),
        pytest.param(b"/v1.0/invoke/app/method/test%0Dstream", id="cr"),
    ],
)
def test_route_path_forbidden_method_character_is_500(path: bytes) -> None:
    with pytest.raises(InvokeError) as caught:
        make_router().route_path(path)
    assert caught.value.status == 500
    assert "invalid method" in caught.value.message


def test_route_path_returns_cached_invocation_for_repeated_path() -> None:
    router = make_router()
    first = router.route_path(b"/v1.0/invoke/app/method/hot")
    assert router.route_path(b"/v1.0/invoke/app/method/hot") is first


def test_route_path_cache_stays_within_its_bound() -> None:
    router = make_router(cache_size=3)
    first = router.route_path(b"/v1.0/invoke/app/method/0")
    for n in range(1, 50):
        router.route_path(b"/v1.0/invoke/app/method/%d" % n)
        assert len(router._cache) <= 3
    again = router.route_path(b"/v1.0/invoke/app/method/0")
    assert again == first
    assert again is not first  # it was evicted, not kept past the bound


def test_route_path_does_not_cache_failures() -> None:
    router = make_router(cache_size=3)
    for _ in range(2):
        with pytest.raises(InvokeError):
            router.route_path(b"/v1.0/invoke/a.b.c/method/x")
    assert len(router._cache) == 0


# (dapr-app-id header value, request path, expected Invocation fields)
HEADER_FORMS = [
    pytest.param(
        b"app",
        b"/orders/1",
        (APP, "app", "app", "default", True, b"/orders/1"),
        id="self",
    ),
    pytest.param(b"app", b"/", (APP, "app", "app", "default", True, b"/"), id="root"),
    pytest.param(
        b"app",
        b"/admin/../public",
        (APP, "app", "app", "default", True, b"/public"),
        id="traversal-cleaned",
    ),
    pytest.param(
        b"app",
        b"//a///b/",
        (APP, "app", "app", "default", True, b"/a/b"),
        id="slashes-cleaned",
    ),
    pytest.param(
        b"app",
        b"/v1.0/invoke/other/method/y",
        (APP, "app", "app", "default", True, b"/v1.0/invoke/other/method/y"),
        id="header-wins-over-invoke-path",
    ),
    pytest.param(
        b" orders.prod ",
        b"/x",
        (APP, "orders.prod", "orders", "prod", False, b"/x"),
        id="value-trimmed-namespace",
    ),
    pytest.param(b"ext", b"/y", (ENDPOINT, "ext", "ext", "", False, b"/y"), id="endpoint"),
    pytest.param(
        b"http://127.0.0.1:9000",
        b"/z",
        (URL, "http://127.0.0.1:9000", "", "", False, b"/z"),
        id="url",
    ),
]


@pytest.mark.parametrize(("app_id", "path", "fields"), HEADER_FORMS)
def test_route_header_uses_whole_cleaned_path_as_method(
    app_id: bytes, path: bytes, fields: tuple[TargetKind, str, str, str, bool, bytes]
) -> None:
    assert make_router().route_header(app_id, path) == Invocation(*fields)


@pytest.mark.parametrize(
    "app_id", [pytest.param(b"", id="empty"), pytest.param(b"   ", id="blank")]
)
def test_route_header_with_empty_app_id_is_404(app_id: bytes) -> None:
    with pytest.raises(NoTargetError):
        make_router().route_header(app_id, b"/x")


def test_route_header_rejects_forbidden_method_character() -> None:
    with pytest.raises(InvokeError):
        make_router().route_header(b"app", b"/a%23b")


def test_route_header_with_two_dots_is_500() -> None:
    with pytest.raises(InvokeError) as caught:
        make_router().route_header(b"a.b.c", b"/x")
    assert caught.value.status == 500


def test_router_uses_its_own_namespace_for_self_calls() -> None:
    router = Router("app", "prod")
    assert router.route_path(b"/v1.0/invoke/app/method/x").is_self
    assert router.route_path(b"/v1.0/invoke/app.prod/method/x").is_self
    assert not router.route_path(b"/v1.0/invoke/app.default/method/x").is_self


def _basic(credentials: bytes) -> bytes:
    return b"Basic " + base64.b64encode(credentials)


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        pytest.param(_basic(b"dapr-app-id:orders"), b"orders", id="basic"),
        pytest.param(
            b"basic " + base64.b64encode(b"dapr-app-id:orders"), b"orders", id="scheme-lowercase"
        ),
        pytest.param(
            b"BASIC " + base64.b64encode(b"dapr-app-id:orders"), b"orders", id="scheme-uppercase"
        ),
        pytest.param(_basic(b"DAPR-APP-ID:orders"), b"orders", id="username-any-case"),
        pytest.param(_basic(b"dapr-app-id:orders.prod"), b"orders.prod", id="with-namespace"),
        pytest.param(_basic(b"dapr-app-id:a:b"), b"a:b", id="password-keeps-later-colons"),
        pytest.param(_basic(b"user:orders"), None, id="other-username"),
        pytest.param(_basic(b"dapr-app-id:"), None, id="empty-app-id"),
        pytest.param(_basic(b"dapr-app-id"), None, id="no-colon"),
        pytest.param(b"Basic !!!not-base64", None, id="not-base64"),
        pytest.param(b"Bearer abc", None, id="other-scheme"),
        pytest.param(b"", None, id="empty"),
    ],
)
def test_basic_auth_app_id(authorization: bytes, expected: bytes | None) -> None:
    assert basic_auth_app_id(authorization) == expected


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        pytest.param(b"GET", b"/v1.0/healthz", LocalRoute.HEALTHZ, id="healthz"),
        pytest.param(
            b"GET", b"/v1.0/healthz/outbound", LocalRoute.HEALTHZ_OUTBOUND, id="healthz-outbound"
        ),
        pytest.param(b"GET", b"/v1.0/metadata", LocalRoute.METADATA, id="metadata"),
        pytest.param(b"PUT", b"/v1.0/metadata/k", LocalRoute.METADATA_PUT, id="metadata-put"),
        pytest.param(b"PUT", b"/v1.0/metadata/", None, id="metadata-put-no-key"),
        pytest.param(b"PUT", b"/v1.0/metadata/a/b", None, id="metadata-put-nested-key"),
        pytest.param(b"GET", b"/v1.0/metadata/k", None, id="metadata-key-get"),
        pytest.param(b"POST", b"/v1.0/healthz", None, id="healthz-post"),
        pytest.param(b"DELETE", b"/v1.0/metadata", None, id="metadata-delete"),
        pytest.param(b"GET", b"/healthz", None, id="unversioned-healthz"),
        pytest.param(
            b"GET",
            b"/v1.0/invoke/app/method/v1.0/healthz",
            None,
            id="invoke-path-ending-in-healthz",
        ),
    ],
)
def test_local_route(method: bytes, path: bytes, expected: LocalRoute | None) -> None:
    assert local_route(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path", "exempt"),
    [
        pytest.param(b"GET", b"/v1.0/healthz", True, id="healthz"),
        pytest.param(b"GET", b"/v1.0/healthz/outbound", True, id="healthz-outbound"),
        pytest.param(b"GET", b"/v1.0/healthz/", True, id="healthz-trailing-slash"),
        pytest.param(b"POST", b"/v1.0/healthz", False, id="healthz-post"),
        pytest.param(b"GET", b"/v1.0/metadata", False, id="metadata"),
        pytest.param(b"PUT", b"/v1.0/metadata/k", False, id="metadata-put"),
        pytest.param(b"GET", b"/v1.0/invoke/app/method/x", False, id="invoke"),
        pytest.param(
            b"GET", b"/v1.0/invoke/app/method/v1.0/healthz", False, id="invoke-of-healthz-method"
        ),
        pytest.param(b"GET", b"/v1.0/healthz/other", False, id="healthz-subpath"),
        pytest.param(b"GET", b"/", False, id="root"),
    ],
)
def test_token_exempt_only_for_health(method: bytes, path: bytes, exempt: bool) -> None:
    assert token_exempt(method, path) is exempt
