"""Pure routing: request line and a few header values → what to do with the request.

No I/O and no clock. The invoke path form is cached per raw path (bounded), so
a hot route costs one dict lookup after its first request.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_plus

from fastproxy.errors import InvokeError, NoTargetError
from fastproxy.methodpath import normalize_method

NO_APP_ID = "failed getting app id either from the URL path or the header dapr-app-id"
INVOKE_PREFIX: Final = b"/v1.0/invoke/"
_LOOSE_INVOKE_PREFIX = re.compile(rb"^/+v1\.0/+invoke/+")
_APP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(\.[A-Za-z0-9][A-Za-z0-9_\-]*)?$")


class TargetKind(enum.IntEnum):
    APP = 0
    ENDPOINT = 1
    URL = 2


class LocalRoute(enum.IntEnum):
    """Requests the sidecar answers itself."""

    HEALTHZ = 0
    HEALTHZ_OUTBOUND = 1
    METADATA = 2
    METADATA_PUT = 3


LOCAL_ROUTES: Final[dict[tuple[bytes, bytes], LocalRoute]] = {
    (b"GET", b"/v1.0/healthz"): LocalRoute.HEALTHZ,
    (b"GET", b"/v1.0/healthz/outbound"): LocalRoute.HEALTHZ_OUTBOUND,
    (b"GET", b"/v1.0/metadata"): LocalRoute.METADATA,
}
_METADATA_KEY_PREFIX: Final = b"/v1.0/metadata/"


def local_route(method: bytes, path: bytes) -> LocalRoute | None:
    route = LOCAL_ROUTES.get((method, path))
    if route is None and method == b"PUT" and path.startswith(_METADATA_KEY_PREFIX):
        key = path[len(_METADATA_KEY_PREFIX) :]
        if key and b"/" not in key:
            return LocalRoute.METADATA_PUT
    return route


def token_exempt(method: bytes, path: bytes) -> bool:
    """Only the health endpoints answer without `dapr-api-token`, as in daprd."""
    if method != b"GET":
        return False
    trimmed = path.strip(b"/")
    return trimmed in (b"v1.0/healthz", b"v1.0/healthz/outbound")


@dataclass(frozen=True, slots=True)
class Invocation:
    """Where a request goes and which path the target sees."""

    kind: TargetKind
    target: str  # the target as written, after unescaping (the resiliency key)
    app_id: str
    namespace: str
    is_self: bool
    method: bytes  # normalised app-facing path, starts with "/"


class Router:
    """Turns the invoke URL forms (path, `dapr-app-id` header, Basic auth) into an Invocation."""

    __slots__ = ("_app_id", "_cache", "_cache_size", "_endpoints", "_namespace", "cached")

    def __init__(
        self,
        app_id: str,
        namespace: str,
        endpoint_names: Collection[str] = (),
        cache_size: int = 4096,
    ) -> None:
        self._app_id = app_id
        self._namespace = namespace
        self._endpoints = frozenset(endpoint_names)
        self._cache: dict[bytes, Invocation] = {}
        self._cache_size = cache_size
        # The routes of paths seen before, without the cost of a method call.
        self.cached = self._cache.get

    def route_path(self, path: bytes) -> Invocation:
        """`/v1.0/invoke/{target}/method/{method}`; raises NoTargetError or InvokeError."""
        found = self._cache.get(path)
        if found is not None:
            return found
        if path.startswith(INVOKE_PREFIX):
            rest = path[len(INVOKE_PREFIX) :]
        else:
            loose = _LOOSE_INVOKE_PREFIX.match(path)
            if loose is None:
                raise NoTargetError(NO_APP_ID)
            rest = path[loose.end() :]
        rest = rest.lstrip(b"/")
        cut = rest.find(b"/method/")
        if cut > 0:
            raw_target, raw_method = rest[:cut], rest[cut + 8 :]
        elif rest.endswith(b"/method") and len(rest) > 7:
            raw_target, raw_method = rest[:-7], b""
        else:
            raise NoTargetError(NO_APP_ID)
        target = unquote_plus(raw_target.decode("latin-1"), encoding="utf-8", errors="replace")
        invocation = self._invocation(target, normalize_method(raw_method))
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[path] = invocation
        return invocation

    def route_header(self, app_id: bytes, path: bytes) -> Invocation:
        """The `dapr-app-id` header form: the whole cleaned path is the method."""
        target = app_id.decode("latin-1").strip()
        if not target:
            raise NoTargetError(NO_APP_ID)
        return self._invocation(target, normalize_method(path.lstrip(b"/")))

    def _invocation(self, target: str, method: bytes) -> Invocation:
        if target.startswith(("http://", "https://")):
            return Invocation(TargetKind.URL, target, "", "", False, method)
        if target in self._endpoints:
            return Invocation(TargetKind.ENDPOINT, target, target, "", False, method)
        if not target:
            raise NoTargetError(NO_APP_ID)
        if target.count(".") > 1 or not _APP_ID.match(target):
            raise InvokeError(f"failed to invoke, id: {target}, err: invalid app id {target}")
        app_id, _, namespace = target.partition(".")
        namespace = namespace or self._namespace
        is_self = app_id == self._app_id and namespace == self._namespace
        return Invocation(TargetKind.APP, target, app_id, namespace, is_self, method)


def basic_auth_app_id(authorization: bytes) -> bytes | None:
    """The `Authorization: Basic base64("dapr-app-id:X")` form; None when it is not that."""
    if authorization[:6].lower() != b"basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, app_id = decoded.partition(b":")
    if not sep or user.lower() != b"dapr-app-id" or not app_id:
        return None
    return app_id
