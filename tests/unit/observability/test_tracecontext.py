"""W3C trace context: traceparent parsing, tracestate checks, id minting, sampling."""

from __future__ import annotations

import math
import re

import pytest

from fastproxy.observability.tracecontext import (
    IdSource,
    Sampler,
    line_span_id,
    line_trace_id,
    parse_traceparent,
    sampled_line,
    traceparent_line,
    valid_tracestate,
)

TRACE_ID = b"4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = b"00f067aa0ba902b7"
VALID = b"00-" + TRACE_ID + b"-" + SPAN_ID + b"-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(VALID, (TRACE_ID, SPAN_ID, True), id="sampled"),
        pytest.param(VALID[:-2] + b"00", (TRACE_ID, SPAN_ID, False), id="not-sampled"),
        pytest.param(VALID[:-2] + b"03", (TRACE_ID, SPAN_ID, True), id="flags-odd-other-bits"),
        pytest.param(VALID[:-2] + b"02", (TRACE_ID, SPAN_ID, False), id="flags-even-other-bits"),
        pytest.param(VALID[:-2] + b"ff", (TRACE_ID, SPAN_ID, True), id="flags-ff"),
        pytest.param(b"  " + VALID + b"\t ", (TRACE_ID, SPAN_ID, True), id="ows-around"),
        pytest.param(b"\t" + VALID, (TRACE_ID, SPAN_ID, True), id="leading-tab"),
        pytest.param(b"01" + VALID[2:], (TRACE_ID, SPAN_ID, True), id="future-version-exact"),
        pytest.param(
            b"cc" + VALID[2:] + b"-what-the-future-holds",
            (TRACE_ID, SPAN_ID, True),
            id="future-version-extra-field",
        ),
        pytest.param(b"fe" + VALID[2:] + b"-", (TRACE_ID, SPAN_ID, True), id="version-fe-dash"),
        pytest.param(b"ff" + VALID[2:], None, id="version-ff"),
        pytest.param(VALID + b"-extra", None, id="version-00-extra-field"),
        pytest.param(VALID + b"0", None, id="version-00-too-long"),
        pytest.param(b"01" + VALID[2:] + b"0", None, id="future-version-no-dash-after-flags"),
        pytest.param(VALID[:-1], None, id="too-short"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"   ", None, id="blank"),
        pytest.param(VALID.upper(), None, id="uppercase-hex"),
        pytest.param(b"00-" + TRACE_ID.upper() + b"-" + SPAN_ID + b"-01", None, id="upper-trace"),
        pytest.param(b"00-" + TRACE_ID + b"-" + SPAN_ID.upper() + b"-01", None, id="upper-span"),
        pytest.param(VALID[:-2] + b"0A", None, id="upper-flags"),
        pytest.param(b"0A" + VALID[2:], None, id="upper-version"),
        pytest.param(b"00-" + b"0" * 32 + b"-" + SPAN_ID + b"-01", None, id="zero-trace-id"),
        pytest.param(b"00-" + TRACE_ID + b"-" + b"0" * 16 + b"-01", None, id="zero-span-id"),
        pytest.param(b"00-" + TRACE_ID[:-1] + b"-" + SPAN_ID + b"-012", None, id="short-trace"),
        pytest.param(b"00-" + TRACE_ID + b"-" + SPAN_ID[:-1] + b"-012", None, id="short-span"),
        pytest.param(b"00-" + TRACE_ID + b"-" + SPAN_ID + b"-1", None, id="short-flags"),
        pytest.param(b"00_" + TRACE_ID + b"-" + SPAN_ID + b"-01", None, id="wrong-separator"),
        pytest.param(b"00-" + TRACE_ID[:-1] + b"g-" + SPAN_ID + b"-01", None, id="non-hex"),
        pytest.param(b"00-" + TRACE_ID[:-1] + b"--" + SPAN_ID + b"-01", None, id="extra-dash"),
        pytest.param(
            b"00-" + TRACE_ID[:10] + b"-" + TRACE_ID[11:] + b"-" + SPAN_ID + b"-01",
            None,
            id="dash-inside-trace-id",
        ),
        pytest.param(b"0x-" + TRACE_ID + b"-" + SPAN_ID + b"-01", None, id="non-hex-version"),
        pytest.param(VALID.replace(b"-", b" "), None, id="spaces-for-dashes"),
    ],
)
def test_parse_traceparent(value: bytes, expected: tuple[bytes, bytes, bool] | None) -> None:
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        pytest.param(b"congo=t61rcWkgMzE", True, id="one-member"),
        pytest.param(b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", True, id="two-members"),
        pytest.param(b"rojo=1 , \tcongo=2", True, id="ows-between"),
        pytest.param(b"a=1,,b=2", True, id="empty-member-skipped"),
        pytest.param(b"tenant@vendor=v", True, id="multi-tenant-key"),
        pytest.param(b"1tenant@vendor=v", True, id="tenant-starts-with-digit"),
        pytest.param(b"a_b-c*d/e=x", True, id="key-punctuation"),
        pytest.param(b"k=a b", True, id="value-inner-space"),
        pytest.param(b"k=!~:;\"'", True, id="value-punctuation"),
        pytest.param(",".join(f"k{i}=v" for i in range(32)).encode(), True, id="32-members"),
        pytest.param(b"k=" + b"v" * 256, True, id="value-256"),
        pytest.param(b"k" * 256 + b"=v", True, id="key-256"),
        pytest.param(",".join(f"k{i}=v" for i in range(33)).encode(), False, id="33-members"),
        pytest.param(b"", False, id="empty"),
        pytest.param(b" , ", False, id="only-empty-members"),
        pytest.param(b"Congo=t61", False, id="uppercase-key"),
        pytest.param(b"1congo=t61", False, id="simple-key-starts-with-digit"),
        pytest.param(b"=v", False, id="empty-key"),
        pytest.param(b"k=", False, id="empty-value"),
        pytest.param(b"k", False, id="no-equals"),
        pytest.param(b"k=a=b", False, id="equals-in-value"),
        pytest.param(b"k=a\x7f", False, id="value-del"),
        pytest.param(b"k=\xc3\xa9", False, id="value-non-ascii"),
        pytest.param(b"k=a\tb", False, id="value-tab"),
        pytest.param(b"k.x=v", False, id="key-dot"),
        pytest.param(b"a@b@c=v", False, id="two-at"),
        pytest.param(b"@vendor=v", False, id="empty-tenant"),
        pytest.param(b"tenant@=v", False, id="empty-system"),
        pytest.param(b"tenant@1vendor=v", False, id="system-starts-with-digit"),
        pytest.param(b"t@" + b"v" * 15 + b"=x", False, id="system-too-long"),
        pytest.param(b"k" * 257 + b"=v", False, id="key-too-long"),
        pytest.param(b"k=" + b"v" * 257, False, id="value-too-long"),
        pytest.param(b"a=1,a=2", False, id="duplicate-key"),
    ],
)
def test_valid_tracestate(value: bytes, valid: bool) -> None:
    assert valid_tracestate(value) is valid


