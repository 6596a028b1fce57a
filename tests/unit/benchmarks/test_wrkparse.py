"""Unit tests for benchmarks.wrkparse: wrk's units and line formats, incl. error lines.

A misparsed unit (us vs ms) would silently skew every latency figure by 1000x.
"""

from __future__ import annotations

import pytest

from benchmarks.wrkparse import (
    WrkParseError,
    parse_bytes,
    parse_count,
    parse_time_ms,
    parse_wrk_output,
)

# Real output of wrk 4.1.0 against nginx on loopback.
CLEAN_US = """\
Running 2s test @ http://127.0.0.1:18080/small
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   150.96us  181.94us   5.84ms   99.31%
    Req/Sec   210.51k     4.84k  218.67k    65.00%
  Latency Distribution
     50%  114.00us
     75%  192.00us
     90%  221.00us
     99%  270.00us
  418268 requests in 2.00s, 64.22MB read
Requests/sec: 208847.67
Transfer/sec:     32.07MB
"""

# Hand-made in wrk's format: mixed units, both error lines (wrk prints them in this order).
ERRORS_MIXED = """\
Running 10s test @ http://127.0.0.1:8080/x
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.51ms   10.12ms    1.02s   98.50%
    Req/Sec    20.10k     1.20k   22.00k    70.00%
  Latency Distribution
     50%    1.20ms
     75%    1.80ms
     90%    2.50ms
     99%    1.01s
  200000 requests in 10.00s, 30.00MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 17
Requests/sec:  19999.50
Transfer/sec:      3.00MB
"""

# No --latency flag: no distribution block; tiny transfer in plain bytes; minutes unit.
NO_DISTRIBUTION = """\
Running 1m test @ http://127.0.0.1:8080/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    83.56us   57.51us    1.50m   98.82%
    Req/Sec    12.42k   820.09    14.05k    63.64%
  13541 requests in 1.00m, 900.00KB read
Requests/sec:    225.68
Transfer/sec:    512.00B
"""


@pytest.mark.parametrize(
    ("text", "want_ms"),
    [
        ("150.96us", 0.15096),
        ("5.84ms", 5.84),
        ("1.02s", 1020.0),
        ("1.50m", 90_000.0),
        ("1.00h", 3_600_000.0),
        ("0.00us", 0.0),
        ("  7ms ", 7.0),
    ],
    ids=["us", "ms", "s", "minutes", "hours", "zero", "padded-integer"],
)
def test_parse_time_ms(text: str, want_ms: float) -> None:
    assert parse_time_ms(text) == pytest.approx(want_ms)


@pytest.mark.parametrize(
    "text",
    ["5.84", "abc", "1.2ns", "", "ms", "-nan%"],
    ids=["no-unit", "garbage", "unknown-unit", "empty", "unit-only", "nan"],
)
def test_parse_time_ms_rejects(text: str) -> None:
    with pytest.raises(WrkParseError):
        parse_time_ms(text)


@pytest.mark.parametrize(
    ("text", "want"),
    [("210.51k", 210_510.0), ("820.09", 820.09), ("1.20M", 1_200_000.0), ("3", 3.0)],
    ids=["kilo", "plain", "mega", "integer"],
)
def test_parse_count(text: str, want: float) -> None:
    assert parse_count(text) == pytest.approx(want)


def test_parse_count_rejects_unknown_suffix() -> None:
    with pytest.raises(WrkParseError):
        parse_count("3x")


@pytest.mark.parametrize(
    ("number", "unit", "want"),
    [
        ("512.00", "B", 512.0),
        ("1.00", "KB", 1024.0),
        ("64.22", "MB", 64.22 * 1024**2),
        ("2.00", "GB", 2.0 * 1024**3),
    ],
    ids=["bytes", "kib", "mib", "gib"],
)
def test_parse_bytes(number: str, unit: str, want: float) -> None:
    assert parse_bytes(number, unit) == pytest.approx(want)


