"""Endpoints the sidecar answers itself: health and metadata, shaped as daprd shapes them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastproxy.downstream.reply import LocalReply
from fastproxy.routing import LocalRoute
from fastproxy.wire import error_body, local_response

if TYPE_CHECKING:
    from fastproxy.context import SidecarContext
    from fastproxy.downstream.protocol import DownstreamProtocol

RUNTIME_VERSION = "fastproxy-0.1.0"
HEALTH_APPID_NOT_MATCH = "ERR_HEALTH_APPID_NOT_MATCH"


class Metadata:
    """The `/v1.0/metadata` document; its bytes are rebuilt only when it changes."""

    __slots__ = ("_base", "_body", "_extended", "_sections")

    def __init__(self, base: dict[str, Any]) -> None:
        self._base = base
        self._sections: dict[str, Any] = {}
        self._extended: dict[str, str] = {}
        self._body: bytes | None = None

    def body(self) -> bytes:
        if self._body is None:
            document = dict(self._base)
            document.update(self._sections)
            if self._extended:
                document["extended"] = dict(self._extended)
            self._body = json.dumps(document).encode()
        return self._body

    def set_section(self, key: str, value: Any) -> None:
        """A top-level entry of the sidecar's own (mTLS, access control)."""
        self._sections[key] = value
        self._body = None

    def set_extended(self, key: str, value: str) -> None:
        self._extended[key] = value
        self._body = None

    @property
    def extended(self) -> dict[str, str]:
        return dict(self._extended)


def metadata_document(
    ctx_id: str, app_port: int | None, channel_address: str, endpoint_names: list[str]
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": ctx_id,
        "runtimeVersion": RUNTIME_VERSION,
        "enabledFeatures": [],
    }
    if endpoint_names:
        document["httpEndpoints"] = [{"name": name} for name in sorted(endpoint_names)]
    connection: dict[str, Any] = {"protocol": "http", "channelAddress": channel_address}
    if app_port is not None:
        connection["port"] = app_port
    document["appConnectionProperties"] = connection
    return document


def local_reply(
    ctx: SidecarContext,
    conn: DownstreamProtocol,
    route: LocalRoute,
    query: bytes,
    path: bytes,
    keep_alive: bool,
    expect_continue: bool = False,
    trace_lines: bytes = b"",
    timing_line: bytes = b"",
) -> LocalReply:
    """The reply for a local route; one that needs no body closes a connection
    whose client holds a body back for `100 Continue`. `trace_lines` (the
    request's traceparent) go on the metadata answers, as health checks are
    never traced in daprd; `timing_line` (Server-Timing) on every answer."""
    clock = ctx.clock
    trace_lines += timing_line
    if expect_continue and route is not LocalRoute.METADATA_PUT:
        keep_alive = False
    limit = ctx.config.max_body_size
    if route is LocalRoute.HEALTHZ:
        wanted = _query_value(query, "appid")
        if wanted is not None and wanted != ctx.config.app_id:
            ctx.record_error_code(HEALTH_APPID_NOT_MATCH)
            body = error_body(HEALTH_APPID_NOT_MATCH, "dapr app-id does not match")
            return LocalReply(
                conn,
                local_response(clock, 500, body, keep_alive=keep_alive, extra_headers=timing_line),
                keep_alive,
                limit,
            )
        return LocalReply(
            conn,
            local_response(clock, 204, keep_alive=keep_alive, extra_headers=timing_line),
            keep_alive,
            limit,
        )
    if route is LocalRoute.HEALTHZ_OUTBOUND:
        return LocalReply(
            conn,
            local_response(clock, 204, keep_alive=keep_alive, extra_headers=timing_line),
            keep_alive,
            limit,
        )
    if route is LocalRoute.METADATA:
        return LocalReply(
            conn,
            local_response(
                clock, 200, ctx.metadata.body(), keep_alive=keep_alive, extra_headers=trace_lines
            ),
            keep_alive,
            limit,
        )
    key = path.rsplit(b"/", 1)[-1].decode("utf-8", "replace")

    def store(body: bytes) -> bytes:
        ctx.metadata.set_extended(key, body.decode("utf-8", "replace"))
        return local_response(clock, 204, keep_alive=keep_alive, extra_headers=trace_lines)

    return LocalReply(
        conn, None, keep_alive, limit, on_complete=store, expect_continue=expect_continue
    )


def _query_value(query: bytes, name: str) -> str | None:
    if not query:
        return None
    values = parse_qs(query[1:].decode("latin-1")).get(name)
    return values[0] if values else None