def test_tracestate_is_forwarded_only_up_to_512_bytes() -> None:
    at_limit = b"a=" + b"x" * 254 + b",b=" + b"x" * 253
    assert len(at_limit) == 512
    assert valid_tracestate(at_limit)
    assert not valid_tracestate(at_limit + b"x")


LINE = re.compile(rb"traceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-00\r\n")


def test_new_root_lines_are_traceparent_lines_whose_ids_vary() -> None:
    # A small batch, so the lines span several refills of the buffer.
    ids = IdSource(batch=7)
    lines = [ids.new_root_line() for _ in range(200)]
    matches = [LINE.fullmatch(line) for line in lines]
    assert all(matches)
    trace_ids = [match.group(1) for match in matches if match]
    span_ids = [match.group(2) for match in matches if match]
    span_ids += [ids.new_span() for _ in range(200)]
    assert len(set(trace_ids)) == 200
    assert len(set(span_ids)) == 400
    assert all(re.fullmatch(rb"[0-9a-f]{16}", s) for s in span_ids)
    assert [line_trace_id(line) for line in lines] == trace_ids
    assert [line_span_id(line) for line in lines] == span_ids[:200]


def test_a_new_root_line_round_trips_through_traceparent() -> None:
    line = IdSource().new_root_line()
    name, _, value = line.partition(b": ")
    assert name == b"traceparent"
    assert value.endswith(b"\r\n")
    assert parse_traceparent(value[:-2]) == (line_trace_id(line), line_span_id(line), False)
    assert parse_traceparent(sampled_line(line)[13:-2]) == (
        line_trace_id(line),
        line_span_id(line),
        True,
    )


def test_traceparent_line_writes_the_flags_of_the_decision() -> None:
    assert traceparent_line(TRACE_ID, SPAN_ID, True) == b"traceparent: " + VALID + b"\r\n"
    unsampled = traceparent_line(TRACE_ID, SPAN_ID, False)
    assert unsampled == b"traceparent: " + VALID[:-2] + b"00\r\n"
    assert sampled_line(unsampled) == traceparent_line(TRACE_ID, SPAN_ID, True)
    assert line_trace_id(unsampled) == TRACE_ID
    assert line_span_id(unsampled) == SPAN_ID


