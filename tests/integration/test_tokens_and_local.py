"""API tokens (DAPR_API_TOKEN, APP_API_TOKEN) and the endpoints the sidecar answers itself."""

from __future__ import annotations

import asyncio
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

TOKEN = "s3cret-token"
APP_TOKEN = "app-side-token"


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


@pytest.fixture
async def guarded(make_sidecar: SidecarFactory, echo_app: EchoApp) -> Sidecar:
    """A sidecar that requires `dapr-api-token: TOKEN`."""
    return await make_sidecar(app_port=echo_app.port, api_token=TOKEN)


def assert_invalid_token(response: Response) -> None:
    assert response.status == 401, response
    assert response.header("content-type") == "text/plain; charset=utf-8", response
    assert response.body == b"invalid api token\n", response


# -- DAPR_API_TOKEN ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        pytest.param("GET", "/v1.0/invoke/app/method/x", {}, id="invoke-missing"),
        pytest.param(
            "GET", "/v1.0/invoke/app/method/x", {"dapr-api-token": "wrong"}, id="invoke-wrong"
        ),
        pytest.param("GET", "/v1.0/invoke/app/method/x", {"dapr-api-token": ""}, id="invoke-empty"),
        pytest.param(
            "GET", "/v1.0/invoke/app/method/x", {"dapr-api-token": TOKEN + "x"}, id="invoke-longer"
        ),
        pytest.param(
            "GET",
            "/v1.0/invoke/app/method/x",
            {"dapr-api-token": TOKEN.upper()},
            id="invoke-other-case",
        ),
        pytest.param(
            "POST",
            "/v1.0/invoke/app/method/x",
            {"Authorization": f"Bearer {TOKEN}"},
            id="invoke-token-in-authorization",
        ),
        pytest.param("GET", "/anything", {"dapr-app-id": "app"}, id="header-form-missing"),
        pytest.param("GET", "/v1.0/metadata", {}, id="metadata-missing"),
        pytest.param("PUT", "/v1.0/metadata/k", {}, id="metadata-put-missing"),
        pytest.param("POST", "/v1.0/healthz", {}, id="healthz-post-missing"),
    ],
)
async def test_missing_or_wrong_api_token_is_401_plain_text_and_app_sees_nothing(
    guarded: Sidecar, echo_app: EchoApp, method: str, target: str, headers: dict[str, str]
) -> None:
    response = await request(guarded.http_port, method, target, headers, b"body")
    assert_invalid_token(response)
    assert echo_app.seen == []


