"""The report's charts as inline SVG: learning curves (one run, or several overlaid) and the reliability diagram.

SVG written here rather than matplotlib PNGs: a chart is 2-6 KB of text instead of 30-60 KB of base64, every
label in it is escaped page text, points carry their values as tooltips, and drawing one takes well under a
millisecond where importing and drawing with matplotlib takes about a second, which every run would pay at its
end. Every piece of user text goes through `markupsafe.escape`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from markupsafe import Markup, escape

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # fmt: skip
WIDTH, HEIGHT = 460, 270
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 28, 40


@dataclass(frozen=True)
class Series:
    name: str
    xs: list[float]
    ys: list[float | None]
    colour: str = COLOURS[0]
    dashed: bool = False


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round numbers spanning lo..hi."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= step * m)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.0e}"


def line_chart(title: str, series: list[Series], x_label: str = "epoch", y_range: tuple[float, float] | None = None):
    """An SVG line chart; a point's tooltip says its series, x and y."""
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys, strict=True) if y is not None and math.isfinite(y)]
    if not points:
        return Markup('<p class="muted">no values to plot</p>')
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = y_range or (min(p[1] for p in points), max(p[1] for p in points))
    if y_range is None:
        pad = (y_hi - y_lo) * 0.08 or abs(y_hi) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo) * w

    def sy(y: float) -> float:
        return TOP + (1 - (y - y_lo) / (y_hi - y_lo)) * h

    parts = [f'<text x="{WIDTH / 2}" y="17" class="title">{escape(title)}</text>']
    for t in _ticks(y_lo, y_hi):
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                     f'<text x="{LEFT - 5}" y="{sy(t) + 4:.1f}" class="ytick">{_label(t)}</text>')  # fmt: skip
    xticks = [t for t in _ticks(x_lo, x_hi, min(8, max(1, int(x_hi - x_lo)))) if float(t).is_integer()] or [x_lo]
    for t in xticks:
        parts.append(f'<text x="{sx(t):.1f}" y="{TOP + h + 15}" class="xtick">{_label(t)}</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" class="frame"/>')
    parts.append(f'<text x="{LEFT + w / 2}" y="{HEIGHT - 6}" class="axis">{escape(x_label)}</text>')
    for s in series:
        xy = [(x, y) for x, y in zip(s.xs, s.ys, strict=True) if y is not None and math.isfinite(y)]
        if not xy:
            continue
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in xy)
        parts.append(f'<polyline points="{line}" stroke="{s.colour}" class="series"{dash}/>')
        for x, y in xy:
            tip = f"{escape(s.name)}: {escape(x_label)} {_label(x)}, {y:.4g}"
            point = f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{s.colour}">'
            parts.append(f"{point}<title>{tip}</title></circle>")
    legend = "".join(
        f'<span class="key"><i style="background:{s.colour}"{" class=dashed" if s.dashed else ""}></i>'
        f"{escape(s.name)}</span>"
        for s in series
    )
    svg = f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">{"".join(parts)}</svg>'
    return Markup(f'<figure class="chart">{svg}<figcaption>{legend}</figcaption></figure>')


def reliability_chart(bins: list[dict], ece: float, what: str):
    """Bars of accuracy per confidence bin over the diagonal of perfect calibration; a bar's tooltip gives its
    count, mean confidence and accuracy."""
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + x * w

    def sy(y: float) -> float:
        return TOP + (1 - y) * h

    parts = [f'<text x="{WIDTH / 2}" y="17" class="title">reliability (ECE {ece:.4f})</text>']
    for t in _ticks(0, 1):
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                     f'<text x="{LEFT - 5}" y="{sy(t) + 4:.1f}" class="ytick">{_label(t)}</text>'
                     f'<text x="{sx(t):.1f}" y="{TOP + h + 15}" class="xtick">{_label(t)}</text>')  # fmt: skip
    for b in bins:
        if not b["count"]:
            continue
        x0, x1 = sx(b["lo"]) + 1, sx(b["hi"]) - 1
        tip = (f"{b['lo']:.1f}-{b['hi']:.1f}: {b['count']} · confidence {b['confidence']:.3f} · "
               f"accuracy {b['accuracy']:.3f}")  # fmt: skip
        parts.append(f'<rect x="{x0:.1f}" y="{sy(b["accuracy"]):.1f}" width="{x1 - x0:.1f}" '
                     f'height="{sy(0) - sy(b["accuracy"]):.1f}" class="bar"><title>{tip}</title></rect>'
                     f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{sy(b["confidence"]):.1f}" y2="{sy(b["confidence"]):.1f}"'
                     ' class="mean"/>')  # fmt: skip
    parts.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(1)}" class="diagonal"/>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" class="frame"/>')
    parts.append(f'<text x="{LEFT + w / 2}" y="{HEIGHT - 6}" class="axis">confidence</text>')
    svg = f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="reliability diagram">{"".join(parts)}</svg>'
    caption = (f"{escape(what)}; bars: accuracy in each bin, ticks: its mean confidence, dashed: perfect "
               "calibration")  # fmt: skip
    return Markup(f'<figure class="chart">{svg}<figcaption>{caption}</figcaption></figure>')
