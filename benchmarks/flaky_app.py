"""A small, fast app that fails on purpose: the upstream of `run.py`'s retry case.

    python benchmarks/flaky_app.py PORT [--fail-every N] [--count {connection,process}]

It answers ``GET /small`` like the benchmark's nginx app (200, ``text/plain``,
``hello, world\\n``), except that every N-th request gets a 503 with a short body instead.
Which requests are the N-th ones depends on ``--count``:

- ``connection`` (the default): every connection counts its own requests, so its N-th,
  2N-th, ... requests fail, whatever the other connections do. A retry sent on the
  connection whose failure it follows is that connection's next request and succeeds (N >= 2).
- ``process``: one counter for the whole process, over all connections, so exactly one
  request in N fails but which one depends on how the connections interleave: to a single
  request, each attempt fails 1 in N independently of its earlier ones.

``--fail-every 0`` never fails: the healthy baseline on the same server code. Other paths
get 404 (they count, and fail, like any request).

``GET /_stats`` is not counted and never fails: it returns the totals over all connections
as JSON, ``{"requests": .., "failed": .., "connections": .., "fail_every": N, "count":
"connection"|"process"}`` (requests received, 503s sent, connections accepted, and the two
options), so the harness can read how many requests a client call cost.

The HTTP side (keep-alive, pipelining, HTTP/1.0 and ``Connection: close``, flow control,
one process on uvloop with httptools) is httpapp.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from email.utils import formatdate
from pathlib import Path

import uvloop

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import httpapp
from benchmarks.httpapp import HttpConnection

SMALL_BODY = b"hello, world\n"  # = nginx_conf.SMALL_BODY, not imported: a fast start
FAIL_BODY = b"flaky_app: failing on purpose\n"
STATS_PATH = b"/_stats"
SMALL_PATH = b"/small"
# --count: whose requests make up the N of --fail-every N.
COUNT_CONNECTION = "connection"  # each connection's own requests
COUNT_PROCESS = "process"  # all requests the process receives
COUNT_MODES: tuple[str, ...] = (COUNT_CONNECTION, COUNT_PROCESS)


def response(status: bytes, body: bytes, content_type: bytes, date: bytes, close: bool) -> bytes:
    """A complete HTTP/1.1 response with a Content-Length body."""
    return b"".join(
        (
            b"HTTP/1.1 ",
            status,
            b"\r\nServer: flaky_app\r\nDate: ",
            date,
            b"\r\nContent-Type: ",
            content_type,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\nConnection: close\r\n\r\n" if close else b"\r\nConnection: keep-alive\r\n\r\n",
            body,
        )
    )


def http_date(now: float) -> bytes:
    """An RFC 7231 date, as nginx sends in ``Date``."""
    return formatdate(now, usegmt=True).encode()


class Counter:
    """The requests counted on one connection (``--count connection``)."""

    __slots__ = ("requests",)

    def __init__(self) -> None:
        self.requests = 0


class App:
    """The totals, the counting mode and the pre-built answers, shared by every connection."""

    def __init__(self, fail_every: int, count: str = COUNT_CONNECTION) -> None:
        if fail_every < 0:
            raise ValueError("fail_every must be >= 0")
        if count not in COUNT_MODES:
            raise ValueError(f"count must be one of {', '.join(COUNT_MODES)}")
        self.fail_every = fail_every
        self.count = count
        self.requests = 0
        self.failed = 0
        self.connections = 0
        # With count="connection", requests answered without a connection's counter (direct
        # calls to answer/should_fail) count as one connection of their own.
        self._own = Counter()
        self._date_second = -1
        self._cache: dict[tuple[bytes, bool], bytes] = {}

    def should_fail(self, counter: Counter | None = None) -> bool:
        """Count one request (on ``counter``, its connection's); True when it is the N-th
        (2N-th, ...) one of the connection with ``count="connection"``, of the process with
        ``count="process"``."""
        self.requests += 1
        own = counter if counter is not None else self._own
        own.requests += 1
        nth = own.requests if self.count == COUNT_CONNECTION else self.requests
        if self.fail_every and nth % self.fail_every == 0:
            self.failed += 1
            return True
        return False

    def _date(self) -> None:
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            date = http_date(second)
            self._cache = {
                (b"ok", False): response(b"200 OK", SMALL_BODY, b"text/plain", date, False),
                (b"ok", True): response(b"200 OK", SMALL_BODY, b"text/plain", date, True),
                (b"fail", False): response(
                    b"503 Service Unavailable", FAIL_BODY, b"text/plain", date, False
                ),
                (b"fail", True): response(
                    b"503 Service Unavailable", FAIL_BODY, b"text/plain", date, True
                ),
                (b"missing", False): response(
                    b"404 Not Found", b"not found\n", b"text/plain", date, False
                ),
                (b"missing", True): response(
                    b"404 Not Found", b"not found\n", b"text/plain", date, True
                ),
            }

    def answer(self, path: bytes, close: bool, counter: Counter | None = None) -> bytes:
        """The response to one request for ``path`` (query string already removed), counted
        on ``counter`` (the connection's; see should_fail)."""
        self._date()
        if path == STATS_PATH:
            body = json.dumps(self.stats()).encode()
            date = http_date(time.time())
            return response(b"200 OK", body, b"application/json", date, close)
        if self.should_fail(counter):
            return self._cache[(b"fail", close)]
        if path == SMALL_PATH:
            return self._cache[(b"ok", close)]
        return self._cache[(b"missing", close)]

    def stats(self) -> dict[str, int | str]:
        """What ``GET /_stats`` returns: totals over all connections, and the options."""
        return {
            "requests": self.requests,
            "failed": self.failed,
            "connections": self.connections,
            "fail_every": self.fail_every,
            "count": self.count,
        }


class Connection(HttpConnection[App]):
    """One client connection, its requests counted on a Counter of its own."""

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.counter = Counter()

    def answer(self, path: bytes, close: bool) -> bytes:
        return self.app.answer(path, close, self.counter)


async def serve(
    port: int, fail_every: int, count: str = COUNT_CONNECTION, host: str = "127.0.0.1"
) -> None:
    """Listen on ``host:port`` until cancelled."""
    app = App(fail_every, count)
    await httpapp.serve(lambda: Connection(app), port, host)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``PORT [--fail-every N] [--count {connection,process}]``."""
    p = argparse.ArgumentParser(prog="benchmarks/flaky_app.py", description=__doc__.split("\n")[0])
    p.add_argument("port", type=int, help="loopback port to listen on")
    p.add_argument(
        "--fail-every",
        type=int,
        default=3,
        metavar="N",
        help="answer every N-th request with 503 (default 3; 0 = never)",
    )
    p.add_argument(
        "--count",
        choices=COUNT_MODES,
        default=COUNT_CONNECTION,
        help="count requests per connection (its N-th, 2N-th, ... fail; default) or over the "
        "whole process (one counter for all connections)",
    )
    args = p.parse_args(argv)
    if args.fail_every < 0:
        p.error("--fail-every must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    uvloop.run(serve(args.port, args.fail_every, args.count))


if __name__ == "__main__":
    main()
