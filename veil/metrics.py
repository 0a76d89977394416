"""
Process-local metrics: counters and histograms, rendered for Prometheus.

A L{Registry} is passed to whoever records; nothing here is global except
the default registry that L{veil.tap} creates for the process.  Recording
is a dictionary update, cheap enough for the hot path.
"""

from __future__ import annotations

import bisect
import math
import threading

import attrs

_DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels_text(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        '{}="{}"'.format(k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for k, v in labels
    )
    return "{" + inner + "}"


@attrs.define(eq=False)
class Counter:
    """A monotonically increasing count, per label set."""

    name: str
    help: str
    _values: dict[tuple[tuple[str, str], ...], float] = attrs.field(factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items())) if labels else ()
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, value in sorted(self._values.items()):
            lines.append(f"{self.name}{_labels_text(key)} {value:g}")
        return lines


@attrs.define(eq=False)
class Histogram:
    """
    Observations in cumulative buckets, per label set.

    Observations may come from database threads, so updates take a lock.
    """

    name: str
    help: str
    buckets: tuple[float, ...] = _DEFAULT_BUCKETS
    _series: dict[tuple[tuple[str, str], ...], list[float]] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._series.get(key)
            if series is None:
                # One slot per bucket, then +Inf, then the sum.
                series = self._series[key] = [0.0] * (len(self.buckets) + 2)
            series[bisect.bisect_left(self.buckets, value)] += 1
            series[-1] += value

    def count(self, **labels: str) -> int:
        series = self._series.get(tuple(sorted(labels.items())))
        return 0 if series is None else int(sum(series[:-1]))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for key, series in items:
            running = 0.0
            for bound, n in zip(self.buckets + (math.inf,), series[:-1]):
                running += n
                le = "+Inf" if bound == math.inf else f"{bound:g}"
                lines.append(f"{self.name}_bucket{_labels_text(key + (('le', le),))} {running:g}")
            lines.append(f"{self.name}_sum{_labels_text(key)} {series[-1]:g}")
            lines.append(f"{self.name}_count{_labels_text(key)} {running:g}")
        return lines


@attrs.define(eq=False)
class Registry:
    """Every metric of one process, by name."""

    _metrics: dict[str, Counter | Histogram] = attrs.field(factory=dict)

    def counter(self, name: str, help: str) -> Counter:
        metric = self._metrics.setdefault(name, Counter(name, help))
        assert isinstance(metric, Counter), name
        return metric

    def histogram(self, name: str, help: str) -> Histogram:
        metric = self._metrics.setdefault(name, Histogram(name, help))
        assert isinstance(metric, Histogram), name
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self._metrics):
            lines.extend(self._metrics[name].render())
        return "\n".join(lines) + "\n"
