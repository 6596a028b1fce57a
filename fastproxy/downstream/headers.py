"""Request header tables: which fields the sidecar reads, drops or refuses.

Looked up once per header on the hot path, so each table is built at import,
keyed by exact spelling first and by lower-cased name second.
"""

from __future__ import annotations

from typing import Final

# Header kinds that need more than copying (see on_header).
HOST: Final = 1
CONTENT_LENGTH: Final = 2
TRANSFER_ENCODING: Final = 3
CONNECTION: Final = 4
DROP: Final = 5
EXPECT: Final = 6
APP_ID: Final = 7
API_TOKEN: Final = 8
AUTHORIZATION: Final = 9
# With tracing on, the trace context is read and replaced, never forwarded as sent.
TRACEPARENT: Final = 10
TRACESTATE: Final = 11

SPECIAL_HEADERS: Final[dict[bytes, int]] = {
    b"host": HOST,
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION,
    b"keep-alive": DROP,
    b"proxy-connection": DROP,
    b"upgrade": DROP,
    b"http2-settings": DROP,
    b"te": DROP,
    b"trailer": DROP,
    b"proxy-authorization": DROP,
    b"proxy-authenticate": DROP,
    b"dapr-caller-app-id": DROP,
    b"dapr-caller-namespace": DROP,
    b"dapr-callee-app-id": DROP,
    b"expect": EXPECT,
    b"dapr-app-id": APP_ID,
    b"dapr-api-token": API_TOKEN,
    b"authorization": AUTHORIZATION,
}
# Exact spellings looked up before lower-casing a name: the special names in
# their usual cases, and common plain headers.
PLAIN: Final = 0
EXACT_HEADERS: Final[dict[bytes, int]] = {
    **{name.title(): kind for name, kind in SPECIAL_HEADERS.items()},
    **SPECIAL_HEADERS,
    **dict.fromkeys(
        (
            b"User-Agent",
            b"Accept",
            b"Accept-Encoding",
            b"Accept-Language",
            b"Content-Type",
            b"content-type",
            b"Cookie",
            b"Origin",
            b"Referer",
            b"traceparent",
            b"tracestate",
            b"Cache-Control",
            b"If-None-Match",
            b"If-Modified-Since",
        ),
        PLAIN,
    ),
}
# On the internal listener the caller headers are the calling sidecar's word: kept.
_SET_BY_CALLER = (b"dapr-caller-app-id", b"dapr-caller-namespace")
SPECIAL_HEADERS_DELIVERED: Final[dict[bytes, int]] = {
    name: kind for name, kind in SPECIAL_HEADERS.items() if name not in _SET_BY_CALLER
}
EXACT_HEADERS_DELIVERED: Final[dict[bytes, int]] = {
    **EXACT_HEADERS,
    **{name: PLAIN for name in _SET_BY_CALLER},
    **{name.title(): PLAIN for name in _SET_BY_CALLER},
}


def traced(table: dict[bytes, int]) -> dict[bytes, int]:
    """A header table in which the W3C trace context fields are read, not copied."""
    kinds = {b"traceparent": TRACEPARENT, b"tracestate": TRACESTATE}
    return {**table, **kinds, **{name.title(): kind for name, kind in kinds.items()}}


# Fields a client may not ask us to drop with `Connection`: the ones that
# frame or route the request, or that the sidecar itself sets.
UNNAMEABLE: Final = frozenset({b"host", b"content-length", b"transfer-encoding", b"forwarded"})
# Names some servers would read as a framing or routing header once `_` becomes `-`.
DISGUISABLE: Final = frozenset(
    name.replace(b"-", b"_") for name, kind in SPECIAL_HEADERS.items() if kind != AUTHORIZATION
)


def without_tokens(headers: list[bytes], tokens: list[bytes]) -> list[bytes]:
    """The header list without the fields `Connection` named (index 0 is the line slot)."""
    kept: list[bytes] = [headers[0]]
    for i in range(1, len(headers), 4):
        if headers[i].lower() not in tokens:
            kept.extend(headers[i : i + 4])
    return kept
