"""mTLS between sidecars and the access control list the callee enforces.

Three sidecars (apps a, b and c, each in front of its own echo app) hold real
certificates from one development CA for trust domain "public", namespace
"default"; c's Configuration carries the ACL of `mtls_fixtures.C_ACCESS_CONTROL`.
Calls go app → caller sidecar (public port) → c's internal listener (TLS) → app c.
The callee decides with the caller's SPIFFE id, read from the verified peer
certificate only (dapr-api.md §4.2); a denial is daprd's 403 (§3.2) and never
reaches the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from fastproxy.config.errors import ConfigError
from fastproxy.security.certs import write_bundle
from tests.integration.conftest import SidecarFactory, request
from tests.integration.mtls_fixtures import (
    C_ACCESS_CONTROL,
    DENIED_PREFIX,
    Mesh,
    assert_denied,
    assert_invoke_failure,
    client_context,
    dev_ca,
    echo_of,
    expired_workload,
    expiring_workload,
    header_values,
    keep_alive_client,
    mesh_fixture,  # noqa: F401  (provides the `mesh` fixture)
    peer_serials,
    rogue_ca,
    serial_of,
    tls_attempt,
    workload,
    write_access_control,
)
from tests.integration.test_cli_process import Proc, clean_env, free_port, run_args, run_sync
from tests.integration.test_two_hop import make_echo_fixture  # noqa: F401  (`make_echo`)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

TEST_TIMEOUT = 30.0
SPIFFE_A = "spiffe://public/ns/default/a"


def get(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode("latin-1")


def nothing_reached(mesh: Mesh, key: str = "c") -> None:
    assert mesh.apps[key].seen == [], mesh.apps[key].seen


# -- 1. decisions for verified callers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "verb", "path", "allowed"),
    [
        pytest.param("a", "GET", "/allowed/x", True, id="a-get-allowed-operation"),
        pytest.param("a", "POST", "/allowed/x", False, id="a-post-denied-by-verb"),
        pytest.param("a", "GET", "/other", False, id="a-get-denied-by-app-default"),
        pytest.param("a", "GET", "/admin", False, id="a-get-denied-by-operation"),
        pytest.param("b", "GET", "/anything", True, id="b-get-allowed-by-app-default"),
        pytest.param("b", "DELETE", "/anything/deeper", True, id="b-delete-allowed"),
        pytest.param("b", "GET", "/admin/secret", False, id="b-get-denied-below-admin"),
    ],
)
async def test_callee_acl_decides_by_certificate_identity_verb_and_operation(
    mesh: Mesh, caller: str, verb: str, path: str, allowed: bool
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        body = b"payload" if verb == "POST" else b""
        response = await mesh.call(caller, verb, "c", path, body=body)
        if allowed:
            echo = echo_of(response)
            assert echo["method"] == verb
            assert echo["path"] == path
            assert mesh.apps["c"].seen == [(verb, path)]
            # Who called comes from the certificate the handshake verified.
            assert header_values(echo, "dapr-caller-app-id") == [caller]
            assert header_values(echo, "dapr-caller-namespace") == ["default"]
            assert header_values(echo, "dapr-callee-app-id") == ["c"]
        else:
            message = assert_denied(response, caller, verb)
            assert "failed to invoke, id: c, err: rpc error: code = PermissionDenied" in message
            nothing_reached(mesh)
        # The caller's own app is never involved.
        assert mesh.apps[caller].seen == []


async def test_policies_only_bind_the_caller_they_name(mesh: Mesh) -> None:
    """The same path is allowed for one verified caller and denied for another."""
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        assert (await mesh.call("b", "GET", "c", "/other")).status == 200
        assert_denied(await mesh.call("a", "GET", "c", "/other"), "a", "GET")
        assert (await mesh.call("a", "GET", "c", "/allowed/y")).status == 200
        assert mesh.apps["c"].seen == [("GET", "/other"), ("GET", "/allowed/y")]


# -- 2. the denial ------------------------------------------------------------------------------


async def test_denial_is_daprd_shaped_reaches_nothing_and_keeps_the_connection(
    mesh: Mesh,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        async with keep_alive_client(mesh["a"].http_port) as client:
            denied = await client.send(
                "POST",
                "/v1.0/invoke/c/method/allowed/x",
                {"Content-Type": "application/json"},
                b'{"order": 1}',
            )
            message = assert_denied(denied, "a", "POST")
            assert f"{DENIED_PREFIX}{SPIFFE_A} operation: " in message
            assert "verb: POST" in message
            assert "allowed/x" in message
            assert (denied.header("Connection") or "").lower() != "close", denied
            nothing_reached(mesh)
            # The same client connection carries the next request.
            allowed = await client.send("GET", "/v1.0/invoke/c/method/allowed/x")
            assert echo_of(allowed)["path"] == "/allowed/x"
            again = await client.send("POST", "/v1.0/invoke/c/method/allowed/x", body=b"x")
            assert_denied(again, "a", "POST")
            assert not client.closed_by_peer
        assert mesh.apps["c"].seen == [("GET", "/allowed/x")]


async def test_denial_on_the_internal_listener_keeps_the_sidecar_connection(
    mesh: Mesh, tmp_path: Path
) -> None:
    """A peer sidecar's pooled connection survives a 403 and serves the next call."""
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        context = client_context(tmp_path / "a-client", workload("a"))
        async with keep_alive_client(mesh["c"].internal_port, context) as client:
            denied = await client.send("POST", "/v1.0/invoke/c/method/allowed/x", body=b"data")
            assert_denied(denied, "a", "POST")
            allowed = await client.send("GET", "/v1.0/invoke/c/method/allowed/x")
            assert header_values(echo_of(allowed), "dapr-caller-app-id") == ["a"]
        assert mesh.apps["c"].seen == [("GET", "/allowed/x")]


