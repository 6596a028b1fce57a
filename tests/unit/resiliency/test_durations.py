"""Durations in Resiliency resources: Go duration strings, and bare integers as milliseconds."""

from __future__ import annotations

import pytest

from fastproxy.config.errors import ConfigError
from fastproxy.resiliency.durations import parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("10ns", 10e-9, id="nanoseconds"),
        pytest.param("10us", 10e-6, id="microseconds-us"),
        pytest.param("10\u00b5s", 10e-6, id="microseconds-micro-sign"),
        pytest.param("10\u03bcs", 10e-6, id="microseconds-greek-mu"),
        pytest.param("500ms", 0.5, id="milliseconds"),
        pytest.param("5s", 5.0, id="seconds"),
        pytest.param("2m", 120.0, id="minutes"),
        pytest.param("1h", 3600.0, id="hours"),
        pytest.param("1.5s", 1.5, id="fraction"),
        pytest.param(".5s", 0.5, id="fraction-without-integer-part"),
        pytest.param("1.s", 1.0, id="fraction-without-digits"),
        pytest.param("1h2m3.5s", 3723.5, id="hours-minutes-seconds"),
        pytest.param("1m30s", 90.0, id="minutes-seconds"),
        pytest.param("1s500ms", 1.5, id="seconds-milliseconds"),
        pytest.param("1s1s", 2.0, id="repeated-unit-adds"),
        pytest.param("1.0000000001s", 1.0, id="fraction-below-a-nanosecond-truncated"),
        pytest.param("+5s", 5.0, id="plus-sign"),
        pytest.param("0", 0.0, id="bare-zero-string"),
        pytest.param("-0", 0.0, id="negative-zero"),
        pytest.param("0s", 0.0, id="zero-seconds"),
        pytest.param(" 5s ", 5.0, id="surrounding-whitespace"),
        pytest.param(1500, 1.5, id="yaml-int-is-milliseconds"),
        pytest.param(0, 0.0, id="yaml-zero"),
        pytest.param("1500", 1.5, id="digit-string-is-milliseconds"),
        pytest.param("+250", 0.25, id="signed-digit-string"),
        pytest.param("2562047h", 2562047 * 3600.0, id="largest-hours-go-accepts"),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    assert parse_duration(value, "here") == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param("", "malformed", id="empty"),
        pytest.param("   ", "malformed", id="blank"),
        pytest.param("s", "malformed", id="unit-only"),
        pytest.param(".s", "malformed", id="dot-only"),
        pytest.param("5x", "unknown unit 'x'", id="unknown-unit"),
        pytest.param("5S", "unknown unit 'S'", id="unit-is-case-sensitive"),
        pytest.param("5 s", "unknown unit ' s'", id="space-before-unit"),
        pytest.param("1.5", "missing a unit", id="fraction-without-unit"),
        pytest.param("1s5", "missing a unit", id="trailing-number"),
        pytest.param("1.2.3s", "missing a unit", id="two-dots"),
        pytest.param("-5s", "negative", id="negative-string"),
        pytest.param("-1h30m", "negative", id="negative-compound"),
        pytest.param("-500", "negative", id="negative-digit-string"),
        pytest.param(-1, "negative", id="negative-int"),
        pytest.param("+-5s", "malformed", id="two-signs"),
        pytest.param("2562048h", "out of range", id="beyond-int64-nanoseconds"),
        pytest.param(10**16, "out of range", id="int-beyond-int64-nanoseconds"),
        pytest.param(1.5, "not float", id="yaml-float"),
        pytest.param(True, "not bool", id="yaml-bool"),
        pytest.param(None, "not nothing", id="null"),
        pytest.param(["5s"], "not list", id="list"),
    ],
)
def test_parse_duration_rejects_naming_the_place(value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "resiliency 'r': timeout 'slow'")
    message = str(caught.value)
    assert message.startswith("resiliency 'r': timeout 'slow': ")
    assert problem in message
