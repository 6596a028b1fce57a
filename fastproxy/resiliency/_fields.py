"""Small readers for the loosely typed values a parsed YAML document holds.

Shared by the policy parsers so every bad field is reported the same way: the
place it came from, the field, and what was found instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeGuard

from fastproxy.config.errors import ConfigError


def kind(value: object) -> str:
    """A short description of a YAML value's type for error messages."""
    return "nothing" if value is None else type(value).__name__


def is_int(value: object) -> TypeGuard[int]:
    """True for a YAML integer (bool is an int in Python, but not in YAML)."""
    return isinstance(value, int) and not isinstance(value, bool)


def mapping_or_empty(value: object, where: str, what: str) -> Mapping[object, object]:
    """`value` as a mapping; an absent (None) value is an empty one, as in Go's decoder."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {what} must be a mapping, not {kind(value)}")
    return value


def key_name(key: object, where: str, what: str) -> str:
    """A mapping key as a name: YAML reads `123:` as an int, Dapr sees the string "123"."""
    if isinstance(key, str):
        return key
    if is_int(key):
        return str(key)
    raise ConfigError(f"{where}: {what} names must be strings, not {kind(key)} ({key!r})")


def optional_string(body: Mapping[object, object], key: str, where: str) -> str:
    """A string field; absent or null reads as "" (Go's zero value)."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, not {kind(value)}")
    return value


def optional_int(body: Mapping[object, object], key: str, where: str, default: int) -> int:
    """An integer field; an integer written as a quoted string is accepted too."""
    value = body.get(key)
    if value is None:
        return default
    if is_int(value):
        return value
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in ("+", "-") else text
        if digits.isascii() and digits.isdigit():
            return int(text)
    raise ConfigError(f"{where}: {key} must be an integer, not {kind(value)} ({value!r})")
