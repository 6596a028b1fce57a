"""Finished spans, and the one daprd records for a service invocation.

A span is built only for a sampled request, after its response status is known,
as a flat record of what the request already holds: nothing is decoded, formatted
or filtered until an exporter encodes it, in a batch, off the request's path. The
derived attribute set mirrors daprd's HTTP invoke span so dashboards keep working.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Final, Literal

SpanKind = Literal["CLIENT", "SERVER"]

# Request headers never copied out of a span: they carry secrets.
SECRET_HEADERS: Final = frozenset({b"dapr-api-token"})
_DAPR_PREFIX: Final = b"dapr-"
_SLASH: Final = b"/"
_PHRASES: Final[dict[int, str]] = {int(status): status.phrase for status in HTTPStatus}


def status_description(status: int) -> str:
    """daprd's span status text for an HTTP error: `Code(<n>): <reason phrase>`."""
    return f"Code({status}): {_PHRASES.get(status, 'Unknown')}"


def dapr_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The `dapr-*` request headers a span reports: names lowercased, first value wins
    (as with Go's `Header.Get`), the API token never."""
    found: list[tuple[bytes, bytes]] = []
    names: list[bytes] = []
    for raw_name, value in headers:
        name = raw_name.lower()
        if name.startswith(_DAPR_PREFIX) and name not in SECRET_HEADERS and name not in names:
            names.append(name)
            found.append((name, value))
    return found


# Compared by value and so unhashable, like an `eq=True` dataclass.
class Span:  # noqa: PLW1641
    """One finished service-invocation span; ids are lowercase hex, times epoch nanoseconds.

    Text from the wire (`method`, `verb`, `path`, `url`, header pairs) stays bytes and
    reads as latin-1, HTTP's rule. `headers` may hold any request headers: only what
    `dapr_headers` keeps ever leaves the record, so the API token cannot, whoever built it.
    `parent_id` is empty for a root span, `server_address` empty and `server_port` 0
    when the upstream is unknown.
    """

    __slots__ = (
        "end_ns",
        "headers",
        "kind",
        "method",
        "parent_id",
        "path",
        "server_address",
        "server_port",
        "span_id",
        "start_ns",
        "status",
        "target_app_id",
        "trace_id",
        "url",
        "verb",
    )

    def __init__(
        self,
        trace_id: bytes,
        span_id: bytes,
        parent_id: bytes,
        kind: SpanKind,
        target_app_id: str,
        method: bytes,
        verb: bytes,
        path: bytes,
        url: bytes,
        status: int,
        start_ns: int,
        end_ns: int,
        server_address: str = "",
        server_port: int = 0,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.kind: SpanKind = kind
        self.target_app_id = target_app_id
        self.method = method
        self.verb = verb
        self.path = path
        self.url = url
        self.status = status
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.server_address = server_address
        self.server_port = server_port
        self.headers = headers

    # -- derived, when encoding ------------------------------------------------------------

    @property
    def name(self) -> str:
        """daprd's span name: `CallLocal/<target app>/<method>`."""
        return f"CallLocal/{self.target_app_id}/{self.method.decode('latin-1')}"

    @property
    def status_error(self) -> bool:
        return self.status >= 400

    @property
    def status_message(self) -> str:
        """The error status text; empty unless the status is an error."""
        return status_description(self.status) if self.status >= 400 else ""

    def attributes(self) -> dict[str, str]:
        """daprd's span attributes: the `dapr-*` request headers, then the invoke ones."""
        verb = self.verb.decode("latin-1")
        attributes = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in dapr_headers(self.headers)
        }
        attributes["rpc.service"] = "ServiceInvocation"
        attributes["net.peer.name"] = self.target_app_id
        attributes["dapr.protocol"] = "http"
        attributes["dapr.api"] = f"{verb} {self.path.decode('latin-1')}"
        attributes["dapr.status_code"] = str(self.status)
        attributes["http.request.method"] = verb
        attributes["url.full"] = self.url.decode("latin-1")
        if self.server_address:
            attributes["server.address"] = self.server_address
            if self.server_port:
                attributes["server.port"] = str(self.server_port)
        return attributes

    def same_shape(self, other: Span) -> bool:
        """Whether the two differ at most in their ids and times, so that encoders can
        reuse the rest of one's text for the other."""
        return (
            self.status == other.status
            and self.path == other.path
            and self.method == other.method
            and self.url == other.url
            and self.verb == other.verb
            and self.kind == other.kind
            and self.target_app_id == other.target_app_id
            and self.server_port == other.server_port
            and self.server_address == other.server_address
            and self.headers == other.headers
        )

    def _fields(self) -> tuple[object, ...]:
        return (
            self.trace_id,
            self.span_id,
            self.parent_id,
            self.kind,
            self.target_app_id,
            self.method,
            self.verb,
            self.path,
            self.url,
            self.status,
            self.start_ns,
            self.end_ns,
            self.server_address,
            self.server_port,
            self.headers,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Span):
            return NotImplemented
        return self._fields() == other._fields()

    def __repr__(self) -> str:
        # No header values: the record may hold the API token.
        parent = self.parent_id.decode("latin-1") or "-"
        return (
            f"<Span {self.kind} {self.name} status={self.status}"
            f" trace={self.trace_id.decode('latin-1')} span={self.span_id.decode('latin-1')}"
            f" parent={parent}>"
        )


def invoke_span(
    *,
    trace_id: bytes,
    span_id: bytes,
    parent_id: bytes | None,
    kind: SpanKind,
    target_app_id: str,
    method: bytes,
    verb: bytes,
    path: bytes,
    url: bytes,
    status: int,
    start_ns: int,
    end_ns: int,
    headers: Iterable[tuple[bytes, bytes]] = (),
    server_address: str = "",
    server_port: int = 0,
) -> Span:
    """The span daprd records for one service invocation over HTTP.

    `kind` is CLIENT on the caller's sidecar (the Dapr HTTP API) and SERVER on
    the callee's internal listener. `method` is the app-facing method path (one
    leading `/` is dropped), `path` the request path without the query and `url`
    the request target as received. `parent_id` is None or empty for a root span.
    """
    if method.startswith(_SLASH):
        method = method[1:]
    return Span(
        trace_id,
        span_id,
        parent_id or b"",
        kind,
        target_app_id,
        method,
        verb,
        path,
        url,
        status,
        start_ns,
        end_ns,
        server_address,
        server_port,
        tuple(headers),  # the same tuple when given one
    )
