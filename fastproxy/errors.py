"""The errors fastproxy answers with, each carrying its HTTP status and Dapr error code.

Raised anywhere on the request path and translated to a response in one place
(`wire.error_response`), so the mapping to the wire lives in the class itself.
"""

from __future__ import annotations

DIRECT_INVOKE = "ERR_DIRECT_INVOKE"


class ProxyError(Exception):
    """Base: an exchange that ends with a sidecar-generated error response."""

    status = 500
    error_code = DIRECT_INVOKE
    # Whether the client connection must be closed after answering: true when
    # the request framing can no longer be trusted or its body is left unread.
    closes_connection = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoTargetError(ProxyError):
    status = 404


class InvokeError(ProxyError):
    """Anything that stops an invocation: Dapr reports all of them as 500."""


class BadRequestError(ProxyError):
    status = 400
    error_code = "ERR_MALFORMED_REQUEST"
    closes_connection = True


class RequestTimeoutError(ProxyError):
    status = 408
    error_code = "ERR_REQUEST_TIMEOUT"
    closes_connection = True


class BodyTooLargeError(ProxyError):
    status = 413
    error_code = "ERR_BODY_TOO_LARGE"
    closes_connection = True


class HeadersTooLargeError(ProxyError):
    status = 431
    error_code = "ERR_HEADERS_TOO_LARGE"
    closes_connection = True


class ForbiddenError(ProxyError):
    """An access control policy denied the calling app (daprd answers 403)."""

    status = 403


class UnauthorizedError(ProxyError):
    """Bad or missing `dapr-api-token`; daprd answers this one in plain text."""

    status = 401
    error_code = ""


def invoke_failure(app_id: str, reason: str) -> InvokeError:
    """The message shape daprd uses for every failed invocation."""
    return InvokeError(f"failed to invoke, id: {app_id}, err: {reason}")