async def test_401_answer_to_head_has_no_body(guarded: Sidecar, echo_app: EchoApp) -> None:
    """A body after a HEAD answer would be read as the start of the next response."""
    raw = await raw_exchange(
        guarded.http_port,
        b"HEAD /v1.0/invoke/app/method/x HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /v1.0/healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), raw
    assert rest.startswith(b"HTTP/1.1 204 "), raw
    assert echo_app.seen == []


@pytest.mark.parametrize("header_name", ["dapr-api-token", "Dapr-Api-Token", "DAPR-API-TOKEN"])
async def test_right_api_token_is_forwarded_without_the_token(
    guarded: Sidecar, header_name: str
) -> None:
    response = await request(
        guarded.http_port, "POST", "/v1.0/invoke/app/method/ok?a=1", {header_name: TOKEN}, b"x"
    )
    assert response.status == 200, response
    echo = response.json()
    assert echo["path"] == "/ok?a=1"
    assert header_values(echo, "dapr-api-token") == []


async def test_right_api_token_works_for_header_form(guarded: Sidecar) -> None:
    response = await request(
        guarded.http_port, "GET", "/h", {"dapr-app-id": "app", "dapr-api-token": TOKEN}
    )
    assert response.status == 200, response
    assert header_values(response.json(), "dapr-api-token") == []


async def test_token_checked_on_every_request_of_a_keep_alive_connection(
    guarded: Sidecar, echo_app: EchoApp
) -> None:
    good = f"GET /v1.0/invoke/app/method/1 HTTP/1.1\r\nHost: h\r\ndapr-api-token: {TOKEN}\r\n\r\n"
    bad = "GET /v1.0/invoke/app/method/2 HTTP/1.1\r\nHost: h\r\n\r\n"
    last = (
        f"GET /v1.0/invoke/app/method/3 HTTP/1.1\r\nHost: h\r\ndapr-api-token: {TOKEN}\r\n"
        "Connection: close\r\n\r\n"
    )
    raw = await raw_exchange(guarded.http_port, (good + bad + last).encode())
    responses = parse_responses(raw)
    assert [r.status for r in responses] == [200, 401, 200], raw
    assert [path for _, path in echo_app.seen] == ["/1", "/3"]


@pytest.mark.parametrize("path", ["/v1.0/healthz", "/v1.0/healthz/outbound"])
async def test_health_endpoints_need_no_api_token(guarded: Sidecar, path: str) -> None:
    response = await request(guarded.http_port, "GET", path)
    assert response.status == 204, response
    assert response.body == b""


async def test_metadata_needs_the_api_token(guarded: Sidecar) -> None:
    assert_invalid_token(await request(guarded.http_port, "GET", "/v1.0/metadata"))
    response = await request(guarded.http_port, "GET", "/v1.0/metadata", {"dapr-api-token": TOKEN})
    assert response.status == 200, response
    assert response.json()["id"] == "app"


# -- APP_API_TOKEN ---------------------------------------------------------------------


async def test_app_api_token_is_sent_to_the_app(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, app_api_token=APP_TOKEN)
    response = await request(sidecar.http_port, "GET", "/v1.0/invoke/app/method/x")
    assert response.status == 200, response
    assert header_values(response.json(), "dapr-api-token") == [APP_TOKEN]


@pytest.mark.parametrize("client_token", ["forged", APP_TOKEN + "-not"])
async def test_client_token_never_reaches_app_when_app_token_set(
    make_sidecar: SidecarFactory, echo_app: EchoApp, client_token: str
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, app_api_token=APP_TOKEN)
    response = await request(
        sidecar.http_port,
        "GET",
        "/v1.0/invoke/app/method/x",
        {"dapr-api-token": client_token, "DAPR-API-TOKEN": client_token},
    )
    assert response.status == 200, response
    assert header_values(response.json(), "dapr-api-token") == [APP_TOKEN]


async def test_both_tokens_client_token_checked_and_app_token_sent(
    make_sidecar: SidecarFactory, echo_app: EchoApp
) -> None:
    sidecar = await make_sidecar(app_port=echo_app.port, api_token=TOKEN, app_api_token=APP_TOKEN)
    response = await request(
        sidecar.http_port, "GET", "/v1.0/invoke/app/method/x", {"dapr-api-token": TOKEN}
    )
    assert response.status == 200, response
    assert header_values(response.json(), "dapr-api-token") == [APP_TOKEN]
    assert_invalid_token(
        await request(
            sidecar.http_port, "GET", "/v1.0/invoke/app/method/x", {"dapr-api-token": APP_TOKEN}
        )
    )


# -- health ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/v1.0/healthz",
        "/v1.0/healthz/outbound",
        "/v1.0/healthz?appid=app",
    ],
)
async def test_health_is_204_with_empty_body(
    sidecar: Sidecar, echo_app: EchoApp, target: str
) -> None:
    response = await request(sidecar.http_port, "GET", target)
    assert response.status == 204, response
    assert response.body == b""
    assert response.header("content-length") in (None, "0")
    assert echo_app.seen == []


async def test_health_with_wrong_appid_is_500_not_match(sidecar: Sidecar) -> None:
    response = await request(sidecar.http_port, "GET", "/v1.0/healthz?appid=wrong")
    assert response.status == 500, response
    assert response.header("content-type") == "application/json"
    assert response.json() == {
        "errorCode": "ERR_HEALTH_APPID_NOT_MATCH",
        "message": "dapr app-id does not match",
    }


