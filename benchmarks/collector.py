"""A small, fast span sink: the Zipkin collector of `run.py`'s observability case.

    python benchmarks/collector.py PORT

It accepts ``POST`` on any path (fastproxy's Zipkin exporter posts to ``/api/v2/spans``)
with a body of any size, Content-Length or chunked, and answers ``202 Accepted`` with an
empty body once the whole body is in. Each body counts as one request, its length in bytes
and its spans: the items of the top-level JSON list, which is what a Zipkin v2 POST is.
Counting them is cheap for the layout Zipkin exporters write (compact JSON, every span an
object whose first key is ``traceId``): the body is only searched for ``"traceId":``, which
must each time start a span right after the previous one ends (``},{"traceId":``), with C
speed ``bytes.count``. Any other body is parsed with ``json``. A body that is not a JSON
list gets ``400`` and counts as ``invalid``, not as spans.

``GET /_stats`` is not counted: it returns the totals as JSON, ``{"requests": ..,
"bytes": .., "spans": .., "invalid": .., "connections": ..}`` (POSTs received, their body
bytes, spans in them, POSTs whose body was not a JSON list, connections accepted), so the
harness can compare the spans received with the requests a run completed. Any other
request gets 404 and is not counted.

The HTTP side is httpapp.py's, as for flaky_app.py: one process on uvloop with httptools,
keep-alive (fastproxy's exporter sends its batches on one kept connection), pipelining-safe,
HTTP/1.0 and ``Connection: close`` honoured, reading paused while the socket's send buffer
is full.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import httpapp
from benchmarks.httpapp import HttpConnection

STATS_PATH = b"/_stats"
# A Zipkin v2 span as exporters write it starts with its trace id.
_SPAN_KEY = b'"traceId":'
_FIRST_SPAN = b'[{"traceId":'
_NEXT_SPAN = b'},{"traceId":'
_LIST_END = b"}]"
_JSON_WHITESPACE = b" \t\r\n"


def count_spans(body: bytes) -> int | None:
    """The number of items in the top-level JSON list ``body``; None if it is not one.

    Fast path, no parsing: when the list's items are objects that each start with the key
    ``traceId`` (Zipkin v2 as exporters write it) and no other ``"traceId":`` occurs, the
    count is that of ``"traceId":``. An occurrence anywhere else (a nested object, a tag,
    a key inside a string) breaks the ``},{"traceId":`` chain, and the body is parsed with
    ``json`` instead, as is any other layout (whitespace, other key order, an empty list).
    """
    text = body.strip(_JSON_WHITESPACE)
    if text.startswith(_FIRST_SPAN) and text.endswith(_LIST_END):
        spans = text.count(_SPAN_KEY)
        if text.count(_NEXT_SPAN) == spans - 1:
            return spans
    try:
        document = json.loads(text)
    except ValueError:  # also UnicodeDecodeError
        return None
    return len(document) if isinstance(document, list) else None


def response(status: bytes, body: bytes, close: bool, content_type: bytes = b"") -> bytes:
    """A complete HTTP/1.1 response with a Content-Length body."""
    return b"".join(
        (
            b"HTTP/1.1 ",
            status,
            b"\r\nServer: collector\r\n",
            b"Content-Type: " + content_type + b"\r\n" if content_type else b"",
            b"Content-Length: ",
            str(len(body)).encode(),
            b"\r\nConnection: close\r\n\r\n" if close else b"\r\nConnection: keep-alive\r\n\r\n",
            body,
        )
    )


ACCEPTED = {close: response(b"202 Accepted", b"", close) for close in (False, True)}
INVALID = {
    close: response(b"400 Bad Request", b"not a JSON list\n", close, b"text/plain")
    for close in (False, True)
}
NOT_FOUND = {
    close: response(b"404 Not Found", b"not found\n", close, b"text/plain")
    for close in (False, True)
}


class Collector:
    """The totals, shared by every connection."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.spans = 0
        self.invalid = 0
        self.connections = 0

    def receive(self, body: bytes, close: bool) -> bytes:
        """Count one POST and its spans; the answer to it."""
        self.requests += 1
        self.bytes += len(body)
        spans = count_spans(body)
        if spans is None:
            self.invalid += 1
            return INVALID[close]
        self.spans += spans
        return ACCEPTED[close]

    def answer(self, method: bytes, path: bytes, body: bytes, close: bool) -> bytes:
        """The response to one complete request (path without its query string)."""
        if method == b"POST":
            return self.receive(body, close)
        if method == b"GET" and path == STATS_PATH:
            stats = json.dumps(self.stats()).encode()
            return response(b"200 OK", stats, close, b"application/json")
        return NOT_FOUND[close]

    def stats(self) -> dict[str, int]:
        """What ``GET /_stats`` returns."""
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "spans": self.spans,
            "invalid": self.invalid,
            "connections": self.connections,
        }


class Connection(HttpConnection[Collector]):
    """One client connection, which also gathers each request's body."""

    def __init__(self, collector: Collector) -> None:
        super().__init__(collector)
        self.body: list[bytes] = []

    def on_message_begin(self) -> None:
        self.url = b""
        self.body.clear()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def answer(self, path: bytes, close: bool) -> bytes:
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        return self.app.answer(self.parser.get_method(), path, body, close)


async def serve(port: int, host: str = "127.0.0.1") -> None:
    """Listen on ``host:port`` until cancelled."""
    collector = Collector()
    await httpapp.serve(lambda: Connection(collector), port, host)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``PORT``."""
    p = argparse.ArgumentParser(prog="benchmarks/collector.py", description=__doc__.split("\n")[0])
    p.add_argument("port", type=int, help="loopback port to listen on")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