def test_parse_bytes_rejects_unknown_unit() -> None:
    with pytest.raises(WrkParseError):
        parse_bytes("1", "kB")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            CLEAN_US,
            {
                "requests": 418268,
                "duration_s": 2.0,
                "rps": 208847.67,
                "latency_avg_ms": 0.15096,
                "latency_stdev_ms": 0.18194,
                "latency_max_ms": 5.84,
                "percentiles_ms": {50.0: 0.114, 75.0: 0.192, 90.0: 0.221, 99.0: 0.270},
                "non_2xx_3xx": 0,
                "socket_errors": 0,
                "ok": True,
                "bytes_read": 64.22 * 1024**2,
                "transfer_per_s": 32.07 * 1024**2,
            },
        ),
        (
            ERRORS_MIXED,
            {
                "requests": 200000,
                "duration_s": 10.0,
                "rps": 19999.5,
                "latency_avg_ms": 2.51,
                "latency_stdev_ms": 10.12,
                "latency_max_ms": 1020.0,
                "percentiles_ms": {50.0: 1.2, 75.0: 1.8, 90.0: 2.5, 99.0: 1010.0},
                "non_2xx_3xx": 17,
                "socket_errors": 6,
                "ok": False,
                "bytes_read": 30.0 * 1024**2,
                "transfer_per_s": 3.0 * 1024**2,
            },
        ),
        (
            NO_DISTRIBUTION,
            {
                "requests": 13541,
                "duration_s": 60.0,
                "rps": 225.68,
                "latency_avg_ms": 0.08356,
                "latency_stdev_ms": 0.05751,
                "latency_max_ms": 90_000.0,
                "percentiles_ms": {},
                "non_2xx_3xx": 0,
                "socket_errors": 0,
                "ok": True,
                "bytes_read": 900.0 * 1024,
                "transfer_per_s": 512.0,
            },
        ),
    ],
    ids=["clean-microseconds", "errors-mixed-units", "no-latency-block-minutes"],
)
def test_parse_wrk_output(text: str, want: dict[str, object]) -> None:
    r = parse_wrk_output(text)
    got = {
        "requests": r.requests,
        "duration_s": r.duration_s,
        "rps": r.rps,
        "latency_avg_ms": r.latency_avg_ms,
        "latency_stdev_ms": r.latency_stdev_ms,
        "latency_max_ms": r.latency_max_ms,
        "non_2xx_3xx": r.non_2xx_3xx,
        "socket_errors": r.socket_errors,
        "ok": r.ok,
        "bytes_read": r.bytes_read,
        "transfer_per_s": r.transfer_per_s,
    }
    want = dict(want)
    want_pct = want.pop("percentiles_ms")
    assert got == pytest.approx(want)
    assert r.percentiles_ms == pytest.approx(want_pct)


def test_socket_error_kinds_and_summary() -> None:
    r = parse_wrk_output(ERRORS_MIXED)
    assert (r.errors_connect, r.errors_read, r.errors_write, r.errors_timeout) == (0, 3, 1, 2)
    assert r.percentile(99.0) == pytest.approx(1010.0)
    assert r.percentile(99.9) is None
    summary = r.error_summary()
    assert "17 non-2xx/3xx" in summary
    assert "read=3" in summary
    assert "timeout=2" in summary
    assert parse_wrk_output(CLEAN_US).error_summary() == ""


def test_zero_requests_is_not_ok() -> None:
    text = CLEAN_US.replace("418268 requests", "0 requests")
    r = parse_wrk_output(text)
    assert not r.ok
    assert "no requests completed" in r.error_summary()


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("418268 requests in", "requests in"),
        ("Requests/sec:", "Requests/sec"),
        ("    Latency   150.96us", "Latency"),
    ],
    ids=["no-requests-line", "no-rps-line", "no-latency-line"],
)
def test_missing_key_line_raises(drop: str, message: str) -> None:
    text = "\n".join(ln for ln in CLEAN_US.splitlines() if drop not in ln)
    with pytest.raises(WrkParseError, match=message):
        parse_wrk_output(text)


def test_connection_refused_output_raises() -> None:
    with pytest.raises(WrkParseError):
        parse_wrk_output("unable to connect to 127.0.0.1:18099 Connection refused\n")
