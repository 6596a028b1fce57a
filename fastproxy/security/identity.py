"""Workload identity: the SPIFFE id a sidecar's certificate carries.

Dapr names a sidecar `spiffe://<trust-domain>/ns/<namespace>/<app-id>` in the
URI subject alternative name of its certificate. Only an id read from a
verified peer certificate identifies a caller; headers never do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SCHEME = "spiffe://"
# Trust domains, namespaces and app ids are DNS-label-like: nothing that could
# break out of a header line or a log line.
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    app_id: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/{self.app_id}"

    @classmethod
    def parse(cls, uri: str) -> SpiffeId | None:
        """The id in a `spiffe://td/ns/<ns>/<app>` URI; None for any other shape."""
        if not uri.startswith(SCHEME):
            return None
        parts = uri[len(SCHEME) :].split("/")
        if len(parts) != 4 or parts[1] != "ns":
            return None
        if not all(_PART.fullmatch(part) for part in parts):
            return None
        trust_domain, _, namespace, app_id = parts
        return cls(trust_domain, namespace, app_id)


def identity_from_peercert(cert: dict[str, Any] | None) -> SpiffeId | None:
    """The SPIFFE id of a verified peer (`SSLObject.getpeercert()`), if it has exactly one."""
    if not cert:
        return None
    ids = [
        SpiffeId.parse(value)
        for kind, value in cert.get("subjectAltName", ())
        if kind == "URI" and value.startswith(SCHEME)
    ]
    if len(ids) != 1:
        return None  # none, or ambiguous: the certificate names no single workload
    return ids[0]


def caller_lines(caller: SpiffeId) -> bytes:
    """The caller headers an app receives for a call from a verified sidecar."""
    return (
        f"dapr-caller-app-id: {caller.app_id}\r\ndapr-caller-namespace: {caller.namespace}\r\n"
    ).encode("latin-1")
