"""W3C Trace Context on the request path: parse and validate it, mint ids, sample.

Runs for every request while tracing is on, so it works on the raw header bytes
with C-level bytes operations (`translate`, `count`) instead of regexes, and
allocates only the id slices it returns. No clock; new ids come from `os.urandom`,
drawn in bulk.
"""

from __future__ import annotations

from binascii import hexlify
from collections.abc import Callable
from os import urandom
from typing import Final

TRACEPARENT_LENGTH: Final = 55  # "00-" + 32 + "-" + 16 + "-" + 2
TRACESTATE_MAX_LENGTH: Final = 512  # daprd forwards tracestate only up to this size
TRACESTATE_MAX_MEMBERS: Final = 32

_OWS: Final = b" \t"
_LOWER_HEX: Final = b"0123456789abcdef"
_HEX_AND_DASH: Final = b"0123456789abcdef-"
_INVALID_VERSION: Final = b"ff"
_VERSION_00: Final = b"00"
_DASH: Final = 45  # ord("-")
_ZERO_TRACE_ID: Final = b"0" * 32
_ZERO_SPAN_ID: Final = b"0" * 16
_RATIO_SCALE: Final = 1 << 63  # OpenTelemetry's TraceIDRatioBased bound scale

# tracestate grammar (W3C Trace Context level 1, as OpenTelemetry checks it).
_KEY_CHARS: Final = b"abcdefghijklmnopqrstuvwxyz0123456789_-*/"
_LCALPHA: Final = b"abcdefghijklmnopqrstuvwxyz"
_LCALPHA_DIGIT: Final = b"abcdefghijklmnopqrstuvwxyz0123456789"
_VALUE_CHARS: Final = bytes(c for c in range(0x20, 0x7F) if c not in (0x2C, 0x3D))
_SIMPLE_KEY_MAX: Final = 256
_TENANT_MAX: Final = 241
_SYSTEM_MAX: Final = 14
_VALUE_MAX: Final = 256


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """(trace id, parent span id, sampled) from a `traceparent` value, or None if invalid.

    An invalid value is not an error: the caller starts a new root trace, as
    daprd does. Versions above 00 may carry more fields after a dash; only the
    four known ones are read, per the spec's forward-compatibility rule.
    """
    if value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"):
        value = value.strip(_OWS)
    size = len(value)
    if size < TRACEPARENT_LENGTH:
        return None
    version = value[0:2]
    if version == _INVALID_VERSION:
        return None
    if size > TRACEPARENT_LENGTH:
        if version == _VERSION_00 or value[55] != _DASH:
            return None
        value = value[:TRACEPARENT_LENGTH]
    if value[2] != _DASH or value[35] != _DASH or value[52] != _DASH:
        return None
    # Three dashes at the right places and nothing but lowercase hex elsewhere.
    if value.count(b"-") != 3 or value.translate(None, _HEX_AND_DASH):
        return None
    trace_id = value[3:35]
    span_id = value[36:52]
    if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return None
    return trace_id, span_id, (int(value[53:55], 16) & 1) == 1


def valid_tracestate(value: bytes) -> bool:
    """Whether a `tracestate` value may be forwarded.

    daprd forwards tracestate only up to 512 bytes; beyond that, and for a
    value that is not a list of `key=value` members, it is dropped rather than
    passed on malformed. Empty members (`a=1,,b=2`) are allowed by the spec and
    skipped; a value with no member at all has nothing to forward.
    """
    if not value or len(value) > TRACESTATE_MAX_LENGTH:
        return False
    keys: set[bytes] = set()
    for raw in value.split(b","):
        member = raw.strip(_OWS)
        if not member:
            continue
        key, eq, item = member.partition(b"=")
        if not eq or not _valid_key(key) or not _valid_value(item) or key in keys:
            return False
        keys.add(key)
        if len(keys) > TRACESTATE_MAX_MEMBERS:
            return False
    return len(keys) > 0


def _valid_key(key: bytes) -> bool:
    tenant, at, system = key.partition(b"@")
    if not at:
        return (
            0 < len(key) <= _SIMPLE_KEY_MAX
            and key[:1] in _LCALPHA
            and not key.translate(None, _KEY_CHARS)
        )
    return (
        0 < len(tenant) <= _TENANT_MAX
        and 0 < len(system) <= _SYSTEM_MAX
        and tenant[:1] in _LCALPHA_DIGIT
        and system[:1] in _LCALPHA
        and not tenant.translate(None, _KEY_CHARS)
        and not system.translate(None, _KEY_CHARS)
    )


def _valid_value(item: bytes) -> bool:
    # After the member was stripped of OWS, the value cannot end in a space.
    return 0 < len(item) <= _VALUE_MAX and not item.translate(None, _VALUE_CHARS)


