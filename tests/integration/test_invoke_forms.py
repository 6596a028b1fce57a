"""Every way a caller names a target reaches the app with the right line and headers.

Path form, `dapr-app-id` header form, Basic-auth form and `app.namespace` on a
real sidecar in front of the real echo app; the app's echo is the evidence.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from typing import Any

import pytest

from fastproxy import Sidecar
from tests.integration.conftest import (
    EchoApp,
    Response,
    SidecarFactory,
    parse_responses,
    raw_exchange,
    request,
)

pytestmark = pytest.mark.asyncio

QUERY = "?a=1&a=2&b=x+y&c=%20d&e=&f=%2F%3F&g"


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    """Every value of a header the app received (names compared case-insensitively)."""
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def header_names(echo: dict[str, Any]) -> list[str]:
    return [k.lower() for k, _ in echo["headers"]]


async def invoke(
    sidecar: Sidecar,
    target: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Response:
    return await request(sidecar.http_port, method, target, headers, body)


def assert_dapr_error(response: Response, status: int, code: str = "ERR_DIRECT_INVOKE") -> None:
    assert response.status == status, response
    assert response.header("content-type") == "application/json", response
    assert response.json()["errorCode"] == code, response


# -- verbs, path and query ------------------------------------------------------


@pytest.mark.parametrize("verb", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"])
async def test_every_verb_reaches_app_with_method_path_and_raw_query(
    sidecar: Sidecar, echo_app: EchoApp, verb: str
) -> None:
    response = await invoke(sidecar, f"/v1.0/invoke/app/method/orders/42/items{QUERY}", verb)
    assert response.status == 200, response
    echo = response.json()
    assert echo["method"] == verb
    assert echo["path"] == f"/orders/42/items{QUERY}"
    assert echo_app.seen == [(verb, f"/orders/42/items{QUERY}")]


async def test_head_reaches_app_and_answer_has_no_body(sidecar: Sidecar, echo_app: EchoApp) -> None:
    raw = await raw_exchange(
        sidecar.http_port,
        f"HEAD /v1.0/invoke/app/method/orders{QUERY} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(),
    )
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, raw
    assert head.startswith(b"HTTP/1.1 200 "), raw
    assert rest == b"", raw
    assert echo_app.seen == [("HEAD", f"/orders{QUERY}")]


async def head_then_health(port: int, target: str, headers: str = "") -> tuple[bytes, bytes]:
    """A HEAD and a pipelined GET /v1.0/healthz; (head of the first answer, what follows it)."""
    raw = await raw_exchange(
        port,
        f"HEAD {target} HTTP/1.1\r\nHost: h\r\n{headers}\r\n"
        "GET /v1.0/healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode(),
    )
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, raw
    return head, rest


@pytest.mark.parametrize(
    ("target", "status"),
    [
        pytest.param("/v1.0/invoke/nobody/method/x", 500, id="unknown-app"),
        pytest.param("/v1.0/invoke/app", 404, id="no-target"),
        pytest.param("/v1.0/invoke/app/method/a%23b", 500, id="forbidden-character"),
        pytest.param("/v1.0/invoke/a.b.c/method/x", 500, id="two-dots"),
    ],
)
async def test_sidecar_error_answer_to_head_has_no_body(
    sidecar: Sidecar, target: str, status: int
) -> None:
    """A body after a HEAD answer would be read as the start of the next response."""
    head, rest = await head_then_health(sidecar.http_port, target)
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert rest.startswith(b"HTTP/1.1 204 "), rest


async def test_upstream_failure_answer_to_head_has_no_body(
    make_sidecar: SidecarFactory,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    sidecar = await make_sidecar(app_port=closed_port)
    head, rest = await head_then_health(sidecar.http_port, "/v1.0/invoke/app/method/x")
    assert head.startswith(b"HTTP/1.1 500 "), head
    assert rest.startswith(b"HTTP/1.1 204 "), rest


async def test_request_body_reaches_app_unchanged(sidecar: Sidecar) -> None:
    body = bytes(range(256)) * 40
    response = await invoke(
        sidecar,
        "/v1.0/invoke/app/method/upload",
        "POST",
        {"Content-Type": "application/octet-stream"},
        body,
    )
    assert response.status == 200, response
    echo = response.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header_values(echo, "content-type") == ["application/octet-stream"]
    assert header_values(echo, "content-length") == [str(len(body))]


async def test_app_status_and_headers_come_back_unchanged(sidecar: Sidecar) -> None:
    response = await invoke(
        sidecar, "/v1.0/invoke/app/method/x?status=409&header=X-Answer:yes", "POST"
    )
    assert response.status == 409, response
    assert response.header("x-answer") == "yes"
    assert response.json()["path"] == "/x?status=409&header=X-Answer:yes"


@pytest.mark.parametrize(
    ("target", "app_path"),
    [
        pytest.param("/v1.0/invoke/app/method/", "/", id="empty-method-slash"),
        pytest.param("/v1.0/invoke/app/method", "/", id="empty-method"),
        pytest.param("/v1.0/invoke/app/method/?a=1", "/?a=1", id="empty-method-query"),
        pytest.param("/v1.0////invoke//app/method//foo", "/foo", id="repeated-slashes"),
        pytest.param("/v1.0/invoke/app/method/a/b/", "/a/b", id="trailing-slash-removed"),
        pytest.param(
            "/v1.0/invoke/app/method/admin%2F..%2Fpublic", "/public", id="encoded-traversal"
        ),
        pytest.param("/v1.0/invoke/app/method/../../etc", "/etc", id="traversal-stops-at-root"),
        pytest.param("/v1.0/invoke/app/method/a%20b", "/a%20b", id="encoded-space"),
        pytest.param("/v1.0/invoke/app/method/test%22stream", "/test%22stream", id="quote"),
        pytest.param("/v1.0/invoke/app/method/test%2Astream", "/test*stream", id="star"),
        pytest.param(
            "/v1.0/invoke/app/method/caf%C3%A9?q=%C3%A9", "/caf%C3%A9?q=%C3%A9", id="utf8"
        ),
        pytest.param("/v1.0/invoke/app/method/x#frag", "/x", id="fragment-dropped"),
    ],
)
async def test_method_path_reaches_app_normalised(
    sidecar: Sidecar, target: str, app_path: str
) -> None:
    response = await invoke(sidecar, target)
    assert response.status == 200, response
    assert response.json()["path"] == app_path


@pytest.mark.parametrize(
    "method_part",
    ["test%23stream", "test%3Fstream", "test%00stream", "test%0Dstream"],
)
async def test_forbidden_method_character_is_500_and_never_reaches_app(
    sidecar: Sidecar, echo_app: EchoApp, method_part: str
) -> None:
    response = await invoke(sidecar, f"/v1.0/invoke/app/method/{method_part}")
    assert_dapr_error(response, 500)
    assert "invalid method" in response.json()["message"]
    assert echo_app.seen == []


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/v1.0/invoke/app", id="no-method-segment"),
        pytest.param("/", id="root-without-app-id"),
        pytest.param("/orders/1", id="plain-path-without-app-id"),
    ],
)
async def test_request_without_target_is_404(
    sidecar: Sidecar, echo_app: EchoApp, target: str
) -> None:
    response = await invoke(sidecar, target)
    assert_dapr_error(response, 404)
    assert response.json()["message"] == (
        "failed getting app id either from the URL path or the header dapr-app-id"
    )
    assert echo_app.seen == []


async def test_app_id_with_two_dots_is_500_invalid_app_id(
    sidecar: Sidecar, echo_app: EchoApp
) -> None:
    response = await invoke(sidecar, "/v1.0/invoke/a.b.c/method/x")
    assert_dapr_error(response, 500)
    assert response.json()["message"] == "failed to invoke, id: a.b.c, err: invalid app id a.b.c"
    assert echo_app.seen == []


async def test_unknown_app_id_is_500_couldnt_find_service(
    sidecar: Sidecar, echo_app: EchoApp
) -> None:
    response = await invoke(sidecar, "/v1.0/invoke/nobody/method/x")
    assert_dapr_error(response, 500)
    assert response.json()["message"] == (
        "failed to invoke, id: nobody, err: couldn't find service: nobody"
    )
    assert echo_app.seen == []


# -- namespaces -------------------------------------------------------------------


async def test_own_namespace_form_is_a_self_call(sidecar: Sidecar, echo_app: EchoApp) -> None:
    response = await invoke(sidecar, "/v1.0/invoke/app.default/method/ns?x=1")
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/ns?x=1"
    assert header_values(echo, "dapr-callee-app-id") == ["app"]
    assert header_values(echo, "dapr-caller-namespace") == ["default"]


async def test_same_app_id_in_other_namespace_is_not_a_self_call(
    sidecar: Sidecar, echo_app: EchoApp
) -> None:
    response = await invoke(sidecar, "/v1.0/invoke/app.prod/method/x")
    assert_dapr_error(response, 500)
    assert echo_app.seen == []


async def test_configured_namespace_is_sent_and_makes_self_calls(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, namespace="prod")
    response = await invoke(sidecar, "/v1.0/invoke/app.prod/method/x")
    assert response.status == 200, response
    assert header_values(response.json(), "dapr-caller-namespace") == ["prod"]
    response = await invoke(sidecar, "/v1.0/invoke/app.default/method/x")
    assert_dapr_error(response, 500)


# -- the dapr-app-id header form ----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "app_path"),
    [
        pytest.param("/orders/1?x=1&x=2", "/orders/1?x=1&x=2", id="plain"),
        pytest.param("/", "/", id="root"),
        pytest.param("/a/../b//c/?q=a+b", "/b/c?q=a+b", id="cleaned"),
        pytest.param("/admin/../public", "/public", id="traversal"),
        pytest.param(
            "/v1.0/invoke/other/method/y",
            "/v1.0/invoke/other/method/y",
            id="header-wins-over-invoke-path",
        ),
    ],
)
@pytest.mark.parametrize("header_name", ["dapr-app-id", "Dapr-App-Id", "DAPR-APP-ID"])
async def test_dapr_app_id_header_routes_any_path_and_is_removed(
    sidecar: Sidecar, path: str, app_path: str, header_name: str
) -> None:
    response = await invoke(sidecar, path, "POST", {header_name: "app", "X-Keep": "1"}, b"hi")
    assert response.status == 200, response
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == app_path
    assert echo["body"] == "hi"
    assert "dapr-app-id" not in header_names(echo)
    assert header_values(echo, "x-keep") == ["1"]
    assert header_values(echo, "dapr-callee-app-id") == ["app"]


async def test_dapr_app_id_header_with_unknown_app_is_500(
    sidecar: Sidecar, echo_app: EchoApp
) -> None:
    response = await invoke(sidecar, "/x", headers={"dapr-app-id": "nobody"})
    assert_dapr_error(response, 500)
    assert echo_app.seen == []


async def test_dapr_app_id_header_namespace_form_is_self_call(sidecar: Sidecar) -> None:
    response = await invoke(sidecar, "/x", headers={"dapr-app-id": "app.default"})
    assert response.status == 200, response
    assert response.json()["path"] == "/x"


# -- Basic auth form --------------------------------------------------------------


@pytest.mark.parametrize("username", ["dapr-app-id", "DAPR-APP-ID"])
async def test_basic_auth_app_id_routes_whole_path(sidecar: Sidecar, username: str) -> None:
    credentials = base64.b64encode(f"{username}:app".encode()).decode()
    response = await invoke(
        sidecar, "/orders/7/../8?z=1", headers={"Authorization": f"Basic {credentials}"}
    )
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/orders/8?z=1"
    # daprd does not remove the Authorization header: it reaches the target.
    assert header_values(echo, "authorization") == [f"Basic {credentials}"]


async def test_basic_auth_with_other_username_is_not_routed(
    sidecar: Sidecar, echo_app: EchoApp
) -> None:
    credentials = base64.b64encode(b"alice:app").decode()
    response = await invoke(sidecar, "/orders", headers={"Authorization": f"Basic {credentials}"})
    assert_dapr_error(response, 404)
    assert echo_app.seen == []


async def test_dapr_app_id_header_wins_over_basic_auth(sidecar: Sidecar) -> None:
    credentials = base64.b64encode(b"dapr-app-id:nobody").decode()
    response = await invoke(
        sidecar,
        "/p",
        headers={"Authorization": f"Basic {credentials}", "dapr-app-id": "app"},
    )
    assert response.status == 200, response
    assert response.json()["path"] == "/p"


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
async def test_empty_dapr_app_id_header_falls_back_to_invoke_path(
    sidecar: Sidecar, value: str
) -> None:
    """daprd only lets a non-empty dapr-app-id win; an empty one leaves the path form."""
    response = await invoke(
        sidecar, "/v1.0/invoke/app/method/by-path?x=1", headers={"dapr-app-id": value}
    )
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/by-path?x=1"
    assert "dapr-app-id" not in header_names(echo)


async def test_empty_dapr_app_id_header_falls_back_to_basic_auth(sidecar: Sidecar) -> None:
    credentials = base64.b64encode(b"dapr-app-id:app").decode()
    response = await invoke(
        sidecar, "/from-basic", headers={"dapr-app-id": "", "Authorization": f"Basic {credentials}"}
    )
    assert response.status == 200, response
    assert response.json()["path"] == "/from-basic"


async def test_basic_auth_for_other_user_on_invoke_path_routes_by_path(sidecar: Sidecar) -> None:
    credentials = base64.b64encode(b"alice:secret").decode()
    response = await invoke(
        sidecar, "/v1.0/invoke/app/method/p", headers={"Authorization": f"Basic {credentials}"}
    )
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/p"
    assert header_values(echo, "authorization") == [f"Basic {credentials}"]


async def test_absolute_form_request_target_is_routed_by_its_path(sidecar: Sidecar) -> None:
    port = sidecar.http_port
    response = await invoke(sidecar, f"http://127.0.0.1:{port}/v1.0/invoke/app/method/abs?q=1")
    assert response.status == 200, response
    assert response.json()["path"] == "/abs?q=1"


# -- caller/callee and trace headers -------------------------------------------------


async def test_sidecar_sets_caller_and_callee_headers_once(sidecar: Sidecar) -> None:
    response = await invoke(sidecar, "/v1.0/invoke/app/method/who")
    assert response.status == 200, response
    echo = response.json()
    assert header_values(echo, "dapr-caller-app-id") == ["app"]
    assert header_values(echo, "dapr-caller-namespace") == ["default"]
    assert header_values(echo, "dapr-callee-app-id") == ["app"]


@pytest.mark.parametrize(
    "spoofed",
    [
        pytest.param(
            {
                "dapr-caller-app-id": "evil",
                "dapr-caller-namespace": "evil",
                "dapr-callee-app-id": "evil",
            },
            id="lowercase",
        ),
        pytest.param(
            {
                "Dapr-Caller-App-Id": "evil",
                "Dapr-Caller-Namespace": "evil",
                "Dapr-Callee-App-Id": "evil",
            },
            id="titlecase",
        ),
        pytest.param(
            {
                "DAPR-CALLER-APP-ID": "evil",
                "DAPR-CALLER-NAMESPACE": "evil",
                "DAPR-CALLEE-APP-ID": "evil",
            },
            id="uppercase",
        ),
    ],
)
async def test_client_supplied_caller_and_callee_headers_are_dropped(
    sidecar: Sidecar, spoofed: dict[str, str]
) -> None:
    response = await invoke(sidecar, "/v1.0/invoke/app/method/who", headers=spoofed)
    assert response.status == 200, response
    echo = response.json()
    assert header_values(echo, "dapr-caller-app-id") == ["app"]
    assert header_values(echo, "dapr-caller-namespace") == ["default"]
    assert header_values(echo, "dapr-callee-app-id") == ["app"]
    assert "evil" not in [v for _, v in echo["headers"]]


async def test_trace_context_headers_pass_through(sidecar: Sidecar) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    response = await invoke(
        sidecar,
        "/v1.0/invoke/app/method/trace",
        headers={"traceparent": traceparent, "tracestate": tracestate},
    )
    assert response.status == 200, response
    echo = response.json()
    assert header_values(echo, "traceparent") == [traceparent]
    assert header_values(echo, "tracestate") == [tracestate]


async def test_ordinary_headers_and_repeats_pass_through_in_order(sidecar: Sidecar) -> None:
    raw = await raw_exchange(
        sidecar.http_port,
        b"GET /v1.0/invoke/app/method/h HTTP/1.1\r\nHost: client.example\r\n"
        b"X-Multi: one\r\nX-Other: o\r\nX-Multi: two\r\nAccept: */*\r\n"
        b"Connection: close\r\n\r\n",
    )
    (response,) = parse_responses(raw)
    assert response.status == 200, response
    echo = response.json()
    assert header_values(echo, "x-multi") == ["one", "two"]
    assert header_values(echo, "x-other") == ["o"]
    assert header_values(echo, "accept") == ["*/*"]
    # The app sees its own address as Host, not the one the client used for the sidecar.
    assert header_values(echo, "host") == [f"127.0.0.1:{sidecar.config.app_port}"]


async def test_hop_by_hop_headers_are_not_forwarded(sidecar: Sidecar) -> None:
    response = await invoke(
        sidecar,
        "/v1.0/invoke/app/method/h",
        headers={
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic eDp5",
            "TE": "trailers",
            "X-Private": "p",
            "Connection": "close, X-Private",
        },
    )
    assert response.status == 200, response
    names = header_names(response.json())
    for name in ("keep-alive", "proxy-authorization", "te", "x-private"):
        assert name not in names, names
