"""A minimal Prometheus registry: counters, gauges and histograms with a bound on series.

Recording sits on the request hot path, so a child series is a plain object whose
update is an integer add (and a binary search for histograms). Text rendering, in the
exposition format 0.0.4, happens only when scraped and may be slow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from typing import Final, TypeVar

OTHER: Final = "_other"
"""The label value of every label in the series that collects label sets past the bound."""

DEFAULT_MAX_SERIES: Final = 1000

_NAME_RE: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

Collect = Callable[[], Iterable[tuple[tuple[str, ...], float]]]
"""A scrape-time reader: one (label values, value) pair per series."""


# -- number and text formatting (scrape time only) ----------------------------------------------


def format_value(value: float) -> str:
    """A sample value as Prometheus clients write it: whole numbers without `.0`."""
    value = float(value)  # an int may stand where a float is declared
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """`{a="x",b="y"}`, or "" when there are no labels."""
    if not names:
        return ""
    pairs = [
        f'{name}="{escape_label_value(value)}"' for name, value in zip(names, values, strict=True)
    ]
    return "{" + ",".join(pairs) + "}"


def _check_names(name: str, labelnames: Sequence[str]) -> tuple[str, ...]:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid metric name: {name!r}")
    for label in labelnames:
        if not _LABEL_RE.match(label) or label.startswith("__") or label == "le":
            raise ValueError(f"invalid label name for {name}: {label!r}")
    if len(set(labelnames)) != len(labelnames):
        raise ValueError(f"duplicate label names for {name}: {labelnames!r}")
    return tuple(labelnames)


# -- children: one series each, updated on the hot path -----------------------------------------


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class HistogramChild:
    """Counts per bucket, not cumulative: `observe` touches one count; rendering sums them.

    Each bucket's count is a native integer (the first bucket's on the child itself,
    where most values a sidecar sees fall; the others in `CounterChild` cells), so an
    observation allocates nothing. The total count is their sum, worked out when read.
    """

    __slots__ = (
        "bounds",
        "first",
        "first_count",
        "last_cell",
        "last_high",
        "last_low",
        "rest",
        "sum",
    )

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.first = bounds[0] if bounds else float("inf")
        self.first_count = 0
        # Buckets 2.. and +Inf: `rest[i - 1]` counts the values of bucket i.
        self.rest = [CounterChild() for _ in bounds]
        self.sum = 0.0
        # The finite bucket past the first that the last value beyond it fell in: its
        # bounds and its count, held here so the next alike value touches nothing else.
        self.last_low = self.last_high = 0.0  # an empty range: no value is in it
        self.last_cell = self.rest[0] if self.rest else CounterChild()

    @property
    def counts(self) -> list[int]:
        """Observations per bucket, the last one +Inf."""
        return [self.first_count, *[cell.value for cell in self.rest]]

    @property
    def count(self) -> int:
        return self.first_count + sum(cell.value for cell in self.rest)

    def observe(self, value: float) -> None:
        self.sum += value
        if value <= self.first:
            self.first_count += 1
            return
        # Values come in runs of alike ones (a sidecar's own time, say): the last
        # bucket is tried before a search.
        if self.last_low < value <= self.last_high:
            self.last_cell.value += 1
            return
        # The first bound >= value (bisect_left), so a value equal to a bound lands in
        # that bound's bucket (le is <=). Written out: compiled, it beats a call to bisect.
        bounds = self.bounds
        low = 1
        high = len(bounds)
        while low < high:
            middle = (low + high) >> 1
            if bounds[middle] < value:
                low = middle + 1
            else:
                high = middle
        cell = self.rest[low - 1]
        if low < len(bounds):  # not +Inf, which has no bound to test against
            self.last_low = bounds[low - 1]
            self.last_high = bounds[low]
            self.last_cell = cell
        cell.value += 1


# -- metrics ---------------------------------------------------------------------------------------


class Metric:
    """What the registry needs of any metric: a name, its text, and what was folded."""

    __slots__ = ("help", "kind", "labelnames", "name")

    def __init__(self, name: str, help: str, labelnames: Sequence[str], kind: str) -> None:
        self.name = name
        self.help = help
        self.kind = kind
        self.labelnames = _check_names(name, labelnames)

    def header(self) -> str:
        return f"# HELP {self.name} {_escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n"

    def render_into(self, out: list[str]) -> None:
        out.append(self.header())

    def folded(self) -> int:
        """Observations that went to the `_other` series because the bound was reached."""
        return 0

    def series_count(self) -> int:
        return 0

    def _values(self, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes {len(self.labelnames)} label values: {values!r}")
        return values

    def _other(self) -> tuple[str, ...]:
        return (OTHER,) * len(self.labelnames)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} series={self.series_count()}>"


class Counter(Metric):
    """A count that only goes up. The name is rendered as given (Dapr adds no `_total`)."""

    __slots__ = ("_children", "_overflow", "max_series")

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        super().__init__(name, help, labelnames, "counter")
        self.max_series = max_series
        self._children: dict[tuple[str, ...], CounterChild] = {}
        self._overflow: CounterChild | None = None
        if not self.labelnames:
            self._children[()] = CounterChild()

    def labels(self, *values: str) -> CounterChild:
        child = self._children.get(values)
        if child is None:
            child = self._add(values)
        return child

    def _add(self, values: tuple[str, ...]) -> CounterChild:
        values = self._values(values)
        if len(self._children) >= self.max_series or values == self._other():
            if self._overflow is None:
                self._overflow = CounterChild()
            return self._overflow
        child = CounterChild()
        self._children[values] = child
        return child

    def folded(self) -> int:
        return 0 if self._overflow is None else self._overflow.value

    def series_count(self) -> int:
        return len(self._children) + (self._overflow is not None)

    def samples(self) -> list[tuple[tuple[str, ...], int]]:
        """Every series' label values and count, the overflow series last."""
        result = [(values, child.value) for values, child in self._children.items()]
        if self._overflow is not None:
            result.append((self._other(), self._overflow.value))
        return result

    def render_into(self, out: list[str]) -> None:
        out.append(self.header())
        for values, value in self.samples():
            out.append(f"{self.name}{_label_text(self.labelnames, values)} {value}\n")


