"""fastproxy: a Dapr-compatible service invocation sidecar on uvloop and httptools."""

from __future__ import annotations

from fastproxy.config.model import Config
from fastproxy.server import Sidecar

__all__ = ["Config", "Sidecar"]
__version__ = "0.1.0"
