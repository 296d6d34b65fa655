"""Hand-made inline SVG charts: line, (stacked) bar and grouped bar charts, no library, no external request.

Every chart is one ``<svg class="chart">`` with ``data-chart`` (its id) and ``data-points`` (how many
data points it draws); every data point is an element with class ``pt`` and ``data-x``/``data-y``
attributes and a ``<title>`` tooltip, so the page can be checked by reading its DOM. A chart with no
data still renders, with a "no data" note in it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

# Okabe-Ito: distinguishable with the common colour-vision deficiencies
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000", "#999999"]
THRESHOLD = "#C0392B"
W, H = 600, 260  # default size
PAD_L, PAD_R, PAD_T, PAD_B = 62, 16, 34, 58  # room for the y labels, title, x labels, one legend row

Num = float | int | None


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def fmt(v: float) -> str:
    """Short tick/tooltip number: 0.9512, 1.2k, 3.4M, 12."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a == 0 or a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.3g}"
    return f"{v:.4g}"


def tick(v: float, step: float) -> str:
    """A tick label with as many decimals as the tick step needs (0.9995, 0.9996 ... never "1, 1")."""
    if abs(v) >= 1e4 or step >= 1:
        return fmt(v)
    mag = math.floor(math.log10(step) + 1e-9)
    decimals = max(0, -mag) + (1 if round(step / 10**mag, 6) == 2.5 else 0)  # 0.25 needs one more than 0.2
    return f"{v:.{decimals}f}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        lo, hi = (lo - 1.0, hi + 1.0) if lo == 0 else (lo - abs(lo) * 0.1, hi + abs(hi) * 0.1)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t < hi + step * 0.999:
        ticks.append(round(t, 12))
        t += step
    return ticks


LEGEND_ROW = 16  # pixels per legend row


def legend_slots(names: Sequence[str], x0: float, x1: float) -> list[tuple[float, int]]:
    """(x, row) of each legend entry, wrapping to a new row when the next one would not fit."""
    out, x, row = [], x0, 0
    for name in names:
        w = 24 + 6.2 * len(name)
        if x > x0 and x + w > x1:
            x, row = x0, row + 1
        out.append((x, row))
        x += w + 10
    return out


