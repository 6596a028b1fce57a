"""Kubernetes quantity parsing for --max-body-size / --read-buffer-size."""

from __future__ import annotations

import pytest

from fastproxy.config import ConfigError, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0", 0, id="zero"),
        pytest.param("1024", 1024, id="plain-integer"),
        pytest.param("4Ki", 4 * 1024, id="kibi"),
        pytest.param("4Mi", 4 * 1024**2, id="mebi"),
        pytest.param("2Gi", 2 * 1024**3, id="gibi"),
        pytest.param("1Ti", 1024**4, id="tebi"),
        pytest.param("1Pi", 1024**5, id="pebi"),
        pytest.param("3k", 3000, id="kilo"),
        pytest.param("5M", 5_000_000, id="mega"),
        pytest.param("2G", 2_000_000_000, id="giga"),
        pytest.param("1T", 10**12, id="tera"),
        pytest.param("1.5Mi", 1_572_864, id="fraction-binary"),
        pytest.param("0.5Ki", 512, id="fraction-below-one"),
        pytest.param(".5k", 500, id="leading-dot"),
        pytest.param("2.25M", 2_250_000, id="fraction-decimal"),
        pytest.param("1.5", 2, id="fraction-rounds-up"),
        pytest.param("0.001Ki", 2, id="tiny-fraction-rounds-up"),
        pytest.param(" 4Mi\n", 4 * 1024**2, id="surrounding-whitespace"),
    ],
)
def test_parse_quantity_accepts(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("", "optional suffix", id="empty"),
        pytest.param("   ", "optional suffix", id="blank"),
        pytest.param("-1", "negative", id="negative-integer"),
        pytest.param("-4Mi", "negative", id="negative-suffixed"),
        pytest.param("abc", "optional suffix", id="garbage"),
        pytest.param("Mi", "optional suffix", id="suffix-only"),
        pytest.param("4MB", "optional suffix", id="unknown-suffix"),
        pytest.param("4mi", "optional suffix", id="lowercase-binary-suffix"),
        pytest.param("4K", "optional suffix", id="uppercase-kilo"),
        pytest.param("4ki", "optional suffix", id="lowercase-kibi"),
        pytest.param("4 Mi", "optional suffix", id="space-before-suffix"),
        pytest.param("1.2.3", "optional suffix", id="two-dots"),
        pytest.param("1e3", "optional suffix", id="exponent"),
        pytest.param("0x10", "optional suffix", id="hex"),
        pytest.param("4Mi4", "optional suffix", id="trailing-digits"),
    ],
)
def test_parse_quantity_rejects_with_value_named(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_quantity(text)
    message = str(caught.value)
    assert repr(text) in message
    assert problem in message
