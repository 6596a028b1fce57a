"""fastproxy: a Dapr-compatible service invocation sidecar on uvloop and httptools."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastproxy.config.model import Config

if TYPE_CHECKING:
    from fastproxy.server import Sidecar

__all__ = ["Config", "Sidecar"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The server (uvloop, the event loop, every layer) loads only when asked for,
    # so `fastproxy certs` and the config tools start without it.
    if name == "Sidecar":
        from fastproxy.server import Sidecar

        return Sidecar
    raise AttributeError(f"module 'fastproxy' has no attribute {name!r}")
