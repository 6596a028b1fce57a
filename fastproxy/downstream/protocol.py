"""An accepted client connection: parses requests with httptools and answers them in order.

The protocol object is its own parser callback target. It owns bytes,
limits, keep-alive and pipelining order; each request becomes an exchange
(`exchange.Exchange` or `LocalReply`) that owns that one request. Only the
head of the queue produces a response; later pipelined requests wait, with
reading paused, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import deque
from typing import TYPE_CHECKING, Final, cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)

from fastproxy.downstream.flow import ReadGate
from fastproxy.downstream.headers import (
    API_TOKEN,
    APP_ID,
    AUTHORIZATION,
    CONNECTION,
    CONTENT_LENGTH,
    DISGUISABLE,
    DROP,
    EXACT_HEADERS,
    EXACT_HEADERS_DELIVERED,
    EXPECT,
    HOST,
    PLAIN,
    SPECIAL_HEADERS,
    SPECIAL_HEADERS_DELIVERED,
    TRACEPARENT,
    TRANSFER_ENCODING,
    UNNAMEABLE,
    traced,
    without_tokens,
)
from fastproxy.downstream.reply import LocalReply, RequestHandler
from fastproxy.errors import (
    BadRequestError,
    BodyTooLargeError,
    ForbiddenError,
    HeadersTooLargeError,
    ProxyError,
    RequestTimeoutError,
    UnauthorizedError,
)
from fastproxy.methodpath import operation_of
from fastproxy.observability.observation import Observation
from fastproxy.policy.acl import AccessControl, denial_message
from fastproxy.routing import (
    INVOKE_PREFIX,
    Invocation,
    Router,
    TargetKind,
    basic_auth_app_id,
    local_route,
    token_exempt,
)
from fastproxy.security.identity import SpiffeId, caller_lines
from fastproxy.security.tls import peer_identity
from fastproxy.wire import COLON_SP, CRLF, body_size, error_response

if TYPE_CHECKING:
    from fastproxy.context import SidecarContext
    from fastproxy.forwarder import Forwarder
    from fastproxy.observability.observer import Observer

# Why reading from the client is paused (ReadGate reasons).
PIPELINED: Final = 1
UPSTREAM_BUSY: Final = 2
BROKEN: Final = 4

# Client response data buffered before the upstream side is paused.
WRITE_HIGH_WATER: Final = 64 * 1024
# Head bytes tolerated past the read buffer size (one socket read's worth).
HEAD_SLACK: Final = 256 * 1024
# Chunk-size and extension bytes tolerated beyond 64 per chunk.
CHUNK_FRAMING_SLACK: Final = 256 * 1024
# How long a refused client may keep sending before its connection is cut.
LINGER_SECONDS: Final = 2.0
# The status a request is recorded with (metrics, access log, span) when its connection
# was lost before any of its answer was sent: nginx's "client closed request".
CONNECTION_LOST_STATUS: Final = 499


class DownstreamProtocol:
    """One client connection: parses its requests, routes them, relays their answers.

    The event loop calls it as an `asyncio.Protocol` (every callback is defined
    here) but it does not derive from one: compiled, a class with a Python base
    gets no always-set fields, and every field read would pay a check.
    """

    __slots__ = (
        "_acl",
        "_active",
        "_api_token",
        "_app_id_header",
        "_authorization",
        "_body_size",
        "_caller",
        "_chunk_framing",
        "_chunked",
        "_chunks",
        "_client_address",
        "_clock",
        "_closing",
        "_connection_tokens",
        "_content_length",
        "_ctx",
        "_current",
        "_delivered",
        "_dirty",
        "_exact_kinds",
        "_expect_continue",
        "_forwarder",
        "_gate",
        "_head_read",
        "_head_size",
        "_head_started",
        "_headers",
        "_host_count",
        "_ignore_input",
        "_in_head",
        "_last_activity",
        "_lingering",
        "_max_body",
        "_max_head",
        "_max_header_items",
        "_obs",
        "_observer",
        "_parser",
        "_pending",
        "_router",
        "_spare_obs",
        "_special_kinds",
        "_token",
        "_traceparent",
        "_tracestate",
        "_url",
        "_write_buffered",
        "_write_paused_since",
        "transport",
    )

    def __init__(self, ctx: SidecarContext, delivered: bool = False) -> None:
        self._ctx = ctx
        # On the internal listener, calls other sidecars deliver for our app:
        # no API token there, caller headers kept, only our own app served, and
        # the access control policy decides (see connection_made).
        self._delivered: bytes | None = ctx.forwarder.delivered_extra if delivered else None
        self._exact_kinds = EXACT_HEADERS_DELIVERED if delivered else EXACT_HEADERS
        self._special_kinds = SPECIAL_HEADERS_DELIVERED if delivered else SPECIAL_HEADERS
        self._token = None if delivered else ctx.api_token
        self._acl = ctx.access_control if delivered else None
        # Observability is decided once per connection: None when all of it is off.
        self._observer: Observer | None = ctx.observer
        self._obs: Observation | None = None
        # The last finished request's observation, reused by the next one.
        self._spare_obs: Observation | None = None
        self._traceparent: bytes | None = None
        self._tracestate: bytes | None = None
        self._client_address = ""
        if self._observer is not None and self._observer.tracing:
            self._exact_kinds = traced(self._exact_kinds)
            self._special_kinds = traced(self._special_kinds)
        self._caller: SpiffeId | None = None
        self._max_head = ctx.config.read_buffer_size
        self._max_body = ctx.config.max_body_size
        # The header list holds 4 items per forwarded field after its first slot.
        self._max_header_items = 4 * ctx.max_header_count + 1
        self._clock = ctx.clock
        # Held here, typed: compiled, calls on them skip two look-ups by name.
        self._forwarder: Forwarder = ctx.forwarder
        self._router: Router = ctx.router
        self.transport: asyncio.Transport | None = None
        self._gate: ReadGate | None = None
        self._active: RequestHandler | None = None
        self._current: RequestHandler | None = None
        self._pending: deque[RequestHandler] = deque()
        self._closing = False
        self._ignore_input = False
        self._in_head = False
        self._head_started = ctx.clock.now
        self._body_size = 0
        self._head_read = 0
        self._lingering = False
        self._chunked = False
        self._chunk_framing = 0
        self._chunks = 0
        self._write_buffered = 0
        self._last_activity = ctx.clock.now
        self._write_paused_since: float | None = None
        # The per-request fields are set here as `_reset_request` sets them, and the
        # parser (which is handed `self`) is made last: compiled, a field set in
        # __init__ before `self` reaches any call is known to be always set, and the
        # request path reads it with no check for a missing value.
        self._url = b""
        self._headers: list[bytes] = [b""]
        self._head_size = 0
        self._host_count = 0
        self._content_length: bytes | None = None
        self._dirty = False
        self._connection_tokens: list[bytes] | None = None
        self._expect_continue = False
        self._app_id_header: bytes | None = None
        self._api_token: bytes | None = None
        self._authorization: bytes | None = None
        self._parser = HttpRequestParser(self)

    def __repr__(self) -> str:
        return (
            f"<DownstreamProtocol active={self._active!r} pending={len(self._pending)}"
            f" closing={self._closing}>"
        )

    def _reset_request(self) -> None:
        self._url = b""
        # Index 0 is kept free for the request line the forwarder writes.
        self._headers = [b""]
        self._head_size = 0
        self._host_count = 0
        self._content_length = None
        # The rare fields below are only reset when a request set one of them.
        self._dirty = False
        self._connection_tokens = None
        self._expect_continue = False
        self._app_id_header = None
        self._api_token = None
        self._authorization = None

    # -- asyncio protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        self._gate = ReadGate(transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        ctx = self._ctx
        if self._observer is not None and self._observer.logs_access:
            self._client_address = _address_text(transport.get_extra_info("peername"))
        if self._delivered is not None and ctx.mtls is not None:
            # The handshake verified the calling sidecar: its certificate names the
            # caller, for the access control policy and for the app (client copies
            # of the caller headers are dropped, as on the public port).
            self._caller = peer_identity(transport.get_extra_info("ssl_object"))
            if self._caller is not None:
                self._exact_kinds = EXACT_HEADERS
                self._special_kinds = SPECIAL_HEADERS
                if self._observer is not None and self._observer.tracing:
                    self._exact_kinds = traced(EXACT_HEADERS)
                    self._special_kinds = traced(SPECIAL_HEADERS)
                self._delivered = caller_lines(self._caller) + ctx.forwarder.delivered_extra
        ctx.connections.add(self)
        if len(ctx.connections) > ctx.config.max_connections or ctx.draining:
            ctx.connections.discard(self)
            self._closing = True
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._ctx.connections.discard(self)
        self._closing = True
        active = self._active
        self._active = None
        if active is not None:
            if not active.response_done:
                active.cancel()
            self._record_lost(active)
        current = self._current
        if current is not None and current is not active and not current.request_done:
            current.cancel()
        for waiting in self._pending:
            self._record_lost(waiting)
        self._pending.clear()

    def _record_lost(self, exchange: RequestHandler) -> None:
        """A request whose connection ended before it finished still counts, once.

        An exchange holds its observation until `response_finished` records it; here
        the request is recorded with the status its answer had, or
        CONNECTION_LOST_STATUS when none of the answer was sent.
        """
        obs = exchange.obs
        if obs is None or self._observer is None:
            return
        exchange.obs = None
        if not exchange.response_started:
            obs.status = CONNECTION_LOST_STATUS
            obs.unanswered()
        self._observer.finish(obs)

    def data_received(self, data: bytes) -> None:
        if self._ignore_input:
            return
        if self._in_head:
            # httptools buffers an unfinished header whole; a read that is all
            # head counts against the head limit (one read's slack at most).
            self._head_read += len(data)
            if self._head_read > self._max_head + HEAD_SLACK:
                self._reject(
                    HeadersTooLargeError(
                        f"request head exceeds the read buffer size of {self._max_head} bytes"
                    )
                )
                return
        elif self._chunked:
            # Chunk sizes and extensions are framing; count them to bound them.
            self._chunk_framing += len(data)
        try:
            self._parser.feed_data(data)
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProxyError):
                self._reject(cause)
            else:
                raise
        except HttpParserUpgrade:
            # CONNECT, or an Upgrade we do not tunnel: the request was answered
            # as a plain one (Upgrade stripped); nothing after it is read.
            self._stop_reading()
        except HttpParserError as exc:
            self._reject(BadRequestError(f"malformed HTTP request: {exc}"))

    def eof_received(self) -> bool | None:
        # A half-closed client may still be owed the responses to requests it
        # finished sending; a request cut off mid-head or mid-body can never
        # complete, so the connection closes and its exchange is cancelled.
        current = self._current
        if (
            self._lingering
            or self._in_head
            or self._active is None
            or (current is not None and not current.request_done)
        ):
            return None
        self._ignore_input = True
        self._closing = True
        return True

    def pause_writing(self) -> None:
        # Exact time, not the tick's: pauses are rare and the timeout may be short.
        self._write_paused_since = time.monotonic()
        self._write_buffered = self.transport.get_write_buffer_size() if self.transport else 0
        if self._active is not None:
            self._active.set_client_paused(True)

    def resume_writing(self) -> None:
        self._write_paused_since = None
        if self._active is not None:
            self._active.set_client_paused(False)

    # -- httptools callbacks -----------------------------------------------

    def on_url(self, url: bytes) -> None:
        if not self._in_head:
            # The first callback of every request: its head deadline starts.
            # (Per-request state was reset when the previous head completed.)
            self._in_head = True
            self._head_started = self._clock.now
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head:
            raise HeadersTooLargeError(
                f"request line and headers exceed the read buffer size of {self._max_head} bytes"
            )
        if not self._in_head:
            return  # a chunked body's trailer: not forwarded, and never the next head's
        kind = self._exact_kinds.get(name)
        if kind is None:
            lname = name.lower()
            kind = self._special_kinds.get(lname)
            if kind is None:
                if 95 in lname and lname in DISGUISABLE:  # 95: "_"
                    raise BadRequestError(f"header name {name.decode('latin-1')!r} is not accepted")
                kind = PLAIN
        if kind == PLAIN:
            self._headers.extend((name, COLON_SP, value, CRLF))
        elif kind == HOST:
            self._host_count += 1
        elif kind == CONTENT_LENGTH:
            # Forwarded as sent: llhttp has checked it is one valid length.
            self._content_length = value
            self._headers.extend((name, COLON_SP, value, CRLF))
        elif kind == TRANSFER_ENCODING:
            self._chunked = True
        elif kind == DROP:
            return
        elif kind >= TRACEPARENT:
            self._note_trace_context(kind, value)
        else:
            self._dirty = True
            self._note_special(kind, name, value)

    def _note_trace_context(self, kind: int, value: bytes) -> None:
        if kind == TRACEPARENT:
            # A repeated traceparent is invalid: the request starts a new trace.
            self._traceparent = value if self._traceparent is None else b""
        elif self._tracestate is None:
            self._tracestate = value
        else:
            self._tracestate += b"," + value  # list fields combine, in order

    def _note_special(self, kind: int, name: bytes, value: bytes) -> None:
        if kind == CONNECTION:
            lowered = value.lower()
            if lowered not in {b"keep-alive", b"close"}:
                self._note_connection_tokens(value)
        elif kind == APP_ID:
            self._app_id_header = value
        elif kind == API_TOKEN:
            self._api_token = value
        elif kind == EXPECT:
            self._expect_continue = value.lower() == b"100-continue"
        elif kind == AUTHORIZATION:
            if value[:6].lower() == b"basic ":
                self._authorization = value
            self._headers.extend((name, COLON_SP, value, CRLF))

    def _note_connection_tokens(self, value: bytes) -> None:
        for item in value.split(b","):
            token = item.strip().lower()
            if token and token not in (b"close", b"keep-alive", b"upgrade"):
                if token in UNNAMEABLE or token.startswith((b"x-forwarded", b"dapr-")):
                    raise BadRequestError(
                        f"Connection header may not name {token.decode('latin-1')!r}"
                    )
                if self._connection_tokens is None:
                    self._connection_tokens = []
                self._connection_tokens.append(token)

    def on_headers_complete(self) -> None:
        parser = self._parser
        try:
            exchange = self._open_exchange(parser)
            exchange.obs = self._obs
        except ProxyError as error:
            self._ctx.record_error_code(error.error_code)
            # A body the client was told to hold back may never come: close after.
            keep_alive = (
                parser.should_keep_alive()
                and not error.closes_connection
                and not self._awaits_continue()
            )
            obs = self._obs
            exchange = LocalReply(
                self,
                error_response(
                    self._ctx.clock,
                    error,
                    keep_alive,
                    head_only=parser.get_method() == b"HEAD",
                    extra_headers=b"" if obs is None else obs.error_head(error.status),
                ),
                keep_alive,
                self._max_body,
            )
            exchange.obs = obs
        # The head is consumed: make the parse state ready for the next one.
        # (_chunked and _body_size still frame this request's body.)
        self._in_head = False
        self._url = b""
        self._headers = [b""]
        self._head_size = 0
        self._head_read = 0
        self._host_count = 0
        self._content_length = None
        if self._dirty:
            self._reset_request()
        if self._observer is not None:
            self._obs = self._traceparent = self._tracestate = None
        self._last_activity = self._clock.now
        self._current = exchange
        if self._active is None:
            self._active = exchange
            exchange.start()
        else:
            self._enqueue(exchange)

    def on_chunk_header(self) -> None:
        self._chunks += 1
        if self._chunk_framing - self._body_size > CHUNK_FRAMING_SLACK + 64 * self._chunks:
            raise BadRequestError("chunk extensions are longer than this sidecar accepts")

    def on_body(self, body: bytes) -> None:
        self._last_activity = self._clock.now
        if self._chunked:
            # A chunked body's size is only known as it arrives.
            self._body_size += len(body)
            if self._body_size > self._max_body:
                raise BodyTooLargeError(
                    f"request body exceeds --max-body-size of {self._max_body} bytes"
                )
        current = self._current
        if current is not None:
            current.on_body(body)
            obs = current.obs
            if obs is not None:
                obs.bytes_in += len(body)

    def on_message_complete(self) -> None:
        if self._chunked:
            self._chunked = False
            self._body_size = 0
            self._chunk_framing = 0
            self._chunks = 0
            self._head_size = 0  # trailer bytes were counted
        current = self._current
        if current is None:
            return
        current.request_done = True
        current.on_request_complete()
        self.response_finished(current)

    # -- building the exchange ---------------------------------------------

    def _open_exchange(self, parser: HttpRequestParser) -> RequestHandler:
        ctx = self._ctx
        dirty = self._dirty
        if len(self._headers) > self._max_header_items:
            raise HeadersTooLargeError(
                f"a request may carry at most {ctx.max_header_count} header fields"
            )
        if self._head_size + len(self._url) > self._max_head:
            raise HeadersTooLargeError(
                f"request line and headers exceed the read buffer size of {self._max_head} bytes"
            )
        keep_alive: bool = parser.should_keep_alive()
        if keep_alive and not dirty:
            # llhttp keeps alive by default only for HTTP/1.1; a 1.0 request
            # needs a Connection header, which marks the request dirty.
            http10 = False
        else:
            version = parser.get_http_version()
            if version not in ("1.1", "1.0"):
                raise BadRequestError(f"unsupported HTTP version {version}")
            http10 = version == "1.0"
            if self._chunked and http10:
                raise BadRequestError("Transfer-Encoding is not allowed in HTTP/1.0")
        if self._host_count != 1 and (self._host_count > 1 or not http10):
            raise BadRequestError("a request must carry exactly one Host header")
        method: bytes = parser.get_method()
        if method == b"CONNECT":
            raise BadRequestError("CONNECT is not supported: fastproxy does not tunnel")
        url = self._url
        if url[0] != 47:  # not "/": absolute-form, asterisk-form or authority-form
            url = _origin_form(url)
        if 35 in url:  # "#": an int test, much cheaper than a bytes substring test
            url = url[: url.index(b"#")]
        if 63 in url:  # "?"
            cut = url.index(b"?")
            path, query = url[:cut], url[cut:]
        else:
            path, query = url, b""
        content_length = self._content_length
        if content_length is not None and int(content_length) > self._max_body:
            raise BodyTooLargeError(
                f"request body of {int(content_length)} bytes exceeds --max-body-size"
                f" of {self._max_body} bytes"
            )
        obs: Observation | None = None
        observer = self._observer
        if observer is not None:
            obs = observer.begin(
                method,
                path,
                self._traceparent,
                self._tracestate,
                self._delivered is not None,
                self._spare_obs,
            )
            self._spare_obs = None
            self._obs = obs
            obs.client = self._client_address
            if self._delivered is not None:
                caller = self._caller
                obs.caller = caller.app_id if caller is not None else _caller_header(self._headers)
        if self._token is not None:
            self._check_token(self._token, method, path)
        if not dirty:
            # A path routed before is an invoke path: no local route to look for.
            invocation = self._router.cached(path)
            if invocation is not None:
                if self._acl is not None:
                    self._check_access(self._acl, invocation, method)
                if obs is not None:
                    obs.aim(
                        invocation.target,
                        invocation.method,
                        invocation.kind is TargetKind.APP and not invocation.is_self,
                    )
                return self._forwarder.open(
                    self,
                    invocation,
                    method,
                    query,
                    self._headers,
                    self._chunked,
                    keep_alive and not self._closing,
                    http10,
                    False,
                    self._delivered,
                    b"" if obs is None else obs.app_lines,
                )
        if not path.startswith(INVOKE_PREFIX):
            local = local_route(method, path)
            if local is not None:
                return ctx.local_reply(
                    self,
                    local,
                    path,
                    query,
                    keep_alive and not self._closing,
                    dirty and not http10 and self._awaits_continue(),
                    b"" if obs is None else obs.response_lines,
                    b"" if obs is None else obs.timing_line(),
                )
        headers = self._headers
        expect_continue = False
        if dirty:
            app_id = self._app_id_header
            if app_id is not None and not app_id.strip():
                app_id = None  # an empty header does not route, as in daprd
            if app_id is None and self._authorization is not None:
                app_id = basic_auth_app_id(self._authorization)
            if app_id is not None:
                invocation = self._router.route_header(app_id, path)
            else:
                invocation = self._router.route_path(path)
            if self._connection_tokens is not None:
                headers = without_tokens(headers, self._connection_tokens)
            expect_continue = not http10 and self._awaits_continue()
        else:
            invocation = self._router.route_path(path)
        if self._acl is not None:
            self._check_access(self._acl, invocation, method)
        if obs is not None:
            obs.aim(
                invocation.target,
                invocation.method,
                invocation.kind is TargetKind.APP and not invocation.is_self,
            )
        return self._forwarder.open(
            self,
            invocation,
            method,
            query,
            headers,
            self._chunked,
            keep_alive and not self._closing,
            http10,
            expect_continue,
            self._delivered,
            b"" if obs is None else obs.app_lines,
        )

    def _check_access(self, acl: AccessControl, invocation: Invocation, method: bytes) -> None:
        """The callee's decision on a delivered call, before anything reaches the app."""
        operation = operation_of(invocation.method)
        verb = method.decode("latin-1")
        if not acl.allows(self._caller, verb, operation):
            obs = self._obs
            # The verified caller, or (without mTLS) the one its sidecar named.
            caller = self._caller
            self._ctx.record_denial(
                caller.app_id if caller is not None else "" if obs is None else obs.caller
            )
            raise ForbiddenError(
                f"failed to invoke, id: {invocation.target}, err: rpc error: code ="
                # daprd names the method as the caller wrote it: no leading "/".
                f" PermissionDenied desc = {denial_message(self._caller, operation[1:], verb)}"
            )

    def _awaits_continue(self) -> bool:
        """The client sent `Expect: 100-continue` and holds a body back."""
        length = self._content_length
        return self._expect_continue and (self._chunked or (length is not None and length != b"0"))

    def _check_token(self, expected: bytes, method: bytes, path: bytes) -> None:
        if token_exempt(method, path):
            return
        given = self._api_token
        if given is None or not hmac.compare_digest(given, expected):
            raise UnauthorizedError("invalid api token")

    # -- ordering ----------------------------------------------------------

    def _enqueue(self, exchange: RequestHandler) -> None:
        self._current = exchange
        if self._active is None:
            self._active = exchange
            exchange.start()
        else:
            self._pending.append(exchange)
            assert self._gate is not None
            self._gate.pause(PIPELINED)

    def is_active(self, exchange: RequestHandler) -> bool:
        return self._active is exchange

    def response_finished(self, exchange: RequestHandler) -> None:
        """An exchange finished its response or its request; once both, the next goes."""
        if exchange is not self._active or not (exchange.request_done and exchange.response_done):
            return
        self._active = None
        obs = exchange.obs
        if obs is not None and self._observer is not None:
            self._observer.finish(obs)
            # Nothing else reads it past here (the upstream connection's reference is
            # replaced before it is used again): the connection's next request reuses it.
            exchange.obs = None
            self._spare_obs = obs
        pending = self._pending
        if not exchange.keep_alive or (not pending and (self._closing or self._ctx.draining)):
            # (A refusal queued behind this exchange is still sent before closing.)
            self.close()
            return
        if not pending:
            self._current = None
            self._last_activity = self._clock.now
            return
        nxt = pending.popleft()
        if not pending:
            assert self._gate is not None
            self._gate.resume(PIPELINED)
        self._active = nxt
        nxt.start()
        self.response_finished(nxt)

    def closing_after_response(self) -> bool:
        return self._closing or self._ctx.draining

    # -- replies and errors --------------------------------------------------

    def reply_error(self, exchange: RequestHandler, error: ProxyError) -> None:
        """An exchange failed before its response started: answer for it."""
        self._ctx.record_error_code(error.error_code)
        keep_alive = exchange.keep_alive and exchange.request_done and not error.closes_connection
        exchange.keep_alive = keep_alive
        obs = exchange.obs
        data = error_response(
            self._ctx.clock,
            error,
            keep_alive and not self._closing,
            head_only=exchange.is_head,
            extra_headers=b"" if obs is None else obs.error_head(error.status),
        )
        if obs is not None:
            obs.bytes_out = body_size(data)
        self.write(data)
        exchange.response_done = True
        self.response_finished(exchange)
        if not keep_alive and not exchange.request_done:
            self.close()

    def _reject(self, error: ProxyError) -> None:
        """The byte stream can no longer be trusted: answer once, in order, then close."""
        self._ctx.record_error_code(error.error_code)
        self._stop_reading()
        current = self._current
        # A request refused mid-body is recorded with the refusal: its observation
        # moves to the answer that replaces it.
        obs: Observation | None = None
        if current is not None and not current.request_done:
            current.cancel()
            if current is self._active:
                self._active = None
                if current.response_started:
                    self._record_lost(current)
                    self.abort()
                    return
            else:
                self._pending.pop()
            obs = current.obs
            current.obs = None
            if obs is not None:
                obs.unanswered()
        data = error_response(
            self._ctx.clock,
            error,
            False,
            extra_headers=b"" if obs is None else obs.error_head(error.status),
        )
        observer = self._observer
        if self._in_head and observer is not None and observer.logs_access:
            # Refused before its head was whole: no route, no metrics, but a log line.
            observer.rejected(error.status, body_size(data), self._client_address)
        reply = LocalReply(self, data, False, 0)
        reply.request_done = True
        reply.obs = obs
        self._enqueue(reply)

    def _stop_reading(self) -> None:
        self._ignore_input = True
        self._closing = True
        if self._gate is not None:
            self._gate.pause(BROKEN)

    def pause_for_upstream(self, paused: bool) -> None:
        gate = self._gate
        if gate is None:
            return
        if paused:
            gate.pause(UPSTREAM_BUSY)
        else:
            gate.resume(UPSTREAM_BUSY)

    # -- transport helpers -------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def linger_close(self) -> None:
        """Close after a final answer while the client may still be sending.

        Closing a socket with unread input makes the kernel reset the
        connection, which can destroy the answer before the client reads it.
        So: finish writing, half-close, read and drop input for a moment, close.
        """
        transport = self.transport
        self._closing = True
        self._ignore_input = True
        if self._lingering or transport is None or transport.is_closing():
            return
        self._lingering = True
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._gate is not None:
            self._gate.resume_all()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.abort)

    # -- timeouts (driven by the once-a-second tick) -------------------------

    def check_timeouts(self, now: float) -> None:
        ctx = self._ctx
        config = ctx.config
        if self._write_paused_since is not None:
            buffered = self.transport.get_write_buffer_size() if self.transport else 0
            if buffered < self._write_buffered:
                # The client is reading, only slowly: that is not a stall.
                self._write_paused_since = now
            self._write_buffered = buffered
            if now - self._write_paused_since > config.write_timeout:
                self.abort()
            return
        idle_for = now - self._last_activity
        if self._in_head:
            if now - self._head_started > config.header_timeout:
                self._reject(RequestTimeoutError("timed out reading the request head"))
                self.close()
            return
        current = self._current
        if current is not None and not current.request_done:
            if idle_for > config.body_timeout:
                self._reject(RequestTimeoutError("timed out reading the request body"))
            return
        if self._active is None and idle_for > config.keep_alive_timeout:
            self.close()

    def drain(self) -> None:
        """Shutdown: close now if idle, else after the response in flight."""
        if self._active is None and not self._in_head:
            self.close()
            return
        for exchange in (self._active, *self._pending):
            if exchange is not None and not exchange.response_started:
                exchange.keep_alive = False


def _address_text(peername: object) -> str:
    """`host:port` of a socket peer (`[host]:port` for IPv6); "" when unknown."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = str(peername[0]), peername[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ""


def _caller_header(headers: list[bytes]) -> str:
    """The calling app a sidecar named in `dapr-caller-app-id` (without mTLS, its word)."""
    for i in range(1, len(headers) - 2, 4):
        if headers[i].lower() == b"dapr-caller-app-id":
            return headers[i + 2].decode("latin-1")
    return ""


def _origin_form(url: bytes) -> bytes:
    """The path of an absolute-form target; anything else is not a request we serve."""
    for scheme in (b"http://", b"https://"):
        if url[: len(scheme)].lower() == scheme:
            slash = url.find(b"/", len(scheme))
            return url[slash:] if slash >= 0 else b"/"
    raise BadRequestError("request target must be a path")