async def test_denial_message_names_the_method_as_daprd_does(mesh: Mesh) -> None:
    """daprd's message carries the method as the callee received it, without the "/" the ACL
    match prepends: its e2e allowlists test expects "... operation: opDeny verb: POST" for
    method opDeny, and `fastproxy.policy.acl.denial_message` documents the same."""
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        denied = await mesh.call("a", "POST", "c", "/allowed/x", body=b"x")
        message = assert_denied(denied, "a", "POST")
        assert message.endswith(f"id: {SPIFFE_A} operation: allowed/x verb: POST"), message


# -- 3. path tricks ------------------------------------------------------------------------------

# Method parts (after /v1.0/invoke/c/method/) that name /admin or something below it once
# decoded and cleaned, and the status daprd gives them: 403 from the ACL, or 500 when the
# method normaliser refuses a forbidden character (dapr-api.md §1.2).
ADMIN_TRICKS = [
    pytest.param("admin", 403, id="plain"),
    pytest.param("ADMIN", 403, id="upper"),
    pytest.param("Admin/", 403, id="mixed-trailing-slash"),
    pytest.param("/admin", 403, id="double-slash"),
    pytest.param("x/../admin", 403, id="dot-dot"),
    pytest.param("../admin", 403, id="leading-dot-dot"),
    pytest.param("%61dmin", 403, id="encoded-first-letter"),
    pytest.param("adm%69n", 403, id="encoded-inner-letter"),
    pytest.param("%41DMIN", 403, id="encoded-upper"),
    pytest.param("%2e%2e/admin", 403, id="encoded-dot-dot"),
    pytest.param("x/%2E%2E/admin", 403, id="encoded-dot-dot-inside"),
    pytest.param("%2Fadmin", 403, id="encoded-leading-slash"),
    pytest.param("admin%2Fsecret", 403, id="encoded-slash-below"),
    pytest.param("ADMIN%2fSECRET", 403, id="encoded-slash-below-upper"),
    pytest.param("allowed/..%2F..%2Fadmin", 403, id="encoded-traversal"),
    pytest.param("./admin", 403, id="dot-segment"),
    pytest.param("admin/./secret/..", 403, id="dot-segments-after"),
    pytest.param("admin/%2e", 403, id="encoded-dot-after"),
    pytest.param("admin%00", 500, id="nul-forbidden"),
    pytest.param("admin%23x", 500, id="hash-forbidden"),
    pytest.param("admin%3Fx=1", 500, id="question-forbidden"),
]