def test_a_draw_holding_sixteen_zero_digits_is_drawn_again() -> None:
    """No id may be all zeros: a buffer with a run of zeros anywhere is thrown away.

    A span's ids are the hex of 25 random bytes: the trace id bytes 0-15, a dash
    over the first digit of byte 16, the span id the rest of it and bytes 17-23.
    """
    draws: list[int] = []
    good = bytes(range(1, 26))
    sequence = iter([bytes(25), bytes(11) + b"\x01" + bytes(13), good])

    def draw(size: int) -> bytes:
        draws.append(size)
        return next(sequence)

    ids = IdSource(batch=1, draw=draw)
    digits = good.hex().encode()
    assert ids.new_root_line() == (
        b"traceparent: 00-" + digits[:32] + b"-" + digits[33:49] + b"-00\r\n"
    )
    assert draws == [25, 25, 25]


def test_an_id_source_needs_a_batch() -> None:
    with pytest.raises(ValueError, match="batch"):
        IdSource(batch=0)


def _trace_id_with_low(low: int) -> bytes:
    """A trace id whose lower 64 bits (the part the ratio sampler reads) are `low`."""
    return b"%016x%016x" % (0xDEADBEEF, low)


HALF_BOUND = 1 << 62  # int(0.5 * 2**63): ids with (low >> 1) below this are sampled


@pytest.mark.parametrize(
    ("rate", "trace_id", "expected"),
    [
        pytest.param(1.0, _trace_id_with_low(2**64 - 1), True, id="rate-1-highest-id"),
        pytest.param(1.0, _trace_id_with_low(0), True, id="rate-1-lowest-id"),
        pytest.param(0.0, _trace_id_with_low(0), False, id="rate-0-lowest-id"),
        pytest.param(0.0, _trace_id_with_low(1), False, id="rate-0-id-1"),
        pytest.param(0.5, _trace_id_with_low((HALF_BOUND - 1) << 1 | 1), True, id="half-below"),
        pytest.param(0.5, _trace_id_with_low(HALF_BOUND << 1), False, id="half-at-bound"),
        pytest.param(2.0, _trace_id_with_low(2**64 - 1), True, id="above-1-clamped"),
        pytest.param(-1.0, _trace_id_with_low(0), False, id="negative-clamped"),
        pytest.param(math.nan, _trace_id_with_low(0), False, id="nan-never"),
        pytest.param(1e-4, _trace_id_with_low(0), True, id="default-rate-low-id"),
        pytest.param(1e-4, _trace_id_with_low(2**60), False, id="default-rate-high-id"),
    ],
)
def test_sampler_root_trace_follows_the_ratio(rate: float, trace_id: bytes, expected: bool) -> None:
    assert Sampler(rate).sampled(trace_id, None) is expected


@pytest.mark.parametrize("rate", [0.0, 1e-4, 0.5, 1.0])
def test_a_root_line_is_sampled_as_its_trace_id_is(rate: float) -> None:
    sampler = Sampler(rate)
    for low in (0, 1, HALF_BOUND << 1, 2**60, 2**64 - 1):
        trace_id = _trace_id_with_low(low)
        line = traceparent_line(trace_id, SPAN_ID, False)
        assert sampler.sampled_root(line) is sampler.sampled(trace_id, None)


def test_sampler_ignores_the_upper_half_of_the_trace_id() -> None:
    sampler = Sampler(0.5)
    low = b"%016x" % (HALF_BOUND << 1)
    assert not sampler.sampled(b"0" * 16 + low, None)
    assert not sampler.sampled(b"f" * 16 + low, None)


@pytest.mark.parametrize("rate", [pytest.param(0.0, id="rate-0"), pytest.param(1.0, id="rate-1")])
@pytest.mark.parametrize(
    "parent_sampled", [pytest.param(True, id="parent-sampled"), pytest.param(False, id="not")]
)
def test_sampler_follows_the_parent_whatever_the_rate(rate: float, parent_sampled: bool) -> None:
    sampler = Sampler(rate)
    for trace_id in (_trace_id_with_low(0), _trace_id_with_low(2**64 - 1)):
        assert sampler.sampled(trace_id, parent_sampled) is parent_sampled


@pytest.mark.parametrize(
    ("rate", "expected"), [(-3.0, 0.0), (0.25, 0.25), (7.0, 1.0), (math.inf, 1.0)]
)
def test_sampler_clamps_its_rate(rate: float, expected: float) -> None:
    assert Sampler(rate).rate == expected
