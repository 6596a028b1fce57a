"""Start-up settings: the frozen `Config`, the resources it names, and their parsers.

Everything here runs once before the loop starts; nothing on the request path
imports from it except the frozen dataclasses.
"""

from __future__ import annotations

from fastproxy.config.errors import ConfigError
from fastproxy.config.model import ClientTLS, Config, HTTPEndpoint, Resources
from fastproxy.config.quantity import parse_quantity
from fastproxy.config.resources import load_resources

__all__ = [
    "ClientTLS",
    "Config",
    "ConfigError",
    "HTTPEndpoint",
    "Resources",
    "load_resources",
    "parse_quantity",
]