@pytest.mark.parametrize(("trick", "status"), ADMIN_TRICKS)
async def test_encoded_and_dotted_paths_cannot_reach_a_denied_operation(
    mesh: Mesh, tmp_path: Path, trick: str, status: int
) -> None:
    """Through A (app default deny), through B (allowed everywhere but /admin), and straight
    to c's internal listener with b's certificate, which skips the caller's normaliser."""
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        target = f"/v1.0/invoke/c/method/{trick}"
        context = client_context(tmp_path / "b-client", workload("b"))
        attempts = [
            ("a", mesh["a"].http_port, None),
            ("b", mesh["b"].http_port, None),
            ("b", mesh["c"].internal_port, context),
        ]
        for caller, port, tls in attempts:
            async with keep_alive_client(port, tls) as client:
                response = await client.send("GET", target)
            where = f"{caller} via port {port} ({'tls' if tls else 'public'})"
            if status == 403:
                assert response.status == 403, (where, response)
                assert_denied(response, caller, "GET")
            else:
                assert response.status == 500, (where, response)
                assert "forbidden character" in response.json()["message"], (where, response)
            nothing_reached(mesh)


async def test_paths_that_only_look_like_admin_are_allowed_for_b(mesh: Mesh) -> None:
    """The tricks above fail because they are /admin, not because b is refused outright."""
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        for path, seen in [
            ("/adminx", "/adminx"),
            ("/public/admin", "/public/admin"),
            ("/x/../public", "/public"),
            ("/%61bc", "/abc"),
        ]:
            response = await mesh.call("b", "GET", "c", path)
            assert echo_of(response)["path"] == seen, (path, response)
        assert len(mesh.apps["c"].seen) == 4