# A `traceparent` header line as the sidecar writes it (version 00), and where its
# ids sit, so they can be read back from the line instead of being kept twice.
_LINE_PREFIX: Final = b"traceparent: 00-"
_UNSAMPLED_END: Final = b"-00\r\n"
_SAMPLED_END: Final = b"01\r\n"
LINE_LENGTH: Final = 70
LINE_TRACE_ID_AT: Final = 16
LINE_SPAN_ID_AT: Final = 49
LINE_FLAGS_AT: Final = 66


def traceparent_line(trace_id: bytes, span_id: bytes, sampled: bool) -> bytes:
    """The `traceparent` header line (with CRLF) that carries a span's context on."""
    return b"traceparent: 00-%b-%b-%b\r\n" % (trace_id, span_id, b"01" if sampled else b"00")


def sampled_line(line: bytes) -> bytes:
    """`line` with its sampled flag set."""
    return line[:LINE_FLAGS_AT] + _SAMPLED_END


def line_trace_id(line: bytes) -> bytes:
    return line[LINE_TRACE_ID_AT : LINE_TRACE_ID_AT + 32]


def line_span_id(line: bytes) -> bytes:
    return line[LINE_SPAN_ID_AT : LINE_SPAN_ID_AT + 16]


# A new span's ids as drawn: the hex of 25 random bytes, whose digit 32 becomes the
# dash between trace id and span id, and whose last digit marks where the line ends.
_DRAWN_SIZE: Final = 50
_DRAWN_DASH_AT: Final = 32
_DRAWN_END_AT: Final = 49
_END_MARK: Final = b"\n"  # never a hex digit


class IdSource:
    """Whole `traceparent` lines of new root spans, and new span ids, drawn in bulk.

    Per `batch` lines: one `os.urandom`, one hex conversion, two column copies
    (the dash, an end mark) and one `replace` of the end marks by the text
    between two lines. A request's line is then one slice of a buffer; drawing,
    converting and formatting per request costs several times more. A draw
    holding sixteen zero digits in a row anywhere is drawn again, so no id can
    be all zeros (a one in 10^14 event).
    """

    __slots__ = ("_batch", "_buffer", "_dashes", "_draw", "_end", "_end_marks", "_next")

    def __init__(self, batch: int = 1024, draw: Callable[[int], bytes] = urandom) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._batch = batch
        self._draw = draw  # n random bytes
        self._dashes = b"-" * batch
        self._end_marks = _END_MARK * batch
        self._buffer = b""
        self._next = 0
        self._end = 0

    def _refill(self) -> None:
        size = _DRAWN_SIZE // 2 * self._batch
        digits = hexlify(self._draw(size))
        while _ZERO_SPAN_ID in digits:
            digits = hexlify(self._draw(size))
        drawn = bytearray(digits)
        drawn[_DRAWN_DASH_AT::_DRAWN_SIZE] = self._dashes
        drawn[_DRAWN_END_AT::_DRAWN_SIZE] = self._end_marks
        # The last end mark leaves a spare prefix after the last line: never sliced.
        self._buffer = _LINE_PREFIX + bytes(drawn).replace(_END_MARK, _UNSAMPLED_END + _LINE_PREFIX)
        self._next = 0
        self._end = LINE_LENGTH * self._batch

    def new_root_line(self) -> bytes:
        """The `traceparent` line of a new root span, not sampled (see `sampled_line`)."""
        at = self._next
        if at == self._end:
            self._refill()
            at = 0
        self._next = at + LINE_LENGTH
        return self._buffer[at : at + LINE_LENGTH]

    def new_span(self) -> bytes:
        """A span id: 16 hex digits (the span id of a fresh line)."""
        return line_span_id(self.new_root_line())


class Sampler:
    """ParentBased(TraceIDRatioBased(rate)), decided the way OpenTelemetry Go decides.

    Matching the Go SDK bit for bit keeps a trace whole when fastproxy and
    daprd sidecars share it: for the same root trace id and rate, both sample
    or both do not. A parent's decision always wins over the rate.
    """

    __slots__ = ("_bound", "rate")

    def __init__(self, rate: float) -> None:
        if not rate > 0.0:  # also NaN
            rate = 0.0
        elif rate > 1.0:
            rate = 1.0
        self.rate: float = rate
        self._bound: int = int(rate * _RATIO_SCALE)

    def sampled(self, trace_id: bytes, parent_sampled: bool | None) -> bool:
        """`parent_sampled` is None for a new root trace."""
        if parent_sampled is not None:
            return parent_sampled
        bound = self._bound
        if bound in (0, _RATIO_SCALE):  # rate 0 or 1: no need to read the id
            return bound != 0
        return (int(trace_id[16:32], 16) >> 1) < bound

    def sampled_root(self, line: bytes) -> bool:
        """The decision for a new root span whose `traceparent` line is `line`."""
        bound = self._bound
        if bound in (0, _RATIO_SCALE):  # rate 0 or 1: the id is not even sliced out
            return bound != 0
        return self.sampled(line_trace_id(line), None)

    def __repr__(self) -> str:
        return f"Sampler(rate={self.rate!r})"
