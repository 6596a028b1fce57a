"""Method-path normalisation: one form for dispatch (and later for access control).

daprd percent-decodes the method, rejects `#`, `?`, NUL and control bytes,
cleans it like Go's `path.Clean` so `..` cannot climb out of the method space,
and re-encodes it for the app. Doing it once, here, keeps every later
decision on the same bytes.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from fastproxy.errors import InvokeError

# Bytes that may stand unescaped in a path segment (RFC 3986 pchar and "/").
_PATH_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/"
_FORBIDDEN = bytes(range(0x20)) + b"\x7f#?"
# After decoding, everything but the forbidden bytes is allowed (it gets re-encoded).
_ALLOWED_AFTER_DECODING = bytes(b for b in range(256) if b not in _FORBIDDEN)
_ENCODE_TABLE = [chr(b).encode() if b in _PATH_SAFE else b"%%%02X" % b for b in range(256)]


def clean_path(path: bytes) -> bytes:
    """Go's `path.Clean` for a rooted path: no empty, `.` or `..` segments, no trailing `/`."""
    stack: list[bytes] = []
    for segment in path.split(b"/"):
        if not segment or segment == b".":
            continue
        if segment == b"..":
            if stack:
                stack.pop()
            continue
        stack.append(segment)
    return b"/" + b"/".join(stack)


def _needs_full_normalisation(raw: bytes) -> bool:
    return (
        not raw
        or raw[0] in b"./"  # leading "." or "/"
        or raw[-1] == 0x2F  # trailing "/"
        or raw.find(b"/.") >= 0
        or raw.find(b"//") >= 0
        or bool(raw.translate(None, _PATH_SAFE))  # "%" or anything needing escapes
    )


def normalize_method(raw: bytes) -> bytes:
    """The app-facing path for the raw (still percent-encoded) method part.

    Returns bytes that start with `/` and are safe to put in a request line.
    Raises `InvokeError` (daprd answers 500) for forbidden characters.
    """
    if not _needs_full_normalisation(raw):
        return b"/" + raw
    decoded = unquote_to_bytes(raw) if 37 in raw else raw  # 37: "%"
    forbidden = decoded.translate(None, _ALLOWED_AFTER_DECODING)
    if forbidden:
        char = chr(forbidden[0])
        raise InvokeError(f"invalid method: method contains forbidden character: {char!r}")
    cleaned = clean_path(b"/" + decoded)
    if not cleaned.translate(None, _PATH_SAFE):
        return cleaned
    return b"".join(_ENCODE_TABLE[b] for b in cleaned)


def operation_of(method: bytes) -> str:
    """The operation an access control policy matches: the normalised method, decoded.

    `method` already went through `normalize_method`, so decoding cannot bring
    back a `..` or a forbidden byte; it only turns re-encoded bytes into text.
    """
    decoded = unquote_to_bytes(method) if 37 in method else method  # 37: "%"
    return decoded.decode("utf-8", "replace")