# -- 4. spoofing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spoofed",
    [
        pytest.param({"dapr-caller-app-id": "b", "dapr-caller-namespace": "default"}, id="lower"),
        pytest.param({"Dapr-Caller-App-Id": "b", "DAPR-CALLER-NAMESPACE": "default"}, id="mixed"),
    ],
)
async def test_caller_headers_from_the_client_neither_decide_nor_reach_the_app(
    mesh: Mesh, spoofed: dict[str, str]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        # /anything is b's, not a's: claiming to be b does not open it.
        denied = await mesh.call("a", "GET", "c", "/anything", spoofed)
        assert_denied(denied, "a", "GET")
        nothing_reached(mesh)
        allowed = await mesh.call("a", "GET", "c", "/allowed/x", spoofed)
        echo = echo_of(allowed)
        assert header_values(echo, "dapr-caller-app-id") == ["a"]
        assert header_values(echo, "dapr-caller-namespace") == ["default"]


async def test_caller_headers_sent_straight_to_the_internal_listener_are_dropped(
    mesh: Mesh, tmp_path: Path
) -> None:
    """A peer holding a's certificate writes b's caller headers itself: still a."""
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        context = client_context(tmp_path / "a-client", workload("a"))
        spoofed = {
            "dapr-caller-app-id": "b",
            "Dapr-Caller-App-Id": "b",
            "dapr-caller-namespace": "other",
            "dapr-callee-app-id": "evil",
        }
        async with keep_alive_client(mesh["c"].internal_port, context) as client:
            denied = await client.send("GET", "/v1.0/invoke/c/method/anything", spoofed)
            assert_denied(denied, "a", "GET")
            nothing_reached(mesh)
            allowed = await client.send("GET", "/v1.0/invoke/c/method/allowed/z", spoofed)
        echo = echo_of(allowed)
        assert header_values(echo, "dapr-caller-app-id") == ["a"]
        assert header_values(echo, "dapr-caller-namespace") == ["default"]
        assert header_values(echo, "dapr-callee-app-id") == ["c"]
        assert "b" not in [value for _, value in echo["headers"]]
        assert "evil" not in [value for _, value in echo["headers"]]


@pytest.mark.parametrize(
    "max_version",
    [
        pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
        pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
    ],
)
async def test_internal_listener_refuses_a_client_without_certificate(
    mesh: Mesh, tmp_path: Path, max_version: ssl.TLSVersion
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        context = client_context(tmp_path / "anonymous", None, max_version=max_version)
        attempt = await tls_attempt(
            mesh["c"].internal_port,
            get("/v1.0/invoke/c/method/anything", "dapr-caller-app-id: b\r\n"),
            context,
        )
        assert attempt.error is not None or attempt.data == b"", attempt
        assert not attempt.http_response, attempt
        if max_version == ssl.TLSVersion.TLSv1_2:
            # TLS 1.2 finishes the handshake only once the server accepted us: it never does.
            assert not attempt.connected, attempt
        nothing_reached(mesh)
        assert mesh["c"].context is not None
        assert mesh["c"].context.acl_denials == 0
        # The listener is fine for a client that has a certificate.
        ok = client_context(tmp_path / "b-client", workload("b"))
        async with keep_alive_client(mesh["c"].internal_port, ok) as client:
            response = await client.send("GET", "/v1.0/invoke/c/method/anything")
        assert echo_of(response)["path"] == "/anything"


async def test_internal_listener_gives_plain_http_nothing(mesh: Mesh) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        attempt = await tls_attempt(
            mesh["c"].internal_port,
            get("/v1.0/invoke/c/method/anything", "dapr-caller-app-id: b\r\n"),
            None,
        )
        assert not attempt.http_response, attempt
        nothing_reached(mesh)
        # The public port of c is plain HTTP as ever.
        response = await request(mesh["c"].http_port, "GET", "/v1.0/healthz")
        assert response.status == 204, response


# -- 5. a certificate from another CA -----------------------------------------------------------


@pytest.mark.parametrize(
    "anchors",
    [
        pytest.param("both", id="rogue-cert-trusting-the-dev-ca"),
        pytest.param("rogue", id="rogue-ca-only"),
    ],
)
async def test_caller_with_a_certificate_from_another_ca_cannot_call(
    mesh: Mesh, anchors: str
) -> None:
    """m's certificate names b (whom c would let in) but chains to a CA c does not trust."""
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        forged = rogue_ca().issue("b")
        if anchors == "both":
            # m trusts c, so only c's check of m's certificate can stop the call.
            forged = forged.trusting(rogue_ca().cert_pem + dev_ca().cert_pem)
        await mesh.add("m", material=forged, with_app=False)
        response = await mesh.call("m", "GET", "c", "/anything")
        assert_invoke_failure(response)
        nothing_reached(mesh)
        assert mesh["c"].context is not None
        assert mesh["c"].context.acl_denials == 0
        # The real b still gets through.
        assert (await mesh.call("b", "GET", "c", "/anything")).status == 200


# -- 6. expired certificates --------------------------------------------------------------------


async def test_caller_certificate_that_expired_while_running_is_refused(mesh: Mesh) -> None:
    """A caller whose certificate was valid at start and has expired since: new
    connections to c fail at c's handshake (open ones would carry on, as in TLS)."""
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()
        expiring = expiring_workload("b", seconds=4)
        # Idle connections close fast, so the call after expiry needs a new handshake.
        caller = await mesh.add(
            "b", key="b-expiring", material=expiring, with_app=False, upstream_idle_timeout=0.5
        )
        before = await mesh.call("b-expiring", "GET", "c", "/before")
        assert echo_of(before)["path"] == "/before"
        while time.time() < expiring.not_after.timestamp() + 1.5:
            await asyncio.sleep(0.1)
        assert caller.context is not None
        assert all(pool.open_count == 0 for pool in caller.context.peer_pools.pools)
        response = await mesh.call("b-expiring", "GET", "c", "/after")
        assert_invoke_failure(response)
        assert mesh.apps["c"].seen == [("GET", "/before")]
        # A valid certificate for the same id still works.
        assert (await mesh.call("b", "GET", "c", "/after")).status == 200


async def test_sidecar_with_an_expired_certificate_does_not_start(
    make_sidecar: SidecarFactory,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        with pytest.raises(ConfigError, match="expired"):
            await make_sidecar(app_id="a", **expired_workload("a").settings())


# -- 7. without mTLS -----------------------------------------------------------------------------


async def test_without_mtls_only_the_global_deny_applies(mesh: Mesh) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.add("c", mtls=False, access_control=C_ACCESS_CONTROL)
        await mesh.add("a", mtls=False)
        await mesh.add("b", mtls=False)
        # No certificate, no identity: even a's allowed operation falls to the global deny.
        for caller, verb, path in [("a", "GET", "/allowed/x"), ("b", "GET", "/anything")]:
            response = await mesh.call(caller, verb, "c", path)
            message = assert_denied(response, "", verb)
            assert f"{DENIED_PREFIX} operation: " in message  # the id is empty
        # Naming a caller in headers grants nothing, through a sidecar or straight.
        spoofed = {"dapr-caller-app-id": "b", "dapr-caller-namespace": "default"}
        assert_denied(await mesh.call("a", "GET", "c", "/anything", spoofed), "", "GET")
        direct = await request(
            mesh["c"].internal_port, "GET", "/v1.0/invoke/c/method/anything", spoofed
        )
        assert_denied(direct, "", "GET")
        nothing_reached(mesh)
        metadata = (await request(mesh["c"].http_port, "GET", "/v1.0/metadata")).json()
        assert metadata["mtls"] == {"enabled": False}
        assert metadata["accessControl"]["denied"] == 4


async def test_without_mtls_the_global_allow_applies_whatever_the_policies(mesh: Mesh) -> None:
    access_control = {**C_ACCESS_CONTROL, "defaultAction": "allow"}
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.add("c", mtls=False, access_control=access_control)
        await mesh.add("a", mtls=False)
        # With a certificate, a would be denied both (app default deny, /admin deny).
        for path in ("/other", "/admin"):
            response = await mesh.call("a", "POST", "c", path, body=b"x")
            echo = echo_of(response)
            assert echo["path"] == path
            assert header_values(echo, "dapr-caller-app-id") == ["a"]
        assert mesh.apps["c"].seen == [("POST", "/other"), ("POST", "/admin")]


# -- 8. metadata ---------------------------------------------------------------------------------


async def test_metadata_shows_identity_acl_summary_and_denials(mesh: Mesh) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.standard()

        async def metadata(key: str) -> dict[str, Any]:
            response = await request(mesh[key].http_port, "GET", "/v1.0/metadata")
            assert response.status == 200, response
            document: dict[str, Any] = response.json()
            return document

        document = await metadata("c")
        assert document["id"] == "c"
        assert document["mtls"] == {"enabled": True, "identity": "spiffe://public/ns/default/c"}
        assert document["accessControl"] == {
            "enabled": True,
            "defaultAction": "deny",
            "trustDomain": "public",
            "policies": [
                {
                    "appId": "a",
                    "namespace": "default",
                    "trustDomain": "public",
                    "defaultAction": "deny",
                    "operations": 2,
                },
                {
                    "appId": "b",
                    "namespace": "default",
                    "trustDomain": "public",
                    "defaultAction": "allow",
                    "operations": 2,
                },
            ],
            "denied": 0,
        }
        assert_denied(await mesh.call("a", "POST", "c", "/allowed/x", body=b"x"), "a", "POST")
        assert (await metadata("c"))["accessControl"]["denied"] == 1
        assert_denied(await mesh.call("b", "GET", "c", "/admin/x"), "b", "GET")
        assert (await mesh.call("b", "GET", "c", "/fine")).status == 200
        assert (await metadata("c"))["accessControl"]["denied"] == 2
        # A caller's sidecar has mTLS but no ACL of its own, and counted nothing.
        caller = await metadata("a")
        assert caller["mtls"] == {"enabled": True, "identity": SPIFFE_A}
        assert caller["accessControl"] == {"enabled": False, "denied": 0}


# -- 9. rotation ---------------------------------------------------------------------------------


async def server_serial(port: int, folder: Path) -> int:
    """The serial of the certificate a sidecar's internal listener presents now."""
    context = client_context(folder, workload("b"))
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="")
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_certificate_rotation_drops_no_request(mesh: Mesh, tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await mesh.add("c", access_control=C_ACCESS_CONTROL)
        folder = tmp_path / "pki"
        folder.mkdir()
        (folder / "ca.pem").write_bytes(dev_ca().cert_pem)
        (folder / "ca.key").write_bytes(dev_ca().key_pem)
        write_bundle(folder, ["a"], "default", "public", days=2)
        first = serial_of((folder / "a.pem").read_bytes())
        a = await mesh.add(
            "a",
            mtls=False,
            trust_anchors=str(folder / "ca.pem"),
            cert_chain=str(folder / "a.pem"),
            cert_key=str(folder / "a.key"),
        )
        assert a.context is not None and a.context.mtls is not None
        mtls = a.context.mtls
        assert mtls.reloads == 0
        assert await server_serial(a.internal_port, tmp_path / "probe1") == first

        statuses: list[int] = []
        stop = asyncio.Event()

        async def caller(worker: int) -> None:
            for i in range(400):
                if stop.is_set():
                    return
                response = await mesh.call("a", "GET", "c", f"/allowed/{worker}-{i}")
                statuses.append(response.status)

        workers = [asyncio.create_task(caller(n)) for n in range(3)]
        try:
            await asyncio.sleep(0.3)
            write_bundle(folder, ["a"], "default", "public", days=2)
            second = serial_of((folder / "a.pem").read_bytes())
            assert second != first
            deadline = time.monotonic() + 5.0
            while mtls.reloads == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert mtls.reloads >= 1, mtls
            # New connections from a to c: several slow calls at once need more than the
            # pooled ones, and those handshakes present the new certificate.
            slow = [mesh.call("a", "GET", "c", f"/allowed/slow-{n}?delay=0.3") for n in range(6)]
            for response in await asyncio.gather(*slow):
                statuses.append(response.status)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert statuses, "no request was sent"
        assert set(statuses) == {200}, [s for s in statuses if s != 200]
        assert len(statuses) >= 20
        assert mtls.last_error is None
        assert str(mtls.identity) == SPIFFE_A
        # c sees the new certificate on a's new connections; a's listener presents it too.
        assert second in peer_serials(mesh["c"])
        assert await server_serial(a.internal_port, tmp_path / "probe2") == second
        # And the rotated caller is still a for c's ACL.
        assert_denied(await mesh.call("a", "GET", "c", "/other"), "a", "GET")


# -- 10. invalid ACLs stop start-up --------------------------------------------------------------


def acl_policy(**fields: Any) -> dict[str, Any]:
    policy = {"appId": "a", "namespace": "default", "trustDomain": "public"}
    policy.update(fields)
    return {key: value for key, value in policy.items() if value is not None}


@pytest.mark.parametrize(
    ("policies", "fragments"),
    [
        pytest.param(
            [acl_policy(namespace=None)],
            ["policy #1", 'appId "a"', "missing namespace"],
            id="missing-namespace",
        ),
        pytest.param(
            [acl_policy(), acl_policy(appId=None, namespace="other")],
            ["policy #2", "missing appId"],
            id="missing-app-id",
        ),
    ],
)
async def test_invalid_access_control_stops_the_process(
    tmp_path: Path, policies: list[dict[str, Any]], fragments: list[str]
) -> None:
    config = write_access_control(
        tmp_path, "bad", {"defaultAction": "deny", "trustDomain": "public", "policies": policies}
    )
    result = await asyncio.to_thread(
        run_sync,
        run_args("c", free_port(), None, "--config", config, "--dapr-internal-port", "0"),
    )
    assert result.returncode not in (0, None), (result.stdout, result.stderr)
    assert "accessControl" in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


async def test_valid_access_control_process_starts_with_the_acl_loaded(tmp_path: Path) -> None:
    """The control for the test above: the same file with the field present works."""
    config = write_access_control(
        tmp_path, "good", {"defaultAction": "deny", "policies": [acl_policy()]}
    )
    port = free_port()
    folder = tmp_path / "proc"
    folder.mkdir()
    proc = Proc(
        run_args("c", port, None, "--config", config, "--dapr-internal-port", "0"),
        clean_env(),
        folder,
    )
    try:
        await proc.wait_ready(port)
        metadata = (await request(port, "GET", "/v1.0/metadata")).json()
        assert metadata["accessControl"]["enabled"] is True
        assert metadata["accessControl"]["defaultAction"] == "deny"
        assert [p["appId"] for p in metadata["accessControl"]["policies"]] == ["a"]
    finally:
        proc.kill()


# -- the caller checks who answers --------------------------------------------------------------


async def test_caller_refuses_a_callee_whose_certificate_names_another_app(
    mesh: Mesh, tmp_path: Path
) -> None:
    """daprd dials the callee with its expected SPIFFE id (`GRPCDialOptionMTLS(calleeID)`),
    so a sidecar with a valid certificate for some other app cannot pose as c."""
    async with asyncio.timeout(TEST_TIMEOUT):
        # An impostor serving app id "c", holding a valid development-CA certificate for "x".
        impostor = await mesh.add("c", key="impostor", material=workload("x"))
        static = tmp_path / "static.yaml"
        static.write_text(
            json.dumps(
                {
                    "apiVersion": "dapr.io/v1alpha1",
                    "kind": "Configuration",
                    "metadata": {"name": "static"},
                    "spec": {
                        "nameResolution": {
                            "component": "static",
                            "configuration": {
                                "apps": {"c": [f"127.0.0.1:{impostor.internal_port}"]}
                            },
                        }
                    },
                }
            )
        )
        await mesh.add("a", config_file=str(static))
        response = await mesh.call("a", "POST", "c", "/allowed/secret", body=b"card=4111")
        assert_invoke_failure(response)
        nothing_reached(mesh, "impostor")
