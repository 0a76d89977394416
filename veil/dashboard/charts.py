"""
Charts drawn on the server, as SVG: geometry computed here, markup written
by the templates (C{_charts.html}).  No script and no inline style (the
Content-Security-Policy allows neither): sizes and positions are SVG
presentation attributes, colours are classes of the stylesheet.  Every
chart has a text equivalent (a title per bar, a summary) for screen readers
and for pages printed without colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import attrs

from veil.store.logquery import Bucket, Count

#: The drawing area of a time-series chart (SVG user units; it is stretched
#: to the page's width, so its labels are HTML beside it, never SVG text).
WIDTH = 720
HEIGHT = 160
TOP = 4
#: Labels on the time axis, at most.
X_LABELS = 6


@attrs.frozen
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@attrs.frozen
class Tick:
    position: float
    label: str


@attrs.frozen
class SeriesChart:
    """
    Stacked bars per time bucket: passed and blocked requests.

    @ivar y_ticks: grid lines (their label is the count at that height),
        top first.
    @ivar x_labels: times spread evenly under the chart, first to last.
    """

    width: int
    height: int
    bars: tuple[Bar, ...]
    y_ticks: tuple[Tick, ...]
    x_labels: tuple[str, ...]
    summary: str
    empty: bool


def _nice(top: int) -> int:
    """A round number at least C{top} (1, 2, 5 times a power of ten)."""
    if top <= 1:
        return 1
    power = 10 ** math.floor(math.log10(top))
    for step in (1, 2, 5, 10):
        if step * power >= top:
            return step * power
    return 10 * power


def _when(moment: datetime, seconds: int) -> str:
    moment = moment.astimezone(UTC)
    if seconds >= 86400:
        return moment.strftime("%d %b")
    return moment.strftime("%H:%M")


def series(buckets: Sequence[Bucket], seconds: int) -> SeriesChart:
    """Requests per bucket, the blocked part on top, with grid lines and time labels."""
    plot_height = HEIGHT - TOP
    peak = _nice(max((b.requests for b in buckets), default=0))
    count = max(1, len(buckets))
    slot = WIDTH / count
    gap = min(2.0, slot * 0.2)
    scale = plot_height / peak
    bars: list[Bar] = []
    for index, bucket in enumerate(buckets):
        if not bucket.requests:
            continue
        x = round(index * slot + gap / 2, 2)
        width = round(slot - gap, 2)
        passed = bucket.requests - bucket.blocked
        stamp = bucket.start.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        y = float(HEIGHT)
        for part, css, what in ((passed, "bar-pass", "passed"),
                                (bucket.blocked, "bar-block", "blocked")):
            if part:
                height = part * scale
                y -= height
                bars.append(Bar(x, round(y, 2), width, round(height, 2), css,
                                f"{stamp}: {part} {what}"))
    y_ticks = tuple(Tick(round(HEIGHT - plot_height * f, 2), str(round(peak * f)))
                    for f in (1, 0.5, 0))
    if len(buckets) <= X_LABELS:
        shown = list(buckets)
    else:
        step = (len(buckets) - 1) / (X_LABELS - 1)
        shown = [buckets[round(i * step)] for i in range(X_LABELS)]
    total = sum(b.requests for b in buckets)
    blocked = sum(b.blocked for b in buckets)
    width_text = (f"{seconds // 3600} hour" if seconds % 3600 == 0 else
                  f"{seconds // 60} minute")
    plural = "s" if seconds not in (60, 3600) else ""
    summary = (f"{total:,} requests, {blocked:,} blocked, in {len(buckets)} buckets of"
               f" {width_text}{plural}")
    return SeriesChart(WIDTH, HEIGHT, tuple(bars), y_ticks,
                       tuple(_when(b.start, seconds) for b in shown), summary, total == 0)


@attrs.frozen
class Row:
    """One entry of a top list, with its share of the largest."""

    key: str
    requests: int
    share: float


def top(counts: Sequence[Count]) -> tuple[Row, ...]:
    """A top list, each entry with its share of the first (for a bar or a meter)."""
    most = max((c.requests for c in counts), default=0)
    return tuple(Row(c.key, c.requests, c.requests / most if most else 0.0) for c in counts)