class Frame:
    """Axes of one chart: maps data to pixels, draws the grid, ticks, title and legend."""

    def __init__(
        self,
        chart_id: str,
        title: str,
        x_labels: Sequence[str],
        lo: float,
        hi: float,
        width: int = W,
        height: int = H,
        y_label: str = "",
        legend: Sequence[str] = (),
    ) -> None:
        self.id, self.title, self.labels = chart_id, title, list(x_labels)
        self.slots = legend_slots(legend, PAD_L, width - PAD_R)
        rows = max((r for _, r in self.slots), default=0) + 1
        height += LEGEND_ROW * (rows - 1)  # a long legend wraps onto more rows below the plot
        self.width, self.height, self.y_label = width, height, y_label
        self.legend_top = height - LEGEND_ROW * rows
        self.ticks = nice_ticks(lo, hi)
        self.lo, self.hi = self.ticks[0], self.ticks[-1]
        self.x0, self.x1 = PAD_L, width - PAD_R
        self.y0, self.y1 = height - PAD_B - LEGEND_ROW * (rows - 1), PAD_T  # pixel y of lo and of hi

    def y(self, v: float) -> float:
        span = (self.hi - self.lo) or 1.0
        return self.y0 - (min(max(v, self.lo), self.hi) - self.lo) / span * (self.y0 - self.y1)

    def slot(self, i: int) -> tuple[float, float]:
        """(centre x, slot width) of category ``i``."""
        n = max(len(self.labels), 1)
        w = (self.x1 - self.x0) / n
        return self.x0 + w * (i + 0.5), w

    def axes(self) -> list[str]:
        out = [f'<text class="title" x="{self.x0}" y="18">{escape(self.title)}</text>']
        step = (self.ticks[1] - self.ticks[0]) if len(self.ticks) > 1 else 1.0
        for t in self.ticks:
            y = self.y(t)
            out.append(f'<line class="grid" x1="{self.x0}" x2="{self.x1}" y1="{y:.1f}" y2="{y:.1f}"/>')
            out.append(
                f'<text class="tick" x="{self.x0 - 6}" y="{y + 4:.1f}" text-anchor="end">'
                f"{tick(t, step)}</text>"
            )
        if self.y_label:
            mid = (self.y0 + self.y1) / 2
            out.append(
                f'<text class="tick" transform="translate(12 {mid:.0f}) rotate(-90)" '
                f'text-anchor="middle">{escape(self.y_label)}</text>'
            )
        out.append(f'<line class="axis" x1="{self.x0}" x2="{self.x1}" y1="{self.y0}" y2="{self.y0}"/>')
        every = max(1, math.ceil(len(self.labels) / 8))  # at most ~8 x labels
        for i, label in enumerate(self.labels):
            if i % every == 0:
                x, _ = self.slot(i)
                out.append(
                    f'<text class="tick" x="{x:.1f}" y="{self.y0 + 15}" text-anchor="middle">'
                    f"{escape(label)}</text>"
                )
        return out

    def legend(self, names: Sequence[str], colours: Sequence[str], dashed: Sequence[str] = ()) -> list[str]:
        """Swatches for the series, dashed red lines for the thresholds (slots laid out in __init__)."""
        out = []
        items = [*zip(names, colours, [False] * len(names)), *((d, THRESHOLD, True) for d in dashed)]
        for (name, c, is_dashed), (x, row) in zip(items, self.slots):
            y = self.legend_top + LEGEND_ROW * row + 12
            if is_dashed:
                mark = (
                    f'<line x1="{x:.0f}" x2="{x + 14:.0f}" y1="{y - 4}" y2="{y - 4}" stroke="{c}" '
                    f'stroke-width="2" stroke-dasharray="4 3"/>'
                )
            else:
                mark = f'<rect x="{x:.0f}" y="{y - 9}" width="12" height="10" fill="{c}"/>'
            out.append(
                f'<g class="legend-item">{mark}<text class="tick" x="{x + 18:.0f}" y="{y}">'
                f"{escape(name)}</text></g>"
            )
        return out

    def svg(self, body: list[str], points: int, empty: bool) -> str:
        cx, cy = (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2
        note = (
            [
                f'<text class="empty" x="{cx:.0f}" y="{cy:.0f}" text-anchor="middle">'
                "no data in this range</text>"
            ]
            if empty
            else []
        )
        return (
            f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" data-chart="{escape(self.id)}" '
            f'data-points="{points}" viewBox="0 0 {self.width} {self.height}" width="{self.width}" '
            f'height="{self.height}" role="img" aria-label="{escape(self.title)}">'
            + "".join([*self.axes(), *body, *note])
            + "</svg>"
        )


def _zero(v: Num) -> float:
    """A bar's height: missing or non-finite values draw nothing."""
    return float(v) if v is not None and math.isfinite(float(v)) else 0.0


def _finite(values: Sequence[Num]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _range(values: list[float], thresholds: Sequence[float], zero: bool) -> tuple[float, float]:
    vals = values + [t for t in thresholds if math.isfinite(t)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    if zero:
        lo = min(lo, 0.0)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
    return (lo if zero and lo == 0 else lo - pad), hi + pad


def _polyline(name: str, colour: str, run: list[str]) -> list[str]:
    """One unbroken stretch of a series (at least two points)."""
    if len(run) < 2:
        return []
    return [
        f'<polyline class="series" data-series="{escape(name)}" fill="none" stroke="{colour}" '
        f'stroke-width="2" points="{" ".join(run)}"/>'
    ]


def line_chart(
    chart_id: str,
    title: str,
    x_labels: Sequence[str],
    series: Mapping[str, Sequence[Num]],
    *,
    thresholds: Mapping[str, float | None] | None = None,
    zero: bool = False,
    y_label: str = "",
    width: int = W,
    height: int = H,
) -> str:
    """One line per series over categorical x (missing values break the line); dashed threshold lines."""
    lines = {k: float(v) for k, v in (thresholds or {}).items() if v is not None}
    values = [v for s in series.values() for v in _finite(s)]
    lo, hi = _range(values, list(lines.values()), zero)
    f = Frame(chart_id, title, x_labels, lo, hi, width, height, y_label, legend=[*series, *lines])
    body: list[str] = []
    for name, t in lines.items():
        y = f.y(t)
        body.append(
            f'<line class="threshold" data-threshold="{t}" x1="{f.x0}" x2="{f.x1}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="{THRESHOLD}" stroke-dasharray="6 4">'
            f"<title>{escape(name)}: {fmt(t)}</title></line>"
        )
    points = 0
    for si, (name, ys) in enumerate(series.items()):
        c = color(si)
        run: list[str] = []
        marks: list[str] = []
        for i, v in enumerate(ys):
            if v is None or not math.isfinite(float(v)):
                body += _polyline(name, c, run)
                run = []
                continue
            x, _ = f.slot(i)
            y = f.y(float(v))
            run.append(f"{x:.1f},{y:.1f}")
            marks.append(
                f'<circle class="pt" data-series="{escape(name)}" data-x="{escape(x_labels[i])}" '
                f'data-y="{float(v):.6g}" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{c}"><title>'
                f"{escape(name)} @ {escape(x_labels[i])}: {fmt(float(v))}</title></circle>"
            )
            points += 1
        body += _polyline(name, c, run)
        body += marks
    body += f.legend(list(series), [color(i) for i in range(len(series))], list(lines))
    return f.svg(body, points, points == 0)


def bar_chart(
    chart_id: str,
    title: str,
    x_labels: Sequence[str],
    series: Mapping[str, Sequence[Num]],
    *,
    stacked: bool = True,
    y_label: str = "",
    width: int = W,
    height: int = H,
) -> str:
    """Bars per x category: stacked (parts of a whole: stage seconds, reasons) or side by side (grouped)."""
    n = len(series)
    cols = [[_zero(v) for v in s] for s in series.values()]
    if stacked:
        tops = [sum(c[i] for c in cols if i < len(c)) for i in range(len(x_labels))]
        lo, hi = 0.0, (max(tops) if tops else 1.0) * 1.08 or 1.0
    else:
        flat = [v for c in cols for v in c]
        lo, hi = min([0.0, *flat]), (max(flat) if flat else 1.0) * 1.08 or 1.0
    f = Frame(chart_id, title, x_labels, lo, hi, width, height, y_label, legend=list(series))
    body: list[str] = []
    points = 0
    for i, label in enumerate(x_labels):
        cx, w = f.slot(i)
        bw = max(min(w * 0.7, 48.0), 1.5)
        base = 0.0
        for si, (name, c) in enumerate(zip(series, cols)):
            v = c[i] if i < len(c) else 0.0
            raw = list(series.values())[si][i] if i < len(list(series.values())[si]) else None
            if raw is None:
                continue
            if stacked:
                y_top, y_bot, x = f.y(base + v), f.y(base), cx - bw / 2
                base += v
                width_i = bw
            else:
                width_i = bw / max(n, 1)
                x = cx - bw / 2 + si * width_i
                y_top, y_bot = f.y(max(v, 0.0)), f.y(min(v, 0.0))
            body.append(
                f'<rect class="pt bar" data-series="{escape(name)}" data-x="{escape(label)}" '
                f'data-y="{v:.6g}" x="{x:.1f}" y="{y_top:.1f}" width="{max(width_i - 0.5, 0.8):.1f}" '
                f'height="{max(y_bot - y_top, 0.0):.1f}" fill="{color(si)}"><title>{escape(name)} @ '
                f"{escape(label)}: {fmt(v)}</title></rect>"
            )
            points += 1
    body += f.legend(list(series), [color(i) for i in range(n)])
    return f.svg(body, points, points == 0)


def grouped_bars(
    chart_id: str,
    title: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[Num]],
    *,
    y_label: str = "",
    width: int = W,
    height: int = H,
) -> str:
    """Side-by-side bars per group (a model against its baselines, metric by metric)."""
    return bar_chart(
        chart_id, title, groups, series, stacked=False, y_label=y_label, width=width, height=height
    )
