"""Inline SVG charts for report.html, written as text (no JavaScript, no plotting library).

    pareto_front(points) -> names on the front       (pure; tested on known sets)
    pareto_svg(points, chosen, budget, ...) -> <svg>  accuracy drop vs throughput
    bar_chart_svg(bars, ...) -> <svg>                 horizontal bars (the sensitivity ranking)

Every label is escaped; long labels are shortened in the picture and given whole in a <title>
tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from trimtab.report.markup import esc, num

FONT = 11  # px
CHAR_W = 6.4  # rough width of one character at FONT px, for label placement
LABEL_CHARS = 28


@dataclass(frozen=True)
class Point:
    """One candidate in the accuracy/speed plane: `drop` in points (lower is better),
    `throughput` per second (higher is better)."""

    name: str
    throughput: float
    drop: float
    tooltip: str = ""


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    tooltip: str = ""


def pareto_front(points: Sequence[Point]) -> list[str]:
    """Names of the points no other point dominates, by throughput ascending. q dominates p when
    q.throughput >= p.throughput and q.drop <= p.drop, one of them strictly. Equal points
    dominate neither one another, so both stay."""
    front = [
        p for p in points
        if not any(q.throughput >= p.throughput and q.drop <= p.drop and (q.throughput > p.throughput or q.drop < p.drop)
                   for q in points)
    ]
    return [p.name for p in sorted(front, key=lambda p: (p.throughput, p.drop))]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values, 1, 2 or 5 times a power of ten apart, from the last
    multiple of the step at or below `lo` up to `hi` (callers drop those outside their axis)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


class _Frame:
    """Maps data to pixels in a plot box; y grows upwards in data (down in SVG) unless `flip`."""

    def __init__(self, box: tuple[float, float, float, float], xs: tuple[float, float], ys: tuple[float, float],
                 flip_y: bool = False) -> None:
        self.left, self.top, self.width, self.height = box
        self.xs, self.ys, self.flip_y = xs, ys, flip_y

    def x(self, value: float) -> float:
        lo, hi = self.xs
        return self.left + (value - lo) / (hi - lo) * self.width

    def y(self, value: float) -> float:
        lo, hi = self.ys
        share = (value - lo) / (hi - lo)
        return self.top + (share if self.flip_y else 1.0 - share) * self.height


def _text(x: float, y: float, text: str, *, anchor: str = "start", size: int = FONT, extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-family="system-ui,sans-serif"{extra}>{esc(text)}</text>')


def _short(label: str, chars: int = LABEL_CHARS) -> str:
    return label if len(label) <= chars else label[: chars - 1] + "\u2026"


def _padded(lo: float, hi: float, pad: float = 0.08) -> tuple[float, float]:
    if hi <= lo:
        return lo - 1.0, hi + 1.0
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


def pareto_svg(points: Sequence[Point], chosen: str, budget: float | None, *, x_label: str, y_label: str,
               width: int = 900, height: int = 460) -> str:
    """Every point, the chosen one ringed, the Pareto front as a staircase (the least drop
    reachable at each throughput) and a dashed line at the budget. Drop grows downwards, so
    better is up and to the right."""
    box = (72.0, 24.0, width - 72.0 - 24.0, height - 24.0 - 58.0)
    drops = [p.drop for p in points] + ([budget] if budget is not None and math.isfinite(budget) else [])
    x_hi = max(p.throughput for p in points) * 1.08
    frame = _Frame(box, (0.0, x_hi if x_hi > 0 else 1.0), _padded(min(drops), max(drops), 0.12), flip_y=True)
    parts = [_axes(frame, x_label, y_label)]
    if budget is not None and math.isfinite(budget):
        y = frame.y(budget)
        parts.append(f'<line x1="{frame.left:.1f}" y1="{y:.1f}" x2="{frame.left + frame.width:.1f}" y2="{y:.1f}" '
                     'stroke="#c0392b" stroke-dasharray="6 4" stroke-width="1.2"/>')
        parts.append(_text(frame.left + frame.width - 4, y - 5, f"budget {budget:g} pt", anchor="end",
                           extra=' fill="#c0392b"'))
    parts.append(_front_path(frame, points))
    parts.extend(_pareto_points(frame, points, chosen, budget))
    parts.append(_legend(frame))
    return _svg(width, height, "pareto-plot", "Accuracy drop against throughput for every candidate", parts)


def _front_path(frame: _Frame, points: Sequence[Point]) -> str:
    by_name = {p.name: p for p in points}
    front = [by_name[name] for name in pareto_front(points)]
    if not front:
        return ""
    coords = [f"M{frame.x(front[0].throughput):.1f},{frame.y(front[0].drop):.1f}"]
    for point in front[1:]:
        coords.append(f"V{frame.y(point.drop):.1f}H{frame.x(point.throughput):.1f}")
    return (f'<path class="front" d="{"".join(coords)}" fill="none" stroke="#2a7" stroke-width="2" '
            'stroke-linejoin="round" opacity="0.8"/>')


def _pareto_points(frame: _Frame, points: Sequence[Point], chosen: str, budget: float | None) -> list[str]:
    parts = []
    # Labels must clear the other labels and every point (a box of the point's radius).
    placed = [(frame.x(p.throughput) - 6, frame.y(p.drop) - 6, frame.x(p.throughput) + 6, frame.y(p.drop) + 6)
              for p in points]
    limit = (frame.left, frame.top, frame.left + frame.width, frame.top + frame.height)
    for point in sorted(points, key=lambda p: (p.drop, -p.throughput)):
        x, y = frame.x(point.throughput), frame.y(point.drop)
        over = budget is not None and point.drop > budget
        fill = "#c0392b" if over else "#2c6fbb"
        title = f"<title>{esc(point.tooltip or point.name)}</title>"
        if point.name == chosen:
            parts.append(f'<circle class="chosen" cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none" stroke="#1e8449" '
                         f'stroke-width="3">{title}</circle>')
        parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}">{title}</circle>')
        label = _short(point.name) + (" (chosen)" if point.name == chosen else "")
        lx, ly, anchor = _place_label(x, y, label, placed, limit)
        if abs(ly - 4 - y) > 10:
            parts.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{lx:.1f}" y2="{ly - 4:.1f}" stroke="#999" '
                         'stroke-width="0.7"/>')
        weight = ' font-weight="bold"' if point.name == chosen else ""
        parts.append(_text(lx, ly, label, anchor=anchor, extra=f' class="label"{weight}'))
    return parts


def _place_label(x: float, y: float, label: str, placed: list, limit: tuple) -> tuple[float, float, str]:
    """The first offset (right of the point, then left, stepping away vertically) whose box
    stays in the plot and clears the labels placed so far; the first offset when none does."""
    width = len(label) * CHAR_W
    options = []
    for dy in (4, 16, -8, 28, -20, 40, -32, 52, -44):
        options.append((x + 9, y + dy, "start", x + 9, x + 9 + width))
        options.append((x - 9, y + dy, "end", x - 9 - width, x - 9))
    for lx, ly, anchor, x0, x1 in options:
        box = (x0, ly - FONT, x1, ly + 2)
        inside = box[0] >= limit[0] - 60 and box[2] <= limit[2] + 20 and box[1] >= 0 and box[3] <= limit[3] + 30
        if inside and not any(_overlap(box, other) for other in placed):
            placed.append(box)
            return lx, ly, anchor
    lx, ly, anchor, x0, x1 = options[0]
    placed.append((x0, ly - FONT, x1, ly + 2))
    return lx, ly, anchor


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _axes(frame: _Frame, x_label: str, y_label: str) -> str:
    left, top, right, bottom = frame.left, frame.top, frame.left + frame.width, frame.top + frame.height
    parts = [f'<rect x="{left:.1f}" y="{top:.1f}" width="{frame.width:.1f}" height="{frame.height:.1f}" '
             'fill="#fbfbfb" stroke="#888"/>']
    for tick in nice_ticks(*frame.xs, count=6):
        if frame.xs[0] <= tick <= frame.xs[1]:
            x = frame.x(tick)
            parts.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="#e4e4e4"/>')
            parts.append(_text(x, bottom + 16, f"{tick:g}", anchor="middle"))
    for tick in nice_ticks(min(frame.ys), max(frame.ys), count=5):
        if min(frame.ys) <= tick <= max(frame.ys):
            y = frame.y(tick)
            parts.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>')
            parts.append(_text(left - 6, y + 4, f"{tick:+g}", anchor="end"))
    parts.append(_text((left + right) / 2, bottom + 38, x_label, anchor="middle", size=12))
    parts.append(_text(16, (top + bottom) / 2, y_label, anchor="middle", size=12,
                       extra=f' transform="rotate(-90 16 {(top + bottom) / 2:.1f})"'))
    return "\n".join(parts)


def _legend(frame: _Frame) -> str:
    x, y = frame.left + 10, frame.top + frame.height + 52
    return "\n".join([
        f'<circle cx="{x:.1f}" cy="{y - 4:.1f}" r="4" fill="#2c6fbb"/>', _text(x + 8, y, "within budget"),
        f'<circle cx="{x + 100:.1f}" cy="{y - 4:.1f}" r="4" fill="#c0392b"/>', _text(x + 108, y, "over budget"),
        f'<circle cx="{x + 196:.1f}" cy="{y - 4:.1f}" r="7" fill="none" stroke="#1e8449" stroke-width="2.5"/>',
        _text(x + 208, y, "chosen"),
        f'<line x1="{x + 262:.1f}" y1="{y - 4:.1f}" x2="{x + 284:.1f}" y2="{y - 4:.1f}" stroke="#2a7" stroke-width="2"/>',
        _text(x + 290, y, "Pareto front"),
    ])


def bar_chart_svg(bars: Sequence[Bar], *, value_label: str, width: int = 900) -> str:
    """Horizontal bars from a zero line, one row per bar in the given order, the value at the
    end of each. Non-finite values are drawn at the edge of the scale and written out."""
    row_h, label_w, top = 22, 290, 10
    height = top + row_h * len(bars) + 44
    finite = [b.value for b in bars if math.isfinite(b.value)] or [0.0]
    lo, hi = min(0.0, *finite), max(0.0, *finite)
    if hi == lo:
        hi = lo + 1.0
    frame = _Frame((label_w + 8.0, float(top), width - label_w - 8.0 - 70.0, row_h * len(bars) * 1.0), (lo, hi),
                   (0.0, 1.0))
    parts = []
    for tick in nice_ticks(lo, hi, count=5):
        if lo <= tick <= hi:
            x = frame.x(tick)
            parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + frame.height:.1f}" stroke="#e4e4e4"/>')
            parts.append(_text(x, top + frame.height + 14, f"{tick:g}", anchor="middle"))
    zero = frame.x(0.0)
    for index, bar in enumerate(bars):
        y = top + index * row_h
        value = bar.value if math.isfinite(bar.value) else (hi if bar.value > 0 else lo)
        x0, x1 = sorted((zero, frame.x(value)))
        title = f"<title>{esc(bar.tooltip or bar.label)}</title>"
        fill = "#2c6fbb" if bar.value >= 0 else "#c0392b"
        parts.append(f'<rect class="bar" x="{x0:.1f}" y="{y + 3:.1f}" width="{max(x1 - x0, 1.0):.1f}" '
                     f'height="{row_h - 6}" fill="{fill}">{title}</rect>')
        parts.append(_text(label_w, y + row_h / 2 + 4, _short(bar.label, 44), anchor="end", extra=' class="label"'))
        parts.append(_text(x1 + 4, y + row_h / 2 + 4, num(bar.value, ".3g")))
    parts.append(f'<line x1="{zero:.1f}" y1="{top}" x2="{zero:.1f}" y2="{top + frame.height:.1f}" stroke="#555"/>')
    parts.append(_text(frame.left + frame.width / 2, top + frame.height + 34, value_label, anchor="middle", size=12))
    return _svg(width, height, "sensitivity-chart", "Sensitivity: accuracy recovered per node group", parts)


def _svg(width: int, height: int, cls: str, title: str, parts: Sequence[str]) -> str:
    """SVG inline in HTML: the HTML parser puts it in the SVG namespace, so no xmlns (and no URL)."""
    body = "\n".join(part for part in parts if part)
    return (f'<svg class="{cls}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">\n<title>{esc(title)}</title>\n'
            f"{body}\n</svg>")
