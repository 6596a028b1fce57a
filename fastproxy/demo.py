"""`fastproxy demo`: a tiny app and its sidecar in one process, for a first curl.

The app is a minimal HTTP/1.1 server on a free loopback port; the sidecar is
the real one, configured exactly as `fastproxy run` would configure it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import signal
from typing import cast

import httptools

from fastproxy.config.model import Config
from fastproxy.log import setup_logging
from fastproxy.server import Sidecar, install_uvloop


class DemoApp(asyncio.Protocol):
    """Answers every request with JSON describing what it received."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        path = self._url.decode("latin-1")
        answer = {
            "message": "hello from the demo app" if path.startswith("/hello") else "demo echo",
            "method": self._parser.get_method().decode(),
            "path": path,
            "caller": self._headers.get("dapr-caller-app-id"),
            "body": self._body.decode("utf-8", "replace"),
        }
        body = json.dumps(answer, indent=2).encode() + b"\n"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        if self._transport is not None:
            self._transport.write(head % len(body) + body)
            if not self._parser.should_keep_alive():
                self._transport.close()


async def serve_demo(config: Config) -> int:
    loop = asyncio.get_running_loop()
    app_port = config.app_port or 0
    app_server = await loop.create_server(DemoApp, config.app_channel_address, app_port)
    app_port = app_server.sockets[0].getsockname()[1]
    sidecar = Sidecar(dataclasses.replace(config, app_port=app_port))
    await sidecar.start()
    host = "127.0.0.1" if "127.0.0.1" in config.listen_addresses else config.listen_addresses[0]
    if ":" in host:
        host = f"[{host}]"
    print(
        f"demo app {config.app_id!r} on port {app_port}, its sidecar on port {sidecar.http_port}."
        f"\nTry:\n  curl http://{host}:{sidecar.http_port}/v1.0/invoke/{config.app_id}"
        "/method/hello\nCtrl-C stops both.",
        flush=True,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await sidecar.stop()
    app_server.close()
    return 0


def run_demo(config: Config) -> int:
    setup_logging(config.log_level, config.log_as_json)
    install_uvloop()
    try:
        return asyncio.run(serve_demo(config))
    except OSError as exc:
        print(f"fastproxy demo: {exc}")
        if exc.errno == errno.EADDRINUSE:
            print("the port is in use: pass --dapr-http-port N")
        return 1