async def test_outbound_health_works_without_an_app_channel(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = await make_sidecar(app_id="outbound-only")
    response = await request(sidecar.http_port, "GET", "/v1.0/healthz/outbound")
    assert response.status == 204, response


async def test_health_answers_many_requests_on_one_keep_alive_connection(
    sidecar: Sidecar,
) -> None:
    one = b"GET /v1.0/healthz HTTP/1.1\r\nHost: h\r\n\r\n"
    last = b"GET /v1.0/healthz/outbound HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    raw = await raw_exchange(sidecar.http_port, one * 5 + last)
    assert [r.status for r in parse_responses(raw)] == [204] * 6, raw


# -- metadata ----------------------------------------------------------------------------


async def test_metadata_describes_the_sidecar(sidecar: Sidecar, echo_app: EchoApp) -> None:
    response = await request(sidecar.http_port, "GET", "/v1.0/metadata")
    assert response.status == 200, response
    assert response.header("content-type") == "application/json"
    document = response.json()
    assert document["id"] == "app"
    assert isinstance(document["runtimeVersion"], str) and document["runtimeVersion"]
    connection = document["appConnectionProperties"]
    assert connection["port"] == echo_app.port
    assert connection["channelAddress"] == "127.0.0.1"
    assert "extended" not in document or document["extended"] == {}
    assert echo_app.seen == []


async def test_metadata_lists_http_endpoint_names(
    make_sidecar: SidecarFactory, echo_app: EchoApp, tmp_path: Any
) -> None:
    for name in ("zeta", "alpha"):
        (tmp_path / f"{name}.yaml").write_text(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\n"
            f"metadata:\n  name: {name}\nspec:\n  baseUrl: http://127.0.0.1:{echo_app.port}\n"
        )
    sidecar = await make_sidecar(app_port=echo_app.port, resources_paths=(str(tmp_path),))
    document = (await request(sidecar.http_port, "GET", "/v1.0/metadata")).json()
    assert sorted(e["name"] for e in document["httpEndpoints"]) == ["alpha", "zeta"]


async def test_metadata_without_app_port_has_no_port(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(app_id="lonely")
    document = (await request(sidecar.http_port, "GET", "/v1.0/metadata")).json()
    assert document["id"] == "lonely"
    assert "port" not in document.get("appConnectionProperties", {})


async def test_put_metadata_key_is_204_and_shows_in_extended(sidecar: Sidecar) -> None:
    response = await request(sidecar.http_port, "PUT", "/v1.0/metadata/cliPID", body=b"4242")
    assert response.status == 204, response
    assert response.body == b""
    response = await request(sidecar.http_port, "PUT", "/v1.0/metadata/other", body=b"v 2")
    assert response.status == 204, response
    document = (await request(sidecar.http_port, "GET", "/v1.0/metadata")).json()
    assert document["extended"]["cliPID"] == "4242"
    assert document["extended"]["other"] == "v 2"


async def test_put_metadata_key_overwrites_previous_value(sidecar: Sidecar) -> None:
    for value in (b"first", b"second"):
        response = await request(sidecar.http_port, "PUT", "/v1.0/metadata/k", body=value)
        assert response.status == 204, response
    document = (await request(sidecar.http_port, "GET", "/v1.0/metadata")).json()
    assert document["extended"]["k"] == "second"


async def test_put_metadata_with_chunked_body_is_stored(sidecar: Sidecar) -> None:
    raw = await raw_exchange(
        sidecar.http_port,
        b"PUT /v1.0/metadata/ck HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    (response,) = parse_responses(raw)
    assert response.status == 204, raw
    document = (await request(sidecar.http_port, "GET", "/v1.0/metadata")).json()
    assert document["extended"]["ck"] == "abcde"


async def test_put_metadata_with_expect_continue_gets_100_before_the_body(
    sidecar: Sidecar,
) -> None:
    """Clients such as curl send `Expect: 100-continue` and wait before sending the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.http_port)
    try:
        writer.write(
            b"PUT /v1.0/metadata/exp HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        async with asyncio.timeout(1):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        writer.write(b"value")
        async with asyncio.timeout(2):
            rest = await reader.read()
    finally:
        writer.close()
    (response,) = parse_responses(rest)
    assert response.status == 204, rest
    document = (await request(sidecar.http_port, "GET", "/v1.0/metadata")).json()
    assert document["extended"]["exp"] == "value"


async def test_put_metadata_then_get_on_same_connection(sidecar: Sidecar) -> None:
    raw = await raw_exchange(
        sidecar.http_port,
        b"PUT /v1.0/metadata/k HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /v1.0/metadata HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    put, get = parse_responses(raw)
    assert put.status == 204, raw
    assert get.status == 200, raw
    assert get.json()["extended"] == {"k": "abc"}


async def test_local_endpoints_do_not_block_concurrent_invocations(sidecar: Sidecar) -> None:
    slow = asyncio.create_task(
        request(sidecar.http_port, "GET", "/v1.0/invoke/app/method/slow?delay=0.5")
    )
    await asyncio.sleep(0.1)
    async with asyncio.timeout(0.4):
        health = await request(sidecar.http_port, "GET", "/v1.0/healthz")
    assert health.status == 204
    assert (await slow).status == 200