class Histogram(Metric):
    """A distribution over fixed upper bounds, plus sum and count."""

    __slots__ = ("_bounds", "_children", "_overflow", "max_series")

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        super().__init__(name, help, labelnames, "histogram")
        bounds = [float(bound) for bound in buckets]
        if bounds and math.isinf(bounds[-1]) and bounds[-1] > 0:
            bounds.pop()  # +Inf is always there
        increasing = all(low < high for low, high in pairwise(bounds))
        if not bounds or not increasing or not all(math.isfinite(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be finite, increasing, non-empty: {buckets!r}")
        self._bounds = bounds
        self.max_series = max_series
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        self._overflow: HistogramChild | None = None
        if not self.labelnames:
            self._children[()] = HistogramChild(bounds)

    @property
    def bounds(self) -> tuple[float, ...]:
        return tuple(self._bounds)

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._add(values)
        return child

    def _add(self, values: tuple[str, ...]) -> HistogramChild:
        values = self._values(values)
        if len(self._children) >= self.max_series or values == self._other():
            if self._overflow is None:
                self._overflow = HistogramChild(self._bounds)
            return self._overflow
        child = HistogramChild(self._bounds)
        self._children[values] = child
        return child

    def folded(self) -> int:
        return 0 if self._overflow is None else self._overflow.count

    def series_count(self) -> int:
        return len(self._children) + (self._overflow is not None)

    def render_into(self, out: list[str]) -> None:
        out.append(self.header())
        # The `le` part of every bucket line, worked out once per scrape.
        les = [f'le="{format_value(bound)}"}} ' for bound in self._bounds]
        les.append('le="+Inf"} ')
        for values, child in self._children.items():
            self._render_child(out, les, values, child)
        if self._overflow is not None:
            self._render_child(out, les, self._other(), self._overflow)

    def _render_child(
        self, out: list[str], les: list[str], values: tuple[str, ...], child: HistogramChild
    ) -> None:
        labels = _label_text(self.labelnames, values)
        bucket = f"{self.name}_bucket{labels[:-1]}," if labels else f"{self.name}_bucket{{"
        cumulative = 0
        for le, count in zip(les, child.counts, strict=True):
            cumulative += count
            out.append(f"{bucket}{le}{cumulative}\n")
        out.append(f"{self.name}_sum{labels} {format_value(child.sum)}\n")
        out.append(f"{self.name}_count{labels} {child.count}\n")


class GaugeFunc(Metric):
    """Values read from their owner at scrape time (open connections, pool sizes, ...).

    Nothing is recorded on the hot path; `collect` returns the current series.
    """

    __slots__ = ("collect",)

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str],
        collect: Collect,
        kind: str = "gauge",
    ) -> None:
        super().__init__(name, help, labelnames, kind)
        self.collect = collect

    def render_into(self, out: list[str]) -> None:
        out.append(self.header())
        for given, value in self.collect():
            labels = _label_text(self.labelnames, self._values(tuple(given)))
            out.append(f"{self.name}{labels} {format_value(value)}\n")


class CounterFunc(GaugeFunc):
    """A count kept elsewhere and read at scrape time."""

    __slots__ = ()

    def __init__(self, name: str, help: str, labelnames: Sequence[str], collect: Collect) -> None:
        super().__init__(name, help, labelnames, collect, "counter")


# -- the registry ----------------------------------------------------------------------------------

M = TypeVar("M", bound=Metric)


class Registry:
    """The metrics one exposition shows, in registration order."""

    __slots__ = ("_metrics",)

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def register(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric already registered: {metric.name}")
        self._metrics[metric.name] = metric
        return metric

    def get(self, name: str) -> Metric | None:
        return self._metrics.get(name)

    def folded(self) -> int:
        """Observations, over all metrics, folded into `_other` series."""
        return sum(metric.folded() for metric in self._metrics.values())

    def render(self) -> bytes:
        out: list[str] = []
        for metric in self._metrics.values():
            metric.render_into(out)
        return "".join(out).encode()

    def __repr__(self) -> str:
        return f"<Registry metrics={len(self._metrics)}>"
