"""Unit tests for benchmarks.cycle: what its two cycles turn on, and the lines it prints."""

from __future__ import annotations

import re
from typing import Any

import pytest

from benchmarks import cycle


class RecordingTransport(cycle.NullTransport):
    """A NullTransport that also keeps what was written."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        super().write(data)
        self.data += data

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)


async def test_plain_cycle_has_all_observability_off() -> None:
    ctx = cycle.sidecar_context(observed=False)
    assert ctx.observer is None
    assert ctx.observability.metrics is None


async def test_observed_cycle_has_metrics_and_propagation_only() -> None:
    ctx = cycle.sidecar_context(observed=True)
    assert ctx.observer is not None
    assert ctx.observer.tracing
    assert ctx.observability.metrics is not None
    assert ctx.observability.exporters == []
    assert ctx.observability.settings.tracing.sampling_rate == 0.0


@pytest.mark.parametrize(
    ("observed", "traceparent"),
    [(False, None), (True, rb"traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-00\r\n")],
    ids=["plain", "observed"],
)
async def test_cycle_answers_each_request(observed: bool, traceparent: bytes | None) -> None:
    client = RecordingTransport()
    downstream, upstream, _ = cycle.build(observed, client)
    cycle.cycle(downstream, upstream, 3)
    data = bytes(client.data)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert data.count(b"hello, world\n") == 3
    if traceparent is None:
        assert b"traceparent" not in data.lower()
    else:
        assert len(re.findall(traceparent, data)) == 3


@pytest.mark.parametrize(
    ("plain", "observed", "want"),
    [
        (3.0, 3.6, ["3.60 us of Python", "observability costs +0.60 us", "(+20 %)"]),
        (3.0, 2.97, ["observability costs -0.03 us of Python per request (-1 %)"]),
        (0.0, 0.0, ["observability costs +0.00 us of Python per request"]),
    ],
    ids=["costlier", "noise", "profile"],
)
def test_observed_lines(plain: float, observed: float, want: list[str]) -> None:
    lines = cycle.observed_lines(plain, observed, 1000)
    assert len(lines) == 2
    assert lines[0].endswith(
        "with metrics on and trace propagation (samplingRate 0) (best of 5 x 1000)"
    )
    text = "\n".join(lines)
    for needle in want:
        assert needle in text
