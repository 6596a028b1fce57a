"""Finished spans, and the one daprd records for a service invocation.

A span is built only for a sampled request, after its response status is
known, so building one costs nothing on unsampled traffic. The attribute set
mirrors daprd's HTTP invoke span so existing dashboards and queries keep working.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, Literal

SpanKind = Literal["CLIENT", "SERVER"]

# Request headers never copied onto a span: they carry secrets.
SECRET_HEADERS: Final = frozenset({"dapr-api-token"})
_DAPR_PREFIX: Final = "dapr-"
_PHRASES: Final[dict[int, str]] = {int(status): status.phrase for status in HTTPStatus}


@dataclass(slots=True)
class Span:
    """One finished span; ids are lowercase hex, times Unix epoch nanoseconds."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    attributes: dict[str, str] = field(default_factory=dict)
    status_error: bool = False
    status_message: str = ""


def _text(value: str | bytes) -> str:
    # Wire bytes are latin-1 by HTTP's rules; decoding that way never fails.
    return value.decode("latin-1") if isinstance(value, bytes) else value


def status_description(status: int) -> str:
    """daprd's span status text for an HTTP error: `Code(<n>): <reason phrase>`."""
    return f"Code({status}): {_PHRASES.get(status, 'Unknown')}"


def invoke_span(
    *,
    trace_id: str | bytes,
    span_id: str | bytes,
    parent_id: str | bytes | None,
    kind: SpanKind,
    target_app_id: str,
    method: str | bytes,
    verb: str | bytes,
    path: str | bytes,
    url: str | bytes,
    status: int,
    start_ns: int,
    end_ns: int,
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    server_address: str | None = None,
    server_port: int | None = None,
) -> Span:
    """The span daprd records for one service invocation over HTTP.

    `kind` is CLIENT on the caller's sidecar (the Dapr HTTP API) and SERVER on
    the callee's internal listener. `method` is the app-facing method path,
    `path` the request path without the query and `url` the request target as
    received. Of the request headers, those named `dapr-*` become attributes
    (first value wins, as with Go's `Header.Get`), except the API token.
    """
    method_text = _text(method)
    if method_text.startswith("/"):
        method_text = method_text[1:]
    verb_text = _text(verb)
    attributes: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = _text(raw_name).lower()
        if name.startswith(_DAPR_PREFIX) and name not in SECRET_HEADERS and name not in attributes:
            attributes[name] = _text(raw_value)
    attributes["rpc.service"] = "ServiceInvocation"
    attributes["net.peer.name"] = target_app_id
    attributes["dapr.protocol"] = "http"
    attributes["dapr.api"] = f"{verb_text} {_text(path)}"
    attributes["dapr.status_code"] = str(status)
    attributes["http.request.method"] = verb_text
    attributes["url.full"] = _text(url)
    if server_address is not None:
        attributes["server.address"] = server_address
        if server_port is not None:
            attributes["server.port"] = str(server_port)
    error = status >= 400
    return Span(
        trace_id=_text(trace_id),
        span_id=_text(span_id),
        parent_id=None if parent_id is None else _text(parent_id),
        name=f"CallLocal/{target_app_id}/{method_text}",
        kind=kind,
        start_ns=start_ns,
        end_ns=end_ns,
        attributes=attributes,
        status_error=error,
        status_message=status_description(status) if error else "",
    )
